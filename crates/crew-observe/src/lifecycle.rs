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
//! the dashboard, which needs these figures, says so in its docs.
//!
//! # Loss
//!
//! The pool never waits for this reader: when its buffer is full the pool
//! drops the new event and counts it. The counts carry that number
//! (`events_dropped`), so a reader knows how short they may be.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crew::{Event, ExitReason, Pool, Worker};

use crate::snapshot::LifecycleJson;

/// Samples kept per window for the windowed percentiles; past this the window
/// keeps its first samples only (the dashboard's chart says "sampled").
const WINDOW_CAP: usize = 50_000;

/// How often the reader thread wakes to check whether it should stop.
const POLL: Duration = Duration::from_millis(100);

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
            .spawn(move || {
                while !reader.stop.load(Ordering::Relaxed) {
                    match events.recv_timeout(POLL) {
                        Ok(event) => reader.record(&event, events.dropped()),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
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
    fn record(&self, event: &Event, dropped: u64) {
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
        c.events_dropped = dropped;
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
