// SPDX-License-Identifier: Apache-2.0
//! Cost of sealing and opening one sleeve datagram (ChaCha20-Poly1305 with
//! the epoch/counter header and the replay window) and one control frame,
//! for small and full-size frames: `cargo bench -p weave-node-agent --bench seal`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::time::Instant;
use weave_node_agent::crypto::session::{ControlOpener, ControlSealer, SleeveRx, SleeveTx};
use weave_node_agent::crypto::Secret;

/// A plain sleeve datagram carrying one frame of `frame` bytes.
fn datagram(frame: usize) -> Vec<u8> {
    let mut d = vec![1, 1, 2, 0, 0, 0, 0, 1];
    d.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    d.extend_from_slice(&u16::try_from(frame).unwrap().to_be_bytes());
    d.resize(d.len() + frame, 0xab);
    d
}

fn sleeve(c: &mut Criterion) {
    let mut g = c.benchmark_group("sleeve");
    for frame in [64usize, 1400, 8950] {
        let plain = datagram(frame);
        g.throughput(Throughput::Bytes(plain.len() as u64));
        let now = Instant::now();
        let mut tx = SleeveTx::new(Secret::new([1; 32]), now);
        let mut sealed = Vec::with_capacity(plain.len() + 64);
        g.bench_with_input(BenchmarkId::new("seal", frame), &plain, |b, p| {
            b.iter(|| tx.seal(p, &mut sealed, now))
        });
        // Opening needs fresh counters: seal a batch once, open it in a loop
        // with a fresh receiver per batch.
        let mut batch = Vec::new();
        let mut tx = SleeveTx::new(Secret::new([1; 32]), now);
        for _ in 0..1024 {
            let mut s = Vec::new();
            tx.seal(&plain, &mut s, now);
            batch.push(s);
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        // One iteration opens 64 datagrams.
        g.throughput(Throughput::Bytes(64 * plain.len() as u64));
        g.bench_function(BenchmarkId::new("open_64", frame), |b| {
            b.iter_batched_ref(
                || SleeveRx::new(Secret::new([1; 32])),
                |rx| {
                    for s in &batch[..64] {
                        rx.open(s, &mut out).expect("sealed with the same key");
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn control(c: &mut Criterion) {
    let body = vec![3u8; 1024];
    let now = Instant::now();
    c.bench_function("control/seal+open 1 KiB", |b| {
        let mut s = ControlSealer::new(Secret::new([2; 32]), now);
        let mut o = ControlOpener::new(Secret::new([2; 32]));
        b.iter(|| {
            let f = s.seal(&body);
            let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
            o.open(len, &f[4..]).expect("same key")
        })
    });
}

criterion_group!(benches, sleeve, control);
criterion_main!(benches);
