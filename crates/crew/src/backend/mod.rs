//! The seam every backend plugs into. **Unstable**: public so that a backend in
//! another crate of this workspace (the cluster) can implement it, hidden from
//! the docs, and free to change in any release.
//!
//! `Pool<W>` (`pool.rs`) holds one of two things:
//!
//! - **threads** of this process (`threads/`), called directly: the hot path of
//!   an in-process pool pays no virtual call;
//! - **an [`Engine`]**: a pool whose workers are not threads of this process.
//!   The process backend (`processes/`) is one; the cluster backend is
//!   another. `Pool` reaches it through `Arc<dyn Engine<W>>`, so nothing above
//!   this module names an engine's own types, and a new engine is one
//!   implementation of the trait, started through one builder entry,
//!   [`PoolBuilder::engine`](crate::PoolBuilder::engine).
//!
//! What the two kinds share lives here too: the validated settings
//! ([`Config`], [`WhenFull`]), how a submission waits for room ([`Admission`]),
//! the contract for chunked `map` ([`Batch`] and friends), and the pieces an
//! engine outside this crate needs to build what `Pool` hands out: task handles
//! ([`new_task`], [`Resolver`]), the event and message buses with the events
//! themselves ([`event`]), and `Stats` ([`Figures`], assembled by `stats.rs`
//! with the one worker-state rule).
//!
//! # What an engine promises
//!
//! - Every task it returns resolves exactly once (through its [`Resolver`]):
//!   with the output, the worker's error, or a [`Failure`] that says what
//!   happened. Nothing is left pending at shutdown or when a worker dies.
//! - `submit` gives the input back in a [`SubmitError`] when it refuses it
//!   (closed, or full under [`Admission::Try`]).
//! - `resize` returns at once; the workers it adds or retires follow. A
//!   retired worker finishes the task it runs; what it holds and has not begun
//!   runs on another worker.
//! - `close` is idempotent and does not wait; `shutdown` waits (up to its
//!   deadline) for every task to resolve and every worker to stop; `terminate`
//!   resolves what is queued as closed and what runs as cancelled.
//! - Every method may be called from any thread, and none may call user code
//!   (a waker, a handler) while holding the engine's own locks.

mod chunks;
mod config;
pub mod event;
mod task;

pub use chunks::{Batch, ChunkResults, ChunkTask, Delivered};
pub use config::{Config, SpawnHandler, WhenFull};
pub use task::{new_task, OnCancel, Resolver};

pub use crate::error::{Crash, Failure, Panic};
pub use crate::events::Bus as EventBus;
pub use crate::messages::MessageBus;
pub use crate::stats::{Figures, OutcomeCounts, TimingSamples, Timings, WorkerFigures};
pub use crate::task::TaskOptions;

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use crate::error::{ResizeError, ShutdownTimedOut, SubmitError, TaskError};
use crate::events::Events;
use crate::messages::Messages;
use crate::stats::Stats;
use crate::task::{Task, TaskId};
use crate::worker::{Worker, WorkerId};

/// How a submission treats a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Wait for room (or run on the caller, per [`WhenFull`]).
    Wait,
    /// Give the input back as full ([`SubmitError::is_full`]).
    Try,
    /// The caller already reserved a place (the thread backend's
    /// `poll_capacity`; an engine treats it as `Wait`).
    Acquired,
}

/// Where a pool's workers run: [`Pool::backend_kind`](crate::Pool::backend_kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Threads of this process (the default).
    Threads,
    /// Child processes of this process
    /// (`PoolBuilder::processes`).
    Processes,
    /// Another engine, by its own name (for example `"cluster"`).
    Other(&'static str),
}

impl BackendKind {
    /// A short lowercase name: `threads`, `processes`, or the engine's own.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Threads => "threads",
            BackendKind::Processes => "processes",
            BackendKind::Other(name) => name,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A pool whose workers are not threads of this process, as `Pool<W>` sees it:
/// the engine behind [`Pool`](crate::Pool)'s one `Remote` arm. The engine's own
/// bounds (serde types for the process backend) are erased: `Pool<W>` only
/// knows `W: Worker`.
///
/// Each method is the engine's side of the `Pool` method of the same (or the
/// obvious) name; the module docs say what every engine promises.
pub trait Engine<W: Worker>: Send + Sync {
    /// What kind of backend this is ([`Pool::backend_kind`](crate::Pool::backend_kind)).
    fn kind(&self) -> BackendKind {
        BackendKind::Other("remote")
    }

    /// Submits one input with its options; with a bounded queue, `admission`
    /// says whether to wait for room.
    fn submit(
        &self,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>>;

    /// Registers `waker` to be woken when the queue has room; true if it has
    /// room now (or the pool is closed: the submission then fails at once).
    fn poll_room(&self, waker: &Waker) -> bool;

    /// Blocks until no task is queued or running, or until `deadline`; true if
    /// the pool became idle.
    fn wait_idle(&self, deadline: Option<Instant>) -> bool;

    /// True if idle now; otherwise `waker` is woken when that may have changed.
    fn poll_idle(&self, waker: &Waker) -> bool;

    /// Takes no new work; what is queued still runs. Returns at once;
    /// idempotent. (Also what dropping the last `Pool` handle does.)
    fn close(&self);

    /// `close`, then waits until every task resolved and every worker stopped;
    /// past `deadline`, terminates the rest.
    fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut>;

    /// Takes no new work; queued tasks resolve as closed, running ones as
    /// cancelled. Returns at once.
    fn terminate(&self);

    /// Whether the pool is closed (or closing).
    fn is_closed(&self) -> bool;

    /// Resolves every task that has not started as cancelled, as each task's
    /// own cancel would, and returns how many; running tasks go on and the pool
    /// stays open ([`Pool::cancel_queued`](crate::Pool::cancel_queued)).
    ///
    /// The default cancels nothing and returns 0: an engine that cannot take
    /// its queued tasks back (the cluster, today) says so in its docs.
    fn cancel_queued(&self) -> usize {
        0
    }

    /// Retires worker `id` (its running task resolves as killed) and starts a
    /// replacement; false if no live worker has this id.
    fn kill_worker(&self, id: WorkerId) -> bool;

    /// The live workers, by id.
    fn worker_ids(&self) -> Vec<WorkerId>;

    /// The number of workers the pool keeps (an elastic pool's minimum).
    fn size(&self) -> usize;

    /// Makes the pool keep `workers.start()` workers, growing up to
    /// `workers.end()` under a backlog (equal bounds: a fixed size), as
    /// [`Pool::resize_range`](crate::Pool::resize_range) documents: growing
    /// starts workers; shrinking retires idle workers first and lets busy ones
    /// finish the task they run, while the tasks they hold and have not begun
    /// run elsewhere; each retired worker runs `Worker::stop`. `Pool` has
    /// checked the range (not empty, an end of at least 1). Returns at once,
    /// [`resize_closed`] on a closed pool; `size()` reports the new minimum
    /// from then on.
    ///
    /// The default refuses ([`resize_unsupported`]): an engine whose workers
    /// the pool cannot size (the cluster, whose nodes size their own pools)
    /// says so in its docs.
    fn resize(&self, workers: RangeInclusive<usize>) -> Result<(), ResizeError> {
        let _ = workers;
        Err(ResizeError::unsupported())
    }

    /// A new event subscription.
    fn events(&self) -> Events {
        self.bus().subscribe()
    }

    /// A snapshot of the pool's state and counters, built with [`Figures`].
    fn stats(&self) -> Stats;

    /// The event bus (the health watcher emits into it).
    fn bus(&self) -> Arc<EventBus>;

    /// A new subscription to worker-to-pool messages ([`subscribe_messages`]).
    fn messages(&self) -> Messages<W::Message>;

    /// Sends `message` to every live worker; with `sticky`, also to every
    /// worker started later, after its `start`, in the order sent.
    fn broadcast(&self, message: W::Message, sticky: bool);

    /// Sends `message` to worker `id`; gives it back if there is no such
    /// worker.
    fn send_to(&self, id: WorkerId, message: W::Message) -> Result<(), W::Message>;

    /// Whether `map` ships chunks ([`submit_chunk`](Engine::submit_chunk)).
    /// False by default: `map` then submits one task per item.
    fn chunks_enabled(&self) -> bool {
        false
    }

    /// Pulls up to `max_items` inputs into one chunk and submits it. Called
    /// only when [`chunks_enabled`](Engine::chunks_enabled); the default
    /// submits each input as its own task.
    fn submit_chunk(
        &self,
        pull: &mut dyn FnMut() -> Option<W::Input>,
        max_items: usize,
    ) -> Vec<Batch<W::Output, W::Error>> {
        let mut batches = Vec::new();
        while batches.len() < max_items.max(1) {
            let Some(input) = pull() else { break };
            match self.submit(input, TaskOptions::default(), Admission::Wait) {
                Ok(task) => batches.push(Batch::Task(task)),
                Err(_) => {
                    // Closed: the rest would be refused too.
                    batches.push(Batch::Refused(1));
                    break;
                }
            }
        }
        batches
    }
}

/// A task's id from its number (an engine numbers its own tasks, from 1).
pub fn task_id(n: u64) -> TaskId {
    TaskId(n)
}

/// A worker's id from its number, for an engine whose workers are numbered
/// elsewhere (the cluster's, on its nodes). Ids are never 0: `None` for 0.
pub fn worker_id(n: u64) -> Option<WorkerId> {
    WorkerId::from_raw(n)
}

/// The error for a task that ran and returned the worker's own error.
pub fn user_error<E>(error: E) -> TaskError<E> {
    TaskError::user(error)
}

/// The error for a task that ended with one of crew's failures.
pub fn failed<E>(failure: Failure) -> TaskError<E> {
    TaskError::failure(failure)
}

/// How a worker process (or a remote worker) ended, for [`Failure::Crashed`].
pub fn crash(exit_code: Option<i32>, signal: Option<i32>, stderr_tail: Vec<String>) -> Crash {
    Crash {
        exit_code,
        signal,
        stderr: stderr_tail,
    }
}

/// The refusal of a submission to a closed pool, with its input.
pub fn submit_closed<T>(input: T) -> SubmitError<T> {
    SubmitError::closed(input)
}

/// The refusal of a submission under [`Admission::Try`] to a full queue.
pub fn submit_full<T>(input: T) -> SubmitError<T> {
    SubmitError::full(input)
}

/// The refusal of a `resize` by a closed pool.
pub fn resize_closed() -> ResizeError {
    ResizeError::closed()
}

/// The refusal of a `resize` by an engine that cannot change its size.
pub fn resize_unsupported() -> ResizeError {
    ResizeError::unsupported()
}

/// The error of a `shutdown` whose deadline passed with `still_running` tasks.
pub fn shutdown_timed_out(still_running: usize) -> ShutdownTimedOut {
    ShutdownTimedOut { still_running }
}

/// A new subscription to `bus`'s messages.
pub fn subscribe_messages<M: Clone + Send + 'static>(bus: &Arc<MessageBus<M>>) -> Messages<M> {
    Messages::subscribe(bus)
}
