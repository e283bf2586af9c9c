//! The process backend's state and its decisions: one mutex over the queue,
//! every worker's window, sticky keys, estimates and counters; dispatch (which
//! worker gets a task), stealing back, and settlement (resolving a task and
//! counting it). Every thread of the backend takes the lock for short,
//! straight-line sections and never across I/O: submitters and engine calls
//! (`engine.rs`), link threads (`link.rs`), the monitor (`monitor.rs`).
//! The design (windows, steal-back, charging a death to a suspect task) is in
//! `supervisor.md` beside this file.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::codec::{self, EncodedInput, InputError, RemoteWorker};
use super::key_table::KeyTable;
use super::link::link_main;
use super::process_handle::{Launcher, WorkerProcess};
use super::{chunks, ProcessConfig};
use crate::backend::{Admission, Config};
use crate::error::{Failure, SubmitError, TaskError};
use crate::events::{Bus, Event, ExitReason};
use crate::messages::MessageBus;
use crate::scheduler::deadlines::Deadlines;
use crate::stats::Timings;
use crate::sync::lock;
use crate::task::cell::{Core, Handle, Header, Outcome, ProgressCore, Watched};
use crate::task::{Priority, Task, TaskId, TaskOptions};
use crate::wire::message::{ChunkFrame, TaskFrame};
use crate::wire::ToWorker;
use crate::worker::WorkerId;

// ---------------------------------------------------------------- the state

/// The longest a link thread polls its socket for expected answers.
pub(super) const ANSWER_POLL: Duration = Duration::from_micros(50);

/// Where the pool is in its life; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// Takes tasks.
    Open,
    /// No new tasks; queued ones still run; workers are told to shut down once
    /// there is nothing left.
    Closing,
    /// No new tasks; queued ones were closed; workers are being killed.
    Terminating,
}

/// The process backend of one pool: its settings, its one lock, and what
/// the threads wait on. Shared (`Arc`) by the engine (`Pool`'s handle), every
/// link thread, the monitor and every task's cell (weakly, for its cancel).
pub(super) struct Supervisor<W: RemoteWorker> {
    /// Every decision. Locked by submitters and engine calls, link threads
    /// (per read of frames, and at a worker's start and end) and the monitor;
    /// never across I/O, never while user code (a waker) runs.
    pub(super) state: Mutex<State<W>>,
    /// Notified whenever a task resolves, the queue shrinks, or a worker comes or
    /// goes: `wait_idle`, `shutdown`, blocked submitters and start backoffs wait
    /// on it.
    pub(super) changed: Condvar,
    /// Wakes the monitor when an earlier deadline is added (by whoever adds
    /// it: a *started* with a timeout on a link thread, a kill).
    pub(super) alarm: Condvar,
    /// The next task id. Taken by submitters (a chunk takes one per item);
    /// no lock.
    pub(super) next_task: AtomicU64,
    /// The next worker id. Taken by a link thread as it starts its process.
    pub(super) next_worker: AtomicU64,
    /// `State::min_workers`, readable without the lock (`Pool::size`, which
    /// `Debug` prints). Written with it, under the lock, by `resize`.
    pub(super) size: AtomicUsize,
    /// The pool's validated settings; read-only.
    pub(super) config: Config,
    /// The process settings; read-only.
    pub(super) process: ProcessConfig,
    /// How to start a worker process (and the payload arena); read-only,
    /// used by link threads and by submitters encoding large inputs.
    pub(super) launcher: Launcher,
    /// Event subscribers; emitted into under the lock with deferred wakes.
    pub(super) events: Arc<Bus>,
    /// Worker-to-pool message subscribers (`messages.rs`); fed by link threads.
    pub(super) messages: Arc<MessageBus<W::Message>>,
}

/// Everything behind [`Supervisor::state`]. Each field says who writes it;
/// anyone holding the lock may read it (`stats()` reads most of them).
pub(super) struct State<W: RemoteWorker> {
    /// Open, closing or terminating. Written by `close`/`shutdown`/`terminate`
    /// (engine); read by every decision (no dispatch to a closing pool's new
    /// submissions, no restarts once closed).
    pub(super) lifecycle: Lifecycle,
    /// Every sticky broadcast so far, encoded: sent to each new worker process
    /// right after its hello, before any task. Appended by `broadcast` (engine);
    /// replayed by each link thread at its worker's start.
    pub(super) sticky_messages: Vec<Vec<u8>>,
    /// Tasks not yet sent to any worker, by priority (index 0 = high).
    /// Pushed by submitters, by steal-back and by settlement (tasks a dead
    /// worker had not started, retries); popped by dispatch.
    pub(super) queue: [VecDeque<Entry<W>>; Priority::LEVELS],
    /// Every live or dying worker process. Added by a link thread when its
    /// process registers, removed by it when the process is reaped; windows
    /// filled by dispatch, emptied by the link thread's answers and by
    /// settlement.
    pub(super) links: Vec<LinkState<W>>,
    /// Link threads started whose process has not registered yet. Raised by
    /// `plan_capacity` and `grow_if_backlogged` (whoever starts links),
    /// lowered by the link thread.
    pub(super) starting: usize,
    /// The worker processes the pool keeps (`Pool::size`), and the most it
    /// may grow to (equal for a fixed size). From `Config` at start; written
    /// by `resize` (`sizing.rs`); read by replacement, growth and idle
    /// retirement.
    pub(super) min_workers: usize,
    pub(super) max_workers: usize,
    /// Sticky key -> the worker it is bound to. Bound by dispatch when a
    /// keyed task first goes to a worker; unbound by the link thread when that
    /// worker ends. At most `KEY_TABLE_CAP` keys, the least recently used
    /// forgotten first (`key_table.rs`).
    pub(super) key_owners: KeyTable<u64, WorkerId>,
    /// EWMA of run time per key (`None` = tasks without a key), in
    /// microseconds. Updated by link threads on each *done*; read by dispatch
    /// and steal-back. At most `KEY_TABLE_CAP` keys, like `key_owners`.
    pub(super) estimates: KeyTable<Option<u64>, f64>,
    /// Tasks finished, by outcome. Counted by settlement (`resolve`, `fail`),
    /// by cancels (`on_cancelled`) and by chunk answers.
    pub(super) counts: [u64; Outcome::SLOTS],
    /// Tasks accepted. Counted by submitters.
    pub(super) submitted: u64,
    /// Failed starts in a row with no worker up. Raised by a link thread
    /// whose process failed to start; reset by one that said *ready*.
    pub(super) start_failures: u32,
    /// The last start failure's message; written with `start_failures`.
    pub(super) last_start_error: Option<String>,
    /// `submit_async` futures waiting for room. Pushed by `poll_room`
    /// (engine); taken (and woken after the lock) when the queue shrinks.
    pub(super) room_wakers: Vec<Waker>,
    /// `Pool::idle` futures. Pushed by `poll_idle` (engine); taken when the
    /// pool becomes idle.
    pub(super) idle_wakers: Vec<Waker>,
    /// The monitor's and link threads' handles, joined by `shutdown`.
    /// Pushed by whoever starts a thread.
    pub(super) threads: Vec<JoinHandle<()>>,
    /// Deadlines: task timeouts (added on *started*) and kill graces (added
    /// by `kill_link`). Taken by the monitor when due.
    pub(super) alarms: Vec<Alarm>,
    /// Whether the monitor thread still runs. Cleared by the monitor as it
    /// leaves (pool closed, no worker left); read by `shutdown`.
    pub(super) monitor_running: bool,
    /// Latency record and clocks for `Stats`. Recorded by link threads
    /// (wait on *started*, run on *done*) and by settlement.
    pub(super) observed: Observed,
    /// Deadlines (`TaskBuilder::deadline`) of tasks that may not have started.
    /// Pushed by submitters of such tasks only; popped by the monitor, which
    /// times out those still waiting (`queue_control.rs`).
    pub(super) deadlines: Deadlines<Entry<W>>,
    /// `cancel_queued` calls waiting for their take-backs to be answered.
    /// Pushed and removed by the call; updated by whoever settles one of its
    /// flights (link threads, on *started*, *not started*, or the worker's end).
    pub(super) take_backs: Vec<TakeBack>,
    /// The next `cancel_queued` call's number. Taken by the call.
    pub(super) next_take_back: u64,
}

/// One `cancel_queued` call's window take-backs (`queue_control.rs`).
#[derive(Debug)]
pub(super) struct TakeBack {
    /// The call's number ([`InFlight::take_back`] names it).
    pub(super) call: u64,
    /// Take-backs not answered yet.
    pub(super) pending: usize,
    /// Tasks (chunk items count one each) that came back *not started* and
    /// were cancelled.
    pub(super) cancelled: usize,
}

/// The pool-wide latency record and clocks behind `Stats` (under the state lock).
pub(super) struct Observed {
    /// Every task's wait (recorded on *started*) and run (recorded when it is
    /// resolved with a worker).
    pub(super) timings: Timings,
    /// `Stats::worker_time` of worker processes that have ended.
    pub(super) retired_worker_time: Duration,
    /// When the pool started (`Stats::uptime`).
    pub(super) created: Instant,
}

impl Observed {
    pub(super) fn new() -> Self {
        Observed {
            timings: Timings::new(),
            retired_worker_time: Duration::ZERO,
            created: Instant::now(),
        }
    }
}

/// A deadline the monitor keeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Alarm {
    /// When it is due.
    pub(super) at: Instant,
    /// The worker it is about.
    pub(super) worker: WorkerId,
    /// What to do then.
    pub(super) what: AlarmKind,
}

/// What a due [`Alarm`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AlarmKind {
    /// Task `id` times out if it is still running on `worker`.
    Timeout(u64),
    /// SIGKILL to `worker`'s group if it has not been reaped.
    Kill,
    /// A take-back (`steal_back`) from `worker` may be due: if one has waited
    /// for its answer for `silence_limit`, the worker is silent and is killed,
    /// so that what it holds runs elsewhere. At most one such alarm is pending
    /// per worker (armed by the first take-back it has not answered, then by
    /// the monitor for the next), so a busy pool's steals do not pile alarms up.
    Silence,
}

/// One live (or dying) worker process, as the scheduler sees it. Under the
/// state lock: added and removed by its link thread; its window filled by
/// dispatch (any thread) and emptied by its link thread's answers; its
/// `killing`/`retiring`/`shutdown_sent` set by whoever decides to stop it.
pub(super) struct LinkState<W: RemoteWorker> {
    /// Its worker id.
    pub(super) id: WorkerId,
    /// The pool's handle on its process: pid, frame writer, kill, reap.
    pub(super) process: Arc<WorkerProcess>,
    /// Its *ready* arrived: it takes tasks.
    pub(super) ready: bool,
    /// No new tasks: it is recycled, killed, or failed, or the pool shrank.
    pub(super) retiring: bool,
    /// Retiring because the pool shrank (`resize`, `idle_timeout`), not
    /// recycled: reported as `Retired`, and its unstarted tasks were asked
    /// back (`sizing.rs`). Set with `retiring` by `retire_link`; cleared by a
    /// `resize` that grows the pool again before it was told to shut down.
    pub(super) retired: bool,
    /// Why crew is killing it, if it is; decides how it is reported.
    pub(super) killing: Option<ExitReason>,
    /// A *shutdown* frame was sent (the pool is closing and it has nothing
    /// left): it will exit on its own.
    pub(super) shutdown_sent: bool,
    /// Tasks sent to it and not answered yet, in the order sent (which is the
    /// order it runs them).
    pub(super) window: VecDeque<InFlight<W>>,
    /// The task it said it started, and when.
    pub(super) running: Option<(u64, Instant)>,
    /// Sum of `est` over the window.
    pub(super) outstanding: f64,
    /// Sticky tasks bound to it, waiting for room in its window.
    pub(super) backlog: VecDeque<Entry<W>>,
    /// Tasks it finished (its `WorkerStats` row; recycling counts them).
    pub(super) tasks_done: u64,
    /// Recycle after this many tasks (the setting, with jitter).
    pub(super) recycle_after: Option<u64>,
    /// This worker's run times (its `WorkerStats` row).
    pub(super) timings: Timings,
    /// When its link thread registered it (`Stats::worker_time`).
    pub(super) born: Instant,
    /// Since when its window and backlog have been empty (`None` while it
    /// holds tasks): its idle time, for elastic retirement. Set by its link
    /// thread (*ready*, and answers that empty the window); cleared by
    /// `send_to`.
    pub(super) idle_since: Option<Instant>,
    /// Why crew killed it for silence, if it did: added to its crash report.
    /// Set by the monitor (`Supervisor::kill_silent`); read by its link thread.
    pub(super) silenced: Option<String>,
    /// An `AlarmKind::Silence` for it is pending. Set by whoever adds one
    /// (`steal_back`, the monitor re-arming), cleared by the monitor when it
    /// fires: one at a time, however many take-backs.
    pub(super) silence_armed: bool,
}

/// One task in a worker's window.
pub(super) struct InFlight<W: RemoteWorker> {
    /// The task (or chunk).
    pub(super) entry: Entry<W>,
    /// Its estimated run time when it was sent (counted in `outstanding`).
    pub(super) est: f64,
    /// A cancel was sent (the task was taken back, or its handle cancelled).
    pub(super) cancel_sent: bool,
    /// Taken back to run elsewhere: queue it again when *not started* arrives.
    pub(super) stolen: bool,
    /// When it was taken back (its *cancel* sent), while that is unanswered.
    pub(super) stolen_at: Option<Instant>,
    /// When it became the head of the window (the first task not answered),
    /// the moment the pool's timeout clock starts; see [`Supervisor::arm_head`].
    pub(super) head_since: Option<Instant>,
    /// Asked back by `cancel_queued` call number `n` (its *cancel* sent): on
    /// *not started* it is cancelled instead of queued again; on *started* it
    /// runs on. Either way the call is told (`Supervisor::take_back_answered`).
    pub(super) take_back: Option<u64>,
}

pub(super) type Entry<W> = Arc<RemoteCell<W>>;

/// A task of the process backend: the result slot the handle reads, and the
/// encoded input, kept until the task resolves (a crash may send it again).
pub(super) struct RemoteCell<W: RemoteWorker> {
    /// The header and result slot: resolved once, by whoever decides first
    /// (`supervisor.md`, "Settlement"); read by the handle.
    pub(super) core: Core<W::Output, W::Error>,
    /// Let go (`Released`) once the task is over and no worker reads it, so a
    /// caller holding many finished handles does not hold their inputs, and an
    /// arena block is reused soon.
    pub(super) input: Mutex<EncodedInput>,
    /// Its sticky key, if any; read by dispatch. Set at submit.
    pub(super) key: Option<u64>,
    /// Runs left after its worker dies under it; taken by the link thread
    /// settling that death.
    pub(super) retries_left: AtomicU32,
    /// It was in the window of a worker that died before saying which task it
    /// was running. Until it has run again it is sent only to a worker with an
    /// empty window, and nothing is sent behind it, so that a worker runs it
    /// alone: its *started* then goes out before it runs, and a second death
    /// is charged to the right task.
    pub(super) suspect: AtomicBool,
    /// The pool, for the handle's cancel (weak: a handle does not keep a
    /// dropped pool alive).
    pub(super) shared: Weak<Supervisor<W>>,
    /// Set for a chunk of `map` items (`processes/chunks.rs`).
    pub(super) chunk: Option<chunks::ChunkPart<W>>,
}

impl<W: RemoteWorker> RemoteCell<W> {
    pub(super) fn id(&self) -> u64 {
        self.core.header().id().0
    }

    /// Lets the input go. Only once no worker can read it: its *done* arrived,
    /// it was never sent, or the process that held it was reaped.
    pub(super) fn release_input(&self) {
        let input = std::mem::replace(&mut *lock(&self.input), EncodedInput::Released);
        drop(input);
    }
}

impl<W: RemoteWorker> Watched for RemoteCell<W> {
    fn progress(&self) -> ProgressCore<'_> {
        self.core.progress()
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
pub(super) struct Plan {
    /// Processes whose frame writers got frames, to write once the lock is
    /// released.
    pub(super) flush: Vec<Arc<WorkerProcess>>,
    /// Start this many link threads, each after this backoff.
    pub(super) start: Vec<Duration>,
    /// Room and idle wakers to wake.
    pub(super) wakers: Vec<Waker>,
    /// Readers of messages pushed under the lock, to wake after it.
    pub(super) woken_readers: Vec<crate::events::Wake>,
    /// Tasks whose progress changed under the lock: their watchers are woken
    /// after it.
    pub(super) progressed: Vec<Arc<dyn Watched>>,
    /// Notify `changed` (something a waiter may wait for happened).
    pub(super) notify: bool,
}

impl<W: RemoteWorker> Supervisor<W> {
    pub(super) fn lock(&self) -> MutexGuard<'_, State<W>> {
        lock(&self.state)
    }

    /// Resolves `entry` with `result`, counting it once; true if this call did.
    /// `worker`: who ran it and for how long; `None` for a task resolved
    /// without running, whose input is then let go (it sits in no window).
    pub(super) fn resolve(
        &self,
        st: &mut State<W>,
        entry: &Entry<W>,
        result: Result<W::Output, TaskError<W::Error>>,
        worker: Option<(WorkerId, Duration)>,
    ) -> bool {
        self.settle(st, entry, result, worker, worker.is_none())
    }

    /// [`resolve`](Supervisor::resolve), saying whether to let the input go:
    /// not while a worker may still read it (a task resolved in a window before
    /// its worker answered; `queue_control.rs`).
    pub(super) fn settle(
        &self,
        st: &mut State<W>,
        entry: &Entry<W>,
        result: Result<W::Output, TaskError<W::Error>>,
        worker: Option<(WorkerId, Duration)>,
        release: bool,
    ) -> bool {
        if entry.chunk.is_some() {
            return self.resolve_chunk(st, entry, result, worker, release);
        }
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of_error(e),
        };
        if release {
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
    pub(super) fn fail(
        &self,
        st: &mut State<W>,
        entry: &Entry<W>,
        failure: Failure,
        worker: Option<(WorkerId, Duration)>,
    ) -> bool {
        self.resolve(st, entry, Err(TaskError::failure(failure)), worker)
    }

    pub(super) fn estimate(&self, st: &State<W>, key: Option<u64>) -> f64 {
        st.estimates.peek(&key).copied().unwrap_or(1.0)
    }

    pub(super) fn queued(st: &State<W>) -> usize {
        st.queue.iter().map(VecDeque::len).sum()
    }

    /// True when nothing is queued, sent, or held by a dying worker.
    pub(super) fn is_idle(st: &State<W>) -> bool {
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
    pub(super) fn answer_expected_within(st: &State<W>, id: WorkerId) -> Duration {
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
    pub(super) fn has_room(&self, link: &LinkState<W>) -> bool {
        link.ready
            && !link.retiring
            && link.killing.is_none()
            && link.window.len() < self.process.window
            && !link
                .window
                .front()
                .is_some_and(|f| f.entry.suspect.load(Relaxed))
    }

    /// Sends `entry` to link `i`: into its window, frame into its writer.
    pub(super) fn send_to(&self, st: &mut State<W>, i: usize, entry: Entry<W>, plan: &mut Plan) {
        let est = self.estimate(st, entry.key) * entry.items() as f64;
        let link = &mut st.links[i];
        let process = Arc::clone(&link.process);
        // Appended only: the write happens in `finish`, after the state lock is
        // released, once for every frame this dispatch produced.
        let sent = process.writer.append(|enc| match &*lock(&entry.input) {
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
        link.idle_since = None;
        link.window.push_back(InFlight {
            entry,
            est,
            cancel_sent: false,
            stolen: false,
            stolen_at: None,
            head_since: None,
            take_back: None,
        });
        self.arm_head(st, i);
        if !plan.flush.iter().any(|p| Arc::ptr_eq(p, &process)) {
            plan.flush.push(process);
        }
    }

    /// Starts the timeout clock of the task at the head of worker `i`'s window,
    /// if it has not started yet.
    ///
    /// # Whose clock
    ///
    /// The pool's, never the worker's: the worker batches its *started* with
    /// the answers before it, so a worker stopped (SIGSTOP, a freeze, a
    /// debugger) just as it begins a task may never send it, and a clock
    /// started by it would never run (DESIGN.md, invariant 6). A worker runs
    /// its window in order, so a task can have started only once every task
    /// before it was answered: the head of the window is the only task that
    /// may be running. Its clock starts when it becomes the head: when it is
    /// sent to a worker whose window is empty (an idle worker starts it as it
    /// arrives; the deadline is early by one trip over the socket at most), or
    /// when the pool reads the answer of the task before it (the worker had
    /// started it just before, or is about to). Tasks further back never
    /// started, so a long queue behind a slow task in one window does not time
    /// out: those tasks are taken back for a worker that runs dry
    /// (`steal_back`), and a worker too silent to give them back is killed
    /// (`AlarmKind::Silence`).
    pub(super) fn arm_head(&self, st: &mut State<W>, i: usize) {
        let worker = st.links[i].id;
        let Some(head) = st.links[i].window.front_mut() else {
            return;
        };
        if head.head_since.is_some() {
            return;
        }
        let now = Instant::now();
        head.head_since = Some(now);
        let timeout = head.entry.core.header().limits.timeout();
        let task = head.entry.id();
        if let Some(timeout) = timeout {
            if !head.entry.core.header().is_decided() {
                self.add_alarm(
                    st,
                    Alarm {
                        at: now + timeout,
                        worker,
                        what: AlarmKind::Timeout(task),
                    },
                );
            }
        }
    }

    /// The live worker with room and the least estimated outstanding work.
    pub(super) fn least_loaded(&self, st: &State<W>) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, link) in st.links.iter().enumerate() {
            if self.has_room(link) && (best.is_none() || link.outstanding < best.unwrap().1) {
                best = Some((i, link.outstanding));
            }
        }
        best.map(|(i, _)| i)
    }

    pub(super) fn link_index(st: &State<W>, id: WorkerId) -> Option<usize> {
        st.links.iter().position(|l| l.id == id)
    }

    /// Moves queued tasks into windows while there is room, takes work back from
    /// a busy worker for an idle one, and tells workers to shut down once a
    /// closing pool has nothing left.
    pub(super) fn dispatch(&self, st: &mut State<W>, plan: &mut Plan) {
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
                let target = match entry.key.and_then(|k| st.key_owners.get(&k).copied()) {
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
                            st.key_owners.insert(key, st.links[i].id);
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
                        .writer
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
                    .writer
                    .send(|enc| enc.push(&ToWorker::Shutdown))
                    .ok();
            }
        }
        if Self::is_idle(st) {
            plan.wakers.append(&mut st.idle_wakers);
            plan.notify = true;
        }
        self.grow_if_backlogged(st, plan);
    }

    /// When the queue is empty and a worker has an empty window, takes the last
    /// unstarted task of the most loaded worker's window back (one per idle
    /// worker), to be queued again when its *not started* arrives.
    pub(super) fn steal_back(&self, st: &mut State<W>, plan: &mut Plan) {
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
            let now = Instant::now();
            flight.stolen_at = Some(now);
            let id = flight.entry.id();
            link.process
                .writer
                .send(|enc| enc.push(&ToWorker::Cancel { id }))
                .ok();
            if !plan.flush.iter().any(|p| Arc::ptr_eq(p, &link.process)) {
                plan.flush.push(Arc::clone(&link.process));
            }
            // A worker answers a take-back at once, even in the middle of a
            // long task (its watcher thread reads the socket). One that does
            // not within the limit is stopped or wedged, and holds work another
            // worker could run: the monitor kills it then.
            let worker = link.id;
            if !link.silence_armed {
                link.silence_armed = true;
                self.add_alarm(
                    st,
                    Alarm {
                        at: now + self.process.silence_limit,
                        worker,
                        what: AlarmKind::Silence,
                    },
                );
            }
        }
    }

    /// Kills worker `id`, silent for `silence_limit` while the pool waited on
    /// it, at once (SIGKILL: a stopped process handles no SIGTERM). Its link
    /// thread then settles it as a crash, the note in its report: the tasks it
    /// had not started run elsewhere.
    pub(super) fn kill_silent(&self, st: &mut State<W>, id: WorkerId, why: String) {
        let Some(i) = Self::link_index(st, id) else {
            return;
        };
        let link = &mut st.links[i];
        if link.killing.is_some() {
            return;
        }
        link.killing = Some(ExitReason::Crashed);
        link.silenced = Some(why);
        link.process.signal_group(Signal::SIGKILL);
    }

    /// How many link threads to start so the pool has its size again, and after
    /// what backoff.
    pub(super) fn plan_capacity(&self, st: &mut State<W>) -> Plan {
        let mut plan = Plan::default();
        let wanted = match st.lifecycle {
            Lifecycle::Open => st.min_workers,
            Lifecycle::Closing if Self::queued(st) > 0 => st.min_workers.max(1),
            _ => 0,
        };
        for _ in Self::counted(st)..wanted {
            st.starting += 1;
            plan.start.push(self.start_backoff(st));
        }
        plan
    }

    /// Carries out `plan` after the lock is released.
    pub(super) fn finish(self: &Arc<Self>, plan: Plan) {
        if plan.notify {
            self.changed.notify_all();
        }
        for w in plan.wakers {
            w.wake();
        }
        for task in plan.progressed {
            task.progress().notify();
        }
        for process in &plan.flush {
            process.writer.pump();
        }
        self.start_links(plan.start);
    }

    pub(super) fn start_links(self: &Arc<Self>, backoffs: Vec<Duration>) {
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

    pub(super) fn submit_entry(
        self: &Arc<Self>,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        let limit = self.process.max_message_size;
        let encoded = match codec::encode_input(&input, self.launcher.arena.as_ref(), limit) {
            Ok(encoded) => encoded,
            // Refused before anything is sent or counted, with the input back.
            Err(InputError::TooLarge(size)) => {
                return Err(SubmitError::too_large(input, size, limit));
            }
            Err(InputError::Encode(e)) => {
                let message = format!("crew could not encode the task's input: {e}");
                return Ok(self.failed_task(Failure::Protocol(message), options));
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
        let mut pruned = Vec::new();
        if let Some(failure) = self.broken(&st) {
            self.fail(&mut st, &entry, failure, None);
        } else {
            st.queue[options.priority.index()].push_back(Arc::clone(&entry));
            self.dispatch(&mut st, &mut plan);
            if let Some(deadline) = options.deadline {
                pruned = self.watch_deadline(&mut st, deadline, Arc::clone(&entry));
            }
        }
        drop(st);
        // Settled tasks the deadline heap let go: their drop may run user code.
        drop(pruned);
        self.finish(plan);
        Ok(Task::new(entry))
    }

    /// A task that resolves at once with `failure`, without being sent: an
    /// input that could not be encoded (or, from `map`, one too large). It is
    /// counted as submitted and as failed, like any task that ends that way.
    pub(super) fn failed_task(
        self: &Arc<Self>,
        failure: Failure,
        options: TaskOptions,
    ) -> Task<W::Output, W::Error> {
        let entry = self.new_entry(EncodedInput::Released, options);
        let mut st = self.lock();
        st.submitted += 1;
        self.fail(&mut st, &entry, failure, None);
        drop(st);
        Task::new(entry)
    }

    pub(super) fn new_entry(
        self: &Arc<Self>,
        input: EncodedInput,
        options: TaskOptions,
    ) -> Entry<W> {
        let id = TaskId(self.next_task.fetch_add(1, Relaxed));
        let limits = options.limits(self.config.default_timeout);
        Arc::new(RemoteCell {
            core: Core::new(Header::new(id, options.priority, limits, false)),
            input: Mutex::new(input),
            key: options.key,
            retries_left: AtomicU32::new(options.retries.unwrap_or(self.process.retries)),
            suspect: AtomicBool::new(false),
            shared: Arc::downgrade(self),
            chunk: None,
        })
    }

    /// The start failure to report when no worker is up and starts keep failing.
    pub(super) fn broken(&self, st: &State<W>) -> Option<Failure> {
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
    pub(super) fn on_cancelled(self: &Arc<Self>, id: u64, priority: Priority, items: usize) {
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
                        .writer
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
    pub(super) fn queued_at(&self, st: &State<W>, i: usize, id: u64) -> Option<Instant> {
        st.links[i]
            .window
            .iter()
            .find(|f| f.entry.id() == id)
            .and_then(|f| f.entry.core.header().queued_at)
    }

    /// Starts killing worker `id`: resolves the task it runs with `failure` (if
    /// given), stops sending it work, SIGTERM now and SIGKILL after the grace.
    pub(super) fn kill_link(
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
            // The task it runs: the one it said it started, or else the head
            // of its window, which it may be running without having said so
            // (its *started* is batched; see `arm_head`).
            let link = &st.links[i];
            let target = match link.running {
                Some((running, since)) => link
                    .window
                    .iter()
                    .find(|f| f.entry.id() == running)
                    .map(|f| (Arc::clone(&f.entry), Some(since))),
                None => link
                    .window
                    .front()
                    .map(|f| (Arc::clone(&f.entry), f.head_since)),
            };
            if let Some((entry, since)) = target {
                let ran = since.map_or(Duration::ZERO, |s| s.elapsed());
                self.fail(st, &entry, failure, Some((id, ran)));
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
    pub(super) fn check_finished(&self, st: &State<W>) {
        if st.lifecycle != Lifecycle::Open && st.links.is_empty() && st.starting == 0 {
            self.events.close();
            self.messages.close();
            self.alarm.notify_all();
            self.changed.notify_all();
        }
    }

    pub(super) fn add_alarm(&self, st: &mut State<W>, alarm: Alarm) {
        let earliest = st.alarms.iter().all(|a| a.at > alarm.at);
        st.alarms.push(alarm);
        if earliest {
            self.alarm.notify_one();
        }
    }
}
