//! Async tasks on the thread backend: `spawn_async`, `AsyncWorker` and
//! `concurrency(n)`. Overlap is shown with barriers (impossible to pass if the
//! tasks ran one at a time), never with a clock.

mod common;

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context as PollContext, Poll};
use std::time::Duration;

use common::{join, wait_until, Counter, Flag, SetOnDrop, LIMIT};
use crew::{Async, AsyncWorker, Context, Event, Pool, StartError, TaskOutcome};
use futures::channel::oneshot;
use tokio::sync::{Barrier, Semaphore};

/// Returns `Pending` once (waking itself), so the task gives its thread up once.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn yield_once() -> YieldOnce {
    YieldOnce(false)
}

/// Counts tasks inside a section and remembers the most at once.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl InFlight {
    fn enter(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(now, SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }

    fn max(&self) -> usize {
        self.max.load(SeqCst)
    }
}

#[test]
fn spawn_async_resolves_by_join_and_by_await() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let joined = pool.spawn_async(async {
        yield_once().await;
        6 * 7
    });
    assert_eq!(join(joined).unwrap(), 42);

    let awaited = pool.spawn_async(async { String::from("hello") });
    let value = futures::executor::block_on(awaited).unwrap();
    assert_eq!(value, "hello");

    // Awaited from inside a tokio runtime, as tokio code would.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let task = pool.spawn_async(async { 7u8 });
    assert_eq!(rt.block_on(task).unwrap(), 7);
    pool.shutdown();
}

#[test]
fn a_panicking_future_resolves_as_panicked_and_the_pool_keeps_working() {
    let pool = Pool::builder().workers(1).concurrency(2).build().unwrap();
    let bad = pool.spawn_async(async {
        yield_once().await;
        panic!("boom in a future");
    });
    let error = join(bad).unwrap_err();
    assert!(error.is_panic());
    assert_eq!(error.panic_message(), Some("boom in a future"));

    let good = pool.spawn_async(async { 1 + 1 });
    assert_eq!(join(good).unwrap(), 2);
    assert_eq!(join(pool.spawn(|| 3)).unwrap(), 3);
    let stats = pool.stats();
    assert_eq!(stats.panicked, 1);
    assert_eq!(stats.workers, 1);
    pool.shutdown();
}

#[test]
fn cancel_drops_a_pending_future() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let dropped = Flag::new();
    let started = Flag::new();
    let (_never_sent, rx) = oneshot::channel::<()>();
    let task = {
        let guard = SetOnDrop(dropped.clone());
        let started = started.clone();
        pool.spawn_async(async move {
            let _guard = guard;
            started.set();
            let _ = rx.await; // never fires
            "unreachable"
        })
    };
    wait_until("the future is polled", || started.get());
    assert!(!dropped.get());
    assert!(task.cancel());
    wait_until("the cancelled future is dropped", || dropped.get());
    assert!(join(task).unwrap_err().is_cancelled());

    // The worker's slot is free again.
    assert_eq!(join(pool.spawn_async(async { 5 })).unwrap(), 5);
    pool.wait_idle();
    assert_eq!(pool.stats().cancelled, 1);
    pool.shutdown();
}

#[test]
fn a_timed_out_future_resolves_as_timed_out_and_is_dropped() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let dropped = Flag::new();
    let (_never_sent, rx) = oneshot::channel::<()>();
    let guard = SetOnDrop(dropped.clone());
    let task = pool
        .job_async(async move {
            let _guard = guard;
            let _ = rx.await;
        })
        .timeout(Duration::from_millis(20))
        .spawn();
    assert!(join(task).unwrap_err().is_timeout());
    wait_until("the timed-out future is dropped", || dropped.get());
    assert_eq!(join(pool.spawn_async(async { 1 })).unwrap(), 1);
    pool.wait_idle();
    let stats = pool.stats();
    assert_eq!(stats.timed_out, 1);
    assert_eq!(stats.workers, 1, "the worker kept its thread");
    assert_eq!(stats.abandoned_threads, 0);
    pool.shutdown();
}

#[test]
fn one_worker_with_concurrency_four_runs_four_futures_at_once() {
    let pool = Pool::builder().workers(1).concurrency(4).build().unwrap();
    // Each task waits until all four have arrived: this can only finish if the
    // one worker has all four in flight together.
    let barrier = Arc::new(Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            pool.spawn_async(async move {
                barrier.wait().await;
                i
            })
        })
        .collect();
    let results: Vec<u32> = tasks.into_iter().map(|t| join(t).unwrap()).collect();
    assert_eq!(results, vec![0, 1, 2, 3]);
    pool.shutdown();
}

#[test]
fn no_more_than_concurrency_tasks_are_in_flight_per_worker() {
    let pool = Pool::builder().workers(1).concurrency(3).build().unwrap();
    let in_flight = InFlight::default();
    // Groups of three meet at the barrier, so three at once is reached; a fourth
    // in flight would be counted by `max`.
    let barrier = Arc::new(Barrier::new(3));
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let in_flight = in_flight.clone();
            let barrier = Arc::clone(&barrier);
            pool.spawn_async(async move {
                in_flight.enter();
                barrier.wait().await;
                yield_once().await;
                in_flight.leave();
            })
        })
        .collect();
    for task in tasks {
        join(task).unwrap();
    }
    assert_eq!(in_flight.max(), 3);
    let stats = pool.stats();
    assert_eq!(stats.completed, 12);
    pool.shutdown();
}

#[test]
fn a_full_worker_leaves_queued_tasks_to_other_workers() {
    // Two workers, one place each. The first two tasks hold both places until the
    // permits come; the third can only be queued meanwhile, and stats say so.
    let pool = Pool::builder().workers(2).concurrency(1).build().unwrap();
    let permits = Arc::new(Semaphore::new(0));
    let started = Counter::new();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let permits = Arc::clone(&permits);
            let started = started.clone();
            pool.spawn_async(async move {
                started.bump();
                permits.acquire().await.unwrap().forget();
            })
        })
        .collect();
    started.wait_for(2);
    let stats = pool.stats();
    assert_eq!(stats.busy, 2);
    assert_eq!(stats.queued, 1);
    assert_eq!(started.get(), 2, "a full worker took a third task");
    permits.add_permits(3);
    for task in tasks {
        join(task).unwrap();
    }
    pool.shutdown();
}

#[test]
fn wait_idle_waits_for_futures_in_flight() {
    let pool = Pool::builder().workers(1).concurrency(2).build().unwrap();
    let permits = Arc::new(Semaphore::new(0));
    let done = Counter::new();
    for _ in 0..2 {
        let permits = Arc::clone(&permits);
        let done = done.clone();
        drop(pool.spawn_async(async move {
            permits.acquire().await.unwrap().forget();
            done.bump();
        }));
    }
    assert!(!pool.wait_idle_timeout(Duration::from_millis(20)));
    permits.add_permits(2);
    assert!(pool.wait_idle_timeout(LIMIT));
    assert_eq!(done.get(), 2);
    pool.shutdown();
}

#[test]
fn shutdown_resolves_queued_and_in_flight_async_tasks_exactly_once() {
    let pool = Pool::builder().workers(1).concurrency(2).build().unwrap();
    let events = pool.events();
    let permits = Arc::new(Semaphore::new(0));
    let started = Counter::new();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let permits = Arc::clone(&permits);
            let started = started.clone();
            pool.spawn_async(async move {
                started.bump();
                permits.acquire().await.unwrap().forget();
                i
            })
        })
        .collect();
    started.wait_for(2); // two in flight, four queued
    let releaser = {
        let pool = pool.clone();
        let permits = Arc::clone(&permits);
        std::thread::spawn(move || {
            wait_until("the pool is closed", || pool.is_closed());
            permits.add_permits(6);
        })
    };
    pool.shutdown();
    releaser.join().unwrap();
    let results: Vec<u32> = tasks.into_iter().map(|t| join(t).unwrap()).collect();
    assert_eq!(results, vec![0, 1, 2, 3, 4, 5]);
    let stats = pool.stats();
    assert_eq!(stats.submitted, 6);
    assert_eq!(stats.completed, 6);
    assert_eq!(stats.finished(), 6);
    // Exactly one terminal event per task.
    let mut ended = std::collections::HashMap::new();
    for event in events {
        if let Event::TaskFinished { task, .. } | Event::TaskDiscarded { task, .. } = event {
            *ended.entry(task).or_insert(0) += 1;
        }
    }
    assert_eq!(ended.len(), 6);
    assert!(ended.values().all(|&n| n == 1));
}

#[test]
fn terminate_resolves_pending_futures_and_drops_them() {
    let pool = Pool::builder().workers(1).concurrency(2).build().unwrap();
    let started = Counter::new();
    let dropped = Counter::new();
    struct Bump(Counter);
    impl Drop for Bump {
        fn drop(&mut self) {
            self.0.bump();
        }
    }
    let mut senders = Vec::new();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (tx, rx) = oneshot::channel::<()>();
            senders.push(tx);
            let started = started.clone();
            let guard = Bump(dropped.clone());
            pool.spawn_async(async move {
                let _guard = guard;
                started.bump();
                let _ = rx.await;
            })
        })
        .collect();
    started.wait_for(2);
    pool.terminate();
    let errors: Vec<_> = tasks.into_iter().map(|t| join(t).unwrap_err()).collect();
    assert!(errors[..2].iter().all(|e| e.is_cancelled()), "{errors:?}");
    assert!(errors[2..].iter().all(|e| e.is_closed()), "{errors:?}");
    wait_until("every future and queued task is dropped", || {
        dropped.get() == 4
    });
    pool.shutdown();
    let stats = pool.stats();
    assert_eq!(stats.finished(), 4);
    drop(senders);
}

#[test]
fn kill_worker_resolves_its_futures_as_killed_and_replaces_it() {
    let pool = Pool::builder().workers(1).concurrency(2).build().unwrap();
    let started = Counter::new();
    let (_tx_a, rx_a) = oneshot::channel::<()>();
    let (_tx_b, rx_b) = oneshot::channel::<()>();
    let tasks: Vec<_> = [rx_a, rx_b]
        .into_iter()
        .map(|rx| {
            let started = started.clone();
            pool.spawn_async(async move {
                started.bump();
                let _ = rx.await;
            })
        })
        .collect();
    started.wait_for(2);
    let victim = pool.workers()[0];
    assert!(pool.kill_worker(victim));
    for task in tasks {
        assert!(join(task).unwrap_err().is_killed());
    }
    let after = pool.spawn_async(async { 9 });
    assert_eq!(join(after).unwrap(), 9);
    wait_until("the pool has its one worker again", || {
        pool.workers().len() == 1
    });
    assert_ne!(pool.workers()[0], victim);
    pool.shutdown();
}

#[test]
fn async_and_sync_tasks_share_a_worker() {
    let pool = Pool::builder().workers(1).concurrency(2).build().unwrap();
    let (tx, rx) = oneshot::channel::<u32>();
    let waiting = pool.spawn_async(async move { rx.await.unwrap() + 1 });
    // A synchronous task runs while the future waits, and releases it.
    let sender = pool.spawn(move || tx.send(41).unwrap());
    join(sender).unwrap();
    assert_eq!(join(waiting).unwrap(), 42);
    pool.shutdown();
}

// ------------------------------------------------------------ AsyncWorker

/// Counts its tasks in a `Cell` (shared by the tasks in flight) and meets the
/// other tasks of its worker at a barrier given in the input.
struct Meeter {
    served: Cell<u32>,
}

static MEETER_STARTS: AtomicUsize = AtomicUsize::new(0);
static MEETER_STOPS: AtomicUsize = AtomicUsize::new(0);

enum Job {
    Meet(Arc<Barrier>),
    Panic,
    WhoAmI,
}

impl AsyncWorker for Meeter {
    type Input = Job;
    type Output = (u32, Option<u64>);
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        MEETER_STARTS.fetch_add(1, SeqCst);
        Ok(Meeter {
            served: Cell::new(0),
        })
    }

    async fn run(&self, job: Job, ctx: &mut Context<'_>) -> Result<(u32, Option<u64>), String> {
        self.served.set(self.served.get() + 1);
        match job {
            Job::Meet(barrier) => {
                barrier.wait().await;
            }
            Job::Panic => {
                yield_once().await;
                panic!("async worker panicked");
            }
            Job::WhoAmI => {
                yield_once().await;
                assert!(!ctx.is_cancelled());
            }
        }
        Ok((self.served.get(), ctx.task_id().map(|t| t.as_u64())))
    }

    fn stop(&self, _ctx: &mut Context<'_>) {
        MEETER_STOPS.fetch_add(1, SeqCst);
    }
}

#[test]
fn an_async_worker_runs_several_tasks_at_once_and_is_rebuilt_after_a_panic() {
    let pool = Pool::<Async<Meeter>>::builder()
        .workers(1)
        .concurrency(3)
        .build()
        .unwrap();
    let barrier = Arc::new(Barrier::new(3));
    let tasks: Vec<_> = (0..3)
        .map(|_| pool.submit(Job::Meet(Arc::clone(&barrier))).unwrap())
        .collect();
    for task in tasks {
        let (served, id) = join(task).unwrap();
        assert_eq!(served, 3, "all three shared one state");
        assert!(id.is_some());
    }

    let who = pool.submit(Job::WhoAmI).unwrap();
    let task_id = who.id().as_u64();
    assert_eq!(join(who).unwrap(), (4, Some(task_id)));

    let bad = pool.submit(Job::Panic).unwrap();
    assert_eq!(
        join(bad).unwrap_err().panic_message(),
        Some("async worker panicked")
    );
    // Rebuilt: a fresh state counts from 1 again.
    let after = pool.submit(Job::WhoAmI).unwrap();
    assert_eq!(join(after).unwrap().0, 1);
    pool.shutdown();
    assert_eq!(MEETER_STARTS.load(SeqCst), 2);
    assert_eq!(MEETER_STOPS.load(SeqCst), 2);
}

#[test]
fn concurrency_must_be_positive() {
    let error = Pool::<crew::Closures>::builder()
        .concurrency(0)
        .build()
        .unwrap_err();
    assert!(error.is_invalid_setting());
    assert!(error.to_string().contains("concurrency"));
}

#[test]
fn events_report_each_async_task_once() {
    let pool = Pool::builder().workers(1).concurrency(2).build().unwrap();
    let events = pool.events();
    let ok = pool.spawn_async(async {
        yield_once().await;
    });
    let bad = pool.spawn_async(async {
        yield_once().await;
        panic!("no");
    });
    join(ok).unwrap();
    join(bad).unwrap_err();
    pool.shutdown();
    let outcomes: Vec<TaskOutcome> = events
        .filter_map(|e| match e {
            Event::TaskFinished { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes.contains(&TaskOutcome::Completed));
    assert!(outcomes.contains(&TaskOutcome::Panicked));
}

/// An async worker whose types cross a process boundary.
struct Echo;

impl AsyncWorker for Echo {
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Echo)
    }

    async fn run(&self, input: u64, _ctx: &mut Context<'_>) -> Result<u64, String> {
        yield_once().await;
        Ok(input)
    }
}

#[test]
fn several_tasks_in_flight_is_a_build_error_for_process_pools() {
    // Checked before any process starts.
    let error = Pool::<Async<Echo>>::builder()
        .processes(1)
        .concurrency(2)
        .build()
        .unwrap_err();
    assert!(error.is_invalid_setting());
    assert!(error.to_string().contains("concurrency"), "{error}");
}

#[test]
fn an_async_task_under_caller_runs_is_polled_to_its_end_by_the_caller() {
    use crew::{WhenFull, WorkerId};
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(1)
        .when_full(WhenFull::CallerRuns)
        .build()
        .unwrap();
    let gate = common::Gate::new();
    let _open = common::OpenOnDrop(gate.clone());
    let blockers = common::block_workers(&pool, 1, &gate);
    let queued = pool.spawn(|| 1); // fills the queue
    let here = pool.spawn_async(async {
        yield_once().await;
        2
    });
    // The queue was full: the submitter ran the future itself, to its end.
    assert!(here.is_finished());
    assert_eq!(here.worker(), Some(WorkerId::CALLER));
    assert_eq!(join(here).unwrap(), 2);
    gate.open();
    assert_eq!(join(queued).unwrap(), 1);
    for blocker in blockers {
        join(blocker).unwrap();
    }
    pool.shutdown();
}

#[test]
fn a_future_that_blocks_its_thread_past_its_timeout_gets_the_worker_replaced() {
    let pool = Pool::builder()
        .workers(1)
        .concurrency(2)
        .abandon_grace(Duration::from_millis(20))
        .build()
        .unwrap();
    let gate = common::Gate::new();
    let _open = common::OpenOnDrop(gate.clone());
    let started = Counter::new();
    let (_never_sent, rx) = oneshot::channel::<()>();
    let bystander = {
        let started = started.clone();
        pool.spawn_async(async move {
            started.bump();
            let _ = rx.await;
        })
    };
    started.wait_for(1);
    let victim = pool.workers()[0];
    // Blocks the worker's thread (what a future must not do): the bystander
    // cannot be polled any more, and the timeout cannot drop the blocker.
    let blocker = {
        let gate = gate.clone();
        pool.job_async(async move { gate.wait() })
            .timeout(Duration::from_millis(20))
            .spawn()
    };
    assert!(join(blocker).unwrap_err().is_timeout());
    // After the grace the thread is abandoned; its other task shared it.
    assert!(join(bystander).unwrap_err().is_killed());
    assert_eq!(join(pool.spawn_async(async { 3 })).unwrap(), 3);
    assert_ne!(pool.workers(), vec![victim]);
    gate.open();
    pool.shutdown();
    let stats = pool.stats();
    assert_eq!(stats.timed_out, 1);
    assert_eq!(stats.killed, 1);
}

// ------------------------------------------------------------ messages

/// What a `Talker` and its pool say to each other.
#[derive(Clone, Debug, PartialEq)]
enum Note {
    /// Pool to worker: the unit to use (it also answers a task waiting for it).
    Unit(u32),
    /// Pool to worker: `on_message` panics.
    Boom,
    /// Worker to pool: task `id` waits for a unit.
    Waiting(u64),
    /// Worker to pool: task `id` got this unit.
    Got(u64, u32),
}

enum Talk {
    /// Waits (at an `.await`) until `on_message` hands it a unit.
    WaitForUnit,
    /// The state's generation and unit.
    GetUnit,
}

static TALKER_STARTS: AtomicUsize = AtomicUsize::new(0);

struct Talker {
    generation: usize,
    unit: Cell<u32>,
    waiter: std::cell::RefCell<Option<oneshot::Sender<u32>>>,
}

impl AsyncWorker for Talker {
    type Input = Talk;
    type Output = (usize, u32);
    type Error = String;
    type Message = Note;

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Talker {
            generation: TALKER_STARTS.fetch_add(1, SeqCst) + 1,
            unit: Cell::new(0),
            waiter: std::cell::RefCell::new(None),
        })
    }

    async fn run(&self, talk: Talk, ctx: &mut Context<'_>) -> Result<(usize, u32), String> {
        match talk {
            Talk::WaitForUnit => {
                let (tx, rx) = oneshot::channel();
                *self.waiter.borrow_mut() = Some(tx);
                let id = ctx.task_id().map(|t| t.as_u64()).unwrap_or_default();
                ctx.send(Note::Waiting(id)).map_err(|e| e.to_string())?;
                let unit = rx.await.map_err(|_| "the waiter was dropped".to_string())?;
                // After an `.await`: the task's own context still reaches the pool.
                ctx.send(Note::Got(id, unit)).map_err(|e| e.to_string())?;
                Ok((self.generation, unit))
            }
            Talk::GetUnit => Ok((self.generation, self.unit.get())),
        }
    }

    fn on_message(&self, note: Note, _ctx: &mut Context<'_>) {
        match note {
            Note::Unit(unit) => {
                self.unit.set(unit);
                if let Some(waiter) = self.waiter.borrow_mut().take() {
                    let _ = waiter.send(unit);
                }
            }
            Note::Boom => panic!("boom in on_message"),
            Note::Waiting(_) | Note::Got(..) => {}
        }
    }
}

#[test]
fn an_async_worker_reads_mail_between_polls_and_sends_from_its_tasks() {
    // concurrency 1: the worker is full while the task waits, and reads its mail
    // anyway; 3: it has room, and reads it on its way to the queue.
    for concurrency in [1, 3] {
        let pool = Pool::<Async<Talker>>::builder()
            .workers(1)
            .concurrency(concurrency)
            .build()
            .unwrap();
        let messages = pool.messages();
        let task = pool.submit(Talk::WaitForUnit).unwrap();
        let id = task.id().as_u64();
        let (from, first) = messages.recv_timeout(LIMIT).unwrap();
        assert_eq!(first, Note::Waiting(id));
        assert_eq!(from, pool.workers()[0]);
        // The task can only end once `on_message` ran, while it was in flight.
        pool.broadcast(Note::Unit(7));
        assert_eq!(join(task).unwrap().1, 7);
        // Sent from the future after an `.await`, and there before the handle
        // resolved.
        assert_eq!(messages.try_recv().unwrap().1, Note::Got(id, 7));
        pool.shutdown();
    }
}

#[test]
fn a_panic_in_on_message_with_a_task_in_flight_rebuilds_once_it_has_ended() {
    let pool = Pool::<Async<Talker>>::builder()
        .workers(1)
        .concurrency(2)
        .build()
        .unwrap();
    let events = pool.events();
    let messages = pool.messages();
    let waiting = pool.submit(Talk::WaitForUnit).unwrap();
    assert!(matches!(
        messages.recv_timeout(LIMIT).unwrap().1,
        Note::Waiting(_)
    ));
    let (generation, _) = join(pool.submit(Talk::GetUnit).unwrap()).unwrap();
    // The first panics; the second must reach the rebuilt state, not the old one
    // (which the task in flight still uses).
    pool.broadcast(Note::Boom);
    pool.broadcast(Note::Unit(5));
    // Only the task's end lets the rebuild happen: cancel it.
    assert!(waiting.cancel());
    assert!(join(waiting).unwrap_err().is_cancelled());
    let (rebuilt, unit) = join(pool.submit(Talk::GetUnit).unwrap()).unwrap();
    assert!(rebuilt > generation, "the state was rebuilt");
    assert_eq!(unit, 5, "the mail after the panic went to the new state");
    pool.shutdown();
    let restarted: Vec<String> = events
        .filter_map(|e| match e {
            Event::WorkerRestarted { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert!(
        restarted[0].contains("on_message panicked"),
        "{restarted:?}"
    );
}

#[test]
fn stats_count_a_worker_with_async_tasks_in_flight_as_busy_and_time_each_task() {
    let pool = Pool::builder().workers(1).concurrency(3).build().unwrap();
    let started = Counter::new();
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = oneshot::channel::<()>();
        let started = started.clone();
        tasks.push(pool.spawn_async(async move {
            started.bump();
            rx.await.unwrap();
        }));
        senders.push(tx);
    }
    started.wait_for(3);
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.idle, stats.queued), (1, 0, 0));
    let row = &stats.per_worker[0];
    assert_eq!(row.state, crew::WorkerState::Busy);
    assert_eq!(
        row.current_task,
        Some(tasks[0].id()),
        "the oldest in flight"
    );
    for tx in senders {
        tx.send(()).unwrap();
    }
    for task in tasks {
        join(task).unwrap();
    }
    wait_until("the worker is idle", || {
        pool.stats().per_worker[0].state == crew::WorkerState::Idle
    });
    let stats = pool.stats();
    assert_eq!(stats.completed, 3);
    assert_eq!((stats.wait.count, stats.run.count), (3, 3));
    assert_eq!(stats.per_worker[0].run.count, 3);
    assert_eq!(stats.per_worker[0].tasks_done, 3);
}
