//! crew's runner for the worker-pool benchmark (contract: `shared/bench/WORKLOADS.md`).
//!
//! Usage: crew-bench --workload <overhead|latency|cpu|payload|spawn|all>
//!                   [--backend <threads|processes|cluster>]
//!                   [--exporter [metrics|events]] [--scrape-every <ms>]
//!
//! Prints one JSON object per line on stdout, in the same format, with the same
//! metrics, units, rounding and constants as the Rust peers (`shared/bench/rust-peers`):
//!   {"impl":"rust/crew-threads","workload":"...","metric":"...","value":N,"unit":"..."}
//! Diagnostics go to stderr. A wrong result panics (non-zero exit) before any number
//! of that workload is printed.
//!
//! Backends:
//! - `threads` (`rust/crew-threads`): a `Pool` of closures (`pool.spawn`); W1 also
//!   reports `[spawn_batch]`.
//! - `processes` (`rust/crew-processes`): `Pool::<W>::builder().processes(2)` with
//!   one `crew::Worker` type per task ([`Inc`], [`Cpu`], [`Payload`]), run in child
//!   processes that re-execute this binary; `main` therefore calls
//!   `crew::Bootstrap` first. Tasks go through `pool.submit(input)`; W1 also reports
//!   `[submit_batch]` (one `submit_batch` call for all N) and `[map]` (`pool.map`,
//!   results in order; on a process pool it ships adaptively sized chunks of items,
//!   the path comparable with `multiprocessing.Pool.map`). W4 moves each
//!   1 MiB `serde_bytes::ByteBuf` into `submit`, which encodes (copies) it and drops
//!   it inside the timed region, as procspawn's natural path does with its `Vec<u8>`.
//!   W5's shutdown is `pool.shutdown()`, which returns once every worker process is
//!   reaped.
//! - `cluster` (`rust/crew-cluster`, `overhead` and `latency` only): starts its own
//!   `nats-server` with JetStream on loopback (a free port, a temporary store) and
//!   2 node processes of 1 worker each (this binary, re-run as nodes through
//!   `crew_cluster::bootstrap`), and submits from one client,
//!   `Pool::<Inc>::builder().cluster(..)`, one `submit` per task.
//!
//! `--exporter` (off by default) registers each pool under test with
//! crew-observe's Prometheus exporter and scrapes it every `--scrape-every` ms
//! (default 10) while the workload runs; the impl names get `[exporter]` (or
//! `[exporter=events]`). See the `exporter` module; W5 is not measured with it.
//! `scripts/bench-ab.sh` runs the same binary with and without it.

mod exporter;

use std::hint::black_box;
use std::process::exit;
use std::time::{Duration, Instant};

use crew::{Context, Pool, RemoteWorker, StartError, Task, Worker};
use serde_bytes::ByteBuf;

// ---- workload constants (the contract lives in WORKLOADS.md)
const WORKERS: usize = 2;
const W1_TASKS: u64 = 100_000;
const W1_WARMUP_TASKS: u64 = 10_000;
const W1_RUNS: usize = 3;
const W2_ROUND_TRIPS: usize = 5_000;
const W2_WARMUP: usize = 200;
const W3_TASKS: u64 = 400;
const W3_WARMUP_TASKS: u64 = 20;
/// xorshift64 iterations per W3 task (the Rust value from WORKLOADS.md).
const W3_K: u64 = 600_000;
const W3_RUNS: usize = 3;
const W4_TASKS: usize = 1_000;
const W4_WARMUP_TASKS: usize = 100;
const W4_BYTES: usize = 1 << 20;
const W4_RUNS: usize = 3;
const W5_CYCLES: usize = 5;

const ALL_WORKLOADS: &[&str] = &["overhead", "latency", "cpu", "payload", "spawn"];

// ---------------------------------------------------------------- output

/// 6 significant digits, plain decimal (valid JSON); identical to rust-peers.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "null".to_string();
    }
    let mag = if v == 0.0 {
        0
    } else {
        v.abs().log10().floor() as i32
    };
    let decimals = (5 - mag).clamp(0, 9) as usize;
    let s = format!("{:.*}", decimals, v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// One result line; the impl name gets the exporter's tag when it is on.
fn emit(imp: &str, workload: &str, metric: &str, value: f64, unit: &str) {
    let tag = exporter::tag();
    println!(
        "{{\"impl\":\"{imp}{tag}\",\"workload\":\"{workload}\",\"metric\":\"{metric}\",\"value\":{},\"unit\":\"{unit}\"}}",
        fmt_num(value)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of an ascending slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

// ---------------------------------------------------------------- tasks

#[inline(always)]
fn inc(i: u64) -> u64 {
    i + 1
}

/// W3 task: xorshift64 (13, 7, 17) for `k` iterations from `seed`.
#[inline(never)]
fn cpu_task(seed: u64, k: u64) -> u64 {
    let mut x = black_box(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    for _ in 0..black_box(k) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

// ---------------------------------------------------------------- process workers

/// W1, W2 and W5 task for the process backend: `inc(i)`.
struct Inc;

impl Worker for Inc {
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Inc)
    }

    fn run(&mut self, i: u64, _ctx: &mut Context<'_>) -> Result<u64, String> {
        Ok(inc(i))
    }
}

/// W3 task for the process backend: `cpu(seed, K)`.
struct Cpu;

impl Worker for Cpu {
    type Input = (u64, u64);
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Cpu)
    }

    fn run(&mut self, (seed, k): (u64, u64), _ctx: &mut Context<'_>) -> Result<u64, String> {
        Ok(cpu_task(seed, k))
    }
}

/// W4 task for the process backend: `payload(buf) = (len(buf), buf[0])`.
struct Payload;

impl Worker for Payload {
    type Input = ByteBuf;
    type Output = (u64, u64);
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Payload)
    }

    fn run(&mut self, buf: ByteBuf, _ctx: &mut Context<'_>) -> Result<(u64, u64), String> {
        Ok((buf.len() as u64, buf[0] as u64))
    }
}

// ---------------------------------------------------------------- crew helpers

fn new_pool() -> Pool {
    Pool::builder()
        .workers(WORKERS)
        .build()
        .unwrap_or_else(|e| panic!("crew pool: {e}"))
}

/// A process pool of `W` with the workload's 2 workers; every other setting is
/// crew's default.
fn new_process_pool<W: RemoteWorker>() -> Pool<W> {
    Pool::<W>::builder()
        .processes(WORKERS)
        .build()
        .unwrap_or_else(|e| panic!("crew process pool: {e}"))
}

/// A task's output; a task error (panic, closed, crash, ...) aborts the run.
fn join<T, E>(task: Task<T, E>) -> T {
    task.join()
        .unwrap_or_else(|e| panic!("crew task failed: {e}"))
}

/// Submit every closure first, then join them in order.
fn spawn_all<T, F>(pool: &Pool, tasks: impl Iterator<Item = F>) -> impl Iterator<Item = T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<Task<T>> = tasks.map(|f| pool.spawn(f)).collect();
    handles.into_iter().map(join)
}

/// Submit every input first (one `submit` each), then join them in order.
fn submit_all<W: Worker>(
    pool: &Pool<W>,
    inputs: impl Iterator<Item = W::Input>,
) -> impl Iterator<Item = W::Output> {
    let handles: Vec<Task<W::Output, W::Error>> = inputs
        .map(|input| {
            pool.submit(input)
                .unwrap_or_else(|_| panic!("crew submit refused"))
        })
        .collect();
    handles.into_iter().map(join)
}

// ---------------------------------------------------------------- workloads

fn w1_overhead_threads(imp: &str) {
    w1_run(imp, new_pool(), |pool, n| {
        spawn_all(pool, (0..n).map(|i| move || inc(i))).sum()
    });
    // The batched variant: one `spawn_batch` call for all N tasks (one id
    // reservation and one wake-up), still one `Task` per task.
    w1_run(&format!("{imp}[spawn_batch]"), new_pool(), |pool, n| {
        let handles = pool.spawn_batch((0..n).map(|i| move || inc(i)));
        handles.into_iter().map(join).sum()
    });
}

fn w1_overhead_processes(imp: &str) {
    w1_run(imp, new_process_pool::<Inc>(), |pool, n| {
        submit_all(pool, 0..n).sum()
    });
    // One `submit_batch` call for all N inputs, still one `Task` per task.
    w1_run(
        &format!("{imp}[submit_batch]"),
        new_process_pool::<Inc>(),
        |pool, n| {
            let handles = pool
                .submit_batch(0..n)
                .unwrap_or_else(|_| panic!("crew submit_batch refused"));
            handles.into_iter().map(join).sum()
        },
    );
    // `pool.map`: results in input order; items travel in adaptively sized chunks.
    w1_run(
        &format!("{imp}[map]"),
        new_process_pool::<Inc>(),
        |pool, n| {
            pool.map(0..n)
                .map(|r| r.unwrap_or_else(|e| panic!("crew task failed: {e}")))
                .sum()
        },
    );
}

/// W1 for one way of submitting: `submit_all(pool, n)` runs `inc(i)` for
/// `i in 0..n` and returns the sum of the results.
fn w1_run<W: Worker>(imp: &str, pool: Pool<W>, submit_all: impl Fn(&Pool<W>, u64) -> u64) {
    let _scraped = exporter::observe(&pool);
    let mut rates = Vec::new();
    for run in 0..=W1_RUNS {
        let n = if run == 0 { W1_WARMUP_TASKS } else { W1_TASKS };
        let t = Instant::now();
        let sum = submit_all(&pool, n);
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(sum, n * (n + 1) / 2, "W1 sum mismatch");
        if run > 0 {
            rates.push(n as f64 / dt);
        }
    }
    pool.shutdown();
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    emit(imp, "overhead", "tasks_per_sec", median(rates), "tasks/s");
    emit(imp, "overhead", "tasks_per_sec_min", min, "tasks/s");
    emit(imp, "overhead", "tasks_per_sec_max", max, "tasks/s");
}

/// W2: `round_trip(pool, i)` submits `inc(i)` and waits for its result.
fn w2_latency<W: Worker>(imp: &str, pool: Pool<W>, round_trip: impl Fn(&Pool<W>, u64) -> u64) {
    let _scraped = exporter::observe(&pool);
    for i in 0..W2_WARMUP as u64 {
        assert_eq!(round_trip(&pool, i), i + 1);
    }
    let mut lat = Vec::with_capacity(W2_ROUND_TRIPS);
    for i in 0..W2_ROUND_TRIPS as u64 {
        let t = Instant::now();
        let r = round_trip(&pool, i);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(r, i + 1, "W2 result mismatch");
    }
    pool.shutdown();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    emit(imp, "latency", "p50_us", percentile(&lat, 50.0), "us");
    emit(imp, "latency", "p99_us", percentile(&lat, 99.0), "us");
}

/// Serial reference, before the pool exists: (mean seconds per task, expected XOR).
fn w3_serial() -> (f64, u64) {
    for i in 0..W3_WARMUP_TASKS {
        black_box(cpu_task(i + 1, W3_K));
    }
    let t = Instant::now();
    let x = (0..W3_TASKS).fold(0, |x, i| x ^ cpu_task(i + 1, W3_K));
    (t.elapsed().as_secs_f64() / W3_TASKS as f64, x)
}

/// W3: the serial reference, then `new_pool()`; `run_all(pool)` runs the 400 tasks
/// and returns the XOR of their results.
fn w3_cpu<W: Worker>(
    imp: &str,
    new_pool: impl FnOnce() -> Pool<W>,
    run_all: impl Fn(&Pool<W>) -> u64,
) {
    let (single, want) = w3_serial();
    let pool = new_pool();
    let _scraped = exporter::observe(&pool);
    let mut spans = Vec::new();
    for run in 0..=W3_RUNS {
        let t = Instant::now();
        let x = run_all(&pool);
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(x, want, "W3 checksum mismatch");
        if run > 0 {
            spans.push(dt);
        }
    }
    pool.shutdown();
    let makespan = median(spans);
    let ideal = W3_TASKS as f64 * single / WORKERS as f64;
    emit(imp, "cpu", "efficiency", ideal / makespan, "ratio");
    emit(imp, "cpu", "single_task_us", single * 1e6, "us");
    emit(imp, "cpu", "makespan_ms", makespan * 1e3, "ms");
}

fn w3_cpu_threads(imp: &str) {
    w3_cpu(imp, new_pool, |pool| {
        spawn_all(pool, (0..W3_TASKS).map(|i| move || cpu_task(i + 1, W3_K))).fold(0, |a, b| a ^ b)
    });
}

fn w3_cpu_processes(imp: &str) {
    w3_cpu(imp, new_process_pool::<Cpu>, |pool| {
        submit_all(pool, (0..W3_TASKS).map(|i| (i + 1, W3_K))).fold(0, |a, b| a ^ b)
    });
}

/// What one W4 run hands back: (sum of lengths, sum of first bytes, buffers the
/// submitter still owns, freed after the clock stops).
type PayloadOut = (u64, u64, Vec<Vec<u8>>);

/// W4: `run_all(pool, bufs)` sends every buffer to the pool and awaits all the
/// results.
fn w4_payload<W: Worker>(
    imp: &str,
    pool: Pool<W>,
    run_all: impl Fn(&Pool<W>, Vec<Vec<u8>>) -> PayloadOut,
) {
    let _scraped = exporter::observe(&pool);
    let mut rates = Vec::new();
    for run in 0..=W4_RUNS {
        let n = if run == 0 { W4_WARMUP_TASKS } else { W4_TASKS };
        let bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![(i & 0xFF) as u8; W4_BYTES]).collect();
        let t = Instant::now();
        let (sum_len, sum_first, keep) = run_all(&pool, bufs);
        let dt = t.elapsed().as_secs_f64();
        drop(keep); // freed after the clock stops
        assert_eq!(sum_len, (n * W4_BYTES) as u64, "W4 length sum mismatch");
        let want_first: u64 = (0..n as u64).map(|i| i & 0xFF).sum();
        assert_eq!(sum_first, want_first, "W4 first-byte sum mismatch");
        if run > 0 {
            rates.push((n * W4_BYTES) as f64 / (1u64 << 20) as f64 / dt);
        }
    }
    pool.shutdown();
    emit(imp, "payload", "mb_per_sec", median(rates), "MiB/s");
}

/// W4 on threads: each `Vec<u8>` moves into its task and comes back out with the
/// result, so no buffer is freed while the clock runs (as in the in-process Rust
/// peers).
fn w4_payload_threads(imp: &str) {
    w4_payload(imp, new_pool(), |pool, bufs| {
        let mut keep = Vec::with_capacity(bufs.len());
        let (mut sum_len, mut sum_first) = (0u64, 0u64);
        let tasks = bufs
            .into_iter()
            .map(|buf| move || (buf.len() as u64, buf[0] as u64, buf));
        for (len, first, buf) in spawn_all(pool, tasks) {
            sum_len += len;
            sum_first += first;
            keep.push(buf);
        }
        (sum_len, sum_first, keep)
    });
}

/// W4 on processes: each buffer becomes a `ByteBuf` (no copy) and moves into
/// `submit`, which encodes it for the worker; the pool's copy is freed when its
/// task resolves, inside the timed region (procspawn's natural path too).
fn w4_payload_processes(imp: &str) {
    w4_payload(imp, new_process_pool::<Payload>(), |pool, bufs| {
        let (sum_len, sum_first) = submit_all(pool, bufs.into_iter().map(ByteBuf::from))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        (sum_len, sum_first, Vec::new())
    });
}

/// W5: startup = `new_pool()` + one round trip of `inc(41)`; shutdown =
/// `Pool::shutdown`, which joins the worker threads or reaps the worker processes.
fn w5_spawn<W: Worker>(imp: &str, new_pool: impl Fn() -> Pool<W>, inc41: impl Fn(&Pool<W>) -> u64) {
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for cycle in 0..=W5_CYCLES {
        let t = Instant::now();
        let pool = new_pool();
        let r = inc41(&pool);
        let startup = t.elapsed().as_secs_f64();
        assert_eq!(r, 42, "W5 result mismatch");
        let t = Instant::now();
        pool.shutdown();
        let shutdown = t.elapsed().as_secs_f64();
        drop(pool);
        if cycle > 0 {
            starts.push(startup * 1e3);
            stops.push(shutdown * 1e3);
        }
    }
    emit(imp, "spawn", "startup_ms", median(starts), "ms");
    emit(imp, "spawn", "shutdown_ms", median(stops), "ms");
}

/// One `submit` of `inc(i)` on a process pool, awaited.
fn submit_inc(pool: &Pool<Inc>, i: u64) -> u64 {
    join(
        pool.submit(i)
            .unwrap_or_else(|_| panic!("crew submit refused")),
    )
}

fn run_threads(imp: &str, w: &str) {
    match w {
        "overhead" => w1_overhead_threads(imp),
        "latency" => w2_latency(imp, new_pool(), |pool, i| join(pool.spawn(move || inc(i)))),
        "cpu" => w3_cpu_threads(imp),
        "payload" => w4_payload_threads(imp),
        "spawn" => w5_spawn(imp, new_pool, |pool| join(pool.spawn(|| inc(41)))),
        _ => unreachable!(),
    }
}

/// A node process of the cluster backend; killed and reaped on drop.
struct NodeProcess(std::process::Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_cluster(imp: &str, w: &str) {
    use crew_cluster::{Cluster, PoolBuilderExt};
    if !matches!(w, "overhead" | "latency") {
        eprintln!("crew-bench: {w} is not measured on the cluster backend yet");
        return;
    }
    let server = crew_cluster::testing::NatsServer::start()
        .unwrap_or_else(|e| panic!("crew-bench --backend cluster: {e}"));
    let cluster = Cluster::connect(server.url()).pool_name("bench");
    // The client first: it creates the pool's stream and consumer.
    let pool = Pool::<Inc>::builder()
        .cluster(cluster)
        .build()
        .unwrap_or_else(|e| panic!("crew cluster pool: {e}"));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("this binary's path: {e}"));
    let nodes: Vec<NodeProcess> = (0..WORKERS)
        .map(|_| {
            std::process::Command::new(&exe)
                .env(crew_cluster::ENV_URL, server.url())
                .env(crew_cluster::ENV_POOL, "bench")
                .env(crew_cluster::ENV_WORKERS, "1")
                .stdin(std::process::Stdio::null())
                .spawn()
                .map(NodeProcess)
                .unwrap_or_else(|e| panic!("a node process: {e}"))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.stats().workers < WORKERS {
        assert!(Instant::now() < deadline, "the nodes did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    match w {
        "overhead" => w1_run(imp, pool, |pool, n| submit_all(pool, 0..n).sum()),
        _ => w2_latency(imp, pool, submit_inc),
    }
    drop(nodes);
}

fn run_processes(imp: &str, w: &str) {
    match w {
        "overhead" => w1_overhead_processes(imp),
        "latency" => w2_latency(imp, new_process_pool::<Inc>(), submit_inc),
        "cpu" => w3_cpu_processes(imp),
        "payload" => w4_payload_processes(imp),
        "spawn" => w5_spawn(imp, new_process_pool::<Inc>, |pool| submit_inc(pool, 41)),
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------- main

fn usage() -> String {
    format!(
        "usage: crew-bench --workload <{}|all> [--backend <threads|processes|cluster>]
                  [--exporter [metrics|events]] [--scrape-every <ms>]

  --exporter [metrics]  register each pool under test with crew-observe's
                        Prometheus exporter (Metrics::pool: read at scrape
                        time only) and scrape it while the workload runs;
                        impl names get [exporter]. Off by default.
  --exporter events     the same with Metrics::pool_with_events (subscribes
                        to the pool's events); impl names get [exporter=events]
  --scrape-every <ms>   the scrape interval with --exporter (default 10: far
                        more often than Prometheus, so that even a run of tens
                        of milliseconds sees scrapes)

  W5 (spawn) is not measured with --exporter (with `all` it is skipped).",
        ALL_WORKLOADS.join("|")
    )
}

fn main() {
    // In a worker process started by one of this binary's process pools, this
    // serves the requested worker type and exits; otherwise it returns at once.
    crew::Bootstrap::new()
        .worker::<Inc>()
        .worker::<Cpu>()
        .worker::<Payload>()
        .run();
    // In a node process started by `--backend cluster`, this serves `Inc` from
    // the cluster and never returns; otherwise it returns at once.
    crew_cluster::bootstrap::<Inc>();

    let mut workload = None;
    let mut backend = String::from("threads");
    let mut exporter_mode = None;
    let mut scrape_every = Duration::from_millis(10);
    let mut args = std::env::args().skip(1).peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workload" => workload = args.next(),
            "--backend" => backend = args.next().unwrap_or_default(),
            "--exporter" => {
                // The mode is optional: `--exporter` alone means `metrics`.
                let mode = args.next_if(|m| exporter::Mode::parse(m).is_some());
                exporter_mode = Some(
                    mode.as_deref()
                        .and_then(exporter::Mode::parse)
                        .unwrap_or(exporter::Mode::Metrics),
                );
            }
            "--scrape-every" => match args.next().and_then(|ms| ms.parse::<u64>().ok()) {
                Some(ms) if ms > 0 => scrape_every = Duration::from_millis(ms),
                _ => {
                    eprintln!(
                        "crew-bench: --scrape-every needs a number of milliseconds above 0\n{}",
                        usage()
                    );
                    exit(2);
                }
            },
            "-h" | "--help" => {
                eprintln!("{}", usage());
                return;
            }
            other => {
                eprintln!("crew-bench: unknown argument {other}\n{}", usage());
                exit(2);
            }
        }
    }
    let Some(workload) = workload else {
        eprintln!("crew-bench: --workload is required\n{}", usage());
        exit(2);
    };
    let mut workloads: Vec<&str> = match workload.as_str() {
        "all" => ALL_WORKLOADS.to_vec(),
        w if ALL_WORKLOADS.contains(&w) => vec![w],
        w => {
            eprintln!("crew-bench: unknown workload {w}\n{}", usage());
            exit(2);
        }
    };
    if let Some(mode) = exporter_mode {
        // W5 times a pool's creation, a pool per cycle: with an exporter it
        // would time the registration rather than the pool.
        if workloads == ["spawn"] {
            eprintln!(
                "crew-bench: --exporter does not apply to spawn (W5)\n{}",
                usage()
            );
            exit(2);
        }
        workloads.retain(|w| *w != "spawn");
        exporter::start(mode, scrape_every);
    }
    let run: fn(&str, &str) = match backend.as_str() {
        "threads" => run_threads,
        "processes" => run_processes,
        "cluster" => run_cluster,
        b => {
            eprintln!("crew-bench: unknown backend {b}\n{}", usage());
            exit(2);
        }
    };
    let imp = format!("rust/crew-{backend}");
    for w in workloads {
        let t = Instant::now();
        run(&imp, w);
        eprintln!(
            "[crew-bench] {imp}{} {w}: {:.1}s",
            exporter::tag(),
            t.elapsed().as_secs_f64()
        );
    }
}
