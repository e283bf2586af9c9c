//! Watching one task's progress: [`ProgressWatch`], from
//! [`Task::watch_progress`](super::Task::watch_progress). The value lives in
//! the task's header (`header.rs`, `Header::progress`); a watcher that waits
//! registers in the cell's side slot and is woken by the next change or by
//! the resolution (`cell.md`, "Progress").

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::task::{Context as PollContext, Poll, Waker};
use std::time::{Duration, Instant};

use super::cell::Watched;
use super::header::NO_PROGRESS;
use crate::sync::{after, Arc};

/// Each watcher's own id: its entry in the cell's list of waiting watchers.
static NEXT_WATCHER: AtomicU64 = AtomicU64::new(1);

/// Follows one task's progress, as its code reports it with
/// [`Context::progress`](crate::Context::progress): from
/// [`Task::watch_progress`](super::Task::watch_progress).
///
/// It yields each change it sees, then ends once the task has resolved and
/// its last value was yielded. Changes are coalesced, never queued: a task
/// that reports faster than the watcher reads is seen at its latest value,
/// and the values in between are skipped (so memory does not grow, whatever
/// the task reports). A report of the value already seen is not a change.
///
/// Read it by blocking ([`recv`](ProgressWatch::recv),
/// [`recv_timeout`](ProgressWatch::recv_timeout), or as an `Iterator`),
/// without waiting ([`try_recv`](ProgressWatch::try_recv),
/// [`latest`](ProgressWatch::latest)), or as a `futures` `Stream` (any
/// runtime, tokio's included). It owns a reference to the task's cell, so it
/// works beside the [`Task`](super::Task) handle: join or `.await` the task on
/// one side while a thread or a `select!` arm follows its progress.
///
/// ```
/// use std::sync::mpsc;
///
/// let pool = crew::Pool::builder().workers(1).build()?;
/// let (go, gate) = mpsc::channel::<()>();
/// let task = pool.spawn_with(move |ctx| {
///     for step in 1..=4 {
///         gate.recv().unwrap(); // a quarter of the work
///         ctx.progress(step as f32 / 4.0);
///     }
///     "done"
/// });
/// let mut progress = task.watch_progress();
/// for _ in 0..4 {
///     go.send(()).unwrap();
///     // Each report is seen here: the task waits for the next `send`.
///     println!("{:.0}%", progress.recv().unwrap() * 100.0);
/// }
/// assert_eq!(task.join()?, "done");
/// assert_eq!(progress.recv(), None); // resolved, last value seen
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A progress bar is a loop away: with the feature `indicatif`,
/// `for p in task.watch_progress() { bar.set_position((p * 100.0) as u64) }`
/// on a thread of its own, for a `ProgressBar::new(100)`.
///
/// In async code, with `futures::StreamExt` in scope (name the trait, as
/// `ProgressWatch` is also an `Iterator`):
///
/// ```
/// # let pool = crew::Pool::builder().workers(1).build()?;
/// # futures::executor::block_on(async {
/// use futures::StreamExt;
///
/// let task = pool.spawn_with(|ctx| ctx.progress(1.0));
/// let progress = task.watch_progress();
/// let seen: Vec<f32> = StreamExt::collect(progress).await;
/// assert_eq!(seen.last(), Some(&1.0));
/// task.await.unwrap();
/// # });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a ProgressWatch does nothing unless read"]
pub struct ProgressWatch {
    task: Arc<dyn Watched>,
    id: u64,
    /// The bits of the value last yielded (`NO_PROGRESS`: none yet).
    seen: u32,
    /// The end was yielded: the task resolved and its last value was seen.
    ended: bool,
}

impl ProgressWatch {
    pub(crate) fn new(task: Arc<dyn Watched>) -> Self {
        ProgressWatch {
            task,
            id: NEXT_WATCHER.fetch_add(1, Relaxed),
            seen: NO_PROGRESS,
            ended: false,
        }
    }

    /// The latest progress reported, whether yielded yet or not; `None`
    /// before the first report. A finished task keeps its last value.
    pub fn latest(&self) -> Option<f32> {
        self.task.progress().get()
    }

    /// The next change, blocking until there is one. `None` once the task has
    /// resolved and its last value was yielded. Like
    /// [`Task::join`](super::Task::join), it waits as long as the task runs.
    pub fn recv(&mut self) -> Option<f32> {
        self.wait(None).ok()
    }

    /// Like [`recv`](ProgressWatch::recv), for at most `timeout`:
    /// `Disconnected` once the task has resolved and its last value was
    /// yielded.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<f32, RecvTimeoutError> {
        match self.wait(Some(after(Instant::now(), timeout))) {
            Ok(v) => Ok(v),
            Err(true) => Err(RecvTimeoutError::Disconnected),
            Err(false) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// The next change if there is one now: `Empty` if not, `Disconnected`
    /// once the task has resolved and its last value was yielded.
    pub fn try_recv(&mut self) -> Result<f32, TryRecvError> {
        match self.check() {
            Some(Some(v)) => Ok(v),
            Some(None) => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// What there is to yield now: a change, the end (`Some(None)`), or
    /// nothing yet (`None`).
    fn check(&mut self) -> Option<Option<f32>> {
        if self.ended {
            return Some(None);
        }
        let core = self.task.progress();
        // Resolution first: a task's own reports happen before it resolves,
        // so once it has, the value read next is its last one.
        let resolved = core.is_resolved();
        let raw = core.raw();
        if raw != self.seen {
            // Never back to `NO_PROGRESS` once set, so `raw` is a report.
            self.seen = raw;
            return Some(Some(f32::from_bits(raw)));
        }
        if resolved {
            self.ended = true;
            return Some(None);
        }
        None
    }

    /// Registers `waker` (or this thread); false if something changed
    /// meanwhile and the caller must check again instead of sleeping.
    fn register(&self, waker: Option<&Waker>) -> bool {
        self.task.progress().register(self.id, waker, self.seen)
    }

    /// `Err(true)`: the end; `Err(false)`: the deadline passed.
    fn wait(&mut self, deadline: Option<Instant>) -> Result<f32, bool> {
        loop {
            match self.check() {
                Some(Some(v)) => return Ok(v),
                Some(None) => return Err(true),
                None => {}
            }
            if !self.register(None) {
                continue;
            }
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(false);
                    }
                    std::thread::park_timeout(d - now);
                }
            }
        }
    }
}

impl Iterator for ProgressWatch {
    type Item = f32;

    /// Blocks like [`ProgressWatch::recv`]; ends with the task.
    fn next(&mut self) -> Option<f32> {
        self.recv()
    }
}

/// The same changes as [`ProgressWatch::recv`], without blocking a thread;
/// ends once the task has resolved and its last value was yielded. Needs no
/// particular runtime.
impl futures_core::Stream for ProgressWatch {
    type Item = f32;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Option<f32>> {
        loop {
            match self.check() {
                Some(v) => return Poll::Ready(v),
                None if self.register(Some(cx.waker())) => return Poll::Pending,
                None => {}
            }
        }
    }
}

impl Drop for ProgressWatch {
    fn drop(&mut self) {
        self.task.progress().unregister(self.id);
    }
}

impl fmt::Debug for ProgressWatch {
    /// Takes no lock.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgressWatch")
            .field("latest", &self.latest())
            .field("ended", &self.ended)
            .finish()
    }
}
