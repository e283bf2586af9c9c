//! `Stats`: a snapshot of what a pool is doing and has done.
//!
//! # Where the latency figures come from
//!
//! Each worker records its timed tasks' wait and run times into its own
//! [`Timings`] (two HDR histograms and a busy-time sum): on threads a sample of
//! them past the first 4,096 (see [`Latency`]), on processes every one. On the
//! thread backend the worker
//! does so under the mutex of its slot's running entry, which it takes around
//! every task anyway, so recording costs no extra lock; `stats()` takes each
//! slot's mutex briefly and merges. The process backend records under its
//! scheduler lock, which it holds while it applies a worker's answers. The
//! public figures are plain [`Latency`] values, so the histogram type is not part
//! of crew's API. `stats.md` beside this file has the details and the reasons.
//!
//! # One assembler
//!
//! Each backend supplies its numbers as [`Figures`] (outcome counts, worker
//! rows, timings, clocks); [`Figures::into_stats`] builds the `Stats`, with the
//! one rule for a worker's [`WorkerState`] and for `busy`, `idle` and `queued`.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::error::{Failure, TaskError};
use crate::task::cell::Outcome;
use crate::task::TaskId;
use crate::worker::WorkerId;

/// A snapshot from [`Pool::stats`](crate::Pool::stats). Counters cover the pool's
/// whole life; every accepted task is in exactly one of `queued`, `busy` (running)
/// or one of the outcome counters.
///
/// Its `Display` is a small table for people: a summary block, then one row per
/// worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Workers the pool counts (starting, idle or busy).
    pub workers: usize,
    /// Workers running a task (with async tasks: at least one in flight).
    pub busy: usize,
    /// Workers not running a task.
    pub idle: usize,
    /// Tasks accepted and not yet started (including cancelled ones a worker has
    /// not popped yet).
    pub queued: usize,
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks that returned `Ok`.
    pub completed: u64,
    /// Tasks that returned the worker's own error, or (process pools) whose
    /// input or result was larger than `max_message_size`
    /// ([`TaskError::is_too_large`](crate::TaskError::is_too_large)).
    pub failed: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Tasks cancelled (queued or running), including by `terminate`.
    pub cancelled: u64,
    /// Tasks that ran past their timeout.
    pub timed_out: u64,
    /// Tasks whose worker was killed under them.
    pub killed: u64,
    /// Tasks resolved as closed by a shutdown before they ran.
    pub closed: u64,
    /// Tasks failed because no worker could start.
    pub start_failed: u64,
    /// Tasks whose worker process died under them, or broke the protocol.
    pub crashed: u64,
    /// Threads given up on (stuck in a timed-out or killed task) that have not
    /// returned yet. They are not in `workers`.
    pub abandoned_threads: usize,
    /// Consecutive `Worker::start` failures, pool-wide (0 once a start succeeds).
    pub start_failures: u32,
    /// The message of the most recent `Worker::start` failure, if any ever failed.
    pub last_start_error: Option<String>,
    /// Messages in a cluster pool's dead-letter stream (tasks that took down
    /// every node that ran them, or were not tasks at all), whoever submitted
    /// them; this pool's own dead-lettered tasks are also in `crashed`. Always
    /// 0 on threads and processes.
    pub dead_letters: u64,
    /// How long tasks waited between `submit` and the moment a worker started
    /// them. One sample per task that started.
    pub wait: Latency,
    /// How long tasks ran on a worker: until it returned, or until the pool gave
    /// up on it (killed, abandoned). One sample per task that finished running.
    /// On a process pool both figures are taken when the pool reads the
    /// worker's answers, which a worker sends in batches.
    pub run: Latency,
    /// Time since the pool was built.
    pub uptime: Duration,
    /// Time the workers spent running tasks, summed over workers (those still
    /// running a task count what they have run so far). Tasks are summed, so a
    /// worker's overlapping async tasks each count their whole run (from start
    /// to the future's end, including its time at `.await`s).
    pub busy_time: Duration,
    /// Time the workers spent in the pool, summed over workers, from the moment
    /// each was created until it left (or now). For a fixed pool that is about
    /// `workers × uptime`; an elastic pool counts each worker only while it lived.
    pub worker_time: Duration,
    /// One row per worker, by id.
    pub per_worker: Vec<WorkerStats>,
}

/// A summary of one latency distribution in [`Stats`]: how many samples, and
/// their percentiles. Percentiles come from a histogram with two significant
/// digits (within 1%), from 1 ns to one hour; longer values count as one hour.
/// With no sample, every figure is zero.
///
/// On the thread backend a pool measures each of its first 4,096 tasks, then one
/// task in eight (by task id), and every task while an [`Events`](crate::Events)
/// subscriber listens: two clock reads and two histogram updates are about a
/// tenth of a tiny task's cost, so a pool running millions of tasks samples.
/// `count` is the number of tasks measured, and the busy time (utilization)
/// counts each sampled run eight times. Process pools measure every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Latency {
    /// Tasks measured (see above: past 4,096 tasks, threads sample).
    pub count: u64,
    /// The median.
    pub p50: Duration,
    /// 90% of samples are at or below this.
    pub p90: Duration,
    /// 99% of samples are at or below this.
    pub p99: Duration,
    /// The largest sample.
    pub max: Duration,
}

/// What a worker is doing, in [`WorkerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerState {
    /// Its `Worker::start` has not succeeded yet (or it is rebuilding its state
    /// after a panic); a worker process that has not said *ready*.
    Starting,
    /// Started, and waiting for a task.
    Idle,
    /// Running a task (with async tasks: at least one in flight).
    Busy,
    /// Leaving: shutting down, retired, or being killed or recycled.
    Stopping,
}

impl WorkerState {
    /// A short lowercase name: `starting`, `idle`, `busy`, `stopping`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Stopping => "stopping",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One worker's row in [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker.
    pub id: WorkerId,
    /// Whether its `Worker::start` has succeeded.
    pub started: bool,
    /// What it is doing now.
    pub state: WorkerState,
    /// The task it is running, if any (with several async tasks in flight, the
    /// one it started first).
    pub current_task: Option<TaskId>,
    /// Tasks it ran and has finished with, of every outcome. A task resolved
    /// without running (cancelled while queued, closed) counts for no worker.
    pub tasks_done: u64,
    /// Time it spent running tasks.
    pub busy_time: Duration,
    /// Run times of the tasks it ran.
    pub run: Latency,
    /// Its process id (process pools only).
    pub pid: Option<u32>,
    /// Its process's resident memory in bytes, read from `/proc` when the
    /// snapshot was taken (process pools on Linux only).
    pub rss_bytes: Option<u64>,
}

impl Stats {
    /// Tasks finished with, of every outcome.
    pub fn finished(&self) -> u64 {
        self.completed
            + self.failed
            + self.panicked
            + self.cancelled
            + self.timed_out
            + self.killed
            + self.closed
            + self.start_failed
            + self.crashed
    }

    /// The share of the workers' time spent running tasks since the pool was
    /// built: `busy_time / worker_time`, from 0.0 to 1.0 (0.0 before any worker
    /// existed). A pool that keeps every worker busy is at 1.0; an idle one
    /// falls towards 0.0 as it waits.
    pub fn utilization(&self) -> f64 {
        let total = self.worker_time.as_secs_f64();
        if total <= 0.0 {
            return 0.0;
        }
        (self.busy_time.as_secs_f64() / total).clamp(0.0, 1.0)
    }
}

impl fmt::Display for Stats {
    /// A summary block, then one row per worker:
    ///
    /// ```text
    /// workers 2 (busy 1, idle 1) | queued 3 | utilization 48.1% over 2.00s
    /// tasks   submitted 10: ok 6, err 0, panic 0, cancelled 0, timed out 0, killed 0, closed 0, start failed 0, crashed 0
    /// wait    n 7  p50 1.2µs  p90 8.1µs  p99 40µs  max 41µs
    /// run     n 6  p50 180ms  p90 200ms  p99 200ms  max 200ms
    /// worker      state     task       done  busy     run p50  run p99
    /// worker-1    busy      task-7        3  605ms    200ms    200ms
    /// worker-2    idle      -             3  600ms    180ms    200ms
    /// ```
    ///
    /// Process pools add `pid` and `rss` columns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workers {} (busy {}, idle {}) | queued {} | utilization {:.1}% over {}",
            self.workers,
            self.busy,
            self.idle,
            self.queued,
            self.utilization() * 100.0,
            Short(self.uptime),
        )?;
        if self.abandoned_threads > 0 {
            write!(f, " | abandoned threads {}", self.abandoned_threads)?;
        }
        if self.dead_letters > 0 {
            write!(f, " | dead letters {}", self.dead_letters)?;
        }
        if self.start_failures > 0 {
            if let Some(e) = &self.last_start_error {
                write!(f, " | start failing ({}x): {e}", self.start_failures)?;
            }
        }
        writeln!(
            f,
            "\ntasks   submitted {}: ok {}, err {}, panic {}, cancelled {}, timed out {}, killed {}, closed {}, start failed {}, crashed {}",
            self.submitted,
            self.completed,
            self.failed,
            self.panicked,
            self.cancelled,
            self.timed_out,
            self.killed,
            self.closed,
            self.start_failed,
            self.crashed,
        )?;
        writeln!(f, "wait    {}", self.wait)?;
        write!(f, "run     {}", self.run)?;
        let processes = self.per_worker.iter().any(|w| w.pid.is_some());
        // Each line is built whole and written without its trailing padding.
        let mut line = format!(
            "{:<11} {:<9} {:<10} {:>6}  {:<8} {:<8} {:<8}",
            "worker", "state", "task", "done", "busy", "run p50", "run p99"
        );
        if processes {
            line.push_str(&format!(" {:<8} {:>9}", "pid", "rss"));
        }
        write!(f, "\n{}", line.trim_end())?;
        for w in &self.per_worker {
            let task = w
                .current_task
                .map_or_else(|| "-".to_owned(), |t| t.to_string());
            let mut line = format!(
                "{:<11} {:<9} {:<10} {:>6}  {:<8} {:<8} {:<8}",
                w.id.to_string(),
                w.state,
                task,
                w.tasks_done,
                Short(w.busy_time).to_string(),
                Short(w.run.p50).to_string(),
                Short(w.run.p99).to_string(),
            );
            if processes {
                let pid = w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
                let rss = w.rss_bytes.map_or_else(
                    || "-".to_owned(),
                    |b| format!("{:.1}MiB", b as f64 / 1048576.0),
                );
                line.push_str(&format!(" {pid:<8} {rss:>9}"));
            }
            write!(f, "\n{}", line.trim_end())?;
        }
        Ok(())
    }
}

impl fmt::Display for Latency {
    /// `n 7  p50 1.2µs  p90 8.1µs  p99 40µs  max 41µs`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n {}  p50 {}  p90 {}  p99 {}  max {}",
            self.count,
            Short(self.p50),
            Short(self.p90),
            Short(self.p99),
            Short(self.max)
        )
    }
}

/// A duration with two or three significant digits and a unit (`850ns`, `1.2µs`,
/// `40ms`, `2.00s`).
struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos() as f64;
        let (value, unit) = if nanos < 1e3 {
            (nanos, "ns")
        } else if nanos < 1e6 {
            (nanos / 1e3, "µs")
        } else if nanos < 1e9 {
            (nanos / 1e6, "ms")
        } else {
            (nanos / 1e9, "s")
        };
        let text = if unit == "ns" || value >= 100.0 {
            format!("{value:.0}{unit}")
        } else if value >= 10.0 {
            format!("{value:.1}{unit}")
        } else {
            format!("{value:.2}{unit}")
        };
        f.pad(&text)
    }
}

// ------------------------------------------------------------ assembling

/// How many tasks ended each way: what a backend counts, indexed by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutcomeCounts([u64; Outcome::SLOTS]);

impl OutcomeCounts {
    /// Counts from per-outcome slots (index = `Outcome as usize`).
    pub(crate) fn from_slots(slots: [u64; Outcome::SLOTS]) -> Self {
        OutcomeCounts(slots)
    }

    /// Counts one task that ended with `result`.
    pub fn record<T, E>(&mut self, result: &Result<T, TaskError<E>>) {
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of_error(e),
        };
        self.0[outcome as usize] += 1;
    }

    /// Counts `n` tasks that ended with `failure`.
    pub fn record_failure(&mut self, failure: &Failure, n: u64) {
        self.0[Outcome::of_failure(failure) as usize] += n;
    }

    /// Adds `other`'s counts to these (an engine that counts a task in a
    /// scratch record first, and keeps it only if its result won).
    pub fn add(&mut self, other: &OutcomeCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    /// Every task counted, whatever its outcome.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// One worker as its backend knows it: `stats.rs` turns it into a
/// [`WorkerStats`] row, deciding its [`WorkerState`] by the one rule
/// ([`Figures::into_stats`]).
#[derive(Debug, Clone)]
pub struct WorkerFigures {
    /// Its id.
    pub id: WorkerId,
    /// Its start succeeded (a worker process said *ready*).
    pub started: bool,
    /// It is leaving: told to stop, retired, recycled, or being killed.
    pub stopping: bool,
    /// The task it runs (with async tasks, the first in flight).
    pub current_task: Option<TaskId>,
    /// Tasks it holds a place for now: running ones (several for async tasks),
    /// or 1 for a worker whose task already resolved but which has not let go
    /// (a killed process not reaped yet). Above 0 means busy.
    pub occupied: usize,
    /// Tasks it finished.
    pub tasks_done: u64,
    /// Time it spent running tasks, the running ones' time so far included.
    pub busy_time: Duration,
    /// Its run times.
    pub run: Latency,
    /// Its process id, for a worker process.
    pub pid: Option<u32>,
    /// Its resident memory, when the backend measured it.
    pub rss_bytes: Option<u64>,
}

/// What a backend supplies for a [`Stats`] snapshot: its counters, clocks and
/// worker rows. [`into_stats`](Figures::into_stats) does the rest, the same way
/// for every backend.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks finished, by outcome.
    pub outcomes: OutcomeCounts,
    /// Threads the pool gave up on (threads only).
    pub abandoned_threads: usize,
    /// Failed worker starts in a row.
    pub start_failures: u32,
    /// The last start error's message.
    pub last_start_error: Option<String>,
    /// The timed tasks' wait and run times, pool-wide (threads sample).
    pub timings: Timings,
    /// Since the pool was built.
    pub uptime: Duration,
    /// Busy time not in `timings`: running tasks' time so far.
    pub busy_so_far: Duration,
    /// Time workers have been alive, retired ones included.
    pub worker_time: Duration,
    /// The live workers, in any order.
    pub workers: Vec<WorkerFigures>,
}

impl Default for Timings {
    fn default() -> Self {
        Timings::new()
    }
}

impl WorkerFigures {
    /// The one worker-state rule, for every backend: a worker holding a task is
    /// `Busy` even while it is being stopped (its task, or the place it holds,
    /// is what `busy` counts, so the row and the count agree); then leaving,
    /// then not started yet, then idle.
    fn state(&self) -> WorkerState {
        if self.occupied > 0 {
            WorkerState::Busy
        } else if self.stopping {
            WorkerState::Stopping
        } else if self.started {
            WorkerState::Idle
        } else {
            WorkerState::Starting
        }
    }
}

impl Figures {
    /// The snapshot: worker rows sorted by id, `busy` the rows in
    /// [`WorkerState::Busy`], `queued` what was submitted and neither finished
    /// nor held by a worker.
    pub fn into_stats(self) -> Stats {
        let mut per_worker: Vec<WorkerStats> = self
            .workers
            .iter()
            .map(|w| WorkerStats {
                id: w.id,
                started: w.started,
                state: w.state(),
                current_task: w.current_task,
                tasks_done: w.tasks_done,
                busy_time: w.busy_time,
                run: w.run,
                pid: w.pid,
                rss_bytes: w.rss_bytes,
            })
            .collect();
        per_worker.sort_by_key(|w| w.id);
        let busy = per_worker
            .iter()
            .filter(|w| w.state == WorkerState::Busy)
            .count();
        let occupied: u64 = self.workers.iter().map(|w| w.occupied as u64).sum();
        let c = &self.outcomes.0;
        let in_flight = self.submitted.saturating_sub(self.outcomes.total());
        Stats {
            workers: per_worker.len(),
            busy,
            idle: per_worker.len() - busy,
            queued: in_flight.saturating_sub(occupied) as usize,
            submitted: self.submitted,
            completed: c[Outcome::Ok as usize],
            failed: c[Outcome::UserError as usize] + c[Outcome::TooLarge as usize],
            panicked: c[Outcome::Panicked as usize],
            cancelled: c[Outcome::Cancelled as usize],
            timed_out: c[Outcome::TimedOut as usize],
            killed: c[Outcome::Killed as usize],
            closed: c[Outcome::Closed as usize],
            start_failed: c[Outcome::StartFailed as usize],
            crashed: c[Outcome::Crashed as usize] + c[Outcome::Protocol as usize],
            abandoned_threads: self.abandoned_threads,
            start_failures: self.start_failures,
            last_start_error: self.last_start_error,
            dead_letters: 0,
            wait: self.timings.wait_latency(),
            run: self.timings.run_latency(),
            uptime: self.uptime,
            busy_time: self.timings.busy() + self.busy_so_far,
            worker_time: self.worker_time,
            per_worker,
        }
    }
}

// ------------------------------------------------------------ recording

/// The largest value a histogram tells apart, in nanoseconds: one hour.
const MAX_TRACKED_NANOS: u64 = 3_600_000_000_000;

/// Two significant digits: percentiles within 1%, and about 36 KiB per
/// histogram (three digits would be about 300 KiB, per worker).
const SIGNIFICANT_DIGITS: u8 = 2;

/// One worker's (or one pool's) latency record: what [`Stats::wait`],
/// [`Stats::run`] and the busy times are built from. Written by one recorder
/// (the worker, under its slot's lock; the process scheduler, under its lock);
/// merged by `stats()`.
#[derive(Clone)]
pub struct Timings {
    wait: Histogram<u64>,
    run: Histogram<u64>,
    busy: Duration,
}

impl Timings {
    /// An empty record.
    pub fn new() -> Self {
        Timings {
            wait: new_histogram(),
            run: new_histogram(),
            busy: Duration::ZERO,
        }
    }

    /// A task started after waiting `waited` since it was submitted.
    #[inline]
    pub fn record_wait(&mut self, waited: Duration) {
        self.wait.saturating_record(nanos(waited));
    }

    /// A task ran for `ran`; as a sample, it stands for `weight` tasks in the
    /// busy time.
    #[inline]
    pub fn record_run(&mut self, ran: Duration, weight: u32) {
        self.run.saturating_record(nanos(ran));
        self.busy += ran * weight;
    }

    /// Adds `other`'s samples to these.
    pub fn add(&mut self, other: &Timings) {
        // Same bounds on both sides, and values are clamped when recorded, so
        // adding cannot fail.
        let _ = self.wait.add(&other.wait);
        let _ = self.run.add(&other.run);
        self.busy += other.busy;
    }

    /// The time the recorded tasks ran, each sample times its weight.
    pub fn busy(&self) -> Duration {
        self.busy
    }

    /// The wait-time percentiles.
    pub fn wait_latency(&self) -> Latency {
        latency(&self.wait)
    }

    /// The run-time percentiles.
    pub fn run_latency(&self) -> Latency {
        latency(&self.run)
    }
}

/// What a [`Timings`] holds, as plain numbers, for an engine that records
/// timings in one process and reports them in another (a cluster node to its
/// client): each histogram as `(value in nanoseconds, count)` per recorded
/// bucket (a few hundred at most, at two significant digits), and the busy
/// time. [`Timings::samples`] takes them; [`Timings::from_samples`] rebuilds
/// an equal record, whose percentiles are the original's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimingSamples {
    /// The wait-time histogram's buckets.
    pub wait: Vec<(u64, u64)>,
    /// The run-time histogram's buckets.
    pub run: Vec<(u64, u64)>,
    /// The busy time (each sample times its weight).
    pub busy: Duration,
}

impl Timings {
    /// This record's buckets and busy time ([`TimingSamples`]).
    pub fn samples(&self) -> TimingSamples {
        let buckets = |h: &Histogram<u64>| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        };
        TimingSamples {
            wait: buckets(&self.wait),
            run: buckets(&self.run),
            busy: self.busy,
        }
    }

    /// A record with `samples`' buckets and busy time. Values are clamped to
    /// the histograms' range, as when recorded.
    pub fn from_samples(samples: &TimingSamples) -> Self {
        let mut timings = Timings::new();
        for &(value, count) in &samples.wait {
            timings.wait.saturating_record_n(value, count);
        }
        for &(value, count) in &samples.run {
            timings.run.saturating_record_n(value, count);
        }
        timings.busy = samples.busy;
        timings
    }
}

impl fmt::Debug for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timings")
            .field("wait", &self.wait.len())
            .field("run", &self.run.len())
            .field("busy", &self.busy)
            .finish()
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_NANOS, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|_| unreachable!("constant, valid histogram bounds"))
}

#[inline]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let at = |q: f64| Duration::from_nanos(h.value_at_quantile(q));
    Latency {
        count: h.len(),
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: Duration::from_nanos(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_count_every_sample() {
        let mut t = Timings::new();
        for micros in 1..=1000u64 {
            t.record_run(Duration::from_micros(micros), 1);
            t.record_wait(Duration::from_nanos(micros));
        }
        let run = t.run_latency();
        assert_eq!(run.count, 1000);
        assert!(run.p50 <= run.p90 && run.p90 <= run.p99 && run.p99 <= run.max);
        let p50 = run.p50.as_micros();
        assert!((495..=505).contains(&p50), "{run:?}");
        assert_eq!(t.wait_latency().count, 1000);
        let mut sum = Timings::new();
        sum.add(&t);
        sum.add(&t);
        assert_eq!(sum.run_latency().count, 2000);
        assert_eq!(sum.busy(), t.busy() * 2);
    }

    #[test]
    fn samples_rebuild_the_same_figures() {
        let mut t = Timings::new();
        for micros in [1u64, 7, 7, 300, 45_000, 2_000_000] {
            t.record_run(Duration::from_micros(micros), 2);
            t.record_wait(Duration::from_nanos(micros * 3));
        }
        let samples = t.samples();
        assert!(samples.run.len() <= 6, "{samples:?}");
        let back = Timings::from_samples(&samples);
        assert_eq!(back.run_latency(), t.run_latency());
        assert_eq!(back.wait_latency(), t.wait_latency());
        assert_eq!(back.busy(), t.busy());
        assert_eq!(back.samples(), samples);
    }

    #[test]
    fn huge_values_are_clamped_not_lost() {
        let mut t = Timings::new();
        t.record_run(Duration::from_secs(100_000), 1);
        assert_eq!(t.run_latency().count, 1);
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(Timings::new().run_latency(), Latency::default());
    }

    #[test]
    fn short_durations_read_well() {
        assert_eq!(Short(Duration::from_nanos(850)).to_string(), "850ns");
        assert_eq!(Short(Duration::from_nanos(1_234)).to_string(), "1.23µs");
        assert_eq!(Short(Duration::from_millis(40)).to_string(), "40.0ms");
        assert_eq!(Short(Duration::from_secs(2)).to_string(), "2.00s");
    }

    fn figures_row(id: u64, started: bool, stopping: bool, occupied: usize) -> WorkerFigures {
        WorkerFigures {
            id: WorkerId::from_raw(id).unwrap(),
            started,
            stopping,
            current_task: None,
            occupied,
            tasks_done: 0,
            busy_time: Duration::ZERO,
            run: Latency::default(),
            pid: None,
            rss_bytes: None,
        }
    }

    #[test]
    fn one_state_rule_busy_before_stopping_and_rows_agree_with_counts() {
        let figures = Figures {
            submitted: 5,
            workers: vec![
                figures_row(4, true, true, 1), // being stopped, still holds a task
                figures_row(3, true, true, 0), // leaving, nothing held
                figures_row(2, false, false, 0),
                figures_row(1, true, false, 2), // two async tasks in flight
                figures_row(5, true, false, 0),
            ],
            ..Figures::default()
        };
        let stats = figures.into_stats();
        let states: Vec<_> = stats.per_worker.iter().map(|w| w.state).collect();
        assert_eq!(
            states,
            [
                WorkerState::Busy,
                WorkerState::Starting,
                WorkerState::Stopping,
                WorkerState::Busy,
                WorkerState::Idle
            ]
        );
        assert_eq!((stats.workers, stats.busy, stats.idle), (5, 2, 3));
        // Five submitted, none finished, three held by workers.
        assert_eq!(stats.queued, 2);
    }
}
