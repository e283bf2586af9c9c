//! `--exporter`: the workloads with crew-observe's Prometheus exporter on.
//!
//! The question it answers: does watching a pool cost the pool anything? With
//! `--exporter`, the pool under test is registered with a
//! [`crew_observe::Metrics`] exporter for the whole workload (warm-up and timed
//! runs), and a scraper thread renders the exporter's `/metrics` text every
//! `--scrape-every` milliseconds, as a Prometheus server would scrape it. The
//! default, 10 ms, is 100 to 1,500 times the usual 1–15 s interval, so the
//! figure is an upper bound: the workloads are short (a W1 run on threads
//! takes tens of milliseconds, all of W2 on threads about as long), and at a
//! realistic interval most runs would see no scrape at all. The text is
//! rendered in this process, which
//! is what a scrape costs the pool's process (`Metrics::encode`: one
//! `Pool::stats` call and the formatting); the HTTP hop to a scraper is not
//! included.
//!
//! - `--exporter` (or `--exporter metrics`): [`Metrics::pool`], which reads
//!   `stats()` at scrape time only and subscribes to nothing.
//! - `--exporter events`: [`Metrics::pool_with_events`], which also subscribes
//!   to the pool's events for the worker lifecycle counters; while a
//!   subscriber exists every task emits two events and a thread pool times
//!   every task instead of sampling (what the dashboard does too).
//!
//! The impl name carries the mode (`rust/crew-threads[exporter]`,
//! `…[exporter=events]`), as the benchmark contract asks of any deviation.
//! Each workload prints on stderr how many scrapes ran during it and what one
//! cost, so a run shows that the scraper did scrape.
//!
//! W5 (`spawn`) is not measured with an exporter: it times a pool's creation,
//! and a pool per cycle would measure the registration, not the pool.

use std::hint::black_box;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crew::{Pool, Worker};
use crew_observe::Metrics;

/// What `--exporter` turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `Metrics::pool`: read at scrape time only.
    Metrics,
    /// `Metrics::pool_with_events`: also subscribed to the pool's events.
    Events,
}

impl Mode {
    pub(crate) fn parse(s: &str) -> Option<Mode> {
        match s {
            "metrics" => Some(Mode::Metrics),
            "events" => Some(Mode::Events),
            _ => None,
        }
    }

    /// The tag the impl name carries.
    fn tag(self) -> &'static str {
        match self {
            Mode::Metrics => "[exporter]",
            Mode::Events => "[exporter=events]",
        }
    }
}

/// The label every scraped sample carries.
const POOL_LABEL: &str = "bench";

/// The one exporter of this process, set by [`start`].
static EXPORTER: OnceLock<Exporter> = OnceLock::new();

struct Exporter {
    mode: Mode,
    /// Written by [`observe`] (a pool registered) and by [`Observed`]'s drop
    /// (unregistered), read by the scraper thread, which holds it while it
    /// renders.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The exporter with the pool under test, if a workload is running.
    metrics: Option<Metrics>,
    /// Scrapes since the pool was registered.
    scrapes: u64,
    /// Their total and longest render time (the lock included).
    total: Duration,
    longest: Duration,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // The state is counters and an exporter, valid after any panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Turns the exporter on for this process and starts the scraper thread, which
/// runs until the process exits. Call once, before any pool exists.
pub(crate) fn start(mode: Mode, every: Duration) {
    if EXPORTER
        .set(Exporter {
            mode,
            state: Mutex::new(State::default()),
        })
        .is_err()
    {
        panic!("exporter::start called twice");
    }
    let exporter = EXPORTER.get().unwrap_or_else(|| unreachable!("set above"));
    std::thread::Builder::new()
        .name("bench-scraper".into())
        .spawn(move || scrape_forever(exporter, every))
        .unwrap_or_else(|e| panic!("the scraper thread: {e}"));
}

/// The impl-name tag of the exporter's mode, or `""` when it is off.
pub(crate) fn tag() -> &'static str {
    EXPORTER.get().map_or("", |e| e.mode.tag())
}

fn scrape_forever(exporter: &Exporter, every: Duration) {
    loop {
        std::thread::sleep(every);
        let t = Instant::now();
        let mut st = lock(&exporter.state);
        let Some(metrics) = &st.metrics else {
            continue;
        };
        let text = metrics.encode();
        black_box(&text);
        let took = t.elapsed();
        st.scrapes += 1;
        st.total += took;
        st.longest = st.longest.max(took);
    }
}

/// Registers `pool` with the exporter (a no-op without `--exporter`) until the
/// returned guard is dropped. Call it outside the timed region: the events
/// mode starts a reader thread here, and the guard's drop joins it.
#[must_use = "dropping the guard unregisters the pool"]
pub(crate) fn observe<W: Worker>(pool: &Pool<W>) -> Observed {
    let Some(exporter) = EXPORTER.get() else {
        return Observed { active: false };
    };
    let metrics = match exporter.mode {
        Mode::Metrics => Metrics::new().pool(POOL_LABEL, pool),
        Mode::Events => Metrics::new()
            .pool_with_events(POOL_LABEL, pool)
            .unwrap_or_else(|e| panic!("the exporter's event reader: {e}")),
    };
    // The exporter reads this pool: a scrape names it.
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            "crew_tasks_submitted_total{{pool=\"{POOL_LABEL}\"}}"
        )),
        "the exporter does not show the pool:\n{text}"
    );
    *lock(&exporter.state) = State {
        metrics: Some(metrics),
        ..State::default()
    };
    Observed { active: true }
}

/// A pool registered with the exporter; dropping it unregisters the pool and
/// reports the scrapes on stderr.
pub(crate) struct Observed {
    active: bool,
}

impl Drop for Observed {
    fn drop(&mut self) {
        let Some(exporter) = EXPORTER.get().filter(|_| self.active) else {
            return;
        };
        let st = std::mem::take(&mut *lock(&exporter.state));
        let mean = st
            .total
            .checked_div(st.scrapes.try_into().unwrap_or(u32::MAX))
            .unwrap_or_default();
        eprintln!(
            "[crew-bench] exporter ({:?}): {} scrapes, {:.1} us each on average, {:.1} us at most",
            exporter.mode,
            st.scrapes,
            mean.as_secs_f64() * 1e6,
            st.longest.as_secs_f64() * 1e6
        );
        if exporter.mode == Mode::Events {
            // What the event reader could not keep up with (the pool dropped
            // those events rather than wait for it).
            let text = st.metrics.as_ref().map(Metrics::encode).unwrap_or_default();
            let dropped = text
                .lines()
                .find(|l| l.starts_with("crew_observer_events_dropped_total"))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or("?");
            eprintln!("[crew-bench] exporter (Events): {dropped} events dropped");
        }
        // `st.metrics` (its pool handle, and in events mode its reader
        // thread, joined here) is dropped now, outside the lock.
    }
}
