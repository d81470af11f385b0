//! Whatever decodes re-encodes to exactly the same bytes (one canonical
//! encoding), also when encoded in pieces (`encode_shared`), and the
//! re-encoded frame decodes to the same envelope. A compressed frame (an
//! LZ4 block has many valid forms) re-encodes to the plain frame of the
//! same envelope, which compresses to a frame of that envelope again.
//!
//! Random bytes rarely carry a valid BLAKE3 checksum, so the input is also
//! tried as `header | payload` with the length and checksum made right: that
//! sends the fuzzer deep into payload decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomade_wire::{compress_frame, Envelope, COMPRESSED};

fn check(frame: &[u8]) {
    if let Ok(env) = Envelope::decode(frame) {
        let again = env.to_bytes().expect("a decoded envelope encodes");
        let compressed = frame
            .get(1..3)
            .is_some_and(|t| u16::from_be_bytes([t[0], t[1]]) & COMPRESSED != 0);
        if compressed {
            let back = Envelope::decode(&again).expect("the plain frame decodes");
            assert_eq!(back, env, "a compressed frame's envelope re-encoded differs");
            if let Some(packed) = compress_frame(&again) {
                let back = Envelope::decode(&packed).expect("compressed again, it decodes");
                assert_eq!(back, env, "compressed again, another envelope");
            }
            return;
        }
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
