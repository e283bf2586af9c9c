//! # crew: a worker pool for Rust
//!
//! crew runs work off your thread and hands every task's result back: by blocking,
//! with a timeout, or as a `Future`. Each task can be cancelled (or every queued
//! one at once, [`Pool::cancel_queued`]), timed out (from its start,
//! [`TaskBuilder::timeout`], or from its submission, [`TaskBuilder::deadline`]) and
//! prioritised; each worker can hold state built once by its own init; a panic is
//! caught and reported, and the worker rebuilt. The workers are threads of this
//! process by default, or child processes (see [Backends](#backends)).
//!
//! ```
//! let pool = crew::Pool::builder().workers(2).build()?;
//! let task = pool.spawn(|| (1..=10u64).product::<u64>());
//! assert_eq!(task.join()?, 3_628_800);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `Pool` alone is `Pool<`[`Closures`]`>`, whose [`Pool::spawn`] runs closures;
//! `Pool<W>` runs a [`Worker`] type and takes inputs ([`Pool::submit`]).
#![cfg_attr(
    all(feature = "process", target_os = "linux"),
    doc = "`Pool<`[`Functions`]`>` runs plain functions, in worker processes too \
           ([`Pool::spawn_fn`], [`functions`])."
)]
//! Rust does not fall back to a default type parameter when it infers
//! `Pool::builder()`'s type, so where no `spawn` call pins it, write `let pool:
//! crew::Pool = crew::Pool::builder().build()?`.
//!
//! # How a task flows
//!
//! 1. **Submit.** [`Pool::submit`] (an input for a [`Worker`]) or [`Pool::spawn`]
//!    (a closure) allocates one *cell*: the input, the task's state word and its
//!    result slot, in a single allocation (`task::cell`). The queue gets one
//!    reference to it, the caller's [`Task`] handle another.
//! 2. **Queue.** The cell goes to the global injector of its [`Priority`], or, when
//!    a task spawns a task, to the current worker's own deque
//!    (`scheduler::queues`). A sleeping worker is woken only if no worker is
//!    already searching (`scheduler::sleep`, with its protocol and proof in
//!    `sleep.md` beside it).
//! 3. **Run.** A worker pops the cell, *claims* it (one atomic `fetch_or`: a task
//!    cancelled while queued is already claimed and is skipped), and runs it with
//!    its own `&mut W` and a [`Context`]. A panic is caught there.
//! 4. **Resolve.** Whoever first produces an outcome (the worker's output, a
//!    cancel, a timeout, a kill, a shutdown) writes the result slot; everyone later
//!    is ignored. The handle is woken only if it is actually waiting.
//! 5. **Join.** [`Task::join`] spins briefly, then parks; `.await` registers a
//!    waker. Either takes the result out of the cell.
//!
//! **Async tasks.** A task may be a future ([`Pool::spawn_async`], or an
//! [`AsyncWorker`] run as `Pool<Async<W>>`). The worker that claims it keeps it in
//! its own executor (`threads::executor`) and polls it between taking tasks, with
//! up to [`PoolBuilder::concurrency`] tasks in flight; the task resolves like any
//! other, and a cancel drops the future at its next poll.
//!
//! **Progress.** A long task tells whoever waits on it how far it got:
//! [`Context::progress`] in its code, [`Task::progress`] on its handle, or
//! [`Task::watch_progress`] for a [`ProgressWatch`] that yields each change
//! (blocking, as an `Iterator`, or as a `Stream`). It is one value per task,
//! the latest report winning, so reporting never blocks and never queues.
//!
//! Every step can be watched: [`Pool::events`] subscribes to task and worker
//! [`Event`]s (lossy per subscriber, never blocking the pool; `events`), and
//! [`Pool::stats`] takes a [`Stats`] snapshot. A thread pool times each of its
//! first 4,096 tasks, then one in eight (see [`Latency`]); a process pool times
//! every task.
//!
//! Timeouts, deadlines and thread replacement are handled by a per-pool monitor
//! thread that exists only once it is needed: the first task with a timeout or a
//! deadline, or a replacement thread the OS refused to start (`threads::monitor`).
//!
//! # Capacity, batches and size
//!
//! - **Backpressure**: with [`PoolBuilder::queue_capacity`], a full queue makes
//!   `submit`/`spawn` wait (or run the task on the caller, [`WhenFull`]),
//!   [`Pool::submit_async`] wait without blocking, and `try_submit`/`try_spawn`
//!   give the input back.
//! - **Batches**: [`Pool::spawn_batch`] and [`Pool::submit_batch`] queue many tasks
//!   with one id reservation and one wake-up.
//! - **Elastic size**: [`PoolBuilder::workers_range`] grows the pool while every
//!   worker is busy and the backlog is deep, and retires idle extra workers.
//!   [`Pool::resize`] and [`Pool::resize_range`] change the size at run time: a
//!   shrink retires idle workers first and lets busy ones finish their task.
//! - **Priorities**: a worker takes queued [`Priority::High`] tasks before
//!   `Normal` ones and `Normal` before `Low`, except that one pick in every eight
//!   starts at `Low` and one at `Normal`, so a flood of high-priority work cannot
//!   starve the rest. A running task is never preempted.
//!
//! # Sources
//!
//! [`Pool::map`] / [`Pool::map_unordered`] run an iterator's inputs through the
//! pool; [`Pool::feed`] runs a channel (or, with [`Pool::feed_stream`], an async
//! `Stream`) until it closes, pulled by a feeder thread. Each keeps a bounded
//! window in flight and cancels it when dropped. With the feature `indicatif`, each
//! takes `.with_progress()`, and `pool.wait_idle_with_progress()` shows a pool
//! draining.
//!
//! [`Map::then`] chains pools into a [`Pipeline`]: `decode.map(files).then(&resize)
//! .then(&encode)`, each stage a pool of any backend with its own bounded window (a
//! full stage stops the one before it), each item's error carried to the end as a
//! [`StageError`] naming its stage, results in input order (from `map`) or as they
//! finish (from `map_unordered` or a feed).
//!
//! # RPC by method name
//!
//! [`service!`] declares a worker with several named methods: it generates a
//! handler trait to implement on your per-worker state, a typed client whose
//! calls are [`Task`]s of each method's own types, and calls by name
//! ([`Pool::call`]) resolved on the caller's side, with an [`rpc::RpcError`] for
//! an unknown name or wrong arguments. See [`rpc`].
//!
//! # Which errors
//!
//! [`TaskError`] says why a task has no output: the worker's own error (kept, not
//! flattened), a panic with its message, cancelled, timed out, pool closed, worker
//! killed, or no worker could start. Submitting to a closed pool gives the input back
//! in a [`SubmitError`].
//!
//! # Threads cannot be killed
//!
//! A thread stuck in user code cannot be stopped from outside. When a task times
//! out (or its worker is killed), its handle resolves at once and the task sees
//! [`Context::is_cancelled`]. If it has not returned after the pool's
//! `abandon_grace`, the pool *abandons* the thread (it leaves when it returns, if
//! ever) and starts a replacement, so the pool keeps its size.
//!
//! # Backends
//!
//! - **Threads** (the default): everything above.
#![cfg_attr(all(feature = "process", target_os = "linux"), doc = include_str!("processes/crate_docs_backend.md"))]
#![cfg_attr(
    not(all(feature = "process", target_os = "linux")),
    doc = "- **Processes** (cargo feature `process`, Linux only): not in this build."
)]
//! - **A cluster on NATS JetStream**: the `crew-cluster` crate, an engine behind
//!   the same `Pool` (see its docs).
//!
#![cfg_attr(all(feature = "process", target_os = "linux"), doc = include_str!("processes/crate_docs_differences.md"))]
//!
//! # Cargo features
//!
//! - `process` (default): the process backend.
//! - `indicatif`: progress bars (`with_progress()` on [`Map`], [`MapUnordered`],
//!   [`Feed`] and each stage of a [`Pipeline`], and `Pool::wait_idle_with_progress`).
//! - `tracing`: under the target `crew`, a `crew.worker` span (field `worker`)
//!   around each worker thread's life with `worker started` and `worker exited`
//!   (`reason`) events; a `task queued` event (`task`); a `crew.task` span
//!   (`task`, `worker`, `waited_ns`) entered while a task runs, holding a `task
//!   finished` event (`outcome`, `ran_ns`). A process pool reports the same events
//!   as its workers' answers arrive, without a span around the run. Without the
//!   feature none of it is compiled.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod async_worker;
#[doc(hidden)]
pub mod backend;
mod builder;
mod error;
mod events;
mod feed;
#[cfg(all(feature = "process", target_os = "linux"))]
pub mod functions;
mod health;
mod messages;
mod pool;
pub mod prelude;
#[cfg(all(feature = "process", target_os = "linux"))]
mod processes;
#[cfg(feature = "indicatif")]
mod progress;
pub mod rpc;
mod runtime;
mod scheduler;
mod scope;
mod shutdown;
mod sources;
mod stats;
mod sync;
mod task;
mod threads;
mod trace;
// Public for crew's own wire tests and for whoever writes a worker in another
// language against `wire/protocol.md`; hidden from the docs and outside semver:
// the protocol is versioned by its handshake (`PROTOCOL_VERSION`), and these
// Rust types change with the process backend. A separate crate would put them
// under semver for no user who needs it.
#[doc(hidden)]
pub mod wire;
mod worker;

pub use async_worker::{Async, AsyncWorker};
pub use backend::BackendKind;
pub use builder::{PoolBuilder, SpawnHandler, WhenFull};
pub use error::{
    BuildError, ResizeError, ShutdownTimedOut, StartError, SubmitError, TaskError, UserError,
};
pub use events::{Event, Events, ExitReason, RecvAsync, TaskOutcome};
pub use feed::{Feed, FeedStream};
#[cfg(all(feature = "process", target_os = "linux"))]
pub use functions::Functions;
pub use health::Health;
/// The progress-bar crate crew draws with (feature `indicatif`), for building a
/// `ProgressBar` or `ProgressDrawTarget` of the version crew takes.
#[cfg(feature = "indicatif")]
pub use indicatif;
pub use messages::{Messages, RecvMessage};
pub use pool::{AsyncJobBuilder, Idle, JobBuilder, Pool, SubmitAsync, TaskBuilder};
#[cfg(all(feature = "process", target_os = "linux"))]
pub use processes::{bootstrap, serve, Bootstrap, OutputHandler, OutputStream, RemoteWorker};
pub use scope::Scope;
pub use shutdown::Shutdown;
pub use sources::pipeline::{Pipeline, PipelineIter, PipelineStream, StageError};
pub use sources::{Map, MapUnordered};
pub use stats::{Latency, Stats, WorkerState, WorkerStats};
pub use task::{Priority, ProgressWatch, Task, TaskId};
pub use worker::{Closures, Context, SendError, Worker, WorkerId};

// crew's own unit tests name the crate `crew::…`, as users do.
extern crate self as crew;

/// What `service!` expands to calls into. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::rpc::private::*;
    #[cfg(feature = "process")]
    pub use serde;
}
