//! The artifact transfer as two sans-IO state machines.
//!
//! ```text
//! Receiver (fetcher)                         Sender (holder)
//!    ARTIFACT_REQUEST {id, priority, resume_from?}  ->
//!                                  <-  ARTIFACT_METADATA {id, size, chunk_count, ...}
//!                                  <-  ARTIFACT_CHUNK {index = resume_from.., chunk_hash}
//!                                  <-  ... (the last with is_final = true)
//!    ARTIFACT_COMPLETE {id, received_hash}          ->
//! ```
//!
//! Both sides are driven the same way: feed every message received to
//! `handle_message`, and send whatever `next_message` yields until it returns
//! `Ok(None)`. `next_message` is pull-based, so the glue reads (and, on the
//! sender, seals-off and reads from disk) the next chunk only when the stream
//! can take it: that is the backpressure. After an `Err`, keep calling
//! `next_message`: an ERROR for the peer may be queued.
//!
//! An empty artifact (and a transfer resumed with every chunk already held)
//! has no ARTIFACT_CHUNK: the receiver completes on the metadata.

use std::collections::VecDeque;

use nomade_wire::{
    ArtifactChunk, ArtifactComplete, ArtifactMetadata, ArtifactRequest, ErrorCode, ErrorMessage,
    Message, MAX_CHUNK_DATA,
};

use crate::chunk::{self, chunk_hash, chunk_len, ArtifactId};
use crate::error::{ArtifactError, Result};
use crate::progress::Progress;
use crate::store::{ArtifactReader, ArtifactStore, PartialArtifact, ReceiveClaim};

fn peer_error(e: &ErrorMessage) -> ArtifactError {
    ArtifactError::Peer {
        code: e.error_code,
        message: e.error_message.clone(),
    }
}

fn unexpected(m: &Message, state: &str) -> ArtifactError {
    ArtifactError::Protocol(format!(
        "unexpected {} while {state}",
        m.message_type().name()
    ))
}

/// What happened on the holder's side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// The request was accepted: metadata, then chunks from `resume_from`.
    Serving {
        /// The artifact.
        id: ArtifactId,
        /// First chunk sent.
        resume_from: u32,
    },
    /// The request was refused with ERROR `ARTIFACT_NOT_FOUND` (unknown id,
    /// this device cannot open it, or the peer is not authorised).
    Refused {
        /// The artifact asked for.
        id: ArtifactId,
    },
    /// The receiver confirmed the whole artifact with the right hash.
    Completed {
        /// The artifact.
        id: ArtifactId,
    },
}

enum SenderState {
    AwaitingRequest,
    Sending {
        reader: Box<ArtifactReader>,
        next: u32,
    },
    AwaitingComplete,
    Finished,
    Failed,
}

/// The holder's side of one transfer.
pub struct Sender {
    store: ArtifactStore,
    authorized: bool,
    state: SenderState,
    id: Option<ArtifactId>,
    outbox: VecDeque<Message>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender serving from `store`. `authorized` is the caller's decision
    /// that the peer may fetch artifacts (for example: it is paired, and is a
    /// recipient, see [`ArtifactStore::is_recipient`]). An unauthorised request
    /// is answered with ERROR `ARTIFACT_NOT_FOUND`, the same answer as for an
    /// unknown id, so that a peer cannot probe which artifacts are held.
    pub fn new(store: ArtifactStore, authorized: bool) -> Sender {
        Sender {
            store,
            authorized,
            state: SenderState::AwaitingRequest,
            id: None,
            outbox: VecDeque::new(),
        }
    }

    /// The artifact requested, once known.
    pub fn artifact_id(&self) -> Option<ArtifactId> {
        self.id
    }

    /// Whether the exchange is over (completed, refused or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, SenderState::Finished | SenderState::Failed) && self.outbox.is_empty()
    }

    fn refuse(&mut self, id: ArtifactId, code: ErrorCode, text: String) {
        self.outbox.push_back(Message::Error(ErrorMessage {
            error_code: code,
            error_message: text,
            related_message_id: None,
        }));
        self.state = SenderState::Finished;
        self.id = Some(id);
    }

    fn fail(&mut self, e: ArtifactError, notify: bool) -> ArtifactError {
        if notify {
            self.outbox.push_back(Message::Error(e.to_error_message()));
        }
        self.state = SenderState::Failed;
        e
    }

    /// Feeds a message received from the peer.
    pub fn handle_message(&mut self, msg: Message) -> Result<SenderEvent> {
        match (&self.state, msg) {
            (SenderState::AwaitingRequest, Message::ArtifactRequest(req)) => self.on_request(req),
            (SenderState::AwaitingComplete, Message::ArtifactComplete(c)) => {
                let id = self
                    .id
                    .ok_or_else(|| ArtifactError::Protocol("no request".into()))?;
                if ArtifactId::from(c.artifact_id) != id {
                    return Err(self.fail(
                        ArtifactError::Protocol(format!("ARTIFACT_COMPLETE for {}", c.artifact_id)),
                        true,
                    ));
                }
                if ArtifactId::from(c.received_hash) != id {
                    return Err(self.fail(
                        ArtifactError::HashMismatch {
                            expected: id,
                            actual: c.received_hash.into(),
                        },
                        false,
                    ));
                }
                self.state = SenderState::Finished;
                Ok(SenderEvent::Completed { id })
            }
            (SenderState::Finished | SenderState::Failed, m) => Err(unexpected(&m, "finished")),
            (_, Message::Error(e)) => Err(self.fail(peer_error(&e), false)),
            (_, m) => {
                let e = unexpected(&m, "serving");
                Err(self.fail(e, true))
            }
        }
    }

    fn on_request(&mut self, req: ArtifactRequest) -> Result<SenderEvent> {
        let id = ArtifactId::from(req.artifact_id);
        if !self.authorized {
            self.refuse(
                id,
                ErrorCode::ARTIFACT_NOT_FOUND,
                format!("artifact {id} not found"),
            );
            return Ok(SenderEvent::Refused { id });
        }
        let reader = match self.store.open_artifact(&id) {
            Ok(r) => r,
            Err(ArtifactError::NotFound { .. } | ArtifactError::NotARecipient { .. }) => {
                self.refuse(
                    id,
                    ErrorCode::ARTIFACT_NOT_FOUND,
                    format!("artifact {id} not found"),
                );
                return Ok(SenderEvent::Refused { id });
            }
            Err(e) => {
                // Our copy is unusable (corrupt, truncated, I/O): the peer should
                // fetch it elsewhere; the caller learns why.
                self.refuse(
                    id,
                    ErrorCode::ARTIFACT_NOT_FOUND,
                    format!("artifact {id} unavailable"),
                );
                return Err(e);
            }
        };
        self.id = Some(id);
        let count = reader.info().chunk_count;
        let next = req.resume_from.unwrap_or(0);
        if next > count {
            return Err(self.fail(
                ArtifactError::Protocol(format!("resume_from {next} beyond {count} chunks")),
                true,
            ));
        }
        self.outbox
            .push_back(Message::ArtifactMetadata(reader.info().to_wire()));
        self.state = if next == count {
            SenderState::AwaitingComplete
        } else {
            SenderState::Sending {
                reader: Box::new(reader),
                next,
            }
        };
        Ok(SenderEvent::Serving {
            id,
            resume_from: next,
        })
    }

    /// The next message to send, if any. Reads (and verifies) one chunk from
    /// the store per call: call it when the stream can take more.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        if let Some(m) = self.outbox.pop_front() {
            return Ok(Some(m));
        }
        let SenderState::Sending { reader, next } = &mut self.state else {
            return Ok(None);
        };
        let index = *next;
        let count = reader.info().chunk_count;
        let artifact_id = reader.info().id.hash32();
        let data = match reader.read_chunk(index) {
            Ok(d) => d,
            Err(e) => {
                let text = format!("artifact {} unavailable", reader.info().id);
                self.outbox.push_back(Message::Error(ErrorMessage {
                    error_code: ErrorCode::ARTIFACT_NOT_FOUND,
                    error_message: text,
                    related_message_id: None,
                }));
                self.state = SenderState::Failed;
                return Err(e);
            }
        };
        let chunk_hash = reader.chunk_hash(index);
        *next += 1;
        let is_final = index + 1 == count;
        if is_final {
            self.state = SenderState::AwaitingComplete;
        }
        Ok(Some(Message::ArtifactChunk(ArtifactChunk {
            artifact_id,
            chunk_index: index,
            chunk_data: data,
            is_final,
            chunk_hash,
        })))
    }
}

/// What happened on the fetcher's side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// Valid metadata arrived; the transfer is under way.
    Started(Progress),
    /// A chunk was verified and written to disk.
    Progress(Progress),
    /// The whole artifact was verified and is in the store; ARTIFACT_COMPLETE
    /// is queued.
    Complete {
        /// The artifact.
        id: ArtifactId,
        /// Final progress.
        progress: Progress,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum RecvState {
    AwaitingMetadata,
    Receiving,
    Finished,
    Failed,
}

/// The fetcher's side of one transfer. Verified chunks are sealed and written
/// to a partial file as they arrive; a new `Receiver` for the same id resumes
/// from the last verified chunk. At most one receiver per id runs on a store
/// at a time (`TransferInProgress` otherwise).
pub struct Receiver {
    store: ArtifactStore,
    id: ArtifactId,
    request: ArtifactRequest,
    partial: Option<PartialArtifact>,
    state: RecvState,
    outbox: VecDeque<Message>,
    progress: Progress,
    _claim: ReceiveClaim,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Prepares to fetch `id` into `store`. If a partial transfer of `id` is
    /// on disk, its chunks are verified and the request asks to resume after
    /// the last good one. The request is the first [`next_message`](Self::next_message).
    ///
    /// Fails with `AlreadyStored` if the artifact is already complete, and with
    /// `TransferInProgress` while another receiver for it is alive.
    pub fn new(store: ArtifactStore, id: ArtifactId, priority: u8) -> Result<Receiver> {
        if store.has(&id) {
            return Err(ArtifactError::AlreadyStored { id });
        }
        let claim = store.claim_receive(&id)?;
        let partial = store.load_partial(&id)?;
        let (resume, progress) = match &partial {
            Some(p) => (
                p.chunks_done(),
                Progress {
                    bytes_done: p.bytes_done,
                    bytes_total: p.size,
                    chunks_done: p.chunks_done(),
                    chunks_total: p.chunk_count,
                    bytes_at_start: p.bytes_done,
                },
            ),
            None => (0, Progress::default()),
        };
        let request = ArtifactRequest {
            artifact_id: id.hash32(),
            priority,
            resume_from: (resume > 0).then_some(resume),
        };
        Ok(Receiver {
            store,
            id,
            outbox: VecDeque::from([Message::ArtifactRequest(request.clone())]),
            request,
            partial,
            state: RecvState::AwaitingMetadata,
            progress,
            _claim: claim,
        })
    }

    /// The request this receiver sends (with `resume_from` when resuming).
    pub fn request(&self) -> &ArtifactRequest {
        &self.request
    }

    /// The artifact being fetched.
    pub fn artifact_id(&self) -> ArtifactId {
        self.id
    }

    /// Progress so far.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Whether the artifact was received, verified and stored.
    pub fn is_complete(&self) -> bool {
        self.state == RecvState::Finished
    }

    /// Whether the exchange is over (complete or failed) and nothing is left to send.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, RecvState::Finished | RecvState::Failed) && self.outbox.is_empty()
    }

    /// The next message to send, if any.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        Ok(self.outbox.pop_front())
    }

    fn fail(&mut self, e: ArtifactError) -> ArtifactError {
        if !matches!(e, ArtifactError::Peer { .. }) {
            self.outbox.push_back(Message::Error(e.to_error_message()));
        }
        // The partial keeps its verified prefix for a later resume.
        self.partial = None;
        self.state = RecvState::Failed;
        e
    }

    /// Feeds a message received from the holder.
    pub fn handle_message(&mut self, msg: Message) -> Result<ReceiverEvent> {
        let r = match (&self.state, msg) {
            (RecvState::AwaitingMetadata, Message::ArtifactMetadata(m)) => self.on_metadata(m),
            (RecvState::Receiving, Message::ArtifactChunk(c)) => self.on_chunk(c),
            (RecvState::Finished | RecvState::Failed, m) => {
                return Err(unexpected(&m, "finished"));
            }
            (_, Message::Error(e)) => Err(peer_error(&e)),
            (_, m) => Err(unexpected(&m, "receiving")),
        };
        r.map_err(|e| self.fail(e))
    }

    fn on_metadata(&mut self, m: ArtifactMetadata) -> Result<ReceiverEvent> {
        if ArtifactId::from(m.artifact_id) != self.id {
            return Err(ArtifactError::Protocol(format!(
                "ARTIFACT_METADATA for {}, asked for {}",
                m.artifact_id, self.id
            )));
        }
        chunk::validate_layout(m.size, m.chunk_count)?;
        let partial = match self.partial.take() {
            Some(mut p) if p.size == m.size => {
                p.reserve_remaining()?;
                p
            }
            Some(p) => {
                p.discard()?;
                return Err(ArtifactError::BadMetadata(format!(
                    "size {} differs from the partial transfer's {}",
                    m.size, self.progress.bytes_total
                )));
            }
            // Quota checked before anything is written.
            None => self
                .store
                .create_partial(&self.id, m.size, m.mime_type.clone())?,
        };
        self.progress = Progress {
            bytes_done: partial.bytes_done,
            bytes_total: m.size,
            chunks_done: partial.chunks_done(),
            chunks_total: m.chunk_count,
            bytes_at_start: partial.bytes_done,
        };
        if partial.chunks_done() == partial.chunk_count {
            return self.finish(partial);
        }
        self.partial = Some(partial);
        self.state = RecvState::Receiving;
        Ok(ReceiverEvent::Started(self.progress))
    }

    fn on_chunk(&mut self, c: ArtifactChunk) -> Result<ReceiverEvent> {
        let partial = self
            .partial
            .as_mut()
            .ok_or_else(|| ArtifactError::Protocol("chunk before metadata".into()))?;
        let index = c.chunk_index;
        if ArtifactId::from(c.artifact_id) != self.id {
            return Err(ArtifactError::Protocol(format!(
                "ARTIFACT_CHUNK for {}, asked for {}",
                c.artifact_id, self.id
            )));
        }
        let expected_index = partial.chunks_done();
        if index != expected_index {
            return Err(ArtifactError::BadChunk {
                index,
                reason: format!("expected chunk {expected_index}"),
            });
        }
        if c.chunk_data.len() > MAX_CHUNK_DATA {
            return Err(ArtifactError::ChunkTooLarge {
                len: c.chunk_data.len(),
                max: MAX_CHUNK_DATA,
            });
        }
        let want = chunk_len(partial.size, index).unwrap_or(0);
        if c.chunk_data.len() != want {
            return Err(ArtifactError::BadChunk {
                index,
                reason: format!("{} bytes, expected {want}", c.chunk_data.len()),
            });
        }
        let last = index + 1 == partial.chunk_count;
        if c.is_final != last {
            return Err(ArtifactError::BadChunk {
                index,
                reason: format!("is_final = {}, expected {last}", c.is_final),
            });
        }
        let h = chunk_hash(&c.chunk_data);
        if c.chunk_hash.is_some_and(|claimed| claimed != h) {
            return Err(ArtifactError::ChunkHashMismatch { index });
        }
        partial.append(&c.chunk_data, h)?;
        self.progress.bytes_done = partial.bytes_done;
        self.progress.chunks_done = partial.chunks_done();
        if last {
            let p = self
                .partial
                .take()
                .ok_or_else(|| ArtifactError::Protocol("no partial".into()))?;
            return self.finish(p);
        }
        Ok(ReceiverEvent::Progress(self.progress))
    }

    fn finish(&mut self, partial: PartialArtifact) -> Result<ReceiverEvent> {
        let id = partial.finish()?;
        self.outbox
            .push_back(Message::ArtifactComplete(ArtifactComplete {
                artifact_id: id.hash32(),
                received_hash: id.hash32(),
            }));
        self.state = RecvState::Finished;
        Ok(ReceiverEvent::Complete {
            id,
            progress: self.progress,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;
    use nomade_wire::Hash32;

    use super::*;
    use crate::keys::DeviceKey;

    fn store(dir: &Path, quota: Option<u64>) -> ArtifactStore {
        ArtifactStore::open(dir, DeviceKey::generate(), quota).expect("open")
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Runs the exchange to the end in memory; returns the sender's and the
    /// receiver's first errors, if any.
    fn drive(s: &mut Sender, r: &mut Receiver) -> (Option<ArtifactError>, Option<ArtifactError>) {
        let (mut se, mut re) = (None, None);
        for _ in 0..1_000_000 {
            let mut moved = false;
            loop {
                match r.next_message() {
                    Ok(Some(m)) => {
                        moved = true;
                        if let Err(e) = s.handle_message(m) {
                            se.get_or_insert(e);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        re.get_or_insert(e);
                    }
                }
            }
            loop {
                match s.next_message() {
                    Ok(Some(m)) => {
                        moved = true;
                        if let Err(e) = r.handle_message(m) {
                            re.get_or_insert(e);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        se.get_or_insert(e);
                    }
                }
            }
            if !moved {
                break;
            }
        }
        (se, re)
    }

    fn fetched_bytes(store: &ArtifactStore, id: &ArtifactId) -> Vec<u8> {
        let mut r = store.open_artifact(id).expect("open");
        let mut out = Vec::new();
        for i in 0..r.info().chunk_count {
            out.extend_from_slice(&r.read_chunk(i).expect("chunk"));
        }
        out
    }

    #[test]
    fn transfers_at_boundary_sizes() {
        for n in [0usize, 1, 65_536, 65_537] {
            let (a, b) = (
                tempfile::tempdir().expect("t"),
                tempfile::tempdir().expect("t"),
            );
            let (holder, fetcher) = (store(a.path(), None), store(b.path(), None));
            let d = data(n, 3);
            let id = holder
                .put_bytes(&d, Some("image/png"), &[fetcher.public_key()])
                .expect("put");
            let mut s = Sender::new(holder, true);
            let mut r = Receiver::new(fetcher.clone(), id, 200).expect("receiver");
            assert_eq!(r.request().resume_from, None);
            assert_eq!(drive(&mut s, &mut r).0.map(|e| e.to_string()), None);
            assert!(r.is_complete() && r.is_finished());
            assert!(s.is_finished());
            assert!(fetcher.has(&id));
            assert!(!fetcher.has_partial(&id));
            assert_eq!(fetched_bytes(&fetcher, &id), d);
            let meta = fetcher.metadata(&id).expect("meta");
            assert_eq!(meta.mime_type.as_deref(), Some("image/png"));
            assert_eq!(r.progress().bytes_done, n as u64);
            assert!(r.progress().is_complete());
            assert!(matches!(
                Receiver::new(fetcher.clone(), id, 1),
                Err(ArtifactError::AlreadyStored { .. })
            ));
        }
    }

    #[test]
    fn one_receiver_per_artifact_at_a_time() {
        let b = tempfile::tempdir().expect("t");
        let fetcher = store(b.path(), None);
        let id = ArtifactId::of(b"wanted");
        let first = Receiver::new(fetcher.clone(), id, 0).expect("first");
        assert!(matches!(
            Receiver::new(fetcher.clone(), id, 0),
            Err(ArtifactError::TransferInProgress { .. })
        ));
        // Another artifact is independent.
        let _other = Receiver::new(fetcher.clone(), ArtifactId::of(b"other"), 0).expect("other");
        drop(first);
        assert!(Receiver::new(fetcher, id, 0).is_ok());
    }

    #[test]
    fn unknown_id_is_artifact_not_found() {
        let (a, b) = (
            tempfile::tempdir().expect("t"),
            tempfile::tempdir().expect("t"),
        );
        let (holder, fetcher) = (store(a.path(), None), store(b.path(), None));
        let id = ArtifactId::of(b"nobody has this");
        let mut s = Sender::new(holder, true);
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
        let (se, re) = drive(&mut s, &mut r);
        assert!(se.is_none());
        match re {
            Some(ArtifactError::Peer { code, .. }) => {
                assert_eq!(code, ErrorCode::ARTIFACT_NOT_FOUND)
            }
            other => panic!("expected a peer error, got {other:?}"),
        }
        assert!(!fetcher.has_partial(&id));
    }

    #[test]
    fn unauthorised_peer_gets_artifact_not_found() {
        let (a, b) = (
            tempfile::tempdir().expect("t"),
            tempfile::tempdir().expect("t"),
        );
        let (holder, fetcher) = (store(a.path(), None), store(b.path(), None));
        let id = holder.put_bytes(b"secret", None, &[]).expect("put");
        // The caller's check: the fetcher is not a recipient.
        let authorized = holder
            .is_recipient(&id, &fetcher.public_key())
            .expect("meta");
        assert!(!authorized);
        let mut s = Sender::new(holder, authorized);
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
        let req = r.next_message().expect("ok").expect("request");
        assert_eq!(
            s.handle_message(req).expect("handled"),
            SenderEvent::Refused { id }
        );
        match s.next_message().expect("ok") {
            Some(Message::Error(e)) => assert_eq!(e.error_code, ErrorCode::ARTIFACT_NOT_FOUND),
            other => panic!("expected ERROR, got {other:?}"),
        }
        assert_eq!(s.next_message().expect("ok"), None);
        assert!(s.is_finished());
        assert!(!fetcher.has(&id));
    }

    #[test]
    fn interrupted_transfer_resumes_from_last_verified_chunk() {
        let (a, b) = (
            tempfile::tempdir().expect("t"),
            tempfile::tempdir().expect("t"),
        );
        let (holder, fetcher) = (store(a.path(), None), store(b.path(), None));
        let d = data(10 * CHUNK + 123, 9);
        let id = holder.put_bytes(&d, None, &[]).expect("put");
        {
            let mut s = Sender::new(holder.clone(), true);
            let mut r = Receiver::new(fetcher.clone(), id, 5).expect("receiver");
            s.handle_message(r.next_message().expect("ok").expect("req"))
                .expect("req");
            r.handle_message(s.next_message().expect("ok").expect("meta"))
                .expect("meta");
            for _ in 0..4 {
                let ev = r
                    .handle_message(s.next_message().expect("ok").expect("chunk"))
                    .expect("chunk");
                assert!(matches!(ev, ReceiverEvent::Progress(_)));
            }
            assert_eq!(r.progress().chunks_done, 4);
            // Connection dropped: both machines vanish.
        }
        assert!(fetcher.has_partial(&id));
        let mut s = Sender::new(holder, true);
        let mut r = Receiver::new(fetcher.clone(), id, 5).expect("receiver");
        assert_eq!(r.request().resume_from, Some(4));
        assert_eq!(r.progress().bytes_at_start, 4 * CHUNK as u64);
        let req = r.next_message().expect("ok").expect("req");
        assert_eq!(
            s.handle_message(req).expect("req"),
            SenderEvent::Serving { id, resume_from: 4 }
        );
        let (se, re) = drive(&mut s, &mut r);
        assert!(se.is_none() && re.is_none(), "{se:?} {re:?}");
        assert!(r.is_complete());
        assert_eq!(fetched_bytes(&fetcher, &id), d);
    }

    const CHUNK: usize = crate::chunk::CHUNK_SIZE;

    fn metadata_msg(id: ArtifactId, size: u64, count: u32) -> Message {
        Message::ArtifactMetadata(ArtifactMetadata {
            artifact_id: id.hash32(),
            size,
            chunk_count: count,
            mime_type: None,
            encrypted: true,
        })
    }

    fn chunk_msg(id: ArtifactId, index: u32, data: &[u8], is_final: bool) -> Message {
        Message::ArtifactChunk(ArtifactChunk {
            artifact_id: id.hash32(),
            chunk_index: index,
            chunk_data: Bytes::copy_from_slice(data),
            is_final,
            chunk_hash: Some(chunk_hash(data)),
        })
    }

    fn started(fetcher: &ArtifactStore, id: ArtifactId, size: u64) -> Receiver {
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
        r.next_message().expect("ok").expect("request");
        let count = chunk::chunk_count(size).expect("count");
        r.handle_message(metadata_msg(id, size, count))
            .expect("metadata");
        r
    }

    #[test]
    fn whole_hash_mismatch_discards_the_partial() {
        let b = tempfile::tempdir().expect("t");
        let fetcher = store(b.path(), None);
        let real = data(2 * CHUNK, 1);
        let fake = data(2 * CHUNK, 2);
        let id = ArtifactId::of(&real);
        let mut r = started(&fetcher, id, real.len() as u64);
        r.handle_message(chunk_msg(id, 0, &fake[..CHUNK], false))
            .expect("chunk 0");
        assert!(fetcher.has_partial(&id));
        let err = r
            .handle_message(chunk_msg(id, 1, &fake[CHUNK..], true))
            .expect_err("mismatch");
        assert!(matches!(err, ArtifactError::HashMismatch { expected, .. } if expected == id));
        assert!(!fetcher.has_partial(&id));
        assert!(!fetcher.has(&id));
        assert!(matches!(r.next_message(), Ok(Some(Message::Error(_)))));
        assert!(r.is_finished() && !r.is_complete());
    }

    #[test]
    fn absurd_metadata_is_rejected_and_nothing_written() {
        let b = tempfile::tempdir().expect("t");
        let fetcher = store(b.path(), None);
        let id = ArtifactId::of(b"x");
        for (size, count) in [
            (u64::MAX, u32::MAX),
            (10, 0),
            (0, 1),
            (1 << 20, 1),
            (1, u32::MAX),
        ] {
            let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
            r.next_message().expect("ok");
            let err = r
                .handle_message(metadata_msg(id, size, count))
                .expect_err("absurd");
            assert!(matches!(err, ArtifactError::BadMetadata(_)), "{err}");
            match r.next_message().expect("ok") {
                Some(Message::Error(e)) => assert_eq!(e.error_code, ErrorCode::INVALID_MESSAGE),
                other => panic!("{other:?}"),
            }
            assert!(!fetcher.has_partial(&id));
        }
        assert_eq!(fetcher.used_bytes().expect("used"), 0);
    }

    #[test]
    fn quota_exceeded_on_metadata_leaves_nothing() {
        let b = tempfile::tempdir().expect("t");
        let fetcher = store(b.path(), Some(100_000));
        let id = ArtifactId::of(b"big");
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
        r.next_message().expect("ok");
        let err = r
            .handle_message(metadata_msg(id, 200_000, 4))
            .expect_err("quota");
        assert!(matches!(err, ArtifactError::QuotaExceeded { .. }));
        match r.next_message().expect("ok") {
            Some(Message::Error(e)) => assert_eq!(e.error_code, ErrorCode::QUOTA_EXCEEDED),
            other => panic!("{other:?}"),
        }
        assert!(!fetcher.has_partial(&id));
        assert_eq!(fetcher.used_bytes().expect("used"), 0);
    }

    type ErrCheck = fn(&ArtifactError) -> bool;

    #[test]
    fn bad_chunks_are_rejected_and_the_prefix_kept() {
        let b = tempfile::tempdir().expect("t");
        let fetcher = store(b.path(), None);
        let d = data(3 * CHUNK, 4);
        let id = ArtifactId::of(&d);
        let size = d.len() as u64;
        let cases: Vec<(Message, ErrCheck)> = vec![
            // Out of order.
            (chunk_msg(id, 2, &d[2 * CHUNK..], true), |e| {
                matches!(e, ArtifactError::BadChunk { index: 2, .. })
            }),
            // Short chunk in the middle.
            (chunk_msg(id, 1, &d[CHUNK..CHUNK + 10], false), |e| {
                matches!(e, ArtifactError::BadChunk { .. })
            }),
            // Wrongly final.
            (chunk_msg(id, 1, &d[CHUNK..2 * CHUNK], true), |e| {
                matches!(e, ArtifactError::BadChunk { .. })
            }),
            // Over 64 KiB.
            (chunk_msg(id, 1, &[0u8; CHUNK + 1], false), |e| {
                matches!(e, ArtifactError::ChunkTooLarge { .. })
            }),
            // chunk_hash that does not match the data.
            (
                Message::ArtifactChunk(ArtifactChunk {
                    artifact_id: id.hash32(),
                    chunk_index: 1,
                    chunk_data: Bytes::copy_from_slice(&d[CHUNK..2 * CHUNK]),
                    is_final: false,
                    chunk_hash: Some(Hash32::ZERO),
                }),
                |e| matches!(e, ArtifactError::ChunkHashMismatch { index: 1 }),
            ),
            // Another artifact's chunk.
            (
                chunk_msg(ArtifactId::of(b"other"), 1, &d[CHUNK..2 * CHUNK], false),
                |e| matches!(e, ArtifactError::Protocol(_)),
            ),
        ];
        for (i, (bad, check)) in cases.into_iter().enumerate() {
            let mut r = if i == 0 {
                let mut r = started(&fetcher, id, size);
                r.handle_message(chunk_msg(id, 0, &d[..CHUNK], false))
                    .expect("chunk 0");
                r
            } else {
                let mut r = Receiver::new(fetcher.clone(), id, 0).expect("resume");
                assert_eq!(r.request().resume_from, Some(1));
                r.next_message().expect("ok");
                r.handle_message(metadata_msg(id, size, 3))
                    .expect("metadata");
                r
            };
            let err = r.handle_message(bad).expect_err("rejected");
            assert!(check(&err), "case {i}: {err}");
            assert!(matches!(r.next_message(), Ok(Some(Message::Error(_)))));
        }
        // Only the verified chunk 0 is kept; the transfer finishes from there.
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("resume");
        assert_eq!(r.request().resume_from, Some(1));
        r.next_message().expect("ok");
        r.handle_message(metadata_msg(id, size, 3))
            .expect("metadata");
        r.handle_message(chunk_msg(id, 1, &d[CHUNK..2 * CHUNK], false))
            .expect("1");
        let ev = r
            .handle_message(chunk_msg(id, 2, &d[2 * CHUNK..], true))
            .expect("2");
        assert!(matches!(ev, ReceiverEvent::Complete { .. }));
        assert!(matches!(
            r.next_message(),
            Ok(Some(Message::ArtifactComplete(c))) if c.received_hash == id.hash32()
        ));
        assert_eq!(fetched_bytes(&fetcher, &id), d);
    }

    #[test]
    fn torn_partial_tail_is_cut_on_resume() {
        let b = tempfile::tempdir().expect("t");
        let fetcher = store(b.path(), None);
        let d = data(3 * CHUNK, 5);
        let id = ArtifactId::of(&d);
        let mut r = started(&fetcher, id, d.len() as u64);
        r.handle_message(chunk_msg(id, 0, &d[..CHUNK], false))
            .expect("0");
        r.handle_message(chunk_msg(id, 1, &d[CHUNK..2 * CHUNK], false))
            .expect("1");
        drop(r);
        // A crash mid-write leaves garbage after the last whole record, and a
        // bit flipped in record 1 makes it unusable too.
        let p = b
            .path()
            .join("partial")
            .join(format!("{}.dat", id.to_hex()));
        let mut raw = std::fs::read(&p).expect("read");
        let stride = CHUNK + crate::store::RECORD_OVERHEAD;
        raw[stride + 100] ^= 0x40;
        raw.extend_from_slice(&[7u8; 1000]);
        std::fs::write(&p, &raw).expect("write");
        let r = Receiver::new(fetcher.clone(), id, 0).expect("resume");
        assert_eq!(r.request().resume_from, Some(1));
        assert_eq!(std::fs::metadata(&p).expect("meta").len(), stride as u64);
    }

    #[test]
    fn sender_rejects_a_wrong_received_hash() {
        let a = tempfile::tempdir().expect("t");
        let holder = store(a.path(), None);
        let id = holder.put_bytes(b"abc", None, &[]).expect("put");
        let mut s = Sender::new(holder, true);
        s.handle_message(Message::ArtifactRequest(ArtifactRequest {
            artifact_id: id.hash32(),
            priority: 0,
            resume_from: None,
        }))
        .expect("request");
        assert!(matches!(
            s.next_message(),
            Ok(Some(Message::ArtifactMetadata(_)))
        ));
        assert!(matches!(s.next_message(), Ok(Some(Message::ArtifactChunk(c))) if c.is_final));
        assert_eq!(s.next_message().expect("ok"), None);
        let err = s
            .handle_message(Message::ArtifactComplete(ArtifactComplete {
                artifact_id: id.hash32(),
                received_hash: Hash32::ZERO,
            }))
            .expect_err("mismatch");
        assert!(matches!(err, ArtifactError::HashMismatch { .. }));
    }

    #[test]
    fn sender_refuses_resume_beyond_the_end() {
        let a = tempfile::tempdir().expect("t");
        let holder = store(a.path(), None);
        let id = holder.put_bytes(b"abc", None, &[]).expect("put");
        let mut s = Sender::new(holder, true);
        let err = s
            .handle_message(Message::ArtifactRequest(ArtifactRequest {
                artifact_id: id.hash32(),
                priority: 0,
                resume_from: Some(2),
            }))
            .expect_err("beyond");
        assert!(matches!(err, ArtifactError::Protocol(_)));
        assert!(
            matches!(s.next_message(), Ok(Some(Message::Error(e))) if e.error_code == ErrorCode::INVALID_MESSAGE)
        );
    }

    #[test]
    fn sender_reports_a_tampered_store() {
        let (a, b) = (
            tempfile::tempdir().expect("t"),
            tempfile::tempdir().expect("t"),
        );
        let (holder, fetcher) = (store(a.path(), None), store(b.path(), None));
        let d = data(2 * CHUNK, 6);
        let id = holder.put_bytes(&d, None, &[]).expect("put");
        let p = a
            .path()
            .join("objects")
            .join(format!("{}.dat", id.to_hex()));
        let mut raw = std::fs::read(&p).expect("read");
        let last = raw.len() - 20;
        raw[last] ^= 1;
        std::fs::write(&p, &raw).expect("write");
        let mut s = Sender::new(holder, true);
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
        let (se, re) = drive(&mut s, &mut r);
        assert!(
            matches!(se, Some(ArtifactError::Tampered { index: 1 })),
            "{se:?}"
        );
        assert!(matches!(re, Some(ArtifactError::Peer { .. })), "{re:?}");
        assert!(!fetcher.has(&id));
        // The good prefix is kept for a resume from another holder.
        drop(r);
        assert_eq!(
            Receiver::new(fetcher, id, 0)
                .expect("r")
                .request()
                .resume_from,
            Some(1)
        );
    }
}
