// SPDX-License-Identifier: Apache-2.0
//! Running upstream conformance suites against weave on the real cluster, and reading their
//! results: the Kubernetes e2e suite (`e2e.test` under `ginkgo`, JUnit report) and sig-network's
//! ClusterNetworkPolicy suite (`npa-conformance.test`, a Go test binary).
//!
//! [`EXPECTED`] says, per test that cannot pass here, why: a feature this kernel lacks, an
//! image no registry can serve offline, a cluster add-on the test bed does not run. A test
//! outside that list must pass; one inside it that passes is reported too, so the list
//! shrinks when its reason goes away.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cluster::Cluster;

/// How a test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Passed.
    Passed,
    /// Failed.
    Failed,
    /// Skipped by the suite.
    Skipped,
}

impl Status {
    /// The word for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// One test's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The test's full name.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// Seconds it took.
    pub seconds: f64,
    /// The failure or skip message (first line).
    pub message: String,
}

/// Tests that cannot pass on this test bed, by a substring of their name, and why.
pub const EXPECTED: &[(&str, &str)] = &[
    (
        "SCTP",
        "this kernel has no SCTP sockets (CONFIG_IP_SCTP is not set): the SCTP servers never start; \
         weave-npc compiles SCTP rules (golden tests), the traffic cannot exist here",
    ),
    (
        "[sig-network] DNS ",
        "needs cluster DNS (CoreDNS): its image cannot be pulled offline and the test bed runs no \
         DNS add-on; weaveDNS serves weave.local, not cluster.local",
    ),
    (
        "DNS for the cluster",
        "needs cluster DNS (CoreDNS), see above",
    ),
];

/// Why `name` may fail here, if it is one of [`EXPECTED`].
pub fn expected(name: &str) -> Option<&'static str> {
    EXPECTED
        .iter()
        .find(|(pattern, _)| name.contains(pattern))
        .map(|(_, why)| *why)
}

/// Runs `e2e.test` under ginkgo with `parallel` processes against `cluster`, focused on
/// `focus` and skipping `skip` (regular expressions, `skip` may be empty); returns the
/// outcome of every test that ran or was skipped inside the focus. The JUnit report and the
/// log go to `dir`.
pub fn run_e2e(
    cluster: &Cluster,
    focus: &str,
    skip: &str,
    parallel: usize,
    dir: &Path,
) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let report = dir.join("junit.xml");
    let log = std::fs::File::create(dir.join("e2e.log"))?;
    let tools = cluster.tools();
    let mut cmd = Command::new(tools.bin("ginkgo"));
    cmd.arg(format!("--nodes={parallel}"))
        .args(["--no-color", "--timeout=120m"])
        .arg(format!("--junit-report={}", report.display()))
        .arg(tools.bin("e2e.test"))
        .arg("--")
        .arg("--provider=local")
        .arg(format!("--kubeconfig={}", cluster.kubeconfig().display()))
        .arg(format!("--ginkgo.focus={focus}"))
        .current_dir(dir)
        .stdout(log.try_clone()?)
        .stderr(log);
    if !skip.is_empty() {
        cmd.arg(format!("--ginkgo.skip={skip}"));
    }
    // The exit status only says whether something failed: the report says what.
    let _ = cmd.status().context("run ginkgo e2e.test")?;
    let xml = std::fs::read_to_string(&report)
        .with_context(|| format!("read {} (see e2e.log beside it)", report.display()))?;
    Ok(parse_junit(&xml))
}

/// The `[It]` test cases of a ginkgo JUnit report (suite set-up nodes are left out; specs
/// outside the focus are reported skipped by ginkgo and left out too).
pub fn parse_junit(xml: &str) -> Vec<Outcome> {
    let mut out = Vec::new();
    for case in xml.split("<testcase ").skip(1) {
        let head = format!(" {}", case.split('>').next().unwrap_or_default());
        let head = head.as_str();
        let name = unescape(&attribute(head, "name"));
        let Some(name) = name.strip_prefix("[It] ") else {
            continue;
        };
        let status = match attribute(head, "status").as_str() {
            "passed" => Status::Passed,
            "skipped" | "pending" => Status::Skipped,
            _ => Status::Failed,
        };
        let body = case.split("</testcase>").next().unwrap_or_default();
        let message = ["<failure message=\"", "<skipped message=\""]
            .iter()
            .find_map(|tag| body.split(tag).nth(1))
            .and_then(|m| m.split('"').next())
            .map(|m| unescape(m).lines().next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        // Specs the focus left out are reported skipped with this bare message.
        if status == Status::Skipped && message == "skipped" {
            continue;
        }
        out.push(Outcome {
            name: name.to_owned(),
            status,
            seconds: attribute(head, "time").parse().unwrap_or(0.0),
            message,
        });
    }
    out
}

/// Runs sig-network's ClusterNetworkPolicy conformance suite against `cluster` with
/// `features` (comma-separated, empty for the standard ones); the output goes to `dir`.
pub fn run_cluster_policy_suite(
    cluster: &Cluster,
    features: &str,
    dir: &Path,
) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // The suite's manifests name agnhost 2.45; ours answers to that name too.
    let agnhost = cluster.image("agnhost")?.to_owned();
    cluster.tag_image(&agnhost, "registry.k8s.io/e2e-test-images/agnhost:2.45")?;
    let mut cmd = Command::new(cluster.tools().bin("npa-conformance.test"));
    cmd.args([
        "-test.v",
        "-test.timeout=120m",
        "-test.run",
        "TestConformance",
    ])
    .env("KUBECONFIG", cluster.kubeconfig())
    .current_dir(dir);
    if !features.is_empty() {
        cmd.arg(format!("-supported-features={features}"));
    }
    let output = cmd.output().context("run npa-conformance.test")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    std::fs::write(dir.join("conformance.log"), &text)?;
    Ok(parse_go_test(&text))
}

/// The subtests of a `go test -v` run (`--- PASS: TestConformance/Name (1.23s)`). A run
/// whose top-level test failed with no failed subtest (the suite's setup failed, so no test
/// ran) or that never reported a result gives one failed outcome [`SUITE`], so that it
/// cannot pass as a run with nothing to report.
pub fn parse_go_test(text: &str) -> Vec<Outcome> {
    let mut out = subtests(text);
    let top_failed = text
        .lines()
        .any(|l| l.starts_with("--- FAIL: TestConformance ") || l.starts_with("FAIL\t"));
    let top_passed = text
        .lines()
        .any(|l| l.starts_with("--- PASS: TestConformance "));
    let sub_failed = out.iter().any(|o| o.status == Status::Failed);
    if (top_failed && !sub_failed) || (!top_failed && !top_passed) {
        let message = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Messages:"))
            .map(|m| m.trim().to_owned())
            .unwrap_or_else(|| {
                if top_failed {
                    "the suite failed outside its tests".to_owned()
                } else {
                    "the test binary reported no result".to_owned()
                }
            });
        out.push(Outcome {
            name: SUITE.to_owned(),
            status: Status::Failed,
            seconds: 0.0,
            message,
        });
    }
    out
}

/// The outcome standing for the go test run as a whole (see [`parse_go_test`]).
pub const SUITE: &str = "TestConformance (the suite's setup, outside any test)";

/// The subtests' outcomes of a `go test -v` run.
fn subtests(text: &str) -> Vec<Outcome> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let (status, rest) = if let Some(r) = trimmed.strip_prefix("--- PASS: ") {
            (Status::Passed, r)
        } else if let Some(r) = trimmed.strip_prefix("--- FAIL: ") {
            (Status::Failed, r)
        } else if let Some(r) = trimmed.strip_prefix("--- SKIP: ") {
            (Status::Skipped, r)
        } else {
            continue;
        };
        let (name, time) = rest.rsplit_once(" (").unwrap_or((rest, "0s)"));
        // Only the suite's tests, not their steps nor the top-level test.
        if name.matches('/').count() != 1 {
            continue;
        }
        let message = lines
            .get(i + 1)
            .map(|l| l.trim().to_owned())
            .filter(|_| status != Status::Passed)
            .unwrap_or_default();
        out.push(Outcome {
            name: name.trim_start_matches("TestConformance/").to_owned(),
            status,
            seconds: time.trim_end_matches("s)").parse().unwrap_or(0.0),
            message,
        });
    }
    out
}

/// A Markdown table of `outcomes`, with the reason of every test that did not pass.
pub fn report(title: &str, outcomes: &[Outcome]) -> String {
    let mut sorted = outcomes.to_vec();
    sorted.sort_by(|a, b| a.status.cmp(&b.status).then(a.name.cmp(&b.name)));
    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    let mut out = format!(
        "### {title}\n\n{} passed, {} failed, {} skipped.\n\n| test | result | seconds | why not passed |\n|---|---|---|---|\n",
        count(Status::Passed),
        count(Status::Failed),
        count(Status::Skipped)
    );
    for o in sorted {
        let why = match o.status {
            Status::Passed => String::new(),
            _ => expected(&o.name)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("UNEXPECTED: {}", o.message)),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} |",
            o.name.replace('|', "\\|"),
            o.status.name(),
            o.seconds,
            why.replace('|', "\\|")
        );
    }
    out
}

/// The tests that did not pass and are not in [`EXPECTED`].
pub fn unexpected(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| o.status != Status::Passed && expected(&o.name).is_none())
        .collect()
}

/// The value of attribute `name` in a tag's text.
fn attribute(tag: &str, name: &str) -> String {
    tag.split(&format!(" {name}=\""))
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

/// XML entities back to text.
fn unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#xA;", "\n")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_cases_are_read() {
        let xml = r#"<testsuites><testsuite>
<testcase name="[ReportBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.1"></testcase>
<testcase name="[It] [sig-network] Netpol should support &#39;default-deny-ingress&#39;" classname="K" status="passed" time="15.5"></testcase>
<testcase name="[It] [sig-network] Netpol SCTP should work" classname="K" status="failed" time="20"><failure message="unable to initialize resources: 1 HTTP servers are not ready" type="failed">x</failure></testcase>
<testcase name="[It] [sig-apps] other" classname="K" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
</testsuite></testsuites>"#;
        let got = parse_junit(xml);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].name,
            "[sig-network] Netpol should support 'default-deny-ingress'"
        );
        assert_eq!((got[0].status, got[0].seconds), (Status::Passed, 15.5));
        assert_eq!(got[1].status, Status::Failed);
        assert!(got[1].message.contains("not ready"));
        assert!(unexpected(&got).is_empty(), "SCTP is expected");
        let table = report("netpol", &got);
        assert!(table.contains("1 passed, 1 failed, 0 skipped"), "{table}");
        assert!(table.contains("CONFIG_IP_SCTP"), "{table}");
    }

    #[test]
    fn go_test_subtests_are_read() {
        let text = "=== RUN   TestConformance\n    --- PASS: TestConformance/CNPAdminTierIngressTCP (12.30s)\n        --- PASS: TestConformance/CNPAdminTierIngressTCP/step (1.00s)\n    --- FAIL: TestConformance/CNPBaseline (3.10s)\n        tier.go:12: expected allowed\n--- FAIL: TestConformance (15.40s)\n";
        let got = parse_go_test(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "CNPAdminTierIngressTCP");
        assert_eq!((got[0].status, got[0].seconds), (Status::Passed, 12.3));
        assert_eq!(got[1].status, Status::Failed);
        assert_eq!(got[1].message, "tier.go:12: expected allowed");
        assert_eq!(unexpected(&got).len(), 1);
    }

    #[test]
    fn a_suite_that_fails_before_its_tests_is_a_failure() {
        let text = "=== RUN   TestConformance\n    suite.go:175: \n        \tError:      \tReceived unexpected error:\n        \tMessages:   \terror waiting for namespaces to be ready\n--- FAIL: TestConformance (301.96s)\nFAIL\n";
        let got = parse_go_test(text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].name.as_str(), got[0].status),
            (SUITE, Status::Failed)
        );
        assert_eq!(got[0].message, "error waiting for namespaces to be ready");
        assert_eq!(unexpected(&got).len(), 1);
        let got = parse_go_test("=== RUN   TestConformance\n");
        assert_eq!(got.len(), 1, "no result at all: {got:?}");
        assert_eq!(got[0].message, "the test binary reported no result");
        let ok = parse_go_test(
            "    --- PASS: TestConformance/A (1.00s)\n--- PASS: TestConformance (1.00s)\nPASS\n",
        );
        assert_eq!(ok.len(), 1, "{ok:?}");
        assert!(unexpected(&ok).is_empty());
    }
}
