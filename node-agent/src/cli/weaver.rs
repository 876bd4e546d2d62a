// SPDX-License-Identifier: Apache-2.0
//! Flags of the `weaver` daemon. Every flag also reads `WEAVE_<FLAG>` from
//! the environment, because Kubernetes manifests configure us through env.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::LogFormat;
use crate::config::{parse_duration, parse_peer_addr, Config, IpamSettings};
use crate::crypto::Passwords;
use crate::dns::listen::Listen;
use crate::dns::DnsSettings;
use crate::mesh::PeerName;

/// weaver: the per-node agent of the weave network.
#[derive(Debug, Parser)]
#[command(name = "weaver", version, about)]
pub struct Cli {
    /// Peers to connect to: IP, IP:PORT or `[IPv6]:PORT` (port defaults to --port).
    #[arg(env = "WEAVE_PEERS", value_delimiter = ' ')]
    pub peers: Vec<String>,
    /// Peer name (aa:bb:cc:dd:ee:ff); default: the one persisted in --state-dir, else random.
    #[arg(long, env = "WEAVE_NAME")]
    pub name: Option<PeerName>,
    /// Nickname shown to other peers; default: the host name.
    #[arg(long, env = "WEAVE_NICKNAME")]
    pub nickname: Option<String>,
    /// Address to accept peer connections on.
    #[arg(long, env = "WEAVE_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// TCP port for peer connections.
    #[arg(long, env = "WEAVE_PORT", default_value_t = 6783, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Directory for persistent state (peer name, later IPAM data).
    #[arg(long, env = "WEAVE_STATE_DIR", default_value = "/var/lib/weave")]
    pub state_dir: PathBuf,
    /// Most simultaneous peer connections.
    #[arg(long, env = "WEAVE_CONN_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub conn_limit: u32,
    /// Local HTTP API address ("off" disables it).
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = weave_api::DEFAULT_HTTP_ADDR)]
    pub http_addr: String,
    /// Prometheus metrics address, `GET /metrics` ("off" disables it).
    #[arg(long, env = "WEAVE_METRICS_ADDR", default_value = "0.0.0.0:6782")]
    pub metrics_addr: String,
    /// Local API Unix socket ("off" disables it).
    #[arg(long, env = "WEAVE_API_SOCKET", default_value = weave_api::DEFAULT_API_SOCKET)]
    pub api_socket: String,
    /// Heartbeat interval on peer connections (e.g. 500ms, 1s).
    #[arg(long, env = "WEAVE_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Close a peer connection after this long without input.
    #[arg(long, env = "WEAVE_READ_TIMEOUT", default_value = "6s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Interval of anti-entropy gossip.
    #[arg(long, env = "WEAVE_GOSSIP_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub gossip_interval: Duration,
    /// Bridge the pods attach to ("off" runs the control plane only).
    #[arg(long, env = "WEAVE_BRIDGE", default_value = "weave")]
    pub bridge: String,
    /// Overlay MTU; default: the underlay MTU minus the encapsulation overhead.
    #[arg(long, env = "WEAVE_MTU", value_parser = clap::value_parser!(u32).range(576..=65000))]
    pub mtu: Option<u32>,
    /// Carry all pod traffic in the sleeve: no kernel VXLAN fast path.
    #[arg(long, env = "WEAVE_NO_FASTDP")]
    pub no_fastdp: bool,
    /// UDP port of the kernel fast path (VXLAN).
    #[arg(long, env = "WEAVE_FASTDP_PORT", default_value_t = crate::fastdp::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub fastdp_port: u16,
    /// Address range IPAM allocates from ("off" disables IPAM).
    #[arg(long, env = "WEAVE_IPALLOC_RANGE", default_value = "10.32.0.0/12")]
    pub ipalloc_range: String,
    /// Subnet for allocations that name none; default: the whole range.
    #[arg(long, env = "WEAVE_IPALLOC_DEFAULT_SUBNET")]
    pub ipalloc_default_subnet: Option<String>,
    /// How the range gets its first owners: consensus=N, seed=NAME,... or
    /// observer; default: consensus among the initial peers and this one.
    #[arg(long, env = "WEAVE_IPALLOC_INIT")]
    pub ipalloc_init: Option<String>,
    /// File holding the mesh password: one line, or two during a rotation
    /// (the new password first, then the old one). Every peer needs it.
    #[arg(long, env = "WEAVE_PASSWORD_FILE", conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    /// The mesh password itself (visible in `ps`: for demos; prefer
    /// --password-file or WEAVE_PASSWORD).
    #[arg(long, env = "WEAVE_PASSWORD", hide_env_values = true)]
    pub password: Option<Passwords>,
    /// Do not masquerade pod traffic leaving the range (pods then need routes back from the
    /// outside).
    #[arg(long, env = "WEAVE_NO_MASQUERADE")]
    pub no_masquerade: bool,
    /// Destinations (CIDRs) pods reach with their own addresses, unmasqueraded: networks
    /// that route the pod range back to the nodes.
    #[arg(long, env = "WEAVE_NO_MASQUERADE_TO", value_delimiter = ' ')]
    pub no_masquerade_to: Vec<String>,
    /// Kubernetes: peers are the InternalIPs of all Nodes, followed as Nodes come and go;
    /// the first IP allocation split waits for a majority of the Nodes; a deleted Node's
    /// space is reclaimed; the Node's NetworkUnavailable condition is cleared.
    #[arg(long, env = "WEAVE_KUBE_PEERS")]
    pub kube_peers: bool,
    /// This Node's name for --kube-peers (the manifest sets it from spec.nodeName);
    /// default: the host name. Also the default nickname.
    #[arg(long, env = "WEAVE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubeconfig for --kube-peers outside a pod; default: the in-cluster service account.
    #[arg(long, env = "WEAVE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the peer registry ConfigMap (weave-net) for --kube-peers.
    #[arg(long, env = "WEAVE_KUBE_NAMESPACE", default_value = "kube-system")]
    pub kube_namespace: String,
    /// Turn weaveDNS off.
    #[arg(long, env = "WEAVE_NO_DNS")]
    pub no_dns: bool,
    /// Where weaveDNS listens (UDP and TCP), IP:PORT; default: port 53 on every IPv4
    /// address of the bridge, followed as they change.
    #[arg(long, env = "WEAVE_DNS_LISTEN_ADDRESS")]
    pub dns_listen_address: Option<SocketAddr>,
    /// The domain weaveDNS answers for.
    #[arg(long, env = "WEAVE_DNS_DOMAIN", default_value = "weave.local.")]
    pub dns_domain: String,
    /// TTL of weaveDNS answers, seconds (low, so that moves are seen quickly).
    #[arg(long, env = "WEAVE_DNS_TTL", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=86400))]
    pub dns_ttl: u32,
    /// Resolver configuration naming the upstream servers for names outside the domain;
    /// re-read when it changes.
    #[arg(long, env = "WEAVE_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// How long each upstream server gets to answer before the next is tried (SERVFAIL
    /// after the last).
    #[arg(long, env = "WEAVE_DNS_UPSTREAM_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub dns_upstream_timeout: Duration,
    /// Log level or filter (RUST_LOG overrides).
    #[arg(long, env = "WEAVE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "WEAVE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Cli {
    /// Validates the flags into a [`Config`].
    pub fn into_config(self) -> Result<Config, String> {
        let peers = self
            .peers
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| parse_peer_addr(p, self.port))
            .collect::<Result<Vec<_>, _>>()?;
        let http_addr = optional_addr("--http-addr", &self.http_addr)?;
        let metrics_addr = optional_addr("--metrics-addr", &self.metrics_addr)?;
        let api_socket = match self.api_socket.as_str() {
            "off" | "" => None,
            p => Some(PathBuf::from(p)),
        };
        let bridge = match self.bridge.as_str() {
            "off" | "" => None,
            b if b.len() > 15 => {
                return Err(format!(
                    "invalid --bridge {b:?}: interface names have at most 15 bytes"
                ))
            }
            b => Some(b.to_string()),
        };
        let dns = self.dns_settings(bridge.as_deref())?;
        if self.read_timeout <= self.heartbeat {
            return Err(format!(
                "--read-timeout ({:?}) must be longer than --heartbeat ({:?})",
                self.read_timeout, self.heartbeat
            ));
        }
        let password = match (&self.password_file, self.password) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read --password-file {}: {e}", path.display()))?;
                Some(
                    text.parse::<Passwords>()
                        .map_err(|e| format!("invalid --password-file {}: {e}", path.display()))?,
                )
            }
            (None, p) => p,
        };
        let kube = self.kube_peers.then(|| crate::kube::KubeSettings {
            node_name: self.node_name.clone().unwrap_or_else(hostname),
            namespace: self.kube_namespace.clone(),
            registry: crate::kube::REGISTRY_NAME.to_owned(),
            kubeconfig: self.kubeconfig.clone(),
        });
        if !self.kube_peers && (self.kubeconfig.is_some() || self.node_name.is_some()) {
            return Err("--kubeconfig and --node-name need --kube-peers".into());
        }
        let nickname = self
            .nickname
            .clone()
            .or_else(|| kube.as_ref().map(|k| k.node_name.clone()))
            .unwrap_or_else(hostname);
        let ipam = IpamSettings::parse(
            &self.ipalloc_range,
            self.ipalloc_default_subnet.as_deref(),
            self.ipalloc_init.as_deref(),
            peers.len(),
        )?;
        Ok(Config {
            name: self.name,
            nickname,
            host: self.host,
            port: self.port,
            state_dir: self.state_dir,
            conn_limit: self.conn_limit as usize,
            http_addr,
            metrics_addr,
            api_socket,
            peers,
            heartbeat: self.heartbeat,
            read_timeout: self.read_timeout,
            gossip_interval: self.gossip_interval,
            bridge,
            mtu: self.mtu,
            fastdp_port: match (self.no_fastdp, self.fastdp_port) {
                (true, _) => None,
                (false, p) if p == self.port => {
                    return Err(format!(
                        "--fastdp-port {p} is the peers' port (--port): the sleeve's UDP socket uses it"
                    ))
                }
                (false, p) => Some(p),
            },
            ipam,
            password,
            kube,
            masquerade: !self.no_masquerade,
            masquerade_exceptions: self
                .no_masquerade_to
                .iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| {
                    c.trim()
                        .parse()
                        .map_err(|e| format!("--no-masquerade-to {c:?}: {e}"))
                })
                .collect::<Result<_, _>>()?,
            dns,
        })
    }

    /// The DNS flags; `None` with `--no-dns`, or without a bridge and a
    /// listen address.
    fn dns_settings(&self, bridge: Option<&str>) -> Result<Option<DnsSettings>, String> {
        if self.no_dns {
            return Ok(None);
        }
        let domain = crate::dns::DnsName::parse(&self.dns_domain)
            .map_err(|e| format!("--dns-domain: {e}"))?;
        let listen = match (self.dns_listen_address, bridge) {
            (Some(a), _) => Listen::Fixed(a),
            (None, Some(b)) => Listen::Bridge {
                bridge: b.to_string(),
                port: 53,
            },
            (None, None) => return Ok(None),
        };
        Ok(Some(DnsSettings {
            listen,
            domain: crate::dns::Domain::new(domain),
            ttl: self.dns_ttl,
            resolv_conf: self.resolv_conf.clone(),
            upstream_timeout: self.dns_upstream_timeout,
        }))
    }
}

/// An `IP:PORT` flag value, or `off`/empty for none.
fn optional_addr(flag: &str, value: &str) -> Result<Option<SocketAddr>, String> {
    match value {
        "off" | "" => Ok(None),
        a => a
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| format!("invalid {flag} {a:?}: expected IP:PORT or \"off\"")),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_config() {
        let cli = Cli::try_parse_from([
            "weaver",
            "10.0.0.1",
            "10.0.0.2:7000",
            "--port",
            "6790",
            "--http-addr",
            "off",
            "--nickname",
            "n1",
        ])
        .unwrap();
        let cfg = cli.into_config().unwrap();
        assert_eq!(
            cfg.peers,
            vec![
                "10.0.0.1:6790".parse().unwrap(),
                "10.0.0.2:7000".parse().unwrap()
            ]
        );
        assert_eq!(cfg.http_addr, None);
        assert_eq!(cfg.nickname, "n1");
        assert_eq!(cfg.conn_limit, 100);
        assert!(cfg.password.is_none());
        assert_eq!(cfg.fastdp_port, Some(6784));
        let off = Cli::try_parse_from(["weaver", "--no-fastdp"]).unwrap();
        assert_eq!(off.into_config().unwrap().fastdp_port, None);
        let other = Cli::try_parse_from(["weaver", "--fastdp-port", "4789"]).unwrap();
        assert_eq!(other.into_config().unwrap().fastdp_port, Some(4789));
        let dns = cfg.dns.unwrap();
        assert_eq!(dns.domain.name().as_str(), "weave.local.");
        assert_eq!(
            dns.listen,
            Listen::Bridge {
                bridge: "weave".into(),
                port: 53
            }
        );
        assert_eq!(dns.ttl, 1);
        let cli = Cli::try_parse_from(["weaver", "--bridge", "off"]).unwrap();
        assert!(
            cli.into_config().unwrap().dns.is_none(),
            "no bridge, no address: no DNS"
        );
        let cli = Cli::try_parse_from(["weaver", "--no-dns"]).unwrap();
        assert!(cli.into_config().unwrap().dns.is_none());
    }

    #[test]
    fn passwords_come_from_a_file_or_the_flag_and_never_print() {
        let dir = std::env::temp_dir().join(format!("weaver-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "new-one\nold-one\n").unwrap();
        let cli =
            Cli::try_parse_from(["weaver", "--password-file", file.to_str().unwrap()]).unwrap();
        let cfg = cli.into_config().unwrap();
        assert_eq!(cfg.password.as_ref().map(Passwords::len), Some(2));
        assert!(!format!("{cfg:?}").contains("new-one"));
        let cli = Cli::try_parse_from(["weaver", "--password", "demo-secret"]).unwrap();
        assert!(!format!("{cli:?}").contains("demo-secret"));
        assert_eq!(
            cli.into_config().unwrap().password.map(|p| p.len()),
            Some(1)
        );
        std::fs::write(&file, "\n").unwrap();
        let cli =
            Cli::try_parse_from(["weaver", "--password-file", file.to_str().unwrap()]).unwrap();
        assert!(cli.into_config().unwrap_err().contains("empty"));
        assert!(Cli::try_parse_from(["weaver", "--password", ""]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Cli::try_parse_from(["weaver", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["weaver", "--name", "zz"]).is_err());
        let bad_peer = Cli::try_parse_from(["weaver", "nonsense"]).unwrap();
        assert!(bad_peer
            .into_config()
            .unwrap_err()
            .contains("invalid peer address"));
        assert!(Cli::try_parse_from(["weaver", "--fastdp-port", "0"]).is_err());
        let clash = Cli::try_parse_from(["weaver", "--fastdp-port", "6783"]).unwrap();
        assert!(clash.into_config().unwrap_err().contains("--port"));
        let bad_http = Cli::try_parse_from(["weaver", "--http-addr", "x"]).unwrap();
        assert!(bad_http.into_config().is_err());
        let bad_domain = Cli::try_parse_from(["weaver", "--dns-domain", "a..b"]).unwrap();
        assert!(bad_domain
            .into_config()
            .unwrap_err()
            .contains("--dns-domain"));
        let bad_timeout =
            Cli::try_parse_from(["weaver", "--heartbeat", "5s", "--read-timeout", "2s"]).unwrap();
        assert!(bad_timeout.into_config().is_err());
    }
}
