//! `PoolBuilder`: every pool-level setting, validated in `build()`.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::{Config, Engine};
use crate::error::{BuildError, BuildErrorKind};
use crate::health::Health;
use crate::pool::Pool;
use crate::worker::Worker;

pub use crate::backend::{SpawnHandler, WhenFull};

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
pub struct PoolBuilder<W: Worker> {
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
    concurrency: usize,
    health: Option<Health>,
    /// `tokio_handle` (in `runtime.rs`).
    #[cfg(feature = "tokio")]
    pub(crate) tokio: Option<tokio::runtime::Handle>,
    #[cfg(all(feature = "process", target_os = "linux"))]
    process: Option<ProcessSettings<W>>,
    /// Set by [`engine`](PoolBuilder::engine): a backend from outside.
    engine: Option<StartEngine<W>>,
    _worker: PhantomData<fn() -> W>,
}

/// Starts a backend's engine from the validated settings.
type StartEngine<W> = Box<dyn FnOnce(&Config) -> std::io::Result<Arc<dyn Engine<W>>> + Send + Sync>;

/// How a process pool of `W` starts: the backend's entry point (monomorphized
/// where `W: RemoteWorker` is known) and its settings.
#[cfg(all(feature = "process", target_os = "linux"))]
struct ProcessSettings<W: Worker> {
    launch: LaunchFn<W>,
    config: crate::processes::ProcessConfig,
    /// `.processes(n)` was called: the backend is an explicit choice. A
    /// process setting alone never picks it (see `first_setting`).
    chosen: bool,
    /// The first process-only setting given, named in the `BuildError` when
    /// `.processes(n)` was not.
    first_setting: Option<&'static str>,
}

#[cfg(all(feature = "process", target_os = "linux"))]
type LaunchFn<W> =
    fn(Config, crate::processes::ProcessConfig) -> std::io::Result<Arc<dyn Engine<W>>>;

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
            concurrency: 1,
            health: None,
            #[cfg(feature = "tokio")]
            tokio: None,
            #[cfg(all(feature = "process", target_os = "linux"))]
            process: None,
            engine: None,
            _worker: PhantomData,
        }
    }

    /// A fixed number of workers. Defaults to `std::thread::available_parallelism()`.
    /// The last of `workers`, `workers_range` and `processes` sets the size;
    /// [`Pool::resize`] changes it at run time.
    #[must_use]
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self.range = None;
        self
    }

    /// An elastic pool: it starts `min` workers, grows one worker at a time up to
    /// `max` while the queue's backlog exceeds [`grow_backlog`](Self::grow_backlog)
    /// tasks per worker and every worker is busy, and retires workers that stayed
    /// idle for [`idle_timeout`](Self::idle_timeout), down to `min`.
    /// [`Pool::resize_range`] moves the range at run time.
    ///
    /// On a process pool, `.processes(min).workers_range(min..=max)` (the last
    /// size setting wins; `processes` picks the backend): the backlog also
    /// counts the tasks waiting in each worker's `window`
    /// behind the one it runs, and a process starts only when no other start
    /// is in flight (a process start costs milliseconds; the new worker then
    /// takes tasks back from the busiest window).
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool: crew::Pool = crew::Pool::builder()
    ///     .workers_range(1..=8)
    ///     .idle_timeout(Duration::from_secs(30))
    ///     .build()?;
    /// assert_eq!(pool.size(), 1); // the minimum
    /// # Ok::<(), crew::BuildError>(())
    /// ```
    #[must_use]
    pub fn workers_range(mut self, range: RangeInclusive<usize>) -> Self {
        self.range = Some(range);
        self.workers = None;
        self
    }

    /// How long an extra worker of an elastic pool may stay idle before it
    /// retires (threads and processes alike). Default 10 s.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Queued tasks per worker above which an elastic pool grows. Default 2: the
    /// queue is then deeper than the workers can start within one task's time
    /// each, and a new thread (≈ 20–50 µs to start) pays off for any task longer
    /// than that. A process takes milliseconds to start: a process pool grows
    /// one process at a time (see [`workers_range`](Self::workers_range)).
    #[must_use]
    pub fn grow_backlog(mut self, tasks_per_worker: usize) -> Self {
        self.grow_backlog = tasks_per_worker;
        self
    }

    /// What a blocking submission does when the queue is full. Default
    /// [`WhenFull::Block`].
    #[must_use]
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = policy;
        self
    }

    /// Takes over the starting of worker threads (as rayon's `spawn_handler`): to
    /// set affinity or priority, to count threads, or to make spawning fail in
    /// tests. The handler must run the body on a new thread, or return an error;
    /// a pool whose replacement thread fails to start retries later with backoff.
    #[must_use]
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
    #[must_use]
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// The stack size of worker threads, in bytes. Defaults to Rust's default.
    #[must_use]
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// The timeout of every task that does not set its own. The clock starts when the
    /// task starts running, not when it is queued. No timeout by default.
    #[must_use]
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
    #[must_use]
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// How many consecutive `Worker::start` failures, with no worker alive, make the
    /// pool give up on waiting tasks (they fail with
    /// [`TaskError::is_start_failure`](crate::TaskError::is_start_failure), and so do
    /// new ones until a start succeeds). Workers keep retrying with backoff. Default 3.
    #[must_use]
    pub fn start_attempts(mut self, attempts: u32) -> Self {
        self.start_attempts = attempts;
        self
    }

    /// The first delay between start retries; it doubles on each failure up to 64
    /// times this value (at most 10 s). Default 20 ms.
    #[must_use]
    pub fn start_backoff(mut self, delay: Duration) -> Self {
        self.start_backoff = delay;
        self
    }

    /// How long a timed-out (or killed) task's thread may keep running before the
    /// pool gives up on it and starts a replacement thread. A task that checks
    /// [`Context::is_cancelled`](crate::Context::is_cancelled) and returns within the
    /// grace keeps its thread. Default 100 ms.
    #[must_use]
    pub fn abandon_grace(mut self, grace: Duration) -> Self {
        self.abandon_grace = grace;
        self
    }

    /// How many events each [`Pool::events`](crate::Pool::events) subscriber may
    /// hold unread. When a subscriber's buffer is full, new events are dropped
    /// for it (and counted in [`Events::dropped`](crate::Events::dropped)); the
    /// pool never waits for a reader. Default 1024; must be at least 1.
    #[must_use]
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events;
        self
    }

    /// How many tasks each worker may have in flight at once (default 1). Only
    /// async tasks overlap ([`Pool::spawn_async`](crate::Pool::spawn_async), an
    /// [`AsyncWorker`](crate::AsyncWorker)): while one waits at an `.await`, its
    /// worker polls another or takes a new one from the queue, as long as fewer
    /// than `n` are in flight. A synchronous task runs to its end and takes one of
    /// the `n` places while it does.
    ///
    /// A worker with `n` tasks in flight takes no more, so the queue's
    /// backpressure, `queued` and `busy` keep their meaning: a task is queued
    /// until some worker has room for it. Must be at least 1.
    ///
    /// Thread pools only: a process pool with `n > 1` is a build error (an
    /// `Async` worker in a process runs one task at a time).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Starts a health watcher with these settings: a helper thread that emits
    /// [`Event::Backlog`](crate::Event::Backlog) when the queue stays deep and,
    /// if asked, a periodic [`Event::Stats`](crate::Event::Stats) snapshot. Off
    /// by default. See [`Health`].
    #[must_use]
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Runs the pool on `start`'s engine instead of threads: the entry point of
    /// a backend that lives outside this crate (the cluster). `build()`
    /// validates the settings as usual, then calls `start` with them.
    ///
    /// Part of the unstable backend seam ([`crate::backend`]); not for
    /// applications.
    #[doc(hidden)]
    #[must_use]
    pub fn engine<F>(mut self, start: F) -> Self
    where
        F: FnOnce(&Config) -> std::io::Result<Arc<dyn Engine<W>>> + Send + Sync + 'static,
    {
        self.engine = Some(Box::new(start));
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
        if self.concurrency == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroConcurrency));
        }
        if let Some(setting) = self.health.as_ref().and_then(Health::invalid_setting) {
            return Err(BuildError::new(BuildErrorKind::ZeroDuration(setting)));
        }
        let health = self.health;
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
            concurrency: self.concurrency,
            #[cfg(feature = "tokio")]
            runtime: crate::runtime::Runtime::resolve(self.tokio),
            #[cfg(not(feature = "tokio"))]
            runtime: crate::runtime::Runtime::resolve(None),
        };
        if let Some(start) = self.engine {
            let engine = start(&config).map_err(|e| BuildError::new(BuildErrorKind::Spawn(e)))?;
            return Pool::from_backend(crate::pool::Backend::Remote(engine), health);
        }
        #[cfg(all(feature = "process", target_os = "linux"))]
        if let Some(process) = self.process {
            if !process.chosen {
                let setting = process.first_setting.unwrap_or("a process setting");
                return Err(BuildError::new(BuildErrorKind::NeedsProcesses(setting)));
            }
            if self.concurrency > 1 {
                // A worker process runs one task at a time; several in flight
                // would need an executor in the worker process.
                return Err(BuildError::new(BuildErrorKind::NotForProcesses(
                    "concurrency",
                )));
            }
            if process.config.window == 0 {
                return Err(BuildError::new(BuildErrorKind::ZeroWindow));
            }
            if process.config.silence_limit.is_zero() {
                return Err(BuildError::new(BuildErrorKind::ZeroDuration(
                    "silence_limit",
                )));
            }
            if process.config.max_tasks_per_worker == Some(0) {
                return Err(BuildError::new(BuildErrorKind::ZeroMaxTasks));
            }
            let (min, max) = (
                crate::processes::MIN_MAX_MESSAGE_SIZE,
                crate::processes::MAX_MAX_MESSAGE_SIZE,
            );
            let given = process.config.max_message_size;
            if !(min..=max).contains(&given) {
                return Err(BuildError::new(BuildErrorKind::MessageSize {
                    given,
                    min,
                    max,
                }));
            }
            if crate::processes::guard::in_unbootstrapped_worker() {
                return Err(crate::processes::guard::refuse());
            }
            let engine = (process.launch)(config, process.config)
                .map_err(|e| BuildError::new(BuildErrorKind::Spawn(e)))?;
            return Pool::from_backend(crate::pool::Backend::Remote(engine), health);
        }
        Pool::start(config, health)
    }
}

/// Process workers: these settings need `W`'s input, output and error to be
/// serde types ([`RemoteWorker`](crate::RemoteWorker)).
#[cfg(all(feature = "process", target_os = "linux"))]
impl<W: crate::RemoteWorker> PoolBuilder<W> {
    /// Runs `n` workers, each in its own child process (instead of threads).
    ///
    /// By default a worker process re-runs the current executable, whose `main`
    /// must call [`crew::bootstrap::<W>()`](crate::bootstrap) first; or set a
    /// dedicated worker [`program`](PoolBuilder::program) that calls
    /// [`crew::serve::<W>()`](crate::serve).
    ///
    /// The other settings keep their meaning, and [`WhenFull::CallerRuns`]
    /// waits like `Block` (the caller's thread cannot run a process worker's
    /// code). For an elastic process pool, follow with
    /// [`workers_range`](PoolBuilder::workers_range): the last size setting
    /// wins.
    ///
    /// This is the only way to choose the process backend: the process-only
    /// settings below (`retries`, `kill_grace`, `window`, …) on a pool without
    /// `.processes(n)` make `build` fail with a [`BuildError`] that names the
    /// setting, rather than silently changing the backend.
    #[must_use]
    pub fn processes(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self.range = None;
        self.process_settings().chosen = true;
        self
    }

    fn process_settings(&mut self) -> &mut ProcessSettings<W> {
        self.process.get_or_insert_with(|| ProcessSettings {
            launch: |config, process| crate::processes::start::<W>(config, process),
            config: crate::processes::ProcessConfig::default(),
            chosen: false,
            first_setting: None,
        })
    }

    /// The process settings, for the process-only setting `name`.
    fn process_config(&mut self, name: &'static str) -> &mut crate::processes::ProcessConfig {
        let settings = self.process_settings();
        settings.first_setting.get_or_insert(name);
        &mut settings.config
    }

    /// The program worker processes run, instead of the current executable. It
    /// calls [`crew::serve::<W>()`](crate::serve) (or `bootstrap`) in `main`.
    ///
    /// Not for a pool of [`Functions`](crate::Functions): a function is sent
    /// as its place in the pool's own executable, so another program (or
    /// another build of this one) refuses every call
    /// ([`TaskError::is_protocol`](crate::TaskError::is_protocol)).
    #[must_use]
    pub fn program(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.process_config("program").program = Some(path.into());
        self
    }

    /// Arguments for the worker program (none by default).
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        self.process_config("args").args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Tasks in flight per worker process (default 16): sent ahead, so the
    /// worker never waits for the pool between two tasks. Unstarted ones are
    /// taken back for a worker that runs dry.
    #[must_use]
    pub fn window(mut self, tasks: usize) -> Self {
        self.process_config("window").window = tasks;
        self
    }

    /// How long a worker process gets to clean up when it is killed (a cancel
    /// or a timeout of its running task, [`Pool::kill_worker`](crate::Pool::kill_worker),
    /// [`Pool::terminate`](crate::Pool::terminate)) before SIGKILL ends its
    /// process group (default 2 s).
    ///
    /// The kill starts with SIGTERM to the group. The worker then flags its
    /// running task ([`Context::is_cancelled`](crate::Context::is_cancelled)),
    /// starts no other, and once that task returns (at once if it was idle) runs
    /// [`Worker::stop`](crate::Worker::stop) and ends its group itself. A task
    /// that does not return within the grace is ended by the SIGKILL, and
    /// `stop` does not run. If the pool's process dies, its workers give
    /// themselves this same grace. Zero: no cleanup, the group is killed at
    /// once. The handle of the task that was killed resolves at once either
    /// way; the grace only delays the worker's exit and its reaping.
    #[must_use]
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.process_config("kill_grace").kill_grace = grace;
        self
    }

    /// Replaces a worker process after it has run about this many tasks (each
    /// worker's count varies by up to 10%, so they do not all retire at once).
    /// The replacement starts first.
    #[must_use]
    pub fn max_tasks_per_worker(mut self, tasks: u64) -> Self {
        self.process_config("max_tasks_per_worker")
            .max_tasks_per_worker = Some(tasks);
        self
    }

    /// Replaces a worker process whose resident memory, measured after a task,
    /// is above `bytes`. Its own memory counts (anonymous and file-backed
    /// pages), not the shared memory large inputs arrive in. The replacement
    /// starts first.
    #[must_use]
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.process_config("max_memory").max_memory = Some(bytes);
        self
    }

    /// The largest task input, output or error a process pool carries, in bytes
    /// of its encoding (postcard, about the size of the data): 64 MiB by
    /// default, from 4 KiB to 1 GiB (`build` refuses another value).
    ///
    /// - An input larger than this is refused by `submit` (and `try_submit`,
    ///   `submit_async`, `submit_batch`, `TaskBuilder::submit`), which gives it
    ///   back in a [`SubmitError`](crate::SubmitError) that
    ///   [`is_too_large`](crate::SubmitError::is_too_large); nothing is sent.
    ///   `map` and `feed` resolve that item with a
    ///   [`TaskError::is_too_large`](crate::TaskError::is_too_large) instead.
    /// - A result (the output, or the worker's own error) larger than this is
    ///   not sent back: the task resolves with
    ///   [`TaskError::is_too_large`](crate::TaskError::is_too_large), whose
    ///   message gives the size and the limit, and the worker goes on with its
    ///   next task.
    ///
    /// It also bounds every frame on a worker's channel, both ways (this size
    /// plus a few bytes of fields): the pool announces it to each worker at the
    /// handshake and both sides refuse a longer frame before they allocate for
    /// it, so a worker that sends garbage or a huge length costs the pool no
    /// memory (it fails with [`TaskError::is_protocol`](crate::TaskError::is_protocol)
    /// and is replaced). So it also caps messages (`Context::send`,
    /// `broadcast`): a message too large to fit is dropped, with a line on
    /// stderr from the worker's side. Inputs of 64 KiB or more travel through
    /// shared memory rather than the channel, but keep to the same limit, so
    /// whether an input is accepted never depends on the room left there.
    ///
    /// ```no_run
    /// # use crew::{Context, Pool, StartError, Worker};
    /// # struct Thumbnail;
    /// # impl Worker for Thumbnail {
    /// #     type Input = Vec<u8>; type Output = Vec<u8>; type Error = String; type Message = ();
    /// #     fn start(_: &mut Context<'_>) -> Result<Self, StartError> { Ok(Thumbnail) }
    /// #     fn run(&mut self, i: Vec<u8>, _: &mut Context<'_>) -> Result<Vec<u8>, String> { Ok(i) }
    /// # }
    /// // Scans of up to 200 MiB in, thumbnails out.
    /// let pool = Pool::<Thumbnail>::builder()
    ///     .processes(4)
    ///     .window(4)
    ///     .max_message_size(200 << 20)
    ///     .max_memory(2 << 30)
    ///     .build()?;
    /// # Ok::<(), crew::BuildError>(())
    /// ```
    #[must_use]
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.process_config("max_message_size").max_message_size = bytes;
        self
    }

    /// Runs a task again, up to `n` times, when its worker process dies under it
    /// (default 0: fail at once): it exits, or is killed, even in the middle of
    /// writing the task's answer. Only for idempotent tasks. A worker that
    /// breaks the protocol (bytes that are not crew's frames, or half a frame
    /// and a clean exit) is not retried: the same input would most likely do it
    /// again; the task fails with [`TaskError::is_protocol`](crate::TaskError::is_protocol). A death by signal (segfault, abort, OOM kill) is retried
    /// only with [`retry_on_signal`](PoolBuilder::retry_on_signal). A task can
    /// override this with [`TaskBuilder::retries`](crate::TaskBuilder::retries).
    #[must_use]
    pub fn retries(mut self, n: u32) -> Self {
        self.process_config("retries").retries = n;
        self
    }

    /// How long a worker process may stay silent while the pool waits on it for
    /// something only it can say (default 5 s): the answer to taking back a
    /// task it has not started (for a worker that ran dry), or the rest of a
    /// frame it began writing. Past it the worker is killed (SIGKILL) and
    /// reported as a crash, and the tasks it had not started run elsewhere. A
    /// healthy worker answers a take-back at once, even in the middle of a
    /// long task; a stopped (SIGSTOP), frozen or wedged one does not.
    #[must_use]
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.process_config("silence_limit").silence_limit = limit;
        self
    }

    /// Whether [`retries`](PoolBuilder::retries) also covers deaths by signal.
    #[must_use]
    pub fn retry_on_signal(mut self, yes: bool) -> Self {
        self.process_config("retry_on_signal").retry_signals = yes;
        self
    }

    /// Receives every line worker processes print, with the worker's id and the
    /// stream. By default lines go to this process's stderr as `[worker-N] line`.
    #[must_use]
    pub fn on_output<F>(mut self, handler: F) -> Self
    where
        F: Fn(crate::WorkerId, crate::OutputStream, &str) + Send + Sync + 'static,
    {
        self.process_config("on_output").output = Some(std::sync::Arc::new(handler));
        self
    }
}

impl<W: Worker> fmt::Debug for PoolBuilder<W> {
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
            .field("concurrency", &self.concurrency)
            .field("health", &self.health)
            .field("engine", &self.engine.as_ref().map(|_| "<closure>"))
            .field("tokio", &{
                #[cfg(feature = "tokio")]
                let set = self.tokio.is_some();
                #[cfg(not(feature = "tokio"))]
                let set = false;
                set
            })
            .finish()
    }
}
