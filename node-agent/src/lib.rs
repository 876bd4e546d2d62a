// SPDX-License-Identifier: Apache-2.0
//! `weaver`, the per-node agent of the weave network, as a library: the
//! binaries only parse flags and call [`run`]; tests drive the same code.

pub mod api;
pub mod atomic_file;
pub mod attach;
pub mod cli;
pub mod cni_release;
pub mod config;
pub mod crypto;
pub mod dns;
pub mod egress;
mod error;
pub mod fastdp;
pub mod install;
pub mod ipam;
pub mod kube;
pub mod mesh;
pub mod metrics;
pub mod router;
pub mod services;
pub mod sleeve;
pub mod state;

use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use config::Config;
pub use error::{Error, Result};
use mesh::{Mesh, MeshConfig, PeerUid};

/// Runs the agent until `cancel` fires or a subsystem fails; a failing
/// subsystem cancels the others and its error is returned.
pub async fn run(mut config: Config, cancel: CancellationToken) -> Result<()> {
    let mut rng = rand::thread_rng();
    let kube = match &config.kube {
        Some(settings) => {
            let kube = kube::Kube::connect(settings.clone())
                .await
                .map_err(Box::new)?;
            kube.forget_if_reclaimed(&config.state_dir)
                .await
                .map_err(Box::new)?;
            Some(kube)
        }
        None => None,
    };
    let name = state::load_or_create_peer_name(&config.state_dir, config.name, &mut rng)?;
    let explicit_peers = config.peers.clone();
    if let Some(kube) = &kube {
        let prepared = kube
            .prepare(name, &config.state_dir, config.port)
            .await
            .map_err(Box::new)?;
        config.peers.extend(prepared.peers.iter().copied());
        if let Some(ipam) = config.ipam.as_mut().filter(|s| s.init_default) {
            // A strict majority of all Nodes must agree on the first split.
            ipam.init = ipam::Init::Consensus(prepared.nodes);
        }
    }
    let uid = PeerUid::random(&mut rng);
    let peer_addr = std::net::SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(peer_addr)
        .await
        .map_err(|source| Error::Bind {
            what: "peers",
            addr: peer_addr,
            source,
        })?;
    let http = bind_optional(config.http_addr, "the HTTP API").await?;
    let metrics = bind_optional(config.metrics_addr, "metrics").await?;
    let socket = match &config.api_socket {
        Some(path) => Some((api::bind_socket(path)?, path.clone())),
        None => None,
    };
    info!(%name, %uid, nickname = %config.nickname, %peer_addr, http = ?config.http_addr, socket = ?config.api_socket, encrypted = config.password.is_some(), "weaver starting");
    // Argon2 is deliberately slow: keep it off the runtime threads.
    let psks = match config.password.clone() {
        Some(p) => tokio::task::spawn_blocking(move || p.derive_psks())
            .await
            .map_err(|e| Error::Password(e.to_string()))?
            .map_err(|e| Error::Password(e.to_string()))?,
        None => Vec::new(),
    };

    let sleeve = match &config.bridge {
        Some(bridge) => {
            let netlink = weave_platform::LinuxNetlink::new()?;
            let cfg = router::sleeve::SleeveConfig {
                bridge: bridge.clone(),
                mtu: config.mtu,
                addr: peer_addr,
                encrypted: !psks.is_empty(),
            };
            Some(router::sleeve::setup(&cfg, name, &netlink).await?)
        }
        None => None,
    };

    let fastdp = match &sleeve {
        Some(shared) => {
            let netlink = weave_platform::LinuxNetlink::new()?;
            let cfg = router::fastdp::FastdpConfig {
                enabled: config.fastdp_port.is_some(),
                port: config.fastdp_port.unwrap_or(fastdp::DEFAULT_PORT),
                encrypted: !psks.is_empty(),
            };
            Some(router::fastdp::setup(cfg, name, shared, &netlink).await)
        }
        None => None,
    };

    let egress = match (&sleeve, &config.ipam) {
        (Some(shared), Some(settings)) => {
            egress::enable_forwarding()?;
            Some(egress::EgressConfig {
                range: settings.range,
                bridge: shared.bridge().to_string(),
                masquerade: config.masquerade,
                exceptions: config.masquerade_exceptions.clone(),
            })
        }
        _ => None,
    };

    let ipam = match &config.ipam {
        Some(s) => {
            let netlink = weave_platform::LinuxNetlink::new()?;
            ipam::allocator::check_overlap(&netlink, &s.range, config.bridge.as_deref()).await?;
            let persisted = ipam::persist::load(&config.state_dir, name, s.range)?;
            if let Some(p) = &persisted {
                info!(state = %p, "IPAM state restored");
            }
            let cfg = ipam::IpamConfig {
                name,
                uid: uid.get(),
                nickname: config.nickname.clone(),
                universe: s.range,
                default_subnet: s.default_subnet,
                init: s.init.clone(),
            };
            Some(ipam::Ipam::new(cfg, persisted, rng.gen()))
        }
        None => None,
    };

    let mut mesh_cfg = MeshConfig::new(name, config.nickname.clone(), config.port);
    mesh_cfg.overlay = sleeve.is_some();
    mesh_cfg.conn_limit = config.conn_limit;
    mesh_cfg.heartbeat_interval = config.heartbeat;
    mesh_cfg.read_timeout = config.read_timeout;
    mesh_cfg.gossip_interval = config.gossip_interval;
    mesh_cfg.psks = psks;
    let now = Instant::now();
    let mut mesh = Mesh::new(mesh_cfg, uid, rng.gen(), now);
    if !config.peers.is_empty() {
        mesh.connect(&config.peers, false, now);
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let mut gossip = mesh::gossip::GossipPort::new();
    let mut tasks = JoinSet::new();
    let mut services = api::Services {
        peer: name,
        bridge: sleeve.as_ref().map(|s| api::BridgeInfo {
            name: s.bridge().to_string(),
            mtu: s.mtu(),
        }),
        ipam: None,
        default_subnet: ipam.as_ref().map(|i| i.config().default_subnet),
        dns: None,
        services: None,
        attachments: std::sync::Arc::new(api::Attachments::load(Some(&config.state_dir))),
    };
    let removed = ipam
        .as_ref()
        .map(|_| tokio::sync::watch::channel(std::collections::BTreeSet::new()));
    if let Some(settings) = &config.dns {
        let handle = dns::start(
            settings,
            name,
            config.state_dir.clone(),
            config.gossip_interval,
            &mut gossip,
            removed.as_ref().map(|(_, rx)| rx.clone()),
            &mut tasks,
            &cancel,
        )
        .await?;
        services.dns = Some(handle);
    }
    if let Some(ipam) = ipam {
        let (req_tx, req_rx) = mpsc::channel(1024);
        let registration = gossip
            .register(ipam::allocator::CHANNEL)
            .expect("IPAM is the only subsystem on its channel");
        services.ipam = Some(req_tx.clone());
        let mut allocator =
            ipam::allocator::Allocator::new(ipam, config.state_dir.clone(), req_rx, registration)
                .with_gossip_interval(config.gossip_interval);
        if let Some((tx, _)) = removed {
            allocator = allocator.with_removed(tx);
        }
        let c = cancel.clone();
        tasks.spawn(async move { ("ipam", allocator.run(c).await) });
        if let Some(socket) = config.api_socket.as_deref() {
            let spool = weave_api::spool::Spool::beside(socket);
            let spool = cni_release::ReleaseSpool::new(spool, req_tx);
            let c = cancel.clone();
            tasks.spawn(async move { ("cni-release", spool.run(c).await) });
        }
    }
    let fastdp_reg = fastdp.as_ref().map(|_| {
        gossip
            .register(fastdp::advert::CHANNEL)
            .expect("the fast path is the only subsystem on its channel")
    });
    let mut router = router::Router::new(mesh, listener, cmd_rx, gossip);
    if let Some(shared) = sleeve {
        let (views_tx, views_rx) =
            tokio::sync::watch::channel(std::sync::Arc::new(mesh::overlay::OverlayView::default()));
        let (paths_tx, paths_rx) = mpsc::channel(1024);
        if let (Some(fd), Some(reg)) = (fastdp, fastdp_reg) {
            router = router.with_fastdp(fd.clone());
            let views = views_tx.subscribe();
            let netlink = weave_platform::LinuxNetlink::new()?;
            let sl = shared.clone();
            let c = cancel.clone();
            tasks.spawn(async move {
                (
                    "fastdp",
                    router::fastdp::run(fd, sl, reg, views, netlink, c).await,
                )
            });
        }
        router = router.with_sleeve(views_tx, paths_rx, shared.clone());
        let c = cancel.clone();
        tasks.spawn(async move {
            (
                "sleeve",
                router::sleeve::run(shared, views_rx, paths_tx, c).await,
            )
        });
    }

    if let Some(cfg) = egress {
        let firewall: std::sync::Arc<dyn weave_platform::firewall::Firewall> =
            std::sync::Arc::new(weave_platform::firewall::NftFirewall::default());
        let (task, requests) = services::ServicesTask::load(
            services::ServicesConfig {
                range: cfg.range,
                bridge: cfg.bridge.clone(),
                state_dir: config.state_dir.clone(),
            },
            std::sync::Arc::clone(&firewall),
        )?;
        services.services = Some(api::ServicesInfo {
            requests,
            range: cfg.range,
        });
        let c = cancel.clone();
        tasks.spawn(async move { ("services", task.run(c).await) });
        let c = cancel.clone();
        tasks.spawn(async move { ("egress", egress::run(cfg, firewall, c).await) });
    }
    if let Some(kube) = kube {
        let agent = LocalAgent {
            commands: cmd_tx.clone(),
            ipam: services.ipam.clone(),
            explicit: explicit_peers,
        };
        let task = kube.task(name, config.port, agent);
        let c = cancel.clone();
        tasks.spawn(async move { ("kube", task.run(c).await) });
    }
    let c = cancel.clone();
    tasks.spawn(async move { ("router", router.run(c).await) });
    if let Some(listener) = metrics {
        let c = cancel.clone();
        let commands = cmd_tx.clone();
        let services = services.clone();
        tasks.spawn(async move {
            (
                "metrics",
                api::serve_metrics(listener, commands, services, c).await,
            )
        });
    }
    let c = cancel.clone();
    let port = config.port;
    tasks.spawn(async move {
        (
            "api",
            api::serve(http, socket, cmd_tx, port, services, c).await,
        )
    });

    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((what, Err(e))) => {
                error!(subsystem = what, error = %e, "subsystem failed; stopping");
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => error!(error = %e, "subsystem panicked; stopping"),
        }
        cancel.cancel();
    }
    info!("weaver stopped");
    result
}

/// The agent as the Kubernetes side sees it: the router's and IPAM's channels.
struct LocalAgent {
    /// Router commands.
    commands: mpsc::Sender<router::ApiCommand>,
    /// IPAM requests, when IPAM runs.
    ipam: Option<mpsc::Sender<ipam::allocator::Request>>,
    /// Peers given on the command line, kept beside the Nodes'.
    explicit: Vec<std::net::SocketAddr>,
}

impl kube::Agent for LocalAgent {
    async fn replace_peers(
        &self,
        addrs: Vec<std::net::SocketAddr>,
    ) -> std::result::Result<(), String> {
        let mut all = self.explicit.clone();
        all.extend(addrs.into_iter().filter(|a| !self.explicit.contains(a)));
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(router::ApiCommand::Connect {
                addrs: all,
                replace: true,
                reply,
            })
            .await
            .map_err(|_| "the router has stopped".to_string())?;
        rx.await
            .map(drop)
            .map_err(|_| "the router has stopped".to_string())
    }

    async fn rmpeer(&self, peer: String) -> std::result::Result<bool, String> {
        let Some(ipam) = &self.ipam else {
            return Ok(false);
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        ipam.send(ipam::allocator::Request::RmPeer { peer, reply })
            .await
            .map_err(|_| "IP allocation has stopped".to_string())?;
        match rx
            .await
            .map_err(|_| "IP allocation has stopped".to_string())?
        {
            Ok(_) => Ok(true),
            Err(ipam::IpamError::UnknownPeer(_)) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn ready(&self) -> bool {
        let Some(ipam) = &self.ipam else {
            return true;
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        if ipam
            .send(ipam::allocator::Request::Report { reply })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.is_ok_and(|r| r.ready)
    }
}

/// Binds a TCP listener if an address is configured.
async fn bind_optional(
    addr: Option<std::net::SocketAddr>,
    what: &'static str,
) -> Result<Option<TcpListener>> {
    match addr {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| Error::Bind { what, addr, source }),
        None => Ok(None),
    }
}

/// Fuzzing entry points: each takes arbitrary bytes and must never panic.
pub mod fuzz {
    use crate::mesh::topology::TopologyGossip;
    use crate::mesh::wire::{Decoder, Message};

    /// Feeds bytes to a fresh connection decoder, as if they came from a peer.
    pub fn handshake(data: &[u8]) {
        let mut d = Decoder::new();
        d.push(data);
        while let Ok(Some(_)) = d.next_frame() {}
        let _ = Message::decode(data);
    }

    /// Decodes IPAM gossip and merges it into a fresh peer of the same
    /// range; a merge must leave a ring that passes its own checks.
    pub fn ipam_gossip(data: &[u8]) {
        use crate::ipam::{GossipState, Init, Ipam, IpamConfig};
        let Ok(g) = GossipState::decode(data) else {
            return;
        };
        let cfg = IpamConfig {
            name: crate::mesh::PeerName::from_u64(1),
            uid: 1,
            nickname: "fuzz".into(),
            universe: g.ring.universe,
            default_subnet: g.ring.universe,
            init: Init::Consensus(3),
        };
        let mut ipam = Ipam::new(cfg, None, 1);
        let now = tokio::time::Instant::now();
        let from = crate::mesh::PeerName::from_u64(2);
        ipam.on_gossip(from, data, now)
            .expect("decoded gossip merges");
        assert!(ipam.ring().validate().is_ok(), "merge keeps the ring valid");
        let _ = ipam.on_gossip(from, &ipam.gossip_state().encode(), now);
    }

    /// Decodes weaveDNS gossip and merges it into a peer that holds records
    /// of its own; the merge must be idempotent, re-encoding must round-trip,
    /// and the counts must stay consistent with what the zone lists.
    pub fn dns_gossip(data: &[u8]) {
        use crate::dns::gossip::DnsGossip;
        use crate::dns::zone::{Holder, Key, Zone};
        let Ok(g) = DnsGossip::decode(data) else {
            return;
        };
        assert_eq!(
            DnsGossip::decode(&g.encode()).as_ref(),
            Ok(&g),
            "re-encoding round-trips"
        );
        let now = tokio::time::Instant::now();
        let me = crate::mesh::PeerName::from_u64(1);
        let mut z = Zone::new(me, None, now);
        let name = crate::dns::DnsName::parse("own.weave.local").expect("a valid name");
        let holder = Holder::new("fuzz").expect("a valid holder");
        let _ = z.add(Key {
            name,
            addr: std::net::Ipv4Addr::new(10, 0, 0, 1),
            holder,
        });
        z.merge(&g);
        z.take_delta();
        let live: Vec<_> = z.live().map(|(p, k, v)| (p, k.clone(), v)).collect();
        assert!(live.len() <= z.total());
        assert!(
            !z.merge(&g).changed,
            "merging the same gossip twice changes nothing"
        );
        let again: Vec<_> = z.live().map(|(p, k, v)| (p, k.clone(), v)).collect();
        assert_eq!(live, again);
        for f in z.full_state() {
            let _ = DnsGossip::decode(&f.encode()).expect("own state decodes");
        }
    }

    /// Decodes a sleeve datagram and walks all its frames; a fragment goes
    /// through a reassembly pool.
    pub fn sleeve(data: &[u8]) {
        use crate::sleeve::frame::{decode, Datagram};
        use crate::sleeve::reassembly::{Outcome, Reassembly};
        match decode(data) {
            Ok(Datagram::Frames { frames, .. }) => {
                for f in frames.flatten() {
                    assert!(
                        f.data.len() >= 14,
                        "frames shorter than Ethernet are refused"
                    );
                }
            }
            Ok(Datagram::Fragment { hop, fragment }) => {
                // A decoded piece always fits its frame; a single-piece
                // frame completes at once and is then a duplicate.
                let mut pool = Reassembly::new();
                let single = fragment.count() == 1;
                match pool.take(hop, &fragment) {
                    Outcome::Complete(w) => {
                        assert!(single, "a frame of several pieces completed from one");
                        assert_eq!(w.data, fragment.piece);
                        if let Ok(h) = crate::sleeve::offload::VnetHdr::parse(w.data) {
                            let _ = h.validate(w.data.len().saturating_sub(10));
                        }
                    }
                    Outcome::Kept => assert!(!single),
                    Outcome::Duplicate => panic!("the first piece is never a duplicate"),
                }
                assert_eq!(pool.take(hop, &fragment), Outcome::Duplicate);
            }
            _ => {}
        }
    }

    /// Handshake messages and sealed frames from a peer who may not know
    /// the password: the responder's and the initiator's handshake steps,
    /// a sealed control frame and a sealed sleeve datagram. None may panic,
    /// and without the key none may be accepted.
    pub fn noise(data: &[u8]) {
        use crate::crypto::handshake::{respond, Initiator};
        use crate::crypto::session::{ControlOpener, SleeveRx};
        use crate::crypto::Secret;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let psks = [Secret::new([1; 32]), Secret::new([2; 32])];
        let prologue = b"weave\x02\x02weave\x02\x02";
        assert!(
            respond(&psks, prologue, data, &mut rng).is_err(),
            "offers forged without the key were accepted"
        );
        let (init, _) = Initiator::start(&psks, prologue, &mut rng);
        assert!(init.finish(data).is_err(), "a forged answer was accepted");
        let mut opener = ControlOpener::new(Secret::new([3; 32]));
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        assert!(opener.open(len, data).is_err(), "a forged frame opened");
        let mut rx = SleeveRx::new(Secret::new([4; 32]));
        let mut out = Vec::new();
        assert!(rx.open(data, &mut out).is_err(), "a forged datagram opened");
    }

    /// A heartbeat frame from the VXLAN device and an advert from the
    /// gossip channel, fed to a choice that has one neighbour whose
    /// connection UID the input may or may not guess; an advert that decodes
    /// must re-encode to what decodes the same.
    pub fn fastdp(data: &[u8]) {
        use crate::fastdp::advert::Advert;
        use crate::fastdp::choice::{Choice, Settings, Timing};
        use crate::fastdp::heartbeat::Frame;
        let now = tokio::time::Instant::now();
        let local = crate::mesh::PeerName::from_u64(1);
        let peer = crate::mesh::PeerName::from_u64(2);
        let mut choice = Choice::new(
            Settings {
                local,
                available: Ok(6784),
                encrypted: false,
                full_len: 1450,
                timing: Timing::default(),
            },
            now,
        );
        let neighbours = [(
            peer,
            crate::mesh::overlay::Neighbour {
                addr: "10.0.0.2:6783".parse().expect("valid address"),
                conn_uid: 7,
                keys: None,
            },
        )]
        .into_iter()
        .collect();
        choice.sync(&neighbours, now);
        if let Ok(a) = Advert::decode(data) {
            assert_eq!(
                Advert::decode(&a.encode()),
                Ok(a.clone()),
                "advert round trip"
            );
            choice.on_advert(peer, a, now);
        }
        if let Ok(f) = Frame::decode(data) {
            let again = Frame::decode(&f.encode()).expect("re-encoded frame decodes");
            assert_eq!(
                (again.kind, again.seq, again.conn_uid),
                (f.kind, f.seq, f.conn_uid)
            );
        }
        let _ = choice.on_frame(data, now);
        choice.tick(now);
        while choice.poll_action().is_some() {}
    }

    /// Decodes a topology gossip body and re-encodes what decodes.
    pub fn gossip(data: &[u8]) {
        if let Ok(g) = TopologyGossip::decode(data) {
            let again = TopologyGossip::decode(&g.encode()).expect("re-encoded gossip decodes");
            assert_eq!(g, again, "gossip round trip");
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::mesh::topology::{ConnRecord, DigestEntry, PeerRecord, TopologyGossip};
    use crate::mesh::wire::{header, Hello, Message};
    use crate::mesh::{PeerName, PeerUid};

    /// Valid inputs to mutate: a full handshake and gossip bodies.
    fn seeds() -> Vec<Vec<u8>> {
        let name: PeerName = "02:00:00:00:00:01".parse().expect("valid name");
        let rec = PeerRecord {
            name,
            uid: PeerUid::new(5),
            version: 3,
            nickname: "h1".into(),
            conns: [(
                "02:00:00:00:00:02".parse().expect("valid name"),
                ConnRecord {
                    addr: "10.0.0.2:6783".parse().expect("valid addr"),
                    outbound: true,
                    established: true,
                },
            )]
            .into_iter()
            .collect(),
        };
        let update = TopologyGossip::Update(vec![rec]).encode();
        let digest = TopologyGossip::Digest(vec![DigestEntry {
            name,
            uid: PeerUid::new(5),
            version: 3,
        }])
        .encode();
        let mut stream = header().to_vec();
        stream.extend(
            Message::Hello(Hello {
                name,
                uid: PeerUid::new(5),
                conn_id: 9,
                listen_port: 6783,
                nickname: "h1".into(),
            })
            .encode(),
        );
        stream.extend(Message::Heartbeat.encode());
        stream.extend(
            Message::Gossip {
                channel: 0,
                body: update.clone(),
            }
            .encode(),
        );
        let mut datagram = Vec::new();
        crate::sleeve::frame::begin_frames(&mut datagram, name);
        crate::sleeve::frame::push_frame(&mut datagram, name, PeerName::BROADCAST, &[0xff; 60]);
        crate::sleeve::frame::push_frame(&mut datagram, name, name, &[0x0a; 20]);
        let heartbeat = crate::sleeve::frame::heartbeat(name, name, 7, false).to_vec();
        let ipam = {
            use crate::ipam::{Init, Ipam, IpamConfig};
            let cfg = IpamConfig {
                name,
                uid: 1,
                nickname: "a".into(),
                universe: "10.32.0.0/24".parse().expect("valid subnet"),
                default_subnet: "10.32.0.0/24".parse().expect("valid subnet"),
                init: Init::Seed(vec![name, PeerName::from_u64(9)]),
            };
            Ipam::new(cfg, None, 1).gossip_state().encode()
        };
        let advert = crate::fastdp::advert::Advert {
            available: Ok(()),
            vni: crate::fastdp::VNI,
            port: 6784,
            encaps: vec![crate::fastdp::Encap::Vxlan],
            macs: vec![[0x0a, 0, 0, 0, 0, 1]],
        }
        .encode();
        let fastdp_hb = crate::fastdp::heartbeat::Frame {
            to: PeerName::from_u64(1),
            from: PeerName::from_u64(2),
            kind: crate::fastdp::heartbeat::Kind::Heartbeat,
            tx_ok: true,
            reason: None,
            conn_uid: 7,
            seq: 1,
            full: false,
            len: 60,
        }
        .encode();
        vec![
            stream, update, digest, datagram, heartbeat, ipam, advert, fastdp_hb,
        ]
    }

    /// The fuzz entry points over many seeded mutations (flips, cuts,
    /// insertions) of valid input: a cheap, deterministic stand-in for the
    /// coverage-guided fuzzers in `node-agent/fuzz`, run on every test.
    #[test]
    fn decoders_survive_mutated_input() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let seeds = seeds();
        for _ in 0..20_000 {
            let mut data = seeds[rng.gen_range(0..seeds.len())].clone();
            for _ in 0..rng.gen_range(1..6) {
                match rng.gen_range(0..4) {
                    0 if !data.is_empty() => {
                        let i = rng.gen_range(0..data.len());
                        data[i] ^= 1 << rng.gen_range(0..8);
                    }
                    1 if !data.is_empty() => {
                        let i = rng.gen_range(0..data.len());
                        data.truncate(i);
                    }
                    2 => {
                        let i = rng.gen_range(0..=data.len());
                        data.insert(i, rng.gen());
                    }
                    _ if !data.is_empty() => {
                        let i = rng.gen_range(0..data.len());
                        data[i] = rng.gen();
                    }
                    _ => {}
                }
            }
            crate::fuzz::handshake(&data);
            crate::fuzz::gossip(&data);
            crate::fuzz::sleeve(&data);
            crate::fuzz::ipam_gossip(&data);
            crate::fuzz::fastdp(&data);
            if data.len() > 8 {
                crate::fuzz::gossip(&data[8..]);
            }
        }
    }
}
