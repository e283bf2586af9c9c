//! `Pool`, the handle users hold.

use std::fmt;
use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::task::{Context as PollContext, Poll};
use std::time::{Duration, Instant};

use crate::backend::{Admission, BackendKind, Config, Engine};
use crate::builder::PoolBuilder;
use crate::error::{BuildError, BuildErrorKind, ResizeError, ShutdownTimedOut, SubmitError};
use crate::events::Events;
use crate::health::{Health, Probe, Watcher};
use crate::stats::Stats;
use crate::sync::Arc;
use crate::task::cell::{new_cell, AsyncCall, Call, Input, Job, Limits, Payload, Plain};
use crate::task::{Priority, Task, TaskId, TaskOptions};
use crate::threads::{IdleFuture, Shared};
use crate::worker::{Closures, Context, Worker, WorkerId};

/// A pool of workers. Cheap to clone (all clones share one pool), `Send + Sync`.
///
/// `Pool` alone means `Pool<Closures>`: a pool for [`spawn`](Pool::spawn)ing
/// closures. `Pool<W>` runs a [`Worker`] type with per-worker state; it takes inputs
/// through [`submit`](Pool::submit).
///
/// # Shutting down
///
/// - [`shutdown`](Pool::shutdown): take no new work, run everything queued, run
///   every `Worker::stop`, join the threads.
/// - [`shutdown_timeout`](Pool::shutdown_timeout): the same, but past the deadline
///   the rest is terminated.
/// - [`terminate`](Pool::terminate): take no new work; queued tasks resolve as
///   closed, running ones as cancelled.
/// - **Dropping the last `Pool` handle drains**: it closes the pool the way
///   `shutdown` does, but does not wait; queued tasks still run and their handles
///   still resolve, and the threads exit when the queue is empty. (Draining is the
///   choice that never turns a submitted task into an error behind the caller's
///   back; call `terminate` first for the other behaviour.)
pub struct Pool<W: Worker = Closures> {
    inner: Arc<Inner<W>>,
}

/// The part whose drop means "the last handle is gone".
struct Inner<W: Worker> {
    backend: Backend<W>,
    /// The health watcher thread, if `PoolBuilder::health` was set. It holds
    /// only a weak reference to the backend.
    watcher: Option<Watcher>,
}

/// Where the pool's workers run.
pub(crate) enum Backend<W: Worker> {
    /// Threads of this process (`threads/`).
    Threads(Arc<Shared<W>>),
    /// Workers that are not threads of this process: the process backend
    /// (`processes/`), or an engine from another crate, behind the seam
    /// (`backend/`). A trait object, so that its own bounds (serde types) stay
    /// out of `Pool<W>`.
    Remote(std::sync::Arc<dyn Engine<W>>),
}

impl<W: Worker> Drop for Inner<W> {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.signal();
        }
        match &self.backend {
            Backend::Threads(shared) => shared.close(),
            Backend::Remote(engine) => engine.close(),
        }
    }
}

impl<W: Worker> Clone for Pool<W> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<W: Worker> Pool<W> {
    /// A builder for a pool of `W` workers: `Pool::builder()` for closures,
    /// `Pool::<MyWorker>::builder()` for a worker type.
    pub fn builder() -> PoolBuilder<W> {
        PoolBuilder::new()
    }

    pub(crate) fn start(config: Config, health: Option<Health>) -> Result<Self, BuildError> {
        let shared =
            Shared::start(config).map_err(|e| BuildError::new(BuildErrorKind::Spawn(e)))?;
        Pool::from_backend(Backend::Threads(shared), health)
    }

    /// The handle over a started backend, with its health watcher if asked.
    pub(crate) fn from_backend(
        backend: Backend<W>,
        health: Option<Health>,
    ) -> Result<Self, BuildError> {
        if let Backend::Remote(engine) = &backend {
            // Closures cannot leave this process; `Pool<Closures>`'s own
            // methods (`spawn`) reach the thread backend directly.
            if std::any::TypeId::of::<W>() == std::any::TypeId::of::<Closures>() {
                engine.terminate();
                return Err(BuildError::new(BuildErrorKind::Spawn(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a pool of closures runs on threads only",
                ))));
            }
        }
        let watcher = match health {
            None => None,
            Some(health) => {
                let started = Self::start_watcher(&backend, health);
                match started {
                    Ok(watcher) => Some(watcher),
                    Err(e) => {
                        let pool = Pool {
                            inner: Arc::new(Inner {
                                backend,
                                watcher: None,
                            }),
                        };
                        pool.terminate();
                        return Err(BuildError::new(BuildErrorKind::Spawn(e)));
                    }
                }
            }
        };
        Ok(Pool {
            inner: Arc::new(Inner { backend, watcher }),
        })
    }

    /// Starts the health watcher over a weak reference to `backend`, so the
    /// watcher never keeps a dropped pool alive.
    fn start_watcher(backend: &Backend<W>, health: Health) -> std::io::Result<Watcher> {
        match backend {
            Backend::Threads(shared) => {
                let weak = Arc::downgrade(shared);
                let probe: Probe = Box::new(move || {
                    let shared = weak.upgrade()?;
                    (!shared.is_closed()).then(|| shared.stats())
                });
                let bus = Arc::clone(&shared.events);
                Watcher::start(health, &shared.config.thread_name, bus, probe)
            }
            Backend::Remote(engine) => {
                let weak = std::sync::Arc::downgrade(engine);
                let probe: Probe = Box::new(move || {
                    let engine = weak.upgrade()?;
                    (!engine.is_closed()).then(|| engine.stats())
                });
                Watcher::start(health, "crew", engine.bus(), probe)
            }
        }
    }

    fn stop_watcher(&self) {
        if let Some(watcher) = &self.inner.watcher {
            watcher.stop();
        }
    }

    #[inline]
    fn backend(&self) -> &Backend<W> {
        &self.inner.backend
    }

    /// The thread backend. Only for what only threads offer (closures): a
    /// process pool of `Closures` cannot be built.
    #[inline]
    pub(crate) fn shared(&self) -> &Arc<Shared<W>> {
        match &self.inner.backend {
            Backend::Threads(shared) => shared,
            Backend::Remote(_) => unreachable!("closures never run on an engine (from_backend)"),
        }
    }

    /// The engine, if this pool runs on one whose `map` ships chunks
    /// (`sources/chunked.rs`).
    pub(crate) fn chunk_engine(&self) -> Option<&std::sync::Arc<dyn Engine<W>>> {
        match self.backend() {
            Backend::Remote(engine) if engine.chunks_enabled() => Some(engine),
            _ => None,
        }
    }

    /// Where this pool's workers run: threads of this process, child
    /// processes, or another engine.
    ///
    /// ```
    /// let pool: crew::Pool = crew::Pool::builder().workers(1).build()?;
    /// assert_eq!(pool.backend_kind(), crew::BackendKind::Threads);
    /// # Ok::<(), crew::BuildError>(())
    /// ```
    pub fn backend_kind(&self) -> BackendKind {
        match self.backend() {
            Backend::Threads(_) => BackendKind::Threads,
            Backend::Remote(engine) => engine.kind(),
        }
    }

    /// Whether this pool runs its workers in child processes: the same as
    /// `backend_kind() == BackendKind::Processes`.
    pub fn is_process_pool(&self) -> bool {
        self.backend_kind() == BackendKind::Processes
    }

    /// Submits one input for `Worker::run`.
    ///
    /// With a [`queue_capacity`](PoolBuilder::queue_capacity), waits while the queue
    /// is full (or runs the task on this thread under
    /// [`WhenFull::CallerRuns`](crate::WhenFull::CallerRuns)). The input comes back
    /// inside the error if the pool is shut down, or if it is larger, encoded,
    /// than a process pool's `PoolBuilder::max_message_size`
    /// ([`SubmitError::is_too_large`]).
    #[inline]
    pub fn submit(
        &self,
        input: W::Input,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        self.submit_with(input, TaskOptions::default(), Admission::Wait)
    }

    /// Like [`submit`](Pool::submit), but never waits: a full queue gives the input
    /// back ([`SubmitError::is_full`]).
    #[inline]
    pub fn try_submit(
        &self,
        input: W::Input,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        self.submit_with(input, TaskOptions::default(), Admission::Try)
    }

    /// Like [`submit`](Pool::submit), but waits for room in the queue without
    /// blocking the thread. Needs no particular runtime.
    pub fn submit_async(&self, input: W::Input) -> SubmitAsync<'_, W> {
        SubmitAsync {
            pool: self,
            input: Some(input),
            options: TaskOptions::default(),
            registered: false,
        }
    }

    /// Submits many inputs with one wake-up and one id reservation (cheaper than
    /// a loop of `submit`). With a bounded queue it waits for room, whatever the
    /// [`WhenFull`](crate::WhenFull) policy: a batch never runs on the caller.
    ///
    /// If the pool shuts down part-way (or a process pool refuses an input
    /// above its `PoolBuilder::max_message_size`), the
    /// error holds the input that was refused; the inputs after it are dropped,
    /// and the tasks queued before it keep running, detached.
    pub fn submit_batch<I>(
        &self,
        inputs: I,
    ) -> Result<Vec<Task<W::Output, W::Error>>, SubmitError<W::Input>>
    where
        I: IntoIterator<Item = W::Input>,
    {
        let shared = match self.backend() {
            Backend::Threads(shared) => shared,
            Backend::Remote(engine) => {
                let mut tasks = Vec::new();
                for input in inputs {
                    tasks.push(engine.submit(input, TaskOptions::default(), Admission::Wait)?);
                }
                return Ok(tasks);
            }
        };
        let payloads: Vec<Input<W::Input>> = inputs.into_iter().map(Input).collect();
        let (tasks, rejected) =
            shared.submit_batch(payloads, TaskOptions::default(), Admission::Wait);
        match rejected {
            None => Ok(tasks),
            Some((error, _rest)) => Err(error.map_input(|p| p.0)),
        }
    }

    #[inline]
    pub(crate) fn submit_with(
        &self,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        match self.backend() {
            Backend::Threads(shared) => shared
                .submit(Input(input), options, admission)
                .map_err(|e| e.map_input(|p| p.0)),
            Backend::Remote(engine) => engine.submit(input, options, admission),
        }
    }

    /// Starts a task with options:
    /// `pool.task(input).priority(..).timeout(..).deadline(..).submit()`.
    pub fn task(&self, input: W::Input) -> TaskBuilder<'_, W> {
        TaskBuilder {
            pool: self,
            input,
            options: TaskOptions::default(),
        }
    }

    /// Blocks until no task is queued or running.
    ///
    /// Tasks still running after their handle resolved (cancelled, timed out but
    /// within `abandon_grace`) count as running; threads the pool abandoned do not.
    pub fn wait_idle(&self) {
        self.wait_idle_until(None);
    }

    fn wait_idle_until(&self, deadline: Option<Instant>) -> bool {
        match self.backend() {
            Backend::Threads(shared) => shared.wait_idle(deadline),
            Backend::Remote(engine) => engine.wait_idle(deadline),
        }
    }

    /// Like [`wait_idle`](Pool::wait_idle), for at most `timeout`. True if the pool
    /// became idle.
    pub fn wait_idle_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        match deadline {
            Some(d) => self.wait_idle_until(Some(d)),
            None => {
                self.wait_idle_until(None);
                true
            }
        }
    }

    /// A future that completes when no task is queued or running (work-pool's
    /// `whenIdle`). Needs no particular runtime.
    pub fn idle(&self) -> Idle<W> {
        Idle {
            inner: match self.backend() {
                Backend::Threads(shared) => IdleInner::Threads(shared.idle_future()),
                Backend::Remote(engine) => IdleInner::Remote(std::sync::Arc::clone(engine)),
            },
        }
    }

    /// Takes no new work, runs everything queued, runs every `Worker::stop`, and
    /// joins the worker threads. Every task resolves.
    ///
    /// Called from inside one of this pool's own tasks, it closes the pool but
    /// cannot wait (the calling thread is one of those it would wait for).
    pub fn shutdown(&self) {
        if self.on_own_worker() {
            self.close();
            return;
        }
        let _ = self.shutdown_until(None);
    }

    /// Like [`shutdown`](Pool::shutdown), but if the queue has not drained within
    /// `timeout`, the rest is terminated (queued tasks resolve as closed, running
    /// ones as cancelled) and the threads still running are left to finish on their
    /// own.
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<(), ShutdownTimedOut> {
        if self.on_own_worker() {
            self.close();
            return Ok(());
        }
        let deadline = Instant::now().checked_add(timeout);
        self.shutdown_until(deadline)
    }

    /// Takes no new work; every queued task resolves as closed and every running one
    /// as cancelled (it sees [`Context::is_cancelled`]). Returns at once; worker
    /// threads exit as soon as their current task returns, running `Worker::stop`.
    pub fn terminate(&self) {
        if let Some(watcher) = &self.inner.watcher {
            watcher.signal();
        }
        match self.backend() {
            Backend::Threads(shared) => shared.terminate(),
            Backend::Remote(engine) => engine.terminate(),
        }
    }

    fn close(&self) {
        match self.backend() {
            Backend::Threads(shared) => shared.close(),
            Backend::Remote(engine) => engine.close(),
        }
    }

    fn shutdown_until(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        self.stop_watcher();
        match self.backend() {
            Backend::Threads(shared) => shared.shutdown(deadline),
            Backend::Remote(engine) => engine.shutdown(deadline),
        }
    }

    /// Whether the pool has been shut down (or is shutting down).
    pub fn is_closed(&self) -> bool {
        match self.backend() {
            Backend::Threads(shared) => shared.is_closed(),
            Backend::Remote(engine) => engine.is_closed(),
        }
    }

    /// Cancels every task that has not started, and returns how many it
    /// cancelled; the pool stays open, keeps taking work, and the tasks that are
    /// running go on (p-queue's `clear`, `concurrent.futures`'
    /// `shutdown(cancel_futures=True)` without the shutdown).
    ///
    /// Each cancelled task resolves once, as [`Task::cancel`] would resolve it
    /// ([`TaskError::is_cancelled`](crate::TaskError::is_cancelled)), without
    /// running; `stats().cancelled` counts it and its event is
    /// `TaskDiscarded`. A task a worker is taking at that very moment may start
    /// instead: each task either runs or is cancelled, never both. Tasks
    /// submitted while it runs may or may not be cancelled.
    ///
    /// What "not started" takes in:
    ///
    /// - **threads**: every task in the pool's queues (the global ones and each
    ///   worker's own);
    /// - **processes**: the pool's queue, and the tasks sent ahead to a worker
    ///   process that it has not begun (its `window`, `PoolBuilder::window`):
    ///   these are taken back as steal-back takes them, by asking the worker,
    ///   which answers even in the middle of a long task. So the call waits for
    ///   those answers, one round trip; a worker that does not answer within
    ///   `PoolBuilder::silence_limit` is killed and what it had
    ///   not begun is cancelled. A task the worker has begun is running, and
    ///   runs on;
    /// - **another engine** may cancel nothing (the cluster, today: 0).
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = crew::Pool::builder().workers(1).build()?;
    /// let (release, gate) = mpsc::channel::<()>();
    /// let (started, running) = mpsc::channel::<()>();
    /// let busy = pool.spawn(move || {
    ///     started.send(()).unwrap();
    ///     gate.recv().unwrap(); // holds the only worker
    /// });
    /// running.recv()?;
    /// let queued: Vec<_> = (0..3).map(|i| pool.spawn(move || i)).collect();
    ///
    /// assert_eq!(pool.cancel_queued(), 3);
    /// for task in queued {
    ///     assert!(task.join().unwrap_err().is_cancelled());
    /// }
    /// release.send(())?;
    /// busy.join()?; // the running task was not touched
    /// assert_eq!(pool.spawn(|| 7).join()?, 7); // and the pool goes on
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel_queued(&self) -> usize {
        match self.backend() {
            Backend::Threads(shared) => shared.cancel_queued(),
            Backend::Remote(engine) => engine.cancel_queued(),
        }
    }

    /// Retires one worker and starts a replacement (parallelcode's `kill`). A task it
    /// was running resolves as killed at once
    /// ([`TaskError::is_killed`](crate::TaskError::is_killed)) and sees
    /// [`Context::is_cancelled`]; the thread, which cannot be stopped from outside,
    /// exits when that task returns. False if no live worker has this id.
    ///
    /// On a process pool the worker's process group is killed: SIGTERM, on
    /// which the worker runs [`Worker::stop`](crate::Worker::stop) once its task
    /// returns, then SIGKILL after `kill_grace`. The tasks waiting in its window
    /// run elsewhere.
    pub fn kill_worker(&self, id: WorkerId) -> bool {
        match self.backend() {
            Backend::Threads(shared) => shared.kill_worker(id),
            Backend::Remote(engine) => engine.kill_worker(id),
        }
    }

    /// The workers the pool counts now, by id.
    pub fn workers(&self) -> Vec<WorkerId> {
        match self.backend() {
            Backend::Threads(shared) => shared.worker_ids(),
            Backend::Remote(engine) => engine.worker_ids(),
        }
    }

    /// The number of workers the pool keeps: the fixed size, or an elastic
    /// pool's minimum (see `workers()` for the workers alive now). After
    /// [`resize`](Pool::resize), the new size at once, while workers start or
    /// leave to match it.
    pub fn size(&self) -> usize {
        match self.backend() {
            Backend::Threads(shared) => shared.min_workers(),
            Backend::Remote(engine) => engine.size(),
        }
    }

    /// Changes the number of workers at run time, to a fixed `workers`, as if
    /// the pool had been built with [`PoolBuilder::workers`]`(workers)`: an
    /// elastic pool ([`PoolBuilder::workers_range`]) stops being elastic (use
    /// [`resize_range`](Pool::resize_range) to move its range instead). Returns
    /// at once; [`size`](Pool::size) says `workers` from then on, and the
    /// workers follow:
    ///
    /// - **Growing** starts the missing workers at once. Workers that a
    ///   shrink asked to leave and that have not left yet stay instead.
    /// - **Shrinking** retires idle workers first. A busy worker chosen to
    ///   retire takes no new task and leaves when the task it runs returns:
    ///   nothing running is cancelled. On a process pool, the tasks a retiring
    ///   worker holds in its `window` and has not begun
    ///   are taken back (as steal-back takes them) and run on the workers that
    ///   stay. Every retired worker runs [`Worker::stop`](crate::Worker::stop),
    ///   and its [`Event::WorkerExited`](crate::Event::WorkerExited) says
    ///   [`ExitReason::Retired`](crate::ExitReason::Retired).
    ///
    /// [`workers`](Pool::workers) leaves out the workers asked to leave at
    /// once; [`stats`](Pool::stats) shows each of them until it has left (busy
    /// while its task runs, then stopping). Every task resolves exactly once,
    /// whatever runs meanwhile: submissions, other resizes, a shutdown.
    ///
    /// `resize(0)` is refused ([`ResizeError::is_no_workers`]), as
    /// `workers(0)` is at build time: a pool with tasks queued and no worker
    /// would never run them. For a pool that costs nothing while idle, use
    /// `resize_range(0..=n)`, which grows from zero when work comes. A closed
    /// pool refuses too ([`ResizeError::is_closed`]); so does the cluster
    /// backend, whose nodes size their own pools
    /// ([`ResizeError::is_unsupported`]).
    ///
    /// ```
    /// let pool = crew::Pool::builder().workers(2).build()?;
    /// pool.resize(4)?;
    /// assert_eq!(pool.size(), 4);
    /// // The two new workers are starting; wait for them (with a deadline).
    /// let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    /// while pool.workers().len() < 4 && std::time::Instant::now() < deadline {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(pool.workers().len(), 4);
    ///
    /// pool.resize(1)?; // three idle workers retire
    /// assert_eq!(pool.workers().len(), 1);
    /// assert_eq!(pool.spawn(|| 6 * 7).join()?, 42);
    ///
    /// assert!(pool.resize(0).unwrap_err().is_no_workers());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resize(&self, workers: usize) -> Result<(), ResizeError> {
        self.resize_range(workers..=workers)
    }

    /// Makes the pool elastic with a new range, as if it had been built with
    /// [`PoolBuilder::workers_range`]`(min..=max)` (its
    /// [`idle_timeout`](PoolBuilder::idle_timeout) and
    /// [`grow_backlog`](PoolBuilder::grow_backlog) stay): fewer than `min`
    /// workers, the missing ones start at once; more than `max`, the extra ones
    /// retire as [`resize`](Pool::resize) retires them (idle ones first, busy
    /// ones after their task); in between, nothing changes now, and the pool
    /// grows under a backlog and retires workers idle for `idle_timeout`, down
    /// to `min`. `min..=min` is `resize(min)`.
    ///
    /// A range that is empty or ends at 0 is refused
    /// ([`ResizeError::is_no_workers`]); one that starts at 0 is accepted.
    ///
    /// ```
    /// let pool = crew::Pool::builder().workers(4).build()?;
    /// pool.resize_range(1..=8)?; // keep 1, grow up to 8 under a backlog
    /// assert_eq!(pool.size(), 1);
    /// assert_eq!(pool.spawn(|| 6 * 7).join()?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resize_range(&self, workers: RangeInclusive<usize>) -> Result<(), ResizeError> {
        if workers.is_empty() || *workers.end() == 0 {
            return Err(ResizeError::no_workers());
        }
        match self.backend() {
            Backend::Threads(shared) => shared.resize(*workers.start(), *workers.end()),
            Backend::Remote(engine) => engine.resize(workers),
        }
    }

    /// Subscribes to the pool's [`Event`](crate::Event)s: tasks started, finished and
    /// discarded; workers started, failing to start, restarted and exited.
    ///
    /// Any number of subscriptions may exist; each has its own buffer of
    /// [`event_buffer`](PoolBuilder::event_buffer) events, and the pool never
    /// waits for a slow one (a full buffer drops the new event and counts it in
    /// [`Events::dropped`]). Events that happened before the call are not
    /// replayed. Dropping the subscription unsubscribes; with none, the pool pays
    /// one relaxed load per task.
    ///
    /// ```
    /// let pool = crew::Pool::builder().workers(1).build()?;
    /// let events = pool.events();
    /// pool.spawn(|| 1 + 1).join()?;
    /// pool.shutdown();
    /// let finished = events
    ///     .filter(|e| matches!(e, crew::Event::TaskFinished { .. }))
    ///     .count();
    /// assert_eq!(finished, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn events(&self) -> Events {
        match self.backend() {
            Backend::Threads(shared) => shared.events.subscribe(),
            Backend::Remote(engine) => engine.events(),
        }
    }

    /// Subscribes to the messages workers send with
    /// [`Context::send`](crate::Context::send): `(sender, message)` pairs, from
    /// every worker, in each worker's send order. Several subscriptions each
    /// get every message sent while they exist (see
    /// [`Messages`](crate::Messages) for buffering and loss).
    ///
    /// ```
    /// use crew::{Context, Pool, StartError, Worker};
    ///
    /// struct Counter;
    /// impl Worker for Counter {
    ///     type Input = u32;
    ///     type Output = ();
    ///     type Error = String;
    ///     type Message = String;
    ///     fn start(_: &mut Context<'_>) -> Result<Self, StartError> { Ok(Counter) }
    ///     fn run(&mut self, n: u32, ctx: &mut Context<'_>) -> Result<(), String> {
    ///         ctx.send(format!("halfway through {n}")).map_err(|e| e.to_string())
    ///     }
    /// }
    ///
    /// let pool = Pool::<Counter>::builder().workers(1).build()?;
    /// let messages = pool.messages();
    /// pool.submit(7)?.join()?;
    /// let (_worker, text) = messages.recv().unwrap();
    /// assert_eq!(text, "halfway through 7");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn messages(&self) -> crate::Messages<W::Message> {
        match self.backend() {
            Backend::Threads(shared) => crate::Messages::subscribe(&shared.messages),
            Backend::Remote(engine) => engine.messages(),
        }
    }

    /// Sends `message` to every live worker; each receives it in
    /// [`Worker::on_message`](crate::Worker::on_message) between tasks (an idle
    /// worker at once, a busy one when its task ends). Workers started later do
    /// not get it: see [`broadcast_sticky`](Pool::broadcast_sticky).
    pub fn broadcast(&self, message: W::Message) {
        match self.backend() {
            Backend::Threads(shared) => shared.broadcast(message, false),
            Backend::Remote(engine) => engine.broadcast(message, false),
        }
    }

    /// Like [`broadcast`](Pool::broadcast), and every worker started later (a
    /// replacement, a recycled process, an elastic pool's extra worker, a state
    /// rebuilt after a panic) gets it too, right after its `start`, with every
    /// other sticky message in the order they were sent: for settings.
    pub fn broadcast_sticky(&self, message: W::Message) {
        match self.backend() {
            Backend::Threads(shared) => shared.broadcast(message, true),
            Backend::Remote(engine) => engine.broadcast(message, true),
        }
    }

    /// Sends `message` to one worker (an id from [`workers`](Pool::workers) or
    /// an event). [`SendError::NoSuchWorker`](crate::SendError::NoSuchWorker)
    /// gives it back if that worker is gone.
    pub fn send_to(
        &self,
        worker: WorkerId,
        message: W::Message,
    ) -> Result<(), crate::SendError<W::Message>> {
        let sent = match self.backend() {
            Backend::Threads(shared) => shared.send_to(worker, message),
            Backend::Remote(engine) => engine.send_to(worker, message),
        };
        sent.map_err(crate::SendError::NoSuchWorker)
    }

    /// A snapshot of the pool's state and counters.
    pub fn stats(&self) -> Stats {
        match self.backend() {
            Backend::Threads(shared) => shared.stats(),
            Backend::Remote(engine) => engine.stats(),
        }
    }

    pub(crate) fn on_own_worker(&self) -> bool {
        // A task that holds a clone of its own pool calls `shutdown` on the thread it
        // would have to join.
        match self.backend() {
            Backend::Threads(shared) => crate::threads::is_worker_of(shared),
            Backend::Remote(_) => false,
        }
    }
}

/// Closures: `Pool` without a type argument is `Pool<Closures>`, a pool that runs
/// any `FnOnce` and hands back its result. (A closure's captures cannot cross
/// into another process, so closures are offered only here; a worker type's
/// pool takes inputs, and a pool of `Functions` takes closures that capture
/// nothing, in worker processes too.)
impl Pool<Closures> {
    /// Runs a closure on the pool and returns its handle.
    ///
    /// With a [`queue_capacity`](PoolBuilder::queue_capacity), waits while the queue
    /// is full (or runs the closure right here under
    /// [`WhenFull::CallerRuns`](crate::WhenFull::CallerRuns)). On a shut-down pool
    /// the closure is dropped and the task is already resolved as closed
    /// ([`TaskError::is_closed`](crate::TaskError::is_closed)). A closure spawned
    /// from inside one of this pool's tasks goes to that worker's own queue.
    #[inline]
    pub fn spawn<F, T>(&self, f: F) -> Task<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self
            .shared()
            .submit(Plain(f), TaskOptions::default(), Admission::Wait)
        {
            Ok(task) => task,
            Err(e) => closed_task(e.into_inner()),
        }
    }

    /// Like [`spawn`](Pool::spawn), but never waits: a full queue or a shut-down
    /// pool gives the closure back.
    #[inline]
    pub fn try_spawn<F, T>(&self, f: F) -> Result<Task<T>, SubmitError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.shared()
            .submit(Plain(f), TaskOptions::default(), Admission::Try)
            .map_err(|e| e.map_input(|p| p.0))
    }

    /// Spawns many closures with one wake-up and one id reservation (cheaper than
    /// a loop of `spawn`). Returns a handle per closure, in order; on a shut-down
    /// pool the remaining ones are resolved as closed.
    pub fn spawn_batch<I, F, T>(&self, closures: I) -> Vec<Task<T>>
    where
        I: IntoIterator<Item = F>,
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let payloads: Vec<Plain<F>> = closures.into_iter().map(Plain).collect();
        let (mut tasks, rejected) =
            self.shared()
                .submit_batch(payloads, TaskOptions::default(), Admission::Wait);
        if let Some((error, rest)) = rejected {
            tasks.push(closed_task(error.into_inner()));
            tasks.extend(rest.into_iter().map(closed_task));
        }
        tasks
    }

    /// Like [`spawn`](Pool::spawn), for a closure that wants the [`Context`] (to check
    /// [`Context::is_cancelled`], or to know its worker).
    pub fn spawn_with<F, T>(&self, f: F) -> Task<T>
    where
        F: FnOnce(&mut Context<'_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_call(f, TaskOptions::default())
    }

    /// Starts a closure task with options:
    /// `pool.job(|ctx| ..).priority(..).timeout(..).spawn()`.
    pub fn job<F, T>(&self, f: F) -> JobBuilder<'_, F>
    where
        F: FnOnce(&mut Context<'_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        JobBuilder {
            pool: self,
            f,
            options: TaskOptions::default(),
        }
    }

    /// Runs a future on one of the pool's worker threads and returns its handle,
    /// the same [`Task`] as [`spawn`](Pool::spawn)'s: `join` it, `.await` it,
    /// cancel it, give it a timeout (through [`job_async`](Pool::job_async) or the
    /// pool's default).
    ///
    /// Each worker polls its futures itself, with up to
    /// [`concurrency`](PoolBuilder::concurrency) tasks in flight (default 1: set it
    /// higher for futures to overlap). The future needs no particular runtime. One
    /// that uses tokio's timers or I/O needs the worker threads to be inside a
    /// tokio runtime's context: turn on crew's `tokio` feature and build the pool
    /// inside the runtime (or pass it to `PoolBuilder::tokio_handle`);
    /// without it, tokio panics ("there is no reactor running") and the task
    /// resolves as panicked. That runtime must keep running meanwhile. The future
    /// must not block its thread: that stalls the other tasks of its worker (see
    /// [`AsyncWorker`](crate::AsyncWorker)).
    ///
    /// **Why `Send`:** the future is built on the caller's thread and then moves,
    /// through the queue, to whichever worker thread takes it; a `!Send` future
    /// (one holding an `Rc` or a `RefCell` borrow) cannot make that move. The
    /// local variant is an [`AsyncWorker`](crate::AsyncWorker): its state is
    /// built on its worker thread and never leaves it, so neither the state nor
    /// the futures its `run` returns need be `Send`; only the input and output
    /// cross threads.
    ///
    /// **Cancel, timeout, kill, terminate:** the handle resolves at once and the
    /// future is dropped at its next poll boundary, which crew brings about at once
    /// by waking it; code between two `.await`s runs on until the next one. A
    /// panic inside the future resolves the task as panicked.
    ///
    /// ```
    /// use futures::channel::oneshot;
    ///
    /// // One worker, two tasks in flight: the first waits for what the second sends.
    /// let pool = crew::Pool::builder().workers(1).concurrency(2).build()?;
    /// let (tx, rx) = oneshot::channel::<u32>();
    /// let waiter = pool.spawn_async(async move { rx.await.unwrap() + 1 });
    /// let sender = pool.spawn_async(async move { tx.send(41).unwrap() });
    /// sender.join()?;
    /// assert_eq!(waiter.join()?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_async<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_future(future, TaskOptions::default())
    }

    /// Starts a future task with options:
    /// `pool.job_async(fut).priority(..).timeout(..).spawn()`.
    pub fn job_async<F>(&self, future: F) -> AsyncJobBuilder<'_, F>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AsyncJobBuilder {
            pool: self,
            future,
            options: TaskOptions::default(),
        }
    }

    fn spawn_future<F>(&self, future: F, options: TaskOptions) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self
            .shared()
            .submit(AsyncCall(future), options, Admission::Wait)
        {
            Ok(task) => task,
            Err(e) => closed_task(e.into_inner()),
        }
    }

    #[inline]
    fn spawn_call<F, T>(&self, f: F, options: TaskOptions) -> Task<T>
    where
        F: FnOnce(&mut Context<'_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.shared().submit(Call::new(f), options, Admission::Wait) {
            Ok(task) => task,
            Err(e) => closed_task(e.into_inner()),
        }
    }
}

/// A task that never queued: the pool was closed.
fn closed_task<P>(payload: P) -> Task<P::Output>
where
    P: Payload<Closures, Error = std::convert::Infallible>,
{
    let cell = new_cell::<_, P::Output, std::convert::Infallible>(
        TaskId(0),
        Priority::Normal,
        Limits::NONE,
        false,
        None,
        0,
        payload,
    );
    let task = Task::new(cell.clone());
    // Resolve as closed by dropping the only queue reference without running it.
    drop(Job::<Closures>::new(cell));
    debug_assert!(task.is_finished());
    task
}

impl<W: Worker> fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("worker", &std::any::type_name::<W>())
            .field("size", &self.size())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Options for one input; from [`Pool::task`].
#[must_use = "a TaskBuilder does nothing until `.submit()`"]
pub struct TaskBuilder<'a, W: Worker> {
    pool: &'a Pool<W>,
    input: W::Input,
    options: TaskOptions,
}

impl<'a, W: Worker> TaskBuilder<'a, W> {
    /// The task's priority (default `Normal`).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.options.priority = priority;
        self
    }

    /// The task's timeout, overriding the pool's default. On threads the clock
    /// starts when the task starts running; on processes, when the task reaches
    /// the head of its worker's window (the pool's own clock: a stopped or silent
    /// worker cannot hold it back). Time spent queued does not count: for a
    /// limit that does, see [`deadline`](TaskBuilder::deadline).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// A deadline `within` from now (this call), counted whether the task is
    /// queued or running, where [`timeout`](TaskBuilder::timeout) counts only
    /// from its start. By the deadline:
    ///
    /// - a task **still queued** resolves as timed out
    ///   ([`TaskError::is_timeout`](crate::TaskError::is_timeout)) and never
    ///   runs; on a process pool, one already sent to a worker that has not
    ///   begun it is taken back (if the worker begins it anyway, that worker is
    ///   killed);
    /// - a task **running** is stopped as a timeout stops it: resolved as timed
    ///   out and told through [`Context::is_cancelled`], its thread abandoned
    ///   after [`abandon_grace`](PoolBuilder::abandon_grace) if it does not
    ///   return; on a process pool, its worker is killed.
    ///
    /// With both set, whichever ends first applies. The pool's own clock decides
    /// (a monitor thread the pool already has, no thread per task). A task run
    /// on the caller under [`WhenFull::CallerRuns`](crate::WhenFull::CallerRuns)
    /// starts at once and has no deadline, as it has no timeout. Engines other
    /// than threads and processes may not carry deadlines (the cluster does not,
    /// today).
    ///
    /// ```
    /// use std::time::Duration;
    /// use crew::{Context, Pool, StartError, Worker};
    ///
    /// struct Sleeper;
    /// impl Worker for Sleeper {
    ///     type Input = u64;
    ///     type Output = u64;
    ///     type Error = String;
    ///     type Message = ();
    ///     fn start(_: &mut Context<'_>) -> Result<Self, StartError> { Ok(Sleeper) }
    ///     fn run(&mut self, ms: u64, ctx: &mut Context<'_>) -> Result<u64, String> {
    ///         for _ in 0..ms {
    ///             if ctx.is_cancelled() { break; }
    ///             std::thread::sleep(Duration::from_millis(1));
    ///         }
    ///         Ok(ms)
    ///     }
    /// }
    ///
    /// let pool = Pool::<Sleeper>::builder().workers(1).build()?;
    /// let long = pool.submit(2_000)?;
    /// // Queued behind `long`: a timeout would not start counting until it ran.
    /// let impatient = pool.task(1).deadline(Duration::from_millis(50)).submit()?;
    /// assert!(impatient.join().unwrap_err().is_timeout()); // without running
    /// long.cancel();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deadline(self, within: Duration) -> Self {
        self.deadline_at(crate::sync::after(Instant::now(), within))
    }

    /// Like [`deadline`](TaskBuilder::deadline), at an instant: one deadline for
    /// a whole batch of tasks, say. An instant already past times the task out
    /// as soon as the pool looks at it, without running it.
    pub fn deadline_at(mut self, deadline: Instant) -> Self {
        self.options.deadline = Some(deadline);
        self
    }

    /// A sticky key: on a process pool, tasks with the same key go to the same
    /// worker process while it lives (for warm per-worker caches). Threads share
    /// memory, so thread pools ignore it.
    pub fn key(mut self, key: u64) -> Self {
        self.options.key = Some(key);
        self
    }

    /// On a process pool, runs the task again up to `n` times if its worker
    /// process dies under it (overrides the pool's
    /// `PoolBuilder::retries`). Only for idempotent tasks.
    pub fn retries(mut self, n: u32) -> Self {
        self.options.retries = Some(n);
        self
    }

    /// Submits it, waiting while the queue is full (as [`Pool::submit`]).
    pub fn submit(self) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        self.pool
            .submit_with(self.input, self.options, Admission::Wait)
    }

    /// Submits it without waiting (as [`Pool::try_submit`]).
    pub fn try_submit(self) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        self.pool
            .submit_with(self.input, self.options, Admission::Try)
    }

    /// Submits it, waiting for room without blocking (as [`Pool::submit_async`]).
    pub fn submit_async(self) -> SubmitAsync<'a, W> {
        SubmitAsync {
            pool: self.pool,
            input: Some(self.input),
            options: self.options,
            registered: false,
        }
    }
}

impl<W: Worker> fmt::Debug for TaskBuilder<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Options for one closure; from [`Pool::job`].
#[must_use = "a JobBuilder does nothing until `.spawn()`"]
pub struct JobBuilder<'a, F> {
    pool: &'a Pool<Closures>,
    f: F,
    options: TaskOptions,
}

impl<F, T> JobBuilder<'_, F>
where
    F: FnOnce(&mut Context<'_>) -> T + Send + 'static,
    T: Send + 'static,
{
    /// The task's priority (default `Normal`).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.options.priority = priority;
        self
    }

    /// The task's timeout, overriding the pool's default. The clock starts when the
    /// task starts running: time spent queued does not count (see
    /// [`deadline`](JobBuilder::deadline)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// A deadline `within` from now, counted while the task is queued too:
    /// still queued then, it resolves as timed out without running; running,
    /// it is timed out as [`timeout`](JobBuilder::timeout) would. See
    /// [`TaskBuilder::deadline`].
    ///
    /// ```
    /// use std::{sync::mpsc, time::Duration};
    ///
    /// let pool = crew::Pool::builder().workers(1).build()?;
    /// let (release, gate) = mpsc::channel::<()>();
    /// let busy = pool.spawn(move || gate.recv().unwrap());
    /// let late = pool.job(|_| "ran").deadline(Duration::from_millis(20)).spawn();
    /// assert!(late.join().unwrap_err().is_timeout()); // the worker never freed up
    /// release.send(())?;
    /// busy.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deadline(self, within: Duration) -> Self {
        self.deadline_at(crate::sync::after(Instant::now(), within))
    }

    /// Like [`deadline`](JobBuilder::deadline), at an instant.
    pub fn deadline_at(mut self, deadline: Instant) -> Self {
        self.options.deadline = Some(deadline);
        self
    }

    /// Spawns it; on a shut-down pool the task is already resolved as closed.
    pub fn spawn(self) -> Task<T> {
        self.pool.spawn_call(self.f, self.options)
    }
}

impl<F> fmt::Debug for JobBuilder<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobBuilder")
            .field("f", &"<closure>")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Options for one future; from [`Pool::job_async`].
#[must_use = "an AsyncJobBuilder does nothing until `.spawn()`"]
pub struct AsyncJobBuilder<'a, F> {
    pool: &'a Pool<Closures>,
    future: F,
    options: TaskOptions,
}

impl<F> AsyncJobBuilder<'_, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// The task's priority (default `Normal`).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.options.priority = priority;
        self
    }

    /// The task's timeout, overriding the pool's default. The clock starts when a
    /// worker first polls the future; when it runs out, the handle resolves as
    /// timed out and the future is dropped.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// A deadline `within` from now, counted while the future waits for a
    /// worker too (see [`TaskBuilder::deadline`]): past it, a future never
    /// polled resolves as timed out without running, and one in flight is
    /// dropped as a timeout drops it.
    pub fn deadline(self, within: Duration) -> Self {
        self.deadline_at(crate::sync::after(Instant::now(), within))
    }

    /// Like [`deadline`](AsyncJobBuilder::deadline), at an instant.
    pub fn deadline_at(mut self, deadline: Instant) -> Self {
        self.options.deadline = Some(deadline);
        self
    }

    /// Spawns it (as [`Pool::spawn_async`]); on a shut-down pool the task is
    /// already resolved as closed.
    pub fn spawn(self) -> Task<F::Output> {
        self.pool.spawn_future(self.future, self.options)
    }
}

impl<F> fmt::Debug for AsyncJobBuilder<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncJobBuilder")
            .field("future", &"<future>")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The future from [`Pool::submit_async`]: resolves to the submission's result
/// once the queue has room.
#[must_use = "futures do nothing unless awaited"]
pub struct SubmitAsync<'a, W: Worker> {
    pool: &'a Pool<W>,
    input: Option<W::Input>,
    options: TaskOptions,
    /// Whether this future is counted among the capacity's waiters.
    registered: bool,
}

impl<W: Worker> Future for SubmitAsync<'_, W> {
    type Output = Result<Task<W::Output, W::Error>, SubmitError<W::Input>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let input = this
            .input
            .take()
            .expect("SubmitAsync polled after completion");
        let shared = match this.pool.backend() {
            Backend::Threads(shared) => shared,
            Backend::Remote(engine) => {
                if !engine.poll_room(cx.waker()) {
                    this.input = Some(input);
                    return Poll::Pending;
                }
                return match engine.submit(input, this.options, Admission::Try) {
                    Err(e) if e.is_full() => {
                        let input = e.into_inner();
                        if engine.poll_room(cx.waker()) {
                            Poll::Ready(engine.submit(input, this.options, Admission::Wait))
                        } else {
                            this.input = Some(input);
                            Poll::Pending
                        }
                    }
                    result => Poll::Ready(result),
                };
            }
        };
        match shared.poll_capacity(cx, &mut this.registered) {
            Poll::Pending => {
                this.input = Some(input);
                Poll::Pending
            }
            Poll::Ready(false) => Poll::Ready(Err(SubmitError::closed(input))),
            // An unused reservation is released inside `submit` (pool closed).
            Poll::Ready(true) => Poll::Ready(this.pool.submit_with(
                input,
                this.options,
                Admission::Acquired,
            )),
        }
    }
}

impl<W: Worker> Drop for SubmitAsync<'_, W> {
    fn drop(&mut self) {
        if let Backend::Threads(shared) = self.pool.backend() {
            shared.forget_capacity_waiter(&mut self.registered);
        }
    }
}

impl<W: Worker> Unpin for SubmitAsync<'_, W> {}

impl<W: Worker> fmt::Debug for SubmitAsync<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitAsync")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The future from [`Pool::idle`].
#[must_use = "futures do nothing unless awaited"]
pub struct Idle<W: Worker> {
    inner: IdleInner<W>,
}

enum IdleInner<W: Worker> {
    Threads(IdleFuture<W>),
    Remote(std::sync::Arc<dyn Engine<W>>),
}

impl<W: Worker> Future for Idle<W> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<()> {
        match &mut self.inner {
            IdleInner::Threads(f) => Pin::new(f).poll(cx),
            IdleInner::Remote(engine) => {
                if engine.poll_idle(cx.waker()) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<W: Worker> fmt::Debug for Idle<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idle").finish_non_exhaustive()
    }
}
