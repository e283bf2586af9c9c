//! `PoolBuilder`: every pool-level setting, validated in `build()`.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::time::Duration;

use crate::error::{BuildError, BuildErrorKind};
use crate::pool::Pool;
use crate::worker::Worker;

/// The validated settings a pool runs with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) thread_name: String,
    pub(crate) stack_size: Option<usize>,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) queue_capacity: Option<usize>,
    pub(crate) start_attempts: u32,
    pub(crate) start_backoff: Duration,
    pub(crate) max_start_backoff: Duration,
    pub(crate) abandon_grace: Duration,
}

/// Builds a [`Pool`]. Get one from [`Pool::builder`].
///
/// ```
/// use std::time::Duration;
/// let pool = crew::Pool::builder()
///     .workers(4)
///     .thread_name("resizer")
///     .timeout(Duration::from_secs(30))
///     .build()?;
/// # Ok::<(), crew::BuildError>(())
/// ```
pub struct PoolBuilder<W> {
    workers: Option<usize>,
    thread_name: String,
    stack_size: Option<usize>,
    default_timeout: Option<Duration>,
    queue_capacity: Option<usize>,
    start_attempts: u32,
    start_backoff: Duration,
    abandon_grace: Duration,
    _worker: PhantomData<fn() -> W>,
}

impl<W: Worker> PoolBuilder<W> {
    pub(crate) fn new() -> Self {
        PoolBuilder {
            workers: None,
            thread_name: "crew".to_owned(),
            stack_size: None,
            default_timeout: None,
            queue_capacity: None,
            start_attempts: 3,
            start_backoff: Duration::from_millis(20),
            abandon_grace: Duration::from_millis(100),
            _worker: PhantomData,
        }
    }

    /// The number of workers. Defaults to `std::thread::available_parallelism()`.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
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
    /// The bound is recorded and validated now; enforcement (blocking `submit`,
    /// `try_submit` returning the input) is part of the backpressure work.
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

    /// Validates the settings and starts the workers.
    pub fn build(self) -> Result<Pool<W>, BuildError> {
        let workers = match self.workers {
            Some(0) => return Err(BuildError::new(BuildErrorKind::NoWorkers)),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
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
        let config = Config {
            workers,
            thread_name: self.thread_name,
            stack_size: self.stack_size,
            default_timeout: self.default_timeout,
            queue_capacity: self.queue_capacity,
            start_attempts: self.start_attempts,
            start_backoff: self.start_backoff,
            max_start_backoff: (self.start_backoff * 64).min(Duration::from_secs(10)),
            abandon_grace: self.abandon_grace,
        };
        Pool::start(config)
    }
}

impl<W> fmt::Debug for PoolBuilder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("worker", &std::any::type_name::<W>())
            .field("workers", &self.workers)
            .field("thread_name", &self.thread_name)
            .field("stack_size", &self.stack_size)
            .field("timeout", &self.default_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("start_attempts", &self.start_attempts)
            .field("start_backoff", &self.start_backoff)
            .field("abandon_grace", &self.abandon_grace)
            .finish()
    }
}
