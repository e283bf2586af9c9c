//! Scoped tasks: `Pool::scope`, whose tasks may borrow from the caller's stack.
//!
//! # How it is sound
//!
//! A pool's queue holds `'static` jobs, so a scoped closure (which may borrow
//! anything that outlives `'scope`) has its lifetime erased before it is
//! submitted, as `std::thread::scope` and rayon's `scope` do. What makes the
//! erasure sound is that `Pool::scope` does not return, and does not unwind,
//! before every erased closure is *gone*: run to its end, or dropped unrun (a
//! cancel while queued, a pool shutting down). The handle resolving is not
//! enough: a cancel, a timeout or a `kill_worker` resolves a running task's
//! handle at once while its closure runs on, so the scope counts closures, not
//! handles.
//!
//! - Each closure travels inside a [`ScopedCall`], which holds one count of its
//!   scope's [`State::pending`]. Its `Drop` first drops the closure (if it did not
//!   run), then gives the count back; `ScopedCall::run` runs the closure, which
//!   consumes it, and gives the count back after. So a zero count means no erased
//!   closure, nor anything it captured, exists any more.
//! - `Pool::scope` runs the body under `catch_unwind`, then waits for the count
//!   to reach zero, and only then returns or resumes the body's panic. Nothing
//!   the body borrowed can go away meanwhile: the caller's frame is still there.
//! - A task's output is `'static` (the `Task` handle outlives nothing it points
//!   into), so only the closure's lifetime is erased, never the output's.
//!
//! # Panics
//!
//! A scoped task that panics resolves its handle as panicked (with the message),
//! and its payload is kept by the scope; once every task is done, `scope`
//! resumes the first such panic on the caller's thread (as rayon's `scope`
//! does, and whether or not its handle was joined). A panic of the body itself
//! wins over the tasks'.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::panic_message;
use crate::sync::lock;
use crate::task::cell::Plain;
use crate::{Closures, Pool, Task};

/// What a scope's tasks share with the scope's caller.
#[derive(Default)]
struct State {
    /// Closures of this scope that still exist (queued, running, or being
    /// dropped). Raised by `Scope::spawn` before it submits, lowered by each
    /// `ScopedCall` once its closure is gone; the scope's caller waits for 0.
    pending: Mutex<usize>,
    /// Signalled when `pending` reaches 0.
    done: Condvar,
    /// The first panic of a scoped task, resumed by `Pool::scope` at the end.
    /// Written by the task that panicked, taken by the scope's caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl State {
    fn add(&self) {
        *lock(&self.pending) += 1;
    }

    fn complete(&self) {
        let mut pending = lock(&self.pending);
        *pending -= 1;
        if *pending == 0 {
            self.done.notify_all();
        }
    }

    fn wait(&self) {
        let mut pending = lock(&self.pending);
        while *pending > 0 {
            pending = self
                .done
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// A scoped closure with its lifetime erased, and its scope's count.
struct ScopedCall<T> {
    /// `None` once it has run.
    f: Option<Box<dyn FnOnce() -> T + Send + 'static>>,
    state: Arc<State>,
}

impl<T> ScopedCall<T> {
    fn run(mut self) -> T {
        let f = self.f.take().expect("a scoped call runs once");
        match catch_unwind(AssertUnwindSafe(f)) {
            // `self` drops here: the closure is gone, so the count goes back.
            Ok(output) => output,
            Err(payload) => {
                // The scope keeps the payload; the task's handle gets the message.
                let message = panic_message(&*payload);
                {
                    let mut first = lock(&self.state.panic);
                    if first.is_none() {
                        *first = Some(payload);
                    }
                }
                drop(self);
                resume_unwind(Box::new(message))
            }
        }
    }
}

impl<T> Drop for ScopedCall<T> {
    fn drop(&mut self) {
        // The closure first (it may borrow from the scope's caller), the count
        // after: once the count is 0, nothing of it may be left.
        if let Some(f) = self.f.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
        }
        self.state.complete();
    }
}

/// The handle a [`Pool::scope`] body gets: spawns tasks that may borrow
/// anything that outlives the scope.
pub struct Scope<'scope, 'env: 'scope> {
    pool: Pool,
    state: Arc<State>,
    /// Opened inside one of the pool's own tasks: its tasks run on the thread
    /// that spawns them (see `Pool::scope`, "Inside a task"). Fixed.
    inline: bool,
    /// Invariant in `'scope`, as `std::thread::Scope`: the scope's lifetime can
    /// be neither shortened nor stretched by a caller.
    scope: PhantomData<&'scope mut &'scope ()>,
    /// Invariant in `'env`: what the tasks may borrow.
    env: PhantomData<&'env mut &'env ()>,
}

impl<'scope> Scope<'scope, '_> {
    /// Runs `f` on the pool and returns its [`Task`], as
    /// [`Pool::spawn`] does; `f` may borrow from the caller of
    /// [`Pool::scope`]. The scope waits for it before returning, whether or not
    /// the handle is joined. Tasks may spawn more tasks into the same scope.
    pub fn spawn<F, T>(&'scope self, f: F) -> Task<T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'static,
    {
        let boxed: Box<dyn FnOnce() -> T + Send + 'scope> = Box::new(f);
        // SAFETY: only the closure's lifetime changes. `Pool::scope` does not
        // return or unwind until `state.pending` is 0 (`State::wait` after the
        // body), and the count taken here is given back only by the
        // `ScopedCall`'s `run` or `Drop`, after the closure and its captures are
        // gone (see the module docs). So the closure never outlives `'scope`.
        let erased: Box<dyn FnOnce() -> T + Send + 'static> = unsafe {
            std::mem::transmute::<
                Box<dyn FnOnce() -> T + Send + 'scope>,
                Box<dyn FnOnce() -> T + Send + 'static>,
            >(boxed)
        };
        self.state.add();
        let call = ScopedCall {
            f: Some(erased),
            state: Arc::clone(&self.state),
        };
        if self.inline {
            // Run here, as `WhenFull::CallerRuns` runs a task: counted, with
            // events, the handle resolved when this returns.
            let options = crate::task::TaskOptions::default();
            return self
                .pool
                .shared()
                .run_on_caller(Plain(move || call.run()), options);
        }
        // A closed pool drops the call unrun, which gives the count back.
        self.pool.spawn(move || call.run())
    }
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("pending", &*lock(&self.state.pending))
            .finish_non_exhaustive()
    }
}

impl Pool<Closures> {
    /// Runs `f` with a [`Scope`] whose tasks may borrow from the caller's stack
    /// (locals, `&mut` slices), as `std::thread::scope` does for threads.
    /// Returns `f`'s result once every task spawned in the scope has finished,
    /// joined or not; tasks may spawn more tasks into the scope.
    ///
    /// **Panics:** if a scoped task panicked, its handle resolves as panicked
    /// and, once all tasks are done, `scope` resumes the first such panic here,
    /// with its payload. A panic in `f` is resumed the same way, after the
    /// tasks are done.
    ///
    /// **Inside a task** of this same pool, the worker that would wait for the
    /// scope's tasks may be the only one that could run them (`workers(1)`), so
    /// such a scope runs each of its tasks on the thread that spawns it, at
    /// once, as [`WhenFull::CallerRuns`](crate::WhenFull::CallerRuns) does: no
    /// parallelism, and no deadlock. Open scopes from outside the pool to spread
    /// their tasks over its workers.
    ///
    /// **Thread pools only**, by type: `scope` exists on `Pool<Closures>`, and a
    /// closure pool cannot be a process pool. A process worker lives in another
    /// address space: a borrow of the caller's stack means nothing there, and
    /// only serialized values cross the boundary. A pool of a `Worker` type has
    /// no `scope`:
    ///
    /// ```compile_fail
    /// use crew::{Context, Pool, StartError, Worker};
    /// struct Echo;
    /// impl Worker for Echo {
    ///     type Input = u32; type Output = u32; type Error = String; type Message = ();
    ///     fn start(_: &mut Context<'_>) -> Result<Self, StartError> { Ok(Echo) }
    ///     fn run(&mut self, n: u32, _: &mut Context<'_>) -> Result<u32, String> { Ok(n) }
    /// }
    /// let pool = Pool::<Echo>::builder().processes(1).build().unwrap();
    /// pool.scope(|_| ()); // no method `scope` on `Pool<Echo>`
    /// ```
    ///
    /// ```
    /// let pool = crew::Pool::builder().workers(2).build().unwrap();
    /// let mut counts = vec![0u32; 4];
    /// let words = ["a", "bb", "ccc", "dddd"];
    /// pool.scope(|s| {
    ///     for (count, word) in counts.iter_mut().zip(&words) {
    ///         s.spawn(move || *count = word.len() as u32);
    ///     }
    /// });
    /// assert_eq!(counts, [1, 2, 3, 4]);
    /// ```
    ///
    /// A borrowed value must outlive the scope:
    ///
    /// ```compile_fail
    /// let pool = crew::Pool::builder().workers(1).build().unwrap();
    /// let leaked = pool.scope(|s| {
    ///     let local = vec![1, 2, 3];
    ///     s.spawn(|| local.len()) // `local` dies before the scope ends
    /// });
    /// ```
    pub fn scope<'env, F, R>(&self, f: F) -> R
    where
        F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> R,
    {
        let scope = Scope {
            pool: self.clone(),
            state: Arc::new(State::default()),
            inline: self.on_own_worker(),
            scope: PhantomData,
            env: PhantomData,
        };
        let result = catch_unwind(AssertUnwindSafe(|| f(&scope)));
        // Every erased closure must be gone before this frame may end.
        scope.state.wait();
        let task_panic = lock(&scope.state.panic).take();
        match (result, task_panic) {
            (Err(body), _) => resume_unwind(body),
            (Ok(_), Some(payload)) => resume_unwind(payload),
            (Ok(value), None) => value,
        }
    }
}
