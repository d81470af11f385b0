//! Running an artifact transfer's state machine beside the network.
//!
//! The sans-IO [`Sender`] and [`Receiver`] of `nomade-artifact` do the disk
//! and crypto work of a transfer (read stored records on the holder; open and
//! verify, write and periodically `fsync` on the fetcher, which hashes on a
//! thread of its own). Done inline on an async worker, that work and the
//! network take turns: while a chunk is being opened or the file synced,
//! nothing is read from the connection and the QUIC window stalls. Here the
//! machine runs on a blocking thread, fed by one task that reads frames and
//! drained by one that writes them, with bounded queues between them: the
//! three overlap, memory stays bounded by the queue lengths (a few 64 KiB
//! chunks), and backpressure still reaches the peer through QUIC flow
//! control. Progress events are passed on at most every
//! [`PROGRESS_INTERVAL`] (a fetcher makes one per chunk, 16,384 per GiB);
//! the others are dropped, each being superseded by the next.

use nomade_artifact::{
    ArtifactError, RangeEvent, RangeReceiver, Receiver, ReceiverEvent, Sender, SenderEvent,
};
use nomade_transport::{Connection, FramedRecv, FramedSend};
use nomade_wire::Message;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::error::NodeError;
use crate::sync::envelope;

/// Messages queued between the network tasks and the machine's thread, each
/// way. With 64 KiB chunks this bounds a transfer's buffers to 1-2 MiB (a
/// received chunk's data shares the buffer its frame was assembled in).
const QUEUE: usize = 16;

/// Progress events closer together than this are not passed on (the last
/// one is superseded by the next, and the final state comes with the event
/// that ends the transfer).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(10);

/// A transfer state machine driven by messages: both artifact sides.
pub(crate) trait Machine: Send + 'static {
    /// What feeding a message reports.
    type Event: Send + 'static;
    /// Feeds a message received from the peer.
    fn handle_message(&mut self, msg: Message) -> Result<Self::Event, ArtifactError>;
    /// The next message to send, if any (may read and open a chunk).
    fn next_message(&mut self) -> Result<Option<Message>, ArtifactError>;
    /// Whether the exchange is over and nothing is left to send.
    fn is_finished(&self) -> bool;
    /// Whether `event` only reports progress (and may be superseded).
    fn is_progress(_event: &Self::Event) -> bool {
        false
    }
}

impl Machine for Sender {
    type Event = SenderEvent;
    fn handle_message(&mut self, msg: Message) -> Result<SenderEvent, ArtifactError> {
        Sender::handle_message(self, msg)
    }
    fn next_message(&mut self) -> Result<Option<Message>, ArtifactError> {
        Sender::next_message(self)
    }
    fn is_finished(&self) -> bool {
        Sender::is_finished(self)
    }
}

impl Machine for Receiver {
    type Event = ReceiverEvent;
    fn handle_message(&mut self, msg: Message) -> Result<ReceiverEvent, ArtifactError> {
        Receiver::handle_message(self, msg)
    }
    fn next_message(&mut self) -> Result<Option<Message>, ArtifactError> {
        Receiver::next_message(self)
    }
    fn is_finished(&self) -> bool {
        Receiver::is_finished(self)
    }
    fn is_progress(event: &ReceiverEvent) -> bool {
        matches!(event, ReceiverEvent::Progress(_))
    }
}

impl Machine for RangeReceiver {
    type Event = RangeEvent;
    fn handle_message(&mut self, msg: Message) -> Result<RangeEvent, ArtifactError> {
        RangeReceiver::handle_message(self, msg)
    }
    fn next_message(&mut self) -> Result<Option<Message>, ArtifactError> {
        RangeReceiver::next_message(self)
    }
    fn is_finished(&self) -> bool {
        RangeReceiver::is_finished(self)
    }
    fn is_progress(event: &RangeEvent) -> bool {
        matches!(event, RangeEvent::Progress { .. })
    }
}

/// What the machine's thread hands to the writing task. Nearly every item
/// is a message, so it is not boxed (that would allocate once per chunk).
#[allow(clippy::large_enum_variant)]
enum Out<E> {
    Send(Message),
    Event(E),
}

/// The machine's thread's side of the queue to the writing task.
struct Outlet<E> {
    queue: mpsc::Sender<Out<E>>,
    /// When the last progress event was passed on.
    last_progress: Option<Instant>,
}

impl<E> Outlet<E> {
    /// Queues a message for the peer; false when the writing task is gone.
    fn send(&self, msg: Message) -> bool {
        self.queue.blocking_send(Out::Send(msg)).is_ok()
    }

    /// Passes an event on, unless it only reports progress and the last one
    /// went less than [`PROGRESS_INTERVAL`] before `now`.
    fn event(&mut self, event: E, is_progress: bool, now: Instant) {
        if is_progress {
            if self
                .last_progress
                .is_some_and(|last| now.duration_since(last) < PROGRESS_INTERVAL)
            {
                return;
            }
            self.last_progress = Some(now);
        }
        let _ = self.queue.blocking_send(Out::Event(event));
    }
}

/// Sends everything the machine has queued; between two messages, takes in
/// what the peer sent meanwhile (an ERROR or a COMPLETE must not wait behind
/// a long run of chunks).
fn drain<M: Machine>(
    machine: &mut M,
    inbox: &mut mpsc::Receiver<Message>,
    out: &mut Outlet<M::Event>,
) -> Result<bool, ArtifactError> {
    while let Some(m) = machine.next_message()? {
        if !out.send(m) {
            return Ok(false);
        }
        if let Ok(msg) = inbox.try_recv() {
            feed(machine, msg, inbox, out)?;
        }
    }
    Ok(true)
}

fn feed<M: Machine>(
    machine: &mut M,
    msg: Message,
    inbox: &mut mpsc::Receiver<Message>,
    out: &mut Outlet<M::Event>,
) -> Result<(), ArtifactError> {
    match machine.handle_message(msg) {
        Ok(event) => {
            let is_progress = M::is_progress(&event);
            out.event(event, is_progress, Instant::now());
            Ok(())
        }
        Err(e) => {
            // Whatever the machine queued (an ERROR for the peer) goes first.
            let _ = drain(machine, inbox, out);
            Err(e)
        }
    }
}

/// The machine's thread: feeds it, drains it, until it is finished or the
/// peer's side ends. Returns the machine, for its final state.
fn run_machine<M: Machine>(
    mut machine: M,
    mut inbox: mpsc::Receiver<Message>,
    queue: mpsc::Sender<Out<M::Event>>,
) -> (M, Result<(), ArtifactError>) {
    let mut out = Outlet {
        queue,
        last_progress: None,
    };
    let result = (|| loop {
        if !drain(&mut machine, &mut inbox, &mut out)? || machine.is_finished() {
            return Ok(());
        }
        match inbox.blocking_recv() {
            Some(msg) => feed(&mut machine, msg, &mut inbox, &mut out)?,
            None => return Ok(()),
        }
    })();
    (machine, result)
}

/// Runs `machine` over a stream until it is finished, the peer ends the
/// stream, or something fails. `on_event` sees every event, on the calling
/// task. Returns the machine (to read its final state) and the stream's
/// sending half (to finish it).
///
/// The two network pumps (frames in, frames out) run as one task where
/// the stream's connection is handled: `on`'s runtime for a bulk
/// connection (below the priority of live work, like the machine's own
/// thread), the caller's otherwise (`None`: the caller's).
pub(crate) async fn drive<M: Machine>(
    machine: M,
    tx: FramedSend,
    rx: FramedRecv,
    on: Option<&Connection>,
    mut on_event: impl FnMut(M::Event),
) -> Result<(M, FramedSend), NodeError> {
    let (inbox_tx, inbox) = mpsc::channel::<Message>(QUEUE);
    let (out, outbox) = mpsc::channel::<Out<M::Event>>(QUEUE);
    let (events_tx, mut events) = mpsc::channel::<M::Event>(QUEUE);
    // Its own thread, below the priority of the others: a transfer's
    // crypto and disk work yields the processor to live sync at once.
    let (done, worker) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nomade-artifact".into())
        .spawn(move || {
            if let Err(e) = nomade_artifact::lower_thread_priority() {
                tracing::debug!(error = %e, "could not lower a transfer thread's priority");
            }
            let _ = done.send(run_machine(machine, inbox, out));
        })?;
    let pumps = pump(tx, rx, inbox_tx, outbox, events_tx);
    // Stopped if this future is dropped: the stream is reset, and the
    // machine's thread sees its inbox closed.
    let mut pumps = AbortOnDrop(match on {
        Some(conn) => conn.spawn(pumps),
        None => tokio::spawn(pumps),
    });
    while let Some(e) = events.recv().await {
        on_event(e);
    }
    let (tx, pumped) = (&mut pumps.0).await.map_err(|_| {
        NodeError::Invalid("an artifact transfer's network task ended early".into())
    })?;
    pumped?;
    let (machine, result) = worker
        .await
        .map_err(|_| NodeError::Invalid("an artifact transfer's thread ended early".into()))?;
    result?;
    Ok((machine, tx))
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The network side of [`drive`]: frames read go to the machine's inbox,
/// what the machine sends is written, its events passed on, until the
/// machine is done or the peer ends its side. Returns the sending half.
async fn pump<E>(
    mut tx: FramedSend,
    mut rx: FramedRecv,
    inbox_tx: mpsc::Sender<Message>,
    mut outbox: mpsc::Receiver<Out<E>>,
    events: mpsc::Sender<E>,
) -> (FramedSend, Result<(), NodeError>) {
    let reader = async {
        loop {
            tokio::select! {
                env = rx.recv() => match env? {
                    Some(env) => {
                        if inbox_tx.send(env.message).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = inbox_tx.closed() => break,
            }
        }
        // The peer ended its side (or the machine stopped listening): the
        // machine's thread sees its inbox closed; the writer ends with it.
        drop(inbox_tx);
        std::future::pending::<Result<(), NodeError>>().await
    };
    let writer = async {
        while let Some(o) = outbox.recv().await {
            match o {
                Out::Send(m) => tx.send(&envelope(m)).await?,
                Out::Event(e) => {
                    // The caller gone: the events are not wanted.
                    let _ = events.send(e).await;
                }
            }
        }
        Ok::<(), NodeError>(())
    };
    let result = tokio::select! {
        r = reader => r,
        w = writer => w,
    };
    (tx, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_passed_on_at_most_every_interval_and_other_events_always() {
        let (queue, mut rx) = mpsc::channel::<Out<&str>>(16);
        let mut out = Outlet {
            queue,
            last_progress: None,
        };
        let t0 = Instant::now();
        let half = PROGRESS_INTERVAL / 2;
        out.event("p0", true, t0);
        out.event("p1", true, t0 + half);
        out.event("started", false, t0 + half);
        out.event("p2", true, t0 + PROGRESS_INTERVAL);
        out.event("p3", true, t0 + PROGRESS_INTERVAL + half);
        out.event("complete", false, t0 + PROGRESS_INTERVAL + half);
        drop(out);
        let mut passed = Vec::new();
        while let Some(Out::Event(e)) = rx.blocking_recv() {
            passed.push(e);
        }
        assert_eq!(passed, ["p0", "started", "p2", "complete"]);
    }
}
