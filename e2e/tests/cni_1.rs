// SPDX-License-Identifier: Apache-2.0
//! The CNI plugins on one host, driven the way libcni drives them: results
//! in each spec version's shape, CHECK, DEL in every awkward situation
//! (twice, without ADD, netns gone, agent down), every error code, VERSION,
//! STATUS, GC, chaining with the reference `portmap`, `weave-ipam` under the
//! reference `bridge`, and 50 parallel ADDs and DELs that leak nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use weave_api::{AddressesReply, LookupRequest};
use weave_e2e::cni::{invoke, invoke_raw, weave_net_conf, Attachment, ConfList};
use weave_e2e::weave::{api_socket, client, in_pod, start_weaver, WEAVER};
use weave_e2e::{wait_until, Host, TestBed, Topology};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn agent(host: &Host) -> Result<()> {
    start_weaver(host, &[], &["--ipalloc-init", "consensus=1"])
}

/// A one-host bed whose agent runs, and the `weave-net` list for `version`.
fn bed_with_agent(version: &str) -> Result<(TestBed, ConfList)> {
    let bed = TestBed::new(Topology::Segment(1))?;
    agent(bed.host(1))?;
    let list = ConfList::new(weave_net_conf(bed.host(1), version));
    Ok((bed, list))
}

/// Addresses the agent holds for `id`.
fn held(host: &Host, id: &str) -> Result<Vec<String>> {
    let r: AddressesReply =
        client(host).post_json("/ipam/lookup", &LookupRequest { id: id.into() })?;
    Ok(r.addresses.iter().map(ToString::to_string).collect())
}

fn id(container: &str) -> String {
    format!("cni:weave:{container}:eth0")
}

/// Names of the host's links.
fn links(host: &Host) -> Result<String> {
    host.run("ip", &["-o", "link", "show"])
}

/// The `weave-net` entry of a one-plugin list, as its stdin for `command`.
fn net_conf(host: &Host, version: &str, prev: Option<&Value>) -> Value {
    let list = ConfList::new(weave_net_conf(host, version));
    let entry = list.list["plugins"][0].clone();
    list.entry_config(&entry, prev)
}

#[test]
fn each_version_gives_a_spec_shaped_result_and_check_follows_the_interface() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    agent(h1)?;
    for (n, version) in VERSIONS.iter().enumerate() {
        let ns = bed.add_pod_netns(1, &format!("v{n}"))?;
        let att = Attachment::new(&format!("ctr-v{n}"), &ns);
        let list = ConfList::new(weave_net_conf(h1, version));
        let result = list.add(h1, &att)?;
        assert_eq!(result["cniVersion"], *version);
        let ifs = result["interfaces"].as_array().context("interfaces")?;
        assert_eq!(ifs.len(), 2, "{result}");
        assert!(ifs[0]["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("vethwepl"));
        assert_eq!(ifs[1]["name"], "eth0");
        assert_eq!(ifs[1]["sandbox"], att.netns.as_str());
        assert!(
            ifs[1]["mac"].as_str().is_some_and(|m| m.len() == 17),
            "{result}"
        );
        assert_eq!(ifs[1].get("mtu").is_some(), *version == "1.1.0", "{result}");
        let ip = &result["ips"][0];
        assert_eq!(ip["interface"], 1);
        assert_eq!(
            ip.get("version").is_some(),
            version.starts_with("0."),
            "{result}"
        );
        let address = ip["address"].as_str().context("address")?;
        assert!(
            address.starts_with("10.3") && address.ends_with("/12"),
            "{address}"
        );
        let gateway = ip["gateway"].as_str().context("gateway")?;
        assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(result["routes"][0]["gw"], gateway);
        // The pod has the address, and reaches its gateway (the bridge).
        let shown = in_pod(&ns, "ip", &["-o", "addr", "show", "dev", "eth0"])?;
        assert!(shown.contains(address), "{shown}");
        in_pod(&ns, "ping", &["-c", "1", "-W", "2", gateway])?;
        assert_eq!(held(h1, &id(&att.container_id))?, vec![address.to_string()]);
        // A repeated ADD returns the same result.
        assert_eq!(list.add(h1, &att)?, result, "repeated ADD");
        if *version >= "0.4.0" {
            list.check(h1, &att, &result)?;
            in_pod(&ns, "ip", &["addr", "del", address, "dev", "eth0"])?;
            let out = invoke(
                h1,
                "weave-net",
                "CHECK",
                Some(&att),
                &net_conf(h1, version, Some(&result)),
            )?;
            assert_eq!(out.error_code()?, 100, "{}", out.stdout);
            assert!(out.stdout.contains("lacks address"), "{}", out.stdout);
        } else {
            let out = invoke(
                h1,
                "weave-net",
                "CHECK",
                Some(&att),
                &net_conf(h1, version, Some(&result)),
            )?;
            assert_eq!(out.error_code()?, 1, "CHECK needs 0.4.0");
        }
        list.del(h1, &att, Some(&result))?;
        list.del(h1, &att, Some(&result))?;
        assert!(held(h1, &id(&att.container_id))?.is_empty());
        let host_if = ifs[0]["name"].as_str().unwrap_or_default();
        assert!(!links(h1)?.contains(host_if), "{host_if} left behind");
    }
    Ok(())
}

#[test]
fn del_succeeds_twice_without_add_without_netns_and_with_the_agent_down() -> Result<()> {
    let (bed, list) = bed_with_agent("1.0.0")?;
    let h1 = bed.host(1);
    // Never added.
    let ghost = Attachment::new("never-added", "nowhere");
    list.del(h1, &ghost, None)?;
    // Netns gone: both a stale path and an empty CNI_NETNS.
    for (n, empty) in [(1, false), (2, true)] {
        let ns = bed.add_pod_netns(1, &format!("gone{n}"))?;
        let mut att = Attachment::new(&format!("ctr-gone{n}"), &ns);
        let result = list.add(h1, &att)?;
        std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status()
            .context("delete the pod namespace")?;
        if empty {
            att.netns.clear();
        }
        list.del(h1, &att, None)?;
        list.del(h1, &att, Some(&result))?;
        assert!(held(h1, &id(&att.container_id))?.is_empty());
    }
    // Agent down: DEL removes the veth, spools the release and succeeds.
    let ns = bed.add_pod_netns(1, "down")?;
    let att = Attachment::new("ctr-down", &ns);
    let result = list.add(h1, &att)?;
    let address = result["ips"][0]["address"]
        .as_str()
        .context("address")?
        .to_string();
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .context("name")?
        .to_string();
    assert_eq!(held(h1, &id("ctr-down"))?, vec![address]);
    h1.stop(WEAVER)?;
    list.del(h1, &att, Some(&result))?;
    list.del(h1, &att, Some(&result))?;
    assert!(
        !links(h1)?.contains(&host_if),
        "veth removed with the agent down"
    );
    let spool = api_socket(h1).with_file_name("cni-release");
    assert_eq!(std::fs::read_dir(&spool)?.count(), 1, "one pending release");
    // Meanwhile STATUS says not ready and ADD says try again later.
    let status = ConfList::new(weave_net_conf(h1, "1.1.0"));
    let entry = status.list["plugins"][0].clone();
    let out = invoke(
        h1,
        "weave-net",
        "STATUS",
        None,
        &status.entry_config(&entry, None),
    )?;
    assert_eq!(out.error_code()?, 50);
    let other = bed.add_pod_netns(1, "later")?;
    let out = invoke(
        h1,
        "weave-net",
        "ADD",
        Some(&Attachment::new("ctr-later", &other)),
        &net_conf(h1, "1.0.0", None),
    )?;
    assert_eq!(out.error_code()?, 11, "{}", out.stdout);
    // The agent drains the spool when it is back.
    agent(h1)?;
    wait_until(Duration::from_secs(20), "the spooled release", || {
        Ok(
            (std::fs::read_dir(&spool)?.count() == 0 && held(h1, &id("ctr-down"))?.is_empty())
                .then_some(()),
        )
    })?;
    assert!(
        held(h1, "cni:weave:ctr-later:eth0")?.is_empty(),
        "failed ADD holds nothing"
    );
    Ok(())
}

/// What is wrong, the stdin, environment overrides, the expected code.
type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u64);

#[test]
fn bad_calls_get_the_right_error_codes_and_version_status_answer() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    let ns = bed.add_pod_netns(1, "p")?;
    let att = Attachment::new("ctr-err", &ns);
    // VERSION ignores everything but cniVersion (libcni's probe).
    let out = invoke_raw(
        h1,
        "weave-net",
        "VERSION",
        None,
        br#"{"cniVersion":"1.1.0"}"#,
        &[("CNI_NETNS", "dummy"), ("CNI_IFNAME", "dummy")],
    )?;
    let doc = out.ok()?;
    assert_eq!(doc["cniVersion"], "1.1.0");
    assert_eq!(doc["supportedVersions"], json!(VERSIONS));
    // No agent yet: ADD is code 11, STATUS code 50.
    let out = invoke(
        h1,
        "weave-net",
        "ADD",
        Some(&att),
        &net_conf(h1, "1.0.0", None),
    )?;
    assert_eq!(out.error_code()?, 11);
    assert!(!out.stdout.contains('\n') || out.stdout.trim_end().lines().count() == 1);
    let out = invoke(
        h1,
        "weave-net",
        "STATUS",
        None,
        &net_conf(h1, "1.1.0", None),
    )?;
    assert_eq!(out.error_code()?, 50);
    agent(h1)?;
    let out = invoke(
        h1,
        "weave-net",
        "STATUS",
        None,
        &net_conf(h1, "1.1.0", None),
    )?;
    assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{}", out.stderr);
    let good = net_conf(h1, "1.0.0", None);
    let with = |key: &str, v: Value| {
        let mut c = good.clone();
        c[key] = v;
        c.to_string().into_bytes()
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "unsupported version",
            with("cniVersion", json!("0.2.0")),
            vec![],
            1,
        ),
        (
            "STATUS below 1.1.0",
            good.to_string().into_bytes(),
            vec![("CNI_COMMAND", "STATUS")],
            1,
        ),
        (
            "missing CNI_IFNAME",
            good.to_string().into_bytes(),
            vec![("CNI_IFNAME", "")],
            4,
        ),
        (
            "unknown command",
            good.to_string().into_bytes(),
            vec![("CNI_COMMAND", "FROB")],
            4,
        ),
        (
            "bad container id",
            good.to_string().into_bytes(),
            vec![("CNI_CONTAINERID", "/x")],
            4,
        ),
        ("malformed JSON", b"{\"cniVersion\":".to_vec(), vec![], 6),
        ("wrong type", with("mtu", json!("big")), vec![], 6),
        ("ipMasq", with("ipMasq", json!(true)), vec![], 7),
        (
            "subnet outside the range",
            with("ipam", json!({"subnet": "192.168.7.0/24"})),
            vec![],
            7,
        ),
    ];
    for (what, stdin, env, code) in cases {
        let out = invoke_raw(h1, "weave-net", "ADD", Some(&att), &stdin, &env)?;
        assert_eq!(
            out.error_code().with_context(|| what.to_string())?,
            code,
            "{what}: {}",
            out.stdout
        );
        assert_eq!(
            out.stdout.trim_end().lines().count(),
            1,
            "{what}: only the error on stdout"
        );
    }
    // An ifname taken by something that is not ours.
    in_pod(&ns, "ip", &["link", "add", "eth0", "type", "bridge"])?;
    let out = invoke(h1, "weave-net", "ADD", Some(&att), &good)?;
    assert_eq!(out.error_code()?, 101, "{}", out.stdout);
    assert!(
        held(h1, &id("ctr-err"))?.is_empty(),
        "nothing allocated for a refused ADD"
    );
    Ok(())
}

#[test]
fn gc_releases_and_unwires_attachments_not_listed() -> Result<()> {
    let (bed, list) = bed_with_agent("1.1.0")?;
    let h1 = bed.host(1);
    let mut results = Vec::new();
    for n in 0..3 {
        let ns = bed.add_pod_netns(1, &format!("g{n}"))?;
        let att = Attachment::new(&format!("ctr-g{n}"), &ns);
        results.push(list.add(h1, &att)?);
    }
    let mut gc = net_conf(h1, "1.1.0", None);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-g1", "ifname": "eth0"}]);
    invoke(h1, "weave-net", "GC", None, &gc)?.ok()?;
    let all = links(h1)?;
    for (n, r) in results.iter().enumerate() {
        let host_if = r["interfaces"][0]["name"].as_str().context("name")?;
        let kept = n == 1;
        assert_eq!(all.contains(host_if), kept, "{host_if}");
        assert_eq!(
            held(h1, &id(&format!("ctr-g{n}")))?.len(),
            usize::from(kept)
        );
    }
    Ok(())
}

#[test]
fn portmap_chain_forwards_a_host_port_to_the_pod() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    agent(h1)?;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/10-weave.conflist"
    ))?;
    let mut shipped: Value = serde_json::from_str(&text)?;
    assert_eq!(shipped["cniVersion"], "1.1.0");
    assert_eq!(shipped["plugins"][1]["type"], "portmap");
    shipped["plugins"][0]["socket"] = json!(api_socket(h1));
    let mut list = ConfList::new(shipped);
    list.runtime_config.insert(
        "portMappings".into(),
        json!([{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]),
    );
    let ns = bed.add_pod_netns(1, "web")?;
    let att = Attachment::new("ctr-web", &ns);
    let result = list.add(h1, &att)?;
    let server = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen(8)\nwhile True:\n c,_=s.accept()\n c.sendall(b'weave-pod\\n')\n c.close()\n";
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c", server])
        .spawn()
        .context("start the pod's server")?;
    let host_ip = h1.addr().to_string();
    let reached = wait_until(
        Duration::from_secs(10),
        "the host port to reach the pod",
        || {
            Ok(h1
                .run("nc", &["-w", "2", &host_ip, "18080"])
                .ok()
                .filter(|out| out.contains("weave-pod")))
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    reached?;
    ensure!(
        h1.run("nft", &["list", "ruleset"])?.contains("18080"),
        "portmap rules exist"
    );
    list.del(h1, &att, Some(&result))?;
    ensure!(
        !h1.run("nft", &["list", "ruleset"])?.contains("18080"),
        "portmap rules removed by DEL"
    );
    Ok(())
}

#[test]
fn fifty_parallel_adds_then_dels_give_unique_addresses_and_leak_nothing() -> Result<()> {
    let (bed, list) = bed_with_agent("1.0.0")?;
    let h1 = bed.host(1);
    let atts: Vec<Attachment> = (0..50)
        .map(|n| {
            Ok(Attachment::new(
                &format!("ctr-par{n}"),
                &bed.add_pod_netns(1, &format!("par{n}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = atts
            .iter()
            .map(|att| s.spawn(|| list.add(h1, att)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect::<Result<_>>()
    })?;
    let addrs: BTreeSet<String> = results
        .iter()
        .map(|r| {
            r["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(addrs.len(), 50, "unique addresses");
    assert_eq!(links(h1)?.matches("vethwepl").count(), 50);
    std::thread::scope(|s| {
        let handles: Vec<_> = atts
            .iter()
            .zip(&results)
            .map(|(att, r)| s.spawn(|| list.del(h1, att, Some(r))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("DEL thread"))
            .collect::<Result<Vec<_>>>()
    })?;
    for att in &atts {
        assert!(
            held(h1, &id(&att.container_id))?.is_empty(),
            "{} released",
            att.container_id
        );
    }
    assert_eq!(links(h1)?.matches("vethwepl").count(), 0, "no veth left");
    let spool = api_socket(h1).with_file_name("cni-release");
    assert_eq!(
        std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0),
        0,
        "no spool file"
    );
    // Only the bridge's own address remains allocated.
    let ipam = weave_e2e::weave::ipam(h1)?;
    assert_eq!(ipam.used, 1, "{ipam:?}");
    Ok(())
}

#[test]
fn weave_ipam_gives_the_reference_bridge_addresses() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    agent(h1)?;
    let list = ConfList::new(json!({
        "cniVersion": "1.0.0",
        "name": "refbr",
        "plugins": [{
            "type": "bridge",
            "bridge": "cnibr0",
            "ipam": {"type": "weave-ipam", "socket": api_socket(h1), "subnet": "10.32.9.0/24"}
        }]
    }));
    let ns = bed.add_pod_netns(1, "ref")?;
    let att = Attachment::new("ctr-ref", &ns);
    let result = list.add(h1, &att)?;
    let address = result["ips"][0]["address"]
        .as_str()
        .context("address")?
        .to_string();
    assert!(
        address.starts_with("10.32.9.") && address.ends_with("/24"),
        "{result}"
    );
    assert_eq!(held(h1, "cni:refbr:ctr-ref:eth0")?, vec![address.clone()]);
    let shown = in_pod(&ns, "ip", &["-o", "addr", "show", "dev", "eth0"])?;
    assert!(shown.contains(&address), "{shown}");
    list.check(h1, &att, &result)?;
    list.del(h1, &att, Some(&result))?;
    assert!(held(h1, "cni:refbr:ctr-ref:eth0")?.is_empty());
    Ok(())
}

#[test]
fn status_is_not_ready_while_ipam_waits_for_consensus() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    // Two peers must agree on the first split; the second never comes.
    start_weaver(h1, &[], &["--ipalloc-init", "consensus=2"])?;
    let out = invoke(
        h1,
        "weave-net",
        "STATUS",
        None,
        &net_conf(h1, "1.1.0", None),
    )?;
    assert_eq!(out.error_code()?, 50, "{}", out.stdout);
    assert!(out.stdout.contains("IPAM"), "{}", out.stdout);
    let ipam = invoke(
        h1,
        "weave-ipam",
        "STATUS",
        None,
        &net_conf(h1, "1.1.0", None),
    )?;
    assert_eq!(ipam.error_code()?, 50, "{}", ipam.stdout);
    Ok(())
}
