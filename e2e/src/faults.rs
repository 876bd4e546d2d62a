// SPDX-License-Identifier: Apache-2.0
//! Partitions and packet loss, as one nftables table per host namespace.
//!
//! The desired faults (which host pairs are cut, how much loss each host suffers) are kept as
//! plain state; after every change the whole `inet e2e_testbed` table of each affected host is
//! recompiled from that state by [`ruleset`] and replaced in one `nft -f` transaction. So
//! `cut`/`restore`/`set_loss` are idempotent and never leave half-applied rules. These tables
//! live only in host namespaces the test bed created, never in the root namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Name of the table (family `inet`) holding every test-bed fault in a host.
pub(crate) const TABLE: &str = "e2e_testbed";

/// Faults currently requested, by 1-based host index.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Cut host pairs, stored as (smaller, larger).
    cuts: BTreeSet<(usize, usize)>,
    /// Percent of underlay packets dropped on entry, by host (absent = 0).
    loss: BTreeMap<usize, u8>,
}

impl Faults {
    /// Records a cut between `a` and `b`.
    pub(crate) fn cut(&mut self, a: usize, b: usize) {
        self.cuts.insert((a.min(b), a.max(b)));
    }

    /// Forgets a cut between `a` and `b`.
    pub(crate) fn restore(&mut self, a: usize, b: usize) {
        self.cuts.remove(&(a.min(b), a.max(b)));
    }

    /// Sets the loss of host `h` (0 removes it).
    pub(crate) fn set_loss(&mut self, h: usize, percent: u8) {
        if percent == 0 {
            self.loss.remove(&h);
        } else {
            self.loss.insert(h, percent);
        }
    }

    /// Hosts that `h` is currently cut from.
    pub(crate) fn cut_peers(&self, h: usize) -> impl Iterator<Item = usize> + '_ {
        self.cuts.iter().filter_map(move |&(a, b)| {
            if a == h {
                Some(b)
            } else if b == h {
                Some(a)
            } else {
                None
            }
        })
    }

    /// Loss percent of host `h`.
    pub(crate) fn loss(&self, h: usize) -> u8 {
        self.loss.get(&h).copied().unwrap_or(0)
    }
}

/// The `nft -f` script that makes a host's test-bed table match the given faults.
///
/// `blocked` are the addresses the host may neither receive from nor send to; `ifaces` its
/// underlay interfaces; `loss` the percent of packets entering on them to drop. The script
/// first ensures the table exists and deletes it (so the delete never fails), then recreates
/// it only if there is anything to enforce: all in one transaction, so no packet ever sees a
/// half-built table. Chains sit at `raw` priority so dropped packets never reach conntrack.
pub(crate) fn ruleset(blocked: &[Ipv4Addr], ifaces: &[String], loss: u8) -> String {
    let mut script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if blocked.is_empty() && (loss == 0 || ifaces.is_empty()) {
        return script;
    }
    let _ = writeln!(script, "table inet {TABLE} {{");
    if !blocked.is_empty() {
        let set = blocked
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        for (chain, field) in [("input", "saddr"), ("output", "daddr")] {
            let _ = writeln!(
                script,
                "\tchain {chain} {{\n\
                 \t\ttype filter hook {chain} priority raw; policy accept;\n\
                 \t\tip {field} {{ {set} }} drop\n\
                 \t}}"
            );
        }
    }
    if loss > 0 && !ifaces.is_empty() {
        let set = ifaces
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        // nft refuses `numgen random mod 100 < 100` (100 is outside 0..=99): total loss is
        // a plain drop.
        let sample = if loss >= 100 {
            String::new()
        } else {
            format!(" numgen random mod 100 < {loss}")
        };
        let _ = writeln!(
            script,
            "\tchain prerouting {{\n\
             \t\ttype filter hook prerouting priority raw; policy accept;\n\
             \t\tiifname {{ {set} }}{sample} drop\n\
             \t}}"
        );
    }
    script.push_str("}\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_enforce_only_deletes() {
        assert_eq!(
            ruleset(&[], &["ul0".into()], 0),
            "table inet e2e_testbed\ndelete table inet e2e_testbed\n"
        );
    }

    #[test]
    fn cut_and_loss_compile_to_one_table() {
        let script = ruleset(
            &[Ipv4Addr::new(10, 250, 0, 2), Ipv4Addr::new(10, 251, 3, 2)],
            &["l2".into(), "l3".into()],
            30,
        );
        let expected = "table inet e2e_testbed
delete table inet e2e_testbed
table inet e2e_testbed {
\tchain input {
\t\ttype filter hook input priority raw; policy accept;
\t\tip saddr { 10.250.0.2, 10.251.3.2 } drop
\t}
\tchain output {
\t\ttype filter hook output priority raw; policy accept;
\t\tip daddr { 10.250.0.2, 10.251.3.2 } drop
\t}
\tchain prerouting {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname { \"l2\", \"l3\" } numgen random mod 100 < 30 drop
\t}
}
";
        assert_eq!(script, expected);
    }

    #[test]
    fn total_loss_is_a_plain_drop() {
        let script = ruleset(&[], &["ul0".into()], 100);
        assert!(
            script.contains("\t\tiifname { \"ul0\" } drop\n"),
            "{script}"
        );
    }

    #[test]
    fn faults_are_symmetric_and_idempotent() {
        let mut faults = Faults::default();
        faults.cut(2, 1);
        faults.cut(1, 2);
        faults.cut(3, 1);
        assert_eq!(faults.cut_peers(1).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(faults.cut_peers(2).collect::<Vec<_>>(), [1]);
        faults.restore(1, 2);
        faults.restore(2, 1);
        assert_eq!(faults.cut_peers(2).count(), 0);
        faults.set_loss(2, 40);
        assert_eq!(faults.loss(2), 40);
        faults.set_loss(2, 0);
        assert_eq!(faults.loss(2), 0);
    }
}
