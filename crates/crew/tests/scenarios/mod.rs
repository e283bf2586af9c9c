//! The conformance scenarios: each written once, against the `Pool<W>` API,
//! and run on every backend. Two test crates include this module:
//!
//! - crew's `tests/conformance.rs` runs each scenario on threads, processes and
//!   a test-only engine behind the backend seam (`tests/loopback_engine/`), as
//!   `threads::<scenario>`, `processes::<scenario>` and `loopback::<scenario>`;
//! - crew-cluster's `tests/conformance.rs` runs each on the cluster (a
//!   nats-server and nodes), as `cluster::<scenario>`, with
//!   `#[path = "../../crew/tests/scenarios/mod.rs"]` (crew cannot depend on the
//!   cluster crate: it depends on crew).
//!
//! A scenario is a function of the [`Backend`] it runs on; it builds its pool with
//! `backend.builder(n)` (or `backend.builder_of::<W>(n)` for another worker
//! type), which calls the including crate's own
//! `fn builder<W: RemoteWorker>(backend: Backend, n: usize) -> PoolBuilder<W>`.
//! Each worker type the scenarios use is served by a process pool's worker
//! entry: [`Probe`] and [`Sums`] (`sums::Worker<Sums>`). Where the
//! backends promise different things (a running task's cancel is cooperative on
//! threads but kills the worker process, say), the scenario says so in a
//! `match backend` and asserts each side; the README's feature table states
//! the same differences, with the reasons. A scenario that cannot run on a
//! backend is in [`Backend::skipped`], with the reason, which its runner prints.
//!
//! The probe worker blocks on a [`FileGate`] (a file the test creates), which
//! works the same in this process, in a worker process and on a node. The test
//! never sleeps to make something true: it waits on a condition with a
//! deadline ([`wait_until`], [`LIMIT`]).

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::RecvTimeoutError;
use std::task::Poll;
use std::time::{Duration, Instant};

use crew::{
    Context, Event, Events, ExitReason, Health, Messages, Pool, PoolBuilder, Priority,
    RemoteWorker, StartError, Task, TaskError, TaskId, TaskOutcome, Worker, WorkerId,
};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

/// Every scenario, by name: `every_scenario!(m)` calls `m!(a, b, …)`, so each
/// runner instantiates the same list. Add a scenario by naming it here.
macro_rules! every_scenario {
    ($m:ident) => {
        $m!(
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
            messages_both_ways,
            map_and_feed_keep_a_bounded_window,
            rpc_by_name,
            resize_grows_then_retires_idle_workers,
            resize_lets_busy_workers_finish_their_task,
            resize_racing_submit_loses_nothing,
            elastic_grows_under_a_burst_and_shrinks_when_idle,
        );
    };
}

// ------------------------------------------------------------------ backends

/// Where a scenario's pool runs its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Threads,
    Processes,
    /// `tests/loopback_engine/`: threads behind the engine seam.
    Loopback,
    /// crew-cluster: nodes fed from NATS JetStream (each node's local pool is
    /// threads, so where a scenario's threads and processes differ, a cluster
    /// pool is on the threads' side unless it says otherwise).
    Cluster,
}

impl Backend {
    /// A builder for a pool of `n` probe workers on this backend.
    pub fn builder(self, n: usize) -> PoolBuilder<Probe> {
        super::builder::<Probe>(self, n)
    }

    /// A builder for a pool of `n` workers of type `W` on this backend.
    pub fn builder_of<W: RemoteWorker>(self, n: usize) -> PoolBuilder<W> {
        super::builder::<W>(self, n)
    }

    /// A pool of `n` workers, every one of them started.
    pub fn pool(self, n: usize) -> Pool<Probe> {
        let pool = self.builder(n).build().unwrap();
        full_size(&pool);
        pool
    }

    /// How each of a pool's workers exits when the pool shuts down: with
    /// `Shutdown`, except on a cluster, whose workers belong to the nodes and
    /// outlive a client's pool (they exit when their node shuts down).
    pub fn exits_at_shutdown(self) -> &'static [ExitReason] {
        match self {
            Backend::Threads | Backend::Processes | Backend::Loopback => &[ExitReason::Shutdown],
            Backend::Cluster => &[],
        }
    }

    /// Why `scenario` does not run on this backend, if it does not. The
    /// cluster's list is the one in crew-cluster's `engine.rs` module docs
    /// and the README's "not carried yet" (its runner checks that each is
    /// named there).
    pub fn skipped(self, scenario: &str) -> Option<&'static str> {
        let list: &[(&str, &str)] = match self {
            Backend::Threads | Backend::Processes | Backend::Loopback => &[],
            Backend::Cluster => CLUSTER_SKIPS,
        };
        list.iter()
            .find(|(name, _)| *name == scenario)
            .map(|(_, why)| *why)
    }
}

/// The scenarios a cluster pool does not run, and why.
pub const CLUSTER_SKIPS: &[(&str, &str)] = &[
    (
        "resize_grows_then_retires_idle_workers",
        "a cluster's workers are its nodes' local pools: capacity changes by starting and \
         stopping nodes (`Pool::resize` is refused as unsupported)",
    ),
    (
        "resize_lets_busy_workers_finish_their_task",
        "`Pool::resize` is refused on a cluster (see resize_grows_then_retires_idle_workers)",
    ),
    (
        "resize_racing_submit_loses_nothing",
        "`Pool::resize` is refused on a cluster (see resize_grows_then_retires_idle_workers)",
    ),
    (
        "elastic_grows_under_a_burst_and_shrinks_when_idle",
        "a cluster pool has no size of its own to grow: each node sizes its local pool",
    ),
];

// ------------------------------------------------------------------ waiting

/// How long any wait in a scenario may take before it fails instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Polls `condition` until it holds; panics with `what` after [`LIMIT`].
#[track_caller]
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {LIMIT:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receives events until `done` holds for what was received so far; fails the
/// test after [`LIMIT`].
#[track_caller]
pub fn recv_until(events: &Events, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(RecvTimeoutError::Timeout) => panic!("timed out; saw {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("stream ended; saw {seen:#?}"),
        }
    }
    seen
}

/// Receives everything until the stream ends (the pool must be shut down).
#[track_caller]
pub fn recv_to_end(events: &Events) -> Vec<Event> {
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(RecvTimeoutError::Disconnected) => return seen,
            Err(RecvTimeoutError::Timeout) => panic!("stream did not end; saw {seen:#?}"),
        }
    }
}

// ------------------------------------------------------------------ the probe

/// What a probe task does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
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
    /// Sends the pool `Note::Step(i)` for each `i` in `0..n`, then answers `n`.
    Tell(u64),
}

/// Messages between the pool and a probe worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Note {
    /// Pool to worker: take this setting (the worker answers `Ack`).
    Set(u64),
    /// Worker to pool: "I now have this setting".
    Ack(u64),
    /// Worker to pool, from a task: a step of `Job::Tell`.
    Step(u64),
    /// Worker to pool: its `Worker::stop` ran (sent from inside it, so the
    /// sender is the worker). Counted by the scenarios that retire workers.
    Stopped,
}

/// Every answer says who ran the task and how many tasks that worker instance
/// has run, this one included (its state: a panic rebuilds it, back to 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub value: u64,
    pub worker: u64,
    pub ran: u64,
}

pub struct Probe {
    ran: u64,
}

impl Worker for Probe {
    type Input = Job;
    type Output = Reply;
    type Error = String;
    type Message = Note;

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Probe { ran: 0 })
    }

    fn on_message(&mut self, note: Note, ctx: &mut Context<'_>) {
        if let Note::Set(setting) = note {
            let _ = ctx.send(Note::Ack(setting));
        }
    }

    fn stop(&mut self, ctx: &mut Context<'_>) {
        // `stops_until`: the messages channel reaches the test from a worker
        // process too.
        let _ = ctx.send(Note::Stopped);
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
            Job::Tell(n) => {
                for i in 0..n {
                    ctx.send(Note::Step(i)).map_err(|e| e.to_string())?;
                }
                n
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
}

/// Waits while the file at `gate` exists, or until the task is cancelled, or
/// [`LIMIT`] (see `Job::Hold`).
pub fn hold(gate: &std::path::Path, ctx: &Context<'_>) -> Result<(), String> {
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

// ------------------------------------------------------------------ helpers

/// A file that holds `Job::Hold` tasks while it exists; opening the gate
/// removes it. Each gate has its own path. Dropping the gate opens it, so a
/// failing test leaves neither a file nor a worker waiting.
pub struct FileGate(PathBuf);

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
pub fn join(task: Task<Reply, String>) -> Result<Reply, TaskError<String>> {
    match task.join_timeout(LIMIT) {
        Ok(result) => result,
        Err(task) => panic!("{task:?} did not resolve within {LIMIT:?}"),
    }
}

/// Joins `task` and expects an answer.
#[track_caller]
pub fn reply(task: Task<Reply, String>) -> Reply {
    match join(task) {
        Ok(reply) => reply,
        Err(e) => panic!("expected an answer, got {e:?}"),
    }
}

#[track_caller]
pub fn echo(pool: &Pool<Probe>, n: u64) -> Reply {
    let r = reply(pool.submit(Job::Echo(n)).unwrap());
    assert_eq!(r.value, n);
    r
}

/// Waits until the pool has its full size again, every worker started.
#[track_caller]
pub fn full_size(pool: &Pool<Probe>) {
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
pub fn wait_running(pool: &Pool<Probe>, task: &Task<Reply, String>) -> WorkerId {
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

pub fn is_terminal(e: &Event) -> bool {
    matches!(e, Event::TaskFinished { .. } | Event::TaskDiscarded { .. })
}

/// The one terminal event of `task`: its outcome, and whether it ran
/// (`TaskFinished`) or not (`TaskDiscarded`).
#[track_caller]
pub fn outcome_of(events: &[Event], task: TaskId) -> (TaskOutcome, bool) {
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
pub fn exits_of(events: &[Event], worker: WorkerId) -> Vec<ExitReason> {
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

pub fn started(events: &[Event], worker: WorkerId) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::WorkerStarted { worker: w, .. } if *w == worker))
}

/// Polls `future` once, with a waker that does nothing.
pub fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    std::pin::Pin::new(future).poll(&mut cx)
}
// ------------------------------------------------------------------ scenarios

/// Results come back, in order, from workers the pool lists; the worker's own
/// error comes back as it was returned, and the pool goes on.
pub fn results_and_user_errors(backend: Backend) {
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
pub fn panics_cross_and_the_worker_state_is_rebuilt(backend: Backend) {
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
        Backend::Threads | Backend::Loopback | Backend::Cluster => {
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
pub fn cancel_of_a_queued_task(backend: Backend) {
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
pub fn cancel_of_a_running_task(backend: Backend) {
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
        Backend::Threads | Backend::Loopback | Backend::Cluster => {
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
pub fn cancel_queued_keeps_the_pool(backend: Backend) {
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
pub fn cancel_queued_racing_completion(backend: Backend) {
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
pub fn progress_reaches_the_caller_before_the_result(backend: Backend) {
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
pub fn timeout_of_a_blocked_task(backend: Backend) {
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
pub fn deadline_counts_from_submission(backend: Backend) {
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
pub fn wait_idle_with_work_in_flight(backend: Backend) {
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
pub fn shutdown_runs_queued_work(backend: Backend) {
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
        assert_eq!(exits_of(&seen, w), backend.exits_at_shutdown(), "{seen:#?}");
    }
    let stats = pool.stats();
    assert_eq!(stats.completed, 6, "{stats}");
    assert_eq!(stats.finished(), stats.submitted, "{stats}");
}

/// `terminate` resolves queued tasks as closed and running ones as cancelled,
/// and the workers exit.
pub fn terminate_closes_queued_and_cancels_running(backend: Backend) {
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
pub fn submit_after_shutdown_is_a_closed_error(backend: Backend) {
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
pub fn kill_worker_of_a_busy_worker(backend: Backend) {
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
pub fn workers_and_size(backend: Backend) {
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
pub fn events_per_task_and_worker(backend: Backend) {
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
                backend.exits_at_shutdown(),
                "{w}: {events:?}"
            );
        }
        match backend {
            Backend::Threads | Backend::Loopback | Backend::Cluster => {
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
pub fn stats_reconcile(backend: Backend) {
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
pub fn health_reports_a_backlog(backend: Backend) {
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
pub fn priorities(backend: Backend) {
    let builder = match backend {
        Backend::Threads | Backend::Loopback | Backend::Cluster => backend.builder(1),
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
/// so a thread pool ignores the key and promises nothing about placement; a
/// cluster pool ignores it too, for now (`engine.rs` in crew-cluster: "not
/// carried yet").
pub fn sticky_keys(backend: Backend) {
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
        Backend::Threads | Backend::Loopback | Backend::Cluster => {}
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
pub fn submit_async_and_await(backend: Backend) {
    let builder = backend.builder(1).queue_capacity(1);
    let builder = match backend {
        Backend::Threads | Backend::Loopback | Backend::Cluster => builder,
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

/// Messages cross both ways: what a task sends (`Context::send`) reaches a
/// `messages()` subscriber with its sender's id, in the order sent; a
/// broadcast reaches every worker, `send_to` one (each worker answers a
/// setting with an `Ack`). On threads and processes a message a task sends
/// also arrives before its result; a cluster carries the two on different
/// subjects and promises no order between them, so this does not ask.
pub fn messages_both_ways(backend: Backend) {
    let pool = backend.pool(2);
    let workers = pool.workers();
    let messages = pool.messages();
    let task = pool.submit(Job::Tell(3)).unwrap();
    let told: Vec<(WorkerId, Note)> = (0..3)
        .map(|_| messages.recv_timeout(LIMIT).expect("a step"))
        .collect();
    let r = reply(task);
    assert_eq!(r.value, 3);
    assert!(
        told.iter().all(|(w, _)| w.as_u64() == r.worker),
        "from the worker that ran it ({}): {told:?}",
        r.worker
    );
    let steps: Vec<Note> = told.into_iter().map(|(_, n)| n).collect();
    assert_eq!(steps, [Note::Step(0), Note::Step(1), Note::Step(2)]);

    pool.broadcast(Note::Set(7));
    let acks: HashMap<WorkerId, Note> = (0..2)
        .map(|_| messages.recv_timeout(LIMIT).expect("an ack"))
        .collect();
    let acked: HashSet<WorkerId> = acks.keys().copied().collect();
    assert_eq!(acked, workers.iter().copied().collect(), "{acks:?}");
    assert!(acks.values().all(|n| *n == Note::Ack(7)), "{acks:?}");

    pool.send_to(workers[1], Note::Set(9)).unwrap();
    assert_eq!(
        messages.recv_timeout(LIMIT).expect("an ack"),
        (workers[1], Note::Ack(9))
    );
    assert_eq!(messages.dropped(), 0);
    pool.shutdown();
}

/// `map` yields results in input order and `map_unordered` each item once
/// with its index, and neither pulls its source further than its window
/// ahead of what it yielded (an endless source stays bounded); `feed` does
/// the same from a channel another thread fills, and ends when it closes.
pub fn map_and_feed_keep_a_bounded_window(backend: Backend) {
    let pool = backend.pool(2);
    let checks = {
        let pool = pool.clone();
        move || {
            const WINDOW: usize = 4;
            let pulled = std::sync::Arc::new(AtomicUsize::new(0));
            let source = {
                let pulled = std::sync::Arc::clone(&pulled);
                (0u64..).inspect(move |_| {
                    pulled.fetch_add(1, SeqCst);
                })
            };
            let mut yielded = 0;
            for result in pool.map_window(source.map(Job::Echo), WINDOW).take(50) {
                assert_eq!(reply_of(result).value, yielded as u64);
                yielded += 1;
                let ahead = pulled.load(SeqCst) - yielded;
                assert!(ahead <= WINDOW, "{ahead} pulled ahead, window {WINDOW}");
            }

            let mut seen = HashSet::new();
            for (index, result) in pool.map_unordered((0..40u64).map(Job::Echo)) {
                assert_eq!(reply_of(result).value, index as u64);
                assert!(seen.insert(index), "{index} came twice");
            }
            assert_eq!(seen.len(), 40);

            let (jobs, queue) = std::sync::mpsc::channel();
            let producer = std::thread::spawn(move || {
                for n in 0..30 {
                    jobs.send(Job::Echo(n)).unwrap();
                }
            });
            let mut feed = pool.feed(queue).window(3);
            let mut fed = std::collections::BTreeMap::new();
            while let Some((index, result)) = feed.next() {
                assert!(feed.in_flight() <= 3, "{}", feed.in_flight());
                assert!(fed.insert(index, reply_of(result).value).is_none());
            }
            producer.join().unwrap();
            let expected: std::collections::BTreeMap<usize, u64> =
                (0..30).map(|n| (n as usize, n as u64)).collect();
            assert_eq!(fed, expected);
        }
    };
    // The iterators block without a bound of their own: they run on a thread
    // of their own, and a result that never comes fails the test instead.
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
        let _ = done.send(result);
    });
    match outcome.recv_timeout(LIMIT * 3) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("map and feed did not end within {:?}", LIMIT * 3),
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    // Every task resolved once: `take(50)` dropped the endless map with its
    // window in flight, which cancelled what had not finished.
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    assert_eq!(stats.failed + stats.panicked + stats.crashed, 0, "{stats}");
    pool.shutdown();
}

/// The answer in a `map` or `feed` result.
#[track_caller]
fn reply_of(result: Result<Reply, TaskError<String>>) -> Reply {
    match result {
        Ok(reply) => reply,
        Err(e) => panic!("expected an answer, got {e:?}"),
    }
}

crew::service! {
    /// The conformance suite's service: sums, and a division that can fail.
    pub mod sums {
        /// `a + b`.
        fn add(a: i64, b: i64) -> i64;
        /// `a / b`, or `DivByZero`.
        fn div(a: i64, b: i64) -> Result<i64, DivByZero>;
    }
}

/// `sums::div`'s own error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivByZero;

impl std::fmt::Display for DivByZero {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("division by zero")
    }
}

impl std::error::Error for DivByZero {}

/// The state behind `sums`: none.
pub struct Sums;

impl sums::Handler for Sums {
    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Sums)
    }

    fn add(&mut self, a: i64, b: i64) -> i64 {
        a + b
    }

    fn div(&mut self, a: i64, b: i64) -> Result<i64, DivByZero> {
        a.checked_div(b).ok_or(DivByZero)
    }
}

/// RPC: a service's methods called through its typed client (a method's own
/// error comes back as it was returned) and by name; a name the service does
/// not have is refused on the caller's side, with nothing submitted.
pub fn rpc_by_name(backend: Backend) {
    let pool = backend.builder_of::<sums::Worker<Sums>>(2).build().unwrap();
    let client = sums::Client::new(&pool);
    assert_eq!(join_any(client.add(2, 3).unwrap()).unwrap(), 5);
    assert_eq!(join_any(client.div(84, 2).unwrap()).unwrap(), 42);
    let err = join_any(client.div(1, 0).unwrap()).unwrap_err();
    assert_eq!(err.user_error(), Some(&DivByZero), "{err:?}");

    let reply = join_any(pool.call("add", (40i64, 2i64)).unwrap()).unwrap();
    assert!(matches!(reply, sums::Reply::add(42)), "{reply:?}");
    let reply = join_any(pool.call("div", (9i64, 3i64)).unwrap()).unwrap();
    assert!(matches!(reply, sums::Reply::div(3)), "{reply:?}");
    let unknown = pool.call("mul", (6i64, 7i64)).unwrap_err();
    assert!(unknown.is_unknown_method(), "{unknown:?}");
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(
        (stats.submitted, stats.completed, stats.failed),
        (5, 4, 1),
        "{stats}"
    );
    pool.shutdown();
}

/// Joins any task within [`LIMIT`].
#[track_caller]
fn join_any<T, E>(task: Task<T, E>) -> Result<T, TaskError<E>> {
    match task.join_timeout(LIMIT) {
        Ok(result) => result,
        Err(task) => panic!("{task:?} did not resolve within {LIMIT:?}"),
    }
}

/// Receives the workers' [`Note::Stopped`] until every worker in `workers` has
/// said it; returns how many each sender said so far.
#[track_caller]
pub fn stops_until(
    messages: &Messages<Note>,
    workers: &HashSet<WorkerId>,
) -> HashMap<WorkerId, usize> {
    let deadline = Instant::now() + LIMIT;
    let mut stops: HashMap<WorkerId, usize> = HashMap::new();
    while !workers.iter().all(|w| stops.contains_key(w)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match messages.recv_timeout(left) {
            Ok((from, Note::Stopped)) => *stops.entry(from).or_default() += 1,
            Ok(_) => {}
            Err(e) => panic!("no stop from each of {workers:?} ({e:?}); saw {stops:?}"),
        }
    }
    stops
}

/// Every `Worker::stop` a pool's workers report until the pool (shut down)
/// ends the messages stream, by worker, added to `stops`.
#[track_caller]
pub fn stops_to_end(
    messages: &Messages<Note>,
    mut stops: HashMap<WorkerId, usize>,
) -> HashMap<WorkerId, usize> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match messages.recv_timeout(left) {
            Ok((from, Note::Stopped)) => *stops.entry(from).or_default() += 1,
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => return stops,
            Err(RecvTimeoutError::Timeout) => panic!("the messages did not end; saw {stops:?}"),
        }
    }
}

/// `resize` grows the pool (the new workers start and run tasks) and shrinks
/// it: with every worker idle, the extra ones leave at once, each running
/// `Worker::stop` and exiting as `Retired`; the one that stays goes on. A size
/// of 0, an empty range and a closed pool are refused.
pub fn resize_grows_then_retires_idle_workers(backend: Backend) {
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
pub fn resize_lets_busy_workers_finish_their_task(backend: Backend) {
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
pub fn resize_racing_submit_loses_nothing(backend: Backend) {
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
        Backend::Threads | Backend::Loopback | Backend::Cluster => 10,
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
pub fn elastic_grows_under_a_burst_and_shrinks_when_idle(backend: Backend) {
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
