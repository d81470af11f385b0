//! The QUIC endpoint: [`Transport`] and authenticated [`Connection`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nomade_wire::{ErrorCode, Limits, RecentIds, StreamHeader, StreamRole};
use quinn_proto::TransportErrorCode;
use tokio::sync::{broadcast, mpsc};

use crate::bulk::{BulkRuntime, OnBulk};
use crate::counters::{InputCounters, Rejected, RejectedInput};
use crate::error::{close_code, Result, TransportError};
#[cfg(feature = "faults")]
use crate::faulty::{FaultPlan, FaultySocket, Partition};
use crate::identity::{DeviceId, DeviceIdentity};
use crate::pairing::{
    key_hash, proof, proofs_equal, PairingCode, PairingSlot, PairingWindow, ProofRole, PAIRING_TTL,
    PROOF_LEN,
};
use crate::paths::{self, KnownPaths, PathMemory, TokenIssuer};
use crate::ratelimit::{RateLimiter, RateLimits};
use crate::relay::{self, RelayConfig, RelayCounters, RelayStats, RelayedEndpoint};
use crate::stream::{FramedRecv, FramedSend, IncomingStream, Limit, RecvChecks};
use crate::tls::{self, PairedSet, PeerClientVerifier, PeerServerVerifier, ServerAcceptance};

/// Longest [`Transport::close`] waits for peers to acknowledge the close.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Settings of a [`Transport`]. The defaults suit a device on a LAN or the internet.
#[derive(Debug, Clone)]
pub struct Config {
    /// QUIC idle timeout: a silent peer is dropped after this (default 30 s).
    pub idle_timeout: Duration,
    /// QUIC keep-alive period (default 5 s, well under the idle timeout).
    pub keep_alive: Duration,
    /// Concurrent streams a peer may open, per direction kind (default 64).
    pub max_concurrent_streams: u32,
    /// Flow-control window of one stream (default 2 MiB: 32 artifact chunks,
    /// enough that a receiver busy for a few milliseconds does not stall the
    /// sender on a fast link; quinn holds received data in its datagram
    /// buffers, so a busy stream can pin several times this in memory).
    pub stream_receive_window: u32,
    /// Flow-control window of a connection, and the most data sent and not
    /// yet acknowledged (default 8 MiB).
    pub receive_window: u32,
    /// Connection attempts being handshaken at once (default 64).
    pub max_incoming: usize,
    /// Size asked for the UDP socket's kernel send and receive buffers
    /// (default 4 MiB; the kernel caps it, on Linux at `net.core.rmem_max`
    /// and `wmem_max`). `None` keeps the system default, which on Linux
    /// (about 200 KiB) drops datagrams whenever the process is not scheduled
    /// for a few milliseconds during a fast transfer.
    pub udp_buffer: Option<usize>,
    /// Time allowed for a QUIC + TLS handshake (and a pairing exchange).
    pub handshake_timeout: Duration,
    /// Time allowed for the 2-byte header of a new stream.
    pub header_deadline: Duration,
    /// Time allowed to complete one message once its first byte arrived.
    pub message_deadline: Duration,
    /// Decoder limits on incoming frames.
    pub limits: Limits,
    /// Application rate limits.
    pub rate_limits: RateLimits,
    /// What an earlier run learned about the paths to peers (path MTUs,
    /// address-validation tokens): see [`crate::paths`]. Empty by default;
    /// a node persists [`Transport::known_paths`] and hands it back here.
    pub known_paths: KnownPaths,
    /// The queueing delay the congestion controller aims at
    /// ([`crate::congestion`]): live messages wait about this long at most
    /// behind bulk data in the queues along the path (default 5 ms).
    /// `None`: quinn's Cubic alone, which fills queues until a loss.
    pub queue_target: Option<Duration>,
    /// What this device does as a relay for its paired devices
    /// ([`crate::relay`]).
    pub relay: RelayConfig,
    /// Whether this device runs a bulk endpoint for artifact transfers, on
    /// a UDP port and threads of its own ([`crate::bulk`]; default on).
    pub bulk: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_concurrent_streams: 64,
            stream_receive_window: 2 * 1024 * 1024,
            receive_window: 8 * 1024 * 1024,
            max_incoming: 64,
            udp_buffer: Some(4 * 1024 * 1024),
            handshake_timeout: Duration::from_secs(10),
            header_deadline: Duration::from_secs(10),
            message_deadline: Duration::from_secs(10),
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            known_paths: KnownPaths::default(),
            queue_target: Some(Duration::from_millis(5)),
            relay: RelayConfig::default(),
            bulk: true,
        }
    }
}

/// The smallest MTU change for which path MTU discovery sends another
/// probe: half the distance between QUIC's minimum (1,200) and the search's
/// upper bound (1,452).
const MTU_SEARCH_STEP: u16 = 126;

impl Config {
    /// quinn's transport settings, starting at `initial_mtu` on a path whose
    /// MTU is remembered (which skips the probes up to it).
    fn quinn_transport(&self, initial_mtu: Option<u16>) -> Result<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            TransportError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "idle timeout out of range",
            ))
        })?;
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .max_concurrent_bidi_streams(self.max_concurrent_streams.into())
            .max_concurrent_uni_streams(self.max_concurrent_streams.into())
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.receive_window.into())
            .send_window(u64::from(self.receive_window));
        // Path MTU discovery in two probes (1,326 then 1,452 bytes) rather
        // than quinn's binary search to within 20 bytes (four or five
        // probes, each a full-size datagram, on every connection): a
        // reconnect sends about 5 KB less, and a bulk transfer loses at
        // most the last few percent of payload per packet on a path whose
        // MTU is just under 1,452.
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.minimum_change(MTU_SEARCH_STEP);
        t.mtu_discovery_config(Some(mtu));
        if let Some(initial) = initial_mtu {
            t.initial_mtu(initial.clamp(paths::MIN_MTU, paths::MAX_MTU));
        }
        if let Some(target) = self.queue_target {
            t.congestion_controller_factory(Arc::new(crate::congestion::LowDelayConfig::new(
                target,
            )));
        }
        Ok(t)
    }
}

/// A UDP socket bound to `addr`, its kernel buffers sized to `buffer` bytes
/// when given (best effort: the kernel may give less).
fn udp_socket(addr: SocketAddr, buffer: Option<usize>) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Some(size) = buffer {
        if let Err(e) = socket
            .set_recv_buffer_size(size)
            .and_then(|()| socket.set_send_buffer_size(size))
        {
            tracing::debug!(error = %e, size, "could not size the UDP socket buffers");
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Something that happened on a [`Transport`] (also logged through `tracing`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportEvent {
    /// An authenticated connection was established.
    Connected {
        /// The peer.
        peer: DeviceId,
        /// Whether we dialed.
        outgoing: bool,
    },
    /// An incoming handshake failed (unpaired, unknown or malformed
    /// certificate, timeout...).
    HandshakeRejected {
        /// Where it came from.
        remote: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A device was paired with a code; the node should persist it.
    Paired {
        /// The new peer.
        peer: DeviceId,
        /// Its address on the pairing connection: the one dialed (joiner's
        /// side), or the one it dialed from (responder's side; a device
        /// dials from the socket it listens on, so this is where it can be
        /// reached back when it serves).
        addr: SocketAddr,
    },
    /// A pairing attempt failed; nothing was pinned.
    PairingFailed {
        /// The device that tried.
        peer: DeviceId,
        /// Why.
        reason: String,
    },
    /// A device was unpaired and its connections closed.
    Unpaired {
        /// The former peer.
        peer: DeviceId,
        /// How many live connections were closed.
        closed: usize,
    },
}

struct Inner {
    endpoint: quinn::Endpoint,
    identity: DeviceIdentity,
    paired: PairedSet,
    pairing: PairingSlot,
    config: Config,
    transport: Arc<quinn::TransportConfig>,
    /// The server configuration, for incoming connections that start at a
    /// remembered MTU (`Incoming::accept_with`).
    server: quinn::ServerConfig,
    paths: Arc<PathMemory>,
    /// Retries sent (address validations).
    retries: std::sync::atomic::AtomicU64,
    /// Live connections per peer, each with its kind.
    live: Mutex<HashMap<DeviceId, Vec<(quinn::Connection, Path)>>>,
    /// The bulk endpoint, when [`Config::bulk`].
    bulk: Option<Bulk>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Connection>>,
    /// Where relayed connections offered to this device are handed to
    /// [`Transport::accept`] (weak: the accept loop's sender ends it).
    accepted_tx: mpsc::WeakSender<Connection>,
    relay_counters: Arc<RelayCounters>,
    relay_limiter: Option<RateLimiter>,
    events: broadcast::Sender<TransportEvent>,
    artifact_send: Option<RateLimiter>,
    artifact_recv: Option<RateLimiter>,
    rejected: Arc<InputCounters>,
}

/// What a live connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Direct, on the main endpoint.
    Direct,
    /// Through a relay.
    Relayed,
    /// Direct, on the bulk endpoints (artifact streams only).
    Bulk,
}

/// The bulk endpoint and the runtime that drives it ([`crate::bulk`]).
struct Bulk {
    endpoint: quinn::Endpoint,
    // Last: the endpoint's tasks run on it.
    runtime: BulkRuntime,
}

impl Inner {
    fn emit(&self, e: TransportEvent) {
        let _ = self.events.send(e);
    }

    fn register(&self, peer: DeviceId, conn: &quinn::Connection, path: Path) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let list = live.entry(peer).or_default();
        list.retain(|(c, _)| c.close_reason().is_none());
        list.push((conn.clone(), path));
        if path != Path::Direct {
            return;
        }
        // The MTU the path reached, remembered when the connection ends.
        let paths = self.paths.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.closed().await;
            learn_mtu(&paths, &conn);
        });
    }

    /// Closes `conn` (`AUTHENTICATION_FAILED`) unless `peer`, whom it
    /// authenticated, is paired: TLS admitted it, but it may have been
    /// unpaired since.
    fn require_paired(&self, conn: &quinn::Connection, peer: DeviceId) -> Result<()> {
        if self.paired.contains(&peer) {
            return Ok(());
        }
        conn.close(close_code::AUTHENTICATION_FAILED.into(), b"not paired");
        Err(TransportError::PeerNotAccepted {
            reason: format!("{peer} is not paired"),
        })
    }

    /// The server configuration for a connection from `remote`: the
    /// default one, or one starting at the MTU remembered for it.
    fn server_config_for(&self, remote: SocketAddr) -> Result<Option<Arc<quinn::ServerConfig>>> {
        let Some(mtu) = self.paths.mtu(remote.ip()) else {
            return Ok(None);
        };
        let mut server = self.server.clone();
        server.transport_config(Arc::new(self.config.quinn_transport(Some(mtu))?));
        Ok(Some(Arc::new(server)))
    }

    fn wrap(
        self: &Arc<Self>,
        peer: DeviceId,
        conn: quinn::Connection,
        newly_paired: bool,
        relayed_via: Option<DeviceId>,
    ) -> Connection {
        let path = if relayed_via.is_some() {
            Path::Relayed
        } else {
            Path::Direct
        };
        self.register(peer, &conn, path);
        Connection::new(self, peer, conn, newly_paired, relayed_via, None)
    }

    /// A bulk connection to `peer`, on the bulk runtime `on`.
    fn wrap_bulk(
        self: &Arc<Self>,
        peer: DeviceId,
        conn: quinn::Connection,
        on: tokio::runtime::Handle,
    ) -> Connection {
        self.register(peer, &conn, Path::Bulk);
        Connection::new(self, peer, conn, false, None, Some(on))
    }

    /// The transport settings of a relayed connection.
    fn relayed_transport(&self) -> Result<Arc<quinn::TransportConfig>> {
        Ok(relay::relayed_transport(self.config.quinn_transport(None)?))
    }
}

impl relay::RelayHost for Inner {
    fn device_id(&self) -> DeviceId {
        self.identity.device_id()
    }

    fn is_paired(&self, id: &DeviceId) -> bool {
        self.paired.contains(id)
    }

    fn direct_connection(&self, id: &DeviceId) -> Option<quinn::Connection> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(id)?
            .iter()
            .rev()
            .find(|(c, path)| *path == Path::Direct && c.close_reason().is_none())
            .map(|(c, _)| c.clone())
    }

    fn relay_config(&self) -> &RelayConfig {
        &self.config.relay
    }

    fn relay_counters(&self) -> &Arc<RelayCounters> {
        &self.relay_counters
    }

    fn relay_limiter(&self) -> Option<&RateLimiter> {
        self.relay_limiter.as_ref()
    }

    fn relay_deadline(&self) -> Duration {
        self.config.handshake_timeout
    }

    fn accept_relayed(
        self: Arc<Self>,
        relay: DeviceId,
        source: DeviceId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        slot: relay::SessionSlot,
    ) {
        tokio::spawn(async move {
            if let Err(e) = accept_relayed(&self, relay, source, send, recv, slot).await {
                tracing::warn!(%relay, peer = %source, error = %e, "relayed connection refused");
                self.rejected.count(Rejected::Handshake);
                self.emit(TransportEvent::HandshakeRejected {
                    remote: RelayedEndpoint::peer_address(),
                    reason: e.to_string(),
                });
            }
        });
    }
}

/// The acceptor's side of a relayed connection: a QUIC server endpoint
/// over the relay stream, for the one connection `source` opens, which
/// must authenticate as `source`.
async fn accept_relayed(
    inner: &Arc<Inner>,
    relay: DeviceId,
    source: DeviceId,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    slot: relay::SessionSlot,
) -> Result<()> {
    let mut server = inner.server.clone();
    server.transport_config(inner.relayed_transport()?);
    let mut link = RelayedEndpoint::start(
        Some(server),
        send,
        recv,
        inner.relay_counters.clone(),
        Some(slot),
    )?;
    let endpoint = link.endpoint.clone();
    let handshake = tokio::time::timeout(inner.config.handshake_timeout, async move {
        let incoming = endpoint
            .accept()
            .await
            .ok_or(TransportError::EndpointClosed)?;
        // The relay vouched for the address: no Retry.
        let conn = incoming.accept()?.await.map_err(classify)?;
        Ok::<_, TransportError>(conn)
    });
    let conn =
        link.unless_ended(handshake)
            .await?
            .map_err(|_| TransportError::ConnectTimeout {
                addr: RelayedEndpoint::peer_address(),
            })??;
    let peer = peer_id(&conn)?;
    expect_peer(&conn, peer, source)?;
    inner.require_paired(&conn, peer)?;
    link.hold(conn.clone());
    tracing::info!(%peer, %relay, "accepted a relayed connection");
    inner.emit(TransportEvent::Connected {
        peer,
        outgoing: false,
    });
    let wrapped = inner.wrap(peer, conn, false, Some(relay));
    match inner.accepted_tx.upgrade() {
        Some(tx) => {
            if tx.send(wrapped).await.is_err() {
                tracing::debug!("transport dropped: relayed connection discarded");
            }
        }
        None => tracing::debug!("transport closing: relayed connection discarded"),
    }
    Ok(())
}

/// A QUIC endpoint of a device: listens, dials, and authenticates every
/// connection against the paired set. Cloning shares the endpoint.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    /// The accept loops of the main endpoint and of the bulk one.
    _accept_tasks: Arc<Vec<AbortOnDrop>>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("device", &self.inner.identity.device_id())
            .field("addr", &self.inner.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds a UDP socket at `addr` and starts accepting connections from the
    /// devices in `paired` (shared: changes apply to new handshakes at once).
    /// Must be called inside a tokio runtime.
    pub fn bind(
        identity: DeviceIdentity,
        paired: PairedSet,
        addr: SocketAddr,
        config: Config,
    ) -> Result<Transport> {
        Self::bind_with(identity, paired, addr, config, |server, socket, runtime| {
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server),
                socket,
                runtime,
            )
        })
    }

    /// Like [`Transport::bind`], over a [`FaultySocket`] that injects the
    /// faults of `plan` and drops everything while `partition` is set. For
    /// tests of behaviour under a bad network (the `faults` feature).
    #[cfg(feature = "faults")]
    pub fn bind_faulty(
        identity: DeviceIdentity,
        paired: PairedSet,
        addr: SocketAddr,
        config: Config,
        plan: FaultPlan,
        partition: Partition,
    ) -> Result<Transport> {
        // The main and bulk sockets share the plan's links.
        Self::bind_with(identity, paired, addr, config, |server, socket, runtime| {
            let socket = runtime.wrap_udp_socket(socket)?;
            let socket = Arc::new(FaultySocket::new(socket, plan.clone(), partition.clone()));
            quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                Some(server),
                socket,
                runtime,
            )
        })
    }

    /// The shared part of the binds: `make_endpoint` makes a quinn endpoint
    /// serving the given server configuration over a socket, driven by a
    /// runtime; once for the main endpoint at `addr`, once for the bulk
    /// endpoint (same address, a port of its own) when [`Config::bulk`].
    fn bind_with(
        identity: DeviceIdentity,
        paired: PairedSet,
        addr: SocketAddr,
        config: Config,
        make_endpoint: impl Fn(
            quinn::ServerConfig,
            std::net::UdpSocket,
            Arc<dyn quinn::Runtime>,
        ) -> std::io::Result<quinn::Endpoint>,
    ) -> Result<Transport> {
        let pairing = PairingSlot::default();
        let transport = Arc::new(config.quinn_transport(None)?);
        let paths = Arc::new(PathMemory::new(config.known_paths.clone()));
        let verifier = Arc::new(PeerClientVerifier::new(paired.clone(), pairing.clone()));
        let server_tls = tls::server_config(&identity, verifier)?;
        let server_quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        // Address validation: an unvalidated address gets a Retry (see the
        // accept loop); once validated it gets one token for its next
        // connection. The token key is derived from the device key, so
        // tokens survive a restart of this device.
        let mut validation = quinn::ValidationTokenConfig::default();
        validation.sent(1);
        server
            .transport_config(transport.clone())
            .max_incoming(config.max_incoming)
            .validation_token_config(validation)
            .token_key(Arc::new(token_key(&identity)));
        let endpoint = make_endpoint(
            server.clone(),
            udp_socket(addr, config.udp_buffer)?,
            Arc::new(quinn::TokioRuntime),
        )?;
        let bulk = if config.bulk {
            let runtime = BulkRuntime::start()?;
            // What the endpoint spawns, it spawns on the bulk runtime.
            let entered = runtime.handle().enter();
            let bulk_endpoint = make_endpoint(
                server.clone(),
                udp_socket(SocketAddr::new(addr.ip(), 0), config.udp_buffer)?,
                Arc::new(OnBulk(runtime.handle().clone())),
            )?;
            drop(entered);
            Some(Bulk {
                endpoint: bulk_endpoint,
                runtime,
            })
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(config.max_incoming.max(1));
        let (events, _) = broadcast::channel(256);
        let limits = config.rate_limits;
        let relay_limiter = config.relay.bytes_per_sec.map(RateLimiter::per_second);
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            identity,
            paired,
            pairing,
            config,
            transport,
            server,
            paths,
            retries: Default::default(),
            live: Mutex::new(HashMap::new()),
            bulk,
            accepted: tokio::sync::Mutex::new(rx),
            accepted_tx: tx.downgrade(),
            relay_counters: Arc::default(),
            relay_limiter,
            events,
            artifact_send: limits.artifact_bytes_per_sec.map(RateLimiter::per_second),
            artifact_recv: limits.artifact_bytes_per_sec.map(RateLimiter::per_second),
            rejected: Arc::default(),
        });
        let accept_tasks = std::iter::once((endpoint, Path::Direct))
            .chain(
                inner
                    .bulk
                    .as_ref()
                    .map(|b| (b.endpoint.clone(), Path::Bulk)),
            )
            .map(|(endpoint, path)| {
                let accepting = accept_loop(Arc::downgrade(&inner), endpoint, tx.clone(), path);
                AbortOnDrop(tokio::spawn(accepting))
            })
            .collect();
        tracing::info!(
            device = %inner.identity.device_id(),
            addr = ?inner.endpoint.local_addr().ok(),
            bulk = ?inner.bulk.as_ref().and_then(|b| b.endpoint.local_addr().ok()),
            "transport bound"
        );
        Ok(Transport {
            inner,
            _accept_tasks: Arc::new(accept_tasks),
        })
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.inner.identity.device_id()
    }

    /// This device's certificate (DER), as peers see it.
    pub fn identity_cert(&self) -> &rustls_pki_types::CertificateDer<'static> {
        self.inner.identity.cert_der()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.inner.endpoint.local_addr()?)
    }

    /// The shared paired set.
    pub fn paired(&self) -> &PairedSet {
        &self.inner.paired
    }

    /// Pairs out of band: trusts `id` from now on (ids compared by the user).
    pub fn pair(&self, id: DeviceId) {
        if self.inner.paired.insert(id) {
            tracing::info!(peer = %id, "paired out of band");
        }
    }

    /// Unpairs `id` and closes its live connections (`AUTHENTICATION_FAILED`).
    /// Returns how many connections were closed.
    pub fn unpair(&self, id: &DeviceId) -> usize {
        self.inner.paired.remove(id);
        let conns = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .unwrap_or_default();
        let mut closed = 0;
        for (c, _) in conns {
            if c.close_reason().is_none() {
                c.close(close_code::AUTHENTICATION_FAILED.into(), b"unpaired");
                closed += 1;
            }
        }
        tracing::info!(peer = %id, closed, "unpaired");
        self.inner
            .emit(TransportEvent::Unpaired { peer: *id, closed });
        closed
    }

    /// How much bad input this transport has turned away so far: refused
    /// handshakes, bad stream headers, undecodable frames, late messages and
    /// repeated message ids. Each was also logged when it happened.
    pub fn rejected_input(&self) -> RejectedInput {
        self.inner.rejected.snapshot()
    }

    /// How many Retries this transport has sent to validate a client's
    /// address. Each costs the client a round trip; a client holding an
    /// address-validation token from this device skips it.
    pub fn retries_sent(&self) -> u64 {
        self.inner
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Subscribes to connection, pairing and rejection events.
    pub fn events(&self) -> broadcast::Receiver<TransportEvent> {
        self.inner.events.subscribe()
    }

    /// Opens a pairing window with a fresh code, valid for [`PAIRING_TTL`].
    pub fn start_pairing(&self) -> PairingCode {
        self.start_pairing_for(PAIRING_TTL)
    }

    /// Opens a pairing window with a fresh code, valid for `ttl`.
    pub fn start_pairing_for(&self, ttl: Duration) -> PairingCode {
        let code = PairingCode::generate(&mut rand::thread_rng());
        self.inner
            .pairing
            .open(PairingWindow::open(code.clone(), Instant::now(), ttl));
        tracing::info!(?ttl, "pairing window opened");
        code
    }

    /// Closes any pairing window.
    pub fn stop_pairing(&self) {
        self.inner.pairing.close();
    }

    /// The next authenticated incoming connection (paired, or just paired by code).
    pub async fn accept(&self) -> Result<Connection> {
        self.inner
            .accepted
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::EndpointClosed)
    }

    /// The client configuration for dialing `server`: the MTU remembered
    /// for its address, and the tokens of the device expected there.
    fn client_config(
        &self,
        mode: ServerAcceptance,
        server: SocketAddr,
    ) -> Result<quinn::ClientConfig> {
        let expected = match mode {
            ServerAcceptance::Paired { expected } => expected,
            ServerAcceptance::Pairing => None,
        };
        let verifier = Arc::new(PeerServerVerifier::new(self.inner.paired.clone(), mode));
        let tls = tls::client_config(&self.inner.identity, verifier)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        match self.inner.paths.mtu(server.ip()) {
            Some(mtu) => {
                cfg.transport_config(Arc::new(self.inner.config.quinn_transport(Some(mtu))?))
            }
            None => cfg.transport_config(self.inner.transport.clone()),
        };
        cfg.token_store(
            self.inner
                .paths
                .token_store(TokenIssuer::of(server, expected)),
        );
        Ok(cfg)
    }

    async fn handshake(
        &self,
        addr: SocketAddr,
        mode: ServerAcceptance,
    ) -> Result<(quinn::Connection, DeviceId)> {
        self.handshake_on(&self.inner.endpoint, addr, mode).await
    }

    async fn handshake_on(
        &self,
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        mode: ServerAcceptance,
    ) -> Result<(quinn::Connection, DeviceId)> {
        let connecting =
            endpoint.connect_with(self.client_config(mode, addr)?, addr, tls::SERVER_NAME)?;
        complete_dial(connecting, self.inner.config.handshake_timeout, addr).await
    }

    /// Dials `addr`. The server must be a paired device, and `expected` if given.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<DeviceId>,
    ) -> Result<Connection> {
        let (conn, peer) = self
            .handshake(addr, ServerAcceptance::Paired { expected })
            .await
            // Debug only: the caller decides what a failed dial is worth
            // telling (a node redialing a device that is off says it once).
            .inspect_err(|e| tracing::debug!(%addr, error = %e, "connect failed"))?;
        if let Some(expected) = expected {
            expect_peer(&conn, peer, expected)?;
        }
        self.inner.require_paired(&conn, peer)?;
        tracing::info!(%peer, %addr, "connected");
        self.inner.emit(TransportEvent::Connected {
            peer,
            outgoing: true,
        });
        Ok(self.inner.wrap(peer, conn, false, None))
    }

    /// The UDP port of this device's bulk endpoint ([`crate::bulk`]), when
    /// it runs one.
    pub fn bulk_port(&self) -> Option<u16> {
        let bulk = self.inner.bulk.as_ref()?;
        bulk.endpoint.local_addr().ok().map(|a| a.port())
    }

    /// Dials the bulk endpoint of the paired device `expected` at `addr`,
    /// from this device's own: a connection for artifact streams only
    /// ([`Connection::is_bulk`]), driven on the bulk runtime. Errors as
    /// [`Transport::connect`]; [`TransportError::EndpointClosed`] when this
    /// device runs no bulk endpoint.
    pub async fn connect_bulk(&self, addr: SocketAddr, expected: DeviceId) -> Result<Connection> {
        let bulk = self
            .inner
            .bulk
            .as_ref()
            .ok_or(TransportError::EndpointClosed)?;
        let (conn, peer) = self
            .handshake_on(
                &bulk.endpoint,
                addr,
                ServerAcceptance::Paired {
                    expected: Some(expected),
                },
            )
            .await?;
        expect_peer(&conn, peer, expected)?;
        self.inner.require_paired(&conn, peer)?;
        tracing::debug!(%peer, %addr, "bulk connection open");
        Ok(self
            .inner
            .wrap_bulk(peer, conn, bulk.runtime.handle().clone()))
    }

    /// Connects to the paired device `target` through `via`, a live direct
    /// connection to a paired device that relays ([`crate::relay`]). The
    /// connection to `target` is mutually authenticated end to end, as a
    /// direct one; the relay sees only ciphertext.
    pub async fn connect_relayed(&self, via: &Connection, target: DeviceId) -> Result<Connection> {
        if via.relayed_via().is_some() {
            return Err(TransportError::InvalidRelay(
                "a relayed connection does not relay",
            ));
        }
        if target == self.device_id() {
            return Err(TransportError::InvalidRelay(
                "a relay to this device itself",
            ));
        }
        if target == via.peer() {
            return Err(TransportError::InvalidRelay(
                "a relay through the target itself",
            ));
        }
        if !self.inner.paired.contains(&target) {
            return Err(TransportError::PeerNotAccepted {
                reason: format!("{target} is not paired"),
            });
        }
        let deadline = self.inner.config.handshake_timeout;
        let request = nomade_wire::RelayRequest {
            target: target.to_string(),
        };
        let (send, recv) = relay::open_relay_stream(via.quinn(), via.peer(), request, deadline)
            .await
            .inspect_err(
                |e| tracing::debug!(relay = %via.peer(), %target, error = %e, "relay not opened"),
            )?;
        let mut link =
            RelayedEndpoint::start(None, send, recv, self.inner.relay_counters.clone(), None)?;
        let verifier = Arc::new(PeerServerVerifier::new(
            self.inner.paired.clone(),
            ServerAcceptance::Paired {
                expected: Some(target),
            },
        ));
        let tls = tls::client_config(&self.inner.identity, verifier)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(self.inner.relayed_transport()?);
        let addr = RelayedEndpoint::peer_address();
        let connecting = link.endpoint.connect_with(client, addr, tls::SERVER_NAME)?;
        let (conn, peer) = link
            .unless_ended(complete_dial(connecting, deadline, addr))
            .await??;
        expect_peer(&conn, peer, target)?;
        link.hold(conn.clone());
        tracing::info!(%peer, relay = %via.peer(), "connected through a relay");
        self.inner.emit(TransportEvent::Connected {
            peer,
            outgoing: true,
        });
        Ok(self.inner.wrap(peer, conn, false, Some(via.peer())))
    }

    /// What this device did as a relay so far, and the relay streams it
    /// ended for bad input.
    pub fn relay_stats(&self) -> RelayStats {
        self.inner.relay_counters.snapshot()
    }

    /// Joins the device at `addr` that shows `code`: proves the code, checks
    /// the device's proof, and pins it. The returned connection is ready for use.
    pub async fn pair_with(&self, addr: SocketAddr, code: &PairingCode) -> Result<Connection> {
        let refused = |e: TransportError| match e {
            TransportError::PairingRefused(_) => e,
            other => TransportError::PairingRefused(other.to_string()),
        };
        let (conn, peer) = self
            .handshake(addr, ServerAcceptance::Pairing)
            .await
            .map_err(refused)?;
        let result = tokio::time::timeout(self.inner.config.handshake_timeout, async {
            let server_cert = peer_cert(&conn)?;
            let r = key_hash(&server_cert)?;
            let j = key_hash(self.inner.identity.cert_der())?;
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut hello = Vec::with_capacity(StreamHeader::LEN + PROOF_LEN);
            hello.extend_from_slice(&StreamHeader::new(StreamRole::Control).to_bytes());
            hello.extend_from_slice(&proof(ProofRole::Joiner, code, &r, &j));
            send.write_all(&hello).await?;
            send.finish()?;
            let mut answer = [0u8; PROOF_LEN];
            recv.read_exact(&mut answer).await.map_err(|e| match e {
                quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => classify(c),
                other => other.into(),
            })?;
            if !proofs_equal(&answer, &proof(ProofRole::Responder, code, &r, &j)) {
                conn.close(close_code::PAIRING_REFUSED.into(), b"responder proof mismatch");
                return Err(TransportError::PairingRefused(
                    "the device's proof does not match the code (wrong device or device in the middle)".into(),
                ));
            }
            Ok(())
        })
        .await
        .map_err(|_| TransportError::PairingRefused("pairing exchange timed out".into()))
        .and_then(|r| r);
        if let Err(e) = result {
            conn.close(close_code::PAIRING_REFUSED.into(), b"pairing failed");
            tracing::warn!(%peer, error = %e, "pairing failed");
            self.inner.emit(TransportEvent::PairingFailed {
                peer,
                reason: e.to_string(),
            });
            return Err(refused(e));
        }
        self.inner.paired.insert(peer);
        tracing::info!(%peer, "paired by code");
        self.inner.emit(TransportEvent::Paired { peer, addr });
        Ok(self.inner.wrap(peer, conn, true, None))
    }

    /// What this transport has learned about the paths to its peers, to
    /// hand to the next run's [`Config::known_paths`]. Includes the MTUs
    /// of the connections still open.
    pub fn known_paths(&self) -> KnownPaths {
        let live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        for (conn, _) in live.values().flatten().filter(|(_, p)| *p == Path::Direct) {
            learn_mtu(&self.inner.paths, conn);
        }
        drop(live);
        self.inner.paths.known()
    }

    /// Closes every connection and stops the endpoint. Waits at most
    /// [`CLOSE_GRACE`] for peers to acknowledge the close (a peer behind a
    /// lossy link may never answer; it times out on its side).
    pub async fn close(&self) {
        let bulk = self.inner.bulk.as_ref().map(|b| &b.endpoint);
        let endpoints: Vec<&quinn::Endpoint> =
            std::iter::once(&self.inner.endpoint).chain(bulk).collect();
        for endpoint in &endpoints {
            endpoint.close(close_code::NORMAL.into(), b"shutting down");
        }
        let idle = async {
            for endpoint in &endpoints {
                endpoint.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, idle).await;
    }
}

/// Maps a quinn connection error to what a caller can act on.
fn classify(e: quinn::ConnectionError) -> TransportError {
    // rustls' ApplicationVerificationFailure becomes the access_denied alert (49).
    let access_denied = TransportErrorCode::crypto(49);
    let bad_cert = TransportErrorCode::crypto(42);
    match &e {
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == access_denied || c.error_code == bad_cert =>
        {
            TransportError::NotPaired
        }
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == close_code::AUTHENTICATION_FAILED.into() =>
        {
            TransportError::NotPaired
        }
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == close_code::PAIRING_REFUSED.into() =>
        {
            TransportError::PairingRefused(String::from_utf8_lossy(&c.reason).into_owned())
        }
        quinn::ConnectionError::TransportError(t) if is_crypto(t.code) => {
            TransportError::PeerNotAccepted {
                reason: t.reason.clone(),
            }
        }
        _ => TransportError::Connection(e),
    }
}

fn is_crypto(code: TransportErrorCode) -> bool {
    let raw = u64::from(code);
    (0x100..0x200).contains(&raw)
}

/// A dial's handshake to its end within `deadline`: the connection and
/// the device it authenticated.
async fn complete_dial(
    connecting: quinn::Connecting,
    deadline: Duration,
    addr: SocketAddr,
) -> Result<(quinn::Connection, DeviceId)> {
    let conn = tokio::time::timeout(deadline, async {
        let conn = connecting.await.map_err(classify)?;
        // The client's handshake completes before the server has checked
        // our certificate: wait for HANDSHAKE_DONE (or the refusal).
        wait_confirmed(&conn).await?;
        Ok::<_, TransportError>(conn)
    })
    .await
    .map_err(|_| TransportError::ConnectTimeout { addr })??;
    let peer = peer_id(&conn)?;
    Ok((conn, peer))
}

async fn wait_confirmed(conn: &quinn::Connection) -> Result<()> {
    loop {
        if let Some(e) = conn.close_reason() {
            return Err(classify(e));
        }
        if conn.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        tokio::select! {
            e = conn.closed() => return Err(classify(e)),
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
}

/// Remembers the MTU `conn`'s path reached.
fn learn_mtu(paths: &PathMemory, conn: &quinn::Connection) {
    paths.learn_mtu(conn.remote_address().ip(), conn.stats().path.current_mtu);
}

/// The key sealing this device's address-validation tokens: derived from
/// the device key, so that it is stable across restarts and differs between
/// devices.
fn token_key(identity: &DeviceIdentity) -> ring::hkdf::Prk {
    let secret = identity.derive_secret("nomade 2026-12 quic address validation token key");
    ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&secret)
}

fn peer_cert(conn: &quinn::Connection) -> Result<rustls_pki_types::CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.into_iter().next())
        .ok_or_else(|| TransportError::BadCertificate("peer presented no certificate".into()))
}

/// Closes `conn` and fails unless its authenticated `peer` is `expected`.
fn expect_peer(conn: &quinn::Connection, peer: DeviceId, expected: DeviceId) -> Result<()> {
    if peer == expected {
        return Ok(());
    }
    conn.close(
        close_code::AUTHENTICATION_FAILED.into(),
        b"unexpected device",
    );
    Err(TransportError::UnexpectedPeer {
        expected,
        actual: peer,
    })
}

fn peer_id(conn: &quinn::Connection) -> Result<DeviceId> {
    DeviceId::from_cert_der(&peer_cert(conn)?)
}

/// Accepts the connections of `endpoint`, the main one or the bulk one
/// (`path`).
async fn accept_loop(
    inner: std::sync::Weak<Inner>,
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<Connection>,
    path: Path,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(inner) = inner.upgrade() else { return };
        if !incoming.remote_address_validated() {
            let remote = incoming.remote_address();
            inner
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = incoming.retry() {
                tracing::debug!(%remote, "address validation failed: refusing");
                inner.rejected.count(Rejected::Handshake);
                e.into_incoming().refuse();
            }
            continue;
        }
        tokio::spawn(handle_incoming(inner, incoming, tx.clone(), path));
    }
}

async fn handle_incoming(
    inner: Arc<Inner>,
    incoming: quinn::Incoming,
    tx: mpsc::Sender<Connection>,
    path: Path,
) {
    let remote = incoming.remote_address();
    let reject = |reason: String| {
        tracing::warn!(%remote, %reason, "incoming connection rejected");
        inner.rejected.count(Rejected::Handshake);
        inner.emit(TransportEvent::HandshakeRejected { remote, reason });
    };
    let accepted = match inner.server_config_for(remote) {
        Ok(Some(config)) => incoming.accept_with(config),
        Ok(None) => incoming.accept(),
        Err(e) => return reject(e.to_string()),
    };
    let connecting = match accepted {
        Ok(c) => c,
        Err(e) => return reject(e.to_string()),
    };
    let conn = match tokio::time::timeout(inner.config.handshake_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return reject(e.to_string()),
        Err(_) => return reject("handshake timed out".into()),
    };
    let peer = match peer_id(&conn) {
        Ok(p) => p,
        Err(e) => {
            conn.close(close_code::AUTHENTICATION_FAILED.into(), b"bad certificate");
            return reject(e.to_string());
        }
    };
    let newly_paired = if inner.paired.contains(&peer) {
        false
    } else if path == Path::Direct && inner.pairing.is_claimed_by(&peer) {
        match tokio::time::timeout(
            inner.config.handshake_timeout,
            respond_pairing(&inner, &conn, peer),
        )
        .await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                conn.close(close_code::PAIRING_REFUSED.into(), e.to_string().as_bytes());
                tracing::warn!(%peer, error = %e, "pairing failed");
                inner.emit(TransportEvent::PairingFailed {
                    peer,
                    reason: e.to_string(),
                });
                return;
            }
            Err(_) => {
                inner.pairing.close();
                conn.close(close_code::PAIRING_REFUSED.into(), b"pairing timed out");
                inner.emit(TransportEvent::PairingFailed {
                    peer,
                    reason: "timed out".into(),
                });
                return;
            }
        }
    } else {
        conn.close(close_code::AUTHENTICATION_FAILED.into(), b"not paired");
        return reject(format!("{peer} is not paired"));
    };
    let wrapped = match (path, inner.bulk.as_ref()) {
        (Path::Bulk, Some(bulk)) => {
            tracing::debug!(%peer, %remote, "accepted a bulk connection");
            inner.wrap_bulk(peer, conn, bulk.runtime.handle().clone())
        }
        _ => {
            tracing::info!(%peer, %remote, newly_paired, "accepted connection");
            inner.emit(TransportEvent::Connected {
                peer,
                outgoing: false,
            });
            inner.wrap(peer, conn, newly_paired, None)
        }
    };
    if tx.send(wrapped).await.is_err() {
        tracing::debug!("transport dropped: connection discarded");
    }
}

async fn respond_pairing(inner: &Inner, conn: &quinn::Connection, peer: DeviceId) -> Result<()> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut msg = [0u8; StreamHeader::LEN + PROOF_LEN];
    recv.read_exact(&mut msg).await?;
    let header = StreamHeader::parse([msg[0], msg[1]])?;
    if header.role != StreamRole::Control {
        return Err(TransportError::PairingRefused(
            "pairing must use a control stream".into(),
        ));
    }
    let mut joiner_proof = [0u8; PROOF_LEN];
    joiner_proof.copy_from_slice(&msg[StreamHeader::LEN..]);
    let r = key_hash(inner.identity.cert_der())?;
    let j = key_hash(&peer_cert(conn)?)?;
    let answer = inner
        .pairing
        .verify(peer, &joiner_proof, &r, &j, Instant::now())
        .map_err(|f| TransportError::PairingRefused(f.to_string()))?;
    // Pin before answering, so a joiner that got our proof can connect at once.
    inner.paired.insert(peer);
    send.write_all(&answer).await?;
    send.finish()?;
    tracing::info!(%peer, "paired by code");
    inner.emit(TransportEvent::Paired {
        peer,
        addr: conn.remote_address(),
    });
    Ok(())
}

struct ConnShared {
    conn: quinn::Connection,
    incoming: tokio::sync::Mutex<mpsc::Receiver<IncomingStream>>,
}

impl Drop for ConnShared {
    fn drop(&mut self) {
        // The registry and the stream-accept tasks hold quinn handles: close
        // explicitly when the last user handle goes.
        self.conn.close(close_code::NORMAL.into(), b"closed");
    }
}

#[derive(Clone, Debug)]
struct StreamSettings {
    limits: Limits,
    message_deadline: Duration,
    header_deadline: Duration,
    sync_ops: Option<u32>,
    artifact_send: Option<RateLimiter>,
    artifact_recv: Option<RateLimiter>,
    /// The transport's counters of rejected input.
    rejected: Arc<InputCounters>,
    /// The ids of the messages last received on this connection (all its
    /// streams), to drop repeats.
    recent_ids: Arc<Mutex<RecentIds>>,
    /// The transport, for relay streams (weak: a connection's tasks do not
    /// keep it alive).
    host: std::sync::Weak<Inner>,
    /// The peer.
    peer: DeviceId,
    /// Whether this connection is relayed (it then carries no relay stream).
    relayed: bool,
    /// Whether this is a bulk connection (it then carries artifact streams
    /// only).
    bulk: bool,
}

impl StreamSettings {
    fn send_limit(&self, role: StreamRole) -> Option<Limit> {
        match role {
            StreamRole::Sync => self
                .sync_ops
                .map(|r| Limit::Ops(RateLimiter::per_second(u64::from(r)))),
            StreamRole::Artifact => self.artifact_send.clone().map(Limit::Bytes),
            _ => None,
        }
    }

    fn recv_checks(&self, role: StreamRole) -> RecvChecks {
        RecvChecks {
            limits: self.limits,
            deadline: self.message_deadline,
            limit: self.recv_limit(role),
            rejected: self.rejected.clone(),
            recent_ids: self.recent_ids.clone(),
        }
    }

    fn recv_limit(&self, role: StreamRole) -> Option<Limit> {
        match role {
            StreamRole::Sync => self
                .sync_ops
                .map(|r| Limit::Ops(RateLimiter::per_second(u64::from(r)))),
            StreamRole::Artifact => self.artifact_recv.clone().map(Limit::Bytes),
            _ => None,
        }
    }
}

/// An authenticated connection to a paired device. Cloning shares it; it
/// closes when the last clone is dropped or [`Connection::close`] is called.
#[derive(Clone)]
pub struct Connection {
    peer: DeviceId,
    newly_paired: bool,
    relayed_via: Option<DeviceId>,
    /// The bulk runtime, for a bulk connection.
    bulk: Option<tokio::runtime::Handle>,
    conn: quinn::Connection,
    settings: StreamSettings,
    shared: Arc<ConnShared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(
        inner: &Arc<Inner>,
        peer: DeviceId,
        conn: quinn::Connection,
        newly_paired: bool,
        relayed_via: Option<DeviceId>,
        bulk: Option<tokio::runtime::Handle>,
    ) -> Self {
        let settings = StreamSettings {
            limits: inner.config.limits,
            message_deadline: inner.config.message_deadline,
            header_deadline: inner.config.header_deadline,
            sync_ops: inner.config.rate_limits.sync_ops_per_sec,
            artifact_send: inner.artifact_send.clone(),
            artifact_recv: inner.artifact_recv.clone(),
            rejected: inner.rejected.clone(),
            recent_ids: Arc::default(),
            host: Arc::downgrade(inner),
            peer,
            relayed: relayed_via.is_some(),
            bulk: bulk.is_some(),
        };
        let (tx, rx) = mpsc::channel(inner.config.max_concurrent_streams.max(1) as usize);
        let streams = accept_streams(conn.clone(), settings.clone(), tx);
        let shared = Arc::new(ConnShared {
            conn: conn.clone(),
            incoming: tokio::sync::Mutex::new(rx),
        });
        let connection = Connection {
            peer,
            newly_paired,
            relayed_via,
            bulk,
            conn,
            settings,
            shared,
        };
        // Where its packets are handled.
        drop(connection.spawn(streams));
        connection
    }

    /// The authenticated peer.
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// Whether this connection just paired the peer with a code.
    pub fn newly_paired(&self) -> bool {
        self.newly_paired
    }

    /// The peer's address (for a relayed connection, a placeholder that
    /// is not the peer's: see [`Connection::relayed_via`]).
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The device relaying this connection, `None` for a direct one.
    pub fn relayed_via(&self) -> Option<DeviceId> {
        self.relayed_via
    }

    /// Whether this is a bulk connection ([`Transport::connect_bulk`], or
    /// accepted on this device's bulk endpoint): it carries artifact
    /// streams only, and its packets are handled on the bulk runtime.
    pub fn is_bulk(&self) -> bool {
        self.bulk.is_some()
    }

    /// Runs `task` where this connection's packets are handled: on the
    /// bulk runtime for a bulk connection (so that a transfer's framing
    /// and checksums also yield to live work), on the caller's runtime
    /// otherwise. Must be called inside a tokio runtime.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.bulk {
            Some(on) => on.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// The underlying quinn connection (benchmarks, diagnostics).
    pub fn quinn(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Why the connection closed, if it did.
    pub fn close_reason(&self) -> Option<TransportError> {
        self.conn.close_reason().map(classify)
    }

    /// Waits until the connection closes and says why.
    pub async fn closed(&self) -> TransportError {
        classify(self.conn.closed().await)
    }

    /// Closes the connection with an application code (see [`close_code`]).
    pub fn close(&self, code: u32, reason: &str) {
        self.conn.close(code.into(), reason.as_bytes());
    }

    /// Opens a stream of `role`: writes the stream header and sets the role's
    /// priority. The receive half is there for bidirectional roles only.
    pub async fn open(&self, role: StreamRole) -> Result<(FramedSend, Option<FramedRecv>)> {
        if self.is_bulk() && role != StreamRole::Artifact {
            return Err(TransportError::NotOnBulk(role));
        }
        if role.is_bidirectional() {
            let (send, recv) = self.conn.open_bi().await.map_err(classify)?;
            let mut send = FramedSend::new(role, send, self.settings.send_limit(role));
            send.start().await?;
            let recv = FramedRecv::new(
                role,
                recv,
                Some(send.shared()),
                self.settings.recv_checks(role),
            );
            Ok((send, Some(recv)))
        } else {
            let send = self.conn.open_uni().await.map_err(classify)?;
            let mut send = FramedSend::new(role, send, self.settings.send_limit(role));
            send.start().await?;
            Ok((send, None))
        }
    }

    /// Opens a bidirectional stream of `role` (control, sync or artifact).
    pub async fn open_bi(&self, role: StreamRole) -> Result<(FramedSend, FramedRecv)> {
        match self.open(role).await? {
            (send, Some(recv)) => Ok((send, recv)),
            (_, None) => Err(TransportError::WrongDirection { role }),
        }
    }

    /// Opens a unidirectional stream of `role` (presence or push).
    pub async fn open_uni(&self, role: StreamRole) -> Result<FramedSend> {
        if role.is_bidirectional() {
            return Err(TransportError::WrongDirection { role });
        }
        Ok(self.open(role).await?.0)
    }

    /// The next stream the peer opened, its header read and checked. Streams
    /// with a bad or late header are reset and never show up here.
    pub async fn accept_stream(&self) -> Result<IncomingStream> {
        let next = self.shared.incoming.lock().await.recv().await;
        match next {
            Some(s) => Ok(s),
            None => Err(self
                .conn
                .close_reason()
                .map(classify)
                .unwrap_or(TransportError::EndpointClosed)),
        }
    }
}

async fn accept_streams(
    conn: quinn::Connection,
    settings: StreamSettings,
    tx: mpsc::Sender<IncomingStream>,
) {
    let uni = {
        let conn = conn.clone();
        let settings = settings.clone();
        let tx = tx.clone();
        async move {
            while let Ok(recv) = conn.accept_uni().await {
                tokio::spawn(read_header(None, recv, settings.clone(), tx.clone()));
            }
        }
    };
    let bi = async {
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(read_header(Some(send), recv, settings.clone(), tx.clone()));
        }
    };
    tokio::join!(uni, bi);
}

async fn read_header(
    send: Option<quinn::SendStream>,
    mut recv: quinn::RecvStream,
    settings: StreamSettings,
    tx: mpsc::Sender<IncomingStream>,
) {
    let mut b = [0u8; StreamHeader::LEN];
    let header = match tokio::time::timeout(settings.header_deadline, recv.read_exact(&mut b)).await
    {
        Ok(Ok(())) => StreamHeader::parse(b).map_err(TransportError::from),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(TransportError::Deadline(settings.header_deadline)),
    };
    let header = match header {
        Ok(h) if h.role.is_bidirectional() == send.is_some() => h,
        other => {
            tracing::warn!(result = ?other.as_ref().map(|h| h.role), "bad stream header: stream refused");
            settings.rejected.count(Rejected::StreamHeader);
            refuse_stream(send, recv, other).await;
            return;
        }
    };
    let role = header.role;
    if settings.bulk && role != StreamRole::Artifact {
        tracing::warn!(
            ?role,
            "a stream other than an artifact stream on a bulk connection: refused"
        );
        settings.rejected.count(Rejected::StreamHeader);
        refuse_stream(send, recv, Err(TransportError::NotOnBulk(role))).await;
        return;
    }
    if role == StreamRole::Relay {
        // Served by the transport itself: the node never sees relay streams.
        match (send, settings.host.upgrade()) {
            (Some(send), Some(host)) => {
                relay::serve_stream(host, settings.peer, settings.relayed, send, recv).await
            }
            _ => tracing::debug!("relay stream after the transport closed: dropped"),
        }
        return;
    }
    let send = send.map(|s| {
        let mut f = FramedSend::new(role, s, settings.send_limit(role));
        f.set_priority_now();
        f
    });
    let recv = FramedRecv::new(
        role,
        recv,
        send.as_ref().map(|s| s.shared()),
        settings.recv_checks(role),
    );
    let _ = tx.send(IncomingStream { role, send, recv }).await;
}

/// Refuses a stream whose header was bad (`header`: what reading it gave).
/// A bidirectional stream gets an `ERROR` and FIN on its reply half (no
/// RESET_STREAM, which may discard the ERROR); the receive half gets
/// STOP_SENDING with the same code.
async fn refuse_stream(
    send: Option<quinn::SendStream>,
    mut recv: quinn::RecvStream,
    header: Result<StreamHeader>,
) {
    let (code, why) = match &header {
        Ok(h) => (
            ErrorCode::INVALID_MESSAGE,
            format!("a {:?} stream in the wrong direction", h.role),
        ),
        Err(TransportError::Decode(e)) => (e.error_code(), e.to_string()),
        Err(e) => (ErrorCode::INVALID_MESSAGE, e.to_string()),
    };
    let _ = recv.stop(quinn::VarInt::from_u32(u32::from(code.0)));
    let Some(mut send) = send else { return };
    if let Ok(frame) = crate::stream::error_envelope(code, &why, None).to_bytes() {
        let write = tokio::time::timeout(Duration::from_secs(2), send.write_all(&frame));
        if !matches!(write.await, Ok(Ok(()))) {
            tracing::debug!("could not deliver ERROR for a bad stream header");
        }
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::udp_socket;

    fn buffers(s: &std::net::UdpSocket) -> (usize, usize) {
        let s = socket2::SockRef::from(s);
        (
            s.recv_buffer_size().expect("rcvbuf"),
            s.send_buffer_size().expect("sndbuf"),
        )
    }

    #[test]
    fn udp_buffers_grow_when_asked_and_keep_the_system_default_otherwise() {
        let addr = "127.0.0.1:0".parse().expect("addr");
        let (recv, send) = buffers(&udp_socket(addr, None).expect("bind"));
        let asked = 4 * recv.max(send);
        let (big_recv, big_send) = buffers(&udp_socket(addr, Some(asked)).expect("bind"));
        // The kernel may cap the size (net.core.rmem_max), never below the default.
        assert!(big_recv > recv, "{big_recv} <= {recv}");
        assert!(big_send > send, "{big_send} <= {send}");
    }
}
