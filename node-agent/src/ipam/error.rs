// SPDX-License-Identifier: Apache-2.0
//! The errors of IPAM requests, each mapped to an HTTP status by the API.

use super::subnet::Subnet;

/// Errors of IPAM requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The subnet is not inside the allocation range.
    #[error("subnet {subnet} is outside the allocation range {range}")]
    OutsideRange {
        /// The subnet asked for.
        subnet: Subnet,
        /// The range.
        range: Subnet,
    },
    /// The address is the network or broadcast address of its subnet.
    #[error("address {addr} is the network or broadcast address of {subnet}")]
    Reserved {
        /// The address.
        addr: std::net::Ipv4Addr,
        /// Its subnet.
        subnet: Subnet,
    },
    /// Another identifier holds the address.
    #[error("address {addr} is already in use by {holder}")]
    InUse {
        /// The address.
        addr: std::net::Ipv4Addr,
        /// Its holder.
        holder: String,
    },
    /// The owner of the address cannot be asked for it.
    #[error("address {addr} belongs to peer {owner}, which is unreachable")]
    OwnerUnreachable {
        /// The address.
        addr: std::net::Ipv4Addr,
        /// Its owner.
        owner: String,
    },
    /// The owner of the address refused to hand it over.
    #[error("address {addr} is in use on peer {owner}")]
    ClaimDenied {
        /// The address.
        addr: std::net::Ipv4Addr,
        /// Its owner.
        owner: String,
    },
    /// This peer was removed from the ring.
    #[error("this peer was removed from IP allocation by {by} (weave rmpeer); clear its state directory to rejoin under a new name")]
    Removed {
        /// Who removed it.
        by: String,
    },
    /// No peer by that name or nickname.
    #[error("no peer {0:?} is known to IP allocation")]
    UnknownPeer(String),
    /// A nickname matched several peers.
    #[error("nickname {0:?} is ambiguous; use the peer name")]
    AmbiguousPeer(String),
    /// rmpeer of a reachable peer.
    #[error("peer {0} is reachable; only a peer that is gone for good can be removed")]
    PeerReachable(String),
    /// rmpeer of ourselves.
    #[error("a peer cannot remove itself")]
    RemoveSelf,
    /// The request was withdrawn.
    #[error("cancelled")]
    Cancelled,
    /// Gossip that could not be decoded.
    #[error("undecodable IPAM gossip: {0}")]
    Gossip(String),
}
