//! The thread backend: worker threads in this process.
//!
//! - [`Shared`] is everything the pool handle, the workers and the monitor share:
//!   the queues, the sleep state, the lifecycle, the worker registry and the
//!   counters.
//! - `worker_loop` is the body of each worker thread.
//! - `executor` is each worker thread's set of async tasks in flight.
//! - `monitor` is a helper thread, started on first need, that enforces running
//!   tasks' timeouts and replaces threads that had to be abandoned.
//!
//! # Who owns what
//!
//! - A worker's `W` instance and its own deque (`crossbeam_deque::Worker`) are owned
//!   by its thread and never leave it (so `W` need not be `Send`).
//! - A worker's [`Slot`] is shared: the pool reads its counters, steals from its
//!   deque through the slot's `Stealer`, and kills it through `running`.
//! - Each task's cell is shared by the queue entry, the running slot, and the
//!   caller's handle (see `task::cell`).
//!
//! # Counting, and why `wait_idle` needs no per-task shared write
//!
//! Every queue entry is counted exactly once, by whoever finishes with it: the
//! worker that ran it (or popped its tombstone) in its own slot's counters, the
//! thread that drained it, or the thread that abandoned the worker running it, in
//! `Shared::counts`. The pool is idle when those counts add up to `submitted`. A
//! worker writes only its own cache line per task; the sum is taken under the
//! registry lock on the slow path (`is_idle`, `stats`).

mod capacity;
mod executor;
mod idle;
mod monitor;
mod worker_loop;

use std::cell::Cell as StdCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_deque::{Stealer, Worker as Deque};
use crossbeam_utils::CachePadded;

use crate::backend::{Admission, Config, WhenFull};
use crate::error::{panic_message, Failure, ShutdownTimedOut, SubmitError};
use crate::events::{Bus, Event, ExitReason, TaskOutcome};
use crate::messages::{Mail, Mailbox, MessageBus};
use crate::scheduler::queues::Injectors;
use crate::scheduler::sleep::{Sleep, Sleeper};
use crate::stats::{Figures, OutcomeCounts, Stats, Timings, WorkerFigures};
use crate::sync::{
    after, lock, modelled, wait_until, Arc, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex,
};
use crate::task::cell::{new_cell, Job, Outcome, Payload, Started};
use crate::task::{Priority, Task, TaskId, TaskOptions};
use crate::worker::{Context, Worker, WorkerId};

use capacity::Capacity;
use idle::Idle;
pub(crate) use idle::IdleFuture;
use monitor::Monitor;

/// Lifecycle bit: no new work is taken; workers drain the queue, then exit.
const CLOSING: usize = 1 << 0;
/// Lifecycle bit: queued work is being discarded; workers exit after their task.
/// Always set together with or after `CLOSING`.
const TERMINATING: usize = 1 << 1;
/// Lifecycle bit: `start_attempts` consecutive starts failed and no worker is
/// alive; tasks fail at once with a start error. Cleared by the next good start.
const BROKEN: usize = 1 << 2;

/// A pool times each of its first this many tasks (see [`Shared::timed`])...
pub(super) const TIME_ALL: u64 = 4096;
/// ... and then one task in this many.
pub(super) const TIME_ONE_IN: u64 = 8;

/// The part of a batch the pool did not take: the refused payload and the ones
/// after it.
pub(crate) type Rejected<P> = (SubmitError<P>, Vec<P>);

/// Per-outcome counters; index = `Outcome as usize`.
type Counts = [AtomicU64; Outcome::SLOTS];

fn new_counts() -> Counts {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One worker's shared face.
pub(crate) struct Slot<W: Worker> {
    pub(crate) id: WorkerId,
    /// Messages from the pool, for `Worker::on_message` between tasks
    /// (`messages.rs`). `has_mail` is set after every push, under the mailbox
    /// lock, and read by the worker once per task (`Relaxed`: a message seen one
    /// task late is still between tasks).
    pub(crate) mail: Mutex<Mailbox<W::Message>>,
    pub(crate) has_mail: AtomicBool,
    /// The other end of the worker's own deque.
    stealer: Stealer<Job<W>>,
    pub(crate) sleeper: modelled::Arc<Sleeper>,
    /// The tasks being run and the worker's latency record. The worker takes this
    /// lock twice per task anyway (to publish and to take back its running
    /// entry), so recording wait and run times under it costs no extra lock;
    /// `stats()` takes it briefly to merge, so it is rarely contended.
    work: Mutex<Work<W>>,
    /// When the worker was created (for `Stats::worker_time`).
    born: Instant,
    /// Set by the worker when it leaves its loop (`WorkerState::Stopping`).
    stopping: AtomicBool,
    /// Set once, by `abandon`: the pool no longer counts this worker; its thread
    /// exits as soon as it gets control back.
    abandoned: AtomicBool,
    /// `Worker::start` succeeded and `stop` has not run. Written under the registry
    /// lock.
    started: AtomicBool,
    /// Tasks this worker finished, by outcome. Written only by the worker thread.
    counts: CachePadded<Counts>,
    /// Set (under the registry lock) once `counts` were added to the retired
    /// totals; the slot is then no longer summed.
    counts_retired: AtomicBool,
}

/// What a worker's slot lock guards.
struct Work<W> {
    /// The task being run on the worker's stack, published so a timeout or a
    /// kill can resolve it. Written by the worker around each task (an async
    /// task's entry moves to `suspended` once its first poll left it pending);
    /// taken by `abandon`. Whoever takes an entry counts its task (and records
    /// its run time), so it is counted once even when the two race.
    running: Option<Running<W>>,
    /// Async tasks in flight, oldest first (at most `concurrency`), each until
    /// its future ends. Kept apart from `running` so that a synchronous task
    /// costs what it did before async tasks existed.
    suspended: Vec<Running<W>>,
    /// Wait and run times of this worker's tasks. Written by whoever takes an
    /// entry (and by the worker when a task starts); read by `stats()`.
    timings: Timings,
}

impl<W> Work<W> {
    /// Every task in flight, oldest first (a running synchronous task started
    /// after every suspended one).
    fn entries(&self) -> impl Iterator<Item = &Running<W>> {
        self.suspended.iter().chain(self.running.iter())
    }

    fn entries_mut(&mut self) -> impl Iterator<Item = &mut Running<W>> {
        self.suspended.iter_mut().chain(self.running.iter_mut())
    }

    fn is_empty(&self) -> bool {
        self.running.is_none() && self.suspended.is_empty()
    }

    /// Takes every entry, oldest first.
    fn take_all(&mut self) -> Vec<Running<W>> {
        let mut all = std::mem::take(&mut self.suspended);
        all.extend(self.running.take());
        all
    }
}

struct Running<W> {
    job: Job<W>,
    deadline: Option<Instant>,
    /// When the task started, if it is timed (see the worker loop's sampling).
    started: Option<Instant>,
    /// How many tasks its run time stands for in the busy time (0: not sampled).
    weight: u32,
    /// How long it waited between submit and start.
    waited: Duration,
    /// Whether a subscriber was present when it started (its `TaskStarted` was
    /// emitted): whoever takes this entry emits the matching `TaskFinished`.
    observed: bool,
    /// Set by the monitor when it resolved the task as timed out: abandon the
    /// thread if it is still in this task at this instant.
    abandon_at: Option<Instant>,
    /// Its tracing span (zero-sized without the `tracing` feature), closed by
    /// whoever counts the task on the worker.
    span: crate::trace::TaskSpan,
}

impl<W: Worker> Slot<W> {
    fn finished(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Acquire)).sum()
    }

    /// Adds one to the worker's own counter for `outcome` (single writer).
    #[inline]
    fn count(&self, outcome: Outcome) {
        let c = &self.counts[outcome as usize];
        c.store(c.load(Relaxed) + 1, Release);
    }
}

/// The registry of workers. Guarded by `Shared::registry`.
struct Registry<W: Worker> {
    /// Workers the pool counts: starting, running or idle.
    live: Vec<Arc<Slot<W>>>,
    /// Threads given up on (timed out, killed) that have not exited yet. Their
    /// deques stay stealable.
    abandoned: Vec<Arc<Slot<W>>>,
    /// Join handles of threads that were not abandoned, by worker. `abandon`
    /// drops a thread's handle (detaching it), so `shutdown` never waits for a
    /// thread stuck in user code.
    handles: Vec<(WorkerId, JoinHandle<()>)>,
    /// Counts of workers that have exited.
    retired: [u64; Outcome::SLOTS],
    /// Latency records of workers that have exited, and of tasks run on the
    /// caller (`CallerRuns`).
    retired_timings: Timings,
    /// `Stats::worker_time` of workers that have exited.
    retired_worker_time: Duration,
    /// Live workers whose `start` succeeded.
    started: usize,
    /// Consecutive failed starts, pool-wide.
    start_failures: u32,
    last_start_error: Option<String>,
    /// Replacement workers that could not be spawned yet; the monitor retries
    /// them at `retry_at`, backing off like failed starts.
    missing: usize,
    retry_at: Option<Instant>,
    retry_delay: std::time::Duration,
    /// Stealers of every worker, for searching workers to copy.
    peers: Arc<Vec<(WorkerId, Stealer<Job<W>>)>>,
}

/// What the pool handle, the workers and the monitor share.
pub(crate) struct Shared<W: Worker> {
    pub(crate) config: Config,
    injectors: Injectors<Job<W>>,
    pub(crate) sleep: Sleep,
    /// `CLOSING` / `TERMINATING` / `BROKEN`.
    lifecycle: AtomicUsize,
    /// Tasks accepted; also the source of task ids. Written by submitters.
    submitted: CachePadded<AtomicU64>,
    /// Outcomes counted outside the workers: drained and abandoned tasks.
    counts: Counts,
    registry: Mutex<Registry<W>>,
    /// Signalled when a worker exits.
    exited: Condvar,
    /// Bumped whenever `Registry::peers` changes, so workers know to re-copy it.
    peers_epoch: AtomicUsize,
    next_worker: AtomicU64,
    idle: Idle,
    monitor: Monitor,
    /// The queue bound, if `queue_capacity` was set.
    capacity: Option<Capacity>,
    /// `Registry::live.len()`, readable without the lock (elastic sizing).
    live_count: AtomicUsize,
    /// Set while one thread is growing the pool, so a burst adds one worker at a
    /// time.
    growing: AtomicBool,
    /// Event subscribers (`events.rs`). Emitted to by workers, the monitor,
    /// drainers and abandoners.
    pub(crate) events: Arc<Bus>,
    /// Worker-to-pool message subscribers (`messages.rs`).
    pub(crate) messages: Arc<MessageBus<W::Message>>,
    /// Every sticky broadcast so far, in order: replayed to each new worker state.
    pub(crate) sticky: Mutex<Vec<W::Message>>,
    /// Threads inside `drain` now. The event stream ends only when the pool is
    /// closed, no worker is live and nobody is draining (`maybe_close_events`).
    draining: AtomicUsize,
    /// When the pool was built (`Stats::uptime`).
    created: Instant,
    /// Back-reference for spawning workers from `&self` contexts.
    this: Weak<Shared<W>>,
}

thread_local! {
    /// On a worker thread: (address of its pool's `Shared`, its own deque). Lets a
    /// task spawned from inside a worker go to that worker's deque.
    static CURRENT: StdCell<(usize, *const ())> = const { StdCell::new((0, std::ptr::null())) };
}

impl<W: Worker> Shared<W> {
    /// Creates the shared state and starts `config.workers` threads.
    pub(crate) fn start(config: Config) -> std::io::Result<Arc<Self>> {
        let workers = config.workers;
        let capacity = config.queue_capacity.map(Capacity::new);
        let events = Arc::new(Bus::new(config.event_buffer));
        let config_event_buffer = config.event_buffer;
        let shared = Arc::new_cyclic(|this| Shared {
            config,
            injectors: Injectors::new(),
            sleep: Sleep::new(),
            lifecycle: AtomicUsize::new(0),
            submitted: CachePadded::new(AtomicU64::new(0)),
            counts: new_counts(),
            registry: Mutex::new(Registry {
                live: Vec::new(),
                abandoned: Vec::new(),
                handles: Vec::new(),
                retired: [0; Outcome::SLOTS],
                retired_timings: Timings::new(),
                retired_worker_time: Duration::ZERO,
                started: 0,
                start_failures: 0,
                last_start_error: None,
                missing: 0,
                retry_at: None,
                retry_delay: std::time::Duration::ZERO,
                peers: Arc::new(Vec::new()),
            }),
            exited: Condvar::new(),
            peers_epoch: AtomicUsize::new(0),
            next_worker: AtomicU64::new(0),
            idle: Idle::new(),
            monitor: Monitor::new(),
            capacity,
            live_count: AtomicUsize::new(0),
            growing: AtomicBool::new(false),
            events,
            messages: Arc::new(Bus::new(config_event_buffer)),
            sticky: Mutex::new(Vec::new()),
            draining: AtomicUsize::new(0),
            created: Instant::now(),
            this: this.clone(),
        });
        for _ in 0..workers {
            if let Err(e) = shared.spawn_worker() {
                shared.terminate();
                return Err(e);
            }
        }
        Ok(shared)
    }

    fn key(&self) -> usize {
        self as *const Self as usize
    }

    fn arc(&self) -> Option<Arc<Self>> {
        self.this.upgrade()
    }

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
    fn enqueue<P>(
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
        let timeout = options.timeout.or(self.config.default_timeout);
        let cell = new_cell(id, options.priority, timeout, bounded, queued_at, payload);
        crate::trace::queued(id);
        self.push(Job::new(cell.clone()), options.priority, notify);
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
        if self.sleep.notify_work() && self.config.is_elastic() {
            self.maybe_grow();
        }
        (tasks, rejected)
    }

    /// `WhenFull::CallerRuns`: runs the task here, on a fresh worker instance.
    #[cold]
    fn run_on_caller<P>(&self, payload: P, options: TaskOptions) -> Task<P::Output, P::Error>
    where
        P: Payload<W>,
    {
        let id = TaskId(self.submitted.fetch_add(1, Relaxed) + 1);
        let queued_at = Instant::now();
        let cell = new_cell(id, options.priority, None, false, Some(queued_at), payload);
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
    fn popped(&self, bounded: bool) {
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
    fn push(&self, job: Job<W>, priority: Priority, notify: bool) {
        let job = if priority == Priority::Normal {
            self.push_local(job)
        } else {
            Some(job)
        };
        if let Some(job) = job {
            self.injectors.push(job, priority);
        }
        if notify && self.sleep.notify_work() && self.config.is_elastic() {
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
            if live >= self.config.max_workers || !wanted || self.spawn_worker().is_err() {
                break;
            }
        }
        self.growing.store(false, Release);
    }

    /// An idle worker of an elastic pool asks to retire. Granted (and the worker
    /// removed from the pool's count) only while the pool is above its minimum.
    fn try_retire(&self, slot: &Arc<Slot<W>>) -> bool {
        let mut reg = lock(&self.registry);
        if reg.live.len() <= self.config.workers || slot.abandoned.load(SeqCst) {
            return false;
        }
        let Some(at) = reg.live.iter().position(|s| Arc::ptr_eq(s, slot)) else {
            return false;
        };
        // It exits at once and hands its own deque back to the injector. It is
        // idle, so its counts are final: move them to the retired totals now, so
        // the pool's counters stay whole while its `Worker::stop` runs.
        reg.live.swap_remove(at);
        self.live_count.store(reg.live.len(), Relaxed);
        Self::retire_counts(&mut reg, slot);
        if slot.started.swap(false, SeqCst) {
            reg.started -= 1;
        }
        self.publish_peers(&mut reg);
        true
    }

    /// Pushes onto the current thread's deque if it is a worker of this pool;
    /// gives the job back otherwise.
    #[inline]
    fn push_local(&self, job: Job<W>) -> Option<Job<W>> {
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

    // ------------------------------------------------------------ workers

    /// Starts one more worker thread.
    pub(crate) fn spawn_worker(&self) -> std::io::Result<()> {
        let Some(shared) = self.arc() else {
            return Ok(()); // the pool is being dropped
        };
        let id = WorkerId::new(self.next_worker.fetch_add(1, Relaxed) + 1);
        let deque = Deque::new_fifo();
        let slot = Arc::new(Slot {
            id,
            mail: Mutex::new(Mailbox::default()),
            has_mail: AtomicBool::new(false),
            stealer: deque.stealer(),
            sleeper: modelled::Arc::new(Sleeper::new()),
            work: Mutex::new(Work {
                running: None,
                // Room for every async task in flight (none allocated for a pool
                // of one task per worker until it runs an async task).
                suspended: match self.config.concurrency {
                    1 => Vec::new(),
                    n => Vec::with_capacity(n.min(64)),
                },
                timings: Timings::new(),
            }),
            born: Instant::now(),
            stopping: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            started: AtomicBool::new(false),
            counts: CachePadded::new(new_counts()),
            counts_retired: AtomicBool::new(false),
        });
        let mut builder =
            std::thread::Builder::new().name(format!("{}-{}", self.config.thread_name, id.raw()));
        if let Some(size) = self.config.stack_size {
            builder = builder.stack_size(size);
        }
        {
            let mut reg = lock(&self.registry);
            // Checked under the lock that adds the worker: growth and a
            // replacement racing each other must not take the pool past its
            // maximum (each saw room before the other added its worker).
            if reg.live.len() >= self.config.max_workers {
                return Ok(());
            }
            reg.live.push(Arc::clone(&slot));
            self.live_count.store(reg.live.len(), Relaxed);
            self.publish_peers(&mut reg);
        }
        let thread_slot = Arc::clone(&slot);
        let body = move || worker_loop::run(shared, thread_slot, deque);
        // Outside the registry lock, and a panicking handler is an error like any
        // other: the handler is user code.
        let spawned = match &self.config.spawn_handler {
            Some(handler) => catch_unwind(AssertUnwindSafe(|| handler(builder, Box::new(body))))
                .unwrap_or_else(|panic| {
                    Err(std::io::Error::other(format!(
                        "spawn_handler panicked: {}",
                        panic_message(&*panic)
                    )))
                }),
            None => builder.spawn(body),
        };
        let mut reg = lock(&self.registry);
        match spawned {
            Ok(handle) => {
                reg.handles.retain(|(_, h)| !h.is_finished());
                if !slot.abandoned.load(SeqCst) {
                    reg.handles.push((id, handle));
                }
                Ok(())
            }
            Err(e) => {
                reg.live.retain(|s| !Arc::ptr_eq(s, &slot));
                self.live_count.store(reg.live.len(), Relaxed);
                self.publish_peers(&mut reg);
                drop(reg);
                // The thread never ran: the worker failed to start, once (its
                // retry gets a new id).
                self.events.emit(Event::WorkerStartFailed {
                    worker: id,
                    message: format!("could not start the worker thread: {e}"),
                    consecutive: 1,
                });
                Err(e)
            }
        }
    }

    /// Starts a replacement for a worker that left; on failure the monitor retries
    /// after a backoff.
    fn replace_worker(&self) {
        if self.lifecycle.load(Acquire) & TERMINATING != 0 {
            return;
        }
        if self.spawn_worker().is_err() {
            let retry_at = self.schedule_retry(1);
            if let Some(shared) = self.arc() {
                self.monitor.wake_at(&shared, retry_at);
            }
        }
    }

    /// Records `failed` spawns to retry and returns when: `start_backoff` after
    /// the first failure, doubling while failures go on (up to `max_start_backoff`).
    fn schedule_retry(&self, failed: usize) -> Instant {
        let mut reg = lock(&self.registry);
        reg.missing += failed;
        reg.retry_delay = if reg.retry_delay.is_zero() {
            self.config.start_backoff
        } else {
            reg.retry_delay
                .saturating_mul(2)
                .min(self.config.max_start_backoff)
        };
        let at = after(Instant::now(), reg.retry_delay);
        reg.retry_at = Some(at);
        at
    }

    /// Called by the monitor: retries replacements that failed to spawn, once
    /// their backoff has passed. Returns when to look again.
    fn respawn_missing(&self, now: Instant) -> Option<Instant> {
        let missing = {
            let mut reg = lock(&self.registry);
            match reg.retry_at {
                _ if reg.missing == 0 => return None,
                Some(at) if at > now => return Some(at),
                _ => std::mem::take(&mut reg.missing),
            }
        };
        let mut failed = 0;
        for _ in 0..missing {
            if self.lifecycle.load(Acquire) & TERMINATING != 0 {
                break;
            }
            if self.spawn_worker().is_err() {
                failed += 1;
            }
        }
        if failed == 0 {
            lock(&self.registry).retry_delay = std::time::Duration::ZERO;
            return None;
        }
        Some(self.schedule_retry(failed))
    }

    /// Moves a leaving worker's counts into the retired totals, once.
    fn retire_counts(reg: &mut Registry<W>, slot: &Slot<W>) {
        if slot.counts_retired.swap(true, SeqCst) {
            return;
        }
        for (i, c) in slot.counts.iter().enumerate() {
            reg.retired[i] += c.load(Acquire);
        }
        reg.retired_timings.add(&lock(&slot.work).timings);
        reg.retired_worker_time += slot.born.elapsed();
    }

    fn publish_peers(&self, reg: &mut Registry<W>) {
        let peers = reg
            .live
            .iter()
            .chain(reg.abandoned.iter())
            .map(|s| (s.id, s.stealer.clone()))
            .collect();
        reg.peers = Arc::new(peers);
        self.peers_epoch.fetch_add(1, Release);
    }

    /// The current peer list and its epoch.
    fn peers(&self) -> (usize, Arc<Vec<(WorkerId, Stealer<Job<W>>)>>) {
        let reg = lock(&self.registry);
        (self.peers_epoch.load(Acquire), Arc::clone(&reg.peers))
    }

    /// Gives up on a worker: its running tasks (if any) resolve with `failure`, the
    /// pool stops counting it, and a replacement starts. The thread exits when it
    /// gets control back; if it never does, it is left behind (threads cannot be
    /// killed). Returns false if the worker was not live.
    ///
    /// With async tasks in flight, one task's timeout abandons the thread they
    /// all share: the tasks that did not time out themselves resolve as killed.
    ///
    /// Events: each running task's `TaskFinished` (if it was observed), then the
    /// worker's `WorkerExited` (`Killed` or `Abandoned`). Taking the `Running`
    /// entries is what makes this thread, and not the worker, the one that counts
    /// the tasks and emits their terminal events.
    pub(crate) fn abandon(&self, slot: &Arc<Slot<W>>, failure: Failure) -> bool {
        let reason = match failure {
            Failure::Killed => ExitReason::Killed,
            _ => ExitReason::Abandoned,
        };
        {
            let mut reg = lock(&self.registry);
            let Some(at) = reg.live.iter().position(|s| Arc::ptr_eq(s, slot)) else {
                return false;
            };
            slot.abandoned.store(true, SeqCst);
            let slot = reg.live.swap_remove(at);
            self.live_count.store(reg.live.len(), Relaxed);
            reg.handles.retain(|(id, _)| *id != slot.id); // detach
            if slot.started.swap(false, SeqCst) {
                reg.started -= 1;
            }
            reg.abandoned.push(slot);
        }
        // Resolve first (outside the lock: resolving wakes the caller's waker),
        // then take the entries: a worker leaving with async tasks in flight waits
        // for its entries to be gone before it drops their futures, so each task
        // ends with this failure, not as closed.
        let failure_of = |r: &Running<W>| match failure {
            // Timed out by the monitor (it noted when to abandon): its own
            // timeout; otherwise a bystander of another task's.
            Failure::TimedOut if r.abandon_at.is_none() => Failure::Killed,
            _ => failure.clone(),
        };
        let doomed: Vec<(Job<W>, Failure)> = lock(&slot.work)
            .entries()
            .map(|r| (r.job.clone(), failure_of(r)))
            .collect();
        for (job, failure) in doomed {
            job.fail(failure);
        }
        // Whoever takes an entry counts its task (and records its run time):
        // here, or the worker if its task returned meanwhile.
        let taken: Vec<(Running<W>, Duration)> = {
            let mut work = lock(&slot.work);
            let running = work.take_all();
            running
                .into_iter()
                .map(|running| {
                    let ran = running.started.map_or(Duration::ZERO, |s| s.elapsed());
                    if running.weight > 0 {
                        work.timings.record_run(ran, running.weight);
                    }
                    (running, ran)
                })
                .collect()
        };
        for (running, ran) in taken {
            // A no-op for the tasks resolved above; this resolves one the worker
            // published after they were collected.
            running.job.fail(failure_of(&running));
            let outcome = running.job.header().settled_outcome();
            self.count(outcome);
            if running.observed {
                self.events.emit(Event::TaskFinished {
                    task: running.job.header().id(),
                    worker: slot.id,
                    outcome: outcome.into(),
                    waited: running.waited,
                    ran,
                });
            }
        }
        crate::trace::worker_exited(slot.id, reason);
        self.events.emit(Event::WorkerExited {
            worker: slot.id,
            reason,
        });
        self.sleep.wake_worker(&slot.sleeper);
        self.replace_worker();
        // Its deque may hold work and every other worker may be asleep.
        self.sleep.notify_work();
        self.notify_idle();
        true
    }

    /// `Pool::kill_worker`.
    pub(crate) fn kill_worker(&self, id: WorkerId) -> bool {
        let slot = lock(&self.registry)
            .live
            .iter()
            .find(|s| s.id == id)
            .cloned();
        slot.is_some_and(|slot| self.abandon(&slot, Failure::Killed))
    }

    // ------------------------------------------------------------ messages

    /// Puts `message` in every live worker's mailbox (and, if `sticky`, in the
    /// list every later worker state gets at its start).
    pub(crate) fn broadcast(&self, message: W::Message, sticky: bool) {
        // The sticky list's lock is held while mailboxes are filled, so a worker
        // that replays the list at its start (under the same lock) and the
        // `Sticky(n)` entries in its mailbox agree on what it already has.
        let mut list = lock(&self.sticky);
        let index = sticky.then(|| {
            list.push(message.clone());
            list.len() - 1
        });
        let slots: Vec<Arc<Slot<W>>> = lock(&self.registry).live.clone();
        for slot in &slots {
            let mail = match index {
                Some(n) => Mail::Sticky(n),
                None => Mail::Plain(message.clone()),
            };
            self.deliver(slot, mail);
        }
        drop(list);
    }

    /// Puts `message` in worker `id`'s mailbox; gives it back if no live
    /// worker has that id.
    pub(crate) fn send_to(&self, id: WorkerId, message: W::Message) -> Result<(), W::Message> {
        let slot = lock(&self.registry)
            .live
            .iter()
            .find(|s| s.id == id)
            .cloned();
        match slot {
            Some(slot) => {
                self.deliver(&slot, Mail::Plain(message));
                Ok(())
            }
            None => Err(message),
        }
    }

    fn deliver(&self, slot: &Slot<W>, mail: Mail<W::Message>) {
        {
            let mut mailbox = lock(&slot.mail);
            mailbox.queue.push_back(mail);
            slot.has_mail.store(true, SeqCst);
        }
        // An idle worker is parked: wake it to read its mail now.
        self.sleep.wake_worker(&slot.sleeper);
    }

    /// The ids of the workers the pool counts, oldest first.
    pub(crate) fn worker_ids(&self) -> Vec<WorkerId> {
        let mut ids: Vec<WorkerId> = lock(&self.registry).live.iter().map(|s| s.id).collect();
        ids.sort();
        ids
    }

    // ------------------------------------------------------------ starting

    /// Records a good start and emits `WorkerStarted` (or `WorkerRestarted` with
    /// `restarted`'s reason). False if the worker was abandoned meanwhile.
    fn on_started(&self, slot: &Slot<W>, restarted: Option<String>) -> bool {
        // Declared before the guard, so dropped (and its wakers woken) after it.
        let _wake;
        let mut reg = lock(&self.registry);
        if slot.abandoned.load(SeqCst) {
            return false;
        }
        slot.started.store(true, SeqCst);
        reg.started += 1;
        reg.start_failures = 0;
        self.lifecycle.fetch_and(!BROKEN, SeqCst);
        // Under the registry lock: `abandon` removes the worker under it too and
        // emits `WorkerExited` after, so the two can never arrive swapped.
        crate::trace::worker_started(slot.id);
        let event = match restarted {
            None => Event::WorkerStarted { worker: slot.id },
            Some(reason) => Event::WorkerRestarted {
                worker: slot.id,
                reason,
            },
        };
        _wake = self.events.emit_deferred(event);
        true
    }

    fn on_start_failed(&self, message: String) {
        let trip = {
            let mut reg = lock(&self.registry);
            reg.start_failures += 1;
            reg.last_start_error = Some(message.clone());
            reg.start_failures >= self.config.start_attempts && reg.started == 0
        };
        if trip {
            self.lifecycle.fetch_or(BROKEN, SeqCst);
            self.drain(Failure::StartFailed(message));
        }
    }

    fn last_start_error(&self) -> String {
        lock(&self.registry)
            .last_start_error
            .clone()
            .unwrap_or_else(|| "Worker::start failed".to_owned())
    }

    fn on_stopped(&self, slot: &Slot<W>) {
        let mut reg = lock(&self.registry);
        if slot.started.swap(false, SeqCst) {
            reg.started -= 1;
        }
    }

    // ------------------------------------------------------------ lifecycle

    #[inline]
    fn lifecycle(&self) -> usize {
        self.lifecycle.load(Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lifecycle() & CLOSING != 0
    }

    /// Stops taking new work; workers drain the queue and exit. Does not wait.
    pub(crate) fn close(&self) {
        self.lifecycle.fetch_or(CLOSING, SeqCst);
        self.wake_everyone();
        if let Some(capacity) = &self.capacity {
            capacity.wake(true); // blocked submitters give their input back
        }
    }

    fn wake_everyone(&self) {
        self.sleep.wake_all();
        let slots: Vec<Arc<Slot<W>>> = {
            let reg = lock(&self.registry);
            reg.live
                .iter()
                .chain(reg.abandoned.iter())
                .cloned()
                .collect()
        };
        for slot in slots {
            slot.sleeper.unpark(); // workers waiting out a start backoff
        }
    }

    /// Closes the pool and waits for every worker to finish the queue and exit, at
    /// most until `deadline`; past it, terminates.
    pub(crate) fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        self.close();
        let drained = self.wait_for_exit(deadline);
        if !drained {
            self.terminate();
        }
        let handles = {
            let mut reg = lock(&self.registry);
            std::mem::take(&mut reg.handles)
        };
        let mut still_running = 0;
        for (_, handle) in handles {
            if handle.is_finished() || drained {
                let _ = handle.join();
            } else {
                still_running += 1; // detached: it runs user code that has not returned
            }
        }
        self.monitor.stop();
        self.notify_idle();
        self.maybe_close_events();
        if drained {
            Ok(())
        } else {
            Err(ShutdownTimedOut { still_running })
        }
    }

    /// Waits until no live worker is left. False if `deadline` passed first.
    fn wait_for_exit(&self, deadline: Option<Instant>) -> bool {
        let mut reg = lock(&self.registry);
        while !reg.live.is_empty() {
            match wait_until(&self.exited, reg, deadline) {
                Ok(r) => reg = r,
                Err(_) => return false,
            }
        }
        true
    }

    /// Resolves every queued task as closed and every running one as cancelled;
    /// workers exit when they get control back. Does not wait for them.
    pub(crate) fn terminate(&self) {
        self.lifecycle.fetch_or(CLOSING | TERMINATING, SeqCst);
        self.drain(Failure::Closed);
        let slots: Vec<Arc<Slot<W>>> = lock(&self.registry).live.clone();
        for slot in &slots {
            // Resolve outside the lock: resolving wakes the caller's waker, which is
            // user code.
            let jobs: Vec<Job<W>> = lock(&slot.work).entries().map(|r| r.job.clone()).collect();
            for job in jobs {
                job.fail(Failure::Cancelled);
            }
        }
        self.wake_everyone();
        self.notify_idle();
    }

    /// Takes every queued job out of every queue and resolves it with `failure`.
    fn drain(&self, failure: Failure) {
        self.draining.fetch_add(1, SeqCst);
        while let Some(job) = self.injectors.steal_any() {
            self.discard(job, &failure);
        }
        let (_, peers) = self.peers();
        for (_, stealer) in peers.iter() {
            loop {
                match stealer.steal() {
                    crossbeam_deque::Steal::Success(job) => self.discard(job, &failure),
                    crossbeam_deque::Steal::Retry => continue,
                    crossbeam_deque::Steal::Empty => break,
                }
            }
        }
        self.draining.fetch_sub(1, SeqCst);
        self.notify_idle();
        self.maybe_close_events();
    }

    /// Ends the event stream once nothing can emit any more: the pool is closed,
    /// no worker is live, and no thread is draining. The last worker calls it
    /// after its final drain, and so does every drain: if the last worker's check
    /// saw another drain in progress, that drain's own check (after its `SeqCst`
    /// decrement, which synchronizes with the worker's) sees the registry empty
    /// and closes the stream after its own events.
    fn maybe_close_events(&self) {
        if self.lifecycle.load(SeqCst) & CLOSING == 0 || self.draining.load(SeqCst) != 0 {
            return;
        }
        if lock(&self.registry).live.is_empty() {
            self.events.close();
            self.messages.close();
        }
    }

    /// Resolves a popped queue entry with `failure` (if nobody resolved it first),
    /// counts it, and emits its `TaskDiscarded`.
    fn discard(&self, job: Job<W>, failure: &Failure) {
        self.popped(job.header().bounded);
        job.discard(failure.clone());
        let outcome = job.header().settled_outcome();
        self.count(outcome);
        if self.events.is_active() {
            self.events.emit(Event::TaskDiscarded {
                task: job.header().id(),
                outcome: outcome.into(),
            });
        }
    }

    /// Counts one task finished outside a worker (drained or abandoned).
    fn count(&self, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, SeqCst);
    }

    // ------------------------------------------------------------ idle

    /// True when every accepted task has been finished with, or when the pool is
    /// closed and no worker is left to run anything.
    pub(crate) fn is_idle(&self) -> bool {
        let reg = lock(&self.registry);
        if self.lifecycle() & CLOSING != 0 && reg.live.is_empty() {
            return true;
        }
        let done = self.done(&reg);
        done >= self.submitted.load(SeqCst)
    }

    fn done(&self, reg: &Registry<W>) -> u64 {
        let slots: u64 = reg
            .live
            .iter()
            .chain(reg.abandoned.iter())
            .filter(|s| !s.counts_retired.load(Acquire))
            .map(|s| s.finished())
            .sum();
        let shared: u64 = self.counts.iter().map(|c| c.load(SeqCst)).sum();
        slots + shared + reg.retired.iter().sum::<u64>()
    }

    pub(crate) fn notify_idle(&self) {
        self.idle.notify(|| self.is_idle());
    }

    pub(crate) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        self.idle.wait(|| self.is_idle(), deadline)
    }

    pub(crate) fn idle_future(self: &Arc<Self>) -> IdleFuture<W> {
        IdleFuture::new(Arc::clone(self))
    }

    // ------------------------------------------------------------ stats

    pub(crate) fn stats(&self) -> Stats {
        let reg = lock(&self.registry);
        let mut by_outcome = reg.retired;
        for (i, c) in self.counts.iter().enumerate() {
            by_outcome[i] += c.load(SeqCst);
        }
        let mut timings = reg.retired_timings.clone();
        let mut worker_time = reg.retired_worker_time;
        let mut busy_so_far = Duration::ZERO;
        let now = Instant::now();
        let mut workers = Vec::with_capacity(reg.live.len());
        for slot in reg.live.iter().chain(reg.abandoned.iter()) {
            let abandoned = slot.abandoned.load(Relaxed);
            // Under the worker's lock: merge its record, read its running tasks
            // (with async tasks, several: each counts in the busy time so far).
            let (current_task, tasks_running, so_far, busy, run) = {
                let work = lock(&slot.work);
                timings.add(&work.timings);
                let so_far: Duration = work
                    .entries()
                    .filter_map(|r| r.started)
                    .map(|s| now.saturating_duration_since(s))
                    .sum();
                let current = work.entries().next().map(|r| r.job.header().id());
                let count = work.entries().count();
                (
                    current,
                    count,
                    so_far,
                    work.timings.busy() + so_far,
                    (!abandoned).then(|| work.timings.run_latency()),
                )
            };
            busy_so_far += so_far;
            worker_time += now.saturating_duration_since(slot.born);
            let mut done = 0;
            for (i, c) in slot.counts.iter().enumerate() {
                let n = c.load(Acquire);
                by_outcome[i] += n;
                done += n;
            }
            // An abandoned thread is no longer a worker: no row.
            if let Some(run) = run {
                workers.push(WorkerFigures {
                    id: slot.id,
                    started: slot.started.load(Relaxed),
                    stopping: slot.stopping.load(Relaxed),
                    current_task,
                    occupied: tasks_running,
                    tasks_done: done,
                    busy_time: busy,
                    run,
                    pid: None,
                    rss_bytes: None,
                });
            }
        }
        Figures {
            submitted: self.submitted.load(SeqCst),
            outcomes: OutcomeCounts::from_slots(by_outcome),
            abandoned_threads: reg.abandoned.len(),
            start_failures: reg.start_failures,
            last_start_error: reg.last_start_error.clone(),
            timings,
            uptime: now.saturating_duration_since(self.created),
            busy_so_far,
            worker_time,
            workers,
        }
        .into_stats()
    }

    // ------------------------------------------------------------ monitor

    /// Enforces timeouts of running tasks. Returns the next instant it must look
    /// again. Called by the monitor thread.
    fn check_deadlines(&self, now: Instant) -> Option<Instant> {
        let slots: Vec<Arc<Slot<W>>> = lock(&self.registry).live.clone();
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for slot in slots {
            // What is due on this worker, collected under its lock and acted on
            // after it: resolving wakes the caller's waker (user code).
            let mut expired: Vec<Job<W>> = Vec::new();
            let mut abandon = false;
            {
                let work = lock(&slot.work);
                for r in work.entries() {
                    let Some(deadline) = r.deadline else { continue };
                    match r.abandon_at {
                        None if deadline <= now => expired.push(r.job.clone()),
                        None => earliest(deadline),
                        Some(at) if at <= now => abandon = true,
                        Some(at) => earliest(at),
                    }
                }
            }
            if abandon {
                // A task still inside its code a grace after its timeout: the
                // thread is stuck in it (and any other task on it with it).
                self.abandon(&slot, Failure::TimedOut);
                continue;
            }
            for job in expired {
                let timed_out = job.fail(Failure::TimedOut);
                let mut work = lock(&slot.work);
                let id = job.header().id();
                let entry = work.entries_mut().find(|r| r.job.header().id() == id);
                if let Some(r) = entry {
                    if timed_out {
                        let at = after(now, self.config.abandon_grace);
                        r.abandon_at = Some(at);
                        earliest(at);
                    } else {
                        r.deadline = None; // it finished first
                    }
                }
            }
        }
        next
    }
}

impl<W: Worker> Drop for Shared<W> {
    fn drop(&mut self) {
        self.monitor.stop();
        self.events.close();
        self.messages.close();
    }
}

/// Whether the calling thread is one of `shared`'s workers.
pub(crate) fn is_worker_of<W: Worker>(shared: &Shared<W>) -> bool {
    CURRENT.with(StdCell::get).0 == shared.key()
}

/// Sets `CURRENT` for a worker thread and clears it on every exit path.
struct CurrentGuard;

impl CurrentGuard {
    fn enter<W: Worker>(shared: &Shared<W>, deque: &Deque<Job<W>>) -> Self {
        let ptr = deque as *const Deque<Job<W>> as *const ();
        CURRENT.with(|c| c.set((shared.key(), ptr)));
        CurrentGuard
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set((0, std::ptr::null())));
    }
}
