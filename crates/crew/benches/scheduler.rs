//! Scheduler micro-benchmarks: one round trip, a burst of 1,000 tasks, and tasks
//! spawned from inside a task (they go to the worker's own deque, so the other worker
//! has to steal them). Kept short: `cargo bench -p crew-pool --bench scheduler`.

// `criterion_group!` generates an undocumented `pub fn benches`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use crew::Pool;
use criterion::{criterion_group, criterion_main, Criterion};

const WORKERS: usize = 2;
const BURST: u64 = 1_000;
const CHILDREN: u64 = 64;

fn pool() -> Pool {
    Pool::builder().workers(WORKERS).build().expect("crew pool")
}

/// Submit one task and join it before the next.
fn round_trip(c: &mut Criterion) {
    let pool = pool();
    c.bench_function("round_trip", |b| {
        b.iter(|| pool.spawn(|| black_box(41u64) + 1).join().unwrap())
    });
    pool.shutdown();
}

/// Spawn 1,000 tasks, then join them all.
fn spawn_1000_join_all(c: &mut Criterion) {
    let pool = pool();
    c.bench_function("spawn_1000_join_all", |b| {
        b.iter(|| {
            let tasks: Vec<_> = (0..BURST).map(|i| pool.spawn(move || i + 1)).collect();
            let sum: u64 = tasks.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(sum, BURST * (BURST + 1) / 2);
        })
    });
    pool.shutdown();
}

/// One task spawns `CHILDREN` tasks onto its worker's own deque and joins them; the
/// parent blocks, so the other worker steals the children.
fn nested_spawn(c: &mut Criterion) {
    let pool = pool();
    c.bench_function("nested_spawn_64", |b| {
        b.iter(|| {
            let inner = pool.clone();
            let parent = pool.spawn(move || {
                let kids: Vec<_> = (0..CHILDREN).map(|i| inner.spawn(move || i + 1)).collect();
                kids.into_iter().map(|t| t.join().unwrap()).sum::<u64>()
            });
            assert_eq!(parent.join().unwrap(), CHILDREN * (CHILDREN + 1) / 2);
        })
    });
    pool.shutdown();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = round_trip, spawn_1000_join_all, nested_spawn
}
criterion_main!(benches);
