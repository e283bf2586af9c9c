//! The conformance suite: every scenario is written once, against the `Pool<W>`
//! API, and runs on both backends, as `threads::<scenario>` and
//! `processes::<scenario>` (`cargo test -p crew-pool --test conformance`), and
//! on a third, test-only one, `loopback::<scenario>`: an engine implemented
//! outside crew through the backend seam (`tests/loopback_engine/`), which runs its
//! tasks on an inner thread pool and so keeps the thread backend's promises.
//!
//! A scenario is a function of the [`Backend`] it runs on; it builds its pool with
//! `backend.builder(n)`. Where the two backends promise different things (a
//! running task's cancel is cooperative on threads but kills the worker process,
//! say), the scenario says so in a `match backend` and asserts each side; the
//! README's feature table states the same differences, with the reasons.
//!
//! The process pools re-run this test binary as their worker program:
//! `crew_worker_entry` below is the worker's `main`.
//!
//! The probe worker blocks on a [`FileGate`] (a file the test creates), which
//! works the same in this process and in a worker process. The test never
//! sleeps to make something true: it waits on a condition with a deadline
//! ([`common::wait_until`], [`LIMIT`]).

mod common;
mod loopback_engine;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{recv_to_end, recv_until, wait_until, worker_processes, LIMIT};
use std::sync::mpsc::RecvTimeoutError;

use crew::{
    Context, Event, ExitReason, Health, Messages, Pool, PoolBuilder, Priority, StartError, Task,
    TaskError, TaskId, TaskOutcome, Worker, WorkerId,
};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

// ------------------------------------------------------------------ the probe

/// What a probe task does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Job {
    /// Answers the number.
    Echo(u64),
    /// Fails with the worker's own error.
    Fail(String),
    /// Panics with this message.
    Panic(String),
    /// Waits while the file at `gate` exists (then answers 0), or until the
    /// task is cancelled (threads: `Context::is_cancelled`; a worker process is
    /// killed instead). Gives up after [`LIMIT`], so a broken test cannot leave
    /// a worker behind for ever.
    Hold { gate: PathBuf },
    /// For each gate in turn: reports `i / (gates + 1)` of progress, then
    /// holds like `Hold` until that gate opens. Answers the number of gates.
    Steps { gates: Vec<PathBuf> },
}

/// Every answer says who ran the task and how many tasks that worker instance
/// has run, this one included (its state: a panic rebuilds it, back to 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reply {
    value: u64,
    worker: u64,
    ran: u64,
}

struct Probe {
    ran: u64,
}

/// What a probe worker tells the pool outside tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Note {
    /// Its `Worker::stop` ran (sent from inside it: the sender is the worker).
    Stopped,
}

impl Worker for Probe {
    type Input = Job;
    type Output = Reply;
    type Error = String;
    type Message = Note;

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Probe { ran: 0 })
    }

    fn run(&mut self, job: Job, ctx: &mut Context<'_>) -> Result<Reply, String> {
        self.ran += 1;
        let value = match job {
            Job::Echo(n) => n,
            Job::Fail(e) => return Err(e),
            Job::Panic(m) => panic!("{m}"),
            Job::Hold { gate } => {
                hold(&gate, ctx)?;
                0
            }
            Job::Steps { gates } => {
                let steps = gates.len() + 1;
                for (i, gate) in gates.iter().enumerate() {
                    ctx.progress((i + 1) as f32 / steps as f32);
                    hold(gate, ctx)?;
                }
                gates.len() as u64
            }
        };
        Ok(Reply {
            value,
            worker: ctx.worker_id().as_u64(),
            ran: self.ran,
        })
    }

    fn stop(&mut self, ctx: &mut Context<'_>) {
        // Counted by the scenarios that retire workers (`stops_until`); the
        // messages channel reaches the test from a worker process too.
        let _ = ctx.send(Note::Stopped);
    }
}

/// Waits while the file at `gate` exists, or until the task is cancelled, or
/// [`LIMIT`] (see `Job::Hold`).
fn hold(gate: &std::path::Path, ctx: &Context<'_>) -> Result<(), String> {
    let deadline = Instant::now() + LIMIT;
    while gate.exists() {
        if ctx.is_cancelled() {
            return Err("cancelled".into());
        }
        if Instant::now() > deadline {
            return Err("the gate never opened".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The worker processes' `main`: in a worker it serves and exits; in the test
/// run itself it returns at once.
#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Probe>().run();
}

// ------------------------------------------------------------------ backends

/// Where a scenario's pool runs its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Threads,
    Processes,
    /// `tests/loopback_engine/`: threads behind the engine seam.
    Loopback,
}

impl Backend {
    /// A builder for a pool of `n` probe workers on this backend.
    fn builder(self, n: usize) -> PoolBuilder<Probe> {
        match self {
            Backend::Threads => Pool::<Probe>::builder().workers(n),
            Backend::Processes => worker_processes::<Probe>(n),
            Backend::Loopback => loopback_engine::Loopback::<Probe>::builder(n),
        }
    }

    /// A pool of `n` workers, every one of them started.
    fn pool(self, n: usize) -> Pool<Probe> {
        let pool = self.builder(n).build().unwrap();
        full_size(&pool);
        pool
    }
}

/// Instantiates each scenario once per backend: `threads::name`,
/// `processes::name` and `loopback::name`. Add a scenario by naming it here.
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod threads {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::Threads);
                }
            )*
        }
        mod processes {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::Processes);
                }
            )*
        }
        mod loopback {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::Loopback);
                }
            )*
        }
    };
}

conformance!(
    results_and_user_errors,
    panics_cross_and_the_worker_state_is_rebuilt,
    cancel_of_a_queued_task,
    cancel_of_a_running_task,
    cancel_queued_keeps_the_pool,
    cancel_queued_racing_completion,
    timeout_of_a_blocked_task,
    deadline_counts_from_submission,
    wait_idle_with_work_in_flight,
    shutdown_runs_queued_work,
    terminate_closes_queued_and_cancels_running,
    submit_after_shutdown_is_a_closed_error,
    kill_worker_of_a_busy_worker,
    workers_and_size,
    events_per_task_and_worker,
    stats_reconcile,
    health_reports_a_backlog,
    priorities,
    sticky_keys,
    submit_async_and_await,
    progress_reaches_the_caller_before_the_result,
    resize_grows_then_retires_idle_workers,
    resize_lets_busy_workers_finish_their_task,
    resize_racing_submit_loses_nothing,
    elastic_grows_under_a_burst_and_shrinks_when_idle,
);

// ------------------------------------------------------------------ helpers

/// A file that holds `Job::Hold` tasks while it exists; opening the gate
/// removes it. Each gate has its own path. Dropping the gate opens it, so a
/// failing test leaves neither a file nor a worker waiting.
struct FileGate(PathBuf);

impl FileGate {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "crew-conformance-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, SeqCst)
        ));
        std::fs::write(&path, b"closed").unwrap();
        FileGate(path)
    }

    fn hold(&self) -> Job {
        Job::Hold {
            gate: self.0.clone(),
        }
    }

    fn open(&self) {
        std::fs::remove_file(&self.0).unwrap();
    }
}

impl Drop for FileGate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Joins `task` within [`LIMIT`].
#[track_caller]
fn join(task: Task<Reply, String>) -> Result<Reply, TaskError<String>> {
    common::join(task)
}

/// Joins `task` and expects an answer.
#[track_caller]
fn reply(task: Task<Reply, String>) -> Reply {
    match join(task) {
        Ok(reply) => reply,
        Err(e) => panic!("expected an answer, got {e:?}"),
    }
}

#[track_caller]
fn echo(pool: &Pool<Probe>, n: u64) -> Reply {
    let r = reply(pool.submit(Job::Echo(n)).unwrap());
    assert_eq!(r.value, n);
    r
}

/// Waits until the pool has its full size again, every worker started.
#[track_caller]
fn full_size(pool: &Pool<Probe>) {
    wait_until("the pool is at full size, every worker started", || {
        let stats = pool.stats();
        stats.per_worker.len() == pool.size()
            && stats.per_worker.iter().all(|w| w.started)
            && pool.workers().len() == pool.size()
    });
}

/// Waits until `task` runs on a worker (as the pool sees it), and returns that
/// worker.
#[track_caller]
fn wait_running(pool: &Pool<Probe>, task: &Task<Reply, String>) -> WorkerId {
    let id = task.id();
    let mut on = None;
    wait_until(&format!("{id} runs"), || {
        on = pool
            .stats()
            .per_worker
            .iter()
            .find(|w| w.current_task == Some(id))
            .map(|w| w.id);
        on.is_some()
    });
    let worker = on.unwrap();
    assert_eq!(task.worker(), Some(worker));
    worker
}

fn is_terminal(e: &Event) -> bool {
    matches!(e, Event::TaskFinished { .. } | Event::TaskDiscarded { .. })
}

/// The one terminal event of `task`: its outcome, and whether it ran
/// (`TaskFinished`) or not (`TaskDiscarded`).
#[track_caller]
fn outcome_of(events: &[Event], task: TaskId) -> (TaskOutcome, bool) {
    let t: Vec<&Event> = events
        .iter()
        .filter(|e| e.task() == Some(task) && is_terminal(e))
        .collect();
    assert_eq!(t.len(), 1, "one terminal event for {task}: {events:#?}");
    (
        t[0].outcome().unwrap(),
        matches!(t[0], Event::TaskFinished { .. }),
    )
}

/// The reasons of every `WorkerExited` of `worker`.
fn exits_of(events: &[Event], worker: WorkerId) -> Vec<ExitReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::WorkerExited {
                worker: w, reason, ..
            } if *w == worker => Some(*reason),
            _ => None,
        })
        .collect()
}

fn started(events: &[Event], worker: WorkerId) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::WorkerStarted { worker: w, .. } if *w == worker))
}

/// Receives the workers' [`Note::Stopped`] until every worker in `workers` has
/// said it; returns how many each sender said so far.
#[track_caller]
fn stops_until(messages: &Messages<Note>, workers: &HashSet<WorkerId>) -> HashMap<WorkerId, usize> {
    let deadline = Instant::now() + LIMIT;
    let mut stops: HashMap<WorkerId, usize> = HashMap::new();
    while !workers.iter().all(|w| stops.contains_key(w)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match messages.recv_timeout(left) {
            Ok((from, Note::Stopped)) => *stops.entry(from).or_default() += 1,
            Err(e) => panic!("no stop from each of {workers:?} ({e:?}); saw {stops:?}"),
        }
    }
    stops
}

/// Every `Worker::stop` a pool's workers report until the pool (shut down)
/// ends the messages stream, by worker, added to `stops`.
#[track_caller]
fn stops_to_end(
    messages: &Messages<Note>,
    mut stops: HashMap<WorkerId, usize>,
) -> HashMap<WorkerId, usize> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match messages.recv_timeout(left) {
            Ok((from, Note::Stopped)) => *stops.entry(from).or_default() += 1,
            Err(RecvTimeoutError::Disconnected) => return stops,
            Err(RecvTimeoutError::Timeout) => panic!("the messages did not end; saw {stops:?}"),
        }
    }
}

/// Polls `future` once, with a waker that does nothing.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    std::pin::Pin::new(future).poll(&mut cx)
}

// ------------------------------------------------------------------ scenarios

/// Results come back, in order, from workers the pool lists; the worker's own
/// error comes back as it was returned, and the pool goes on.
fn results_and_user_errors(backend: Backend) {
    let pool = backend.pool(2);
    let workers: HashSet<WorkerId> = pool.workers().into_iter().collect();
    let tasks: Vec<_> = (0..200)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let id = task.id();
        let r = reply(task);
        assert_eq!(r.value, i as u64, "{id}");
        assert!(
            workers.iter().any(|w| w.as_u64() == r.worker),
            "{r:?} ran on a worker the pool lists ({workers:?})"
        );
    }

    let err = join(pool.submit(Job::Fail("bad input".into())).unwrap()).unwrap_err();
    assert!(err.is_user(), "{err:?}");
    assert!(!err.is_panic() && !err.is_crash() && !err.is_cancelled());
    assert_eq!(err.user_error().map(String::as_str), Some("bad input"));
    assert_eq!(err.into_user_error().ok().as_deref(), Some("bad input"));

    let batch = pool
        .submit_batch((1000..1050).map(Job::Echo))
        .unwrap()
        .into_iter()
        .map(|t| reply(t).value)
        .collect::<Vec<_>>();
    assert_eq!(batch, (1000..1050).collect::<Vec<_>>());

    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.completed, 250, "{stats}");
    assert_eq!(stats.failed, 1, "{stats}");
    assert_eq!(stats.crashed, 0, "{stats}");
    pool.shutdown();
}

/// A panic's message reaches the caller; the worker rebuilds its state (same
/// worker, fresh instance) and the pool keeps working.
fn panics_cross_and_the_worker_state_is_rebuilt(backend: Backend) {
    let pool = backend.pool(1);
    let events = pool.events();
    let first = echo(&pool, 1);
    let second = echo(&pool, 2);
    assert_eq!((first.ran, second.ran), (1, 2), "one instance runs both");

    let err = join(pool.submit(Job::Panic("kaboom".into())).unwrap()).unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.panic_message(), Some("kaboom"));

    let after = echo(&pool, 3);
    assert_eq!(after.worker, first.worker, "the same worker goes on");
    assert_eq!(after.ran, 1, "its state was rebuilt by a fresh `start`");
    let stats = pool.stats();
    assert_eq!(stats.panicked, 1, "{stats}");
    assert_eq!(stats.crashed, 0, "a panic is not a crash: {stats}");
    assert_eq!(pool.workers().len(), 1);

    match backend {
        Backend::Threads | Backend::Loopback => {
            let seen = recv_until(&events, |seen| {
                seen.iter()
                    .any(|e| matches!(e, Event::WorkerRestarted { .. }))
            });
            let restarted = seen
                .iter()
                .find_map(|e| match e {
                    Event::WorkerRestarted { worker, reason, .. } => Some((*worker, reason)),
                    _ => None,
                })
                .unwrap();
            assert_eq!(restarted.0.as_u64(), first.worker);
            assert!(!restarted.1.is_empty(), "{restarted:?}");
        }
        Backend::Processes => {
            // The worker process rebuilds its state itself and does not tell the
            // pool, so no `WorkerRestarted` is promised (README feature table).
        }
    }
    pool.shutdown();
}

/// A task cancelled while queued resolves as cancelled at once and never runs.
fn cancel_of_a_queued_task(backend: Backend) {
    let pool = backend.pool(1);
    let gate = FileGate::new();
    let blocker = pool.submit(gate.hold()).unwrap();
    wait_running(&pool, &blocker);
    let queued = pool.submit(Job::Echo(1)).unwrap();
    assert!(!queued.is_finished());
    assert!(queued.cancel(), "the first cancel resolves it");
    assert!(queued.is_finished(), "resolved at once");
    assert!(!queued.cancel(), "a second cancel does nothing");
    let err = join(queued).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");

    gate.open();
    assert_eq!(reply(blocker).ran, 1);
    // The worker's count shows what ran: the blocker, then this echo; the
    // cancelled task in between never did.
    assert_eq!(echo(&pool, 2).ran, 2);
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 1, "{stats}");
    assert_eq!(stats.completed, 2, "{stats}");
    pool.shutdown();
}

/// Cancelling a running task resolves it as cancelled at once; the pool keeps
/// its size. Threads: cooperative (the task sees `is_cancelled` and returns;
/// the worker goes on). Processes: the worker process is killed and replaced.
fn cancel_of_a_running_task(backend: Backend) {
    let pool = backend.pool(1);
    let gate = FileGate::new();
    let task = pool.submit(gate.hold()).unwrap();
    let worker = wait_running(&pool, &task);
    assert!(task.cancel());
    assert!(
        task.is_finished(),
        "resolved at once, whatever the task does"
    );
    let err = join(task).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");

    full_size(&pool);
    let after = echo(&pool, 5);
    match backend {
        Backend::Threads | Backend::Loopback => {
            assert_eq!(after.worker, worker.as_u64(), "the same worker goes on");
            assert_eq!(after.ran, 2, "with the same state");
        }
        Backend::Processes => {
            assert_ne!(after.worker, worker.as_u64(), "a replacement runs it");
            assert!(!pool.workers().contains(&worker));
            assert_eq!(after.ran, 1);
        }
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    assert_eq!(pool.stats().cancelled, 1);
    pool.shutdown();
}

/// `cancel_queued` cancels every task waiting behind a busy worker, each once
/// and without running it, by the time it returns; the running task goes on,
/// and the pool takes and runs new work. Processes: the tasks wait in the
/// worker's window, and are taken back from it.
fn cancel_queued_keeps_the_pool(backend: Backend) {
    let pool = backend.pool(1);
    let events = pool.events();
    let gate = FileGate::new();
    let blocker = pool.submit(gate.hold()).unwrap();
    wait_running(&pool, &blocker);
    let queued: Vec<_> = (0..5).map(|i| pool.submit(Job::Echo(i)).unwrap()).collect();
    let ids: Vec<TaskId> = queued.iter().map(Task::id).collect();

    assert_eq!(pool.cancel_queued(), 5);
    assert!(queued.iter().all(Task::is_finished), "resolved on return");
    for task in queued {
        assert!(!task.cancel(), "already resolved, once");
        let err = join(task).unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
    }
    assert!(!blocker.is_finished(), "the running task is not touched");
    assert_eq!(pool.cancel_queued(), 0, "nothing left to cancel");

    let after = pool.submit(Job::Echo(7)).unwrap();
    gate.open();
    assert_eq!(reply(blocker).ran, 1);
    // The worker's count: the blocker, then `after`; no cancelled task ran.
    assert_eq!(reply(after).ran, 2);
    assert_eq!(echo(&pool, 8).ran, 3);
    assert!(pool.wait_idle_timeout(LIMIT));
    let seen = recv_until(&events, |seen| {
        ids.iter()
            .all(|id| seen.iter().any(|e| e.task() == Some(*id) && is_terminal(e)))
    });
    for id in ids {
        assert_eq!(outcome_of(&seen, id), (TaskOutcome::Cancelled, false));
    }
    let stats = pool.stats();
    assert_eq!((stats.cancelled, stats.completed), (5, 3), "{stats}");
    assert_eq!(stats.finished(), stats.submitted, "{stats}");
    pool.shutdown();
}

/// `cancel_queued` racing the workers (and a submitter): every task resolves
/// exactly once, completed or cancelled, and the cancelled ones are exactly
/// those the calls counted.
fn cancel_queued_racing_completion(backend: Backend) {
    let pool = backend.pool(2);
    let first: Vec<_> = (0..300)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    // The workers are under way: the calls below race their completions.
    wait_until("a task completed", || pool.stats().completed > 0);
    let canceller = {
        let pool = pool.clone();
        std::thread::spawn(move || (0..3).map(|_| pool.cancel_queued()).sum::<usize>())
    };
    let more: Vec<_> = (300..400)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    let counted = canceller.join().unwrap() as u64;

    let (mut completed, mut cancelled) = (0, 0);
    for (i, task) in first.into_iter().chain(more).enumerate() {
        match join(task) {
            Ok(r) => {
                assert_eq!(r.value, i as u64);
                completed += 1;
            }
            Err(e) => {
                assert!(e.is_cancelled(), "{e:?}");
                cancelled += 1;
            }
        }
    }
    assert_eq!(cancelled, counted, "each cancelled task counted once");
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(
        (stats.completed, stats.cancelled),
        (completed, cancelled),
        "{stats}"
    );
    assert_eq!(stats.submitted, 400, "{stats}");
    assert_eq!(stats.finished(), stats.submitted, "{stats}");
    echo(&pool, 1);
    pool.shutdown();
}

/// A task's `Context::progress` reaches its handle while it runs, each report
/// before the task goes on (it waits on a gate after each), and before its
/// result; the finished task keeps its last value. Processes: the worker
/// sends the report while the task waits (its watcher's batch). An engine
/// that forwards the inner pool's handles (loopback) keeps the promise too.
fn progress_reaches_the_caller_before_the_result(backend: Backend) {
    let pool = backend.pool(1);
    let gates = [FileGate::new(), FileGate::new(), FileGate::new()];
    let task = pool
        .submit(Job::Steps {
            gates: gates.iter().map(|g| g.0.clone()).collect(),
        })
        .unwrap();
    let mut progress = task.watch_progress();
    for (gate, expected) in gates.iter().zip([0.25, 0.5, 0.75]) {
        assert_eq!(progress.recv_timeout(LIMIT), Ok(expected));
        assert_eq!(task.progress(), Some(expected));
        assert!(!task.is_finished(), "the task waits on its gate");
        gate.open();
    }
    // Nothing after the last report but the end.
    assert_eq!(
        progress.recv_timeout(LIMIT),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    );
    assert!(task.is_finished());
    assert_eq!(
        task.progress(),
        Some(0.75),
        "a finished task keeps its value"
    );
    assert_eq!(reply(task).value, 3);
    assert_eq!(
        progress.latest(),
        Some(0.75),
        "the watch outlives the handle"
    );

    // A task that never reports has none, before and after.
    let quiet = pool.submit(Job::Echo(1)).unwrap();
    let mut watch = quiet.watch_progress();
    assert_eq!(
        watch.recv_timeout(LIMIT),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    );
    assert_eq!(quiet.progress(), None);
    assert_eq!(reply(quiet).value, 1);
    pool.shutdown();
}

/// A blocked task past its timeout resolves as timed out, and the pool is back
/// at full size. Threads: the task sees `is_cancelled` and returns within
/// `abandon_grace`, so its thread is kept. Processes: the worker is killed and
/// replaced.
fn timeout_of_a_blocked_task(backend: Backend) {
    let pool = backend.pool(2);
    let gate = FileGate::new();
    let task = pool
        .task(gate.hold())
        .timeout(Duration::from_millis(20))
        .submit()
        .unwrap();
    let err = join(task).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    assert!(pool.wait_idle_timeout(LIMIT));
    full_size(&pool);
    let stats = pool.stats();
    assert_eq!(stats.timed_out, 1, "{stats}");
    assert_eq!(stats.abandoned_threads, 0, "{stats}");
    let replies: Vec<_> = (0..20)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .map(reply)
        .collect();
    assert!(replies.iter().enumerate().all(|(i, r)| r.value == i as u64));
    pool.shutdown();
}

/// A deadline counts from submission, where a timeout counts from the start: a
/// task still queued behind a busy worker at its deadline resolves as timed
/// out then, and never runs; one that ends in time is unaffected; one still
/// running at its deadline is timed out as a timeout would be, and the pool is
/// back at full size.
fn deadline_counts_from_submission(backend: Backend) {
    let pool = backend.pool(1);
    let gate = FileGate::new();
    let blocker = pool.submit(gate.hold()).unwrap();
    wait_running(&pool, &blocker);
    let in_time = pool
        .task(Job::Echo(1))
        .deadline(LIMIT * 3)
        .submit()
        .unwrap();
    let late = pool
        .task(Job::Echo(2))
        .deadline(Duration::from_millis(20))
        .submit()
        .unwrap();
    // It resolves while the worker is still held: the pool's clock decides.
    let err = join(late).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(!blocker.is_finished());

    gate.open();
    assert_eq!(reply(blocker).ran, 1);
    // The worker ran the blocker, then `in_time`: the late task never ran.
    let r = reply(in_time);
    assert_eq!((r.value, r.ran), (1, 2));

    // Running (or, on a slow machine, still queued) at its deadline: timed
    // out either way, and the worker is freed or replaced.
    let gate = FileGate::new();
    let held = pool
        .task(gate.hold())
        .deadline(Duration::from_millis(20))
        .submit()
        .unwrap();
    let err = join(held).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(pool.wait_idle_timeout(LIMIT));
    full_size(&pool);
    let stats = pool.stats();
    assert_eq!((stats.timed_out, stats.completed), (2, 2), "{stats}");
    assert_eq!(stats.abandoned_threads, 0, "{stats}");
    assert_eq!(stats.finished(), stats.submitted, "{stats}");
    echo(&pool, 3);
    pool.shutdown();
}

/// `wait_idle_timeout` and `idle()` wait while work is in flight, and return
/// once every task has resolved.
fn wait_idle_with_work_in_flight(backend: Backend) {
    let pool = backend.pool(2);
    let gate = FileGate::new();
    let blocker = pool.submit(gate.hold()).unwrap();
    let rest: Vec<_> = (0..5).map(|i| pool.submit(Job::Echo(i)).unwrap()).collect();
    wait_running(&pool, &blocker);
    // The blocker cannot finish before the gate opens, whatever the timing.
    assert!(!pool.wait_idle_timeout(Duration::from_millis(20)));
    assert!(pool.idle().now_or_never().is_none());
    assert!(!blocker.is_finished());

    gate.open();
    assert!(pool.wait_idle_timeout(LIMIT));
    futures::executor::block_on(pool.idle());
    pool.wait_idle();
    assert!(blocker.is_finished());
    assert!(rest.iter().all(Task::is_finished));
    let stats = pool.stats();
    assert_eq!((stats.queued, stats.busy), (0, 0), "{stats}");
    assert_eq!(stats.completed, 6, "{stats}");
    assert_eq!(stats.finished(), stats.submitted, "{stats}");
    pool.shutdown();
}

/// `shutdown` refuses new work, runs what is queued, and returns once every
/// handle has resolved, each once; every worker exits with `Shutdown`.
fn shutdown_runs_queued_work(backend: Backend) {
    let pool = backend.pool(1);
    let events = pool.events();
    let gate = FileGate::new();
    let blocker = pool.submit(gate.hold()).unwrap();
    wait_running(&pool, &blocker);
    let queued: Vec<_> = (0..5).map(|i| pool.submit(Job::Echo(i)).unwrap()).collect();
    let workers = pool.workers();

    let closer = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown())
    };
    wait_until("the pool is closed", || pool.is_closed());
    let refused = pool.submit(Job::Echo(99)).unwrap_err();
    assert!(refused.is_closed());
    assert!(!queued.iter().any(Task::is_finished), "queued work waits");
    gate.open();
    closer.join().unwrap();
    // `shutdown` returned: every handle has resolved already.
    assert!(blocker.is_finished());
    assert!(queued.iter().all(Task::is_finished));
    let ids: Vec<TaskId> = std::iter::once(blocker.id())
        .chain(queued.iter().map(Task::id))
        .collect();
    assert_eq!(reply(blocker).value, 0);
    for (i, task) in queued.into_iter().enumerate() {
        assert_eq!(reply(task).value, i as u64);
    }

    let seen = recv_to_end(&events);
    for id in ids {
        assert_eq!(outcome_of(&seen, id), (TaskOutcome::Completed, true));
    }
    for w in workers {
        assert_eq!(exits_of(&seen, w), [ExitReason::Shutdown], "{seen:#?}");
    }
    let stats = pool.stats();
    assert_eq!(stats.completed, 6, "{stats}");
    assert_eq!(stats.finished(), stats.submitted, "{stats}");
}

/// `terminate` resolves queued tasks as closed and running ones as cancelled,
/// and the workers exit.
fn terminate_closes_queued_and_cancels_running(backend: Backend) {
    let pool = backend.pool(1);
    let events = pool.events();
    let gate = FileGate::new();
    let running = pool.submit(gate.hold()).unwrap();
    wait_running(&pool, &running);
    let queued: Vec<_> = (0..3).map(|i| pool.submit(Job::Echo(i)).unwrap()).collect();
    pool.terminate();
    assert!(pool.is_closed());
    assert!(pool.submit(Job::Echo(9)).unwrap_err().is_closed());

    let running_id = running.id();
    let err = join(running).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    let queued_ids: Vec<TaskId> = queued.iter().map(Task::id).collect();
    for task in queued {
        let err = join(task).unwrap_err();
        assert!(err.is_closed(), "{err:?}");
    }
    // The stream ends: every worker has exited.
    let seen = recv_to_end(&events);
    assert_eq!(
        outcome_of(&seen, running_id),
        (TaskOutcome::Cancelled, true)
    );
    for id in queued_ids {
        assert_eq!(outcome_of(&seen, id), (TaskOutcome::Closed, false));
    }
    let stats = pool.stats();
    assert_eq!((stats.cancelled, stats.closed), (1, 3), "{stats}");
    assert_eq!(stats.finished(), stats.submitted, "{stats}");
}

/// Every way to submit on a shut-down pool gives the input back in a closed
/// error.
fn submit_after_shutdown_is_a_closed_error(backend: Backend) {
    let pool = backend.pool(1);
    echo(&pool, 1);
    pool.shutdown();
    assert!(pool.is_closed());
    assert!(pool.workers().is_empty(), "{:?}", pool.workers());

    let e = pool.submit(Job::Echo(7)).unwrap_err();
    assert!(e.is_closed() && !e.is_full());
    assert_eq!(e.into_inner(), Job::Echo(7));
    let e = pool.try_submit(Job::Echo(8)).unwrap_err();
    assert!(e.is_closed());
    assert_eq!(e.into_inner(), Job::Echo(8));
    let e = pool
        .task(Job::Echo(9))
        .priority(Priority::High)
        .submit()
        .unwrap_err();
    assert_eq!(e.into_inner(), Job::Echo(9));
    let e = futures::executor::block_on(pool.submit_async(Job::Echo(10))).unwrap_err();
    assert!(e.is_closed());
    assert_eq!(e.into_inner(), Job::Echo(10));
    let e = pool
        .submit_batch([Job::Echo(11), Job::Echo(12)])
        .unwrap_err();
    assert!(e.is_closed());
    assert_eq!(e.into_inner(), Job::Echo(11));
    let stats = pool.stats();
    assert_eq!(
        stats.submitted, 1,
        "refused inputs are not counted: {stats}"
    );
}

/// `kill_worker` of a busy worker resolves its task as killed at once, and a
/// replacement with a new id takes its place.
fn kill_worker_of_a_busy_worker(backend: Backend) {
    let pool = backend.pool(2);
    let events = pool.events();
    let gate = FileGate::new();
    let task = pool.submit(gate.hold()).unwrap();
    let victim = wait_running(&pool, &task);
    assert!(pool.kill_worker(victim));
    assert!(task.is_finished(), "resolved at once");
    let err = join(task).unwrap_err();
    assert!(err.is_killed(), "{err:?}");
    assert!(!pool.kill_worker(victim), "it is gone already");
    assert!(!pool.workers().contains(&victim));

    full_size(&pool);
    let workers = pool.workers();
    assert!(!workers.contains(&victim));
    let replacement = *workers.iter().max().unwrap();
    assert!(replacement > victim, "a new id: {workers:?}");
    let seen = recv_until(&events, |seen| {
        !exits_of(seen, victim).is_empty() && started(seen, replacement)
    });
    assert_eq!(exits_of(&seen, victim), [ExitReason::Killed]);
    assert!(pool.wait_idle_timeout(LIMIT));
    assert_eq!(pool.stats().killed, 1);
    let replies: HashSet<u64> = (0..20).map(|i| echo(&pool, i).worker).collect();
    assert!(!replies.contains(&victim.as_u64()));
    pool.shutdown();
}

/// `workers()` lists the live workers by id; `size()` is the number the pool
/// keeps; `stats()` has one row for each.
fn workers_and_size(backend: Backend) {
    let pool = backend.pool(3);
    assert_eq!(pool.size(), 3);
    let workers = pool.workers();
    assert_eq!(workers.len(), 3);
    assert_eq!(workers.iter().collect::<HashSet<_>>().len(), 3, "distinct");
    let stats = pool.stats();
    assert_eq!(stats.workers, 3, "{stats}");
    let rows: Vec<WorkerId> = stats.per_worker.iter().map(|w| w.id).collect();
    assert_eq!(rows, workers, "{stats}");

    // Three blocked tasks occupy the three workers, one each.
    let gate = FileGate::new();
    let held: Vec<_> = (0..3).map(|_| pool.submit(gate.hold()).unwrap()).collect();
    let on: HashSet<WorkerId> = held.iter().map(|t| wait_running(&pool, t)).collect();
    assert_eq!(on, workers.iter().copied().collect(), "one task each");
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.idle), (3, 0), "{stats}");
    gate.open();
    for task in held {
        let r = reply(task);
        assert!(workers.iter().any(|w| w.as_u64() == r.worker));
    }
    pool.shutdown();
}

/// Task events carry the right outcome for each task, exactly once; worker
/// events say why each worker left; two subscribers see the same.
fn events_per_task_and_worker(backend: Backend) {
    let pool = backend.pool(2);
    let first = pool.events();
    let second = pool.events();
    // Workers that started before the subscriptions: their `WorkerStarted` is
    // not replayed.
    let initial = pool.workers();
    let mut expected: HashMap<TaskId, (TaskOutcome, bool)> = HashMap::new();

    for job in [
        Job::Echo(1),
        Job::Fail("no".into()),
        Job::Panic("boom".into()),
    ] {
        let outcome = match job {
            Job::Echo(_) => TaskOutcome::Completed,
            Job::Fail(_) => TaskOutcome::Failed,
            _ => TaskOutcome::Panicked,
        };
        let task = pool.submit(job).unwrap();
        expected.insert(task.id(), (outcome, true));
        let _ = join(task);
    }

    // Both workers blocked; a third task queued and cancelled.
    let gate = FileGate::new();
    let cancelled = pool.submit(gate.hold()).unwrap();
    let killed = pool.submit(gate.hold()).unwrap();
    let cancelled_on = wait_running(&pool, &cancelled);
    let victim = wait_running(&pool, &killed);
    let queued = pool.submit(Job::Echo(2)).unwrap();
    assert!(queued.cancel());
    expected.insert(queued.id(), (TaskOutcome::Cancelled, false));
    // A running task cancelled, and a busy worker killed.
    assert!(cancelled.cancel());
    expected.insert(cancelled.id(), (TaskOutcome::Cancelled, true));
    assert!(pool.kill_worker(victim));
    expected.insert(killed.id(), (TaskOutcome::Killed, true));
    let _ = join(cancelled);
    let _ = join(killed);
    full_size(&pool);
    // One that times out.
    let timed = pool
        .task(gate.hold())
        .timeout(Duration::from_millis(20))
        .submit()
        .unwrap();
    expected.insert(timed.id(), (TaskOutcome::TimedOut, true));
    let timed_out = join(timed).unwrap_err();
    assert!(timed_out.is_timeout(), "{timed_out:?}");
    assert!(pool.wait_idle_timeout(LIMIT));
    full_size(&pool);
    let last = pool.workers();
    pool.shutdown();

    let seen = [recv_to_end(&first), recv_to_end(&second)];
    for events in &seen {
        for (task, want) in &expected {
            assert_eq!(outcome_of(events, *task), *want, "{task}: {events:#?}");
            let starts: Vec<WorkerId> = events
                .iter()
                .filter_map(|e| match e {
                    Event::TaskStarted {
                        task: t, worker, ..
                    } if t == task => Some(*worker),
                    _ => None,
                })
                .collect();
            if want.1 {
                // Started once, on the worker it finished on, before it finished.
                assert_eq!(starts.len(), 1, "{task}: {events:#?}");
                let finished_on = events.iter().find_map(|e| match e {
                    Event::TaskFinished {
                        task: t, worker, ..
                    } if t == task => Some(*worker),
                    _ => None,
                });
                assert_eq!(finished_on, Some(starts[0]), "{task}");
                let at = |p: &dyn Fn(&Event) -> bool| events.iter().position(p);
                assert!(
                    at(&|e| matches!(e, Event::TaskStarted { task: t, .. } if t == task))
                        < at(&|e| matches!(e, Event::TaskFinished { task: t, .. } if t == task)),
                    "{task}: {events:#?}"
                );
            } else {
                assert!(starts.is_empty(), "{task} never started: {events:#?}");
            }
        }
        assert_eq!(exits_of(events, victim), [ExitReason::Killed]);
        for w in &last {
            if !initial.contains(w) {
                assert!(started(events, *w), "{w} started: {events:#?}");
            }
            assert_eq!(
                exits_of(events, *w),
                [ExitReason::Shutdown],
                "{w}: {events:?}"
            );
        }
        match backend {
            Backend::Threads | Backend::Loopback => {
                // Cancel and timeout are cooperative: that worker goes on.
                assert!(last.contains(&cancelled_on), "{last:?}");
            }
            Backend::Processes => {
                // The cancelled task's worker process was killed for it.
                assert_eq!(exits_of(events, cancelled_on), [ExitReason::Killed]);
            }
        }
        // Every worker that exited had started (none exits before it starts).
        for e in events {
            if let Event::WorkerExited { worker, .. } = e {
                let start = events.iter().position(
                    |s| matches!(s, Event::WorkerStarted { worker: w, .. } if w == worker),
                );
                let exit = events.iter().position(|x| x == e);
                if let Some(start) = start {
                    assert!(Some(start) < exit, "{worker}: {events:#?}");
                }
            }
        }
    }
    // Both subscribers saw the same events (order across threads may differ).
    let count = |events: &[Event]| {
        let mut kinds: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
        kinds.sort();
        kinds
    };
    assert_eq!(count(&seen[0]), count(&seen[1]));
    assert_eq!(first.dropped() + second.dropped(), 0);
}

/// Once idle, the counters reconcile: submitted = the sum of the outcomes, the
/// per-worker rows add up to the tasks that ran, the latency counts to the
/// tasks that started.
fn stats_reconcile(backend: Backend) {
    let pool = backend.pool(2);
    let gate = FileGate::new();
    let blockers: Vec<_> = (0..2).map(|_| pool.submit(gate.hold()).unwrap()).collect();
    for b in &blockers {
        wait_running(&pool, b);
    }
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(pool.submit(Job::Echo(i)).unwrap());
    }
    for _ in 0..5 {
        tasks.push(pool.submit(Job::Fail("no".into())).unwrap());
    }
    for _ in 0..2 {
        tasks.push(pool.submit(Job::Panic("boom".into())).unwrap());
    }
    let cancelled = pool.submit(Job::Echo(99)).unwrap();
    assert!(cancelled.cancel());
    let stats = pool.stats();
    assert_eq!(stats.submitted, 30, "{stats}");
    assert_eq!(stats.busy, 2, "{stats}");
    assert_eq!(
        stats.queued as u64 + stats.busy as u64 + stats.finished(),
        stats.submitted,
        "every task is queued, running or finished: {stats}"
    );
    gate.open();
    for task in blockers.into_iter().chain(tasks) {
        let _ = join(task);
    }
    assert!(pool.wait_idle_timeout(LIMIT));

    let stats = pool.stats();
    assert_eq!(stats.submitted, 30, "{stats}");
    assert_eq!(stats.finished(), stats.submitted, "{stats}");
    assert_eq!(stats.completed, 22, "{stats}");
    assert_eq!(stats.failed, 5, "{stats}");
    assert_eq!(stats.panicked, 2, "{stats}");
    assert_eq!(stats.cancelled, 1, "{stats}");
    assert_eq!((stats.queued, stats.busy, stats.idle), (0, 0, 2), "{stats}");
    let ran = 29;
    let done: u64 = stats.per_worker.iter().map(|w| w.tasks_done).sum();
    assert_eq!(done, ran, "{stats}");
    let rows: u64 = stats.per_worker.iter().map(|w| w.run.count).sum();
    assert_eq!(rows, ran, "{stats}");
    assert_eq!(stats.run.count, ran, "{stats}");
    assert_eq!(stats.wait.count, ran, "{stats}");
    for latency in [stats.wait, stats.run] {
        assert!(latency.p50 <= latency.p90, "{latency:?}");
        assert!(latency.p90 <= latency.p99, "{latency:?}");
        assert!(latency.p99 <= latency.max, "{latency:?}");
    }
    assert!(stats.worker_time >= stats.busy_time, "{stats}");
    assert!((0.0..=1.0).contains(&stats.utilization()));
    pool.shutdown();
}

/// The health watcher reports a queue that stays above its threshold.
fn health_reports_a_backlog(backend: Backend) {
    let pool = backend
        .builder(1)
        .health(
            Health::new()
                .backlog_threshold(3)
                .backlog_for(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    full_size(&pool);
    let events = pool.events();
    let gate = FileGate::new();
    let blocker = pool.submit(gate.hold()).unwrap();
    wait_running(&pool, &blocker);
    let queued: Vec<_> = (0..10)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    let seen = recv_until(&events, |seen| {
        seen.iter().any(|e| matches!(e, Event::Backlog { .. }))
    });
    let Some(Event::Backlog {
        queued: depth,
        workers,
        threshold,
        ..
    }) = seen.iter().find(|e| matches!(e, Event::Backlog { .. }))
    else {
        unreachable!()
    };
    assert!(*depth > 3 && *depth <= 10, "{depth}");
    assert_eq!((*workers, *threshold), (1, 3));
    gate.open();
    reply(blocker);
    for task in queued {
        reply(task);
    }
    pool.shutdown();
}

/// Queued `High` tasks run before `Normal` before `Low`, first in, first out
/// within a level. Processes: priority orders the pool's queue, not the tasks
/// already sent into a worker's window, so this pool sends one at a time
/// (`window(1)`).
fn priorities(backend: Backend) {
    let builder = match backend {
        Backend::Threads | Backend::Loopback => backend.builder(1),
        Backend::Processes => backend.builder(1).window(1),
    };
    let pool = builder.build().unwrap();
    full_size(&pool);
    let gate = FileGate::new();
    let blocker = pool.submit(gate.hold()).unwrap();
    wait_running(&pool, &blocker);
    // Six picks: fewer than the thread backend's aging cycle (8), so plain
    // priority order must hold.
    let mut tasks = Vec::new();
    for n in 0..2 {
        for (p, base) in [
            (Priority::Low, 30),
            (Priority::Normal, 20),
            (Priority::High, 10),
        ] {
            tasks.push(pool.task(Job::Echo(base + n)).priority(p).submit().unwrap());
        }
    }
    gate.open();
    reply(blocker);
    let mut order: Vec<(u64, u64)> = tasks
        .into_iter()
        .map(reply)
        .map(|r| (r.ran, r.value))
        .collect();
    order.sort();
    let values: Vec<u64> = order.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, [10, 11, 20, 21, 30, 31]);
    pool.shutdown();
}

/// Sticky keys: every task with a key gets its answer. Processes: tasks with
/// the same key run on the same worker while it lives. Threads share memory,
/// so a thread pool ignores the key and promises nothing about placement.
fn sticky_keys(backend: Backend) {
    let pool = backend.pool(2);
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let key = i % 2;
        tasks.push((key, pool.task(Job::Echo(i)).key(key).submit().unwrap()));
    }
    let mut on: HashMap<u64, HashSet<u64>> = HashMap::new();
    for (i, (key, task)) in tasks.into_iter().enumerate() {
        let r = reply(task);
        assert_eq!(r.value, i as u64);
        on.entry(key).or_default().insert(r.worker);
    }
    match backend {
        Backend::Threads | Backend::Loopback => {}
        Backend::Processes => {
            for (key, workers) in &on {
                assert_eq!(workers.len(), 1, "key {key} ran on {workers:?}");
            }
        }
    }
    pool.shutdown();
}

/// `submit_async` waits for room in a full queue without blocking, and a
/// `Task` is a future; both under a plain executor. Processes: `queue_capacity`
/// counts the tasks not yet sent into a worker's window, so this pool sends one
/// at a time (`window(1)`).
fn submit_async_and_await(backend: Backend) {
    let builder = backend.builder(1).queue_capacity(1);
    let builder = match backend {
        Backend::Threads | Backend::Loopback => builder,
        Backend::Processes => builder.window(1),
    };
    let pool = builder.build().unwrap();
    full_size(&pool);
    let value = futures::executor::block_on(async {
        let task = pool.submit_async(Job::Echo(5)).await.unwrap();
        task.await.unwrap().value
    });
    assert_eq!(value, 5);
    let err = futures::executor::block_on(async {
        let task = pool
            .task(Job::Fail("async no".into()))
            .submit_async()
            .await
            .unwrap();
        task.await.unwrap_err()
    });
    assert_eq!(err.user_error().map(String::as_str), Some("async no"));

    // A full queue: the blocker runs, one echo waits.
    let gate = FileGate::new();
    let blocker = pool.submit(gate.hold()).unwrap();
    wait_running(&pool, &blocker);
    let waiting = pool.submit(Job::Echo(1)).unwrap();
    let full = pool.try_submit(Job::Echo(2)).unwrap_err();
    assert!(full.is_full(), "{full:?}");
    assert_eq!(full.into_inner(), Job::Echo(2));
    let mut submit = pool.submit_async(Job::Echo(3));
    assert!(poll_once(&mut submit).is_pending(), "no room yet");

    gate.open();
    let task = futures::executor::block_on(submit).unwrap();
    assert_eq!(futures::executor::block_on(task).unwrap().value, 3);
    assert_eq!(futures::executor::block_on(waiting).unwrap().value, 1);
    assert_eq!(futures::executor::block_on(blocker).unwrap().value, 0);
    futures::executor::block_on(pool.idle());
    pool.shutdown();
}

/// `resize` grows the pool (the new workers start and run tasks) and shrinks
/// it: with every worker idle, the extra ones leave at once, each running
/// `Worker::stop` and exiting as `Retired`; the one that stays goes on. A size
/// of 0, an empty range and a closed pool are refused.
fn resize_grows_then_retires_idle_workers(backend: Backend) {
    let pool = backend.pool(2);
    let events = pool.events();
    let messages = pool.messages();

    pool.resize(4).unwrap();
    assert_eq!(pool.size(), 4, "the new size at once");
    full_size(&pool);
    let before: HashSet<WorkerId> = pool.workers().into_iter().collect();
    assert_eq!(before.len(), 4);
    assert_eq!(pool.stats().workers, 4, "{}", pool.stats());
    let tasks: Vec<_> = (0..40)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let r = reply(task);
        assert_eq!(r.value, i as u64);
        assert!(before.iter().any(|w| w.as_u64() == r.worker), "{r:?}");
    }
    assert!(pool.wait_idle_timeout(LIMIT));

    pool.resize(1).unwrap();
    assert_eq!(pool.size(), 1);
    wait_until("three idle workers leave", || {
        pool.workers().len() == 1 && pool.stats().workers == 1
    });
    let kept = pool.workers()[0];
    assert!(before.contains(&kept), "{kept} was one of {before:?}");
    let retired: HashSet<WorkerId> = before.iter().copied().filter(|w| *w != kept).collect();
    let seen = recv_until(&events, |seen| {
        retired.iter().all(|w| !exits_of(seen, *w).is_empty())
    });
    for w in &retired {
        assert_eq!(
            exits_of(&seen, *w),
            vec![ExitReason::Retired],
            "{w}: {seen:#?}"
        );
    }
    assert!(exits_of(&seen, kept).is_empty(), "{kept} stays: {seen:#?}");
    let stops = stops_until(&messages, &retired);
    assert_eq!(
        stops.keys().copied().collect::<HashSet<_>>(),
        retired,
        "{stops:?}"
    );
    assert_eq!(echo(&pool, 7).worker, kept.as_u64());

    let zero = pool.resize(0).unwrap_err();
    assert!(zero.is_no_workers() && !zero.is_closed(), "{zero:?}");
    #[allow(clippy::reversed_empty_ranges)] // the point
    let empty = pool.resize_range(3..=2).unwrap_err();
    assert!(empty.is_no_workers(), "{empty:?}");
    assert_eq!(pool.size(), 1, "a refused resize changes nothing");

    pool.shutdown();
    let stops = stops_to_end(&messages, stops);
    for w in before.iter() {
        assert_eq!(stops.get(w), Some(&1), "{w} stopped once: {stops:?}");
    }
    let closed = pool.resize(2).unwrap_err();
    assert!(closed.is_closed(), "{closed:?}");
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed), (41, 41), "{stats}");
}

/// A shrink while every worker is busy: the busy workers chosen to leave
/// finish the task they run (nothing running is cancelled), take nothing new,
/// then run `stop` and exit as `Retired`. The tasks queued behind them
/// (processes: in their windows) run on the worker that stays. Every task
/// resolves exactly once.
fn resize_lets_busy_workers_finish_their_task(backend: Backend) {
    let pool = backend.pool(3);
    let events = pool.events();
    let messages = pool.messages();
    let gate = FileGate::new();
    let held: Vec<_> = (0..3).map(|_| pool.submit(gate.hold()).unwrap()).collect();
    let on: Vec<WorkerId> = held.iter().map(|t| wait_running(&pool, t)).collect();
    assert_eq!(
        on.iter().collect::<HashSet<_>>().len(),
        3,
        "one each: {on:?}"
    );
    let queued: Vec<_> = (0..30)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();

    pool.resize(1).unwrap();
    assert_eq!(pool.size(), 1);
    wait_until("workers() lists only the one that stays", || {
        pool.workers().len() == 1
    });
    let kept = pool.workers()[0];
    assert!(on.contains(&kept));
    let stats = pool.stats();
    assert_eq!(
        stats.busy, 3,
        "the leaving workers still run their task: {stats}"
    );
    assert!(
        held.iter().all(|t| !t.is_finished()),
        "nothing running was cancelled"
    );

    gate.open();
    for (task, worker) in held.into_iter().zip(&on) {
        let r = reply(task);
        assert_eq!(r.worker, worker.as_u64(), "it finished where it ran");
    }
    let ids: Vec<TaskId> = queued.iter().map(Task::id).collect();
    for (i, task) in queued.into_iter().enumerate() {
        assert_eq!(reply(task).value, i as u64);
    }
    wait_until("the two leave once their task is done", || {
        pool.stats().workers == 1
    });
    let retired: HashSet<WorkerId> = on.iter().copied().filter(|w| *w != kept).collect();
    let stops = stops_until(&messages, &retired);
    assert!(!stops.contains_key(&kept), "{stops:?}");

    pool.shutdown();
    let seen = recv_to_end(&events);
    for id in ids {
        assert_eq!(
            outcome_of(&seen, id),
            (TaskOutcome::Completed, true),
            "{id}"
        );
    }
    for w in &retired {
        assert_eq!(exits_of(&seen, *w), vec![ExitReason::Retired], "{w}");
    }
    assert_eq!(exits_of(&seen, kept), vec![ExitReason::Shutdown]);
    let stops = stops_to_end(&messages, stops);
    for w in &on {
        assert_eq!(stops.get(w), Some(&1), "{w} stopped once: {stops:?}");
    }
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed), (33, 33), "{stats}");
}

/// Resizes up and down while another thread submits: every task resolves
/// with its answer, once, and the pool ends at its last size.
fn resize_racing_submit_loses_nothing(backend: Backend) {
    const TASKS: u64 = 300;
    let pool = backend.pool(2);
    let submitter = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            (0..TASKS)
                .map(|i| pool.submit(Job::Echo(i)).unwrap())
                .collect::<Vec<_>>()
        })
    };
    // Process starts are slow: fewer rounds there, the same interleavings.
    let rounds = match backend {
        Backend::Processes => 2,
        Backend::Threads | Backend::Loopback => 10,
    };
    for _ in 0..rounds {
        for n in [4, 1, 3, 1] {
            pool.resize(n).unwrap();
            std::thread::yield_now();
        }
    }
    pool.resize(2).unwrap();
    let tasks = submitter.join().unwrap();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(reply(task).value, i as u64);
    }
    full_size(&pool);
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(
        (stats.submitted, stats.completed),
        (TASKS, TASKS),
        "{stats}"
    );
    assert_eq!(stats.queued, 0, "{stats}");
    pool.shutdown();
}

/// `workers_range` with `idle_timeout` (threads and processes alike): a burst
/// that keeps every worker busy grows the pool, never above its maximum; once
/// idle for `idle_timeout` the extra workers retire (`stop` runs, `Retired`)
/// down to the minimum.
fn elastic_grows_under_a_burst_and_shrinks_when_idle(backend: Backend) {
    const IDLE: Duration = Duration::from_millis(200);
    let pool = backend
        .builder(1)
        .workers_range(1..=3)
        .grow_backlog(1)
        .idle_timeout(IDLE)
        .build()
        .unwrap();
    full_size(&pool);
    let events = pool.events();
    let messages = pool.messages();
    let first = pool.workers();
    let gate = FileGate::new();
    let mut held = vec![pool.submit(gate.hold()).unwrap()];
    wait_running(&pool, &held[0]);
    // Growth is decided as tasks come: keep submitting until the pool is at
    // its maximum, checking that it never goes past it.
    let deadline = Instant::now() + LIMIT;
    while pool.workers().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the pool did not grow to 3 under a backlog of {}: {}",
            held.len(),
            pool.stats()
        );
        held.push(pool.submit(gate.hold()).unwrap());
        assert!(pool.workers().len() <= 3, "{:?}", pool.workers());
        assert!(pool.stats().workers <= 3, "{}", pool.stats());
        std::thread::sleep(Duration::from_millis(2)); // paces the submitter
    }
    wait_until("every worker runs a held task", || pool.stats().busy == 3);
    assert!(pool.stats().workers <= 3, "{}", pool.stats());
    let grown: HashSet<WorkerId> = pool.workers().into_iter().collect();
    let extra: HashSet<WorkerId> = grown
        .iter()
        .copied()
        .filter(|w| !first.contains(w))
        .collect();
    assert_eq!(extra.len(), 2, "{grown:?} from {first:?}");

    gate.open();
    let count = held.len() as u64;
    for task in held {
        assert_eq!(reply(task).value, 0);
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    wait_until("the idle pool shrinks back to its minimum", || {
        pool.workers().len() == 1 && pool.stats().workers == 1
    });
    assert_eq!(pool.size(), 1);
    let seen = recv_until(&events, |seen| {
        grown
            .iter()
            .filter(|w| !exits_of(seen, **w).is_empty())
            .count()
            == 2
    });
    let left: HashSet<WorkerId> = grown
        .iter()
        .copied()
        .filter(|w| exits_of(&seen, *w) == vec![ExitReason::Retired])
        .collect();
    assert_eq!(left.len(), 2, "two retired: {seen:#?}");
    assert!(stops_until(&messages, &left).len() >= 2);

    assert_eq!(echo(&pool, 9).value, 9);
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(
        (stats.submitted, stats.completed),
        (count + 1, count + 1),
        "{stats}"
    );
    pool.shutdown();
}
