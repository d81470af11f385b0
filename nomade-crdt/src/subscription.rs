//! What a device holds: everything, or the entities some patterns match
//! (docs/PROTOCOL.md, "Subscriptions").
//!
//! A pattern is `type:id` (one entity), `type:prefix*` (every entity of the
//! type whose id starts with the prefix) or `type:*` (every entity of the
//! type). A `*` anywhere but at the end is refused, so an entity whose id
//! ends in `*` is subscribed to through a prefix.
//!
//! ```
//! use nomade_crdt::Subscription;
//! use nomade_wire::EntityType;
//!
//! let phone = Subscription::parse(["conversation:family-*", "document:trip"])?;
//! assert!(phone.matches(EntityType::Conversation, "family-chat"));
//! assert!(phone.matches(EntityType::Document, "trip"));
//! assert!(!phone.matches(EntityType::Document, "trip-2"));
//! assert!(Subscription::Everything.covers(&phone));
//! assert!(!phone.covers(&Subscription::Everything));
//! # Ok::<(), nomade_crdt::SubscriptionError>(())
//! ```

use std::fmt;

use nomade_wire::EntityType;

/// Most patterns in one subscription.
pub const MAX_PATTERNS: usize = 256;

/// Longest pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 256;

/// A pattern or a subscription refused, saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// Not `type:id`, `type:prefix*` or `type:*`.
    #[error("subscription pattern {pattern:?} is not type:id, type:prefix* or type:* ({reason})")]
    Malformed {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Longer than [`MAX_PATTERN_LEN`] bytes.
    #[error("a subscription pattern of {len} bytes (at most {MAX_PATTERN_LEN})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// More than [`MAX_PATTERNS`] patterns.
    #[error("a subscription of {count} patterns (at most {MAX_PATTERNS})")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// The same pattern twice.
    #[error("subscription pattern {0:?} given twice")]
    Repeated(String),
}

/// One subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pattern {
    entity_type: EntityType,
    /// The id, or the prefix when `prefix` (empty for `type:*`).
    id: String,
    prefix: bool,
}

impl Pattern {
    /// Parses `type:id`, `type:prefix*` or `type:*`.
    pub fn parse(text: &str) -> Result<Pattern, SubscriptionError> {
        if text.len() > MAX_PATTERN_LEN {
            return Err(SubscriptionError::TooLong { len: text.len() });
        }
        let malformed = |reason| SubscriptionError::Malformed {
            pattern: text.to_string(),
            reason,
        };
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| malformed("no ':' after the entity type"))?;
        let entity_type = EntityType::ALL
            .into_iter()
            .find(|t| t.as_str() == kind)
            .ok_or_else(|| malformed("the type is not document or conversation"))?;
        if rest.is_empty() {
            return Err(malformed("nothing after the type"));
        }
        let (id, prefix) = match rest.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (rest, false),
        };
        if id.contains('*') {
            return Err(malformed("a '*' before the end"));
        }
        Ok(Pattern {
            entity_type,
            id: id.to_string(),
            prefix,
        })
    }

    /// Whether the entity `(entity_type, id)` matches.
    pub fn matches(&self, entity_type: EntityType, id: &str) -> bool {
        self.entity_type == entity_type
            && if self.prefix {
                id.starts_with(&self.id)
            } else {
                id == self.id
            }
    }

    /// Whether every entity `other` matches, this one matches too.
    pub fn covers(&self, other: &Pattern) -> bool {
        self.entity_type == other.entity_type
            && if self.prefix {
                other.id.starts_with(&self.id)
            } else {
                !other.prefix && other.id == self.id
            }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = if self.prefix { "*" } else { "" };
        write!(f, "{}:{}{star}", self.entity_type.as_str(), self.id)
    }
}

/// What a device holds: every entity, or those its patterns match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Subscription {
    /// Every entity (the default; a device with no subscription).
    #[default]
    Everything,
    /// The entities at least one pattern matches (sorted, each once; none
    /// at all holds nothing).
    Patterns(Vec<Pattern>),
}

impl Subscription {
    /// A subscription to the entities these patterns match (sorted and each
    /// kept once as written; a pattern given twice is refused, as a peer's
    /// would be).
    pub fn parse<S: AsRef<str>>(
        patterns: impl IntoIterator<Item = S>,
    ) -> Result<Subscription, SubscriptionError> {
        let mut parsed = Vec::new();
        for text in patterns {
            if parsed.len() == MAX_PATTERNS {
                let count = MAX_PATTERNS + 1;
                return Err(SubscriptionError::TooMany { count });
            }
            let text = text.as_ref();
            let p = Pattern::parse(text)?;
            if parsed.contains(&p) {
                return Err(SubscriptionError::Repeated(text.to_string()));
            }
            parsed.push(p);
        }
        parsed.sort();
        Ok(Subscription::Patterns(parsed))
    }

    /// The subscription a `SYNC_REQUEST` states: absent is everything.
    pub fn from_request(patterns: Option<&[String]>) -> Result<Subscription, SubscriptionError> {
        match patterns {
            None => Ok(Subscription::Everything),
            Some(p) => Subscription::parse(p),
        }
    }

    /// Its patterns as they travel in `SYNC_REQUEST.subscription` (`None`
    /// for everything).
    pub fn to_request(&self) -> Option<Vec<String>> {
        match self {
            Subscription::Everything => None,
            Subscription::Patterns(p) => Some(p.iter().map(Pattern::to_string).collect()),
        }
    }

    /// Whether this is every entity.
    pub fn is_everything(&self) -> bool {
        matches!(self, Subscription::Everything)
    }

    /// Whether the entity `(entity_type, id)` is held.
    pub fn matches(&self, entity_type: EntityType, id: &str) -> bool {
        match self {
            Subscription::Everything => true,
            Subscription::Patterns(p) => p.iter().any(|p| p.matches(entity_type, id)),
        }
    }

    /// Whether every entity `other` matches, this one matches too.
    pub fn covers(&self, other: &Subscription) -> bool {
        match (self, other) {
            (Subscription::Everything, _) => true,
            (Subscription::Patterns(_), Subscription::Everything) => false,
            (Subscription::Patterns(mine), Subscription::Patterns(theirs)) => {
                theirs.iter().all(|t| mine.iter().any(|m| m.covers(t)))
            }
        }
    }

    /// This subscription with `pattern` added (unchanged if it matches
    /// nothing new).
    pub fn with(&self, pattern: Pattern) -> Result<Subscription, SubscriptionError> {
        match self {
            Subscription::Everything => Ok(Subscription::Everything),
            Subscription::Patterns(p) if p.contains(&pattern) => Ok(self.clone()),
            Subscription::Patterns(p) if p.len() >= MAX_PATTERNS => {
                Err(SubscriptionError::TooMany { count: p.len() + 1 })
            }
            Subscription::Patterns(p) => {
                let mut p = p.clone();
                p.push(pattern);
                p.sort();
                Ok(Subscription::Patterns(p))
            }
        }
    }

    /// This subscription without `pattern`; from everything, nothing is
    /// taken (say which patterns to keep instead).
    pub fn without(&self, pattern: &Pattern) -> Subscription {
        match self {
            Subscription::Everything => Subscription::Everything,
            Subscription::Patterns(p) => {
                Subscription::Patterns(p.iter().filter(|q| *q != pattern).cloned().collect())
            }
        }
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subscription::Everything => f.write_str("everything"),
            Subscription::Patterns(p) if p.is_empty() => f.write_str("nothing"),
            Subscription::Patterns(p) => {
                for (i, p) in p.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_one_entity_a_prefix_or_a_type() {
        let s = Subscription::parse(["document:trip", "conversation:family-*", "document:x/*"])
            .expect("valid");
        assert!(s.matches(EntityType::Document, "trip"));
        assert!(!s.matches(EntityType::Document, "trip2"));
        assert!(!s.matches(EntityType::Conversation, "trip"));
        assert!(s.matches(EntityType::Conversation, "family-"));
        assert!(s.matches(EntityType::Conversation, "family-chat"));
        assert!(!s.matches(EntityType::Conversation, "family"));
        assert!(s.matches(EntityType::Document, "x/1"));
        let all_docs = Subscription::parse(["document:*"]).expect("valid");
        assert!(all_docs.matches(EntityType::Document, ""));
        assert!(all_docs.matches(EntityType::Document, "anything"));
        assert!(!all_docs.matches(EntityType::Conversation, "anything"));
        assert!(Subscription::parse::<&str>([])
            .expect("valid")
            .to_request()
            .is_some_and(|p| p.is_empty()));
    }

    /// BAD_INPUTS: malformed patterns, too long, too many, repeated.
    #[test]
    fn malformed_patterns_are_refused_saying_why() {
        for bad in [
            "",
            "document",
            "document:",
            "file:a",
            "Document:a",
            "document:a*b",
            "document:**",
            ":a",
        ] {
            assert!(
                matches!(
                    Subscription::parse([bad]),
                    Err(SubscriptionError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        let long = format!("document:{}", "a".repeat(MAX_PATTERN_LEN));
        assert!(matches!(
            Subscription::parse([long]),
            Err(SubscriptionError::TooLong { .. })
        ));
        let many: Vec<String> = (0..=MAX_PATTERNS)
            .map(|i| format!("document:{i}"))
            .collect();
        assert_eq!(
            Subscription::parse(&many),
            Err(SubscriptionError::TooMany {
                count: MAX_PATTERNS + 1
            })
        );
        assert!(Subscription::parse(&many[..MAX_PATTERNS]).is_ok());
        assert_eq!(
            Subscription::parse(["document:a", "document:a"]),
            Err(SubscriptionError::Repeated("document:a".into()))
        );
    }

    #[test]
    fn coverage_compares_what_two_subscriptions_match() {
        let wide = Subscription::parse(["conversation:*", "document:trip*"]).expect("valid");
        let narrow = Subscription::parse(["conversation:family", "document:trip-2"]).expect("ok");
        assert!(wide.covers(&narrow));
        assert!(!narrow.covers(&wide));
        assert!(narrow.covers(&narrow));
        let other = Subscription::parse(["document:notes"]).expect("valid");
        assert!(!wide.covers(&other));
        assert!(Subscription::Everything.covers(&wide));
        assert!(!wide.covers(&Subscription::Everything));
        let nothing = Subscription::parse::<&str>([]).expect("valid");
        assert!(nothing.covers(&nothing) && wide.covers(&nothing));
    }

    #[test]
    fn a_subscription_round_trips_through_its_request_form() {
        let s = Subscription::parse(["document:b", "conversation:a*"]).expect("valid");
        let wire = s.to_request().expect("patterns");
        assert_eq!(wire, vec!["document:b", "conversation:a*"]);
        assert_eq!(Subscription::from_request(Some(&wire)), Ok(s.clone()));
        assert_eq!(
            Subscription::from_request(None),
            Ok(Subscription::Everything)
        );
        let p = Pattern::parse("document:c").expect("valid");
        let more = s.with(p.clone()).expect("room");
        assert!(more.matches(EntityType::Document, "c"));
        assert_eq!(more.without(&p), s);
        assert_eq!(s.to_string(), "document:b conversation:a*");
    }
}
