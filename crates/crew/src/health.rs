//! The health watcher: an optional helper thread per pool
//! ([`PoolBuilder::health`](crate::PoolBuilder::health)) that turns the pool's
//! [`Stats`] into events a monitor can act on.
//!
//! Every *tick* it takes one `stats()` snapshot (only while someone is
//! subscribed to the pool's events, so an unobserved pool pays one wake-up per
//! tick and nothing else) and:
//!
//! - **backlog**: if `queued` is above the threshold (by default 5 tasks per
//!   worker), notes since when; once every snapshot for `backlog_for` has been
//!   above, emits [`Event::Backlog`] once. The episode ends at the first
//!   snapshot at or below the threshold, and the next one may report again.
//! - **stats**: every `stats_every`, emits [`Event::Stats`] with the snapshot.
//!
//! A tick is a quarter of `backlog_for` (so a backlog is reported within 25% of
//! its period), or `stats_every` if that is shorter. The thread holds only a weak
//! reference to the pool: it stops at the first tick after the pool is closed or
//! dropped, and `shutdown` stops and joins it.

use std::fmt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::events::{Bus, Event};
use crate::stats::Stats;
use crate::sync::{lock, wait_until, Arc, Condvar, Mutex};

/// Default backlog threshold: this many queued tasks per worker.
const DEFAULT_BACKLOG_PER_WORKER: usize = 5;
/// Default time the queue must stay above the threshold before it is reported.
const DEFAULT_BACKLOG_FOR: Duration = Duration::from_secs(1);
/// The shortest tick, whatever the settings.
const MIN_TICK: Duration = Duration::from_millis(1);

/// Settings of a pool's health watcher, for
/// [`PoolBuilder::health`](crate::PoolBuilder::health). Off unless set.
///
/// ```
/// use std::time::Duration;
/// use crew::{Event, Health};
///
/// let pool: crew::Pool = crew::Pool::builder()
///     .workers(2)
///     .health(
///         Health::new()
///             .backlog_threshold(100) // more than 100 queued tasks ...
///             .backlog_for(Duration::from_secs(5)) // ... for 5 s: Event::Backlog
///             .stats_every(Duration::from_secs(60)), // and Event::Stats every minute
///     )
///     .build()?;
/// for event in pool.events() {
///     match event {
///         Event::Backlog { queued, workers, .. } => eprintln!("{queued} queued on {workers} workers"),
///         Event::Stats { stats, .. } => eprintln!("{stats}"),
///         _ => {}
///     }
/// #   break;
/// }
/// # Ok::<(), crew::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    backlog_threshold: Option<usize>,
    backlog_per_worker: usize,
    backlog_for: Duration,
    stats_every: Option<Duration>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// Backlog reports above 5 queued tasks per worker, held for 1 s; no
    /// periodic stats.
    pub fn new() -> Self {
        Health {
            backlog_threshold: None,
            backlog_per_worker: DEFAULT_BACKLOG_PER_WORKER,
            backlog_for: DEFAULT_BACKLOG_FOR,
            stats_every: None,
        }
    }

    /// Reports a backlog above this many queued tasks, whatever the number of
    /// workers (instead of a number per worker).
    #[must_use]
    pub fn backlog_threshold(mut self, tasks: usize) -> Self {
        self.backlog_threshold = Some(tasks);
        self
    }

    /// Reports a backlog above this many queued tasks per worker (default 5).
    #[must_use]
    pub fn backlog_per_worker(mut self, tasks: usize) -> Self {
        self.backlog_per_worker = tasks;
        self.backlog_threshold = None;
        self
    }

    /// How long the queue must stay above the threshold before
    /// [`Event::Backlog`] is emitted (default 1 s; above zero).
    #[must_use]
    pub fn backlog_for(mut self, period: Duration) -> Self {
        self.backlog_for = period;
        self
    }

    /// Emits an [`Event::Stats`] snapshot this often (above zero).
    #[must_use]
    pub fn stats_every(mut self, period: Duration) -> Self {
        self.stats_every = Some(period);
        self
    }

    /// The name of a setting that is out of range, if any.
    pub(crate) fn invalid_setting(&self) -> Option<&'static str> {
        if self.backlog_for.is_zero() {
            Some("Health::backlog_for")
        } else if self.stats_every == Some(Duration::ZERO) {
            Some("Health::stats_every")
        } else {
            None
        }
    }

    fn tick(&self) -> Duration {
        let backlog = self.backlog_for / 4;
        self.stats_every
            .map_or(backlog, |every| every.min(backlog))
            .max(MIN_TICK)
    }

    fn threshold(&self, workers: usize) -> usize {
        self.backlog_threshold
            .unwrap_or_else(|| self.backlog_per_worker.saturating_mul(workers.max(1)))
    }
}

/// Takes a snapshot of the pool, or `None` once it is closed or gone.
pub(crate) type Probe = Box<dyn Fn() -> Option<Stats> + Send>;

/// The running watcher thread. Held by the pool handle's shared part.
pub(crate) struct Watcher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Watcher {
    /// Starts the watcher thread, named `{name}-health`.
    pub(crate) fn start(
        health: Health,
        name: &str,
        bus: Arc<Bus>,
        probe: Probe,
    ) -> std::io::Result<Watcher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name(format!("{name}-health"))
            .spawn(move || watch(&health, &bus, &probe, &thread_stop))?;
        Ok(Watcher {
            stop,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Tells the thread to stop, without waiting.
    pub(crate) fn signal(&self) {
        let (flag, cond) = &*self.stop;
        *lock(flag) = true;
        cond.notify_all();
    }

    /// Tells the thread to stop and waits for it.
    pub(crate) fn stop(&self) {
        self.signal();
        let handle = lock(&self.handle).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Watcher {
    /// Signals only: a `Drop` does not wait for a thread.
    fn drop(&mut self) {
        self.signal();
    }
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

/// The watcher thread's loop.
fn watch(health: &Health, bus: &Bus, probe: &Probe, stop: &(Mutex<bool>, Condvar)) {
    let tick = health.tick();
    let start = Instant::now();
    let mut next_stats = health.stats_every.map(|every| start + every);
    // Since when every snapshot has been above the threshold, and whether this
    // episode was reported.
    let mut above_since: Option<Instant> = None;
    let mut reported = false;
    loop {
        let wake = next_stats.map_or(Instant::now() + tick, |at| at.min(Instant::now() + tick));
        {
            let (flag, cond) = stop;
            let mut stopped = lock(flag);
            while !*stopped {
                match wait_until(cond, stopped, Some(wake)) {
                    Ok(s) => stopped = s,
                    Err(s) => {
                        stopped = s;
                        break;
                    }
                }
            }
            if *stopped {
                return;
            }
        }
        if !bus.is_active() {
            // Nobody listens: no snapshot, and no episode in progress.
            above_since = None;
            reported = false;
            continue;
        }
        let Some(stats) = probe() else { return };
        let now = Instant::now();
        let threshold = health.threshold(stats.workers);
        if stats.queued > threshold {
            let since = *above_since.get_or_insert(now);
            let held = now.saturating_duration_since(since);
            if !reported && held >= health.backlog_for {
                reported = true;
                bus.emit(Event::Backlog {
                    queued: stats.queued,
                    workers: stats.workers,
                    threshold,
                    since: held,
                });
            }
        } else {
            above_since = None;
            reported = false;
        }
        if let (Some(at), Some(every)) = (next_stats, health.stats_every) {
            if now >= at {
                // The next one a period later, not earlier to catch up.
                next_stats = Some(now + every);
                bus.emit(Event::Stats {
                    stats: Box::new(stats),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_threshold_is_five_per_worker() {
        let health = Health::new();
        assert_eq!(health.threshold(4), 20);
        assert_eq!(health.threshold(0), 5);
        assert_eq!(health.backlog_threshold(7).threshold(4), 7);
    }

    #[test]
    fn the_tick_follows_the_shorter_period() {
        let health = Health::new().backlog_for(Duration::from_millis(400));
        assert_eq!(health.tick(), Duration::from_millis(100));
        let health = health.stats_every(Duration::from_millis(30));
        assert_eq!(health.tick(), Duration::from_millis(30));
    }

    #[test]
    fn zero_periods_are_invalid() {
        assert!(Health::new().invalid_setting().is_none());
        assert!(Health::new()
            .backlog_for(Duration::ZERO)
            .invalid_setting()
            .is_some());
        assert!(Health::new()
            .stats_every(Duration::ZERO)
            .invalid_setting()
            .is_some());
    }
}
