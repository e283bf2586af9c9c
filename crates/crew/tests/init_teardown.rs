//! On a thread pool, every successful `Worker::start` is matched by exactly one
//! `Worker::stop`: at shutdown, after a panic, after a kill, on terminate and
//! when the last handle is dropped.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use common::{join, wait_until, Gate, OpenOnDrop};
use crew::{Context, Pool, StartError, Worker};

/// Counters for one test. `Worker::start` gets only a `Context`, so each test's
/// worker type finds its counters through a static, chosen by a const parameter.
struct Counters {
    starts: AtomicUsize,
    stops: AtomicUsize,
    drops: AtomicUsize,
    /// `stop` ran on another worker than `start`, saw a task, or ran twice.
    anomalies: AtomicUsize,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            starts: AtomicUsize::new(0),
            stops: AtomicUsize::new(0),
            drops: AtomicUsize::new(0),
            anomalies: AtomicUsize::new(0),
        }
    }
}

static COUNTERS: [Counters; 5] = [
    Counters::new(),
    Counters::new(),
    Counters::new(),
    Counters::new(),
    Counters::new(),
];

enum Job {
    Echo(u64),
    Panic,
    Block(Gate),
}

struct Counted<const N: usize> {
    worker: crew::WorkerId,
    stopped: bool,
}

impl<const N: usize> Counted<N> {
    fn counters() -> &'static Counters {
        &COUNTERS[N]
    }
}

impl<const N: usize> Worker for Counted<N> {
    type Input = Job;
    type Output = u64;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(ctx: &mut Context<'_>) -> Result<Self, StartError> {
        if ctx.task_id().is_some() || ctx.is_cancelled() {
            Self::counters().anomalies.fetch_add(1, SeqCst);
        }
        Self::counters().starts.fetch_add(1, SeqCst);
        Ok(Counted {
            worker: ctx.worker_id(),
            stopped: false,
        })
    }

    fn run(&mut self, job: Job, _ctx: &mut Context<'_>) -> Result<u64, Self::Error> {
        match job {
            Job::Echo(n) => Ok(n),
            Job::Panic => panic!("worker asked to panic"),
            Job::Block(gate) => {
                gate.wait();
                Ok(0)
            }
        }
    }

    fn stop(&mut self, ctx: &mut Context<'_>) {
        if self.stopped || ctx.worker_id() != self.worker || ctx.task_id().is_some() {
            Self::counters().anomalies.fetch_add(1, SeqCst);
        }
        self.stopped = true;
        Self::counters().stops.fetch_add(1, SeqCst);
    }
}

impl<const N: usize> Drop for Counted<N> {
    fn drop(&mut self) {
        if !self.stopped {
            Self::counters().anomalies.fetch_add(1, SeqCst);
        }
        Self::counters().drops.fetch_add(1, SeqCst);
    }
}

fn assert_balanced(c: &Counters) {
    let (starts, stops, drops) = (
        c.starts.load(SeqCst),
        c.stops.load(SeqCst),
        c.drops.load(SeqCst),
    );
    assert_eq!(starts, stops, "every start has a stop");
    assert_eq!(stops, drops, "every stopped instance is dropped");
    assert_eq!(c.anomalies.load(SeqCst), 0, "stop ran as documented");
}

#[test]
fn every_start_has_a_stop_at_shutdown() {
    type W = Counted<0>;
    let c = W::counters();
    let pool = Pool::<W>::builder().workers(3).build().unwrap();
    wait_until("all three workers started", || c.starts.load(SeqCst) == 3);
    let tasks: Vec<_> = (0..100)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i as u64);
    }
    assert_eq!(c.stops.load(SeqCst), 0, "no stop while the pool runs");
    pool.shutdown();
    // `shutdown` joins the threads, so every stop has run by now.
    assert_eq!(c.starts.load(SeqCst), 3);
    assert_balanced(c);
}

#[test]
fn panics_and_kills_keep_starts_and_stops_balanced() {
    type W = Counted<1>;
    let c = W::counters();
    let pool = Pool::<W>::builder().workers(2).build().unwrap();
    wait_until("both workers started", || c.starts.load(SeqCst) == 2);

    assert!(join(pool.submit(Job::Panic).unwrap())
        .unwrap_err()
        .is_panic());
    // The panicked instance is stopped and a new one started on the same worker.
    wait_until("the panicked instance is rebuilt", || {
        c.starts.load(SeqCst) == 3
    });
    assert_eq!(c.stops.load(SeqCst), 1);

    // Kill a busy worker; its thread stops its instance once the task returns.
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocked = pool.submit(Job::Block(gate.clone())).unwrap();
    wait_until("the blocking task is running", || {
        blocked.worker().is_some()
    });
    assert!(pool.kill_worker(blocked.worker().unwrap()));
    assert!(join(blocked).unwrap_err().is_killed());
    gate.open();
    wait_until("the killed worker's instance is stopped", || {
        c.stops.load(SeqCst) == 2
    });
    // And kill an idle one.
    let idle = pool.workers()[0];
    assert!(pool.kill_worker(idle));
    wait_until("the idle killed worker's instance is stopped", || {
        c.stops.load(SeqCst) == 3
    });
    wait_until("the pool is back to two workers", || {
        pool.workers().len() == 2
    });

    for i in 0..20 {
        assert_eq!(join(pool.submit(Job::Echo(i)).unwrap()).unwrap(), i);
    }
    pool.shutdown();
    assert!(c.starts.load(SeqCst) >= 3);
    assert_balanced(c);
}

#[test]
fn terminate_stops_every_instance() {
    type W = Counted<2>;
    let c = W::counters();
    let pool = Pool::<W>::builder().workers(2).build().unwrap();
    wait_until("both workers started", || c.starts.load(SeqCst) == 2);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocked = pool.submit(Job::Block(gate.clone())).unwrap();
    wait_until("the blocking task is running", || {
        blocked.worker().is_some()
    });
    pool.terminate();
    assert!(join(blocked).unwrap_err().is_cancelled());
    gate.open();
    wait_until("every worker stopped its instance", || {
        c.stops.load(SeqCst) == 2
    });
    wait_until("every worker left", || pool.stats().workers == 0);
    assert_balanced(c);
}

#[test]
fn dropping_the_last_handle_drains_then_stops_every_instance() {
    type W = Counted<3>;
    let c = W::counters();
    let pool = Pool::<W>::builder().workers(2).build().unwrap();
    wait_until("both workers started", || c.starts.load(SeqCst) == 2);
    let tasks: Vec<_> = (0..200)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    drop(pool);
    // Dropping drains: queued work still runs and resolves.
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i as u64);
    }
    wait_until("every worker stopped its instance", || {
        c.stops.load(SeqCst) == 2
    });
    wait_until("every instance dropped", || c.drops.load(SeqCst) == 2);
    assert_balanced(c);
}
