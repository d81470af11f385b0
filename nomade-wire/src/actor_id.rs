//! [`ActorId`]: a device id as operations name it, shared rather than
//! copied.
//!
//! Every operation names its actor, the actors of its `deps`, and the
//! actors of the elements it refers to: the same few device ids, over and
//! over. An `ActorId` is a reference-counted string, so that those names
//! are one allocation per device, not one per mention: cloning one (an
//! operation, a version vector) copies a pointer, and a decoded batch's
//! operations share the ids of its actor table. It compares, orders and
//! hashes as the string it holds, and borrows as `&str`, so maps keyed by
//! it are looked up with a plain `&str`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use nomade_wire::ActorId;
//!
//! let laptop = ActorId::from("laptop");
//! let mut vv: BTreeMap<ActorId, u64> = BTreeMap::new();
//! vv.insert(laptop.clone(), 3);
//! assert_eq!(vv.get("laptop"), Some(&3));
//! assert_eq!(laptop, "laptop");
//! assert_eq!(laptop.to_string(), "laptop");
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device id naming an actor (see the module documentation).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ActorId(Arc<str>);

impl ActorId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for ActorId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ActorId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ActorId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ActorId {
    fn from(s: &str) -> Self {
        ActorId(Arc::from(s))
    }
}

impl From<String> for ActorId {
    fn from(s: String) -> Self {
        ActorId(Arc::from(s))
    }
}

impl From<&String> for ActorId {
    fn from(s: &String) -> Self {
        ActorId(Arc::from(s.as_str()))
    }
}

impl From<&ActorId> for ActorId {
    fn from(a: &ActorId) -> Self {
        a.clone()
    }
}

impl From<ActorId> for String {
    fn from(a: ActorId) -> Self {
        a.0.to_string()
    }
}

impl PartialEq<str> for ActorId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for ActorId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for ActorId {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<ActorId> for str {
    fn eq(&self, other: &ActorId) -> bool {
        self == &*other.0
    }
}

impl PartialEq<ActorId> for &str {
    fn eq(&self, other: &ActorId) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<ActorId> for String {
    fn eq(&self, other: &ActorId) -> bool {
        **self == *other.0
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ActorId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ActorId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(ActorId::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_id_orders_hashes_and_encodes_as_its_string() {
        let (a, b) = (ActorId::from("alpha"), ActorId::from(String::from("beta")));
        assert!(a < b);
        assert_eq!("alpha".cmp("beta"), a.cmp(&b));
        let bytes = rmp_serde::to_vec(&a).unwrap();
        assert_eq!(bytes, rmp_serde::to_vec("alpha").unwrap());
        assert_eq!(rmp_serde::from_slice::<ActorId>(&bytes).unwrap(), a);
        let shared = a.clone();
        assert!(Arc::ptr_eq(&shared.0, &a.0), "a clone shares the string");
    }
}
