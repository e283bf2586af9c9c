//! Constructors for the [`Event`]s an engine emits. `Event`'s variants are
//! `#[non_exhaustive]` (they may gain fields), so a crate outside crew cannot
//! build them with a struct expression; an engine builds them here. The health
//! watcher's events (`Backlog`, `Stats`) are the pool's, not an engine's.

use std::time::Duration;

use crate::error::TaskError;
use crate::events::{Event, ExitReason, TaskOutcome};
use crate::task::header::Outcome;
use crate::task::TaskId;
use crate::worker::WorkerId;

/// `task` started on `worker` after waiting `waited` since it was submitted.
pub fn task_started(task: TaskId, worker: WorkerId, waited: Duration) -> Event {
    Event::TaskStarted {
        task,
        worker,
        waited,
    }
}

/// `task` ran on `worker` and ended with `outcome`.
pub fn task_finished(
    task: TaskId,
    worker: WorkerId,
    outcome: TaskOutcome,
    waited: Duration,
    ran: Duration,
) -> Event {
    Event::TaskFinished {
        task,
        worker,
        outcome,
        waited,
        ran,
    }
}

/// `task` ended without running (cancelled while queued, closed, a start
/// failure).
pub fn task_discarded(task: TaskId, outcome: TaskOutcome) -> Event {
    Event::TaskDiscarded { task, outcome }
}

/// `worker` started: it takes tasks now.
pub fn worker_started(worker: WorkerId) -> Event {
    Event::WorkerStarted { worker }
}

/// `worker` could not start, `consecutive` times in a row; it retries.
pub fn worker_start_failed(worker: WorkerId, message: String, consecutive: u32) -> Event {
    Event::WorkerStartFailed {
        worker,
        message,
        consecutive,
    }
}

/// `worker` rebuilt its state (`stop`, then `start`) after `reason`.
pub fn worker_restarted(worker: WorkerId, reason: String) -> Event {
    Event::WorkerRestarted { worker, reason }
}

/// `worker` is gone, for `reason`.
pub fn worker_exited(worker: WorkerId, reason: ExitReason) -> Event {
    Event::WorkerExited { worker, reason }
}

/// The [`TaskOutcome`] a task that ended with `result` reports.
pub fn outcome_of<T, E>(result: &Result<T, TaskError<E>>) -> TaskOutcome {
    TaskOutcome::from(Outcome::of(result))
}
