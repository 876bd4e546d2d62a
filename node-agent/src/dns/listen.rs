// SPDX-License-Identifier: Apache-2.0
//! Where the DNS server listens: a fixed `--dns-listen-address`, bound at
//! start (a failure stops the agent), or, by default, port 53 on every IPv4
//! address of the bridge, followed as the bridge gains and loses addresses
//! (`weave expose`, the first CNI ADD of a subnet): re-read every
//! [`RESCAN`] and at once when the API says it added one.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weave_platform::Netlink;

use super::server::Listeners;
use super::upstream::Servers;

/// How often the bridge's addresses are re-read.
pub const RESCAN: Duration = Duration::from_secs(2);

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// This address only.
    Fixed(SocketAddr),
    /// Every IPv4 address of the bridge, on this port.
    Bridge {
        /// The bridge.
        bridge: String,
        /// The port (53).
        port: u16,
    },
}

/// Keeps the listeners where [`Listen`] says, publishing the addresses served.
pub struct ListenTask {
    listen: Listen,
    listeners: Listeners,
    rescan: Arc<Notify>,
    addrs: watch::Sender<Servers>,
}

impl ListenTask {
    /// Binds a fixed address now (so that a taken port stops the agent at
    /// start with a clear error); bridge addresses are bound by [`Self::run`].
    pub async fn new(
        listen: Listen,
        mut listeners: Listeners,
        rescan: Arc<Notify>,
        addrs: watch::Sender<Servers>,
    ) -> crate::Result<Self> {
        if let Listen::Fixed(addr) = &listen {
            listeners
                .bind(*addr)
                .await
                .map_err(|source| crate::Error::Bind {
                    what: "DNS",
                    addr: *addr,
                    source,
                })?;
            info!(%addr, "DNS listening");
            addrs.send_replace(Arc::new(listeners.addrs()));
        }
        Ok(Self {
            listen,
            listeners,
            rescan,
            addrs,
        })
    }

    /// Follows the bridge's addresses until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> crate::Result<()> {
        let Listen::Bridge { bridge, port } = self.listen.clone() else {
            cancel.cancelled().await;
            self.listeners.shutdown().await;
            return Ok(());
        };
        let netlink = weave_platform::LinuxNetlink::new()?;
        let mut failed: BTreeSet<SocketAddr> = BTreeSet::new();
        loop {
            match bridge_addrs(&netlink, &bridge, port).await {
                Ok(want) => {
                    for addr in self.listeners.addrs() {
                        if !want.contains(&addr) {
                            self.listeners.unbind(&addr);
                            info!(%addr, "DNS no longer listening (address left the bridge)");
                        }
                    }
                    for addr in &want {
                        if self.listeners.addrs().contains(addr) {
                            continue;
                        }
                        match self.listeners.bind(*addr).await {
                            Ok(()) => {
                                failed.remove(addr);
                                info!(%addr, "DNS listening");
                            }
                            Err(e) => {
                                if failed.insert(*addr) {
                                    warn!(%addr, error = %e, "DNS cannot listen; retrying");
                                }
                            }
                        }
                    }
                    let now = self.listeners.addrs();
                    if **self.addrs.borrow() != now {
                        self.addrs.send_replace(Arc::new(now));
                    }
                }
                Err(e) => warn!(%bridge, error = %e, "cannot read the bridge's addresses for DNS"),
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(RESCAN) => {}
                () = self.rescan.notified() => {}
            }
        }
        self.listeners.shutdown().await;
        Ok(())
    }
}

/// Port `port` on every IPv4 address of `bridge` (none when it is missing).
async fn bridge_addrs(
    netlink: &impl Netlink,
    bridge: &str,
    port: u16,
) -> weave_platform::Result<BTreeSet<SocketAddr>> {
    let Some(index) = netlink.link_index(bridge).await? else {
        return Ok(BTreeSet::new());
    };
    Ok(netlink
        .addrs(index)
        .await?
        .into_iter()
        .filter(|(a, _)| matches!(a, IpAddr::V4(_)))
        .map(|(a, _)| SocketAddr::new(a, port))
        .collect())
}
