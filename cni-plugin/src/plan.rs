// SPDX-License-Identifier: Apache-2.0
//! ADD and DEL as plans, without I/O: from the invocation, the network
//! config and (for ADD) the agent's one answer, everything that will be
//! done and reported: interface names, bridge, MTU, addresses, gateway,
//! routes and the CNI result. `exec.rs` carries a plan out.
//!
//! Names derive from the IPAM id `cni:NETWORK:CONTAINERID:IFNAME` alone
//! (the host end is `vethwepl` + 7 hex digits of its hash), so DEL needs
//! neither the namespace nor `prevResult` to find what to remove.
//!
//! Invariants: a plan is complete before the first change to the system
//! (a plan that cannot be made changes nothing); the result reports exactly
//! the addresses and routes the plan installs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde_json::Value;
use weave_api::net::{IpNet, Ipv4Net, Ipv6Net};
use weave_api::{CniAddReply, CniAddRequest, DnsSettings};
use weave_platform::wiring::{self, PodRoute, PodWiring, Wired};

use crate::agent::ALLOCATE_TIMEOUT_MS;
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{Error, Result};
use crate::result::{fmt_mac, CniResult, Interface, IpConfig, RouteOut};

/// Hex digits of the host-side veth name (`vethwepl` + 7 = 15 bytes).
const HOST_IF_DIGITS: usize = 7;
/// Overlay MTU when neither the config nor the agent names one (an agent
/// without a data plane, wiring to a bridge the config names).
const DEFAULT_MTU: u32 = 1376;

/// Host end of the veth of IPAM id `id`.
pub fn host_ifname(id: &str) -> String {
    wiring::host_ifname(id, HOST_IF_DIGITS)
}

/// The route to everything (`0.0.0.0/0`, or `::/0` for an IPv6 `gw`).
pub fn default_route(gw: IpAddr) -> IpNet {
    match gw {
        IpAddr::V4(_) => IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0 is a prefix")),
        IpAddr::V6(_) => IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).expect("0 is a prefix")),
    }
}

/// What ADD asks the agent for the attachment `id`: an address in the
/// configured subnet, and the gateway unless the config names one.
pub fn add_request(id: &str, conf: &NetConf, inv: &Invocation) -> Result<CniAddRequest> {
    let dns_name = if conf.dns_register {
        Some(conf.dns_name.clone().or(inv.name.clone()).ok_or_else(|| {
            Error::Config(
                "dns.register needs the container's name: runtimeConfig.dnsName or \
                 K8S_POD_NAME/NAME in CNI_ARGS"
                    .into(),
            )
        })?)
    } else {
        None
    };
    Ok(CniAddRequest {
        id: id.to_string(),
        subnet: conf.subnet,
        timeout_ms: Some(ALLOCATE_TIMEOUT_MS),
        gateway: conf.gateway.is_none(),
        bridge: conf.bridge.clone(),
        dns_name,
        netns: inv.netns.as_ref().map(|p| p.display().to_string()),
        ifname: Some(inv.ifname.clone()),
    })
}

/// The result's `dns`: weaveDNS first when the agent registered a name,
/// then what the config says.
pub fn result_dns(conf: Option<&Value>, weave: Option<&DnsSettings>) -> Option<Value> {
    let Some(w) = weave else {
        return conf.cloned();
    };
    let mut out = conf.and_then(Value::as_object).cloned().unwrap_or_default();
    let mut list = |key: &str, first: String| {
        let mut v = vec![Value::String(first.clone())];
        if let Some(Value::Array(old)) = out.get(key) {
            v.extend(old.iter().filter(|x| x.as_str() != Some(&first)).cloned());
        }
        out.insert(key.into(), Value::Array(v));
    };
    list("nameservers", w.nameserver.to_string());
    list("search", w.domain.clone());
    out.entry("domain")
        .or_insert_with(|| Value::String(w.domain.clone()));
    Some(Value::Object(out))
}

/// Everything one ADD does and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct AddPlan {
    /// The IPAM id.
    pub id: String,
    /// Host end of the veth.
    pub host_if: String,
    /// Pod end (`CNI_IFNAME`).
    pub pod_if: String,
    /// The pod's namespace.
    pub netns: PathBuf,
    /// The bridge the host end joins.
    pub bridge: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// The pod's addresses.
    pub addrs: Vec<IpNet>,
    /// The pod's gateway: the config's, else the bridge's address in the
    /// pod subnet.
    pub gateway: IpAddr,
    /// Routes in the pod, as the result lists them.
    pub routes: Vec<RouteOut>,
    /// Hairpin on the bridge port.
    pub hairpin: bool,
    /// `dns` of the config, copied into the result.
    pub dns: Option<Value>,
}

impl AddPlan {
    /// Plans the ADD of `inv` (whose namespace is `netns`) under `conf`
    /// with what the agent answered.
    pub fn new(
        inv: &Invocation,
        conf: &NetConf,
        netns: &Path,
        reply: CniAddReply,
    ) -> Result<AddPlan> {
        let id = conf.ipam_id(&inv.container_id, &inv.ifname);
        let bridge =
            conf.bridge.clone().or(reply.bridge).ok_or_else(|| {
                Error::Config("weaver runs without a bridge (--bridge off)".into())
            })?;
        let mtu = conf.mtu.or(reply.mtu).unwrap_or(DEFAULT_MTU);
        let first = *reply.addresses.first().ok_or_else(|| Error::Internal {
            op: format!("allocate an address for {id}"),
            source: std::io::Error::other("weaver returned no address"),
        })?;
        let gateway = conf
            .gateway
            .or(reply.gateway)
            .ok_or_else(|| Error::Internal {
                op: format!("find the gateway of {}", first.trunc()),
                source: std::io::Error::other("weaver returned no gateway"),
            })?;
        let routes = match &conf.routes {
            Some(routes) => routes
                .iter()
                .map(|r| RouteOut {
                    dst: r.dst,
                    gw: Some(r.gw.unwrap_or(gateway)),
                })
                .collect(),
            None => vec![RouteOut {
                dst: default_route(gateway),
                gw: Some(gateway),
            }],
        };
        Ok(AddPlan {
            host_if: host_ifname(&id),
            id,
            pod_if: inv.ifname.clone(),
            netns: netns.to_path_buf(),
            bridge,
            mtu,
            addrs: reply.addresses,
            gateway,
            routes,
            hairpin: conf.hairpin,
            dns: result_dns(conf.dns.as_ref(), reply.dns.as_ref()),
        })
    }

    /// The routes to install, in order.
    pub fn pod_routes(&self) -> Vec<PodRoute> {
        self.routes
            .iter()
            .map(|r| PodRoute {
                dst: r.dst,
                gateway: r.gw,
            })
            .collect()
    }

    /// The wiring of this plan, with `routes` from [`AddPlan::pod_routes`].
    pub fn wiring<'a>(&'a self, routes: &'a [PodRoute]) -> PodWiring<'a> {
        PodWiring {
            bridge: &self.bridge,
            host_if: &self.host_if,
            pod_if: &self.pod_if,
            netns: &self.netns,
            mtu: self.mtu,
            addrs: &self.addrs,
            routes,
            hairpin: self.hairpin,
        }
    }

    /// The CNI result once the plan is wired.
    pub fn result(&self, wired: &Wired) -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: self.host_if.clone(),
                    mac: wired.host_mac.map(fmt_mac),
                    sandbox: None,
                    mtu: Some(self.mtu),
                },
                Interface {
                    name: self.pod_if.clone(),
                    mac: wired.pod_mac.map(fmt_mac),
                    sandbox: Some(self.netns.display().to_string()),
                    mtu: Some(self.mtu),
                },
            ],
            ips: self
                .addrs
                .iter()
                .map(|a| IpConfig {
                    address: *a,
                    gateway: Some(self.gateway),
                    interface: Some(1),
                })
                .collect(),
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }
}

/// Everything one DEL does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelPlan {
    /// The IPAM id whose addresses are released.
    pub id: String,
    /// Host end of the veth to delete (the pod end goes with it).
    pub host_if: String,
}

impl DelPlan {
    /// Plans the DEL of `inv` under `conf`: from the names alone.
    pub fn new(inv: &Invocation, conf: &NetConf) -> DelPlan {
        let id = conf.ipam_id(&inv.container_id, &inv.ifname);
        DelPlan {
            host_if: host_ifname(&id),
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Command;

    pub(crate) fn inv() -> Invocation {
        Invocation {
            command: Command::Add,
            container_id: "ctr1".into(),
            netns: Some("/run/netns/p".into()),
            ifname: "eth0".into(),
            name: None,
        }
    }

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"weave","type":"weave-net"{extra}}}"#)
                .as_bytes(),
        )
        .expect("valid config")
    }

    fn reply() -> CniAddReply {
        CniAddReply {
            id: "cni:weave:ctr1:eth0".into(),
            addresses: vec!["10.32.0.5/12".parse().unwrap()],
            bridge: Some("weave".into()),
            mtu: Some(1376),
            gateway: Some("10.32.0.1".parse().unwrap()),
            dns: None,
        }
    }

    #[test]
    fn dns_register_asks_for_the_name_and_puts_weavedns_first_in_the_result() {
        let c = conf(r#","dns":{"register":true,"nameservers":["10.0.0.10"],"search":["svc"]}"#);
        assert!(c.dns_register);
        let mut i = inv();
        i.name = Some("web-1".into());
        let r = add_request("cni:weave:ctr1:eth0", &c, &i).unwrap();
        assert_eq!(r.dns_name.as_deref(), Some("web-1"));
        assert_eq!(r.ifname.as_deref(), Some(i.ifname.as_str()));
        assert_eq!(
            r.netns.map(std::path::PathBuf::from),
            i.netns.clone(),
            "where the pod lives, for weave ps"
        );
        let mut rep = reply();
        rep.dns = Some(DnsSettings {
            nameserver: "10.32.0.1".parse().unwrap(),
            domain: "weave.local".into(),
        });
        let plan = AddPlan::new(&i, &c, Path::new("/p"), rep).unwrap();
        assert_eq!(
            plan.dns,
            Some(serde_json::json!({
                "nameservers": ["10.32.0.1", "10.0.0.10"],
                "search": ["weave.local", "svc"],
                "domain": "weave.local",
            }))
        );
        // runtimeConfig.dnsName wins over CNI_ARGS.
        let c = conf(r#","dns":{"register":true},"runtimeConfig":{"dnsName":"db"}"#);
        assert_eq!(
            add_request("x", &c, &i).unwrap().dns_name.as_deref(),
            Some("db")
        );
        // Without a name: a config error, nothing asked.
        let e = add_request("x", &c_register(), &inv()).unwrap_err();
        assert!(e.to_string().contains("dns.register needs"), "{e}");
        // Without register: no name asked, the config's dns as it is.
        let c = conf(r#","dns":{"nameservers":["10.0.0.10"]}"#);
        assert_eq!(add_request("x", &c, &i).unwrap().dns_name, None);
        let plan = AddPlan::new(&i, &c, Path::new("/p"), reply()).unwrap();
        assert_eq!(
            plan.dns,
            Some(serde_json::json!({"nameservers": ["10.0.0.10"]}))
        );
        // register must be a boolean.
        let bad = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","dns":{"register":"yes"}}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("dns.register"));
    }

    fn c_register() -> NetConf {
        conf(r#","dns":{"register":true}"#)
    }

    #[test]
    fn the_agent_is_asked_for_the_gateway_only_without_one_configured() {
        let id = "cni:weave:ctr1:eth0";
        let r = add_request(id, &conf(""), &inv()).unwrap();
        assert!(r.gateway && r.subnet.is_none() && r.bridge.is_none());
        assert_eq!(r.timeout_ms, Some(ALLOCATE_TIMEOUT_MS));
        let r = add_request(
            id,
            &conf(r#","bridge":"br1","ipam":{"subnet":"10.32.9.0/24","gateway":"10.32.9.254"}"#),
            &inv(),
        )
        .unwrap();
        assert!(!r.gateway);
        assert_eq!(r.subnet, Some("10.32.9.0/24".parse().unwrap()));
        assert_eq!(r.bridge.as_deref(), Some("br1"));
    }

    #[test]
    fn a_default_route_via_the_bridge_and_a_result_that_says_so() {
        let plan = AddPlan::new(&inv(), &conf(""), Path::new("/run/netns/p"), reply()).unwrap();
        assert_eq!(plan.host_if, host_ifname("cni:weave:ctr1:eth0"));
        assert_eq!((plan.bridge.as_str(), plan.mtu), ("weave", 1376));
        assert_eq!(
            plan.pod_routes(),
            vec![PodRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("10.32.0.1".parse().unwrap()),
            }]
        );
        let wired = Wired {
            host_index: 7,
            host_mac: Some([2, 0, 0, 0, 0, 7]),
            pod_index: 2,
            pod_mac: Some([2, 0, 0, 0, 0, 8]),
        };
        let doc = plan
            .result(&wired)
            .to_json("1.0.0", crate::config::Version::V1_0_0);
        assert_eq!(doc["interfaces"][0]["name"], plan.host_if.as_str());
        assert_eq!(doc["interfaces"][1]["mac"], "02:00:00:00:00:08");
        assert_eq!(doc["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(doc["ips"][0]["address"], "10.32.0.5/12");
        assert_eq!(doc["ips"][0]["gateway"], "10.32.0.1");
        assert_eq!(doc["ips"][0]["interface"], 1);
        assert_eq!(doc["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(doc["routes"][0]["gw"], "10.32.0.1");
    }

    #[test]
    fn the_config_overrides_bridge_mtu_gateway_and_routes() {
        let c = conf(
            r#","bridge":"br1","mtu":1400,"ipam":{"gateway":"10.32.0.254",
               "routes":[{"dst":"10.40.0.0/16"},{"dst":"10.50.0.0/16","gw":"10.32.0.9"}]}"#,
        );
        let mut r = reply();
        r.gateway = None;
        let plan = AddPlan::new(&inv(), &c, Path::new("/p"), r).unwrap();
        assert_eq!((plan.bridge.as_str(), plan.mtu), ("br1", 1400));
        let gws: Vec<_> = plan
            .routes
            .iter()
            .map(|r| r.gw.unwrap().to_string())
            .collect();
        assert_eq!(gws, ["10.32.0.254", "10.32.0.9"]);
    }

    #[test]
    fn no_bridge_no_address_or_no_gateway_is_no_plan() {
        let mut r = reply();
        r.bridge = None;
        let e = AddPlan::new(&inv(), &conf(""), Path::new("/p"), r).unwrap_err();
        assert_eq!(e.code(), crate::error::CODE_CONFIG, "{e}");
        let mut r = reply();
        r.addresses.clear();
        assert!(AddPlan::new(&inv(), &conf(""), Path::new("/p"), r).is_err());
        let mut r = reply();
        r.gateway = None;
        assert!(AddPlan::new(&inv(), &conf(""), Path::new("/p"), r).is_err());
        // Without an MTU from anyone: the classic default.
        let mut r = reply();
        r.mtu = None;
        let plan = AddPlan::new(&inv(), &conf(""), Path::new("/p"), r).unwrap();
        assert_eq!(plan.mtu, DEFAULT_MTU);
    }

    #[test]
    fn del_needs_only_the_names() {
        let plan = DelPlan::new(&inv(), &conf(""));
        assert_eq!(plan.id, "cni:weave:ctr1:eth0");
        assert_eq!(plan.host_if.len(), 15);
        assert!(plan.host_if.starts_with("vethwepl"));
    }
}
