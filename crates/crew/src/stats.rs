//! `Stats`: a snapshot of what a pool is doing and has done.

use std::fmt;

use crate::task::TaskId;
use crate::worker::WorkerId;

/// A snapshot from [`Pool::stats`](crate::Pool::stats). Counters cover the pool's
/// whole life; every accepted task is in exactly one of `queued`, `busy` (running)
/// or one of the outcome counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Workers the pool counts (starting, idle or busy).
    pub workers: usize,
    /// Workers running a task.
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
    /// Tasks that returned the worker's own error.
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
    /// One row per worker, by id.
    pub per_worker: Vec<WorkerStats>,
}

/// One worker's row in [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker.
    pub id: WorkerId,
    /// Whether its `Worker::start` has succeeded.
    pub started: bool,
    /// The task it is running, if any (with several async tasks in flight, the
    /// one it started first).
    pub current_task: Option<TaskId>,
    /// Tasks it has finished with, of every outcome.
    pub tasks_done: u64,
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
}

impl fmt::Display for Stats {
    /// One line: `workers 4 (busy 3, idle 1) | queued 12 | submitted 100: ok 80, ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workers {} (busy {}, idle {}) | queued {} | submitted {}: ok {}, err {}, panic {}, cancelled {}, timed out {}, killed {}, closed {}, start failed {}, crashed {}",
            self.workers,
            self.busy,
            self.idle,
            self.queued,
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
        if self.abandoned_threads > 0 {
            write!(f, " | abandoned threads {}", self.abandoned_threads)?;
        }
        if self.start_failures > 0 {
            if let Some(e) = &self.last_start_error {
                write!(f, " | start failing ({}x): {e}", self.start_failures)?;
            }
        }
        Ok(())
    }
}
