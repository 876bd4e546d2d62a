// SPDX-License-Identifier: Apache-2.0
//! Setting the fast path up, after the sleeve: the VXLAN device
//! [`VXLAN_NAME`] is created, or adopted as it is when a previous agent left
//! it (same VNI and port: its forwarding entries keep carrying pod traffic),
//! attached to the bridge as an isolated port that does not learn. Without
//! the fast path (`--no-fastdp`, a password, or a kernel that refuses the
//! device) a leftover device is removed, so no stale entry carries pod
//! traffic the sleeve should carry.

use std::sync::Arc;

use tracing::{info, warn};
use weave_platform::{BridgePortFlags, Netlink, VxlanSpec};

use super::Fastdp;
use crate::fastdp::plan::Ports;
use crate::fastdp::{Reason, VNI};
use crate::mesh::PeerName;
use crate::router::sleeve::Sleeve;

/// Name of the VXLAN device on the bridge.
pub const VXLAN_NAME: &str = "vxlan-weave";
/// MTU of the VXLAN device: as large as the kernel allows, like the TAP
/// port's, so that the bridge hands it any frame and a DF packet too large
/// for the path gets ICMP "fragmentation needed" from the VXLAN driver
/// (bridged path-MTU discovery) instead of vanishing at the port. Pods and
/// heartbeats use the overlay MTU.
const VXLAN_MTU: u32 = 65521;

/// Settings of the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastdpConfig {
    /// `--no-fastdp` not given.
    pub enabled: bool,
    /// UDP port (`--fastdp-port`).
    pub port: u16,
    /// A mesh password is set.
    pub encrypted: bool,
}

/// Makes (or adopts) the VXLAN device, or removes a leftover one when the
/// fast path cannot run; never fails the agent: without a device the sleeve
/// carries everything and the report says why.
pub async fn setup(
    cfg: FastdpConfig,
    local: PeerName,
    sleeve: &Sleeve,
    netlink: &impl Netlink,
) -> Arc<Fastdp> {
    let unavailable = if !cfg.enabled {
        Some(Reason::Disabled)
    } else if cfg.encrypted {
        // No encapsulation of this kernel encrypts (no WireGuard, no ESP):
        // with a password, pod traffic must not leave in clear.
        Some(Reason::Encryption)
    } else {
        None
    };
    let available = match unavailable {
        Some(reason) => {
            if let Err(e) = netlink.delete_link(VXLAN_NAME).await {
                warn!(error = %e, device = VXLAN_NAME, "cannot remove the fast path's device");
            }
            info!(%reason, "fast datapath off; the sleeve carries all pod traffic");
            Err(reason)
        }
        None => match attach(cfg, sleeve, netlink).await {
            Ok(ports) => Ok(ports),
            Err(e) => {
                warn!(error = %e, "cannot set up the fast datapath; the sleeve carries all pod traffic");
                let _ = netlink.delete_link(VXLAN_NAME).await;
                Err(Reason::NoDevice)
            }
        },
    };
    Arc::new(Fastdp::new(local, cfg.port, sleeve.mtu(), available))
}

/// Creates or adopts the device and makes it an isolated, non-learning
/// port of the bridge.
async fn attach(
    cfg: FastdpConfig,
    sleeve: &Sleeve,
    netlink: &impl Netlink,
) -> Result<Ports, weave_platform::Error> {
    let bridge = netlink.link_index(sleeve.bridge()).await?.ok_or_else(|| {
        weave_platform::Error::LinkNotFound {
            op: "set up the fast datapath".into(),
            name: sleeve.bridge().to_owned(),
        }
    })?;
    let spec = VxlanSpec {
        vni: VNI,
        port: cfg.port,
        mtu: VXLAN_MTU,
    };
    let link = netlink.ensure_vxlan(VXLAN_NAME, spec).await?;
    netlink.set_master(link.index, bridge).await?;
    netlink
        .set_bridge_port(
            link.index,
            BridgePortFlags {
                isolated: Some(true),
                learning: Some(false),
            },
        )
        .await?;
    info!(
        device = VXLAN_NAME,
        ifindex = link.index,
        port = cfg.port,
        adopted = link.adopted,
        "fast datapath ready"
    );
    Ok(Ports {
        bridge,
        vxlan: link.index,
        tap: Some(sleeve.tap_index()),
        port: cfg.port,
    })
}
