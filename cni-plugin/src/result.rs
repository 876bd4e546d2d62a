// SPDX-License-Identifier: Apache-2.0
//! The success result (spec §"Success"), rendered in the shape of the
//! requested version: `ips[].version` before 1.0.0, interface `mtu` from
//! 1.1.0 on. [`PrevResult`] reads a `prevResult` back for CHECK, leniently,
//! since later plugins of a chain may have added to it.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use weave_api::net::IpNet;

use crate::config::{NetConf, Version};
use crate::error::{Error, Result};

/// One interface of the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// The namespace path for the pod end; `None` on the host.
    pub sandbox: Option<String>,
    /// Its MTU (reported from 1.1.0 on).
    pub mtu: Option<u32>,
}

/// One address of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix.
    pub address: IpNet,
    /// The gateway of its subnet.
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` (absent in IPAM-only results).
    pub interface: Option<usize>,
}

/// One route of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteOut {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop.
    pub gw: Option<IpAddr>,
}

/// A success result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    /// Interfaces created (host end first, pod end second).
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes in the pod.
    pub routes: Vec<RouteOut>,
    /// DNS settings from the config.
    pub dns: Option<Value>,
}

impl CniResult {
    /// The result document for `cni_version` (already validated).
    pub fn to_json(&self, cni_version: &str, version: Version) -> Value {
        let mut doc = Map::new();
        doc.insert("cniVersion".into(), json!(cni_version));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(i.name));
                    if let Some(mac) = &i.mac {
                        o.insert("mac".into(), json!(mac));
                    }
                    if let Some(sandbox) = &i.sandbox {
                        o.insert("sandbox".into(), json!(sandbox));
                    }
                    if let (Some(mtu), true) = (i.mtu, version >= Version::V1_1_0) {
                        o.insert("mtu".into(), json!(mtu));
                    }
                    Value::Object(o)
                })
                .collect();
            doc.insert("interfaces".into(), Value::Array(ifs));
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version < Version::V1_0_0 {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), json!(family));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        doc.insert("ips".into(), Value::Array(ips));
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        doc.insert("routes".into(), Value::Array(routes));
        doc.insert("dns".into(), self.dns.clone().unwrap_or_else(|| json!({})));
        Value::Object(doc)
    }
}

/// The parts of a `prevResult` that CHECK verifies.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrevResult {
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<PrevInterface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<PrevIp>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<PrevRoute>,
}

/// An interface of a `prevResult`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrevInterface {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// Sandbox path, for pod interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// MTU (1.1.0).
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// An address of a `prevResult`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrevIp {
    /// Address with prefix.
    #[serde(default)]
    pub address: String,
    /// Gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Interface index.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route of a `prevResult`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrevRoute {
    /// Destination.
    #[serde(default)]
    pub dst: String,
    /// Next hop.
    #[serde(default)]
    pub gw: Option<String>,
}

impl PrevResult {
    /// The `prevResult` of a CHECK: refused below spec 0.4.0 (code 1), which
    /// has no CHECK; `None` if the runtime sent none.
    pub fn for_check(conf: &NetConf) -> Result<Option<PrevResult>> {
        if conf.version < Version::V0_4_0 {
            return Err(Error::Version(format!(
                "CHECK needs cniVersion 0.4.0 or later, not {}",
                conf.cni_version
            )));
        }
        conf.prev_result
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(Error::Decode)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vethwepl1234567".into(),
                    mac: Some(fmt_mac([2, 0, 0, 0, 0, 1])),
                    sandbox: None,
                    mtu: Some(1376),
                },
                Interface {
                    name: "eth0".into(),
                    mac: None,
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1376),
                },
            ],
            ips: vec![IpConfig {
                address: "10.32.0.5/12".parse().unwrap(),
                gateway: Some("10.32.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![RouteOut {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.32.0.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn shape_follows_the_version() {
        let old = sample().to_json("0.3.1", Version(0, 3, 1));
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = sample().to_json("1.0.0", Version::V1_0_0);
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["ips"][0]["interface"], 1);
        assert_eq!(v1["routes"][0]["dst"], "0.0.0.0/0");
        let v11 = sample().to_json("1.1.0", Version::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1376);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(v11["cniVersion"], "1.1.0");
    }

    #[test]
    fn prev_result_reads_back() {
        let doc = sample().to_json("1.0.0", Version::V1_0_0);
        let prev: PrevResult = serde_json::from_value(doc).unwrap();
        assert_eq!(prev.interfaces[1].name, "eth0");
        assert_eq!(prev.ips[0].address, "10.32.0.5/12");
        assert_eq!(prev.routes[0].gw.as_deref(), Some("10.32.0.1"));
    }
}
