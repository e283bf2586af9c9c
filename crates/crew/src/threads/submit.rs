//! Submitting to the thread backend: admission (capacity, `WhenFull`), one cell
//! per task, the push and the wake decision, batches, running on the caller,
//! and growing an elastic pool. Runs on the submitting thread (a task that
//! submits, on a worker). `threads.md`, "A task's life on threads", narrates it.

use std::cell::Cell as StdCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use crossbeam_deque::Worker as Deque;

use crate::backend::{Admission, WhenFull};
use crate::error::{panic_message, Failure, SubmitError};
use crate::events::{Event, ExitReason, TaskOutcome};
use crate::sync::{lock, Arc};
use crate::task::cell::{new_cell, Job, Limits, Outcome, Payload, Started};
use crate::task::{Priority, Task, TaskId, TaskOptions};
use crate::worker::{Context, Worker, WorkerId};

use super::{is_worker_of, Rejected, Shared, Slot};
use super::{BROKEN, CLOSING, CURRENT, TIME_ALL, TIME_ONE_IN};

impl<W: Worker> Shared<W> {
    // ------------------------------------------------------------ submitting

    /// Queues `payload` as one task. With a queue capacity, a full queue makes
    /// `Admission::Wait` block (or run the task on the caller, per `when_full`)
    /// and `Admission::Try` give the payload back.
    #[inline]
    pub(crate) fn submit<P>(
        &self,
        payload: P,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<P::Output, P::Error>, SubmitError<P>>
    where
        P: Payload<W>,
    {
        if self.lifecycle.load(Acquire) & CLOSING != 0 {
            if admission == Admission::Acquired && !is_worker_of(self) {
                // The place `poll_capacity` reserved will not be used.
                if let Some(capacity) = &self.capacity {
                    capacity.release();
                }
            }
            return Err(SubmitError::closed(payload));
        }
        let bounded = match &self.capacity {
            Some(capacity) if !is_worker_of(self) => {
                if admission != Admission::Acquired && !capacity.try_acquire() {
                    match admission {
                        Admission::Try | Admission::Acquired => {
                            return Err(SubmitError::full(payload))
                        }
                        Admission::Wait if self.config.when_full == WhenFull::CallerRuns => {
                            return Ok(self.run_on_caller(payload, options));
                        }
                        Admission::Wait => {
                            if !capacity.acquire(|| self.is_closed()) {
                                return Err(SubmitError::closed(payload));
                            }
                        }
                    }
                }
                true
            }
            _ => false,
        };
        let id = TaskId(self.submitted.fetch_add(1, Relaxed) + 1);
        let queued_at = self.timed(id).then(Instant::now);
        self.enqueue(id, payload, options, bounded, true, queued_at)
    }

    /// Whether task `id`'s wait and run times are measured: the pool's first
    /// [`TIME_ALL`] tasks, then one in [`TIME_ONE_IN`], and every task while an
    /// event subscriber listens (its events carry the times). Two clock reads
    /// and two histogram updates are a tenth of a short task's cost, so a pool
    /// running millions of tasks samples; percentiles are then estimates and
    /// `Latency::count` is the number of tasks measured.
    #[inline]
    pub(crate) fn timed(&self, id: TaskId) -> bool {
        id.0 <= TIME_ALL || id.0.is_multiple_of(TIME_ONE_IN) || self.events.is_active()
    }

    /// Allocates task `id`, pushes it (waking a worker if `notify`), and takes it
    /// back if the pool closed meanwhile.
    #[inline]
    pub(super) fn enqueue<P>(
        &self,
        id: TaskId,
        payload: P,
        options: TaskOptions,
        bounded: bool,
        notify: bool,
        queued_at: Option<Instant>,
    ) -> Result<Task<P::Output, P::Error>, SubmitError<P>>
    where
        P: Payload<W>,
    {
        let cell = new_cell(
            id,
            options.priority,
            options.limits(self.config.default_timeout),
            bounded,
            queued_at,
            self.key(),
            payload,
        );
        crate::trace::queued(id);
        self.push(Job::new(cell.clone()), options.priority, notify);
        if let Some(deadline) = options.deadline {
            // Only tasks with a deadline: the monitor times it out if it is
            // still queued then (`threads.md`, "Deadlines").
            self.watch_deadline(deadline, Job::new(cell.clone()));
        }
        if !notify {
            // `notify_work` (skipped in a batch) is where the fence usually is.
            std::sync::atomic::fence(SeqCst);
        }
        // After the push and a SeqCst fence, this read and a concurrent `close` or
        // breaker trip cannot both miss each other.
        let lifecycle = self.lifecycle.load(SeqCst);
        if lifecycle & (CLOSING | BROKEN) != 0 {
            if lifecycle & CLOSING != 0 {
                if let Some(payload) = cell.take_back() {
                    // Its tombstone is counted by whoever pops it: a worker, or
                    // the last worker's drain. If every worker had already left
                    // (and drained) before the push, nobody would: pop it here.
                    if lock(&self.registry).live.is_empty() {
                        self.drain(Failure::Closed);
                    }
                    return Err(SubmitError::closed(payload));
                }
            } else {
                self.drain(Failure::StartFailed(self.last_start_error()));
            }
        }
        Ok(Task::new(cell))
    }

    /// Queues many tasks with one id reservation and one wake-up. Stops at the
    /// first one the pool does not take (closed, or full with `Admission::Try`)
    /// and returns the tasks queued so far with the rejected payload and the rest.
    pub(crate) fn submit_batch<P>(
        &self,
        payloads: Vec<P>,
        options: TaskOptions,
        admission: Admission,
    ) -> (Vec<Task<P::Output, P::Error>>, Option<Rejected<P>>)
    where
        P: Payload<W>,
    {
        let mut tasks = Vec::with_capacity(payloads.len());
        let mut rest = payloads.into_iter();
        if self.lifecycle.load(Acquire) & CLOSING != 0 {
            // Nothing reserved, nothing counted: as `submit` does.
            return match rest.next() {
                Some(first) => (tasks, Some((SubmitError::closed(first), rest.collect()))),
                None => (tasks, None),
            };
        }
        let bounded = self.capacity.is_some() && !is_worker_of(self);
        let first = self.submitted.fetch_add(rest.len() as u64, Relaxed) + 1;
        let mut rejected: Option<Rejected<P>> = None;
        let mut ids = first..;
        // One clock read for the whole batch: its tasks were submitted together.
        let queued_at = Instant::now();
        while let Some(payload) = rest.next() {
            let id = TaskId(ids.next().unwrap_or(u64::MAX));
            if bounded {
                let capacity = self.capacity.as_ref().unwrap_or_else(|| unreachable!());
                let acquired = capacity.try_acquire()
                    || (admission == Admission::Wait && {
                        // About to block: let the workers see what is queued.
                        self.sleep.notify_work();
                        capacity.acquire(|| self.is_closed())
                    });
                if !acquired {
                    let error = if self.is_closed() {
                        SubmitError::closed(payload)
                    } else {
                        SubmitError::full(payload)
                    };
                    // Its id was reserved but no task was made: count it here.
                    self.count(Outcome::Closed);
                    rejected = Some((error, rest.collect::<Vec<P>>()));
                    break;
                }
            }
            let stamp = self.timed(id).then_some(queued_at);
            match self.enqueue(id, payload, options, bounded, false, stamp) {
                Ok(task) => tasks.push(task),
                Err(error) => {
                    // Taken back: its tombstone is counted by whoever pops it.
                    rejected = Some((error, rest.collect()));
                    break;
                }
            }
        }
        if let Some((_, rest)) = &rejected {
            // Ids reserved for payloads never tried count as closed, so `submitted`
            // and the outcome counters still add up.
            for _ in 0..rest.len() {
                self.count(Outcome::Closed);
            }
        }
        if self.sleep.notify_work() && self.is_elastic() {
            self.maybe_grow();
        }
        (tasks, rejected)
    }

    /// `WhenFull::CallerRuns`: runs the task here, on a fresh worker instance.
    #[cold]
    pub(crate) fn run_on_caller<P>(
        &self,
        payload: P,
        options: TaskOptions,
    ) -> Task<P::Output, P::Error>
    where
        P: Payload<W>,
    {
        let id = TaskId(self.submitted.fetch_add(1, Relaxed) + 1);
        let queued_at = Instant::now();
        // Pool 0: it runs right here, so no join can wait for a worker for it.
        let cell = new_cell(
            id,
            options.priority,
            Limits::NONE,
            false,
            Some(queued_at),
            0,
            payload,
        );
        let task = Task::new(cell.clone());
        let job = Job::<W>::new(cell);
        let mut ctx = Context::new(WorkerId::CALLER, None);
        let observed = self.events.is_active();
        let mut ran = None;
        let mut waited = Duration::ZERO;
        match catch_unwind(AssertUnwindSafe(|| W::start(&mut ctx))) {
            Ok(Ok(mut worker)) => {
                let started = Instant::now();
                waited = started.saturating_duration_since(queued_at);
                if observed {
                    self.events.emit(Event::TaskStarted {
                        task: id,
                        worker: WorkerId::CALLER,
                        waited,
                    });
                }
                // No outbox here: `Context::send` says `Unavailable` on the caller.
                if let Started::Suspended(run) = job.run(&mut worker, WorkerId::CALLER, None) {
                    // No executor here: the caller polls the future to its end.
                    futures_executor::block_on(run);
                }
                let elapsed = started.elapsed();
                ran = Some(elapsed);
                let mut reg = lock(&self.registry);
                reg.retired_timings.record_wait(waited);
                reg.retired_timings.record_run(elapsed, 1);
                drop(reg);
                let mut ctx = Context::new(WorkerId::CALLER, None);
                let _ = catch_unwind(AssertUnwindSafe(|| worker.stop(&mut ctx)));
            }
            Ok(Err(e)) => {
                job.discard(Failure::StartFailed(e.to_string()));
            }
            Err(panic) => {
                let message = format!("Worker::start panicked: {}", panic_message(&*panic));
                job.discard(Failure::StartFailed(message));
            }
        }
        let outcome = job.header().settled_outcome();
        self.count(outcome);
        if observed {
            let outcome = TaskOutcome::from(outcome);
            self.events.emit(match ran {
                Some(ran) => Event::TaskFinished {
                    task: id,
                    worker: WorkerId::CALLER,
                    outcome,
                    waited,
                    ran,
                },
                None => Event::TaskDiscarded { task: id, outcome },
            });
        }
        task
    }

    /// Waits for a place in the queue (async). `Ready(false)`: the pool closed.
    pub(crate) fn poll_capacity(
        &self,
        cx: &mut std::task::Context<'_>,
        registered: &mut bool,
    ) -> std::task::Poll<bool> {
        match &self.capacity {
            None => std::task::Poll::Ready(!self.is_closed()),
            Some(_) if is_worker_of(self) => std::task::Poll::Ready(!self.is_closed()),
            Some(capacity) => capacity.poll_acquire(cx, registered, || self.is_closed()),
        }
    }

    /// Drops an async submitter's registration (its future went away).
    pub(crate) fn forget_capacity_waiter(&self, registered: &mut bool) {
        if let Some(capacity) = &self.capacity {
            capacity.forget(registered);
        }
    }

    /// A queue entry was taken out of the queues (to run, skip, or discard).
    #[inline]
    pub(super) fn popped(&self, bounded: bool) {
        if bounded {
            if let Some(capacity) = &self.capacity {
                capacity.release();
            }
        }
    }

    /// Puts a job on the calling worker's own deque (a `Normal` task spawned from
    /// inside this pool) or on the injector of its level, then wakes a worker if
    /// one is needed.
    #[inline]
    pub(super) fn push(&self, job: Job<W>, priority: Priority, notify: bool) {
        let job = if priority == Priority::Normal {
            self.push_local(job)
        } else {
            Some(job)
        };
        if let Some(job) = job {
            self.injectors.push(job, priority);
        }
        if notify && self.sleep.notify_work() && self.is_elastic() {
            self.maybe_grow();
        }
    }

    /// Every worker is busy (a submitter saw no idle worker, or a searcher found
    /// more work than it can take with nobody asleep to hand it to): add workers,
    /// one at a time, while the backlog per worker is above the threshold and the
    /// pool is below its maximum. With no worker at all (`workers_range(0..=n)`),
    /// any backlog is enough. A spawn failure is not an error here; the next
    /// check tries again.
    #[cold]
    pub(crate) fn maybe_grow(&self) {
        if self.lifecycle() & CLOSING != 0 || self.growing.swap(true, Acquire) {
            return;
        }
        loop {
            let live = self.live_count.load(Relaxed);
            let backlog = self.injectors.len();
            let wanted = backlog > 0 && (live == 0 || backlog > self.config.grow_backlog * live);
            if live >= self.max_workers() || !wanted || self.spawn_worker().is_err() {
                break;
            }
        }
        self.growing.store(false, Release);
    }

    /// A worker with nothing in flight asks to retire: because `resize` asked
    /// it to (`Slot::retire`), or, on an elastic pool, because it stayed idle
    /// for `idle_timeout` (`idle`). Granted (and the worker removed from the
    /// pool's count) if the request still stands (a `resize` that grew the
    /// pool again may have withdrawn it), or for an idle worker while the pool
    /// is above its minimum.
    pub(super) fn try_retire(&self, slot: &Arc<Slot<W>>, idle: bool) -> bool {
        // Declared before the guard, so dropped (and its readers woken) after it.
        let _wake;
        let mut reg = lock(&self.registry);
        if slot.abandoned.load(SeqCst) {
            return false;
        }
        let asked = slot.retire.load(SeqCst);
        let above_min = reg.live.len() - reg.retiring > self.min_workers();
        if !(asked || (idle && above_min)) {
            return false;
        }
        let Some(at) = reg.live.iter().position(|s| Arc::ptr_eq(s, slot)) else {
            return false;
        };
        // It exits at once and hands its own deque back to the injector. It is
        // idle, so its counts are final: move them to the retired totals now, so
        // the pool's counters stay whole while its `Worker::stop` runs.
        reg.live.swap_remove(at);
        if slot.retire.swap(false, SeqCst) {
            reg.retiring -= 1;
        }
        self.set_live_count(&reg);
        Self::retire_counts(&mut reg, slot);
        if slot.started.swap(false, SeqCst) {
            reg.started -= 1;
        }
        self.publish_peers(&mut reg);
        // Its `WorkerExited` goes out now, under the lock that takes it out of
        // `live`: the pool no longer counts it while its `stop` runs, and an
        // event pushed later, at its exit, could come after the last live
        // worker ended the stream (`maybe_close_events`) and be lost.
        _wake = self.events.emit_deferred(Event::WorkerExited {
            worker: slot.id,
            reason: ExitReason::Retired,
        });
        true
    }

    /// Pushes onto the current thread's deque if it is a worker of this pool;
    /// gives the job back otherwise.
    #[inline]
    pub(super) fn push_local(&self, job: Job<W>) -> Option<Job<W>> {
        let (key, deque) = CURRENT.with(StdCell::get);
        if key != self.key() {
            return Some(job);
        }
        // SAFETY: `CURRENT` holds this pool's key only on one of its worker threads,
        // between `CurrentGuard::enter` and the guard's drop, and then points at
        // that thread's deque, which lives on the worker's stack for that whole span
        // and has type `Deque<Job<W>>` for this very `Shared<W>`. We are on that
        // thread, so the (non-`Sync`) deque is used from its owning thread only.
        let deque = unsafe { &*(deque as *const Deque<Job<W>>) };
        deque.push(job);
        None
    }
}
