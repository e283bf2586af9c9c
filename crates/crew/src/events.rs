//! The event stream: what a pool's tasks and workers are doing, as it happens.
//!
//! [`Pool::events`](crate::Pool::events) returns an [`Events`] subscription.
//! Each subscriber has its own bounded buffer; the pool pushes every event into
//! every buffer and never waits for a reader.
//!
//! # Delivery guarantees
//!
//! - **Per-subscriber FIFO per emitting thread.** Events emitted by one thread
//!   reach each subscriber in the order that thread emitted them. There is no
//!   global order across threads: worker 1's `TaskFinished` may arrive before
//!   worker 2's `TaskStarted` even if it happened later.
//! - **Causal order where it matters.** A task's `TaskStarted` is pushed before
//!   the task is published to the monitor and to `kill_worker`, so a
//!   `TaskFinished` emitted by another thread (a timeout's abandonment, a kill)
//!   always comes after it. A worker's `WorkerStarted` and its `WorkerExited`
//!   are both emitted under the registry lock, so they cannot swap either.
//! - **Exactly one terminal event per task** (`TaskFinished` or `TaskDiscarded`),
//!   emitted at the one place that also *counts* the task in the pool's stats
//!   (see `threads/mod.rs`, "Counting"): whoever takes the task's `Running`
//!   entry out of its worker's slot, or whoever pops or drains its queue entry.
//!   A subscriber that joins while a task is queued or running may see that
//!   task's terminal event without its `TaskStarted`, or neither (whether a task
//!   is observed is decided once, when it starts, so `TaskStarted` and
//!   `TaskFinished` come in pairs).
//! - **Lossy when full.** When a subscriber's buffer
//!   ([`PoolBuilder::event_buffer`](crate::PoolBuilder::event_buffer)) is full,
//!   the *new* event is dropped for that subscriber and its
//!   [`Events::dropped`] count goes up. Dropping the newest (rather than the
//!   oldest) keeps what was already queued intact and in order, so a reader
//!   that falls behind sees a clean prefix and a count of what it missed,
//!   never a stream with silent holes in the middle of what it already had.
//! - **End of stream.** Once the pool is shut down and its last worker has
//!   exited, [`Events::recv`] returns the events still buffered, then `None`.
//!
//! # Cost
//!
//! With no subscriber, a task pays one `Relaxed` load of [`Bus::is_active`] on
//! the worker (in `run_job`). With subscribers, each event takes the bus lock
//! briefly (to clone the subscriber list's `Arc`) and each subscriber's lock (to
//! push). The durations in `TaskStarted` and `TaskFinished` come from the clock
//! reads every task makes anyway for [`Stats`](crate::Stats) (one at submit, one
//! at start, one at the end: `waited` is start minus submit, `ran` end minus
//! start).
//!
//! # Backends
//!
//! Every field is plain data (ids, durations, strings, small enums, a boxed
//! `Stats` snapshot), with no
//! reference and no user type, so the process backend can fill the same events
//! from its supervisor and its wire frames.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::task::{Context as PollContext, Poll, Waker};
use std::time::{Duration, Instant};

use crate::stats::Stats;
use crate::sync::{after, lock, wait_until, Arc, AtomicBool, AtomicU64, Condvar, Mutex};
use crate::task::cell::Outcome;
use crate::task::TaskId;
use crate::worker::WorkerId;

/// Something a pool's tasks or workers did. From an [`Events`] subscription.
///
/// Both the enum and each variant are `#[non_exhaustive]`: new kinds and new
/// fields can be added later, so match with `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A worker took a task and is about to run it.
    #[non_exhaustive]
    TaskStarted {
        /// The task.
        task: TaskId,
        /// The worker running it ([`WorkerId::CALLER`] under
        /// [`WhenFull::CallerRuns`](crate::WhenFull::CallerRuns)).
        worker: WorkerId,
        /// From its submission until now.
        waited: Duration,
    },
    /// A task that started is finished with: it returned, or the pool resolved
    /// it (timeout, kill, cancel) and its worker returned or was given up on.
    #[non_exhaustive]
    TaskFinished {
        /// The task.
        task: TaskId,
        /// The worker that ran it.
        worker: WorkerId,
        /// How it ended, as its handle saw it.
        outcome: TaskOutcome,
        /// From its submission until it started (as in its `TaskStarted`).
        waited: Duration,
        /// From start until its worker returned, or until the pool gave up on
        /// the worker (abandoned or killed).
        ran: Duration,
    },
    /// A task resolved without running: cancelled while queued, closed by a
    /// shutdown or `terminate`, or failed because no worker could start.
    /// Emitted by whichever thread popped or drained it.
    #[non_exhaustive]
    TaskDiscarded {
        /// The task.
        task: TaskId,
        /// How it was resolved.
        outcome: TaskOutcome,
    },
    /// A worker's `Worker::start` succeeded; it takes tasks now.
    #[non_exhaustive]
    WorkerStarted {
        /// The worker.
        worker: WorkerId,
    },
    /// A worker could not start (`Worker::start` failed or panicked, or the OS
    /// refused its thread). It retries with backoff.
    #[non_exhaustive]
    WorkerStartFailed {
        /// The worker.
        worker: WorkerId,
        /// The start error's message.
        message: String,
        /// This worker's consecutive failures so far (1 on the first).
        consecutive: u32,
    },
    /// A worker rebuilt its state (`stop`, then `start`) after a task panicked,
    /// and takes tasks again.
    #[non_exhaustive]
    WorkerRestarted {
        /// The worker.
        worker: WorkerId,
        /// Why it restarted.
        reason: String,
    },
    /// The pool no longer counts this worker. Emitted exactly once per worker
    /// that was created.
    #[non_exhaustive]
    WorkerExited {
        /// The worker.
        worker: WorkerId,
        /// Why.
        reason: ExitReason,
    },
    /// The queue has held more than the health watcher's threshold for its
    /// whole `backlog_for` period ([`Health`](crate::Health)). Emitted once
    /// per episode: again only after the queue has dropped to the threshold or
    /// below.
    #[non_exhaustive]
    Backlog {
        /// Tasks queued when the watcher looked.
        queued: usize,
        /// Workers the pool counted then.
        workers: usize,
        /// The threshold it stayed above.
        threshold: usize,
        /// How long it has stayed above.
        since: Duration,
    },
    /// A periodic snapshot from the health watcher
    /// ([`Health::stats_every`](crate::Health::stats_every)).
    #[non_exhaustive]
    Stats {
        /// The snapshot, as [`Pool::stats`](crate::Pool::stats) returns it.
        stats: Box<Stats>,
    },
}

impl Event {
    /// The task this event is about, if any.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Event::TaskStarted { task, .. }
            | Event::TaskFinished { task, .. }
            | Event::TaskDiscarded { task, .. } => Some(*task),
            _ => None,
        }
    }

    /// The worker this event is about, if any (a discarded task has none).
    pub fn worker(&self) -> Option<WorkerId> {
        match self {
            Event::TaskStarted { worker, .. }
            | Event::TaskFinished { worker, .. }
            | Event::WorkerStarted { worker }
            | Event::WorkerStartFailed { worker, .. }
            | Event::WorkerRestarted { worker, .. }
            | Event::WorkerExited { worker, .. } => Some(*worker),
            Event::TaskDiscarded { .. } | Event::Backlog { .. } | Event::Stats { .. } => None,
        }
    }

    /// The task outcome of a `TaskFinished` or `TaskDiscarded`.
    pub fn outcome(&self) -> Option<TaskOutcome> {
        match self {
            Event::TaskFinished { outcome, .. } | Event::TaskDiscarded { outcome, .. } => {
                Some(*outcome)
            }
            _ => None,
        }
    }
}

/// How a task ended, in an [`Event`]. Mirrors the kinds of
/// [`TaskError`](crate::TaskError), without the payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskOutcome {
    /// It returned `Ok`.
    Completed,
    /// It returned the worker's own error.
    Failed,
    /// It panicked.
    Panicked,
    /// It was cancelled (by its handle, or by `terminate` while running).
    Cancelled,
    /// It ran past its timeout.
    TimedOut,
    /// Its worker was killed under it.
    Killed,
    /// The pool was shut down before it ran.
    Closed,
    /// No worker could start to run it.
    StartFailed,
    /// Its worker process died under it.
    Crashed,
    /// Its worker process broke the wire protocol.
    Protocol,
    /// Its input or result was larger than the process pool's
    /// `max_message_size` ([`TaskError::is_too_large`](crate::TaskError::is_too_large)).
    TooLarge,
}

impl From<Outcome> for TaskOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Ok => TaskOutcome::Completed,
            Outcome::UserError => TaskOutcome::Failed,
            Outcome::Panicked => TaskOutcome::Panicked,
            Outcome::Cancelled => TaskOutcome::Cancelled,
            Outcome::TimedOut => TaskOutcome::TimedOut,
            Outcome::Killed => TaskOutcome::Killed,
            Outcome::Closed => TaskOutcome::Closed,
            Outcome::StartFailed => TaskOutcome::StartFailed,
            Outcome::Crashed => TaskOutcome::Crashed,
            Outcome::Protocol => TaskOutcome::Protocol,
            Outcome::TooLarge => TaskOutcome::TooLarge,
        }
    }
}

/// Why a worker left the pool, in [`Event::WorkerExited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitReason {
    /// The pool shut down (or terminated).
    Shutdown,
    /// An elastic pool's extra worker stayed idle for `idle_timeout`, or
    /// [`Pool::resize`](crate::Pool::resize) shrank the pool. It runs
    /// `Worker::stop` as it leaves (a thread, after this event; a process,
    /// before it).
    Retired,
    /// [`Pool::kill_worker`](crate::Pool::kill_worker) retired it.
    Killed,
    /// Its task timed out and did not return within `abandon_grace`: the pool
    /// gave up on the thread (it leaves when the task returns, if ever) and
    /// started a replacement.
    Abandoned,
    /// Its process died (a crash, a signal, `exit`), or broke the protocol.
    Crashed,
    /// Its process was replaced after `max_tasks_per_worker` tasks or above
    /// `max_memory`.
    Recycled,
}

// ------------------------------------------------------------------ the bus

/// One subscriber's buffer. Written by emitting threads, read by its `Events`
/// (or `Messages`, which uses the same bus for worker messages).
pub(crate) struct Sub<T = Event> {
    state: Mutex<SubState<T>>,
    /// Signalled on every push and on close, for a blocked `recv`.
    ready: Condvar,
    /// Events this subscriber lost to a full buffer. Written by emitters.
    dropped: AtomicU64,
    capacity: usize,
}

struct SubState<T> {
    queue: VecDeque<T>,
    /// The pending `recv_async`'s waker; taken (and woken) by the next push.
    waker: Option<Waker>,
    /// No event will come any more.
    closed: bool,
}

impl<T: Clone> Sub<T> {
    /// Pushes `event`, or counts it as dropped if the buffer is full. Returns the
    /// waker to wake, so it is woken outside the lock.
    fn push(&self, event: &T) -> Option<Waker> {
        let mut st = lock(&self.state);
        if st.closed {
            return None;
        }
        if st.queue.len() >= self.capacity {
            drop(st);
            self.dropped.fetch_add(1, Relaxed);
            return None;
        }
        st.queue.push_back(event.clone());
        let waker = st.waker.take();
        drop(st);
        self.ready.notify_one();
        waker
    }

    fn close(&self) -> Option<Waker> {
        let mut st = lock(&self.state);
        st.closed = true;
        let waker = st.waker.take();
        drop(st);
        self.ready.notify_all();
        waker
    }

    /// Items this subscriber lost to a full buffer.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// The next item if one is buffered.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = lock(&self.state);
        match st.queue.pop_front() {
            Some(item) => Ok(item),
            None if st.closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next item; `Err(true)`: the stream ended; `Err(false)`: the deadline
    /// passed.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Result<T, bool> {
        let mut st = lock(&self.state);
        loop {
            if let Some(item) = st.queue.pop_front() {
                return Ok(item);
            }
            if st.closed {
                return Err(true);
            }
            st = match wait_until(&self.ready, st, deadline) {
                Ok(st) => st,
                Err(_) => return Err(false),
            };
        }
    }

    /// Polls for the next item; `Ready(None)` once the stream has ended. One
    /// waker slot: callers borrow their subscription mutably while polling.
    pub(crate) fn poll_recv(&self, cx: &mut PollContext<'_>) -> Poll<Option<T>> {
        let mut st = lock(&self.state);
        if let Some(item) = st.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The subscriber registry of one pool. Shared by the pool (which emits) and by
/// every [`Events`] (which unsubscribes on drop); it does not keep the pool alive.
pub struct Bus<T = Event> {
    /// Whether anyone is subscribed. The only thing the hot path reads (`Relaxed`:
    /// a subscriber that appears concurrently with a task may miss it, which the
    /// guarantees above allow). Written under `subs`.
    active: AtomicBool,
    /// The subscribers, copy-on-write so an emitter holds the lock only to clone
    /// the `Arc`. Also holds whether the bus is closed.
    subs: Mutex<Subscribers<T>>,
    capacity: usize,
}

struct Subscribers<T> {
    list: Arc<Vec<Arc<Sub<T>>>>,
    closed: bool,
}

impl<T: Clone> Bus<T> {
    /// A bus whose subscribers each buffer up to `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Bus {
            active: AtomicBool::new(false),
            subs: Mutex::new(Subscribers {
                list: Arc::new(Vec::new()),
                closed: false,
            }),
            capacity,
        }
    }

    /// Whether any subscriber exists. One `Relaxed` load; call once per task.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Pushes `event` to every subscriber. Never blocks on a reader.
    #[cold]
    #[inline(never)]
    pub fn emit(&self, event: T) {
        drop(self.emit_deferred(event));
    }

    /// Like [`emit`](Bus::emit), but the async readers' wakers are woken only when
    /// the returned value is dropped: for callers that hold one of crew's locks
    /// (a waker is user code, which crew never runs under its own locks).
    #[cold]
    #[inline(never)]
    pub(crate) fn emit_deferred(&self, event: T) -> Wake {
        let mut wake = Wake(Vec::new());
        if !self.is_active() {
            return wake;
        }
        let list = Arc::clone(&lock(&self.subs).list);
        for sub in list.iter() {
            wake.0.extend(sub.push(&event));
        }
        wake
    }

    /// Ends every subscription (after what is buffered) and refuses new ones.
    /// Idempotent.
    pub fn close(&self) {
        let list = {
            let mut subs = lock(&self.subs);
            if subs.closed {
                return;
            }
            subs.closed = true;
            self.active.store(false, SeqCst);
            std::mem::take(&mut subs.list)
        };
        for sub in list.iter() {
            if let Some(waker) = sub.close() {
                waker.wake();
            }
        }
    }

    /// A new subscriber's buffer, registered (or closed at once if the bus is).
    pub(crate) fn subscribe_raw(&self) -> Arc<Sub<T>> {
        let sub = Arc::new(Sub {
            state: Mutex::new(SubState {
                queue: VecDeque::new(),
                waker: None,
                closed: false,
            }),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
            capacity: self.capacity,
        });
        {
            let mut subs = lock(&self.subs);
            if subs.closed {
                lock(&sub.state).closed = true;
            } else {
                let mut list = Vec::clone(&subs.list);
                list.push(Arc::clone(&sub));
                subs.list = Arc::new(list);
                self.active.store(true, SeqCst);
            }
        }
        sub
    }

    pub(crate) fn unsubscribe(&self, sub: &Arc<Sub<T>>) {
        let mut subs = lock(&self.subs);
        if subs.list.iter().any(|s| Arc::ptr_eq(s, sub)) {
            let list: Vec<Arc<Sub<T>>> = subs
                .list
                .iter()
                .filter(|s| !Arc::ptr_eq(s, sub))
                .cloned()
                .collect();
            self.active.store(!list.is_empty(), SeqCst);
            subs.list = Arc::new(list);
        }
    }

    /// The number of subscribers now.
    #[cfg(test)]
    fn subscribers(&self) -> usize {
        lock(&self.subs).list.len()
    }
}

impl Bus<Event> {
    /// A new subscription to the pool's events.
    pub fn subscribe(self: &Arc<Self>) -> Events {
        Events {
            bus: Arc::clone(self),
            sub: self.subscribe_raw(),
        }
    }
}

/// Wakers to wake once the emitter has released its locks (on drop).
#[must_use = "dropping it wakes the async readers"]
pub(crate) struct Wake(Vec<Waker>);

impl Drop for Wake {
    fn drop(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

impl<T: Clone> fmt::Debug for Bus<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("active", &self.is_active())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

// ------------------------------------------------------------------ Events

/// A subscription to a pool's [`Event`]s, from
/// [`Pool::events`](crate::Pool::events).
///
/// Delivery: events emitted by one thread arrive in the order it emitted them
/// (no global order across threads); every task that started or was discarded
/// while you were subscribed yields exactly one `TaskFinished` or
/// `TaskDiscarded`; when this subscriber's buffer is full, the newest event is
/// dropped and [`dropped`](Events::dropped) counts it; and `recv` returns `None`
/// once the pool has shut down, its workers have exited, and everything buffered
/// was read. (`events.md` beside this file has the argument.)
///
/// Read it by blocking ([`recv`](Events::recv), or as an `Iterator`), with a
/// timeout, without waiting, or asynchronously ([`recv_async`](Events::recv_async),
/// no particular runtime needed).
///
/// **Dropping it unsubscribes**: the pool stops buffering for it at once.
#[must_use = "an Events subscription buffers events until it is dropped"]
pub struct Events {
    bus: Arc<Bus>,
    sub: Arc<Sub>,
}

impl Events {
    /// The next event, blocking until one arrives. `None` once the pool has shut
    /// down, its workers have exited, and every buffered event has been read.
    pub fn recv(&self) -> Option<Event> {
        self.wait(None).ok()
    }

    /// Like [`recv`](Events::recv), for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        match self.wait(Some(after(Instant::now(), timeout))) {
            Ok(event) => Ok(event),
            Err(true) => Err(RecvTimeoutError::Disconnected),
            Err(false) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// The next event if one is buffered. `Disconnected` once the stream has ended.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.sub.try_recv()
    }

    /// Waits for the next event asynchronously; resolves to `None` when the stream
    /// has ended. Needs no particular runtime.
    ///
    /// (Named `recv_async` rather than `next` so it does not shadow
    /// `Iterator::next`, which blocks.)
    pub fn recv_async(&mut self) -> RecvAsync<'_> {
        RecvAsync { events: self }
    }

    /// Events this subscriber lost because its buffer was full.
    pub fn dropped(&self) -> u64 {
        self.sub.dropped()
    }

    /// `Err(true)`: the stream ended; `Err(false)`: the deadline passed.
    fn wait(&self, deadline: Option<Instant>) -> Result<Event, bool> {
        self.sub.wait(deadline)
    }
}

impl Iterator for Events {
    type Item = Event;

    /// Blocks like [`Events::recv`]; the iterator ends with the stream.
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

/// The same stream as [`Events::recv_async`], for `StreamExt` and friends:
/// `None` once the pool has shut down and every buffered event was read.
///
/// It is also a blocking `Iterator`, so with `StreamExt` in scope name the trait:
/// `StreamExt::next(&mut events).await`.
impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Option<Event>> {
        // `&mut self`: one poller at a time, as for `recv_async` (one waker).
        self.sub.poll_recv(cx)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.bus.unsubscribe(&self.sub);
    }
}

impl fmt::Debug for Events {
    /// Does not lock anything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The future from [`Events::recv_async`].
#[must_use = "futures do nothing unless awaited"]
pub struct RecvAsync<'a> {
    events: &'a mut Events,
}

impl Future for RecvAsync<'_> {
    type Output = Option<Event>;

    fn poll(self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Option<Event>> {
        // `recv_async` borrows the subscription mutably, so at most one such
        // future exists at a time (the buffer keeps one waker).
        self.events.sub.poll_recv(cx)
    }
}

impl fmt::Debug for RecvAsync<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvAsync").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(n: u64) -> Event {
        Event::WorkerStarted {
            worker: WorkerId::new(n),
        }
    }

    #[test]
    fn full_buffer_drops_the_newest_and_counts_it() {
        let bus = Arc::new(Bus::new(2));
        let events = bus.subscribe();
        for n in 1..=5 {
            bus.emit(started(n));
        }
        assert_eq!(events.try_recv(), Ok(started(1)));
        assert_eq!(events.try_recv(), Ok(started(2)));
        assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(events.dropped(), 3);
    }

    #[test]
    fn close_ends_the_stream_after_the_buffer() {
        let bus = Arc::new(Bus::new(8));
        let events = bus.subscribe();
        bus.emit(started(1));
        bus.close();
        bus.emit(started(2)); // after close: nobody gets it
        assert_eq!(events.recv(), Some(started(1)));
        assert_eq!(events.recv(), None);
        assert!(bus.subscribe().recv().is_none());
    }

    #[test]
    fn dropping_unsubscribes() {
        let bus = Arc::new(Bus::new(8));
        let a = bus.subscribe();
        let b = bus.subscribe();
        assert_eq!(bus.subscribers(), 2);
        drop(a);
        assert_eq!(bus.subscribers(), 1);
        assert!(bus.is_active());
        drop(b);
        assert!(!bus.is_active());
    }
}
