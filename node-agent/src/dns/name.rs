// SPDX-License-Identifier: Apache-2.0
//! Names in the weaveDNS domain: parsed once at the edge (API, CLI, CNI,
//! gossip) into [`DnsName`], a lower-cased fully qualified name with a
//! trailing dot, so that the zone, the gossip and the server never compare
//! raw strings.
//!
//! Rules (RFC 1035 §2.3.4, RFC 2181 §11): labels of 1..=63 bytes, at most
//! 253 bytes in all without the final dot; letters, digits, `-` and `_`
//! (service labels); comparison ignores ASCII case. A name with no dot is a
//! label inside the domain (`web` → `web.weave.local.`); any other name
//! must end in the domain (`web.weave.local` or `web.weave.local.`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest name, in bytes, without the final dot (RFC 1035 §3.1: 255 on
/// the wire).
pub const MAX_NAME: usize = 253;
/// Longest label, in bytes.
pub const MAX_LABEL: usize = 63;

/// A name that cannot be registered or looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or an empty label (`a..b`).
    #[error("invalid name {0:?}: empty label")]
    EmptyLabel(String),
    /// Too long overall or in one label.
    #[error("invalid name {0:?}: longer than {MAX_NAME} bytes or a label longer than {MAX_LABEL}")]
    TooLong(String),
    /// A byte other than a letter, digit, `-` or `_`.
    #[error("invalid name {0:?}: only letters, digits, '-' and '_' are allowed")]
    BadChar(String),
    /// A name that does not end in the domain.
    #[error("name {name:?} is not in the domain {domain}")]
    OutsideDomain {
        /// The name given.
        name: String,
        /// The domain.
        domain: String,
    },
}

/// A lower-cased fully qualified name with a trailing dot. Shared, not
/// copied, between the zone's records and the lookup table's indexes
/// (cloning bumps a count).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsName(Arc<str>);

impl DnsName {
    /// Parses a fully qualified name (the final dot optional), checking
    /// labels and length; lower-cases it.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bare = s.strip_suffix('.').unwrap_or(s);
        if bare.len() > MAX_NAME {
            return Err(NameError::TooLong(s.to_string()));
        }
        for label in bare.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel(s.to_string()));
            }
            if label.len() > MAX_LABEL {
                return Err(NameError::TooLong(s.to_string()));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(NameError::BadChar(s.to_string()));
            }
        }
        Ok(Self(format!("{}.", bare.to_ascii_lowercase()).into()))
    }

    /// The name with its trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` is `domain` or a name below it.
    pub fn is_in(&self, domain: &DnsName) -> bool {
        self.0 == domain.0
            || (self.0.len() > domain.0.len()
                && self.0.ends_with(&*domain.0)
                && self.0.as_bytes()[self.0.len() - domain.0.len() - 1] == b'.')
    }

    /// Whether the name is a single label (`web.`).
    pub fn is_single_label(&self) -> bool {
        self.0.bytes().filter(|b| *b == b'.').count() == 1
    }
}

impl TryFrom<String> for DnsName {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DnsName> for String {
    fn from(n: DnsName) -> Self {
        n.0.to_string()
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The domain weaveDNS answers for, and how names given by users map into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain(DnsName);

impl Domain {
    /// The domain `name` (e.g. `weave.local.`).
    pub fn new(name: DnsName) -> Self {
        Self(name)
    }

    /// The domain as a name.
    pub fn name(&self) -> &DnsName {
        &self.0
    }

    /// A name a user gave for registration: a single label gets the domain
    /// appended; anything else must be a name strictly below the domain.
    pub fn qualify(&self, given: &str) -> Result<DnsName, NameError> {
        let given = given.trim();
        let full = if !given.is_empty() && !given.contains('.') {
            format!("{given}.{}", self.0)
        } else {
            given.to_string()
        };
        let name = DnsName::parse(&full)?;
        if !name.is_in(&self.0) || name == self.0 {
            return Err(NameError::OutsideDomain {
                name: given.to_string(),
                domain: self.0.to_string(),
            });
        }
        Ok(name)
    }
}

impl Default for Domain {
    fn default() -> Self {
        Self(DnsName("weave.local.".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_cased_and_fully_qualified() {
        let d = Domain::default();
        assert_eq!(d.qualify("Web").unwrap().as_str(), "web.weave.local.");
        assert_eq!(
            d.qualify("a.WEAVE.local").unwrap().as_str(),
            "a.weave.local."
        );
        assert_eq!(
            d.qualify("b.c.weave.local.").unwrap().as_str(),
            "b.c.weave.local."
        );
        assert_eq!(
            d.qualify("_http._tcp.weave.local").unwrap().as_str(),
            "_http._tcp.weave.local."
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let d = Domain::default();
        let long_label = "a".repeat(64);
        let long_name = format!("{}.weave.local", ["abcdefghi"; 25].join("."));
        for (given, want) in [
            ("", "empty label"),
            ("a..weave.local", "empty label"),
            (long_label.as_str(), "longer than"),
            (long_name.as_str(), "longer than"),
            ("we b", "only letters"),
            ("wéb", "only letters"),
            ("example.com", "not in the domain"),
            ("weave.local.", "not in the domain"),
            ("xweave.local", "not in the domain"),
        ] {
            let e = d.qualify(given).unwrap_err().to_string();
            assert!(e.contains(want), "{given:?}: {e}");
        }
    }

    #[test]
    fn membership_respects_label_boundaries() {
        let d = DnsName::parse("weave.local.").unwrap();
        assert!(DnsName::parse("a.weave.local").unwrap().is_in(&d));
        assert!(d.is_in(&d));
        assert!(!DnsName::parse("aweave.local").unwrap().is_in(&d));
        assert!(DnsName::parse("web.").unwrap().is_single_label());
        assert!(!d.is_single_label());
    }
}
