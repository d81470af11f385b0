//! The artifact transfer as two sans-IO state machines.
//!
//! ```text
//! Receiver (fetcher)                         Sender (holder)
//!    ARTIFACT_REQUEST {id, priority, resume_from?, sealed_for?}  ->
//!                                  <-  ARTIFACT_METADATA {id, size, chunk_count, ..., data_key?}
//!                                  <-  ARTIFACT_CHUNK {index = resume_from.., chunk_hash | seal}
//!                                  <-  ... (the last with is_final = true)
//!    ARTIFACT_COMPLETE {id, received_hash}          ->
//! ```
//!
//! By default the receiver asks for a *sealed* transfer (`sealed_for`, its
//! store's public key): the sender wraps the artifact's data key for it and
//! sends each chunk as stored (ciphertext, with its nonce and tag in `seal`),
//! without opening it; the receiver opens each chunk once to verify it and
//! stores the record as received. [`Receiver::ask_sealed`]`(false)` asks for
//! plaintext chunks instead, which the receiver seals under a key of its own.
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
    FixedBytes, Message, MAX_CHUNK_DATA,
};

use crate::chunk::{self, chunk_hash, chunk_len, ArtifactId};
use crate::error::{ArtifactError, Result};
use crate::keys::PublicKey;
use crate::progress::Progress;
use crate::store::{ArtifactReader, ArtifactStore, PartialArtifact, ReceiveClaim, Sealing};

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
    /// The request asked for the metadata only: it was sent, and the
    /// exchange is over.
    Described {
        /// The artifact.
        id: ArtifactId,
    },
}

enum SenderState {
    AwaitingRequest,
    Sending {
        reader: Box<ArtifactReader>,
        next: u32,
        /// Chunks go as stored (sealed), not opened.
        sealed: bool,
        /// For a range (`end_before`): the chunk it stops before; the
        /// exchange is over after the one before it.
        end: Option<u32>,
    },
    AwaitingComplete,
    Finished,
    Failed,
}

/// The holder's side of one transfer.
pub struct Sender {
    store: ArtifactStore,
    authorized: bool,
    /// The peer takes `recipient_keys` (it announced `"sealed-relay"`).
    relaying: bool,
    /// The request's `sealed_for`: the requester's artifact key.
    requester: Option<PublicKey>,
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
            relaying: false,
            requester: None,
            state: SenderState::AwaitingRequest,
            id: None,
            outbox: VecDeque::new(),
        }
    }

    /// Whether the peer takes ARTIFACT_METADATA's `recipient_keys` (it
    /// announced `"sealed-relay"`). Only such a peer is served a restricted
    /// artifact ([`ArtifactStore::put_file_for`]): a recipient with its data
    /// key and every recipient's, any other with the recipients' only, to
    /// keep and pass on the records it cannot open.
    pub fn relaying(mut self, relaying: bool) -> Sender {
        self.relaying = relaying;
        self
    }

    /// The artifact requested, once known.
    pub fn artifact_id(&self) -> Option<ArtifactId> {
        self.id
    }

    /// The key the requester asked the chunks sealed for (its artifact
    /// key, the one to list it among an artifact's recipients with), once
    /// the request came.
    pub fn requester(&self) -> Option<PublicKey> {
        self.requester
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
        self.requester = req.sealed_for.map(|k| PublicKey::from(*k.as_bytes()));
        if !self.authorized {
            self.refuse(
                id,
                ErrorCode::ARTIFACT_NOT_FOUND,
                format!("artifact {id} not found"),
            );
            return Ok(SenderEvent::Refused { id });
        }
        let reader = match self.store.open_sealed(&id) {
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
        let end = match req.end_before {
            // Metadata only: no chunk is sent, the range means nothing.
            Some(_) if req.metadata_only => None,
            Some(end) if end <= next || end > count => {
                return Err(self.fail(
                    ArtifactError::Protocol(format!(
                        "a range from chunk {next} to before {end} of {count} chunks"
                    )),
                    true,
                ));
            }
            end => end,
        };
        let mut metadata = reader.info().to_wire();
        if req.metadata_only {
            self.outbox.push_back(Message::ArtifactMetadata(metadata));
            self.state = SenderState::Finished;
            return Ok(SenderEvent::Described { id });
        }
        let requester = self.requester;
        if reader.info().restricted {
            // Sealed only, to a peer that takes the recipients' keys; the
            // data key to a recipient only.
            let Some(requester) = requester.filter(|_| self.relaying) else {
                self.refuse(
                    id,
                    ErrorCode::ARTIFACT_NOT_FOUND,
                    format!("artifact {id} not found"),
                );
                return Ok(SenderEvent::Refused { id });
            };
            if reader.info().is_recipient(&requester) {
                match reader.wrap_key_for(&requester) {
                    Ok(wrapped) => metadata.data_key = Some(wrapped),
                    Err(e) => return Err(self.fail(e, true)),
                }
            }
            metadata.recipient_keys = reader.recipient_keys();
        } else if let Some(requester) = requester {
            // The requester asks for the chunks as stored: wrap their data key
            // for it. Giving an authorised peer the key is no more than giving
            // it the plaintext, and saves opening every chunk here and sealing
            // it again there.
            match reader.wrap_key_for(&requester) {
                Ok(wrapped) => metadata.data_key = Some(wrapped),
                Err(e) => return Err(self.fail(e, true)),
            }
        }
        let sealed = metadata.data_key.is_some() || metadata.recipient_keys.is_some();
        self.outbox.push_back(Message::ArtifactMetadata(metadata));
        self.state = if next == count {
            SenderState::AwaitingComplete
        } else {
            SenderState::Sending {
                reader: Box::new(reader),
                next,
                sealed,
                end,
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
        let SenderState::Sending {
            reader,
            next,
            sealed,
            end,
        } = &mut self.state
        else {
            return Ok(None);
        };
        let range_end = *end;
        let index = *next;
        let count = reader.info().chunk_count;
        let artifact_id = reader.info().id.hash32();
        let read = if *sealed {
            reader
                .read_sealed_chunk(index)
                .map(|(data, seal)| (data, Some(seal)))
        } else {
            reader.read_chunk(index).map(|data| (data, None))
        };
        let (data, seal) = match read {
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
        // A sealed chunk's tag authenticates it; a plaintext one carries its hash.
        let chunk_hash = if seal.is_some() {
            None
        } else {
            Some(chunk_hash(&data))
        };
        *next += 1;
        let is_final = index + 1 == count;
        if range_end == Some(index + 1) {
            // The range is sent: no ARTIFACT_COMPLETE follows a range.
            self.state = SenderState::Finished;
        } else if is_final {
            self.state = SenderState::AwaitingComplete;
        }
        Ok(Some(Message::ArtifactChunk(ArtifactChunk {
            artifact_id,
            chunk_index: index,
            chunk_data: data,
            is_final,
            chunk_hash,
            seal,
        })))
    }
}

/// What a [`RangeReceiver`] needs of the transfer it completes
/// ([`ArtifactStore::range_key`]): its data key and size.
#[derive(Clone)]
pub struct RangeKey {
    key: crate::keys::DataKey,
    size: u64,
}

impl RangeKey {
    pub(crate) fn new(key: crate::keys::DataKey, size: u64) -> RangeKey {
        RangeKey { key, size }
    }
}

impl std::fmt::Debug for RangeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeKey")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What happened on a [`RangeReceiver`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RangeEvent {
    /// The holder's metadata agrees: chunks follow.
    Started,
    /// A chunk was written (chunks of the range received so far).
    Progress {
        /// Chunks written so far.
        chunks: u32,
    },
    /// Every chunk of the range was written.
    Done,
}

/// The fetcher's side of a range of an artifact fetched from a second
/// holder while a [`Receiver`] fetches the chunks before it from the first
/// (docs/PROTOCOL.md, "Two holders at once"). It asks for the chunks from
/// `start` to before `end`, sealed, and writes each record as received to
/// its place in the partial file; the receiver opens and hashes them when
/// it reaches them ([`Receiver::absorb`]). The second holder must send them
/// under the same data key as the first (any holder that fetched the
/// artifact sealed keeps the key it was given), else the range is refused.
pub struct RangeReceiver {
    store: ArtifactStore,
    id: ArtifactId,
    key: RangeKey,
    /// The artifact's chunk count (from the key's size).
    count: u32,
    end: u32,
    request: ArtifactRequest,
    requested: bool,
    writer: Option<crate::store::RangeWriter>,
    done: bool,
    failed: bool,
    outbox: VecDeque<Message>,
}

impl std::fmt::Debug for RangeReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeReceiver")
            .field("id", &self.id)
            .field("end", &self.end)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl RangeReceiver {
    /// Prepares to fetch chunks `start..end` of `id` into the partial file
    /// of the transfer `key` came from.
    pub fn new(store: ArtifactStore, id: ArtifactId, key: RangeKey, start: u32, end: u32) -> Self {
        let request = ArtifactRequest {
            artifact_id: id.hash32(),
            priority: 128,
            resume_from: (start > 0).then_some(start),
            sealed_for: sealed_for(&store, true),
            metadata_only: false,
            end_before: Some(end),
        };
        RangeReceiver {
            count: chunk::chunk_count(key.size).unwrap_or(0),
            store,
            id,
            key,
            end,
            request,
            requested: false,
            writer: None,
            done: false,
            failed: false,
            outbox: VecDeque::new(),
        }
    }

    /// Whether every chunk of the range was written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next message to send, if any (the request first).
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        if !self.requested {
            self.requested = true;
            return Ok(Some(Message::ArtifactRequest(self.request.clone())));
        }
        Ok(self.outbox.pop_front())
    }

    /// Whether the exchange is over and nothing is left to send.
    pub fn is_finished(&self) -> bool {
        (self.done || self.failed) && self.requested && self.outbox.is_empty()
    }

    fn fail(&mut self, e: ArtifactError) -> ArtifactError {
        if !matches!(e, ArtifactError::Peer { .. }) {
            self.outbox.push_back(Message::Error(e.to_error_message()));
        }
        self.writer = None;
        self.failed = true;
        e
    }

    /// Feeds a message received from the second holder.
    pub fn handle_message(&mut self, msg: Message) -> Result<RangeEvent> {
        if self.done || self.failed {
            return Err(unexpected(&msg, "finished"));
        }
        let r = match (self.writer.is_some(), msg) {
            (false, Message::ArtifactMetadata(m)) => self.on_metadata(m),
            (true, Message::ArtifactChunk(c)) => self.on_chunk(c),
            (_, Message::Error(e)) => Err(peer_error(&e)),
            (_, m) => Err(unexpected(&m, "receiving a range")),
        };
        r.map_err(|e| self.fail(e))
    }

    fn on_metadata(&mut self, m: ArtifactMetadata) -> Result<RangeEvent> {
        if ArtifactId::from(m.artifact_id) != self.id || m.size != self.key.size {
            return Err(ArtifactError::BadMetadata(format!(
                "the second holder describes {} of {} bytes, the first {} of {}",
                m.artifact_id, m.size, self.id, self.key.size
            )));
        }
        chunk::validate_layout(m.size, m.chunk_count)?;
        let wrapped = m
            .data_key
            .as_ref()
            .ok_or_else(|| ArtifactError::Protocol("a range must come sealed".into()))?;
        let key = self.store.unwrap_key(wrapped, &self.id)?;
        let start = self.request.resume_from.unwrap_or(0);
        self.writer =
            Some(
                self.store
                    .range_writer(&self.id, m.size, start, &key, &self.key.key)?,
            );
        Ok(RangeEvent::Started)
    }

    fn on_chunk(&mut self, c: ArtifactChunk) -> Result<RangeEvent> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| ArtifactError::Protocol("chunk before metadata".into()))?;
        if ArtifactId::from(c.artifact_id) != self.id {
            return Err(ArtifactError::Protocol(format!(
                "ARTIFACT_CHUNK for {}, asked for {}",
                c.artifact_id, self.id
            )));
        }
        let seal = c.seal.as_ref().ok_or_else(|| ArtifactError::BadChunk {
            index: c.chunk_index,
            reason: "not sealed, in a range".into(),
        })?;
        if c.is_final != (c.chunk_index + 1 == self.count) {
            return Err(ArtifactError::BadChunk {
                index: c.chunk_index,
                reason: format!("is_final = {}", c.is_final),
            });
        }
        writer.write(c.chunk_index, &c.chunk_data, seal.as_bytes())?;
        let written = writer.next() - self.request.resume_from.unwrap_or(0);
        if writer.next() == self.end {
            self.done = true;
            self.writer = None;
            return Ok(RangeEvent::Done);
        }
        Ok(RangeEvent::Progress { chunks: written })
    }
}

/// The `sealed_for` of a request from `store`: its public key, if sealed.
fn sealed_for(store: &ArtifactStore, sealed: bool) -> Option<nomade_wire::Hash32> {
    sealed.then(|| FixedBytes(*store.public_key().as_bytes()))
}

/// What happened on the fetcher's side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// Valid metadata arrived; the transfer is under way.
    Started(Progress),
    /// A chunk was verified and written to disk.
    Progress(Progress),
    /// The range asked for ([`Receiver::until`]) was received: the rest
    /// comes from another holder ([`RangeReceiver`]), then
    /// [`Receiver::absorb`].
    RangeDone(Progress),
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
    /// The range asked for is received; the holder's stream is over.
    RangeDone,
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
    /// Whether `request` was handed out by `next_message` yet.
    requested: bool,
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
            Some(p) => (p.chunks_done(), p.progress()),
            None => (0, Progress::default()),
        };
        let request = ArtifactRequest {
            artifact_id: id.hash32(),
            priority,
            resume_from: (resume > 0).then_some(resume),
            sealed_for: sealed_for(&store, true),
            metadata_only: false,
            end_before: None,
        };
        Ok(Receiver {
            store,
            id,
            outbox: VecDeque::new(),
            request,
            requested: false,
            partial,
            state: RecvState::AwaitingMetadata,
            progress,
            _claim: claim,
        })
    }

    /// Whether to ask for the chunks sealed, as the holder stores them (the
    /// default), or in plaintext. Sealed, the holder sends its records as
    /// they are with the data key wrapped for this device, and this device
    /// opens each one once to verify it and stores it as received: one
    /// ChaCha20-Poly1305 pass per byte instead of two. Call before the
    /// request is sent.
    pub fn ask_sealed(mut self, sealed: bool) -> Receiver {
        self.request.sealed_for = sealed_for(&self.store, sealed);
        self
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

    /// Whether the exchange is over (complete, failed, or the range asked
    /// for received) and nothing is left to send.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            RecvState::Finished | RecvState::Failed | RecvState::RangeDone
        ) && self.requested
            && self.outbox.is_empty()
    }

    /// Asks this holder for the chunks before `end` only (`end_before`;
    /// a holder that announced `"artifact-ranges"`): the rest comes from
    /// another holder at the same time ([`RangeReceiver`]). Call before the
    /// request is sent; an `end` not after the resume point or past the
    /// last chunk asks for everything, as without it.
    pub fn until(mut self, end: u32) -> Receiver {
        let from = self.request.resume_from.unwrap_or(0);
        let within = self.partial.as_ref().is_none_or(|p| end < p.chunk_count);
        if end > from && within {
            self.request.end_before = Some(end);
        }
        self
    }

    /// Once the range asked for is received ([`ReceiverEvent::RangeDone`]):
    /// takes in the chunks a [`RangeReceiver`] wrote after it, opening and
    /// hashing each (up to the first missing or damaged one). When they
    /// complete the artifact, it is verified and stored (`Complete`);
    /// otherwise the progress says where a new receiver resumes.
    pub fn absorb(&mut self) -> Result<ReceiverEvent> {
        if self.state != RecvState::RangeDone {
            return Err(ArtifactError::Protocol(
                "nothing to take in before the range is received".into(),
            ));
        }
        let partial = self
            .partial
            .as_mut()
            .ok_or_else(|| ArtifactError::Protocol("no partial".into()))?;
        let end = partial.chunk_count;
        partial.absorb_written(end)?;
        self.progress.bytes_done = partial.bytes_done();
        self.progress.chunks_done = partial.chunks_done();
        if partial.chunks_done() == partial.chunk_count {
            let p = self
                .partial
                .take()
                .ok_or_else(|| ArtifactError::Protocol("no partial".into()))?;
            let event = self.finish(p)?;
            // The holder's stream is over: nothing goes to it.
            self.outbox.clear();
            return Ok(event);
        }
        Ok(ReceiverEvent::Progress(self.progress))
    }

    /// The next message to send, if any.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        if !self.requested {
            self.requested = true;
            return Ok(Some(Message::ArtifactRequest(self.request.clone())));
        }
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
        let sealing = self.sealing_of(&m)?;
        let incoming_key = match &m.data_key {
            Some(_) if self.request.sealed_for.is_none() => {
                return Err(ArtifactError::Protocol(
                    "sealed chunks were not asked for".into(),
                ))
            }
            Some(wrapped) => Some(self.store.unwrap_key(wrapped, &self.id)?),
            None => None,
        };
        let mut partial = match self.partial.take() {
            Some(mut p) if p.size == m.size && sealing.continues(&p) => {
                p.reserve_remaining()?;
                p
            }
            Some(p) if p.size != m.size => {
                p.discard()?;
                return Err(ArtifactError::BadMetadata(format!(
                    "size {} differs from the partial transfer's {}",
                    m.size, self.progress.bytes_total
                )));
            }
            Some(p) => {
                p.discard()?;
                return Err(ArtifactError::BadMetadata(
                    "the recipients' keys differ from the partial transfer's".into(),
                ));
            }
            // Quota checked before anything is written.
            // A new partial keeps the holder's key, so that sealed records
            // are stored as received.
            None => self.store.create_partial(
                &self.id,
                m.size,
                m.mime_type.clone(),
                incoming_key.clone(),
                sealing,
            )?,
        };
        if let Some(key) = &incoming_key {
            partial.expect_sealed(key);
        } else if partial.relay_keys().is_some() {
            partial.expect_relayed();
        }
        // The partial's size is the metadata's, and its chunk count follows
        // from it (the layout was validated above).
        self.progress = partial.progress();
        if partial.chunks_done() == partial.chunk_count {
            return self.finish(partial);
        }
        self.partial = Some(partial);
        self.state = RecvState::Receiving;
        Ok(ReceiverEvent::Started(self.progress))
    }

    /// How the artifact `m` announces is kept here: `recipient_keys` (a
    /// restricted artifact) checked, and answering a sealed request.
    fn sealing_of(&self, m: &ArtifactMetadata) -> Result<Sealing> {
        let Some(wrapped) = &m.recipient_keys else {
            return Ok(Sealing::Open);
        };
        if self.request.sealed_for.is_none() {
            return Err(ArtifactError::Protocol(
                "recipient keys in answer to a plaintext request".into(),
            ));
        }
        if wrapped.is_empty() || wrapped.len() > nomade_wire::MAX_RECIPIENT_KEYS {
            return Err(ArtifactError::BadMetadata(format!(
                "{} recipient keys (1 to {})",
                wrapped.len(),
                nomade_wire::MAX_RECIPIENT_KEYS
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if !wrapped.iter().all(|w| seen.insert(w.recipient)) {
            return Err(ArtifactError::BadMetadata(
                "a recipient listed twice".into(),
            ));
        }
        Ok(if m.data_key.is_some() {
            Sealing::Recipient(wrapped.clone())
        } else {
            Sealing::Relay(wrapped.clone())
        })
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
        match (&c.seal, partial.is_sealed()) {
            (Some(seal), true) => {
                partial.append_sealed(&c.chunk_data, seal.as_bytes(), c.chunk_hash)?
            }
            (None, false) => {
                chunk::check_claimed_hash(index, c.chunk_hash, &c.chunk_data)?;
                partial.append(&c.chunk_data)?;
            }
            (Some(_), false) => {
                return Err(ArtifactError::BadChunk {
                    index,
                    reason: "sealed, but the metadata gave no data key".into(),
                })
            }
            (None, true) => {
                return Err(ArtifactError::BadChunk {
                    index,
                    reason: "not sealed, in a sealed transfer".into(),
                })
            }
        }
        self.progress.bytes_done = partial.bytes_done();
        self.progress.chunks_done = partial.chunks_done();
        if self.request.end_before == Some(index + 1) {
            self.state = RecvState::RangeDone;
            return Ok(ReceiverEvent::RangeDone(self.progress));
        }
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

    /// Three stores, each in a directory of its own (kept while the first
    /// element lives).
    fn three_stores() -> ([tempfile::TempDir; 3], [ArtifactStore; 3]) {
        let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
        let stores = [0, 1, 2].map(|i| store(dirs[i].path(), None));
        (dirs, stores)
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A fetcher's side: a whole transfer or a range.
    trait Fetching {
        fn next(&mut self) -> Result<Option<Message>>;
        fn take(&mut self, m: Message) -> Result<()>;
    }

    impl Fetching for Receiver {
        fn next(&mut self) -> Result<Option<Message>> {
            self.next_message()
        }
        fn take(&mut self, m: Message) -> Result<()> {
            self.handle_message(m).map(drop)
        }
    }

    impl Fetching for RangeReceiver {
        fn next(&mut self) -> Result<Option<Message>> {
            self.next_message()
        }
        fn take(&mut self, m: Message) -> Result<()> {
            self.handle_message(m).map(drop)
        }
    }

    /// Runs the exchange to the end in memory; returns the sender's and the
    /// receiver's first errors, if any.
    fn drive(
        s: &mut Sender,
        r: &mut impl Fetching,
    ) -> (Option<ArtifactError>, Option<ArtifactError>) {
        let (mut se, mut re) = (None, None);
        for _ in 0..1_000_000 {
            let mut moved = false;
            loop {
                match r.next() {
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
                        if let Err(e) = r.take(m) {
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
            data_key: None,
            recipient_keys: None,
        })
    }

    fn chunk_msg(id: ArtifactId, index: u32, data: &[u8], is_final: bool) -> Message {
        Message::ArtifactChunk(ArtifactChunk {
            artifact_id: id.hash32(),
            chunk_index: index,
            chunk_data: Bytes::copy_from_slice(data),
            is_final,
            chunk_hash: Some(chunk_hash(data)),
            seal: None,
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

    /// BAD_INPUTS #25: a whole-artifact hash mismatch discards the partial.
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

    /// BAD_INPUTS #25: metadata with a huge or zero chunk count is rejected, nothing written.
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

    /// BAD_INPUTS #25: an oversized chunk or a hash mismatch is rejected, nothing of it stored.
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
                    seal: None,
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
            sealed_for: None,
            metadata_only: false,
            end_before: None,
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
                sealed_for: None,
                metadata_only: false,
                end_before: None,
            }))
            .expect_err("beyond");
        assert!(matches!(err, ArtifactError::Protocol(_)));
        assert!(
            matches!(s.next_message(), Ok(Some(Message::Error(e))) if e.error_code == ErrorCode::INVALID_MESSAGE)
        );
    }

    /// A holder whose stored chunk 1 had a bit flipped; returns the stores,
    /// their directories and the id.
    fn tampered_holder() -> (
        tempfile::TempDir,
        tempfile::TempDir,
        ArtifactStore,
        ArtifactStore,
        ArtifactId,
    ) {
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
        (a, b, holder, fetcher, id)
    }

    /// The good prefix (chunk 0) is kept for a resume from another holder.
    fn assert_resumes_from_chunk_1(fetcher: ArtifactStore, id: ArtifactId) {
        assert!(!fetcher.has(&id));
        assert_eq!(
            Receiver::new(fetcher, id, 0)
                .expect("r")
                .request()
                .resume_from,
            Some(1)
        );
    }

    #[test]
    fn sender_reports_a_tampered_store() {
        // Plaintext transfer: the holder opens each chunk and finds the damage.
        let (_a, _b, holder, fetcher, id) = tampered_holder();
        let mut s = Sender::new(holder, true);
        let mut r = Receiver::new(fetcher.clone(), id, 0)
            .expect("receiver")
            .ask_sealed(false);
        let (se, re) = drive(&mut s, &mut r);
        assert!(
            matches!(se, Some(ArtifactError::Tampered { index: 1 })),
            "{se:?}"
        );
        assert!(matches!(re, Some(ArtifactError::Peer { .. })), "{re:?}");
        drop(r);
        assert_resumes_from_chunk_1(fetcher, id);
    }

    /// BAD_INPUTS #26: a holder's tampered chunk is refused by the fetcher, which stores nothing of it and resumes from it.
    #[test]
    fn sealed_transfer_of_a_tampered_store_fails_at_the_fetcher() {
        // Sealed transfer: the holder sends records unopened; the fetcher's
        // authentication of chunk 1 fails, it stores nothing of it and tells
        // the holder.
        let (_a, _b, holder, fetcher, id) = tampered_holder();
        let mut s = Sender::new(holder, true);
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
        let (se, re) = drive(&mut s, &mut r);
        assert!(
            matches!(re, Some(ArtifactError::ChunkHashMismatch { index: 1 })),
            "{re:?}"
        );
        assert!(
            matches!(&se, Some(ArtifactError::Peer { code, .. }) if *code == ErrorCode::INVALID_MESSAGE),
            "{se:?}"
        );
        drop(r);
        assert_resumes_from_chunk_1(fetcher, id);
    }

    /// Sealed relays (docs/PROTOCOL.md): A puts an artifact for A and C
    /// only. B, not a recipient, gets the records and the recipients' keys
    /// and keeps them unopened: it cannot read the artifact, its disk holds
    /// no plaintext, and C gets the artifact from B and reads it. A record
    /// B altered fails at C, which keeps the prefix before it and resumes
    /// from A. A peer that does not take recipients' keys, or asks for
    /// plaintext, is refused.
    #[test]
    fn a_device_that_is_not_a_recipient_keeps_and_passes_on_sealed_records() {
        let (dirs, [a, b, c]) = three_stores();
        let d = data(3 * CHUNK + 5, 9);
        let file = dirs[0].path().join("video");
        std::fs::write(&file, &d).expect("write");
        let id = a
            .put_file_for(&file, Some("video/mp4"), &[c.public_key()])
            .expect("put");
        let info = a.metadata(&id).expect("meta");
        assert!(info.restricted && !info.relay_copy);
        assert_eq!(info.recipients.len(), 2);

        // Refused: a peer that does not take recipients' keys, and a
        // plaintext request.
        for (relaying, sealed) in [(false, true), (true, false)] {
            let mut s = Sender::new(a.clone(), true).relaying(relaying);
            let mut r = Receiver::new(b.clone(), id, 0)
                .expect("r")
                .ask_sealed(sealed);
            let (_, re) = drive(&mut s, &mut r);
            assert!(
                matches!(&re, Some(ArtifactError::Peer { code, .. }) if *code == ErrorCode::ARTIFACT_NOT_FOUND),
                "{re:?}"
            );
            assert!(!b.has(&id) && !b.has_partial(&id));
        }

        // B keeps the records for A and C.
        let mut s = Sender::new(a.clone(), true).relaying(true);
        let mut r = Receiver::new(b.clone(), id, 0).expect("r");
        assert_clean(drive(&mut s, &mut r));
        assert!(r.is_complete());
        let kept = b.metadata(&id).expect("meta");
        assert!(kept.restricted && kept.relay_copy);
        assert_eq!(kept.recipients, info.recipients);
        assert!(!kept.is_recipient(&b.public_key()));
        assert!(matches!(
            b.open_artifact(&id),
            Err(ArtifactError::NotARecipient { .. })
        ));
        let out = dirs[1].path().join("out");
        assert!(matches!(
            b.export(&id, &out),
            Err(ArtifactError::NotARecipient { .. })
        ));
        assert!(!out.exists());
        let on_disk = dat_file(dirs[1].path(), &id);
        assert_eq!(
            on_disk,
            dat_file(dirs[0].path(), &id),
            "A's records as stored"
        );
        assert!(!on_disk.windows(64).any(|w| w == &d[CHUNK..CHUNK + 64]));

        // C gets it from B and reads it; its copy is restricted too.
        let mut s = Sender::new(b.clone(), true).relaying(true);
        let mut r = Receiver::new(c.clone(), id, 0).expect("r");
        assert_clean(drive(&mut s, &mut r));
        assert_eq!(fetched_bytes(&c, &id), d);
        let got = c.metadata(&id).expect("meta");
        assert!(got.restricted && !got.relay_copy);
        assert_eq!(got.recipients, info.recipients);
        drop(r);

        // A record B altered: C refuses it, keeps the chunk before it, and
        // resumes from A.
        c.remove(&id).expect("remove");
        let p = dirs[1]
            .path()
            .join("objects")
            .join(format!("{}.dat", id.to_hex()));
        let mut raw = std::fs::read(&p).expect("read");
        raw[CHUNK + crate::store::RECORD_OVERHEAD + 100] ^= 1;
        std::fs::write(&p, &raw).expect("write");
        let mut s = Sender::new(b.clone(), true).relaying(true);
        let mut r = Receiver::new(c.clone(), id, 0).expect("r");
        let (_, re) = drive(&mut s, &mut r);
        assert!(
            matches!(re, Some(ArtifactError::ChunkHashMismatch { index: 1 })),
            "{re:?}"
        );
        drop(r);
        assert!(!c.has(&id));
        let mut s = Sender::new(a.clone(), true).relaying(true);
        let mut r = Receiver::new(c.clone(), id, 0).expect("r");
        assert_eq!(r.request().resume_from, Some(1));
        assert_clean(drive(&mut s, &mut r));
        assert_eq!(fetched_bytes(&c, &id), d);
    }

    /// Malformed `recipient_keys` (BAD_INPUTS #26a): none, too many, a
    /// recipient twice, or in answer to a plaintext request. Refused,
    /// nothing stored.
    #[test]
    fn malformed_recipient_keys_are_refused_and_nothing_stored() {
        let (dirs, [a, b, c]) = three_stores();
        let file = dirs[0].path().join("f");
        std::fs::write(&file, data(CHUNK + 1, 4)).expect("write");
        let id = a.put_file_for(&file, None, &[c.public_key()]).expect("put");
        let wrap = |key: &ArtifactStore| {
            a.open_artifact(&id)
                .expect("open")
                .wrap_key_for(&key.public_key())
                .expect("wrap")
        };
        let cases = [
            (true, vec![]),
            (true, vec![wrap(&c); nomade_wire::MAX_RECIPIENT_KEYS + 1]),
            (true, vec![wrap(&a), wrap(&c), wrap(&a)]),
            (false, vec![wrap(&a), wrap(&c)]),
        ];
        for (sealed, keys) in cases {
            let mut r = Receiver::new(b.clone(), id, 0)
                .expect("r")
                .ask_sealed(sealed);
            r.next_message().expect("ok").expect("request");
            let Message::ArtifactMetadata(mut m) = metadata_msg(id, CHUNK as u64 + 1, 2) else {
                unreachable!()
            };
            m.recipient_keys = Some(keys);
            let err = r
                .handle_message(Message::ArtifactMetadata(m))
                .expect_err("refused");
            assert!(
                matches!(
                    err,
                    ArtifactError::BadMetadata(_) | ArtifactError::Protocol(_)
                ),
                "{err:?}"
            );
            assert!(matches!(
                r.next_message(),
                Ok(Some(Message::Error(e))) if e.error_code == ErrorCode::INVALID_MESSAGE
            ));
            drop(r);
            assert!(!b.has(&id) && !b.has_partial(&id));
        }
    }

    /// A copy kept for others resumes from its whole records, and only
    /// with the same recipients' keys: other keys start it over.
    #[test]
    fn a_relay_copy_resumes_only_with_the_same_recipients() {
        let (dirs, [a, b, c]) = three_stores();
        let d = data(4 * CHUNK, 2);
        let file = dirs[0].path().join("f");
        std::fs::write(&file, &d).expect("write");
        let id = a.put_file_for(&file, None, &[c.public_key()]).expect("put");
        // Two chunks, then the holder is gone.
        let mut s = Sender::new(a.clone(), true).relaying(true);
        let mut r = Receiver::new(b.clone(), id, 0).expect("r");
        r.next_message()
            .expect("req")
            .map(|m| s.handle_message(m).expect("serve"));
        for _ in 0..3 {
            let m = s.next_message().expect("next").expect("a message");
            r.handle_message(m).expect("take");
        }
        drop(r);
        let r = Receiver::new(b.clone(), id, 0).expect("r");
        assert_eq!(r.request().resume_from, Some(2));
        drop(r);
        // C holds it, put again with other wraps: B's partial is not
        // continued with them.
        let other = store(dirs[2].path().join("other").as_path(), None);
        let id2 = other
            .put_file_for(&file, None, &[c.public_key()])
            .expect("put");
        assert_eq!(id2, id);
        let mut s = Sender::new(other, true).relaying(true);
        let mut r = Receiver::new(b.clone(), id, 0).expect("r");
        let (_, re) = drive(&mut s, &mut r);
        assert!(matches!(re, Some(ArtifactError::BadMetadata(_))), "{re:?}");
        assert!(!b.has_partial(&id));
        drop(r);
        let mut s = Sender::new(a, true).relaying(true);
        let mut r = Receiver::new(b.clone(), id, 0).expect("r");
        assert_clean(drive(&mut s, &mut r));
        assert!(b.metadata(&id).expect("meta").relay_copy);
    }

    fn dat_file(dir: &Path, id: &ArtifactId) -> Vec<u8> {
        std::fs::read(dir.join("objects").join(format!("{}.dat", id.to_hex()))).expect("dat")
    }

    #[test]
    fn sealed_transfer_keeps_the_holders_records_and_plaintext_reseals() {
        for sealed in [true, false] {
            let (a, b) = (
                tempfile::tempdir().expect("t"),
                tempfile::tempdir().expect("t"),
            );
            let (holder, fetcher) = (store(a.path(), None), store(b.path(), None));
            let d = data(3 * CHUNK + 7, 8);
            let id = holder.put_bytes(&d, None, &[]).expect("put");
            let mut s = Sender::new(holder, true);
            let mut r = Receiver::new(fetcher.clone(), id, 0)
                .expect("receiver")
                .ask_sealed(sealed);
            let req = r.next_message().expect("ok").expect("request");
            assert!(
                matches!(&req, Message::ArtifactRequest(q) if q.sealed_for.is_some() == sealed)
            );
            s.handle_message(req).expect("request");
            let meta = s.next_message().expect("ok").expect("metadata");
            assert!(matches!(&meta, Message::ArtifactMetadata(m)
                if m.data_key.as_ref().map(|k| k.recipient.0) == sealed.then(|| *fetcher.public_key().as_bytes())));
            r.handle_message(meta).expect("metadata");
            let chunk = s.next_message().expect("ok").expect("chunk");
            match &chunk {
                Message::ArtifactChunk(c) => {
                    assert_eq!(c.seal.is_some(), sealed);
                    // The tag authenticates a sealed chunk; a plaintext one
                    // carries its hash.
                    assert_eq!(c.chunk_hash.is_some(), !sealed);
                    // Sealed or not, what travels has the plaintext's length,
                    // and sealed it is not the plaintext.
                    assert_eq!(c.chunk_data.len(), CHUNK);
                    assert_eq!(c.chunk_data[..] == d[..CHUNK], !sealed);
                }
                other => panic!("{other:?}"),
            }
            r.handle_message(chunk).expect("chunk 0");
            let (se, re) = drive(&mut s, &mut r);
            assert!(se.is_none() && re.is_none(), "{se:?} {re:?}");
            assert!(r.is_complete());
            assert_eq!(fetched_bytes(&fetcher, &id), d);
            // Sealed: the fetcher stores the holder's records as they are
            // (same key, same nonces); plaintext: sealed anew under its own key.
            assert_eq!(dat_file(a.path(), &id) == dat_file(b.path(), &id), sealed);
            let out = b.path().join("export");
            fetcher.export(&id, &out).expect("export");
            assert_eq!(std::fs::read(&out).expect("read"), d);
        }
    }

    fn assert_clean(errors: (Option<ArtifactError>, Option<ArtifactError>)) {
        assert!(errors.0.is_none() && errors.1.is_none(), "{errors:?}");
    }

    /// Two holders at once (docs/PROTOCOL.md): the first sends the chunks
    /// before the middle, the second (which fetched the artifact sealed
    /// from the first, so holds it under the same key) those after; the
    /// fetcher takes the second range in and completes. Neither holder
    /// waits for ARTIFACT_COMPLETE.
    #[test]
    fn two_holders_send_one_range_each() {
        let (_dirs, [first, second, fetcher]) = three_stores();
        let d = data(10 * CHUNK + 5, 3);
        let id = first.put_bytes(&d, None, &[]).expect("put");
        let (mut s, mut r) = (
            Sender::new(first.clone(), true),
            Receiver::new(second.clone(), id, 0).expect("receiver"),
        );
        assert_clean(drive(&mut s, &mut r));
        let mut s1 = Sender::new(first, true);
        let mut main = Receiver::new(fetcher.clone(), id, 0)
            .expect("receiver")
            .until(6);
        assert!(
            matches!(fetcher.range_key(&id), Err(ArtifactError::NotFound { .. })),
            "no transfer under way yet"
        );
        assert_clean(drive(&mut s1, &mut main));
        assert!(s1.is_finished(), "the first holder waits for nothing");
        assert!(!main.is_complete());
        assert_eq!(main.progress().chunks_done, 6);
        let key = fetcher.range_key(&id).expect("under way");
        let mut s2 = Sender::new(second, true);
        let mut range = RangeReceiver::new(fetcher.clone(), id, key, 6, 11);
        assert_clean(drive(&mut s2, &mut range));
        assert!(range.is_done() && range.is_finished() && s2.is_finished());
        match main.absorb().expect("absorb") {
            ReceiverEvent::Complete { id: got, .. } => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
        assert!(main.is_complete());
        assert_eq!(fetched_bytes(&fetcher, &id), d);
    }

    /// BAD_INPUTS: a second holder with another data key is refused (its
    /// records could not be kept as received); one whose record was altered
    /// on the way is taken in up to that record only, and a new receiver
    /// resumes there; a holder asked for a range that is empty or past the
    /// end refuses it.
    #[test]
    fn a_bad_second_range_is_refused_or_cut_and_the_fetch_resumes() {
        let (_dirs, [first, other, fetcher]) = three_stores();
        let d = data(8 * CHUNK, 5);
        let id = first.put_bytes(&d, None, &[]).expect("put");
        // The same content put on its own: another data key.
        assert_eq!(other.put_bytes(&d, None, &[]).expect("put"), id);
        let mut main = Receiver::new(fetcher.clone(), id, 0)
            .expect("receiver")
            .until(4);
        assert_clean(drive(&mut Sender::new(first.clone(), true), &mut main));
        let key = fetcher.range_key(&id).expect("under way");
        let mut range = RangeReceiver::new(fetcher.clone(), id, key.clone(), 4, 8);
        let (_, re) = drive(&mut Sender::new(other, true), &mut range);
        assert!(matches!(re, Some(ArtifactError::BadMetadata(_))), "{re:?}");
        assert!(
            matches!(main.absorb().expect("absorb"), ReceiverEvent::Progress(p) if p.chunks_done == 4)
        );

        // The second range again, from the first holder, its chunk 6
        // altered on the way.
        let mut range = RangeReceiver::new(fetcher.clone(), id, key, 4, 8);
        let mut s = Sender::new(first.clone(), true);
        let req = range.next_message().expect("ok").expect("request");
        s.handle_message(req).expect("request");
        while let Some(m) = s.next_message().expect("ok") {
            let m = match m {
                Message::ArtifactChunk(mut c) if c.chunk_index == 6 => {
                    let mut bad = c.chunk_data.to_vec();
                    bad[10] ^= 1;
                    c.chunk_data = Bytes::from(bad);
                    Message::ArtifactChunk(c)
                }
                m => m,
            };
            range.handle_message(m).expect("written unverified");
        }
        assert!(range.is_done());
        match main.absorb().expect("absorb") {
            ReceiverEvent::Progress(p) => assert_eq!(p.chunks_done, 6, "up to the altered one"),
            other => panic!("{other:?}"),
        }
        drop(main);
        let mut again = Receiver::new(fetcher.clone(), id, 0).expect("resume");
        assert_eq!(again.progress().chunks_done, 6);
        assert_clean(drive(&mut Sender::new(first.clone(), true), &mut again));
        assert!(again.is_complete());
        assert_eq!(fetched_bytes(&fetcher, &id), d);

        for (from, end) in [(3, 3), (3, 2), (0, 9)] {
            let mut s = Sender::new(first.clone(), true);
            let req = ArtifactRequest {
                artifact_id: id.hash32(),
                priority: 0,
                resume_from: Some(from),
                sealed_for: None,
                metadata_only: false,
                end_before: Some(end),
            };
            assert!(
                matches!(
                    s.handle_message(Message::ArtifactRequest(req)),
                    Err(ArtifactError::Protocol(_))
                ),
                "{from}..{end}"
            );
        }
    }

    #[test]
    fn sealed_resume_from_a_holder_with_another_key_reseals() {
        // Two holders of the same content, each with its own data key: a
        // transfer begun from one and finished from the other stores the
        // second holder's chunks sealed again under the partial's key.
        let ([a1, a2, b], [h1, h2, fetcher]) = three_stores();
        let d = data(5 * CHUNK, 10);
        let id = h1.put_bytes(&d, None, &[]).expect("put 1");
        assert_eq!(h2.put_bytes(&d, None, &[]).expect("put 2"), id);
        {
            let mut s = Sender::new(h1, true);
            let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
            s.handle_message(r.next_message().expect("ok").expect("req"))
                .expect("req");
            for _ in 0..3 {
                r.handle_message(s.next_message().expect("ok").expect("msg"))
                    .expect("msg");
            }
            assert_eq!(r.progress().chunks_done, 2);
        }
        let mut s = Sender::new(h2, true);
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
        assert_eq!(r.request().resume_from, Some(2));
        let (se, re) = drive(&mut s, &mut r);
        assert!(se.is_none() && re.is_none(), "{se:?} {re:?}");
        assert!(r.is_complete());
        assert_eq!(fetched_bytes(&fetcher, &id), d);
        let fetched = dat_file(b.path(), &id);
        let stride = CHUNK + crate::store::RECORD_OVERHEAD;
        assert_eq!(
            fetched[..2 * stride],
            dat_file(a1.path(), &id)[..2 * stride]
        );
        assert_ne!(
            fetched[2 * stride..],
            dat_file(a2.path(), &id)[2 * stride..]
        );
    }

    #[test]
    fn bad_sealed_input_is_rejected_and_nothing_kept() {
        let (a, b) = (
            tempfile::tempdir().expect("t"),
            tempfile::tempdir().expect("t"),
        );
        let (holder, fetcher) = (store(a.path(), None), store(b.path(), None));
        let other_device = DeviceKey::generate();
        let d = data(2 * CHUNK, 11);
        let id = holder.put_bytes(&d, None, &[]).expect("put");
        let serve = |sealed_for: Option<Hash32>| {
            let mut s = Sender::new(holder.clone(), true);
            s.handle_message(Message::ArtifactRequest(ArtifactRequest {
                artifact_id: id.hash32(),
                priority: 0,
                resume_from: None,
                sealed_for,
                metadata_only: false,
                end_before: None,
            }))
            .expect("request");
            let mut out = Vec::new();
            while let Some(m) = s.next_message().expect("ok") {
                out.push(m);
            }
            out
        };
        let me = Some(FixedBytes(*fetcher.public_key().as_bytes()));
        let sealed = serve(me);
        let plain = serve(None);
        let chunk0 = |msgs: &[Message]| match &msgs[1] {
            Message::ArtifactChunk(c) => c.clone(),
            other => panic!("{other:?}"),
        };
        let mut flipped = chunk0(&sealed);
        let mut bytes = flipped.chunk_data.to_vec();
        bytes[100] ^= 1;
        flipped.chunk_data = Bytes::from(bytes);
        let mut bad_tag = chunk0(&sealed);
        bad_tag.seal = bad_tag.seal.map(|mut s| {
            s.0[27] ^= 1;
            s
        });
        let mut wrong_hash = chunk0(&sealed);
        wrong_hash.chunk_hash = Some(Hash32::ZERO);
        let mut unsealed = chunk0(&sealed);
        unsealed.seal = None;
        let mut other_index = chunk0(&sealed);
        other_index.chunk_index = 1;
        other_index.is_final = true;
        let mut for_other = sealed[0].clone();
        if let Message::ArtifactMetadata(m) = &mut for_other {
            let mut r = holder.open_artifact(&id).expect("open");
            m.data_key = Some(r.wrap_key_for(&other_device.public()).expect("wrap"));
            // The reader is still usable after wrapping.
            assert_eq!(r.read_chunk(0).expect("chunk"), d[..CHUNK]);
        }
        type Case = (bool, Message, Message, ErrCheck);
        let cases: Vec<Case> = vec![
            // Ciphertext or tag altered in transit.
            (
                true,
                sealed[0].clone(),
                Message::ArtifactChunk(flipped),
                |e| matches!(e, ArtifactError::ChunkHashMismatch { index: 0 }),
            ),
            (
                true,
                sealed[0].clone(),
                Message::ArtifactChunk(bad_tag),
                |e| matches!(e, ArtifactError::ChunkHashMismatch { index: 0 }),
            ),
            // A chunk_hash, when given, must match the opened plaintext.
            (
                true,
                sealed[0].clone(),
                Message::ArtifactChunk(wrong_hash),
                |e| matches!(e, ArtifactError::ChunkHashMismatch { index: 0 }),
            ),
            // Mixed modes.
            (
                true,
                sealed[0].clone(),
                Message::ArtifactChunk(unsealed),
                |e| matches!(e, ArtifactError::BadChunk { index: 0, .. }),
            ),
            (
                true,
                plain[0].clone(),
                Message::ArtifactChunk(chunk0(&sealed)),
                |e| matches!(e, ArtifactError::BadChunk { index: 0, .. }),
            ),
            // A key for someone else, and a key nobody asked for.
            (true, for_other, plain[1].clone(), |e| {
                matches!(e, ArtifactError::BadMetadata(_))
            }),
            (false, sealed[0].clone(), plain[1].clone(), |e| {
                matches!(e, ArtifactError::Protocol(_))
            }),
        ];
        for (i, (ask_sealed, meta, chunk, check)) in cases.into_iter().enumerate() {
            let mut r = Receiver::new(fetcher.clone(), id, 0)
                .expect("receiver")
                .ask_sealed(ask_sealed);
            assert_eq!(r.request().resume_from, None, "case {i}");
            r.next_message().expect("ok");
            let err = match r.handle_message(meta) {
                Ok(_) => r.handle_message(chunk).err(),
                Err(e) => Some(e),
            };
            let err = err.expect("rejected");
            assert!(check(&err), "case {i}: {err}");
            assert!(matches!(r.next_message(), Ok(Some(Message::Error(_)))));
            drop(r);
            // Nothing of the rejected chunk was kept.
            if fetcher.has_partial(&id) {
                assert_eq!(
                    Receiver::new(fetcher.clone(), id, 0)
                        .expect("r")
                        .request()
                        .resume_from,
                    None,
                    "case {i}"
                );
            }
        }
        // A sealed record moved to another index fails its AAD: chunk 0's
        // record offered as chunk 1 (after a good chunk 0).
        let mut r = Receiver::new(fetcher.clone(), id, 0).expect("receiver");
        r.next_message().expect("ok");
        r.handle_message(sealed[0].clone()).expect("metadata");
        r.handle_message(Message::ArtifactChunk(chunk0(&sealed)))
            .expect("chunk 0");
        let err = r
            .handle_message(Message::ArtifactChunk(other_index))
            .expect_err("moved record");
        assert!(
            matches!(err, ArtifactError::ChunkHashMismatch { index: 1 }),
            "{err}"
        );
        assert!(!fetcher.has(&id));
    }
}
