//! `Worker::start` failing: when no worker can start, waiting tasks fail with a
//! start error (they do not hang); a worker whose start fails for a while and then
//! succeeds runs tasks.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::{join, wait_until, LIMIT};
use crew::{Context, Pool, PoolBuilder, StartError, Worker};

fn builder<W: Worker>(workers: usize, attempts: u32) -> PoolBuilder<W> {
    Pool::<W>::builder()
        .workers(workers)
        .start_attempts(attempts)
        .start_backoff(Duration::from_millis(5))
}

static NEVER_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

/// A worker whose start always fails.
struct NeverStarts;

impl Worker for NeverStarts {
    type Input = u32;
    type Output = u32;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        NEVER_ATTEMPTS.fetch_add(1, SeqCst);
        Err("database unreachable".into())
    }

    fn run(&mut self, n: u32, _ctx: &mut Context<'_>) -> Result<u32, Self::Error> {
        Ok(n)
    }
}

#[test]
fn tasks_fail_with_the_start_error_when_no_worker_can_start() {
    let pool = builder::<NeverStarts>(2, 2).build().unwrap();
    let tasks: Vec<_> = (0..5).map(|i| pool.submit(i).unwrap()).collect();
    for t in tasks {
        let err = join(t).unwrap_err();
        assert!(err.is_start_failure(), "{err:?}");
        assert_eq!(err.start_error_message(), Some("database unreachable"));
        assert!(err.to_string().contains("database unreachable"), "{err}");
    }
    assert!(NEVER_ATTEMPTS.load(SeqCst) >= 2, "start was attempted");

    // While no start succeeds, new tasks fail too, rather than wait.
    let late = join(pool.submit(99).unwrap()).unwrap_err();
    assert!(late.is_start_failure(), "{late:?}");

    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.start_failed, 6, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    assert!(
        stats.per_worker.iter().all(|w| !w.started),
        "no worker started: {stats:?}"
    );
    // The pool itself reports the failing start, not only the tasks.
    assert!(stats.start_failures >= 2, "{stats:?}");
    assert_eq!(
        stats.last_start_error.as_deref(),
        Some("database unreachable")
    );
    assert!(
        stats.to_string().contains("database unreachable"),
        "{stats}"
    );
    pool.shutdown_timeout(LIMIT)
        .expect("a pool whose workers never started shuts down");
}

/// A worker whose start panics: a panic in start is a start failure too.
struct PanicsInStart;

impl Worker for PanicsInStart {
    type Input = ();
    type Output = ();
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        panic!("config file missing")
    }

    fn run(&mut self, _: (), _ctx: &mut Context<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[test]
fn a_panic_in_start_is_a_start_failure() {
    let pool = builder::<PanicsInStart>(1, 2).build().unwrap();
    let err = join(pool.submit(()).unwrap()).unwrap_err();
    assert!(err.is_start_failure(), "{err:?}");
    let message = err.start_error_message().unwrap();
    assert!(message.contains("config file missing"), "{message}");
    pool.shutdown_timeout(LIMIT).unwrap();
}

/// Start fails `FAILS` times (pool-wide), then succeeds. Each test has its own
/// counter, picked by `N`.
static FLAKY_ATTEMPTS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
const FAILS: usize = 2;

struct Flaky<const N: usize>;

impl<const N: usize> Worker for Flaky<N> {
    type Input = u32;
    type Output = u32;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        if FLAKY_ATTEMPTS[N].fetch_add(1, SeqCst) < FAILS {
            Err("warming up".into())
        } else {
            Ok(Flaky)
        }
    }

    fn run(&mut self, n: u32, _ctx: &mut Context<'_>) -> Result<u32, Self::Error> {
        Ok(n + 1)
    }
}

#[test]
fn queued_tasks_run_once_a_flaky_start_succeeds() {
    // More attempts than failures: the pool never gives up, so tasks queued
    // before the first successful start wait for it and run.
    let pool = builder::<Flaky<0>>(1, 5).build().unwrap();
    let tasks: Vec<_> = (0..10).map(|i| pool.submit(i).unwrap()).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i as u32 + 1);
    }
    assert_eq!(FLAKY_ATTEMPTS[0].load(SeqCst), FAILS + 1);
    pool.shutdown();
}

#[test]
fn a_worker_that_starts_after_the_pool_gave_up_runs_new_tasks() {
    // As many attempts as failures: the pool gives up on waiting tasks, and the
    // worker keeps retrying until its start succeeds.
    let pool = builder::<Flaky<1>>(1, 2).build().unwrap();
    let early = pool.submit(0).unwrap();
    match join(early) {
        Ok(out) => assert_eq!(out, 1),
        Err(e) => assert_eq!(e.start_error_message(), Some("warming up"), "{e:?}"),
    }
    wait_until("the worker starts", || {
        pool.stats().per_worker.iter().any(|w| w.started)
    });
    let tasks: Vec<_> = (0..10).map(|i| pool.submit(i).unwrap()).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            join(t).unwrap(),
            i as u32 + 1,
            "runs once a start succeeded"
        );
    }
    assert_eq!(FLAKY_ATTEMPTS[1].load(SeqCst), FAILS + 1);
    pool.shutdown();
}

static REBUILD_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

/// Starts once; every later start (the rebuild after a panic) fails.
struct StartsOnce;

impl Worker for StartsOnce {
    type Input = bool;
    type Output = ();
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        if REBUILD_ATTEMPTS.fetch_add(1, SeqCst) == 0 {
            Ok(StartsOnce)
        } else {
            Err("cannot reconnect".into())
        }
    }

    fn run(&mut self, panic: bool, _ctx: &mut Context<'_>) -> Result<(), Self::Error> {
        assert!(!panic, "asked to panic");
        Ok(())
    }
}

#[test]
fn a_rebuild_that_cannot_start_fails_queued_tasks_instead_of_hanging() {
    let pool = builder::<StartsOnce>(1, 2).build().unwrap();
    join(pool.submit(false).unwrap()).unwrap();
    let panicked = pool.submit(true).unwrap();
    let queued: Vec<_> = (0..5).map(|_| pool.submit(false).unwrap()).collect();
    assert!(join(panicked).unwrap_err().is_panic());
    for t in queued {
        let err = join(t).unwrap_err();
        assert_eq!(
            err.start_error_message(),
            Some("cannot reconnect"),
            "{err:?}"
        );
    }
    pool.shutdown_timeout(LIMIT).unwrap();
}
