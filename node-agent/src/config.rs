// SPDX-License-Identifier: Apache-2.0
//! Validated configuration of the agent, built from flags by the binary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::crypto::Passwords;
use crate::ipam::subnet::Subnet;
use crate::ipam::Init;
use crate::mesh::PeerName;

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Peer name to use instead of the persisted or generated one.
    pub name: Option<PeerName>,
    /// Nickname.
    pub nickname: String,
    /// Address to listen on for peers.
    pub host: IpAddr,
    /// TCP port for peers.
    pub port: u16,
    /// Where state is kept.
    pub state_dir: PathBuf,
    /// Most simultaneous connections.
    pub conn_limit: usize,
    /// Local HTTP API address; `None` disables it.
    pub http_addr: Option<SocketAddr>,
    /// Prometheus metrics address; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// API Unix socket; `None` disables it.
    pub api_socket: Option<PathBuf>,
    /// Initial targets.
    pub peers: Vec<SocketAddr>,
    /// Heartbeat interval on connections.
    pub heartbeat: Duration,
    /// Close a connection after this long without input.
    pub read_timeout: Duration,
    /// Interval of anti-entropy gossip.
    pub gossip_interval: Duration,
    /// Bridge for the sleeve data plane; `None` runs the control plane only.
    pub bridge: Option<String>,
    /// Overlay MTU; derived from the underlay when `None`.
    pub mtu: Option<u32>,
    /// UDP port of the kernel fast path; `None` (`--no-fastdp`) leaves all
    /// pod traffic to the sleeve.
    pub fastdp_port: Option<u16>,
    /// IP address management; `None` disables it.
    pub ipam: Option<IpamSettings>,
    /// Mesh password(s); `None` runs unencrypted.
    pub password: Option<Passwords>,
    /// Peers from the Kubernetes Nodes (`--kube-peers`); `None` runs without the API.
    pub kube: Option<crate::kube::KubeSettings>,
    /// Masquerade pod traffic leaving the range.
    pub masquerade: bool,
    /// Destinations pods reach with their own addresses (`--no-masquerade-to`).
    pub masquerade_exceptions: Vec<Subnet>,
    /// weaveDNS; `None` disables it.
    pub dns: Option<crate::dns::DnsSettings>,
}

/// IPAM flags, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamSettings {
    /// `--ipalloc-range`.
    pub range: Subnet,
    /// `--ipalloc-default-subnet` (the range when not given).
    pub default_subnet: Subnet,
    /// `--ipalloc-init`.
    pub init: Init,
    /// Whether `init` is the default (not given), which `--kube-peers` sizes by the Nodes.
    pub init_default: bool,
}

impl IpamSettings {
    /// Validates the flags; `peers` is the number of initial peers, which
    /// sizes the default consensus (the initial peers plus this one).
    pub fn parse(
        range: &str,
        default_subnet: Option<&str>,
        init: Option<&str>,
        peers: usize,
    ) -> Result<Option<Self>, String> {
        if matches!(range, "" | "off") {
            if default_subnet.is_some() || init.is_some() {
                return Err(
                    "--ipalloc-default-subnet and --ipalloc-init need an --ipalloc-range".into(),
                );
            }
            return Ok(None);
        }
        let range: Subnet = range.parse().map_err(|e| format!("--ipalloc-range: {e}"))?;
        let default_subnet = match default_subnet {
            None | Some("") => range,
            Some(s) => {
                let s: Subnet = s
                    .parse()
                    .map_err(|e| format!("--ipalloc-default-subnet: {e}"))?;
                if !range.covers(&s) {
                    return Err(format!(
                        "--ipalloc-default-subnet {s} is not inside --ipalloc-range {range}"
                    ));
                }
                s
            }
        };
        let init_default = matches!(init, None | Some(""));
        let init = match init {
            None | Some("") => Init::Consensus(peers + 1),
            Some(v) => parse_init(v)?,
        };
        Ok(Some(Self {
            range,
            default_subnet,
            init,
            init_default,
        }))
    }
}

/// Parses `consensus=N`, `seed=NAME,...` or `observer`.
fn parse_init(v: &str) -> Result<Init, String> {
    let bad = || {
        format!(
            "invalid --ipalloc-init {v:?}: expected consensus=N, seed=NAME,NAME,... or observer"
        )
    };
    match v.split_once('=') {
        None if v == "observer" => Ok(Init::Observer),
        Some(("consensus", n)) => {
            let n: usize = n.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(format!(
                    "invalid --ipalloc-init {v:?}: N must be at least 1"
                ));
            }
            Ok(Init::Consensus(n))
        }
        Some(("seed", names)) => {
            let peers = names
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse::<PeerName>()
                        .map_err(|e| format!("--ipalloc-init: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if peers.is_empty() {
                return Err(bad());
            }
            Ok(Init::Seed(peers))
        }
        _ => Err(bad()),
    }
}

/// Parses `IP`, `IP:PORT` or `[IPv6]:PORT`; a missing port is `default_port`.
pub fn parse_peer_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("invalid peer address {s:?}: port 0"));
        }
        return Ok(a);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| format!("invalid peer address {s:?}: expected IP, IP:PORT or [IPv6]:PORT"))
}

/// Parses durations like `500ms`, `2s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 2s, 1m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("invalid duration {s:?}: unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be positive"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses() {
        assert_eq!(
            parse_peer_addr("10.0.0.1", 6783).unwrap(),
            "10.0.0.1:6783".parse().unwrap()
        );
        assert_eq!(
            parse_peer_addr("10.0.0.1:7000", 6783).unwrap(),
            "10.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(
            parse_peer_addr("[fd00::1]:7000", 6783).unwrap(),
            "[fd00::1]:7000".parse().unwrap()
        );
        assert_eq!(
            parse_peer_addr("fd00::1", 6783).unwrap(),
            "[fd00::1]:6783".parse().unwrap()
        );
        for bad in ["", "host.example", "10.0.0.1:x", "10.0.0.1:0", "10.0.0.300"] {
            assert!(parse_peer_addr(bad, 6783).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipam_flags() {
        let s = IpamSettings::parse("10.32.0.0/12", None, None, 2)
            .unwrap()
            .unwrap();
        assert_eq!(s.default_subnet, s.range);
        assert_eq!(s.init, Init::Consensus(3));
        let s = IpamSettings::parse(
            "10.32.0.0/12",
            Some("10.40.0.0/16"),
            Some("seed=02:00:00:00:00:01,02:00:00:00:00:02"),
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.default_subnet.to_string(), "10.40.0.0/16");
        assert!(matches!(s.init, Init::Seed(ref p) if p.len() == 2));
        assert_eq!(IpamSettings::parse("off", None, None, 0).unwrap(), None);
        for (range, sub, init, want) in [
            ("10.32.0.1/12", None, None, "bits after the prefix"),
            ("10.32.0.0/12", Some("10.0.0.0/16"), None, "not inside"),
            ("10.32.0.0/12", None, Some("consensus=0"), "at least 1"),
            ("10.32.0.0/12", None, Some("seed=zz"), "invalid peer name"),
            ("10.32.0.0/12", None, Some("quorum"), "expected consensus=N"),
            ("off", Some("10.0.0.0/8"), None, "need an --ipalloc-range"),
        ] {
            let e = IpamSettings::parse(range, sub, init, 0).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        for bad in ["", "0s", "s", "1h", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
