// SPDX-License-Identifier: Apache-2.0
//! The sliding replay window of the sleeve (the bitmap scheme of RFC 6479,
//! as IPsec and WireGuard use it).
//!
//! UDP may reorder and duplicate datagrams, so the receiver cannot insist on
//! strictly increasing counters. It remembers which of the last
//! [`WINDOW`] counters it has accepted and refuses a counter it has seen
//! or one older than the window. [`ReplayWindow::check`] runs before the
//! (costly) decryption, [`ReplayWindow::commit`] only after it succeeded,
//! so forged datagrams with huge counters cannot move the window.

/// Counters remembered behind the highest one accepted.
pub const WINDOW: u64 = WORDS as u64 * 64;
/// Words of the bitmap.
const WORDS: usize = 64;

/// Which recent counters were accepted.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted plus one; 0 before the first.
    next: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            next: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `n` would be accepted: new, and not older than the window.
    pub fn check(&self, n: u64) -> bool {
        if n >= self.next {
            return true;
        }
        if self.next - n > WINDOW {
            return false;
        }
        let (word, bit) = slot(n);
        self.bits[word] & (1 << bit) == 0
    }

    /// Records `n` as accepted (call only after `check` and a successful
    /// decryption).
    pub fn commit(&mut self, n: u64) {
        if n >= self.next {
            // Clear the slots the window slides over, at most all of them.
            let advance = n - self.next + 1;
            if advance >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for m in self.next..=n {
                    let (word, bit) = slot(m);
                    self.bits[word] &= !(1 << bit);
                }
            }
            self.next = n.saturating_add(1);
        }
        let (word, bit) = slot(n);
        self.bits[word] |= 1 << bit;
    }
}

/// Word and bit of counter `n` in the bitmap.
fn slot(n: u64) -> (usize, u64) {
    let i = n % WINDOW;
    (
        usize::try_from(i / 64).expect("the word index is below WORDS"),
        i % 64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, n: u64) -> bool {
        let ok = w.check(n);
        if ok {
            w.commit(n);
        }
        ok
    }

    #[test]
    fn duplicates_and_old_counters_are_refused() {
        let mut w = ReplayWindow::new();
        assert!(accept(&mut w, 0));
        assert!(!accept(&mut w, 0));
        assert!(accept(&mut w, 5));
        // reordered but new: accepted once
        assert!(accept(&mut w, 3));
        assert!(!accept(&mut w, 3));
        assert!(accept(&mut w, 1));
        // far ahead: slides the window
        assert!(accept(&mut w, 10_000));
        assert!(!accept(&mut w, 5));
        assert!(!accept(&mut w, 10_000 - WINDOW));
        assert!(accept(&mut w, 10_000 - WINDOW + 1));
        assert!(!accept(&mut w, 10_000 - WINDOW + 1));
        assert!(accept(&mut w, 9_999));
    }

    #[test]
    fn sliding_clears_reused_slots() {
        let mut w = ReplayWindow::new();
        for n in 0..WINDOW {
            assert!(accept(&mut w, n));
        }
        // n + WINDOW maps to n's slot: must be new, not "seen"
        for n in WINDOW..3 * WINDOW {
            assert!(accept(&mut w, n), "{n}");
            assert!(!accept(&mut w, n - 1), "{n}");
        }
    }

    #[test]
    fn check_alone_does_not_move_the_window() {
        let mut w = ReplayWindow::new();
        assert!(accept(&mut w, 7));
        assert!(w.check(u64::MAX - 1));
        assert!(w.check(6));
        assert!(accept(&mut w, 6));
    }
}
