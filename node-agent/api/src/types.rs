// SPDX-License-Identifier: Apache-2.0
//! JSON bodies of the local API. Peer names travel as `aa:bb:cc:dd:ee:ff`
//! strings, peer addresses as `ip:port` strings and IP addresses as the
//! strings their [`crate::net`] types print as (`10.32.0.5/12`), so that
//! the format is readable with `jq` and stable across Rust versions.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::net::{self, IpNet, Ipv4Net};

/// `GET /report`: everything the agent knows, as `weave report` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Version of the agent binary.
    pub version: String,
    /// Wire protocol versions this agent speaks, as `min..max`.
    pub protocol: String,
    /// The local peer.
    pub peer: LocalPeer,
    /// Every peer in the local view of the topology, the local one included.
    pub peers: Vec<PeerReport>,
    /// The local peer's connections and connection attempts.
    pub connections: Vec<ConnectionReport>,
    /// Addresses the agent keeps connecting to (command line and `weave connect`).
    pub targets: Vec<String>,
    /// Next hop for every peer reachable over established links in both directions.
    pub routes: Vec<RouteReport>,
    /// Counters of the control plane.
    pub stats: MeshStats,
    /// The sleeve data plane, when it runs.
    #[serde(default)]
    pub sleeve: Option<SleeveReport>,
    /// The kernel fast path, when a data plane runs.
    #[serde(default)]
    pub fastdp: Option<FastdpReport>,
    /// IP address management, when enabled.
    #[serde(default)]
    pub ipam: Option<IpamReport>,
    /// weaveDNS, when enabled.
    #[serde(default)]
    pub dns: Option<DnsReport>,
}

/// State of the sleeve data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleeveReport {
    /// Bridge the pods attach to.
    pub bridge: String,
    /// Overlay MTU.
    pub mtu: u32,
    /// Frames from peers handed to the local bridge.
    pub injected: u64,
    /// Whether the TAP port takes checksum and TCP segmentation offload
    /// (TCP then crosses in super-frames).
    #[serde(default)]
    pub offload: bool,
    /// Whether fragments are sent with UDP segmentation offload.
    #[serde(default)]
    pub udp_gso: bool,
    /// Super-frames sent to peers (each in fragment datagrams).
    #[serde(default)]
    pub superframes_out: u64,
    /// Super-frames received from peers and put back together.
    #[serde(default)]
    pub superframes_in: u64,
    /// Dropped frames and datagrams by reason.
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// State of the kernel fast path (a VXLAN device on the bridge).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastdpReport {
    /// The VXLAN device, when it runs.
    pub device: Option<String>,
    /// Its ifindex (the same across agent restarts: the device is adopted).
    pub ifindex: Option<u32>,
    /// Its UDP port.
    pub port: u16,
    /// Its VXLAN network identifier.
    pub vni: u32,
    /// Why it does not run here, if it does not.
    pub unavailable: Option<String>,
    /// Connections it carries.
    pub connections: usize,
    /// Addresses whose entries are kept although their connection closed
    /// (`peer@ip:port`, or `ip:port` when adopted at a restart).
    #[serde(default)]
    pub held: Vec<String>,
    /// Destinations of its flood list.
    pub flood_entries: usize,
    /// MACs with a remote entry (peer names for heartbeats included).
    pub remote_entries: usize,
    /// MACs pinned to it in the bridge.
    pub pinned_macs: usize,
    /// MACs of local pods announced to neighbours.
    pub local_macs: usize,
    /// Heartbeats sent.
    pub heartbeats_out: u64,
    /// Heartbeats received and answered.
    pub heartbeats_in: u64,
    /// Answers to our heartbeats received.
    pub acks_in: u64,
    /// Frames that were not for a current connection (dropped).
    pub ignored_in: u64,
    /// Changes between the fast path and the sleeve.
    pub mode_changes: u64,
    /// Forwarding-entry changes that failed.
    pub fdb_errors: u64,
}

/// Identity of the local peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPeer {
    /// 48-bit peer name, `aa:bb:cc:dd:ee:ff`.
    pub name: String,
    /// Human-friendly name, by default the host name.
    pub nickname: String,
    /// Random identifier of this incarnation (changes on every start).
    pub uid: u64,
    /// Version of the local peer's gossiped record.
    pub version: u64,
}

/// One peer of the topology and the connections it announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// 48-bit peer name.
    pub name: String,
    /// Nickname the peer announced.
    pub nickname: String,
    /// Incarnation identifier.
    pub uid: u64,
    /// Version of its record.
    pub version: u64,
    /// Whether the local peer can reach it through recorded connections; an
    /// unreachable peer is removed after a short grace time.
    pub reachable: bool,
    /// The connections this peer announces.
    pub connections: Vec<PeerConnection>,
}

/// A connection as announced by a peer in gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConnection {
    /// Name of the peer at the other end.
    pub name: String,
    /// Nickname of that peer, when known.
    pub nickname: String,
    /// Address at which the other end listens.
    pub address: String,
    /// Whether the announcing peer dialled it.
    pub outbound: bool,
    /// Whether it is established.
    pub established: bool,
}

/// State of one of the local peer's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Handshake done; carries gossip.
    Established,
    /// Dialling or handshaking.
    Pending,
    /// The last attempt failed; another follows after a back-off.
    Failed,
}

impl ConnectionState {
    /// Lowercase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::Pending => "pending",
            Self::Failed => "failed",
        }
    }
}

/// One of the local peer's connections or connection attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionReport {
    /// Name of the remote peer, once the handshake told it.
    pub peer: Option<String>,
    /// Nickname of the remote peer, once known.
    pub nickname: Option<String>,
    /// Remote address (`ip:port`).
    pub address: String,
    /// `established`, `pending` or `failed`.
    pub state: ConnectionState,
    /// Whether the local peer dialled it.
    pub outbound: bool,
    /// Data-plane mode once an overlay runs on it (`sleeve`, `fastdp`).
    pub mode: Option<String>,
    /// Why the sleeve carries it, when it does (`heartbeat timeout`,
    /// `encryption: kernel cannot encrypt`, …).
    #[serde(default)]
    pub mode_reason: Option<String>,
    /// Whether the connection is encrypted.
    pub encrypted: bool,
    /// Free text: the last error, or when the next attempt is due.
    pub info: String,
    /// Control bytes received on this connection.
    pub bytes_in: u64,
    /// Control bytes sent on this connection.
    pub bytes_out: u64,
    /// Overlay MTU on this connection, when a data plane runs: what the
    /// sleeve carries whole to this peer (narrower when the underlay path
    /// was learnt narrower), or the overlay MTU on the fast path.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Frames received from this peer.
    #[serde(default)]
    pub frames_in: u64,
    /// Frames sent to this peer.
    #[serde(default)]
    pub frames_out: u64,
    /// Data-plane bytes received from this peer.
    #[serde(default)]
    pub data_bytes_in: u64,
    /// Data-plane bytes sent to this peer.
    #[serde(default)]
    pub data_bytes_out: u64,
    /// Sleeve drops of what this peer sent (known by its address) or of
    /// what was going to it, by reason; a part of the sleeve's drops.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// A unicast route of the data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReport {
    /// Destination peer.
    pub destination: String,
    /// Neighbour to send to; equal to the destination when it is adjacent.
    pub via: String,
}

/// Counters of the mesh control plane since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshStats {
    /// Bytes received on all control connections.
    pub bytes_in: u64,
    /// Bytes sent on all control connections.
    pub bytes_out: u64,
    /// Gossip messages received.
    pub gossip_in: u64,
    /// Gossip messages sent.
    pub gossip_out: u64,
    /// Connections closed because of a protocol error by the remote side.
    pub protocol_errors: u64,
    /// Handshakes refused: a wrong password, or only one side has one.
    #[serde(default)]
    pub auth_failures: u64,
    /// Sealed control frames that did not decrypt.
    #[serde(default)]
    pub decrypt_failures: u64,
}

/// `POST /connect`: add connection targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// `ip[:port]` addresses; the port defaults to the agent's own.
    pub peers: Vec<String>,
    /// Replace the whole target set instead of adding to it.
    #[serde(default)]
    pub replace: bool,
}

/// `POST /forget`: stop connecting to targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {
    /// `ip[:port]` addresses to forget.
    pub peers: Vec<String>,
}

/// Reply to `POST /connect` and `POST /forget`: the target set afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetsReply {
    /// The addresses the agent now keeps connecting to.
    pub targets: Vec<String>,
}

/// `POST /attach`: wire a network namespace to the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// Path of the network namespace (e.g. `/run/netns/pod1`, `/proc/PID/ns/net`).
    pub netns: String,
    /// What to configure, each one of: `10.2.1.4/24` or `ip:10.2.1.4/24` (a
    /// fixed address, claimed in IPAM when inside its range), `net:10.2.3.0/24`
    /// (allocate in that subnet), `net:default` (allocate in the default
    /// subnet). Empty means `net:default`.
    pub cidrs: Vec<String>,
    /// IPAM identifier of the attachment; defaults to `netns:PATH`.
    #[serde(default)]
    pub id: Option<String>,
    /// Register the attachment's IPv4 addresses in weaveDNS under this
    /// name (a label, or a name in the domain); removed again at detach.
    #[serde(default)]
    pub dns_name: Option<String>,
}

/// Reply to `POST /attach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachReply {
    /// Interface inside the namespace.
    pub ifname: String,
    /// Addresses configured on it.
    pub cidrs: Vec<IpNet>,
}

/// `POST /detach`: undo an attach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    /// Path of the network namespace.
    pub netns: String,
    /// IPAM identifier whose addresses are released; defaults to `netns:PATH`.
    #[serde(default)]
    pub id: Option<String>,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    /// Version of the agent binary.
    pub version: String,
    /// Wire protocol versions, `min..max`.
    pub protocol: String,
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, for a human.
    pub error: String,
}

/// `POST /ipam/allocate`: an address for `id` (idempotent: the same id gets
/// the same address again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateRequest {
    /// Identifier of the attachment (e.g. `cni:CONTAINER:IFNAME`).
    pub id: String,
    /// Subnet inside the allocation range; the default subnet when absent.
    #[serde(default, deserialize_with = "net::opt_subnet_v4")]
    pub subnet: Option<Ipv4Net>,
    /// How long to wait for space (consensus, donation), in milliseconds;
    /// 30 000 when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `POST /ipam/claim`: a specific address for `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Identifier of the attachment.
    pub id: String,
    /// Address with prefix, `10.32.0.9/12`.
    #[serde(deserialize_with = "net::net_v4")]
    pub address: Ipv4Net,
    /// As in [`AllocateRequest::timeout_ms`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `POST /ipam/release`: give back one or all addresses of `id`. Releasing
/// what is not held succeeds and releases nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// Identifier of the attachment.
    pub id: String,
    /// One address (`10.32.0.9` or `10.32.0.9/12`); all of them when absent.
    #[serde(default, deserialize_with = "net::opt_addr_v4")]
    pub address: Option<Ipv4Addr>,
}

/// `POST /ipam/lookup`: the addresses of `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    /// Identifier of the attachment.
    pub id: String,
}

/// Addresses of one identifier (reply to allocate, claim, release, lookup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressesReply {
    /// The identifier.
    pub id: String,
    /// Addresses with the prefix length of their subnet, `10.32.0.5/12`.
    pub addresses: Vec<IpNet>,
}

/// Reply to `GET /ipam/allocations`: every address this peer handed out,
/// by identifier, as IPAM holds them (not as the containers configured
/// them). weave-npc lets exactly these, and the local pods, send from the
/// node's pod ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationsReply {
    /// One entry per identifier, by identifier.
    pub entries: Vec<AddressesReply>,
}

/// `POST /cni/add`: everything a CNI ADD needs from the agent, in one
/// request: an address for `id` (as `/ipam/allocate` gives it), the bridge
/// and overlay MTU the pod is wired with and, if asked, the pod subnet's
/// gateway (the bridge's address in that subnet, given to the bridge from
/// IPAM the first time). The agent answers from its own state and one call
/// to IPAM; the gateway is known after its first use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAddRequest {
    /// Identifier of the attachment, `cni:NETWORK:CONTAINERID:IFNAME`.
    pub id: String,
    /// Subnet inside the allocation range; the default subnet when absent.
    #[serde(default, deserialize_with = "net::opt_subnet_v4")]
    pub subnet: Option<Ipv4Net>,
    /// As in [`AllocateRequest::timeout_ms`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether to answer with the subnet's gateway (false when the network
    /// config names its own).
    #[serde(default)]
    pub gateway: bool,
    /// The bridge the pod joins when the network config names one; the
    /// agent's own when absent.
    #[serde(default)]
    pub bridge: Option<String>,
    /// Register the pod's address in weaveDNS under this name (removed
    /// when the id is released) and answer with the resolver settings.
    #[serde(default)]
    pub dns_name: Option<String>,
    /// The pod's network namespace (`CNI_NETNS`) and interface
    /// (`CNI_IFNAME`), remembered for `weave ps`.
    #[serde(default)]
    pub netns: Option<String>,
    /// See `netns`.
    #[serde(default)]
    pub ifname: Option<String>,
}

/// The IPAM identifier of the bridge's own addresses (`weave expose`), and the prefix of
/// the per-subnet identifiers the gateway addresses are held under.
pub const BRIDGE_ID: &str = "weave:expose";

/// Reply to `GET /ps`: what is attached to this peer's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsReply {
    /// One entry per attachment, the bridge (`weave:expose`) first, then by id.
    pub entries: Vec<PsEntry>,
}

/// One attachment in [`PsReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsEntry {
    /// IPAM identifier (`cni:NETWORK:CONTAINER:IFNAME`, `netns:PATH`, …),
    /// or `weave:expose` for the bridge.
    pub id: String,
    /// Hardware address of the interface, when it could be read.
    #[serde(default)]
    pub mac: Option<String>,
    /// Addresses: as configured on the interface when it could be read,
    /// else as IPAM holds them.
    pub addresses: Vec<IpNet>,
    /// Network namespace and interface, when known.
    #[serde(default)]
    pub netns: Option<String>,
    /// See `netns`.
    #[serde(default)]
    pub ifname: Option<String>,
}

/// Reply to `POST /cni/add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAddReply {
    /// The identifier.
    pub id: String,
    /// The attachment's addresses with the prefix length of their subnet.
    pub addresses: Vec<IpNet>,
    /// The bridge: the one asked for, else the agent's (none when it runs
    /// with `--bridge off`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// The overlay MTU, when the agent runs a data plane.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The gateway of the addresses' subnet, when asked for and there is a
    /// bridge to hold it.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Resolver settings for the pod, when a DNS name was registered.
    #[serde(default)]
    pub dns: Option<DnsSettings>,
}

/// Resolver settings for a pod: weaveDNS's address and domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSettings {
    /// Where weaveDNS answers the pod (the gateway of its subnet).
    pub nameserver: IpAddr,
    /// The domain, without the final dot (`weave.local`), for `search`.
    pub domain: String,
}

/// `POST /ipam/gc`: release every allocation whose id starts with `prefix`
/// and is not listed in `keep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Only ids with this prefix are candidates (e.g. `cni:`); must not be empty.
    pub prefix: String,
    /// Ids to keep.
    pub keep: Vec<String>,
}

/// Reply to `POST /ipam/gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReply {
    /// Ids whose addresses were released.
    pub released: Vec<String>,
}

/// `POST /ipam/rmpeer`: hand the space of a peer that is gone for good to
/// live peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmPeerRequest {
    /// Peer name or nickname.
    pub peer: String,
}

/// Reply to `POST /ipam/rmpeer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmPeerReply {
    /// The removed peer's name.
    pub peer: String,
    /// Addresses it owned.
    pub addresses: u64,
    /// Peers inheriting its ranges.
    pub heirs: Vec<String>,
}

/// `GET /ipam`: state of IP address management.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamReport {
    /// `ready`, `idle`, `waiting for consensus: 1 peer known, 2 needed of an expected 3`, …
    pub status: String,
    /// Whether an allocation can proceed now (the CNI STATUS check).
    pub ready: bool,
    /// The allocation range.
    pub range: Ipv4Net,
    /// The default subnet.
    pub default_subnet: Ipv4Net,
    /// Addresses in the range.
    pub total: u64,
    /// Addresses handed out by this peer.
    pub used: u64,
    /// Allocations waiting (for consensus or space).
    pub pending: u64,
    /// Each owner of space (and each known peer with none).
    pub owners: Vec<IpamOwner>,
    /// Peers removed with rmpeer.
    pub removed: Vec<String>,
    /// Size of the gossiped IPAM state, in bytes.
    #[serde(default)]
    pub state_bytes: u64,
}

/// One peer's share of the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamOwner {
    /// Peer name.
    pub name: String,
    /// Nickname, when known.
    pub nickname: String,
    /// Addresses owned.
    pub addresses: u64,
    /// Free addresses as last reported by the peer (exact for the local one).
    pub free: u64,
    /// Whether it is the local peer.
    pub local: bool,
    /// Whether it is reachable now.
    pub reachable: bool,
}

/// `POST /dns/add`: register `name` for `addresses` on this peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsAddRequest {
    /// A label (`web`, the domain is appended) or a name in the domain.
    pub name: String,
    /// IPv4 addresses (bare or with a prefix); at least one.
    #[serde(deserialize_with = "net::addrs_v4")]
    pub addresses: Vec<Ipv4Addr>,
    /// Who holds the records (a container or attachment id); `weave:extern`
    /// when absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// `POST /dns/remove`: remove this peer's records matching every field
/// given (at least one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRemoveRequest {
    /// Only records of this name.
    #[serde(default)]
    pub name: Option<String>,
    /// Only records of these addresses.
    #[serde(default, deserialize_with = "net::addrs_v4")]
    pub addresses: Vec<Ipv4Addr>,
    /// Only records of this holder.
    #[serde(default)]
    pub id: Option<String>,
}

/// Reply to `POST /dns/add` and `POST /dns/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsChangeReply {
    /// Records added or removed (a repeated add counts none).
    pub changed: u64,
}

/// `POST /dns/lookup`: the live addresses of a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsLookupRequest {
    /// A label or a name in the domain.
    pub name: String,
}

/// Reply to `POST /dns/lookup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsLookupReply {
    /// The fully qualified name.
    pub name: String,
    /// Its addresses, ascending (empty when unknown).
    pub addresses: Vec<Ipv4Addr>,
}

/// One live record, as `weave status dns` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsEntry {
    /// Fully qualified name.
    pub name: String,
    /// Address.
    pub address: Ipv4Addr,
    /// Who holds it on its origin.
    pub id: String,
    /// The peer that registered it.
    pub origin: String,
    /// The origin's version of it.
    pub version: u64,
}

/// A query counter of weaveDNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQueryCount {
    /// `A`, `AAAA`, `PTR` or `other`.
    pub qtype: String,
    /// `answer`, `nodata`, `nxdomain`, `forwarded`, `servfail`, `refused`.
    pub result: String,
    /// Queries.
    pub count: u64,
}

/// `GET /dns`: state of weaveDNS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsReport {
    /// The domain, with the final dot.
    pub domain: String,
    /// Addresses served now.
    pub listen: Vec<String>,
    /// Upstream servers used for other names.
    pub upstream: Vec<String>,
    /// TTL of answers, seconds.
    pub ttl: u32,
    /// Live records registered on this peer.
    pub local_entries: u64,
    /// Live records of all peers.
    pub entries: u64,
    /// Records held, live and deleted, of all peers.
    pub records: u64,
    /// Own deleted records waiting to be purged.
    pub tombstones: u64,
    /// Queries by type and result.
    pub queries: Vec<DnsQueryCount>,
    /// Forwards that failed.
    pub upstream_failures: u64,
    /// Gossiped records refused because a bound was reached.
    pub refused_records: u64,
    /// The live records, when asked for (`GET /dns?entries=true`).
    #[serde(default)]
    pub records_list: Vec<DnsEntry>,
}

/// `POST /expose`: give the bridge an address in a subnet (so that hosts
/// reach pods and pods reach weaveDNS), optionally with a DNS name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeRequest {
    /// A subnet inside the allocation range; the default subnet when absent.
    #[serde(default, deserialize_with = "net::opt_subnet_v4")]
    pub subnet: Option<Ipv4Net>,
    /// A fixed address with its network's prefix (`10.2.1.1/24`) instead of one from IPAM
    /// (claimed in IPAM when it lies in the range); not with `subnet`.
    #[serde(default, deserialize_with = "net::opt_net_v4")]
    pub address: Option<Ipv4Net>,
    /// A DNS name for the bridge's address.
    #[serde(default)]
    pub dns_name: Option<String>,
}

/// Reply to `POST /expose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeReply {
    /// The bridge's address in the subnet.
    pub address: IpNet,
}

/// `POST /hide`: take the bridge's address in a subnet away again (undoes `POST /expose`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HideRequest {
    /// A subnet inside the allocation range; the default subnet when absent.
    #[serde(default, deserialize_with = "net::opt_subnet_v4")]
    pub subnet: Option<Ipv4Net>,
    /// Exactly this fixed address (as exposed with `address`); not with `subnet`.
    #[serde(default, deserialize_with = "net::opt_net_v4")]
    pub address: Option<Ipv4Net>,
}

/// Reply to `POST /hide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HideReply {
    /// The address removed from the bridge; none if it had none in the subnet.
    pub address: Option<IpNet>,
}

/// Transport protocol of a service.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProto {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for ServiceProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceProto::Tcp => "tcp",
            ServiceProto::Udp => "udp",
        })
    }
}

/// Which way a service goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// The outside reaches a weave address through this host's address and port.
    Export,
    /// Containers reach an outside address through a weave address of this host.
    Import,
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceKind::Export => "export",
            ServiceKind::Import => "import",
        })
    }
}

/// One exported or imported service: connections to the front (`address:port`) go to
/// `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Export or import.
    pub kind: ServiceKind,
    /// Protocol.
    pub proto: ServiceProto,
    /// Export: the host address it is bound to (absent: every address of the host).
    /// Import: the weave address on this host's bridge that containers connect to.
    pub address: Option<Ipv4Addr>,
    /// Port of the front.
    pub port: u16,
    /// Where connections go.
    pub target: std::net::SocketAddrV4,
}

/// `POST /services/export` and `POST /services/import`: add a service; `POST
/// /services/rebind`: point the service at `proto`, `address` (which may be left out when
/// one service has the port) and `port` to `target` instead, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAddRequest {
    /// Protocol (TCP when absent).
    #[serde(default)]
    pub proto: ServiceProto,
    /// Export: a host address to bind to. Import: the weave address (this host's exposed
    /// address in the default subnet when absent, exposed first if need be).
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Port of the front.
    pub port: u16,
    /// Where connections go.
    pub target: std::net::SocketAddrV4,
}

/// `POST /services/remove`: which service, by protocol, port and (when two share the port)
/// address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFront {
    /// Protocol (TCP when absent).
    #[serde(default)]
    pub proto: ServiceProto,
    /// The front address; may be left out when one service has the port.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The front port.
    pub port: u16,
}

/// `GET /services` and the reply to every `/services/…` change: all services of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesReply {
    /// Every service, in front order.
    pub services: Vec<Service>,
    /// The service the request changed, if it changed one.
    #[serde(default)]
    pub changed: Option<Service>,
}
