//! Backpressure: the bound on queued tasks (`PoolBuilder::queue_capacity`).
//!
//! `queued` counts *bounded* tasks that were pushed and have not been popped yet
//! (popped means: a worker took it to run it or to skip its tombstone, or a drain
//! took it). Running tasks do not count. Tasks spawned from inside the pool's own
//! tasks are not bounded: a worker that blocked on a full queue of its own pool
//! could deadlock it.
//!
//! A submitter reserves a place before it allocates the task (`try_acquire`); the
//! place is given back when the task is popped (`release`). Blocked submitters and
//! async ones wait here; `release` wakes one of each kind. No lost wake-up: a
//! waiter raises `waiters` and re-checks under `lock`; `release` frees the place,
//! then (SeqCst on both sides) reads `waiters` and signals under `lock`.

use std::sync::atomic::Ordering::{Acquire, SeqCst};
use std::task::{Context as PollContext, Poll, Waker};

use crossbeam_utils::CachePadded;

use crate::sync::{lock, AtomicUsize, Condvar, Mutex};

pub(super) struct Capacity {
    limit: usize,
    /// Bounded tasks queued. Incremented by submitters, decremented by whoever pops.
    queued: CachePadded<AtomicUsize>,
    /// Threads blocked in `acquire` plus registered async wakers.
    waiters: AtomicUsize,
    /// Async waiters' wakers; the lock also orders checks against signals.
    lock: Mutex<Vec<Waker>>,
    cond: Condvar,
}

impl Capacity {
    pub(super) fn new(limit: usize) -> Self {
        Capacity {
            limit,
            queued: CachePadded::new(AtomicUsize::new(0)),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(Vec::new()),
            cond: Condvar::new(),
        }
    }

    /// Reserves one place if there is one.
    #[inline]
    pub(super) fn try_acquire(&self) -> bool {
        let mut n = self.queued.load(Acquire);
        while n < self.limit {
            match self.queued.compare_exchange_weak(n, n + 1, SeqCst, Acquire) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// Blocks until a place is reserved (true) or `give_up()` (false).
    pub(super) fn acquire(&self, give_up: impl Fn() -> bool) -> bool {
        if self.try_acquire() {
            return true;
        }
        self.waiters.fetch_add(1, SeqCst);
        let mut guard = lock(&self.lock);
        let acquired = loop {
            if self.try_acquire() {
                break true;
            }
            if give_up() {
                break false;
            }
            guard = self.cond.wait(guard).unwrap_or_else(|e| e.into_inner());
        };
        drop(guard);
        self.waiters.fetch_sub(1, SeqCst);
        acquired
    }

    /// The async form of `acquire`. `registered` tracks whether this waiter is
    /// counted in `waiters`; the caller must pass it to [`Capacity::forget`] when it
    /// goes away.
    pub(super) fn poll_acquire(
        &self,
        cx: &mut PollContext<'_>,
        registered: &mut bool,
        give_up: impl Fn() -> bool,
    ) -> Poll<bool> {
        if self.try_acquire() {
            self.forget(registered);
            return Poll::Ready(true);
        }
        if !*registered {
            *registered = true;
            self.waiters.fetch_add(1, SeqCst);
        }
        let mut wakers = lock(&self.lock);
        if self.try_acquire() {
            drop(wakers);
            self.forget(registered);
            return Poll::Ready(true);
        }
        if give_up() {
            drop(wakers);
            self.forget(registered);
            return Poll::Ready(false);
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Removes an async waiter's registration. If a place is free, the wake-up this
    /// waiter may have consumed is passed on.
    pub(super) fn forget(&self, registered: &mut bool) {
        if std::mem::take(registered) {
            self.waiters.fetch_sub(1, SeqCst);
            if self.queued.load(SeqCst) < self.limit && self.waiters.load(SeqCst) > 0 {
                self.wake(false);
            }
        }
    }

    /// Gives one place back and wakes a waiter, if any.
    #[inline]
    pub(super) fn release(&self) {
        self.queued.fetch_sub(1, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            self.wake(false);
        }
    }

    /// Wakes one blocked thread and one async waiter, or everyone (`all`: the
    /// pool closed, so every waiter must give up).
    #[cold]
    pub(super) fn wake(&self, all: bool) {
        let wakers = {
            let mut wakers = lock(&self.lock);
            if all {
                self.cond.notify_all();
                std::mem::take(&mut *wakers)
            } else {
                self.cond.notify_one();
                wakers.pop().into_iter().collect()
            }
        };
        for w in wakers {
            w.wake();
        }
    }
}
