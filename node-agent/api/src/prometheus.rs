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

/// A histogram with fixed upper bounds (seconds, ascending): cumulative
/// counts per bound, the sum and the count, as the format wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts one observation.
    pub fn observe(&mut self, value: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *b {
                *c += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    /// Appends the family: HELP, TYPE, the `_bucket` lines, `_sum` and `_count`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, "histogram", help);
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.01, 0.1, 1.0]);
        for v in [0.005, 0.05, 0.05, 2.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "weavenpc_x_seconds", "X.");
        assert_eq!(
            out,
            "# HELP weavenpc_x_seconds X.\n# TYPE weavenpc_x_seconds histogram\n\
             weavenpc_x_seconds_bucket{le=\"0.01\"} 1\n\
             weavenpc_x_seconds_bucket{le=\"0.1\"} 3\n\
             weavenpc_x_seconds_bucket{le=\"1\"} 3\n\
             weavenpc_x_seconds_bucket{le=\"+Inf\"} 4\n\
             weavenpc_x_seconds_sum 2.105\n\
             weavenpc_x_seconds_count 4\n"
        );
    }

    #[test]
    fn families_and_labels() {
        let mut out = String::new();
        family(&mut out, "weave_peers", "gauge", "Peers.");
        assert_eq!(out, "# HELP weave_peers Peers.\n# TYPE weave_peers gauge\n");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
