//! Races, on both backends: shutdown against submit, cancel and kill; cancel
//! against completion; the last `Pool` dropped while tasks run; `wait_idle`
//! against submit. Each scenario is written once and run on threads and on
//! processes (whose workers re-run this test binary: `crew_worker_entry`).
//!
//! The assertions hold for every interleaving; the scenarios only make many
//! interleavings likely (threads released together by a barrier).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{join, wait_until, worker_processes, LIMIT};
use crew::{Context, Pool, PoolBuilder, StartError, Worker};

struct Echo;

impl Worker for Echo {
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Echo)
    }

    fn run(&mut self, n: u64, _ctx: &mut Context<'_>) -> Result<u64, String> {
        Ok(n)
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Echo>().run();
}

fn threads(n: usize) -> PoolBuilder<Echo> {
    Pool::<Echo>::builder().workers(n)
}

fn processes(n: usize) -> PoolBuilder<Echo> {
    worker_processes::<Echo>(n).kill_grace(Duration::from_millis(100))
}

type Make = fn(usize) -> PoolBuilder<Echo>;

/// Shutdown while three threads submit: every submit is either refused as
/// closed or runs to `Ok` (shutdown drains), and the stats reconcile.
fn shutdown_against_submit(make: Make) {
    for _round in 0..10 {
        let pool = make(2).build().unwrap();
        let start = Arc::new(Barrier::new(4));
        let accepted = Arc::new(AtomicU64::new(0));
        let submitters: Vec<_> = (0..3)
            .map(|t| {
                let (pool, start, accepted) =
                    (pool.clone(), Arc::clone(&start), Arc::clone(&accepted));
                std::thread::spawn(move || {
                    start.wait();
                    let mut tasks = Vec::new();
                    for i in 0..300u64 {
                        match pool.submit(t * 1000 + i) {
                            Ok(task) => tasks.push((t * 1000 + i, task)),
                            Err(e) => assert!(e.is_closed()),
                        }
                    }
                    accepted.fetch_add(tasks.len() as u64, SeqCst);
                    for (n, task) in tasks {
                        assert_eq!(join(task).unwrap(), n, "an accepted task runs");
                    }
                })
            })
            .collect();
        start.wait();
        pool.shutdown_timeout(LIMIT).expect("shutdown drains");
        for s in submitters {
            s.join().unwrap();
        }
        let stats = pool.stats();
        // A submit that lost the race after taking an id is refused and counted
        // as closed; every accepted one completed.
        assert_eq!(stats.completed, accepted.load(SeqCst), "{stats}");
        assert_eq!(stats.submitted, stats.completed + stats.closed, "{stats}");
        assert_eq!(stats.finished(), stats.submitted, "{stats}");
    }
}

/// Cancel from another thread as tasks complete: each handle gets exactly one
/// of the two, and the stats agree with the handles.
fn cancel_against_completion(make: Make) {
    let pool = make(2).build().unwrap();
    let tasks: Vec<_> = (0..2000u64).map(|i| pool.submit(i).unwrap()).collect();
    let tasks = Arc::new(tasks);
    let won = {
        let tasks = Arc::clone(&tasks);
        std::thread::spawn(move || tasks.iter().rev().filter(|t| t.cancel()).count() as u64)
    }
    .join()
    .unwrap();
    let tasks = Arc::try_unwrap(tasks).unwrap_or_else(|_| unreachable!());
    let (mut ok, mut cancelled) = (0u64, 0u64);
    for (i, task) in tasks.into_iter().enumerate() {
        match join(task) {
            Ok(n) => {
                assert_eq!(n, i as u64);
                ok += 1;
            }
            Err(e) if e.is_cancelled() => cancelled += 1,
            Err(e) => panic!("task {i}: {e}"),
        }
    }
    assert_eq!(
        cancelled, won,
        "a cancel that returned true is what the handle saw"
    );
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.completed, ok, "{stats}");
    assert_eq!(stats.cancelled, cancelled, "{stats}");
    assert_eq!(stats.finished(), 2000, "{stats}");
    pool.shutdown();
}

/// `kill_worker` and `shutdown` at once, with work queued: every handle
/// resolves (ok, or killed if its worker was the victim), and nothing hangs.
fn kill_against_shutdown(make: Make) {
    for _round in 0..5 {
        let pool = make(2).build().unwrap();
        wait_until("both workers are up", || {
            pool.stats().per_worker.iter().filter(|w| w.started).count() == 2
        });
        let tasks: Vec<_> = (0..500u64).map(|i| pool.submit(i).unwrap()).collect();
        let victim = pool.workers()[0];
        let start = Arc::new(Barrier::new(2));
        let killer = {
            let (pool, start) = (pool.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                pool.kill_worker(victim);
            })
        };
        start.wait();
        pool.shutdown_timeout(LIMIT).expect("shutdown ends");
        killer.join().unwrap();
        for (i, task) in tasks.into_iter().enumerate() {
            match join(task) {
                Ok(n) => assert_eq!(n, i as u64),
                Err(e) => assert!(e.is_killed(), "task {i}: {e}"),
            }
        }
        let stats = pool.stats();
        assert_eq!(stats.finished(), 500, "{stats}");
    }
}

/// The last handle dropped while tasks run: they still run to the end (the
/// pool drains), and the workers leave afterwards.
fn last_handle_dropped_while_tasks_run(make: Make) {
    let pool = make(2).build().unwrap();
    let events = pool.events();
    let tasks: Vec<_> = (0..1000u64).map(|i| pool.submit(i).unwrap()).collect();
    drop(pool);
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(join(task).unwrap(), i as u64);
    }
    // The event stream ends once every worker has left.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left) {
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("the workers did not leave: {e:?}"),
        }
    }
}

/// `wait_idle` while another thread keeps submitting: it never hangs, and once
/// the submitter stops it returns with nothing queued or running.
fn wait_idle_against_submit(make: Make) {
    let pool = make(2).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = {
        let (pool, stop) = (pool.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(SeqCst) && n < 20_000 {
                let task = pool.submit(n).unwrap();
                if n.is_multiple_of(64) {
                    assert_eq!(join(task).unwrap(), n);
                }
                n += 1;
            }
            n
        })
    };
    for _ in 0..50 {
        // Either answer is fine while work keeps coming; it must not hang.
        let _ = pool.wait_idle_timeout(Duration::from_millis(1));
    }
    stop.store(true, SeqCst);
    let submitted = submitter.join().unwrap();
    assert!(pool.wait_idle_timeout(LIMIT), "{}", pool.stats());
    let stats = pool.stats();
    assert_eq!((stats.queued, stats.busy), (0, 0), "{stats}");
    assert_eq!(stats.completed, submitted, "{stats}");
    pool.shutdown();
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod on_threads {
            $(#[test] fn $scenario() { super::$scenario(super::threads) })*
        }
        mod on_processes {
            $(#[test] fn $scenario() { super::$scenario(super::processes) })*
        }
    };
}

on_both_backends!(
    shutdown_against_submit,
    cancel_against_completion,
    kill_against_shutdown,
    last_handle_dropped_while_tasks_run,
    wait_idle_against_submit,
);
