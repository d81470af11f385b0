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

use nomade_wire::{
    Ack, EntityType, Envelope, ErrorCode, ErrorMessage, Message, MessageId, SyncComplete,
    SyncRequest, VersionVector,
};
use tokio::sync::watch;

use crate::batch::{split_batches, MAX_BATCH_PAYLOAD};
use crate::core::{now_ms, Core};
use crate::error::NodeError;
use crate::metrics::Metrics;

/// Sends frames on a stream.
pub trait FrameSink: Send {
    /// Sends one envelope.
    fn send(
        &mut self,
        env: &Envelope,
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
    let env = Envelope::new(
        new_message_id(),
        now_ms(),
        ErrorMessage {
            error_code: code,
            error_message: text,
            related_message_id: related,
        },
    );
    let _ = tx.send(&env).await;
}

/// Runs the puller side: requests what this device lacks, applies and
/// acknowledges everything the peer pushes, until the peer ends the stream.
/// `initial` receives the summary of the first full exchange.
pub async fn pull(
    core: Arc<Core>,
    peer: String,
    tx: &mut impl FrameSink,
    rx: &mut impl FrameSource,
    initial: watch::Sender<Option<SyncSummary>>,
) -> Result<(), NodeError> {
    let vv = core.version_vector();
    let request = SyncRequest {
        entity_types: vec![EntityType::Document, EntityType::Conversation],
        since_timestamp: None,
        full_sync: vv.is_empty(),
        version_vector: Some(vv),
    };
    tx.send(&Envelope::new(new_message_id(), now_ms(), request))
        .await?;
    while let Some(env) = rx.recv().await? {
        let ops = match env.message {
            Message::BatchedSync(b) => b.operations,
            Message::SyncOperation(op) => vec![op],
            Message::DeltaSync(d) => nomade_crdt::from_delta(&d)?,
            Message::SyncComplete(c) => {
                let ours = core.state_hash();
                let summary = SyncSummary {
                    operations: c.operations_count,
                    hashes_match: ours == c.new_state_hash,
                };
                tracing::info!(%peer, operations = c.operations_count, hashes_match = summary.hashes_match, "initial sync received");
                initial.send_replace(Some(summary));
                continue;
            }
            Message::Error(e) => {
                return Err(NodeError::Peer {
                    peer,
                    reason: format!("{} ({})", e.error_message, e.error_code.name()),
                });
            }
            other => {
                let name = other.message_type().name();
                send_error(
                    tx,
                    ErrorCode::INVALID_MESSAGE,
                    format!("{name} on a sync stream"),
                    Some(env.message_id),
                )
                .await;
                return Err(NodeError::Peer {
                    peer,
                    reason: format!("sent {name} on a sync stream"),
                });
            }
        };
        let c = core.clone();
        let p = peer.clone();
        let result = tokio::task::spawn_blocking(move || c.apply_remote(&p, ops))
            .await
            .map_err(|e| NodeError::Peer {
                peer: peer.clone(),
                reason: format!("apply task failed: {e}"),
            })?;
        match result {
            Ok(_) => {
                let ack = Ack {
                    message_ids: vec![env.message_id],
                };
                tx.send(&Envelope::new(new_message_id(), now_ms(), ack))
                    .await?;
            }
            Err(NodeError::Crdt(nomade_crdt::CrdtError::BufferFull { .. })) => {
                send_error(
                    tx,
                    ErrorCode::SYNC_CONFLICT,
                    "causal buffer full: resync needed".into(),
                    Some(env.message_id),
                )
                .await;
                return Err(NodeError::Peer {
                    peer,
                    reason: "causal buffer full".into(),
                });
            }
            Err(NodeError::Store(e)) => {
                // Not durable: not acknowledged. The peer sends it again after reconnecting.
                send_error(
                    tx,
                    ErrorCode::QUOTA_EXCEEDED,
                    format!("cannot store operations: {e}"),
                    Some(env.message_id),
                )
                .await;
                return Err(NodeError::Store(e));
            }
            Err(e) => {
                send_error(
                    tx,
                    ErrorCode::INVALID_MESSAGE,
                    e.to_string(),
                    Some(env.message_id),
                )
                .await;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Runs the pusher side: answers the peer's `SYNC_REQUEST`, then pushes new
/// operations as they are stored, until the stream or the node ends.
pub async fn push(
    core: Arc<Core>,
    peer: String,
    tx: &mut impl FrameSink,
    rx: &mut impl FrameSource,
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
    let mut cursor = 0usize;
    let mut initial_done = false;
    // Frames sent and not yet acknowledged, with what each one carries.
    let mut unacked: HashMap<MessageId, VersionVector> = HashMap::new();
    loop {
        appended.borrow_and_update();
        let (ops, next) = core.ops_after(cursor, &peer_vv)?;
        cursor = next;
        if !ops.is_empty() {
            let batches = split_batches(&ops, MAX_BATCH_PAYLOAD)?;
            let frames = batches.len();
            for batch in batches {
                let mut covered = VersionVector::new();
                for op in &batch.operations {
                    let e = covered.entry(op.actor_id.clone()).or_insert(0);
                    *e = (*e).max(op.operation.counter);
                }
                let id = new_message_id();
                unacked.insert(id, covered);
                tx.send(&Envelope::new(id, now_ms(), batch)).await?;
            }
            Metrics::add(&core.metrics().ops_sent, ops.len() as u64);
            for op in &ops {
                let e = peer_vv.entry(op.actor_id.clone()).or_insert(0);
                *e = (*e).max(op.operation.counter);
            }
            tracing::debug!(%peer, ops = ops.len(), frames, "pushed operations");
        }
        if !initial_done {
            initial_done = true;
            let complete = SyncComplete {
                entity_types: vec![EntityType::Document, EntityType::Conversation],
                operations_count: u32::try_from(ops.len()).unwrap_or(u32::MAX),
                new_state_hash: core.state_hash(),
            };
            tx.send(&Envelope::new(new_message_id(), now_ms(), complete))
                .await?;
        }
        tokio::select! {
            changed = appended.changed() => {
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
