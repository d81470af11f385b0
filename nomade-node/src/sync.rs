//! The sync flows on a sync stream, over any framed channel.
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

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use nomade_crdt::raise_counter;
use nomade_wire::{
    Ack, BatchEncoder, EntityType, Envelope, ErrorCode, ErrorMessage, Message, MessageId,
    MessageType, SyncComplete, SyncOperation, SyncRequest, SyncSnapshot, VersionVector,
};
use tokio::sync::watch;

use crate::batch::MAX_BATCH_PAYLOAD;

/// Most log entries examined per scan when pushing, so that a large backlog
/// is sent in pieces rather than copied at once.
const SCAN_LIMIT: usize = 20_000;
use crate::core::{now_ms, Core, PushItem};
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::store::covers;

/// Sends frames on a stream.
pub trait FrameSink: Send {
    /// Sends one envelope.
    fn send(
        &mut self,
        env: &Envelope,
    ) -> impl std::future::Future<Output = Result<(), NodeError>> + Send;

    /// Sends one frame that is already encoded (a `BATCHED_SYNC` built by
    /// [`BatchEncoder`]).
    fn send_frame(
        &mut self,
        frame: bytes::Bytes,
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

/// What the puller learned when the pusher's initial batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSummary {
    /// Operations the pusher said it sent.
    pub operations: u32,
    /// Whether our state hash equalled the pusher's once everything was applied.
    pub hashes_match: bool,
}

async fn send_error(
    tx: &mut impl FrameSink,
    code: ErrorCode,
    text: String,
    related: Option<MessageId>,
) {
    let env = envelope(ErrorMessage {
        error_code: code,
        error_message: text,
        related_message_id: related,
    });
    let _ = tx.send(&env).await;
}

/// Most sync messages applied in one database transaction.
const MAX_MESSAGES_PER_COMMIT: usize = 64;

/// Runs the puller side: requests what this device lacks, applies and
/// acknowledges everything the peer pushes, until the peer ends the stream.
/// `initial` receives the summary of the first full exchange.
///
/// Reading and applying overlap: while one group of messages is being applied
/// and committed, the next ones are read; everything that arrived meanwhile is
/// applied in one transaction and acknowledged with one `ACK`.
pub async fn pull(
    core: Arc<Core>,
    peer: String,
    tx: &mut impl FrameSink,
    rx: &mut impl FrameSource,
    initial: &watch::Sender<Option<SyncSummary>>,
) -> Result<(), NodeError> {
    let vv = core.version_vector();
    let request = SyncRequest {
        entity_types: vec![EntityType::Document, EntityType::Conversation],
        since_timestamp: None,
        full_sync: vv.is_empty(),
        version_vector: Some(vv),
    };
    tx.send(&envelope(request)).await?;
    let (queue_tx, mut queue) = tokio::sync::mpsc::channel::<Envelope>(MAX_MESSAGES_PER_COMMIT);
    let reader = async move {
        while let Some(env) = rx.recv().await? {
            if queue_tx.send(env).await.is_err() {
                break;
            }
        }
        Ok::<(), NodeError>(())
    };
    let mut snapshot = SnapshotAssembly::default();
    // Messages whose operations are not all applied yet (some wait in the
    // causal buffer, in memory only): acknowledged once they are.
    let mut pending: Vec<Carried> = Vec::new();
    let applier = async {
        while let Some(first) = queue.recv().await {
            let mut group = vec![first];
            while group.len() < MAX_MESSAGES_PER_COMMIT {
                match queue.try_recv() {
                    Ok(env) => group.push(env),
                    Err(_) => break,
                }
            }
            let mut ops: Vec<SyncOperation> = Vec::new();
            let mut ids: Vec<Carried> = Vec::new();
            for env in group {
                let before = ops.len();
                match env.message {
                    Message::BatchedSync(b) => ops.extend(b.operations),
                    Message::SyncOperation(op) => ops.push(op),
                    Message::DeltaSync(d) => ops.extend(nomade_crdt::from_delta(&d)?),
                    other => {
                        // Apply what came before it (a snapshot too comes
                        // before the operations that follow it), then
                        // handle it.
                        apply_and_ack(
                            &core,
                            &peer,
                            tx,
                            std::mem::take(&mut ops),
                            std::mem::take(&mut ids),
                            &mut pending,
                        )
                        .await?;
                        match other {
                            Message::SyncSnapshot(piece) => {
                                receive_piece(
                                    &core,
                                    &peer,
                                    tx,
                                    &mut snapshot,
                                    env.message_id,
                                    piece,
                                )
                                .await?
                            }
                            other => {
                                handle_control(&core, &peer, tx, env.message_id, other, initial)
                                    .await?
                            }
                        }
                        continue;
                    }
                }
                ids.push((env.message_id, nomade_crdt::last_counters(&ops[before..])));
                Metrics::add(&core.metrics().sync_frames_received, 1);
            }
            apply_and_ack(&core, &peer, tx, ops, ids, &mut pending).await?;
        }
        Ok::<(), NodeError>(())
    };
    // The applier ends when the reader has ended (the queue closes) and it
    // has applied what was read. A failing applier ends the pull at once,
    // the reader with it, even if the peer keeps the stream open.
    tokio::pin!(reader, applier);
    let mut read = None;
    loop {
        tokio::select! {
            r = &mut reader, if read.is_none() => read = Some(r),
            applied = &mut applier => return applied.and(read.unwrap_or(Ok(()))),
        }
    }
}

/// A message that carried operations: its id, and the last counter of each
/// actor among them.
type Carried = (MessageId, VersionVector);

/// Most messages held back from acknowledgement while their operations wait
/// for dependencies (the causal buffer bounds them too); beyond, the oldest
/// are never acknowledged: the pusher sends them again after a reconnection.
const MAX_PENDING_ACKS: usize = 4096;

/// Applies a group of operations in one transaction, then acknowledges the
/// messages whose operations are all applied, so durably stored: those of
/// `carried`, and those of `pending` that became so. The others wait in
/// `pending`: an operation held in the causal buffer is only in memory.
async fn apply_and_ack(
    core: &Arc<Core>,
    peer: &str,
    tx: &mut impl FrameSink,
    ops: Vec<nomade_wire::SyncOperation>,
    carried: Vec<Carried>,
    pending: &mut Vec<Carried>,
) -> Result<(), NodeError> {
    if carried.is_empty() {
        return Ok(());
    }
    let c = core.clone();
    let p = peer.to_string();
    let result = tokio::task::spawn_blocking(move || c.apply_remote(&p, ops).map(|_| ())).await?;
    if result.is_err() {
        let ids = carried.into_iter().map(|(id, _)| id).collect();
        return acknowledge(peer, tx, result, ids).await;
    }
    pending.extend(carried);
    let vv = core.version_vector();
    let (ready, waiting): (Vec<Carried>, Vec<Carried>) = std::mem::take(pending)
        .into_iter()
        .partition(|(_, carried)| covers(&vv, carried));
    *pending = waiting;
    let excess = pending.len().saturating_sub(MAX_PENDING_ACKS);
    pending.drain(..excess);
    if ready.is_empty() {
        return Ok(());
    }
    let ids = ready.into_iter().map(|(id, _)| id).collect();
    acknowledge(peer, tx, Ok(()), ids).await
}

/// Takes one `SYNC_SNAPSHOT` piece; once the snapshot is whole, adopts it
/// and acknowledges its pieces. A piece out of place ends the pull with
/// `INVALID_MESSAGE`.
async fn receive_piece(
    core: &Arc<Core>,
    peer: &str,
    tx: &mut impl FrameSink,
    snapshot: &mut SnapshotAssembly,
    message_id: MessageId,
    piece: SyncSnapshot,
) -> Result<(), NodeError> {
    match snapshot.add(message_id, piece) {
        Ok(None) => Ok(()),
        Ok(Some((bytes, piece_ids))) => adopt_and_ack(core, peer, tx, bytes, piece_ids).await,
        Err(reason) => {
            send_error(
                tx,
                ErrorCode::INVALID_MESSAGE,
                reason.clone(),
                Some(message_id),
            )
            .await;
            Err(NodeError::Peer {
                peer: peer.to_string(),
                reason,
            })
        }
    }
}

/// Adopts a snapshot received whole (see [`Core::adopt_snapshot`]), then
/// acknowledges the messages that carried it.
async fn adopt_and_ack(
    core: &Arc<Core>,
    peer: &str,
    tx: &mut impl FrameSink,
    snapshot: Vec<u8>,
    ids: Vec<MessageId>,
) -> Result<(), NodeError> {
    let c = core.clone();
    let p = peer.to_string();
    let result =
        tokio::task::spawn_blocking(move || c.adopt_snapshot(&p, &snapshot).map(|_| ())).await?;
    if let Err(e) = &result {
        core.metrics().record_error("SNAPSHOT_REFUSED");
        tracing::warn!(%peer, error = %e, "did not adopt the peer's snapshot");
    }
    acknowledge(peer, tx, result, ids).await
}

/// Acknowledges `ids` when what they carried is durably applied (`result`
/// is `Ok`); otherwise tells the peer why with an `ERROR` and ends the
/// pull.
async fn acknowledge(
    peer: &str,
    tx: &mut impl FrameSink,
    result: Result<(), NodeError>,
    ids: Vec<MessageId>,
) -> Result<(), NodeError> {
    let related = ids.first().copied();
    match result {
        Ok(()) => {
            let ack = Ack { message_ids: ids };
            tx.send(&envelope(ack)).await
        }
        Err(NodeError::Crdt(nomade_crdt::CrdtError::BufferFull { .. })) => {
            send_error(
                tx,
                ErrorCode::SYNC_CONFLICT,
                "causal buffer full: resync needed".into(),
                related,
            )
            .await;
            Err(NodeError::Peer {
                peer: peer.to_string(),
                reason: "causal buffer full".into(),
            })
        }
        Err(NodeError::SnapshotRefused(reason)) => {
            send_error(tx, ErrorCode::SYNC_CONFLICT, reason.clone(), related).await;
            Err(NodeError::SnapshotRefused(reason))
        }
        Err(NodeError::Store(e)) => {
            // Not durable: not acknowledged. The peer sends it again after reconnecting.
            send_error(
                tx,
                ErrorCode::QUOTA_EXCEEDED,
                format!("cannot store operations: {e}"),
                related,
            )
            .await;
            Err(NodeError::Store(e))
        }
        Err(e) => {
            send_error(tx, ErrorCode::INVALID_MESSAGE, e.to_string(), related).await;
            Err(e)
        }
    }
}

/// Largest snapshot a puller accepts (1 GiB): a piece announcing more is
/// refused before anything is gathered.
pub const MAX_SNAPSHOT_LEN: u64 = 1 << 30;

/// A snapshot received whole, and the ids of the messages that carried it.
type WholeSnapshot = (Vec<u8>, Vec<MessageId>);

/// A snapshot being received, piece by piece.
#[derive(Default)]
struct SnapshotAssembly {
    total_len: u64,
    bytes: Vec<u8>,
    ids: Vec<MessageId>,
}

impl SnapshotAssembly {
    /// Takes the next piece; returns the whole snapshot and the ids of the
    /// messages that carried it once the last piece is in. A piece out of
    /// order, empty, past the announced length or announcing another one is
    /// an error naming what is wrong.
    fn add(&mut self, id: MessageId, piece: SyncSnapshot) -> Result<Option<WholeSnapshot>, String> {
        if self.ids.is_empty() {
            if piece.total_len > MAX_SNAPSHOT_LEN {
                return Err(format!(
                    "a snapshot of {} bytes (at most {MAX_SNAPSHOT_LEN} accepted)",
                    piece.total_len
                ));
            }
            self.total_len = piece.total_len;
        } else if piece.total_len != self.total_len {
            return Err(format!(
                "a snapshot piece announcing {} bytes in a snapshot of {}",
                piece.total_len, self.total_len
            ));
        }
        let expected = self.bytes.len() as u64;
        let end = piece.offset.saturating_add(piece.data.len() as u64);
        if piece.data.is_empty() || piece.offset != expected || end > self.total_len {
            return Err(format!(
                "a snapshot piece of {} bytes at offset {} (expected offset {expected} of {})",
                piece.data.len(),
                piece.offset,
                self.total_len
            ));
        }
        self.bytes.extend_from_slice(&piece.data);
        self.ids.push(id);
        if end == self.total_len {
            let done = std::mem::take(self);
            return Ok(Some((done.bytes, done.ids)));
        }
        Ok(None)
    }
}

/// Handles a message other than operations on the puller's stream.
async fn handle_control(
    core: &Arc<Core>,
    peer: &str,
    tx: &mut impl FrameSink,
    message_id: MessageId,
    message: Message,
    initial: &watch::Sender<Option<SyncSummary>>,
) -> Result<(), NodeError> {
    match message {
        Message::SyncComplete(c) => {
            let ours = core.state_hash();
            let summary = SyncSummary {
                operations: c.operations_count,
                hashes_match: ours == c.new_state_hash,
            };
            tracing::info!(%peer, operations = c.operations_count, hashes_match = summary.hashes_match, "initial sync received");
            initial.send_replace(Some(summary));
            Ok(())
        }
        Message::Error(e) => Err(NodeError::Peer {
            peer: peer.to_string(),
            reason: format!("{} ({})", e.error_message, e.error_code.name()),
        }),
        other => {
            let name = other.message_type().name();
            send_error(
                tx,
                ErrorCode::INVALID_MESSAGE,
                format!("{name} on a sync stream"),
                Some(message_id),
            )
            .await;
            Err(NodeError::Peer {
                peer: peer.to_string(),
                reason: format!("sent {name} on a sync stream"),
            })
        }
    }
}

/// Sends `ops` (in order) in as few `BATCHED_SYNC` frames as fit the payload
/// limit, each operation encoded once. Records what each frame covers, for
/// its acknowledgement, and that the peer will have it. Returns the number of
/// frames sent.
async fn send_batches(
    batch: &mut BatchEncoder,
    ops: &[SyncOperation],
    tx: &mut impl FrameSink,
    peer_vv: &mut VersionVector,
    unacked: &mut HashMap<MessageId, VersionVector>,
) -> Result<usize, NodeError> {
    let mut frames = 0;
    let mut covered = VersionVector::new();
    let mut buf = BytesMut::new();
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        let added = batch.push(op)?;
        if added {
            raise_counter(&mut covered, &op.actor_id, op.operation.last_counter());
            i += 1;
        }
        if !added || i == ops.len() {
            let id = new_message_id();
            batch.finish_frame(id, now_ms(), &mut buf)?;
            // The peer will have these: later scans skip them.
            for (actor, &c) in &covered {
                raise_counter(peer_vv, actor, c);
            }
            unacked.insert(id, std::mem::take(&mut covered));
            tx.send_frame(buf.split().freeze()).await?;
            frames += 1;
        }
    }
    Ok(frames)
}

/// Sends the stored snapshot in `SYNC_SNAPSHOT` pieces of at most
/// [`nomade_wire::MAX_CHUNK_DATA`] bytes; the last piece's acknowledgement
/// stands for the whole. Returns the sequence number it covers (where the
/// operations after it start).
async fn send_snapshot(
    core: &Arc<Core>,
    peer: &str,
    tx: &mut impl FrameSink,
    peer_vv: &mut VersionVector,
    unacked: &mut HashMap<MessageId, VersionVector>,
) -> Result<u64, NodeError> {
    let c = core.clone();
    let stored = tokio::task::spawn_blocking(move || c.stored_snapshot()).await??;
    let Some((seq, vv, raw)) = stored else {
        return Err(NodeError::CorruptLog(
            "operations were compacted but no snapshot is stored".into(),
        ));
    };
    let raw = bytes::Bytes::from(raw);
    let total_len = raw.len() as u64;
    let mut offset = 0usize;
    while offset < raw.len() {
        let end = raw.len().min(offset + nomade_wire::MAX_CHUNK_DATA);
        let id = new_message_id();
        let piece = SyncSnapshot {
            total_len,
            offset: offset as u64,
            data: raw.slice(offset..end),
        };
        tx.send(&Envelope::new(id, now_ms(), piece)).await?;
        if end == raw.len() {
            unacked.insert(id, vv.clone());
        }
        offset = end;
    }
    for (actor, &c) in &vv {
        raise_counter(peer_vv, actor, c);
    }
    Metrics::add(&core.metrics().snapshots_sent, 1);
    tracing::info!(%peer, bytes = total_len, seq, "sent a snapshot");
    Ok(seq)
}

/// Runs the pusher side: answers the peer's `SYNC_REQUEST`, then pushes new
/// operations as they are stored, until the stream or the node ends.
pub async fn push(
    core: Arc<Core>,
    peer: String,
    tx: &mut impl FrameSink,
    rx: &mut impl FrameSource,
) -> Result<(), NodeError> {
    push_with_window(core, peer, tx, rx, MAX_UNACKED_FRAMES).await
}

/// Frames a pusher sends without their acknowledgement before it waits for
/// one (1,024, about 60 MB of operations at most): what it remembers of
/// frames in flight stays bounded, whatever the peer does.
pub const MAX_UNACKED_FRAMES: usize = 1024;

/// [`push`] with a window of `window` unacknowledged frames.
async fn push_with_window(
    core: Arc<Core>,
    peer: String,
    tx: &mut impl FrameSink,
    rx: &mut impl FrameSource,
    window: usize,
) -> Result<(), NodeError> {
    let Some(first) = rx.recv().await? else {
        return Ok(());
    };
    let request = match first.message {
        Message::SyncRequest(r) => r,
        other => {
            let name = other.message_type().name();
            send_error(
                tx,
                ErrorCode::INVALID_MESSAGE,
                format!("expected SYNC_REQUEST, got {name}"),
                Some(first.message_id),
            )
            .await;
            return Err(NodeError::Peer {
                peer,
                reason: format!("opened a sync stream with {name}"),
            });
        }
    };
    let mut peer_vv: VersionVector = if request.full_sync {
        VersionVector::new()
    } else {
        request.version_vector.unwrap_or_default()
    };
    let mut appended = core.appended();
    // Everything up to the resume point is covered by what the peer has.
    let mut cursor = core.resume_point(&peer_vv)?;
    let mut initial_done = false;
    // Frames sent and not yet acknowledged, with what each one carries.
    let mut unacked: HashMap<MessageId, VersionVector> = HashMap::new();
    let mut initial_count = 0usize;
    let mut batch = BatchEncoder::new(MAX_BATCH_PAYLOAD);
    // What the peer says it holds counts as acknowledged: with what it
    // acknowledges later, it is what compaction may drop.
    core.record_ack(&peer, &peer_vv);
    core.forget_received(&peer);
    loop {
        // A full window: nothing more is sent until acknowledgements come.
        let window_full = unacked.len() >= window;
        if !window_full {
            appended.borrow_and_update();
            // What the peer sent this device since: not sent back.
            for (actor, &c) in &core.received_from(&peer) {
                raise_counter(&mut peer_vv, actor, c);
            }
            if !covers(&peer_vv, &core.compacted()) {
                // The peer lacks operations this device no longer holds (it was
                // away longer than the hold, or is new): the snapshot first,
                // then the operations after it.
                cursor = send_snapshot(&core, &peer, tx, &mut peer_vv, &mut unacked).await?;
            }
            let (items, next, more) = core.push_items(cursor, &peer_vv, SCAN_LIMIT)?;
            cursor = next;
            for item in items {
                let (count, frames) = match item {
                    PushItem::Run {
                        payload,
                        count,
                        covers,
                    } => {
                        // As stored: no operation decoded or encoded again.
                        let id = new_message_id();
                        let mut buf = BytesMut::new();
                        nomade_wire::put_frame(
                            &mut buf,
                            MessageType::BatchedSync,
                            id,
                            now_ms(),
                            &payload,
                        )?;
                        for (actor, &c) in &covers {
                            raise_counter(&mut peer_vv, actor, c);
                        }
                        unacked.insert(id, covers);
                        tx.send_frame(buf.freeze()).await?;
                        Metrics::add(&core.metrics().runs_sent_as_stored, 1);
                        (count as usize, 1)
                    }
                    PushItem::Operations(ops) => {
                        let frames =
                            send_batches(&mut batch, &ops, tx, &mut peer_vv, &mut unacked).await?;
                        (ops.len(), frames)
                    }
                };
                Metrics::add(&core.metrics().ops_sent, count as u64);
                if !initial_done {
                    initial_count += count;
                }
                tracing::debug!(%peer, ops = count, frames, "pushed operations");
            }
            if more {
                continue;
            }
            if !initial_done {
                initial_done = true;
                let complete = SyncComplete {
                    entity_types: vec![EntityType::Document, EntityType::Conversation],
                    operations_count: u32::try_from(initial_count).unwrap_or(u32::MAX),
                    new_state_hash: core.state_hash(),
                };
                tx.send(&envelope(complete)).await?;
            }
        }
        tokio::select! {
            changed = appended.changed(), if !window_full => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            msg = rx.recv() => {
                match msg? {
                    None => return Ok(()),
                    Some(Envelope { message: Message::Ack(a), .. }) => {
                        for id in &a.message_ids {
                            if let Some(vv) = unacked.remove(id) {
                                core.record_ack(&peer, &vv);
                            }
                        }
                        tracing::trace!(%peer, unacked = unacked.len(), "ack");
                    }
                    Some(Envelope { message: Message::Error(e), .. }) => {
                        return Err(NodeError::Peer { peer, reason: format!("{} ({})", e.error_message, e.error_code.name()) });
                    }
                    Some(other) => {
                        let name = other.message.message_type().name();
                        send_error(tx, ErrorCode::INVALID_MESSAGE, format!("{name} not expected here"), Some(other.message_id)).await;
                        return Err(NodeError::Peer { peer, reason: format!("sent {name} to a pusher") });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(total_len: u64, offset: u64, data: &'static [u8]) -> SyncSnapshot {
        SyncSnapshot {
            total_len,
            offset,
            data: bytes::Bytes::from_static(data),
        }
    }

    #[test]
    fn a_snapshot_is_gathered_in_order_and_whole() {
        let mut a = SnapshotAssembly::default();
        let (one, two) = (new_message_id(), new_message_id());
        assert_eq!(a.add(one, piece(6, 0, b"abc")), Ok(None));
        let (bytes, ids) = a
            .add(two, piece(6, 3, b"def"))
            .expect("in order")
            .expect("whole");
        assert_eq!(bytes, b"abcdef");
        assert_eq!(ids, vec![one, two]);
        // Ready for the next one.
        assert_eq!(
            a.add(one, piece(1, 0, b"z")).expect("ok").expect("whole").0,
            b"z"
        );
    }

    /// BAD_INPUTS: snapshot pieces out of order, overlapping, empty, past
    /// their announced length, changing it, or announcing more than a
    /// puller accepts: refused with what is wrong, before anything large is
    /// held.
    #[test]
    fn bad_snapshot_pieces_are_refused() {
        let id = new_message_id();
        let cases: Vec<(&str, Vec<SyncSnapshot>, &str)> = vec![
            (
                "too large",
                vec![piece(MAX_SNAPSHOT_LEN + 1, 0, b"a")],
                "at most",
            ),
            (
                "not from the start",
                vec![piece(6, 3, b"def")],
                "expected offset 0",
            ),
            (
                "a gap",
                vec![piece(6, 0, b"ab"), piece(6, 3, b"def")],
                "expected offset 2",
            ),
            (
                "an overlap",
                vec![piece(6, 0, b"abc"), piece(6, 2, b"cde")],
                "expected offset 3",
            ),
            ("empty", vec![piece(6, 0, b"")], "of 0 bytes"),
            ("past the end", vec![piece(2, 0, b"abc")], "of 2"),
            (
                "another length",
                vec![piece(6, 0, b"abc"), piece(7, 3, b"def")],
                "announcing 7",
            ),
        ];
        for (what, pieces, says) in cases {
            let mut a = SnapshotAssembly::default();
            let mut result = Ok(None);
            for p in pieces {
                result = a.add(id, p);
                if result.is_err() {
                    break;
                }
            }
            match result {
                Err(m) => assert!(m.contains(says), "{what}: {m}"),
                Ok(r) => panic!("{what}: accepted ({r:?})"),
            }
        }
    }

    /// Frames to and from a pusher under test, over channels: the sync
    /// flow without sockets.
    struct ChannelSink(tokio::sync::mpsc::UnboundedSender<Envelope>);
    struct ChannelSource(tokio::sync::mpsc::UnboundedReceiver<Envelope>);

    impl FrameSink for ChannelSink {
        async fn send(&mut self, env: &Envelope) -> Result<(), NodeError> {
            let _ = self.0.send(env.clone());
            Ok(())
        }

        async fn send_frame(&mut self, frame: bytes::Bytes) -> Result<(), NodeError> {
            let env = Envelope::decode(&frame).map_err(|e| NodeError::Peer {
                peer: "test".into(),
                reason: e.to_string(),
            })?;
            let _ = self.0.send(env);
            Ok(())
        }
    }

    impl FrameSource for ChannelSource {
        async fn recv(&mut self) -> Result<Option<Envelope>, NodeError> {
            Ok(self.0.recv().await)
        }
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

    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Envelope>) -> Envelope {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a frame in time")
            .expect("the pusher is running")
    }

    /// The sync issue: a pusher keeps at most its window of frames without
    /// acknowledgement, then waits (a peer that never acknowledges costs
    /// bounded memory); an acknowledgement opens the window again, and one
    /// naming frames never sent changes nothing.
    #[tokio::test]
    async fn a_pusher_waits_when_its_window_of_unacknowledged_frames_is_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core =
            Core::open(dir.path(), "pusher", nomade_crdt::ReplicaConfig::default()).expect("open");
        let (to_peer, mut from_pusher) = tokio::sync::mpsc::unbounded_channel();
        let (to_pusher, from_peer) = tokio::sync::mpsc::unbounded_channel();
        let pusher = tokio::spawn({
            let core = core.clone();
            async move {
                let (mut tx, mut rx) = (ChannelSink(to_peer), ChannelSource(from_peer));
                push_with_window(core, "peer".into(), &mut tx, &mut rx, 2).await
            }
        });
        let request = SyncRequest {
            entity_types: vec![],
            since_timestamp: None,
            full_sync: true,
            version_vector: None,
        };
        to_pusher.send(envelope(request)).expect("send");
        assert!(matches!(
            next(&mut from_pusher).await.message,
            Message::SyncComplete(_)
        ));
        // Two frames, each acknowledged by nobody.
        let mut sent = Vec::new();
        for i in 0..2 {
            set(&core, i);
            let env = next(&mut from_pusher).await;
            assert!(matches!(env.message, Message::BatchedSync(_)));
            sent.push(env.message_id);
        }
        // The window is full: more edits are not sent.
        for i in 2..5 {
            set(&core, i);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(from_pusher.try_recv().is_err(), "sent past a full window");
        // An acknowledgement of frames never sent changes nothing.
        let ack = Ack {
            message_ids: vec![new_message_id()],
        };
        to_pusher.send(envelope(ack)).expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            from_pusher.try_recv().is_err(),
            "a bogus ACK opened the window"
        );
        assert!(!core.acked_by("peer").contains_key("pusher"));
        // A real one opens it: the three waiting edits go, together.
        let ack = Ack {
            message_ids: vec![sent[0]],
        };
        to_pusher.send(envelope(ack)).expect("send");
        match next(&mut from_pusher).await.message {
            Message::BatchedSync(b) => assert_eq!(b.operations.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(core.acked_by("peer").get("pusher"), Some(&1));
        drop(to_pusher);
        assert!(pusher.await.expect("joins").is_ok());
    }

    fn remote_set(counter: u64) -> SyncOperation {
        let mut deps = VersionVector::new();
        if counter > 1 {
            deps.insert("far".into(), counter - 1);
        }
        SyncOperation {
            entity_id: "doc".into(),
            entity_type: EntityType::Document,
            operation: nomade_wire::CrdtOperation {
                counter,
                deps,
                edit: nomade_wire::Edit::Set {
                    key: format!("k{counter}"),
                    value: nomade_wire::Value::Int(counter as i64),
                },
            },
            timestamp: 0,
            actor_id: "far".into(),
        }
    }

    /// ACK means durable: a message whose operation waits in the causal
    /// buffer (in memory only) is not acknowledged until it is applied and
    /// stored; then both messages are.
    #[tokio::test]
    async fn a_puller_acknowledges_only_what_is_applied_and_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core =
            Core::open(dir.path(), "puller", nomade_crdt::ReplicaConfig::default()).expect("open");
        let (to_pusher, mut from_puller) = tokio::sync::mpsc::unbounded_channel();
        let (to_puller, from_pusher) = tokio::sync::mpsc::unbounded_channel();
        let (initial, _) = watch::channel(None);
        let puller = tokio::spawn({
            let core = core.clone();
            async move {
                let (mut tx, mut rx) = (ChannelSink(to_pusher), ChannelSource(from_pusher));
                pull(core, "peer".into(), &mut tx, &mut rx, &initial).await
            }
        });
        assert!(matches!(
            next(&mut from_puller).await.message,
            Message::SyncRequest(_)
        ));
        // The second operation first: it waits for the first.
        let second = envelope(remote_set(2));
        to_puller.send(second.clone()).expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            from_puller.try_recv().is_err(),
            "acknowledged a buffered operation"
        );
        assert_eq!(core.replica().buffered(), 1);
        // The first: both applied and stored, both acknowledged.
        let first = envelope(remote_set(1));
        to_puller.send(first.clone()).expect("send");
        match next(&mut from_puller).await.message {
            Message::Ack(a) => {
                let mut got = a.message_ids.clone();
                got.sort_by_key(|id| *id.as_bytes());
                let mut want = vec![first.message_id, second.message_id];
                want.sort_by_key(|id| *id.as_bytes());
                assert_eq!(got, want);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(core.version_vector().get("far"), Some(&2));
        drop(to_puller);
        assert!(puller.await.expect("joins").is_ok());
    }
}
