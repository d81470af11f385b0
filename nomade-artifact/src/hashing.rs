//! The hash of a transfer being received, computed beside it.
//!
//! A fetcher hashes every byte it receives with SHA-256, checked against the
//! artifact id at the end. That hash does not decide whether a chunk is
//! stored: the AEAD tag of a sealed chunk, or the `chunk_hash` checked on
//! arrival for a plaintext one, already did. So it runs on a thread of its
//! own, fed in order through a bounded queue, and the receiving thread only
//! opens and writes. Buffers go back and forth, so a steady transfer
//! allocates nothing.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::chunk::CHUNK_SIZE;
use crate::error::{ArtifactError, Result};

/// Chunks handed to the thread at a time: one wake-up per batch rather than
/// per chunk (the thread hashes faster than chunks arrive, so it would
/// otherwise sleep and be woken for every one).
const BATCH: usize = 8;
/// Batches queued for hashing at most (with `BATCH`, 4 MiB of 64 KiB chunks).
const QUEUE: usize = 8;

/// Chunks' plaintexts.
type Batch = Vec<Vec<u8>>;

/// The hashing thread of one transfer.
pub(crate) struct Hashing {
    chunks: Option<SyncSender<Batch>>,
    /// Chunks not yet handed over.
    pending: Batch,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Sha256>>,
}

fn gone() -> ArtifactError {
    ArtifactError::Io(std::io::Error::other("the hashing thread stopped"))
}

/// How much lower than the others the hashing thread runs (a nice value
/// added: it gets about a tenth of a processor that live work also wants,
/// and all of an idle one).
pub const BULK_NICENESS: i32 = 10;

/// Lowers the calling thread's priority to [`BULK_NICENESS`], for bulk
/// work (a transfer, the whole-artifact hash) that must yield the processor
/// to live work. Linux only, where the nice value is per thread; elsewhere
/// nothing. An error says the system refused (the thread runs on as it was).
pub fn lower_thread_priority() -> std::io::Result<()> {
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

impl Hashing {
    /// Starts hashing after the chunks already fed to `whole` (a resumed
    /// transfer).
    pub(crate) fn start(whole: Sha256) -> Result<Hashing> {
        let (chunks, queue) = mpsc::sync_channel::<Batch>(QUEUE);
        let (give_back, spare) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("nomade-artifact-hash".into())
            .spawn(move || {
                // Bulk work: below the priority of the device's live work
                // (refused, it runs as it is).
                let _ = lower_thread_priority();
                let mut whole = whole;
                for batch in queue {
                    for chunk in batch {
                        whole.update(&chunk);
                        // The receiving side may be gone already; then the
                        // buffer is simply dropped.
                        let _ = give_back.send(chunk);
                    }
                }
                whole
            })?;
        Ok(Hashing {
            chunks: Some(chunks),
            pending: Vec::with_capacity(BATCH),
            spare,
            thread: Some(thread),
        })
    }

    /// A buffer of `len` bytes to put a chunk's plaintext in (a returned one
    /// when there is one: its contents are to be overwritten).
    pub(crate) fn buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_SIZE));
        buf.resize(len, 0);
        buf
    }

    /// Queues the next chunk's plaintext. Blocks while the queue is full.
    pub(crate) fn push(&mut self, plain: Vec<u8>) -> Result<()> {
        if self.chunks.is_none() {
            return Err(gone());
        }
        self.pending.push(plain);
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the pending chunks to the thread.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        let chunks = self.chunks.as_ref().ok_or_else(gone)?;
        chunks.send(batch).map_err(|_| gone())
    }

    /// Waits for every queued chunk; returns the SHA-256 of everything fed.
    /// Nothing can be pushed after this.
    pub(crate) fn finish(&mut self) -> Result<[u8; 32]> {
        self.flush()?;
        self.chunks = None;
        let thread = self.thread.take().ok_or_else(gone)?;
        let whole = thread.join().map_err(|_| gone())?;
        Ok(whole.finalize().into())
    }
}

impl Drop for Hashing {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has drained it.
        self.chunks = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_matches_a_direct_computation_and_resumes_from_a_state() {
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let mut first = Sha256::new();
        first.update(&chunks[0]);
        let mut h = Hashing::start(first).expect("start");
        for c in chunks.iter().skip(1) {
            let mut b = h.buffer(c.len());
            b.copy_from_slice(c);
            h.push(b).expect("push");
        }
        let whole = h.finish().expect("finish");
        let all: Vec<u8> = chunks.concat();
        assert_eq!(whole, <[u8; 32]>::from(Sha256::digest(&all)));
        assert!(h.push(vec![1]).is_err());
    }

    #[test]
    fn buffers_come_back_sized_as_asked() {
        let mut h = Hashing::start(Sha256::new()).expect("start");
        for _ in 0..BATCH {
            h.push(vec![7u8; 100]).expect("push");
        }
        // Whether or not the first buffer came back yet, the length is right.
        assert_eq!(h.buffer(10).len(), 10);
        assert_eq!(h.buffer(CHUNK_SIZE).len(), CHUNK_SIZE);
        drop(h);
    }
}
