//! crew's runner for the worker-pool benchmark (contract: `shared/bench/WORKLOADS.md`).
//!
//! Usage: crew-bench --workload <overhead|latency|cpu|payload|spawn|all>
//!                   [--backend <threads|processes>]
//!
//! Prints one JSON object per line on stdout, in the same format, with the same
//! metrics, units, rounding and constants as the Rust peers (`shared/bench/rust-peers`):
//!   {"impl":"rust/crew-threads","workload":"...","metric":"...","value":N,"unit":"..."}
//! Diagnostics go to stderr. A wrong result panics (non-zero exit) before any number
//! of that workload is printed. `--backend processes` exits with code 3 until the
//! library has a process backend.

use std::hint::black_box;
use std::process::exit;
use std::time::Instant;

use crew::{Pool, Task};

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
/// Exit code for a backend the library does not have yet.
const EXIT_NO_BACKEND: i32 = 3;

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

fn emit(imp: &str, workload: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{{\"impl\":\"{imp}\",\"workload\":\"{workload}\",\"metric\":\"{metric}\",\"value\":{},\"unit\":\"{unit}\"}}",
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

// ---------------------------------------------------------------- crew helpers

fn new_pool() -> Pool {
    Pool::builder()
        .workers(WORKERS)
        .build()
        .unwrap_or_else(|e| panic!("crew pool: {e}"))
}

/// A task's output; a task error (panic, closed, ...) aborts the run.
fn join<T>(task: Task<T>) -> T {
    task.join()
        .unwrap_or_else(|e| panic!("crew task failed: {e}"))
}

/// Submit every task first, then join them in order.
fn spawn_all<T, F>(pool: &Pool, tasks: impl Iterator<Item = F>) -> impl Iterator<Item = T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<Task<T>> = tasks.map(|f| pool.spawn(f)).collect();
    handles.into_iter().map(join)
}

// ---------------------------------------------------------------- workloads

fn w1_overhead(imp: &str) {
    w1_run(imp, |pool, n| {
        spawn_all(pool, (0..n).map(|i| move || inc(i))).sum()
    });
    // The batched variant: one `spawn_batch` call for all N tasks (one id
    // reservation and one wake-up), still one `Task` per task.
    w1_run(&format!("{imp}[spawn_batch]"), |pool, n| {
        let handles = pool.spawn_batch((0..n).map(|i| move || inc(i)));
        handles.into_iter().map(join).sum()
    });
}

/// W1 for one way of submitting: `submit_all(pool, n)` runs `inc(i)` for
/// `i in 0..n` and returns the sum of the results.
fn w1_run(imp: &str, submit_all: impl Fn(&Pool, u64) -> u64) {
    let pool = new_pool();
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

fn w2_latency(imp: &str) {
    let pool = new_pool();
    for i in 0..W2_WARMUP as u64 {
        assert_eq!(join(pool.spawn(move || inc(i))), i + 1);
    }
    let mut lat = Vec::with_capacity(W2_ROUND_TRIPS);
    for i in 0..W2_ROUND_TRIPS as u64 {
        let t = Instant::now();
        let r = join(pool.spawn(move || inc(i)));
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

fn w3_cpu(imp: &str) {
    let (single, want) = w3_serial();
    let pool = new_pool();
    let mut spans = Vec::new();
    for run in 0..=W3_RUNS {
        let t = Instant::now();
        let x = spawn_all(&pool, (0..W3_TASKS).map(|i| move || cpu_task(i + 1, W3_K)))
            .fold(0, |a, b| a ^ b);
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

/// W4: each `Vec<u8>` moves into its task and comes back out with the result, so no
/// buffer is freed while the clock runs (as in the in-process Rust peers).
fn w4_payload(imp: &str) {
    let pool = new_pool();
    let mut rates = Vec::new();
    for run in 0..=W4_RUNS {
        let n = if run == 0 { W4_WARMUP_TASKS } else { W4_TASKS };
        let bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![(i & 0xFF) as u8; W4_BYTES]).collect();
        let mut keep = Vec::with_capacity(n);
        let t = Instant::now();
        let (mut sum_len, mut sum_first) = (0u64, 0u64);
        let tasks = bufs
            .into_iter()
            .map(|buf| move || (buf.len() as u64, buf[0] as u64, buf));
        for (len, first, buf) in spawn_all(&pool, tasks) {
            sum_len += len;
            sum_first += first;
            keep.push(buf);
        }
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

/// W5: startup = build + one round trip; shutdown = `Pool::shutdown`, which joins
/// the worker threads.
fn w5_spawn(imp: &str) {
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for cycle in 0..=W5_CYCLES {
        let t = Instant::now();
        let pool = new_pool();
        let r = join(pool.spawn(|| inc(41)));
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

// ---------------------------------------------------------------- main

fn usage() -> String {
    format!(
        "usage: crew-bench --workload <{}|all> [--backend <threads|processes>]",
        ALL_WORKLOADS.join("|")
    )
}

fn main() {
    let mut workload = None;
    let mut backend = String::from("threads");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workload" => workload = args.next(),
            "--backend" => backend = args.next().unwrap_or_default(),
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
    let workloads: Vec<&str> = match workload.as_str() {
        "all" => ALL_WORKLOADS.to_vec(),
        w if ALL_WORKLOADS.contains(&w) => vec![w],
        w => {
            eprintln!("crew-bench: unknown workload {w}\n{}", usage());
            exit(2);
        }
    };
    match backend.as_str() {
        "threads" => {}
        "processes" => {
            eprintln!("crew-bench: backend `processes`: process backend not built yet");
            exit(EXIT_NO_BACKEND);
        }
        b => {
            eprintln!("crew-bench: unknown backend {b}\n{}", usage());
            exit(2);
        }
    }
    let imp = format!("rust/crew-{backend}");
    for w in workloads {
        let t = Instant::now();
        match w {
            "overhead" => w1_overhead(&imp),
            "latency" => w2_latency(&imp),
            "cpu" => w3_cpu(&imp),
            "payload" => w4_payload(&imp),
            "spawn" => w5_spawn(&imp),
            _ => unreachable!(),
        }
        eprintln!("[crew-bench] {imp} {w}: {:.1}s", t.elapsed().as_secs_f64());
    }
}
