//! The thread backend: worker threads in this process.
//!
//! - [`Shared`] (this file) is everything the pool handle, the workers and the
//!   monitor share: the queues, the sleep state, the lifecycle, the worker
//!   registry and the counters; with the lifecycle (close, shutdown, terminate,
//!   drain), idleness and stats.
//! - `submit` is what a submitting thread runs: admission, the push, batches,
//!   `CallerRuns`, growing.
//! - `workers` acts on the set of workers: spawn, replace, abandon, kill, mail.
//! - `worker_loop` is the body of each worker thread.
//! - `executor` is each worker thread's set of async tasks in flight.
//! - `monitor` is a helper thread, started on first need, that enforces running
//!   tasks' timeouts, queued tasks' deadlines, and replaces threads that had to
//!   be abandoned.
//!
//! The mechanisms are narrated, with their reasons, in `threads.md` beside this
//! file.
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
pub(crate) mod join_watch;
mod monitor;
mod submit;
mod worker_loop;
mod workers;

use std::cell::Cell as StdCell;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_deque::{Stealer, Worker as Deque};
use crossbeam_utils::CachePadded;

use crate::backend::Config;
use crate::error::{Failure, ShutdownTimedOut, SubmitError};
use crate::events::{Bus, Event};
use crate::messages::{Mailbox, MessageBus};
use crate::scheduler::deadlines::Deadlines;
use crate::scheduler::queues::Injectors;
use crate::scheduler::sleep::{Sleep, Sleeper};
use crate::stats::{Figures, OutcomeCounts, Stats, Timings, WorkerFigures};
use crate::sync::{
    after, lock, modelled, wait_until, Arc, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex,
};
use crate::task::cell::{Job, Outcome};
use crate::worker::{Worker, WorkerId};

use capacity::Capacity;
use idle::Idle;
pub(crate) use idle::IdleFuture;
use monitor::Monitor;

/// How many times `cancel_queued` sweeps the queues at most (see there).
const CANCEL_PASSES: usize = 3;

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
    /// Set by `resize` (under the registry lock) when the pool shrinks: the
    /// worker takes no new task and leaves once nothing is in flight on it.
    /// Cleared, under the same lock, by a `resize` that grows the pool again
    /// before it left, or by whoever takes it out of `live` (its own
    /// `try_retire`, `abandon`, its exit). `Registry::retiring` counts the
    /// set flags. Read by the worker at each turn (`Relaxed` on the hot path,
    /// confirmed under the lock) and by `workers()` and `stats()`.
    retire: AtomicBool,
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
    /// Workers the pool counts: starting, running or idle, and those asked to
    /// retire that have not left yet (`Slot::retire`).
    live: Vec<Arc<Slot<W>>>,
    /// How many of `live` are asked to retire: `live.len() - retiring` is the
    /// pool's size as growth, replacement and idle retirement see it.
    retiring: usize,
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
    /// Deadlines of tasks that may still be queued (`TaskBuilder::deadline`).
    /// Pushed by submitters of such tasks only; popped by the monitor, which
    /// times out those still unclaimed (`threads.md`, "Deadlines").
    deadlines: Mutex<Deadlines<Job<W>>>,
    /// The queue bound, if `queue_capacity` was set.
    capacity: Option<Capacity>,
    /// `Registry::live.len()` minus the workers asked to retire, readable
    /// without the lock (elastic sizing). Written under the registry lock.
    live_count: AtomicUsize,
    /// The workers the pool keeps (`Pool::size`), and the most it may grow
    /// to (equal for a fixed size). From `Config` at start; written by
    /// `resize` under the registry lock; read without it (growth, parking,
    /// `size`) and under it (spawning, idle retirement).
    min_workers: AtomicUsize,
    max_workers: AtomicUsize,
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
    /// Workers blocked joining tasks of this pool (see `join_watch`).
    joins: join_watch::JoinWatch,
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
        let max_workers = config.max_workers;
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
                retiring: 0,
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
            deadlines: Mutex::new(Deadlines::default()),
            capacity,
            live_count: AtomicUsize::new(0),
            min_workers: AtomicUsize::new(workers),
            max_workers: AtomicUsize::new(max_workers),
            growing: AtomicBool::new(false),
            events,
            messages: Arc::new(Bus::new(config_event_buffer)),
            sticky: Mutex::new(Vec::new()),
            draining: AtomicUsize::new(0),
            created: Instant::now(),
            this: this.clone(),
            joins: join_watch::JoinWatch::new(max_workers),
        });
        for _ in 0..workers {
            if let Err(e) = shared.spawn_worker() {
                shared.terminate();
                return Err(e);
            }
        }
        Ok(shared)
    }

    /// The workers the pool keeps: `Pool::size`.
    pub(crate) fn min_workers(&self) -> usize {
        self.min_workers.load(Relaxed)
    }

    /// The most workers the pool may grow to.
    fn max_workers(&self) -> usize {
        self.max_workers.load(Relaxed)
    }

    /// Whether the pool grows and shrinks by itself (`max > min`): its idle
    /// workers then park with a timeout, and busy submitters consider growing.
    #[inline]
    pub(crate) fn is_elastic(&self) -> bool {
        self.max_workers.load(Relaxed) > self.min_workers.load(Relaxed)
    }

    /// Publishes the registry's count of workers that stay (`live_count`).
    fn set_live_count(&self, reg: &Registry<W>) {
        self.live_count
            .store(reg.live.len() - reg.retiring, Relaxed);
    }

    fn key(&self) -> usize {
        self as *const Self as usize
    }

    fn arc(&self) -> Option<Arc<Self>> {
        self.this.upgrade()
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
    /// Returns how many this call resolved (tombstones it popped were resolved
    /// before, by whoever cancelled them; it counts them in stats all the same).
    fn drain(&self, failure: Failure) -> usize {
        self.draining.fetch_add(1, SeqCst);
        let mut resolved = 0;
        while let Some(job) = self.injectors.steal_any() {
            resolved += usize::from(self.discard(job, &failure));
        }
        let (_, peers) = self.peers();
        for (_, stealer) in peers.iter() {
            loop {
                match stealer.steal() {
                    crossbeam_deque::Steal::Success(job) => {
                        resolved += usize::from(self.discard(job, &failure));
                    }
                    crossbeam_deque::Steal::Retry => continue,
                    crossbeam_deque::Steal::Empty => break,
                }
            }
        }
        self.draining.fetch_sub(1, SeqCst);
        self.notify_idle();
        self.maybe_close_events();
        resolved
    }

    /// `Pool::cancel_queued`: every task still in a queue (the injectors and
    /// every worker's deque) resolves as cancelled, as a drain does at
    /// `terminate`, while the pool stays open. Running tasks are not touched.
    ///
    /// A drain races the workers only for what each takes: every entry is
    /// taken by one thread, which runs it or resolves it. A worker that moves a
    /// batch from the injector into its own deque while the drain passes can
    /// carry a few tasks past it; a second pass catches those (at most
    /// [`CANCEL_PASSES`], so a submitter faster than the drain cannot keep it
    /// going).
    pub(crate) fn cancel_queued(&self) -> usize {
        let mut cancelled = 0;
        for _ in 0..CANCEL_PASSES {
            let resolved = self.drain(Failure::Cancelled);
            cancelled += resolved;
            if resolved == 0 {
                break;
            }
        }
        cancelled
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
    /// counts it, and emits its `TaskDiscarded`. True if this call resolved it.
    fn discard(&self, job: Job<W>, failure: &Failure) -> bool {
        self.popped(job.header().bounded);
        let resolved = job.discard(failure.clone());
        let outcome = job.header().settled_outcome();
        self.count(outcome);
        if self.events.is_active() {
            self.events.emit(Event::TaskDiscarded {
                task: job.header().id(),
                outcome: outcome.into(),
            });
        }
        resolved
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
                    stopping: slot.stopping.load(Relaxed) || slot.retire.load(Relaxed),
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

    /// Has the monitor time `job` out at `deadline` if it is still queued then
    /// (`threads.md`, "Deadlines"). Wakes the monitor only if this deadline is
    /// now the earliest it keeps: otherwise it wakes before it anyway.
    #[cold]
    pub(super) fn watch_deadline(&self, deadline: Instant, job: Job<W>) {
        let (earliest, pruned) =
            lock(&self.deadlines).push(deadline, job, |job| job.header().is_decided());
        // Settled tasks: dropping them may run user code (an output's `Drop`).
        drop(pruned);
        if earliest {
            if let Some(shared) = self.arc() {
                self.monitor.wake_at(&shared, deadline);
            }
        }
    }

    /// Times out the queued tasks whose deadline has come: each still
    /// unclaimed resolves as timed out and stays in its queue as a tombstone,
    /// counted by whoever pops it, as a cancelled one is. One a worker claimed
    /// first is running: its `Running` entry carries the deadline, and the
    /// running-task checks below time it out. Returns when the next is due.
    fn expire_queued(&self, now: Instant) -> Option<Instant> {
        let (due, next) = {
            let mut deadlines = lock(&self.deadlines);
            (deadlines.pop_due(now), deadlines.next())
        };
        // Resolving wakes the caller's waker (user code): no lock held.
        for job in due {
            job.discard(Failure::TimedOut);
        }
        next
    }

    /// Enforces timeouts (and deadlines) of running tasks, and deadlines of
    /// queued ones. Returns the next instant it must look again. Called by the
    /// monitor thread.
    fn check_deadlines(&self, now: Instant) -> Option<Instant> {
        let slots: Vec<Arc<Slot<W>>> = lock(&self.registry).live.clone();
        let mut next: Option<Instant> = self.expire_queued(now);
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

/// Sets `CURRENT` (and the join watch's thread-local) for a worker thread and
/// clears them on every exit path.
struct CurrentGuard(#[allow(dead_code)] join_watch::Enter);

impl CurrentGuard {
    fn enter<W: Worker>(shared: &Shared<W>, deque: &Deque<Job<W>>) -> Self {
        let ptr = deque as *const Deque<Job<W>> as *const ();
        CURRENT.with(|c| c.set((shared.key(), ptr)));
        CurrentGuard(join_watch::Enter::new(shared.key(), &shared.joins))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set((0, std::ptr::null())));
    }
}
