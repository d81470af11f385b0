//! A QUIC v1 client written by hand, just far enough to put chosen transport
//! parameters in front of a server: a real TLS 1.3 ClientHello (rustls) in a
//! real, protected Initial packet (RFC 9000 section 17.2.2, RFC 9001 section
//! 5), the Retry a server sends to validate the address, and the decryption
//! of the server's Initial packets that answer. No quinn on this side, so the
//! parameters can be anything at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nomade_transport::tls::{client_config, PeerServerVerifier, ServerAcceptance};
use nomade_transport::{DeviceIdentity, PairedSet};
use rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
use rustls::quic::{ClientConnection, Keys, Version};
use rustls::Side;
use tokio::net::UdpSocket;

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

/// The transport error code for bad transport parameters.
pub const TRANSPORT_PARAMETER_ERROR: u64 = 0x08;

const INITIAL: u8 = 0;
const RETRY: u8 = 3;
const CRYPTO_FRAME: u8 = 0x06;
const CONNECTION_CLOSE_FRAME: u8 = 0x1c;
const PACKET_NUMBER_LEN: usize = 4;
const TAG_LEN: usize = 16;
const SAMPLE_LEN: usize = 16;

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

/// What the server's Initial packets said.
#[derive(Debug, Default)]
pub struct Answer {
    /// Bytes of TLS handshake (the ServerHello) in CRYPTO frames.
    pub crypto_bytes: usize,
    /// The error code of a transport CONNECTION_CLOSE, if one came.
    pub close_code: Option<u64>,
}

/// A client connection attempt: its connection ids and ClientHello.
pub struct HandBuiltClient {
    socket: UdpSocket,
    server: SocketAddr,
    source_cid: [u8; 8],
    client_hello: Vec<u8>,
}

impl HandBuiltClient {
    /// A client whose ClientHello carries `transport_parameters` as given.
    /// `with_source_cid` receives this client's source connection id and
    /// returns the encoded parameters (a valid set names it).
    pub async fn new(server: SocketAddr, with_source_cid: impl FnOnce(&[u8]) -> Vec<u8>) -> Self {
        let source_cid: [u8; 8] = rand::random();
        let identity = DeviceIdentity::generate().expect("identity");
        let verifier = Arc::new(PeerServerVerifier::new(
            PairedSet::new(),
            ServerAcceptance::Paired { expected: None },
        ));
        let tls_config = client_config(&identity, verifier).expect("tls config");
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
        HandBuiltClient {
            socket: UdpSocket::bind(local()).await.expect("bind"),
            server,
            source_cid,
            client_hello,
        }
    }

    /// Sends the ClientHello (answering the server's Retry, if it sends one)
    /// and reads the server's Initial packets until one carries handshake
    /// data or a CONNECTION_CLOSE, or `wait` passes.
    pub async fn handshake(&self, wait: Duration) -> Answer {
        let mut destination_cid: Vec<u8> = rand::random::<[u8; 8]>().to_vec();
        let mut token = Vec::new();
        let mut answer = Answer::default();
        let mut retried = false;
        'send: loop {
            let keys = initial_keys(&destination_cid);
            let packet = self.initial_packet(&keys, &destination_cid, &token);
            self.socket
                .send_to(&packet, self.server)
                .await
                .expect("send");
            let deadline = tokio::time::Instant::now() + wait;
            let mut buf = vec![0u8; 65_536];
            while let Ok(Ok((n, _))) =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await
            {
                let datagram = &mut buf[..n];
                if let Some((new_cid, new_token)) = retry(datagram) {
                    assert!(!retried, "a second Retry");
                    retried = true;
                    (destination_cid, token) = (new_cid, new_token);
                    continue 'send;
                }
                read_initials(datagram, &keys, &mut answer);
                if answer.close_code.is_some() || answer.crypto_bytes > 0 {
                    return answer;
                }
            }
            return answer;
        }
    }

    /// A client Initial packet: the ClientHello in a CRYPTO frame, padded to
    /// 1,200 bytes, protected with the keys of `destination_cid`.
    fn initial_packet(&self, keys: &Keys, destination_cid: &[u8], token: &[u8]) -> Vec<u8> {
        let mut header = vec![0xc0 | (PACKET_NUMBER_LEN as u8 - 1), 0, 0, 0, 1];
        header.push(destination_cid.len() as u8);
        header.extend_from_slice(destination_cid);
        header.push(self.source_cid.len() as u8);
        header.extend_from_slice(&self.source_cid);
        varint(token.len() as u64, &mut header);
        header.extend_from_slice(token);
        let mut payload = vec![CRYPTO_FRAME, 0];
        varint(self.client_hello.len() as u64, &mut payload);
        payload.extend_from_slice(&self.client_hello);
        // Padding (zero bytes are PADDING frames) to a full-size datagram.
        let fixed = header.len() + 2 + PACKET_NUMBER_LEN + TAG_LEN;
        payload.resize(payload.len().max(1_200usize.saturating_sub(fixed)), 0);
        let length = (PACKET_NUMBER_LEN + payload.len() + TAG_LEN) as u64;
        header.extend((length as u16 | 0x4000).to_be_bytes());
        let pn_offset = header.len();
        header.extend([0u8; PACKET_NUMBER_LEN]);
        let tag = keys
            .local
            .packet
            .encrypt_in_place(0, &header, &mut payload)
            .expect("seal");
        let mut packet = header;
        packet.extend_from_slice(&payload);
        packet.extend_from_slice(tag.as_ref());
        let sample_at = pn_offset + 4;
        let sample = packet[sample_at..sample_at + SAMPLE_LEN].to_vec();
        let (first, rest) = packet.split_at_mut(1);
        keys.local
            .header
            .encrypt_in_place(
                &sample,
                &mut first[0],
                &mut rest[pn_offset - 1..pn_offset - 1 + PACKET_NUMBER_LEN],
            )
            .expect("header protection");
        packet
    }
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

/// Decrypts each Initial packet coalesced in `datagram` and notes its
/// CRYPTO data and any CONNECTION_CLOSE.
fn read_initials(datagram: &mut [u8], keys: &Keys, answer: &mut Answer) {
    let mut start = 0;
    while start < datagram.len() {
        let packet = &mut datagram[start..];
        let Some(header) = long_header(packet) else {
            return;
        };
        let mut pos = header.rest;
        if header.kind == INITIAL {
            let Some(token_len) = read_varint(packet, &mut pos) else {
                return;
            };
            pos += token_len as usize;
        }
        let Some(length) = read_varint(packet, &mut pos) else {
            return;
        };
        let end = pos + length as usize;
        if end > packet.len() {
            return;
        }
        if header.kind == INITIAL {
            read_initial(&mut packet[..end], pos, keys, answer);
        }
        start += end;
    }
}

fn read_initial(packet: &mut [u8], pn_offset: usize, keys: &Keys, answer: &mut Answer) {
    let sample_at = pn_offset + 4;
    let sample = packet[sample_at..sample_at + SAMPLE_LEN].to_vec();
    let (first, rest) = packet.split_at_mut(1);
    keys.remote
        .header
        .decrypt_in_place(
            &sample,
            &mut first[0],
            &mut rest[pn_offset - 1..pn_offset - 1 + PACKET_NUMBER_LEN],
        )
        .expect("remove header protection");
    let pn_len = usize::from(packet[0] & 0x03) + 1;
    let packet_number = packet[pn_offset..pn_offset + pn_len]
        .iter()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b));
    let (header, payload) = packet.split_at_mut(pn_offset + pn_len);
    let plain = keys
        .remote
        .packet
        .decrypt_in_place(packet_number, header, payload)
        .expect("the server's Initial decrypts");
    read_frames(plain, answer);
}

/// Walks the frames an Initial packet may carry (PADDING, PING, ACK, CRYPTO,
/// CONNECTION_CLOSE).
fn read_frames(frames: &[u8], answer: &mut Answer) {
    let mut pos = 0;
    while let Some(kind) = read_varint(frames, &mut pos) {
        match kind {
            0x00 | 0x01 => {}
            0x02 | 0x03 => {
                let mut fields = || read_varint(frames, &mut pos).unwrap_or(0);
                let (_largest, _delay, ranges, _first) = (fields(), fields(), fields(), fields());
                for _ in 0..ranges * 2 {
                    fields();
                }
                if kind == 0x03 {
                    for _ in 0..3 {
                        fields();
                    }
                }
            }
            k if k == u64::from(CRYPTO_FRAME) => {
                let _offset = read_varint(frames, &mut pos);
                let len = read_varint(frames, &mut pos).unwrap_or(0) as usize;
                answer.crypto_bytes += len;
                pos += len;
            }
            k if k == u64::from(CONNECTION_CLOSE_FRAME) => {
                answer.close_code = read_varint(frames, &mut pos);
                return;
            }
            other => panic!("unexpected frame type {other:#x} in an Initial packet"),
        }
    }
}
