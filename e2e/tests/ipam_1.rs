// SPDX-License-Identifier: Apache-2.0
//! IPAM on one host: allocate/release cycles leave nothing behind, bad
//! requests are refused with a clear error and change nothing, and a range
//! that overlaps a host route stops the agent at start.

use std::time::Duration;

use anyhow::Result;
use weave_api::{AddressesReply, AllocateRequest, ReleaseRequest};
use weave_e2e::weave::{client, ipam, start_weaver, state_dir, WEAVER};
use weave_e2e::{bin, wait_until, TestBed, Topology};

#[test]
fn a_thousand_allocate_release_cycles_leave_nothing_allocated() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    start_weaver(h1, &[], &["--ipalloc-init", "consensus=1"])?;
    let c = client(h1);
    let mut seen = std::collections::BTreeSet::new();
    let allocate = |id: &str| -> Result<AddressesReply> {
        let req = AllocateRequest {
            id: id.to_string(),
            subnet: None,
            timeout_ms: None,
        };
        Ok(c.post_json("/ipam/allocate", &req)?)
    };
    for n in 0..1000 {
        let id = format!("cycle-{n}");
        let a = allocate(&id)?;
        assert_eq!(a.addresses.len(), 1);
        seen.insert(a.addresses[0]);
        let again = allocate(&id)?;
        assert_eq!(again.addresses, a.addresses, "allocation is idempotent");
        let r: AddressesReply =
            c.post_json("/ipam/release", &ReleaseRequest { id, address: None })?;
        assert_eq!(r.addresses, a.addresses);
    }
    assert_eq!(ipam(h1)?.used, 0);
    // Next-fit: released addresses are not handed out again at once.
    assert_eq!(seen.len(), 1000);
    let state = std::fs::read_to_string(state_dir(h1).join("ipam.json"))?;
    assert!(
        !state.contains("cycle-"),
        "persisted state holds no allocation"
    );
    Ok(())
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    start_weaver(
        h1,
        &[],
        &[
            "--ipalloc-range",
            "10.32.0.0/16",
            "--ipalloc-init",
            "consensus=1",
        ],
    )?;
    let c = client(h1);
    let ok: AddressesReply = c.post_json(
        "/ipam/allocate",
        &AllocateRequest {
            id: "keep".into(),
            subnet: Some("10.32.5.0/24".parse()?),
            timeout_ms: None,
        },
    )?;
    let first = ok.addresses[0].to_string();
    assert!(first.starts_with("10.32.5.") && first.ends_with("/24"));
    let before = ipam(h1)?;
    let state_before = std::fs::read(state_dir(h1).join("ipam.json"))?;
    let cases: &[(&str, &str, &str)] = &[
        (
            "/ipam/allocate",
            r#"{"id":"x","subnet":"10.32.5.1/24"}"#,
            "bits after the prefix",
        ),
        (
            "/ipam/allocate",
            r#"{"id":"x","subnet":"10.99.0.0/24"}"#,
            "outside the allocation range",
        ),
        (
            "/ipam/allocate",
            r#"{"id":"x","subnet":"nonsense"}"#,
            "invalid subnet",
        ),
        ("/ipam/allocate", r#"{"id":"","subnet":null}"#, "invalid id"),
        (
            "/ipam/allocate",
            r#"{"id":"x","colour":"red"}"#,
            "unknown field",
        ),
        ("/ipam/allocate", r#"{"id":"#, "invalid request body"),
        (
            "/ipam/claim",
            r#"{"id":"x","address":"10.32.0.0/16"}"#,
            "network or broadcast",
        ),
        (
            "/ipam/claim",
            r#"{"id":"x","address":"10.32.5.1"}"#,
            "invalid address",
        ),
        (
            "/ipam/release",
            r#"{"id":"keep","address":"ten"}"#,
            "invalid address",
        ),
        (
            "/ipam/gc",
            r#"{"prefix":"","keep":[]}"#,
            "non-empty id prefix",
        ),
        ("/ipam/rmpeer", r#"{"peer":"nobody"}"#, "no peer"),
    ];
    for (path, body, want) in cases {
        let resp = c.request("POST", path, Some(body.as_bytes()))?;
        assert!(
            (400..500).contains(&resp.status),
            "{path} {body}: status {}",
            resp.status
        );
        let text = String::from_utf8_lossy(&resp.body);
        assert!(text.contains(want), "{path} {body}: {text}");
    }
    // Claiming the held address for someone else names the holder.
    let held = ok.addresses[0];
    let resp = c.request(
        "POST",
        "/ipam/claim",
        Some(format!(r#"{{"id":"thief","address":"{held}"}}"#).as_bytes()),
    )?;
    assert_eq!(resp.status, 409);
    assert!(String::from_utf8_lossy(&resp.body).contains("in use by keep"));
    assert_eq!(ipam(h1)?, before, "nothing changed");
    assert_eq!(
        std::fs::read(state_dir(h1).join("ipam.json"))?,
        state_before
    );
    // An attach that allocates and then cannot wire (the path is a plain
    // file, not a network namespace) gives its new address back, and a
    // failing repeat attach of an id keeps what the id already held.
    let not_netns = state_dir(h1).join("not-a-netns");
    std::fs::write(&not_netns, b"")?;
    for (id, cidrs) in [
        ("failing", vec![]),
        ("keep", vec!["net:10.32.5.0/24".to_string()]),
    ] {
        let resp = c.request(
            "POST",
            "/attach",
            Some(
                serde_json::json!({"netns": not_netns, "cidrs": cidrs, "id": id})
                    .to_string()
                    .as_bytes(),
            ),
        )?;
        assert!(
            resp.status >= 400,
            "attach to a plain file: {}",
            resp.status
        );
    }
    let after = ipam(h1)?;
    assert_eq!(
        after.used, before.used,
        "the failed attach leaked an address"
    );
    let kept: AddressesReply = c.post_json("/ipam/lookup", &serde_json::json!({"id": "keep"}))?;
    assert_eq!(kept.addresses, ok.addresses);
    // Every allocation of the peer, as weave-npc reads them: the kept one, nothing of the
    // failed attaches, and as many addresses as IPAM counts.
    let all: weave_api::AllocationsReply = c.get_json("/ipam/allocations")?;
    assert!(
        all.entries
            .iter()
            .any(|e| e.id == "keep" && e.addresses == ok.addresses),
        "{all:?}"
    );
    let listed: usize = all.entries.iter().map(|e| e.addresses.len()).sum();
    assert_eq!(listed as u64, after.used, "{all:?}");
    Ok(())
}

#[test]
fn a_range_overlapping_a_host_route_stops_the_agent() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    // The underlay is 10.250.0.0/24.
    h1.spawn(
        WEAVER,
        &bin("weaver")?,
        &[
            "--state-dir".into(),
            state_dir(h1).display().to_string(),
            "--api-socket".into(),
            "off".into(),
            "--ipalloc-range".into(),
            "10.250.0.0/16".into(),
        ],
        &[],
    )?;
    wait_until(Duration::from_secs(20), "weaver to refuse to start", || {
        Ok((!h1.is_running(WEAVER)).then_some(()))
    })?;
    let log = h1.log(WEAVER);
    assert!(
        log.contains("10.250.0.0/16 overlaps with route 10.250.0.0/24"),
        "{log}"
    );
    Ok(())
}
