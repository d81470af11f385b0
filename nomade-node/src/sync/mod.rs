//! The sync flows on a sync stream: sans-IO state machines, and the thin
//! async drivers that run them over any framed channel.
//!
//! Each side of a connection opens its own sync stream as the *puller*: it
//! sends `SYNC_REQUEST` with its version vector; the other side (the
//! *pusher*) answers with every operation the vector does not cover, in
//! `BATCHED_SYNC` frames, then `SYNC_COMPLETE` with its state hash, and from
//! then on pushes each new operation (micro-batched: whatever accumulated
//! while the previous frame was being written goes in the next one). The
//! puller applies what it receives, stores it durably, and only then sends
//! `ACK` for the frame. Version vectors, not clocks, decide what is missing,
//! so after a reconnection everything unacknowledged is simply sent again.
//!
//! The protocol lives in [`Puller`] and [`Pusher`]: messages in, messages
//! out, the device's state read and written through [`Core`], no sockets and
//! no tasks, so that it is tested (and simulated, see [`crate::sim`])
//! without a network. [`pull`] and [`push`] drive them over a
//! [`FrameSink`] and a [`FrameSource`].

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use nomade_wire::{EncodeError, Envelope, ErrorCode, ErrorMessage, Message, MessageId};
use tokio::sync::watch;

use crate::core::{now_ms, Core};
use crate::error::NodeError;

mod pull;
mod push;

pub use pull::{Puller, MAX_PENDING_ACKS, MAX_SNAPSHOT_LEN};
pub use push::{
    Pusher, INITIAL_RELAY_HOLD, MAX_RELAY_HOLD, MAX_SERVED_RELAY_HOLD, MAX_UNACKED_FRAMES,
    RELAY_HOLD_BASE, SCAN_LIMIT, SERVED_RELAY_HOLD,
};

/// Sends frames on a stream.
pub trait FrameSink: Send {
    /// Sends one envelope.
    fn send(
        &mut self,
        env: &Envelope,
    ) -> impl std::future::Future<Output = Result<(), NodeError>> + Send;

    /// Sends one frame that is already encoded (a `BATCHED_SYNC` built by
    /// [`nomade_wire::BatchEncoder`]).
    fn send_frame(
        &mut self,
        frame: Bytes,
    ) -> impl std::future::Future<Output = Result<(), NodeError>> + Send;
}

/// Receives frames from a stream.
pub trait FrameSource: Send {
    /// The next envelope, or `None` when the peer finished the stream.
    fn recv(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<Envelope>, NodeError>> + Send;
}

/// A fresh random message id.
pub fn new_message_id() -> MessageId {
    MessageId::from(rand::random::<[u8; 16]>())
}

/// `message` in an envelope with a fresh id, stamped now.
pub fn envelope(message: impl Into<Message>) -> Envelope {
    Envelope::new(new_message_id(), now_ms(), message)
}

/// An `ERROR` message.
fn error_message(code: ErrorCode, text: String, related: Option<MessageId>) -> Envelope {
    envelope(ErrorMessage {
        error_code: code,
        error_message: text,
        related_message_id: related,
    })
}

/// The error that ends a flow because of what `peer` did.
fn peer_error(peer: &str, reason: impl Into<String>) -> NodeError {
    NodeError::Peer {
        peer: peer.to_string(),
        reason: reason.into(),
    }
}

/// The error that ends a flow when `peer` sent an `ERROR`.
fn refused_by(peer: &str, e: &ErrorMessage) -> NodeError {
    peer_error(
        peer,
        format!("{} ({})", e.error_message, e.error_code.name()),
    )
}

/// What the puller learned when the pusher's initial batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSummary {
    /// Operations the pusher said it sent.
    pub operations: u32,
    /// Whether our state hash equalled the pusher's once everything was applied.
    pub hashes_match: bool,
}

/// Something a [`Pusher`] sends: a message, or a frame already encoded
/// (operations batched once, or a stored row as it is stored).
#[derive(Debug, Clone)]
pub enum Transmit {
    /// A message to encode (boxed: a message holding an operation is a
    /// few hundred bytes, a frame is a pointer).
    Message(Box<Envelope>),
    /// An encoded frame.
    Frame(Bytes),
}

impl Transmit {
    /// A message to encode.
    pub fn message(envelope: Envelope) -> Transmit {
        Transmit::Message(Box::new(envelope))
    }

    /// The frame's bytes.
    pub fn into_frame(self) -> Result<Bytes, EncodeError> {
        match self {
            Transmit::Frame(f) => Ok(f),
            Transmit::Message(env) => {
                let mut buf = BytesMut::new();
                env.encode_into(&mut buf)?;
                Ok(buf.freeze())
            }
        }
    }
}

/// Most sync messages applied in one database transaction.
const MAX_MESSAGES_PER_COMMIT: usize = 64;

/// The shortest time between two `HAVE`s a puller sends (docs/PROTOCOL.md,
/// "Forwarding"): what it received from elsewhere meanwhile goes in the next.
pub const HAVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// The shortest time between two `HAVE`s that only raise counters of
/// devices already named to the pusher: it holds their operations for
/// [`SERVED_RELAY_HOLD`], so counters raised meanwhile can wait and go
/// together, a small part of the hold later.
pub const SERVED_HAVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The shortest time between two `HAVE`s that only raise counters of
/// devices the puller pulls from directly: the pusher relays nothing of
/// theirs anyway, so these only tell it what the puller durably holds (for
/// compaction), which can wait.
pub const DIRECT_HAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs a [`Puller`]: requests what this device lacks, applies and
/// acknowledges everything the peer pushes, until the peer ends the stream
/// (or, [`PullEnd::Resync`], until pulls are to start again).
/// `initial` receives the summary of the first full exchange. `puller`
/// says whom it pulls from and how ([`Puller::announcing`]: the peer takes
/// `HAVE`, and what this device gets from elsewhere is announced to it as
/// it comes; [`Puller::subscribing`]: the request states this device's
/// subscription).
///
/// Reading and applying overlap: while one group of messages is being applied
/// and committed (on a blocking thread), the next ones are read; everything
/// that arrived meanwhile is applied in one transaction and acknowledged with
/// one `ACK`.
pub async fn pull(
    core: Arc<Core>,
    mut puller: Puller,
    tx: &mut impl FrameSink,
    rx: &mut impl FrameSource,
    initial: &watch::Sender<Option<SyncSummary>>,
) -> Result<PullEnd, NodeError> {
    let mut appended = core.appended();
    let mut pulling = core.pulling_changes();
    let mut resync = core.resyncs();
    tx.send(&puller.request(&core)).await?;
    let (queue_tx, mut queue) = tokio::sync::mpsc::channel::<Envelope>(MAX_MESSAGES_PER_COMMIT);
    let reader = async move {
        while let Some(env) = rx.recv().await? {
            if queue_tx.send(env).await.is_err() {
                break;
            }
        }
        Ok::<(), NodeError>(())
    };
    let applier = async move {
        loop {
            // The next message, or, when the store changed or the HAVE
            // interval passed, a HAVE to send.
            let first = tokio::select! {
                env = queue.recv() => match env {
                    Some(env) => Some(env),
                    None => break,
                },
                changed = appended.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    None
                }
                changed = pulling.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    None
                }
                changed = resync.changed() => {
                    if changed.is_ok() {
                        return Ok(PullEnd::Resync);
                    }
                    break;
                }
                () = sleep_until(puller.have_timeout()) => None,
            };
            let Some(first) = first else {
                if let Some(have) = puller.poll_have(&core, std::time::Instant::now()) {
                    tx.send(&have).await?;
                }
                continue;
            };
            let mut group = vec![first];
            while group.len() < MAX_MESSAGES_PER_COMMIT {
                match queue.try_recv() {
                    Ok(env) => group.push(env),
                    Err(_) => break,
                }
            }
            let c = core.clone();
            let (back, out, result) = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let result = puller.receive(&c, group, &mut out);
                (puller, out, result)
            })
            .await?;
            puller = back;
            for env in &out {
                // An ERROR is best effort: the pull ends with `result`.
                let sent = tx.send(env).await;
                if result.is_ok() {
                    sent?;
                }
            }
            if let Some(summary) = puller.take_summary() {
                initial.send_replace(Some(summary));
            }
            result?;
        }
        Ok::<PullEnd, NodeError>(PullEnd::Ended)
    };
    // The applier ends when the reader has ended (the queue closes) and it
    // has applied what was read. A failing applier ends the pull at once,
    // the reader with it, even if the peer keeps the stream open.
    tokio::pin!(reader, applier);
    let mut read = None;
    loop {
        tokio::select! {
            r = &mut reader, if read.is_none() => read = Some(r),
            applied = &mut applier => {
                let end = applied?;
                read.unwrap_or(Ok(()))?;
                return Ok(end);
            }
        }
    }
}

/// How a pull ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullEnd {
    /// The stream ended.
    Ended,
    /// It is to start again on a new stream (a revoked device's history
    /// was closed later than before: what was refused meanwhile is asked
    /// for again, [`Core::resyncs`]).
    Resync,
}

/// Sends what a state machine produced, in order. When `result` is an
/// error, sending is best effort (an `ERROR` before the stream ends) and
/// `result` is what counts.
async fn flush(
    tx: &mut impl FrameSink,
    out: &mut Vec<Transmit>,
    result: Result<(), NodeError>,
) -> Result<(), NodeError> {
    for t in out.drain(..) {
        let sent = match t {
            Transmit::Message(env) => tx.send(&env).await,
            Transmit::Frame(f) => tx.send_frame(f).await,
        };
        if result.is_ok() {
            sent?;
        }
    }
    result
}

/// Runs `pusher` ([`Pusher::new`]): answers the peer's `SYNC_REQUEST`, then
/// pushes new operations as they are stored, until the stream or the node
/// ends.
pub async fn push(
    core: Arc<Core>,
    mut pusher: Pusher,
    tx: &mut impl FrameSink,
    rx: &mut impl FrameSource,
) -> Result<(), NodeError> {
    let mut appended = core.appended();
    let mut closures = core.closures();
    let peer = pusher.peer().to_string();
    let mut out = Vec::new();
    let Some(first) = rx.recv().await? else {
        return Ok(());
    };
    if core.is_closed(&peer) {
        return Ok(());
    }
    let r = pusher.receive(&core, first, std::time::Instant::now(), &mut out);
    flush(tx, &mut out, r).await?;
    loop {
        if !pusher.window_full() {
            appended.borrow_and_update();
            let polled = pusher.poll(&core, std::time::Instant::now(), &mut out);
            let more = matches!(polled, Ok(true));
            flush(tx, &mut out, polled.map(drop)).await?;
            if more {
                continue;
            }
        }
        tokio::select! {
            changed = appended.changed(), if !pusher.window_full() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = sleep_until(pusher.poll_timeout()) => {}
            changed = closures.changed() => {
                // A revoked device is sent nothing more, from the moment
                // the revocation is accepted.
                if changed.is_err() || core.is_closed(&peer) {
                    return Ok(());
                }
            }
            msg = rx.recv() => {
                let Some(env) = msg? else { return Ok(()) };
                let r = pusher.receive(&core, env, std::time::Instant::now(), &mut out);
                flush(tx, &mut out, r).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The sync flows without sockets or tasks: each state machine is fed
    //! messages and a real [`Core`] on disk, and what it sends is checked.

    use super::*;
    use nomade_wire::{Ack, EntityType, SyncOperation, SyncRequest, VersionVector};
    use std::time::{Duration, Instant};

    fn core(dir: &tempfile::TempDir, device: &str) -> Arc<Core> {
        Core::open(dir.path(), device, nomade_crdt::ReplicaConfig::default()).expect("open")
    }

    fn set(core: &Core, i: i64) {
        core.edit(
            EntityType::Document,
            "doc",
            nomade_crdt::LocalEdit::Set {
                key: format!("k{i}"),
                value: nomade_wire::Value::Int(i),
            },
        )
        .expect("edit");
    }

    fn messages(out: &mut Vec<Transmit>) -> Vec<Envelope> {
        out.drain(..)
            .map(|t| {
                let frame = t.into_frame().expect("encodes");
                Envelope::decode(&frame).expect("decodes")
            })
            .collect()
    }

    fn full_request() -> Envelope {
        envelope(SyncRequest {
            entity_types: vec![],
            since_timestamp: None,
            full_sync: true,
            version_vector: None,
            subscription: None,
        })
    }

    /// The sync issue: a pusher keeps at most its window of frames without
    /// acknowledgement, then sends nothing (a peer that never acknowledges
    /// costs bounded memory); an acknowledgement opens the window again, and
    /// one naming frames never sent changes nothing.
    #[test]
    fn a_pusher_waits_when_its_window_of_unacknowledged_frames_is_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(&dir, "pusher");
        let mut pusher = Pusher::new("peer", 2);
        let mut out = Vec::new();
        assert!(!pusher.poll(&core, Instant::now(), &mut out).expect("poll"));
        assert!(out.is_empty(), "sent before the request");
        pusher
            .receive(&core, full_request(), Instant::now(), &mut out)
            .expect("request");
        assert!(!pusher.poll(&core, Instant::now(), &mut out).expect("poll"));
        assert!(matches!(
            messages(&mut out).as_slice(),
            [Envelope {
                message: Message::SyncComplete(_),
                ..
            }]
        ));
        // Two frames, each acknowledged by nobody.
        let mut sent = Vec::new();
        for i in 0..2 {
            set(&core, i);
            pusher.poll(&core, Instant::now(), &mut out).expect("poll");
            let envs = messages(&mut out);
            assert_eq!(envs.len(), 1);
            assert!(matches!(envs[0].message, Message::BatchedSync(_)));
            sent.push(envs[0].message_id);
        }
        // The window is full: more edits are not sent.
        assert!(pusher.window_full());
        for i in 2..5 {
            set(&core, i);
        }
        pusher.poll(&core, Instant::now(), &mut out).expect("poll");
        assert!(out.is_empty(), "sent past a full window");
        // An acknowledgement of frames never sent changes nothing.
        let bogus = envelope(Ack {
            message_ids: vec![new_message_id()],
        });
        pusher
            .receive(&core, bogus, Instant::now(), &mut out)
            .expect("ack");
        assert!(pusher.window_full(), "a bogus ACK opened the window");
        assert!(!core.acked_by("peer").contains_key("pusher"));
        assert_eq!(
            core.metrics().snapshot().errors.get("ACK_UNKNOWN"),
            Some(&1),
            "counted"
        );
        // A real one opens it: the three waiting edits go, together.
        let ack = envelope(Ack {
            message_ids: vec![sent[0]],
        });
        pusher
            .receive(&core, ack, Instant::now(), &mut out)
            .expect("ack");
        pusher.poll(&core, Instant::now(), &mut out).expect("poll");
        match &messages(&mut out)[..] {
            [Envelope {
                message: Message::BatchedSync(b),
                ..
            }] => assert_eq!(b.operations.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(core.acked_by("peer").get("pusher"), Some(&1));
        assert_eq!(pusher.unacked(), 2);
    }

    /// A pusher answers anything but `SYNC_REQUEST` first, and anything but
    /// `ACK` afterwards, with an `ERROR` naming it, and ends.
    #[test]
    fn a_pusher_refuses_messages_out_of_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(&dir, "pusher");
        let ack = || {
            envelope(Ack {
                message_ids: vec![],
            })
        };
        let mut out = Vec::new();
        let mut pusher = Pusher::new("peer", 4);
        let e = pusher
            .receive(&core, ack(), Instant::now(), &mut out)
            .expect_err("refused");
        assert!(
            e.to_string().contains("opened a sync stream with ACK"),
            "{e}"
        );
        match &messages(&mut out)[..] {
            [Envelope {
                message: Message::Error(m),
                ..
            }] => assert!(m.error_message.contains("expected SYNC_REQUEST"), "{m:?}"),
            other => panic!("{other:?}"),
        }
        let mut pusher = Pusher::new("peer", 4);
        pusher
            .receive(&core, full_request(), Instant::now(), &mut out)
            .expect("request");
        let e = pusher
            .receive(&core, full_request(), Instant::now(), &mut out)
            .expect_err("a second request is refused");
        assert!(e.to_string().contains("SYNC_REQUEST to a pusher"), "{e}");
        assert_eq!(messages(&mut out).len(), 1);
    }

    /// Nothing is echoed: what the peer sent this device is not pushed back
    /// to it, while this device's own edits are.
    #[test]
    fn a_pusher_does_not_send_back_what_the_peer_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(&dir, "pusher");
        let mut pusher = Pusher::new("far", 8);
        let mut out = Vec::new();
        pusher
            .receive(&core, full_request(), Instant::now(), &mut out)
            .expect("request");
        pusher.poll(&core, Instant::now(), &mut out).expect("poll");
        out.clear();
        core.apply_remote("far", vec![remote_set(1)])
            .expect("applies");
        set(&core, 7);
        pusher.poll(&core, Instant::now(), &mut out).expect("poll");
        let sent: Vec<SyncOperation> = messages(&mut out)
            .into_iter()
            .flat_map(|env| match env.message {
                Message::BatchedSync(b) => b.operations,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].actor_id, "pusher");
    }

    fn remote_set(counter: u64) -> SyncOperation {
        remote_op("far", counter)
    }

    /// `actor`'s `counter`th edit, setting a field of its own.
    fn remote_op(actor: &str, counter: u64) -> SyncOperation {
        let mut deps = VersionVector::new();
        if counter > 1 {
            deps.insert(actor.into(), counter - 1);
        }
        SyncOperation {
            entity_id: "doc".into(),
            entity_type: EntityType::Document,
            operation: nomade_wire::CrdtOperation {
                counter,
                deps: deps.into(),
                edit: nomade_wire::Edit::Set {
                    key: format!("{actor}{counter}"),
                    value: nomade_wire::Value::Int(counter as i64),
                },
            },
            // Made just now: applying it shows no delivery lag.
            timestamp: crate::core::now_ms(),
            actor_id: actor.into(),
        }
    }

    /// The operations in `out`'s frames, as (actor, counter).
    fn sent_ops(out: &mut Vec<Transmit>) -> Vec<(String, u64)> {
        messages(out)
            .into_iter()
            .flat_map(|env| match env.message {
                Message::BatchedSync(b) => b.operations,
                Message::SyncComplete(_) => Vec::new(),
                other => panic!("{other:?}"),
            })
            .map(|op| (op.actor_id.to_string(), op.operation.counter))
            .collect()
    }

    fn have(vv: &[(&str, u64)]) -> Envelope {
        envelope(nomade_wire::Have {
            version_vector: vv.iter().map(|&(a, c)| (a.into(), c)).collect(),
            direct_added: None,
            direct_removed: None,
        })
    }

    /// A `HAVE` saying the puller started pulling from `added` and stopped
    /// pulling from `removed`.
    fn have_direct(added: &[&str], removed: &[&str]) -> Envelope {
        let list = |d: &[&str]| (!d.is_empty()).then(|| d.iter().map(|d| d.to_string()).collect());
        envelope(nomade_wire::Have {
            version_vector: VersionVector::new(),
            direct_added: list(added),
            direct_removed: list(removed),
        })
    }

    /// Forwarding: another device's operation is held for the relay hold,
    /// then sent if the peer is not known to have it; what the peer
    /// announced with `HAVE` is never relayed to it, even when it announced
    /// it before this device had it.
    #[test]
    fn a_relay_waits_its_hold_and_skips_what_the_peer_announced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(&dir, "hub");
        let mut pusher = Pusher::new("c", 8);
        let mut out = Vec::new();
        let t0 = Instant::now();
        pusher
            .receive(&core, full_request(), t0, &mut out)
            .expect("request");
        pusher.poll(&core, t0, &mut out).expect("poll");
        out.clear();
        core.apply_remote("x", vec![remote_op("x", 1)])
            .expect("applies");
        pusher.poll(&core, t0, &mut out).expect("poll");
        assert!(sent_ops(&mut out).is_empty(), "relayed at once");
        assert_eq!(pusher.relay_hold(), INITIAL_RELAY_HOLD);
        let later = t0 + INITIAL_RELAY_HOLD;
        assert_eq!(pusher.poll_timeout(), Some(later));
        pusher.poll(&core, later, &mut out).expect("poll");
        assert_eq!(sent_ops(&mut out), vec![("x".to_string(), 1)]);
        // The peer announces y's first two operations before they reach
        // this device: when they do, they are not relayed; the third is.
        pusher
            .receive(&core, have(&[("y", 2)]), later, &mut out)
            .expect("have");
        core.apply_remote(
            "y",
            vec![remote_op("y", 1), remote_op("y", 2), remote_op("y", 3)],
        )
        .expect("applies");
        let mut now = later;
        let mut relayed = Vec::new();
        while now < later + SERVED_RELAY_HOLD * 2 {
            pusher.poll(&core, now, &mut out).expect("poll");
            relayed.extend(sent_ops(&mut out));
            now += Duration::from_millis(100);
        }
        assert_eq!(relayed, vec![("y".to_string(), 3)]);
    }

    /// A device the peer announced getting operations of from elsewhere is
    /// served there: its operations are held for [`SERVED_RELAY_HOLD`], not
    /// the (shorter) relay hold, before they are relayed.
    #[test]
    fn relays_of_a_served_device_wait_longer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(&dir, "hub");
        let mut pusher = Pusher::new("c", 8);
        let mut out = Vec::new();
        let t0 = Instant::now();
        pusher
            .receive(&core, full_request(), t0, &mut out)
            .expect("request");
        pusher
            .receive(&core, have(&[("y", 0)]), t0, &mut out)
            .expect("have");
        pusher.poll(&core, t0, &mut out).expect("poll");
        out.clear();
        core.apply_remote("y", vec![remote_op("y", 1)])
            .expect("applies");
        core.apply_remote("x", vec![remote_op("x", 1)])
            .expect("applies");
        pusher.poll(&core, t0, &mut out).expect("poll");
        assert!(sent_ops(&mut out).is_empty(), "relayed at once");
        let hold = pusher.relay_hold();
        assert!(hold < SERVED_RELAY_HOLD);
        pusher.poll(&core, t0 + hold, &mut out).expect("poll");
        assert_eq!(
            sent_ops(&mut out),
            vec![("x".to_string(), 1)],
            "x is not served elsewhere"
        );
        assert_eq!(pusher.poll_timeout(), Some(t0 + SERVED_RELAY_HOLD));
        pusher
            .poll(&core, t0 + SERVED_RELAY_HOLD, &mut out)
            .expect("poll");
        assert_eq!(sent_ops(&mut out), vec![("y".to_string(), 1)]);
    }

    /// Nothing of a device the peer pulls from directly is relayed to it,
    /// however long it waits (held or stored); once the peer no longer
    /// pulls from it, what it lacks of it goes, from memory or from the
    /// database.
    #[test]
    fn a_device_the_peer_pulls_from_is_never_relayed_until_it_stops() {
        for reopened in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut core = core(&dir, "hub");
            core.apply_remote("y", vec![remote_op("y", 1)])
                .expect("applies");
            if reopened {
                drop(core);
                core = self::core(&dir, "hub");
            }
            let mut pusher = Pusher::new("c", 8);
            let mut out = Vec::new();
            let t0 = Instant::now();
            pusher
                .receive(&core, full_request(), t0, &mut out)
                .expect("request");
            pusher
                .receive(&core, have_direct(&["y"], &[]), t0, &mut out)
                .expect("have");
            core.apply_remote("y", vec![remote_op("y", 2)])
                .expect("applies");
            core.apply_remote("x", vec![remote_op("x", 1)])
                .expect("applies");
            let mut now = t0;
            let mut relayed = Vec::new();
            while now < t0 + MAX_SERVED_RELAY_HOLD {
                pusher.poll(&core, now, &mut out).expect("poll");
                relayed.extend(sent_ops(&mut out));
                now += Duration::from_millis(500);
            }
            assert_eq!(relayed, vec![("x".to_string(), 1)], "reopened: {reopened}");
            assert_eq!(pusher.poll_timeout(), None, "nothing held");
            // The peer's link to y broke: y's operations go at once.
            pusher
                .receive(&core, have_direct(&[], &["y"]), now, &mut out)
                .expect("have");
            pusher.poll(&core, now, &mut out).expect("poll");
            assert_eq!(
                sent_ops(&mut out),
                vec![("y".to_string(), 1), ("y".to_string(), 2)],
                "reopened: {reopened}"
            );
        }
    }

    /// A peer connecting: relays among the operations stored last are held
    /// from the request like new ones (the peer may pull from their authors
    /// and say so meanwhile), and `SYNC_COMPLETE` waits for them; this
    /// device's own go at once. Relays stored long before (after a restart
    /// nothing is kept in memory) go at once, the catch-up of a device that
    /// was away.
    #[test]
    fn relays_stored_just_before_a_request_wait_and_the_initial_exchange_with_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut core = core(&dir, "hub");
        core.apply_remote("x", vec![remote_op("x", 1)])
            .expect("applies");
        core.apply_remote("y", vec![remote_op("y", 1)])
            .expect("applies");
        set(&core, 1);
        let completes = |envs: &[Envelope]| {
            envs.iter()
                .any(|e| matches!(e.message, Message::SyncComplete(_)))
        };
        let ops = |envs: &[Envelope]| -> Vec<String> {
            envs.iter()
                .flat_map(|e| match &e.message {
                    Message::BatchedSync(b) => b.operations.clone(),
                    _ => Vec::new(),
                })
                .map(|op| op.actor_id.to_string())
                .collect()
        };
        let t0 = Instant::now();
        let mut pusher = Pusher::new("c", 8);
        let mut out = Vec::new();
        pusher
            .receive(&core, full_request(), t0, &mut out)
            .expect("request");
        pusher.poll(&core, t0, &mut out).expect("poll");
        let first = messages(&mut out);
        assert_eq!(ops(&first), vec!["hub".to_string()], "own at once");
        assert!(!completes(&first), "completed before the held relays");
        // The peer pulls from y directly: only x's goes, then the end.
        pusher
            .receive(&core, have_direct(&["y"], &[]), t0, &mut out)
            .expect("have");
        let later = t0 + INITIAL_RELAY_HOLD;
        assert_eq!(pusher.poll_timeout(), Some(later));
        pusher.poll(&core, later, &mut out).expect("poll");
        let then = messages(&mut out);
        assert_eq!(ops(&then), vec!["x".to_string()]);
        assert!(completes(&then));
        // After a restart nothing is kept in memory: all of it at once.
        drop(pusher);
        drop(core);
        core = self::core(&dir, "hub");
        let mut pusher = Pusher::new("c", 8);
        pusher
            .receive(&core, full_request(), t0, &mut out)
            .expect("request");
        pusher.poll(&core, t0, &mut out).expect("poll");
        let all = messages(&mut out);
        assert_eq!(ops(&all).len(), 3);
        assert!(completes(&all));
    }

    /// A scan hands held operations back, at most the room asked for; the
    /// cursor stops before the first that did not fit, so a later scan
    /// finds it (a pusher's memory of held operations is bounded).
    ///
    /// The same from the operations kept in memory (stored just now) and
    /// from the database (after reopening, nothing is kept), from the start
    /// and from a cursor in the middle.
    #[test]
    fn a_scan_holds_at_most_the_room_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut core = core(&dir, "hub");
        for c in 1..=3 {
            core.apply_remote("x", vec![remote_op("x", c)])
                .expect("applies");
        }
        set(&core, 1);
        set(&core, 2);
        let served = std::collections::BTreeSet::new();
        let nothing_yet = crate::core::RelayCutoff {
            after: 0,
            served_after: 0,
            served: &served,
            direct: &served,
        };
        let sent = |scan: &crate::core::PushScan| -> usize {
            scan.items
                .iter()
                .map(|item| match item {
                    crate::core::PushItem::Operations(ops) => ops.len(),
                    crate::core::PushItem::Run { count, .. } => *count as usize,
                })
                .sum()
        };
        for from in ["memory", "the database"] {
            let scan = core
                .push_items(0, &VersionVector::new(), SCAN_LIMIT, nothing_yet, 2, true)
                .expect("scan");
            let held: Vec<u64> = scan
                .held
                .iter()
                .map(|(_, op)| op.operation.counter)
                .collect();
            assert_eq!(held, vec![1, 2], "from {from}");
            assert!(scan.held_back);
            assert_eq!(scan.next, scan.held[1].0, "the cursor passed x's second");
            // This device's own edits are not held.
            assert_eq!(sent(&scan), 2, "from {from}");
            // From the cursor on: x's third is held, the edits were read.
            let scan = core
                .push_items(
                    scan.next,
                    &VersionVector::new(),
                    SCAN_LIMIT,
                    nothing_yet,
                    2,
                    true,
                )
                .expect("scan");
            assert_eq!(scan.held.len(), 1, "from {from}");
            assert_eq!(scan.held[0].1.operation.counter, 3);
            assert!(!scan.held_back && !scan.more);
            assert_eq!(
                (scan.next, sent(&scan)),
                (core.last_seq(), 2),
                "from {from}"
            );
            // Nothing new after the last: nothing read.
            let scan = core
                .push_items(
                    core.last_seq(),
                    &VersionVector::new(),
                    1,
                    nothing_yet,
                    2,
                    true,
                )
                .expect("scan");
            assert!(scan.items.is_empty() && scan.held.is_empty() && !scan.more);
            let scanned = core.metrics().snapshot().ops_scanned;
            match from {
                "memory" => assert_eq!(scanned, 0, "nothing read from the database"),
                _ => assert!(scanned >= 5, "read from the database: {scanned}"),
            }
            drop(core);
            core = self::core(&dir, "hub");
        }
    }

    /// Operations that took long to get here (a loaded mesh) make the
    /// served hold longer: twice the recent delivery lag, at most
    /// [`MAX_SERVED_RELAY_HOLD`].
    #[test]
    fn a_slow_mesh_holds_relays_of_served_devices_longer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(&dir, "hub");
        let mut pusher = Pusher::new("c", 8);
        let mut out = Vec::new();
        let now = Instant::now();
        pusher
            .receive(&core, full_request(), now, &mut out)
            .expect("request");
        pusher.poll(&core, now, &mut out).expect("poll");
        assert_eq!(pusher.served_relay_hold(), SERVED_RELAY_HOLD);
        let mut late = remote_op("x", 1);
        late.timestamp = crate::core::now_ms() - 3_000;
        core.apply_remote("x", vec![late]).expect("applies");
        assert!(core.delivery_lag() >= Duration::from_millis(3_000));
        pusher.poll(&core, now, &mut out).expect("poll");
        let hold = pusher.served_relay_hold();
        assert!(hold >= Duration::from_secs(6), "{hold:?}");
        assert!(hold <= MAX_SERVED_RELAY_HOLD);
        // A clock far off is bounded.
        let mut skewed = remote_op("x", 2);
        skewed.timestamp = 0;
        core.apply_remote("x", vec![skewed]).expect("applies");
        pusher.poll(&core, now, &mut out).expect("poll");
        assert_eq!(pusher.served_relay_hold(), MAX_SERVED_RELAY_HOLD);
    }

    /// A pusher remembers what a peer announced of devices it does not know
    /// only up to the replica's bound on devices.
    #[test]
    fn announcements_of_unknown_devices_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = nomade_crdt::ReplicaConfig {
            max_actors: 4,
            ..nomade_crdt::ReplicaConfig::default()
        };
        let core = Core::open(dir.path(), "hub", config).expect("open");
        let mut pusher = Pusher::new("c", 8);
        let mut out = Vec::new();
        let now = Instant::now();
        pusher
            .receive(&core, full_request(), now, &mut out)
            .expect("request");
        let names: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
        let many: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 5)).collect();
        pusher
            .receive(&core, have(&many), now, &mut out)
            .expect("have");
        assert_eq!(pusher.known_devices(), 4);
        assert!(out.is_empty());
        // Nor can a list of devices pulled from directly grow beyond it.
        let many: Vec<&str> = names.iter().map(String::as_str).collect();
        pusher
            .receive(&core, have_direct(&many, &[]), now, &mut out)
            .expect("have");
        assert_eq!(pusher.direct_devices(), 4);
        assert!(out.is_empty());
        // Nothing counts as acknowledged of devices this one does not hold.
        assert!(core.acked_by("c").is_empty());
    }

    /// A puller lists the devices this one pulls from directly (other than
    /// its own peer) when they change, at the short interval; counters of
    /// those devices wait for [`DIRECT_HAVE_INTERVAL`], counters of a
    /// device named before and not pulled from for
    /// [`SERVED_HAVE_INTERVAL`], a device never named for
    /// [`HAVE_INTERVAL`].
    #[test]
    fn a_puller_announces_the_devices_this_one_pulls_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(&dir, "me");
        let mut from_b = Puller::announcing("b");
        let mut from_c = Puller::announcing("c");
        from_b.request(&core);
        from_c.request(&core);
        assert_eq!(core.pulling(), vec!["b".to_string(), "c".to_string()]);
        let now = Instant::now();
        let have = |env: Option<Envelope>| match env.map(|e| e.message) {
            Some(Message::Have(h)) => (h.version_vector, h.direct_added, h.direct_removed),
            other => panic!("{other:?}"),
        };
        let list = |devices: &[&str]| Some(devices.iter().map(|d| d.to_string()).collect());
        assert_eq!(
            have(from_b.poll_have(&core, now)),
            (VersionVector::new(), list(&["c"]), None)
        );
        assert_eq!(
            have(from_c.poll_have(&core, now)),
            (VersionVector::new(), list(&["b"]), None)
        );
        let later = now + HAVE_INTERVAL;
        assert!(from_b.poll_have(&core, later).is_none(), "announced twice");
        // c's first operation, from c: c is pulled from directly, its
        // counter waits for the longest interval.
        core.apply_remote("c", vec![remote_op("c", 1)])
            .expect("applies");
        assert!(
            from_b.poll_have(&core, later).is_none(),
            "a raise went early"
        );
        assert_eq!(from_b.have_timeout(), Some(now + DIRECT_HAVE_INTERVAL));
        // A device never named goes at the short interval, with c's.
        core.apply_remote("x", vec![remote_op("x", 1)])
            .expect("applies");
        assert_eq!(
            have(from_b.poll_have(&core, later)),
            ([("c".into(), 1), ("x".into(), 1)].into(), None, None)
        );
        // Named before and not pulled from: the served interval.
        core.apply_remote("x", vec![remote_op("x", 2)])
            .expect("applies");
        assert!(from_b.poll_have(&core, later + HAVE_INTERVAL).is_none());
        assert_eq!(from_b.have_timeout(), Some(later + SERVED_HAVE_INTERVAL));
        let then = later + SERVED_HAVE_INTERVAL;
        assert_eq!(
            have(from_b.poll_have(&core, then)),
            ([("x".into(), 2)].into(), None, None)
        );
        // This device stops pulling from c: b is told at once.
        drop(from_c);
        assert_eq!(core.pulling(), vec!["b".to_string()]);
        assert_eq!(
            have(from_b.poll_have(&core, then + HAVE_INTERVAL)),
            (VersionVector::new(), None, list(&["c"]))
        );
    }

    /// ACK means durable: a message whose operation waits in the causal
    /// buffer (in memory only) is not acknowledged until it is applied and
    /// stored; then both messages are.
    #[test]
    fn a_puller_acknowledges_only_what_is_applied_and_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(&dir, "puller");
        let mut puller = Puller::new("far");
        assert!(matches!(
            puller.request(&core).message,
            Message::SyncRequest(SyncRequest {
                full_sync: true,
                ..
            })
        ));
        let mut out = Vec::new();
        // The second operation first: it waits for the first.
        let second = envelope(remote_set(2));
        puller
            .receive(&core, vec![second.clone()], &mut out)
            .expect("receives");
        assert!(out.is_empty(), "acknowledged a buffered operation");
        assert_eq!(core.replica().buffered(), 1);
        assert_eq!(puller.pending_acks(), 1);
        // The first: both applied and stored, both acknowledged.
        let first = envelope(remote_set(1));
        puller
            .receive(&core, vec![first.clone()], &mut out)
            .expect("receives");
        match &out[..] {
            [Envelope {
                message: Message::Ack(a),
                ..
            }] => {
                let mut got = a.message_ids.clone();
                got.sort_by_key(|id| *id.as_bytes());
                let mut want = vec![first.message_id, second.message_id];
                want.sort_by_key(|id| *id.as_bytes());
                assert_eq!(got, want);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(core.version_vector().get("far"), Some(&2));
        assert_eq!(puller.pending_acks(), 0);
    }

    /// A whole exchange between two devices' state machines, message by
    /// message: the puller ends with the pusher's state and the summary of
    /// the initial exchange, and the pusher with everything acknowledged.
    #[test]
    fn a_pusher_and_a_puller_converge_without_a_network() {
        let (da, db) = (tempfile::tempdir(), tempfile::tempdir());
        let (da, db) = (da.expect("tempdir"), db.expect("tempdir"));
        let (a, b) = (core(&da, "a"), core(&db, "b"));
        for i in 0..50 {
            set(&a, i);
        }
        let (mut pusher, mut puller) = (Pusher::new("b", 4), Puller::new("a"));
        let (mut to_puller, mut to_pusher) = (Vec::new(), Vec::new());
        pusher
            .receive(&a, puller.request(&b), Instant::now(), &mut to_puller)
            .expect("request");
        loop {
            pusher
                .poll(&a, Instant::now(), &mut to_puller)
                .expect("poll");
            let group = messages(&mut to_puller);
            if group.is_empty() {
                break;
            }
            puller.receive(&b, group, &mut to_pusher).expect("receive");
            for env in to_pusher.drain(..) {
                pusher
                    .receive(&a, env, Instant::now(), &mut to_puller)
                    .expect("ack");
            }
        }
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!(
            puller.take_summary(),
            Some(SyncSummary {
                operations: 50,
                hashes_match: true
            })
        );
        assert_eq!(pusher.unacked(), 0);
        assert_eq!(a.acked_by("b").get("a"), Some(&50));
    }

    struct Collect(Vec<Envelope>);

    impl FrameSink for Collect {
        async fn send(&mut self, env: &Envelope) -> Result<(), NodeError> {
            self.0.push(env.clone());
            Ok(())
        }

        async fn send_frame(&mut self, _frame: Bytes) -> Result<(), NodeError> {
            Ok(())
        }
    }

    /// A peer that sends nothing and keeps the stream open.
    struct Silent;

    impl FrameSource for Silent {
        async fn recv(&mut self) -> Result<Option<Envelope>, NodeError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_pull_starts_again_when_a_revoked_device_is_closed_later() {
        let d = tempfile::tempdir().expect("tempdir");
        let b = core(&d, "b");
        b.close_actor("x", 1);
        let (initial, _) = watch::channel(None);
        let c = b.clone();
        let pull = tokio::spawn(async move {
            let mut sink = Collect(Vec::new());
            let end = pull(c, Puller::new("a"), &mut sink, &mut Silent, &initial).await;
            (end, sink.0.len())
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Closing again at the same counter, or lower, changes nothing.
        b.close_actor("x", 1);
        b.close_actor("x", 0);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!pull.is_finished());
        // Later: what was refused meanwhile is to be asked for again.
        b.close_actor("x", 5);
        let (end, sent) = tokio::time::timeout(std::time::Duration::from_secs(5), pull)
            .await
            .expect("the pull ends")
            .expect("join");
        assert_eq!(end.expect("no error"), PullEnd::Resync);
        assert_eq!(sent, 1, "the SYNC_REQUEST");
    }
}
