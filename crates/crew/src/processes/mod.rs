//! The process backend: the same `Pool` API, with each worker in its own
//! process. Linux only (`memfd`, `PR_SET_PDEATHSIG`, process groups, `/proc`).
//!
//! The code is cut along the threads that run it; `supervisor.md` beside this
//! file is the state machine they share (windows, placement, steal-back,
//! settlement, charging a death to the right task), with the reasons:
//!
//! - `state.rs`: [`state::Supervisor`] and its one lock over every decision:
//!   the queue, each worker's window, sticky keys, estimates, counters; dispatch,
//!   steal-back and settlement. Any thread, under the lock.
//! - `engine.rs`: [`start`], and the `Engine` implementation `Pool` calls
//!   (submit, shutdown, broadcast, stats).
//! - `link.rs`: one link thread per worker process: starts it, reads and applies
//!   its frames, reaps it, settles what it held.
//! - `monitor.rs`: one monitor thread: task timeouts and deadlines, SIGKILL
//!   after the grace.
//! - `queue_control.rs`: `cancel_queued` (taking unstarted tasks back from
//!   windows) and deadlines counted from submission. Any thread, under the lock.
//! - `sizing.rs`: `resize`, elastic growth under a backlog, retiring idle
//!   workers. Any thread, under the lock (the monitor for idle retirement).
//! - `process_handle.rs`: the pool's handle on one worker process (spawn, its
//!   `FrameWriter`, kill, reap, output capture).
//! - `worker_main.rs`: what runs inside a worker process (`bootstrap`, `serve`);
//!   `worker_stop.rs`: how it stops when killed or orphaned (SIGTERM, then
//!   `Worker::stop` within `kill_grace`).
//! - `chunks.rs`, `arena.rs`, `codec.rs`: `map`'s chunks, the shared-memory
//!   payload arena, serde encoding.
//!
//! # How a task flows
//!
//! 1. `submit` encodes the input (postcard) outside any lock, refusing one over
//!    `max_message_size` (`supervisor.md`, "Message size"), then, under the
//!    lock, either puts the task straight into the window of the worker with
//!    the least estimated outstanding work, or queues it.
//! 2. Frames leave through the worker's frame writer, several in one write when
//!    several are ready.
//! 3. The worker answers *started* and *done* (the timeout clock is the pool's:
//!    it starts when the task reaches the head of the window). The
//!    link thread resolves the task, updates the estimate, and refills the
//!    window from the queue.
//! 4. A worker that runs dry gets the last unstarted task of a busy window back
//!    (*cancel*, answered *not started*).
//! 5. A worker that dies: its running task fails with
//!    [`Crash`](crate::error::Crash) (or retries), its unstarted tasks are
//!    queued again, a replacement starts.

mod arena;
mod chunks;
mod codec;
pub(crate) mod guard;
mod key_table;
mod process_handle;
mod worker_main;
mod worker_stop;

pub use codec::RemoteWorker;
pub use process_handle::{OutputHandler, OutputStream};
pub use worker_main::{bootstrap, serve, Bootstrap};
mod engine;
mod link;
mod monitor;
mod queue_control;
mod sizing;
mod state;

pub(crate) use engine::start;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// `max_message_size` by default: 64 MiB, the frame limit the protocol has
/// always had by default.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 << 20;
/// The smallest `max_message_size`: the protocol's smallest frame limit (4 KiB),
/// so every frame limit a pool announces is one the protocol allows.
pub(crate) const MIN_MAX_MESSAGE_SIZE: u64 = crate::wire::MIN_FRAME_LIMIT as u64;
/// The largest `max_message_size`: 1 GiB. A frame's length is a `u32`, a
/// decoder may hold up to about twice a frame while it arrives, and the
/// payload arena large inputs go through is 1 GiB (`arena::CAPACITY`); data
/// larger than this belongs in a file whose path the task carries.
pub(crate) const MAX_MAX_MESSAGE_SIZE: u64 = 1 << 30;
/// What a frame adds around its one payload, at most: the kind byte and the
/// fixed fields (a *task* frame's id, key and length: 22 bytes), with room to
/// spare. A frame limit of `max_message_size + FRAME_OVERHEAD` lets every
/// payload up to `max_message_size` through.
pub(crate) const FRAME_OVERHEAD: u64 = 64;

/// The process backend's own settings (the rest are in `Config`).
#[derive(Clone)]
pub(crate) struct ProcessConfig {
    pub(crate) program: Option<PathBuf>,
    pub(crate) args: Vec<OsString>,
    pub(crate) window: usize,
    pub(crate) kill_grace: Duration,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) max_memory: Option<u64>,
    pub(crate) retries: u32,
    pub(crate) retry_signals: bool,
    pub(crate) output: Option<OutputHandler>,
    /// How long a worker may stay silent while the pool waits on it for
    /// something only it can say: the answer to a steal-back, or the rest of a
    /// frame it began. Past it the worker is killed (`supervisor.md`, "Silent
    /// workers").
    pub(crate) silence_limit: Duration,
    /// The largest encoded input, output or error a task may have (and, with
    /// the frame's fields, the frame limit of every worker's channel, both
    /// ways). Inputs above it are refused at submit; results above it resolve
    /// as `TaskError::is_too_large`.
    pub(crate) max_message_size: u64,
}

impl ProcessConfig {
    /// The frame limit both ends of every worker's channel enforce: the pool
    /// announces it in its hello, and crew's worker adopts it (`worker_main.rs`).
    pub(crate) fn frame_limit(&self) -> u32 {
        u32::try_from(self.max_message_size + FRAME_OVERHEAD).unwrap_or(u32::MAX)
    }
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            program: None,
            args: Vec::new(),
            window: 16,
            kill_grace: Duration::from_secs(2),
            max_tasks_per_worker: None,
            max_memory: None,
            retries: 0,
            retry_signals: false,
            output: None,
            silence_limit: Duration::from_secs(5),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}
