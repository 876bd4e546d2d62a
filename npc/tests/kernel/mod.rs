// SPDX-License-Identifier: Apache-2.0
//! A model of the kernel's view of our tables, strict where nft is: applying a script checks
//! that nothing is referenced before it exists, removed while referenced, created twice or
//! deleted when absent, and records sets, maps, chains with their rules, and counters. Full
//! rebuilds and updates go through the same model, so "updates applied to the kernel equal a
//! rebuild" is a comparison of two models.

use std::collections::{BTreeMap, BTreeSet};

/// The state of our tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Kernel {
    /// Set or map (family, name) → elements.
    pub(crate) sets: BTreeMap<(String, String), BTreeSet<String>>,
    /// Chains (family, name) → rules.
    pub(crate) chains: BTreeMap<(String, String), Vec<String>>,
    /// Counter names.
    pub(crate) counters: BTreeSet<String>,
}

impl Kernel {
    /// The state after a full rebuild with `script`.
    pub(crate) fn from_full(script: &str) -> Self {
        let mut k = Self::default();
        k.apply(script);
        k
    }

    /// Whether any rule or map element refers to `what` (`@set`, `jump chain`, `counter`).
    fn referenced(&self, needle: &str) -> Option<String> {
        for rules in self.chains.values() {
            for r in rules {
                if r.split_whitespace()
                    .any(|w| w == needle || w.trim_matches('"') == needle)
                {
                    return Some(r.clone());
                }
            }
        }
        for elems in self.sets.values() {
            for e in elems {
                if e.split_whitespace().any(|w| w == needle) {
                    return Some(e.clone());
                }
            }
        }
        None
    }

    /// Applies `script`; panics on anything nft would refuse.
    pub(crate) fn apply(&mut self, script: &str) {
        for line in script.lines() {
            let words: Vec<&str> = line.splitn(6, ' ').collect();
            let key = |family: &str, name: &str| (family.to_owned(), name.to_owned());
            match words.as_slice() {
                ["add", "table", ..] => {}
                ["delete", "table", family, "weave-npc"] => {
                    self.sets.retain(|(f, _), _| f != family);
                    self.chains.retain(|(f, _), _| f != family);
                    if *family == "inet" {
                        self.counters.clear();
                    }
                }
                ["add", "set" | "map", family, "weave-npc", name, _] => {
                    assert!(
                        self.sets
                            .insert(key(family, name), BTreeSet::new())
                            .is_none(),
                        "set twice: {line}"
                    );
                }
                ["delete", "set", family, "weave-npc", name] => {
                    assert!(
                        self.sets.remove(&key(family, name)).is_some(),
                        "no set: {line}"
                    );
                    if let Some(r) = self.referenced(&format!("@{name}")) {
                        panic!("set still used by {r}: {line}");
                    }
                }
                ["add" | "delete", "element", family, "weave-npc", name, rest] => {
                    let elems: Vec<String> = rest
                        .trim_start_matches("{ ")
                        .trim_end_matches(" }")
                        .split(", ")
                        .map(str::to_owned)
                        .collect();
                    for e in &elems {
                        if let Some((_, target)) = e.split_once(" : jump ") {
                            assert!(
                                self.chains.contains_key(&key(family, target)),
                                "jump to nothing: {line}"
                            );
                        }
                    }
                    let set = self
                        .sets
                        .get_mut(&key(family, name))
                        .unwrap_or_else(|| panic!("no such set: {line}"));
                    for e in elems {
                        if words[0] == "add" {
                            assert!(set.insert(e.clone()), "{e} added twice: {line}");
                        } else {
                            // Map elements are deleted by key.
                            let found = set
                                .iter()
                                .find(|x| **x == e || x.starts_with(&format!("{e} : ")))
                                .cloned();
                            assert!(
                                found.is_some_and(|x| set.remove(&x)),
                                "{e} deleted but absent: {line}"
                            );
                        }
                    }
                }
                ["add", "counter", "inet", "weave-npc", name] => {
                    assert!(
                        self.counters.insert(name.to_string()),
                        "counter twice: {line}"
                    );
                }
                ["delete", "counter", "inet", "weave-npc", name] => {
                    assert!(self.counters.remove(*name), "no such counter: {line}");
                    if let Some(r) = self.referenced(&format!("\"{name}\"")) {
                        panic!("counter still used by {r}: {line}");
                    }
                }
                ["add", "chain", family, "weave-npc", name, ..] => {
                    assert!(
                        self.chains.insert(key(family, name), Vec::new()).is_none(),
                        "chain twice: {line}"
                    );
                }
                ["flush", "chain", family, "weave-npc", name] => {
                    self.chains
                        .get_mut(&key(family, name))
                        .unwrap_or_else(|| panic!("no such chain: {line}"))
                        .clear();
                }
                ["delete", "chain", family, "weave-npc", name] => {
                    let rules = self.chains.remove(&key(family, name));
                    assert!(
                        rules.is_some_and(|r| r.is_empty()),
                        "chain absent or not empty: {line}"
                    );
                    if let Some(r) = self.referenced(name) {
                        panic!("chain still referenced by {r}: {line}");
                    }
                }
                ["add", "rule", family, "weave-npc", chain, rest] => {
                    for w in rest.split_whitespace() {
                        if let Some(set) = w.strip_prefix('@') {
                            assert!(
                                self.sets.contains_key(&key(family, set)),
                                "no set {set}: {line}"
                            );
                        }
                    }
                    let mut ws = rest.split_whitespace().peekable();
                    while let Some(w) = ws.next() {
                        if w == "jump" || w == "goto" {
                            let target = ws.next().unwrap_or_default();
                            assert!(
                                self.chains.contains_key(&key(family, target)),
                                "jump to nothing: {line}"
                            );
                        }
                        if w == "name" {
                            let counter = ws.next().unwrap_or_default().trim_matches('"');
                            assert!(self.counters.contains(counter), "no counter: {line}");
                        }
                    }
                    self.chains
                        .get_mut(&key(family, chain))
                        .unwrap_or_else(|| panic!("no such chain: {line}"))
                        .push(rest.to_string());
                }
                ["create", "table", ..] => {}
                _ => panic!("unknown command: {line}"),
            }
        }
    }
}
