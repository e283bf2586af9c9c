//! The worker side of the process backend: what runs inside a worker process.
//!
//! A worker process is started by the pool with its end of a socket pair at a
//! file descriptor named in the environment (see [`Launch`]). It speaks the wire
//! protocol (`wire/protocol.md`) on that socket, from one thread, the *runner*:
//!
//! 1. hello both ways, then `W::start`, then *ready* (or *start-failed* and exit);
//! 2. read what has arrived; run the oldest task; repeat. Between tasks, frames
//!    that arrived meanwhile are read at most every [`POLL_EVERY`] (one cheap
//!    non-blocking `recv`), so a *cancel* for a task still waiting here is seen
//!    before that task would start;
//! 3. on *shutdown*, run what was received, `W::stop`, exit 0;
//! 4. told to stop instead (SIGTERM, or the end of the channel): no further
//!    task, `W::stop` once the running task returns, then the process group is
//!    killed (see "Stopping early").
//!
//! A *chunk* is run like one task (one *started*, the watcher watches it as one):
//! its items in order, each as a task would run (a panic fails that item and
//! rebuilds the state), and one *chunk done* with every outcome
//! ([`Runner::run_chunk`]). A long chunk is a long task to the watcher, so cancels
//! of the tasks waiting behind it are still answered.
//!
//! # Batching and the watcher
//!
//! *started* and *done* frames go to one buffer. The runner writes it out when it
//! has nothing left to run (just before it blocks in `read`), so a burst of small
//! tasks costs one `write` for the whole burst. But a buffered *done* must not
//! wait behind a long task that started after it (the pool would see neither that
//! result nor that the long task started, and could not time it out), and a
//! *cancel* for a task waiting behind a long one must be answered (the pool takes
//! such tasks back for an idle worker). So a second thread, the *watcher*, wakes
//! every [`FLUSH_AFTER`] while the runner is busy: it writes frames left behind
//! for that long and, when one task has run that long, reads the socket on the
//! runner's behalf.
//!
//! *started* is buffered like everything else: a task that finishes within
//! [`FLUSH_AFTER`] sends its *started* and *done* in one write, and a longer one
//! is announced by the watcher. A death before *started* went out charges no
//! task; the pool then re-runs that worker's tasks one at a time until a death
//! names the culprit (see `supervisor.md`, "Deaths").
//!
//! *progress* ([`Context::progress`]) is not a frame per report: the task's
//! code only stores the latest value in [`ProgressSlot`] (a short lock, never
//! held across I/O, so a report never waits for the socket). The watcher turns
//! it into one frame at each tick, and the task's answer takes a value still
//! there just before it, so the pool sees the last report before the result.
//! A task that reports a million times costs at most a frame per tick.
//!
//! The watcher keeps ticking for [`WATCHER_LINGER`] after the runner goes idle and
//! parks only then, so a steady stream of tasks with short gaps never pays for
//! waking it: only the first task after a quiet spell does.
//!
//! # Stopping early: kills and the death of the parent
//!
//! The pool kills a worker with SIGTERM to its process group, then SIGKILL
//! after `kill_grace`; it sets `PR_SET_PDEATHSIG` to SIGTERM, so the worker
//! hears of its parent's death too, as it does from the end of its channel. In
//! each case the worker cancels the task it runs (`Context::is_cancelled`),
//! runs no other, runs `W::stop` once that task returns, and kills its own
//! process group, so processes its code started die with it. A watchdog bounds
//! all of it by the grace, for when no pool is left to send the SIGKILL. The
//! protocol, and exactly when `stop` runs, is in `worker_stop.rs`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::socket::{recv, MsgFlags};
use nix::unistd::Pid;

use super::arena::ArenaView;
use super::codec::{self, RemoteWorker};
use super::worker_stop::Stopping;
use crate::error::{panic_message, StartError};
use crate::sync::lock;
use crate::task::TaskId;
use crate::wire::{
    ChunkItems, ChunkOutcomes, FrameDecoder, FrameEncoder, Hello, ItemOutcome, Outcome,
    ProtocolError, Role, ToParent, ToWorker, WireMessage, DEFAULT_FRAME_LIMIT, MIN_FRAME_LIMIT,
};
use crate::worker::{Context, Outbox, WorkerId};

/// The environment variables a pool sets for a worker process.
pub(crate) const ENV_FD: &str = "CREW_WORKER_FD";
pub(crate) const ENV_TYPE: &str = "CREW_WORKER_TYPE";
pub(crate) const ENV_ID: &str = "CREW_WORKER_ID";
pub(crate) const ENV_PARENT: &str = "CREW_PARENT_PID";
/// The payload arena's memory file (`processes/arena.rs`), if the pool has one.
pub(crate) const ENV_ARENA_FD: &str = "CREW_ARENA_FD";
/// The pool's `kill_grace` in microseconds: how long the worker gives itself
/// to stop once told to (`worker_stop.rs`). [`DEFAULT_GRACE`] if absent.
pub(crate) const ENV_GRACE: &str = "CREW_KILL_GRACE_US";
/// The grace of a worker started without [`ENV_GRACE`]: the pool's default.
const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Exit code of a worker process whose program does not serve the requested
/// worker type (its `bootstrap` does not list it).
pub(crate) const EXIT_UNKNOWN_TYPE: i32 = 97;
/// Exit code of a worker process that lost its parent or its channel, or broke
/// the protocol.
pub(crate) const EXIT_CHANNEL: i32 = 98;

/// How often, at most, the runner looks for frames between two tasks.
const POLL_EVERY: Duration = Duration::from_micros(100);
/// How long buffered frames may wait behind a running task.
const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// How long an idle runner polls for the next task before blocking.
const IDLE_POLL: Duration = Duration::from_micros(50);
/// How long the watcher keeps ticking after the runner went idle before it
/// parks (and must be woken by the next task).
const WATCHER_LINGER: Duration = Duration::from_millis(50);

/// What the pool handed this process.
struct Launch {
    stream: UnixStream,
    worker: WorkerId,
    type_name: String,
    arena: Option<ArenaView>,
    /// How long the worker gives itself once told to stop.
    grace: Duration,
}

/// Reads the launch variables. `None` if this process was not started as a crew
/// worker; `Err` if it was, but the variables are wrong.
fn launch_from_env() -> Option<Result<Launch, String>> {
    let fd = std::env::var(ENV_FD).ok()?;
    let parse = || -> Result<Launch, String> {
        let fd: RawFd = fd.parse().map_err(|_| format!("bad {ENV_FD}: {fd:?}"))?;
        let type_name = std::env::var(ENV_TYPE).map_err(|_| format!("{ENV_TYPE} is not set"))?;
        let worker = std::env::var(ENV_ID)
            .ok()
            .and_then(|v| v.parse().ok())
            .and_then(WorkerId::from_raw)
            .ok_or_else(|| format!("{ENV_ID} is not set"))?;
        let parent: i32 = std::env::var(ENV_PARENT)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{ENV_PARENT} is not set"))?;
        // The parent may have died before PDEATHSIG was armed (in the child,
        // between fork and exec): then this process was re-parented already.
        if nix::unistd::getppid().as_raw() != parent {
            return Err("the pool's process is gone".into());
        }
        // SAFETY: the pool passed this descriptor to this process for its sole use,
        // and nothing else in the process knows it; the variables are removed
        // below so no one takes it a second time.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let arena = match std::env::var(ENV_ARENA_FD) {
            Err(_) => None,
            Ok(fd) => {
                let fd: RawFd = fd
                    .parse()
                    .map_err(|_| format!("bad {ENV_ARENA_FD}: {fd:?}"))?;
                // SAFETY: as for the channel: passed by the pool for this
                // process's sole use, taken once (the variable is removed below).
                let file = unsafe { OwnedFd::from_raw_fd(fd) };
                // The mapping keeps the file; the descriptor closes here.
                Some(ArenaView::map(file).map_err(|e| format!("payload arena: {e}"))?)
            }
        };
        let grace = std::env::var(ENV_GRACE)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_GRACE, Duration::from_micros);
        Ok(Launch {
            stream: UnixStream::from(owned),
            worker,
            type_name,
            arena,
            grace,
        })
    };
    let launch = parse();
    for var in [
        ENV_FD,
        ENV_TYPE,
        ENV_ID,
        ENV_PARENT,
        ENV_ARENA_FD,
        ENV_GRACE,
    ] {
        // Only at start-up, before the worker's code runs: no other thread reads
        // the environment yet. A pool the worker builds itself must not see them.
        std::env::remove_var(var);
    }
    Some(launch)
}

/// Sets up the process-level guards, then serves `W` and exits.
fn serve_launch<W: RemoteWorker>(launch: Launch) -> ! {
    // First, before the worker's code runs: from here SIGTERM stops the worker
    // as `worker_stop.rs` says (a SIGTERM that came earlier killed it outright,
    // before it had anything to clean up).
    let stopping = Stopping::install(&launch.stream, launch.grace);
    let code = match run_worker::<W>(launch.stream, launch.worker, launch.arena, stopping) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("crew worker {}: {e}", launch.worker);
            EXIT_CHANNEL
        }
    };
    std::process::exit(code)
}

/// Runs the worker types a program can serve as a process worker, when it was
/// started as one. See [`bootstrap`].
///
/// Every `Bootstrap` also serves [`Functions`](crate::Functions), the worker of
/// a pool of plain functions ([`Pool::spawn_fn`](crate::Pool::spawn_fn)): a
/// program that calls any `bootstrap` can run its functions in worker
/// processes, with nothing more to register.
pub struct Bootstrap {
    types: Vec<(&'static str, fn(Launch) -> !)>,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            types: vec![(
                std::any::type_name::<crate::Functions>(),
                serve_launch::<crate::Functions> as fn(Launch) -> !,
            )],
        }
    }
}

impl Bootstrap {
    /// A list with only [`Functions`](crate::Functions), which every program
    /// serves.
    pub fn new() -> Self {
        Bootstrap::default()
    }

    /// Adds a worker type this program can run in a worker process.
    #[must_use]
    pub fn worker<W: RemoteWorker>(mut self) -> Self {
        self.types.push((
            std::any::type_name::<W>(),
            serve_launch::<W> as fn(Launch) -> !,
        ));
        self
    }

    /// If this process was started by a pool as a worker, serves the requested
    /// type and exits; otherwise returns at once.
    pub fn run(self) {
        let launch = match launch_from_env() {
            None => return,
            Some(Ok(launch)) => launch,
            Some(Err(e)) => {
                eprintln!("crew worker: {e}");
                std::process::exit(EXIT_CHANNEL);
            }
        };
        match self
            .types
            .iter()
            .find(|(name, _)| *name == launch.type_name)
        {
            Some((_, serve)) => serve(launch),
            None => {
                let known: Vec<&str> = self.types.iter().map(|(n, _)| *n).collect();
                eprintln!(
                    "crew worker: this program's crew::bootstrap does not serve `{}` (it serves {:?})",
                    launch.type_name, known
                );
                std::process::exit(EXIT_UNKNOWN_TYPE);
            }
        }
    }
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.types.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Bootstrap").field("types", &names).finish()
    }
}

/// Call first in `main` of a program whose pools run `W` in worker processes
/// ([`PoolBuilder::processes`](crate::PoolBuilder::processes) re-runs the current
/// executable by default). In the pool's own process it returns at once; in a
/// worker process it serves `W` and exits, so nothing after it runs there.
///
/// For several worker types, use [`Bootstrap`]:
/// `crew::Bootstrap::new().worker::<A>().worker::<B>().run()`.
///
/// ```no_run
/// # use crew::{Context, StartError, Worker};
/// # struct Resize;
/// # impl Worker for Resize {
/// #     type Input = u32; type Output = u32; type Error = String; type Message = ();
/// #     fn start(_: &mut Context<'_>) -> Result<Self, StartError> { Ok(Resize) }
/// #     fn run(&mut self, i: u32, _: &mut Context<'_>) -> Result<u32, String> { Ok(i) }
/// # }
/// fn main() {
///     crew::bootstrap::<Resize>();
///     // ... the program itself: build a pool with `.processes(4)` ...
/// }
/// ```
pub fn bootstrap<W: RemoteWorker>() {
    Bootstrap::new().worker::<W>().run();
}

/// The `main` of a dedicated worker program (see
/// [`PoolBuilder::program`](crate::PoolBuilder::program)): serves `W` and exits.
/// Run by hand, not by a pool, it says so and exits with status 2.
pub fn serve<W: RemoteWorker>() -> ! {
    match launch_from_env() {
        Some(Ok(launch)) => serve_launch::<W>(launch),
        Some(Err(e)) => {
            eprintln!("crew worker: {e}");
            std::process::exit(EXIT_CHANNEL);
        }
        None => {
            eprintln!("this program is a crew worker; a crew pool starts it");
            std::process::exit(2);
        }
    }
}

/// Kills this process's group (itself included): the worker was told to stop,
/// or its parent is gone, so nothing the worker started may outlive it.
pub(super) fn kill_own_group() -> ! {
    let _ = signal::kill(Pid::from_raw(0), Signal::SIGKILL);
    std::process::exit(EXIT_CHANNEL)
}

/// The worker's side of the socket, shared by the runner and the watcher.
struct Channel {
    out: Mutex<OutState>,
    /// The pool's payload arena, mapped read-only.
    arena: Option<ArenaView>,
    /// Wakes the watcher: the runner became busy, or left frames to it.
    wake: Condvar,
    stream: UnixStream,
    inbox: Mutex<Inbox>,
    /// The running task's latest progress report. Locked (never across I/O)
    /// by the task's code to store, and by whoever holds `out` to take it:
    /// the watcher at each tick, the runner at a task's start and answer.
    progress: Mutex<ProgressSlot>,
    /// Whether the worker was told to stop, and the task it runs.
    stopping: Arc<Stopping>,
}

/// The running task's latest progress report, waiting to go out as one
/// *progress* frame (latest wins).
#[derive(Default)]
struct ProgressSlot {
    /// The task whose reports are taken: the running task, `None` between
    /// tasks and during a chunk (its items report nothing).
    open: Option<u64>,
    /// The latest report not sent yet.
    latest: Option<f32>,
}

impl ProgressSlot {
    /// The frame for the report waiting, if any.
    fn take(&mut self) -> Option<ToParent> {
        let id = self.open?;
        let fraction = self.latest.take()?;
        Some(ToParent::Progress { id, fraction })
    }
}

struct OutState {
    encoder: FrameEncoder,
    /// When the runner left frames to the watcher; `None` if it did not.
    deferred_since: Option<Instant>,
    /// The runner has work (it is not blocked reading the socket).
    busy: bool,
    /// When the runner last went idle.
    idle_since: Option<Instant>,
    /// The watcher waits without a timeout: the runner must wake it.
    watcher_parked: bool,
    /// When the task being run began; `None` between tasks.
    task_since: Option<Instant>,
    /// A *started* went out while its task ran, and that task's *done* has not:
    /// the pool believes it is still running. The next task boundary writes the
    /// batch out, so a death in the next task is not charged to this one.
    announced: bool,
    closed: bool,
}

/// What has arrived from the pool and not been run yet.
struct Inbox {
    decoder: FrameDecoder,
    pending: VecDeque<Pending>,
    shutting_down: bool,
}

/// What the runner has received and not handled yet, in arrival order.
enum Pending {
    Task(u64, TaskInput),
    /// A message from the pool: its kind byte, then the encoded message.
    Message(Vec<u8>),
}

/// Where a received task's encoded input is.
enum TaskInput {
    /// In its *task* frame.
    Inline(Vec<u8>),
    /// In the payload arena (checked against the mapping when it arrived).
    Shared { offset: u64, len: u64 },
    /// A chunk's items, run in order and answered with one *chunk done*.
    Chunk(ChunkItems),
}

impl Inbox {
    /// Takes every complete frame out of the decoder: tasks wait in `pending`,
    /// a cancel of a waiting task answers *not started* at once.
    fn absorb(&mut self, channel: &Channel) -> Result<(), String> {
        while let Some(message) = self.decoder.next_message::<ToWorker>().map_err(protocol)? {
            match message {
                ToWorker::Task { id, payload, .. } => self
                    .pending
                    .push_back(Pending::Task(id, TaskInput::Inline(payload))),
                ToWorker::SharedTask {
                    id, offset, len, ..
                } => {
                    if channel
                        .arena
                        .as_ref()
                        .and_then(|a| a.block(offset, len))
                        .is_none()
                    {
                        return Err(format!(
                            "protocol error from the pool: task {id}'s input ({len} bytes at {offset}) is outside the payload arena"
                        ));
                    }
                    self.pending
                        .push_back(Pending::Task(id, TaskInput::Shared { offset, len }))
                }
                ToWorker::Chunk { id, items } => self
                    .pending
                    .push_back(Pending::Task(id, TaskInput::Chunk(items))),
                ToWorker::Cancel { id } => {
                    // Not begun: drop it. Already answered: the cancel crossed the
                    // answer on the wire; nothing to do.
                    let waiting = |p: &Pending| matches!(p, Pending::Task(t, _) if *t == id);
                    if let Some(at) = self.pending.iter().position(waiting) {
                        self.pending.remove(at);
                        channel
                            .push(&ToParent::Done {
                                id,
                                outcome: Outcome::NotStarted,
                            })
                            .map_err(protocol)?;
                    }
                }
                ToWorker::Message { payload } => self.pending.push_back(Pending::Message(payload)),
                ToWorker::Shutdown => self.shutting_down = true,
            }
        }
        Ok(())
    }

    /// Reads what the socket has without blocking; false at the end of the
    /// stream, or if the socket fails (a pool that died with frames of this
    /// worker unread leaves a reset, not an end): either way the pool is gone.
    fn read_available(&mut self, stream: &UnixStream) -> bool {
        match self.decoder.read_from(&mut NonBlocking(stream)) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }
}

impl Channel {
    fn push<M: crate::wire::WireMessage>(&self, message: &M) -> Result<(), ProtocolError> {
        lock(&self.out).encoder.push(message)
    }

    /// Buffers `message` and, if nothing was waiting, starts the clock the
    /// watcher flushes by, so a message sent during a long task goes out within
    /// [`FLUSH_AFTER`].
    fn push_deferred<M: crate::wire::WireMessage>(&self, message: &M) -> Result<(), ProtocolError> {
        let mut st = lock(&self.out);
        st.encoder.push(message)?;
        if st.deferred_since.is_none() {
            st.deferred_since = Some(Instant::now());
        }
        Ok(())
    }

    /// Writes everything buffered now.
    fn flush(&self) -> io::Result<()> {
        let mut st = lock(&self.out);
        st.deferred_since = None;
        Self::write_out(&self.stream, &mut st)
    }

    fn write_out(stream: &UnixStream, st: &mut OutState) -> io::Result<()> {
        if !st.encoder.is_empty() {
            let result = (&*stream).write_all(st.encoder.as_bytes());
            st.encoder.clear();
            st.announced = st.task_since.is_some();
            result?;
        }
        Ok(())
    }

    /// The runner is about to block on the socket: nothing for the watcher.
    fn set_idle(&self) {
        let mut st = lock(&self.out);
        st.busy = false;
        st.task_since = None;
        st.idle_since = Some(Instant::now());
    }

    /// The runner has work again: the watcher keeps an eye on it (waking it if
    /// it parked).
    fn set_busy(&self) {
        let mut st = lock(&self.out);
        if !st.busy {
            st.busy = true;
            if st.watcher_parked {
                self.wake.notify_one();
            }
        }
    }

    /// Announces task `id` and marks its start. The *started* frame is buffered:
    /// it goes out with the task's *done* if the task is short, or with the
    /// watcher's next write if it is not. Its progress reports are taken from
    /// now on, unless it is a chunk.
    fn begin_task(&self, id: u64, chunk: bool) -> Result<(), String> {
        let mut st = lock(&self.out);
        *lock(&self.progress) = ProgressSlot {
            open: (!chunk).then_some(id),
            latest: None,
        };
        if st.announced {
            // The pool thinks the previous task still runs: tell it it ended
            // before this one starts.
            st.task_since = None;
            Self::write_out(&self.stream, &mut st).map_err(|e| format!("channel: {e}"))?;
        }
        st.encoder
            .push(&ToParent::Started { id })
            .map_err(protocol)?;
        let now = Instant::now();
        st.task_since = Some(now);
        if st.deferred_since.is_none() {
            st.deferred_since = Some(now);
        }
        Ok(())
    }

    fn end_task(&self, id: u64, outcome: Outcome) -> Result<(), String> {
        self.end_with(&ToParent::Done { id, outcome })
    }

    /// Buffers the answer (*done* or *chunk done*) of the task or chunk that
    /// ran, after the task's last progress report if it was not sent yet.
    fn end_with(&self, answer: &ToParent) -> Result<(), String> {
        let mut st = lock(&self.out);
        st.task_since = None;
        let last = std::mem::take(&mut *lock(&self.progress)).take();
        if let Some(progress) = last {
            st.encoder.push(&progress).map_err(protocol)?;
        }
        st.encoder.push(answer).map_err(protocol)
    }

    /// Stores a progress report of task `id` (from [`Context::progress`]):
    /// kept only while `id` is the running task, latest wins.
    fn report_progress(&self, id: u64, fraction: f32) {
        let mut slot = lock(&self.progress);
        if slot.open == Some(id) {
            slot.latest = Some(fraction);
        }
    }

    fn close(&self) {
        lock(&self.out).closed = true;
        self.wake.notify_one();
    }

    /// The watcher thread. While the runner is busy it wakes every
    /// [`FLUSH_AFTER`]: it writes frames the runner left behind, and, if one task
    /// has been running that long, reads the socket for the runner, so a
    /// *cancel* of a task waiting behind a long one is answered (the pool takes
    /// such tasks back for an idle worker). It parks once the runner has been
    /// idle for [`WATCHER_LINGER`].
    fn run_watcher(&self) {
        let mut st = lock(&self.out);
        loop {
            if st.closed {
                return;
            }
            let lingering = st.idle_since.is_some_and(|t| t.elapsed() < WATCHER_LINGER);
            if !st.busy && st.deferred_since.is_none() && !lingering {
                st.watcher_parked = true;
                st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                st.watcher_parked = false;
                continue;
            }
            st = self
                .wake
                .wait_timeout(st, FLUSH_AFTER)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if st.closed {
                return;
            }
            let now = Instant::now();
            let progress = lock(&self.progress).take();
            if let Some(progress) = progress {
                // A report waits at most one tick. The frame is tiny, so it
                // always fits; were it refused, the next report would do.
                if st.encoder.push(&progress).is_ok() {
                    st.deferred_since = None;
                    if Self::write_out(&self.stream, &mut st).is_err() {
                        return;
                    }
                }
            }
            if st
                .deferred_since
                .is_some_and(|t| now.duration_since(t) >= FLUSH_AFTER)
            {
                st.deferred_since = None;
                if Self::write_out(&self.stream, &mut st).is_err() {
                    return; // the runner sees the broken stream too
                }
            }
            let long_task = st
                .task_since
                .is_some_and(|t| now.duration_since(t) >= FLUSH_AFTER);
            // Once told to stop, the worker reads nothing more.
            if long_task && !self.stopping.is_requested() {
                drop(st);
                // `try_lock`: if the runner holds the inbox, it is between tasks
                // and reads for itself.
                if let Ok(mut inbox) = self.inbox.try_lock() {
                    if !inbox.read_available(&self.stream) {
                        // The pool is gone: the worker stops (`worker_stop.rs`).
                        self.stopping.request();
                    }
                    if let Err(e) = inbox.absorb(self) {
                        eprintln!("crew worker: {e}");
                        std::process::exit(EXIT_CHANNEL);
                    }
                }
                st = lock(&self.out);
                if Self::write_out(&self.stream, &mut st).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads without blocking: `Ok(0)` only at the end of the stream, `WouldBlock`
/// when nothing is there.
pub(super) struct NonBlocking<'a>(pub(super) &'a UnixStream);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match recv(self.0.as_fd().as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }
}

/// Reads into `decoder`, polling without blocking for up to `budget` before
/// blocking in `read`. Blocking costs a thread wake-up when the bytes come
/// (several microseconds on a VM, the larger part of a round trip); when an
/// answer or the next task is expected within the budget, polling is cheaper.
/// Between polls the thread yields, so a peer on the same core can run.
pub(super) fn read_soon(
    decoder: &mut FrameDecoder,
    stream: &UnixStream,
    budget: Duration,
) -> io::Result<usize> {
    if !budget.is_zero() {
        let since = Instant::now();
        loop {
            match decoder.read_from(&mut NonBlocking(stream)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if since.elapsed() >= budget {
                        break;
                    }
                    std::thread::yield_now();
                }
                other => return other,
            }
        }
    }
    decoder.read_from(&mut &*stream)
}

fn protocol(e: ProtocolError) -> String {
    format!("protocol error from the pool: {e}")
}

/// The worker's conversation with the pool, until shutdown, or until it is told
/// to stop (`worker_stop.rs`; then it does not return).
fn run_worker<W: RemoteWorker>(
    stream: UnixStream,
    id: WorkerId,
    arena: Option<ArenaView>,
    stopping: Arc<Stopping>,
) -> Result<(), String> {
    let io_err = |e: io::Error| format!("channel: {e}");
    let channel = Arc::new(Channel {
        out: Mutex::new(OutState {
            encoder: FrameEncoder::new(DEFAULT_FRAME_LIMIT),
            deferred_since: None,
            busy: false,
            idle_since: None,
            watcher_parked: false,
            task_since: None,
            announced: false,
            closed: false,
        }),
        wake: Condvar::new(),
        arena,
        stream: stream.try_clone().map_err(io_err)?,
        inbox: Mutex::new(Inbox {
            // Until the pool's hello sets it: the first frame must be that
            // hello, which is far smaller.
            decoder: FrameDecoder::new(MIN_FRAME_LIMIT),
            pending: VecDeque::new(),
            shutting_down: false,
        }),
        progress: Mutex::new(ProgressSlot::default()),
        stopping,
    });
    // The pool's hello first: its frame limit (the pool's `max_message_size`
    // and the frame's fields) becomes this side's too, for the frames it reads
    // and announces as for the frames it sends, so one setting bounds both
    // directions. The pool sends its hello without waiting for this one, so
    // waiting for it cannot deadlock; it is usually in the socket already.
    let hello = {
        let mut inbox = lock(&channel.inbox);
        let hello = loop {
            if let Some(frame) = inbox.decoder.next_frame().map_err(protocol)? {
                break Hello::decode(frame).map_err(protocol)?;
            }
            if inbox.decoder.read_from(&mut &stream).map_err(io_err)? == 0 {
                // The pool is gone, or told this worker to stop: there is no
                // state to stop yet.
                kill_own_group();
            }
        };
        inbox.decoder.set_frame_limit(hello.frame_limit);
        hello
    };
    hello.check_role(Role::Parent).map_err(protocol)?;
    lock(&channel.out)
        .encoder
        .set_frame_limit(hello.frame_limit);
    channel
        .push(&Hello::new(Role::Worker, hello.frame_limit))
        .map_err(protocol)?;
    channel.flush().map_err(io_err)?;

    let watcher = {
        let channel = Arc::clone(&channel);
        std::thread::Builder::new()
            .name("crew-watcher".into())
            .spawn(move || channel.run_watcher())
            .map_err(io_err)?
    };
    let finish = |channel: &Channel| {
        let flushed = channel.flush();
        channel.close();
        let _ = watcher.join();
        flushed.map_err(io_err)
    };

    let mut runner = Runner::<W> {
        id,
        worker: None,
        channel: &channel,
        outbox: Arc::new(ChannelOutbox::<W>(
            Arc::clone(&channel),
            std::marker::PhantomData,
        )),
        sticky: Vec::new(),
    };
    if let Err(message) = runner.start() {
        let message = codec::shorten(message, hello.frame_limit);
        channel
            .push(&ToParent::StartFailed { message })
            .map_err(protocol)?;
        return finish(&channel);
    }
    channel.push(&ToParent::Ready).map_err(protocol)?;
    channel.set_busy();

    let mut last_read = Instant::now();
    loop {
        // Told to stop (during `start`, a message, or the task that just ended):
        // no further task.
        if channel.stopping.is_requested() {
            stop_early(&mut runner);
        }
        let next = {
            let mut inbox = lock(&channel.inbox);
            if !inbox.pending.is_empty() && last_read.elapsed() >= POLL_EVERY {
                if !inbox.read_available(&stream) {
                    // The pool is gone.
                    drop(inbox);
                    channel.stopping.request();
                    stop_early(&mut runner);
                }
                last_read = Instant::now();
            }
            // Frames may already be buffered (they can arrive with the hello), so
            // the decoder is drained before any decision to block.
            inbox.absorb(&channel)?;
            match inbox.pending.pop_front() {
                Some(next) => next,
                None if inbox.shutting_down => break,
                None => {
                    // Nothing to run: block until the pool speaks.
                    channel.set_idle();
                    channel.flush().map_err(io_err)?;
                    match read_soon(&mut inbox.decoder, &stream, IDLE_POLL) {
                        Ok(n) if n > 0 => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // The end of the channel: the pool closed it without a
                        // shutdown (it is gone), or this worker was told to
                        // stop (which shuts its reading side down to wake it
                        // here). A failed read is a pool gone too.
                        _ => {
                            drop(inbox);
                            channel.stopping.request();
                            stop_early(&mut runner);
                        }
                    }
                    last_read = Instant::now();
                    channel.set_busy();
                    continue;
                }
            }
        };
        let (task, payload) = match next {
            Pending::Task(task, payload) => (task, payload),
            Pending::Message(payload) => {
                runner.on_message(&payload)?;
                continue;
            }
        };
        channel.begin_task(task, matches!(payload, TaskInput::Chunk(_)))?;
        let bytes = match &payload {
            TaskInput::Inline(bytes) => bytes.as_slice(),
            TaskInput::Shared { offset, len } => channel
                .arena
                .as_ref()
                .and_then(|a| a.block(*offset, *len))
                .expect("checked when the frame arrived"),
            TaskInput::Chunk(items) => {
                let answer = runner.run_chunk(task, items, hello.frame_limit);
                drop(payload);
                if let Some(answer) = answer {
                    channel.end_with(&answer)?;
                }
                continue;
            }
        };
        // `None`: told to stop while it ran; the loop's first check stops.
        if let Some(outcome) = runner.run(task, bytes, hello.frame_limit) {
            channel.end_task(task, outcome)?;
        }
        drop(payload);
    }
    runner.stop();
    finish(&channel)
}

/// The worker was told to stop (`worker_stop.rs`): `W::stop`, then what is
/// buffered goes out (answers of tasks that ended before, messages `stop`
/// sent), then the process group is killed, this process with it.
fn stop_early<W: RemoteWorker>(runner: &mut Runner<'_, W>) -> ! {
    runner.stop();
    let _ = runner.channel.flush();
    kill_own_group()
}

/// Runs `W` for [`run_worker`]: start, one task, stop, and a restart after a
/// panic, as on threads.
struct Runner<'a, W: RemoteWorker> {
    id: WorkerId,
    worker: Option<W>,
    channel: &'a Channel,
    /// Where `Context::send` goes: one for the process, shared by every context.
    outbox: Arc<dyn Outbox>,
    /// Sticky messages received so far: given again to a rebuilt state.
    sticky: Vec<W::Message>,
}

/// The worker process's outbox: [`Context::send`] encodes the message into the
/// frame buffer, ahead of the answer of the task that sent it. It holds a share
/// of the channel, so a context that outlives a call (an async task's) can keep
/// it.
struct ChannelOutbox<W: RemoteWorker>(Arc<Channel>, std::marker::PhantomData<fn(W)>);

impl<W: RemoteWorker> Outbox for ChannelOutbox<W> {
    fn send(
        &self,
        _from: WorkerId,
        message: Box<dyn std::any::Any + Send>,
    ) -> Result<(), Box<dyn std::any::Any + Send>> {
        let message = message.downcast::<W::Message>()?;
        match codec::encode(&*message) {
            Ok(payload) => {
                if let Err(e) = self.0.push_deferred(&ToParent::Message { payload }) {
                    eprintln!("crew worker: a message was not sent: {e}");
                }
            }
            Err(e) => eprintln!("crew worker: a message could not be encoded: {e}"),
        }
        Ok(())
    }

    fn progress(&self, task: Option<TaskId>, fraction: f32) {
        if let Some(task) = task {
            self.0.report_progress(task.0, fraction);
        }
    }
}

impl<W: RemoteWorker> Runner<'_, W> {
    fn start(&mut self) -> Result<(), String> {
        let mut ctx = Context::new(self.id, None).with_outbox(&self.outbox);
        match catch_unwind(AssertUnwindSafe(|| W::start(&mut ctx))) {
            Ok(Ok(worker)) => {
                self.worker = Some(worker);
                Ok(())
            }
            Ok(Err(e)) => Err(StartError::to_string(&e)),
            Err(panic) => Err(format!(
                "Worker::start panicked: {}",
                panic_message(&*panic)
            )),
        }
    }

    /// A message from the pool, between tasks. A panic in `on_message` rebuilds
    /// the state, as a task's panic does.
    fn on_message(&mut self, payload: &[u8]) -> Result<(), String> {
        let (kind, encoded) = payload
            .split_first()
            .ok_or("protocol error from the pool: an empty message")?;
        let message: W::Message = codec::decode(encoded)
            .map_err(|e| format!("crew could not decode a message from the pool: {e}"))?;
        if *kind == codec::MESSAGE_STICKY {
            self.sticky.push(message.clone());
        }
        self.deliver(message);
        Ok(())
    }

    fn deliver(&mut self, message: W::Message) {
        let Some(worker) = self.worker.as_mut() else {
            return;
        };
        let mut ctx = Context::new(self.id, None).with_outbox(&self.outbox);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| worker.on_message(message, &mut ctx)))
        {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(panic)));
            self.restart();
        }
    }

    /// Rebuilds the state after a panic and gives it the sticky messages again.
    fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.start() {
            eprintln!("crew worker {}: restart after a panic failed: {e}", self.id);
            let _ = self.channel.flush();
            std::process::exit(EXIT_CHANNEL);
        }
        for message in self.sticky.clone() {
            self.deliver(message);
        }
    }

    fn stop(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            let mut ctx = Context::new(self.id, None).with_outbox(&self.outbox);
            let _ = catch_unwind(AssertUnwindSafe(|| worker.stop(&mut ctx)));
        }
    }

    /// Runs a chunk's items in order, each exactly as [`run`](Self::run) runs a
    /// task (a panic fails that item only and rebuilds the worker's state), and
    /// builds the one answer. Item `i` runs as task `chunk + i`: the pool
    /// reserved those ids for the items.
    ///
    /// The answer must fit the pool's frame limit. Each item's outcome fits on
    /// its own (`fit_outcome`); if the next one would not fit with those before
    /// it, the answer ends there: it is shorter than the chunk, and the pool
    /// runs the unanswered items again as tasks of their own (the item whose
    /// outcome did not fit ran here, and runs once more there; the ones after
    /// it are not run here at all). See `wire/protocol.md`, *chunk done*.
    ///
    /// Told to stop, it ends the answer before the item that was running (and
    /// the pool runs that one and the rest elsewhere, as above); with no item
    /// answered, there is no answer (`None`).
    fn run_chunk(&mut self, chunk: u64, items: &ChunkItems, limit: u32) -> Option<ToParent> {
        let since = Instant::now();
        let mut outcomes = ChunkOutcomes::new();
        // The frame's fixed fields (kind, id, run time, count) and a margin.
        let budget = (limit as usize).saturating_sub(64);
        for (i, input) in items.iter().enumerate() {
            let Some(outcome) = self.run(chunk.wrapping_add(i as u64), input, limit) else {
                if outcomes.is_empty() {
                    return None;
                }
                break;
            };
            let item = match &outcome {
                Outcome::Ok(bytes) => ItemOutcome::Ok(bytes),
                Outcome::UserError(bytes) => ItemOutcome::UserError(bytes),
                Outcome::Panicked(message) => ItemOutcome::Panicked(message),
                Outcome::TooLarge(size) => ItemOutcome::TooLarge(*size),
                Outcome::NotStarted => ItemOutcome::Panicked("the item did not run"),
            };
            if outcomes.encoded_len() + item.encoded_len() > budget {
                break;
            }
            outcomes.push(item);
        }
        Some(ToParent::ChunkDone {
            id: chunk,
            run_nanos: u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX),
            outcomes,
        })
    }

    /// Runs one task (or chunk item) and gives its outcome, or `None` if the
    /// worker was told to stop before it returned: that outcome is not sent,
    /// the kill decided it (`worker_stop.rs`).
    fn run(&mut self, task: u64, payload: &[u8], limit: u32) -> Option<Outcome> {
        let input: W::Input = match codec::decode(payload) {
            Ok(input) => input,
            Err(e) => {
                return Some(Outcome::Panicked(codec::shorten(
                    format!("crew could not decode the task's input in the worker: {e}"),
                    limit,
                )))
            }
        };
        let Some(worker) = self.worker.as_mut() else {
            return Some(Outcome::Panicked(
                "the worker has no state (its restart failed)".into(),
            ));
        };
        let stopping = &self.channel.stopping;
        let header = stopping.enter(task);
        let mut ctx = Context::new(self.id, Some(&header)).with_outbox(&self.outbox);
        let result = catch_unwind(AssertUnwindSafe(|| worker.run(input, &mut ctx)));
        if stopping.leave() {
            // Even after a panic: `stop` runs once, on this state, as the
            // rebuild after a panic would have begun.
            if let Err(panic) = result {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(panic)));
            }
            return None;
        }
        let outcome = match result {
            Ok(Ok(output)) => match codec::encode(&output) {
                Ok(bytes) => Outcome::Ok(bytes),
                Err(e) => Outcome::Panicked(format!("crew could not encode the output: {e}")),
            },
            Ok(Err(error)) => match codec::encode(&error) {
                Ok(bytes) => Outcome::UserError(bytes),
                Err(e) => Outcome::Panicked(format!("crew could not encode the error: {e}")),
            },
            Err(panic) => {
                let message = panic_message(&*panic);
                let _ = catch_unwind(AssertUnwindSafe(move || drop(panic)));
                // The state may be half-updated: rebuild it, as on threads.
                self.restart();
                Outcome::Panicked(codec::shorten(message, limit))
            }
        };
        Some(codec::fit_outcome(outcome, limit))
    }
}
