//! BAD_INPUTS #13, measured: a MessagePack `bin32`, `array32`, `map32` or
//! `str32` header claiming gigabytes makes the decoder allocate nothing near
//! the claim. A test binary of its own, because the heap profiler that
//! counts the allocations is process-wide.

use nomade_wire::{samples, DecodeError, Envelope, MessageType};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn bad_input_13_huge_length_headers_allocate_nothing_near_their_claim() {
    let mut frames = Vec::new();
    for claim in [
        [0xc6, 0xff, 0xff, 0xff, 0xff], // bin32
        [0xdd, 0xff, 0xff, 0xff, 0xff], // array32
        [0xdf, 0xff, 0xff, 0xff, 0xff], // map32
        [0xdb, 0xff, 0xff, 0xff, 0xff], // str32
    ] {
        // As a field's value, and as the whole payload.
        frames.push(samples::frame_with_payload(
            MessageType::Heartbeat.code(),
            &one_field_map(b"timestamp", &claim),
        ));
        frames.push(samples::frame_with_payload(MessageType::Ack.code(), &claim));
        // A sync operation's value, one level down.
        frames.push(samples::frame_with_payload(
            MessageType::SyncOperation.code(),
            &one_field_map(b"operation", &claim),
        ));
    }

    let _profiler = dhat::Profiler::builder().testing().build();
    for frame in &frames {
        let err = Envelope::decode(frame).expect_err("a 4 GiB claim in a small frame");
        assert!(matches!(err, DecodeError::MalformedPayload { .. }), "{err}");
    }
    let stats = dhat::HeapStats::get();
    // Twelve decodes of frames under 100 bytes: a few small buffers each.
    assert!(
        stats.max_bytes < 64 * 1024,
        "peak heap {} bytes while decoding",
        stats.max_bytes
    );
    assert!(
        stats.total_bytes < 1024 * 1024,
        "{} bytes allocated in all",
        stats.total_bytes
    );
    // The profiler does see allocations: 4 MiB, as a claim honoured would be.
    let honoured: Vec<u8> = Vec::with_capacity(4 << 20);
    assert!(dhat::HeapStats::get().max_bytes >= 4 << 20);
    drop(honoured);
}

/// A MessagePack map of one field, `name` (9 bytes) -> the raw `value`.
fn one_field_map(name: &[u8; 9], value: &[u8]) -> Vec<u8> {
    let mut map = vec![0x81, 0xa9];
    map.extend_from_slice(name);
    map.extend_from_slice(value);
    map
}
