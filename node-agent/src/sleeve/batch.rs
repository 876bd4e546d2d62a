// SPDX-License-Identifier: Apache-2.0
//! Batching and fragmenting, without I/O: which datagrams leave for which
//! neighbour.
//!
//! [`Batcher`] packs frames for the same next hop into one frames datagram
//! (`PROTOCOL.md` §8) up to the underlay's largest payload and hands back a
//! datagram as soon as the next frame for its hop would not fit, so frames
//! to one neighbour leave in the order they were pushed. [`Batcher::fragment`] cuts a
//! frame too large for one datagram (a TCP super-frame with its offload
//! header) into fragment datagrams (§8.1a) and lays them end to end in
//! [`Runs`] of equal-size datagrams, each run one `sendmsg` with UDP
//! segmentation offload.
//!
//! Invariants: no datagram exceeds the size the batcher was made for; a
//! datagram is handed out once; buffers are reused, so the steady state
//! allocates nothing. The packet threads in `router::sleeve` send what these
//! return.

use super::frame;
use super::switch::Hop;
use crate::mesh::PeerName;

/// At most this many datagrams in one run (the kernel takes 64 or more
/// segments per `sendmsg` with `UDP_SEGMENT`).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// At most this many bytes in one run (one IP packet's worth before the
/// kernel cuts it).
pub const GSO_MAX_BYTES: usize = 65_000;

/// A frame that cannot be sent: too large even in fragments, or too large
/// for one datagram where fragments are not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized;

/// A frames datagram ready to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Ready {
    /// The neighbour it goes to.
    pub next: PeerName,
    /// The plain datagram.
    pub bytes: Vec<u8>,
    /// How many frames it carries.
    pub frames: u64,
}

/// A datagram being filled for one neighbour.
#[derive(Debug)]
struct Pending {
    next: PeerName,
    bytes: Vec<u8>,
    frames: u64,
}

/// Frames datagrams being filled, one per next hop.
#[derive(Debug)]
pub struct Batcher {
    local: PeerName,
    max: usize,
    /// Non-empty datagrams only; a handful of neighbours at most per burst,
    /// so a vector beats a map.
    pending: Vec<Pending>,
    /// Buffers of sent datagrams, for reuse.
    spare: Vec<Vec<u8>>,
}

impl Batcher {
    /// A batcher of datagrams from `local` of at most `max` bytes (see
    /// `sleeve::mtu::underlay_payload`).
    pub fn new(local: PeerName, max: usize) -> Self {
        Self {
            local,
            max,
            pending: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// The largest datagram this batcher makes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Adds `data`, a frame from `origin`, to the datagram for `hop.next`.
    /// If the frame does not fit in what is pending for that neighbour, the
    /// pending datagram is returned (send it now) and the frame starts the
    /// next one.
    pub fn push(
        &mut self,
        hop: Hop,
        origin: PeerName,
        data: &[u8],
    ) -> Result<Option<Ready>, Oversized> {
        let need = frame::FRAME_HEADER_LEN + data.len();
        if frame::HEADER_LEN + need > self.max {
            return Err(Oversized);
        }
        let i = match self.pending.iter().position(|p| p.next == hop.next) {
            Some(i) => i,
            None => {
                let bytes = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(self.max));
                self.pending.push(Pending {
                    next: hop.next,
                    bytes,
                    frames: 0,
                });
                self.pending.len() - 1
            }
        };
        let full = self.pending[i].frames > 0 && self.pending[i].bytes.len() + need > self.max;
        let ready = if full {
            let fresh = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.max));
            let p = &mut self.pending[i];
            let ready = Ready {
                next: p.next,
                bytes: std::mem::replace(&mut p.bytes, fresh),
                frames: std::mem::take(&mut p.frames),
            };
            Some(ready)
        } else {
            None
        };
        let p = &mut self.pending[i];
        if p.frames == 0 {
            frame::begin_frames(&mut p.bytes, self.local);
        }
        frame::push_frame(&mut p.bytes, origin, hop.dst, data);
        p.frames += 1;
        Ok(ready)
    }

    /// The datagram pending for `next`, if any (it goes before a large
    /// frame to the same neighbour).
    pub fn take(&mut self, next: PeerName) -> Option<Ready> {
        let i = self.pending.iter().position(|p| p.next == next)?;
        Some(self.remove(i))
    }

    /// Some pending datagram, until none is left (the end of a burst).
    pub fn take_any(&mut self) -> Option<Ready> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.remove(self.pending.len() - 1))
        }
    }

    /// Gives the buffer of a sent datagram back for reuse.
    pub fn recycle(&mut self, ready: Ready) {
        let mut bytes = ready.bytes;
        bytes.clear();
        self.spare.push(bytes);
    }

    /// Cuts `payload` (offload header and Ethernet frame, from `origin`)
    /// into fragment datagrams for `hop`, numbered `id`, each no larger
    /// than this batcher's datagrams before `wire` turns it into what goes
    /// on the wire (appending it to the vector it is given: the datagram
    /// itself, or its sealed copy; false without a session). The result
    /// replaces what `out` held; on an error `out` is empty.
    pub fn fragment(
        &self,
        hop: Hop,
        origin: PeerName,
        payload: &[u8],
        id: u32,
        mut wire: impl FnMut(&[u8], &mut Vec<u8>) -> bool,
        out: &mut Runs,
    ) -> Result<(), FragmentError> {
        out.clear();
        let chunk = frame::chunk_for(payload.len(), self.max).ok_or(FragmentError::Oversized)?;
        for piece in frame::pieces(payload, origin, hop.dst, id, chunk) {
            frame::push_fragment(&mut out.plain, self.local, &piece);
            let at = out.bytes.len();
            if !wire(&out.plain, &mut out.bytes) {
                out.clear();
                return Err(FragmentError::NoSession);
            }
            out.close(at);
        }
        Ok(())
    }

    fn remove(&mut self, i: usize) -> Ready {
        let p = self.pending.swap_remove(i);
        Ready {
            next: p.next,
            bytes: p.bytes,
            frames: p.frames,
        }
    }
}

/// One run: equal-size datagrams (the last may be shorter) laid end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: usize,
    end: usize,
    segment: usize,
    count: usize,
}

/// The datagrams of one large frame, grouped into runs to send with one
/// system call each.
#[derive(Debug, Default)]
pub struct Runs {
    bytes: Vec<u8>,
    runs: Vec<Run>,
    /// One plain fragment datagram before its wire form is appended.
    plain: Vec<u8>,
}

impl Runs {
    /// Each run: its bytes, the size of every datagram in it but the last,
    /// and how many datagrams it holds.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], usize, usize)> + '_ {
        self.runs
            .iter()
            .map(|r| (&self.bytes[r.start..r.end], r.segment, r.count))
    }

    /// How many datagrams in all runs.
    pub fn datagrams(&self) -> usize {
        self.runs.iter().map(|r| r.count).sum()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.runs.clear();
    }

    /// Counts the datagram that was just appended at `at` into the current
    /// run, or starts a new run with it when the current one is full. Runs
    /// are adjacent, so the bytes stay where they are either way.
    fn close(&mut self, at: usize) {
        let len = self.bytes.len() - at;
        let fits = self
            .runs
            .last()
            .is_some_and(|r| r.count < GSO_MAX_SEGMENTS && r.end - r.start + len <= GSO_MAX_BYTES);
        if !fits {
            self.runs.push(Run {
                start: at,
                end: at,
                segment: len,
                count: 0,
            });
        }
        if let Some(r) = self.runs.last_mut() {
            r.end = self.bytes.len();
            r.count += 1;
        }
    }
}

/// Why a large frame was not cut into fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentError {
    /// Too large even in [`frame::MAX_FRAGMENTS`] pieces.
    Oversized,
    /// `wire` had no session with the neighbour.
    NoSession,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sleeve::frame::{decode, Datagram, FRAGMENT_HEADER_LEN, HEADER_LEN};

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn hop(next: u64, dst: u64) -> Hop {
        Hop {
            next: name(next),
            dst: name(dst),
        }
    }

    fn eth(len: usize, tag: u8) -> Vec<u8> {
        vec![tag; len]
    }

    /// The frames of a datagram as (origin, dst, data).
    fn frames_of(bytes: &[u8]) -> Vec<(PeerName, PeerName, Vec<u8>)> {
        match decode(bytes).expect("valid datagram") {
            Datagram::Frames { hop, frames } => {
                assert_eq!(hop, name(1), "sent by the local peer");
                frames
                    .map(|f| {
                        let f = f.expect("valid frame");
                        (f.origin, f.dst, f.data.to_vec())
                    })
                    .collect()
            }
            other => panic!("not a frames datagram: {other:?}"),
        }
    }

    #[test]
    fn frames_for_one_hop_share_a_datagram_until_it_is_full() {
        // Room for two 100-byte frames and a bit, not three.
        let max = HEADER_LEN + 2 * (frame::FRAME_HEADER_LEN + 100) + 50;
        let mut b = Batcher::new(name(1), max);
        assert_eq!(b.push(hop(2, 2), name(1), &eth(100, 1)), Ok(None));
        assert_eq!(b.push(hop(2, 3), name(1), &eth(100, 2)), Ok(None));
        let full = b
            .push(hop(2, 2), name(1), &eth(100, 3))
            .expect("fits a datagram")
            .expect("the first two go out");
        assert_eq!(full.next, name(2));
        assert_eq!(full.frames, 2);
        assert!(full.bytes.len() <= max);
        assert_eq!(
            frames_of(&full.bytes),
            vec![
                (name(1), name(2), eth(100, 1)),
                (name(1), name(3), eth(100, 2))
            ]
        );
        b.recycle(full);
        let rest = b.take_any().expect("the third is pending");
        assert_eq!(
            frames_of(&rest.bytes),
            vec![(name(1), name(2), eth(100, 3))]
        );
        assert_eq!(b.take_any(), None);
    }

    #[test]
    fn hops_are_batched_apart_and_taken_one_by_one() {
        let mut b = Batcher::new(name(1), 1500);
        b.push(hop(2, 2), name(1), &eth(60, 1)).expect("fits");
        b.push(hop(3, 9), name(7), &eth(60, 2)).expect("fits");
        b.push(hop(2, 2), name(1), &eth(60, 3)).expect("fits");
        let to3 = b.take(name(3)).expect("pending for 3");
        assert_eq!(frames_of(&to3.bytes), vec![(name(7), name(9), eth(60, 2))]);
        assert_eq!(b.take(name(3)), None, "handed out once");
        let to2 = b.take_any().expect("pending for 2");
        assert_eq!(to2.frames, 2);
        assert_eq!(b.take_any(), None);
    }

    #[test]
    fn a_frame_larger_than_a_datagram_is_refused() {
        let mut b = Batcher::new(name(1), 1500);
        let too_big = 1500 - HEADER_LEN - frame::FRAME_HEADER_LEN + 1;
        assert_eq!(b.push(hop(2, 2), name(1), &eth(too_big, 0)), Err(Oversized));
        assert_eq!(b.push(hop(2, 2), name(1), &eth(too_big - 1, 0)), Ok(None));
        assert_eq!(b.take_any().map(|r| r.bytes.len()), Some(1500));
    }

    #[test]
    fn buffers_are_reused() {
        let mut b = Batcher::new(name(1), 1500);
        b.push(hop(2, 2), name(1), &eth(60, 1)).expect("fits");
        let r = b.take_any().expect("pending");
        let ptr = r.bytes.as_ptr();
        b.recycle(r);
        b.push(hop(3, 3), name(1), &eth(60, 1)).expect("fits");
        assert_eq!(b.take_any().expect("pending").bytes.as_ptr(), ptr);
    }

    fn plain(d: &[u8], out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(d);
        true
    }

    #[test]
    fn a_super_frame_is_cut_into_runs_that_put_it_back_together() {
        let payload: Vec<u8> = (0..64 * 1024)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let mut runs = Runs::default();
        let max = 1464;
        Batcher::new(name(1), max)
            .fragment(hop(2, 3), name(4), &payload, 77, plain, &mut runs)
            .expect("fits in fragments");
        let mut whole = vec![0u8; payload.len()];
        let mut seen = 0;
        for (bytes, segment, count) in runs.iter() {
            assert!(count <= GSO_MAX_SEGMENTS && bytes.len() <= GSO_MAX_BYTES);
            let datagrams: Vec<&[u8]> = bytes.chunks(segment).collect();
            assert_eq!(
                datagrams.len(),
                count,
                "equal segments, the last may be shorter"
            );
            for d in datagrams {
                assert!(d.len() <= max);
                let Ok(Datagram::Fragment {
                    hop: from,
                    fragment,
                }) = decode(d)
                else {
                    panic!("not a fragment");
                };
                assert_eq!(
                    (from, fragment.origin, fragment.dst),
                    (name(1), name(4), name(3))
                );
                assert_eq!(fragment.id, 77);
                whole[fragment.offset()..fragment.offset() + fragment.piece.len()]
                    .copy_from_slice(fragment.piece);
                seen += 1;
            }
        }
        assert_eq!(whole, payload);
        assert_eq!(seen, runs.datagrams());
        assert_eq!(seen, payload.len().div_ceil(max - FRAGMENT_HEADER_LEN));
        assert!(runs.iter().count() >= 2, "64 KB does not fit one run");
    }

    #[test]
    fn sealed_datagrams_are_grouped_by_their_wire_size() {
        let payload = vec![5u8; 20_000];
        let mut runs = Runs::default();
        let seal = |d: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(d);
            out.extend_from_slice(&[0; 36]);
            true
        };
        Batcher::new(name(1), 1400)
            .fragment(hop(2, 2), name(1), &payload, 1, seal, &mut runs)
            .expect("fits");
        let (bytes, segment, count) = runs.iter().next().expect("one run");
        assert_eq!(runs.iter().count(), 1);
        assert!(segment <= 1400 + 36 && segment > 1400 - FRAGMENT_HEADER_LEN);
        assert_eq!(bytes.len().div_ceil(segment), count);
    }

    #[test]
    fn fragmenting_fails_whole() {
        let mut runs = Runs::default();
        let b = Batcher::new(name(1), 1400);
        let too_big = vec![0u8; frame::MAX_LARGE + 1];
        assert_eq!(
            b.fragment(hop(2, 2), name(1), &too_big, 1, plain, &mut runs),
            Err(FragmentError::Oversized)
        );
        let mut calls = 0;
        let no_session = |_: &[u8], _: &mut Vec<u8>| {
            calls += 1;
            calls < 3
        };
        assert_eq!(
            b.fragment(hop(2, 2), name(1), &[1; 9000], 1, no_session, &mut runs),
            Err(FragmentError::NoSession)
        );
        assert_eq!(runs.datagrams(), 0, "nothing half-made is left to send");
    }
}
