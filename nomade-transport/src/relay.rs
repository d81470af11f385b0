//! Relaying a connection through a paired device.
//!
//! When device A cannot reach device C directly but both are connected to
//! B, A asks B to relay: it opens a [`StreamRole::Relay`] stream to B with
//! `RELAY_REQUEST { target: C }`; B opens one to C with
//! `RELAY_OFFER { source: A }`; C answers `RELAY_ACCEPT`, then B does. From
//! then on both streams carry QUIC packets, each as a 2-byte big-endian
//! length and the packet ([`write_packet`], [`PacketReader`]), and B copies
//! packets from one stream to the other. A and C run a QUIC connection of
//! their own over them, with the same mutual TLS 1.3 as a direct one
//! (pinned device ids): B forwards ciphertext it cannot read, and cannot
//! pose as A or C, whose keys it does not hold.
//!
//! The relayed connection is an ordinary [`crate::Connection`] to its peer
//! ([`crate::Connection::relayed_via`] names the relay). Its QUIC endpoint runs
//! over a `RelaySocket` (a quinn `AsyncUdpSocket` whose datagrams are the
//! relay stream's packets) instead of the UDP socket.
//!
//! Bounds: a relay serves at most [`RelayConfig::max_sessions`] at once
//! ([`RelayConfig::max_sessions_per_device`] per asking device), forwards
//! at most [`RelayConfig::bytes_per_sec`], and only between paired devices
//! over direct connections (a relayed connection never carries a relay
//! stream, so no loop or chain can form). A device accepts relayed
//! connections offered to it within the same limits (per relay, and in
//! all). Every refusal is an `ERROR` with a code the
//! asker can act on ([`TransportError::RelayRefused`]), counted in
//! [`RelayStats`].

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use nomade_wire::{
    Envelope, ErrorCode, FrameHeader, Limits, Message, MessageId, RelayAccept, RelayOffer,
    RelayRequest, StreamHeader, StreamRole,
};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use crate::error::{Result, TransportError};
use crate::identity::DeviceId;
use crate::ratelimit::RateLimiter;
use crate::stream::{error_envelope, now_ms, priority};

/// Largest QUIC packet a relay stream carries: relayed connections use
/// datagrams of this size (the stream, not a link, carries them, so the
/// path MTU does not bound them), and a length above it is bad input.
pub const MAX_RELAY_PACKET: usize = 16 * 1024;

/// Largest payload of the one frame that opens or answers a relay stream
/// (`RELAY_REQUEST`, `RELAY_OFFER`, `RELAY_ACCEPT`, `ERROR`).
const MAX_RELAY_FRAME_PAYLOAD: u32 = 1024;

/// Packets queued toward a relay stream before the socket drops more (as a
/// full router queue would; QUIC's congestion control then slows down).
const SEND_QUEUE_PACKETS: usize = 64;

/// Packets read from a relay stream and not yet taken by QUIC.
const RECV_QUEUE_PACKETS: usize = 64;

/// How much a relay reads from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// The address a relayed connection's dialer appears at, to its own QUIC
/// endpoint and to its peer's (a documentation address: never routed).
const DIALER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1);
/// The address a relayed connection's accepting side appears at.
const ACCEPTOR_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 1);

/// What a device does as a relay for its paired devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Whether this device relays at all (default yes). When off, every
    /// request is refused with `UNREACHABLE`.
    pub enabled: bool,
    /// Relay sessions at once, all devices together (default 16).
    pub max_sessions: usize,
    /// Relay sessions at once asked by one device (default 4).
    pub max_sessions_per_device: usize,
    /// Bytes forwarded per second, both directions and all sessions
    /// together (default 10 MB/s, the protocol's artifact default); `None`:
    /// unlimited. The relay's own streams are not counted.
    pub bytes_per_sec: Option<u64>,
    /// Test only (the `faults` feature): the relay alters one byte inside
    /// every n-th packet it forwards, as a faulty or hostile relay would.
    #[cfg(feature = "faults")]
    pub corrupt_every: Option<u64>,
    /// Test only (the `faults` feature): the relay drops every n-th packet
    /// it forwards.
    #[cfg(feature = "faults")]
    pub drop_every: Option<u64>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: true,
            max_sessions: 16,
            max_sessions_per_device: 4,
            bytes_per_sec: Some(10_000_000),
            #[cfg(feature = "faults")]
            corrupt_every: None,
            #[cfg(feature = "faults")]
            drop_every: None,
        }
    }
}

/// What a device did as a relay, and with relayed connections, since its
/// transport was bound ([`crate::Transport::relay_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Relay sessions this device serves now.
    pub active_sessions: u64,
    /// Relay sessions this device served, in all.
    pub sessions: u64,
    /// Relay requests and offers this device refused (not paired, unknown
    /// or unreachable target, to itself, over a relayed connection,
    /// quota, relaying off, malformed).
    pub refused: u64,
    /// Bytes this device forwarded for others (packets with their lengths,
    /// both directions).
    pub bytes_forwarded: u64,
    /// Relay streams ended for bad input: a packet length of 0 or above
    /// [`MAX_RELAY_PACKET`], or a stream that did not open as the protocol
    /// says.
    pub bad_streams: u64,
}

/// The counters behind [`RelayStats`].
#[derive(Debug, Default)]
pub(crate) struct RelayCounters {
    active: AtomicU64,
    sessions: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
    bad_streams: AtomicU64,
    /// Active sessions per asking device.
    per_device: Mutex<std::collections::HashMap<DeviceId, usize>>,
    /// Relayed connections accepted and live, per relay that offered them.
    offered: Mutex<std::collections::HashMap<DeviceId, usize>>,
}

/// Which quota a [`SessionSlot`] counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quota {
    /// Sessions this device relays, per asking device.
    Relaying,
    /// Relayed connections offered to this device, per relay.
    Offered,
}

impl RelayCounters {
    pub(crate) fn snapshot(&self) -> RelayStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            active_sessions: load(&self.active),
            sessions: load(&self.sessions),
            refused: load(&self.refused),
            bytes_forwarded: load(&self.bytes),
            bad_streams: load(&self.bad_streams),
        }
    }

    fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn bad_stream(&self) {
        self.bad_streams.fetch_add(1, Ordering::Relaxed);
    }

    fn quota(&self, quota: Quota) -> &Mutex<std::collections::HashMap<DeviceId, usize>> {
        match quota {
            Quota::Relaying => &self.per_device,
            Quota::Offered => &self.offered,
        }
    }

    /// Takes a session slot for `asker`, or `None` when its quota is full.
    fn admit(self: &Arc<Self>, asker: DeviceId, config: &RelayConfig) -> Option<SessionSlot> {
        let slot = self.take(Quota::Relaying, asker, config)?;
        self.active.fetch_add(1, Ordering::Relaxed);
        self.sessions.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    /// Takes a slot for a relayed connection `relay` offers this device
    /// (the same limits: a relay cannot make it hold endpoints without
    /// bound), or `None` when the quota is full.
    pub(crate) fn admit_offer(
        self: &Arc<Self>,
        relay: DeviceId,
        config: &RelayConfig,
    ) -> Option<SessionSlot> {
        self.take(Quota::Offered, relay, config)
    }

    fn take(
        self: &Arc<Self>,
        quota: Quota,
        who: DeviceId,
        config: &RelayConfig,
    ) -> Option<SessionSlot> {
        let mut per = self.quota(quota).lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = per.values().sum();
        let mine = per.get(&who).copied().unwrap_or(0);
        if total >= config.max_sessions || mine >= config.max_sessions_per_device {
            return None;
        }
        per.insert(who, mine + 1);
        Some(SessionSlot {
            counters: self.clone(),
            quota,
            who,
        })
    }
}

/// A place in a relay quota, given back when dropped.
pub(crate) struct SessionSlot {
    counters: Arc<RelayCounters>,
    quota: Quota,
    who: DeviceId,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut per = self
            .counters
            .quota(self.quota)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.who);
            }
        }
        if self.quota == Quota::Relaying {
            self.counters.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

// ----- packets on a relay stream --------------------------------------------

/// Appends `packet` to `dst` as a relay stream carries it: its length as a
/// big-endian `u16`, then its bytes. `packet` must be 1 to
/// [`MAX_RELAY_PACKET`] bytes long.
pub fn write_packet(dst: &mut BytesMut, packet: &[u8]) {
    debug_assert!((1..=MAX_RELAY_PACKET).contains(&packet.len()));
    dst.reserve(2 + packet.len());
    dst.put_u16(packet.len() as u16);
    dst.put_slice(packet);
}

/// A relay stream's packet with a bad length: the stream is out of step or
/// hostile, and is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("relay stream: packet length {0} is outside 1..={MAX_RELAY_PACKET}")]
pub struct BadPacketLength(pub usize);

/// Splits the bytes of a relay stream into packets (sans-IO). It holds at
/// most one incomplete packet besides the bytes pushed last.
#[derive(Debug, Default)]
pub struct PacketReader {
    buf: BytesMut,
}

impl PacketReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        PacketReader::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet, `Ok(None)` until one is complete, or the bad
    /// length that ends the stream.
    pub fn next_packet(&mut self) -> std::result::Result<Option<Bytes>, BadPacketLength> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if len == 0 || len > MAX_RELAY_PACKET {
            return Err(BadPacketLength(len));
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        self.buf.advance(2);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes held that do not make a whole packet yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Checks the packet lengths of a relay stream as its bytes pass, without
/// holding any (sans-IO): what a relay runs over the bytes it forwards
/// unchanged.
#[derive(Debug, Default)]
pub struct PacketBoundaries {
    /// Bytes of the current packet still to pass.
    rest: usize,
    /// The first byte of a length split between two reads.
    half_length: Option<u8>,
    /// Whole packets seen.
    packets: u64,
}

impl PacketBoundaries {
    /// At the start of a stream.
    pub fn new() -> Self {
        PacketBoundaries::default()
    }

    /// Scans the next bytes of the stream.
    pub fn scan(&mut self, mut bytes: &[u8]) -> std::result::Result<(), BadPacketLength> {
        while !bytes.is_empty() {
            if self.rest > 0 {
                let n = self.rest.min(bytes.len());
                self.rest -= n;
                bytes = &bytes[n..];
                if self.rest == 0 {
                    self.packets += 1;
                }
                continue;
            }
            let len = match self.half_length.take() {
                Some(hi) => {
                    let len = usize::from(u16::from_be_bytes([hi, bytes[0]]));
                    bytes = &bytes[1..];
                    len
                }
                None if bytes.len() == 1 => {
                    self.half_length = Some(bytes[0]);
                    return Ok(());
                }
                None => {
                    let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
                    bytes = &bytes[2..];
                    len
                }
            };
            if len == 0 || len > MAX_RELAY_PACKET {
                return Err(BadPacketLength(len));
            }
            self.rest = len;
        }
        Ok(())
    }

    /// Whole packets seen so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }
}

// ----- the opening exchange --------------------------------------------------

fn envelope(message: impl Into<Message>) -> Envelope {
    Envelope::new(
        MessageId::from(rand::random::<[u8; 16]>()),
        now_ms(),
        message,
    )
}

/// Writes one frame (after the stream header when `header` is set).
async fn write_frame(
    send: &mut quinn::SendStream,
    header: bool,
    message: impl Into<Message>,
) -> Result<()> {
    let mut out = BytesMut::new();
    if header {
        out.extend_from_slice(&StreamHeader::new(StreamRole::Relay).to_bytes());
    }
    envelope(message).encode_into(&mut out)?;
    send.write_all(&out).await?;
    Ok(())
}

/// Reads exactly one frame of at most [`MAX_RELAY_FRAME_PAYLOAD`] bytes of
/// payload, within `deadline`, and nothing after it.
async fn read_frame(recv: &mut quinn::RecvStream, deadline: Duration) -> Result<Envelope> {
    let limits = Limits {
        max_payload: MAX_RELAY_FRAME_PAYLOAD,
        ..Limits::default()
    };
    tokio::time::timeout(deadline, async {
        let mut frame = vec![0u8; nomade_wire::HEADER_LEN];
        recv.read_exact(&mut frame).await?;
        let header = FrameHeader::parse(&frame, &limits)?.ok_or_else(|| {
            TransportError::RelayBroken("incomplete frame header on a relay stream".into())
        })?;
        let len = header.frame_len();
        frame.resize(len, 0);
        recv.read_exact(&mut frame[nomade_wire::HEADER_LEN..])
            .await?;
        Ok(Envelope::decode_with(&frame, &limits)?)
    })
    .await
    .map_err(|_| TransportError::Deadline(deadline))?
}

/// Answers a relay stream with `ERROR { code, why }` and ends it.
async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, why: &str) {
    let mut out = BytesMut::new();
    if error_envelope(code, why, None)
        .encode_into(&mut out)
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), send.write_all(&out)).await;
    }
    let _ = send.finish();
}

/// Sends the opening message of a relay stream on `conn` and waits for its
/// answer: `Ok` once accepted, [`TransportError::RelayRefused`] with the
/// peer's code otherwise.
pub(crate) async fn open_relay_stream(
    conn: &quinn::Connection,
    relay: DeviceId,
    message: impl Into<Message>,
    deadline: Duration,
) -> Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.set_priority(priority(StreamRole::Relay))?;
    write_frame(&mut send, true, message).await?;
    match read_frame(&mut recv, deadline).await?.message {
        Message::RelayAccept(_) => Ok((send, recv)),
        Message::Error(e) => Err(TransportError::RelayRefused {
            relay,
            code: e.error_code,
            reason: e.error_message,
        }),
        other => Err(TransportError::RelayBroken(format!(
            "expected RELAY_ACCEPT, got {}",
            other.message_type().name()
        ))),
    }
}

// ----- the relay's side --------------------------------------------------------

/// What a relay needs of its transport to serve a relay stream.
pub(crate) trait RelayHost: Send + Sync + 'static {
    /// This device.
    fn device_id(&self) -> DeviceId;
    /// Whether `id` is paired with this device now.
    fn is_paired(&self, id: &DeviceId) -> bool;
    /// A live direct (not relayed) connection to `id`.
    fn direct_connection(&self, id: &DeviceId) -> Option<quinn::Connection>;
    /// The relay settings.
    fn relay_config(&self) -> &RelayConfig;
    /// The relay counters.
    fn relay_counters(&self) -> &Arc<RelayCounters>;
    /// The shared relay rate limiter, if any.
    fn relay_limiter(&self) -> Option<&RateLimiter>;
    /// How long the opening exchange may take.
    fn relay_deadline(&self) -> Duration;
    /// Accepts the relayed connection `source` opens over these streams,
    /// offered by `relay` (the acceptor's side).
    fn accept_relayed(
        self: Arc<Self>,
        relay: DeviceId,
        source: DeviceId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        slot: SessionSlot,
    );
}

/// Serves a relay stream a peer opened on the connection `from` (`relayed`:
/// whether that connection is itself relayed): a request to relay, or an
/// offer of a relayed connection.
pub(crate) async fn serve_stream<H: RelayHost + ?Sized>(
    host: Arc<H>,
    from: DeviceId,
    relayed: bool,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let counters = host.relay_counters().clone();
    let _ = send.set_priority(priority(StreamRole::Relay));
    let first = match read_frame(&mut recv, host.relay_deadline()).await {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(peer = %from, error = %e, "bad relay stream: refused");
            counters.bad_stream();
            counters.refuse();
            refuse(&mut send, ErrorCode::INVALID_MESSAGE, &e.to_string()).await;
            let _ = recv.stop(quinn::VarInt::from_u32(u32::from(
                ErrorCode::INVALID_MESSAGE.0,
            )));
            return;
        }
    };
    let refused = |code: ErrorCode, why: String| (code, why);
    let outcome = if relayed {
        Err(refused(
            ErrorCode::INVALID_MESSAGE,
            "a relayed connection carries no relay stream".into(),
        ))
    } else {
        match first.message {
            Message::RelayRequest(r) => {
                return relay_request(host, from, r, send, recv).await;
            }
            Message::RelayOffer(o) => match o.source.parse::<DeviceId>() {
                Err(e) => Err(refused(ErrorCode::INVALID_MESSAGE, e.to_string())),
                Ok(source) if source == host.device_id() || source == from => Err(refused(
                    ErrorCode::INVALID_MESSAGE,
                    "an offer from this device itself or from the relay".into(),
                )),
                Ok(source) if !host.is_paired(&source) => Err(refused(
                    ErrorCode::AUTHENTICATION_FAILED,
                    format!("{source} is not paired with this device"),
                )),
                Ok(source) => match counters.admit_offer(from, host.relay_config()) {
                    Some(slot) => Ok((source, slot)),
                    None => Err(refused(
                        ErrorCode::RATE_LIMITED,
                        "too many relayed connections offered at once".into(),
                    )),
                },
            },
            other => Err(refused(
                ErrorCode::INVALID_MESSAGE,
                format!(
                    "a relay stream opens with RELAY_REQUEST or RELAY_OFFER, not {}",
                    other.message_type().name()
                ),
            )),
        }
    };
    match outcome {
        Ok((source, slot)) => {
            if let Err(e) = write_frame(&mut send, false, RelayAccept {}).await {
                tracing::debug!(relay = %from, %source, error = %e, "relay offer lost");
                return;
            }
            tracing::info!(relay = %from, %source, "accepting a relayed connection");
            host.accept_relayed(from, source, send, recv, slot);
        }
        Err((code, why)) => {
            tracing::warn!(peer = %from, code = code.name(), reason = %why, "relay stream refused");
            counters.refuse();
            refuse(&mut send, code, &why).await;
        }
    }
}

/// B's side of `RELAY_REQUEST`: checks it, offers the connection to the
/// target, and forwards packets both ways until either side ends.
async fn relay_request<H: RelayHost + ?Sized>(
    host: Arc<H>,
    asker: DeviceId,
    request: RelayRequest,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let counters = host.relay_counters().clone();
    let config = *host.relay_config();
    let checked = (|| {
        if !config.enabled {
            return Err((
                ErrorCode::UNREACHABLE,
                "this device does not relay".to_string(),
            ));
        }
        let target = request
            .target
            .parse::<DeviceId>()
            .map_err(|e| (ErrorCode::INVALID_MESSAGE, e.to_string()))?;
        if target == asker {
            return Err((
                ErrorCode::INVALID_MESSAGE,
                "a relay to the asking device itself".to_string(),
            ));
        }
        if target == host.device_id() {
            return Err((
                ErrorCode::INVALID_MESSAGE,
                "a relay to the relay itself: connect directly".to_string(),
            ));
        }
        if !host.is_paired(&target) {
            return Err((
                ErrorCode::UNREACHABLE,
                format!("{target} is not a device this relay knows"),
            ));
        }
        let conn = host.direct_connection(&target).ok_or_else(|| {
            (
                ErrorCode::UNREACHABLE,
                format!("no direct connection to {target}"),
            )
        })?;
        let slot = counters.admit(asker, &config).ok_or_else(|| {
            (
                ErrorCode::RATE_LIMITED,
                format!(
                    "relay quota reached ({} sessions, {} per device)",
                    config.max_sessions, config.max_sessions_per_device
                ),
            )
        })?;
        Ok((target, conn, slot))
    })();
    let (target, conn, slot) = match checked {
        Ok(t) => t,
        Err((code, why)) => {
            tracing::warn!(peer = %asker, code = code.name(), reason = %why, "relay request refused");
            counters.refuse();
            refuse(&mut send, code, &why).await;
            return;
        }
    };
    let offer = RelayOffer {
        source: asker.to_string(),
    };
    let (t_send, t_recv) =
        match open_relay_stream(&conn, target, offer, host.relay_deadline()).await {
            Ok(s) => s,
            Err(e) => {
                let (code, why) = match e {
                    TransportError::RelayRefused { code, reason, .. } => {
                        (code, format!("{target} refused: {reason}"))
                    }
                    other => (ErrorCode::UNREACHABLE, format!("{target}: {other}")),
                };
                tracing::info!(peer = %asker, %target, reason = %why, "relay not opened");
                counters.refuse();
                refuse(&mut send, code, &why).await;
                return;
            }
        };
    if let Err(e) = write_frame(&mut send, false, RelayAccept {}).await {
        tracing::debug!(peer = %asker, %target, error = %e, "relay accepted, asker gone");
        return;
    }
    tracing::info!(peer = %asker, %target, "relaying");
    let limiter = host.relay_limiter().cloned();
    #[cfg(feature = "faults")]
    let alter = Alteration {
        corrupt_every: config.corrupt_every,
        drop_every: config.drop_every,
    };
    #[cfg(not(feature = "faults"))]
    let alter = Alteration::default();
    let forward = |from, to| Forward {
        counters: counters.clone(),
        limiter: limiter.clone(),
        alter,
        from,
        to,
    };
    let there = forward(recv, t_send).run();
    let back = forward(t_recv, send).run();
    // Either side ending ends the session (the other half is reset by
    // dropping it).
    tokio::select! {
        r = there => log_forward_end(asker, target, r),
        r = back => log_forward_end(target, asker, r),
    }
    drop(slot);
}

fn log_forward_end(from: DeviceId, to: DeviceId, r: Result<()>) {
    match r {
        Ok(()) => tracing::info!(%from, %to, "relay session ended"),
        Err(e) => tracing::info!(%from, %to, error = %e, "relay session ended"),
    }
}

/// What a faulty relay does to the packets it forwards (tests only).
#[derive(Debug, Clone, Copy, Default)]
struct Alteration {
    /// Alters a byte of every n-th packet.
    corrupt_every: Option<u64>,
    /// Drops every n-th packet.
    drop_every: Option<u64>,
}

impl Alteration {
    fn is_none(&self) -> bool {
        self.corrupt_every.is_none() && self.drop_every.is_none()
    }

    fn hits(every: Option<u64>, n: u64) -> bool {
        every.is_some_and(|e| n % e.max(1) == 0)
    }
}

/// One direction of a relay session.
struct Forward {
    counters: Arc<RelayCounters>,
    limiter: Option<RateLimiter>,
    alter: Alteration,
    from: quinn::RecvStream,
    to: quinn::SendStream,
}

impl Forward {
    async fn run(self) -> Result<()> {
        if !self.alter.is_none() {
            return self.run_altering().await;
        }
        let Forward {
            counters,
            limiter,
            mut from,
            mut to,
            ..
        } = self;
        // The bytes go on as they came (no copy); only their packet
        // lengths are checked.
        let mut boundaries = PacketBoundaries::new();
        loop {
            let Some(chunk) = from.read_chunk(READ_CHUNK, true).await? else {
                let _ = to.finish();
                return Ok(());
            };
            if let Err(e) = boundaries.scan(&chunk.bytes) {
                counters.bad_stream();
                let _ = from.stop(quinn::VarInt::from_u32(u32::from(
                    ErrorCode::INVALID_MESSAGE.0,
                )));
                return Err(TransportError::RelayBroken(e.to_string()));
            }
            let len = chunk.bytes.len() as u64;
            if let Some(l) = &limiter {
                l.acquire(len).await;
            }
            counters.bytes.fetch_add(len, Ordering::Relaxed);
            to.write_chunk(chunk.bytes).await?;
        }
    }

    /// [`Forward::run`] for a relay that alters or drops packets (tests
    /// only): packets taken apart and written again.
    async fn run_altering(mut self) -> Result<()> {
        let mut reader = PacketReader::new();
        let mut out = BytesMut::new();
        let mut forwarded = 0u64;
        loop {
            let Some(chunk) = self.from.read_chunk(READ_CHUNK, true).await? else {
                let _ = self.to.finish();
                return Ok(());
            };
            reader.push(&chunk.bytes);
            loop {
                match reader.next_packet() {
                    Ok(Some(packet)) => {
                        forwarded += 1;
                        if Alteration::hits(self.alter.drop_every, forwarded) {
                            continue;
                        }
                        let start = out.len();
                        write_packet(&mut out, &packet);
                        if Alteration::hits(self.alter.corrupt_every, forwarded) {
                            // A byte in the middle of the packet, never its length.
                            let at = start + 2 + packet.len() / 2;
                            out[at] ^= 0x5a;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.counters.bad_stream();
                        let _ = self.from.stop(quinn::VarInt::from_u32(u32::from(
                            ErrorCode::INVALID_MESSAGE.0,
                        )));
                        return Err(TransportError::RelayBroken(e.to_string()));
                    }
                }
            }
            if out.is_empty() {
                continue;
            }
            if let Some(l) = &self.limiter {
                l.acquire(out.len() as u64).await;
            }
            self.counters
                .bytes
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            self.to.write_all(&out).await?;
            out.clear();
        }
    }
}

// ----- the ends: a QUIC endpoint over a relay stream -----------------------------

/// The packets of one relay stream as a quinn socket: what QUIC sends is
/// queued to the stream's writer, what the reader took off the stream is
/// what QUIC receives. One peer, at a fixed placeholder address.
#[derive(Debug)]
pub(crate) struct RelaySocket {
    local: SocketAddr,
    peer: SocketAddr,
    out: mpsc::Sender<Bytes>,
    incoming: Mutex<mpsc::Receiver<Bytes>>,
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(segment) {
            if datagram.is_empty() || datagram.len() > MAX_RELAY_PACKET {
                continue;
            }
            // A full queue drops the datagram, as a full router queue
            // would; a closed one (the relay stream ended) too: the
            // connection is being closed.
            let _ = self.out.try_send(Bytes::copy_from_slice(datagram));
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut rx = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let next = if n == 0 {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(p)) => p,
                    // Ended: the owner closes the connection.
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            } else {
                match rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => break,
                }
            };
            let len = next.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&next[..len]);
            meta[n] = RecvMeta {
                addr: self.peer,
                len,
                stride: len,
                ecn: None,
                dst_ip: Some(self.local.ip()),
            };
            n += 1;
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// The tasks moving packets between a [`RelaySocket`] and its stream; the
/// returned receiver yields once, when the stream ended (and why), and
/// aborting the returned task ends the stream (both halves dropped: FIN
/// and STOP_SENDING).
fn start_link(
    dialer: bool,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    counters: Arc<RelayCounters>,
) -> (
    Arc<RelaySocket>,
    tokio::sync::oneshot::Receiver<TransportError>,
    tokio::task::JoinHandle<()>,
) {
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(SEND_QUEUE_PACKETS);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(RECV_QUEUE_PACKETS);
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let (local, peer) = if dialer {
        (DIALER_ADDR, ACCEPTOR_ADDR)
    } else {
        (ACCEPTOR_ADDR, DIALER_ADDR)
    };
    let socket = Arc::new(RelaySocket {
        local,
        peer,
        out: out_tx,
        incoming: Mutex::new(in_rx),
    });
    let writer = async move {
        let mut buf = BytesMut::new();
        while let Some(p) = out_rx.recv().await {
            write_packet(&mut buf, &p);
            while buf.len() < READ_CHUNK {
                match out_rx.try_recv() {
                    Ok(p) => write_packet(&mut buf, &p),
                    Err(_) => break,
                }
            }
            send.write_all(&buf).await?;
            buf.clear();
        }
        let _ = send.finish();
        Ok::<_, TransportError>(())
    };
    let reader = async move {
        let mut packets = PacketReader::new();
        loop {
            let chunk = match recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    return TransportError::RelayBroken("the relay ended the stream".into())
                }
                Err(e) => return e.into(),
            };
            packets.push(&chunk.bytes);
            loop {
                match packets.next_packet() {
                    Ok(Some(p)) => {
                        if in_tx.send(p).await.is_err() {
                            return TransportError::EndpointClosed;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        counters.bad_stream();
                        let _ = recv.stop(quinn::VarInt::from_u32(u32::from(
                            ErrorCode::INVALID_MESSAGE.0,
                        )));
                        return TransportError::RelayBroken(e.to_string());
                    }
                }
            }
        }
    };
    let task = tokio::spawn(async move {
        let why = tokio::select! {
            r = writer => r.err().unwrap_or_else(|| TransportError::RelayBroken("the relayed connection ended".into())),
            e = reader => e,
        };
        let _ = ended_tx.send(why);
    });
    (socket, ended_rx, task)
}

/// quinn's endpoint settings for a relayed connection: datagrams up to
/// [`MAX_RELAY_PACKET`].
fn endpoint_config() -> Result<quinn::EndpointConfig> {
    let mut c = quinn::EndpointConfig::default();
    c.max_udp_payload_size(MAX_RELAY_PACKET as u16)
        .map_err(|e| TransportError::RelayBroken(format!("relay endpoint settings: {e}")))?;
    Ok(c)
}

/// The transport settings of a relayed connection, from a direct one's:
/// datagrams of [`MAX_RELAY_PACKET`] from the start, no MTU probes.
pub(crate) fn relayed_transport(mut t: quinn::TransportConfig) -> Arc<quinn::TransportConfig> {
    t.initial_mtu(MAX_RELAY_PACKET as u16)
        .min_mtu(MAX_RELAY_PACKET as u16)
        .mtu_discovery_config(None);
    Arc::new(t)
}

/// A QUIC endpoint over a relay stream, kept until its connection ends; the
/// connection is closed when the stream ends first.
pub(crate) struct RelayedEndpoint {
    pub(crate) endpoint: quinn::Endpoint,
    ended: tokio::sync::oneshot::Receiver<TransportError>,
    link: tokio::task::JoinHandle<()>,
    /// The quota place of a connection offered to this device, held as
    /// long as the endpoint.
    _slot: Option<SessionSlot>,
}

impl Drop for RelayedEndpoint {
    fn drop(&mut self) {
        // Not handed to `hold` (the handshake failed): end the stream now.
        self.link.abort();
    }
}

impl RelayedEndpoint {
    /// An endpoint over `send`/`recv`, a client one when `server` is `None`.
    pub(crate) fn start(
        server: Option<quinn::ServerConfig>,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        counters: Arc<RelayCounters>,
        slot: Option<SessionSlot>,
    ) -> Result<Self> {
        let dialer = server.is_none();
        let (socket, ended, link) = start_link(dialer, send, recv, counters);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config()?,
            server,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(RelayedEndpoint {
            endpoint,
            ended,
            link,
            _slot: slot,
        })
    }

    /// Runs `work` (a handshake over this endpoint) unless the relay
    /// stream ends first, which is then the error.
    pub(crate) async fn unless_ended<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        tokio::select! {
            r = work => Ok(r),
            why = &mut self.ended => Err(why.unwrap_or_else(|_| {
                TransportError::RelayBroken("the relay stream ended".into())
            })),
        }
    }

    /// The address a dialer connects to.
    pub(crate) fn peer_address() -> SocketAddr {
        ACCEPTOR_ADDR
    }

    /// Keeps the endpoint until `conn` ends, and ends `conn` when the relay
    /// stream ends first.
    pub(crate) fn hold(self, conn: quinn::Connection) {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            // Dropped at the end, which ends the relay stream.
            let mut this = self;
            let ended = &mut this.ended;
            tokio::select! {
                _ = conn.closed() => {}
                why = ended => {
                    let why = why.map_or_else(|_| "relay ended".to_string(), |e| e.to_string());
                    tracing::info!(reason = %why, "relayed connection lost its relay");
                    conn.close(crate::error::close_code::NORMAL.into(), b"relay ended");
                }
            }
            endpoint.close(crate::error::close_code::NORMAL.into(), b"relay ended");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            drop(this);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_split_whatever_the_reads() {
        let packets: Vec<Vec<u8>> = (1..40usize)
            .map(|n| {
                (0..n * 37 % MAX_RELAY_PACKET + 1)
                    .map(|i| i as u8)
                    .collect()
            })
            .collect();
        let mut stream = BytesMut::new();
        for p in &packets {
            write_packet(&mut stream, p);
        }
        for step in [1usize, 2, 3, 7, 1000, stream.len()] {
            let mut reader = PacketReader::new();
            let mut got = Vec::new();
            for piece in stream.chunks(step) {
                reader.push(piece);
                while let Some(p) = reader.next_packet().expect("good lengths") {
                    got.push(p.to_vec());
                }
                assert!(reader.buffered() < 2 + MAX_RELAY_PACKET + step);
            }
            assert_eq!(got, packets, "reads of {step} bytes");
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn boundaries_follow_the_packets_whatever_the_reads() {
        let mut stream = BytesMut::new();
        for n in 1..60usize {
            write_packet(&mut stream, &vec![n as u8; n * 271 % MAX_RELAY_PACKET + 1]);
        }
        for step in [1usize, 2, 3, 5, 4096, stream.len()] {
            let mut b = PacketBoundaries::new();
            for piece in stream.chunks(step) {
                b.scan(piece).expect("good lengths");
            }
            assert_eq!(b.packets(), 59, "reads of {step} bytes");
            // A bad length after them, split or not, is found.
            let mut bad = b"\xff".to_vec();
            bad.push(0xff);
            for split in [1, 2] {
                let mut c = PacketBoundaries::new();
                c.scan(&stream).expect("good");
                let (x, y) = bad.split_at(split.min(bad.len()));
                let r = c.scan(x).and_then(|()| c.scan(y));
                assert_eq!(r, Err(BadPacketLength(0xffff)));
            }
        }
        let mut zero = PacketBoundaries::new();
        assert_eq!(zero.scan(&[0, 0, 1]), Err(BadPacketLength(0)));
    }

    #[test]
    fn a_length_of_zero_or_above_the_limit_ends_the_stream() {
        for bad in [0u16, MAX_RELAY_PACKET as u16 + 1, u16::MAX] {
            let mut reader = PacketReader::new();
            let mut bytes = BytesMut::new();
            write_packet(&mut bytes, b"fine");
            bytes.put_u16(bad);
            bytes.put_slice(&[7; 10]);
            reader.push(&bytes);
            assert_eq!(reader.next_packet(), Ok(Some(Bytes::from_static(b"fine"))));
            assert_eq!(reader.next_packet(), Err(BadPacketLength(usize::from(bad))));
        }
    }

    #[test]
    fn a_quota_counts_sessions_per_device_and_in_all() {
        let counters = Arc::new(RelayCounters::default());
        let config = RelayConfig {
            max_sessions: 3,
            max_sessions_per_device: 2,
            ..RelayConfig::default()
        };
        let a = DeviceId::from_bytes([1; 20]);
        let c = DeviceId::from_bytes([3; 20]);
        let a1 = counters.admit(a, &config).expect("first");
        let a2 = counters.admit(a, &config).expect("second");
        assert!(
            counters.admit(a, &config).is_none(),
            "a third for one device"
        );
        let c1 = counters.admit(c, &config).expect("another device");
        assert!(counters.admit(c, &config).is_none(), "four in all");
        drop(a1);
        assert!(counters.admit(c, &config).is_some(), "a slot given back");
        assert_eq!(counters.snapshot().sessions, 4);
        drop((a2, c1));
    }
}
