//! Async worker code: the [`AsyncWorker`] trait, and [`Async`], the adapter that
//! makes one a [`Worker`] so that `Pool<Async<A>>` is an ordinary pool.
//!
//! On the thread backend each worker thread polls its tasks' futures itself (see
//! `threads/executor.rs`), up to [`concurrency`](crate::PoolBuilder::concurrency)
//! of them at once; `Async`'s override of `Worker::__execute` is what hands the
//! worker loop a future instead of a finished result. Everywhere else (a task run
//! on the caller under [`WhenFull::CallerRuns`](crate::WhenFull::CallerRuns), a
//! process worker) the adapter's `Worker::run` blocks on the future, one task at
//! a time.

use std::fmt;
use std::future::Future;
use std::rc::Rc;

use crate::error::StartError;
use crate::worker::{Context, Execution, Worker};

/// A worker entrypoint whose tasks are futures, several of them in flight on one
/// worker at once.
///
/// The counterpart of [`Worker`] for code that waits (on a socket, a channel, a
/// timer, another task): while one task waits, its worker runs another. Use it
/// through the [`Async`] adapter, with
/// [`concurrency`](crate::PoolBuilder::concurrency) saying how many tasks each
/// worker may have in flight:
///
/// ```
/// use crew::{Async, AsyncWorker, Context, Pool, StartError};
/// use std::cell::Cell;
///
/// struct Lookup {
///     served: Cell<u64>,
/// }
///
/// impl AsyncWorker for Lookup {
///     type Input = u64;
///     type Output = u64;
///     type Error = std::convert::Infallible;
///     type Message = ();
///
///     fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
///         Ok(Lookup { served: Cell::new(0) })
///     }
///
///     async fn run(&self, key: u64, _ctx: &mut Context<'_>) -> Result<u64, Self::Error> {
///         self.served.set(self.served.get() + 1);
///         Ok(key * 10) // a real worker would `.await` something here
///     }
/// }
///
/// let pool = Pool::<Async<Lookup>>::builder().workers(2).concurrency(8).build()?;
/// assert_eq!(pool.submit(4)?.join()?, 40);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// **Why `run` takes `&self`, not `&mut self`:** several of one worker's tasks are
/// in flight at once, each holding its borrow of the state across its `.await`s,
/// so none of them can have it exclusively. State that tasks change goes in a
/// `Cell` or `RefCell` (the instance never leaves its thread, so `Self` need not be
/// `Send` or `Sync`, and neither need the futures `run` returns). Do not hold a
/// `RefCell` borrow across an `.await`: another task of the same worker may ask
/// for it meanwhile.
///
/// **Lifecycle**, as for [`Worker`]: `start` builds the instance on the worker's
/// thread (synchronously, before the worker takes tasks), `stop` tears it down once
/// no task of it is in flight. After a task panics, the worker takes no new task
/// until its other tasks have ended, then rebuilds the instance.
///
/// **A task must not block its thread.** The worker's tasks take turns on one
/// thread, switching only at `.await`s: a task that blocks (a blocking read,
/// `std::thread::sleep`, a long computation, `Task::join`) stalls every other task
/// of that worker until it returns, and the worker takes no new task meanwhile.
/// The symptom is tasks of one worker that make no progress while one of them
/// blocks; timeouts still resolve their handles, and a task stuck for longer than
/// `abandon_grace` after its timeout gets the whole worker replaced. Put blocking
/// work on a synchronous pool (or `spawn_blocking` in your runtime) and await its
/// [`Task`](crate::Task).
pub trait AsyncWorker: Sized + 'static {
    /// What one task receives.
    type Input: Send + 'static;
    /// What one task produces.
    type Output: Send + 'static;
    /// The worker's own error; it reaches the caller inside
    /// [`TaskError`](crate::TaskError), unflattened.
    type Error: Send + 'static;
    /// What the pool and this worker say to each other outside tasks, as for
    /// [`Worker::Message`] (`()` for a worker that needs no messages).
    type Message: Clone + Send + 'static;

    /// Builds this worker's state. Runs on the worker's thread.
    fn start(ctx: &mut Context<'_>) -> Result<Self, StartError>;

    /// Handles one task. `ctx` lives as long as the future: it can be kept across
    /// `.await`s. A cancelled, timed-out or killed task's future is dropped at its
    /// next poll; [`Context::is_cancelled`] reports it to code between two polls.
    fn run(
        &self,
        input: Self::Input,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>>;

    /// Tears down the worker's state, once none of its tasks is in flight. The
    /// default does nothing (the value is then dropped).
    fn stop(&self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// Receives a message from the pool ([`Pool::broadcast`](crate::Pool::broadcast),
    /// [`Pool::send_to`](crate::Pool::send_to)). The default ignores it.
    ///
    /// It runs on the worker's thread between two polls, never inside one, so
    /// while this worker's other tasks wait at an `.await`: hence `&self`, as in
    /// `run` (change state through a `Cell` or `RefCell`, and expect a task to
    /// see the change at its next `.await`). Messages arrive in the order the
    /// pool sent them; a sticky one reaches every new or rebuilt state right
    /// after its `start`. A panic here rebuilds the state, once no task of it is
    /// in flight, as a panicking task does.
    fn on_message(&self, message: Self::Message, ctx: &mut Context<'_>) {
        let _ = (message, ctx);
    }
}

/// Runs an [`AsyncWorker`] in a pool: `Pool::<Async<MyWorker>>::builder()`.
///
/// The pool's `submit`, `map`, timeouts, events and stats work as for any
/// [`Worker`]. The state is shared by the worker's tasks in flight (hence the
/// `Rc` inside); see [`AsyncWorker`].
pub struct Async<A> {
    state: Rc<A>,
}

impl<A> Async<A> {
    /// The worker's state.
    pub fn get(&self) -> &A {
        &self.state
    }
}

impl<A: AsyncWorker> Worker for Async<A> {
    type Input = A::Input;
    type Output = A::Output;
    type Error = A::Error;
    type Message = A::Message;

    fn start(ctx: &mut Context<'_>) -> Result<Self, StartError> {
        A::start(ctx).map(|state| Async {
            state: Rc::new(state),
        })
    }

    /// Runs one task to its end on the calling thread (`futures`' `block_on`):
    /// used where no executor polls this worker's futures (a task run on the
    /// submitting thread, a process worker).
    fn run(&mut self, input: A::Input, ctx: &mut Context<'_>) -> Result<A::Output, A::Error> {
        futures_executor::block_on(self.state.run(input, ctx))
    }

    fn stop(&mut self, ctx: &mut Context<'_>) {
        self.state.stop(ctx);
    }

    /// Hands the message to [`AsyncWorker::on_message`], which gets the state by
    /// shared reference: the futures in flight hold shares of it (`Rc`), so the
    /// worker loop may deliver mail between polls without anything borrowing
    /// the state exclusively.
    fn on_message(&mut self, message: A::Message, ctx: &mut Context<'_>) {
        self.state.on_message(message, ctx);
    }

    /// Hands the task's future to the worker's executor. The future owns what it
    /// uses: a share of the state and a context that keeps the task's record.
    fn __execute(
        &mut self,
        input: A::Input,
        ctx: &mut Context<'_>,
    ) -> Execution<A::Output, A::Error> {
        let state = Rc::clone(&self.state);
        let mut ctx = ctx.to_owned();
        Execution::pending(Box::pin(async move { state.run(input, &mut ctx).await }))
    }
}

impl<A> fmt::Debug for Async<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Async")
            .field("worker", &std::any::type_name::<A>())
            .finish_non_exhaustive()
    }
}
