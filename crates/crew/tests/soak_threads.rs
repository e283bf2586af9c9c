//! Fault-injection soak on the thread backend: a seeded mix of tasks that succeed,
//! return errors, panic, are cancelled before or while running, or time out, while
//! a chaos thread kills workers. Every handle must resolve exactly once, with an
//! outcome the injected fault allows; the stats must reconcile with what was
//! submitted; and the pool must end at its size.
//!
//! `CREW_SOAK_TASKS` (default 100,000) and `CREW_SOAK_SEED` replay a run; the seed
//! is printed on failure.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Rng, LIMIT};
use crew::{Context, Pool, StartError, Task, TaskError, Worker};

/// The fault a task carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Returns `Ok(id)`.
    None,
    /// Returns the worker's own error, `Err(id)`.
    UserError,
    /// Panics with a message naming the id.
    Panic,
    /// Cancelled right after submission (it may or may not have started).
    CancelEarly,
    /// Runs until cancelled; the test cancels it once it has started.
    CancelRunning,
    /// Runs (cooperatively) far past a short timeout.
    TimeOut,
}

struct Soak;

impl Worker for Soak {
    type Input = (u64, Fault);
    type Output = u64;
    type Error = u64;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Soak)
    }

    fn run(&mut self, (id, fault): (u64, Fault), ctx: &mut Context<'_>) -> Result<u64, u64> {
        match fault {
            Fault::None | Fault::CancelEarly => Ok(id),
            Fault::UserError => Err(id),
            Fault::Panic => panic!("injected panic in task {id}"),
            Fault::CancelRunning | Fault::TimeOut => {
                // Cooperative: returns once cancelled (or after a generous bound,
                // so a lost cancellation shows up as a wrong outcome, not a hang).
                let deadline = std::time::Instant::now() + LIMIT;
                while !ctx.is_cancelled() && std::time::Instant::now() < deadline {
                    std::thread::yield_now();
                }
                Ok(id)
            }
        }
    }
}

/// Whether `result` is an outcome that `fault` allows. A kill can hit any task
/// that was running (the chaos thread kills workers at random), so `Killed` is
/// allowed for every fault; `cancelled` says whether this test's `cancel()` call
/// reported that it resolved the task.
fn allowed(id: u64, fault: Fault, cancelled: bool, result: &Result<u64, TaskError<u64>>) -> bool {
    if let Err(e) = result {
        if e.is_killed() {
            return !cancelled;
        }
    }
    if cancelled {
        return matches!(result, Err(e) if e.is_cancelled());
    }
    match (fault, result) {
        (Fault::None | Fault::CancelEarly, Ok(v)) => *v == id,
        (Fault::UserError, Err(e)) => e.user_error() == Some(&id),
        (Fault::Panic, Err(e)) => e
            .panic_message()
            .is_some_and(|m| m == format!("injected panic in task {id}")),
        (Fault::TimeOut, Err(e)) => e.is_timeout(),
        // A running task whose cancel lost the race to a kill is handled above;
        // any other ending of CancelRunning without a winning cancel is wrong.
        _ => false,
    }
}

#[test]
fn every_task_resolves_once_with_the_outcome_its_fault_implies() {
    let tasks: u64 = std::env::var("CREW_SOAK_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("CREW_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0ffee);
    eprintln!("soak: {tasks} tasks, CREW_SOAK_SEED={seed}");
    // Thousands of injected panics would each print a report (and a backtrace);
    // keep the default hook for every other panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("injected panic"));
        if !injected {
            default_hook(info);
        }
    }));
    let result = std::panic::catch_unwind(|| soak(tasks, seed));
    if let Err(panic) = result {
        eprintln!("soak FAILED; replay with CREW_SOAK_SEED={seed} CREW_SOAK_TASKS={tasks}");
        std::panic::resume_unwind(panic);
    }
}

fn soak(tasks: u64, seed: u64) {
    const WORKERS: usize = 4;
    let pool = Pool::<Soak>::builder()
        // Elastic: it grows under the burst and shrinks back when idle, so the
        // soak also resizes the pool while the chaos thread kills workers.
        .workers_range(WORKERS..=WORKERS + 4)
        .idle_timeout(Duration::from_millis(5))
        .abandon_grace(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = Rng::new(seed);

    // The chaos thread kills a random live worker now and then until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let largest = Arc::new(AtomicUsize::new(0));
    let chaos = {
        let (pool, stop, kills) = (pool.clone(), Arc::clone(&stop), Arc::clone(&kills));
        let largest = Arc::clone(&largest);
        let mut rng = Rng::new(seed.rotate_left(17));
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                // Pacing only: no assertion depends on how many kills happen.
                std::thread::sleep(Duration::from_millis(2));
                let workers = pool.workers();
                largest.fetch_max(workers.len(), SeqCst);
                if !workers.is_empty() {
                    let victim = workers[rng.below(workers.len() as u64) as usize];
                    if pool.kill_worker(victim) {
                        kills.fetch_add(1, SeqCst);
                    }
                }
            }
        })
    };

    let mut handles: Vec<(u64, Fault, bool, Task<u64, u64>)> = Vec::with_capacity(tasks as usize);
    let mut running_to_cancel: Vec<usize> = Vec::new();
    for id in 0..tasks {
        let fault = match rng.below(100) {
            0..=79 => Fault::None,
            80..=84 => Fault::UserError,
            85..=89 => Fault::Panic,
            90..=94 => Fault::CancelEarly,
            95..=97 => Fault::TimeOut,
            _ => Fault::CancelRunning,
        };
        let task = match fault {
            Fault::TimeOut => pool
                .task((id, fault))
                .timeout(Duration::from_millis(1))
                .submit(),
            _ => pool.submit((id, fault)),
        }
        .expect("the pool is open");
        let cancelled = fault == Fault::CancelEarly && task.cancel();
        if fault == Fault::CancelRunning {
            running_to_cancel.push(handles.len());
        }
        handles.push((id, fault, cancelled, task));
        // Keep the queue from growing without bound while tasks run cooperatively.
        if id % 1_000 == 999 {
            for &at in &running_to_cancel {
                let (_, _, cancelled, task) = &mut handles[at];
                wait_until("the task started", || {
                    task.worker().is_some() || task.is_finished()
                });
                *cancelled = task.cancel();
            }
            running_to_cancel.clear();
        }
    }
    for &at in &running_to_cancel {
        let (_, _, cancelled, task) = &mut handles[at];
        wait_until("the task started", || {
            task.worker().is_some() || task.is_finished()
        });
        *cancelled = task.cancel();
    }

    let mut seen = std::collections::HashMap::<&'static str, u64>::new();
    for (id, fault, cancelled, task) in handles {
        let result = match task.join_timeout(LIMIT) {
            Ok(r) => r,
            Err(_) => panic!("task {id} ({fault:?}) did not resolve"),
        };
        assert!(
            allowed(id, fault, cancelled, &result),
            "task {id}: fault {fault:?}, cancel won {cancelled}, got {result:?}"
        );
        let kind = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_user() => "err",
            Err(e) if e.is_panic() => "panic",
            Err(e) if e.is_cancelled() => "cancelled",
            Err(e) if e.is_timeout() => "timed out",
            Err(e) if e.is_killed() => "killed",
            Err(e) => panic!("task {id}: unexpected {e:?}"),
        };
        *seen.entry(kind).or_default() += 1;
    }
    stop.store(true, SeqCst);
    chaos.join().unwrap();
    eprintln!(
        "soak: outcomes {seen:?}, workers killed {}, largest pool {}",
        kills.load(SeqCst),
        largest.load(SeqCst)
    );

    // Every handle resolved exactly once (each was joined once, above); now the
    // pool's own counters must agree with what the handles saw.
    assert!(pool.wait_idle_timeout(LIMIT), "{}", pool.stats());
    let stats = pool.stats();
    let count = |k: &str| seen.get(k).copied().unwrap_or(0);
    assert_eq!(stats.submitted, tasks, "{stats}");
    assert_eq!(stats.finished(), tasks, "{stats}");
    assert_eq!(stats.completed, count("ok"), "{stats}");
    assert_eq!(stats.failed, count("err"), "{stats}");
    assert_eq!(stats.panicked, count("panic"), "{stats}");
    assert_eq!(stats.cancelled, count("cancelled"), "{stats}");
    assert_eq!(stats.timed_out, count("timed out"), "{stats}");
    assert_eq!(stats.killed, count("killed"), "{stats}");
    assert!(count("panic") > 0 && count("timed out") > 0 && count("cancelled") > 0);
    assert!(kills.load(SeqCst) > 0, "the chaos thread killed nothing");

    assert!(
        largest.load(SeqCst) > WORKERS,
        "the pool never grew under the burst"
    );
    assert!(
        largest.load(SeqCst) <= WORKERS + 4,
        "the pool grew past its maximum: {}",
        largest.load(SeqCst)
    );
    // Idle again, the pool shrinks back to its minimum (and kept at least that
    // through every kill).
    wait_until("the pool is back to its size", || {
        pool.workers().len() == WORKERS
    });
    pool.shutdown_timeout(LIMIT).expect("the pool drains");
}
