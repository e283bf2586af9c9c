//! Helpers shared by the integration tests: waiting on a condition with a deadline,
//! a gate that holds tasks until the test opens it, a bounded join, reading events
//! with a deadline, a seeded generator, and process pools that re-run the test
//! binary as their worker.
//!
//! Each test binary uses a different subset.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use std::sync::mpsc::RecvTimeoutError;

use crew::{Event, Events, Pool, Task, TaskError};

/// How long any wait in a test may take before the test fails instead of hanging.
pub(crate) const LIMIT: Duration = Duration::from_secs(10);

/// Polls `condition` until it holds; panics with `what` after [`LIMIT`].
#[track_caller]
pub(crate) fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {LIMIT:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Joins `task`, failing the test if it has not resolved within [`LIMIT`].
#[track_caller]
pub(crate) fn join<T, E>(task: Task<T, E>) -> Result<T, TaskError<E>> {
    match task.join_timeout(LIMIT) {
        Ok(result) => result,
        Err(task) => panic!("{task:?} did not resolve within {LIMIT:?}"),
    }
}

/// A latch: `wait` blocks until `open` has been called. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn open(&self) {
        let (lock, cond) = &*self.0;
        *lock.lock().unwrap() = true;
        cond.notify_all();
    }

    pub(crate) fn is_open(&self) -> bool {
        *self.0 .0.lock().unwrap()
    }

    /// Blocks until the gate opens; panics after [`LIMIT`] so that a broken test
    /// cannot leave a thread behind for ever.
    pub(crate) fn wait(&self) {
        let (lock, cond) = &*self.0;
        let deadline = Instant::now() + LIMIT;
        let mut open = lock.lock().unwrap();
        while !*open {
            let now = Instant::now();
            assert!(now < deadline, "gate never opened");
            open = cond.wait_timeout(open, deadline - now).unwrap().0;
        }
    }
}

/// Opens the gate when dropped, so a failing assertion does not leave workers
/// blocked behind it.
pub(crate) struct OpenOnDrop(pub(crate) Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Counts how many tasks have reached a point.
#[derive(Clone, Default)]
pub(crate) struct Counter(Arc<AtomicUsize>);

impl Counter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, SeqCst);
    }

    pub(crate) fn get(&self) -> usize {
        self.0.load(SeqCst)
    }

    #[track_caller]
    pub(crate) fn wait_for(&self, n: usize) {
        wait_until(&format!("the counter reaches {n}"), || self.get() >= n);
    }
}

/// A flag shared with a task.
#[derive(Clone, Default)]
pub(crate) struct Flag(Arc<AtomicBool>);

impl Flag {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn set(&self) {
        self.0.store(true, SeqCst);
    }

    pub(crate) fn get(&self) -> bool {
        self.0.load(SeqCst)
    }
}

/// Sets its flag when dropped: proves that a closure or an input was dropped.
pub(crate) struct SetOnDrop(pub(crate) Flag);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// Occupies every one of `pool`'s `n` workers with a task that waits on `gate`
/// (ignoring cancellation), and returns once all `n` are running.
#[track_caller]
pub(crate) fn block_workers(pool: &Pool, n: usize, gate: &Gate) -> Vec<Task<()>> {
    let started = Counter::new();
    let blockers = (0..n)
        .map(|_| {
            let gate = gate.clone();
            let started = started.clone();
            pool.spawn(move || {
                started.bump();
                gate.wait();
            })
        })
        .collect();
    started.wait_for(n);
    blockers
}

/// Receives events until `pick` returns something; fails the test after [`LIMIT`].
#[track_caller]
pub(crate) fn wait_for_event<T>(
    events: &Events,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => {
                if let Some(found) = pick(event) {
                    return found;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("no {what} within {LIMIT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the stream ended before {what}"),
        }
    }
}

/// Receives events until `done` holds for what was received so far; fails the
/// test after [`LIMIT`].
#[track_caller]
pub(crate) fn recv_until(events: &Events, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(RecvTimeoutError::Timeout) => panic!("timed out; saw {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("stream ended; saw {seen:#?}"),
        }
    }
    seen
}

/// Receives everything until the stream ends (the pool must be shut down).
#[track_caller]
pub(crate) fn recv_to_end(events: &Events) -> Vec<Event> {
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(RecvTimeoutError::Disconnected) => return seen,
            Err(RecvTimeoutError::Timeout) => panic!("stream did not end; saw {seen:#?}"),
        }
    }
}

/// xorshift64*: a tiny deterministic generator, so a seed replays a run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// A generator for `seed` (0 is made odd: xorshift never leaves 0).
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The arguments that make this test binary run only its `crew_worker_entry`
/// test, the worker processes' `main` (it calls `crew::Bootstrap`).
pub(crate) const WORKER_ENTRY: [&str; 5] = [
    "crew_worker_entry",
    "--exact",
    "--nocapture",
    "--test-threads=1",
    "-q",
];

/// A process pool of `n` workers that re-run this test binary
/// ([`WORKER_ENTRY`]), with their output dropped and a short kill grace.
#[cfg(all(feature = "process", target_os = "linux"))]
pub(crate) fn worker_processes<W: crew::RemoteWorker>(n: usize) -> crew::PoolBuilder<W> {
    Pool::<W>::builder()
        .processes(n)
        .args(WORKER_ENTRY)
        .on_output(|_, _, _| {})
        .kill_grace(Duration::from_millis(200))
}
