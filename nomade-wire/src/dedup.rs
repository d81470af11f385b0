//! A bounded window of recently seen `message_id`s, so that a repeated
//! message is applied once (BAD_INPUTS #19).
//!
//! QUIC never duplicates stream data, so a repeated `message_id` on a
//! connection comes from a faulty or hostile peer (or a replay). The window
//! remembers the ids of the last [`DEFAULT_DEDUP_WINDOW`] distinct messages;
//! memory stays bounded whatever the peer sends, and a repeat older than the
//! window is no longer recognised (operations are idempotent by their dot
//! anyway, so this is a first line, not the only one).

use std::collections::{HashSet, VecDeque};

use crate::MessageId;

/// How many ids a [`RecentIds`] remembers unless told otherwise.
pub const DEFAULT_DEDUP_WINDOW: usize = 4096;

/// The `message_id`s of the last `capacity` distinct messages accepted.
///
/// ```
/// use nomade_wire::{MessageId, RecentIds};
///
/// let mut recent = RecentIds::new(2);
/// let (a, b, c) = (MessageId::from([1; 16]), MessageId::from([2; 16]), MessageId::from([3; 16]));
/// assert!(recent.first_sighting(a));
/// assert!(!recent.first_sighting(a)); // a repeat: drop it
/// assert!(recent.first_sighting(b));
/// assert!(recent.first_sighting(c)); // `a` falls out of the window
/// assert!(recent.first_sighting(a));
/// ```
#[derive(Debug, Clone)]
pub struct RecentIds {
    order: VecDeque<MessageId>,
    seen: HashSet<MessageId>,
    capacity: usize,
}

impl Default for RecentIds {
    fn default() -> Self {
        RecentIds::new(DEFAULT_DEDUP_WINDOW)
    }
}

impl RecentIds {
    /// A window remembering up to `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            order: VecDeque::new(),
            seen: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id` and says whether it is new: `false` means a message with
    /// this id was accepted within the window, and this one is a repeat.
    pub fn first_sighting(&mut self, id: MessageId) -> bool {
        if self.seen.contains(&id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(id);
        self.seen.insert(id);
        true
    }

    /// How many ids are remembered now (never more than the capacity).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// How many ids the window holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> MessageId {
        MessageId::from([n; 16])
    }

    #[test]
    fn bad_input_19_a_repeated_message_id_is_seen_once() {
        let mut recent = RecentIds::default();
        assert!(recent.first_sighting(id(7)));
        for _ in 0..3 {
            assert!(!recent.first_sighting(id(7)));
        }
        assert!(recent.first_sighting(id(8)));
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn memory_is_bounded_by_the_capacity() {
        let mut recent = RecentIds::new(100);
        for n in 0..10_000u32 {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            assert!(recent.first_sighting(MessageId::from(bytes)));
            assert!(recent.len() <= 100);
        }
        assert_eq!(recent.len(), 100);
        assert_eq!(recent.seen.len(), 100);
    }

    #[test]
    fn a_zero_capacity_still_catches_back_to_back_repeats() {
        let mut recent = RecentIds::new(0);
        assert_eq!(recent.capacity(), 1);
        assert!(recent.first_sighting(id(1)));
        assert!(!recent.first_sighting(id(1)));
        assert!(recent.first_sighting(id(2)));
        assert!(recent.first_sighting(id(1)));
    }

    proptest! {
        /// Against a model: an id is a repeat exactly when it is among the
        /// last `capacity` ids accepted.
        #[test]
        fn matches_a_sliding_window_of_accepted_ids(
            capacity in 1usize..8,
            ids in proptest::collection::vec(0u8..12, 0..200),
        ) {
            let mut recent = RecentIds::new(capacity);
            let mut accepted: Vec<u8> = Vec::new();
            for n in ids {
                let window = &accepted[accepted.len().saturating_sub(capacity)..];
                let expected_new = !window.contains(&n);
                prop_assert_eq!(recent.first_sighting(id(n)), expected_new);
                if expected_new {
                    accepted.push(n);
                }
                prop_assert!(recent.len() <= capacity);
            }
        }
    }
}
