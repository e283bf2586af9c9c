//! Waiting for the pool to become idle: `Pool::wait_idle` and `Pool::idle`.
//!
//! Idleness is computed, not tracked: `Shared::is_idle` adds up the counters (see
//! "Counting" in `threads/mod.rs`). Waiters register in `waiters`; a thread whose
//! action may have made the pool idle (a worker about to park, a drain, an exit)
//! calls [`Idle::notify`], which costs one fence and one load when nobody waits.
//!
//! No lost wake-up: a waiter raises `waiters`, then checks under `lock`; a notifier
//! changes the counters, then (after a SeqCst fence) reads `waiters` and, if set,
//! re-checks and signals under `lock`. Either the waiter's check sees the change,
//! or the notifier sees the waiter and signals after the waiter sleeps.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, Ordering::SeqCst};
use std::task::{Context as PollContext, Poll, Waker};
use std::time::Instant;

use super::Shared;
use crate::sync::{lock, wait_until, Arc, AtomicUsize, Condvar, Mutex};
use crate::worker::Worker;

pub(super) struct Idle {
    /// Blocking and async waiters currently registered.
    waiters: AtomicUsize,
    /// Async waiters' wakers; the lock also orders checks against signals.
    wakers: Mutex<Vec<Waker>>,
    cond: Condvar,
}

impl Idle {
    pub(super) fn new() -> Self {
        Idle {
            waiters: AtomicUsize::new(0),
            wakers: Mutex::new(Vec::new()),
            cond: Condvar::new(),
        }
    }

    /// Wakes every waiter if the pool is idle. Cheap when nobody waits.
    #[inline]
    pub(super) fn notify(&self, is_idle: impl FnOnce() -> bool) {
        fence(SeqCst);
        if self.waiters.load(SeqCst) == 0 {
            return;
        }
        self.notify_slow(is_idle);
    }

    #[cold]
    fn notify_slow(&self, is_idle: impl FnOnce() -> bool) {
        if !is_idle() {
            return;
        }
        let wakers = {
            let mut wakers = lock(&self.wakers);
            self.cond.notify_all();
            std::mem::take(&mut *wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Blocks until `is_idle()` or `deadline`. True if idle.
    pub(super) fn wait(&self, is_idle: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
        self.waiters.fetch_add(1, SeqCst);
        let _registered = Registered(&self.waiters);
        let mut guard = lock(&self.wakers);
        loop {
            if is_idle() {
                return true;
            }
            match wait_until(&self.cond, guard, deadline) {
                Ok(g) => guard = g,
                Err(_) => return false,
            }
        }
    }
}

/// Decrements the waiter count when a waiter leaves, however it leaves.
struct Registered<'a>(&'a AtomicUsize);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// The future returned by `Pool::idle`.
pub(crate) struct IdleFuture<W: Worker> {
    shared: Arc<Shared<W>>,
    registered: bool,
}

impl<W: Worker> IdleFuture<W> {
    pub(super) fn new(shared: Arc<Shared<W>>) -> Self {
        IdleFuture {
            shared,
            registered: false,
        }
    }
}

impl<W: Worker> Future for IdleFuture<W> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<()> {
        if self.shared.is_idle() {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            self.shared.idle.waiters.fetch_add(1, SeqCst);
        }
        let mut wakers = lock(&self.shared.idle.wakers);
        if self.shared.is_idle() {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<W: Worker> Drop for IdleFuture<W> {
    fn drop(&mut self) {
        if self.registered {
            self.shared.idle.waiters.fetch_sub(1, SeqCst);
        }
    }
}

impl<W: Worker> std::fmt::Debug for IdleFuture<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleFuture").finish_non_exhaustive()
    }
}
