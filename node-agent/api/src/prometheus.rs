// SPDX-License-Identifier: Apache-2.0
//! The Prometheus text exposition format (version 0.0.4) that `weaver`
//! (`GET /metrics` on 6782) and `weave-npc` (6781) both serve: the two
//! helpers every family goes through, so the daemons render alike.

use std::fmt::Write;

/// Appends the `# HELP` and `# TYPE` lines of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_labels() {
        let mut out = String::new();
        family(&mut out, "weave_peers", "gauge", "Peers.");
        assert_eq!(out, "# HELP weave_peers Peers.\n# TYPE weave_peers gauge\n");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
