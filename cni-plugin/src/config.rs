// SPDX-License-Identifier: Apache-2.0
//! The network configuration on stdin (spec §"Network configuration"):
//! decoded once into [`NetConf`] and validated into typed values, so the
//! commands never look at raw strings. Unknown keys are ignored, because a
//! runtime passes every key of the conflist entry through (`capabilities`,
//! `args`, `runtimeConfig`, other plugins' settings).
//!
//! Keys of `weave-net`: `socket` (the agent's API socket, default
//! `/run/weave/weave.sock`), `bridge`, `mtu`, `hairpinMode` (default true,
//! as on Weave Net), `ipam` (`subnet`, `gateway`, `routes`; `type` absent or
//! `weave-ipam`), `dns`. `weave-ipam` reads the `ipam` section (and its own
//! `socket` there).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use weave_api::net::{check_network, parse_net, IpNet, Ipv4Net};

use crate::error::{Error, Result};

/// Spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where the agent listens unless the config says otherwise.
pub const DEFAULT_SOCKET: &str = weave_api::DEFAULT_API_SOCKET;

/// A spec version as a comparable triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u8, pub u8, pub u8);

impl Version {
    /// Spec 0.4.0: CHECK, `prevResult` on DEL.
    pub const V0_4_0: Version = Version(0, 4, 0);
    /// Spec 1.0.0: `ips[].version` dropped.
    pub const V1_0_0: Version = Version(1, 0, 0);
    /// Spec 1.1.0: STATUS, GC, interface `mtu`.
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses a version this plugin supports; anything else is code 1.
    pub fn supported(s: &str) -> Result<Version> {
        if !SUPPORTED_VERSIONS.contains(&s) {
            return Err(Error::Version(format!(
                "cniVersion {s:?} is not supported; supported versions: {}",
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        let mut parts = s.split('.').map(|p| p.parse::<u8>().unwrap_or(0));
        Ok(Version(
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        ))
    }
}

/// One `{containerID, ifname}` of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// The container (sandbox) ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// A route of the `ipam` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<IpAddr>,
}

/// The `ipam` section as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct RawIpam {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    socket: Option<PathBuf>,
}

/// `runtimeConfig` as written (only the keys this plugin reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntimeConfig {
    /// The name to register in weaveDNS (runtimes without `CNI_ARGS` names).
    #[serde(default)]
    dns_name: Option<String>,
}

/// The config as written (only the keys this plugin reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    cni_version: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: Option<bool>,
    #[serde(default)]
    is_gateway: Option<bool>,
    #[serde(default)]
    ip_masq: Option<bool>,
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(default)]
    dns: Option<Value>,
    #[serde(default)]
    runtime_config: Option<RawRuntimeConfig>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
}

/// A route to put in the pod and the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteConf {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; the pod's gateway when the config names none.
    pub gw: Option<IpAddr>,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` as given (echoed in results).
    pub cni_version: String,
    /// The same, parsed.
    pub version: Version,
    /// Network name.
    pub name: String,
    /// The agent's API socket.
    pub socket: PathBuf,
    /// Bridge override; the agent's bridge when absent.
    pub bridge: Option<String>,
    /// MTU override; the agent's overlay MTU when absent.
    pub mtu: Option<u32>,
    /// Hairpin on the bridge port.
    pub hairpin: bool,
    /// Subnet to allocate in (`ipam.subnet`); the default subnet when absent.
    pub subnet: Option<Ipv4Net>,
    /// Gateway override (`ipam.gateway`).
    pub gateway: Option<IpAddr>,
    /// Routes (`ipam.routes`); a default route via the gateway when absent.
    pub routes: Option<Vec<RouteConf>>,
    /// `dns`, copied into the result (without `register`).
    pub dns: Option<Value>,
    /// `dns.register`: register the container's name in weaveDNS and make
    /// weaveDNS the pod's resolver.
    pub dns_register: bool,
    /// `runtimeConfig.dnsName`: the name to register, before `CNI_ARGS`'s.
    pub dns_name: Option<String>,
    /// `prevResult`, when the runtime sent one.
    pub prev_result: Option<Value>,
    /// GC: attachments to keep (`cni.dev/valid-attachments`, or the older
    /// `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Decodes and validates stdin: code 6 for JSON that is not a config
    /// object, code 1 for an unsupported `cniVersion`, code 7 for invalid
    /// values.
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let value: Value = serde_json::from_slice(stdin).map_err(Error::Decode)?;
        if !value.is_object() {
            // serde would take an array for a struct, field by field.
            return Err(Error::Decode(serde::de::Error::custom(
                "the network config must be a JSON object",
            )));
        }
        let raw: RawConf = serde_json::from_value(value).map_err(Error::Decode)?;
        let cni_version = raw
            .cni_version
            .ok_or_else(|| Error::Config("cniVersion is missing".into()))?;
        let version = Version::supported(&cni_version)?;
        let name = raw.name.unwrap_or_default();
        check_network_name(&name)?;
        if raw.is_gateway == Some(true) {
            return Err(Error::Config(
                "isGateway is not supported: weave routes pods through its bridge".into(),
            ));
        }
        if raw.ip_masq == Some(true) {
            return Err(Error::Config(
                "ipMasq is not supported: chain a plugin that masquerades".into(),
            ));
        }
        if let Some(b) = &raw.bridge {
            if b.is_empty() || b.len() > 15 || b.contains(['/', ':', ' ']) {
                return Err(Error::Config(format!(
                    "bridge {b:?} is not an interface name"
                )));
            }
        }
        if let Some(m) = raw.mtu {
            if !(576..=65535).contains(&m) {
                return Err(Error::Config(format!("mtu {m} is outside 576..=65535")));
            }
        }
        let mut dns = raw.dns;
        let dns_register = match dns.as_mut().and_then(Value::as_object_mut) {
            Some(d) => match d.remove("register") {
                None | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(other) => {
                    return Err(Error::Config(format!(
                        "dns.register must be true or false, not {other}"
                    )))
                }
            },
            None => false,
        };
        let ipam = raw.ipam.unwrap_or_default();
        match ipam.kind.as_deref() {
            None | Some("") | Some("weave-ipam") => {}
            Some(other) => {
                return Err(Error::Config(format!(
                    "ipam type {other:?} is not supported: weave-net allocates through weaver \
                     (leave ipam.type out or set it to weave-ipam)"
                )))
            }
        }
        let subnet = match ipam
            .subnet
            .as_deref()
            .map(|s| parse_network(s, "ipam.subnet"))
            .transpose()?
        {
            None => None,
            Some(IpNet::V4(s)) => Some(s),
            Some(IpNet::V6(_)) => return Err(Error::Config("ipam.subnet must be IPv4".into())),
        };
        let routes = ipam
            .routes
            .map(|routes| {
                routes
                    .iter()
                    .map(|r| {
                        Ok(RouteConf {
                            dst: parse_network(&r.dst, "ipam.routes[].dst")?,
                            gw: r.gw,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(NetConf {
            cni_version,
            version,
            name,
            socket: raw
                .socket
                .or(ipam.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            bridge: raw.bridge,
            mtu: raw.mtu,
            hairpin: raw.hairpin_mode.unwrap_or(true),
            subnet,
            gateway: ipam.gateway,
            routes,
            dns,
            dns_register,
            dns_name: raw.runtime_config.and_then(|r| r.dns_name),
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
        })
    }

    /// The IPAM identifier of an attachment on this network:
    /// `cni:NETWORK:CONTAINERID:IFNAME`, so that GC of one network
    /// (`cni:NETWORK:` prefix) never touches another.
    pub fn ipam_id(&self, container_id: &str, ifname: &str) -> String {
        format!("{}{container_id}:{ifname}", self.gc_prefix())
    }

    /// The IPAM id prefix of every attachment on this network.
    pub fn gc_prefix(&self) -> String {
        format!("cni:{}:", self.name)
    }
}

/// `cniVersion` of a VERSION request: whatever is there, if anything.
pub fn requested_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<Probe>(stdin)
        .ok()
        .and_then(|p| p.cni_version)
}

/// Spec: non-empty, starts alphanumeric, then `[A-Za-z0-9_.-]`.
fn check_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "network name {name:?} is invalid: it must start with a letter or digit and hold \
             only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// A network in CIDR form without host bits (`0.0.0.0/0` allowed).
fn parse_network(s: &str, key: &str) -> Result<IpNet> {
    let net = parse_net(s, key).map_err(Error::Config)?;
    check_network(net, key).map_err(Error::Config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net"}"#).unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.socket, PathBuf::from("/run/weave/weave.sock"));
        assert!(c.hairpin);
        assert_eq!(c.ipam_id("abc", "eth0"), "cni:weave:abc:eth0");
    }

    #[test]
    fn full_config_is_typed() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"n1","socket":"/tmp/s","mtu":1400,
                "hairpinMode":false,"capabilities":{"portMappings":true},"args":{"x":1},
                "ipam":{"subnet":"10.32.5.0/24","routes":[{"dst":"0.0.0.0/0"},{"dst":"10.40.0.0/16","gw":"10.32.5.1"}]},
                "dns":{"nameservers":["10.0.0.10"]}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet.unwrap().to_string(), "10.32.5.0/24");
        assert_eq!(c.routes.as_ref().unwrap().len(), 2);
        assert_eq!(c.mtu, Some(1400));
        assert!(!c.hairpin);
    }

    #[test]
    fn errors_have_the_right_codes() {
        let code = |s: &str| NetConf::parse(s.as_bytes()).unwrap_err().code();
        assert_eq!(code("{"), 6);
        assert_eq!(code("[]"), 6);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#), 6);
        assert_eq!(code(r#"{"cniVersion":"0.2.0","name":"n"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"9.9.9","name":"n"}"#), 1);
        assert_eq!(code(r#"{"name":"n"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":""}"#), 7);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipMasq":true}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.32.5.1/24"}}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#),
            7
        );
    }

    #[test]
    fn gc_list_is_read_from_either_key() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }

    #[test]
    fn version_probe_reads_only_the_version() {
        assert_eq!(
            requested_version(br#"{"cniVersion":"1.1.0"}"#).as_deref(),
            Some("1.1.0")
        );
        assert_eq!(requested_version(b"garbage"), None);
    }
}
