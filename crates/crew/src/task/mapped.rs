//! A `Task` whose result is another task's, passed through a conversion: how a
//! typed RPC client hands out `Task<i64>` for a worker whose output is a reply
//! enum (see `rpc.rs`).
//!
//! The mapped task has its own [`Core`] (result slot and waiter) and keeps the
//! source task's handle. It registers a waker on the source, so the thread that
//! resolves the source (a worker, a canceller, a process pool's link thread) also
//! converts the result and resolves the mapped task, at once. Nothing polls and no
//! thread is added.
//!
//! - **Exactly once**: the source resolves once and wakes its single waiter once;
//!   `taken` makes sure that even a spurious wake takes the source's result at most
//!   once, and only after it has resolved.
//! - **Cancel** cancels the source. If that resolves it, the source's resolver
//!   wakes this task's waker before `cancel` returns, so the mapped task is already
//!   resolved (as cancelled) when `cancel()` returns true.
//! - **Memory**: until the source resolves, its waiter slot holds the waker, which
//!   holds the mapped cell, which holds the source: a cycle that the source's
//!   resolution breaks (the waiter is taken out to be woken). Every task resolves
//!   (crew's first invariant), so the cycle never outlives its task.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::AcqRel;
use std::task::{Wake, Waker};

use super::cell::{Core, Handle, Header, Limits, ProgressCore, Watched};
use super::{Priority, Task};
use crate::error::{Failure, Panic, TaskError};
use crate::sync::{Arc, AtomicBool};
use crate::worker::WorkerId;

/// The mapped task's cell: its own result slot, the source, and the conversion.
struct Mapped<R, F, T, E, M> {
    core: Core<T, E>,
    source: Arc<dyn Handle<R, F>>,
    /// Set by the one wake that takes the source's result.
    taken: AtomicBool,
    convert: M,
}

/// Returns a task that resolves to `convert(result of task)`, with the same id
/// and worker. `convert` runs on the thread that resolves `task`, so it must be
/// short and must not block; a panic in it resolves the new task as panicked.
pub(crate) fn map_result<R, F, T, E, M>(task: Task<R, F>, convert: M) -> Task<T, E>
where
    R: Send + 'static,
    F: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    M: Fn(Result<R, TaskError<F>>) -> Result<T, TaskError<E>> + Send + Sync + 'static,
{
    assert!(!task.done, "crew::Task mapped after its result was taken");
    let source = task.handle;
    let header = Header::with_queued_at(
        source.core().header().id(),
        Priority::Normal,
        Limits::NONE,
        false,
        None,
    );
    let mapped = Arc::new(Mapped {
        core: Core::new(header),
        source,
        taken: AtomicBool::new(false),
        convert,
    });
    let waker = Waker::from(Arc::clone(&mapped));
    if !mapped.source.core().register_waker(&waker) {
        // Already resolved: nothing will wake us, so convert now.
        mapped.complete();
    }
    Task::new(mapped)
}

impl<R, F, T, E, M> Mapped<R, F, T, E, M>
where
    M: Fn(Result<R, TaskError<F>>) -> Result<T, TaskError<E>>,
{
    /// Takes the source's result, if it has resolved and no one took it yet, and
    /// resolves this task with its conversion.
    fn complete(&self) {
        let header = self.source.core().header();
        if !header.is_resolved() || self.taken.swap(true, AcqRel) {
            return;
        }
        // SAFETY: this cell owns the source's unique handle (`map_result` consumed
        // the `Task`), `taken` lets exactly one call through, and that call saw
        // `is_resolved()` just above on this thread.
        let result = unsafe { self.source.core().take_result() };
        let converted =
            catch_unwind(AssertUnwindSafe(|| (self.convert)(result))).unwrap_or_else(|panic| {
                Err(TaskError::failure(Failure::Panicked(Panic::caught(panic))))
            });
        self.core.resolve(converted);
    }
}

impl<R, F, T, E, M> Wake for Mapped<R, F, T, E, M>
where
    R: Send + 'static,
    F: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    M: Fn(Result<R, TaskError<F>>) -> Result<T, TaskError<E>> + Send + Sync + 'static,
{
    fn wake(self: Arc<Self>) {
        self.complete();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.complete();
    }
}

/// The source's progress: the mapped task is the same work.
impl<R, F, T, E, M> Watched for Mapped<R, F, T, E, M>
where
    R: Send + 'static,
    F: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    M: Fn(Result<R, TaskError<F>>) -> Result<T, TaskError<E>> + Send + Sync + 'static,
{
    fn progress(&self) -> ProgressCore<'_> {
        self.source.progress()
    }
}

impl<R, F, T, E, M> Handle<T, E> for Mapped<R, F, T, E, M>
where
    R: Send + 'static,
    F: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    M: Fn(Result<R, TaskError<F>>) -> Result<T, TaskError<E>> + Send + Sync + 'static,
{
    fn core(&self) -> &Core<T, E> {
        &self.core
    }

    /// The source's worker, so that a running call already names it.
    fn worker(&self) -> Option<WorkerId> {
        self.source.worker()
    }

    fn cancel(&self) -> bool {
        // Resolving the source wakes `complete` on this thread before `cancel`
        // returns (see the module docs).
        self.source.cancel()
    }
}

#[cfg(all(test, not(crew_loom)))]
mod tests {
    use std::convert::Infallible;

    use crate::{Context, Pool, StartError, Worker};

    struct Echo;

    impl Worker for Echo {
        type Input = u64;
        type Output = u64;
        type Error = String;
        type Message = ();

        fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
            Ok(Echo)
        }

        fn run(&mut self, n: u64, ctx: &mut Context<'_>) -> Result<u64, String> {
            match n {
                0 => Err("zero".to_owned()),
                1 => panic!("one"),
                2 => {
                    while !ctx.is_cancelled() {
                        std::thread::yield_now();
                    }
                    Ok(2)
                }
                n => Ok(n),
            }
        }
    }

    fn double(r: Result<u64, crate::TaskError<String>>) -> Result<u64, crate::TaskError<usize>> {
        r.map(|n| n * 2).map_err(|e| e.map_user(|s| s.len()))
    }

    #[test]
    fn a_mapped_task_converts_outputs_errors_and_failures() {
        let pool = Pool::<Echo>::builder().workers(1).build().unwrap();
        let task = pool.submit(21).unwrap();
        let id = task.id();
        let mapped = super::map_result(task, double);
        assert_eq!(mapped.id(), id);
        assert_eq!(mapped.join().unwrap(), 42);

        let failed = super::map_result(pool.submit(0).unwrap(), double).join();
        assert_eq!(failed.unwrap_err().user_error(), Some(&4));

        let panicked = super::map_result(pool.submit(1).unwrap(), double).join();
        assert_eq!(panicked.unwrap_err().panic_message(), Some("one"));
        pool.shutdown();
    }

    #[test]
    fn cancelling_a_mapped_task_cancels_its_source_and_resolves_at_once() {
        let pool = Pool::<Echo>::builder().workers(1).build().unwrap();
        let mapped = super::map_result(pool.submit(2).unwrap(), double);
        assert!(mapped.cancel());
        assert!(mapped.is_finished());
        assert!(mapped.join().unwrap_err().is_cancelled());
        pool.shutdown();
    }

    #[test]
    fn mapping_an_already_resolved_task_resolves_at_once() {
        let pool = Pool::<Echo>::builder().workers(1).build().unwrap();
        let task = pool.submit(5).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !task.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the task never resolved"
            );
            std::thread::yield_now();
        }
        let mapped = super::map_result(task, |r| {
            r.map_err(|e| e.map_user(|_| -> Infallible { unreachable!() }))
        });
        assert!(mapped.is_finished());
        assert!(mapped.worker().is_some());
        assert_eq!(mapped.join().unwrap(), 5);
        pool.shutdown();
    }
}
