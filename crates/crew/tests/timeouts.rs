//! Task timeouts: the clock starts when the task starts running; a task past its
//! timeout resolves `TimedOut`; a thread that never comes back is abandoned and
//! replaced, so the pool keeps its size.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::{block_workers, join, wait_until, Flag, Gate, OpenOnDrop, LIMIT};
use crew::Pool;

/// How long the blocker holds the only worker: longer than the queued task's
/// timeout. The pause only makes the failure possible (a clock started at
/// submission would expire in it); nothing is asserted about how long anything
/// took.
const HELD: Duration = Duration::from_millis(500);
const SHORT: Duration = Duration::from_millis(200);
/// How long the queued task runs once started: well under `SHORT`, but long
/// enough for the monitor to resolve it if its clock had started at submission.
const WORK: Duration = Duration::from_millis(20);

/// Runs for `WORK` (or until cancelled) and returns `value`.
fn work(ctx: &crew::Context<'_>, value: u32) -> u32 {
    let until = Instant::now() + WORK;
    while Instant::now() < until && !ctx.is_cancelled() {
        std::thread::sleep(Duration::from_millis(1));
    }
    value
}

#[test]
fn a_timeout_does_not_run_while_queued() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate);

    let queued = pool.job(|ctx| work(ctx, 5)).timeout(SHORT).spawn();
    std::thread::sleep(HELD);
    assert!(!queued.is_finished(), "a queued task cannot time out");
    gate.open();
    assert_eq!(join(queued).unwrap(), 5);
    for b in blocker {
        join(b).unwrap();
    }
    assert_eq!(pool.stats().timed_out, 0);
    pool.shutdown();
}

#[test]
fn the_pool_default_timeout_also_starts_at_run() {
    let pool = Pool::builder().workers(1).timeout(SHORT).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let started = Flag::new();
    let blocker = {
        let (gate, started) = (gate.clone(), started.clone());
        // Its own, longer timeout overrides the pool's.
        pool.job(move |_ctx| {
            started.set();
            gate.wait();
        })
        .timeout(Duration::from_secs(60))
        .spawn()
    };
    wait_until("the blocker runs", || started.get());

    let queued = pool.spawn_with(|ctx| work(ctx, 6));
    std::thread::sleep(HELD);
    gate.open();
    join(blocker).unwrap();
    assert_eq!(join(queued).unwrap(), 6);
    pool.shutdown();
}

#[test]
fn a_running_task_that_checks_cancellation_times_out() {
    // A grace far longer than the task needs to notice: it keeps its thread.
    let pool = Pool::builder()
        .workers(2)
        .abandon_grace(LIMIT)
        .build()
        .unwrap();
    let before = pool.workers();
    let observed = Flag::new();
    let task = {
        let observed = observed.clone();
        pool.job(move |ctx| {
            let deadline = Instant::now() + LIMIT;
            while !ctx.is_cancelled() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if ctx.is_cancelled() {
                observed.set();
            }
            "returned"
        })
        .timeout(Duration::from_millis(50))
        .spawn()
    };
    let err = join(task).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    wait_until("the task sees the timeout as a cancellation", || {
        observed.get()
    });
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.timed_out, 1, "{stats}");
    assert_eq!(stats.abandoned_threads, 0, "{stats}");
    assert_eq!(
        pool.workers(),
        before,
        "a task that returns keeps its worker"
    );
    pool.shutdown();
}

/// Lets the stuck task of `a_task_that_never_returns_...` go at the end of the test.
static RELEASE_STUCK: AtomicBool = AtomicBool::new(false);

struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        RELEASE_STUCK.store(true, SeqCst);
    }
}

#[test]
fn a_task_that_never_returns_is_abandoned_and_replaced() {
    let _release = ReleaseOnDrop;
    let pool = Pool::builder()
        .workers(2)
        .abandon_grace(Duration::from_millis(20))
        .build()
        .unwrap();
    let original = pool.workers();
    assert_eq!(original.len(), 2);

    let (tx, rx) = std::sync::mpsc::channel();
    let stuck = pool
        .job(move |ctx| {
            tx.send(ctx.worker_id()).unwrap();
            // Ignores cancellation: only the test's flag gets it out.
            while !RELEASE_STUCK.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .timeout(Duration::from_millis(50))
        .spawn();
    let stuck_worker = rx.recv_timeout(LIMIT).unwrap();

    let err = join(stuck).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    wait_until("the stuck worker is replaced", || {
        let now = pool.workers();
        now.len() == 2 && !now.contains(&stuck_worker)
    });
    let replacement: Vec<_> = pool
        .workers()
        .into_iter()
        .filter(|id| !original.contains(id))
        .collect();
    assert_eq!(replacement.len(), 1, "one new worker id");
    assert_eq!(pool.stats().abandoned_threads, 1);

    // The pool keeps working at full size.
    let tasks: Vec<_> = (0..50_u32).map(|i| pool.spawn(move || i)).collect();
    let sum: u32 = tasks.into_iter().map(|t| join(t).unwrap()).sum();
    assert_eq!(sum, 1225);
    assert_eq!(pool.workers().len(), 2);

    // Once the stuck code returns, its thread leaves.
    RELEASE_STUCK.store(true, SeqCst);
    wait_until("the abandoned thread exits", || {
        pool.stats().abandoned_threads == 0
    });
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.timed_out, 1, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    pool.shutdown();
}
