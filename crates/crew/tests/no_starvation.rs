//! No starvation: while a feeder keeps the `High` queue full, a `Low` (or
//! `Normal`) task queued before the flood still runs, and runs *during* the
//! flood, not after it (`scheduler/queues.rs`, "Priorities").

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{block_workers, join, wait_until, Counter, Flag, Gate, OpenOnDrop, LIMIT};
use crew::{Pool, Priority};

/// `High` tasks the feeder keeps queued.
const BACKLOG: usize = 256;

/// How long each `High` task keeps the worker busy: long enough that the feeder
/// (topping the backlog up between yields) stays ahead of the worker, so the
/// `High` queue never runs dry while the flood lasts.
const HIGH_TASK: Duration = Duration::from_micros(20);

/// Keeps the thread busy for `d` (paces the flood; asserts nothing).
fn busy_for(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Joins a helper thread, failing the test if it has not finished within `LIMIT`.
#[track_caller]
fn join_thread<T>(handle: JoinHandle<T>) -> T {
    wait_until("a helper thread finishes", || handle.is_finished());
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Stops the feeder when dropped, so a failing assertion does not leave it
/// flooding the pool.
struct StopOnDrop(Flag);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

fn runs_during_a_flood_of_high(level: Priority) {
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate);

    // High tasks queued and started; their difference is the High backlog.
    let (queued_high, started_high) = (Counter::new(), Counter::new());
    let stop = Flag::new();
    let _stop = StopOnDrop(stop.clone());

    // Queued first, behind the blocker: when it runs it records how many High
    // tasks were still waiting.
    let (waiting_high_at_run, done) = (Arc::new(AtomicUsize::new(0)), Flag::new());
    let early = {
        let (queued, started, at_run, done) = (
            queued_high.clone(),
            started_high.clone(),
            Arc::clone(&waiting_high_at_run),
            done.clone(),
        );
        pool.job(move |_ctx| {
            at_run.store(queued.get().saturating_sub(started.get()), SeqCst);
            done.set();
        })
        .priority(level)
        .spawn()
    };

    // The feeder keeps at least BACKLOG High tasks queued until it sees the early
    // task finished; past its deadline it gives up and reports how many it sent.
    let feeder = {
        let (pool, queued, started, done, stop) = (
            pool.clone(),
            queued_high.clone(),
            started_high.clone(),
            done.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || -> Result<usize, usize> {
            let deadline = Instant::now() + LIMIT / 2;
            while !done.get() {
                if stop.get() || Instant::now() >= deadline {
                    return Err(queued.get());
                }
                while queued.get().saturating_sub(started.get()) < BACKLOG {
                    queued.bump();
                    let started = started.clone();
                    // Detached: the pool's counters account for them.
                    drop(
                        pool.job(move |_ctx| {
                            started.bump();
                            busy_for(HIGH_TASK);
                        })
                        .priority(Priority::High)
                        .spawn(),
                    );
                }
                std::thread::yield_now();
            }
            Ok(queued.get())
        })
    };
    wait_until("the High backlog is queued", || {
        queued_high.get() >= BACKLOG
    });
    gate.open();

    let sent = join_thread(feeder).unwrap_or_else(|sent| {
        panic!(
            "the {level:?} task had not run after {sent} High tasks \
             ({} of them run)",
            started_high.get()
        )
    });
    join(early).unwrap();
    assert!(
        waiting_high_at_run.load(SeqCst) > 0,
        "the {level:?} task ran only once no High task was waiting: not during the flood"
    );
    for t in blocker {
        join(t).unwrap();
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.completed, sent as u64 + 2, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    pool.shutdown();
}

#[test]
fn low_runs_during_a_flood_of_high() {
    runs_during_a_flood_of_high(Priority::Low);
}

#[test]
fn normal_runs_during_a_flood_of_high() {
    runs_during_a_flood_of_high(Priority::Normal);
}
