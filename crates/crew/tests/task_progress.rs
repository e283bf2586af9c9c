//! A task's progress, from its code (`Context::progress`) to whoever holds its
//! handle (`Task::progress`, `Task::watch_progress`), beyond the conformance
//! scenario (`progress_reaches_the_caller_before_the_result`): every way to
//! read it, clamping and NaN, reports after a cancel, a flood of reports, and
//! on processes, the *progress* frames a worker may get wrong (NaN, out of
//! range, a task it does not run) and items of a chunked `map`.
//!
//! Tests gate the task with channels (threads) or wait on conditions with a
//! deadline; none sleeps to make an assertion true.

mod common;

use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};

use common::{join, wait_until, worker_processes, LIMIT};
use crew::{Context, Pool, StartError, Worker};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Threads: each report is seen before the task goes on, by a blocking watch
/// and by `Task::progress`, and the watch ends after the result.
#[test]
fn each_report_reaches_a_blocking_watch_before_the_result() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let (go, gate) = mpsc::channel::<()>();
    let task = pool.spawn_with(move |ctx| {
        for step in [0.25, 0.5, 0.75] {
            ctx.progress(step);
            gate.recv_timeout(LIMIT).unwrap();
        }
        "done"
    });
    let mut watch = task.watch_progress();
    for step in [0.25, 0.5, 0.75] {
        assert_eq!(watch.recv_timeout(LIMIT), Ok(step));
        assert_eq!(task.progress(), Some(step));
        // The task waits for `go`: nothing new until then.
        assert_eq!(watch.try_recv(), Err(TryRecvError::Empty));
        go.send(()).unwrap();
    }
    assert_eq!(join(task).unwrap(), "done");
    assert_eq!(
        watch.recv_timeout(LIMIT),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(watch.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(watch.latest(), Some(0.75));
}

/// The same through `Stream`: a pending `next()` is woken by the report, and
/// the stream ends after the result.
#[test]
fn each_report_wakes_a_stream() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let (go, gate) = mpsc::channel::<()>();
    let task = pool.spawn_with(move |ctx| {
        for step in [0.25, 0.5, 0.75] {
            gate.recv_timeout(LIMIT).unwrap();
            ctx.progress(step);
        }
        7
    });
    let mut watch = task.watch_progress();
    futures::executor::block_on(async {
        for step in [0.25, 0.5, 0.75] {
            go.send(()).unwrap();
            assert_eq!(StreamExt::next(&mut watch).await, Some(step));
        }
        assert_eq!(task.await.unwrap(), 7);
        assert_eq!(StreamExt::next(&mut watch).await, None);
    });
}

/// Several watchers each see every change (none steals another's wake-up),
/// and a dropped watcher leaves nothing behind that breaks the others.
#[test]
fn several_watchers_each_see_every_change() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let (go, gate) = mpsc::channel::<()>();
    let task = pool.spawn_with(move |ctx| {
        for step in [0.5, 1.0] {
            gate.recv_timeout(LIMIT).unwrap();
            ctx.progress(step);
        }
    });
    let watchers: Vec<_> = (0..3).map(|_| task.watch_progress()).collect();
    drop(task.watch_progress());
    let readers: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Ok(v) = w.recv_timeout(LIMIT) {
                    seen.push(v);
                }
                seen
            })
        })
        .collect();
    go.send(()).unwrap();
    wait_until("0.5 is reported", || task.progress() == Some(0.5));
    go.send(()).unwrap();
    join(task).unwrap();
    for reader in readers {
        let seen = reader.join().unwrap();
        // A reader may miss 0.5 if 1.0 came before it looked: coalesced.
        assert!(
            seen == [0.5, 1.0] || seen == [1.0],
            "each reader ends at the last value: {seen:?}"
        );
    }
}

/// Out-of-range values are clamped, NaN is ignored, and a report of the value
/// already there is not a change.
#[test]
fn values_are_clamped_and_nan_is_ignored() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let (go, gate) = mpsc::channel::<()>();
    let task = pool.spawn_with(move |ctx| {
        ctx.progress(-2.0);
        gate.recv_timeout(LIMIT).unwrap();
        ctx.progress(f32::NAN);
        ctx.progress(0.0);
        ctx.progress(f32::INFINITY);
    });
    let mut watch = task.watch_progress();
    assert_eq!(watch.recv_timeout(LIMIT), Ok(0.0));
    go.send(()).unwrap();
    assert_eq!(watch.recv_timeout(LIMIT), Ok(1.0));
    join(task).unwrap();
    assert_eq!(
        watch.recv_timeout(LIMIT),
        Err(RecvTimeoutError::Disconnected)
    );
}

/// Once a running task is cancelled its handle has resolved, and whatever the
/// code still reports is ignored: the value stays at the last one before.
#[test]
fn reports_after_a_cancel_are_ignored() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let (go, gate) = mpsc::channel::<()>();
    let (done, finished) = mpsc::channel::<()>();
    let task = pool.spawn_with(move |ctx| {
        ctx.progress(0.5);
        gate.recv_timeout(LIMIT).unwrap();
        assert!(ctx.is_cancelled());
        ctx.progress(0.9);
        done.send(()).unwrap();
    });
    let mut watch = task.watch_progress();
    assert_eq!(watch.recv_timeout(LIMIT), Ok(0.5));
    assert!(task.cancel());
    go.send(()).unwrap();
    finished.recv_timeout(LIMIT).unwrap();
    assert_eq!(task.progress(), Some(0.5));
    assert_eq!(
        watch.recv_timeout(LIMIT),
        Err(RecvTimeoutError::Disconnected)
    );
    assert!(join(task).unwrap_err().is_cancelled());
}

/// A million reports do not block the task, and a watcher reading meanwhile
/// sees a rising sequence that ends at the last value (latest wins, nothing
/// queued). With no watcher, the same flood costs a store each.
#[test]
fn a_flood_of_reports_neither_blocks_nor_queues() {
    const N: u32 = 1_000_000;
    let pool = Pool::builder().workers(2).build().unwrap();
    let flood = |ctx: &mut Context<'_>| {
        for i in 1..=N {
            ctx.progress(i as f32 / N as f32);
        }
    };
    let watched = pool.spawn_with(flood);
    let mut watch = watched.watch_progress();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(v) = watch.recv_timeout(LIMIT) {
            seen.push(v);
        }
        seen
    });
    let unwatched = pool.spawn_with(flood);
    join(watched).unwrap();
    join(unwatched).unwrap();
    let seen = reader.join().unwrap();
    assert_eq!(seen.last(), Some(&1.0));
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "each value seen is newer than the one before"
    );
}

/// An async worker's task reports through the context its future owns: a
/// watcher waiting meanwhile is woken, and the worker's other tasks go on.
#[test]
fn async_tasks_report_from_their_future() {
    use futures::channel::oneshot;
    use std::sync::Mutex;

    /// Takes the test's gate from `GATE` (one task waits on it).
    struct Stepper;
    impl crew::AsyncWorker for Stepper {
        type Input = u32;
        type Output = u32;
        type Error = String;
        type Message = ();
        fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
            Ok(Stepper)
        }
        async fn run(&self, n: u32, ctx: &mut Context<'_>) -> Result<u32, String> {
            if n == 0 {
                return Ok(0);
            }
            ctx.progress(0.5);
            let gate = GATE.lock().unwrap().take().unwrap();
            gate.await.map_err(|e| e.to_string())?;
            ctx.progress(1.0);
            Ok(n)
        }
    }
    static GATE: Mutex<Option<oneshot::Receiver<()>>> = Mutex::new(None);

    let (go, gate) = oneshot::channel();
    *GATE.lock().unwrap() = Some(gate);
    let pool = Pool::<crew::Async<Stepper>>::builder()
        .workers(1)
        .concurrency(2)
        .build()
        .unwrap();
    let task = pool.submit(5).unwrap();
    let mut watch = task.watch_progress();
    assert_eq!(watch.recv_timeout(LIMIT), Ok(0.5));
    // The same worker runs another task while this one waits.
    assert_eq!(join(pool.submit(0).unwrap()).unwrap(), 0);
    go.send(()).unwrap();
    assert_eq!(watch.recv_timeout(LIMIT), Ok(1.0));
    assert_eq!(join(task).unwrap(), 5);
    assert_eq!(
        watch.recv_timeout(LIMIT),
        Err(RecvTimeoutError::Disconnected)
    );
}

/// A task that never reports has no progress; `start`, `stop` and
/// `on_message` have no task to report for, and reporting there does nothing.
#[test]
fn no_report_no_progress_and_none_outside_a_task() {
    struct Eager;
    impl Worker for Eager {
        type Input = u32;
        type Output = u32;
        type Error = String;
        type Message = ();
        fn start(ctx: &mut Context<'_>) -> Result<Self, StartError> {
            ctx.progress(0.5);
            Ok(Eager)
        }
        fn run(&mut self, input: u32, _ctx: &mut Context<'_>) -> Result<u32, String> {
            Ok(input)
        }
    }
    let pool = Pool::<Eager>::builder().workers(1).build().unwrap();
    let task = pool.submit(3).unwrap();
    let mut watch = task.watch_progress();
    assert_eq!(join(task).unwrap(), 3);
    assert_eq!(
        watch.recv_timeout(LIMIT),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(watch.latest(), None);
}

// ------------------------------------------------------------------ processes

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    /// Reports each value in turn, then answers how many.
    Report(Vec<f32>),
    /// Reports `n` rising values, then answers `n`.
    Flood(u32),
    /// Writes these *progress* frames straight into the worker's channel
    /// (bypassing `Context::progress`, which would clamp and filter them),
    /// then answers 0.
    Raw(Vec<(Target, f32)>),
}

/// Whom a raw *progress* frame names.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Target {
    /// The task that writes it.
    Own,
    /// Another task, by id (one that finished, or none at all).
    Task(u64),
}

struct Reporter;

impl Worker for Reporter {
    type Input = Job;
    type Output = u32;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Reporter)
    }

    fn run(&mut self, job: Job, ctx: &mut Context<'_>) -> Result<u32, String> {
        match job {
            Job::Report(values) => {
                for &v in &values {
                    ctx.progress(v);
                }
                Ok(values.len() as u32)
            }
            Job::Flood(n) => {
                for i in 1..=n {
                    ctx.progress(i as f32 / n as f32);
                }
                Ok(n)
            }
            Job::Raw(frames) => {
                let own = ctx.task_id().unwrap().as_u64();
                let mut out = crew::wire::FrameEncoder::new(crew::wire::DEFAULT_FRAME_LIMIT);
                for (target, fraction) in frames {
                    let id = match target {
                        Target::Own => own,
                        Target::Task(id) => id,
                    };
                    out.push(&crew::wire::ToParent::Progress { id, fraction })
                        .unwrap();
                }
                write_to_channel(out.as_bytes());
                Ok(0)
            }
        }
    }
}

/// Writes `bytes` into this worker process's channel to the pool: the one
/// socket among its descriptors (crew holds it under two descriptors). One
/// small write, so it cannot interleave with the frames crew itself writes.
fn write_to_channel(bytes: &[u8]) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let mut sockets: Vec<(String, i32)> = (3..64)
        .filter_map(|fd| {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            let link = link.to_string_lossy().into_owned();
            link.starts_with("socket:").then_some((link, fd))
        })
        .collect();
    sockets.sort();
    sockets.dedup_by(|a, b| a.0 == b.0);
    assert_eq!(sockets.len(), 1, "one channel: {sockets:?}");
    // SAFETY: the descriptor is open (its /proc entry exists) and is never
    // closed here (ManuallyDrop): crew keeps using it.
    let mut channel =
        std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(sockets[0].1) });
    channel.write_all(bytes).unwrap();
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Reporter>().run();
}

/// A worker process sends the last report before the result, so the caller
/// has it as soon as the task is finished, and the pool clamps as threads do.
#[test]
fn processes_the_last_report_arrives_before_the_result() {
    let pool = worker_processes::<Reporter>(1).build().unwrap();
    let task = pool.submit(Job::Report(vec![0.1, 0.6, 3.0])).unwrap();
    let mut watch = task.watch_progress();
    assert_eq!(join(task).unwrap(), 3);
    // Coalesced: the first values may never have left the worker.
    let mut seen = Vec::new();
    while let Ok(v) = watch.recv_timeout(LIMIT) {
        seen.push(v);
    }
    assert_eq!(seen.last(), Some(&1.0), "{seen:?}");
    pool.shutdown();
}

/// A million reports in a worker process become a few frames (one per
/// watcher tick at most, and one before the result): the task is not slowed
/// down by the channel, and the caller ends at the last value.
#[test]
fn processes_a_flood_of_reports_is_coalesced() {
    let pool = worker_processes::<Reporter>(1).build().unwrap();
    let task = pool.submit(Job::Flood(1_000_000)).unwrap();
    let mut watch = task.watch_progress();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(v) = watch.recv_timeout(LIMIT) {
            seen.push(v);
        }
        seen
    });
    assert_eq!(join(task).unwrap(), 1_000_000);
    let seen = reader.join().unwrap();
    assert_eq!(seen.last(), Some(&1.0));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "rising");
    // A frame per report would be a million; at most one per millisecond
    // tick could not reach this within the test's limit.
    assert!(seen.len() < 100_000, "{} values seen", seen.len());
    pool.shutdown();
}

/// *progress* frames a worker gets wrong are ignored, not protocol faults:
/// NaN (ignored), out of range (clamped), for a task that already finished
/// (its value stays), and for a task that does not exist. The worker stays.
#[test]
fn processes_bad_progress_frames_are_ignored() {
    let pool = worker_processes::<Reporter>(1).build().unwrap();
    let first = pool.submit(Job::Report(vec![0.3])).unwrap();
    let first_id = first.id().as_u64();
    let mut first_watch = first.watch_progress();
    assert_eq!(join(first).unwrap(), 1);
    let worker = pool.workers();

    let task = pool
        .submit(Job::Raw(vec![
            (Target::Own, 7.5),
            (Target::Own, f32::NAN),
            (Target::Task(first_id), 0.9),
            (Target::Task(u64::MAX), 0.5),
        ]))
        .unwrap();
    let mut watch = task.watch_progress();
    assert_eq!(join(task).unwrap(), 0);
    let mut seen = Vec::new();
    while let Ok(v) = watch.recv_timeout(LIMIT) {
        seen.push(v);
    }
    assert_eq!(seen, [1.0], "clamped, and the NaN after it ignored");
    while first_watch.recv_timeout(LIMIT).is_ok() {}
    assert_eq!(
        first_watch.latest(),
        Some(0.3),
        "a finished task keeps its value"
    );

    assert_eq!(join(pool.submit(Job::Report(vec![])).unwrap()).unwrap(), 0);
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.crashed), (3, 0), "{stats}");
    assert_eq!(pool.workers(), worker, "the same worker goes on");
    pool.shutdown();
}

/// Items of a chunked `map` on processes may report: their reports go
/// nowhere (an item has no handle), and the results are what they would be.
#[test]
fn processes_map_items_that_report_are_unaffected() {
    let pool = worker_processes::<Reporter>(2).build().unwrap();
    let inputs: Vec<Job> = (0..200).map(|i| Job::Report(vec![0.5; i % 3])).collect();
    let results: Vec<u32> = pool.map(inputs).map(|r| r.unwrap()).collect();
    let expected: Vec<u32> = (0..200).map(|i| (i % 3) as u32).collect();
    assert_eq!(results, expected);
    assert_eq!(pool.stats().crashed, 0);
    pool.shutdown();
}
