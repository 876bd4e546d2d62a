// SPDX-License-Identifier: Apache-2.0
//! Pods created by `weave-net` on three hosts (through the shipped
//! conflist's first plugin) reach each other through the overlay, each
//! host's bridge exposed in the pod subnet as their gateway.

use std::time::Duration;

use anyhow::{Context, Result};
use weave_e2e::cni::{weave_net_conf, Attachment, ConfList};
use weave_e2e::weave::{peer_addr, pings, start_weaver, wait_for_mesh};
use weave_e2e::{wait_until, TestBed, Topology};

#[test]
fn pods_added_by_the_plugin_on_three_hosts_reach_each_other() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    let flags = ["--ipalloc-init", "consensus=3"];
    start_weaver(bed.host(1), &[], &flags)?;
    start_weaver(bed.host(2), &[peer_addr(bed.host(1))], &flags)?;
    start_weaver(bed.host(3), &[peer_addr(bed.host(1))], &flags)?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(20))?;
    }
    let mut pods = Vec::new();
    for h in 1..=3 {
        let host = bed.host(h);
        let list = ConfList::new(weave_net_conf(host, "1.0.0"));
        let ns = bed.add_pod_netns(h, "p")?;
        let att = Attachment::new(&format!("ctr-h{h}"), &ns);
        let result = list.add(host, &att)?;
        let cidr = result["ips"][0]["address"].as_str().context("address")?;
        let ip = cidr.split('/').next().unwrap_or(cidr).to_string();
        pods.push((ns, ip, list, att, result));
    }
    for (ns, _, _, _, _) in &pods {
        for (_, ip, _, _, _) in &pods {
            wait_until(
                Duration::from_secs(10),
                &format!("{ns} to ping {ip}"),
                || Ok(pings(ns, ip).then_some(())),
            )?;
        }
    }
    for (h, (_, _, list, att, result)) in pods.iter().enumerate() {
        list.del(bed.host(h + 1), att, Some(result))?;
    }
    Ok(())
}
