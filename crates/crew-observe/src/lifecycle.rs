//! `Lifecycle`: counts what [`crew::Stats`] does not keep — worker restarts,
//! crashes, recycles — by reading the pool's event stream on a thread of its
//! own, and collects recent task latencies for the dashboard's charts.
//!
//! # Cost
//!
//! Unlike reading `stats()`, this is **not free on the hot path**: while any
//! [`crew::Events`] subscriber exists, every task emits two events (each takes
//! the pool's event-bus lock and the subscriber's lock briefly), and a thread
//! pool measures every task instead of sampling one in eight. That is why the
//! metrics exporter only subscribes when asked
//! ([`Metrics::pool_with_events`](crate::Metrics::pool_with_events)), and why
//! the dashboard, which needs these figures, says so in its docs. Measured
//! (BENCHMARKS.md, "Exporter on vs off"): a round trip on an idle pool (W2)
//! costs about 10% more on threads and 4–7% more on processes, and tiny
//! tasks (W1) take about 70% more CPU on threads and 30% more on processes;
//! on threads most of that is the two workers contending for the event bus's
//! locks.
//!
//! # How the reader reads: in batches, not one wake-up per event
//!
//! A reader blocked in `recv` is woken by the pool for every event: a futex
//! wake and a context switch per event, paid by the worker that emits it and
//! by the cores it runs on. That made a round trip on threads more than twice
//! as slow (W2 p50 2.9 µs without an observer, 6.3–6.5 µs with one) and
//! halved W1 on processes. So the reader blocks only while the stream is
//! quiet: once an event arrives it drains what is buffered, sleeps
//! `DRAIN_EVERY` (1 ms), and drains again, and goes back to blocking only
//! after a drain that found nothing. While events flow, the pool never has a
//! reader to wake. (Half a millisecond was tried too: more wake-ups of the
//! reader, and W2's p99 on threads went from about 4 µs to 36–125 µs.)
//!
//! # Loss
//!
//! The pool never waits for this reader: when its buffer is full the pool
//! drops the new event and counts it. The counts carry that number
//! (`events_dropped`, brought up to date after every drain), so a reader
//! knows how short they may be. With the pool's default buffer (1,024
//! events), draining every millisecond keeps up while fewer than about a
//! thousand events arrive per millisecond: W2 on threads (one task at a time,
//! about 600,000 events a second) lost none in 9 runs of 10 and a sixth in
//! the other, on a loaded two-core machine. Past that the pool drops events
//! whichever way they are read: under W1 (millions a second) the blocking
//! reader lost about 80% of them and this one about 85%. A pool that must
//! not lose its worker events under such a load needs a larger
//! `PoolBuilder::event_buffer`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crew::{Event, Events, ExitReason, Pool, Worker};

use crate::snapshot::LifecycleJson;

/// Samples kept per window for the windowed percentiles; past this the window
/// keeps its first samples only (the dashboard's chart says "sampled").
const WINDOW_CAP: usize = 50_000;

/// How long the reader blocks waiting for an event on a quiet stream before it
/// checks whether it should stop.
const POLL: Duration = Duration::from_millis(100);

/// How long the reader sleeps between two drains while events flow (module
/// docs: it sleeps rather than blocks, so the pool does not wake it).
const DRAIN_EVERY: Duration = Duration::from_millis(1);

/// Counts a pool's worker lifecycle events on a thread of its own. Dropping it
/// stops the thread and unsubscribes.
#[must_use = "dropping a Lifecycle stops counting"]
pub struct Lifecycle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Written by the reader thread, read by whoever asks for counts or a window.
struct Shared {
    counts: Mutex<LifecycleJson>,
    window: Mutex<Window>,
    /// Set by `Drop`; the reader checks it every `POLL`.
    stop: AtomicBool,
}

/// Task latencies (nanoseconds) seen since the last [`Lifecycle::take_window`].
#[derive(Default)]
pub(crate) struct Window {
    pub(crate) run: Vec<u64>,
    pub(crate) wait: Vec<u64>,
    /// Tasks that finished in this window, sampled or not.
    pub(crate) finished: u64,
}

impl Lifecycle {
    /// Subscribes to `pool`'s events and starts counting. Fails only if the OS
    /// refuses a thread.
    pub fn watch<W: Worker>(pool: &Pool<W>) -> std::io::Result<Lifecycle> {
        let events = pool.events();
        let shared = Arc::new(Shared {
            counts: Mutex::new(LifecycleJson::default()),
            window: Mutex::new(Window::default()),
            stop: AtomicBool::new(false),
        });
        let reader = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("crew-observe-events".into())
            .spawn(move || reader.read(&events))?;
        Ok(Lifecycle {
            shared,
            thread: Some(thread),
        })
    }

    /// What has been counted so far.
    pub fn counts(&self) -> LifecycleJson {
        *lock(&self.shared.counts)
    }

    /// The latencies seen since the last call, leaving an empty window.
    pub(crate) fn take_window(&self) -> Window {
        std::mem::take(&mut *lock(&self.shared.window))
    }
}

impl Shared {
    /// The reader thread: blocks while the stream is quiet, drains in batches
    /// while it flows (module docs), until `stop` or the end of the stream.
    fn read(&self, events: &Events) {
        while !self.stop.load(Ordering::Relaxed) {
            // Quiet: wait for the next event (one wake-up), or for POLL.
            match events.recv_timeout(POLL) {
                Ok(event) => self.record(&event),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Flowing: take what is buffered, sleep, again, until a drain
            // finds nothing.
            loop {
                let mut drained = 0u64;
                let ended = loop {
                    match events.try_recv() {
                        Ok(event) => {
                            self.record(&event);
                            drained += 1;
                        }
                        Err(TryRecvError::Empty) => break false,
                        Err(TryRecvError::Disconnected) => break true,
                    }
                };
                lock(&self.counts).events_dropped = events.dropped();
                if ended {
                    return;
                }
                if drained == 0 || self.stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(DRAIN_EVERY);
            }
        }
        lock(&self.counts).events_dropped = events.dropped();
    }

    fn record(&self, event: &Event) {
        match event {
            Event::TaskFinished { waited, ran, .. } => {
                let mut w = lock(&self.window);
                w.finished += 1;
                if w.run.len() < WINDOW_CAP {
                    w.run.push(nanos(*ran));
                    w.wait.push(nanos(*waited));
                }
                return;
            }
            Event::TaskDiscarded { .. } => {
                lock(&self.window).finished += 1;
                return;
            }
            _ => {}
        }
        let mut c = lock(&self.counts);
        match event {
            Event::WorkerStarted { .. } => c.started += 1,
            Event::WorkerRestarted { .. } => c.restarted += 1,
            Event::WorkerStartFailed { .. } => c.start_failed += 1,
            Event::WorkerExited { reason, .. } => match reason {
                ExitReason::Crashed => c.crashed += 1,
                ExitReason::Recycled => c.recycled += 1,
                ExitReason::Abandoned => c.abandoned += 1,
                ExitReason::Killed => c.killed += 1,
                ExitReason::Retired => c.retired += 1,
                ExitReason::Shutdown => c.shutdown += 1,
                // A reason added to crew later: counted nowhere rather than
                // under a wrong name.
                _ => {}
            },
            _ => {}
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // The reader never panics (it only counts); if it did, there is
            // nothing to hand the panic to here.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Lifecycle {
    /// Does not lock anything.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

/// The poisoning policy of this crate: the data under these locks are plain
/// counters, valid after any panic, so a poisoned lock is used as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Events the pool dropped while the reader was held up reach the counts
    /// with the next drain, without waiting for a worker event to carry them.
    #[test]
    fn dropped_events_are_counted_without_a_worker_event() {
        let pool = Pool::builder().workers(1).event_buffer(2).build().unwrap();
        let lifecycle = Lifecycle::watch(&pool).unwrap();
        // Holding the window's lock stops the reader at the first
        // `TaskFinished` it records: by then it has taken at most three events
        // (the worker's start and the first task's two), the buffer holds two
        // more, and every other event of the 20 tasks is dropped.
        let held = lock(&lifecycle.shared.window);
        for i in 0..20u64 {
            assert_eq!(pool.spawn(move || i + 1).join().unwrap(), i + 1);
        }
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        while lifecycle.counts().events_dropped < 35 {
            assert!(
                Instant::now() < deadline,
                "events_dropped is {}, want at least 35",
                lifecycle.counts().events_dropped
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
