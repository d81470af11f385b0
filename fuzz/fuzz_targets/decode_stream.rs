//! A byte stream fed to the streaming decoder in arbitrary pieces must give
//! the same frames, and the same first error, as feeding it whole.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nomade_wire::{DecodeError, Decoder, Envelope};

fn decode_all(pieces: &[&[u8]]) -> (Vec<Envelope>, Option<DecodeError>) {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(env)) => frames.push(env),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the split sizes; the rest is the stream.
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(seed % 17) + 1;
    let pieces: Vec<&[u8]> = stream.chunks(step).collect();
    let whole = decode_all(&[stream]);
    let split = decode_all(&pieces);
    assert_eq!(whole, split, "split size {step} changed the outcome");
});
