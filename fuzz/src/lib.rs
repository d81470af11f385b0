//! What the fuzz targets share.

use nomade_wire::{CHECKSUM_LEN, HEADER_LEN};

/// `data` taken as `header | payload`, with the header's length and the
/// checksum made right: random bytes rarely carry a valid BLAKE3 checksum,
/// and this sends the fuzzer deep into payload decoding. `None` when
/// `data` is shorter than a header.
pub fn with_length_and_checksum_fixed(data: &[u8]) -> Option<Vec<u8>> {
    let payload = data.get(HEADER_LEN..)?;
    let mut frame = Vec::with_capacity(data.len() + CHECKSUM_LEN);
    frame.extend_from_slice(&data[..HEADER_LEN]);
    frame[27..31].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.extend_from_slice(blake3::hash(payload).as_bytes());
    Some(frame)
}

/// The replica settings of the targets that apply or restore what the
/// fuzzer made: a small causal buffer, counter jump and actor table, so
/// that memory stays bounded while the checks still bite.
pub fn small_replica_config() -> nomade_crdt::ReplicaConfig {
    nomade_crdt::ReplicaConfig {
        max_buffered: 256,
        max_counter_jump: 1 << 20,
        max_actors: 16,
    }
}
