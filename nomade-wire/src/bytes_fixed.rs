//! Fixed-size byte strings (message ids, hashes) encoded as MessagePack `bin`.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `N` bytes that travel as a MessagePack `bin` of exactly `N` bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FixedBytes<const N: usize>(pub [u8; N]);

/// A 16-byte message id (a random UUID in practice).
pub type MessageId = FixedBytes<16>;

/// A 32-byte digest: BLAKE3 for state hashes, SHA-256 for artifact ids.
pub type Hash32 = FixedBytes<32>;

impl<const N: usize> FixedBytes<N> {
    /// All zero bytes.
    pub const ZERO: Self = FixedBytes([0; N]);

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }

    /// Lower-case hexadecimal, two characters per byte.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(N * 2);
        for b in self.0 {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// Parses lower- or upper-case hexadecimal of exactly `2 * N` characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != N * 2 {
            return None;
        }
        let mut out = [0u8; N];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(FixedBytes(out))
    }
}

impl<const N: usize> Default for FixedBytes<N> {
    fn default() -> Self {
        Self::ZERO
    }
}

impl<const N: usize> From<[u8; N]> for FixedBytes<N> {
    fn from(b: [u8; N]) -> Self {
        FixedBytes(b)
    }
}

impl<const N: usize> fmt::Debug for FixedBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl<const N: usize> fmt::Display for FixedBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl<const N: usize> Serialize for FixedBytes<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for FixedBytes<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FixedVisitor<const N: usize>;
        impl<const N: usize> Visitor<'_> for FixedVisitor<N> {
            type Value = FixedBytes<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "bin of exactly {N} bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                <[u8; N]>::try_from(v)
                    .map(FixedBytes)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        deserializer.deserialize_bytes(FixedVisitor::<N>)
    }
}

/// `Vec<u8>`-like payload bytes (`bytes::Bytes`) encoded as MessagePack `bin`,
/// sharing the frame's memory instead of being copied.
///
/// Decoding: while [`decoding_from`] runs, a `bin` field lying inside
/// that frame becomes a slice of it (a reference count, no copy), so a
/// 64 KiB `chunk_data` costs nothing to take out of its frame. Encoding:
/// while [`encoding_shared`] runs, each field about to be written is
/// offered to the writer, which may keep the `Bytes` itself instead of
/// copying its contents (see `frame::Segments`).
///
/// Serde has no other way to hand context to a field's deserializer; the
/// thread-local state is set and restored around one call, so nested or
/// interleaved uses on one thread stay correct.
pub(crate) mod bin_bytes {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    thread_local! {
        /// The frame being decoded on this thread, if any.
        static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
        /// While encoding in segments: the field being written right now.
        static OFFERED: RefCell<Option<Option<Bytes>>> = const { RefCell::new(None) };
    }

    /// Runs `f` with `frame` as the memory that decoded `bin` fields share.
    pub(crate) fn decoding_from<T>(frame: &Bytes, f: impl FnOnce() -> T) -> T {
        set_during(&SOURCE, Some(frame.clone()), f)
    }

    /// Runs `f` (an encoding) with field sharing on: see [`take_offered`].
    pub(crate) fn encoding_shared<T>(f: impl FnOnce() -> T) -> T {
        set_during(&OFFERED, Some(None), f)
    }

    /// Runs `f` with `key` set to `value`, then puts the previous value back
    /// (also if `f` panics).
    fn set_during<V: 'static, T>(
        key: &'static LocalKey<RefCell<V>>,
        value: V,
        f: impl FnOnce() -> T,
    ) -> T {
        struct Restore<V: 'static> {
            key: &'static LocalKey<RefCell<V>>,
            previous: Option<V>,
        }
        impl<V: 'static> Drop for Restore<V> {
            fn drop(&mut self) {
                if let Some(previous) = self.previous.take() {
                    self.key.with(|k| *k.borrow_mut() = previous);
                }
            }
        }
        let previous = key.with(|k| k.replace(value));
        let _restore = Restore {
            key,
            previous: Some(previous),
        };
        f()
    }

    /// The field whose contents are `written`, if it is the one being
    /// serialized right now inside [`encoding_shared`]: the writer may keep
    /// it instead of copying `written`.
    pub(crate) fn take_offered(written: &[u8]) -> Option<Bytes> {
        OFFERED.with(|o| {
            let mut o = o.borrow_mut();
            let slot = o.as_mut()?;
            let same = slot
                .as_ref()
                .is_some_and(|b| b.as_ptr() == written.as_ptr() && b.len() == written.len());
            if same {
                slot.take()
            } else {
                None
            }
        })
    }

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        OFFERED.with(|o| {
            if let Some(slot) = o.borrow_mut().as_mut() {
                *slot = Some(b.clone());
            }
        });
        let out = s.serialize_bytes(b);
        OFFERED.with(|o| {
            if let Some(slot) = o.borrow_mut().as_mut() {
                *slot = None;
            }
        });
        out
    }

    /// `v` as a slice of the frame being decoded when it lies inside it,
    /// else a copy.
    fn shared_or_copied(v: &[u8]) -> Bytes {
        SOURCE.with(|s| match s.borrow().as_ref() {
            Some(frame) if contains(frame, v) => frame.slice_ref(v),
            _ => Bytes::copy_from_slice(v),
        })
    }

    fn contains(outer: &[u8], inner: &[u8]) -> bool {
        let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
        !inner.is_empty() && o.start <= i.start && i.end <= o.end
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bin")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Bytes, E> {
                Ok(shared_or_copied(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::bin_bytes::{decoding_from, encoding_shared, take_offered};

    /// Decodes one `bin` field from `encoded`.
    fn bin_field(encoded: &[u8]) -> Bytes {
        let mut d = rmp_serde::Deserializer::from_read_ref(encoded);
        super::bin_bytes::deserialize(&mut d).unwrap()
    }

    #[test]
    fn only_bytes_inside_the_frame_are_shared() {
        // A `bin` of 8 bytes: marker 0xc4, length, contents.
        let frame = Bytes::from(vec![0xc4, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        let elsewhere = frame.to_vec();
        let (inside, outside) =
            decoding_from(&frame, || (bin_field(&frame), bin_field(&elsewhere)));
        assert_eq!(&inside[..], &frame[2..]);
        assert_eq!(inside.as_ptr(), frame[2..].as_ptr());
        assert_eq!(outside, inside);
        assert!(!frame.as_ptr_range().contains(&outside.as_ptr()));
        // Outside `decoding_from`, a field is always a copy.
        assert_ne!(bin_field(&frame).as_ptr(), frame[2..].as_ptr());
    }

    #[test]
    fn the_frame_in_force_is_put_back_after_nesting_and_after_a_panic() {
        let outer = Bytes::from(vec![0xc4, 2, 1, 2]);
        let inner = Bytes::from(vec![0xc4, 2, 3, 4]);
        decoding_from(&outer, || {
            decoding_from(&inner, || {
                assert_eq!(bin_field(&inner).as_ptr(), inner[2..].as_ptr());
            });
            // Back to the outer frame once the inner decoding is over.
            assert_eq!(bin_field(&outer).as_ptr(), outer[2..].as_ptr());
            assert_ne!(bin_field(&inner).as_ptr(), inner[2..].as_ptr());
        });
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoding_from(&outer, || panic!("a decoder bug"))
        }));
        assert!(panicked.is_err());
        assert_ne!(bin_field(&outer).as_ptr(), outer[2..].as_ptr());
    }

    #[test]
    fn a_field_is_offered_only_while_it_is_written() {
        let data = Bytes::from(vec![5u8; 16]);
        assert!(take_offered(&data).is_none());
        encoding_shared(|| {
            // Not being serialized: nothing to take.
            assert!(take_offered(&data).is_none());
        });
    }
}
