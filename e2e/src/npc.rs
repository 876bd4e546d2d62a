// SPDX-License-Identifier: Apache-2.0
//! The NetworkPolicy test bed: one node (a host namespace with the `weave` bridge) running
//! the real `weave-npc` against the [`KubeStub`], and nine pods: namespaces x, y, z with
//! pods a, b, c each, every pod serving TCP and UDP on ports 80 and 81. The same bed can
//! also span two nodes that run the real `weaver` with its fast path between them
//! ([`PolicyBed::across_fastdp_hosts`]): pods alternate between the nodes, each node runs
//! its own `weave-npc`, and [`scenarios`] then checks NetworkPolicy across hosts.
//!
//! Pods are namespaces `<prefix>-h<n>-<ns><pod>` wired to the bridge by a veth whose host end is
//! `vethwepl<ns><pod>` (the CNI plugin's prefix), address `10.32.0.<3i+j+1>/24`. Servers are
//! sockets opened inside each pod namespace and served by threads of the test process, so
//! there are no helper processes to clean up. Probes run in parallel, each on a thread that
//! joined the source pod's namespace: TCP connects with a short timeout (allowed = connected,
//! denied = no answer, since policy drops) and UDP sends a datagram that the server echoes.
//!
//! Pods also declare named ports as the upstream e2e tests do (`serve-80-tcp`, `serve-81-udp`,
//! …) plus `web`, which is 80 on pods a and b but 81 on pods c, so a named port resolves to
//! different numbers on different pods.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

use crate::command::run;
use crate::kube_stub::{Kind, KubeStub};
use crate::{bin, in_netns, wait_until, TestBed, Topology};

/// Process name of weave-npc in the bed.
pub const NPC: &str = "weave-npc";
/// The node name weave-npc runs as on a one-node bed (host `hN` is node `hN`).
pub const NODE: &str = "h1";
/// Namespaces of the bed.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pod names in every namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// Metrics address of weave-npc inside the host.
pub const METRICS: &str = "127.0.0.1:6781";
/// TCP connect / UDP reply timeout of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// How long a reachability matrix may take to converge after a change.
const CONVERGE: Duration = Duration::from_secs(15);

/// Transport protocol of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP connect.
    Tcp,
    /// UDP echo.
    Udp,
}

/// One kind of probe: protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
}

/// The four probes of every matrix.
pub const PROBES: [Probe; 4] = [
    Probe {
        proto: Proto::Tcp,
        port: 80,
    },
    Probe {
        proto: Proto::Tcp,
        port: 81,
    },
    Probe {
        proto: Proto::Udp,
        port: 80,
    },
    Probe {
        proto: Proto::Udp,
        port: 81,
    },
];

/// A pod of the bed.
#[derive(Debug, Clone)]
pub struct TestPod {
    /// Kubernetes namespace (`x`).
    pub namespace: String,
    /// Pod name (`a`).
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// The host (node) it runs on, 1-based.
    pub host: usize,
}

impl TestPod {
    /// `x/a`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The bed: test bed, API stub, pods, running weave-npc.
#[derive(Debug)]
pub struct PolicyBed {
    /// The underlying test bed (one host).
    pub bed: TestBed,
    /// The API stub weave-npc watches.
    pub stub: KubeStub,
    /// The nine pods, x/a first.
    pub pods: Vec<TestPod>,
}

impl PolicyBed {
    /// Builds the node and pods, publishes namespaces and pods in the stub and starts
    /// weave-npc; returns once every pod reaches every other (no policies yet).
    pub fn new() -> Result<Self> {
        let bed = TestBed::new(Topology::Links {
            hosts: 1,
            links: Vec::new(),
        })?;
        let hns = bed.host(1).netns().to_owned();
        run(std::process::Command::new("ip")
            .args(["-n", &hns, "link", "add", "weave", "type", "bridge"]))?;
        run(std::process::Command::new("ip").args(["-n", &hns, "link", "set", "weave", "up"]))?;
        Self::populate(bed, 1)
    }

    /// Two nodes on one segment running the real `weaver`, whose connection is on the fast
    /// path before anything else happens; pods alternate between the nodes (x/a on h1, x/b on
    /// h2, …), each node runs its own weave-npc.
    pub fn across_fastdp_hosts() -> Result<Self> {
        use crate::weave::{peer_addr, start_weaver, wait_for_mode};
        let bed = TestBed::new(Topology::Segment(2))?;
        start_weaver(bed.host(1), &[], &[])?;
        start_weaver(bed.host(2), &[peer_addr(bed.host(1))], &[])?;
        wait_for_mode(bed.host(1), &["h2"], "fastdp", CONVERGE * 2)?;
        wait_for_mode(bed.host(2), &["h1"], "fastdp", CONVERGE * 2)?;
        Self::populate(bed, 2)
    }

    /// Gives each node an address on its bridge, publishes namespaces and pods (spread over
    /// `hosts` nodes) and starts weave-npc on every node.
    fn populate(bed: TestBed, hosts: usize) -> Result<Self> {
        for h in 1..=hosts {
            let host = bed.host(h);
            let addr = format!("10.32.0.{}/24", 255 - h);
            host.run("ip", &["addr", "add", &addr, "dev", "weave"])?;
            // Bridged IPv4 must traverse the inet hooks (br_netfilter); this is the host
            // namespace's own setting, never the root namespace's.
            host.run("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"])?;
        }
        let stub = KubeStub::start_in(bed.host(1).netns())?;
        let mut pods = Vec::new();
        for (i, ns) in NAMESPACES.iter().enumerate() {
            stub.apply(
                Kind::Namespace,
                json!({"metadata": {"name": ns, "labels": {"ns": ns, "kubernetes.io/metadata.name": ns}}}),
            );
            for (j, name) in PODS.iter().enumerate() {
                let k = 3 * i + j;
                let octet = u8::try_from(k + 1).context("nine pods")?;
                let ip = Ipv4Addr::new(10, 32, 0, octet);
                let host = k % hosts + 1;
                let netns = wire_pod(&bed, host, ns, name, ip)?;
                let pod = TestPod {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    netns,
                    ip,
                    host,
                };
                stub.apply(Kind::Pod, pod_object(&pod, &[("pod", name)]));
                pods.push(pod);
            }
        }
        for h in 1..=hosts {
            let host = bed.host(h);
            let addr = if h == 1 {
                stub.addr()
            } else {
                stub.also_listen_in(host.netns())?
            };
            stub.write_kubeconfig_at(&host.dir().join("kubeconfig"), addr)?;
        }
        let pb = Self { bed, stub, pods };
        for h in 1..=hosts {
            pb.start_npc_on(h)?;
        }
        pb.wait_matrix("all pods reach each other with no policy", |_, _, _| true)?;
        Ok(pb)
    }

    /// Starts weave-npc in host 1 (again, after a kill or stop).
    pub fn start_npc(&self) -> Result<()> {
        self.start_npc_on(1)
    }

    /// Starts weave-npc in host `h`, as node `h<h>`.
    fn start_npc_on(&self, h: usize) -> Result<()> {
        let host = self.bed.host(h);
        let node = format!("h{h}");
        let args: Vec<String> = [
            "--kubeconfig",
            &host.dir().join("kubeconfig").display().to_string(),
            "--node-name",
            &node,
            "--metrics-addr",
            METRICS,
            "--log-level",
            "info,weave_npc=debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        host.spawn(NPC, &bin(NPC)?, &args, &[])?;
        Ok(())
    }

    /// Runs `weave-npc ARGS…` once in host 1 (`--cleanup`, `hold`); returns its output.
    pub fn npc_once(&self, args: &[&str]) -> Result<String> {
        let npc = bin(NPC)?;
        self.bed
            .host(1)
            .run(npc.to_str().context("utf-8 path")?, args)
    }

    /// Wires a new pod `ns/name` with address `ip` and servers, without telling the API
    /// (see [`publish_pod`](Self::publish_pod)); it is not part of the matrix.
    pub fn add_unpublished_pod(&self, ns: &str, name: &str, ip: Ipv4Addr) -> Result<TestPod> {
        let netns = wire_pod(&self.bed, 1, ns, name, ip)?;
        Ok(TestPod {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            netns,
            ip,
            host: 1,
        })
    }

    /// Publishes `pod` in the API, running on this node, labelled `pod=<name>`.
    pub fn publish_pod(&self, pod: &TestPod) {
        self.stub
            .apply(Kind::Pod, pod_object(pod, &[("pod", &pod.name)]));
    }

    /// Whether `from` connects to `to` on TCP `port` (one probe).
    pub fn tcp_reaches(&self, from: &TestPod, to: &TestPod, port: u16) -> Result<bool> {
        let netns = from.netns.clone();
        let dst = SocketAddr::from((to.ip, port));
        std::thread::spawn(move || {
            reach(
                &netns,
                dst,
                Probe {
                    proto: Proto::Tcp,
                    port,
                },
            )
        })
        .join()
        .map_err(|_| anyhow::anyhow!("probe panicked"))?
    }

    /// Sends `n` UDP datagrams from `from` to `to:port`, each from a socket of its own (a new
    /// source port, so a new flow each); returns how long sending took.
    // Wall-clock time of the flood, reported by the test; nothing waits on it.
    #[allow(clippy::disallowed_types)]
    pub fn udp_flood(&self, from: &TestPod, to: Ipv4Addr, port: u16, n: usize) -> Result<Duration> {
        let netns = from.netns.clone();
        std::thread::spawn(move || -> Result<Duration> {
            let path = format!("/run/netns/{netns}");
            let file = File::open(&path).with_context(|| format!("open {path}"))?;
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
            let start = std::time::Instant::now();
            for _ in 0..n {
                let socket = UdpSocket::bind("0.0.0.0:0").context("bind UDP")?;
                socket.send_to(b"flood", (to, port)).context("send UDP")?;
            }
            Ok(start.elapsed())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("flood panicked"))?
    }

    /// The IPv6 link-local address of `pod`'s eth0, once it is usable (not tentative).
    pub fn link_local(&self, pod: &TestPod) -> Result<String> {
        wait_until(Duration::from_secs(10), "a link-local address", || {
            let out = run(std::process::Command::new("ip").args([
                "-n", &pod.netns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
            ]))?;
            Ok(out
                .lines()
                .find(|l| !l.contains("tentative"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|a| a.split('/').next())
                .map(str::to_owned))
        })
    }

    /// Whether `from` gets an answer to one IPv6 ping of `to`'s link-local address.
    pub fn pings6(&self, from: &TestPod, to: &TestPod) -> Result<bool> {
        let ll = self.link_local(to)?;
        let status = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &from.netns,
                "ping",
                "-6",
                "-c",
                "1",
                "-W",
                "1",
            ])
            .arg(format!("{ll}%eth0"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("run ping -6")?;
        Ok(status.success())
    }

    /// The value of metric line `series` (everything before the value), or 0.
    pub fn metric(&self, series: &str) -> Result<u64> {
        let text = self.metrics()?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// The pod `ns/name`.
    ///
    /// # Panics
    /// If there is no such pod.
    pub fn pod(&self, ns: &str, name: &str) -> &TestPod {
        self.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap_or_else(|| panic!("no pod {ns}/{name}"))
    }

    /// Creates or replaces a NetworkPolicy in the API.
    pub fn apply_policy(&self, ns: &str, name: &str, spec: Value) {
        self.stub.apply(
            Kind::NetworkPolicy,
            json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
        );
    }

    /// Deletes a NetworkPolicy from the API.
    pub fn delete_policy(&self, ns: &str, name: &str) {
        self.stub.delete(Kind::NetworkPolicy, ns, name);
    }

    /// Replaces the labels of pod `ns/name` in the API.
    pub fn label_pod(&self, ns: &str, name: &str, labels: &[(&str, &str)]) {
        self.stub
            .apply(Kind::Pod, pod_object(self.pod(ns, name), labels));
    }

    /// Replaces the labels of namespace `ns` in the API.
    pub fn label_namespace(&self, ns: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.stub.apply(
            Kind::Namespace,
            json!({"metadata": {"name": ns, "labels": labels}}),
        );
    }

    /// Probes every (from, to, probe) in parallel; the result is indexed like `pods`.
    pub fn matrix(&self) -> Result<Vec<Vec<[bool; 4]>>> {
        let n = self.pods.len();
        let mut out = vec![vec![[false; 4]; n]; n];
        std::thread::scope(|s| -> Result<()> {
            let mut handles = Vec::new();
            for (i, from) in self.pods.iter().enumerate() {
                for (j, to) in self.pods.iter().enumerate() {
                    for (k, probe) in PROBES.iter().enumerate() {
                        let netns = from.netns.clone();
                        let dst = SocketAddr::from((to.ip, probe.port));
                        let probe = *probe;
                        handles.push(((i, j, k), s.spawn(move || reach(&netns, dst, probe))));
                    }
                }
            }
            for ((i, j, k), h) in handles {
                out[i][j][k] = h.join().map_err(|_| anyhow::anyhow!("probe panicked"))??;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Waits until the measured matrix equals `expect(from, to, probe)` for every pair of
    /// distinct pods and probe (a pod reaching itself never crosses the bridge); on timeout
    /// the error shows the last difference and weave-npc's log tail.
    pub fn wait_matrix(
        &self,
        what: &str,
        expect: impl Fn(&TestPod, &TestPod, Probe) -> bool,
    ) -> Result<()> {
        let result = wait_until(CONVERGE, what, || {
            let got = self.matrix()?;
            let diff = self.diff(&got, &expect);
            if diff.is_empty() {
                Ok(Some(()))
            } else {
                bail!("unexpected reachability:\n{diff}")
            }
        });
        if let Err(err) = result {
            let log = self.bed.host(1).log(NPC);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{err:#}\nweave-npc log tail:\n{}", tail.join("\n"));
        }
        Ok(())
    }

    /// Lines describing where `got` differs from `expect`.
    fn diff(
        &self,
        got: &[Vec<[bool; 4]>],
        expect: &impl Fn(&TestPod, &TestPod, Probe) -> bool,
    ) -> String {
        let mut out = String::new();
        for (i, from) in self.pods.iter().enumerate() {
            for (j, to) in self.pods.iter().enumerate() {
                if i == j {
                    continue;
                }
                for (k, probe) in PROBES.iter().enumerate() {
                    let want = expect(from, to, *probe);
                    if got[i][j][k] != want {
                        let _ = writeln!(
                            out,
                            "  {} -> {} {:?}/{}: expected {}, got {}",
                            from.key(),
                            to.key(),
                            probe.proto,
                            probe.port,
                            verdict(want),
                            verdict(got[i][j][k])
                        );
                    }
                }
            }
        }
        out
    }

    /// weave-npc's metrics page, fetched inside the host.
    pub fn metrics(&self) -> Result<String> {
        let addr: SocketAddr = METRICS.parse().context("metrics address")?;
        in_netns(self.bed.host(1).netns(), move || {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .context("connect to metrics")?;
            use std::io::Write as _;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut body = String::new();
            stream.read_to_string(&mut body)?;
            Ok(body)
        })
    }
}

/// Creates pod namespace `<ns><name>` with address `ip` on the bridge of host `host` (host
/// end `vethwepl<ns><name>`) and starts its servers; returns the namespace name.
fn wire_pod(bed: &TestBed, host: usize, ns: &str, name: &str, ip: Ipv4Addr) -> Result<String> {
    let hns = bed.host(host).netns().to_owned();
    let netns = bed.add_pod_netns(host, &format!("{ns}{name}"))?;
    let veth = format!("vethwepl{ns}{name}");
    let ip_cmd = |args: &[&str]| run(std::process::Command::new("ip").args(args));
    ip_cmd(&[
        "-n", &hns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
    ])?;
    ip_cmd(&["-n", &hns, "link", "set", &veth, "master", "weave", "up"])?;
    ip_cmd(&[
        "-n",
        &netns,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ])?;
    ip_cmd(&["-n", &netns, "link", "set", "eth0", "up"])?;
    serve(&netns)?;
    Ok(netns)
}

/// "allowed" or "denied".
fn verdict(b: bool) -> &'static str {
    if b {
        "allowed"
    } else {
        "denied"
    }
}

/// The Pod object of `pod` with `labels`, running on its host's node.
fn pod_object(pod: &TestPod, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let web = if pod.name == "c" { 81 } else { 80 };
    json!({
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
        "spec": {
            "nodeName": format!("h{}", pod.host),
            "containers": [{"name": "server", "image": "none", "ports": [
                {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
                {"name": "serve-81-tcp", "containerPort": 81, "protocol": "TCP"},
                {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
                {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
                {"name": "web", "containerPort": web, "protocol": "TCP"}
            ]}]
        },
        "status": {"phase": "Running", "podIP": pod.ip.to_string(), "podIPs": [{"ip": pod.ip.to_string()}]}
    })
}

/// Opens TCP and UDP servers on ports 80 and 81 inside `netns` and serves them from threads
/// of this process: TCP connections are accepted and closed, UDP datagrams echoed.
fn serve(netns: &str) -> Result<()> {
    let (tcp, udp) = in_netns(netns, || {
        let tcp = [80, 81]
            .map(|p| TcpListener::bind(("0.0.0.0", p)).with_context(|| format!("bind TCP {p}")));
        let udp = [80, 81]
            .map(|p| UdpSocket::bind(("0.0.0.0", p)).with_context(|| format!("bind UDP {p}")));
        let [t0, t1] = tcp;
        let [u0, u1] = udp;
        Ok(([t0?, t1?], [u0?, u1?]))
    })?;
    for listener in tcp {
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
    }
    for socket in udp {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        });
    }
    Ok(())
}

/// Whether `dst` answers `probe` from inside `netns` (runs on the calling thread, which it
/// moves into the namespace: call it on a thread of its own).
fn reach(netns: &str, dst: SocketAddr, probe: Probe) -> Result<bool> {
    let path = format!("/run/netns/{netns}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
    match probe.proto {
        Proto::Tcp => match TcpStream::connect_timeout(&dst, PROBE_TIMEOUT) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(false),
            Err(e) => Err(e).with_context(|| format!("connect from {netns} to {dst}")),
        },
        Proto::Udp => {
            let socket = UdpSocket::bind("0.0.0.0:0").context("bind UDP probe")?;
            socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
            socket.connect(dst)?;
            socket.send(b"ping")?;
            let mut buf = [0u8; 16];
            match socket.recv(&mut buf) {
                Ok(_) => Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(e).with_context(|| format!("UDP probe from {netns} to {dst}")),
            }
        }
    }
}

/// TCP/80 only.
fn tcp80(p: Probe) -> bool {
    p.proto == Proto::Tcp && p.port == 80
}

/// Whether `p` is `ns/name`.
pub fn is(p: &TestPod, ns: &str, name: &str) -> bool {
    p.namespace == ns && p.name == name
}

/// The upstream NetworkPolicy scenarios, step by step, each checked as a full matrix:
/// default deny, namespace and pod selectors (AND and OR), ipBlock with except, named and
/// ranged ports, egress, deletion, relabelling at run time, and a pod the API has not
/// announced (never open by accident). Expectations come from the NetworkPolicy API
/// reference and the upstream e2e scenarios, not from weave-npc's code.
pub fn scenarios(pb: &PolicyBed) -> Result<()> {
    // Default deny ingress in x: nothing reaches x pods; other namespaces are untouched.
    pb.apply_policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    pb.wait_matrix("default deny ingress in x", |_, to, _| to.namespace != "x")?;

    // The node itself still reaches its pods (kubelet probes).
    let xa = pb.pod("x", "a").ip;
    let host_ns = pb.bed.host(1).netns().to_owned();
    let from_node = crate::in_netns(&host_ns, move || {
        Ok(std::net::TcpStream::connect_timeout(&(xa, 80).into(), Duration::from_secs(1)).is_ok())
    })?;
    ensure!(
        from_node,
        "the node must reach its pods despite ingress policy"
    );

    // Allow from namespace y to x/a (policies add up).
    pb.apply_policy(
        "x",
        "a-from",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    pb.wait_matrix("x/a allows namespace y", |from, to, _| {
        to.namespace != "x" || (is(to, "x", "a") && from.namespace == "y")
    })?;

    // Namespace and pod selector in one peer: both must match.
    pb.apply_policy(
        "x",
        "a-from",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    pb.wait_matrix("x/a allows y/b only (AND)", |from, to, _| {
        to.namespace != "x" || (is(to, "x", "a") && is(from, "y", "b"))
    })?;

    // The same selectors as separate peers: either may match.
    pb.apply_policy(
        "x",
        "a-from",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                     {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    pb.wait_matrix("x/a allows y/* or x/b (OR)", |from, to, _| {
        to.namespace != "x" || (is(to, "x", "a") && (from.namespace == "y" || is(from, "x", "b")))
    })?;

    // ipBlock with except, TCP 80 only; matchExpressions select the target.
    pb.apply_policy(
        "x",
        "a-from",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.32.0.0/24", "except": ["10.32.0.4/31"]}}],
                            "ports": [{"port": 80}]}]}),
    );
    pb.wait_matrix(
        "x/a allows 10.32.0.0/24 except y/a and y/b, TCP 80",
        |from, to, p| {
            to.namespace != "x"
                || (is(to, "x", "a") && tcp80(p) && !is(from, "y", "a") && !is(from, "y", "b"))
        },
    )?;

    // Named port `web`: 80 on x/a, 81 on x/c (resolved per destination pod).
    pb.delete_policy("x", "a-from");
    pb.apply_policy(
        "x",
        "web",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b"]}]},
               "ingress": [{"ports": [{"port": "web"}]}]}),
    );
    pb.wait_matrix("named port web on x/a (80) and x/c (81)", |_, to, p| {
        to.namespace != "x"
            || (p.proto == Proto::Tcp
                && ((is(to, "x", "a") && p.port == 80) || (is(to, "x", "c") && p.port == 81)))
    })?;

    // endPort: x/b accepts TCP 80 to 81 from anywhere, no UDP.
    pb.delete_policy("x", "web");
    pb.apply_policy(
        "x",
        "range",
        json!({"podSelector": {"matchLabels": {"pod": "b"}},
               "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]}),
    );
    pb.wait_matrix("x/b accepts TCP 80-81", |_, to, p| {
        to.namespace != "x" || (is(to, "x", "b") && p.proto == Proto::Tcp)
    })?;

    // Egress: y/a may only reach namespace z on TCP 80 and UDP 81. Without policyTypes the
    // API defaults to Ingress plus Egress, so y/a also accepts no ingress at all.
    pb.apply_policy(
        "y",
        "a-out",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                           "ports": [{"port": 80}, {"protocol": "UDP", "port": 81}]}]}),
    );
    let ingress =
        |to: &TestPod, p: Probe| to.namespace != "x" || (is(to, "x", "b") && p.proto == Proto::Tcp);
    let egress = |from: &TestPod, to: &TestPod, p: Probe| {
        !is(to, "y", "a")
            && (!is(from, "y", "a")
                || (to.namespace == "z"
                    && ((p.proto == Proto::Tcp && p.port == 80)
                        || (p.proto == Proto::Udp && p.port == 81))))
    };
    pb.wait_matrix("y/a egress to z on TCP 80 / UDP 81", |from, to, p| {
        ingress(to, p) && egress(from, to, p)
    })?;

    // Policy deletion: x opens again; the egress policy stays.
    pb.delete_policy("x", "deny");
    pb.delete_policy("x", "range");
    pb.wait_matrix("x policies deleted", |from, to, p| egress(from, to, p))?;
    pb.delete_policy("y", "a-out");
    pb.wait_matrix("no policies", |_, _, _| true)?;

    // Namespace relabelled at runtime.
    pb.apply_policy(
        "x",
        "blue",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}),
    );
    pb.wait_matrix("x only from team blue (none yet)", |_, to, _| {
        to.namespace != "x"
    })?;
    pb.label_namespace("y", &[("ns", "y"), ("team", "blue")]);
    pb.wait_matrix("y joins team blue", |from, to, _| {
        to.namespace != "x" || from.namespace == "y"
    })?;

    // Pod relabelled at runtime: z/c becomes a client, selected from every namespace.
    pb.apply_policy(
        "x",
        "clients",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    );
    pb.label_pod("z", "c", &[("pod", "c"), ("role", "client")]);
    pb.wait_matrix("z/c labelled client", |from, to, _| {
        to.namespace != "x" || from.namespace == "y" || is(from, "z", "c")
    })?;
    pb.label_pod("z", "c", &[("pod", "c")]);
    pb.label_namespace("y", &[("ns", "y")]);
    pb.wait_matrix("labels removed", |_, to, _| to.namespace != "x")?;

    // A pod the API has not announced yet is unreachable (never open by accident), and
    // becomes reachable once weave-npc has programmed its address.
    let new = pb.add_unpublished_pod("z", "d", std::net::Ipv4Addr::new(10, 32, 0, 20))?;
    let za = pb.pod("z", "a").clone();
    ensure!(
        !pb.tcp_reaches(&za, &new, 80)?,
        "an unknown pod must not be reachable"
    );
    ensure!(
        !pb.tcp_reaches(&new, &za, 80)?,
        "an unknown pod must not send"
    );
    pb.publish_pod(&new);
    wait_until(
        Duration::from_secs(10),
        "z/d reachable once published",
        || Ok((pb.tcp_reaches(&za, &new, 80)? && pb.tcp_reaches(&new, &za, 80)?).then_some(())),
    )?;
    Ok(())
}
