//! What every task has whatever its types: its [`Header`] (identity, options and
//! the state word with its bits), how it ended ([`Outcome`]), and the untyped
//! views of a cell a [`Context`](crate::Context) holds ([`CellRef`],
//! [`ShareCell`]). Below both `task/cell.rs` (which runs a `Worker`) and
//! `worker.rs` (whose `Context` reads the header), so neither imports the other
//! both ways. The state machine is in `cell.md`.

use std::any::Any;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{Failure, TaskError};
use crate::sync::modelled::{AtomicU32, AtomicU64, AtomicUsize};
use crate::sync::Arc;
use crate::task::{Priority, TaskId, WorkerId};

/// The payload has exactly one owner: the worker that runs it, or the thread that
/// discards it. Set once.
pub(crate) const CLAIMED: usize = 1 << 0;
/// One thread has won the right to write the result slot. Set once.
pub(crate) const RESOLVING: usize = 1 << 1;
/// The result slot is written and may be read. Set once, after `RESOLVING`.
pub(crate) const RESOLVED: usize = 1 << 2;
/// Cancellation was requested; `Context::is_cancelled` reads this bit.
pub(crate) const CANCEL: usize = 1 << 3;
/// The handle has a waiter stored in `waiter` and must be woken.
pub(crate) const WAITER: usize = 1 << 4;
/// Someone watches the task's progress (`Task::watch_progress`): a report that
/// changes it, and the resolution, wake the watchers kept in the cell's side
/// slot. Set by the first watcher that waits, never cleared; until then a
/// report is one swap and one load. See `cell.md`, "Progress".
pub(crate) const WATCHED: usize = 1 << 5;
/// Bits `OUTCOME_SHIFT..` hold an [`Outcome`] code, written together with
/// `RESOLVED` in the same `fetch_or`, so stats can tell how each task ended.
pub(crate) const OUTCOME_SHIFT: u32 = 8;

/// How a task ended, as counted in stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Outcome {
    Ok = 1,
    UserError = 2,
    Panicked = 3,
    Cancelled = 4,
    TimedOut = 5,
    Closed = 6,
    StartFailed = 7,
    Killed = 8,
    Crashed = 9,
    Protocol = 10,
    TooLarge = 11,
}

impl Outcome {
    /// One past the largest code, for arrays indexed by outcome.
    pub(crate) const SLOTS: usize = 12;

    pub(crate) fn of<T, E>(result: &Result<T, TaskError<E>>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of_error(e),
        }
    }

    /// How a task that ended with `error` is counted.
    pub(crate) fn of_error<E>(error: &TaskError<E>) -> Self {
        match error.as_failure() {
            None => Outcome::UserError,
            Some(failure) => Outcome::of_failure(failure),
        }
    }

    /// How a task that ended with crew's `failure` is counted.
    pub(crate) fn of_failure(failure: &Failure) -> Self {
        match failure {
            Failure::Panicked(_) => Outcome::Panicked,
            Failure::Cancelled => Outcome::Cancelled,
            Failure::TimedOut => Outcome::TimedOut,
            Failure::Closed => Outcome::Closed,
            Failure::StartFailed(_) => Outcome::StartFailed,
            Failure::Killed => Outcome::Killed,
            Failure::Crashed(_) => Outcome::Crashed,
            Failure::Protocol(_) => Outcome::Protocol,
            Failure::TooLarge { .. } => Outcome::TooLarge,
            // It never started: counted as cancelled.
            Failure::Deadlock => Outcome::Cancelled,
        }
    }

    fn from_code(code: usize) -> Option<Self> {
        Some(match code {
            1 => Outcome::Ok,
            2 => Outcome::UserError,
            3 => Outcome::Panicked,
            4 => Outcome::Cancelled,
            5 => Outcome::TimedOut,
            6 => Outcome::Closed,
            7 => Outcome::StartFailed,
            8 => Outcome::Killed,
            9 => Outcome::Crashed,
            10 => Outcome::Protocol,
            11 => Outcome::TooLarge,
            _ => return None,
        })
    }
}

/// A task's time limits: a timeout, counted from when it starts, and a
/// deadline, counted from when it was submitted (`TaskBuilder::timeout`,
/// `TaskBuilder::deadline`).
///
/// Packed into two words, nanoseconds with [`Limits::UNSET`] for "none", so that
/// the header, allocated once per task, did not grow when the deadline came:
/// two `Option`s would have cost 16 more bytes per cell. A timeout of 584
/// years or more counts as none, and so does a deadline that far past the
/// first one set in this process (the deadline's zero, [`deadline_epoch`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The timeout in nanoseconds.
    timeout: u64,
    /// The deadline, in nanoseconds since [`deadline_epoch`].
    deadline: u64,
}

impl Limits {
    /// The encoding of "not set".
    const UNSET: u64 = u64::MAX;

    /// No timeout, no deadline.
    pub(crate) const NONE: Limits = Limits {
        timeout: Self::UNSET,
        deadline: Self::UNSET,
    };

    #[inline]
    pub(crate) fn new(timeout: Option<Duration>, deadline: Option<Instant>) -> Self {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(Self::UNSET);
        Limits {
            timeout: timeout.map_or(Self::UNSET, nanos),
            // A deadline before the epoch is already past: zero.
            deadline: deadline.map_or(Self::UNSET, |d| {
                nanos(d.saturating_duration_since(deadline_epoch()))
            }),
        }
    }

    /// Whether either limit is set (one load-and-compare for the common "none").
    #[inline]
    pub(crate) fn is_set(self) -> bool {
        self.timeout & self.deadline != Self::UNSET
    }

    #[inline]
    pub(crate) fn has_deadline(self) -> bool {
        self.deadline != Self::UNSET
    }

    #[inline]
    pub(crate) fn timeout(self) -> Option<Duration> {
        (self.timeout != Self::UNSET).then(|| Duration::from_nanos(self.timeout))
    }

    /// The deadline. (Reading it reads the epoch: only call it once
    /// [`has_deadline`](Limits::has_deadline) said there is one.)
    #[inline]
    pub(crate) fn deadline(self) -> Option<Instant> {
        self.has_deadline()
            .then(|| crate::sync::after(deadline_epoch(), Duration::from_nanos(self.deadline)))
    }

    /// When a task that started at `started` must have ended: its timeout from
    /// then, or its deadline, whichever comes first.
    #[inline]
    pub(crate) fn end(self, started: Instant) -> Option<Instant> {
        let timeout = self.timeout().map(|t| crate::sync::after(started, t));
        match (timeout, self.deadline()) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        }
    }
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("timeout", &self.timeout())
            .field("deadline", &self.deadline())
            .finish()
    }
}

/// The zero of packed deadlines: the first time one was asked for in this
/// process. Every deadline set later is after it (or is already past).
fn deadline_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// What every task has regardless of its types: identity, options, state.
pub(crate) struct Header {
    /// The state bits above. Written by worker, handle, canceller, monitor; see
    /// the module docs for who sets which bit.
    pub(super) state: AtomicUsize,
    id: TaskId,
    /// The worker that claimed it (`WorkerId::raw`), 0 until then. Written once by
    /// that worker, read by the handle.
    pub(super) worker: AtomicU64,
    pub(crate) priority: Priority,
    /// Its timeout (counted from its start) and deadline (counted from its
    /// submission). Written once, at creation.
    pub(crate) limits: Limits,
    /// Holds a place in the pool's queue capacity until popped.
    pub(crate) bounded: bool,
    /// When it was submitted: the start of its wait (`Stats::wait`,
    /// `Event::TaskStarted::waited`). Written once, at creation. `None` for a
    /// task whose times are not sampled (see `threads::timed`).
    pub(crate) queued_at: Option<Instant>,
    /// The thread pool that runs it (its `Shared`'s address), 0 elsewhere.
    /// Written once, at creation; read by `threads::join_watch`.
    pub(crate) pool: usize,
    /// The latest progress reported (`Context::progress`): an `f32`'s bits,
    /// or [`NO_PROGRESS`]. Written by the task's code (threads) or the link
    /// thread (processes), latest wins; read by the handle and its watchers.
    /// It sits in what was padding: the header is 72 bytes with or without it
    /// (x86-64 Linux; `size_of_header_did_not_grow` below).
    progress: AtomicU32,
}

/// `Header::progress` before any report. A NaN's bits, which a report never
/// stores ([`progress_bits`] refuses NaN).
pub(crate) const NO_PROGRESS: u32 = u32::MAX;

/// What a progress report stores: `fraction` clamped to `0.0..=1.0` (and -0.0
/// made 0.0), as bits; `None` for NaN, which is ignored.
#[inline]
pub(crate) fn progress_bits(fraction: f32) -> Option<u32> {
    if fraction.is_nan() {
        return None;
    }
    // `+ 0.0` turns -0.0 into 0.0, so equal fractions have equal bits.
    Some((fraction.clamp(0.0, 1.0) + 0.0).to_bits())
}

impl Header {
    /// A header for a task submitted now.
    #[inline]
    pub(crate) fn new(id: TaskId, priority: Priority, limits: Limits, bounded: bool) -> Self {
        Self::with_queued_at(id, priority, limits, bounded, Some(Instant::now()))
    }

    /// A header for a task submitted at `queued_at` (a batch reads the clock
    /// once for all its tasks; `None`: not timed).
    #[inline]
    pub(crate) fn with_queued_at(
        id: TaskId,
        priority: Priority,
        limits: Limits,
        bounded: bool,
        queued_at: Option<Instant>,
    ) -> Self {
        Header {
            state: AtomicUsize::new(0),
            id,
            worker: AtomicU64::new(0),
            priority,
            limits,
            bounded,
            queued_at,
            pool: 0,
            progress: AtomicU32::new(NO_PROGRESS),
        }
    }

    #[inline]
    pub(crate) fn id(&self) -> TaskId {
        self.id
    }

    #[inline]
    pub(crate) fn is_cancel_requested(&self) -> bool {
        self.state.load(Relaxed) & CANCEL != 0
    }

    /// Raises `CANCEL` without deciding an outcome. Only for the header a
    /// worker process builds for the task it runs, which has no result slot:
    /// the pool decides that task's outcome. The worker raises it when it is
    /// told to stop (`processes/worker_stop.rs`), so the task's code sees
    /// `Context::is_cancelled` and can return.
    #[cfg(all(feature = "process", target_os = "linux"))]
    pub(crate) fn request_cancel(&self) {
        self.state.fetch_or(CANCEL, AcqRel);
    }

    #[inline]
    pub(crate) fn is_resolved(&self) -> bool {
        self.state.load(Acquire) & RESOLVED != 0
    }

    /// Whether an outcome has been chosen (it may still be being written).
    #[inline]
    pub(crate) fn is_decided(&self) -> bool {
        self.state.load(Acquire) & (RESOLVING | RESOLVED) != 0
    }

    /// How the task ended; `None` until it has resolved.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        let state = self.state.load(Acquire);
        if state & RESOLVED == 0 {
            return None;
        }
        Outcome::from_code(state >> OUTCOME_SHIFT)
    }

    /// Waits out the short window between another thread's `RESOLVING` and its
    /// `RESOLVED` (straight-line crew code, no user code runs there), then reads the
    /// outcome.
    pub(crate) fn settled_outcome(&self) -> Outcome {
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            if let Some(o) = self.outcome() {
                return o;
            }
            backoff.snooze();
        }
    }

    pub(crate) fn worker(&self) -> Option<WorkerId> {
        WorkerId::from_raw(self.worker.load(Relaxed))
    }

    /// Records who runs the task (a backend that runs it elsewhere).
    pub(crate) fn set_worker(&self, worker: WorkerId) {
        self.worker.store(worker.raw(), Relaxed);
    }

    /// Whether the payload has been taken: the task started, or was resolved
    /// without running.
    #[inline]
    pub(crate) fn is_claimed(&self) -> bool {
        self.state.load(Acquire) & CLAIMED != 0
    }

    /// Takes ownership of the payload. True for exactly one caller.
    #[inline]
    pub(super) fn claim(&self) -> bool {
        self.state.fetch_or(CLAIMED, AcqRel) & CLAIMED == 0
    }

    /// The latest progress reported, as stored ([`progress_bits`]), or
    /// `None` before the first report.
    #[inline]
    pub(crate) fn progress(&self) -> Option<f32> {
        let bits = self.progress_raw();
        (bits != NO_PROGRESS).then(|| f32::from_bits(bits))
    }

    /// The stored bits ([`NO_PROGRESS`] before any report).
    #[inline]
    pub(super) fn progress_raw(&self) -> u32 {
        self.progress.load(Acquire)
    }

    /// Stores a report (`bits` from [`progress_bits`]), latest wins. Ignored
    /// once the task is decided, so a finished task keeps its last value
    /// (a report racing the resolution may still land). True if the value
    /// changed and someone watches: the caller then wakes the watchers
    /// (`Core::notify_progress`).
    ///
    /// No lost wake-up: the report swaps the value, then reads the state
    /// with a read-modify-write (`fetch_or(0)`); a watcher registers, then
    /// raises `WATCHED` with a read-modify-write, then reads the value. The
    /// two read-modify-writes of `state` are ordered: if the watcher's comes
    /// first, the report's sees `WATCHED` (and wakes the watcher); if the
    /// report's comes first, the watcher's acquires it, so the watcher's read
    /// sees the new value (and it does not sleep). `cell.md`, "Progress".
    /// (A plain load would need `SeqCst` on all four, which loom does not
    /// model.)
    #[inline]
    pub(crate) fn set_progress(&self, bits: u32) -> bool {
        if self.is_decided() {
            return false;
        }
        let old = self.progress.swap(bits, AcqRel);
        old != bits && self.state.fetch_or(0, AcqRel) & WATCHED != 0
    }

    /// Raises `WATCHED` (a watcher registered itself first). Returns whether
    /// the task had resolved: the watcher then must not sleep.
    #[inline]
    pub(super) fn watch(&self) -> bool {
        self.state.fetch_or(WATCHED, AcqRel) & RESOLVED != 0
    }
}

/// A task cell seen without its types: its header, and an owner that keeps the
/// cell alive (an async task's `Context` and run hold one).
pub(crate) trait CellRef: Send + Sync {
    fn header(&self) -> &Header;
    /// The same cell, typed again through `Any` (to `downcast` it).
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// Wakes the task's progress watchers (after [`Header::set_progress`]
    /// said so).
    fn notify_progress(&self);
}

/// Something that can hand out an owning reference to a task cell: the queue's
/// [`Job`](super::cell::Job). A [`Context`](crate::Context) for a job carries one, so that an async task can make
/// a context (and a run) that outlives the worker's call.
pub(crate) trait ShareCell: Sync {
    fn share(&self) -> Arc<dyn CellRef>;
    /// As [`CellRef::notify_progress`], without an `Arc` for it.
    fn notify_progress(&self);
}

#[cfg(all(test, not(crew_loom)))]
mod tests {
    use super::*;

    /// A header is in every task's one allocation: progress sits in its
    /// padding and the deadline is packed with the timeout (`Limits`), so tasks
    /// that use neither pay nothing for them.
    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn size_of_header_did_not_grow() {
        assert_eq!(std::mem::size_of::<Header>(), 72);
    }

    #[test]
    fn a_report_is_clamped_and_nan_is_ignored() {
        assert_eq!(progress_bits(f32::NAN), None);
        assert_eq!(progress_bits(-3.0), Some(0f32.to_bits()));
        assert_eq!(progress_bits(-0.0), Some(0f32.to_bits()));
        assert_eq!(progress_bits(2.0), Some(1f32.to_bits()));
        assert_eq!(progress_bits(f32::INFINITY), Some(1f32.to_bits()));
        assert_eq!(progress_bits(0.25), Some(0.25f32.to_bits()));
        let h = Header::new(TaskId(1), Priority::Normal, Limits::NONE, false);
        assert_eq!(h.progress(), None);
        assert!(!h.set_progress(0.5f32.to_bits()), "nobody watches");
        assert_eq!(h.progress(), Some(0.5));
        h.watch();
        assert!(!h.set_progress(0.5f32.to_bits()), "no change");
        assert!(h.set_progress(0.75f32.to_bits()));
        h.state.fetch_or(RESOLVING | RESOLVED, AcqRel);
        assert!(!h.set_progress(1f32.to_bits()));
        assert_eq!(h.progress(), Some(0.75), "a finished task keeps its value");
    }
}

#[cfg(all(test, not(crew_loom), target_pointer_width = "64"))]
mod limits_tests {
    use super::*;

    #[test]
    fn limits_round_trip_and_pick_the_earlier_end() {
        let none = Limits::new(None, None);
        assert!(!none.is_set() && none == Limits::NONE);
        assert_eq!((none.timeout(), none.deadline()), (None, None));
        assert_eq!(none.end(Instant::now()), None);

        // Far enough from the clock's zero for the subtractions below.
        let start = Instant::now() + Duration::from_secs(3600);
        let timeout = Limits::new(Some(Duration::from_millis(5)), None);
        assert!(timeout.is_set() && !timeout.has_deadline());
        assert_eq!(timeout.end(start), Some(start + Duration::from_millis(5)));

        let at = start + Duration::from_secs(1);
        let both = Limits::new(Some(Duration::from_secs(5)), Some(at));
        assert!(both.is_set() && both.has_deadline());
        assert_eq!(both.timeout(), Some(Duration::from_secs(5)));
        let back = both.deadline().unwrap();
        let diff = if back > at { back - at } else { at - back };
        assert!(diff < Duration::from_micros(1), "{back:?} vs {at:?}");
        assert_eq!(both.end(start), Some(back), "the deadline comes first");
        assert_eq!(
            both.end(start - Duration::from_secs(10)),
            Some(start - Duration::from_secs(5)),
            "the timeout comes first"
        );

        // A deadline before the epoch is already past; a huge timeout is none.
        let past = Limits::new(None, Some(start - Duration::from_secs(3600)));
        assert!(past.deadline().unwrap() <= start);
        assert_eq!(Limits::new(Some(Duration::MAX), None).timeout(), None);
    }
}
