// SPDX-License-Identifier: Apache-2.0
//! Waiting on a condition with a timeout.
//!
//! Tests never sleep to synchronise: they poll a probe until it reports what they wait for,
//! and fail with a message naming the condition (and the probe's last error) when it does not
//! happen in time. The test bed is synchronous (it drives `ip`, `nft` and real binaries from
//! plain test threads, with no tokio runtime), so this uses wall-clock time and a thread sleep.

use std::time::Duration;

use anyhow::{anyhow, Result};

/// How often [`wait_until`] calls its probe.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `probe` every ~50 ms until it returns `Ok(Some(value))` and returns that value.
///
/// `Ok(None)` means "not yet"; `Err` is also retried, and the last error is quoted if time
/// runs out. The probe always runs at least once, and once more at the deadline. After
/// `timeout` the result is an error naming `what`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    // A real clock is what we want here: the waits span real processes and the kernel, and
    // there is no tokio runtime whose (pausable) clock could stand in.
    #[allow(clippy::disallowed_types)]
    let start = std::time::Instant::now();
    let mut last_error = None;
    loop {
        let expired = start.elapsed() >= timeout;
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if expired {
            return Err(match last_error {
                Some(err) => anyhow!("timed out after {timeout:?} waiting for {what}: {err:#}"),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        // Polling interval of a condition wait, not synchronisation by sleeping.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(POLL_INTERVAL.min(timeout.saturating_sub(start.elapsed())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_first_some() {
        let mut calls = 0;
        let value = wait_until(Duration::from_secs(5), "third call", || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        })
        .expect("third call succeeds");
        assert_eq!(value, 3);
    }

    #[test]
    fn timeout_names_condition_and_last_error() {
        let mut calls = 0;
        let err = wait_until::<()>(Duration::from_millis(120), "the moon", || {
            calls += 1;
            Err(anyhow!("attempt {calls} failed"))
        })
        .expect_err("never succeeds");
        let text = format!("{err:#}");
        assert!(text.contains("the moon"), "{text}");
        assert!(text.contains(&format!("attempt {calls} failed")), "{text}");
        assert!(calls >= 2, "probe ran {calls} times");
    }

    #[test]
    fn zero_timeout_still_probes_once() {
        let value = wait_until(Duration::ZERO, "immediate", || Ok(Some(7)));
        assert_eq!(value.expect("first probe succeeds"), 7);
    }
}
