// SPDX-License-Identifier: Apache-2.0
//! Controller tests against a scripted mock API (kube-rs convention: a `tower-test` mock
//! service driven by a `Scenario`), with the in-memory `FakeFirewall`.
//!
//! The three reflectors list and watch concurrently, so the mock answers by request path:
//! each kind has a queue of scripted answers (a list, a watch that delivers events and ends,
//! a watch that fails with 410 Gone, or a watch that stays open). Every expectation waits at
//! most 1 s (3 s where the watcher's error backoff sits in between), so a missing call fails
//! fast instead of hanging.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use weave_npc::controller::Controller;
use weave_npc::metrics::Metrics;
use weave_npc::NodeConfig;
use weave_platform::firewall::FakeFirewall;

/// Expectations wait this long.
const TIMEOUT: Duration = Duration::from_secs(1);
/// After a watch error the watcher backs off (about 1 s) before relisting.
const TIMEOUT_AFTER_ERROR: Duration = Duration::from_secs(3);

/// One scripted answer.
#[derive(Debug, Clone)]
enum Answer {
    /// A list with these items at this resource version.
    List(Vec<Value>, u64),
    /// A watch delivering these (type, object) events, then ending normally.
    Events(Vec<(&'static str, Value)>),
    /// A watch failing with `410 Gone` (resource version too old), which forces a relist.
    Gone,
    /// A watch that stays open without events.
    Idle,
}

/// The scripted story of a test.
enum Scenario {
    /// Initial lists, then idle watches.
    InitialSync,
    /// A pod arrives through a watch, which then ends and is restarted.
    WatchRestart,
    /// The pod watch fails with 410 Gone; the relist brings a different pod set.
    RelistAfterGone,
    /// A pod on another node, selected by a policy peer, arrives through the watch.
    RemotePodChurn,
}

/// Namespace `name`.
fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "resourceVersion": "1", "labels": {"ns": name}}})
}

/// Pod `ns/name` on node n1 with `ip`.
fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "resourceVersion": "2", "labels": {"pod": name}},
           "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

/// A deny-all-ingress policy in `ns`.
fn deny(ns: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "deny", "namespace": ns, "resourceVersion": "3"},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
}

impl Scenario {
    /// Answers per collection path, in order.
    fn script(&self) -> BTreeMap<&'static str, VecDeque<Answer>> {
        let pods = "/api/v1/pods";
        let namespaces = "/api/v1/namespaces";
        let policies = "/apis/networking.k8s.io/v1/networkpolicies";
        let nodes = "/api/v1/nodes";
        let idle_nodes = || VecDeque::from([Answer::List(Vec::new(), 10), Answer::Idle]);
        let base = |pod_answers: Vec<Answer>| {
            BTreeMap::from([
                (nodes, idle_nodes()),
                (pods, pod_answers.into()),
                (
                    namespaces,
                    VecDeque::from([Answer::List(vec![namespace("x")], 10), Answer::Idle]),
                ),
                (
                    policies,
                    VecDeque::from([Answer::List(vec![deny("x")], 10), Answer::Idle]),
                ),
            ])
        };
        if let Scenario::RemotePodChurn = self {
            let mut remote = pod("y", "r", "10.32.1.9");
            remote["spec"]["nodeName"] = json!("n2");
            let from_y = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "from-y", "namespace": "x", "resourceVersion": "4"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}});
            return BTreeMap::from([
                (nodes, idle_nodes()),
                (
                    pods,
                    VecDeque::from([
                        Answer::List(vec![pod("x", "a", "10.32.0.1")], 10),
                        Answer::Events(vec![("ADDED", remote)]),
                        Answer::Idle,
                    ]),
                ),
                (
                    namespaces,
                    VecDeque::from([
                        Answer::List(vec![namespace("x"), namespace("y")], 10),
                        Answer::Idle,
                    ]),
                ),
                (
                    policies,
                    VecDeque::from([Answer::List(vec![from_y], 10), Answer::Idle]),
                ),
            ]);
        }
        match self {
            Scenario::InitialSync => base(vec![
                Answer::List(vec![pod("x", "a", "10.32.0.1")], 10),
                Answer::Idle,
            ]),
            Scenario::WatchRestart => base(vec![
                Answer::List(vec![pod("x", "a", "10.32.0.1")], 10),
                Answer::Events(vec![("ADDED", pod("x", "b", "10.32.0.2"))]),
                Answer::Idle,
            ]),
            Scenario::RelistAfterGone | Scenario::RemotePodChurn => base(vec![
                Answer::List(vec![pod("x", "a", "10.32.0.1")], 10),
                Answer::Gone,
                Answer::List(vec![pod("x", "c", "10.32.0.3")], 20),
                Answer::Idle,
            ]),
        }
    }

    /// Serves the script on `handle` until the test ends; unscripted requests fail the test.
    /// Watch events are delivered only once the controller applied its first ruleset, so
    /// that they are changes to a synced state whatever the order the reflectors start in.
    fn run(
        self,
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        firewall: Arc<FakeFirewall>,
    ) -> tokio::task::JoinHandle<()> {
        let mut script = self.script();
        tokio::spawn(async move {
            // Idle watches are held open by keeping their responders.
            let mut idle = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let path = request.uri().path().to_owned();
                let query = request.uri().query().unwrap_or("").to_owned();
                if path == "/apis/policy.networking.k8s.io/v1beta1" {
                    // Discovery: the ClusterNetworkPolicy CRD is not installed.
                    send.send_response(
                        Response::builder()
                            .status(404)
                            .body(Body::from(b"{}".to_vec()))
                            .expect("response"),
                    );
                    continue;
                }
                let answer = script
                    .get_mut(path.as_str())
                    .and_then(VecDeque::pop_front)
                    .unwrap_or_else(|| panic!("unscripted request {path}?{query}"));
                let is_watch = query.contains("watch=true");
                assert_eq!(
                    is_watch,
                    !matches!(answer, Answer::List(..)),
                    "{path}?{query} vs {answer:?}"
                );
                let events = matches!(answer, Answer::Events(_));
                let body = match answer {
                    Answer::List(items, rv) => {
                        json!({"metadata": {"resourceVersion": rv.to_string()}, "items": items})
                            .to_string()
                    }
                    Answer::Events(events) => events
                        .into_iter()
                        .map(|(t, o)| format!("{}\n", json!({"type": t, "object": o})))
                        .collect(),
                    Answer::Gone => format!(
                        "{}\n",
                        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                               "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}})
                    ),
                    Answer::Idle => {
                        idle.push(send);
                        continue;
                    }
                };
                let response = Response::builder()
                    .status(200)
                    .body(Body::from(body.into_bytes()))
                    .expect("response");
                if events {
                    let firewall = Arc::clone(&firewall);
                    tokio::spawn(async move {
                        let synced = tokio::time::timeout(TIMEOUT, async {
                            while firewall.applied().is_empty() {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        })
                        .await;
                        assert!(synced.is_ok(), "no first apply before the watch events");
                        send.send_response(response);
                    });
                } else {
                    send.send_response(response);
                }
            }
        })
    }
}

/// Starts a controller on a mock API scripted by `scenario`.
fn start(
    scenario: Scenario,
) -> (
    Arc<FakeFirewall>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let firewall = Arc::new(FakeFirewall::default());
    let server = scenario.run(handle, Arc::clone(&firewall));
    let client = Client::new(service, "default");
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let controller = Controller::new(
        client,
        Arc::clone(&firewall) as Arc<dyn weave_platform::firewall::Firewall>,
        node,
        Arc::new(Metrics::default()),
        Duration::from_secs(3600),
    );
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        controller
            .run(c)
            .await
            .expect("controller runs until cancelled");
    });
    (firewall, cancel, server)
}

/// Waits up to `timeout` until some applied transaction satisfies `pred`; returns its index.
async fn applied_where(
    firewall: &FakeFirewall,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> usize {
    let found = tokio::time::timeout(timeout, async {
        loop {
            if let Some(i) = firewall.applied().iter().position(|doc| pred(doc)) {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "no applied transaction {what} within {timeout:?}: {:#?}",
            firewall.applied()
        )
    })
}

#[tokio::test]
async fn initial_sync_applies_one_full_ruleset() {
    let (firewall, cancel, _server) = start(Scenario::InitialSync);
    let i = applied_where(&firewall, TIMEOUT, "with x/a isolated", |d| {
        d.contains("delete table inet weave-npc")
            && d.contains(
                "add element inet weave-npc ingress-np-pods { 10.32.0.1 : jump ingress-group-",
            )
    })
    .await;
    assert_eq!(i, 0, "nothing may be applied before all caches are synced");
    cancel.cancel();
}

#[tokio::test]
async fn watch_events_update_sets_only() {
    let (firewall, cancel, _server) = start(Scenario::WatchRestart);
    applied_where(&firewall, TIMEOUT, "initial", |d| d.contains("10.32.0.1")).await;
    // The new local pod is added to the sets and gets its drop counter and log rules
    // appended; nothing is rebuilt.
    let i = applied_where(&firewall, TIMEOUT, "with the watched pod", |d| {
        d.contains("10.32.0.2")
    })
    .await;
    let doc = &firewall.applied()[i];
    assert!(i > 0, "the pod came through the watch");
    assert!(
        doc.contains("add element bridge weave-npc local-pods { 10.32.0.2 }"),
        "{doc}"
    );
    assert!(
        doc.contains(
            "add element inet weave-npc ingress-denied-pods { 10.32.0.2 : jump ingress-denied/x/"
        ),
        "{doc}"
    );
    assert!(!doc.contains("delete table"), "no rebuild: {doc}");
    cancel.cancel();
}

#[tokio::test]
async fn gone_watch_relists_and_replaces_the_cache() {
    let (firewall, cancel, _server) = start(Scenario::RelistAfterGone);
    applied_where(&firewall, TIMEOUT, "initial", |d| d.contains("10.32.0.1")).await;
    let i = applied_where(&firewall, TIMEOUT_AFTER_ERROR, "after the relist", |d| {
        d.contains("add element bridge weave-npc local-pods { 10.32.0.3 }")
            && d.contains("delete element bridge weave-npc local-pods { 10.32.0.1 }")
    })
    .await;
    assert!(i > 0);
    cancel.cancel();
}

#[tokio::test]
async fn remote_pod_churn_changes_set_elements_only() {
    let (firewall, cancel, _server) = start(Scenario::RemotePodChurn);
    let i = applied_where(&firewall, TIMEOUT, "with the remote pod", |d| {
        d.contains("10.32.1.9")
    })
    .await;
    let doc = &firewall.applied()[i];
    assert!(i > 0, "the remote pod came through the watch");
    assert!(
        doc.starts_with("add element inet weave-npc peer-") && doc.contains("{ 10.32.1.9 }"),
        "a set-only update adds the element: {doc}"
    );
    assert!(!doc.contains("rule"), "no rule is touched: {doc}");
    assert!(!doc.contains("delete table"), "no rebuild: {doc}");
    cancel.cancel();
}
