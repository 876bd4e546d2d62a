// SPDX-License-Identifier: Apache-2.0
//! Kubernetes label selectors, validated once into a typed [`Selector`].
//!
//! A `LabelSelector` from the API is checked when it is parsed (known operator, values present
//! for `In`/`NotIn` and absent for `Exists`/`DoesNotExist`), so matching can never fail later.
//! Semantics follow `metav1.LabelSelectorAsSelector`: all requirements are ANDed, an empty
//! selector matches everything, `NotIn` and `DoesNotExist` match objects without the key.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Requirement {
    /// The label `key` has one of the values.
    In(String, Vec<String>),
    /// The label `key` is absent or has none of the values.
    NotIn(String, Vec<String>),
    /// The label `key` is present.
    Exists(String),
    /// The label `key` is absent.
    DoesNotExist(String),
}

/// A validated label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    /// All must hold (matchLabels become `In` with one value).
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every object (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Validates an API selector; the error says which requirement is wrong.
    pub fn parse(selector: &LabelSelector) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            check_key(key)?;
            requirements.push(Requirement::In(key.clone(), vec![value.clone()]));
        }
        for expr in selector.match_expressions.iter().flatten() {
            check_key(&expr.key)?;
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "operator {} on key {key:?} needs at least one value",
                        expr.operator
                    ))
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "operator {} on key {key:?} takes no values",
                        expr.operator
                    ))
                }
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => return Err(format!("unknown selector operator {other:?}")),
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        })
    }
}

/// A label key is `[prefix/]name`, the name non-empty and at most 63 characters.
fn check_key(key: &str) -> Result<(), String> {
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::parse(&LabelSelector::default()).expect("valid");
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn every_operator() {
        let a = labels(&[("pod", "a")]);
        let none = labels(&[]);
        let cases = [
            ("In", vec!["a", "b"], true, false),
            ("NotIn", vec!["a"], false, true),
            ("NotIn", vec!["x"], true, true),
            ("Exists", vec![], true, false),
            ("DoesNotExist", vec![], false, true),
        ];
        for (op, values, on_a, on_none) in cases {
            let s = Selector::parse(&expr("pod", op, &values)).expect("valid");
            assert_eq!(s.matches(&a), on_a, "{op} {values:?} on a");
            assert_eq!(s.matches(&none), on_none, "{op} {values:?} on none");
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let mut s = expr("tier", "Exists", &[]);
        s.match_labels = Some([("pod".to_string(), "a".to_string())].into());
        let s = Selector::parse(&s).expect("valid");
        assert!(s.matches(&labels(&[("pod", "a"), ("tier", "x")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(!s.matches(&labels(&[("pod", "b"), ("tier", "x")])));
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        for bad in [
            expr("pod", "Maybe", &["a"]),
            expr("pod", "In", &[]),
            expr("pod", "Exists", &["a"]),
            expr("", "Exists", &[]),
            expr("bad key", "Exists", &[]),
        ] {
            assert!(Selector::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }
}
