// SPDX-License-Identifier: Apache-2.0
//! The C allocator's tuning for a long-running daemon.
//!
//! glibc gives each thread that contends for the heap an arena of its own,
//! up to eight per core, and keeps what is freed in an arena for that
//! arena's later use. A daemon whose threads allocate in bursts (the API
//! server, the blocking pool that writes state files, the DNS task) then
//! holds the high-water mark of every arena at once. Two arenas keep
//! contention low for the agent's handful of threads and bound that waste.

/// Caps the allocator's arenas at `n`; a no-op where the C library is not
/// glibc. Call before threads start. Returns whether the setting took.
pub fn limit_arenas(n: u16) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes a tuning parameter of the allocator;
        // it takes plain integers and touches no memory of ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::mallopt(libc::M_ARENA_MAX, i32::from(n)) };
        rc == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_takes() {
        assert!(limit_arenas(2));
    }
}
