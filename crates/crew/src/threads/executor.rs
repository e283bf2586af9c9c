//! Each worker thread's executor: the async tasks it has in flight.
//!
//! # Why this shape
//!
//! The worker thread itself is the executor: it polls its futures between taking
//! tasks, so one thread per worker both runs futures and serves the queue, and a
//! worker's futures never move to another thread (they need not be `Send`).
//!
//! - **The set of futures** is a `futures_util::stream::FuturesUnordered`: a slab of
//!   futures, each with its own waker, that polls only the futures woken since the
//!   last poll. It is the executor core of the `futures` crate (what `LocalPool`
//!   is built on), with none of `LocalPool`'s own parking, which would sleep on
//!   the thread's park token and could not also wait for new tasks.
//! - **Waking the thread** is crew's: the set is polled with one waker per worker,
//!   [`WorkerWake`], which raises `ready` and, if the thread is asleep or about to
//!   sleep, nudges it through its [`Sleeper`]. How the worker sleeps depends on
//!   whether it may take new tasks (see `worker_loop.rs`): in the pool's sleep
//!   protocol (`ready` is one of its stay-awake conditions, so the park ends with
//!   `Interrupted`), or, when it is full, outside it (`wait`), where it is counted
//!   as busy and no submitter wakes it.
//!
//! # No lost wake-up
//!
//! `WorkerWake::wake` stores `ready`, then reads `sleeping`; the worker stores
//! `sleeping`, then reads `ready` before it waits (and `Sleeper`'s wait re-checks it
//! under the lock the nudge takes). All four are `SeqCst`, so at least one side sees
//! the other: either the worker does not wait, or the waker nudges it. A wake-up
//! while the worker is busy costs one swap and one load, no syscall.
//!
//! # Cost
//!
//! An async task costs three allocations more than a synchronous one: the boxed
//! future, the boxed run that resolves the task (`task::cell::Resolve`), and the
//! set's node for it.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::task::{Context as PollContext, Poll, Wake, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::scheduler::sleep::Sleeper;
use crate::sync::modelled;
use crate::task::cell::{AsyncRun, Ran};
use crate::task::TaskId;

/// The waker a worker's futures wake (through the set's per-future wakers).
pub(super) struct WorkerWake {
    /// Some future was woken since the worker last polled. Set by wakers (any
    /// thread), cleared by the worker before it polls.
    ready: AtomicBool,
    /// The worker is asleep or about to be. Written by the worker only.
    sleeping: AtomicBool,
    sleeper: modelled::Arc<Sleeper>,
}

impl WorkerWake {
    /// Whether a future was woken since the worker last polled.
    #[inline]
    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(SeqCst)
    }
}

impl Wake for WorkerWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.ready.swap(true, SeqCst) {
            return; // already raised: the worker will poll
        }
        if self.sleeping.load(SeqCst) {
            self.sleeper.unpark();
        }
    }
}

/// One worker's futures in flight. Owned by the worker thread.
pub(super) struct Executor {
    in_flight: FuturesUnordered<AsyncRun>,
    /// `in_flight.len()`, kept here: the worker loop reads it every turn, and
    /// the set's own count is behind a pointer.
    len: usize,
    wake: Arc<WorkerWake>,
    waker: Waker,
    /// The most tasks (of any kind) in flight at once: `PoolBuilder::concurrency`.
    concurrency: usize,
}

impl Executor {
    pub(super) fn new(concurrency: usize, sleeper: modelled::Arc<Sleeper>) -> Self {
        let wake = Arc::new(WorkerWake {
            ready: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            sleeper,
        });
        Executor {
            in_flight: FuturesUnordered::new(),
            len: 0,
            waker: Waker::from(Arc::clone(&wake)),
            wake,
            concurrency,
        }
    }

    /// Whether no future is in flight.
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the worker loop has anything to do here: a future in flight, or a
    /// wake-up to clear (a late wake of a task that has ended). One load and a
    /// compare, for a worker that runs only synchronous tasks.
    #[inline]
    pub(super) fn is_active(&self) -> bool {
        self.len != 0 || self.wake.ready.load(SeqCst)
    }

    /// Whether the worker may start one more task: a synchronous one runs to its
    /// end while the futures wait, so it takes one of the `concurrency` places too.
    #[inline]
    pub(super) fn has_room(&self) -> bool {
        self.len < self.concurrency
    }

    /// Whether a future was woken since the last `poll`.
    #[inline]
    pub(super) fn is_ready(&self) -> bool {
        self.wake.is_ready()
    }

    /// The flag `is_ready` reads, for a condition that outlives a borrow of the
    /// executor (the park's stay-awake check).
    pub(super) fn wake_handle(&self) -> Arc<WorkerWake> {
        Arc::clone(&self.wake)
    }

    /// Adds a task's future; it is polled on the next `poll`.
    pub(super) fn push(&mut self, run: AsyncRun) {
        self.in_flight.push(run);
        self.len += 1;
        self.wake.ready.store(true, SeqCst);
    }

    /// Polls the futures woken since the last call and hands each task that ended
    /// to `finished`; returns whether it polled. Cheap (one load) when nothing was
    /// woken.
    #[inline]
    pub(super) fn poll(&mut self, finished: impl FnMut(TaskId, Ran)) -> bool {
        if self.wake.ready.load(SeqCst) {
            self.poll_woken(finished);
            return true;
        }
        false
    }

    #[cold]
    fn poll_woken(&mut self, mut finished: impl FnMut(TaskId, Ran)) {
        self.wake.ready.store(false, SeqCst);
        let mut cx = PollContext::from_waker(&self.waker);
        // The set yields (returns `Pending` after waking us again) when its futures
        // keep waking each other, so this loop ends and the worker can look at the
        // queue between rounds.
        while let Poll::Ready(Some((id, ran))) = self.in_flight.poll_next_unpin(&mut cx) {
            self.len -= 1;
            finished(id, ran);
        }
    }

    /// Marks the worker as going to sleep: from here until [`Executor::awake`],
    /// a woken future nudges its sleeper. Returns false (and stays awake) if a
    /// future is already ready.
    pub(super) fn sleeping(&self) -> bool {
        self.wake.sleeping.store(true, SeqCst);
        if self.wake.ready.load(SeqCst) {
            self.wake.sleeping.store(false, SeqCst);
            return false;
        }
        true
    }

    /// The worker is awake again.
    pub(super) fn awake(&self) {
        self.wake.sleeping.store(false, SeqCst);
    }

    /// Sleeps outside the pool's sleep protocol (the worker takes no new task now)
    /// until a future is woken or `leave()` holds. The nudge is the `Sleeper`'s,
    /// which unparks the thread; every other reason to look again (kill,
    /// terminate) nudges the same way.
    pub(super) fn wait(&self, leave: impl Fn() -> bool) {
        if !self.sleeping() {
            return;
        }
        while !self.is_ready() && !leave() {
            // A stray token (user code also parks this thread) only costs a loop.
            std::thread::park();
        }
        self.awake();
    }

    /// Drops every future in flight (the worker is leaving). Each run resolves
    /// its task as closed if nothing decided it first; a panicking `Drop` is
    /// caught there.
    pub(super) fn clear(&mut self) {
        self.in_flight.clear();
        self.len = 0;
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("in_flight", &self.in_flight.len())
            .field("concurrency", &self.concurrency)
            .finish()
    }
}
