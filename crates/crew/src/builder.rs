//! `PoolBuilder`: every pool-level setting, validated in `build()`.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{BuildError, BuildErrorKind};
use crate::pool::Pool;
use crate::worker::Worker;

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
    /// A task run this way has no timeout (nothing could stop the caller's own
    /// thread), and batches never run on the caller: they wait.
    CallerRuns,
}

/// Starts a worker thread: receives the `std::thread::Builder` crew configured
/// (name, stack size) and the thread's body, and must run the body on a new
/// thread. See [`PoolBuilder::spawn_handler`].
pub type SpawnHandler = Arc<
    dyn Fn(std::thread::Builder, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>
        + Send
        + Sync,
>;

/// The validated settings a pool runs with.
#[derive(Clone)]
pub(crate) struct Config {
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
}

impl Config {
    pub(crate) fn is_elastic(&self) -> bool {
        self.max_workers > self.workers
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("workers", &self.workers)
            .field("max_workers", &self.max_workers)
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pool`]. Get one from [`Pool::builder`].
///
/// ```
/// use std::time::Duration;
/// let pool: crew::Pool = crew::Pool::builder()
///     .workers(4)
///     .thread_name("resizer")
///     .timeout(Duration::from_secs(30))
///     .build()?;
/// # Ok::<(), crew::BuildError>(())
/// ```
pub struct PoolBuilder<W> {
    workers: Option<usize>,
    range: Option<RangeInclusive<usize>>,
    idle_timeout: Duration,
    grow_backlog: usize,
    when_full: WhenFull,
    spawn_handler: Option<SpawnHandler>,
    thread_name: String,
    stack_size: Option<usize>,
    default_timeout: Option<Duration>,
    queue_capacity: Option<usize>,
    start_attempts: u32,
    start_backoff: Duration,
    abandon_grace: Duration,
    event_buffer: usize,
    _worker: PhantomData<fn() -> W>,
}

impl<W: Worker> PoolBuilder<W> {
    pub(crate) fn new() -> Self {
        PoolBuilder {
            workers: None,
            range: None,
            idle_timeout: Duration::from_secs(10),
            grow_backlog: 2,
            when_full: WhenFull::Block,
            spawn_handler: None,
            thread_name: "crew".to_owned(),
            stack_size: None,
            default_timeout: None,
            queue_capacity: None,
            start_attempts: 3,
            start_backoff: Duration::from_millis(20),
            abandon_grace: Duration::from_millis(100),
            event_buffer: 1024,
            _worker: PhantomData,
        }
    }

    /// A fixed number of workers. Defaults to `std::thread::available_parallelism()`.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self.range = None;
        self
    }

    /// An elastic pool: it starts `min` workers, grows one worker at a time up to
    /// `max` while the queue's backlog exceeds [`grow_backlog`](Self::grow_backlog)
    /// tasks per worker and every worker is busy, and retires workers that stayed
    /// idle for [`idle_timeout`](Self::idle_timeout), down to `min`.
    pub fn workers_range(mut self, range: RangeInclusive<usize>) -> Self {
        self.range = Some(range);
        self.workers = None;
        self
    }

    /// How long an extra worker of an elastic pool may stay idle before it
    /// retires. Default 10 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Queued tasks per worker above which an elastic pool grows. Default 2: the
    /// queue is then deeper than the workers can start within one task's time
    /// each, and a new thread (≈ 20–50 µs to start) pays off for any task longer
    /// than that.
    pub fn grow_backlog(mut self, tasks_per_worker: usize) -> Self {
        self.grow_backlog = tasks_per_worker;
        self
    }

    /// What a blocking submission does when the queue is full. Default
    /// [`WhenFull::Block`].
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = policy;
        self
    }

    /// Takes over the starting of worker threads (as rayon's `spawn_handler`): to
    /// set affinity or priority, to count threads, or to make spawning fail in
    /// tests. The handler must run the body on a new thread, or return an error;
    /// a pool whose replacement thread fails to start retries later with backoff.
    pub fn spawn_handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(std::thread::Builder, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>
            + Send
            + Sync
            + 'static,
    {
        self.spawn_handler = Some(Arc::new(handler));
        self
    }

    /// The prefix of worker thread names; each thread is named `{prefix}-{worker id}`.
    /// Defaults to `"crew"`.
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// The stack size of worker threads, in bytes. Defaults to Rust's default.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// The timeout of every task that does not set its own. The clock starts when the
    /// task starts running, not when it is queued. No timeout by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// The most tasks that may wait in the queue (running ones do not count).
    /// Unbounded by default.
    ///
    /// When the queue is full, `submit` and `spawn` wait (or run the task on the
    /// caller, see [`when_full`](Self::when_full)), `submit_async` waits without
    /// blocking, and `try_submit` / `try_spawn` give the input back. A task
    /// cancelled while queued keeps its place until a worker pops it. Tasks spawned
    /// from inside the pool's own tasks are not bounded, so a task can never
    /// deadlock waiting for room in its own pool.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// How many consecutive `Worker::start` failures, with no worker alive, make the
    /// pool give up on waiting tasks (they fail with
    /// [`TaskError::is_start_failure`](crate::TaskError::is_start_failure), and so do
    /// new ones until a start succeeds). Workers keep retrying with backoff. Default 3.
    pub fn start_attempts(mut self, attempts: u32) -> Self {
        self.start_attempts = attempts;
        self
    }

    /// The first delay between start retries; it doubles on each failure up to 64
    /// times this value (at most 10 s). Default 20 ms.
    pub fn start_backoff(mut self, delay: Duration) -> Self {
        self.start_backoff = delay;
        self
    }

    /// How long a timed-out (or killed) task's thread may keep running before the
    /// pool gives up on it and starts a replacement thread. A task that checks
    /// [`Context::is_cancelled`](crate::Context::is_cancelled) and returns within the
    /// grace keeps its thread. Default 100 ms.
    pub fn abandon_grace(mut self, grace: Duration) -> Self {
        self.abandon_grace = grace;
        self
    }

    /// How many events each [`Pool::events`](crate::Pool::events) subscriber may
    /// hold unread. When a subscriber's buffer is full, new events are dropped
    /// for it (and counted in [`Events::dropped`](crate::Events::dropped)); the
    /// pool never waits for a reader. Default 1024; must be at least 1.
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events;
        self
    }

    /// Validates the settings and starts the workers.
    pub fn build(self) -> Result<Pool<W>, BuildError> {
        let (workers, max_workers) = match (self.workers, &self.range) {
            (_, Some(range)) => {
                if range.is_empty() || *range.end() == 0 {
                    return Err(BuildError::new(BuildErrorKind::NoWorkers));
                }
                (*range.start(), *range.end())
            }
            (Some(0), None) => return Err(BuildError::new(BuildErrorKind::NoWorkers)),
            (Some(n), None) => (n, n),
            (None, None) => {
                let n = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
                (n, n)
            }
        };
        if self.idle_timeout.is_zero() {
            return Err(BuildError::new(BuildErrorKind::ZeroDuration(
                "idle_timeout",
            )));
        }
        if self.grow_backlog == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroGrowBacklog));
        }
        if self.queue_capacity == Some(0) {
            return Err(BuildError::new(BuildErrorKind::ZeroCapacity));
        }
        if self.default_timeout == Some(Duration::ZERO) {
            return Err(BuildError::new(BuildErrorKind::ZeroDuration("timeout")));
        }
        if self.start_backoff.is_zero() {
            return Err(BuildError::new(BuildErrorKind::ZeroDuration(
                "start_backoff",
            )));
        }
        if self.start_attempts == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroStartAttempts));
        }
        if self.event_buffer == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroEventBuffer));
        }
        let config = Config {
            workers,
            max_workers,
            idle_timeout: self.idle_timeout,
            grow_backlog: self.grow_backlog,
            when_full: self.when_full,
            spawn_handler: self.spawn_handler,
            thread_name: self.thread_name,
            stack_size: self.stack_size,
            default_timeout: self.default_timeout,
            queue_capacity: self.queue_capacity,
            start_attempts: self.start_attempts,
            start_backoff: self.start_backoff,
            max_start_backoff: (self.start_backoff.saturating_mul(64)).min(Duration::from_secs(10)),
            abandon_grace: self.abandon_grace,
            event_buffer: self.event_buffer,
        };
        Pool::start(config)
    }
}

impl<W> fmt::Debug for PoolBuilder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("worker", &std::any::type_name::<W>())
            .field("workers", &self.workers)
            .field("workers_range", &self.range)
            .field("idle_timeout", &self.idle_timeout)
            .field("grow_backlog", &self.grow_backlog)
            .field("when_full", &self.when_full)
            .field(
                "spawn_handler",
                &self.spawn_handler.as_ref().map(|_| "<closure>"),
            )
            .field("thread_name", &self.thread_name)
            .field("stack_size", &self.stack_size)
            .field("timeout", &self.default_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("start_attempts", &self.start_attempts)
            .field("start_backoff", &self.start_backoff)
            .field("abandon_grace", &self.abandon_grace)
            .field("event_buffer", &self.event_buffer)
            .finish()
    }
}
