//! One frame from arbitrary bytes: an error or an envelope, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomade_wire::{Envelope, StreamHeader};

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::decode(data);
    if let [a, b, ..] = data {
        let _ = StreamHeader::parse([*a, *b]);
    }
});
