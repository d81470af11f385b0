//! The frame checksum of a payload written in pieces.
//!
//! BLAKE3 hashes 1 KiB chunks side by side with SIMD (16 at a time with
//! AVX-512), but only in whole subtrees aligned to their own size. Fed a few
//! header bytes and then a 64 KiB chunk of data, `blake3::Hasher` has to hash
//! the first 15 chunks after those bytes in subtrees of 1, 2, 4 and 8: the
//! checksum of an encoded `ARTIFACT_CHUNK` cost 1.7 times that of the same
//! bytes hashed in one call. [`AlignedHasher`] stages input up to the next
//! 16 KiB boundary, so every large update starts on one, and gives the same
//! hash at full width for the price of copying at most 16 KiB per piece.

/// Input is handed to BLAKE3 in runs starting at multiples of this: 16 chunks,
/// the widest SIMD batch.
const ALIGN: usize = 16 * blake3::CHUNK_LEN;

/// A BLAKE3 hasher for input arriving in pieces of any size; the hash is that
/// of the pieces concatenated.
pub(crate) struct AlignedHasher {
    hasher: blake3::Hasher,
    /// Input not yet hashed, always less than `ALIGN` bytes; everything before
    /// it has been hashed and ends on a multiple of `ALIGN`.
    stage: Vec<u8>,
}

impl AlignedHasher {
    /// A hasher with nothing hashed yet.
    pub(crate) fn new() -> Self {
        AlignedHasher {
            hasher: blake3::Hasher::new(),
            stage: Vec::new(),
        }
    }

    /// Adds `input` after what was added before.
    pub(crate) fn update(&mut self, mut input: &[u8]) {
        if !self.stage.is_empty() || input.len() < ALIGN {
            if self.stage.capacity() == 0 {
                self.stage.reserve_exact(ALIGN);
            }
            let take = (ALIGN - self.stage.len()).min(input.len());
            self.stage.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.stage.len() < ALIGN {
                return;
            }
            self.hasher.update(&self.stage);
            self.stage.clear();
        }
        // On a boundary now: hash the whole runs in place, stage the rest.
        let whole = input.len() - input.len() % ALIGN;
        self.hasher.update(&input[..whole]);
        self.stage.extend_from_slice(&input[whole..]);
    }

    /// The hash of everything added.
    pub(crate) fn finalize(mut self) -> blake3::Hash {
        self.hasher.update(&self.stage);
        self.hasher.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash_in_pieces(data: &[u8], cuts: &[usize]) -> blake3::Hash {
        let mut h = AlignedHasher::new();
        let mut at = 0;
        for &cut in cuts {
            let end = (at + cut).min(data.len());
            h.update(&data[at..end]);
            at = end;
        }
        h.update(&data[at..]);
        h.finalize()
    }

    #[test]
    fn a_header_then_a_chunk_hashes_like_one_buffer() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for header in [0, 1, 45, 1024, ALIGN - 1, ALIGN, ALIGN + 1] {
            let cuts = [header, 65_536, 3];
            assert_eq!(
                hash_in_pieces(&data, &cuts),
                blake3::hash(&data),
                "header {header}"
            );
        }
    }

    #[test]
    fn nothing_added_is_the_hash_of_nothing() {
        assert_eq!(AlignedHasher::new().finalize(), blake3::hash(b""));
    }

    proptest! {
        #[test]
        fn any_pieces_hash_like_one_buffer(
            len in 0usize..200_000,
            cuts in proptest::collection::vec(0usize..40_000, 0..12),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            prop_assert_eq!(hash_in_pieces(&data, &cuts), blake3::hash(&data));
        }
    }
}
