// SPDX-License-Identifier: Apache-2.0
//! Prometheus metrics on `--metrics-addr` (default :6781, `GET /metrics`), and the probes
//! `GET /healthz` (the reconcile loop has run within three resync periods, or has not started
//! yet: liveness never depends on the API server) and `GET /readyz` (the caches are synced
//! and the last transaction applied: this node enforces policy).
//!
//! Drop counts come from the per-pod nftables counters of our table, read when scraped, so
//! they reset when the table is rebuilt (Prometheus `rate()` copes with resets). Everything
//! else is kept here by the controller.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use nftables::types::NfFamily;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weave_api::prometheus::{escape, family, Histogram};
use weave_platform::firewall::{CounterValue, Firewall};

use crate::compile::{CounterOwner, DropCounter, TABLE};
use crate::error::{Error, Result};
use crate::policy::Rejection;

/// What the controller reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The figures, behind a short-lived lock.
    state: Mutex<Figures>,
}

/// Upper bounds of `weavenpc_reconcile_duration_seconds`.
const RECONCILE_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The figures.
#[derive(Debug, Clone)]
struct Figures {
    /// Reconciles that changed the ruleset: from the start of the compile to the
    /// transaction applied.
    reconcile: Histogram,
    /// Currently rejected policies and why.
    rejected: Vec<(String, String)>,
    /// Rejections seen, counted once per policy version.
    enforcement_errors: u64,
    /// Local pods' drop counters.
    counters: Vec<DropCounter>,
    /// Full rebuilds applied.
    full_applies: u64,
    /// Set-only updates applied.
    set_applies: u64,
    /// Failed transactions.
    apply_errors: u64,
    /// Rules in the ruleset.
    rules: usize,
    /// Seconds the last transaction took (compile excluded).
    last_apply_seconds: f64,
    /// Whether the last transaction succeeded (`false` before the first).
    enforcing: bool,
    /// When the reconcile loop last ran.
    ticked: Option<tokio::time::Instant>,
    /// Logged denied connections by (direction, policy).
    denied: BTreeMap<(String, String), u64>,
    /// Drop log entries not logged because they repeat a flow.
    repeated: u64,
    /// Drop log datagrams lost (socket buffer or queue full).
    lost: u64,
    /// Malformed drop log messages.
    malformed: u64,
}

impl Default for Figures {
    fn default() -> Self {
        Self {
            reconcile: Histogram::new(RECONCILE_BOUNDS),
            rejected: Vec::new(),
            enforcement_errors: 0,
            counters: Vec::new(),
            full_applies: 0,
            set_applies: 0,
            apply_errors: 0,
            rules: 0,
            last_apply_seconds: 0.0,
            enforcing: false,
            ticked: None,
            denied: BTreeMap::new(),
            repeated: 0,
            lost: 0,
            malformed: 0,
        }
    }
}

/// Most (direction, policy) series of `weavenpc_denied_connections_total`; later ones are
/// counted under `policy="other"`.
const MAX_DENIED_SERIES: usize = 10_000;

impl Metrics {
    /// Records the outcome of a compile: rejections (a new one counts as an error) and the
    /// pods' drop counters.
    pub fn compiled(&self, rejected: &[Rejection], counters: &[DropCounter], rules: usize) {
        let mut f = self.lock();
        let now: Vec<(String, String)> = rejected
            .iter()
            .map(|r| (r.policy.clone(), r.reason.clone()))
            .collect();
        let new = now.iter().filter(|r| !f.rejected.contains(r)).count();
        f.enforcement_errors += new as u64;
        f.rejected = now;
        f.counters = counters.to_vec();
        f.rules = rules;
    }

    /// Records an applied transaction that took `seconds`, in a reconcile that took
    /// `reconcile_seconds` from the start of its compile.
    pub fn applied(&self, full: bool, seconds: f64, reconcile_seconds: f64) {
        let mut f = self.lock();
        f.reconcile.observe(reconcile_seconds);
        f.enforcing = true;
        if full {
            f.full_applies += 1;
        } else {
            f.set_applies += 1;
        }
        f.last_apply_seconds = seconds;
    }

    /// Records a failed transaction.
    pub fn apply_failed(&self) {
        let mut f = self.lock();
        f.apply_errors += 1;
        f.enforcing = false;
    }

    /// Records a logged denied connection, counted once for each policy in `policies` (or
    /// `default` when none is named).
    pub fn drop_logged(&self, direction: &str, policies: &[String]) {
        let mut f = self.lock();
        let names: Vec<&str> = if policies.is_empty() {
            vec!["default"]
        } else {
            policies.iter().map(String::as_str).collect()
        };
        for name in names {
            let full = f.denied.len() >= MAX_DENIED_SERIES;
            let key = (direction.to_owned(), name.to_owned());
            let key = if full && !f.denied.contains_key(&key) {
                (direction.to_owned(), "other".to_owned())
            } else {
                key
            };
            *f.denied.entry(key).or_insert(0) += 1;
        }
    }

    /// Records a drop log entry that repeated a flow already logged.
    pub fn drop_log_repeated(&self) {
        self.lock().repeated += 1;
    }

    /// Records `n` lost drop log datagrams.
    pub fn drop_log_lost(&self, n: u64) {
        self.lock().lost += n;
    }

    /// Records a malformed drop log message.
    pub fn drop_log_malformed(&self) {
        self.lock().malformed += 1;
    }

    /// Records that the reconcile loop ran.
    pub fn ticked(&self) {
        self.lock().ticked = Some(tokio::time::Instant::now());
    }

    /// Liveness: `Err` when the loop has stopped running for longer than `stall`.
    pub fn alive(&self, stall: std::time::Duration) -> std::result::Result<(), String> {
        match self.lock().ticked {
            Some(at) if at.elapsed() > stall => Err(format!(
                "the reconcile loop has not run for {}s",
                at.elapsed().as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Readiness: `Err` with the reason until policy is enforced.
    pub fn ready(&self) -> std::result::Result<(), String> {
        let f = self.lock();
        match (f.ticked, f.enforcing) {
            (None, _) => Err("waiting for the first list of pods, namespaces and policies".into()),
            (Some(_), false) => Err("the last nftables transaction failed".into()),
            (Some(_), true) => Ok(()),
        }
    }

    /// Renders the text exposition format, with drop counts from `values`.
    pub fn render(&self, values: &[CounterValue]) -> String {
        let f = self.lock().clone();
        let mut out = String::new();
        family(
            &mut out,
            "weavenpc_policy_rejected",
            "gauge",
            "Policies that could not be enforced as written (their pods stay isolated).",
        );
        for (policy, reason) in &f.rejected {
            let _ = writeln!(
                out,
                "weavenpc_policy_rejected{{policy=\"{}\",reason=\"{}\"}} 1",
                escape(policy),
                escape(reason)
            );
        }
        family(
            &mut out,
            "weavenpc_policy_enforcement_errors_total",
            "counter",
            "Policy rejections seen.",
        );
        let _ = writeln!(
            out,
            "weavenpc_policy_enforcement_errors_total {}",
            f.enforcement_errors
        );
        family(
            &mut out,
            "weavenpc_applies_total",
            "counter",
            "nftables transactions applied, by kind.",
        );
        let _ = writeln!(
            out,
            "weavenpc_applies_total{{kind=\"full\"}} {}",
            f.full_applies
        );
        let _ = writeln!(
            out,
            "weavenpc_applies_total{{kind=\"sets\"}} {}",
            f.set_applies
        );
        family(
            &mut out,
            "weavenpc_apply_errors_total",
            "counter",
            "nftables transactions that failed.",
        );
        let _ = writeln!(out, "weavenpc_apply_errors_total {}", f.apply_errors);
        family(
            &mut out,
            "weavenpc_rules",
            "gauge",
            "Rules in the weave-npc ruleset.",
        );
        let _ = writeln!(out, "weavenpc_rules {}", f.rules);
        family(
            &mut out,
            "weavenpc_last_apply_seconds",
            "gauge",
            "Duration of the last nftables transaction.",
        );
        let _ = writeln!(out, "weavenpc_last_apply_seconds {}", f.last_apply_seconds);
        f.reconcile.render(
            &mut out,
            "weavenpc_reconcile_duration_seconds",
            "Reconciles that changed the ruleset, from the start of the compile to the nftables transaction applied.",
        );
        family(
            &mut out,
            "weavenpc_blocked_packets_total",
            "counter",
            "Packets of new connections dropped by policy, per local pod and direction.",
        );
        let packets = |name: &str| {
            values
                .iter()
                .find(|v| v.name == name)
                .map_or(0, |v| v.packets)
        };
        for c in &f.counters {
            if let CounterOwner::Pod(namespace, pod) = &c.owner {
                let _ = writeln!(
                    out,
                    "weavenpc_blocked_packets_total{{namespace=\"{}\",pod=\"{}\",direction=\"{}\"}} {}",
                    escape(namespace),
                    escape(pod),
                    c.direction,
                    packets(&c.name)
                );
            }
        }
        family(
            &mut out,
            "weavenpc_cluster_policy_denied_packets_total",
            "counter",
            "Packets dropped by a Deny rule of a ClusterNetworkPolicy.",
        );
        for c in &f.counters {
            if let CounterOwner::ClusterRule(policy, rule) = &c.owner {
                let _ = writeln!(
                    out,
                    "weavenpc_cluster_policy_denied_packets_total{{policy=\"{}\",rule=\"{}\",direction=\"{}\"}} {}",
                    escape(policy),
                    escape(rule),
                    c.direction,
                    packets(&c.name)
                );
            }
        }
        family(
            &mut out,
            "weavenpc_denied_connections_total",
            "counter",
            "Denied connection attempts written to the drop log, per direction and policy (each isolating NetworkPolicy counts the attempt).",
        );
        for ((direction, policy), n) in &f.denied {
            let _ = writeln!(
                out,
                "weavenpc_denied_connections_total{{direction=\"{direction}\",policy=\"{}\"}} {n}",
                escape(policy)
            );
        }
        family(
            &mut out,
            "weavenpc_drop_log_entries_total",
            "counter",
            "Drop log entries by outcome: repeated (a flow already logged), lost (socket or queue full), malformed.",
        );
        for (outcome, n) in [
            ("repeated", f.repeated),
            ("lost", f.lost),
            ("malformed", f.malformed),
        ] {
            let _ = writeln!(
                out,
                "weavenpc_drop_log_entries_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        out
    }

    /// Locks the figures; a panic elsewhere must not stop metrics.
    fn lock(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves `GET /metrics` on `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    firewall: Arc<dyn Firewall>,
    stall: std::time::Duration,
    cancel: CancellationToken,
) -> Result<()> {
    let probes = Router::new()
        .route(
            "/healthz",
            get(move |State(m): State<Arc<Metrics>>| async move { probe(m.alive(stall), "ok") }),
        )
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move { probe(m.ready(), "ready") }),
        )
        .with_state(Arc::clone(&metrics));
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state((metrics, firewall))
        .merge(probes);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(Error::Serve)
}

/// A probe's answer: 200 with `good`, or 503 with the reason.
fn probe(state: std::result::Result<(), String>, good: &str) -> (axum::http::StatusCode, String) {
    match state {
        Ok(()) => (axum::http::StatusCode::OK, format!("{good}\n")),
        Err(why) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("{why}\n"),
        ),
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// The `/metrics` handler.
async fn scrape(State((metrics, firewall)): State<(Arc<Metrics>, Arc<dyn Firewall>)>) -> String {
    let values = tokio::task::spawn_blocking(move || firewall.counters(NfFamily::INet, TABLE))
        .await
        .ok()
        .and_then(|r| {
            r.map_err(|e| tracing::warn!(error = %e, "read drop counters"))
                .ok()
        })
        .unwrap_or_default();
    metrics.render(&values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_and_drops_are_rendered() {
        let m = Metrics::default();
        let rejected = vec![Rejection {
            policy: "x/bad".into(),
            reason: "unknown protocol \"ICMP\"".into(),
            isolate: None,
        }];
        let counters = vec![
            DropCounter {
                name: "ingress-denied-x-a".into(),
                owner: CounterOwner::Pod("x".into(), "a".into()),
                direction: "ingress",
            },
            DropCounter {
                name: "cnp-denied/p/ingress/0".into(),
                owner: CounterOwner::ClusterRule("p".into(), "deny-all".into()),
                direction: "ingress",
            },
        ];
        m.compiled(&rejected, &counters, 7);
        m.compiled(&rejected, &counters, 7);
        m.drop_logged("ingress", &["x/deny".to_owned(), "x/web".to_owned()]);
        m.drop_logged("ingress", &["x/deny".to_owned()]);
        m.drop_log_repeated();
        m.applied(true, 0.03, 0.04);
        m.applied(false, 0.001, 0.002);
        let text = m.render(&[
            CounterValue {
                name: "ingress-denied-x-a".into(),
                packets: 3,
            },
            CounterValue {
                name: "cnp-denied/p/ingress/0".into(),
                packets: 5,
            },
        ]);
        assert!(text.contains("weavenpc_policy_rejected{policy=\"x/bad\",reason=\"unknown protocol \\\"ICMP\\\"\"} 1"), "{text}");
        assert!(
            text.contains("weavenpc_policy_enforcement_errors_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "weavenpc_blocked_packets_total{namespace=\"x\",pod=\"a\",direction=\"ingress\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("weavenpc_rules 7"), "{text}");
        assert!(
            text.contains("weavenpc_reconcile_duration_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weavenpc_reconcile_duration_seconds_bucket{le=\"0.05\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("weavenpc_reconcile_duration_seconds_count 2\n"));
        assert!(text.contains("weavenpc_applies_total{kind=\"full\"} 1\n"));
        assert!(
            text.contains("weavenpc_cluster_policy_denied_packets_total{policy=\"p\",rule=\"deny-all\",direction=\"ingress\"} 5"),
            "{text}"
        );
        assert!(
            text.contains(
                "weavenpc_denied_connections_total{direction=\"ingress\",policy=\"x/deny\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("weavenpc_drop_log_entries_total{outcome=\"repeated\"} 1"),
            "{text}"
        );
    }
}
