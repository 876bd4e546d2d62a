// SPDX-License-Identifier: Apache-2.0
//! The real cluster: upstream etcd, API server, controller-manager and scheduler on a
//! control-plane machine, and N nodes each running containerd, the kubelet and kube-proxy, all
//! on one machine without Docker.
//!
//! Machines are hosts of a [`TestBed`] segment (nodes are hosts 1..=N, the control plane is
//! host N+1), so links between them can be cut like any other host's. Each machine has a PID
//! and mount namespace of its own (`machine`, [`node_init`]), a cgroup root of its own
//! (`cgroup`) and its own directory under the cluster directory. The API server is reached
//! from the host through a loopback forwarder (`forward`). Images are OCI archives built from
//! local files ([`images`]) and imported into every node's containerd.
//!
//! [`Cluster`] owns all of it: dropping it (or SIGINT/SIGTERM) kills every process, removes
//! every cgroup and namespace, and removes the cluster directory (kept after a panic, for its
//! logs).
//!
//! Layout of the cluster directory:
//! `kubeconfig` (admin), `bin/` (kubectl, crictl, helm, ctr of this cluster's version),
//! `images.txt`, `pki/`, `images/`, `machines/<name>/` (the machine's private directories,
//! configuration and `logs/`), `state.json` (what `weave-cluster down` needs after a crash).

pub(crate) mod cgroup;
mod config;
mod forward;
pub mod image;
pub mod images;
mod machine;
pub mod node_init;
mod pki;
mod state;
mod tools;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use self::config::NodeFacts;
use self::forward::Forward;
use self::machine::Machine;
use self::pki::{Pki, Usage};
pub use self::state::{down, CLUSTER_BIN};
pub use self::tools::{nerdctl, tools_size, Tools, NERDCTL_ENV, TOOLS_ENV};
use crate::command::{ip, run, run_with_input};
use crate::wait::wait_until;
use crate::{bin, bin_dir, TestBed, Topology};

/// The API server's port inside the control plane.
const APISERVER_PORT: u16 = 6443;
/// Services' range; the `kubernetes` service takes its first address.
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` service address.
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The underlay's gateway, an address of the segment bridge itself: every machine's default
/// route points there, as a machine's does at its LAN's router (the Service ClusterIPs must
/// be routable for kube-proxy's DNAT to apply). It forwards nothing.
const GATEWAY: &str = "10.250.0.254";
/// The pod network's range (weave's default; the reference CNI takes /24s of it).
const CLUSTER_CIDR: &str = "10.32.0.0/12";
/// How long the control plane may take to answer.
const CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a node's containerd may take to answer, and its images to import.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the nodes may take to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(180);
/// Largest node count (each node costs ~150 MiB and some CPU at rest).
const MAX_NODES: usize = 20;

/// Which pod network the nodes get at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cni {
    /// None: nodes stay NotReady until a network is installed (weave, from its manifest).
    None,
    /// The reference plugins: bridge + host-local (+ portmap), one /24 per node, routes between
    /// nodes on the underlay.
    Reference,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes (1..=20).
    pub nodes: usize,
    /// Pod network installed at start.
    pub cni: Cni,
    /// Cluster directory (must not exist, or be empty); a new temporary one when `None`.
    pub dir: Option<PathBuf>,
    /// Directory of weave's binaries for the weave image ([`crate::bin_dir`] when `None`).
    pub weave_bin_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            cni: Cni::None,
            dir: None,
            weave_bin_dir: None,
        }
    }
}

/// A running cluster, torn down on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster directory.
    dir: PathBuf,
    /// The upstream binaries.
    tools: Tools,
    /// Image references imported on every node.
    images: Vec<String>,
    /// Node machines, node 1 first.
    nodes: Vec<Machine>,
    /// The control-plane machine.
    control_plane: Machine,
    /// Loopback forwarder to the API server.
    forward: Forward,
    /// The CA and its files.
    pki: Pki,
    /// The `weave-cluster` binary (each machine's init).
    init: PathBuf,
    /// The hosts (dropped last: it owns every process, cgroup and namespace).
    bed: TestBed,
}

impl Cluster {
    /// Builds and starts a cluster; returns once every node is registered (Ready only with a
    /// pod network). Needs root and the tools (see [`Tools::locate`]).
    pub fn up(options: ClusterOptions) -> Result<Cluster> {
        let n = options.nodes;
        if n == 0 || n > MAX_NODES {
            bail!("a cluster has 1 to {MAX_NODES} nodes, not {n}");
        }
        let tools = Tools::locate()?;
        let init = bin(CLUSTER_BIN)?;
        if let Some(dir) = &options.dir {
            check_dir(dir)?;
        }
        let bed = TestBed::new(Topology::Segment(n + 1))?;
        let prefix = bed.prefix().to_owned();
        // A failure from here on drops the bed, which removes everything made so far.
        Self::start(bed, &options, tools, &init).with_context(|| format!("start cluster {prefix}"))
    }

    /// Everything of [`Cluster::up`] once the hosts exist.
    fn start(bed: TestBed, options: &ClusterOptions, tools: Tools, init: &Path) -> Result<Cluster> {
        let n = options.nodes;
        let weave_bins = options.weave_bin_dir.clone().unwrap_or_else(bin_dir);
        let underlay = bed.underlay_netns().context("a segment has an underlay")?;
        ip(&[
            "-n",
            underlay,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "br0",
        ])?;
        for host in bed.hosts() {
            ip(&[
                "-n",
                host.netns(),
                "route",
                "add",
                "default",
                "via",
                GATEWAY,
            ])?;
        }
        let dir = match &options.dir {
            Some(dir) => dir.clone(),
            None => bed.run_dir().join("cluster"),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        state::write(&dir, bed.prefix(), &bed, n)?;
        // From here on the directory goes with the bed: removed after everything else.
        {
            let dirs = [dir.clone(), bed.run_dir().to_owned()];
            bed.owned()
                .add_cleanup(Box::new(move || state::remove_dirs(&dirs)));
        }
        let pki = Pki::create(&dir.join("pki"))?;
        let cp_host = bed.host(n + 1);
        let control_plane = Machine::start(
            bed.owned(),
            cp_host,
            "control-plane",
            &dir.join("machines/control-plane"),
            &machine_id(),
            init,
        )?;
        let forward = Forward::start(
            cp_host.netns(),
            SocketAddr::from((cp_host.addr(), APISERVER_PORT)),
        )?;
        let admin = pki.issue(
            "admin",
            "kubernetes-admin",
            &["system:masters"],
            &Usage::Client,
        )?;
        pki.write_kubeconfig(
            &dir.join("kubeconfig"),
            &format!("https://{}", forward.addr()),
            "admin",
            &admin,
        )?;
        link_tools(&dir, &tools)?;
        let mut cluster = Cluster {
            dir,
            tools,
            images: Vec::new(),
            nodes: Vec::new(),
            control_plane,
            forward,
            pki,
            init: init.to_owned(),
            bed,
        };
        cluster.start_control_plane()?;
        cluster.images = cluster.build_images(&weave_bins)?;
        for i in 1..=n {
            let name = format!("node-{i}");
            let root = cgroup_root_name(cluster.bed.prefix(), &name);
            cgroup::create_root(&root)?;
            cluster
                .bed
                .owned()
                .add_cleanup(Box::new(move || cgroup::remove_root(&root)));
            let machine = Machine::start(
                cluster.bed.owned(),
                cluster.bed.host(i),
                &name,
                &cluster.dir.join("machines").join(&name),
                &machine_id(),
                init,
            )?;
            cluster.nodes.push(machine);
        }
        std::thread::scope(|scope| {
            let started: Vec<_> = cluster
                .nodes
                .iter()
                .map(|node| scope.spawn(|| cluster.start_node(node)))
                .collect();
            started
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| bail!("a node's start panicked"))
                })
                .collect::<Result<Vec<()>>>()
        })?;
        if options.cni == Cni::Reference {
            cluster.install_reference_cni()?;
        }
        cluster.wait_registered()?;
        Ok(cluster)
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's address on the host's loopback (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> String {
        format!("https://{}", self.forward.addr())
    }

    /// The cluster CA's certificate (it signs the API server's).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("pki").join("ca.crt")
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The upstream binaries this cluster runs.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// The hosts under the machines (node i is host i; the control plane is the last host),
    /// for cutting and restoring links.
    pub fn bed(&self) -> &TestBed {
        &self.bed
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node names, node 1 first.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node.name().to_owned())
            .collect()
    }

    /// The network namespace of node `i` (1-based).
    pub fn node_netns(&self, i: usize) -> &str {
        self.node(i).netns()
    }

    /// The underlay address of node `i` (1-based).
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.node(i).ip()
    }

    /// The directory of node `i` (its `/var/lib/kubelet` is `kubelet/` there, …).
    pub fn node_dir(&self, i: usize) -> &Path {
        self.node(i).dir()
    }

    /// Where path `path` of node `i` (`/var/lib/weave`, `/etc/cni/net.d/…`) is kept on the
    /// host, for looking at a node's files from outside.
    pub fn node_path(&self, i: usize, path: &str) -> Result<PathBuf> {
        node_init::backing_path(self.node(i).dir(), Path::new(path))
            .with_context(|| format!("{path} is not private to the nodes"))
    }

    /// A command running `program` inside node `i` (its mount, PID and network namespaces).
    pub fn node_cmd(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.node(i).cmd(program)
    }

    /// Switches node `i` off, as pulling its power would: every process of the machine (the
    /// kubelet, containerd, every pod) dies at once. Its Node object stays in the API.
    pub fn stop_node(&self, i: usize) -> Result<()> {
        self.node(i).stop()
    }

    /// Switches node `i` on again after [`Cluster::stop_node`], as a machine that reboots
    /// with its disk: same name, address, files and images; its kubelet registers the Node
    /// anew if it was deleted meanwhile.
    pub fn restart_node(&mut self, i: usize) -> Result<()> {
        let k = i
            .checked_sub(1)
            .filter(|k| *k < self.nodes.len())
            .with_context(|| format!("no node {i}"))?;
        let (name, dir) = (
            self.nodes[k].name().to_owned(),
            self.nodes[k].dir().to_owned(),
        );
        // The previous init's marker would make the wait below return at once, and `/run` is
        // a tmpfs on a real machine: both start empty.
        for stale in [dir.join("ready"), dir.join("run")] {
            let removed = if stale.is_dir() {
                std::fs::remove_dir_all(&stale)
            } else {
                std::fs::remove_file(&stale)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", stale.display())),
            }
        }
        let id = std::fs::read_to_string(dir.join("machine-id"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| machine_id());
        let machine = Machine::start(
            self.bed.owned(),
            self.bed.host(i),
            &name,
            &dir,
            &id,
            &self.init,
        )?;
        self.start_node(&machine)?;
        self.nodes[k] = machine;
        Ok(())
    }

    /// The namespace of a machine outside the cluster: the underlay segment's gateway, which
    /// every node reaches at [`Cluster::outside_ip`] but which routes nothing back to pods.
    pub fn outside_netns(&self) -> &str {
        self.bed.underlay_netns().unwrap_or_default()
    }

    /// The outside machine's address (see [`Cluster::outside_netns`]).
    pub fn outside_ip(&self) -> Ipv4Addr {
        GATEWAY.parse().expect("the gateway constant is an address")
    }

    /// Gives image `source` (imported on every node) the extra reference `target` on every
    /// node, as a registry would serve one image under two tags.
    pub fn tag_image(&self, source: &str, target: &str) -> Result<()> {
        image::split_reference(target)?;
        for node in &self.nodes {
            let socket = node.dir().join("run/containerd/containerd.sock");
            run(Command::new(self.tools.bin("ctr"))
                .arg("--address")
                .arg(&socket)
                .args([
                    "--namespace",
                    "k8s.io",
                    "images",
                    "tag",
                    "--force",
                    source,
                    target,
                ]))?;
        }
        Ok(())
    }

    /// Image references imported on every node.
    pub fn images(&self) -> &[String] {
        &self.images
    }

    /// The imported image whose repository ends with `/name` (`agnhost`, `weave`).
    pub fn image(&self, name: &str) -> Result<&str> {
        self.images
            .iter()
            .find(|image| {
                image
                    .rsplit_once(':')
                    .is_some_and(|(repo, _)| repo.ends_with(&format!("/{name}")))
            })
            .map(String::as_str)
            .with_context(|| format!("no image named {name} among {:?}", self.images))
    }

    /// Resident memory of every machine's processes (daemons and pods), in bytes, by machine
    /// name, control plane first.
    pub fn memory(&self) -> Result<Vec<(String, u64)>> {
        std::iter::once(&self.control_plane)
            .chain(&self.nodes)
            .map(|m| Ok((m.name().to_owned(), m.rss(&self.cgroup_root(m))?)))
            .collect()
    }

    /// `kubectl ARGS…` as admin; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        run(self.kubectl_cmd().args(args))
    }

    /// `kubectl ARGS…` as admin with `input` on stdin (`apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Result<String> {
        run_with_input(self.kubectl_cmd().args(args), Some(input))
    }

    /// A `kubectl` command with the admin kubeconfig, for callers that add arguments.
    pub fn kubectl_cmd(&self) -> Command {
        let mut cmd = Command::new(self.tools.bin("kubectl"));
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        cmd
    }

    /// `crictl ARGS…` against node `i`'s containerd.
    pub fn crictl(&self, i: usize, args: &[&str]) -> Result<String> {
        let socket = self
            .node(i)
            .dir()
            .join("run")
            .join(config::CRI_SOCKET.trim_start_matches("/run/"));
        run(Command::new(self.tools.bin("crictl"))
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(args))
    }

    /// Installs the reference CNI on every node: the plugins into its `/opt/cni/bin`, a
    /// bridge network into its `/etc/cni/net.d`, and routes to the other nodes' pod subnets.
    pub fn install_reference_cni(&self) -> Result<()> {
        for (k, node) in self.nodes.iter().enumerate() {
            let i = k + 1;
            for plugin in ["bridge", "host-local", "portmap", "loopback"] {
                let source = self.tools.cni_dir().join(plugin);
                let target = node.dir().join("cni-bin").join(plugin);
                std::fs::copy(&source, &target).with_context(|| {
                    format!("copy {} to {}", source.display(), target.display())
                })?;
            }
            for (l, other) in self.nodes.iter().enumerate() {
                if l != k {
                    let subnet = config::reference_subnet(l + 1);
                    ip(&[
                        "-n",
                        node.netns(),
                        "route",
                        "replace",
                        &subnet,
                        "via",
                        &other.ip().to_string(),
                    ])?;
                }
            }
            let conf = node.dir().join("cni-conf").join("10-reference.conflist");
            std::fs::write(&conf, config::reference_conflist(i))
                .with_context(|| format!("write {}", conf.display()))?;
        }
        Ok(())
    }

    /// Undoes [`Cluster::install_reference_cni`]: conflist, plugins and routes go, so another
    /// network can be installed (pods on the reference network lose theirs).
    pub fn remove_reference_cni(&self) -> Result<()> {
        for (k, node) in self.nodes.iter().enumerate() {
            let conf = node.dir().join("cni-conf").join("10-reference.conflist");
            std::fs::remove_file(&conf).with_context(|| format!("remove {}", conf.display()))?;
            for plugin in ["bridge", "host-local", "portmap", "loopback"] {
                let path = node.dir().join("cni-bin").join(plugin);
                std::fs::remove_file(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
            }
            for l in (0..self.nodes.len()).filter(|l| *l != k) {
                ip(&[
                    "-n",
                    node.netns(),
                    "route",
                    "del",
                    &config::reference_subnet(l + 1),
                ])?;
            }
            let _ = ip(&["-n", node.netns(), "link", "del", "cni0"]);
        }
        Ok(())
    }

    /// Resident memory of the processes of node `i` whose command name is `comm`, in bytes.
    pub fn process_rss(&self, i: usize, comm: &str) -> Result<Vec<u64>> {
        let node = self.node(i);
        node.rss_of(&self.cgroup_root(node), comm)
    }

    /// The cgroup root of node `i` (`/NAME` in every hierarchy), removed with everything
    /// below it when the cluster goes: where a runtime beside the kubelet puts its containers.
    pub fn node_cgroup_root(&self, i: usize) -> String {
        format!("/{}", self.cgroup_root(self.node(i)))
    }

    /// The cgroup root of machine `m`.
    fn cgroup_root(&self, m: &Machine) -> String {
        cgroup_root_name(self.bed.prefix(), m.name())
    }

    /// Waits until every node reports Ready.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        wait_until(timeout, "every node to be Ready", || {
            let ready = self.node_conditions("Ready")?;
            Ok((ready.len() == self.nodes.len()
                && ready.iter().all(|(_, status, _)| status == "True"))
            .then_some(()))
        })
    }

    /// `(node, status, message)` of condition `kind` on every registered node.
    pub fn node_conditions(&self, kind: &str) -> Result<Vec<(String, String, String)>> {
        let out = self.kubectl(&["get", "nodes", "-o", "json"])?;
        let nodes: serde_json::Value = serde_json::from_str(&out)?;
        let items = nodes["items"].as_array().context("node list has items")?;
        Ok(items
            .iter()
            .filter_map(|node| {
                let name = node["metadata"]["name"].as_str()?.to_owned();
                let condition = node["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == kind)?;
                Some((
                    name,
                    condition["status"].as_str().unwrap_or_default().to_owned(),
                    condition["message"].as_str().unwrap_or_default().to_owned(),
                ))
            })
            .collect())
    }

    /// Node `i` (1-based).
    fn node(&self, i: usize) -> &Machine {
        let n = self.nodes.len();
        match i.checked_sub(1).and_then(|k| self.nodes.get(k)) {
            Some(node) => node,
            None => panic!("no node {i}: nodes are numbered 1..={n}"),
        }
    }

    /// Starts etcd, the API server (waiting until it is ready), the controller-manager and the
    /// scheduler.
    fn start_control_plane(&self) -> Result<()> {
        let pki = &self.pki;
        let cp = &self.control_plane;
        let d = cp.dir();
        let cp_ip = cp.ip();
        let apiserver_cert = pki.issue(
            "apiserver",
            "kube-apiserver",
            &[],
            &Usage::Server {
                ips: vec![Ipv4Addr::LOCALHOST, cp_ip, KUBERNETES_SERVICE_IP],
                names: [
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ]
                .map(String::from)
                .to_vec(),
            },
        )?;
        let kubelet_client = pki.issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &Usage::Client,
        )?;
        let (sa_key, sa_pub) = pki.service_account();
        let etcd_dir = d.join("etcd");
        cp.spawn(
            "etcd",
            &self.tools.bin("etcd"),
            &args(&[
                "--data-dir",
                &path(&etcd_dir),
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "default=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ]),
            &[],
        )?;
        cp.spawn(
            "kube-apiserver",
            &self.tools.bin("kube-apiserver"),
            &args(&[
                "--etcd-servers",
                "http://127.0.0.1:2379",
                "--bind-address",
                "0.0.0.0",
                "--secure-port",
                &APISERVER_PORT.to_string(),
                "--advertise-address",
                &cp_ip.to_string(),
                "--tls-cert-file",
                &path(&apiserver_cert.cert),
                "--tls-private-key-file",
                &path(&apiserver_cert.key),
                "--client-ca-file",
                &path(&pki.ca()),
                "--kubelet-client-certificate",
                &path(&kubelet_client.cert),
                "--kubelet-client-key",
                &path(&kubelet_client.key),
                "--kubelet-preferred-address-types",
                "InternalIP",
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                &path(&sa_pub),
                "--service-account-signing-key-file",
                &path(&sa_key),
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--authorization-mode",
                "Node,RBAC",
                "--enable-admission-plugins",
                "NodeRestriction",
                "--allow-privileged=true",
                "--cert-dir",
                &path(&d.join("apiserver-certs")),
                "--profiling=false",
            ]),
            &[],
        )?;
        wait_until(CONTROL_PLANE_TIMEOUT, "the API server to be ready", || {
            if !cp.is_running("kube-apiserver") || !cp.is_running("etcd") {
                bail!(
                    "the control plane stopped; see {}",
                    cp.log_path("kube-apiserver").display()
                );
            }
            Ok(self
                .kubectl(&["get", "--raw", "/readyz"])
                .ok()
                .filter(|out| out.trim() == "ok")
                .map(drop))
        })?;
        let server = format!("https://{cp_ip}:{APISERVER_PORT}");
        for (component, user) in [
            ("kube-controller-manager", "system:kube-controller-manager"),
            ("kube-scheduler", "system:kube-scheduler"),
        ] {
            let pair = pki.issue(component, user, &[], &Usage::Client)?;
            pki.write_kubeconfig(
                &d.join(format!("{component}.kubeconfig")),
                &server,
                user,
                &pair,
            )?;
        }
        cp.spawn(
            "kube-controller-manager",
            &self.tools.bin("kube-controller-manager"),
            &args(&[
                "--kubeconfig",
                &path(&d.join("kube-controller-manager.kubeconfig")),
                "--authentication-kubeconfig",
                &path(&d.join("kube-controller-manager.kubeconfig")),
                "--authorization-kubeconfig",
                &path(&d.join("kube-controller-manager.kubeconfig")),
                "--service-account-private-key-file",
                &path(&sa_key),
                "--root-ca-file",
                &path(&pki.ca()),
                "--use-service-account-credentials",
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--cluster-name",
                "weave-cluster",
                "--leader-elect=false",
                "--cert-dir",
                &path(&d.join("controller-manager-certs")),
                "--profiling=false",
            ]),
            &[],
        )?;
        cp.spawn(
            "kube-scheduler",
            &self.tools.bin("kube-scheduler"),
            &args(&[
                "--kubeconfig",
                &path(&d.join("kube-scheduler.kubeconfig")),
                "--authentication-kubeconfig",
                &path(&d.join("kube-scheduler.kubeconfig")),
                "--authorization-kubeconfig",
                &path(&d.join("kube-scheduler.kubeconfig")),
                "--leader-elect=false",
                "--cert-dir",
                &path(&d.join("scheduler-certs")),
                "--profiling=false",
            ]),
            &[],
        )?;
        Ok(())
    }

    /// Builds the images into `images/` and records their references in `images.txt`.
    fn build_images(&self, weave_bins: &Path) -> Result<Vec<String>> {
        let out = self.dir.join("images");
        std::fs::create_dir_all(&out)?;
        let specs = [
            images::pause(&self.tools)?,
            images::agnhost(&self.tools)?,
            images::weave(weave_bins, &out.join("weave-root"), &self.tools)?,
        ];
        let mut references = Vec::new();
        for (k, spec) in specs.iter().enumerate() {
            spec.write_archive(&out.join(format!("{k}.tar")))
                .with_context(|| format!("build image {}", spec.reference))?;
            references.push(spec.reference.clone());
        }
        std::fs::write(self.dir.join("images.txt"), references.join("\n") + "\n")?;
        Ok(references)
    }

    /// Configures node `node` and starts its containerd (importing the images), kubelet and
    /// kube-proxy. Runs on a thread per node.
    fn start_node(&self, node: &Machine) -> Result<()> {
        let pki = &self.pki;
        let d = node.dir();
        let name = node.name();
        let server = format!("https://{}:{APISERVER_PORT}", self.control_plane.ip());
        let kubelet_pair = pki.issue(
            &format!("kubelet-{name}"),
            &format!("system:node:{name}"),
            &["system:nodes"],
            &Usage::Client,
        )?;
        pki.write_kubeconfig(
            &d.join("kubelet.kubeconfig"),
            &server,
            &format!("system:node:{name}"),
            &kubelet_pair,
        )?;
        let proxy_pair = pki.issue(
            &format!("kube-proxy-{name}"),
            "system:kube-proxy",
            &[],
            &Usage::Client,
        )?;
        pki.write_kubeconfig(
            &d.join("kube-proxy.kubeconfig"),
            &server,
            "system:kube-proxy",
            &proxy_pair,
        )?;
        let resolv = d.join("resolv.conf");
        std::fs::write(
            &resolv,
            "# the test bed has no DNS server outside the cluster\n",
        )?;
        let cgroup_root = format!("/{}", cgroup_root_name(self.bed.prefix(), name));
        let pause_image = self
            .images
            .first()
            .context("the pause image is built first")?;
        let tools_bin = self.tools.dir().join("bin");
        let ca = pki.ca();
        let proxy_kubeconfig = d.join("kube-proxy.kubeconfig");
        let facts = NodeFacts {
            name,
            cgroup_root: &cgroup_root,
            tools_bin: &tools_bin,
            pause_image,
            ca: &ca,
            resolv_conf: &resolv,
            proxy_kubeconfig: &proxy_kubeconfig,
            cluster_cidr: CLUSTER_CIDR,
        };
        for (file, text) in [
            ("containerd.toml", config::containerd(&facts)),
            ("kubelet.json", config::kubelet(&facts)),
            ("kube-proxy.json", config::kube_proxy(&facts)),
        ] {
            std::fs::write(d.join(file), text)
                .with_context(|| format!("write {file} of {name}"))?;
        }
        let env = [(
            "PATH".to_owned(),
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                tools_bin.display()
            ),
        )];
        node.spawn(
            "containerd",
            &self.tools.bin("containerd"),
            &args(&["--config", &path(&d.join("containerd.toml"))]),
            &env,
        )?;
        let socket = d.join("run/containerd/containerd.sock");
        let ctr = |extra: &[&str]| {
            run(Command::new(self.tools.bin("ctr"))
                .arg("--address")
                .arg(&socket)
                .args(["--namespace", "k8s.io"])
                .args(extra))
        };
        wait_until(CONTAINERD_TIMEOUT, &format!("containerd on {name}"), || {
            if !node.is_running("containerd") {
                bail!(
                    "containerd on {name} stopped; see {}",
                    node.log_path("containerd").display()
                );
            }
            Ok(ctr(&["version"]).ok().map(drop))
        })?;
        for k in 0..self.images.len() {
            let archive = self.dir.join("images").join(format!("{k}.tar"));
            ctr(&[
                "images",
                "import",
                "--platform",
                "linux/amd64",
                &path(&archive),
            ])
            .with_context(|| format!("import {} on {name}", self.images[k]))?;
        }
        node.spawn(
            "kubelet",
            &self.tools.bin("kubelet"),
            &args(&[
                "--config",
                &path(&d.join("kubelet.json")),
                "--kubeconfig",
                &path(&d.join("kubelet.kubeconfig")),
                "--hostname-override",
                name,
                "--node-ip",
                &node.ip().to_string(),
            ]),
            &env,
        )?;
        node.spawn(
            "kube-proxy",
            &self.tools.bin("kube-proxy"),
            &args(&["--config", &path(&d.join("kube-proxy.json"))]),
            &env,
        )?;
        Ok(())
    }

    /// Waits until every node has registered.
    fn wait_registered(&self) -> Result<()> {
        wait_until(REGISTER_TIMEOUT, "every node to register", || {
            for node in &self.nodes {
                if !node.is_running("kubelet") {
                    bail!(
                        "the kubelet on {} stopped; see {}",
                        node.name(),
                        node.log_path("kubelet").display()
                    );
                }
            }
            let out = self.kubectl(&["get", "nodes", "-o", "name"])?;
            Ok((out.lines().count() == self.nodes.len()).then_some(()))
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the logs: the directory's removal is the bed's last cleanup step.
            let kept = state::keep_dir(&self.dir);
            eprintln!(
                "cluster: keeping {} for its logs ({kept})",
                self.dir.display()
            );
        }
        // The bed (dropped after this) kills every process, removes cgroups, namespaces and
        // the directory.
    }
}

/// Runs the cluster's `name` tool (`helm`, `crictl`, …) with the admin kubeconfig in its
/// environment; returns stdout.
pub fn run_tool(cluster: &Cluster, name: &str, args: &[&str]) -> Result<String> {
    run(Command::new(cluster.tools.bin(name))
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(args))
}

/// The name of machine `machine`'s cgroup root (one directory in every hierarchy).
pub(crate) fn cgroup_root_name(prefix: &str, machine: &str) -> String {
    format!("{prefix}-{machine}")
}

/// Checks the user's cluster directory before anything is made: it must not exist, or be
/// empty, and must not lie where the machines overlay the host's files.
fn check_dir(dir: &Path) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("the cluster directory {} is not empty", dir.display());
    }
    let absolute = match dir.canonicalize() {
        Ok(path) => path,
        Err(_) => {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let parent = parent.canonicalize().with_context(|| {
                format!(
                    "the cluster directory's parent {} must exist",
                    parent.display()
                )
            })?;
            parent.join(
                dir.file_name()
                    .context("the cluster directory needs a name")?,
            )
        }
    };
    if let Some(reserved) = node_init::RESERVED_ROOTS
        .iter()
        .find(|r| absolute.starts_with(r))
    {
        bail!(
            "the cluster directory {} must not be under {reserved} (machines overlay it)",
            absolute.display()
        );
    }
    Ok(())
}

/// `bin/` of the cluster: links to the clients of its version.
fn link_tools(dir: &Path, tools: &Tools) -> Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for name in ["kubectl", "crictl", "helm", "ctr"] {
        std::os::unix::fs::symlink(tools.bin(name), bin.join(name))
            .with_context(|| format!("link {name} into {}", bin.display()))?;
    }
    Ok(())
}

/// A random machine id (32 hex digits, as systemd writes it).
fn machine_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Owned arguments.
fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A path as an argument string.
fn path(p: &Path) -> String {
    p.display().to_string()
}
