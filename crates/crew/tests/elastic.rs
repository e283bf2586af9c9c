//! Elastic sizing (`workers_range`): a pool whose workers are all busy with a
//! backlog grows, one worker at a time, never above its maximum; once idle for
//! `idle_timeout` it shrinks back to its minimum; every task resolves.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::{Builder, JoinHandle};
use std::time::{Duration, Instant};

use common::{join, wait_until, Counter, Gate, OpenOnDrop, LIMIT};
use crew::{Closures, Context, Pool, PoolBuilder, StartError, Task, Worker};

const IDLE: Duration = Duration::from_millis(200);

/// Worker threads alive now, and the most ever alive at once, as seen by a
/// spawn handler that wraps every worker thread's body.
#[derive(Clone, Default)]
struct Threads {
    alive: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Threads {
    fn handler(
        &self,
    ) -> impl Fn(Builder, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>> + Send + Sync + 'static
    {
        let threads = self.clone();
        move |builder, body| {
            let threads = threads.clone();
            builder.spawn(move || {
                let now = threads.alive.fetch_add(1, SeqCst) + 1;
                threads.most.fetch_max(now, SeqCst);
                struct Leave(Arc<AtomicUsize>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, SeqCst);
                    }
                }
                let _leave = Leave(Arc::clone(&threads.alive));
                body();
            })
        }
    }

    fn alive(&self) -> usize {
        self.alive.load(SeqCst)
    }

    fn most(&self) -> usize {
        self.most.load(SeqCst)
    }
}

fn elastic(range: std::ops::RangeInclusive<usize>, threads: &Threads) -> PoolBuilder<Closures> {
    Pool::builder()
        .workers_range(range)
        .grow_backlog(1)
        .idle_timeout(IDLE)
        .spawn_handler(threads.handler())
}

fn gated(pool: &Pool, gate: &Gate, started: &Counter, i: usize) -> Task<usize> {
    let (gate, started) = (gate.clone(), started.clone());
    pool.spawn(move || {
        started.bump();
        gate.wait();
        i
    })
}

#[test]
fn grows_under_a_backlog_up_to_its_maximum_and_shrinks_back_when_idle() {
    let threads = Threads::default();
    let pool = elastic(1..=4, &threads).build().unwrap();
    assert_eq!(pool.workers().len(), 1, "starts at its minimum");
    assert_eq!(pool.size(), 1);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let started = Counter::new();

    // Every worker busy with a task held at the gate, and a backlog behind them.
    // Growth is checked on each single submission, so keep submitting until the
    // pool has grown to its maximum.
    let mut tasks = vec![gated(&pool, &gate, &started, 0)];
    started.wait_for(1);
    let deadline = Instant::now() + LIMIT;
    while pool.workers().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the pool did not grow to 4 workers under a backlog of {}: {}",
            tasks.len(),
            pool.stats()
        );
        tasks.push(gated(&pool, &gate, &started, tasks.len()));
        assert!(pool.workers().len() <= 4, "{:?}", pool.workers());
        std::thread::sleep(Duration::from_millis(1)); // paces the submitter
    }
    wait_until("every grown worker holds a task", || started.get() == 4);
    // More backlog does not take the pool past its maximum.
    for _ in 0..20 {
        tasks.push(gated(&pool, &gate, &started, tasks.len()));
        assert!(pool.workers().len() <= 4, "{:?}", pool.workers());
    }
    assert_eq!(pool.stats().busy, 4, "{}", pool.stats());
    assert_eq!(started.get(), 4, "four workers, four tasks running");
    assert!(
        threads.most() <= 4,
        "{} worker threads at once",
        threads.most()
    );

    gate.open();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i);
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    wait_until("the idle pool shrinks back to its minimum", || {
        pool.workers().len() == 1
    });
    wait_until("the retired threads exit", || threads.alive() == 1);
    assert!(
        threads.most() <= 4,
        "{} worker threads at once",
        threads.most()
    );
    assert_eq!(pool.size(), 1);

    // The remaining worker still runs tasks, and every task is accounted for.
    assert_eq!(join(pool.spawn(|| 7)).unwrap(), 7);
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    assert_eq!(stats.completed, stats.submitted, "{stats}");
    pool.shutdown();
    assert_eq!(threads.alive(), 0, "shutdown joined the last worker");
}

#[test]
fn a_pool_with_no_minimum_grows_from_zero_and_shrinks_back_to_zero() {
    // README: "a `min` of 0 is accepted, but a task then waits until more than
    // `grow_backlog` are queued".
    let threads = Threads::default();
    let pool = elastic(0..=2, &threads).build().unwrap();
    assert!(pool.workers().is_empty());
    let tasks: Vec<_> = (0..2_u32).map(|i| pool.spawn(move || i)).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i as u32);
    }
    assert!(threads.most() >= 1, "it grew to run them");
    assert!(pool.wait_idle_timeout(LIMIT));
    wait_until("the idle pool shrinks back to no worker", || {
        pool.workers().is_empty()
    });
    wait_until("the retired threads exit", || threads.alive() == 0);
    assert!(
        threads.most() <= 2,
        "{} worker threads at once",
        threads.most()
    );
    pool.shutdown();
}

/// `Stopper::stop` calls so far, and whether they may return.
static STOPS: AtomicUsize = AtomicUsize::new(0);
static RELEASE_STOPS: AtomicBool = AtomicBool::new(false);

/// A worker type whose tasks may wait for a gate, and whose `stop` (its
/// teardown: closing a connection, say) waits until the test lets it go.
struct Stopper;

impl Worker for Stopper {
    type Input = Option<(Gate, Counter)>;
    type Output = ();
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Stopper)
    }

    fn run(&mut self, hold: Self::Input, _ctx: &mut Context<'_>) -> Result<(), Self::Error> {
        if let Some((gate, started)) = hold {
            started.bump();
            gate.wait();
        }
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context<'_>) {
        STOPS.fetch_add(1, SeqCst);
        let deadline = Instant::now() + 2 * LIMIT;
        while !RELEASE_STOPS.load(SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Lets every `Stopper::stop` return when the test ends, however it ends.
struct ReleaseStops;

impl Drop for ReleaseStops {
    fn drop(&mut self) {
        RELEASE_STOPS.store(true, SeqCst);
    }
}

#[test]
fn a_retiring_workers_tasks_stay_counted_while_it_stops() {
    let _release = ReleaseStops;
    let pool = Pool::<Stopper>::builder()
        .workers_range(1..=2)
        .grow_backlog(1)
        .idle_timeout(IDLE)
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let started = Counter::new();
    let hold = || Some((gate.clone(), started.clone()));

    // Both workers busy (so the one that retires later has finished tasks).
    let mut tasks = vec![pool.submit(hold()).unwrap()];
    started.wait_for(1);
    let deadline = Instant::now() + LIMIT;
    while pool.workers().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the pool did not grow: {}",
            pool.stats()
        );
        tasks.push(pool.submit(hold()).unwrap());
        std::thread::sleep(Duration::from_millis(1)); // paces the submitter
    }
    started.wait_for(2);
    gate.open();
    for t in tasks {
        join(t).unwrap();
    }

    // The extra worker goes idle, retires, and is held inside its `stop`.
    wait_until("the extra worker retires and stops", || {
        STOPS.load(SeqCst) == 1
    });
    assert_eq!(pool.workers().len(), 1);
    let stats = pool.stats();
    assert_eq!(
        stats.submitted,
        stats.finished(),
        "every task has finished, whichever worker ran it: {stats}"
    );
    assert_eq!(stats.queued, 0, "{stats}");
    assert!(
        pool.wait_idle_timeout(Duration::from_millis(100)),
        "every task has finished, but wait_idle does not return: {}",
        pool.stats()
    );

    RELEASE_STOPS.store(true, SeqCst);
    pool.shutdown();
}

#[test]
fn a_fixed_pool_does_not_grow() {
    let threads = Threads::default();
    let pool = Pool::builder()
        .workers(1)
        .grow_backlog(1)
        .spawn_handler(threads.handler())
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let started = Counter::new();
    let mut tasks = vec![gated(&pool, &gate, &started, 0)];
    started.wait_for(1);
    for i in 1..20 {
        tasks.push(gated(&pool, &gate, &started, i));
    }
    assert_eq!(pool.workers().len(), 1);
    assert_eq!(threads.most(), 1);
    gate.open();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i);
    }
    pool.shutdown();
}

#[test]
fn an_empty_or_zero_range_is_rejected() {
    #[allow(clippy::reversed_empty_ranges)] // the point of the test
    let empty = 3..=2;
    for (range, what) in [
        (empty, "workers_range(3..=2)"),
        (0..=0, "workers_range(0..=0)"),
    ] {
        let err = Pool::<Closures>::builder()
            .workers_range(range)
            .build()
            .expect_err(&format!("{what} must be rejected"));
        assert!(err.is_invalid_setting(), "{what}: {err:?}");
    }
    // The smallest ranges that can work are accepted.
    for range in [1..=1, 0..=1, 2..=2] {
        let pool = Pool::<Closures>::builder()
            .workers_range(range.clone())
            .build()
            .unwrap_or_else(|e| panic!("{range:?}: {e}"));
        assert_eq!(pool.workers().len(), *range.start());
        pool.shutdown();
    }
}

#[test]
fn resize_range_from_zero_empties_an_idle_pool_and_grows_for_one_task() {
    // `Pool::resize`'s docs: for a pool that costs nothing while idle, use
    // `resize_range(0..=n)`; a task then gets a worker as it comes.
    let threads = Threads::default();
    let pool = Pool::builder()
        .workers(2)
        .idle_timeout(IDLE)
        .spawn_handler(threads.handler())
        .build()
        .unwrap();
    pool.resize_range(0..=2).unwrap();
    assert_eq!(pool.size(), 0);
    wait_until("the idle pool retires every worker", || {
        pool.workers().is_empty()
    });
    wait_until("the retired threads exit", || threads.alive() == 0);
    for i in 0..3 {
        assert_eq!(
            join(pool.spawn(move || i)).unwrap(),
            i,
            "one task at a time"
        );
    }
    pool.shutdown();
}
