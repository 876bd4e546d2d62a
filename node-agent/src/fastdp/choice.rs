// SPDX-License-Identifier: Apache-2.0
//! Which connections the kernel carries: a sans-IO state machine per
//! neighbour, fed with the mesh's neighbours, the neighbours' adverts,
//! heartbeat frames from the VXLAN device and the time; it returns
//! [`Action`]s (frames to send, changes of mode) and answers what the
//! kernel must be told ([`Choice::carriers`], [`Choice::candidates`]).
//!
//! Per neighbour, while both ends can run the fast path (a *candidate*),
//! heartbeats go every [`Timing::interval`], a full-size one and a small one
//! each time. A connection goes to the fast path when
//! [`Timing::confirm`] full-size heartbeats in a row were answered *and* the
//! peer's own heartbeats say the same of its direction; it leaves when no
//! full-size answer came for [`Timing::fail_after`] or the peer says its
//! direction fails. Both ends therefore decide alike, and the reason shown
//! says which way and how it failed ([`Reason::Mtu`] when only small
//! heartbeats cross). While on the sleeve, heartbeats back off to one every
//! [`Timing::probe_max`] at most and speed up at the first answer, so a path
//! that works again is used again within a few seconds.
//!
//! A neighbour whose connection closes while the kernel carries it (its
//! agent restarts or was killed) is *held*: its forwarding entries stay for
//! [`Timing::hold`], since the kernel keeps forwarding without any agent.
//! When it comes back, the connection *resumes*: it counts as fast path
//! while heartbeats confirm it (or, after [`Timing::resume_grace`], fail).
//! A restarted agent holds what it finds in the kernel the same way
//! ([`Choice::adopt`]), so neither side of a restart touches the entries
//! pod traffic is using.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;
use weave_platform::Mac;

use super::advert::Advert;
use super::heartbeat::{Frame, Kind, SMALL_LEN};
use super::{Encap, Mode, Reason, Remote, VNI};
use crate::mesh::overlay::Neighbour;
use crate::mesh::PeerName;

/// Full-size heartbeats remembered while waiting for their answers.
const PENDING: usize = 16;
/// How long an advert of a peer that is not (or no longer) a neighbour is
/// kept, in case its connection shows up in the mesh's view after it.
const ADVERT_KEEP: Duration = Duration::from_secs(60);

/// Timers of the choice; the defaults meet the fallback (2 s) and
/// re-upgrade (10 s) goals with room for a busy machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat interval while on the fast path or confirming it.
    pub interval: Duration,
    /// No full-size answer for this long: the fast path has failed.
    pub fail_after: Duration,
    /// Full-size heartbeats answered in a row before the fast path is used.
    pub confirm: u32,
    /// Longest interval between heartbeats on a path that does not answer.
    pub probe_max: Duration,
    /// How long a resumed connection counts as fast path without
    /// confirmation.
    pub resume_grace: Duration,
    /// How long the entries of a neighbour whose connection closed are kept.
    pub hold: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(250),
            fail_after: Duration::from_millis(1500),
            confirm: 3,
            probe_max: Duration::from_secs(4),
            resume_grace: Duration::from_secs(5),
            hold: Duration::from_secs(30),
        }
    }
}

/// What the choice needs to know about the local peer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The local peer.
    pub local: PeerName,
    /// `Ok(port)` when the fast path runs here, else why not.
    pub available: Result<u16, Reason>,
    /// A mesh password is set: only encapsulations that encrypt may carry
    /// pod traffic.
    pub encrypted: bool,
    /// Length of a full-size heartbeat: the overlay MTU plus the Ethernet
    /// header.
    pub full_len: u16,
    /// Timers.
    pub timing: Timing,
}

/// What the I/O around the choice must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this frame into the VXLAN device.
    Send(Vec<u8>),
    /// A connection's mode was set (`from` is `None` for a new one) or
    /// changed.
    Changed {
        /// The neighbour.
        peer: PeerName,
        /// The mode before.
        from: Option<Mode>,
        /// The mode now.
        to: Mode,
    },
    /// The connection to a neighbour the kernel carried closed; its entries
    /// stay for a while.
    Held {
        /// The neighbour.
        peer: PeerName,
        /// Where its fast path listens.
        remote: Remote,
    },
    /// A hold ended without the peer coming back.
    Released {
        /// The peer, when known.
        peer: Option<PeerName>,
        /// Where its fast path listened.
        remote: Remote,
    },
}

/// What became of a received frame (for counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A heartbeat, answered.
    Heartbeat,
    /// An answer to one of ours.
    Ack,
    /// Dropped: undecodable, not for us, or from no current connection.
    Ignored,
}

/// A peer (or held address) whose traffic the kernel carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carrier {
    /// The peer, unless only its address is known (adopted at a restart).
    pub name: Option<PeerName>,
    /// Where its fast path listens.
    pub remote: Remote,
    /// The MACs on its bridge and when each was first claimed by it.
    pub macs: Vec<(Mac, Instant)>,
}

/// A connection's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// On the sleeve.
    Down,
    /// Carried by the kernel, confirmed by heartbeats.
    Up,
    /// Carried by the kernel on trust since `since` (it was before the
    /// connection was replaced or the agent restarted).
    Resuming {
        /// When the connection came back.
        since: Instant,
        /// Where it listened before.
        remote: Remote,
    },
}

impl State {
    fn carries(self) -> bool {
        !matches!(self, State::Down)
    }
}

/// Heartbeat bookkeeping of one connection.
#[derive(Debug, Clone)]
struct Health {
    started: Instant,
    next_tx: Instant,
    backoff: Duration,
    /// Full-size heartbeats sent and not yet answered.
    pending: VecDeque<(u32, Instant)>,
    full_in_row: u32,
    last_full_ack: Option<Instant>,
    last_small_ack: Option<Instant>,
    /// The peer's last heartbeat: its direction works, its reason, when.
    peer_says: Option<(bool, Option<Reason>, Instant)>,
}

/// One neighbour.
#[derive(Debug, Clone)]
struct Peer {
    conn_uid: u64,
    ip: IpAddr,
    state: State,
    mode: Option<Mode>,
    /// MACs found in the kernel for its address, until its advert comes.
    adopted: BTreeSet<Mac>,
    h: Health,
}

/// A neighbour's latest advert and when each of its MACs was first seen.
#[derive(Debug, Clone)]
struct Known {
    advert: Advert,
    claims: BTreeMap<Mac, Instant>,
    seen: Instant,
}

/// Entries kept for an address whose connection is gone.
#[derive(Debug, Clone)]
struct Held {
    name: Option<PeerName>,
    until: Instant,
    /// MACs adopted from the kernel (for a nameless hold).
    macs: BTreeSet<Mac>,
}

/// The fast-path state of every neighbour.
#[derive(Debug)]
pub struct Choice {
    s: Settings,
    peers: BTreeMap<PeerName, Peer>,
    known: BTreeMap<PeerName, Known>,
    held: BTreeMap<Remote, Held>,
    seq: u32,
    actions: VecDeque<Action>,
    /// Anything the kernel's entries depend on changed since the last
    /// [`Choice::take_dirty`].
    dirty: bool,
    next_eval: Instant,
}

impl Choice {
    /// No neighbours yet.
    pub fn new(s: Settings, now: Instant) -> Self {
        Self {
            s,
            peers: BTreeMap::new(),
            known: BTreeMap::new(),
            held: BTreeMap::new(),
            seq: 0,
            actions: VecDeque::new(),
            dirty: true,
            next_eval: now,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// Holds what a restarted agent finds in the kernel: every address the
    /// VXLAN device floods to, with the MACs pointing there, kept until its
    /// peer's connection confirms or refutes it (or [`Timing::hold`]).
    pub fn adopt(&mut self, found: BTreeMap<Remote, BTreeSet<Mac>>, now: Instant) {
        for (remote, macs) in found {
            self.held.insert(
                remote,
                Held {
                    name: None,
                    until: now + self.s.timing.hold,
                    macs,
                },
            );
        }
        self.dirty = true;
    }

    /// Follows the mesh's neighbours: new connections start heartbeats (or
    /// resume what was held for them), closed ones are held if the kernel
    /// carried them.
    pub fn sync(&mut self, neighbours: &BTreeMap<PeerName, Neighbour>, now: Instant) {
        let gone: Vec<PeerName> = self
            .peers
            .iter()
            .filter(|(name, p)| neighbours.get(name).map(|n| n.conn_uid) != Some(p.conn_uid))
            .map(|(name, _)| *name)
            .collect();
        for name in gone {
            let Some(p) = self.peers.remove(&name) else {
                continue;
            };
            if p.state.carries() {
                if let Some(remote) = self.remote_of(&name, &p) {
                    self.held.insert(
                        remote,
                        Held {
                            name: Some(name),
                            until: now + self.s.timing.hold,
                            macs: p.adopted.clone(),
                        },
                    );
                    self.actions.push_back(Action::Held { peer: name, remote });
                }
            }
            self.dirty = true;
        }
        for (name, n) in neighbours {
            if self.peers.contains_key(name) {
                continue;
            }
            let ip = n.addr.ip();
            let resumed = self
                .held
                .iter()
                .find(|(r, h)| r.ip == ip && h.name.is_none_or(|h| h == *name))
                .map(|(r, _)| *r);
            let (state, adopted) = match resumed.and_then(|r| self.held.remove(&r).map(|h| (r, h)))
            {
                Some((remote, h)) => (State::Resuming { since: now, remote }, h.macs),
                None => (State::Down, BTreeSet::new()),
            };
            self.peers.insert(
                *name,
                Peer {
                    conn_uid: n.conn_uid,
                    ip,
                    state,
                    mode: None,
                    adopted,
                    h: Health {
                        started: now,
                        next_tx: now,
                        backoff: self.s.timing.interval,
                        pending: VecDeque::new(),
                        full_in_row: 0,
                        last_full_ack: None,
                        last_small_ack: None,
                        peer_says: None,
                    },
                },
            );
            self.dirty = true;
            self.evaluate(*name, now);
        }
    }

    /// A neighbour's advert arrived (it replaces the previous one).
    pub fn on_advert(&mut self, from: PeerName, advert: Advert, now: Instant) {
        let old = self.known.remove(&from);
        let mut claims = BTreeMap::new();
        for m in &advert.macs {
            let since = old
                .as_ref()
                .and_then(|k| k.claims.get(m).copied())
                .unwrap_or(now);
            claims.insert(*m, since);
        }
        let changed = old.as_ref().is_none_or(|k| k.advert != advert);
        self.known.insert(
            from,
            Known {
                advert,
                claims,
                seen: now,
            },
        );
        if let Some(p) = self.peers.get_mut(&from) {
            p.adopted.clear();
        }
        if changed {
            self.dirty = true;
        }
        self.evaluate(from, now);
    }

    /// A frame arrived from the VXLAN device.
    pub fn on_frame(&mut self, bytes: &[u8], now: Instant) -> Received {
        let Ok(f) = Frame::decode(bytes) else {
            return Received::Ignored;
        };
        if f.to != self.s.local {
            return Received::Ignored;
        }
        let ok = self
            .peers
            .get(&f.from)
            .is_some_and(|p| p.conn_uid == f.conn_uid);
        if !ok {
            return Received::Ignored;
        }
        let received = match f.kind {
            Kind::Heartbeat => {
                if self.candidate(&f.from, now).is_err() {
                    // No entry to answer through yet; the peer retries.
                    return Received::Ignored;
                }
                let tx_ok = self.tx_ok(&f.from, now);
                let reason = self.peers.get(&f.from).and_then(|p| p.mode?.reason());
                let Some(p) = self.peers.get_mut(&f.from) else {
                    return Received::Ignored;
                };
                p.h.peer_says = Some((f.tx_ok, f.reason, now));
                let ack = Frame {
                    to: f.from,
                    from: self.s.local,
                    kind: Kind::Ack,
                    tx_ok,
                    reason,
                    conn_uid: f.conn_uid,
                    seq: f.seq,
                    full: f.full,
                    len: f.len,
                };
                self.actions.push_back(Action::Send(ack.encode()));
                Received::Heartbeat
            }
            Kind::Ack => {
                let interval = self.s.timing.interval;
                let Some(p) = self.peers.get_mut(&f.from) else {
                    return Received::Ignored;
                };
                if f.full {
                    // Only answers to heartbeats we sent, each counted once.
                    let Some(pos) = p.h.pending.iter().position(|(s, _)| *s == f.seq) else {
                        return Received::Ignored;
                    };
                    p.h.pending.remove(pos);
                    p.h.full_in_row += 1;
                    p.h.last_full_ack = Some(now);
                } else {
                    p.h.last_small_ack = Some(now);
                }
                if p.h.next_tx > now + interval {
                    // The path answers again: probe at full speed.
                    p.h.next_tx = now;
                    p.h.backoff = interval;
                }
                Received::Ack
            }
        };
        self.evaluate(f.from, now);
        received
    }

    /// Sends the heartbeats due, applies timeouts and ends expired holds.
    pub fn tick(&mut self, now: Instant) {
        let t = self.s.timing;
        let names: Vec<PeerName> = self.peers.keys().copied().collect();
        for name in names {
            let cand = self.candidate(&name, now).is_ok();
            let tx_ok = self.tx_ok(&name, now);
            let reason = self.peers.get(&name).and_then(|p| p.mode?.reason());
            let local = self.s.local;
            let full_len = self.s.full_len;
            let Some(p) = self.peers.get_mut(&name) else {
                continue;
            };
            // A full-size heartbeat unanswered for three intervals is lost.
            while p
                .h
                .pending
                .front()
                .is_some_and(|(_, sent)| now.saturating_duration_since(*sent) >= t.interval * 3)
            {
                p.h.pending.pop_front();
                p.h.full_in_row = 0;
            }
            if cand && now >= p.h.next_tx {
                self.seq = self.seq.wrapping_add(1);
                let seq = self.seq;
                for (full, len) in [(true, full_len), (false, 0)] {
                    let hb = Frame {
                        to: name,
                        from: local,
                        kind: Kind::Heartbeat,
                        tx_ok,
                        reason,
                        conn_uid: p.conn_uid,
                        seq,
                        full,
                        len: if full {
                            len
                        } else {
                            u16::try_from(SMALL_LEN).unwrap_or(60)
                        },
                    };
                    self.actions.push_back(Action::Send(hb.encode()));
                }
                if p.h.pending.len() == PENDING {
                    p.h.pending.pop_front();
                }
                p.h.pending.push_back((seq, now));
                let fresh = |at: Option<Instant>| {
                    at.is_some_and(|at| now.saturating_duration_since(at) < t.fail_after * 2)
                };
                let fast = p.state.carries()
                    || fresh(p.h.last_full_ack)
                    || fresh(p.h.last_small_ack)
                    || now.saturating_duration_since(p.h.started) < t.fail_after * 2;
                let wait = if fast {
                    p.h.backoff = t.interval;
                    t.interval
                } else {
                    p.h.backoff = (p.h.backoff * 2).clamp(Duration::from_secs(1), t.probe_max);
                    p.h.backoff
                };
                p.h.next_tx = now + wait;
            }
            self.evaluate(name, now);
        }
        let expired: Vec<Remote> = self
            .held
            .iter()
            .filter(|(_, h)| now >= h.until)
            .map(|(r, _)| *r)
            .collect();
        for remote in expired {
            if let Some(h) = self.held.remove(&remote) {
                self.actions.push_back(Action::Released {
                    peer: h.name,
                    remote,
                });
                self.dirty = true;
            }
        }
        let peers = &self.peers;
        let held = &self.held;
        self.known.retain(|name, k| {
            peers.contains_key(name)
                || held.values().any(|h| h.name == Some(*name))
                || now.saturating_duration_since(k.seen) < ADVERT_KEEP
        });
        self.next_eval = now + t.interval;
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Choice::tick`] is next needed.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_eval;
        for p in self.peers.values() {
            at = at.min(p.h.next_tx);
        }
        for h in self.held.values() {
            at = at.min(h.until);
        }
        at
    }

    /// Whether the kernel's entries may need changing since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Each neighbour's mode.
    pub fn modes(&self) -> BTreeMap<PeerName, Mode> {
        self.peers
            .iter()
            .filter_map(|(n, p)| Some((*n, p.mode?)))
            .collect()
    }

    /// Peers (and held addresses) whose traffic the kernel carries.
    pub fn carriers(&self) -> Vec<Carrier> {
        let mut out = Vec::new();
        for (name, p) in &self.peers {
            if !p.state.carries() {
                continue;
            }
            let Some(remote) = self.remote_of(name, p) else {
                continue;
            };
            out.push(Carrier {
                name: Some(*name),
                remote,
                macs: self.macs_of(name, &p.adopted),
            });
        }
        for (remote, h) in &self.held {
            let macs = match h.name {
                Some(name) => self.macs_of(&name, &h.macs),
                None => h.macs.iter().map(|m| (*m, self.next_eval)).collect(),
            };
            out.push(Carrier {
                name: h.name,
                remote: *remote,
                macs,
            });
        }
        out
    }

    /// Neighbours heartbeats go to, and where.
    pub fn candidates(&self, now: Instant) -> Vec<(PeerName, Remote)> {
        self.peers
            .keys()
            .filter_map(|n| Some((*n, self.candidate(n, now).ok()?)))
            .collect()
    }

    /// Names of the peers the kernel carries (the sleeve sends them no
    /// copies of flooded frames).
    pub fn kernel_peers(&self) -> BTreeSet<PeerName> {
        self.peers
            .iter()
            .filter(|(_, p)| p.state.carries())
            .map(|(n, _)| *n)
            .chain(self.held.values().filter_map(|h| h.name))
            .collect()
    }

    /// Addresses held without a connection, with the peer when known.
    pub fn held(&self) -> Vec<(Option<PeerName>, Remote)> {
        self.held.iter().map(|(r, h)| (h.name, *r)).collect()
    }

    /// Where a carried peer's fast path listens: from its advert, or where
    /// it listened before it resumed.
    fn remote_of(&self, name: &PeerName, p: &Peer) -> Option<Remote> {
        match self.known.get(name) {
            Some(k) if k.advert.available.is_ok() => Some(Remote {
                ip: p.ip,
                port: k.advert.port,
            }),
            _ => match p.state {
                State::Resuming { remote, .. } => Some(remote),
                _ => None,
            },
        }
    }

    /// A peer's MACs with their claim times, or `adopted` (from the kernel)
    /// until its advert says.
    fn macs_of(&self, name: &PeerName, adopted: &BTreeSet<Mac>) -> Vec<(Mac, Instant)> {
        match self.known.get(name) {
            Some(k) => k.claims.iter().map(|(m, t)| (*m, *t)).collect(),
            None => adopted.iter().map(|m| (*m, self.next_eval)).collect(),
        }
    }

    /// Whether heartbeats go to `name`, and where; else why the sleeve
    /// carries it.
    fn candidate(&self, name: &PeerName, now: Instant) -> Result<Remote, Reason> {
        self.s.available?;
        let p = self.peers.get(name).ok_or(Reason::PeerWithout)?;
        let Some(k) = self.known.get(name) else {
            // The advert follows the connection closely; until then, and for
            // a few seconds, say so rather than blame the peer.
            let young = now.saturating_duration_since(p.h.started) < self.s.timing.resume_grace;
            return Err(if young {
                Reason::Probing
            } else {
                Reason::PeerWithout
            });
        };
        if k.advert.available.is_err() {
            return Err(Reason::PeerWithout);
        }
        let usable = |e: &Encap| *e == Encap::Vxlan && (!self.s.encrypted || e.encrypts());
        if k.advert.vni != VNI || !k.advert.encaps.iter().any(usable) {
            return Err(if self.s.encrypted {
                Reason::Encryption
            } else {
                Reason::Incompatible
            });
        }
        if p.ip.is_ipv6() {
            return Err(Reason::Ipv6Underlay);
        }
        Ok(Remote {
            ip: p.ip,
            port: k.advert.port,
        })
    }

    /// Our full-size heartbeats to `name` are answered (what our
    /// heartbeats tell it).
    fn tx_ok(&self, name: &PeerName, now: Instant) -> bool {
        let Some(p) = self.peers.get(name) else {
            return false;
        };
        let fresh =
            p.h.last_full_ack
                .is_some_and(|t| now.saturating_duration_since(t) < self.s.timing.fail_after);
        p.h.full_in_row >= self.s.timing.confirm || (p.state == State::Up && fresh)
    }

    /// Moves `name`'s state on and records a change of mode.
    fn evaluate(&mut self, name: PeerName, now: Instant) {
        let t = self.s.timing;
        let candidate = self.candidate(&name, now);
        let tx_ok = self.tx_ok(&name, now);
        let trusting = self.s.available.is_ok() && !self.known.contains_key(&name);
        let Some(p) = self.peers.get_mut(&name) else {
            return;
        };
        let fresh = |at: Option<Instant>| {
            at.is_some_and(|at| now.saturating_duration_since(at) < t.fail_after)
        };
        let rx_ok =
            p.h.peer_says
                .is_some_and(|(ok, _, at)| ok && fresh(Some(at)));
        let before = p.state;
        p.state = match (candidate, p.state) {
            (Err(_), State::Resuming { since, .. })
                if now.saturating_duration_since(since) < t.resume_grace && trusting =>
            {
                // Trusted until the peer's advert says otherwise.
                p.state
            }
            (Err(_), _) => State::Down,
            (Ok(_), State::Down) if tx_ok && rx_ok => State::Up,
            (Ok(_), State::Up) if !(fresh(p.h.last_full_ack) && rx_ok) => State::Down,
            (Ok(_), State::Resuming { .. }) if tx_ok && rx_ok => State::Up,
            (Ok(_), State::Resuming { since, .. })
                if now.saturating_duration_since(since) >= t.resume_grace =>
            {
                State::Down
            }
            (_, s) => s,
        };
        if before.carries() != p.state.carries() {
            self.dirty = true;
        }
        let mode = if p.state.carries() {
            Mode::Fastdp
        } else {
            Mode::Sleeve(match candidate {
                Err(r) => r,
                Ok(_) => down_reason(&p.h, tx_ok, fresh, now, t),
            })
        };
        if p.mode != Some(mode) {
            self.actions.push_back(Action::Changed {
                peer: name,
                from: p.mode,
                to: mode,
            });
            p.mode = Some(mode);
        }
    }
}

/// Why a candidate is on the sleeve, from its heartbeats.
fn down_reason(
    h: &Health,
    tx_ok: bool,
    fresh: impl Fn(Option<Instant>) -> bool,
    now: Instant,
    t: Timing,
) -> Reason {
    let young = now.saturating_duration_since(h.started) < t.fail_after * 2;
    if !tx_ok {
        if fresh(h.last_small_ack) && !fresh(h.last_full_ack) {
            return Reason::Mtu;
        }
        if young && h.last_full_ack.is_none() {
            return Reason::Probing;
        }
        return Reason::HeartbeatTimeout;
    }
    match h.peer_says {
        Some((false, reason, at)) if fresh(Some(at)) => match reason {
            Some(Reason::Mtu) => Reason::Mtu,
            Some(Reason::HeartbeatTimeout) => Reason::HeartbeatTimeout,
            _ if young => Reason::Probing,
            _ => Reason::PeerHeartbeats,
        },
        _ if young => Reason::Probing,
        _ => Reason::HeartbeatTimeout,
    }
}
