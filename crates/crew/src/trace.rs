//! Optional [`tracing`](https://docs.rs/tracing) instrumentation (cargo feature
//! `tracing`, off by default).
//!
//! With the feature on, a subscriber sees, all under the target `crew`:
//!
//! - a `crew.worker` span (field `worker`) around each worker thread's whole
//!   life, with a `worker started` event when its `Worker::start` succeeds and a
//!   `worker exited` event (field `reason`) when the pool stops counting it;
//! - a `task queued` event (field `task`) when a task is accepted;
//! - a `crew.task` span (fields `task`, `worker`, `waited_ns`) entered while the
//!   task's code runs on a thread (an async task's future: at each poll), so
//!   whatever the task logs nests under it, and
//!   a `task finished` event (fields `outcome`, `ran_ns`) inside that span once
//!   it is counted.
//!
//! A process pool's task code runs in another process: its pool reports the
//! same events (`task started`, `task finished`, `worker started`, `worker
//! exited`) as the worker's answers arrive, without a span around the run.
//!
//! With the feature off, every function here is an empty `#[inline(always)]`
//! body and [`TaskSpan`] is a zero-sized type, so the hot path compiles to what
//! it was without this module.

use std::time::Duration;

use crate::events::ExitReason;
use crate::task::cell::{AsyncRun, Outcome};
use crate::task::TaskId;
use crate::worker::WorkerId;

/// The span of one task running on a worker thread (zero-sized without the
/// feature).
pub(crate) struct TaskSpan {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

/// Opens the span of `task`, which `worker` is about to run after it waited
/// `waited`.
#[inline(always)]
#[allow(unused_variables)]
pub(crate) fn task_span(task: TaskId, worker: WorkerId, waited: Duration) -> TaskSpan {
    TaskSpan {
        #[cfg(feature = "tracing")]
        span: tracing::info_span!(
            target: "crew",
            "crew.task",
            task = task.0,
            worker = worker.raw(),
            waited_ns = nanos(waited)
        ),
    }
}

impl TaskSpan {
    /// Runs `f` (the task's code) inside the span.
    #[inline(always)]
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tracing")]
        {
            self.span.in_scope(f)
        }
        #[cfg(not(feature = "tracing"))]
        {
            f()
        }
    }

    /// Another handle on the same span (for the task's `running` entry).
    #[inline(always)]
    pub(crate) fn share(&self) -> TaskSpan {
        TaskSpan {
            #[cfg(feature = "tracing")]
            span: self.span.clone(),
        }
    }

    /// An async task's run, entered in the span at each poll (so what the
    /// future logs nests under it, as a synchronous task's code does).
    #[inline(always)]
    pub(crate) fn instrument(&self, run: AsyncRun) -> AsyncRun {
        #[cfg(feature = "tracing")]
        {
            use tracing::Instrument;
            Box::pin(run.instrument(self.span.clone()))
        }
        #[cfg(not(feature = "tracing"))]
        {
            run
        }
    }

    /// The task is counted with `outcome` after running for `ran`.
    #[inline(always)]
    #[allow(unused_variables)]
    pub(crate) fn finished(&self, outcome: Outcome, ran: Duration) {
        #[cfg(feature = "tracing")]
        self.span
            .in_scope(|| task_finished(None, None, outcome, ran));
    }
}

/// A task was accepted.
#[inline(always)]
#[allow(unused_variables)]
pub(crate) fn queued(task: TaskId) {
    #[cfg(feature = "tracing")]
    tracing::trace!(target: "crew", task = task.0, "task queued");
}

/// A task started in a worker process (the process backend).
#[inline(always)]
#[allow(unused_variables)]
#[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
pub(crate) fn remote_started(task: TaskId, worker: WorkerId, waited: Duration) {
    #[cfg(feature = "tracing")]
    tracing::debug!(
        target: "crew",
        task = task.0,
        worker = worker.raw(),
        waited_ns = nanos(waited),
        "task started"
    );
}

/// A task that ran in a worker process was counted (the process backend).
#[inline(always)]
#[allow(unused_variables)]
#[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
pub(crate) fn remote_finished(task: TaskId, worker: WorkerId, outcome: Outcome, ran: Duration) {
    #[cfg(feature = "tracing")]
    task_finished(Some(task), Some(worker), outcome, ran);
}

#[cfg(feature = "tracing")]
fn task_finished(task: Option<TaskId>, worker: Option<WorkerId>, outcome: Outcome, ran: Duration) {
    let outcome = crate::events::TaskOutcome::from(outcome);
    tracing::debug!(
        target: "crew",
        task = task.map(|t| t.0),
        worker = worker.map(|w| w.raw()),
        outcome = ?outcome,
        ran_ns = nanos(ran),
        "task finished"
    );
}

/// The span of one worker thread's life (zero-sized without the feature).
pub(crate) struct WorkerSpan {
    #[cfg(feature = "tracing")]
    _entered: tracing::span::EnteredSpan,
}

/// Enters the span of `worker` for as long as the returned guard lives.
#[inline(always)]
#[allow(unused_variables)]
pub(crate) fn worker_span(worker: WorkerId) -> WorkerSpan {
    WorkerSpan {
        #[cfg(feature = "tracing")]
        _entered: tracing::info_span!(target: "crew", "crew.worker", worker = worker.raw())
            .entered(),
    }
}

/// A worker's `Worker::start` succeeded (or it rebuilt its state).
#[inline(always)]
#[allow(unused_variables)]
pub(crate) fn worker_started(worker: WorkerId) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "crew", worker = worker.raw(), "worker started");
}

/// The pool stopped counting `worker`.
#[inline(always)]
#[allow(unused_variables)]
pub(crate) fn worker_exited(worker: WorkerId, reason: ExitReason) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "crew", worker = worker.raw(), reason = ?reason, "worker exited");
}

#[cfg(feature = "tracing")]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
