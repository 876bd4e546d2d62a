// SPDX-License-Identifier: Apache-2.0
//! Prometheus metrics on `--metrics-addr` (default :6781, `GET /metrics`), and the probes
//! `GET /healthz` (the reconcile loop has run within three resync periods, or has not started
//! yet: liveness never depends on the API server) and `GET /readyz` (the caches are synced
//! and the last transaction applied: this node enforces policy).
//!
//! Drop counts come from the per-pod nftables counters of our table, read when scraped, so
//! they reset when the table is rebuilt (Prometheus `rate()` copes with resets). Everything
//! else is kept here by the controller.

use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use nftables::types::NfFamily;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weave_api::prometheus::{escape, family};
use weave_platform::firewall::{CounterValue, Firewall};

use crate::compile::{DropCounter, TABLE};
use crate::error::{Error, Result};
use crate::policy::Rejection;

/// What the controller reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The figures, behind a short-lived lock.
    state: Mutex<Figures>,
}

/// The figures.
#[derive(Debug, Default, Clone)]
struct Figures {
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
}

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

    /// Records an applied transaction.
    pub fn applied(&self, full: bool, seconds: f64) {
        let mut f = self.lock();
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
        family(
            &mut out,
            "weavenpc_blocked_packets_total",
            "counter",
            "Packets of new connections dropped by policy, per local pod and direction.",
        );
        for c in &f.counters {
            let packets = values
                .iter()
                .find(|v| v.name == c.name)
                .map_or(0, |v| v.packets);
            let _ = writeln!(
                out,
                "weavenpc_blocked_packets_total{{namespace=\"{}\",pod=\"{}\",direction=\"{}\"}} {packets}",
                escape(&c.namespace),
                escape(&c.pod),
                c.direction
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
        let counters = vec![DropCounter {
            name: "ingress-denied-x-a".into(),
            namespace: "x".into(),
            pod: "a".into(),
            direction: "ingress",
        }];
        m.compiled(&rejected, &counters, 7);
        m.compiled(&rejected, &counters, 7);
        let text = m.render(&[CounterValue {
            name: "ingress-denied-x-a".into(),
            packets: 3,
        }]);
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
    }
}
