//! The bulk endpoint: a second QUIC endpoint of a device, on a UDP socket
//! and threads of its own, for artifact transfers (docs/PROTOCOL.md, "Bulk
//! connections").
//!
//! A transfer at a few hundred MiB/s keeps the processor busy with packet
//! encryption, decryption and acknowledgements. On the device's main
//! connection that work runs where live operations are handled, and a live
//! edit waits behind it (several milliseconds on two cores). On a bulk
//! connection it runs on a runtime whose threads are of lower priority
//! (nice 10 on Linux): the scheduler gives the processor to live work at
//! once, and the live connection's socket holds no bulk datagrams.
//!
//! A bulk connection is authenticated exactly as a main one (mutual TLS
//! 1.3, both device ids pinned); it carries artifact streams only.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket};

/// Worker threads of the bulk runtime: one transfer's sending and
/// receiving ends proceed at once.
const BULK_WORKERS: usize = 2;

/// The runtime that drives bulk connections: its threads run below the
/// priority of the others. Dropping it stops them without waiting.
pub(crate) struct BulkRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl BulkRuntime {
    /// Starts the runtime's threads.
    pub(crate) fn start() -> io::Result<BulkRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(BULK_WORKERS)
            .thread_name("nomade-bulk")
            .on_thread_start(|| {
                if let Err(e) = lower_thread_priority() {
                    tracing::debug!(error = %e, "could not lower a bulk thread's priority");
                }
            })
            .enable_all()
            .build()?;
        Ok(BulkRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// A handle to spawn on it.
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for BulkRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How much lower than the others the bulk threads run: the nice value
/// the artifact crate gives its transfer threads.
const BULK_NICENESS: i32 = 10;

/// Lowers the calling thread's priority (Linux, where the nice value is
/// per thread; elsewhere nothing).
fn lower_thread_priority() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // Never above the priority it already has (a process started with
        // `nice` stays as low).
        let now = rustix::process::getpriority_process(None)?;
        if now < BULK_NICENESS {
            rustix::process::setpriority_process(None, BULK_NICENESS)?;
        }
    }
    Ok(())
}

/// quinn's runtime interface over the bulk runtime: the endpoint's and
/// connections' drivers are spawned there, and its socket registered with
/// its reactor.
#[derive(Debug)]
pub(crate) struct OnBulk(pub(crate) tokio::runtime::Handle);

impl quinn::Runtime for OnBulk {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        let _entered = self.0.enter();
        Box::pin(tokio::time::sleep_until(t.into()))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let _entered = self.0.enter();
        quinn::TokioRuntime.wrap_udp_socket(sock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bulk runtime runs what is spawned on it, on threads named for
    /// it, and its quinn interface spawns there too.
    #[test]
    fn the_bulk_runtime_runs_what_quinn_spawns_on_its_own_threads() {
        let bulk = BulkRuntime::start().expect("runtime");
        let (tx, rx) = std::sync::mpsc::channel();
        quinn::Runtime::spawn(
            &OnBulk(bulk.handle().clone()),
            Box::pin(async move {
                let name = std::thread::current().name().map(str::to_string);
                let _ = tx.send(name);
            }),
        );
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("ran");
        assert_eq!(name.as_deref(), Some("nomade-bulk"));
        #[cfg(target_os = "linux")]
        {
            // Its threads run at nice 10 at least, never above this one.
            let (tx, rx) = std::sync::mpsc::channel();
            bulk.handle().spawn(async move {
                let _ = tx.send(rustix::process::getpriority_process(None));
            });
            let theirs = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("ran")
                .expect("priority");
            let ours = rustix::process::getpriority_process(None).expect("priority");
            assert!(
                theirs >= BULK_NICENESS && theirs >= ours,
                "bulk nice {theirs}, caller nice {ours}"
            );
        }
    }
}
