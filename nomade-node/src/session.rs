//! One session per connected peer: the HELLO / HELLO_ACK handshake, then
//! the streams of a session (this device's pull, the peer's pulls answered
//! as pusher, presence, artifacts), until the connection ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nomade_transport::dial::Backoff;
use nomade_transport::heartbeat::Liveness;
use nomade_transport::{Connection, DeviceId, FramedRecv, FramedSend, IncomingStream};
use nomade_wire::{
    Envelope, ErrorCode, ErrorMessage, Heartbeat, Message, PresenceUpdate, StreamRole,
};
use tokio::sync::watch;

use crate::core::now_ms;
use crate::error::NodeError;
use crate::handshake::{self, HandshakeError, LocalInfo, PeerInfo};
use crate::lock;
use crate::metrics::Metrics;
use crate::node::{peer_err, Node};
use crate::sync::{self, envelope, FrameSink, FrameSource, SyncSummary};

pub(crate) struct Session {
    pub(crate) conn: Connection,
    pub(crate) initial: watch::Receiver<Option<SyncSummary>>,
    pub(crate) liveness: Arc<Mutex<Liveness>>,
    pub(crate) presence: Arc<Mutex<(Option<PresenceUpdate>, Option<Heartbeat>)>>,
    /// When it started (ms since the Unix epoch).
    pub(crate) started_ms: i64,
    /// Whether this device dialed.
    pub(crate) dialed: bool,
    /// The peer's clock minus ours, from the timestamp of its HELLO or
    /// HELLO_ACK frame (ms; informational, as every timestamp).
    pub(crate) clock_offset_ms: i64,
    /// What the peer announced in its handshake (its capabilities:
    /// [`PeerInfo::has`]).
    pub(crate) info: PeerInfo,
}

struct Sink(FramedSend);
struct Source(FramedRecv);

/// A puller's source whose large snapshot waits for background work to be
/// allowed: the first piece of a snapshot of at least
/// [`NodeConfig::deferred_snapshot_bytes`](crate::NodeConfig) is held (and
/// the rest with it: QUIC flow control holds the peer) until the device's
/// state allows background work, shown in `status` meanwhile.
struct PullSource {
    recv: FramedRecv,
    node: Node,
    peer: String,
}

impl FrameSource for PullSource {
    async fn recv(&mut self) -> Result<Option<Envelope>, NodeError> {
        let env = self.recv.recv().await?;
        if let Some(Envelope {
            message: Message::SyncSnapshot(piece),
            ..
        }) = &env
        {
            if piece.offset == 0
                && piece.total_len >= self.node.inner.config.deferred_snapshot_bytes
            {
                let work = format!("snapshot from {}", self.peer);
                self.node.background_allowed(&work, 1).await;
                self.recv.restart_deadline();
            }
        }
        Ok(env)
    }
}

impl FrameSink for Sink {
    async fn send(&mut self, env: &Envelope) -> Result<(), NodeError> {
        Ok(self.0.send(env).await?)
    }

    async fn send_frame(&mut self, frame: bytes::Bytes) -> Result<(), NodeError> {
        Ok(self.0.send_frame(frame).await?)
    }
}

impl FrameSource for Source {
    async fn recv(&mut self) -> Result<Option<Envelope>, NodeError> {
        Ok(self.0.recv().await?)
    }
}

impl Node {
    pub(crate) async fn start_session(&self, conn: Connection) -> Result<(), NodeError> {
        let peer = conn.peer();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let node = self.clone();
        tokio::spawn(async move { node.run_session_notify(conn, true, Some(ready_tx)).await });
        match ready_rx.await {
            Ok(r) => r,
            Err(_) => Err(peer_err(&peer, "session ended during the handshake")),
        }
    }

    pub(crate) async fn run_session(&self, conn: Connection, dialer: bool) {
        self.run_session_notify(conn, dialer, None).await
    }

    pub(crate) async fn run_session_notify(
        &self,
        conn: Connection,
        dialer: bool,
        ready: Option<tokio::sync::oneshot::Sender<Result<(), NodeError>>>,
    ) {
        let peer = conn.peer();
        let result = self.session(conn.clone(), dialer, ready).await;
        match &result {
            Ok(()) => tracing::info!(%peer, "session ended"),
            // The connection closing (either side, or the network) is routine.
            Err(NodeError::Transport(e)) => tracing::info!(%peer, reason = %e, "session ended"),
            Err(e) => tracing::warn!(%peer, error = %e, "session ended with an error"),
        }
        conn.close(0, "session over");
        // A prefetch paused for this link is judged again on the next one.
        crate::lock(&self.inner.deferred).remove(&format!("artifact prefetch from {peer}"));
        // (Not for a peer unpaired meanwhile: its record is gone for good.)
        if self.inner.paired.contains(&peer) {
            if let Err(e) = self.update_peer(peer, |p| p.last_seen_ms = Some(now_ms())) {
                tracing::debug!(%peer, error = %e, "could not record when the peer was last seen");
            }
        }
        self.fold_traffic(&conn);
        let mut sessions = self.sessions();
        if sessions
            .get(&peer)
            .is_some_and(|s| s.conn.quinn().stable_id() == conn.quinn().stable_id())
        {
            sessions.remove(&peer);
        }
        let still = sessions.contains_key(&peer);
        drop(sessions);
        // The bulk connection goes with the last session to the peer.
        if !still {
            if let Some(bulk) = lock(&self.inner.bulk).remove(&peer) {
                bulk.close(0, "session over");
            }
        }
        self.inner.session_events.send_modify(|n| *n += 1);
    }

    /// Opens the bulk connection the peer offered in its `HELLO_ACK`
    /// (`port`, on the address of `conn`), for artifact streams both ways.
    /// If it cannot be opened, artifact streams stay on `conn`.
    fn open_bulk(&self, conn: &Connection, port: u16) {
        let (node, conn) = (self.clone(), conn.clone());
        tokio::spawn(async move {
            let Some(transport) = node.transport() else {
                return;
            };
            let addr = std::net::SocketAddr::new(conn.remote_address().ip(), port);
            match transport.connect_bulk(addr, conn.peer()).await {
                // (Unless the session ended meanwhile.)
                Ok(bulk) if conn.close_reason().is_none() => node.serve_bulk(bulk),
                Ok(bulk) => bulk.close(0, "session over"),
                Err(e) => {
                    tracing::info!(peer = %conn.peer(), %addr, error = %e, "no bulk connection: artifacts go on the session's own");
                }
            }
        });
    }

    /// Takes a bulk connection (dialed, or accepted): artifact streams to
    /// its peer go on it from now on ([`Node::artifact_conn`]), and those
    /// the peer opens on it are served, on its runtime, until it closes.
    pub(crate) fn serve_bulk(&self, bulk: Connection) {
        let peer = bulk.peer();
        if let Some(old) = lock(&self.inner.bulk).insert(peer, bulk.clone()) {
            old.close(0, "replaced by a newer connection");
        }
        tracing::debug!(%peer, "bulk connection up");
        let node = self.clone();
        tokio::spawn(async move {
            while let Ok(stream) = bulk.accept_stream().await {
                let IncomingStream { role, send, recv } = stream;
                let Some(tx) = send else { continue };
                let n = node.clone();
                // (The transport admits artifact streams only.)
                debug_assert_eq!(role, StreamRole::Artifact);
                drop(bulk.spawn(async move {
                    if let Err(e) = n.serve_artifact(peer, tx, recv).await {
                        tracing::debug!(%peer, error = %e, "artifact stream on the bulk connection ended");
                    }
                }));
            }
            let mut map = lock(&node.inner.bulk);
            if map
                .get(&peer)
                .is_some_and(|b| b.quinn().stable_id() == bulk.quinn().stable_id())
            {
                map.remove(&peer);
            }
            drop(map);
            node.fold_traffic(&bulk);
        });
    }

    /// Runs HELLO / HELLO_ACK. Returns what the peer announced and its clock
    /// minus ours, read off its frame's timestamp (ms).
    pub(crate) async fn handshake(
        &self,
        conn: &Connection,
        dialer: bool,
    ) -> Result<(PeerInfo, i64), NodeError> {
        let peer = conn.peer();
        let local = LocalInfo {
            device_id: self.inner.device_id.to_string(),
            device_name: self.device_name(),
            state_hash: self.state_hash(),
            // (Never over a relay: the peer could not reach it directly.)
            bulk_port: self
                .transport()
                .and_then(|t| t.bulk_port())
                .filter(|_| conn.relayed_via().is_none()),
        };
        let to_node_err = |e: HandshakeError| match e {
            HandshakeError::VersionMismatch { theirs, ours } => NodeError::VersionMismatch {
                peer: peer.to_string(),
                theirs,
                ours,
            },
            other => peer_err(&peer, other.to_string()),
        };
        if dialer {
            let (mut tx, mut rx) = conn.open_bi(StreamRole::Control).await?;
            tx.send(&envelope(handshake::hello(&local))).await?;
            let answer = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .map_err(|_| peer_err(&peer, "no HELLO_ACK"))??;
            let offset = answer
                .as_ref()
                .map_or(0, |e| e.timestamp.saturating_sub(now_ms()));
            match answer.map(|e| e.message) {
                Some(Message::HelloAck(ack)) => match handshake::check_hello_ack(&ack, &peer) {
                    Ok(info) => Ok((info, offset)),
                    Err(e) => {
                        // Nobody reads the control stream after HELLO_ACK:
                        // the dialer says why in the connection close.
                        let code = e.to_error_message().error_code;
                        conn.close(u32::from(code.0), &e.to_string());
                        Err(to_node_err(e))
                    }
                },
                Some(Message::Error(e)) => {
                    if e.error_code == ErrorCode::PROTOCOL_VERSION_MISMATCH {
                        return Err(NodeError::VersionMismatch {
                            peer: peer.to_string(),
                            theirs: 0,
                            ours: nomade_wire::PROTOCOL_VERSION,
                        });
                    }
                    if e.error_code == ErrorCode::AUTHENTICATION_FAILED {
                        return Err(NodeError::Refused {
                            peer: peer.to_string(),
                            reason: e.error_message,
                        });
                    }
                    Err(to_node_err(HandshakeError::Refused(e)))
                }
                other => Err(peer_err(
                    &peer,
                    format!(
                        "expected HELLO_ACK, got {:?}",
                        other.map(|m| m.message_type().name())
                    ),
                )),
            }
        } else {
            let first = tokio::time::timeout(Duration::from_secs(10), conn.accept_stream())
                .await
                .map_err(|_| peer_err(&peer, "no control stream"))??;
            let IncomingStream {
                role: StreamRole::Control,
                send: Some(mut tx),
                mut recv,
            } = first
            else {
                return Err(peer_err(
                    &peer,
                    "the first stream was not the control stream",
                ));
            };
            let hello = tokio::time::timeout(Duration::from_secs(10), recv.recv())
                .await
                .map_err(|_| peer_err(&peer, "no HELLO"))??;
            let (hello, message_id, offset) = match hello {
                Some(Envelope {
                    message: Message::Hello(hello),
                    message_id,
                    timestamp,
                }) => (hello, message_id, timestamp.saturating_sub(now_ms())),
                other => {
                    let related = other.as_ref().map(|e| e.message_id);
                    let error = ErrorMessage {
                        error_code: ErrorCode::INVALID_MESSAGE,
                        error_message: "the control stream starts with HELLO".into(),
                        related_message_id: related,
                    };
                    let _ = tx.send(&envelope(error)).await;
                    let _ = tx.finish().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(peer_err(&peer, "expected HELLO"));
                }
            };
            match handshake::answer_hello(&local, &hello, &peer) {
                Ok((ack, info)) => {
                    tx.send(&envelope(ack)).await?;
                    Ok((info, offset))
                }
                Err(e) => {
                    let mut msg = e.to_error_message();
                    msg.related_message_id = Some(message_id);
                    let _ = tx.send(&envelope(msg)).await;
                    let _ = tx.finish().await;
                    // Give the ERROR a moment to reach the peer before closing.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(to_node_err(e))
                }
            }
        }
    }

    pub(crate) async fn session(
        &self,
        conn: Connection,
        dialer: bool,
        ready: Option<tokio::sync::oneshot::Sender<Result<(), NodeError>>>,
    ) -> Result<(), NodeError> {
        let peer = conn.peer();
        let handshake = self.handshake(&conn, dialer).await.and_then(|answer| {
            // Unpaired or revoked while the handshake ran (TLS admitted it
            // before): no session, and nothing of it is recorded.
            if self.inner.paired.contains(&peer) {
                Ok(answer)
            } else {
                conn.close(
                    u32::from(nomade_wire::ErrorCode::AUTHENTICATION_FAILED.0),
                    "no longer paired",
                );
                Err(NodeError::Refused {
                    peer: peer.to_string(),
                    reason: "unpaired or revoked during the handshake".into(),
                })
            }
        });
        let (info, clock_offset_ms) = match handshake {
            Ok(answer) => answer,
            Err(e) => {
                // The dialer waiting on `ready` gets the error itself (its
                // kind decides whether to redial); the log gets its text.
                let logged = peer_err(&peer, e.to_string());
                return match ready {
                    Some(r) => {
                        let _ = r.send(Err(e));
                        Err(logged)
                    }
                    None => Err(e),
                };
            }
        };
        let name = info.device_name.clone();
        let relayed_via = conn.relayed_via().map(|r| r.to_string());
        tracing::info!(%peer, name, dialer, ?relayed_via, capabilities = ?info.capabilities, "session established");
        let (initial_tx, initial_rx) = watch::channel(None);
        // Offline once more than `missed_heartbeats` periods pass without a beat.
        let liveness = Arc::new(Mutex::new(Liveness::new(
            self.inner.config.heartbeat_period,
            self.inner.config.missed_heartbeats + 1,
            Instant::now(),
        )));
        let presence = Arc::new(Mutex::new((None, None)));
        {
            let mut sessions = self.sessions();
            if let Some(old) = sessions.insert(
                peer,
                Session {
                    conn: conn.clone(),
                    initial: initial_rx,
                    liveness: liveness.clone(),
                    presence: presence.clone(),
                    started_ms: now_ms(),
                    dialed: dialer,
                    clock_offset_ms,
                    info: info.clone(),
                },
            ) {
                if old.conn.quinn().stable_id() != conn.quinn().stable_id() {
                    old.conn.close(0, "replaced by a newer connection");
                }
            }
        }
        // What the session tells of the peer: its name, and, when it
        // dialed in, its address (a device dials from the socket it listens
        // on, so that is where to reach it back).
        let remote = conn.quinn().remote_address();
        if let Err(e) = self.update_peer(peer, |p| {
            if !name.is_empty() {
                p.name = Some(name.clone());
            }
            // (A relayed connection's address is a placeholder.)
            if !dialer && conn.relayed_via().is_none() {
                p.remember_address(&remote.to_string());
            }
            p.last_seen_ms = Some(now_ms());
        }) {
            tracing::warn!(%peer, error = %e, "could not update the peer's record");
        }
        self.inner.session_events.send_modify(|n| *n += 1);
        Metrics::add(&self.metrics().sessions_started, 1);
        if let Some(port) = info.bulk_port.filter(|_| conn.relayed_via().is_none()) {
            self.open_bulk(&conn, port);
        }
        self.inner.session_started.send_replace(());
        if let Some(r) = ready {
            let _ = r.send(Ok(()));
        }
        // The revocations this device holds, first thing: a device that
        // missed one learns it from whichever device it meets.
        if info.has(handshake::REVOCATION) {
            let records = self.inner.revocations.all();
            let c = conn.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::revocations::send_revocations(&c, records).await {
                    tracing::debug!(peer = %c.peer(), error = %e, "could not send the revocations");
                }
            });
        }

        // Pull: our own sync stream asks for what we lack. A pull that fails
        // for anything but the connection (a full causal buffer, a full disk,
        // an operation refused) asks again on a new stream after a backoff:
        // the new SYNC_REQUEST carries this device's version vector, so the
        // peer resends what is missing in an order that applies.
        // What the peer did not announce is not asked of it (PROTOCOL.md,
        // "Capabilities").
        let first = if info.has(handshake::CRDT_SYNC) {
            Some(conn.open_bi(StreamRole::Sync).await?)
        } else {
            None
        };
        let core = self.inner.core.clone();
        let p = peer.to_string();
        let node = self.clone();
        let mut summary_rx = initial_tx.subscribe();
        let (pull_conn, config) = (conn.clone(), self.inner.config.clone());
        let announce = info.has(handshake::SYNC_HAVE);
        let subscribes = info.has(handshake::SUBSCRIPTIONS);
        let pull_node = self.clone();
        let puller = tokio::spawn(async move {
            let Some(first) = first else { return };
            let mut stream = Some(first);
            let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
            loop {
                let (tx, rx) = match stream.take() {
                    Some(s) => s,
                    None => match pull_conn.open_bi(StreamRole::Sync).await {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                let (mut tx, mut rx) = (
                    Sink(tx),
                    PullSource {
                        recv: rx,
                        node: pull_node.clone(),
                        peer: p.clone(),
                    },
                );
                let started = Instant::now();
                let puller = if announce {
                    sync::Puller::announcing(p.clone())
                } else {
                    sync::Puller::new(p.clone())
                }
                .subscribing(subscribes);
                match sync::pull(core.clone(), puller, &mut tx, &mut rx, &initial_tx).await {
                    Ok(sync::PullEnd::Resync) => {
                        tracing::info!(peer = %p, "pulling again: the subscription changed, or a revoked device's history was closed later");
                        continue;
                    }
                    Ok(sync::PullEnd::Ended) | Err(NodeError::Transport(_)) => {
                        tracing::debug!(peer = %p, "pull ended");
                        break;
                    }
                    Err(e) => {
                        // A pull that ran for a while before failing asks
                        // again soon; repeated quick failures back off.
                        let delay = backoff.on_failure_of_attempt_started(
                            started,
                            Instant::now(),
                            &mut rand::thread_rng(),
                        );
                        tracing::warn!(peer = %p, error = %e, retry_in = ?delay, "sync from peer failed: asking again");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        // Once the initial sync is in, fetch the artifacts it references.
        let c2 = conn.clone();
        let fetches = info.has(handshake::ARTIFACT_TRANSFER);
        let describes = info.has(handshake::ARTIFACT_METADATA);
        // (Those that later edits reference: `Node::watch_new_references`.)
        let announces_key = info.has(handshake::SEALED_RELAY);
        let fetcher = tokio::spawn(async move {
            // This device's artifact key, for the peer to seal for it
            // (alongside: the fetches do not wait for the answer).
            let announce = async {
                if !announces_key {
                    return;
                }
                if let Err(e) = node.announce_artifact_key(&c2).await {
                    tracing::debug!(peer = %c2.peer(), error = %e, "artifact key not announced");
                }
            };
            let fetch = async {
                while fetches && summary_rx.changed().await.is_ok() {
                    if summary_rx.borrow().is_some() {
                        node.inner.session_events.send_modify(|n| *n += 1);
                        node.fetch_missing_artifacts(&c2, describes).await;
                        break;
                    }
                }
            };
            tokio::join!(announce, fetch);
        });
        // Heartbeats and presence out.
        let hb = self.clone();
        let c3 = conn.clone();
        let presence_on = info.has(handshake::PRESENCE);
        let heart = tokio::spawn(async move {
            if !presence_on {
                return;
            }
            if let Err(e) = hb.send_heartbeats(&c3).await {
                tracing::debug!(peer = %c3.peer(), error = %e, "heartbeats stopped");
            }
        });
        // Streams the peer opens; sync frames to it compressed if it takes
        // them.
        let compress = self.inner.config.compress && info.has(handshake::LZ4);
        let result = loop {
            let incoming = tokio::select! {
                s = conn.accept_stream() => s,
                _ = self.watch_liveness(&liveness), if presence_on => {
                    conn.close(0, "missed heartbeats");
                    break Err(peer_err(&peer, "missed heartbeats: peer offline"));
                }
            };
            let stream = match incoming {
                Ok(s) => s,
                Err(e) => break Err(e.into()),
            };
            let node = self.clone();
            let lh = liveness.clone();
            let pr = presence.clone();
            tokio::spawn(async move { node.serve_stream(peer, stream, lh, pr, compress).await });
        };
        puller.abort();
        fetcher.abort();
        heart.abort();
        result
    }

    pub(crate) async fn serve_stream(
        &self,
        peer: DeviceId,
        stream: IncomingStream,
        liveness: Arc<Mutex<Liveness>>,
        presence: Arc<Mutex<(Option<PresenceUpdate>, Option<Heartbeat>)>>,
        compress: bool,
    ) {
        let IncomingStream {
            role,
            send,
            mut recv,
        } = stream;
        let result: Result<(), NodeError> = match (role, send) {
            (StreamRole::Sync, Some(tx)) => {
                let (mut tx, mut rx) = (Sink(tx), Source(recv));
                let pusher = sync::Pusher::new(peer.to_string(), sync::MAX_UNACKED_FRAMES)
                    .compressing(compress);
                sync::push(self.inner.core.clone(), pusher, &mut tx, &mut rx).await
            }
            (StreamRole::Artifact, Some(tx)) => self.serve_artifact(peer, tx, recv).await,
            (StreamRole::Revocation, None) => self.read_revocations(peer, recv).await,
            (StreamRole::Presence, _) => loop {
                match recv.recv().await {
                    Ok(Some(env)) => {
                        lock(&liveness).beat(Instant::now());
                        let mut p = lock(&presence);
                        match env.message {
                            Message::Heartbeat(b) => p.1 = Some(b),
                            Message::PresenceUpdate(u) => {
                                tracing::info!(%peer, status = ?u.status, "presence");
                                p.0 = Some(u)
                            }
                            other => {
                                tracing::debug!(%peer, kind = other.message_type().name(), "ignored on the presence stream")
                            }
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            },
            (role, _) => {
                // The push role (0x04) is reserved: version 1 pushes live
                // operations on the sync stream (PROTOCOL.md, "Roles").
                recv.refuse(ErrorCode::INVALID_MESSAGE, "no such stream is served")
                    .await;
                Err(peer_err(&peer, format!("unexpected {role:?} stream")))
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, ?role, error = %e, "stream ended");
        }
    }
}
