// SPDX-License-Identifier: Apache-2.0
//! A test-only stub of the Kubernetes API server's list and watch endpoints for Pods,
//! Namespaces and `networking.k8s.io/v1` NetworkPolicies, over plain HTTP/1.1.
//!
//! It speaks the real formats, so `weave-npc` runs its production client path unchanged:
//! a list answers `{"kind":"PodList","metadata":{"resourceVersion":"N"},"items":[…]}`; a request
//! with `watch=true` streams chunked JSON lines `{"type":"ADDED","object":{…}}` for every change
//! after the requested `resourceVersion`, until `timeoutSeconds` (capped) or
//! [`KubeStub::set_down`]. Objects get a `uid` and a fresh `resourceVersion` on each change,
//! from one cluster-wide counter as in etcd. While "down", connections are closed unanswered,
//! which is what a client sees when the API server goes away.
//!
//! The listener is bound inside a test-bed host namespace (on its loopback), so the process
//! under test reaches it at `127.0.0.1` there and nothing listens in the root namespace.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::netns::in_netns;

/// Longest a watch response stays open.
const MAX_WATCH: Duration = Duration::from_secs(60);

/// The kinds the stub serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Pod.
    Pod,
    /// `v1` Namespace.
    Namespace,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `v1` Node.
    Node,
    /// `policy.networking.k8s.io/v1beta1` ClusterNetworkPolicy.
    ClusterNetworkPolicy,
}

impl Kind {
    /// `apiVersion` and `kind`.
    fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Self::Pod => ("v1", "Pod"),
            Self::Namespace => ("v1", "Namespace"),
            Self::NetworkPolicy => ("networking.k8s.io/v1", "NetworkPolicy"),
            Self::Node => ("v1", "Node"),
            Self::ClusterNetworkPolicy => {
                ("policy.networking.k8s.io/v1beta1", "ClusterNetworkPolicy")
            }
        }
    }

    /// The kind served at a cluster-wide collection path.
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/pods" => Some(Self::Pod),
            "/api/v1/namespaces" => Some(Self::Namespace),
            "/apis/networking.k8s.io/v1/networkpolicies" => Some(Self::NetworkPolicy),
            "/api/v1/nodes" => Some(Self::Node),
            "/apis/policy.networking.k8s.io/v1beta1/clusternetworkpolicies" => {
                Some(Self::ClusterNetworkPolicy)
            }
            _ => None,
        }
    }
}

/// Object key: kind, namespace, name.
type Key = (Kind, String, String);

/// What the stub holds.
#[derive(Debug, Default)]
struct State {
    /// Last resource version handed out.
    rv: u64,
    /// Live objects.
    objects: BTreeMap<Key, Value>,
    /// Every change: (resource version, kind, event type, object).
    events: Vec<(u64, Kind, &'static str, Value)>,
    /// While true, connections are dropped and watches end.
    down: bool,
    /// Set when the stub is dropped.
    closed: bool,
    /// Requests served, by kind and list/watch, for tests.
    requests: BTreeMap<(Kind, bool), u64>,
}

/// State plus the condition variable watches wait on.
#[derive(Debug, Default)]
struct Shared {
    /// The state.
    state: Mutex<State>,
    /// Signalled on every change.
    changed: Condvar,
}

impl Shared {
    /// Locks the state (poisoning ignored: a failed test must still clean up).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The API stub; stops serving when dropped.
#[derive(Debug)]
pub struct KubeStub {
    /// Shared with connection threads.
    shared: Arc<Shared>,
    /// Where it listens (inside the host namespace).
    addr: SocketAddr,
}

impl KubeStub {
    /// Starts the stub on `127.0.0.1:<free port>` inside network namespace `netns`.
    pub fn start_in(netns: &str) -> Result<Self> {
        let listener = in_netns(netns, || {
            TcpListener::bind("127.0.0.1:0").context("bind the API stub listener")
        })?;
        let addr = listener.local_addr().context("API stub address")?;
        let shared = Arc::new(Shared::default());
        accept(listener, Arc::clone(&shared));
        Ok(Self { shared, addr })
    }

    /// The address the stub listens on, inside its namespace.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the same objects on `127.0.0.1:<free port>` inside another
    /// namespace too (a second node's processes); returns that address.
    pub fn also_listen_in(&self, netns: &str) -> Result<SocketAddr> {
        let listener = in_netns(netns, || {
            TcpListener::bind("127.0.0.1:0").context("bind the API stub listener")
        })?;
        let addr = listener.local_addr().context("API stub address")?;
        accept(listener, Arc::clone(&self.shared));
        Ok(addr)
    }

    /// Writes a kubeconfig pointing at the stub to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        self.write_kubeconfig_at(path, self.addr)
    }

    /// Writes a kubeconfig pointing at the stub's listener `addr` to `path`.
    pub fn write_kubeconfig_at(&self, path: &Path, addr: SocketAddr) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://{}\n\
             users:\n- name: stub\n  user: {{}}\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\n\
             current-context: stub\n",
            addr
        );
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }

    /// Creates or replaces an object (`metadata.name`, and `metadata.namespace` for
    /// namespaced kinds, must be set); watchers see ADDED or MODIFIED.
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let (api_version, kind_name) = kind.type_meta();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let key = (kind, namespace.clone(), name.clone());
        let mut state = self.shared.lock();
        state.rv += 1;
        let rv = state.rv;
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind_name);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["uid"] = json!(format!("uid-{kind_name}-{namespace}-{name}"));
        let event = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.objects.insert(key, object.clone());
        state.events.push((rv, kind, event, object));
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Deletes an object; watchers see DELETED. Fine if it does not exist.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut state = self.shared.lock();
        let Some(mut object) = state
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
        else {
            return;
        };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.events.push((rv, kind, "DELETED", object));
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Takes the API away (`true`: open watches end, new connections are closed unanswered)
    /// or brings it back.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
        self.shared.changed.notify_all();
    }

    /// How many list (`watch == false`) or watch requests for `kind` were served.
    pub fn requests(&self, kind: Kind, watch: bool) -> u64 {
        self.shared
            .lock()
            .requests
            .get(&(kind, watch))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for KubeStub {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        // Wake the accept loop so it sees `closed` (the listener lives in another namespace;
        // connecting from here fails, which is fine: the thread then ends with the process).
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(50));
    }
}

/// Serves connections to `listener` from threads, until the stub closes.
fn accept(listener: TcpListener, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if shared.lock().closed {
                break;
            }
            let Ok(stream) = stream else { continue };
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || serve(&shared, stream));
        }
    });
}

/// Serves one connection: one request, then close.
fn serve(shared: &Shared, stream: TcpStream) {
    if shared.lock().down {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers: requests from the client have no body.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let mut stream = stream;
    if path == "/apis/policy.networking.k8s.io/v1beta1" {
        // Discovery: the stub serves ClusterNetworkPolicy, as a cluster with its CRD does.
        let body = json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "policy.networking.k8s.io/v1beta1",
            "resources": [{"name": "clusternetworkpolicies", "singularName": "clusternetworkpolicy",
                           "namespaced": false, "kind": "ClusterNetworkPolicy",
                           "verbs": ["get", "list", "watch"]}]})
        .to_string();
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let Some(kind) = Kind::from_path(path) else {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}).to_string();
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    };
    let watch = matches!(params.get("watch"), Some(&"true" | &"1"));
    *shared.lock().requests.entry((kind, watch)).or_default() += 1;
    if watch {
        let from: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(MAX_WATCH, |s: u64| Duration::from_secs(s).min(MAX_WATCH));
        stream_watch(shared, stream, kind, from, timeout);
    } else {
        let state = shared.lock();
        let items: Vec<&Value> = state
            .objects
            .iter()
            .filter(|(k, _)| k.0 == kind)
            .map(|(_, v)| v)
            .collect();
        let (api_version, kind_name) = kind.type_meta();
        let body = json!({
            "kind": format!("{kind_name}List"),
            "apiVersion": api_version,
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        })
        .to_string();
        drop(state);
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// Streams watch events of `kind` after resource version `from` until `timeout`, the stub
/// going down, or the client leaving.
fn stream_watch(shared: &Shared, mut stream: TcpStream, kind: Kind, from: u64, timeout: Duration) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut sent = from;
    // The deadline is real time: the stub serves a real process.
    #[allow(clippy::disallowed_types)]
    let deadline = std::time::Instant::now() + timeout;
    let mut state = shared.lock();
    loop {
        if state.down || state.closed {
            // Cut the connection without the final chunk, as a dying server would.
            return;
        }
        let lines: Vec<String> = state
            .events
            .iter()
            .filter(|(rv, k, _, _)| *rv > sent && *k == kind)
            .map(|(_, _, t, o)| format!("{}\n", json!({"type": t, "object": o})))
            .collect();
        sent = state.rv.max(sent);
        if !lines.is_empty() {
            drop(state);
            for line in lines {
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if stream.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
            let _ = stream.flush();
            state = shared.lock();
            continue;
        }
        #[allow(clippy::disallowed_types)]
        let now = std::time::Instant::now();
        if now >= deadline {
            break;
        }
        state = shared
            .changed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    drop(state);
    let _ = stream.write_all(b"0\r\n\r\n");
}
