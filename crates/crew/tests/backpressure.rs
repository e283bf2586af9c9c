//! `queue_capacity`: a full queue makes `try_submit` / `try_spawn` give the input
//! back, makes `submit` / `spawn` wait (or run on the caller under
//! `WhenFull::CallerRuns`) and `submit_async` wait without blocking; a shutdown
//! releases waiting submitters with their input; tasks spawned from inside the
//! pool are not bounded; and every accepted task is counted exactly once.
//!
//! Each test holds the pool's single worker in a task the test controls, so the
//! queue stays exactly as full as the test made it.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context as PollContext, Poll, Wake, Waker};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use common::{block_workers, join, wait_until, Counter, Flag, Gate, OpenOnDrop, SetOnDrop, LIMIT};
use crew::{Context, Pool, StartError, Task, WhenFull, Worker, WorkerId};

// ------------------------------------------------------------------ helpers

/// A worker type whose tasks either hold the worker until a gate opens or echo a
/// number; every task reports the thread it ran on, and every instance records
/// the threads it was started and stopped on.
struct Probe;

static PROBE_STARTED_ON: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());
static PROBE_STOPPED_ON: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());

enum Cmd {
    /// Bumps the counter, then waits for the gate.
    Hold(Gate, Counter),
    Echo(u32),
}

impl Worker for Probe {
    type Input = Cmd;
    type Output = (u32, ThreadId);
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        PROBE_STARTED_ON
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        Ok(Probe)
    }

    fn stop(&mut self, _ctx: &mut Context<'_>) {
        PROBE_STOPPED_ON
            .lock()
            .unwrap()
            .push(std::thread::current().id());
    }

    fn run(&mut self, cmd: Cmd, _ctx: &mut Context<'_>) -> Result<Self::Output, Self::Error> {
        let n = match cmd {
            Cmd::Hold(gate, started) => {
                started.bump();
                gate.wait();
                0
            }
            Cmd::Echo(n) => n,
        };
        Ok((n, std::thread::current().id()))
    }
}

fn echoed(cmd: &Cmd) -> Option<u32> {
    match cmd {
        Cmd::Echo(n) => Some(*n),
        Cmd::Hold(..) => None,
    }
}

fn probe_pool(capacity: usize, when_full: WhenFull) -> Pool<Probe> {
    Pool::<Probe>::builder()
        .workers(1)
        .queue_capacity(capacity)
        .when_full(when_full)
        .build()
        .unwrap()
}

/// Occupies the single worker of `pool` until `gate` opens; returns once it runs.
#[track_caller]
fn hold_probe(pool: &Pool<Probe>, gate: &Gate) -> Task<(u32, ThreadId)> {
    let started = Counter::new();
    let task = pool
        .try_submit(Cmd::Hold(gate.clone(), started.clone()))
        .expect("an empty queue has room");
    started.wait_for(1);
    task
}

/// Fills the queue of `pool` with `n` echo tasks, checking each was accepted.
fn fill_probe(pool: &Pool<Probe>, n: u32) -> Vec<Task<(u32, ThreadId)>> {
    (0..n)
        .map(|i| {
            pool.try_submit(Cmd::Echo(i))
                .unwrap_or_else(|e| panic!("place {i} of {n} was refused: {e}"))
        })
        .collect()
}

/// Terminates the pool when dropped, so a failing assertion never leaves a
/// submitter blocked on a full queue (terminating releases it).
struct TerminateOnDrop<W: Worker>(Pool<W>);

impl<W: Worker> Drop for TerminateOnDrop<W> {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

/// Joins a helper thread, failing the test if it has not finished within `LIMIT`.
#[track_caller]
fn join_thread<T>(handle: JoinHandle<T>) -> T {
    wait_until("a helper thread finishes", || handle.is_finished());
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A call that is expected to block, run on its own thread. `release` records
/// (before the test frees a place) that the call may now return; the thread
/// records whether it had been released by the time the call returned.
struct Blocked<R> {
    entered: Flag,
    released: Flag,
    thread: JoinHandle<(R, bool)>,
}

impl<R: Send + 'static> Blocked<R> {
    fn start(call: impl FnOnce() -> R + Send + 'static) -> Self {
        let (entered, released) = (Flag::new(), Flag::new());
        let thread = {
            let (entered, released) = (entered.clone(), released.clone());
            std::thread::spawn(move || {
                entered.set();
                let result = call();
                (result, released.get())
            })
        };
        let blocked = Blocked {
            entered,
            released,
            thread,
        };
        wait_until("the blocked call is about to start", || {
            blocked.entered.get()
        });
        // Only makes it likely that the thread is inside the call when the test
        // checks it; with a correct pool the checks hold for any interleaving.
        std::thread::sleep(Duration::from_millis(20));
        blocked
    }

    fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Marks the call released, then runs `free` (which frees a place).
    fn release(&self, free: impl FnOnce()) {
        self.released.set();
        free();
    }

    /// The call's result, and whether it returned only after `release`.
    #[track_caller]
    fn finish(self) -> (R, bool) {
        join_thread(self.thread)
    }
}

/// Joins `task` and returns its output with the worker that ran it.
#[track_caller]
fn join_with_worker<T>(task: Task<T>) -> (T, WorkerId) {
    wait_until("the task resolves", || task.is_finished());
    let worker = task.worker().expect("a task that ran has a worker");
    (join(task).unwrap(), worker)
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[track_caller]
fn assert_reconciled<W: Worker>(pool: &Pool<W>) {
    assert!(pool.wait_idle_timeout(LIMIT), "the pool becomes idle");
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    assert_eq!(stats.queued, 0, "{stats}");
}

// ------------------------------------------------------------------ (a) try_

#[test]
fn try_spawn_gives_the_closure_back_when_the_queue_is_full() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(2)
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate);

    let queued: Vec<_> = (0..2_u32)
        .map(|i| pool.try_spawn(move || i).expect("room for two"))
        .collect();
    let dropped = Flag::new();
    let guard = SetOnDrop(dropped.clone());
    let err = pool
        .try_spawn(move || {
            let _guard = &guard;
            99_u32
        })
        .expect_err("a third task does not fit");
    assert!(err.is_full(), "{err:?}");
    assert!(!err.is_closed(), "{err:?}");
    let closure = err.into_inner();
    assert!(!dropped.get(), "the closure came back intact");
    assert_eq!(closure(), 99, "the very closure that was refused");
    assert!(dropped.get());

    gate.open();
    join(blocker.into_iter().next().unwrap()).unwrap();
    let got: Vec<u32> = queued.into_iter().map(|t| join(t).unwrap()).collect();
    assert_eq!(got, [0, 1]);

    // Room again once the queue drained.
    assert_eq!(join(pool.try_spawn(|| 7_u32).unwrap()).unwrap(), 7);
    assert_reconciled(&pool);
    assert_eq!(
        pool.stats().submitted,
        4,
        "the refused task was not counted"
    );
    pool.shutdown();
}

#[test]
fn try_submit_gives_the_input_back_when_the_queue_is_full() {
    let pool = probe_pool(2, WhenFull::Block);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = hold_probe(&pool, &gate);
    let queued = fill_probe(&pool, 2);

    let err = pool.try_submit(Cmd::Echo(41)).expect_err("full");
    assert!(err.is_full(), "{err:?}");
    assert_eq!(echoed(err.input()), Some(41));
    assert_eq!(echoed(&err.into_inner()), Some(41));

    let err = pool
        .task(Cmd::Echo(42))
        .try_submit()
        .expect_err("the task builder's try_submit is bounded too");
    assert!(err.is_full(), "{err:?}");
    assert_eq!(echoed(&err.into_inner()), Some(42));

    gate.open();
    join(blocker).unwrap();
    for (i, t) in queued.into_iter().enumerate() {
        assert_eq!(join(t).unwrap().0, i as u32);
    }
    assert_reconciled(&pool);
    assert_eq!(pool.stats().submitted, 3, "refused inputs are not counted");
    pool.shutdown();
}

// ------------------------------------------------------------------ (b) blocking

#[test]
fn blocking_spawn_returns_only_after_a_place_frees() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(2)
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _terminate = TerminateOnDrop(pool.clone());
    let blocker = block_workers(&pool, 1, &gate);
    let queued: Vec<_> = (0..2_u32)
        .map(|i| pool.try_spawn(move || i).expect("room for two"))
        .collect();

    let blocked = {
        let pool = pool.clone();
        Blocked::start(move || pool.spawn(|| 2_u32))
    };
    assert!(
        !blocked.is_finished(),
        "spawn returned while the queue was full"
    );
    blocked.release(|| gate.open());
    let (task, released_first) = blocked.finish();
    assert!(released_first, "spawn returned before a place was freed");
    assert_eq!(join(task).unwrap(), 2);

    for t in blocker {
        join(t).unwrap();
    }
    let got: Vec<u32> = queued.into_iter().map(|t| join(t).unwrap()).collect();
    assert_eq!(got, [0, 1]);
    assert_reconciled(&pool);
    pool.shutdown();
}

#[test]
fn blocking_submit_returns_only_after_a_place_frees() {
    let pool = probe_pool(2, WhenFull::Block);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _terminate = TerminateOnDrop(pool.clone());
    let blocker = hold_probe(&pool, &gate);
    let queued = fill_probe(&pool, 2);

    let blocked = {
        let pool = pool.clone();
        Blocked::start(move || pool.submit(Cmd::Echo(2)))
    };
    assert!(
        !blocked.is_finished(),
        "submit returned while the queue was full"
    );
    blocked.release(|| gate.open());
    let (result, released_first) = blocked.finish();
    assert!(released_first, "submit returned before a place was freed");
    let task = result.unwrap_or_else(|e| panic!("submit failed: {e}"));
    assert_eq!(join(task).unwrap().0, 2);

    join(blocker).unwrap();
    for t in queued {
        join(t).unwrap();
    }
    assert_reconciled(&pool);
    pool.shutdown();
}

// ------------------------------------------------------------------ (c) async

#[test]
fn submit_async_is_pending_while_full_and_completes_once_a_place_frees() {
    let pool = probe_pool(2, WhenFull::Block);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = hold_probe(&pool, &gate);
    let queued = fill_probe(&pool, 2);

    let wakes = Arc::new(CountingWaker::default());
    let waker = Waker::from(Arc::clone(&wakes));
    let mut cx = PollContext::from_waker(&waker);
    let mut submit = pool.submit_async(Cmd::Echo(5));
    assert!(
        Pin::new(&mut submit).poll(&mut cx).is_pending(),
        "no place: the future waits"
    );
    assert_eq!(wakes.0.load(SeqCst), 0, "nothing freed a place yet");

    gate.open();
    wait_until("freeing a place wakes the waiting future", || {
        wakes.0.load(SeqCst) > 0
    });
    let task = match Pin::new(&mut submit).poll(&mut cx) {
        Poll::Ready(result) => result.unwrap_or_else(|e| panic!("submit_async failed: {e}")),
        Poll::Pending => panic!("woken with a free place, the future is still pending"),
    };
    drop(submit);
    assert_eq!(join(task).unwrap().0, 5);

    join(blocker).unwrap();
    for t in queued {
        join(t).unwrap();
    }
    assert_reconciled(&pool);
    pool.shutdown();
}

#[test]
fn submit_async_under_block_on_completes_after_a_place_frees() {
    let pool = probe_pool(2, WhenFull::Block);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _terminate = TerminateOnDrop(pool.clone());
    let blocker = hold_probe(&pool, &gate);
    let queued = fill_probe(&pool, 2);

    let blocked = {
        let pool = pool.clone();
        Blocked::start(move || futures::executor::block_on(pool.submit_async(Cmd::Echo(6))))
    };
    assert!(
        !blocked.is_finished(),
        "submit_async completed while the queue was full"
    );
    blocked.release(|| gate.open());
    let (result, released_first) = blocked.finish();
    assert!(
        released_first,
        "submit_async completed before a place was freed"
    );
    let task = result.unwrap_or_else(|e| panic!("submit_async failed: {e}"));
    assert_eq!(join(task).unwrap().0, 6);

    join(blocker).unwrap();
    for t in queued {
        join(t).unwrap();
    }
    assert_reconciled(&pool);
    pool.shutdown();
}

// ------------------------------------------------------------------ (d) CallerRuns

#[test]
fn caller_runs_a_closure_on_the_submitting_thread_when_full() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(1)
        .when_full(WhenFull::CallerRuns)
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate);
    let queued = pool.try_spawn(|| 0_u32).expect("room for one");

    let caller = std::thread::current().id();
    let task = pool.spawn(|| std::thread::current().id());
    assert!(task.is_finished(), "it ran before spawn returned");
    assert_eq!(task.worker(), Some(WorkerId::CALLER));
    assert_eq!(join(task).unwrap(), caller, "it ran on the caller's thread");

    let task = pool.spawn_with(|ctx| (ctx.worker_id(), std::thread::current().id()));
    assert_eq!(task.worker(), Some(WorkerId::CALLER));
    assert_eq!(join(task).unwrap(), (WorkerId::CALLER, caller));

    // `try_spawn` never runs anything itself: a full queue still gives it back.
    let err = pool.try_spawn(|| 3_u32).expect_err("still full");
    assert!(err.is_full(), "{err:?}");

    gate.open();
    for t in blocker {
        join(t).unwrap();
    }
    assert_eq!(join(queued).unwrap(), 0);

    // With room, spawn queues as usual and a worker runs it.
    let task = pool.spawn(|| std::thread::current().id());
    let ran_on = join_with_worker(task);
    assert_ne!(ran_on.0, caller, "with room, the task goes to the pool");
    assert!(pool.workers().contains(&ran_on.1), "{ran_on:?}");

    assert_reconciled(&pool);
    let stats = pool.stats();
    assert_eq!(stats.submitted, 5, "caller-run tasks are counted: {stats}");
    assert_eq!(stats.completed, 5, "{stats}");
    pool.shutdown();
}

#[test]
fn caller_runs_a_worker_task_on_a_fresh_instance_on_the_submitting_thread() {
    let pool = probe_pool(1, WhenFull::CallerRuns);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = hold_probe(&pool, &gate);
    let queued = fill_probe(&pool, 1);

    // This test's thread is used by no other test while it runs.
    let caller = std::thread::current().id();
    let task = pool.submit(Cmd::Echo(9)).expect("caller runs it");
    assert!(task.is_finished(), "it ran before submit returned");
    assert_eq!(task.worker(), Some(WorkerId::CALLER));
    assert_eq!(join(task).unwrap(), (9, caller));
    assert!(
        PROBE_STARTED_ON.lock().unwrap().contains(&caller),
        "a fresh instance was started on the caller's thread"
    );
    assert!(
        PROBE_STOPPED_ON.lock().unwrap().contains(&caller),
        "and stopped there"
    );

    gate.open();
    let (_, worker_thread) = join(blocker).unwrap();
    assert_ne!(worker_thread, caller);
    for t in queued {
        assert_eq!(join(t).unwrap(), (0, worker_thread));
    }
    assert_reconciled(&pool);
    pool.shutdown();
}

// ------------------------------------------------------------------ (e) closing

#[test]
fn shutdown_releases_a_blocked_submit_with_its_input() {
    let pool = probe_pool(1, WhenFull::Block);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _terminate = TerminateOnDrop(pool.clone());
    let blocker = hold_probe(&pool, &gate);
    let queued = fill_probe(&pool, 1);

    let blocked = {
        let pool = pool.clone();
        Blocked::start(move || pool.submit(Cmd::Echo(7)))
    };
    assert!(!blocked.is_finished(), "submit waits on the full queue");

    // `shutdown` waits for the held worker, so it runs on its own thread.
    let shutting_down = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown())
    };
    let (result, _) = blocked.finish();
    let err = result.expect_err("a closed pool takes no new work");
    assert!(err.is_closed(), "{err:?}");
    assert_eq!(echoed(&err.into_inner()), Some(7), "the input comes back");
    assert!(
        !gate.is_open(),
        "released by the shutdown, not by a free place"
    );

    gate.open();
    join_thread(shutting_down);
    join(blocker).unwrap();
    for t in queued {
        assert_eq!(join(t).unwrap().0, 0, "shutdown still runs what was queued");
    }
    let stats = pool.stats();
    assert_eq!(stats.submitted, 2, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

#[test]
fn terminate_releases_a_blocked_submit_with_its_input() {
    let pool = probe_pool(1, WhenFull::Block);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _terminate = TerminateOnDrop(pool.clone());
    let blocker = hold_probe(&pool, &gate);
    let queued = fill_probe(&pool, 1);

    let blocked = {
        let pool = pool.clone();
        Blocked::start(move || pool.submit(Cmd::Echo(8)))
    };
    assert!(!blocked.is_finished(), "submit waits on the full queue");

    pool.terminate();
    let (result, _) = blocked.finish();
    let err = result.expect_err("a terminated pool takes no new work");
    assert!(err.is_closed(), "{err:?}");
    assert_eq!(echoed(&err.into_inner()), Some(8), "the input comes back");

    assert!(join(blocker).unwrap_err().is_cancelled());
    for t in queued {
        assert!(join(t).unwrap_err().is_closed());
    }
    gate.open();
    assert_reconciled(&pool);
}

#[test]
fn terminate_completes_a_pending_submit_async_with_its_input() {
    let pool = probe_pool(1, WhenFull::Block);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _blocker = hold_probe(&pool, &gate);
    let _queued = fill_probe(&pool, 1);

    let wakes = Arc::new(CountingWaker::default());
    let waker = Waker::from(Arc::clone(&wakes));
    let mut cx = PollContext::from_waker(&waker);
    let mut submit = pool.submit_async(Cmd::Echo(4));
    assert!(Pin::new(&mut submit).poll(&mut cx).is_pending());

    pool.terminate();
    wait_until("terminating wakes the waiting future", || {
        wakes.0.load(SeqCst) > 0
    });
    match Pin::new(&mut submit).poll(&mut cx) {
        Poll::Ready(Err(err)) => {
            assert!(err.is_closed(), "{err:?}");
            assert_eq!(echoed(&err.into_inner()), Some(4), "the input comes back");
        }
        Poll::Ready(Ok(task)) => panic!("a terminated pool accepted {task:?}"),
        Poll::Pending => panic!("woken by terminate, the future is still pending"),
    }
    gate.open();
}

#[test]
fn a_closure_blocked_in_spawn_resolves_as_closed_on_terminate() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _terminate = TerminateOnDrop(pool.clone());
    let _blocker = block_workers(&pool, 1, &gate);
    let _queued = pool.try_spawn(|| ()).expect("room for one");

    let dropped = Flag::new();
    let blocked = {
        let pool = pool.clone();
        let guard = SetOnDrop(dropped.clone());
        Blocked::start(move || {
            pool.spawn(move || {
                let _guard = &guard;
                panic!("a closure refused by a closed pool must never run")
            })
        })
    };
    assert!(!blocked.is_finished(), "spawn waits on the full queue");
    pool.terminate();
    let (task, _) = blocked.finish();
    assert!(task.is_finished(), "already resolved when spawn returns");
    assert!(join(task).unwrap_err().is_closed());
    assert!(dropped.get(), "the refused closure was dropped, not kept");
    gate.open();
}

// ------------------------------------------------------------------ (f) nested

#[test]
fn tasks_spawned_from_inside_the_pool_are_not_bounded() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let started = Counter::new();
    let parent = {
        let (inner, gate, started) = (pool.clone(), gate.clone(), started.clone());
        pool.spawn(move || {
            started.bump();
            gate.wait();
            // The queue is full (see below); none of these may wait for room.
            let mut children: Vec<Task<u32>> =
                (0..10_u32).map(|i| inner.spawn(move || i)).collect();
            children.push(
                inner
                    .try_spawn(|| 10_u32)
                    .unwrap_or_else(|e| panic!("try_spawn from inside refused: {e}")),
            );
            children
        })
    };
    started.wait_for(1);
    let filler = pool.try_spawn(|| 100_u32).expect("room for one");
    let err = pool
        .try_spawn(|| 101_u32)
        .expect_err("the queue is full now");
    assert!(err.is_full(), "{err:?}");

    gate.open();
    let children = join(parent).expect("the parent spawned its children without deadlock");
    let got: Vec<u32> = children.into_iter().map(|t| join(t).unwrap()).collect();
    assert_eq!(got, (0..=10).collect::<Vec<_>>());
    assert_eq!(join(filler).unwrap(), 100);
    assert_reconciled(&pool);
    assert_eq!(pool.stats().submitted, 13);
    pool.shutdown();
}

// ------------------------------------------------------------------ (g) counting

/// Runs of each task, by index.
type Runs = Arc<Vec<AtomicUsize>>;

/// Adds one to its input's slot in `Runs` and returns the index.
struct Counted;

impl Worker for Counted {
    type Input = (Runs, usize);
    type Output = usize;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Counted)
    }

    fn run(
        &mut self,
        (runs, k): (Runs, usize),
        _ctx: &mut Context<'_>,
    ) -> Result<usize, Self::Error> {
        runs[k].fetch_add(1, SeqCst);
        Ok(k)
    }
}

#[test]
fn every_task_resolves_exactly_once_and_the_stats_add_up() {
    const PER_THREAD: usize = 300;
    let pool = Pool::<Counted>::builder()
        .workers(2)
        .queue_capacity(4)
        .build()
        .unwrap();
    let _terminate = TerminateOnDrop(pool.clone());
    let runs: Runs = Arc::new((0..3 * PER_THREAD).map(|_| AtomicUsize::new(0)).collect());
    type Accepted = Vec<(usize, Task<usize>)>;

    // Three submitters race for the bounded places, each through another entry
    // point: blocking, non-blocking (which may be refused), and async.
    let blocking = {
        let (pool, runs) = (pool.clone(), Arc::clone(&runs));
        std::thread::spawn(move || -> Accepted {
            (0..PER_THREAD)
                .map(|k| {
                    let task = pool.submit((Arc::clone(&runs), k));
                    (k, task.unwrap_or_else(|e| panic!("submit {k}: {e}")))
                })
                .collect()
        })
    };
    let trying = {
        let (pool, runs) = (pool.clone(), Arc::clone(&runs));
        std::thread::spawn(move || -> (Accepted, Vec<usize>) {
            let (mut accepted, mut refused) = (Vec::new(), Vec::new());
            for k in PER_THREAD..2 * PER_THREAD {
                match pool.try_submit((Arc::clone(&runs), k)) {
                    Ok(task) => accepted.push((k, task)),
                    Err(e) => {
                        assert!(e.is_full(), "{e:?}");
                        assert_eq!(e.into_inner().1, k, "the refused input comes back");
                        refused.push(k);
                    }
                }
            }
            (accepted, refused)
        })
    };
    let awaiting = {
        let (pool, runs) = (pool.clone(), Arc::clone(&runs));
        std::thread::spawn(move || -> Accepted {
            futures::executor::block_on(async {
                let mut accepted = Vec::new();
                for k in 2 * PER_THREAD..3 * PER_THREAD {
                    let task = pool.submit_async((Arc::clone(&runs), k)).await;
                    accepted.push((k, task.unwrap_or_else(|e| panic!("submit_async {k}: {e}"))));
                }
                accepted
            })
        })
    };

    let mut accepted = join_thread(blocking);
    let (tried, refused) = join_thread(trying);
    accepted.extend(tried);
    accepted.extend(join_thread(awaiting));
    let n_accepted = accepted.len();
    for (k, task) in accepted {
        assert_eq!(join(task).unwrap(), k);
        assert_eq!(runs[k].load(SeqCst), 1, "task {k} ran exactly once");
    }
    for k in refused {
        assert_eq!(runs[k].load(SeqCst), 0, "refused task {k} never ran");
    }
    assert_reconciled(&pool);
    let stats = pool.stats();
    assert_eq!(stats.submitted, n_accepted as u64, "{stats}");
    assert_eq!(stats.completed, n_accepted as u64, "{stats}");
    pool.shutdown();
}
