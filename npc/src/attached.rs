// SPDX-License-Identifier: Apache-2.0
//! The addresses the node's agent handed out, pods' or not.
//!
//! The bridge guard lets a pod port carry only addresses of known local pods, so that no pod
//! sends as another. A container the agent wired outside Kubernetes (nerdctl, another CNI
//! runtime, `weave attach`) is no pod, and the guard would cut it off. The agent's IPAM knows
//! every address it gave out, by identifier: weave-npc asks it every [`PERIOD`] over the
//! local API socket (`GET /ipam/allocations`) and adds those addresses to the guard's set.
//! IPAM's record, not the container's interface, is the source: a container cannot widen
//! it by configuring another address. The bridge's own address (`weave:expose`) is left
//! out, so no port may send as the host.
//!
//! When the agent does not answer (restarting, upgrading), the last answer stands: a
//! restart of the agent must not cut containers off.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weave_api::net::IpNet;
use weave_api::AllocationsReply;
use weave_api::{Client, Endpoint, BRIDGE_ID};

/// How often the agent is asked.
pub const PERIOD: Duration = Duration::from_secs(2);

/// The last answer, shared with the controller.
pub type Attached = Arc<RwLock<BTreeSet<Ipv4Addr>>>;

/// The IPv4 addresses of `reply`, the bridge's left out.
pub fn addresses(reply: &AllocationsReply) -> BTreeSet<Ipv4Addr> {
    reply
        .entries
        .iter()
        .filter(|e| !e.id.starts_with(BRIDGE_ID))
        .flat_map(|e| &e.addresses)
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(n.addr()),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Asks the agent at `socket` every [`PERIOD`] until `cancel`; stores each answer that
/// differs from the last in `attached` and wakes the controller through `changed`.
pub async fn poll(
    socket: PathBuf,
    attached: Attached,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let client = Client::new(vec![Endpoint::Unix(socket.clone())]).with_timeout(PERIOD);
    let mut answering: Option<bool> = None;
    loop {
        let c = client.clone();
        let got = tokio::task::spawn_blocking(move || {
            c.get_json::<AllocationsReply>("/ipam/allocations")
        })
        .await;
        match got {
            Ok(Ok(reply)) => {
                if answering != Some(true) {
                    info!(socket = %socket.display(), "reading the agent's allocations");
                }
                answering = Some(true);
                let addrs = addresses(&reply);
                let mut cur = attached.write().unwrap_or_else(PoisonError::into_inner);
                if *cur != addrs {
                    *cur = addrs;
                    drop(cur);
                    changed.notify_one();
                }
            }
            Ok(Err(e)) => {
                if answering != Some(false) {
                    warn!(socket = %socket.display(), error = %weave_api::error_chain(&e), "cannot read the agent's allocations; containers outside Kubernetes keep the last known ones");
                }
                answering = Some(false);
            }
            Err(e) => warn!(error = %e, "the allocations query failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_and_ipv6_are_left_out() {
        let reply: AllocationsReply = serde_json::from_str(
            r#"{"entries":[
                {"id":"cni:weave:abc:eth0","addresses":["10.32.0.5/12"]},
                {"id":"weave:expose","addresses":["10.32.0.1/12"]},
                {"id":"netns:/run/netns/x","addresses":["10.40.0.9/24","fd00::5/64"]}
            ]}"#,
        )
        .unwrap();
        let want: BTreeSet<Ipv4Addr> = [[10, 32, 0, 5], [10, 40, 0, 9]]
            .into_iter()
            .map(Ipv4Addr::from)
            .collect();
        assert_eq!(addresses(&reply), want);
    }
}
