//! Whatever decodes re-encodes to exactly the same bytes (one canonical
//! encoding), also when encoded in pieces (`encode_shared`), and the
//! re-encoded frame decodes to the same envelope.
//!
//! Random bytes rarely carry a valid BLAKE3 checksum, so the input is also
//! tried as `header | payload` with the length and checksum made right: that
//! sends the fuzzer deep into payload decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomade_wire::Envelope;

fn check(frame: &[u8]) {
    if let Ok(env) = Envelope::decode(frame) {
        let again = env.to_bytes().expect("a decoded envelope encodes");
        assert_eq!(&again[..], frame, "decode-then-encode changed the bytes");
        let pieces = env
            .encode_shared()
            .expect("a decoded envelope encodes in pieces");
        assert_eq!(pieces.concat(), frame, "the pieces are not the frame");
        let back = Envelope::decode(&again).expect("a re-encoded frame decodes");
        assert_eq!(back, env);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(frame) = nomade_fuzz::with_length_and_checksum_fixed(data) {
        check(&frame);
    }
});
