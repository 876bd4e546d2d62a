// SPDX-License-Identifier: Apache-2.0
//! The connection maker: which addresses to dial and when.
//!
//! Targets are either *direct* (command line, `weave connect`) or
//! *discovered* (addresses other peers announce for peers we are not
//! connected to). A failed attempt is retried after a back-off that starts at
//! `initial`, grows ×1.5 per failure up to `max`, and is jittered uniformly in
//! `[i/2, 3i/2)` so that a partition healing does not make every peer dial at
//! the same instant. A target that turns out to be ourselves, or a peer
//! using our name, is never dialled again.
//!
//! A discovered target that stops being announced (for instance because its
//! peer fell out of the topology when a partition cut it off) lingers for
//! [`LINGER`] before it is dropped: that lets a partition heal by itself even
//! when no operator-given target spans it, which Weave Net required.
//!
//! Pure: the caller passes `now` and an RNG and carries out the dials.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// How long a discovered target is kept, and retried, after the last time
/// gossip announced it.
pub const LINGER: Duration = Duration::from_secs(15 * 60);

/// Where a target came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Given by the operator; kept until forgotten.
    Direct,
    /// Learned from gossip; dropped when no longer useful.
    Discovered,
}

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Next attempt at the given time.
    Waiting(Instant),
    /// A dial or handshake is under way.
    Attempting,
    /// A live connection covers this address.
    Connected,
}

/// One address the maker keeps connecting to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where it came from.
    pub kind: TargetKind,
    /// Where it stands.
    pub state: TargetState,
    /// Current back-off interval.
    interval: Duration,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// For discovered targets: when it is dropped unless announced again.
    linger_until: Instant,
}

/// Targets and their back-off.
#[derive(Debug)]
pub struct ConnectionMaker {
    initial: Duration,
    max: Duration,
    targets: BTreeMap<SocketAddr, Target>,
    never: BTreeSet<SocketAddr>,
}

impl ConnectionMaker {
    /// A maker with the given back-off bounds.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            targets: BTreeMap::new(),
            never: BTreeSet::new(),
        }
    }

    /// All targets.
    pub fn targets(&self) -> &BTreeMap<SocketAddr, Target> {
        &self.targets
    }

    /// Direct targets, in address order.
    pub fn direct(&self) -> Vec<SocketAddr> {
        self.targets
            .iter()
            .filter(|(_, t)| t.kind == TargetKind::Direct)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Adds direct targets (or, with `replace`, makes them the whole direct
    /// set); an existing target waiting in back-off is tried at once.
    pub fn add_direct(&mut self, addrs: &[SocketAddr], replace: bool, now: Instant) {
        if replace {
            let keep: BTreeSet<_> = addrs.iter().collect();
            for (addr, t) in &mut self.targets {
                if t.kind == TargetKind::Direct && !keep.contains(addr) {
                    t.kind = TargetKind::Discovered;
                }
            }
        }
        for &addr in addrs {
            // An operator asking again means "try again now", even for an
            // address that once answered as ourselves.
            self.never.remove(&addr);
            let t = self.targets.entry(addr).or_insert(Target {
                kind: TargetKind::Direct,
                state: TargetState::Waiting(now),
                interval: self.initial,
                last_error: None,
                linger_until: now,
            });
            t.kind = TargetKind::Direct;
            if let TargetState::Waiting(_) = t.state {
                t.state = TargetState::Waiting(now);
                t.interval = self.initial;
            }
        }
    }

    /// Removes direct targets; live connections stay up, they are just not
    /// re-dialled once they end.
    pub fn forget(&mut self, addrs: &[SocketAddr]) {
        for addr in addrs {
            if self
                .targets
                .get(addr)
                .is_some_and(|t| t.kind == TargetKind::Direct)
            {
                self.targets.remove(addr);
            }
        }
    }

    /// Adds the addresses gossip announces now as discovered targets; those
    /// no longer announced are dropped once they have lingered for
    /// [`LINGER`], unless an attempt on them is under way.
    pub fn set_discovered(&mut self, wanted: &BTreeSet<SocketAddr>, now: Instant) {
        self.targets.retain(|addr, t| {
            t.kind == TargetKind::Direct
                || wanted.contains(addr)
                || t.state == TargetState::Attempting
                || t.linger_until > now
        });
        for addr in wanted {
            if self.never.contains(addr) {
                continue;
            }
            let t = self.targets.entry(*addr).or_insert(Target {
                kind: TargetKind::Discovered,
                state: TargetState::Waiting(now),
                interval: self.initial,
                last_error: None,
                linger_until: now,
            });
            t.linger_until = now + LINGER;
        }
    }

    /// Marks covered targets connected; a connected target that lost its
    /// connection is retried soon, with its back-off reset.
    pub fn sync_connected(
        &mut self,
        covered: &BTreeSet<SocketAddr>,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let initial = self.initial;
        for (addr, t) in &mut self.targets {
            if covered.contains(addr) {
                t.state = TargetState::Connected;
                t.interval = initial;
                t.last_error = None;
            } else if t.state == TargetState::Connected {
                t.state = TargetState::Waiting(now + jitter(initial, rng) / 2);
            }
        }
    }

    /// Targets due now, at most `budget`, marked as attempting.
    pub fn due(&mut self, now: Instant, budget: usize) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for (addr, t) in &mut self.targets {
            if out.len() >= budget {
                break;
            }
            if matches!(t.state, TargetState::Waiting(at) if at <= now) {
                t.state = TargetState::Attempting;
                out.push(*addr);
            }
        }
        out
    }

    /// An attempt failed: back off.
    pub fn attempt_failed(
        &mut self,
        addr: SocketAddr,
        error: String,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let max = self.max;
        if let Some(t) = self.targets.get_mut(&addr) {
            let wait = jitter(t.interval, rng);
            t.state = TargetState::Waiting(now + wait);
            t.interval = t.interval.mul_f64(1.5).min(max);
            t.last_error = Some(error);
        }
    }

    /// The address must never be dialled again (it is ourselves, or a peer
    /// with our name); an explicit `connect` lifts this.
    pub fn never_retry(&mut self, addr: SocketAddr) {
        self.targets.remove(&addr);
        self.never.insert(addr);
    }

    /// When the next waiting target is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|t| match t.state {
                TargetState::Waiting(at) => Some(at),
                _ => None,
            })
            .min()
    }
}

/// Uniform in `[i/2, 3i/2)`.
fn jitter(i: Duration, rng: &mut impl Rng) -> Duration {
    i.mul_f64(rng.gen_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 6783))
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut m = ConnectionMaker::new(Duration::from_secs(1), Duration::from_secs(4));
        let t0 = Instant::now();
        m.add_direct(&[addr(1)], false, t0);
        assert_eq!(m.due(t0, 10), vec![addr(1)]);
        assert!(m.due(t0, 10).is_empty(), "attempting targets are not due");
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            m.attempt_failed(addr(1), "refused".into(), now, &mut rng);
            let at = m.next_deadline().unwrap();
            waits.push(at - now);
            assert!(m.due(at - Duration::from_millis(1), 10).is_empty());
            assert_eq!(m.due(at, 10), vec![addr(1)]);
            now = at;
        }
        assert!(waits[0] >= Duration::from_millis(500) && waits[0] < Duration::from_millis(1500));
        assert!(
            waits.iter().all(|w| *w < Duration::from_secs(6)),
            "{waits:?}"
        );
        assert!(waits[7] >= Duration::from_secs(2), "{waits:?}");
    }

    #[test]
    fn connect_cuts_backoff_and_forget_removes() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut m = ConnectionMaker::new(Duration::from_secs(10), Duration::from_secs(60));
        let t0 = Instant::now();
        m.add_direct(&[addr(1)], false, t0);
        m.due(t0, 1);
        m.attempt_failed(addr(1), "x".into(), t0, &mut rng);
        assert!(m.due(t0, 1).is_empty());
        m.add_direct(&[addr(1)], false, t0);
        assert_eq!(m.due(t0, 1), vec![addr(1)]);
        m.forget(&[addr(1)]);
        assert!(m.targets().is_empty());
    }

    #[test]
    fn discovered_targets_follow_gossip_and_budget_applies() {
        let mut m = ConnectionMaker::new(Duration::from_secs(1), Duration::from_secs(60));
        let t0 = Instant::now();
        m.add_direct(&[addr(1)], false, t0);
        m.set_discovered(&BTreeSet::from([addr(2), addr(3)]), t0);
        assert_eq!(m.due(t0, 2).len(), 2);
        m.set_discovered(&BTreeSet::new(), t0);
        // no longer announced, but they linger so that partitions heal
        assert_eq!(m.targets().len(), 3);
        m.set_discovered(&BTreeSet::new(), t0 + LINGER + Duration::from_secs(1));
        // attempting ones stay until their attempt ends; direct ones stay
        assert_eq!(m.targets().len(), 2);
        m.attempt_failed(addr(2), "x".into(), t0, &mut StdRng::seed_from_u64(1));
        m.set_discovered(&BTreeSet::new(), t0 + LINGER + Duration::from_secs(1));
        assert_eq!(m.targets().len(), 1);
        m.never_retry(addr(3));
        m.set_discovered(&BTreeSet::from([addr(3)]), t0);
        assert!(!m.targets().contains_key(&addr(3)));
    }

    #[test]
    fn replace_demotes_old_direct_targets() {
        let mut m = ConnectionMaker::new(Duration::from_secs(1), Duration::from_secs(60));
        let t0 = Instant::now();
        m.add_direct(&[addr(1), addr(2)], false, t0);
        m.add_direct(&[addr(3)], true, t0);
        assert_eq!(m.direct(), vec![addr(3)]);
    }
}
