//! The guard against a task that joins a task of its own pool when no worker is
//! left to run it (the rayon habit: spawn, then join, from inside a task).
//!
//! crew's `Task::join` blocks its thread; it does not run other tasks while it
//! waits (rayon's `join` does). On a pool whose workers are all blocked joining
//! tasks that have not started, nothing can ever start them: `workers(1)` and a
//! task that spawns and joins is the simplest case. Instead of hanging for ever,
//! the join that would complete the deadlock resolves its task with
//! [`TaskError::is_deadlock`](crate::TaskError::is_deadlock) and returns it.
//!
//! # The rule
//!
//! Each thread pool lists its worker threads blocked in `join` on a task of the
//! same pool that had not started, with the task each waits for
//! ([`JoinWatch::waiting`]). A join that would make the list as long as the pool's
//! maximum size, while no listed task has resolved, means every worker the pool
//! may ever have is waiting on a task that nobody is free to run: the one joined
//! here is failed (it had not started; the claim makes sure it does not start
//! now) and the join returns that failure. A listed task that has resolved means
//! its joiner is about to wake and serve the queue, so the join waits. Joins of
//! tasks already running, joins from threads that are not this pool's workers,
//! and `join_timeout` (which ends on its own) are not listed.
//!
//! # Where it cannot see
//!
//! - A pool whose blocked task has a timeout: the monitor abandons that worker
//!   and starts a replacement, which may then run the queue. The list still
//!   includes the abandoned thread, so a join can be refused that a replacement
//!   would have served. Joining inside tasks with timeouts is best avoided.
//! - A pool shrunk by `Pool::resize`: the maximum is the new one at once, while
//!   the workers asked to leave finish their tasks, so a join from one of them
//!   still listed can make a join refused that a staying worker would have
//!   served.
//! - `.await` on a task of the same pool inside an async task (`spawn_async`)
//!   does not block the thread; with `concurrency(1)` such a task holds the only
//!   slot and the awaited task never starts. Give the pool `concurrency(n > 1)`.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use crate::sync::lock;
use crate::task::cell::Header;

/// One pool's list of workers blocked in a join that nobody may serve.
#[derive(Debug)]
pub(crate) struct JoinWatch {
    /// The pool's maximum number of workers (`Config::max_workers`, then
    /// whatever `Pool::resize` sets). Written by `resize`; read by joiners.
    max: AtomicUsize,
    /// The headers of the tasks that this pool's worker threads are blocked
    /// joining, one entry per blocked thread. Pushed and removed by those
    /// threads, read by each new joiner, under the lock (only on this slow path:
    /// a join from inside a task, of a task that has not started).
    waiting: Mutex<Vec<Waiting>>,
}

/// A header a blocked joiner waits on. The joiner's `Task` keeps the cell (and
/// so the header) alive until it removes the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting(*const Header);

// SAFETY: the pointer is only dereferenced under `JoinWatch::waiting`'s lock
// while its joiner (which owns the cell through its `Task`) is still listed, and
// `Header` is `Sync`.
unsafe impl Send for Waiting {}

thread_local! {
    /// On a worker thread: its pool's key (as `threads::CURRENT`) and the pool's
    /// watch, which the worker's `Arc<Shared>` keeps alive while this is set.
    static WATCH: Cell<(usize, *const JoinWatch)> = const { Cell::new((0, std::ptr::null())) };
}

impl JoinWatch {
    pub(crate) fn new(max: usize) -> Self {
        JoinWatch {
            max: AtomicUsize::new(max),
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// The pool's maximum changed (`Pool::resize`).
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Relaxed);
    }
}

/// Marks the current thread as a worker of the pool `key` for the guard's life.
pub(crate) struct Enter(());

impl Enter {
    pub(crate) fn new(key: usize, watch: &JoinWatch) -> Self {
        WATCH.with(|w| w.set((key, watch as *const JoinWatch)));
        Enter(())
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        WATCH.with(|w| w.set((0, std::ptr::null())));
    }
}

/// What a join on the current thread may do.
pub(crate) enum Verdict {
    /// Not watched: not on a worker of the task's pool, or the task started.
    Free,
    /// Listed as blocked until this is dropped.
    Listed(Listed),
    /// Every worker the pool may have would be blocked: refuse the join.
    Deadlock,
}

/// One entry in [`JoinWatch::waiting`]; removed on drop.
pub(crate) struct Listed {
    watch: *const JoinWatch,
    entry: Waiting,
}

impl Drop for Listed {
    fn drop(&mut self) {
        // SAFETY: made by `before_join` from `WATCH` on this thread, whose worker
        // keeps the pool (and so the watch) alive until it leaves its loop, and a
        // join returns before that.
        let watch = unsafe { &*self.watch };
        let mut waiting = lock(&watch.waiting);
        if let Some(i) = waiting.iter().position(|w| *w == self.entry) {
            waiting.swap_remove(i);
        }
    }
}

/// Called by `Task::join` before it blocks on `header`'s task.
#[inline]
pub(crate) fn before_join(header: &Header) -> Verdict {
    let (key, watch) = WATCH.with(Cell::get);
    if key == 0 || header.pool != key || header.is_claimed() {
        return Verdict::Free;
    }
    before_join_slow(watch, header)
}

#[cold]
fn before_join_slow(watch: *const JoinWatch, header: &Header) -> Verdict {
    // SAFETY: `WATCH` is set only between `Enter::new` and its drop, on a worker
    // thread of the pool that owns `watch` and holds an `Arc` to it meanwhile.
    let watch = unsafe { &*watch };
    let mut waiting = lock(&watch.waiting);
    let stuck = waiting.iter().all(|w| {
        // SAFETY: listed entries are alive (see `Waiting`); we hold the lock.
        !unsafe { &*w.0 }.is_resolved()
    });
    if stuck && waiting.len() + 1 >= watch.max.load(Relaxed) {
        return Verdict::Deadlock;
    }
    let entry = Waiting(header as *const Header);
    waiting.push(entry);
    Verdict::Listed(Listed { watch, entry })
}
