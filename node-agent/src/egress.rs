// SPDX-License-Identifier: Apache-2.0
//! Pods meet the world: IPv4 forwarding on, and masquerading of pod traffic that leaves the
//! pod network.
//!
//! Forwarding is what lets traffic from pods to Service ClusterIPs (DNAT'ed by kube-proxy on
//! this node), to hostPorts from other machines and to anything outside the range cross this
//! node's IP stack. Masquerading gives traffic from the range to destinations outside it this
//! node's address, so the outside can answer; pod-to-pod traffic (destination in the range) and
//! destinations the operator routes pod addresses to (`--no-masquerade-to`) keep their pod
//! source.
//!
//! The rules live in one table of our own, `ip weave`, replaced whole in one nftables
//! transaction ([`ruleset`], pure) and re-applied periodically to repair drift. Nothing else
//! is touched: kube-proxy's and anyone else's tables coexist. The table stays when the agent
//! stops (pods keep their connectivity across restarts); `weave reset` removes it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weave_platform::firewall::Firewall;

use crate::ipam::subnet::Subnet;

/// Our nftables table (family `ip`).
pub const TABLE: &str = "weave";
/// How often the table is re-applied.
const RESYNC: Duration = Duration::from_secs(60);

/// What egress needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// The pod range.
    pub range: Subnet,
    /// The bridge pods attach to.
    pub bridge: String,
    /// Whether to masquerade at all.
    pub masquerade: bool,
    /// Destinations reached with pod addresses unchanged.
    pub exceptions: Vec<Subnet>,
}

/// The nftables script that makes our table exactly what `cfg` asks for, in one transaction
/// (creating the table first so that deleting it never fails).
pub fn ruleset(cfg: &EgressConfig) -> String {
    let range = cfg.range;
    let mut rules = vec![format!("ip saddr {range} ip daddr {range} return")];
    if !cfg.exceptions.is_empty() {
        let set: Vec<String> = cfg.exceptions.iter().map(ToString::to_string).collect();
        rules.push(format!(
            "ip saddr {range} ip daddr {{ {} }} return",
            set.join(", ")
        ));
    }
    if cfg.masquerade {
        // Bridged frames pass these hooks too (br_netfilter), with a pod port (`vethwe…`)
        // as output: those stay on the weave network and are never masqueraded.
        rules.push(format!(
            "ip saddr {range} oifname != \"{}\" oifname != \"vethwe*\" masquerade",
            cfg.bridge
        ));
    }
    let body: String = rules.iter().map(|r| format!("\t\t{r}\n")).collect();
    format!(
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{body}\t}}\n}}\n"
    )
}

/// Turns on IPv4 forwarding in this network namespace.
pub fn enable_forwarding() -> Result<(), weave_platform::Error> {
    if weave_platform::sysctl::read_sysctl("net.ipv4.ip_forward")? != "1" {
        weave_platform::sysctl::write_sysctl("net.ipv4.ip_forward", "1")?;
        info!("IPv4 forwarding enabled");
    }
    Ok(())
}

/// Applies the table now and again every minute until `cancel`. A failed application is
/// logged and retried; it never stops the agent.
pub async fn run(
    cfg: EgressConfig,
    firewall: Arc<dyn Firewall>,
    cancel: CancellationToken,
) -> crate::Result<()> {
    let script = ruleset(&cfg);
    let mut tick = tokio::time::interval(RESYNC);
    let mut applied = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let (fw, s) = (Arc::clone(&firewall), script.clone());
        match tokio::task::spawn_blocking(move || fw.apply_script(&s)).await {
            Ok(Ok(())) => {
                if !applied {
                    info!(range = %cfg.range, masquerade = cfg.masquerade, exceptions = ?cfg.exceptions, "egress rules applied (table ip weave)");
                    applied = true;
                }
            }
            Ok(Err(e)) => warn!(error = %e, "cannot apply the egress rules; retrying"),
            Err(e) => warn!(error = %e, "egress rule task failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EgressConfig {
        EgressConfig {
            range: "10.32.0.0/12".parse().expect("range"),
            bridge: "weave".into(),
            masquerade: true,
            exceptions: vec!["192.168.0.0/16".parse().expect("cidr")],
        }
    }

    #[test]
    fn pod_to_pod_and_exceptions_return_before_masquerade() {
        let text = ruleset(&cfg());
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let pod_to_pod = lines
            .iter()
            .position(|l| *l == "ip saddr 10.32.0.0/12 ip daddr 10.32.0.0/12 return");
        let except = lines
            .iter()
            .position(|l| *l == "ip saddr 10.32.0.0/12 ip daddr { 192.168.0.0/16 } return");
        let masq = lines.iter().position(|l| {
            *l == "ip saddr 10.32.0.0/12 oifname != \"weave\" oifname != \"vethwe*\" masquerade"
        });
        assert!(
            pod_to_pod < except && except < masq && pod_to_pod.is_some(),
            "{text}"
        );
        assert!(
            text.starts_with("table ip weave {}\ndelete table ip weave\n"),
            "{text}"
        );
    }

    #[test]
    fn no_masquerade_keeps_only_the_returns() {
        let text = ruleset(&EgressConfig {
            masquerade: false,
            exceptions: Vec::new(),
            ..cfg()
        });
        assert!(!text.contains("masquerade"), "{text}");
        assert!(text.contains("type nat hook postrouting"), "{text}");
    }
}
