// SPDX-License-Identifier: Apache-2.0
//! The NetworkPolicy test bed: one node (a host namespace with the `weave` bridge) running
//! the real `weave-npc` against the [`KubeStub`], and nine pods: namespaces x, y, z with
//! pods a, b, c each, every pod serving TCP and UDP on ports 80 and 81.
//!
//! Pods are namespaces `<prefix>-h1-<ns><pod>` wired to the bridge by a veth whose host end is
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

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

use crate::command::run;
use crate::kube_stub::{Kind, KubeStub};
use crate::{bin, in_netns, wait_until, TestBed, Topology};

/// Process name of weave-npc in the bed.
pub const NPC: &str = "weave-npc";
/// The node name weave-npc runs as.
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
        let host = bed.host(1);
        let hns = host.netns().to_owned();
        run(std::process::Command::new("ip")
            .args(["-n", &hns, "link", "add", "weave", "type", "bridge"]))?;
        run(std::process::Command::new("ip").args([
            "-n",
            &hns,
            "addr",
            "add",
            "10.32.0.254/24",
            "dev",
            "weave",
        ]))?;
        run(std::process::Command::new("ip").args(["-n", &hns, "link", "set", "weave", "up"]))?;
        // Bridged IPv4 must traverse the inet hooks (br_netfilter); this is the host
        // namespace's own setting, never the root namespace's.
        host.run("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"])?;
        let stub = KubeStub::start_in(&hns)?;
        let mut pods = Vec::new();
        for (i, ns) in NAMESPACES.iter().enumerate() {
            stub.apply(
                Kind::Namespace,
                json!({"metadata": {"name": ns, "labels": {"ns": ns, "kubernetes.io/metadata.name": ns}}}),
            );
            for (j, name) in PODS.iter().enumerate() {
                let octet = u8::try_from(3 * i + j + 1).context("nine pods")?;
                let ip = Ipv4Addr::new(10, 32, 0, octet);
                let netns = wire_pod(&bed, ns, name, ip)?;
                let pod = TestPod {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    netns,
                    ip,
                };
                stub.apply(Kind::Pod, pod_object(&pod, &[("pod", name)]));
                pods.push(pod);
            }
        }
        stub.write_kubeconfig(&host.dir().join("kubeconfig"))?;
        let pb = Self { bed, stub, pods };
        pb.start_npc()?;
        pb.wait_matrix("all pods reach each other with no policy", |_, _, _| true)?;
        Ok(pb)
    }

    /// Starts weave-npc in the host (again, after a kill or stop).
    pub fn start_npc(&self) -> Result<()> {
        let host = self.bed.host(1);
        let args: Vec<String> = [
            "--kubeconfig",
            &host.dir().join("kubeconfig").display().to_string(),
            "--node-name",
            NODE,
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

    /// Runs `weave-npc ARGS…` once in the host (`--cleanup`, `hold`); returns its output.
    pub fn npc_once(&self, args: &[&str]) -> Result<String> {
        let npc = bin(NPC)?;
        self.bed
            .host(1)
            .run(npc.to_str().context("utf-8 path")?, args)
    }

    /// Wires a new pod `ns/name` with address `ip` and servers, without telling the API
    /// (see [`publish_pod`](Self::publish_pod)); it is not part of the matrix.
    pub fn add_unpublished_pod(&self, ns: &str, name: &str, ip: Ipv4Addr) -> Result<TestPod> {
        let netns = wire_pod(&self.bed, ns, name, ip)?;
        Ok(TestPod {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            netns,
            ip,
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

/// Creates pod namespace `<ns><name>` with address `ip` on the bridge of host 1 (host end
/// `vethwepl<ns><name>`) and starts its servers; returns the namespace name.
fn wire_pod(bed: &TestBed, ns: &str, name: &str, ip: Ipv4Addr) -> Result<String> {
    let hns = bed.host(1).netns().to_owned();
    let netns = bed.add_pod_netns(1, &format!("{ns}{name}"))?;
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

/// The Pod object of `pod` with `labels`, running on [`NODE`].
fn pod_object(pod: &TestPod, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let web = if pod.name == "c" { 81 } else { 80 };
    json!({
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
        "spec": {
            "nodeName": NODE,
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
