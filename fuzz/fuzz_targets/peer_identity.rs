//! What identifies a peer, from arbitrary bytes: the certificate a peer
//! presents in the TLS handshake (parsed for its public key, which is its
//! device id), and the device ids and pairing codes people type. An error or
//! a value, never a panic; a parsed id or code prints back to a string that
//! parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomade_transport::{DeviceId, PairingCode};

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = DeviceId::from_cert_der(data) {
        assert_eq!(id.to_string().parse::<DeviceId>().ok(), Some(id));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = text.parse::<DeviceId>() {
            assert_eq!(id.to_string().parse::<DeviceId>().ok(), Some(id));
        }
        if let Some(code) = PairingCode::parse(text) {
            assert!(PairingCode::parse(&code.to_string()) == Some(code));
        }
    }
});
