//! The validated pool settings every backend starts from, and the policy for a
//! full queue. `PoolBuilder` (`builder.rs`) checks them and builds a [`Config`];
//! a backend reads it.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What a full queue does to a blocking submission (`submit`, `spawn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait for a place (the default). `try_submit` returns the input instead, and
    /// `submit_async` waits without blocking.
    #[default]
    Block,
    /// Run the task on the submitting thread, as `ThreadPoolExecutor.CallerRunsPolicy`
    /// does: the caller slows down to the pool's pace. A worker type's task gets a
    /// fresh instance on the caller's thread (`start`, `run`, `stop`); its
    /// [`Task::worker`](crate::Task::worker) is [`WorkerId::CALLER`](crate::WorkerId::CALLER).
    /// A task run this way has no timeout or deadline (nothing could stop the caller's own
    /// thread), and batches never run on the caller: they wait.
    CallerRuns,
}

/// Starts a worker thread: receives the `std::thread::Builder` crew configured
/// (name, stack size) and the thread's body, and must run the body on a new
/// thread. See [`PoolBuilder::spawn_handler`](crate::PoolBuilder::spawn_handler).
pub type SpawnHandler = Arc<
    dyn Fn(std::thread::Builder, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>
        + Send
        + Sync,
>;

/// The validated settings a pool runs with: what `PoolBuilder::build` hands a
/// backend. The fields are the crate's; an engine in another crate reads them
/// through the methods below.
#[derive(Clone)]
pub struct Config {
    /// Workers started at build time, and the floor the pool shrinks to.
    pub(crate) workers: usize,
    /// The ceiling the pool grows to; equal to `workers` for a fixed-size pool.
    pub(crate) max_workers: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) grow_backlog: usize,
    pub(crate) when_full: WhenFull,
    pub(crate) spawn_handler: Option<SpawnHandler>,
    pub(crate) thread_name: String,
    pub(crate) stack_size: Option<usize>,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) queue_capacity: Option<usize>,
    pub(crate) start_attempts: u32,
    pub(crate) start_backoff: Duration,
    pub(crate) max_start_backoff: Duration,
    pub(crate) abandon_grace: Duration,
    /// Each event subscriber's buffer, in events.
    pub(crate) event_buffer: usize,
    /// Tasks in flight per worker (async tasks; a synchronous task takes one
    /// place while it runs).
    pub(crate) concurrency: usize,
    /// The tokio runtime each worker thread enters (feature `tokio`; see
    /// `runtime.rs`).
    pub(crate) runtime: crate::runtime::Runtime,
}

impl Config {
    /// Workers started at build time (an elastic pool's minimum).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The most workers the pool may run (equal to `workers` unless elastic).
    pub fn max_workers(&self) -> usize {
        self.max_workers
    }

    /// How long a worker above the minimum may stay idle before it retires.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Tasks waiting per worker above which an elastic pool grows.
    pub fn grow_backlog(&self) -> usize {
        self.grow_backlog
    }

    /// The pool's default task timeout.
    pub fn default_timeout(&self) -> Option<Duration> {
        self.default_timeout
    }

    /// The bound on queued tasks, if any.
    pub fn queue_capacity(&self) -> Option<usize> {
        self.queue_capacity
    }

    /// What a full queue does to a blocking submission.
    pub fn when_full(&self) -> WhenFull {
        self.when_full
    }

    /// Failed starts in a row, with no worker up, before waiting tasks fail.
    pub fn start_attempts(&self) -> u32 {
        self.start_attempts
    }

    /// The first delay before starting a worker again after a failed start.
    pub fn start_backoff(&self) -> Duration {
        self.start_backoff
    }

    /// The longest delay between two start attempts.
    pub fn max_start_backoff(&self) -> Duration {
        self.max_start_backoff
    }

    /// Each event subscriber's buffer, in events (also each message
    /// subscriber's).
    pub fn event_buffer(&self) -> usize {
        self.event_buffer
    }

    /// Tasks in flight per worker.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The name given to the pool's threads.
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("workers", &self.workers)
            .field("max_workers", &self.max_workers)
            .field("queue_capacity", &self.queue_capacity)
            .field("tokio", &self.runtime.is_set())
            .finish_non_exhaustive()
    }
}
