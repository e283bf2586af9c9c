//! The body of one worker thread.
//!
//! ```text
//! start (retry with backoff) ──► loop { poll woken futures ─► find a job ─► run it } ──► stop ──► exit
//!              ▲                                                  │ panicked
//!              └──── stop, start again (once no future is left) ◄─┘
//! ```
//!
//! Finding a job: own deque and the injectors first; if empty, become a searcher
//! and spin a bounded number of rounds; then park through the sleep protocol
//! (`scheduler/sleep.md`). The thread leaves the loop when the pool is
//! terminating, when it is closing and no work is left, or when it was abandoned.
//!
//! # Async tasks: polling and taking tasks on one thread
//!
//! A job whose code is a future (`Pool::spawn_async`, an `AsyncWorker`) starts like
//! any other: published in the slot's `running` list, then run, which here means
//! polled once and, if not finished, left in the worker's [`Executor`]. Its
//! `running` entry stays until the future ends, so timeouts, kills, stats and the
//! idle count see it as running. Each turn of the loop:
//!
//! 1. polls the futures woken since the last turn (one load when none was);
//! 2. if fewer than `concurrency` tasks are in flight, takes one job (or searches
//!    and parks as usual, with a woken future as one more reason to wake up: a
//!    parked worker with futures in flight is still a sleeper that submitters may
//!    wake);
//! 3. otherwise takes nothing and waits for a future outside the sleep protocol
//!    ([`Executor::wait`]): it is busy, so no submitter counts on it, and the
//!    queue's work goes to other workers (backpressure per worker).
//!
//! A closing pool's worker leaves only once its futures have ended. A panic in a
//! future rebuilds the worker's state as a synchronous panic does, but only after
//! the worker's other futures (which share that state) have ended; it takes no
//! new task meanwhile.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::Instant;

use crossbeam_deque::{Stealer, Worker as Deque};

use super::executor::Executor;
use super::{CurrentGuard, Running, Shared, Slot, CLOSING, TERMINATING};
use crate::error::{panic_message, Failure};
use crate::events::{Event, ExitReason};
use crate::scheduler::sleep::Parked;
use crate::scheduler::spin::{
    self, Spin, QUIET_SPIN_ROUNDS, WORKER_SPIN_ROUNDS, WORKER_YIELD_ROUNDS,
};
use crate::sync::{after, lock, modelled, Arc};
use crate::task::cell::{Job, Outcome, Ran, Started};
use crate::task::TaskId;
use crate::worker::{Context, Worker, WorkerId};

/// The worker thread's own, unshared state.
struct Local<W: Worker> {
    shared: Arc<Shared<W>>,
    slot: Arc<Slot<W>>,
    deque: Deque<Job<W>>,
    /// Picks so far; drives the priority rotation.
    tick: u32,
    /// Copy of the pool's peer stealers (without our own) and its epoch.
    peers: Vec<Stealer<Job<W>>>,
    peers_epoch: usize,
    /// Whether this worker is counted as searching in the sleep state.
    searching: bool,
    /// Set when an elastic pool granted this idle worker's retirement.
    retired: bool,
    /// The async tasks in flight on this thread.
    executor: Executor,
    /// A task panicked: the state is rebuilt (this says why) once no future is
    /// in flight; no new task is taken until then.
    rebuild: Option<String>,
}

/// What a worker that looked for work does next (`None`: leave).
enum Next<W> {
    /// Run this job.
    Job(Job<W>),
    /// A future was woken: poll it.
    Poll,
    /// The pool is closing and nothing is queued, but futures are in flight:
    /// wait for them.
    Wait,
}

/// Runs a worker thread to completion.
pub(super) fn run<W: Worker>(shared: Arc<Shared<W>>, slot: Arc<Slot<W>>, deque: Deque<Job<W>>) {
    slot.sleeper.bind();
    let executor = Executor::new(
        shared.config.concurrency,
        modelled::Arc::clone(&slot.sleeper),
    );
    let mut local = Local {
        shared,
        slot,
        deque,
        tick: 0,
        peers: Vec::new(),
        peers_epoch: usize::MAX,
        searching: false,
        retired: false,
        executor,
        rebuild: None,
    };
    let guard = CurrentGuard::enter(&local.shared, &local.deque);
    let mut worker = local.start(None);
    while let Some(w) = worker.as_mut() {
        local.poll_futures();
        if local.rebuild.is_some() && local.executor.is_empty() {
            // The instance may be half-updated: retire it and build a fresh one.
            let reason = local.rebuild.take();
            local.stop(worker.take());
            worker = local.start(reason);
            continue;
        }
        if local.rebuild.is_some() || !local.executor.has_room() {
            // Full, or waiting out the futures before a rebuild: take no task.
            if local.must_leave() {
                break;
            }
            local.wait_for_futures();
            continue;
        }
        match local.next_job() {
            Some(Next::Job(job)) => {
                if local.run_job(&job, w) == Ran::Panicked {
                    local.rebuild = Some(format!("{} panicked", job.header().id()));
                }
            }
            Some(Next::Poll) => {}
            Some(Next::Wait) => local.wait_for_futures(),
            None => break,
        }
    }
    local.drop_futures();
    local.stop(worker);
    drop(guard);
    local.exit();
}

/// Takes a finished task's `running` entry back, counts its outcome and emits its
/// `TaskFinished`. If the entry is gone, the pool abandoned this thread meanwhile
/// and has counted the task (and emitted its `TaskFinished`); `must_leave` is
/// then true and the loop ends.
#[inline]
fn task_ended<W: Worker>(shared: &Shared<W>, slot: &Slot<W>, id: TaskId) {
    let mine = {
        let mut running = lock(&slot.running);
        // The newest entry on the synchronous path; one of `concurrency` otherwise.
        running
            .iter()
            .rposition(|r| r.job.header().id() == id)
            .map(|at| running.swap_remove(at))
    };
    if let Some(mine) = mine {
        let outcome = mine.job.header().settled_outcome();
        slot.count(outcome);
        if let Some(started) = mine.observed {
            finished(shared, slot.id, id, outcome, started);
        }
    }
}

#[cold]
fn finished<W: Worker>(
    shared: &Shared<W>,
    worker: WorkerId,
    task: TaskId,
    outcome: Outcome,
    started: Instant,
) {
    shared.events.emit(Event::TaskFinished {
        task,
        worker,
        outcome: outcome.into(),
        ran: started.elapsed(),
    });
}

impl<W: Worker> Local<W> {
    fn id(&self) -> WorkerId {
        self.slot.id
    }

    /// Whether this thread should leave its loop now, regardless of work.
    #[inline]
    fn must_leave(&self) -> bool {
        self.slot.abandoned.load(Acquire) || self.shared.lifecycle() & TERMINATING != 0
    }

    // ------------------------------------------------------------ start / stop

    /// Builds the worker's state, retrying with backoff. `None` if the thread should
    /// exit instead (shutdown, abandoned). `restarted`: why the state is being
    /// rebuilt (the event says `WorkerRestarted` rather than `WorkerStarted`).
    fn start(&mut self, restarted: Option<String>) -> Option<W> {
        let config = &self.shared.config;
        let mut delay = config.start_backoff;
        let mut failures: u32 = 0;
        let mut restarted = restarted;
        loop {
            if self.must_leave() || (self.shared.is_closed() && !self.has_work()) {
                return None;
            }
            let mut ctx = Context::new(self.id(), None);
            let message = match catch_unwind(AssertUnwindSafe(|| W::start(&mut ctx))) {
                Ok(Ok(worker)) => {
                    if self.shared.on_started(&self.slot, restarted.take()) {
                        return Some(worker);
                    }
                    // Abandoned while starting: undo the start and leave.
                    self.stop(Some(worker));
                    return None;
                }
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("Worker::start panicked: {}", panic_message(&*panic)),
            };
            failures = failures.saturating_add(1);
            if self.shared.events.is_active() {
                self.shared.events.emit(Event::WorkerStartFailed {
                    worker: self.id(),
                    message: message.clone(),
                    consecutive: failures,
                });
            }
            self.shared.on_start_failed(message);
            let until = after(Instant::now(), delay);
            while Instant::now() < until && !self.must_leave() && !self.shared.is_closed() {
                std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
            }
            delay = delay.saturating_mul(2).min(config.max_start_backoff);
        }
    }

    fn stop(&self, worker: Option<W>) {
        let Some(mut worker) = worker else { return };
        let mut ctx = Context::new(self.id(), None);
        let _ = catch_unwind(AssertUnwindSafe(|| worker.stop(&mut ctx)));
        let _ = catch_unwind(AssertUnwindSafe(move || drop(worker)));
        self.shared.on_stopped(&self.slot);
    }

    // ------------------------------------------------------------ running

    #[inline]
    fn run_job(&mut self, job: &Job<W>, worker: &mut W) -> Ran {
        self.tick = self.tick.wrapping_add(1);
        let header = job.header();
        self.shared.popped(header.bounded);
        // The one load the event stream costs a task when nobody subscribes.
        let observed = self.shared.events.is_active();
        if header.is_decided() {
            // A tombstone: cancelled (or taken back) while queued.
            let outcome = header.settled_outcome();
            self.slot.count(outcome);
            if observed {
                self.shared.events.emit(Event::TaskDiscarded {
                    task: header.id(),
                    outcome: outcome.into(),
                });
            }
            return Ran::Skipped;
        }
        // `TaskStarted` goes out before the task is published in `running`, so a
        // `TaskFinished` from whoever takes it from there (an abandonment) is
        // pushed after it.
        let observed = observed.then(|| {
            self.shared.events.emit(Event::TaskStarted {
                task: header.id(),
                worker: self.id(),
            });
            Instant::now()
        });
        let deadline = header.timeout.map(|t| after(Instant::now(), t));
        lock(&self.slot.running).push(Running {
            job: job.clone(),
            deadline,
            observed,
            abandon_at: None,
        });
        if let Some(deadline) = deadline {
            self.shared.monitor.wake_at(&self.shared, deadline);
        }
        match job.run(worker, self.id()) {
            Started::Done(ran) => {
                self.task_ended(header.id());
                ran
            }
            Started::Suspended(run) => {
                // In flight: its `running` entry stays until the future ends.
                self.executor.push(run);
                Ran::Returned
            }
        }
    }

    #[inline]
    fn task_ended(&self, id: TaskId) {
        task_ended(&self.shared, &self.slot, id);
    }

    /// Polls the futures that were woken; counts the tasks that ended. A panic in
    /// one of them schedules a rebuild of the worker's state.
    #[inline]
    fn poll_futures(&mut self) {
        let Local {
            executor,
            shared,
            slot,
            rebuild,
            ..
        } = self;
        executor.poll(|id, ran| {
            task_ended(shared, slot, id);
            if ran == Ran::Panicked && rebuild.is_none() {
                *rebuild = Some(format!("{id} panicked"));
            }
        });
    }

    /// Waits, taking no task, until a future is woken or the thread must leave.
    #[cold]
    fn wait_for_futures(&self) {
        self.executor.wait(|| self.must_leave());
    }

    /// The thread is leaving with futures in flight (the pool is terminating, or
    /// this worker was abandoned): resolves their tasks as the pool's caller
    /// would, drops the futures, then counts the tasks whose entries are still
    /// here.
    fn drop_futures(&mut self) {
        if self.executor.is_empty() {
            return;
        }
        if self.slot.abandoned.load(SeqCst) {
            // Right after it raises the flag, `abandon` resolves every entry (as
            // killed or timed out), then takes and counts them, in crew code only:
            // wait for that, so no task here ends as closed instead.
            let backoff = crossbeam_utils::Backoff::new();
            while !lock(&self.slot.running).is_empty() {
                backoff.snooze();
            }
        } else {
            // Terminating: `terminate` resolves running tasks as cancelled, and may
            // not have reached this worker yet. Do it first, so a future dropped
            // below does not resolve its task as closed.
            let jobs: Vec<Job<W>> = lock(&self.slot.running)
                .iter()
                .map(|r| r.job.clone())
                .collect();
            for job in jobs {
                job.fail(Failure::Cancelled);
            }
        }
        self.executor.clear();
        let ids: Vec<TaskId> = lock(&self.slot.running)
            .iter()
            .map(|r| r.job.header().id())
            .collect();
        for id in ids {
            self.task_ended(id);
        }
    }

    // ------------------------------------------------------------ finding work

    fn refresh_peers(&mut self) {
        let epoch = self.shared.peers_epoch.load(Acquire);
        if epoch == self.peers_epoch {
            return;
        }
        let (epoch, peers) = self.shared.peers();
        let me = self.id();
        self.peers = peers
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(_, s)| s.clone())
            .collect();
        self.peers_epoch = epoch;
    }

    #[inline]
    fn find(&mut self) -> Option<Job<W>> {
        self.shared
            .injectors
            .find(&self.deque, &self.peers, self.tick)
    }

    /// Whether any queue this worker can reach holds work (a snapshot).
    fn has_work(&self) -> bool {
        !self.deque.is_empty()
            || !self.shared.injectors.is_empty()
            || self.peers.iter().any(|s| !s.is_empty())
    }

    /// What to do next: a job, a woken future, or `None` if the thread should
    /// exit.
    #[inline]
    fn next_job(&mut self) -> Option<Next<W>> {
        if !self.must_leave() {
            if let Some(job) = self.find() {
                return Some(Next::Job(job));
            }
        }
        self.search()
    }

    /// Searches (spin, then park) until a job turns up, a future is woken, or the
    /// thread must exit.
    #[cold]
    fn search(&mut self) -> Option<Next<W>> {
        if let Some(next) = self.search_quietly() {
            return Some(next);
        }
        let others_searching = self.shared.sleep.start_searching();
        self.searching = true;
        let mut may_spin = spin::may_spin(others_searching);
        loop {
            self.refresh_peers();
            let spin_rounds = if may_spin { WORKER_SPIN_ROUNDS } else { 0 };
            let mut spin = Spin::new(spin_rounds, WORKER_YIELD_ROUNDS);
            loop {
                if self.must_leave() {
                    return None;
                }
                if self.shared.is_closed() && !self.has_work() {
                    if self.executor.is_empty() {
                        return None;
                    }
                    self.stop_searching();
                    return Some(Next::Wait);
                }
                if self.executor.is_ready() {
                    self.stop_searching();
                    return Some(Next::Poll);
                }
                if let Some(job) = self.find() {
                    self.stop_searching();
                    return Some(Next::Job(job));
                }
                if !spin.next() {
                    break;
                }
            }
            self.refresh_peers();
            if !self.executor.sleeping() {
                // A future was woken just now: poll it instead of parking.
                self.stop_searching();
                return Some(Next::Poll);
            }
            let shared = Arc::clone(&self.shared);
            let slot = Arc::clone(&self.slot);
            let futures = self.executor.wake_handle();
            // A woken future ends the park like a shutdown or a kill does
            // (`Parked::Interrupted`); see `executor.rs`.
            let stay_awake = || {
                slot.abandoned.load(SeqCst)
                    || shared.lifecycle() & CLOSING != 0
                    || futures.is_ready()
            };
            // An elastic pool's extra workers park with a timeout and retire when it
            // passes with nothing to do (and no future in flight).
            let elastic = shared.config.is_elastic();
            let timeout = elastic.then_some(shared.config.idle_timeout);
            let mut parked = shared.sleep.park(
                &slot.sleeper,
                || self.has_work(),
                stay_awake,
                || shared.notify_idle(),
                timeout,
            );
            while parked == Parked::TimedOut {
                if self.executor.is_empty() && shared.try_retire(&slot) {
                    self.executor.awake();
                    self.retired = true;
                    shared.sleep.stop_waiting(&slot.sleeper);
                    return None; // `exit` hands over anything that woke us
                }
                parked = shared.sleep.park_again(&slot.sleeper, stay_awake, timeout);
            }
            self.executor.awake();
            // Woken (or nothing to sleep for): counted as searching again. A woken
            // worker was chosen to find work, so it spins.
            may_spin = true;
        }
    }

    /// "Quiet spinning": while no worker is parked, look for a few microseconds
    /// without touching the shared sleep counts. Short gaps between tasks (a
    /// worker faster than its submitter) then cost no write to the word every
    /// submission reads. Nobody is parked, so no submitter could have woken
    /// anyone on this worker's behalf; and before it parks, this worker goes
    /// through the announced search and the park's re-check.
    fn search_quietly(&mut self) -> Option<Next<W>> {
        let mut spin = Spin::new(QUIET_SPIN_ROUNDS, 0);
        while self.shared.sleep.nobody_sleeping() && spin.next() {
            if self.must_leave() {
                return None;
            }
            if self.executor.is_ready() {
                return Some(Next::Poll);
            }
            if let Some(job) = self.find() {
                return Some(Next::Job(job));
            }
        }
        None
    }

    fn stop_searching(&mut self) {
        if !self.searching {
            return;
        }
        self.searching = false;
        if self.shared.sleep.stop_searching() {
            self.refresh_peers();
            let all_busy = self.shared.sleep.wake_if_work(|| self.has_work());
            if all_busy && self.shared.config.is_elastic() {
                self.shared.maybe_grow();
            }
        }
    }

    // ------------------------------------------------------------ exit

    fn exit(mut self) {
        self.stop_searching();
        // Leave nothing behind in our deque.
        let terminating = self.shared.lifecycle() & TERMINATING != 0;
        let mut handed_back = false;
        while let Some(job) = self.deque.pop() {
            if terminating {
                self.shared.discard(job, &Failure::Closed);
            } else {
                let priority = job.header().priority;
                self.shared.injectors.push(job, priority);
                handed_back = true;
            }
        }
        if handed_back {
            self.shared.sleep.notify_work();
        }
        let (was_live, last) = {
            let mut reg = lock(&self.shared.registry);
            let was_live = reg.live.iter().any(|s| Arc::ptr_eq(s, &self.slot));
            reg.live.retain(|s| !Arc::ptr_eq(s, &self.slot));
            self.shared.live_count.store(reg.live.len(), Relaxed);
            reg.abandoned.retain(|s| !Arc::ptr_eq(s, &self.slot));
            Shared::retire_counts(&mut reg, &self.slot);
            self.shared.publish_peers(&mut reg);
            (was_live, reg.live.is_empty())
        };
        // Exactly one `WorkerExited` per worker: whoever removes it from `live`
        // says why. Still live here means the pool is closing (nothing else makes
        // a live worker leave); `try_retire` and `abandon` removed it otherwise,
        // and `abandon` emitted its own event.
        let reason = if was_live {
            Some(ExitReason::Shutdown)
        } else if self.retired {
            Some(ExitReason::Retired)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.shared.events.emit(Event::WorkerExited {
                worker: self.id(),
                reason,
            });
        }
        if last && self.shared.is_closed() {
            // A submission that raced with close takes itself back; anything else
            // still queued has no worker left to run it.
            // (The drain also ends the event stream, after its own events.)
            self.shared.drain(Failure::Closed);
        }
        self.shared.exited.notify_all();
        self.shared.notify_idle();
    }
}
