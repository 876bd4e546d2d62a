// SPDX-License-Identifier: Apache-2.0
//! What one thread wake-up costs on this machine: two threads bounce a byte
//! over a pair of pipes, on the same CPU or on two, with the machine idle
//! for a while between bounces or not. The sleeve's ping RTT is mostly made
//! of such wake-ups (four per round trip that raw veth does not have), so
//! this tells how far a user-space relay can get here.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).context("cpu set")?;
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")
}

/// Median round trip (two wake-ups) in µs over `n` bounces, `gap` apart.
fn bounce(cross: bool, gap: Duration, n: usize) -> Result<f64> {
    let (mut here, mut there) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> Result<()> {
        pin(0)?;
        let mut b = [0u8; 1];
        loop {
            there.read_exact(&mut b)?;
            if b[0] == b'q' {
                return Ok(());
            }
            there.write_all(&b)?;
        }
    });
    pin(if cross { 1 } else { 0 })?;
    let mut times = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for _ in 0..n {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let t0 = Instant::now();
        here.write_all(b"x")?;
        here.read_exact(&mut b)?;
        times.push(t0.elapsed());
    }
    here.write_all(b"q")?;
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e6)
}

/// Prints the table: same CPU and across CPUs, with 0, 1 and 10 ms idle
/// before each bounce.
pub(crate) fn bench() -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("| idle before each bounce | same CPU | across CPUs |");
    println!("|---|---|---|");
    for gap_ms in [0u64, 1, 10] {
        let gap = Duration::from_millis(gap_ms);
        let n = if gap_ms == 0 { 2000 } else { 200 };
        let same = bounce(false, gap, n)?;
        let cross = if cpus > 1 {
            format!("{:.1} µs", bounce(true, gap, n)?)
        } else {
            "(one CPU)".to_string()
        };
        println!("| {gap_ms} ms | {same:.1} µs | {cross} |");
    }
    println!("(median round trip of one byte between two threads: two wake-ups)");
    Ok(())
}
