//! Packing operations into `BATCHED_SYNC` frames, encoding each one once.
//!
//! A pusher with a backlog sends its operations as `BATCHED_SYNC` frames that
//! fit the peer's payload limit. Building a [`BatchedSync`] and encoding it
//! would encode every operation twice (once to learn whether it still fits,
//! once in the frame) and copy each one into the batch. [`BatchEncoder`]
//! appends each operation's encoding to the payload being built, so the
//! frame it writes is byte for byte the frame of the equivalent
//! [`Envelope`](crate::Envelope), at half the cost: its actor table grows
//! as operations are pushed, each operation is encoded against it once, and
//! the table goes in front of them when the frame is written.

use bytes::{BufMut, BytesMut};

use crate::actor_table::{encoding_with, ActorTable};
use crate::error::{DecodeError, EncodeError};
use crate::frame::{put_header, CHECKSUM_LEN, HEADER_LEN};
use crate::message::SyncOperation;
use crate::{MessageId, MessageType};

/// The payload's map header (two entries) and its first key, `"actors"`.
const PAYLOAD_PREFIX: &[u8] = b"\x82\xa6actors";

/// The payload's second key.
const OPERATIONS_KEY: &[u8] = b"\xaaoperations";

/// Length of the canonical MessagePack array header for `n` elements.
fn array_header_len(n: usize) -> usize {
    match n {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    }
}

/// Length of the payload holding `table` and `count` operations encoded in
/// `ops_len` bytes.
fn payload_len(table: &ActorTable, ops_len: usize, count: usize) -> usize {
    PAYLOAD_PREFIX.len()
        + array_header_len(table.len())
        + table.encoded_len()
        + OPERATIONS_KEY.len()
        + array_header_len(count)
        + ops_len
}

/// Builds `BATCHED_SYNC` frames whose payloads stay within a limit.
///
/// ```
/// use nomade_wire::{BatchEncoder, CrdtOperation, Edit, EntityType, Envelope, Message, MessageId, SyncOperation, Value};
///
/// let op = SyncOperation {
///     entity_id: "trip".into(),
///     entity_type: EntityType::Document,
///     operation: CrdtOperation {
///         counter: 1,
///         deps: Default::default(),
///         edit: Edit::Set { key: "title".into(), value: Value::String("Lisbon".into()) },
///     },
///     timestamp: 0,
///     actor_id: "laptop".into(),
/// };
/// let mut batch = BatchEncoder::new(65_536);
/// assert!(batch.push(&op)?);
/// let mut frame = bytes::BytesMut::new();
/// batch.finish_frame(MessageId::default(), 0, &mut frame)?;
/// let Message::BatchedSync(decoded) = Envelope::decode(&frame)?.message else { unreachable!() };
/// assert_eq!(decoded.operations, vec![op]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchEncoder {
    max_payload: usize,
    /// The device ids the operations pushed so far name.
    table: ActorTable,
    ops: BytesMut,
    count: usize,
}

impl BatchEncoder {
    /// An empty batch whose frames carry payloads of at most `max_payload`
    /// bytes (use the peer's limit, normally
    /// [`DEFAULT_MAX_PAYLOAD`](crate::DEFAULT_MAX_PAYLOAD)).
    pub fn new(max_payload: usize) -> Self {
        BatchEncoder {
            max_payload,
            table: ActorTable::default(),
            ops: BytesMut::new(),
            count: 0,
        }
    }

    /// Resumes a batch from a payload written by
    /// [`finish_payload`](Self::finish_payload): its actor table and its
    /// operations' bytes are taken as they are (nothing is decoded), and
    /// operations pushed next follow them. A node appends to its last
    /// stored row this way.
    pub fn resume(max_payload: usize, payload: &[u8]) -> Result<BatchEncoder, DecodeError> {
        let bad = |reason: &str| DecodeError::MalformedPayload {
            message: "BATCHED_SYNC",
            reason: reason.to_string(),
        };
        let mut rest = payload
            .strip_prefix(PAYLOAD_PREFIX)
            .ok_or_else(|| bad("not a batch's payload"))?;
        let mut table = ActorTable::default();
        let actors = rmp::decode::read_array_len(&mut rest).map_err(|e| bad(&e.to_string()))?;
        for _ in 0..actors {
            let len = rmp::decode::read_str_len(&mut rest).map_err(|e| bad(&e.to_string()))?;
            let len = len as usize;
            if rest.len() < len {
                return Err(bad("an actor cut short"));
            }
            let (name, after) = rest.split_at(len);
            let name = std::str::from_utf8(name).map_err(|_| bad("an actor that is not UTF-8"))?;
            table.add(name);
            rest = after;
        }
        let mut rest = rest
            .strip_prefix(OPERATIONS_KEY)
            .ok_or_else(|| bad("no operations after the actors"))?;
        let count = rmp::decode::read_array_len(&mut rest).map_err(|e| bad(&e.to_string()))?;
        if table.len() != actors as usize {
            return Err(bad("an actor listed twice"));
        }
        Ok(BatchEncoder {
            max_payload,
            table,
            ops: BytesMut::from(rest),
            count: count as usize,
        })
    }

    /// Operations in the batch being built.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch being built is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds `op` if the payload still fits; returns `false` (and leaves the
    /// batch as it was) when it does not, so the caller can write the frame
    /// and push `op` into the next one. An operation too large for a frame
    /// of its own is [`EncodeError::PayloadTooLarge`].
    pub fn push(&mut self, op: &SyncOperation) -> Result<bool, EncodeError> {
        let before = self.ops.len();
        let actors_before = self.table.len();
        self.table.note(op);
        let ops = &mut self.ops;
        let written = encoding_with(&mut self.table, || {
            rmp_serde::encode::write_named(&mut ops.writer(), op)
        });
        let undo = |enc: &mut BatchEncoder| {
            enc.ops.truncate(before);
            enc.table.truncate(actors_before);
        };
        if let Err(e) = written {
            undo(self);
            return Err(EncodeError::Serialize(e.to_string()));
        }
        let op_len = self.ops.len() - before;
        // On its own: a table of its actors alone.
        let mut own = ActorTable::default();
        own.note(op);
        let alone = payload_len(&own, op_len, 1);
        if alone > self.max_payload {
            undo(self);
            return Err(EncodeError::PayloadTooLarge {
                len: alone,
                max: self.max_payload,
            });
        }
        if payload_len(&self.table, self.ops.len(), self.count + 1) > self.max_payload {
            undo(self);
            return Ok(false);
        }
        self.count += 1;
        Ok(true)
    }

    /// Appends the `BATCHED_SYNC` frame of the operations pushed so far to
    /// `dst` and empties the batch.
    pub fn finish_frame(
        &mut self,
        message_id: MessageId,
        timestamp: i64,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let len = payload_len(&self.table, self.ops.len(), self.count);
        let len32 = u32::try_from(len).map_err(|_| EncodeError::PayloadTooLarge {
            len,
            max: u32::MAX as usize,
        })?;
        dst.reserve(HEADER_LEN + len + CHECKSUM_LEN);
        put_header(dst, MessageType::BatchedSync, message_id, timestamp, len32);
        let payload_start = dst.len();
        self.finish_payload(dst)?;
        let checksum = blake3::hash(&dst[payload_start..]);
        dst.put_slice(checksum.as_bytes());
        Ok(())
    }

    /// Appends the `BATCHED_SYNC` payload of the operations pushed so far
    /// (without the frame around it: a stored run of operations) to `dst`
    /// and empties the batch.
    pub fn finish_payload(&mut self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let fail = |e: rmp::encode::ValueWriteError| EncodeError::Serialize(e.to_string());
        dst.put_slice(PAYLOAD_PREFIX);
        // The counts fit a u32: each actor and operation takes at least one
        // byte of a payload whose length fits a u32.
        rmp::encode::write_array_len(&mut (&mut *dst).writer(), self.table.len() as u32)
            .map_err(fail)?;
        for name in self.table.names() {
            rmp::encode::write_str(&mut (&mut *dst).writer(), name).map_err(fail)?;
        }
        dst.put_slice(OPERATIONS_KEY);
        rmp::encode::write_array_len(&mut (&mut *dst).writer(), self.count as u32).map_err(fail)?;
        dst.put_slice(&self.ops);
        self.ops.clear();
        self.table.clear();
        self.count = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchedSync, CrdtOperation, Edit, EntityType, Envelope, Value};
    use proptest::prelude::*;

    fn op(counter: u64, value_len: usize) -> SyncOperation {
        SyncOperation {
            entity_id: format!("doc-{}", counter % 7).into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter,
                deps: [("dev-a".into(), counter.saturating_sub(1))].into(),
                edit: Edit::Set {
                    key: "body".into(),
                    value: Value::String("x".repeat(value_len)),
                },
            },
            timestamp: 1,
            actor_id: "dev-a".into(),
        }
    }

    /// Packs `ops` into as many frames as needed, as a pusher does.
    fn pack(ops: &[SyncOperation], max: usize) -> Vec<(Vec<SyncOperation>, BytesMut)> {
        let mut enc = BatchEncoder::new(max);
        let mut out = Vec::new();
        let mut current = Vec::new();
        for o in ops {
            if !enc.push(o).unwrap() {
                let mut frame = BytesMut::new();
                enc.finish_frame(MessageId::default(), 7, &mut frame)
                    .unwrap();
                out.push((std::mem::take(&mut current), frame));
                assert!(enc.push(o).unwrap());
            }
            current.push(o.clone());
        }
        if !enc.is_empty() {
            let mut frame = BytesMut::new();
            enc.finish_frame(MessageId::default(), 7, &mut frame)
                .unwrap();
            out.push((current, frame));
        }
        out
    }

    proptest! {
        /// Every frame is exactly the frame of the equivalent envelope, fits
        /// the limit, and the frames carry every operation in order.
        #[test]
        fn frames_equal_the_envelope_encoding(
            sizes in proptest::collection::vec(0usize..3000, 0..120),
            max in 2_000usize..20_000,
        ) {
            let ops: Vec<_> = sizes.iter().enumerate().map(|(i, &n)| op(i as u64 + 1, n.min(max - 200))).collect();
            let mut all = Vec::new();
            for (batch, frame) in pack(&ops, max) {
                let expected = Envelope::new(MessageId::default(), 7, BatchedSync { operations: batch.clone() })
                    .to_bytes()
                    .unwrap();
                prop_assert_eq!(&frame[..], &expected[..]);
                prop_assert!(frame.len() - HEADER_LEN - CHECKSUM_LEN <= max);
                all.extend(batch);
            }
            prop_assert_eq!(all, ops);
        }
    }

    /// A batch resumed from its payload and pushed more gives the payload
    /// of all the operations, as one batch of them all would.
    #[test]
    fn a_resumed_batch_continues_where_its_payload_ended() {
        let mut other = op(3, 5);
        other.actor_id = "dev-b".into();
        let first = [op(1, 10), op(2, 0)];
        let then = [other, op(4, 7)];
        let mut enc = BatchEncoder::new(usize::MAX >> 1);
        for o in &first {
            assert!(enc.push(o).unwrap());
        }
        let mut payload = BytesMut::new();
        enc.finish_payload(&mut payload).unwrap();
        let mut resumed = BatchEncoder::resume(usize::MAX >> 1, &payload).unwrap();
        assert_eq!(resumed.len(), 2);
        for o in &then {
            assert!(resumed.push(o).unwrap());
        }
        let mut joined = BytesMut::new();
        resumed.finish_payload(&mut joined).unwrap();
        let mut all = BatchEncoder::new(usize::MAX >> 1);
        for o in first.iter().chain(&then) {
            assert!(all.push(o).unwrap());
        }
        let mut expected = BytesMut::new();
        all.finish_payload(&mut expected).unwrap();
        assert_eq!(joined, expected);
        // What is not a batch's payload is an error, not a panic.
        for bad in [
            &b""[..],
            b"\x82\xa6actors",
            b"\x82\xa6actors\x91\xa5ab",
            &payload[..payload.len() / 2],
        ] {
            let _ = BatchEncoder::resume(1000, bad);
        }
        assert!(BatchEncoder::resume(1000, b"\x82\xa6actors\x91\xa5ab").is_err());
    }

    #[test]
    fn array_headers_change_size_at_16_and_65536_elements() {
        // Tiny operations, so that the 16- and 32-bit array headers appear.
        let ops: Vec<_> = (1..=70_000).map(|c| op(c, 0)).collect();
        for n in [15usize, 16, 65_535, 65_536, 70_000] {
            let mut enc = BatchEncoder::new(usize::MAX >> 1);
            for o in &ops[..n] {
                assert!(enc.push(o).unwrap());
            }
            let mut frame = BytesMut::new();
            enc.finish_frame(MessageId::default(), 0, &mut frame)
                .unwrap();
            let expected = Envelope::new(
                MessageId::default(),
                0,
                BatchedSync {
                    operations: ops[..n].to_vec(),
                },
            )
            .to_bytes()
            .unwrap();
            assert!(frame[..] == expected[..], "{n} operations");
        }
    }

    #[test]
    fn an_operation_too_large_for_a_frame_is_refused_and_changes_nothing() {
        let mut enc = BatchEncoder::new(1_000);
        assert!(enc.push(&op(1, 10)).unwrap());
        assert!(matches!(
            enc.push(&op(2, 2_000)),
            Err(EncodeError::PayloadTooLarge { .. })
        ));
        // A full batch says so and keeps what it has.
        assert!(!enc.push(&op(3, 850)).unwrap());
        assert_eq!(enc.len(), 1);
        let mut frame = BytesMut::new();
        enc.finish_frame(MessageId::default(), 0, &mut frame)
            .unwrap();
        assert!(enc.is_empty());
        let expected = Envelope::new(
            MessageId::default(),
            0,
            BatchedSync {
                operations: vec![op(1, 10)],
            },
        )
        .to_bytes()
        .unwrap();
        assert!(frame[..] == expected[..]);
    }
}
