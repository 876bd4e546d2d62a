// SPDX-License-Identifier: Apache-2.0
//! Rendering a [`Compiled`] as nft scripts: the whole ruleset ([`Compiled::full`]), the
//! changes since the last apply ([`Compiled::update`]), the hold ruleset a node starts with
//! ([`hold`]) and the removal of everything ([`cleanup`]).
//!
//! An update orders its commands so that nothing is referenced before it exists or removed
//! while referenced: new sets and their elements, element changes, new counters and chains,
//! the rules of new and changed chains, map elements, then the removal of chains (flushed
//! first), counters and sets that are no longer used.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::sets::{Elem, SetDef, SetKind};
use super::{Compiled, SetId, DIRECTIONS, TABLE};

/// Rules of the base chains (both directions) and the bridge table.
pub(super) const BASE_RULES: usize = 4 * 2 + 2 * 2 + 4;

/// The hold ruleset: the bridge table alone, with no known local pod, so that every pod
/// port is closed until the first complete ruleset replaces it. `create table` fails when the
/// table exists (a previous ruleset is in force and stays), which aborts the transaction and
/// changes nothing.
pub fn hold(pod_port_prefix: &str) -> String {
    let mut out = format!(
        "create table bridge {TABLE}\nadd chain bridge {TABLE} forward {{ type filter hook forward priority 0; policy accept; }}\nadd set bridge {TABLE} local-pods {{ {} }}\n",
        SetKind::Addr.declaration()
    );
    bridge_rules(&mut out, pod_port_prefix);
    out
}

/// The transaction removing both our tables (and nothing else); fine if they are absent.
pub fn cleanup() -> String {
    let mut out = String::new();
    for family in ["inet", "bridge"] {
        let _ = writeln!(
            out,
            "add table {family} {TABLE}\ndelete table {family} {TABLE}"
        );
    }
    out
}

/// The rules of the bridge table's `forward` chain.
fn bridge_rules(out: &mut String, port: &str) {
    for (dir, field) in [("oifname", "daddr"), ("iifname", "saddr")] {
        let _ = writeln!(
            out,
            "add rule bridge {TABLE} forward {dir} \"{port}*\" meta protocol ip ip {field} != @local-pods drop comment \"address of no known local pod\"\nadd rule bridge {TABLE} forward {dir} \"{port}*\" meta protocol != ip meta protocol != arp drop comment \"pods speak IPv4 and ARP only\""
        );
    }
}

impl Compiled {
    /// The whole ruleset as one transaction: both tables are created if missing, deleted,
    /// and rebuilt, so the kernel switches from the old ruleset to the new one atomically.
    pub fn full(&self) -> String {
        let policy_chains = self.policy_chains();
        let derived = self.derived_chains();
        let rules: usize = policy_chains.values().map(|r| r.len()).sum();
        let mut out = String::with_capacity(160 * (rules + 4 * self.slots.len()));
        for family in ["inet", "bridge"] {
            let _ = writeln!(
                out,
                "add table {family} {TABLE}\ndelete table {family} {TABLE}"
            );
        }
        let _ = writeln!(out, "add table inet {TABLE}");
        for ((dir, _), priority) in DIRECTIONS.iter().zip([-1, 0]) {
            let _ = writeln!(
                out,
                "add chain inet {TABLE} {dir} {{ type filter hook forward priority {priority}; policy accept; }}\nadd chain inet {TABLE} {dir}-admin\nadd chain inet {TABLE} {dir}-baseline\nadd chain inet {TABLE} {dir}-denied"
            );
            for map in ["np", "denied"] {
                let _ = writeln!(
                    out,
                    "add map inet {TABLE} {dir}-{map}-pods {{ type ipv4_addr : verdict; }}"
                );
            }
        }
        let _ = writeln!(
            out,
            "add table bridge {TABLE}\nadd chain bridge {TABLE} forward {{ type filter hook forward priority 0; policy accept; }}"
        );
        let mut slots: Vec<&super::Slot> =
            self.slots.iter().flatten().filter(|s| s.refs > 0).collect();
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        for slot in slots {
            declare_set(&mut out, &slot.def, &slot.name);
            write_elements(&mut out, "add", &slot.def, &slot.name, slot.contents.keys());
        }
        for counter in self.counters() {
            let _ = writeln!(out, "add counter inet {TABLE} {}", counter.name);
        }
        for name in policy_chains.keys().chain(derived.keys()) {
            if !is_fixed_chain(name) {
                let _ = writeln!(out, "add chain inet {TABLE} {name}");
            }
        }
        for (name, rules) in policy_chains {
            write_rules(&mut out, &name, rules);
        }
        for (name, rules) in &derived {
            write_rules(&mut out, name, rules);
        }
        for (dir, field) in DIRECTIONS {
            let _ = writeln!(
                out,
                "add rule inet {TABLE} {dir} ct state established,related accept\nadd rule inet {TABLE} {dir} jump {dir}-admin\nadd rule inet {TABLE} {dir} ip {field} vmap @{dir}-np-pods\nadd rule inet {TABLE} {dir} jump {dir}-baseline\nadd rule inet {TABLE} {dir}-denied ip {field} vmap @{dir}-denied-pods\nadd rule inet {TABLE} {dir}-denied drop"
            );
        }
        for (map, elems) in self.maps() {
            write_map(&mut out, "add", &map, elems.iter());
        }
        bridge_rules(&mut out, &self.node.pod_port_prefix);
        out
    }

    /// The transaction that brings the kernel from the state last marked applied (by
    /// [`applied`](Self::applied) or a previous `update`) to this one. An empty script means
    /// nothing changed. The current state counts as applied from now on.
    pub fn update(&mut self) -> String {
        let mut out = String::new();
        // Sets: new ones whole, then element changes of those the kernel has.
        let gone_sets = self.drop_unused_sets();
        let mut new_sets: Vec<SetId> = Vec::new();
        for (id, slot) in self.slots.iter().enumerate() {
            if let Some(slot) = slot {
                if !slot.in_kernel {
                    new_sets.push(id);
                }
            }
        }
        new_sets.sort_by_key(|id| self.slots[*id].as_ref().map(|s| s.name.clone()));
        for &id in &new_sets {
            if let Some(slot) = self.slots[id].as_mut() {
                declare_set(&mut out, &slot.def, &slot.name);
                write_elements(&mut out, "add", &slot.def, &slot.name, slot.contents.keys());
                slot.in_kernel = true;
            }
        }
        let touched = std::mem::take(&mut self.touched);
        let mut changes: BTreeMap<(bool, SetId), Vec<Elem>> = BTreeMap::new();
        for ((id, elem), was) in touched {
            let Some(slot) = &self.slots[id] else {
                continue;
            };
            let now = slot.contents.contains_key(&elem);
            if now != was {
                changes.entry((now, id)).or_default().push(elem);
            }
        }
        for ((add, id), mut elems) in changes {
            if let Some(slot) = &self.slots[id] {
                elems.sort_unstable();
                let verb = if add { "add" } else { "delete" };
                write_elements(&mut out, verb, &slot.def, &slot.name, elems.iter());
            }
        }
        // Counters and chains.
        let counters: BTreeSet<String> = self.counters().into_iter().map(|c| c.name).collect();
        for name in counters.difference(&self.applied.counters) {
            let _ = writeln!(out, "add counter inet {TABLE} {name}");
        }
        let policy_chains: BTreeMap<String, Vec<String>> = self
            .policy_chains()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        let derived = self.derived_chains();
        let dirty = std::mem::take(&mut self.dirty_policy_chains);
        let mut rewrite: Vec<(&String, &Vec<String>, bool)> = Vec::new();
        for name in &dirty {
            if let Some(rules) = policy_chains.get(name) {
                rewrite.push((name, rules, self.applied.policy_chains.contains(name)));
            }
        }
        for (name, rules) in &derived {
            match self.applied.chains.get(name) {
                Some(old) if old == rules => {}
                Some(_) => rewrite.push((name, rules, true)),
                None => rewrite.push((name, rules, false)),
            }
        }
        for (name, _, existed) in &rewrite {
            if !existed && !is_fixed_chain(name) {
                let _ = writeln!(out, "add chain inet {TABLE} {name}");
            }
        }
        for (name, rules, existed) in &rewrite {
            if *existed {
                let _ = writeln!(out, "flush chain inet {TABLE} {name}");
            }
            write_rules(&mut out, name, rules);
        }
        // Map elements: removed and changed keys out, then new values in.
        let maps = self.maps();
        for (map, elems) in &maps {
            let old = self.applied.maps.get(map);
            let gone: Vec<(&Ipv4Addr, &String)> = old
                .into_iter()
                .flatten()
                .filter(|(ip, v)| elems.get(ip) != Some(*v))
                .collect();
            if !gone.is_empty() {
                let keys: Vec<String> = gone.iter().map(|(ip, _)| ip.to_string()).collect();
                let _ = writeln!(
                    out,
                    "delete element inet {TABLE} {map} {{ {} }}",
                    keys.join(", ")
                );
            }
            let came = elems
                .iter()
                .filter(|(ip, v)| old.and_then(|o| o.get(ip)) != Some(*v));
            write_map(&mut out, "add", map, came);
        }
        // Removals: chains (flushed first, so that none refers to another), counters, sets.
        let mut gone_chains: Vec<&String> = self
            .applied
            .chains
            .keys()
            .filter(|n| !derived.contains_key(*n))
            .collect();
        gone_chains.extend(
            self.applied
                .policy_chains
                .iter()
                .filter(|n| !policy_chains.contains_key(*n)),
        );
        for name in &gone_chains {
            let _ = writeln!(out, "flush chain inet {TABLE} {name}");
        }
        for name in &gone_chains {
            let _ = writeln!(out, "delete chain inet {TABLE} {name}");
        }
        for name in self.applied.counters.difference(&counters) {
            let _ = writeln!(out, "delete counter inet {TABLE} {name}");
        }
        for (bridge, name) in gone_sets {
            let family = if bridge { "bridge" } else { "inet" };
            let _ = writeln!(out, "delete set {family} {TABLE} {name}");
        }
        self.applied.chains = derived;
        self.applied.policy_chains = policy_chains.into_keys().collect();
        self.applied.maps = maps;
        self.applied.counters = counters;
        out
    }
}

/// Tier chains exist in every ruleset (created with the base chains).
fn is_fixed_chain(name: &str) -> bool {
    matches!(
        name,
        "ingress-admin" | "egress-admin" | "ingress-baseline" | "egress-baseline"
    )
}

/// `add set …`.
fn declare_set(out: &mut String, def: &SetDef, name: &str) {
    let family = if def.bridge() { "bridge" } else { "inet" };
    let _ = writeln!(
        out,
        "add set {family} {TABLE} {name} {{ {} }}",
        def.kind().declaration()
    );
}

/// `VERB element …` for `elems`, nothing when there are none.
fn write_elements<'a>(
    out: &mut String,
    verb: &str,
    def: &SetDef,
    name: &str,
    elems: impl Iterator<Item = &'a Elem>,
) {
    let list: Vec<String> = elems.map(ToString::to_string).collect();
    if list.is_empty() {
        return;
    }
    let family = if def.bridge() { "bridge" } else { "inet" };
    let _ = writeln!(
        out,
        "{verb} element {family} {TABLE} {name} {{ {} }}",
        list.join(", ")
    );
}

/// `add rule …` for each of `rules` in chain `name`.
fn write_rules(out: &mut String, name: &str, rules: &[String]) {
    for rule in rules {
        let _ = writeln!(out, "add rule inet {TABLE} {name} {rule}");
    }
}

/// `VERB element` of verdict map `map`.
fn write_map<'a>(
    out: &mut String,
    verb: &str,
    map: &str,
    elems: impl Iterator<Item = (&'a Ipv4Addr, &'a String)>,
) {
    let list: Vec<String> = elems.map(|(ip, v)| format!("{ip} : {v}")).collect();
    if list.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{verb} element inet {TABLE} {map} {{ {} }}",
        list.join(", ")
    );
}
