//! Framed streams: nomade-wire envelopes over quinn streams.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nomade_wire::{
    Decoder, Envelope, ErrorCode, ErrorMessage, FrameHeader, Limits, Message, MessageId, RecentIds,
    StreamHeader, StreamRole,
};
use tokio::sync::Mutex;

use crate::counters::{InputCounters, Rejected};
use crate::error::{Result, TransportError};
use crate::ratelimit::RateLimiter;

/// The quinn send priority of a role: control and revocation 3 > sync and
/// presence 2 > artifact and relay 1 > push 0 (reserved, never opened). A
/// relay forwards others' traffic below its own live messages. Presence
/// goes before artifact data: its heartbeats are tiny, and a peer that
/// misses them for long declares the device offline, which a transfer
/// filling a slow link would otherwise cause.
pub fn priority(role: StreamRole) -> i32 {
    match role {
        StreamRole::Control | StreamRole::Revocation => 3,
        StreamRole::Sync | StreamRole::Presence => 2,
        StreamRole::Artifact | StreamRole::Relay => 1,
        StreamRole::Push => 0,
    }
}

/// How a limiter counts.
#[derive(Debug, Clone)]
pub(crate) enum Limit {
    /// One token per frame.
    Ops(RateLimiter),
    /// One token per frame byte.
    Bytes(RateLimiter),
}

impl Limit {
    async fn take(&self, frame_len: usize) {
        match self {
            Limit::Ops(l) => l.acquire(1).await,
            Limit::Bytes(l) => l.acquire(frame_len as u64).await,
        }
    }
}

/// The sending half of a stream: writes one envelope per [`FramedSend::send`].
#[derive(Debug)]
pub struct FramedSend {
    role: StreamRole,
    stream: Arc<Mutex<quinn::SendStream>>,
    buf: BytesMut,
    /// Length of the previous frame sent, to size the next buffer.
    last_len: usize,
    limit: Option<Limit>,
}

impl FramedSend {
    pub(crate) fn new(role: StreamRole, stream: quinn::SendStream, limit: Option<Limit>) -> Self {
        FramedSend {
            role,
            stream: Arc::new(Mutex::new(stream)),
            buf: BytesMut::new(),
            last_len: 0,
            limit,
        }
    }

    pub(crate) fn shared(&self) -> Arc<Mutex<quinn::SendStream>> {
        self.stream.clone()
    }

    /// Writes the stream header and sets the role's priority (done by `open`).
    pub(crate) async fn start(&mut self) -> Result<()> {
        let mut s = self.stream.lock().await;
        s.set_priority(priority(self.role))?;
        s.write_all(&StreamHeader::new(self.role).to_bytes())
            .await?;
        Ok(())
    }

    /// Sets the role's priority on a stream the peer opened.
    pub(crate) fn set_priority_now(&mut self) {
        if let Ok(s) = self.stream.try_lock() {
            let _ = s.set_priority(priority(self.role));
        }
    }

    /// The stream's role.
    pub fn role(&self) -> StreamRole {
        self.role
    }

    /// Encodes and writes one envelope, waiting first for the rate limiter
    /// (backpressure) and then for QUIC flow control.
    pub async fn send(&mut self, envelope: &Envelope) -> Result<()> {
        if let Message::ArtifactChunk(_) = envelope.message {
            // A chunk's data goes to quinn as the message's own buffer: the
            // frame is written as pieces, and the 64 KiB are not copied.
            let mut parts = envelope.encode_shared()?;
            return self.send_parts(&mut parts).await;
        }
        // Each frame is handed to quinn as it is (no copy into its send
        // buffer), so `buf` starts afresh: sized like the previous frame, as
        // frames on one stream tend to be alike (full batches).
        self.buf.reserve(self.last_len.max(256));
        envelope.encode_into(&mut self.buf)?;
        let frame = self.buf.split().freeze();
        self.last_len = frame.len();
        self.send_frame(frame).await
    }

    /// Writes one frame encoded elsewhere (for example by
    /// [`nomade_wire::BatchEncoder`]), under the same rate limit as
    /// [`FramedSend::send`]. The caller vouches that `frame` is one whole,
    /// valid frame.
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<()> {
        self.send_parts(&mut [frame]).await
    }

    /// Writes one frame given as consecutive pieces, under the rate limit.
    async fn send_parts(&mut self, parts: &mut [Bytes]) -> Result<()> {
        if let Some(limit) = &self.limit {
            limit.take(parts.iter().map(Bytes::len).sum()).await;
        }
        self.stream.lock().await.write_all_chunks(parts).await?;
        Ok(())
    }

    /// Writes bytes as they are, without framing or rate limit (tests, tools).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.lock().await.write_all(bytes).await?;
        Ok(())
    }

    /// Ends the stream gracefully: the peer reads everything sent, then the end.
    pub async fn finish(&mut self) -> Result<()> {
        self.stream.lock().await.finish()?;
        Ok(())
    }

    /// Abandons the stream with an application error code.
    pub async fn reset(&mut self, code: ErrorCode) -> Result<()> {
        self.stream
            .lock()
            .await
            .reset(quinn::VarInt::from_u32(u32::from(code.0)))?;
        Ok(())
    }
}

/// What a receiving half checks besides decoding, set by its connection.
#[derive(Debug, Clone)]
pub(crate) struct RecvChecks {
    /// The decoder's limits.
    pub(crate) limits: Limits,
    /// How long a started message may take to arrive in full.
    pub(crate) deadline: Duration,
    /// The role's receive rate limit, if any.
    pub(crate) limit: Option<Limit>,
    /// Where rejected input is counted.
    pub(crate) rejected: Arc<InputCounters>,
    /// The ids of the messages last received on the connection.
    pub(crate) recent_ids: Arc<std::sync::Mutex<RecentIds>>,
}

/// The receiving half of a stream: yields envelopes, enforcing the decoder's
/// limits and a per-message deadline, and dropping a message whose
/// `message_id` was received on the same connection shortly before.
///
/// On bad input the stream (only) is ended: an `ERROR` frame goes back on the
/// paired send half when the stream is bidirectional, the receive side is
/// stopped, and [`FramedRecv::recv`] returns the error. The connection and its
/// other streams are unaffected.
#[derive(Debug)]
pub struct FramedRecv {
    role: StreamRole,
    stream: quinn::RecvStream,
    buf: BytesMut,
    decoder: Decoder,
    reply: Option<Arc<Mutex<quinn::SendStream>>>,
    partial_since: Option<tokio::time::Instant>,
    checks: RecvChecks,
    done: bool,
    /// A decoded envelope (and its size) waiting for the rate limiter. Kept
    /// here so that a `recv` cancelled while waiting loses nothing.
    pending: Option<(Envelope, usize)>,
}

impl FramedRecv {
    pub(crate) fn new(
        role: StreamRole,
        stream: quinn::RecvStream,
        reply: Option<Arc<Mutex<quinn::SendStream>>>,
        checks: RecvChecks,
    ) -> Self {
        FramedRecv {
            role,
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::with_limits(checks.limits),
            reply,
            partial_since: None,
            checks,
            done: false,
            pending: None,
        }
    }

    /// The stream's role.
    pub fn role(&self) -> StreamRole {
        self.role
    }

    /// The raw quinn stream, for unframed bulk reads (benchmarks, tools).
    /// Bytes this reader already buffered are discarded: call it before
    /// [`FramedRecv::recv`].
    pub fn into_inner(self) -> quinn::RecvStream {
        self.stream
    }

    /// Starts afresh the deadline of a message whose first bytes arrived
    /// before the reader stopped reading on purpose (backpressure of its
    /// own, for as long as it chose): the peer is not to blame for that
    /// pause.
    pub fn restart_deadline(&mut self) {
        if self.partial_since.is_some() {
            self.partial_since = Some(tokio::time::Instant::now());
        }
    }

    /// The next envelope; `Ok(None)` when the peer finished the stream cleanly
    /// (or after this stream already failed).
    ///
    /// Waiting for the *first* byte of a message has no deadline (streams may
    /// idle; the connection's idle timeout covers dead peers), but once a
    /// message has started it must complete within the per-message deadline.
    pub async fn recv(&mut self) -> Result<Option<Envelope>> {
        if self.done {
            return Ok(None);
        }
        loop {
            if let Some((_, size)) = &self.pending {
                if let Some(limit) = &self.checks.limit {
                    // Backpressure on the sender: while we wait, we stop
                    // reading and QUIC flow control holds the peer.
                    limit.take(*size).await;
                }
                if let Some((env, _)) = self.pending.take() {
                    return Ok(Some(env));
                }
            }
            let before = self.buf.len();
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(env)) => {
                    self.partial_since = (!self.buf.is_empty()).then(tokio::time::Instant::now);
                    if self.is_repeat(&env) {
                        continue;
                    }
                    self.pending = Some((env, before - self.buf.len()));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(role = ?self.role, error = %e, "bad frame: ending stream");
                    self.checks.rejected.count(Rejected::Frame);
                    let related = self.decoder.rejected_message_id();
                    self.fail(e.error_code(), &e.to_string(), related).await;
                    return Err(e.into());
                }
            }
            let chunk = if self.buf.is_empty() {
                self.stream.read_chunk(64 * 1024, true).await?
            } else {
                let started = *self
                    .partial_since
                    .get_or_insert_with(tokio::time::Instant::now);
                match tokio::time::timeout_at(
                    started + self.checks.deadline,
                    self.stream.read_chunk(64 * 1024, true),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_) => {
                        tracing::warn!(role = ?self.role, deadline = ?self.checks.deadline, "message deadline passed: ending stream");
                        self.checks.rejected.count(Rejected::Deadline);
                        let related = FrameHeader::peek_message_id(&self.buf);
                        self.fail(
                            ErrorCode::INVALID_MESSAGE,
                            "message not completed in time",
                            related,
                        )
                        .await;
                        return Err(TransportError::Deadline(self.checks.deadline));
                    }
                }
            };
            match chunk {
                Some(c) => {
                    if self.buf.is_empty() {
                        self.partial_since = Some(tokio::time::Instant::now());
                    }
                    self.buf.extend_from_slice(&c.bytes);
                }
                None if self.buf.is_empty() => {
                    self.done = true;
                    return Ok(None);
                }
                None => {
                    let e = self.decoder.truncation(&self.buf);
                    tracing::warn!(role = ?self.role, error = %e, "stream ended mid-frame");
                    self.checks.rejected.count(Rejected::Frame);
                    let related = FrameHeader::peek_message_id(&self.buf);
                    self.fail(e.error_code(), &e.to_string(), related).await;
                    return Err(e.into());
                }
            }
        }
    }

    /// Whether `env` repeats a message received on this connection within the
    /// de-duplication window (BAD_INPUTS #19): it is then dropped, logged and
    /// counted, and the stream goes on.
    fn is_repeat(&self, env: &Envelope) -> bool {
        let first = self
            .checks
            .recent_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first_sighting(env.message_id);
        if !first {
            tracing::debug!(role = ?self.role, message_id = %env.message_id, "repeated message id: dropped");
            self.checks.rejected.count(Rejected::Duplicate);
        }
        !first
    }

    /// Refuses this stream: `ERROR { code, why }` on the reply half (when
    /// the stream is bidirectional), then FIN, then STOP_SENDING with `code`
    /// on the receive half. For a stream the application does not serve
    /// (the push role, for one); later [`FramedRecv::recv`] calls return
    /// `Ok(None)`.
    pub async fn refuse(&mut self, code: ErrorCode, why: &str) {
        self.fail(code, why, None).await
    }

    /// Ends this stream after bad input: ERROR (naming the offending frame
    /// when its header was readable) on the reply half, if any, then FIN on
    /// that half (never RESET_STREAM, which may discard the ERROR), then
    /// STOP_SENDING on the receive half.
    async fn fail(&mut self, code: ErrorCode, why: &str, related: Option<MessageId>) {
        self.done = true;
        self.buf.clear();
        if let Some(reply) = self.reply.take() {
            let env = error_envelope(code, why, related);
            let mut s = reply.lock().await;
            let mut frame = BytesMut::new();
            if env.encode_into(&mut frame).is_ok() {
                let write = tokio::time::timeout(Duration::from_secs(2), s.write_all(&frame));
                if !matches!(write.await, Ok(Ok(()))) {
                    tracing::debug!("could not deliver ERROR frame");
                }
            }
            let _ = s.finish();
        }
        let _ = self.stream.stop(quinn::VarInt::from_u32(u32::from(code.0)));
    }
}

/// An ERROR envelope with a fresh random id and the current time.
pub fn error_envelope(code: ErrorCode, message: &str, related: Option<MessageId>) -> Envelope {
    Envelope::new(
        MessageId::from(rand::random::<[u8; 16]>()),
        now_ms(),
        ErrorMessage {
            error_code: code,
            error_message: message.to_string(),
            related_message_id: related,
        },
    )
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A stream the peer opened, with its role already read and checked.
#[derive(Debug)]
pub struct IncomingStream {
    /// The role from the stream header.
    pub role: StreamRole,
    /// The send half, for bidirectional roles.
    pub send: Option<FramedSend>,
    /// The receive half.
    pub recv: FramedRecv,
}
