//! Pairing with a short-lived code (sans-IO core).
//!
//! The device in pairing mode shows a [`PairingCode`]; for [`PAIRING_TTL`]
//! its endpoint admits one unknown certificate through the TLS handshake. The
//! joiner then proves it knows the code, bound to both devices' keys, on a
//! control stream; the responder answers with its own proof, and both pin each
//! other. See "Pairing" in `docs/PROTOCOL.md`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::identity::{spki_of_cert, DeviceId};

/// Characters in a pairing code.
pub const CODE_LEN: usize = 8;
/// How long a pairing window stays open.
pub const PAIRING_TTL: Duration = Duration::from_secs(5 * 60);
/// Length of a pairing proof.
pub const PROOF_LEN: usize = 32;
/// The BLAKE3 `derive_key` context of pairing proofs.
pub const PROOF_CONTEXT: &str = "nomade/1 pairing proof";

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A pairing code: 8 characters of the lowercase RFC 4648 base32 alphabet
/// (40 bits). Parsing ignores case, spaces and dashes.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode(String);

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(..)")
    }
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shown as two groups of four for reading aloud: "abcd-efgh".
        write!(f, "{}-{}", &self.0[..4], &self.0[4..])
    }
}

impl PairingCode {
    /// A fresh random code.
    pub fn generate(rng: &mut impl Rng) -> PairingCode {
        PairingCode(
            (0..CODE_LEN)
                .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
                .collect(),
        )
    }

    /// Parses what a person typed; `None` if it is not 8 base32 characters.
    pub fn parse(s: &str) -> Option<PairingCode> {
        let code: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        (code.len() == CODE_LEN && code.bytes().all(|b| ALPHABET.contains(&b)))
            .then_some(PairingCode(code))
    }

    /// The 8 lowercase characters, as they enter the proof.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which side computes a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofRole {
    /// The device that typed the code and dialed (`'J'`).
    Joiner,
    /// The device that showed the code and accepted (`'R'`).
    Responder,
}

/// SHA-256 of a certificate's `SubjectPublicKeyInfo`, the key binding of proofs.
pub fn key_hash(cert_der: &[u8]) -> crate::Result<[u8; 32]> {
    Ok(Sha256::digest(spki_of_cert(cert_der)?).into())
}

/// The pairing proof: BLAKE3 `derive_key(PROOF_CONTEXT, role || code ||
/// responder_key_hash || joiner_key_hash)`.
pub fn proof(
    role: ProofRole,
    code: &PairingCode,
    responder_key_hash: &[u8; 32],
    joiner_key_hash: &[u8; 32],
) -> [u8; PROOF_LEN] {
    let mut material = Vec::with_capacity(1 + CODE_LEN + 64);
    material.push(match role {
        ProofRole::Joiner => b'J',
        ProofRole::Responder => b'R',
    });
    material.extend_from_slice(code.as_str().as_bytes());
    material.extend_from_slice(responder_key_hash);
    material.extend_from_slice(joiner_key_hash);
    blake3::derive_key(PROOF_CONTEXT, &material)
}

/// Compares two proofs in constant time.
pub fn proofs_equal(a: &[u8; PROOF_LEN], b: &[u8; PROOF_LEN]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// Why a pairing attempt failed on the responder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingFailure {
    /// No window is open (never opened, already used, or closed).
    #[error("no pairing window is open")]
    NoWindow,
    /// The window expired.
    #[error("the pairing code expired")]
    Expired,
    /// The window was claimed by another device.
    #[error("the pairing window belongs to another device")]
    WrongPeer,
    /// The joiner's proof does not match: wrong code (or a device in the middle).
    #[error("wrong pairing code")]
    WrongCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum WindowState {
    Open,
    Claimed(DeviceId),
    Used,
}

/// A pairing window: one code, one deadline, one unknown device, one attempt.
#[derive(Debug, Clone)]
pub struct PairingWindow {
    code: PairingCode,
    expires_at: Instant,
    state: WindowState,
}

impl PairingWindow {
    /// Opens a window for `code` from `now` for `ttl`.
    pub fn open(code: PairingCode, now: Instant, ttl: Duration) -> Self {
        PairingWindow {
            code,
            expires_at: now + ttl,
            state: WindowState::Open,
        }
    }

    /// Whether an unknown device may still claim the window.
    pub fn is_open(&self, now: Instant) -> bool {
        self.state == WindowState::Open && now < self.expires_at
    }

    /// Admits `peer` (an unknown device in a TLS handshake) if the window is
    /// open; afterwards only `peer` may prove the code, once.
    pub fn claim(&mut self, peer: DeviceId, now: Instant) -> bool {
        if self.is_open(now) {
            self.state = WindowState::Claimed(peer);
            true
        } else {
            false
        }
    }

    /// Whether `peer` holds the claim.
    pub fn is_claimed_by(&self, peer: &DeviceId) -> bool {
        self.state == WindowState::Claimed(*peer)
    }

    /// Checks the joiner's proof. Whatever the outcome, the window is used up
    /// (one attempt per code). On success returns the responder's proof.
    pub fn verify(
        &mut self,
        peer: DeviceId,
        joiner_proof: &[u8; PROOF_LEN],
        responder_key_hash: &[u8; 32],
        joiner_key_hash: &[u8; 32],
        now: Instant,
    ) -> Result<[u8; PROOF_LEN], PairingFailure> {
        let state = std::mem::replace(&mut self.state, WindowState::Used);
        match state {
            WindowState::Claimed(p) if p == peer => {}
            WindowState::Claimed(_) => return Err(PairingFailure::WrongPeer),
            WindowState::Open | WindowState::Used => return Err(PairingFailure::NoWindow),
        }
        if now >= self.expires_at {
            return Err(PairingFailure::Expired);
        }
        let expected = proof(
            ProofRole::Joiner,
            &self.code,
            responder_key_hash,
            joiner_key_hash,
        );
        if !proofs_equal(&expected, joiner_proof) {
            return Err(PairingFailure::WrongCode);
        }
        Ok(proof(
            ProofRole::Responder,
            &self.code,
            responder_key_hash,
            joiner_key_hash,
        ))
    }
}

/// The pairing window of an endpoint, shared with its TLS verifier.
#[derive(Clone, Default, Debug)]
pub struct PairingSlot(Arc<Mutex<Option<PairingWindow>>>);

impl PairingSlot {
    /// Opens (or replaces) the window.
    pub fn open(&self, window: PairingWindow) {
        *self.lock() = Some(window);
    }

    /// Closes any window.
    pub fn close(&self) {
        *self.lock() = None;
    }

    /// See [`PairingWindow::claim`]; false without a window.
    pub fn claim(&self, peer: DeviceId, now: Instant) -> bool {
        self.lock().as_mut().is_some_and(|w| w.claim(peer, now))
    }

    /// Whether `peer` holds the current window's claim.
    pub fn is_claimed_by(&self, peer: &DeviceId) -> bool {
        self.lock().as_ref().is_some_and(|w| w.is_claimed_by(peer))
    }

    /// See [`PairingWindow::verify`]; the window is removed afterwards.
    pub fn verify(
        &self,
        peer: DeviceId,
        joiner_proof: &[u8; PROOF_LEN],
        responder_key_hash: &[u8; 32],
        joiner_key_hash: &[u8; 32],
        now: Instant,
    ) -> Result<[u8; PROOF_LEN], PairingFailure> {
        let mut guard = self.lock();
        let result = match guard.as_mut() {
            Some(w) => w.verify(peer, joiner_proof, responder_key_hash, joiner_key_hash, now),
            None => Err(PairingFailure::NoWindow),
        };
        *guard = None;
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PairingWindow>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn code() -> PairingCode {
        PairingCode::generate(&mut rand::rngs::StdRng::seed_from_u64(7))
    }

    #[test]
    fn code_format_and_parse() {
        let c = code();
        assert_eq!(c.as_str().len(), CODE_LEN);
        let shown = c.to_string();
        assert_eq!(PairingCode::parse(&shown.to_uppercase()), Some(c.clone()));
        assert_eq!(
            PairingCode::parse("abcd efgh").map(|c| c.0),
            Some("abcdefgh".into())
        );
        assert!(PairingCode::parse("abcd-efg1").is_none());
        assert!(PairingCode::parse("abc").is_none());
    }

    /// The worked vector of docs/PROTOCOL.md, "Pairing" (checked there with
    /// Python's `blake3` package as well).
    #[test]
    fn protocol_md_proof_vector() {
        let code = PairingCode::parse("abcdefgh").expect("code");
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(proof(ProofRole::Joiner, &code, &[1; 32], &[2; 32])),
            "9def3ed38cc0195e52601d8137d33b06bd676b385cff038a116f5b6cd0f3c313"
        );
        assert_eq!(
            hex(proof(ProofRole::Responder, &code, &[1; 32], &[2; 32])),
            "7829c8a1af332e8b1e95d14da2e860f12068f0547b8c255d3e80681e15a0e55f"
        );
    }

    #[test]
    fn right_code_pairs_once() {
        let t0 = Instant::now();
        let (r, j) = ([1u8; 32], [2u8; 32]);
        let peer = DeviceId::from_bytes([9; 20]);
        let mut w = PairingWindow::open(code(), t0, PAIRING_TTL);
        assert!(w.claim(peer, t0));
        assert!(
            !w.claim(DeviceId::from_bytes([8; 20]), t0),
            "one device per window"
        );
        let jp = proof(ProofRole::Joiner, &code(), &r, &j);
        let rp = w.verify(peer, &jp, &r, &j, t0).expect("right code");
        assert_eq!(rp, proof(ProofRole::Responder, &code(), &r, &j));
        assert_ne!(rp, jp, "the two directions differ");
        assert_eq!(
            w.verify(peer, &jp, &r, &j, t0),
            Err(PairingFailure::NoWindow)
        );
    }

    #[test]
    fn wrong_code_or_keys_fail() {
        let t0 = Instant::now();
        let (r, j) = ([1u8; 32], [2u8; 32]);
        let peer = DeviceId::from_bytes([9; 20]);
        let other = PairingCode::parse("zzzzzzzz").expect("code");
        let mut w = PairingWindow::open(code(), t0, PAIRING_TTL);
        assert!(w.claim(peer, t0));
        let bad = proof(ProofRole::Joiner, &other, &r, &j);
        assert_eq!(
            w.verify(peer, &bad, &r, &j, t0),
            Err(PairingFailure::WrongCode)
        );
        // A proof made for another responder key (a device in the middle) fails.
        let mut w = PairingWindow::open(code(), t0, PAIRING_TTL);
        assert!(w.claim(peer, t0));
        let mitm = proof(ProofRole::Joiner, &code(), &[3u8; 32], &j);
        assert_eq!(
            w.verify(peer, &mitm, &r, &j, t0),
            Err(PairingFailure::WrongCode)
        );
    }

    #[test]
    fn expired_window_refuses() {
        let t0 = Instant::now();
        let peer = DeviceId::from_bytes([9; 20]);
        let mut w = PairingWindow::open(code(), t0, Duration::from_secs(10));
        assert!(!w.claim(peer, t0 + Duration::from_secs(10)));
        let mut w = PairingWindow::open(code(), t0, Duration::from_secs(10));
        assert!(w.claim(peer, t0 + Duration::from_secs(9)));
        let jp = proof(ProofRole::Joiner, &code(), &[1; 32], &[2; 32]);
        assert_eq!(
            w.verify(peer, &jp, &[1; 32], &[2; 32], t0 + Duration::from_secs(11)),
            Err(PairingFailure::Expired)
        );
    }
}
