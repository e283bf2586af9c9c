//! The user's side of a worker: the [`Worker`] trait, and the [`Context`] its code
//! receives.

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::error::StartError;
use crate::sync::Arc;
use crate::task::header::{progress_bits, CellRef, Header, ShareCell};
use crate::task::TaskId;

pub use crate::task::WorkerId;

/// A worker entrypoint with per-worker state.
///
/// The pool runs one instance per worker, on that worker's thread (in a worker
/// process, on its thread there):
///
/// 1. [`start`](Worker::start) builds the instance: the per-worker init (open a
///    connection, load a model). If it fails, the worker retries with backoff; if
///    starts keep failing and no worker is alive, waiting tasks fail with
///    [`TaskError::is_start_failure`](crate::TaskError::is_start_failure) rather than
///    hang.
/// 2. [`run`](Worker::run) handles one task at a time with `&mut self`.
/// 3. [`on_message`](Worker::on_message) receives the pool's
///    [`Message`](Worker::Message)s between tasks (never during one); the worker
///    sends its own with [`Context::send`].
/// 4. [`stop`](Worker::stop) tears down when the worker retires (shutdown, resize,
///    recycling). Every successful `start` is matched by exactly one `stop`,
///    except where the worker's code is stopped from outside: a thread abandoned
///    in a task that never returned, and a worker process that was killed (a
///    timeout, a cancel of its running task, `kill_worker`, `terminate`) or died.
///
/// **After a panic** in `run`, the instance may be half-updated, so the pool calls
/// `stop` on it and builds a fresh one with `start` before the worker takes its next
/// task. The panicking task resolves with the panic's message.
///
/// The instance never leaves its thread, so `Self` need not be `Send`.
///
/// ```
/// use crew::{Context, Pool, StartError, Worker};
///
/// struct Doubler {
///     calls: u64,
/// }
///
/// impl Worker for Doubler {
///     type Input = u64;
///     type Output = u64;
///     type Error = std::convert::Infallible;
///     type Message = ();
///
///     fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
///         Ok(Doubler { calls: 0 })
///     }
///
///     fn run(&mut self, input: u64, _ctx: &mut Context<'_>) -> Result<u64, Self::Error> {
///         self.calls += 1;
///         Ok(input * 2)
///     }
/// }
///
/// let pool = Pool::<Doubler>::builder().workers(2).build()?;
/// assert_eq!(pool.submit(21)?.join()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Worker: Sized + 'static {
    /// What one task receives.
    type Input: Send + 'static;
    /// What one task produces.
    type Output: Send + 'static;
    /// The worker's own error; it reaches the caller inside
    /// [`TaskError`](crate::TaskError), unflattened.
    type Error: Send + 'static;
    /// What the pool and this worker say to each other outside tasks, both
    /// ways (`()` for a worker that needs no messages): the worker sends with
    /// [`Context::send`], the pool with [`Pool::broadcast`](crate::Pool::broadcast)
    /// and [`Pool::send_to`](crate::Pool::send_to), and
    /// [`on_message`](Worker::on_message) receives them between tasks.
    type Message: Clone + Send + 'static;

    /// Builds this worker's state. Runs on the worker's thread.
    fn start(ctx: &mut Context<'_>) -> Result<Self, StartError>;

    /// Handles one task.
    fn run(
        &mut self,
        input: Self::Input,
        ctx: &mut Context<'_>,
    ) -> Result<Self::Output, Self::Error>;

    /// Tears down the worker's state: temporary files, locks, child services.
    /// The default does nothing (the value is then dropped). Runs on the
    /// worker's thread, between tasks, at most once per successful
    /// [`start`](Worker::start); a panic in it is caught and ignored.
    ///
    /// It runs when the worker leaves on the pool's terms: [`Pool::shutdown`]
    /// (after the queued work), an idle worker retired or recycled, and the
    /// rebuild after a panic in a task or in
    /// [`on_message`](Worker::on_message) (`stop`, then `start`).
    ///
    /// When the worker is stopped from outside (a cancel or a timeout of its
    /// running task on processes, [`Pool::kill_worker`], [`Pool::terminate`]):
    ///
    /// - **threads**: a cancel or a timeout ends no worker, so `stop` does not
    ///   run then; the state lives on. A killed, terminated or
    ///   [abandoned](crate::PoolBuilder::abandon_grace) worker runs `stop` when
    ///   its task returns, however late; never if it does not.
    /// - **processes**: the worker process gets SIGTERM. Its running task sees
    ///   [`Context::is_cancelled`], no further task starts, and once the task
    ///   returns (or at once, if it was idle) `stop` runs, then its process
    ///   group is killed. All of it must fit in `PoolBuilder::kill_grace`: at
    ///   its end the group gets SIGKILL, and a `stop` that has not run, or not
    ///   finished, never will. So a task that never checks `is_cancelled` (or
    ///   is stuck in native code) gets no `stop`, nor does a worker that dies
    ///   by itself (a segfault, `abort`, `exit`, the OOM killer). The same
    ///   holds when the pool's own process dies: the worker gives itself
    ///   `kill_grace`, then kills its group.
    ///
    /// A task that checks `is_cancelled` between bounded steps is what lets
    /// `stop` run after a kill:
    ///
    /// ```
    /// # use crew::{Context, StartError, Worker};
    /// struct Scratch {
    ///     dir: std::path::PathBuf,
    /// }
    ///
    /// impl Worker for Scratch {
    ///     # type Input = (); type Output = (); type Error = String; type Message = ();
    ///     fn start(ctx: &mut Context<'_>) -> Result<Self, StartError> {
    ///         let dir = std::env::temp_dir().join(format!("scratch-{}", ctx.worker_id()));
    ///         std::fs::create_dir_all(&dir)?;
    ///         Ok(Scratch { dir })
    ///     }
    ///
    ///     fn run(&mut self, _: (), ctx: &mut Context<'_>) -> Result<(), String> {
    ///         for _step in 0..1_000 {
    ///             if ctx.is_cancelled() {
    ///                 // Return soon: on processes, `stop` runs only after that.
    ///                 return Err("cancelled".into());
    ///             }
    ///             // ... one bounded step of work in `self.dir` ...
    ///         }
    ///         Ok(())
    ///     }
    ///
    ///     fn stop(&mut self, _ctx: &mut Context<'_>) {
    ///         let _ = std::fs::remove_dir_all(&self.dir);
    ///     }
    /// }
    /// ```
    ///
    /// [`Pool::shutdown`]: crate::Pool::shutdown
    /// [`Pool::kill_worker`]: crate::Pool::kill_worker
    /// [`Pool::terminate`]: crate::Pool::terminate
    fn stop(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// Receives a message from the pool, between two tasks (never during one).
    /// The default ignores it. A panic here is treated as a task's: the state
    /// is rebuilt (`stop`, then `start`).
    fn on_message(&mut self, message: Self::Message, ctx: &mut Context<'_>) {
        let _ = (message, ctx);
    }

    /// How the pool runs one input: [`run`](Worker::run) to its end. Crew's
    /// [`Async`](crate::Async) adapter overrides it to hand back a future for the
    /// worker's executor instead. Not meant to be implemented by hand (its return
    /// type cannot be built outside crew).
    #[doc(hidden)]
    #[inline]
    fn __execute(
        &mut self,
        input: Self::Input,
        ctx: &mut Context<'_>,
    ) -> Execution<Self::Output, Self::Error> {
        Execution::done(self.run(input, ctx))
    }
}

/// How a task's code began: it finished, or it is a future for the worker's
/// executor to finish. Only crew builds one; see `Worker::__execute`.
#[doc(hidden)]
pub struct Execution<T, E>(pub(crate) ExecutionKind<T, E>);

pub(crate) enum ExecutionKind<T, E> {
    Done(Result<T, E>),
    /// Created on the worker's thread and polled only there, so it need not be
    /// `Send`.
    Pending(Pin<Box<dyn Future<Output = Result<T, E>>>>),
}

impl<T, E> Execution<T, E> {
    #[inline]
    pub(crate) fn done(result: Result<T, E>) -> Self {
        Execution(ExecutionKind::Done(result))
    }

    pub(crate) fn pending(future: Pin<Box<dyn Future<Output = Result<T, E>>>>) -> Self {
        Execution(ExecutionKind::Pending(future))
    }
}

impl<T, E> fmt::Debug for Execution<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            ExecutionKind::Done(_) => "Execution::Done",
            ExecutionKind::Pending(_) => "Execution::Pending",
        })
    }
}

/// The worker type of a pool that runs closures only: `Pool<Closures>`, which is
/// what `Pool` means without a type argument. It has no state and takes no inputs;
/// use [`Pool::spawn`](crate::Pool::spawn).
#[derive(Debug, Clone, Copy, Default)]
pub struct Closures;

impl Worker for Closures {
    type Input = Infallible;
    type Output = Infallible;
    type Error = Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Closures)
    }

    fn run(&mut self, input: Infallible, _ctx: &mut Context<'_>) -> Result<Infallible, Infallible> {
        match input {}
    }
}

/// What worker code gets from the pool: who it is, whether its task was
/// cancelled, a way to tell the task's caller how far it got
/// ([`progress`](Context::progress)), and a way to send the pool a message.
///
/// An [`AsyncWorker`](crate::AsyncWorker)'s task gets a `Context` that lives as
/// long as its future (it keeps the task's record, and its way to send
/// messages, alive itself).
pub struct Context<'a> {
    worker: WorkerId,
    task: TaskRef<'a>,
    outbox: OutboxRef<'a>,
}

/// Which task a `Context` is about.
enum TaskRef<'a> {
    /// `start`, `stop` and `on_message`.
    None,
    /// A synchronous run: the header, borrowed for the call, and, when the task
    /// came from a queue, the job (to make an owned context from).
    Borrowed(&'a Header, Option<&'a dyn ShareCell>),
    /// An async task's context: owns a reference to the task's cell.
    Owned(Arc<dyn CellRef>),
}

/// Where a `Context` sends messages: borrowed from the worker for a call, or
/// shared with it by an async task's context (one `Arc` per worker, so making
/// an owned context costs a reference count, not an allocation).
enum OutboxRef<'a> {
    /// No pool to send to (`WhenFull::CallerRuns`).
    None,
    Borrowed(&'a Arc<dyn Outbox>),
    Owned(Arc<dyn Outbox>),
}

impl<'a> Context<'a> {
    pub(crate) fn new(worker: WorkerId, task: Option<&'a Header>) -> Self {
        let task = match task {
            Some(header) => TaskRef::Borrowed(header, None),
            None => TaskRef::None,
        };
        Context {
            worker,
            task,
            outbox: OutboxRef::None,
        }
    }

    /// The same context, able to send messages through `outbox`.
    #[inline]
    pub(crate) fn with_outbox(mut self, outbox: &'a Arc<dyn Outbox>) -> Self {
        self.outbox = OutboxRef::Borrowed(outbox);
        self
    }

    /// The context of a queued job's run, able to outlive the call
    /// ([`Context::to_owned`]), sending through `outbox` if there is one.
    #[inline]
    pub(crate) fn for_job(
        worker: WorkerId,
        header: &'a Header,
        job: &'a dyn ShareCell,
        outbox: Option<&'a Arc<dyn Outbox>>,
    ) -> Self {
        Context {
            worker,
            task: TaskRef::Borrowed(header, Some(job)),
            outbox: match outbox {
                Some(outbox) => OutboxRef::Borrowed(outbox),
                None => OutboxRef::None,
            },
        }
    }

    /// An owning reference to the task's cell, if this context can give one.
    pub(crate) fn share_cell(&self) -> Option<Arc<dyn CellRef>> {
        match &self.task {
            TaskRef::Borrowed(_, Some(job)) => Some(job.share()),
            TaskRef::Owned(cell) => Some(Arc::clone(cell)),
            _ => None,
        }
    }

    /// A context for the same worker, task and outbox that borrows nothing, for
    /// an async task's future. Without a job to own (a context crew made for a
    /// direct call), it keeps only the worker id and the outbox.
    pub(crate) fn to_owned(&self) -> Context<'static> {
        let task = match self.share_cell() {
            Some(cell) => TaskRef::Owned(cell),
            None => TaskRef::None,
        };
        let outbox = match &self.outbox {
            OutboxRef::None => OutboxRef::None,
            OutboxRef::Borrowed(outbox) => OutboxRef::Owned(Arc::clone(outbox)),
            OutboxRef::Owned(outbox) => OutboxRef::Owned(Arc::clone(outbox)),
        };
        Context {
            worker: self.worker,
            task,
            outbox,
        }
    }

    #[inline]
    fn header(&self) -> Option<&Header> {
        match &self.task {
            TaskRef::None => None,
            TaskRef::Borrowed(header, _) => Some(header),
            TaskRef::Owned(cell) => Some(cell.header()),
        }
    }

    #[inline]
    fn outbox(&self) -> Option<&dyn Outbox> {
        match &self.outbox {
            OutboxRef::None => None,
            OutboxRef::Borrowed(outbox) => Some(&***outbox),
            OutboxRef::Owned(outbox) => Some(&**outbox),
        }
    }

    /// The worker this code runs on.
    pub fn worker_id(&self) -> WorkerId {
        self.worker
    }

    /// The task being run; `None` in `start`, `stop` and `on_message`.
    pub fn task_id(&self) -> Option<TaskId> {
        self.header().map(Header::id)
    }

    /// Whether the current task was cancelled, timed out or killed, so the code
    /// should stop early. Its handle has already resolved; anything the task returns
    /// now is discarded. Always false in `start` and `stop`.
    ///
    /// In a worker process it also turns true when the process is told to stop
    /// (killed, or its pool's process died): returning then, within
    /// `PoolBuilder::kill_grace`, is what lets
    /// [`Worker::stop`] run.
    ///
    /// An async task's future is dropped at its next poll once this is true; the
    /// flag matters only for long stretches of code between two `.await`s.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.header().is_some_and(Header::is_cancel_requested)
    }

    /// Reports how far the current task got, as a fraction from 0.0 to 1.0,
    /// to whoever holds its [`Task`](crate::Task) handle
    /// ([`Task::progress`](crate::Task::progress),
    /// [`Task::watch_progress`](crate::Task::watch_progress)); not to the
    /// whole pool.
    ///
    /// Cheap enough to call in a tight loop, and it never blocks: the task
    /// keeps one value and the latest report wins (reports in between may
    /// never be seen), so a flood of reports costs no memory. A value outside
    /// `0.0..=1.0` is clamped; NaN is ignored; progress may go down as well
    /// as up. Reports after the task resolved (it was cancelled or timed out
    /// while it ran) are ignored, so a finished task keeps its last value.
    /// Outside a task (`start`, `stop`, `on_message`) it does nothing.
    ///
    /// - **Threads**: the value is in the task's cell at once.
    /// - **Processes**: the worker process keeps the latest value of its
    ///   running task and sends it with its next batch of frames, within
    ///   about a millisecond, and always before the task's result. Items of a
    ///   chunked [`Pool::map`](crate::Pool::map) report nothing (an item has
    ///   no handle of its own).
    /// - **Other engines** (the cluster) may not carry it: their handles
    ///   report `None`.
    ///
    /// ```
    /// let pool = crew::Pool::builder().workers(1).build()?;
    /// let task = pool.spawn_with(|ctx| {
    ///     for step in 1..=4 {
    ///         // ... a quarter of the work ...
    ///         ctx.progress(step as f32 / 4.0);
    ///     }
    /// });
    /// let progress = task.watch_progress();
    /// task.join()?;
    /// // The last report survives the task.
    /// assert_eq!(progress.latest(), Some(1.0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn progress(&self, fraction: f32) {
        let Some(bits) = progress_bits(fraction) else {
            return;
        };
        match &self.task {
            TaskRef::None => return,
            TaskRef::Borrowed(header, job) => {
                if header.set_progress(bits) {
                    if let Some(job) = job {
                        job.notify_progress();
                    }
                }
            }
            TaskRef::Owned(cell) => {
                if cell.header().set_progress(bits) {
                    cell.notify_progress();
                }
            }
        }
        if let Some(outbox) = self.outbox() {
            outbox.progress(self.header().map(Header::id), f32::from_bits(bits));
        }
    }

    /// Sends the pool a message, tagged with this worker's id: every
    /// [`Pool::messages`](crate::Pool::messages) subscription gets it. Never
    /// blocks. Messages from one worker arrive in the order it sent them, and a
    /// message sent during a task arrives before that task's handle resolves.
    ///
    /// `M` must be the worker's [`Worker::Message`] type; another type is given
    /// back in [`SendError::WrongType`]. On the calling thread
    /// (`WhenFull::CallerRuns`) there is no one to send to:
    /// [`SendError::Unavailable`].
    pub fn send<M: Any + Send>(&self, message: M) -> Result<(), SendError<M>> {
        let Some(outbox) = self.outbox() else {
            return Err(SendError::Unavailable(message));
        };
        outbox
            .send(self.worker, Box::new(message))
            .map_err(|back| match back.downcast::<M>() {
                Ok(message) => SendError::WrongType(*message),
                Err(_) => unreachable!("an outbox gives back what it was given"),
            })
    }
}

/// Where [`Context::send`] puts a message: each backend has one per worker,
/// shared (`Arc`) by the contexts it hands out. `send` gives the message back if
/// it is not the worker's `Message` type.
pub(crate) trait Outbox: Send + Sync {
    fn send(&self, from: WorkerId, message: Box<dyn Any + Send>)
        -> Result<(), Box<dyn Any + Send>>;

    /// Where [`Context::progress`] goes besides the task's header: a worker
    /// process forwards it to the pool (its header is a local copy). Nothing
    /// for a thread, whose header is the task's own.
    #[inline]
    fn progress(&self, task: Option<TaskId>, fraction: f32) {
        let _ = (task, fraction);
    }
}

/// Why [`Context::send`] did not send; holds the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError<M> {
    /// `M` is not the worker's `Message` type.
    WrongType(M),
    /// This context has no pool to send to (a task run on the submitting
    /// thread under `WhenFull::CallerRuns`).
    Unavailable(M),
    /// [`Pool::send_to`](crate::Pool::send_to): no live worker has that id.
    NoSuchWorker(M),
}

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendError::WrongType(m) | SendError::Unavailable(m) | SendError::NoSuchWorker(m) => m,
        }
    }
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::WrongType(_) => write!(
                f,
                "the message is not of the worker's Message type ({})",
                std::any::type_name::<M>()
            ),
            SendError::Unavailable(_) => {
                f.write_str("this context has no pool to send messages to")
            }
            SendError::NoSuchWorker(_) => f.write_str("no live worker has that id"),
        }
    }
}

impl<M: fmt::Debug> std::error::Error for SendError<M> {}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("worker", &self.worker)
            .field("task", &self.task_id())
            .finish()
    }
}
