//! The tokio runtime a thread pool's workers enter (feature `tokio`).
//!
//! An async task (`Pool::spawn_async`) runs on crew's own per-worker executor,
//! not on a tokio runtime, so tokio's timers and I/O, which look for the runtime
//! in a thread-local, would panic there ("there is no reactor running"). With the
//! feature on, a pool built inside a tokio runtime captures its handle
//! (`Handle::try_current`), or takes one from [`PoolBuilder::tokio_handle`], and
//! each worker thread enters it for its whole life: tokio's resources then
//! register with that runtime's drivers, which run on the runtime's threads and
//! wake crew's executor like any other waker.
//!
//! The runtime must keep running while such tasks wait on it: a current-thread
//! runtime whose only thread blocks (in `Pool::shutdown`, `Task::join`) drives no
//! timer, so await the task, or use
//! [`Pool::shutdown_async`](crate::Pool::shutdown_async). A pool that outlives
//! its runtime keeps the handle, but tokio refuses new timers and I/O on a
//! runtime that has shut down: such a task panics and resolves as panicked.
//! Process workers run in other processes and never see the runtime.

#[cfg(feature = "tokio")]
use crate::{PoolBuilder, Worker};

/// The runtime handle a pool's worker threads enter, if any. Set at build time,
/// read by each worker thread when it starts.
#[derive(Clone, Default)]
pub(crate) struct Runtime {
    #[cfg(feature = "tokio")]
    handle: Option<tokio::runtime::Handle>,
}

/// Keeps the runtime entered on a worker thread until dropped.
#[cfg(feature = "tokio")]
pub(crate) type Entered<'a> = Option<tokio::runtime::EnterGuard<'a>>;
/// Without the feature there is nothing to enter.
#[cfg(not(feature = "tokio"))]
pub(crate) type Entered<'a> = std::marker::PhantomData<&'a ()>;

impl Runtime {
    /// The handle given to the builder, else the runtime the pool is built in.
    #[cfg(feature = "tokio")]
    pub(crate) fn resolve(explicit: Option<tokio::runtime::Handle>) -> Self {
        Runtime {
            handle: explicit.or_else(|| tokio::runtime::Handle::try_current().ok()),
        }
    }

    /// Without the feature: no runtime.
    #[cfg(not(feature = "tokio"))]
    pub(crate) fn resolve(_explicit: Option<std::convert::Infallible>) -> Self {
        Runtime {}
    }

    /// Enters the runtime on the calling thread (a worker, at its start).
    #[cfg(feature = "tokio")]
    pub(crate) fn enter(&self) -> Entered<'_> {
        self.handle.as_ref().map(tokio::runtime::Handle::enter)
    }

    /// Without the feature: nothing to enter.
    #[cfg(not(feature = "tokio"))]
    pub(crate) fn enter(&self) -> Entered<'_> {
        std::marker::PhantomData
    }

    /// Whether a runtime was captured or given.
    pub(crate) fn is_set(&self) -> bool {
        #[cfg(feature = "tokio")]
        return self.handle.is_some();
        #[cfg(not(feature = "tokio"))]
        false
    }
}

#[cfg(feature = "tokio")]
impl<W: Worker> PoolBuilder<W> {
    /// The tokio runtime whose context each worker thread enters (feature
    /// `tokio`), so that tokio's timers and I/O work inside
    /// [`spawn_async`](crate::Pool::spawn_async) and async workers.
    ///
    /// Without this setting, a pool built inside a tokio runtime uses that one
    /// (`Handle::try_current`); a pool built outside any runtime enters none.
    /// Process pools ignore it: their workers are other processes.
    ///
    /// ```
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let pool = crew::Pool::builder()
    ///     .workers(1)
    ///     .tokio_handle(runtime.handle().clone())
    ///     .build()
    ///     .unwrap();
    /// let task = pool.spawn_async(async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///     "slept"
    /// });
    /// assert_eq!(task.join().unwrap(), "slept");
    /// ```
    #[must_use]
    pub fn tokio_handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.tokio = Some(handle);
        self
    }
}
