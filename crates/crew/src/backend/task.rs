//! Task handles for an engine outside this crate: [`new_task`] makes the
//! [`Task`] the caller holds and the [`Resolver`] the engine keeps.
//!
//! The pair shares one result slot (`task::cell::Core`, the same slot every
//! backend's tasks use), so `join`, `join_timeout`, `.await`, `is_finished` and
//! `worker()` behave exactly as on threads. The first outcome written wins;
//! every later one is ignored, which is what makes "resolved exactly once" easy
//! to keep when a result, a cancel and a worker's death race.

use std::fmt;
use std::sync::Arc;

use crate::error::{Failure, TaskError};
use crate::task::cell::{Core, Handle, Header, Limits, ProgressCore, Watched};
use crate::task::{Priority, Task, TaskId};
use crate::worker::WorkerId;

/// Called once when the caller cancels a task through its handle and the
/// cancel won (the task is already resolved as cancelled): the engine stops
/// the work (drops it from its queue, or kills what runs it).
pub type OnCancel = Arc<dyn Fn(TaskId) + Send + Sync>;

/// A task's result slot, and what to tell its engine on cancel.
struct Slot<T, E> {
    core: Core<T, E>,
    on_cancel: Option<OnCancel>,
}

impl<T: Send, E: Send> Watched for Slot<T, E> {
    fn progress(&self) -> ProgressCore<'_> {
        self.core.progress()
    }
}

impl<T: Send, E: Send> Handle<T, E> for Slot<T, E> {
    fn core(&self) -> &Core<T, E> {
        &self.core
    }

    fn cancel(&self) -> bool {
        let resolved = self.core.fail(Failure::Cancelled);
        if resolved {
            if let Some(on_cancel) = &self.on_cancel {
                on_cancel(self.core.header().id());
            }
        }
        resolved
    }
}

/// A new task `id` of `priority`: the handle for the caller, and the engine's
/// side, which resolves it. `on_cancel` is told when the handle's cancel wins.
pub fn new_task<T, E>(
    id: TaskId,
    priority: Priority,
    on_cancel: Option<OnCancel>,
) -> (Task<T, E>, Resolver<T, E>)
where
    T: Send + 'static,
    E: Send + 'static,
{
    let slot = Arc::new(Slot {
        core: Core::new(Header::new(id, priority, Limits::NONE, false)),
        on_cancel,
    });
    let task = Task::new(Arc::clone(&slot) as Arc<dyn Handle<T, E>>);
    (task, Resolver { slot })
}

/// The engine's side of one task: writes its outcome, once. Clone it freely
/// (a clone is the same task).
pub struct Resolver<T, E> {
    slot: Arc<Slot<T, E>>,
}

impl<T, E> Clone for Resolver<T, E> {
    fn clone(&self) -> Self {
        Resolver {
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T, E> Resolver<T, E> {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.slot.core.header().id()
    }

    /// The task's priority.
    pub fn priority(&self) -> Priority {
        self.slot.core.header().priority
    }

    /// Writes the task's outcome if no other was written first; true if this
    /// one won. Wakes whoever waits on the handle.
    pub fn resolve(&self, outcome: Result<T, TaskError<E>>) -> bool {
        self.slot.core.resolve(outcome)
    }

    /// Resolves with one of crew's failures (closed, timed out, killed,
    /// crashed, …) if nothing was written first; true if this one won.
    pub fn fail(&self, failure: Failure) -> bool {
        self.slot.core.fail(failure)
    }

    /// Records the worker that runs it ([`Task::worker`]).
    pub fn set_worker(&self, worker: WorkerId) {
        self.slot.core.header().set_worker(worker);
    }

    /// Records a progress report from the task's code ([`Task::progress`]):
    /// NaN is ignored, other values are clamped to `0.0..=1.0`, the latest
    /// wins, and nothing changes once the task is resolved. Wakes the task's
    /// progress watchers. An engine that never calls it leaves
    /// `Task::progress` at `None`.
    pub fn set_progress(&self, fraction: f32) {
        self.slot.core.report_progress(fraction);
    }

    /// Whether an outcome has been written (by anyone, a cancel included).
    pub fn is_resolved(&self) -> bool {
        self.slot.core.header().is_resolved()
    }
}

impl<T, E> fmt::Debug for Resolver<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("id", &self.id())
            .field("resolved", &self.is_resolved())
            .finish()
    }
}
