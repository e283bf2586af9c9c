//! `Pool::shutdown_async`: a shutdown an async program can await without
//! blocking its runtime.
//!
//! A pool's shutdown waits for its workers to drain the queue and exit, which
//! means blocking a thread. On a runtime thread that is harmful, and on a tokio
//! current-thread runtime it can deadlock: a draining task that waits on the
//! runtime (a tokio timer inside `spawn_async`) needs that very thread to drive
//! the timer. So the blocking shutdown runs on a helper thread, and the future
//! completes when it has returned; the runtime's thread stays free meanwhile.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context as PollContext, Poll, Waker};

use crate::sync::lock;
use crate::{Pool, Worker};

impl<W: Worker> Pool<W> {
    /// [`shutdown`](Pool::shutdown) as a future, for async programs: takes no
    /// new work at once, and completes when every queued task has run, every
    /// `Worker::stop` has run and the workers have exited. Every task resolves.
    ///
    /// The waiting happens on a helper thread started by this call, so the
    /// shutdown proceeds even if the future is dropped; awaiting it never blocks
    /// the runtime (with tokio's current-thread runtime, a blocking `shutdown`
    /// would stop the runtime from driving the timers that draining tasks may
    /// wait on). Needs no particular runtime. If the OS refuses the helper
    /// thread, this call shuts down blocking, and the future is ready at once.
    ///
    /// Called from inside one of this pool's own tasks, it closes the pool and is
    /// ready at once, as `shutdown` does.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let pool = crew::Pool::builder().workers(2).build().unwrap();
    /// let task = pool.spawn(|| 40 + 2);
    /// pool.shutdown_async().await;
    /// assert!(pool.is_closed());
    /// assert_eq!(task.await.unwrap(), 42);
    /// # });
    /// ```
    pub fn shutdown_async(&self) -> Shutdown {
        let done = Arc::new(Done::default());
        if self.on_own_worker() {
            self.shutdown();
            done.finish();
            return Shutdown { done };
        }
        let (pool, finished) = (self.clone(), Arc::clone(&done));
        let helper = std::thread::Builder::new()
            .name("crew-shutdown".to_owned())
            .spawn(move || {
                pool.shutdown();
                finished.finish();
            });
        if helper.is_err() {
            self.shutdown();
            done.finish();
        }
        Shutdown { done }
    }
}

/// The helper thread's report: set once, when the shutdown has returned.
#[derive(Default)]
struct Done {
    /// Written once by the helper thread (or the caller), read by the future.
    finished: AtomicBool,
    /// The task to wake when it finishes. Written by the future's poll, taken by
    /// `finish`.
    waker: Mutex<Option<Waker>>,
}

impl Done {
    fn finish(&self) {
        self.finished.store(true, SeqCst);
        // Take under the lock, wake outside it: waking runs the runtime's code.
        let waker = lock(&self.waker).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The future from [`Pool::shutdown_async`]: completes when the pool has shut
/// down. Dropping it does not stop the shutdown.
#[must_use = "the shutdown runs anyway; await this to know when it has finished"]
pub struct Shutdown {
    done: Arc<Done>,
}

impl Future for Shutdown {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<()> {
        if self.done.finished.load(SeqCst) {
            return Poll::Ready(());
        }
        *lock(&self.done.waker) = Some(cx.waker().clone());
        // Look again after registering: `finish` may have run in between, and
        // it sets the flag before it takes the waker.
        if self.done.finished.load(SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("finished", &self.done.finished.load(SeqCst))
            .finish()
    }
}
