//! `Task`, the handle to one submitted task, and the per-task options.

pub(crate) mod cell;
pub(crate) mod header;
mod mapped;
mod progress;

pub use crate::scheduler::queues::Priority;
pub(crate) use mapped::map_result;
pub use progress::ProgressWatch;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as PollContext, Poll};
use std::time::{Duration, Instant};

use crate::error::{Failure, TaskError};
use crate::scheduler::spin::{Spin, JOIN_SPIN_ROUNDS, JOIN_YIELD_ROUNDS};
use crate::sync::{after, Arc};
use cell::{Handle, Watched};

/// A task's number, unique within its pool and increasing in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The number itself.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task-{}", self.0)
    }
}

/// A worker's identity. Every worker a pool starts gets a new one, so a replacement
/// for a crashed or killed worker has a different id than the worker it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(u64);

impl WorkerId {
    /// The id reported for a task that ran on the submitting thread under
    /// [`WhenFull::CallerRuns`](crate::WhenFull::CallerRuns).
    pub const CALLER: WorkerId = WorkerId(u64::MAX);

    /// Ids start at 1; 0 is never a worker.
    pub(crate) fn new(raw: u64) -> Self {
        debug_assert!(raw != 0);
        WorkerId(raw)
    }

    pub(crate) fn from_raw(raw: u64) -> Option<Self> {
        (raw != 0).then_some(WorkerId(raw))
    }

    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    /// The number itself.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker-{}", self.0)
    }
}

/// The handle to one submitted task.
///
/// - Get the result by blocking, [`join`](Task::join) or
///   [`join_timeout`](Task::join_timeout), or by `.await` (a `Task` is a `Future`
///   that needs no particular runtime).
/// - [`cancel`](Task::cancel) it: a queued task resolves `Cancelled` at once and
///   never runs; a running one resolves `Cancelled` at once and sees
///   [`Context::is_cancelled`](crate::Context::is_cancelled); whatever it returns
///   later is discarded.
///
/// - Follow its [`progress`](Task::progress), as its code reports it with
///   [`Context::progress`](crate::Context::progress), or
///   [`watch`](Task::watch_progress) it change.
///
/// **Dropping a `Task` detaches it**: the task still runs (or stays queued) and its
/// result is dropped when it is produced. This matches `std::thread::JoinHandle` and
/// tokio's `JoinHandle`, and keeps fire-and-forget work cheap; call
/// [`cancel`](Task::cancel) first if the work should not happen.
///
/// `E` is the worker's error type; for closures it is [`Infallible`].
pub struct Task<T, E = Infallible> {
    handle: Arc<dyn Handle<T, E>>,
    /// Set once the result has been taken by `poll`; the handle is then spent.
    done: bool,
}

impl<T, E> Task<T, E> {
    pub(crate) fn new(handle: Arc<dyn Handle<T, E>>) -> Self {
        Task {
            handle,
            done: false,
        }
    }

    /// This task's id.
    pub fn id(&self) -> TaskId {
        self.handle.core().header().id()
    }

    /// The worker that ran (or is running) this task; `None` while it is queued, and
    /// for a task that was resolved without running.
    pub fn worker(&self) -> Option<WorkerId> {
        self.handle.worker()
    }

    /// Whether the task has resolved (`join` would not block).
    pub fn is_finished(&self) -> bool {
        self.handle.core().header().is_resolved()
    }

    /// The latest progress the task's code reported with
    /// [`Context::progress`](crate::Context::progress), a fraction from 0.0
    /// to 1.0; `None` before its first report (and on an engine that does
    /// not carry progress, such as the cluster). Once the task has resolved
    /// it keeps its last value.
    ///
    /// One atomic load: poll it from a UI loop as often as you like, or
    /// [`watch_progress`](Task::watch_progress) to be woken by each change.
    ///
    /// ```
    /// let pool = crew::Pool::builder().workers(1).build()?;
    /// let task = pool.spawn_with(|ctx| ctx.progress(0.5));
    /// while !task.is_finished() {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(task.progress(), Some(0.5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn progress(&self) -> Option<f32> {
        self.handle.progress().get()
    }

    /// A [`ProgressWatch`] on this task: each change of its
    /// [`progress`](Task::progress), by blocking, as an `Iterator`, or as a
    /// `Stream`, until the task resolves. It does not borrow the handle, so
    /// the task can be joined or awaited meanwhile; make as many as you like.
    pub fn watch_progress(&self) -> ProgressWatch
    where
        T: 'static,
        E: 'static,
    {
        ProgressWatch::new(Arc::clone(&self.handle) as Arc<dyn Watched>)
    }

    /// Cancels the task. Returns true if this call resolved it (as `Cancelled`), false
    /// if it had already resolved.
    ///
    /// A queued task is removed from consideration and its input dropped now. A
    /// running task is asked to stop through
    /// [`Context::is_cancelled`](crate::Context::is_cancelled); threads cannot be
    /// stopped from outside, so it runs until it checks or returns, and its output is
    /// then discarded.
    pub fn cancel(&self) -> bool {
        self.handle.cancel()
    }

    /// Blocks until the task resolves and returns its result.
    ///
    /// Called inside a task, on a task of the same thread pool, it blocks that
    /// worker: crew does not run other tasks while a join waits (rayon's `join`
    /// does). If every worker the pool may have would then be blocked on a task
    /// that has not started (a `workers(1)` pool whose task spawns a task and
    /// joins it), the joined task can never run: it is resolved with
    /// [`TaskError::is_deadlock`] and returned at once, instead of hanging.
    pub fn join(self) -> Result<T, TaskError<E>> {
        use crate::threads::join_watch::{before_join, Verdict};
        let _listed = match before_join(self.handle.core().header()) {
            Verdict::Deadlock => {
                // Refused unless it started (or resolved) meanwhile; then it is
                // running or done, and the wait below ends.
                self.handle.refuse(Failure::Deadlock);
                None
            }
            Verdict::Listed(listed) => Some(listed),
            Verdict::Free => None,
        };
        match self.wait_until(None) {
            Ok(r) => r,
            Err(_) => unreachable!("a wait without a deadline returned early"),
        }
    }

    /// Blocks for at most `timeout`. Gives the handle back if the task has not
    /// resolved by then; the task itself is unaffected.
    pub fn join_timeout(self, timeout: Duration) -> Result<Result<T, TaskError<E>>, Self> {
        self.wait_until(Some(after(Instant::now(), timeout)))
    }

    fn wait_until(mut self, deadline: Option<Instant>) -> Result<Result<T, TaskError<E>>, Self> {
        assert!(!self.done, "crew::Task joined after its result was taken");
        let core = self.handle.core();
        // Results usually arrive within microseconds; a short spin saves the
        // park/unpark pair (two syscalls) on the common path.
        let mut spin = Spin::new(JOIN_SPIN_ROUNDS, JOIN_YIELD_ROUNDS);
        while !core.header().is_resolved() {
            if !spin.next() {
                return self.park_until(deadline);
            }
        }
        Ok(self.take())
    }

    #[cold]
    fn park_until(mut self, deadline: Option<Instant>) -> Result<Result<T, TaskError<E>>, Self> {
        let core = self.handle.core();
        if core.register_thread() {
            while !core.header().is_resolved() {
                match deadline {
                    None => std::thread::park(),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            return Err(self);
                        }
                        std::thread::park_timeout(d - now);
                    }
                }
            }
        }
        Ok(self.take())
    }

    fn take(&mut self) -> Result<T, TaskError<E>> {
        self.done = true;
        // SAFETY: `Task` is the unique handle (it is not Clone), `done` guards against a
        // second take, and every caller checked `is_resolved()` on this thread.
        unsafe { self.handle.core().take_result() }
    }
}

impl<T, E> Future for Task<T, E> {
    type Output = Result<T, TaskError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Self::Output> {
        assert!(!self.done, "crew::Task polled after it completed");
        let core = self.handle.core();
        if core.header().is_resolved() || !core.register_waker(cx.waker()) {
            return Poll::Ready(self.take());
        }
        Poll::Pending
    }
}

// A `Task` holds no pinned state.
impl<T, E> Unpin for Task<T, E> {}

impl<T, E> fmt::Debug for Task<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id())
            .field("worker", &self.worker())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Per-task settings, from `TaskBuilder`; the pool's defaults apply where one
/// is not set. An engine reads them through the methods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskOptions {
    pub(crate) priority: Priority,
    /// Counted from the task's start.
    pub(crate) timeout: Option<Duration>,
    /// Counted from the task's submission: an instant, fixed by `TaskBuilder`.
    pub(crate) deadline: Option<Instant>,
    /// Sticky key (process pools): tasks with the same key go to the same worker.
    pub(crate) key: Option<u64>,
    /// Runs again after its worker process dies, this many times (process pools).
    pub(crate) retries: Option<u32>,
}

impl TaskOptions {
    /// The task's priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The task's own timeout, if set (else the pool's default applies). Its
    /// clock starts when the task starts.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The instant by which the task must have ended, if set, wherever it is
    /// then: still queued, it resolves as timed out without running; running,
    /// it is stopped as a timeout would stop it.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The task's limits as its header keeps them: its own timeout, else
    /// `default_timeout`, and its deadline.
    pub(crate) fn limits(&self, default_timeout: Option<Duration>) -> header::Limits {
        header::Limits::new(self.timeout.or(default_timeout), self.deadline)
    }

    /// The task's sticky key, if set.
    pub fn key(&self) -> Option<u64> {
        self.key
    }

    /// The task's own retry count, if set (else the pool's applies).
    pub fn retries(&self) -> Option<u32> {
        self.retries
    }
}
