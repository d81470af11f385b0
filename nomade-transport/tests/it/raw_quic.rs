//! A QUIC v1 client written by hand, just far enough to put what quinn's own
//! client never sends in front of a server: chosen transport parameters, and
//! frames on streams beyond the server's limits.
//!
//! The parts are real: the TLS 1.3 handshake is rustls (with a device
//! certificate), packets are protected as RFC 9001 section 5 says, the
//! server's Retry is answered, and the server's Initial, Handshake and 1-RTT
//! packets are decrypted to read what it answers. What is left out: ACKs,
//! retransmission, flow control, key updates. Fine on loopback for the few
//! packets a test exchanges.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nomade_transport::tls::{client_config, PeerServerVerifier, ServerAcceptance};
use nomade_transport::{DeviceIdentity, PairedSet};
use rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
use rustls::quic::{ClientConnection, HeaderProtectionKey, KeyChange, Keys, Version};
use rustls::Side;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::local;

/// Transport parameter ids used here (RFC 9000 section 18.2).
pub mod param {
    pub const ORIGINAL_DESTINATION_CONNECTION_ID: u64 = 0x00;
    pub const MAX_IDLE_TIMEOUT: u64 = 0x01;
    pub const MAX_UDP_PAYLOAD_SIZE: u64 = 0x03;
    pub const INITIAL_MAX_DATA: u64 = 0x04;
    pub const ACK_DELAY_EXPONENT: u64 = 0x0a;
    pub const INITIAL_SOURCE_CONNECTION_ID: u64 = 0x0f;
}

/// Transport error codes (RFC 9000 section 20.1).
pub mod code {
    pub const STREAM_LIMIT_ERROR: u64 = 0x04;
    pub const STREAM_STATE_ERROR: u64 = 0x05;
    pub const TRANSPORT_PARAMETER_ERROR: u64 = 0x08;
}

const INITIAL: u8 = 0;
const HANDSHAKE: u8 = 2;
const RETRY: u8 = 3;
const CRYPTO_FRAME: u64 = 0x06;
const CONNECTION_CLOSE_FRAME: u64 = 0x1c;
const PACKET_NUMBER_LEN: usize = 4;
const TAG_LEN: usize = 16;
const SAMPLE_LEN: usize = 16;
const CID_LEN: usize = 8;

/// Appends `v` as a QUIC variable-length integer.
pub fn varint(v: u64, out: &mut Vec<u8>) {
    match v {
        0..=0x3f => out.push(v as u8),
        0x40..=0x3fff => out.extend((v as u16 | 0x4000).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend((v as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend((v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Reads a variable-length integer at `*pos`, moving past it.
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(*pos..*pos + len)?;
    let value = bytes[1..]
        .iter()
        .fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
    *pos += len;
    Some(value)
}

/// Appends one transport parameter: id, length, value.
pub fn parameter(id: u64, value: &[u8], out: &mut Vec<u8>) {
    varint(id, out);
    varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// Well-formed client transport parameters: the source connection id, a
/// 30 s idle timeout, and enough flow-control credit for a small exchange.
pub fn well_formed_parameters(source_cid: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    parameter(param::INITIAL_SOURCE_CONNECTION_ID, source_cid, &mut p);
    parameter(param::MAX_IDLE_TIMEOUT, &[0x1e], &mut p);
    p
}

/// A STREAM frame (with its length, no offset, no FIN) carrying `data` on
/// `stream_id`.
pub fn stream_frame(stream_id: u64, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x0a];
    varint(stream_id, &mut f);
    varint(data.len() as u64, &mut f);
    f.extend_from_slice(data);
    f
}

/// What the server has said so far.
#[derive(Debug, Default)]
pub struct Answer {
    /// Bytes of TLS handshake received in CRYPTO frames, all spaces.
    pub crypto_bytes: usize,
    /// The error code of a transport CONNECTION_CLOSE, if one came.
    pub close_code: Option<u64>,
    /// Whether HANDSHAKE_DONE came: the server considers the handshake done.
    pub handshake_done: bool,
}

/// One packet number space's keys and received CRYPTO data.
#[derive(Default)]
struct Space {
    keys: Option<Keys>,
    /// CRYPTO data by offset, not yet given to TLS.
    crypto: BTreeMap<u64, Vec<u8>>,
    /// Offset up to which CRYPTO data went to TLS.
    delivered: u64,
    /// CRYPTO bytes sent at this level so far.
    sent: u64,
    next_packet_number: u64,
}

impl Space {
    /// The CRYPTO data now contiguous with what was delivered.
    fn take_contiguous(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(mut entry) = self.crypto.first_entry() {
            let offset = *entry.key();
            if offset > self.delivered {
                break;
            }
            let data = entry.get_mut();
            let skip = (self.delivered - offset) as usize;
            if skip < data.len() {
                out.extend_from_slice(&data[skip..]);
                self.delivered = offset + data.len() as u64;
            }
            entry.remove();
        }
        out
    }
}

/// A client connection attempt driven by hand.
pub struct HandBuiltClient {
    socket: UdpSocket,
    server: SocketAddr,
    source_cid: [u8; CID_LEN],
    /// The connection id the server chose for itself (its long headers'
    /// source id), where packets go once the server has answered.
    destination_cid: Vec<u8>,
    token: Vec<u8>,
    tls: ClientConnection,
    client_hello: Vec<u8>,
    initial: Space,
    handshake: Space,
    one_rtt: Space,
    /// Packets that arrived before the keys to open them.
    stashed: Vec<Vec<u8>>,
    /// What the server said.
    pub answer: Answer,
}

impl HandBuiltClient {
    /// A client with a fresh device identity whose ClientHello carries the
    /// transport parameters `with_source_cid` encodes for this client's
    /// source connection id.
    pub async fn new(server: SocketAddr, with_source_cid: impl FnOnce(&[u8]) -> Vec<u8>) -> Self {
        Self::with_identity(
            server,
            &DeviceIdentity::generate().expect("identity"),
            with_source_cid,
        )
        .await
    }

    /// The same with a given device identity (pair it with the server for a
    /// handshake that completes).
    pub async fn with_identity(
        server: SocketAddr,
        identity: &DeviceIdentity,
        with_source_cid: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Self {
        let source_cid: [u8; CID_LEN] = rand::random();
        let verifier = Arc::new(PeerServerVerifier::new(
            PairedSet::new(),
            ServerAcceptance::Pairing,
        ));
        let tls_config = client_config(identity, verifier).expect("tls config");
        let mut tls = ClientConnection::new(
            Arc::new(tls_config),
            Version::V1,
            "nomade".try_into().expect("server name"),
            with_source_cid(&source_cid),
        )
        .expect("tls client");
        let mut client_hello = Vec::new();
        let _ = tls.write_hs(&mut client_hello);
        assert!(!client_hello.is_empty(), "rustls wrote no ClientHello");
        let destination_cid = rand::random::<[u8; CID_LEN]>().to_vec();
        let initial = Space {
            keys: Some(initial_keys(&destination_cid)),
            ..Space::default()
        };
        HandBuiltClient {
            socket: UdpSocket::bind(local()).await.expect("bind"),
            server,
            source_cid,
            destination_cid,
            token: Vec::new(),
            tls,
            client_hello,
            initial,
            handshake: Space::default(),
            one_rtt: Space::default(),
            stashed: Vec::new(),
            answer: Answer::default(),
        }
    }

    /// Sends the ClientHello (again after the server's Retry, if it sends
    /// one) and reads the server's answer until it carries handshake data or
    /// a CONNECTION_CLOSE, or `wait` passes.
    pub async fn hello(&mut self, wait: Duration) -> &Answer {
        self.send_client_hello().await;
        let deadline = Instant::now() + wait;
        while self.answer.crypto_bytes == 0 && self.answer.close_code.is_none() {
            if !self.receive(deadline).await {
                break;
            }
        }
        &self.answer
    }

    /// Runs the whole handshake: true once this client has 1-RTT keys and
    /// has sent its Finished, false if the server closed or `wait` passed.
    pub async fn connect(&mut self, wait: Duration) -> bool {
        self.send_client_hello().await;
        let deadline = Instant::now() + wait;
        loop {
            if self.answer.close_code.is_some() {
                return false;
            }
            if self.one_rtt.keys.is_some() {
                return true;
            }
            if !self.receive(deadline).await {
                return false;
            }
        }
    }

    /// Sends `frames` in one 1-RTT packet (after [`Self::connect`]).
    pub async fn send_1rtt(&mut self, frames: &[u8]) {
        let packet = self.short_packet(frames);
        self.socket
            .send_to(&packet, self.server)
            .await
            .expect("send");
    }

    /// Reads what the server sends until it closes the connection or `wait`
    /// passes; returns its close code.
    pub async fn close_code(&mut self, wait: Duration) -> Option<u64> {
        let deadline = Instant::now() + wait;
        while self.answer.close_code.is_none() {
            if !self.receive(deadline).await {
                break;
            }
        }
        self.answer.close_code
    }

    async fn send_client_hello(&mut self) {
        let mut frames = crypto_frame(0, &self.client_hello);
        // Padding (zero bytes are PADDING frames) to a full-size datagram.
        let mut token_length = Vec::new();
        varint(self.token.len() as u64, &mut token_length);
        let header = 7
            + self.destination_cid.len()
            + CID_LEN
            + token_length.len()
            + self.token.len()
            + 2
            + PACKET_NUMBER_LEN;
        frames.resize(frames.len().max(1_200 - header - TAG_LEN), 0);
        let packet = self.long_packet(INITIAL, &frames);
        self.socket
            .send_to(&packet, self.server)
            .await
            .expect("send");
    }

    /// Receives one datagram (false once `deadline` passes), opens every
    /// packet it can, and moves the TLS handshake on.
    async fn receive(&mut self, deadline: Instant) -> bool {
        let mut buf = vec![0u8; 65_536];
        let Ok(Ok((n, _))) =
            tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await
        else {
            return false;
        };
        buf.truncate(n);
        if let Some((server_cid, token)) = retry(&buf) {
            // Start again towards the connection id the Retry names, with its
            // token and the Initial keys of that id.
            assert!(self.token.is_empty(), "a second Retry");
            self.initial.keys = Some(initial_keys(&server_cid));
            (self.destination_cid, self.token) = (server_cid, token);
            self.send_client_hello().await;
            return true;
        }
        let mut pending = split_datagram(&buf);
        pending.append(&mut self.stashed);
        loop {
            let unopened: Vec<_> = pending.into_iter().filter(|p| !self.open(p)).collect();
            let new_keys = self.advance_tls().await;
            if !new_keys || unopened.is_empty() {
                self.stashed = unopened;
                return true;
            }
            pending = unopened;
        }
    }

    /// Opens one packet and handles its frames; false if its keys are not
    /// known yet.
    fn open(&mut self, packet: &[u8]) -> bool {
        let (space, pn_offset) = match long_header(packet) {
            Some(header) => {
                let mut pos = header.rest;
                if header.kind == INITIAL {
                    let token_len = read_varint(packet, &mut pos).expect("token length");
                    pos += token_len as usize;
                }
                let _length = read_varint(packet, &mut pos).expect("length");
                if header.kind == INITIAL || header.kind == HANDSHAKE {
                    self.destination_cid = header.source_cid;
                }
                match header.kind {
                    INITIAL => (&mut self.initial, pos),
                    HANDSHAKE => (&mut self.handshake, pos),
                    other => panic!("unexpected long header packet type {other}"),
                }
            }
            None => (&mut self.one_rtt, 1 + CID_LEN),
        };
        let Some(keys) = &space.keys else {
            return false;
        };
        let frames = unprotect(&mut packet.to_vec(), pn_offset, keys);
        read_frames(&frames, space, &mut self.answer);
        true
    }

    /// Gives TLS the CRYPTO data that is ready and sends what it writes;
    /// true if new keys came.
    async fn advance_tls(&mut self) -> bool {
        for space in [0, 1] {
            let data = if space == 0 {
                self.initial.take_contiguous()
            } else {
                self.handshake.take_contiguous()
            };
            if !data.is_empty() {
                self.tls
                    .read_hs(&data)
                    .expect("the server's handshake reads");
            }
        }
        let mut new_keys = false;
        loop {
            let mut out = Vec::new();
            let change = self.tls.write_hs(&mut out);
            if !out.is_empty() {
                // What TLS writes before a key change belongs to the level
                // in use until then: for a client, the Handshake level (its
                // certificate, CertificateVerify and Finished).
                let frame = crypto_frame(self.handshake.sent, &out);
                self.handshake.sent += out.len() as u64;
                let packet = self.long_packet(HANDSHAKE, &frame);
                self.socket
                    .send_to(&packet, self.server)
                    .await
                    .expect("send");
            }
            match change {
                Some(KeyChange::Handshake { keys }) => self.handshake.keys = Some(keys),
                Some(KeyChange::OneRtt { keys, .. }) => self.one_rtt.keys = Some(keys),
                None => break,
            }
            new_keys = true;
        }
        new_keys
    }

    /// A protected long header packet of `kind` carrying `frames`.
    fn long_packet(&mut self, kind: u8, frames: &[u8]) -> Vec<u8> {
        let space = if kind == INITIAL {
            &mut self.initial
        } else {
            &mut self.handshake
        };
        let mut header = vec![
            0xc0 | (kind << 4) | (PACKET_NUMBER_LEN as u8 - 1),
            0,
            0,
            0,
            1,
        ];
        header.push(self.destination_cid.len() as u8);
        header.extend_from_slice(&self.destination_cid);
        header.push(CID_LEN as u8);
        header.extend_from_slice(&self.source_cid);
        if kind == INITIAL {
            varint(self.token.len() as u64, &mut header);
            header.extend_from_slice(&self.token);
        }
        let length = (PACKET_NUMBER_LEN + frames.len() + TAG_LEN) as u64;
        header.extend((length as u16 | 0x4000).to_be_bytes());
        protect(space, header, frames)
    }

    /// A protected 1-RTT (short header) packet carrying `frames`.
    fn short_packet(&mut self, frames: &[u8]) -> Vec<u8> {
        let mut header = vec![0x40 | (PACKET_NUMBER_LEN as u8 - 1)];
        header.extend_from_slice(&self.destination_cid);
        // Short packets must leave a full sample after the packet number.
        let mut frames = frames.to_vec();
        frames.resize(frames.len().max(SAMPLE_LEN), 0);
        protect(&mut self.one_rtt, header, &frames)
    }
}

/// Appends the packet number to `header`, seals `frames` after it and applies
/// header protection.
fn protect(space: &mut Space, mut header: Vec<u8>, frames: &[u8]) -> Vec<u8> {
    let keys = space.keys.as_ref().expect("keys for this level");
    let packet_number = space.next_packet_number;
    space.next_packet_number += 1;
    let pn_offset = header.len();
    header.extend((packet_number as u32).to_be_bytes());
    let mut payload = frames.to_vec();
    let tag = keys
        .local
        .packet
        .encrypt_in_place(packet_number, &header, &mut payload)
        .expect("seal");
    let mut packet = header;
    packet.extend_from_slice(&payload);
    packet.extend_from_slice(tag.as_ref());
    mask_header(&mut packet, pn_offset, &*keys.local.header, Mask::Apply);
    packet
}

/// Whether [`mask_header`] applies header protection or removes it.
enum Mask {
    Apply,
    Remove,
}

/// Applies or removes the header protection of `packet`, whose packet
/// number starts at `pn_offset` (RFC 9001 section 5.4).
fn mask_header(packet: &mut [u8], pn_offset: usize, key: &dyn HeaderProtectionKey, mask: Mask) {
    let sample_at = pn_offset + 4;
    let sample = packet[sample_at..sample_at + SAMPLE_LEN].to_vec();
    let (first, rest) = packet.split_at_mut(1);
    let packet_number = &mut rest[pn_offset - 1..pn_offset - 1 + PACKET_NUMBER_LEN];
    let result = match mask {
        Mask::Apply => key.encrypt_in_place(&sample, &mut first[0], packet_number),
        Mask::Remove => key.decrypt_in_place(&sample, &mut first[0], packet_number),
    };
    result.expect("header protection");
}

/// Removes header protection and decrypts; returns the frames.
fn unprotect(packet: &mut [u8], pn_offset: usize, keys: &Keys) -> Vec<u8> {
    mask_header(packet, pn_offset, &*keys.remote.header, Mask::Remove);
    let pn_len = usize::from(packet[0] & 0x03) + 1;
    // The server's packet numbers stay small here: the truncated number is
    // the whole number.
    let packet_number = packet[pn_offset..pn_offset + pn_len]
        .iter()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b));
    let (header, payload) = packet.split_at_mut(pn_offset + pn_len);
    keys.remote
        .packet
        .decrypt_in_place(packet_number, header, payload)
        .expect("the server's packet decrypts")
        .to_vec()
}

/// A CRYPTO frame at `offset`.
fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    varint(CRYPTO_FRAME, &mut f);
    varint(offset, &mut f);
    varint(data.len() as u64, &mut f);
    f.extend_from_slice(data);
    f
}

/// The client's Initial keys for a destination connection id.
fn initial_keys(destination_cid: &[u8]) -> Keys {
    let suite = TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .expect("QUIC suite");
    suite.keys(destination_cid, Side::Client, Version::V1)
}

/// Long header fields up to the type-specific part.
struct LongHeader {
    kind: u8,
    source_cid: Vec<u8>,
    /// Offset just past the source connection id.
    rest: usize,
}

fn long_header(packet: &[u8]) -> Option<LongHeader> {
    let first = *packet.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let mut pos = 5;
    let dcid_len = usize::from(*packet.get(pos)?);
    pos += 1 + dcid_len;
    let scid_len = usize::from(*packet.get(pos)?);
    let source_cid = packet.get(pos + 1..pos + 1 + scid_len)?.to_vec();
    Some(LongHeader {
        kind: (first >> 4) & 0x03,
        source_cid,
        rest: pos + 1 + scid_len,
    })
}

/// A Retry packet's new connection id and token (its integrity tag is not
/// checked: this client only needs to be understood by the server).
fn retry(datagram: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let header = long_header(datagram)?;
    if header.kind != RETRY {
        return None;
    }
    let token = datagram.get(header.rest..datagram.len().checked_sub(TAG_LEN)?)?;
    Some((header.source_cid, token.to_vec()))
}

/// The packets coalesced in a datagram (a short header packet runs to its
/// end).
fn split_datagram(datagram: &[u8]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut start = 0;
    while start < datagram.len() {
        let rest = &datagram[start..];
        let Some(header) = long_header(rest) else {
            packets.push(rest.to_vec());
            break;
        };
        let mut pos = header.rest;
        if header.kind == INITIAL {
            let token_len = read_varint(rest, &mut pos).expect("token length");
            pos += token_len as usize;
        }
        let length = read_varint(rest, &mut pos).expect("length") as usize;
        let end = (pos + length).min(rest.len());
        packets.push(rest[..end].to_vec());
        start += end;
    }
    packets
}

/// Walks a packet's frames, keeping CRYPTO data in `space` and noting what
/// the server said. Frames this client does not need are skipped by their
/// layout (RFC 9000 section 19); an unknown one is a test failure.
fn read_frames(frames: &[u8], space: &mut Space, answer: &mut Answer) {
    let mut pos = 0;
    let mut field = |pos: &mut usize| read_varint(frames, pos).expect("frame field");
    while pos < frames.len() {
        let kind = field(&mut pos);
        match kind {
            0x00 | 0x01 => {}
            0x02 | 0x03 => {
                let (_largest, _delay) = (field(&mut pos), field(&mut pos));
                let ranges = field(&mut pos);
                let _first = field(&mut pos);
                for _ in 0..ranges * 2 {
                    field(&mut pos);
                }
                if kind == 0x03 {
                    for _ in 0..3 {
                        field(&mut pos);
                    }
                }
            }
            // RESET_STREAM: id, code, final size; STOP_SENDING: id, code.
            0x04 => skip_fields(&mut field, &mut pos, 3),
            0x05 => skip_fields(&mut field, &mut pos, 2),
            CRYPTO_FRAME => {
                let offset = field(&mut pos);
                let len = field(&mut pos) as usize;
                answer.crypto_bytes += len;
                space.crypto.insert(offset, frames[pos..pos + len].to_vec());
                pos += len;
            }
            // NEW_TOKEN
            0x07 => {
                let len = field(&mut pos) as usize;
                pos += len;
            }
            // MAX_DATA, MAX_STREAMS (both kinds), DATA_BLOCKED,
            // STREAMS_BLOCKED (both kinds), RETIRE_CONNECTION_ID
            0x10 | 0x12 | 0x13 | 0x14 | 0x16 | 0x17 | 0x19 => skip_fields(&mut field, &mut pos, 1),
            // MAX_STREAM_DATA, STREAM_DATA_BLOCKED
            0x11 | 0x15 => skip_fields(&mut field, &mut pos, 2),
            // NEW_CONNECTION_ID: sequence, retire prior to, id, reset token
            0x18 => {
                let (_seq, _retire) = (field(&mut pos), field(&mut pos));
                let len = usize::from(frames[pos]);
                pos += 1 + len + 16;
            }
            CONNECTION_CLOSE_FRAME => {
                answer.close_code = Some(field(&mut pos));
                return;
            }
            0x1e => answer.handshake_done = true,
            other => panic!("unexpected frame type {other:#x} from the server"),
        }
    }
}

fn skip_fields(field: &mut impl FnMut(&mut usize) -> u64, pos: &mut usize, n: usize) {
    for _ in 0..n {
        field(pos);
    }
}
