//! `PoolBuilder::build` rejects settings that cannot work with a `BuildError` that
//! says so, and accepts the smallest ones that can.

use std::error::Error as StdError;
use std::time::Duration;

use crew::{BuildError, Closures, Pool, PoolBuilder};

fn builder() -> PoolBuilder<Closures> {
    Pool::<Closures>::builder()
}

fn rejected(b: PoolBuilder<Closures>, what: &str) -> BuildError {
    let err = b.build().expect_err(&format!("{what} must be rejected"));
    assert!(err.is_invalid_setting(), "{what}: {err:?}");
    assert!(
        err.source().is_none(),
        "{what}: a setting error has no source"
    );
    assert!(!err.to_string().is_empty());
    err
}

#[test]
fn zero_workers_is_rejected() {
    rejected(builder().workers(0), "workers(0)");
}

#[test]
fn zero_queue_capacity_is_rejected() {
    rejected(builder().workers(1).queue_capacity(0), "queue_capacity(0)");
}

#[test]
fn zero_timeout_is_rejected() {
    let err = rejected(builder().workers(1).timeout(Duration::ZERO), "timeout(0)");
    assert!(err.to_string().contains("timeout"), "{err}");
}

#[test]
fn zero_start_attempts_and_backoff_are_rejected() {
    rejected(builder().workers(1).start_attempts(0), "start_attempts(0)");
    rejected(
        builder().workers(1).start_backoff(Duration::ZERO),
        "start_backoff(0)",
    );
}

#[test]
fn empty_or_zero_worker_ranges_are_rejected() {
    rejected(builder().workers_range(0..=0), "workers_range(0..=0)");
    #[allow(clippy::reversed_empty_ranges)]
    let empty = 3..=2;
    rejected(builder().workers_range(empty), "workers_range(3..=2)");
}

#[test]
fn zero_elastic_settings_are_rejected() {
    rejected(
        builder().workers_range(1..=2).idle_timeout(Duration::ZERO),
        "idle_timeout(0)",
    );
    rejected(
        builder().workers_range(1..=2).grow_backlog(0),
        "grow_backlog(0)",
    );
}

#[test]
fn the_smallest_valid_settings_build() {
    let pool = builder()
        .workers(1)
        .queue_capacity(1)
        .timeout(Duration::from_secs(5))
        .start_attempts(1)
        .start_backoff(Duration::from_millis(1))
        .thread_name("tiny")
        .build()
        .unwrap();
    assert_eq!(pool.size(), 1);
    assert_eq!(pool.spawn(|| 3).join().unwrap(), 3);
    let name = pool
        .spawn(|| std::thread::current().name().map(str::to_owned))
        .join()
        .unwrap()
        .unwrap();
    assert!(name.starts_with("tiny-"), "{name}");
    pool.shutdown();
}

#[test]
fn default_size_is_the_available_parallelism() {
    let pool = builder().build().unwrap();
    let expected = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(pool.size(), expected);
    assert_eq!(pool.workers().len(), expected);
    pool.shutdown();
}

/// A worker whose types are serde types, so the process-only settings exist.
#[cfg(all(feature = "process", target_os = "linux"))]
struct Echo;

#[cfg(all(feature = "process", target_os = "linux"))]
impl crew::Worker for Echo {
    type Input = u32;
    type Output = u32;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut crew::Context<'_>) -> Result<Self, crew::StartError> {
        Ok(Echo)
    }

    fn run(&mut self, input: u32, _ctx: &mut crew::Context<'_>) -> Result<u32, String> {
        Ok(input)
    }
}

/// The backend is chosen by `.processes(n)` alone: a process-only setting on a
/// thread pool is refused with an error that names it, instead of silently
/// turning the pool into a process pool.
#[cfg(all(feature = "process", target_os = "linux"))]
#[test]
fn process_settings_without_processes_are_rejected() {
    let eb = || Pool::<Echo>::builder().workers(2);
    let cases: Vec<(PoolBuilder<Echo>, &str)> = vec![
        (eb().retries(2), "retries"),
        (eb().retry_on_signal(true), "retry_on_signal"),
        (eb().kill_grace(Duration::from_millis(5)), "kill_grace"),
        (eb().window(4), "window"),
        (eb().max_tasks_per_worker(10), "max_tasks_per_worker"),
        (eb().max_memory(1 << 30), "max_memory"),
        (eb().program("worker"), "program"),
        (eb().args(["a"]), "args"),
        (eb().on_output(|_, _, _| {}), "on_output"),
    ];
    for (b, setting) in cases {
        let err = match b.build() {
            Ok(pool) => {
                let backend = pool.backend_kind();
                pool.terminate();
                panic!("`{setting}` without `.processes(n)` built a {backend:?} pool");
            }
            Err(err) => err,
        };
        assert!(err.is_invalid_setting(), "{setting}: {err:?}");
        let text = err.to_string();
        assert!(text.contains(setting), "{setting}: {text}");
        assert!(text.contains(".processes(n)"), "{setting}: {text}");
    }
}
