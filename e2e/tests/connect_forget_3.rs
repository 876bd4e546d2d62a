// SPDX-License-Identifier: Apache-2.0
//! `weave connect` and `weave forget` at run time.

use std::time::Duration;

use anyhow::Result;
use weave_e2e::weave::{peer_addr, report, start_weaver, wait_for_mesh, weave, WEAVER};
use weave_e2e::{TestBed, Topology};

#[test]
fn connect_and_forget_at_run_time() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    for h in bed.hosts() {
        start_weaver(h, &[], &[])?;
    }
    wait_for_mesh(h1, &["h1"], 0, Duration::from_secs(5))?;
    let out = weave(h1, &["connect", &peer_addr(h2)])?;
    assert!(out.contains(&peer_addr(h2)), "{out}");
    wait_for_mesh(h1, &["h1", "h2"], 1, Duration::from_secs(20))?;
    // connect accepts a bare IP (default port) and several at once
    weave(h1, &["connect", &h3.addr().to_string()])?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(20))?;
    }
    assert_eq!(report(h1)?.targets, vec![peer_addr(h2), peer_addr(h3)]);

    // forget h3 on h1, and everyone else's memory of it: once its agent
    // stops, nobody redials it
    weave(h1, &["forget", &peer_addr(h3)])?;
    assert_eq!(report(h1)?.targets, vec![peer_addr(h2)]);
    // a forgotten peer stays connected until the connection ends
    assert_eq!(weave_e2e::weave::established(&report(h1)?), 2);
    weave(h1, &["forget", &peer_addr(h2)])?;
    assert!(report(h1)?.targets.is_empty());

    // bad input: a clear error and no change
    let err = weave(h1, &["connect", "not-an-address"]).unwrap_err();
    assert!(
        format!("{err:#}").contains("invalid peer address"),
        "{err:#}"
    );
    assert!(report(h1)?.targets.is_empty());

    // replace: the target set becomes exactly the given one
    weave(h1, &["connect", &peer_addr(h2), &peer_addr(h3)])?;
    weave(h1, &["connect", "--replace", &peer_addr(h3)])?;
    assert_eq!(report(h1)?.targets, vec![peer_addr(h3)]);

    // with h3 as the only target, h1 lets a stopped h2 go: it leaves the
    // topology and the target set stays as given (whether h1 still retries
    // h2's address for a while depends on whether h3 announced it last)
    h2.stop(WEAVER)?;
    wait_for_mesh(h1, &["h1", "h3"], 1, Duration::from_secs(30))?;
    assert_eq!(report(h1)?.targets, vec![peer_addr(h3)]);
    Ok(())
}
