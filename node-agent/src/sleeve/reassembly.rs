// SPDX-License-Identifier: Apache-2.0
//! Putting large frames back together from their fragments (kind 5).
//!
//! A sender cuts one frame at a time and sends its pieces back to back, so
//! a receiver needs only a few frames in progress: a small pool of slots,
//! keyed by (last hop, frame id), the oldest given up when a new frame
//! needs room. Pieces may arrive in any order and twice; a frame is handed
//! on once every piece is in, exactly once. Memory is bounded by the pool:
//! [`SLOTS`] buffers of at most `frame::MAX_LARGE` bytes, allocated when
//! first needed.

use crate::mesh::PeerName;
use crate::sleeve::frame::{Fragment, MAX_FRAGMENTS};

/// Frames in progress at once, over all peers.
pub const SLOTS: usize = 8;

/// One frame being put together.
#[derive(Debug)]
struct Slot {
    hop: PeerName,
    origin: PeerName,
    dst: PeerName,
    id: u32,
    total: usize,
    chunk: u16,
    /// Which pieces are in.
    have: [u64; MAX_FRAGMENTS / 64],
    missing: usize,
    /// Sequence number of the last piece taken, for eviction.
    touched: u64,
    buf: Vec<u8>,
    /// A frame is being put together in this slot.
    live: bool,
    /// The slot's last frame was completed (late copies of its pieces are
    /// duplicates, not the start of a new frame).
    done: bool,
}

/// A frame put back together.
#[derive(Debug, PartialEq, Eq)]
pub struct Whole<'a> {
    /// The peer that captured it.
    pub origin: PeerName,
    /// Where it is going.
    pub dst: PeerName,
    /// The frame.
    pub data: &'a [u8],
}

/// What became of a piece.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Kept; the frame is not complete yet.
    Kept,
    /// Already had it (or it contradicts the frame's other pieces): ignored.
    Duplicate,
    /// The last missing piece: here is the frame.
    Complete(Whole<'a>),
}

/// The reassembly pool.
#[derive(Debug, Default)]
pub struct Reassembly {
    slots: Vec<Slot>,
    clock: u64,
    evicted: u64,
}

impl Reassembly {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames given up unfinished so far (to make room for newer ones).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Takes one piece (already checked by `frame::decode`) sent by `hop`.
    pub fn take(&mut self, hop: PeerName, f: &Fragment<'_>) -> Outcome<'_> {
        self.clock += 1;
        let clock = self.clock;
        let total = f.total as usize;
        let i = match self
            .slots
            .iter()
            .position(|s| (s.live || s.done) && s.hop == hop && s.id == f.id)
        {
            Some(i) if !self.slots[i].live => return Outcome::Duplicate,
            Some(i) => {
                let s = &self.slots[i];
                if s.total != total || s.chunk != f.chunk || s.origin != f.origin || s.dst != f.dst
                {
                    // Same id, different frame: a confused or hostile
                    // sender; keep what we have.
                    return Outcome::Duplicate;
                }
                i
            }
            None => {
                let i = self.free_slot();
                let s = &mut self.slots[i];
                s.hop = hop;
                s.origin = f.origin;
                s.dst = f.dst;
                s.id = f.id;
                s.total = total;
                s.chunk = f.chunk;
                s.have = [0; MAX_FRAGMENTS / 64];
                s.missing = f.count();
                s.buf.resize(total, 0);
                s.live = true;
                s.done = false;
                i
            }
        };
        let s = &mut self.slots[i];
        s.touched = clock;
        let (word, bit) = (usize::from(f.index) / 64, usize::from(f.index) % 64);
        if s.have[word] & (1 << bit) != 0 {
            return Outcome::Duplicate;
        }
        s.have[word] |= 1 << bit;
        let at = f.offset();
        s.buf[at..at + f.piece.len()].copy_from_slice(f.piece);
        s.missing -= 1;
        if s.missing > 0 {
            return Outcome::Kept;
        }
        s.live = false;
        s.done = true;
        Outcome::Complete(Whole {
            origin: s.origin,
            dst: s.dst,
            data: &s.buf[..s.total],
        })
    }

    /// A slot to use: a free one, a new one while the pool is not full, or
    /// the least recently touched one (whose frame is given up).
    fn free_slot(&mut self) -> usize {
        if let Some(i) = self.slots.iter().position(|s| !s.live) {
            return i;
        }
        if self.slots.len() < SLOTS {
            self.slots.push(Slot {
                hop: PeerName::from_bytes([0; 6]),
                origin: PeerName::from_bytes([0; 6]),
                dst: PeerName::from_bytes([0; 6]),
                id: 0,
                total: 0,
                chunk: 1,
                have: [0; MAX_FRAGMENTS / 64],
                missing: 0,
                touched: 0,
                buf: Vec::new(),
                live: false,
                done: false,
            });
            return self.slots.len() - 1;
        }
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.touched)
            .map_or(0, |(i, _)| i);
        self.evicted += 1;
        self.slots[oldest].live = false;
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sleeve::frame::pieces;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    fn n(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| i.to_le_bytes()[0].wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn pieces_in_any_order_and_twice_give_the_frame_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut r = Reassembly::new();
        for round in 0..20u32 {
            let data = frame(3000 + round as usize * 2000, round.to_le_bytes()[0]);
            let mut all: Vec<_> = pieces(&data, n(3), n(2), round, 1400).collect();
            let dup = all[0];
            all.push(dup);
            all.shuffle(&mut rng);
            let mut completed = 0;
            let last = all.len() - 1;
            for (k, p) in all.iter().enumerate() {
                match r.take(n(1), p) {
                    Outcome::Complete(w) => {
                        completed += 1;
                        assert_eq!(
                            w,
                            Whole {
                                origin: n(3),
                                dst: n(2),
                                data: &data
                            }
                        );
                    }
                    Outcome::Kept => assert!(
                        k < last && completed == 0,
                        "round {round} k {k} last {last} completed {completed}"
                    ),
                    Outcome::Duplicate => {}
                }
            }
            assert_eq!(completed, 1, "round {round}");
        }
        assert_eq!(r.evicted(), 0);
    }

    #[test]
    fn interleaved_senders_and_the_oldest_frame_gives_way() {
        let mut r = Reassembly::new();
        let a = frame(5000, 1);
        let b = frame(5000, 2);
        let pa: Vec<_> = pieces(&a, n(3), n(2), 9, 1400).collect();
        let pb: Vec<_> = pieces(&b, n(4), n(2), 9, 1400).collect();
        // the same id from two hops are two frames
        for (x, y) in pa.iter().zip(&pb).take(3) {
            assert_eq!(r.take(n(1), x), Outcome::Kept);
            assert_eq!(r.take(n(5), y), Outcome::Kept);
        }
        assert!(matches!(r.take(n(1), &pa[3]), Outcome::Complete(w) if w.data == &a[..]));
        // fill the pool with unfinished frames: the frame from hop 5 is the
        // oldest and is given up
        for id in 0..u32::try_from(SLOTS).unwrap() {
            let p = pieces(&a, n(3), n(2), 100 + id, 1400).next().unwrap();
            assert_eq!(r.take(n(6), &p), Outcome::Kept);
        }
        assert_eq!(r.evicted(), 1);
        // its last piece now starts a new, incomplete frame
        assert_eq!(r.take(n(5), &pb[3]), Outcome::Kept);
    }

    #[test]
    fn a_piece_contradicting_its_frame_is_ignored() {
        let mut r = Reassembly::new();
        let a = frame(5000, 1);
        let p: Vec<_> = pieces(&a, n(3), n(2), 9, 1400).collect();
        assert_eq!(r.take(n(1), &p[0]), Outcome::Kept);
        let other = frame(7000, 1);
        let q = pieces(&other, n(3), n(2), 9, 1400).nth(1).unwrap();
        assert_eq!(r.take(n(1), &q), Outcome::Duplicate);
        for piece in &p[1..3] {
            assert_eq!(r.take(n(1), piece), Outcome::Kept);
        }
        assert!(matches!(r.take(n(1), &p[3]), Outcome::Complete(w) if w.data == &a[..]));
    }
}
