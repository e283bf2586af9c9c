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
//! any other: published in the slot's `running` entry, then run, which here means
//! polled once and, if not finished, left in the worker's [`Executor`], its entry
//! moved to the slot's `suspended` list until the future ends, so timeouts,
//! kills, stats and the idle count see it as running. Each turn of the loop
//! (steps 1 and 3 skipped in one load while no future is in flight):
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
//! # Mail and async tasks
//!
//! The mailbox is read at a turn of the loop, never inside a task's code: for
//! synchronous tasks that is between two tasks, as before. With async tasks in
//! flight it is between two polls: `on_message` runs while those tasks wait at
//! an `.await`. That is sound because no future borrows the worker value
//! itself: `Pool::spawn_async`'s futures never see it, and an
//! `AsyncWorker`'s futures own a share of its state (`Async` holds it in an
//! `Rc`), to which `Async::on_message` gives `AsyncWorker::on_message` only a
//! shared reference. A full worker waiting for its futures also wakes up for
//! mail. While a rebuild waits for the futures to end (below), mail waits too:
//! it goes to the new state.
//!
//! A closing pool's worker leaves only once its futures have ended. A panic in a
//! future rebuilds the worker's state as a synchronous panic does, but only after
//! the worker's other futures (which share that state) have ended; it takes no
//! new task meanwhile.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::{Duration, Instant};

use crossbeam_deque::{Stealer, Worker as Deque};

use super::executor::Executor;
use super::{CurrentGuard, Running, Shared, Slot, Work, CLOSING, TERMINATING};
use super::{TIME_ALL, TIME_ONE_IN};
use crate::error::{panic_message, Failure};
use crate::events::{Event, ExitReason};
use crate::messages::{BusOutbox, Mail};
use crate::scheduler::sleep::Parked;
use crate::scheduler::spin::{
    self, Spin, QUIET_SPIN_ROUNDS, WORKER_SPIN_ROUNDS, WORKER_YIELD_ROUNDS,
};
use crate::sync::{after, lock, modelled, Arc};
use crate::task::cell::{Job, Outcome, Ran, Started};
use crate::task::TaskId;
use crate::trace;
use crate::worker::{Context, Outbox, Worker, WorkerId};

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
    /// Set when the pool granted this worker's retirement (`try_retire`: it
    /// was idle on an elastic pool, or `resize` asked it to leave).
    retired: bool,
    /// When the previous task returned, if this worker went straight on to the
    /// next one (found without searching): that instant is then also the next
    /// task's start, which saves one clock read per task under load. Cleared
    /// whenever the worker searches, parks or rebuilds its state.
    last_end: Option<Instant>,
    /// How many of the pool's sticky messages the current worker state has.
    sticky_seen: usize,
    /// Where `Context::send` puts this worker's messages: made once per worker
    /// and shared by every context it hands out (an async task's owns a clone).
    outbox: Arc<dyn Outbox>,
    /// The async tasks in flight on this thread.
    executor: Executor,
    /// A task (or `on_message`) panicked while futures were in flight: the
    /// state is rebuilt (this says why) once none is; no new task is taken and
    /// no mail read until then.
    rebuild: Option<String>,
}

/// What a worker does next.
enum Next<W> {
    Job(Job<W>),
    /// Messages from the pool wait in its mailbox.
    Mail,
    /// A future was woken: poll it.
    Poll,
    /// The pool is closing and nothing is queued, but futures are in flight:
    /// wait for them.
    Wait,
    Leave,
}

/// Runs a worker thread to completion.
pub(super) fn run<W: Worker>(shared: Arc<Shared<W>>, slot: Arc<Slot<W>>, deque: Deque<Job<W>>) {
    slot.sleeper.bind();
    let executor = Executor::new(
        shared.config.concurrency,
        modelled::Arc::clone(&slot.sleeper),
    );
    let outbox: Arc<dyn Outbox> = Arc::new(BusOutbox(Arc::clone(&shared.messages)));
    let mut local = Local {
        shared,
        slot,
        deque,
        tick: 0,
        peers: Vec::new(),
        peers_epoch: usize::MAX,
        searching: false,
        retired: false,
        last_end: None,
        sticky_seen: 0,
        outbox,
        executor,
        rebuild: None,
    };
    let _span = trace::worker_span(local.slot.id);
    let shared = Arc::clone(&local.shared);
    // For the thread's whole life: tokio's timers and I/O in async tasks find
    // the pool's runtime (feature `tokio`, `runtime.rs`).
    let _runtime = shared.config.runtime.enter();
    let guard = CurrentGuard::enter(&local.shared, &local.deque);
    let mut worker = local.start(None);
    while let Some(w) = worker.as_mut() {
        // Skipped in one load and two compares by a worker that runs only
        // synchronous tasks.
        if local.rebuild.is_some() || local.executor.is_active() {
            local.poll_futures();
            if local.rebuild.is_some() && local.executor.is_empty() {
                // The instance may be half-updated: retire it and build a fresh one.
                let reason = local.rebuild.take();
                local.stop(worker.take());
                if local.retire_now() {
                    break; // asked to retire: no state to rebuild
                }
                worker = local.start(reason);
                local.last_end = None;
                continue;
            }
            if local.rebuild.is_some() || !local.executor.has_room() {
                // Full, or waiting out the futures before a rebuild: take no task.
                if local.must_leave() {
                    break;
                }
                if local.rebuild.is_none() && local.slot.has_mail.load(Relaxed) {
                    worker = local.read_mail(worker);
                    continue;
                }
                local.wait_for_futures();
                continue;
            }
        }
        match local.next_job() {
            Next::Job(job) => {
                if local.run_job(&job, w) == Ran::Panicked {
                    local.rebuild = Some(format!("{} panicked", job.header().id()));
                }
            }
            Next::Mail => worker = local.read_mail(worker),
            Next::Poll => {}
            Next::Wait => local.wait_for_futures(),
            Next::Leave => {
                // A graceful exit (shutdown, retirement) reads the mail that came
                // before it, as it runs the work that was queued; a kill or
                // `terminate` drops it.
                if !local.must_leave() && local.slot.has_mail.load(SeqCst) {
                    worker = local.read_mail(worker);
                }
                break;
            }
        }
    }
    local.slot.stopping.store(true, Relaxed);
    local.drop_futures();
    local.stop(worker);
    drop(guard);
    local.exit();
}

/// Takes a finished async task's entry back from `suspended` (see [`end_entry`]).
fn task_ended<W: Worker>(shared: &Shared<W>, slot: &Slot<W>, id: TaskId) -> Option<Instant> {
    end_entry(shared, slot, |work| {
        let at = work
            .suspended
            .iter()
            .position(|r| r.job.header().id() == id);
        // Removed in place, so the first entry stays the oldest task in flight.
        at.map(|at| work.suspended.remove(at))
    })
}

/// Takes the entry of the synchronous task that just returned.
#[inline]
fn sync_task_ended<W: Worker>(shared: &Shared<W>, slot: &Slot<W>) -> Option<Instant> {
    end_entry(shared, slot, |work| work.running.take())
}

/// Takes the entry `take` gives, records its run time (if it was timed), counts
/// its outcome, closes its span and emits its `TaskFinished`. Returns the
/// instant it ended if the clock was read. If the entry is gone, the pool
/// abandoned this thread meanwhile and has counted the task (and emitted its
/// `TaskFinished`); `must_leave` is then true and the loop ends.
#[inline(always)]
fn end_entry<W: Worker>(
    shared: &Shared<W>,
    slot: &Slot<W>,
    take: impl FnOnce(&mut Work<W>) -> Option<Running<W>>,
) -> Option<Instant> {
    let mut end = None;
    let mine = {
        let mut work = lock(&slot.work);
        take(&mut work).map(|mine| {
            let elapsed = mine.started.map_or(Duration::ZERO, |started| {
                let now = Instant::now();
                end = Some(now);
                now.saturating_duration_since(started)
            });
            if mine.weight > 0 {
                work.timings.record_run(elapsed, mine.weight);
            }
            (mine, elapsed)
        })
    };
    if let Some((mine, elapsed)) = mine {
        let header = mine.job.header();
        let outcome = header.settled_outcome();
        slot.count(outcome);
        mine.span.finished(outcome, elapsed);
        if mine.observed {
            finished(shared, slot.id, header.id(), outcome, mine.waited, elapsed);
        }
    }
    end
}

/// A popped task whose deadline has passed resolves as timed out instead of
/// starting (and is then skipped as a tombstone), even if the monitor has not
/// got to it yet.
#[cold]
fn expire_if_due<W>(job: &Job<W>) {
    if job
        .header()
        .limits
        .deadline()
        .is_some_and(|deadline| deadline <= Instant::now())
    {
        job.discard(Failure::TimedOut);
    }
}

#[cold]
fn finished<W: Worker>(
    shared: &Shared<W>,
    worker: WorkerId,
    task: TaskId,
    outcome: Outcome,
    waited: Duration,
    ran: Duration,
) {
    shared.events.emit(Event::TaskFinished {
        task,
        worker,
        outcome: outcome.into(),
        waited,
        ran,
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
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let mut delay = config.start_backoff;
        let mut failures: u32 = 0;
        let mut restarted = restarted;
        loop {
            if self.must_leave()
                || (self.shared.is_closed() && !self.has_work())
                || self.retire_now()
            {
                return None;
            }
            let mut ctx = Context::new(self.id(), None).with_outbox(&self.outbox);
            let message = match catch_unwind(AssertUnwindSafe(|| W::start(&mut ctx))) {
                Ok(Ok(worker)) => {
                    if self.shared.on_started(&self.slot, restarted.take()) {
                        return self.replay_sticky(worker);
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
            while Instant::now() < until
                && !self.must_leave()
                && !self.shared.is_closed()
                && !self.slot.retire.load(SeqCst)
            {
                std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
            }
            delay = delay.saturating_mul(2).min(config.max_start_backoff);
        }
    }

    /// Gives a freshly started worker state every sticky message so far (see
    /// `Shared::broadcast` for why the list's lock makes this exactly once).
    /// `None` if a message's handler panicked and the rebuild gave up.
    fn replay_sticky(&mut self, worker: W) -> Option<W> {
        let sticky: Vec<W::Message> = {
            let list = lock(&self.shared.sticky);
            self.sticky_seen = list.len();
            list.clone()
        };
        let mut worker = Some(worker);
        for message in sticky {
            worker = self.deliver(worker, message);
        }
        worker
    }

    /// Reads the mailbox: every message in order, to `on_message`. If one
    /// panics with futures in flight, the rest stays in the mailbox for the
    /// rebuilt state.
    #[cold]
    fn read_mail(&mut self, mut worker: Option<W>) -> Option<W> {
        let mail = {
            let mut mailbox = lock(&self.slot.mail);
            self.slot.has_mail.store(false, SeqCst);
            std::mem::take(&mut mailbox.queue)
        };
        let mut pending = mail.into_iter();
        while let Some(mail) = pending.next() {
            if self.rebuild.is_some() {
                // Put the rest back, in order, ahead of anything sent since.
                let mut mailbox = lock(&self.slot.mail);
                let newer = std::mem::take(&mut mailbox.queue);
                mailbox.queue.push_back(mail);
                mailbox.queue.extend(pending);
                mailbox.queue.extend(newer);
                self.slot.has_mail.store(true, SeqCst);
                break;
            }
            let message = match mail {
                Mail::Plain(message) => message,
                Mail::Sticky(n) => {
                    if n < self.sticky_seen {
                        continue; // this state got it when it started
                    }
                    self.sticky_seen = n + 1;
                    lock(&self.shared.sticky)[n].clone()
                }
            };
            worker = self.deliver(worker, message);
        }
        worker
    }

    /// Runs `on_message`; a panic rebuilds the state, as a task's panic does: at
    /// once, or, with futures in flight (they share the state), once they have
    /// ended.
    fn deliver(&mut self, worker: Option<W>, message: W::Message) -> Option<W> {
        let mut worker = worker?;
        let mut ctx = Context::new(self.id(), None).with_outbox(&self.outbox);
        match catch_unwind(AssertUnwindSafe(|| worker.on_message(message, &mut ctx))) {
            Ok(()) => Some(worker),
            Err(panic) => {
                let reason = format!("on_message panicked: {}", panic_message(&*panic));
                let _ = catch_unwind(AssertUnwindSafe(move || drop(panic)));
                if !self.executor.is_empty() {
                    self.rebuild.get_or_insert(reason);
                    return Some(worker);
                }
                self.stop(Some(worker));
                self.last_end = None;
                self.start(Some(reason))
            }
        }
    }

    fn stop(&self, worker: Option<W>) {
        let Some(mut worker) = worker else { return };
        let mut ctx = Context::new(self.id(), None).with_outbox(&self.outbox);
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
        if header.limits.has_deadline() {
            expire_if_due(job);
        }
        if header.is_decided() {
            // A tombstone: cancelled (or taken back) while queued. It never ran
            // here, so it is counted pool-wide, not in this worker's row
            // (`WorkerStats::tasks_done`), as on the process backend.
            let outcome = header.settled_outcome();
            self.shared.count(outcome);
            if observed {
                self.shared.events.emit(Event::TaskDiscarded {
                    task: header.id(),
                    outcome: outcome.into(),
                });
            }
            return Ran::Skipped;
        }
        // Wait and run times (`Stats::wait`, `Stats::run`), for the tasks the
        // submitter stamped (`Shared::timed`: sampled), plus a clock read for a
        // task with a timeout or a subscriber. The start is the previous task's
        // end when the worker went straight on (no search between them).
        // Past the first `TIME_ALL`, only the one-in-`TIME_ONE_IN` sample is
        // recorded, standing for the tasks around it. A task stamped only because
        // an event subscriber listened (its event needs the times) is not: with
        // weight `TIME_ONE_IN` as well it would count eight times over in
        // `busy_time`, and utilization would pass 100%.
        let weight = match header.queued_at {
            None => 0,
            Some(_) if header.id().0 <= TIME_ALL => 1,
            Some(_) if header.id().0.is_multiple_of(TIME_ONE_IN) => TIME_ONE_IN as u32,
            Some(_) => 0,
        };
        let timed = weight > 0 || observed || header.limits.is_set();
        let started = if timed {
            Some(self.last_end.take().unwrap_or_else(Instant::now))
        } else {
            self.last_end = None;
            None
        };
        let waited = started
            .zip(header.queued_at)
            .map_or(Duration::ZERO, |(s, q)| s.saturating_duration_since(q));
        // `TaskStarted` goes out before the task is published in `running`, so a
        // `TaskFinished` from whoever takes it from there (an abandonment) is
        // pushed after it.
        if observed {
            self.started(header.id(), waited);
        }
        // Its timeout from now, or its deadline from submission, if sooner.
        let deadline = started.and_then(|started| header.limits.end(started));
        let span = trace::task_span(header.id(), self.id(), waited);
        {
            let mut work = lock(&self.slot.work);
            if weight > 0 {
                work.timings.record_wait(waited);
            }
            work.running = Some(Running {
                job: job.clone(),
                deadline,
                started,
                weight,
                waited,
                observed,
                abandon_at: None,
                span: span.share(),
            });
        }
        if let Some(deadline) = deadline {
            self.shared.monitor.wake_at(&self.shared, deadline);
        }
        let id = self.id();
        let outbox = Some(&self.outbox);
        match span.run(|| job.run(worker, id, outbox)) {
            Started::Done(ran) => {
                // If the entry is gone, the pool abandoned this thread mid-task
                // and counted the task (and emitted its `TaskFinished`);
                // `must_leave` is now true and the loop ends.
                self.last_end = sync_task_ended(&self.shared, &self.slot);
                ran
            }
            Started::Suspended(run) => {
                // In flight: its entry moves to `suspended` until the future ends,
                // and its run time is measured to then. (If `abandon` took it
                // meanwhile, the future finds its task decided at its first poll.)
                {
                    let mut work = lock(&self.slot.work);
                    if let Some(entry) = work.running.take() {
                        work.suspended.push(entry);
                    }
                }
                self.executor.push(span.instrument(run));
                Ran::Returned
            }
        }
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
        let polled = executor.poll(|id, ran| {
            task_ended(shared, slot, id);
            if ran == Ran::Panicked && rebuild.is_none() {
                *rebuild = Some(format!("{id} panicked"));
            }
        });
        if polled {
            // Time passed polling: the next start reads the clock.
            self.last_end = None;
        }
    }

    /// Waits, taking no task, until a future is woken, mail can be read, or the
    /// thread must leave.
    #[cold]
    fn wait_for_futures(&mut self) {
        self.last_end = None;
        let mail = self.rebuild.is_none();
        self.executor
            .wait(|| self.must_leave() || (mail && self.slot.has_mail.load(SeqCst)));
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
            while !lock(&self.slot.work).is_empty() {
                backoff.snooze();
            }
        } else {
            // Terminating: `terminate` resolves running tasks as cancelled, and may
            // not have reached this worker yet. Do it first, so a future dropped
            // below does not resolve its task as closed.
            let jobs: Vec<Job<W>> = lock(&self.slot.work)
                .entries()
                .map(|r| r.job.clone())
                .collect();
            for job in jobs {
                job.fail(Failure::Cancelled);
            }
        }
        self.executor.clear();
        let ids: Vec<TaskId> = lock(&self.slot.work)
            .suspended
            .iter()
            .map(|r| r.job.header().id())
            .collect();
        for id in ids {
            task_ended(&self.shared, &self.slot, id);
        }
    }

    #[cold]
    fn started(&self, task: TaskId, waited: Duration) {
        self.shared.events.emit(Event::TaskStarted {
            task,
            worker: self.id(),
            waited,
        });
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

    /// The next job, or `None` if the thread should exit.
    #[inline]
    fn next_job(&mut self) -> Next<W> {
        if !self.must_leave() {
            if self.slot.has_mail.load(Relaxed) {
                return Next::Mail;
            }
            // A worker asked to retire takes no new task (`search` sees it out).
            if !self.slot.retire.load(Relaxed) {
                if let Some(job) = self.find() {
                    return Next::Job(job);
                }
            }
        }
        self.search()
    }

    /// Searches (spin, then park) until a job or mail turns up or the thread must
    /// exit.
    #[cold]
    fn search(&mut self) -> Next<W> {
        self.last_end = None; // time passes here: the next start reads the clock

        match self.search_quietly() {
            Some(next) => return next,
            None if self.must_leave() => return Next::Leave,
            None => {}
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
                    return Next::Leave;
                }
                if let Some(next) = self.retire_if_asked() {
                    return next;
                }
                if self.shared.is_closed() && !self.has_work() {
                    if self.executor.is_empty() {
                        return Next::Leave;
                    }
                    self.stop_searching();
                    return Next::Wait;
                }
                if self.executor.is_ready() {
                    self.stop_searching();
                    return Next::Poll;
                }
                if self.slot.has_mail.load(Relaxed) {
                    self.stop_searching();
                    return Next::Mail;
                }
                if let Some(job) = self.find() {
                    self.stop_searching();
                    return Next::Job(job);
                }
                if !spin.next() {
                    break;
                }
            }
            self.refresh_peers();
            if !self.executor.sleeping() {
                // A future was woken just now: poll it instead of parking.
                self.stop_searching();
                return Next::Poll;
            }
            let shared = Arc::clone(&self.shared);
            let slot = Arc::clone(&self.slot);
            let futures = self.executor.wake_handle();
            // A woken future ends the park like a shutdown or a kill does
            // (`Parked::Interrupted`); see `executor.rs`.
            let stay_awake = || {
                slot.abandoned.load(SeqCst)
                    || slot.retire.load(SeqCst)
                    || shared.lifecycle() & CLOSING != 0
                    || futures.is_ready()
            };
            // An elastic pool's extra workers park with a timeout and retire when it
            // passes with nothing to do (and no future in flight). (`resize` wakes
            // every parked worker, so each parks again with the timeout its new
            // range calls for.)
            let elastic = shared.is_elastic();
            let timeout = elastic.then_some(shared.config.idle_timeout);
            let mut parked = shared.sleep.park(
                &slot.sleeper,
                || self.has_work() || slot.has_mail.load(SeqCst),
                stay_awake,
                || shared.notify_idle(),
                timeout,
            );
            while parked == Parked::TimedOut {
                if self.executor.is_empty() && shared.try_retire(&slot, true) {
                    self.executor.awake();
                    self.retired = true;
                    shared.sleep.stop_waiting(&slot.sleeper);
                    return Next::Leave; // `exit` hands over anything that woke us
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
                return Some(Next::Leave);
            }
            if let Some(next) = self.retire_if_asked() {
                return Some(next);
            }
            if self.executor.is_ready() {
                return Some(Next::Poll);
            }
            if self.slot.has_mail.load(Relaxed) {
                return Some(Next::Mail);
            }
            if let Some(job) = self.find() {
                return Some(Next::Job(job));
            }
        }
        None
    }

    /// `Pool::resize` asked this worker to retire (`Slot::retire`): it takes
    /// no new task. With nothing in flight it leaves, once `try_retire`
    /// confirms the request under the registry lock (a `resize` that grew the
    /// pool again may have withdrawn it: the worker then goes on); with async
    /// tasks in flight it waits for them first, as a closing pool's worker
    /// does.
    #[inline]
    fn retire_if_asked(&mut self) -> Option<Next<W>> {
        if !self.slot.retire.load(Relaxed) {
            return None;
        }
        if !self.executor.is_empty() {
            self.stop_searching();
            return Some(Next::Wait);
        }
        self.retire_now().then_some(Next::Leave)
    }

    /// Retires now if `resize` asked and the request still stands.
    #[cold]
    fn retire_now(&mut self) -> bool {
        if self.slot.retire.load(SeqCst) && self.shared.try_retire(&self.slot, false) {
            self.retired = true;
        }
        self.retired
    }

    fn stop_searching(&mut self) {
        if !self.searching {
            return;
        }
        self.searching = false;
        if self.shared.sleep.stop_searching() {
            self.refresh_peers();
            let all_busy = self.shared.sleep.wake_if_work(|| self.has_work());
            if all_busy && self.shared.is_elastic() {
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
        // Exactly one `WorkerExited` per worker: whoever removes it from `live`
        // says why. Still live here means the pool is closing (nothing else makes
        // a live worker leave); `try_retire` and `abandon` removed it otherwise,
        // and emitted its event then.
        //
        // It is pushed under the registry lock, like `WorkerStarted`: the last
        // worker to leave ends the event stream once it sees `live` empty, and
        // an event pushed after this lock is released could come after that end
        // and be lost (two workers leaving at once at shutdown).
        let (reason, last, wake) = {
            let mut reg = lock(&self.shared.registry);
            let was_live = reg.live.iter().any(|s| Arc::ptr_eq(s, &self.slot));
            reg.live.retain(|s| !Arc::ptr_eq(s, &self.slot));
            if self.slot.retire.swap(false, SeqCst) {
                reg.retiring -= 1; // asked to retire, and the pool closed first
            }
            self.shared.set_live_count(&reg);
            reg.abandoned.retain(|s| !Arc::ptr_eq(s, &self.slot));
            Shared::retire_counts(&mut reg, &self.slot);
            self.shared.publish_peers(&mut reg);
            // `try_retire` emitted a retired worker's event as it took it out
            // of `live`, under this lock too.
            let reason = if was_live {
                Some(ExitReason::Shutdown)
            } else if self.retired {
                Some(ExitReason::Retired)
            } else {
                None
            };
            let wake = reason.filter(|_| was_live).map(|reason| {
                self.shared.events.emit_deferred(Event::WorkerExited {
                    worker: self.id(),
                    reason,
                })
            });
            (reason, reg.live.is_empty(), wake)
        };
        // Async readers are woken with no crew lock held.
        drop(wake);
        if let Some(reason) = reason {
            trace::worker_exited(self.id(), reason);
        }
        if last && self.shared.is_closed() {
            // A submission that raced with close takes itself back; anything else
            // still queued has no worker left to run it.
            // (The drain also ends the event stream, after its own events.)
            self.shared.drain(Failure::Closed);
        }
        if self.retired && self.shared.is_elastic() && !self.shared.injectors.is_empty() {
            // A task submitted as this worker retired may have found it still
            // counted (so no growth) and spent its wake-up on it (handed over
            // by `stop_waiting` only if another worker sleeps): with a minimum
            // of 0 nobody else would run it. Grow for it (`maybe_grow` sees
            // this worker gone).
            self.shared.maybe_grow();
        }
        self.shared.exited.notify_all();
        self.shared.notify_idle();
    }
}
