//! The process backend: the same `Pool` API, with each worker in its own process.
//!
//! # Who owns what
//!
//! - **`Shared::state`**, one mutex, holds every scheduling decision: the queue of
//!   tasks not yet sent to a worker (one per priority), each live worker's
//!   *window* (the tasks sent to it and not yet answered, in the order sent),
//!   sticky keys, run-time estimates and counters. It is held for short,
//!   straight-line sections, never across I/O.
//! - **A link thread per worker process** ([`link_main`]) starts the process,
//!   reads every frame it sends, and applies them under the state lock (a whole
//!   read's worth at a time). When the process ends it reaps it, settles the
//!   tasks it held, and the pool starts a replacement.
//! - **Each process's [`Outbox`](child_process::Outbox)** takes frames from whoever
//!   dispatches (a submitter, a link thread) and writes them without blocking them.
//! - **The monitor thread** ([`monitor_main`]) keeps the deadlines: task timeouts,
//!   and SIGKILL for a worker that did not exit within the grace after SIGTERM.
//!
//! # How a task flows
//!
//! 1. `submit` encodes the input (postcard) outside any lock, then, under the
//!    lock, either puts the task straight into a worker's window or queues it.
//!    The worker chosen is the one with the least *estimated outstanding work* —
//!    the sum, over its window, of an EWMA of the run time of tasks with the same
//!    key — among those with room in their window. A task with a sticky key goes
//!    to the worker its key is bound to, while that worker lives.
//! 2. Frames leave through the worker's outbox, several in one write when several
//!    are ready.
//! 3. The worker answers *started* (the timeout clock starts) and *done*. The link
//!    thread resolves the task, updates the estimate, and refills the window from
//!    the queue: under load, one read of answers and one write of new tasks per
//!    batch, not per task.
//! 4. When a worker runs dry while another has tasks waiting in its window, the
//!    pool takes the last of them back (*cancel*, answered *not started*) and
//!    queues it again, so the idle worker gets it.
//!
//! # Failures
//!
//! - **The worker dies** (signal, `exit`, EOF, protocol error): the one task it was
//!   running fails with [`Crash`] (exit code or signal, last stderr lines), or is
//!   sent again if it has retries left; the tasks in its window that had not
//!   started are queued again, untouched; a replacement starts.
//! - **A cancel of a running task, a timeout, `kill_worker`**: the task is resolved
//!   first, then the worker's process group gets SIGTERM, and SIGKILL after
//!   `kill_grace`. The worker counts as busy until it is reaped.
//! - **A worker that cannot start** (its start fails, it dies before *ready*, or it
//!   fails the handshake) is started again with exponential backoff; after
//!   `start_attempts` failures in a row with no worker up, waiting tasks fail with
//!   a start error instead of waiting for ever.

mod arena;
mod child;
mod child_process;
mod chunks;
mod codec;

pub use child::{bootstrap, serve, Bootstrap};
pub use child_process::{OutputHandler, OutputStream};
pub use codec::RemoteWorker;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backend::{Admission, BackendKind, Batch, Config, Engine};
use crate::error::{Crash, Failure, ShutdownTimedOut, SubmitError, TaskError};
use crate::events::{Bus, Event, Events, ExitReason};
use crate::messages::MessageBus;
use crate::stats::{Figures, OutcomeCounts, Stats, Timings, WorkerFigures};
use crate::sync::lock;
use crate::task::cell::{Core, Handle, Header, Outcome};
use crate::task::{Priority, Task, TaskId, TaskOptions};
use crate::wire::message::{ChunkFrame, TaskFrame};
use crate::wire::{
    FrameDecoder, Hello, Outcome as WireOutcome, Role, ToParent, ToWorker, WireMessage,
};
use crate::wire::{ProtocolError, DEFAULT_FRAME_LIMIT};
use crate::worker::WorkerId;
use child_process::{Launcher, WorkerProcess};
use codec::EncodedInput;

/// The process backend's own settings (the rest are in `Config`).
#[derive(Clone)]
pub(crate) struct ProcessConfig {
    pub(crate) program: Option<PathBuf>,
    pub(crate) args: Vec<OsString>,
    pub(crate) window: usize,
    pub(crate) kill_grace: Duration,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) max_memory: Option<u64>,
    pub(crate) retries: u32,
    pub(crate) retry_signals: bool,
    pub(crate) output: Option<OutputHandler>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            program: None,
            args: Vec::new(),
            window: 16,
            kill_grace: Duration::from_secs(2),
            max_tasks_per_worker: None,
            max_memory: None,
            retries: 0,
            retry_signals: false,
            output: None,
        }
    }
}

/// Starts a process pool of `W`. The builder's `processes` stores this function.
pub(crate) fn start<W: RemoteWorker>(
    config: Config,
    process: ProcessConfig,
) -> std::io::Result<Arc<dyn Engine<W>>> {
    let events = Arc::new(Bus::new(config.event_buffer));
    let config_event_buffer = config.event_buffer;
    let launcher = Launcher {
        program: process.program.clone(),
        args: process.args.clone(),
        type_name: std::any::type_name::<W>(),
        output: process.output.clone(),
        // Without an arena (memfd refused), every input goes through the socket.
        arena: arena::Arena::new().ok(),
    };
    let shared = Arc::new(Shared::<W> {
        state: Mutex::new(State {
            lifecycle: Lifecycle::Open,
            sticky_messages: Vec::new(),
            queue: Default::default(),
            links: Vec::new(),
            starting: 0,
            sticky: HashMap::new(),
            estimates: HashMap::new(),
            counts: [0; Outcome::SLOTS],
            submitted: 0,
            start_failures: 0,
            last_start_error: None,
            room_wakers: Vec::new(),
            idle_wakers: Vec::new(),
            threads: Vec::new(),
            alarms: Vec::new(),
            monitor_running: true,
            observed: Observed::new(),
        }),
        changed: Condvar::new(),
        alarm: Condvar::new(),
        next_task: AtomicU64::new(1),
        next_worker: AtomicU64::new(1),
        config,
        process,
        launcher,
        events,
        messages: Arc::new(Bus::new(config_event_buffer)),
    });
    let monitor = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("crew-monitor".into())
            .spawn(move || monitor_main(&shared))?
    };
    let mut st = shared.lock();
    st.threads.push(monitor);
    let plan = shared.plan_capacity(&mut st);
    drop(st);
    shared.start_links(plan.start);
    Ok(Arc::new(shared))
}

// ---------------------------------------------------------------- the state

/// The longest a link thread polls its socket for expected answers.
const ANSWER_POLL: Duration = Duration::from_micros(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Open,
    /// No new tasks; queued ones still run; workers are told to shut down once
    /// there is nothing left.
    Closing,
    /// No new tasks; queued ones were closed; workers are being killed.
    Terminating,
}

struct Shared<W: RemoteWorker> {
    state: Mutex<State<W>>,
    /// Notified whenever a task resolves, the queue shrinks, or a worker comes or
    /// goes: `wait_idle`, `shutdown`, blocked submitters and start backoffs wait
    /// on it.
    changed: Condvar,
    /// Wakes the monitor when an earlier deadline is added.
    alarm: Condvar,
    next_task: AtomicU64,
    next_worker: AtomicU64,
    config: Config,
    process: ProcessConfig,
    launcher: Launcher,
    events: Arc<Bus>,
    /// Worker-to-pool message subscribers (`messages.rs`).
    messages: Arc<MessageBus<W::Message>>,
}

struct State<W: RemoteWorker> {
    lifecycle: Lifecycle,
    /// Every sticky broadcast so far, encoded: sent to each new worker process
    /// right after its hello, before any task.
    sticky_messages: Vec<Vec<u8>>,
    /// Tasks not yet sent to any worker, by priority (index 0 = high).
    queue: [VecDeque<Entry<W>>; Priority::LEVELS],
    links: Vec<LinkState<W>>,
    /// Link threads started whose process has not registered yet.
    starting: usize,
    /// Sticky key -> the worker it is bound to.
    sticky: HashMap<u64, WorkerId>,
    /// EWMA of run time per key (`None` = tasks without a key), in microseconds.
    estimates: HashMap<Option<u64>, f64>,
    counts: [u64; Outcome::SLOTS],
    submitted: u64,
    start_failures: u32,
    last_start_error: Option<String>,
    room_wakers: Vec<Waker>,
    idle_wakers: Vec<Waker>,
    threads: Vec<JoinHandle<()>>,
    alarms: Vec<Alarm>,
    monitor_running: bool,
    observed: Observed,
}

/// The pool-wide latency record and clocks behind `Stats` (under the state lock).
struct Observed {
    /// Every task's wait (recorded on *started*) and run (recorded when it is
    /// resolved with a worker).
    timings: Timings,
    /// `Stats::worker_time` of worker processes that have ended.
    retired_worker_time: Duration,
    created: Instant,
}

impl Observed {
    fn new() -> Self {
        Observed {
            timings: Timings::new(),
            retired_worker_time: Duration::ZERO,
            created: Instant::now(),
        }
    }
}

/// A deadline the monitor keeps.
#[derive(Debug, Clone, Copy)]
struct Alarm {
    at: Instant,
    worker: WorkerId,
    what: AlarmKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlarmKind {
    /// Task `id` times out if it is still running on `worker`.
    Timeout(u64),
    /// SIGKILL to `worker`'s group if it has not been reaped.
    Kill,
}

/// One live (or dying) worker process, as the scheduler sees it.
struct LinkState<W: RemoteWorker> {
    id: WorkerId,
    process: Arc<WorkerProcess>,
    /// Its *ready* arrived: it takes tasks.
    ready: bool,
    /// No new tasks: it is recycled, killed, or failed.
    retiring: bool,
    /// Why crew is killing it, if it is; decides how it is reported.
    killing: Option<ExitReason>,
    shutdown_sent: bool,
    /// Tasks sent to it and not answered yet, in the order sent (which is the
    /// order it runs them).
    window: VecDeque<InFlight<W>>,
    /// The task it said it started, and when.
    running: Option<(u64, Instant)>,
    /// Sum of `est` over the window.
    outstanding: f64,
    /// Sticky tasks bound to it, waiting for room in its window.
    backlog: VecDeque<Entry<W>>,
    tasks_done: u64,
    /// Recycle after this many tasks (the setting, with jitter).
    recycle_after: Option<u64>,
    /// This worker's run times (its `WorkerStats` row).
    timings: Timings,
    born: Instant,
}

struct InFlight<W: RemoteWorker> {
    entry: Entry<W>,
    est: f64,
    /// A cancel was sent (the task was taken back, or its handle cancelled).
    cancel_sent: bool,
    /// Taken back to run elsewhere: queue it again when *not started* arrives.
    stolen: bool,
}

type Entry<W> = Arc<RemoteCell<W>>;

/// A task of the process backend: the result slot the handle reads, and the
/// encoded input, kept until the task resolves (a crash may send it again).
struct RemoteCell<W: RemoteWorker> {
    core: Core<W::Output, W::Error>,
    /// Let go (`Released`) once the task is over and no worker reads it, so a
    /// caller holding many finished handles does not hold their inputs, and an
    /// arena block is reused soon.
    input: Mutex<EncodedInput>,
    key: Option<u64>,
    retries_left: AtomicU32,
    /// It was in the window of a worker that died before saying which task it
    /// was running. Until it has run again it is sent only to a worker with an
    /// empty window, and nothing is sent behind it, so that a worker runs it
    /// alone: its *started* then goes out before it runs, and a second death
    /// is charged to the right task.
    suspect: AtomicBool,
    shared: Weak<Shared<W>>,
    /// Set for a chunk of `map` items (`processes/chunks.rs`).
    chunk: Option<chunks::ChunkPart<W>>,
}

impl<W: RemoteWorker> RemoteCell<W> {
    fn id(&self) -> u64 {
        self.core.header().id().0
    }

    /// Lets the input go. Only once no worker can read it: its *done* arrived,
    /// it was never sent, or the process that held it was reaped.
    fn release_input(&self) {
        let input = std::mem::replace(&mut *lock(&self.input), EncodedInput::Released);
        drop(input);
    }
}

impl<W: RemoteWorker> Handle<W::Output, W::Error> for RemoteCell<W> {
    fn core(&self) -> &Core<W::Output, W::Error> {
        &self.core
    }

    fn cancel(&self) -> bool {
        let resolved = self.core.fail(Failure::Cancelled);
        if resolved {
            if let Some(shared) = self.shared.upgrade() {
                shared.on_cancelled(self.id(), self.core.header().priority, self.items());
            }
        }
        resolved
    }
}

// ------------------------------------------------------------ the scheduler

/// Work for after the lock is released: frames to write, link threads to
/// start, wakers to wake.
#[derive(Default)]
struct Plan {
    /// Outboxes that got frames, to write once the lock is released.
    flush: Vec<Arc<WorkerProcess>>,
    /// Start this many link threads, each after this backoff.
    start: Vec<Duration>,
    wakers: Vec<Waker>,
    /// Readers of messages pushed under the lock, to wake after it.
    woken_readers: Vec<crate::events::Wake>,
    notify: bool,
}

impl<W: RemoteWorker> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        lock(&self.state)
    }

    /// Resolves `entry` with `result`, counting it once; true if this call did.
    fn resolve(
        &self,
        st: &mut State<W>,
        entry: &Entry<W>,
        result: Result<W::Output, TaskError<W::Error>>,
        worker: Option<(WorkerId, Duration)>,
    ) -> bool {
        if entry.chunk.is_some() {
            return self.resolve_chunk(st, entry, result, worker);
        }
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome(),
        };
        if worker.is_none() {
            // Resolved without a worker: it sits in no window.
            entry.release_input();
        }
        if !entry.core.resolve(result) {
            return false;
        }
        st.counts[outcome as usize] += 1;
        if let Some((worker, ran)) = worker {
            st.observed.timings.record_run(ran, 1);
            if let Some(i) = Self::link_index(st, worker) {
                st.links[i].timings.record_run(ran, 1);
            }
            crate::trace::remote_finished(entry.core.header().id(), worker, outcome, ran);
        }
        if self.events.is_active() {
            let task = entry.core.header().id();
            let event = match worker {
                Some((worker, ran)) => Event::TaskFinished {
                    task,
                    worker,
                    outcome: outcome.into(),
                    // It started `ran` ago.
                    waited: entry
                        .core
                        .header()
                        .queued_at
                        .map_or(Duration::ZERO, |q| q.elapsed().saturating_sub(ran)),
                    ran,
                },
                None => Event::TaskDiscarded {
                    task,
                    outcome: outcome.into(),
                },
            };
            self.events.emit(event);
        }
        true
    }

    /// Resolves `entry` with one of crew's failures. (A remote task's code runs
    /// in the worker process, so the cell's cancel flag, which `Core::fail` also
    /// raises, has no reader here.)
    fn fail(
        &self,
        st: &mut State<W>,
        entry: &Entry<W>,
        failure: Failure,
        worker: Option<(WorkerId, Duration)>,
    ) -> bool {
        self.resolve(st, entry, Err(TaskError::failure(failure)), worker)
    }

    fn estimate(&self, st: &State<W>, key: Option<u64>) -> f64 {
        st.estimates.get(&key).copied().unwrap_or(1.0)
    }

    fn queued(st: &State<W>) -> usize {
        st.queue.iter().map(VecDeque::len).sum()
    }

    /// True when nothing is queued, sent, or held by a dying worker.
    fn is_idle(st: &State<W>) -> bool {
        Self::queued(st) == 0
            && st
                .links
                .iter()
                .all(|l| l.window.is_empty() && l.backlog.is_empty())
    }

    /// How long worker `id`'s link thread polls before blocking: while its
    /// window holds tasks expected to finish within [`ANSWER_POLL`] (by the run
    /// time estimates), the answer is likely to come before a blocked thread
    /// could even be woken. Long tasks (and an empty window) get no polling.
    fn answer_expected_within(st: &State<W>, id: WorkerId) -> Duration {
        match Self::link_index(st, id).map(|i| &st.links[i]) {
            Some(link)
                if !link.window.is_empty()
                    && link.outstanding < ANSWER_POLL.as_secs_f64() * 1e6 =>
            {
                ANSWER_POLL
            }
            _ => Duration::ZERO,
        }
    }

    /// Can worker `i` take one more task now?
    fn has_room(&self, link: &LinkState<W>) -> bool {
        link.ready
            && !link.retiring
            && link.killing.is_none()
            && link.window.len() < self.process.window
            && !link
                .window
                .front()
                .is_some_and(|f| f.entry.suspect.load(Relaxed))
    }

    /// Sends `entry` to link `i`: into its window, frame into its outbox.
    fn send_to(&self, st: &mut State<W>, i: usize, entry: Entry<W>, plan: &mut Plan) {
        let est = self.estimate(st, entry.key) * entry.items() as f64;
        let link = &mut st.links[i];
        let process = Arc::clone(&link.process);
        // Appended only: the write happens in `finish`, after the state lock is
        // released, once for every frame this dispatch produced.
        let sent = process.outbox.append(|enc| match &*lock(&entry.input) {
            EncodedInput::Inline(payload) => enc.push_encodable(&TaskFrame {
                id: entry.id(),
                key: entry.key,
                payload,
            }),
            EncodedInput::Shared(block) => enc.push(&ToWorker::SharedTask {
                id: entry.id(),
                key: entry.key,
                offset: block.offset(),
                len: block.len(),
            }),
            EncodedInput::Chunk(items) => enc.push_encodable(&ChunkFrame {
                id: entry.id(),
                items,
            }),
            EncodedInput::Released => {
                unreachable!("a task's input is released only once no worker needs it")
            }
        });
        if let Err(e) = sent {
            // Larger than the worker accepts: this task alone fails.
            let message = format!("the task's input is too large for the worker: {e}");
            self.fail(st, &entry, Failure::Protocol(message), None);
            return;
        }
        let link = &mut st.links[i];
        link.outstanding += est;
        link.window.push_back(InFlight {
            entry,
            est,
            cancel_sent: false,
            stolen: false,
        });
        if !plan.flush.iter().any(|p| Arc::ptr_eq(p, &process)) {
            plan.flush.push(process);
        }
    }

    /// The live worker with room and the least estimated outstanding work.
    fn least_loaded(&self, st: &State<W>) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, link) in st.links.iter().enumerate() {
            if self.has_room(link) && (best.is_none() || link.outstanding < best.unwrap().1) {
                best = Some((i, link.outstanding));
            }
        }
        best.map(|(i, _)| i)
    }

    fn link_index(st: &State<W>, id: WorkerId) -> Option<usize> {
        st.links.iter().position(|l| l.id == id)
    }

    /// Moves queued tasks into windows while there is room, takes work back from
    /// a busy worker for an idle one, and tells workers to shut down once a
    /// closing pool has nothing left.
    fn dispatch(&self, st: &mut State<W>, plan: &mut Plan) {
        // Sticky backlogs first: they can only go to their own worker.
        for i in 0..st.links.len() {
            while self.has_room(&st.links[i]) {
                let Some(entry) = st.links[i].backlog.pop_front() else {
                    break;
                };
                if !entry.core.header().is_decided() {
                    self.send_to(st, i, entry, plan);
                }
            }
        }
        let mut shrank = false;
        'levels: for level in 0..Priority::LEVELS {
            while let Some(entry) = st.queue[level].front() {
                if entry.core.header().is_decided() {
                    st.queue[level].pop_front();
                    shrank = true;
                    continue;
                }
                let target = match entry.key.and_then(|k| st.sticky.get(&k).copied()) {
                    Some(bound) => match Self::link_index(st, bound) {
                        Some(i) if st.links[i].killing.is_none() && !st.links[i].retiring => {
                            Some(Err(i)) // bound to a live worker: its backlog
                        }
                        _ => None,
                    },
                    None => None,
                };
                let suspect = entry.suspect.load(Relaxed);
                let target = match target {
                    Some(t) => t,
                    None if suspect => {
                        // Alone: only a worker with nothing in its window.
                        match (0..st.links.len())
                            .find(|&i| self.has_room(&st.links[i]) && st.links[i].window.is_empty())
                        {
                            Some(i) => Ok(i),
                            None => break 'levels,
                        }
                    }
                    None => match self.least_loaded(st) {
                        Some(i) => Ok(i),
                        None => break 'levels,
                    },
                };
                let Some(entry) = st.queue[level].pop_front() else {
                    break;
                };
                shrank = true;
                match target {
                    Ok(i) => {
                        if let Some(key) = entry.key {
                            st.sticky.insert(key, st.links[i].id);
                        }
                        self.send_to(st, i, entry, plan);
                    }
                    Err(i) => {
                        st.links[i].backlog.push_back(entry);
                        if self.has_room(&st.links[i]) {
                            if let Some(e) = st.links[i].backlog.pop_front() {
                                self.send_to(st, i, e, plan);
                            }
                        }
                    }
                }
            }
        }
        if shrank {
            plan.wakers.append(&mut st.room_wakers);
            plan.notify = true;
        }
        self.steal_back(st, plan);
        if st.lifecycle != Lifecycle::Open && Self::queued(st) == 0 {
            for link in st.links.iter_mut() {
                if link.window.is_empty() && link.backlog.is_empty() && !link.shutdown_sent {
                    link.shutdown_sent = true;
                    link.process
                        .outbox
                        .send(|enc| enc.push(&ToWorker::Shutdown))
                        .ok();
                    if !plan.flush.iter().any(|p| Arc::ptr_eq(p, &link.process)) {
                        plan.flush.push(Arc::clone(&link.process));
                    }
                }
            }
        }
        for link in st.links.iter_mut() {
            if link.retiring
                && link.killing.is_none()
                && link.window.is_empty()
                && !link.shutdown_sent
            {
                link.shutdown_sent = true;
                link.process
                    .outbox
                    .send(|enc| enc.push(&ToWorker::Shutdown))
                    .ok();
            }
        }
        if Self::is_idle(st) {
            plan.wakers.append(&mut st.idle_wakers);
            plan.notify = true;
        }
    }

    /// When the queue is empty and a worker has an empty window, takes the last
    /// unstarted task of the most loaded worker's window back (one per idle
    /// worker), to be queued again when its *not started* arrives.
    fn steal_back(&self, st: &mut State<W>, plan: &mut Plan) {
        if Self::queued(st) != 0 {
            return;
        }
        let idle = st
            .links
            .iter()
            .filter(|l| self.has_room(l) && l.window.is_empty())
            .count();
        for _ in 0..idle {
            // The victim: the most outstanding unstarted work beyond its head.
            let victim = st
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| l.killing.is_none())
                .filter_map(|(i, l)| {
                    let spare = l
                        .window
                        .iter()
                        .skip(1)
                        .filter(|f| !f.cancel_sent && f.entry.key.is_none())
                        .count();
                    (spare > 0).then_some((i, l.outstanding))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let Some((i, _)) = victim else { return };
            let link = &mut st.links[i];
            let Some(flight) = link
                .window
                .iter_mut()
                .skip(1)
                .rev()
                .find(|f| !f.cancel_sent && f.entry.key.is_none())
            else {
                return;
            };
            flight.cancel_sent = true;
            flight.stolen = true;
            let id = flight.entry.id();
            link.process
                .outbox
                .send(|enc| enc.push(&ToWorker::Cancel { id }))
                .ok();
            if !plan.flush.iter().any(|p| Arc::ptr_eq(p, &link.process)) {
                plan.flush.push(Arc::clone(&link.process));
            }
        }
    }

    /// How many link threads to start so the pool has its size again, and after
    /// what backoff.
    fn plan_capacity(&self, st: &mut State<W>) -> Plan {
        let mut plan = Plan::default();
        let wanted = match st.lifecycle {
            Lifecycle::Open => self.config.workers,
            Lifecycle::Closing if Self::queued(st) > 0 => self.config.workers,
            _ => 0,
        };
        let live = st
            .links
            .iter()
            .filter(|l| !l.retiring && l.killing.is_none())
            .count()
            + st.starting;
        for _ in live..wanted {
            st.starting += 1;
            let backoff = if st.start_failures == 0 {
                Duration::ZERO
            } else {
                let exp = st.start_failures.saturating_sub(1).min(16);
                self.config
                    .start_backoff
                    .saturating_mul(1 << exp)
                    .min(self.config.max_start_backoff)
            };
            plan.start.push(backoff);
        }
        plan
    }

    /// Carries out `plan` after the lock is released.
    fn finish(self: &Arc<Self>, plan: Plan) {
        if plan.notify {
            self.changed.notify_all();
        }
        for w in plan.wakers {
            w.wake();
        }
        for process in &plan.flush {
            process.outbox.pump();
        }
        self.start_links(plan.start);
    }

    fn start_links(self: &Arc<Self>, backoffs: Vec<Duration>) {
        for backoff in backoffs {
            let shared = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("crew-link".into())
                .spawn(move || link_main(&shared, backoff));
            let mut st = self.lock();
            match spawned {
                Ok(handle) => {
                    st.threads.retain(|h| !h.is_finished());
                    st.threads.push(handle);
                }
                Err(e) => {
                    st.starting -= 1;
                    st.start_failures += 1;
                    st.last_start_error = Some(format!("could not start a link thread: {e}"));
                }
            }
        }
    }

    // ------------------------------------------------------------ submitting

    fn submit_entry(
        self: &Arc<Self>,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        let encoded = match codec::encode_input(&input, self.launcher.arena.as_ref()) {
            Ok(encoded) => encoded,
            Err(e) => {
                let entry = self.new_entry(EncodedInput::Released, options);
                let message = format!("crew could not encode the task's input: {e}");
                let mut st = self.lock();
                st.submitted += 1;
                self.fail(&mut st, &entry, Failure::Protocol(message), None);
                return Ok(Task::new(entry));
            }
        };
        let mut st = self.lock();
        loop {
            if st.lifecycle != Lifecycle::Open {
                return Err(SubmitError::closed(input));
            }
            match self.config.queue_capacity {
                Some(cap) if Self::queued(&st) >= cap => match admission {
                    Admission::Try => return Err(SubmitError::full(input)),
                    _ => {
                        st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                },
                _ => break,
            }
        }
        drop(input);
        let entry = self.new_entry(encoded, options);
        st.submitted += 1;
        let mut plan = Plan::default();
        if let Some(failure) = self.broken(&st) {
            self.fail(&mut st, &entry, failure, None);
        } else {
            st.queue[options.priority.index()].push_back(Arc::clone(&entry));
            self.dispatch(&mut st, &mut plan);
        }
        drop(st);
        self.finish(plan);
        Ok(Task::new(entry))
    }

    fn new_entry(self: &Arc<Self>, input: EncodedInput, options: TaskOptions) -> Entry<W> {
        let id = TaskId(self.next_task.fetch_add(1, Relaxed));
        let timeout = options.timeout.or(self.config.default_timeout);
        Arc::new(RemoteCell {
            core: Core::new(Header::new(id, options.priority, timeout, false)),
            input: Mutex::new(input),
            key: options.key,
            retries_left: AtomicU32::new(options.retries.unwrap_or(self.process.retries)),
            suspect: AtomicBool::new(false),
            shared: Arc::downgrade(self),
            chunk: None,
        })
    }

    /// The start failure to report when no worker is up and starts keep failing.
    fn broken(&self, st: &State<W>) -> Option<Failure> {
        let up = st.links.iter().any(|l| l.ready && l.killing.is_none());
        (!up && st.start_failures >= self.config.start_attempts).then(|| {
            Failure::StartFailed(
                st.last_start_error
                    .clone()
                    .unwrap_or_else(|| "the worker process did not start".into()),
            )
        })
    }

    /// A handle cancelled its task (already resolved as cancelled); `items` is
    /// how many items it stands for (a chunk's).
    fn on_cancelled(self: &Arc<Self>, id: u64, priority: Priority, items: usize) {
        let mut st = self.lock();
        st.counts[Outcome::Cancelled as usize] += items as u64;
        let mut plan = Plan::default();
        let task = TaskId(id);
        let queue = &mut st.queue[priority.index()];
        if let Some(at) = queue.iter().position(|e| e.id() == id) {
            if let Some(entry) = queue.remove(at) {
                entry.release_input();
            }
            plan.wakers.append(&mut st.room_wakers);
            if self.events.is_active() {
                for i in 0..items as u64 {
                    self.events.emit(Event::TaskDiscarded {
                        task: TaskId(task.0.wrapping_add(i)),
                        outcome: crate::events::TaskOutcome::Cancelled,
                    });
                }
            }
        } else if let Some(i) = st.links.iter().position(|l| {
            l.window.iter().any(|f| f.entry.id() == id) || l.backlog.iter().any(|e| e.id() == id)
        }) {
            // The handle is resolved already, so the paths that settle a task
            // later (its *done*, the link's end) find it decided and stay
            // silent: its one terminal event goes out here.
            let link = &mut st.links[i];
            let worker = link.id;
            let mut ran = None;
            if let Some(at) = link.backlog.iter().position(|e| e.id() == id) {
                if let Some(entry) = link.backlog.remove(at) {
                    entry.release_input();
                }
            } else if let Some((_, since)) = link.running.filter(|(r, _)| *r == id) {
                // Running: the worker's process is the only way to stop it.
                let elapsed = since.elapsed();
                ran = Some((since, elapsed));
                st.observed.timings.record_run(elapsed, 1);
                st.links[i].timings.record_run(elapsed, 1);
                self.kill_link(&mut st, worker, ExitReason::Killed, None);
            } else if let Some(flight) = link.window.iter_mut().find(|f| f.entry.id() == id) {
                if !flight.cancel_sent {
                    flight.cancel_sent = true;
                    link.process
                        .outbox
                        .send(|enc| enc.push(&ToWorker::Cancel { id }))
                        .ok();
                }
            }
            if self.events.is_active() {
                let outcome = crate::events::TaskOutcome::Cancelled;
                self.events.emit(match ran {
                    Some((since, ran)) => Event::TaskFinished {
                        task,
                        worker,
                        outcome,
                        waited: self
                            .queued_at(&st, i, id)
                            .map_or(Duration::ZERO, |q| since.saturating_duration_since(q)),
                        ran,
                    },
                    // It had not started (as far as the pool knows): if the
                    // worker begins it anyway, it is killed without a
                    // `TaskStarted` (see *started* in `on_frames`).
                    None => Event::TaskDiscarded { task, outcome },
                });
            }
        }
        self.dispatch(&mut st, &mut plan);
        drop(st);
        self.finish(plan);
    }

    /// When the task `id` in link `i`'s window was submitted.
    fn queued_at(&self, st: &State<W>, i: usize, id: u64) -> Option<Instant> {
        st.links[i]
            .window
            .iter()
            .find(|f| f.entry.id() == id)
            .and_then(|f| f.entry.core.header().queued_at)
    }

    /// Starts killing worker `id`: resolves the task it runs with `failure` (if
    /// given), stops sending it work, SIGTERM now and SIGKILL after the grace.
    fn kill_link(
        &self,
        st: &mut State<W>,
        id: WorkerId,
        reason: ExitReason,
        failure: Option<Failure>,
    ) -> bool {
        let Some(i) = Self::link_index(st, id) else {
            return false;
        };
        if st.links[i].killing.is_some() {
            return false;
        }
        st.links[i].killing = Some(reason);
        if let Some(failure) = failure {
            if let Some((running, since)) = st.links[i].running {
                let entry = st.links[i]
                    .window
                    .iter()
                    .find(|f| f.entry.id() == running)
                    .map(|f| Arc::clone(&f.entry));
                if let Some(entry) = entry {
                    self.fail(st, &entry, failure, Some((id, since.elapsed())));
                }
            }
        }
        st.links[i].process.signal_group(Signal::SIGTERM);
        self.add_alarm(
            st,
            Alarm {
                at: Instant::now() + self.process.kill_grace,
                worker: id,
                what: AlarmKind::Kill,
            },
        );
        true
    }

    /// Once a closed pool has no worker left (or starting), ends the event
    /// subscriptions and lets the monitor and `shutdown` finish.
    fn check_finished(&self, st: &State<W>) {
        if st.lifecycle != Lifecycle::Open && st.links.is_empty() && st.starting == 0 {
            self.events.close();
            self.messages.close();
            self.alarm.notify_all();
            self.changed.notify_all();
        }
    }

    fn add_alarm(&self, st: &mut State<W>, alarm: Alarm) {
        let earliest = st.alarms.iter().all(|a| a.at > alarm.at);
        st.alarms.push(alarm);
        if earliest {
            self.alarm.notify_one();
        }
    }

    // ------------------------------------------------------------ frames

    /// Applies the frames of one read from worker `id`.
    fn on_frames(
        &self,
        st: &mut State<W>,
        id: WorkerId,
        frames: Vec<ToParent>,
        plan: &mut Plan,
    ) -> Result<(), String> {
        let Some(i) = Self::link_index(st, id) else {
            return Ok(());
        };
        for frame in frames {
            match frame {
                ToParent::Ready => {
                    if st.links[i].ready {
                        return Err("a second ready".into());
                    }
                    st.links[i].ready = true;
                    st.start_failures = 0;
                    crate::trace::worker_started(id);
                    if self.events.is_active() {
                        self.events.emit(Event::WorkerStarted { worker: id });
                    }
                }
                ToParent::StartFailed { message } => {
                    // The link thread reports it when the process exits.
                    st.last_start_error = Some(message);
                }
                ToParent::Message { payload } => match codec::decode::<W::Message>(&payload) {
                    Ok(message) => {
                        plan.woken_readers
                            .push(self.messages.emit_deferred((id, message)));
                    }
                    Err(e) => {
                        return Err(format!("could not decode a message from the worker: {e}"))
                    }
                },
                ToParent::Started { id: task } => {
                    let link = &mut st.links[i];
                    let Some(flight) = link.window.iter().find(|f| f.entry.id() == task) else {
                        return Err(format!("started a task it was not sent ({task})"));
                    };
                    let entry = Arc::clone(&flight.entry);
                    let now = Instant::now();
                    link.running = Some((task, now));
                    entry.core.header().set_worker(id);
                    if entry.core.header().is_decided() {
                        // Cancelled while it was on its way: stop it the only way.
                        self.kill_link(st, id, ExitReason::Killed, None);
                        continue;
                    }
                    let waited = entry
                        .core
                        .header()
                        .queued_at
                        .map_or(Duration::ZERO, |q| now.saturating_duration_since(q));
                    st.observed.timings.record_wait(waited);
                    crate::trace::remote_started(TaskId(task), id, waited);
                    if self.events.is_active() {
                        for task in entry.item_ids() {
                            self.events.emit(Event::TaskStarted {
                                task,
                                worker: id,
                                waited,
                            });
                        }
                    }
                    if let Some(timeout) = entry.core.header().timeout {
                        self.add_alarm(
                            st,
                            Alarm {
                                at: now + timeout,
                                worker: id,
                                what: AlarmKind::Timeout(task),
                            },
                        );
                    }
                }
                ToParent::Done { id: task, outcome } => {
                    let link = &mut st.links[i];
                    let Some(at) = link.window.iter().position(|f| f.entry.id() == task) else {
                        return Err(format!("finished a task it was not sent ({task})"));
                    };
                    if link.window[at].entry.chunk.is_some()
                        && !matches!(outcome, WireOutcome::NotStarted)
                    {
                        return Err(format!("answered chunk {task} as a task"));
                    }
                    let flight = link.window.remove(at).expect("position is in range");
                    link.outstanding = (link.outstanding - flight.est).max(0.0);
                    let ran = match link.running {
                        Some((r, since)) if r == task => {
                            link.running = None;
                            Some(since.elapsed())
                        }
                        _ => None,
                    };
                    let entry = flight.entry;
                    let requeue = matches!(outcome, WireOutcome::NotStarted)
                        && flight.stolen
                        && !entry.core.header().is_decided();
                    if !requeue {
                        entry.release_input();
                    }
                    let result: Result<W::Output, TaskError<W::Error>> = match outcome {
                        WireOutcome::NotStarted => {
                            if requeue {
                                let level = entry.core.header().priority.index();
                                st.queue[level].push_front(entry);
                            }
                            continue;
                        }
                        WireOutcome::Ok(bytes) => match codec::decode::<W::Output>(&bytes) {
                            Ok(output) => Ok(output),
                            Err(e) => {
                                let message = format!("could not decode the task's output: {e}");
                                self.fail(
                                    st,
                                    &entry,
                                    Failure::Protocol(message.clone()),
                                    Some((id, ran.unwrap_or_default())),
                                );
                                return Err(message);
                            }
                        },
                        WireOutcome::UserError(bytes) => match codec::decode::<W::Error>(&bytes) {
                            Ok(error) => Err(TaskError::user(error)),
                            Err(e) => {
                                let message = format!("could not decode the task's error: {e}");
                                self.fail(
                                    st,
                                    &entry,
                                    Failure::Protocol(message.clone()),
                                    Some((id, ran.unwrap_or_default())),
                                );
                                return Err(message);
                            }
                        },
                        WireOutcome::Panicked(message) => {
                            Err(TaskError::failure(Failure::Panicked(message)))
                        }
                    };
                    if let Some(ran) = ran {
                        let micros = ran.as_secs_f64() * 1e6;
                        let est = st.estimates.entry(entry.key).or_insert(micros);
                        *est = 0.8 * *est + 0.2 * micros;
                    }
                    self.resolve(st, &entry, result, Some((id, ran.unwrap_or_default())));
                    let link = &mut st.links[i];
                    link.tasks_done += 1;
                    let recycle = link.recycle_after.is_some_and(|n| link.tasks_done >= n)
                        || self.process.max_memory.is_some_and(|max| {
                            link.process.rss_bytes().is_some_and(|rss| rss > max)
                        });
                    if recycle && !link.retiring {
                        link.retiring = true;
                        link.killing = None;
                        let more = self.plan_capacity(st);
                        plan.start.extend(more.start);
                    }
                }
                ToParent::ChunkDone {
                    id: chunk,
                    run_nanos,
                    outcomes,
                } => self.on_chunk_done(st, i, chunk, run_nanos, outcomes, plan)?,
            }
        }
        self.dispatch(st, plan);
        Ok(())
    }
}

// ------------------------------------------------------------ link threads

/// How a worker's channel ended.
enum End {
    /// The worker closed it (it exited, or was killed).
    Closed,
    /// It sent bytes that break the protocol.
    Protocol(String),
}

/// The life of one worker process: start it (after `backoff`), read and apply
/// its frames, then reap it and settle its tasks.
fn link_main<W: RemoteWorker>(shared: &Arc<Shared<W>>, backoff: Duration) {
    if !backoff.is_zero() {
        let deadline = Instant::now() + backoff;
        let mut st = shared.lock();
        loop {
            let now = Instant::now();
            if now >= deadline || st.lifecycle == Lifecycle::Terminating {
                break;
            }
            st = shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    {
        let mut st = shared.lock();
        let wanted = match st.lifecycle {
            Lifecycle::Open => true,
            Lifecycle::Closing => Shared::<W>::queued(&st) > 0,
            Lifecycle::Terminating => false,
        };
        if !wanted {
            st.starting -= 1;
            shared.check_finished(&st);
            drop(st);
            shared.changed.notify_all();
            return;
        }
    }
    let id = WorkerId::new(shared.next_worker.fetch_add(1, Relaxed));
    let process = match WorkerProcess::spawn(&shared.launcher, id) {
        Ok(p) => p,
        Err(e) => {
            let mut st = shared.lock();
            st.starting -= 1;
            start_failed(
                shared,
                &mut st,
                id,
                format!("could not start the worker process: {e}"),
            );
            let plan = shared.plan_capacity(&mut st);
            shared.check_finished(&st);
            drop(st);
            shared.changed.notify_all();
            shared.start_links(plan.start);
            return;
        }
    };
    // The hello goes first, before any dispatcher can reach this worker.
    let _ = process
        .outbox
        .send(|enc| enc.push(&Hello::new(Role::Parent, DEFAULT_FRAME_LIMIT)));
    {
        let mut st = shared.lock();
        st.starting -= 1;
        let recycle_after = shared
            .process
            .max_tasks_per_worker
            .map(|n| with_jitter(n, id));
        st.links.push(LinkState {
            id,
            process: Arc::clone(&process),
            ready: false,
            retiring: false,
            killing: None,
            shutdown_sent: false,
            window: VecDeque::new(),
            running: None,
            outstanding: 0.0,
            backlog: VecDeque::new(),
            tasks_done: 0,
            recycle_after,
            timings: Timings::new(),
            born: Instant::now(),
        });
        // Sticky messages first, under the lock a broadcast takes: each one
        // reaches this worker exactly once, before its first task.
        for payload in &st.sticky_messages {
            let _ = process.outbox.append(|enc| {
                enc.push(&ToWorker::Message {
                    payload: payload.clone(),
                })
            });
        }
        if st.lifecycle == Lifecycle::Terminating {
            shared.kill_link(&mut st, id, ExitReason::Shutdown, None);
        }
    }
    process.outbox.pump();
    let end = read_frames(shared, &process, id);
    if matches!(end, End::Protocol(_)) {
        process.signal_group(Signal::SIGKILL);
    }
    let crash = process.reap();
    link_ended(shared, id, end, crash);
}

/// Spreads recycling: each worker retires after `n` tasks, give or take 10%.
fn with_jitter(n: u64, id: WorkerId) -> u64 {
    let spread = (n / 10).max(1);
    // A cheap, per-worker deterministic mix (splitmix64 of the id).
    let mut x = id.as_u64().wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (n - spread.min(n - 1)) + x % (2 * spread + 1)
}

/// Reads frames until the channel ends; applies each read's frames at once.
fn read_frames<W: RemoteWorker>(
    shared: &Arc<Shared<W>>,
    process: &Arc<WorkerProcess>,
    id: WorkerId,
) -> End {
    let mut decoder = FrameDecoder::new(DEFAULT_FRAME_LIMIT);
    let mut greeted = false;
    let mut frames = Vec::new();
    let mut poll = Duration::ZERO;
    loop {
        match child::read_soon(&mut decoder, &process.stream, poll) {
            Ok(0) => {
                return match decoder.finish() {
                    Ok(()) => End::Closed,
                    Err(e) => End::Protocol(e.to_string()),
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return End::Closed,
        }
        loop {
            let next: Result<Option<ToParent>, ProtocolError> = if greeted {
                decoder.next_message()
            } else {
                match decoder.next_frame() {
                    Ok(Some(frame)) => match Hello::decode(frame).and_then(|h| {
                        h.check_role(Role::Worker)?;
                        Ok(h)
                    }) {
                        Ok(hello) => {
                            process.outbox.set_frame_limit(hello.frame_limit);
                            greeted = true;
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            match next {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return End::Protocol(e.to_string()),
            }
        }
        if frames.is_empty() {
            continue;
        }
        let mut plan = Plan::default();
        let mut st = shared.lock();
        let applied = shared.on_frames(&mut st, id, std::mem::take(&mut frames), &mut plan);
        poll = Shared::<W>::answer_expected_within(&st, id);
        drop(st);
        shared.finish(plan);
        if let Err(message) = applied {
            return End::Protocol(message);
        }
    }
}

fn start_failed<W: RemoteWorker>(
    shared: &Shared<W>,
    st: &mut State<W>,
    id: WorkerId,
    message: String,
) {
    st.start_failures += 1;
    st.last_start_error = Some(message.clone());
    if shared.events.is_active() {
        shared.events.emit(Event::WorkerStartFailed {
            worker: id,
            message,
            consecutive: st.start_failures,
        });
    }
    // The circuit breaker: with no worker up after `start_attempts` failures in a
    // row, waiting tasks fail instead of waiting for ever.
    if let Some(failure) = shared.broken(st) {
        let waiting: Vec<Entry<W>> = st.queue.iter_mut().flat_map(|q| q.drain(..)).collect();
        for entry in waiting {
            shared.fail(st, &entry, failure.clone(), None);
        }
    }
}

/// Settles everything worker `id` held once its process is reaped.
fn link_ended<W: RemoteWorker>(shared: &Arc<Shared<W>>, id: WorkerId, end: End, crash: Crash) {
    let mut st = shared.lock();
    let Some(i) = Shared::<W>::link_index(&st, id) else {
        return;
    };
    let link = st.links.remove(i);
    st.observed.retired_worker_time += link.born.elapsed();
    st.alarms.retain(|a| a.worker != id);
    st.sticky.retain(|_, w| *w != id);
    let mut window = link.window;
    let reason = match (&link.killing, link.retiring, &end) {
        (Some(reason), _, _) => *reason,
        (None, true, End::Closed) if crash.exit_code == Some(0) => ExitReason::Recycled,
        (None, false, End::Closed) if link.shutdown_sent && crash.exit_code == Some(0) => {
            ExitReason::Shutdown
        }
        _ => ExitReason::Crashed,
    };
    if !link.ready && link.killing.is_none() {
        // It never got to take tasks: a start failure.
        let message = match st.last_start_error.take() {
            Some(m) if crash.exit_code == Some(0) => m,
            _ => match &end {
                End::Protocol(e) => format!("the worker process failed the handshake: {e}"),
                End::Closed => format!("the worker process {crash}"),
            },
        };
        start_failed(shared, &mut st, id, message);
    } else if reason == ExitReason::Crashed {
        // The death is charged to the task it said it was running. If it had
        // not said (its *started* was still buffered, with the answers of the
        // tasks before it) and held one task only, that task is charged. With
        // several, nobody is: every task it held runs again, each alone on a
        // worker (`suspect`), so a second death names the task.
        let culprit = match link.running {
            Some((r, _)) => window.iter().position(|f| f.entry.id() == r),
            None if window.len() == 1 => Some(0),
            None => {
                for flight in &window {
                    flight.entry.suspect.store(true, Relaxed);
                }
                None
            }
        };
        if let Some(at) = culprit {
            let flight = window.remove(at).expect("position is in range");
            let entry = flight.entry;
            let ran = link
                .running
                .map(|(_, since)| since.elapsed())
                .unwrap_or_default();
            let by_signal = crash.signal.is_some();
            let retry = !entry.core.header().is_decided()
                && (!by_signal || shared.process.retry_signals)
                && entry
                    .retries_left
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                && matches!(end, End::Closed);
            let failure = match &end {
                End::Protocol(message) => Failure::Protocol(message.clone()),
                End::Closed => Failure::Crashed(crash.clone()),
            };
            if entry.chunk.is_some() {
                // Its items run again one by one, so only the culprit fails.
                shared.split_chunk(&mut st, entry);
            } else if retry {
                st.queue[entry.core.header().priority.index()].push_front(entry);
            } else {
                shared.fail(&mut st, &entry, failure, Some((id, ran)));
            }
        }
    } else if let Some((running, since)) = link.running {
        // Killed by crew: the killer resolved the task; count any still open.
        if let Some(at) = window.iter().position(|f| f.entry.id() == running) {
            let entry = window.remove(at).expect("position is in range").entry;
            let failure = match reason {
                ExitReason::Shutdown => Failure::Cancelled,
                _ => Failure::Killed,
            };
            shared.fail(&mut st, &entry, failure, Some((id, since.elapsed())));
        }
    }
    // Everything else it held had not started: queue it again, in order.
    let terminating = st.lifecycle == Lifecycle::Terminating;
    for flight in window.into_iter().rev() {
        let entry = flight.entry;
        if entry.core.header().is_decided() {
            // The process is reaped: no one reads its input any more.
            entry.release_input();
            continue;
        }
        if terminating {
            shared.fail(&mut st, &entry, Failure::Closed, None);
        } else {
            st.queue[entry.core.header().priority.index()].push_front(entry);
        }
    }
    for entry in link.backlog.into_iter().rev() {
        if !entry.core.header().is_decided() {
            if terminating {
                shared.fail(&mut st, &entry, Failure::Closed, None);
            } else {
                st.queue[entry.core.header().priority.index()].push_front(entry);
            }
        }
    }
    if link.ready {
        crate::trace::worker_exited(id, reason);
    }
    if shared.events.is_active() && link.ready {
        shared
            .events
            .emit(Event::WorkerExited { worker: id, reason });
    }
    let mut plan = shared.plan_capacity(&mut st);
    if let Some(failure) = shared.broken(&st) {
        let waiting: Vec<Entry<W>> = st.queue.iter_mut().flat_map(|q| q.drain(..)).collect();
        for entry in waiting {
            shared.fail(&mut st, &entry, failure.clone(), None);
        }
    }
    shared.dispatch(&mut st, &mut plan);
    plan.notify = true;
    if st.links.is_empty() && st.starting == 0 && st.lifecycle != Lifecycle::Open {
        shared.alarm.notify_all();
        shared.events.close();
        shared.messages.close();
    }
    drop(st);
    shared.finish(plan);
}

// ------------------------------------------------------------ the monitor

/// Keeps the deadlines until the pool is closed and every worker is gone.
fn monitor_main<W: RemoteWorker>(shared: &Arc<Shared<W>>) {
    let mut st = shared.lock();
    loop {
        if st.lifecycle != Lifecycle::Open && st.links.is_empty() && st.starting == 0 {
            st.monitor_running = false;
            drop(st);
            shared.changed.notify_all();
            return;
        }
        let now = Instant::now();
        let due: Vec<Alarm> = {
            let (due, later): (Vec<Alarm>, Vec<Alarm>) =
                st.alarms.drain(..).partition(|a| a.at <= now);
            st.alarms = later;
            due
        };
        let mut plan = Plan::default();
        for alarm in due {
            let Some(i) = Shared::<W>::link_index(&st, alarm.worker) else {
                continue;
            };
            match alarm.what {
                AlarmKind::Kill => st.links[i].process.signal_group(Signal::SIGKILL),
                AlarmKind::Timeout(task) => {
                    if st.links[i].running.is_some_and(|(r, _)| r == task) {
                        shared.kill_link(
                            &mut st,
                            alarm.worker,
                            ExitReason::Killed,
                            Some(Failure::TimedOut),
                        );
                    }
                }
            }
        }
        if !plan.start.is_empty() || plan.notify {
            drop(st);
            shared.finish(std::mem::take(&mut plan));
            st = shared.lock();
            continue;
        }
        let next = st.alarms.iter().map(|a| a.at).min();
        st = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                shared
                    .alarm
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.alarm.wait(st).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

// ------------------------------------------------------------ the engine

impl<W: RemoteWorker> Engine<W> for Arc<Shared<W>> {
    fn kind(&self) -> BackendKind {
        BackendKind::Processes
    }

    fn submit(
        &self,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        self.submit_entry(input, options, admission)
    }

    fn poll_room(&self, waker: &Waker) -> bool {
        let mut st = self.lock();
        let full = self
            .config
            .queue_capacity
            .is_some_and(|cap| Shared::<W>::queued(&st) >= cap);
        if full && st.lifecycle == Lifecycle::Open {
            st.room_wakers.push(waker.clone());
            false
        } else {
            true
        }
    }

    fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        while !Shared::<W>::is_idle(&st) {
            st = match deadline {
                None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.changed
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        true
    }

    fn poll_idle(&self, waker: &Waker) -> bool {
        let mut st = self.lock();
        if Shared::<W>::is_idle(&st) {
            return true;
        }
        st.idle_wakers.push(waker.clone());
        false
    }

    fn close(&self) {
        let mut st = self.lock();
        if st.lifecycle == Lifecycle::Open {
            st.lifecycle = Lifecycle::Closing;
        }
        let mut plan = Plan::default();
        self.dispatch(&mut st, &mut plan);
        plan.wakers.append(&mut st.room_wakers);
        plan.notify = true;
        if st.links.is_empty() && st.starting == 0 {
            self.alarm.notify_all();
            self.events.close();
            self.messages.close();
        }
        drop(st);
        self.finish(plan);
    }

    fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        self.close();
        let mut st = self.lock();
        let mut timed_out = false;
        let mut still_running = 0;
        while !(st.links.is_empty() && st.starting == 0 && !st.monitor_running) {
            st = match deadline {
                Some(d) if !timed_out => {
                    let now = Instant::now();
                    if now >= d {
                        timed_out = true;
                        still_running = st.links.len();
                        drop(st);
                        self.terminate();
                        self.lock()
                    } else {
                        self.changed
                            .wait_timeout(st, (d - now).min(Duration::from_millis(100)))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                }
                _ => {
                    self.changed
                        .wait_timeout(st, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            self.alarm.notify_all();
        }
        let threads = std::mem::take(&mut st.threads);
        drop(st);
        for t in threads {
            let _ = t.join();
        }
        if timed_out {
            Err(ShutdownTimedOut { still_running })
        } else {
            Ok(())
        }
    }

    fn terminate(&self) {
        let mut st = self.lock();
        if st.lifecycle == Lifecycle::Terminating {
            return;
        }
        st.lifecycle = Lifecycle::Terminating;
        let queued: Vec<Entry<W>> = st.queue.iter_mut().flat_map(|q| q.drain(..)).collect();
        for entry in queued {
            self.fail(&mut st, &entry, Failure::Closed, None);
        }
        let ids: Vec<WorkerId> = st.links.iter().map(|l| l.id).collect();
        for id in ids {
            self.kill_link(&mut st, id, ExitReason::Shutdown, Some(Failure::Cancelled));
        }
        let mut plan = Plan::default();
        plan.wakers.append(&mut st.room_wakers);
        plan.notify = true;
        drop(st);
        self.finish(plan);
    }

    fn is_closed(&self) -> bool {
        self.lock().lifecycle != Lifecycle::Open
    }

    fn kill_worker(&self, id: WorkerId) -> bool {
        let mut st = self.lock();
        let killed = self.kill_link(&mut st, id, ExitReason::Killed, Some(Failure::Killed));
        let plan = if killed {
            self.plan_capacity(&mut st)
        } else {
            Plan::default()
        };
        drop(st);
        self.finish(plan);
        killed
    }

    fn worker_ids(&self) -> Vec<WorkerId> {
        let st = self.lock();
        let mut ids: Vec<WorkerId> = st
            .links
            .iter()
            .filter(|l| l.killing.is_none() && !l.retiring)
            .map(|l| l.id)
            .collect();
        ids.sort();
        ids
    }

    fn size(&self) -> usize {
        self.config.workers
    }

    fn events(&self) -> Events {
        self.events.subscribe()
    }

    fn messages(&self) -> crate::Messages<W::Message> {
        crate::Messages::subscribe(&self.messages)
    }

    fn broadcast(&self, message: W::Message, sticky: bool) {
        let payload = match codec::encode_message(&message, sticky) {
            Ok(payload) => payload,
            Err(e) => {
                eprintln!(
                    "crew: a broadcast message could not be encoded, so it was not sent: {e}"
                );
                return;
            }
        };
        let mut st = self.lock();
        if sticky {
            st.sticky_messages.push(payload.clone());
        }
        let mut plan = Plan::default();
        for link in &st.links {
            let _ = link.process.outbox.append(|enc| {
                enc.push(&ToWorker::Message {
                    payload: payload.clone(),
                })
            });
            plan.flush.push(Arc::clone(&link.process));
        }
        drop(st);
        for process in &plan.flush {
            process.outbox.pump();
        }
    }

    fn send_to(&self, id: WorkerId, message: W::Message) -> Result<(), W::Message> {
        let payload = match codec::encode_message(&message, false) {
            Ok(payload) => payload,
            Err(e) => {
                eprintln!("crew: a message could not be encoded, so it was not sent: {e}");
                return Ok(());
            }
        };
        let st = self.lock();
        let Some(link) = st.links.iter().find(|l| l.id == id && l.killing.is_none()) else {
            return Err(message);
        };
        let process = Arc::clone(&link.process);
        let _ = process
            .outbox
            .append(|enc| enc.push(&ToWorker::Message { payload }));
        drop(st);
        process.outbox.pump();
        Ok(())
    }

    fn bus(&self) -> Arc<Bus> {
        Arc::clone(&self.events)
    }

    fn chunks_enabled(&self) -> bool {
        self.config.default_timeout.is_none()
    }

    fn submit_chunk(
        &self,
        pull: &mut dyn FnMut() -> Option<W::Input>,
        max_items: usize,
    ) -> Vec<Batch<W::Output, W::Error>> {
        Shared::submit_chunk(self, pull, max_items)
    }

    fn stats(&self) -> Stats {
        let st = self.lock();
        let now = Instant::now();
        let mut busy_so_far = Duration::ZERO;
        let mut worker_time = st.observed.retired_worker_time;
        let mut processes = Vec::with_capacity(st.links.len());
        let workers: Vec<WorkerFigures> = st
            .links
            .iter()
            .map(|l| {
                let so_far = l.running.map_or(Duration::ZERO, |(_, since)| {
                    now.saturating_duration_since(since)
                });
                busy_so_far += so_far;
                worker_time += now.saturating_duration_since(l.born);
                processes.push(Arc::clone(&l.process));
                WorkerFigures {
                    id: l.id,
                    started: l.ready,
                    stopping: l.killing.is_some() || l.retiring || l.shutdown_sent,
                    current_task: l.running.map(|(r, _)| TaskId(r)),
                    // A worker being killed holds its place until it is reaped.
                    occupied: usize::from(l.running.is_some() || l.killing.is_some()),
                    tasks_done: l.tasks_done,
                    busy_time: l.timings.busy() + so_far,
                    run: l.timings.run_latency(),
                    pid: u32::try_from(l.process.pid).ok(),
                    rss_bytes: None,
                }
            })
            .collect();
        let mut figures = Figures {
            submitted: st.submitted,
            outcomes: OutcomeCounts::from_slots(st.counts),
            abandoned_threads: 0,
            start_failures: st.start_failures,
            last_start_error: st.last_start_error.clone(),
            timings: st.observed.timings.clone(),
            uptime: now.saturating_duration_since(st.observed.created),
            busy_so_far,
            worker_time,
            workers,
        };
        drop(st);
        // `/proc` is read after the lock is released.
        for (row, process) in figures.workers.iter_mut().zip(processes) {
            row.rss_bytes = process.rss_bytes();
        }
        figures.into_stats()
    }
}
