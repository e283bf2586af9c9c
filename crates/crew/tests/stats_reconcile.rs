//! After a mixed run, `Stats` accounts for every accepted task exactly once, under
//! the outcome it actually had.

mod common;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use common::{join, wait_until, LIMIT};
use crew::{Context, Pool, StartError, TaskError, Worker};

enum Op {
    Ok(u32),
    Fail(u32),
    Panic,
    /// Waits until the test sends on (or drops) the channel.
    Block(Receiver<()>),
    /// Runs until cancelled.
    Spin,
}

struct Mixed;

impl Worker for Mixed {
    type Input = Op;
    type Output = u32;
    type Error = u32;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Mixed)
    }

    fn run(&mut self, op: Op, ctx: &mut Context<'_>) -> Result<u32, u32> {
        match op {
            Op::Ok(n) => Ok(n),
            Op::Fail(code) => Err(code),
            Op::Panic => panic!("mixed panic"),
            Op::Block(rx) => match rx.recv_timeout(LIMIT) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => Ok(0),
                Err(RecvTimeoutError::Timeout) => panic!("never released"),
            },
            Op::Spin => {
                let deadline = Instant::now() + LIMIT;
                while !ctx.is_cancelled() && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                Ok(1)
            }
        }
    }
}

#[test]
fn stats_reconcile_after_a_mixed_run() {
    let pool = Pool::<Mixed>::builder().workers(2).build().unwrap();

    // 1 running task cancelled, 1 blocker: both workers busy.
    let spin = pool.submit(Op::Spin).unwrap();
    let (release, rx) = std::sync::mpsc::channel();
    let blocker = pool.submit(Op::Block(rx)).unwrap();
    wait_until("both are running", || {
        spin.worker().is_some() && blocker.worker().is_some()
    });
    assert_eq!(pool.stats().busy, 2);

    // 3 queued tasks cancelled before they run.
    let queued_cancels: Vec<_> = (0..3).map(|i| pool.submit(Op::Ok(i)).unwrap()).collect();
    let mut oks = Vec::new();
    let mut fails = Vec::new();
    let mut panics = Vec::new();
    for i in 0..10 {
        oks.push(pool.submit(Op::Ok(i)).unwrap());
    }
    for i in 0..4 {
        fails.push(pool.submit(Op::Fail(i)).unwrap());
    }
    for _ in 0..2 {
        panics.push(pool.submit(Op::Panic).unwrap());
    }
    let queued = pool.stats();
    assert_eq!(queued.submitted, 21, "{queued}");
    assert_eq!(queued.queued, 19, "{queued}");

    for t in &queued_cancels {
        assert!(t.cancel());
    }
    assert!(spin.cancel());
    release.send(()).unwrap();

    assert!(join(spin).unwrap_err().is_cancelled());
    assert_eq!(join(blocker).unwrap(), 0);
    for t in queued_cancels {
        assert!(join(t).unwrap_err().is_cancelled());
    }
    for (i, t) in oks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i as u32);
    }
    for (i, t) in fails.into_iter().enumerate() {
        let err: TaskError<u32> = join(t).unwrap_err();
        assert_eq!(err.into_user_error().ok(), Some(i as u32));
    }
    for t in panics {
        assert!(join(t).unwrap_err().is_panic());
    }

    assert!(pool.wait_idle_timeout(LIMIT));
    // Idle means every task is finished with; a worker whose task panicked may
    // still be rebuilding its state (`stop`, then `start`) for a moment.
    wait_until("both workers have rebuilt their state", || {
        pool.stats().per_worker.iter().all(|w| w.started)
    });
    let stats = pool.stats();
    assert_eq!(stats.submitted, 21, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    assert_eq!(stats.completed, 10 + 1, "the oks and the blocker: {stats}");
    assert_eq!(stats.failed, 4, "{stats}");
    assert_eq!(stats.panicked, 2, "{stats}");
    assert_eq!(stats.cancelled, 3 + 1, "{stats}");
    assert_eq!(stats.timed_out, 0, "{stats}");
    assert_eq!(stats.killed, 0, "{stats}");
    assert_eq!(stats.closed, 0, "{stats}");
    assert_eq!(stats.start_failed, 0, "{stats}");
    assert_eq!(stats.queued, 0, "{stats}");
    assert_eq!(stats.busy, 0, "{stats}");
    assert_eq!(stats.workers, 2, "{stats}");
    assert_eq!(stats.idle, 2, "{stats}");
    assert_eq!(stats.abandoned_threads, 0, "{stats}");
    assert_eq!(stats.per_worker.len(), 2, "{stats:?}");
    assert!(stats
        .per_worker
        .iter()
        .all(|w| w.started && w.current_task.is_none()));
    pool.shutdown();
    let after = pool.stats();
    assert_eq!(after.submitted, after.finished(), "{after}");
    assert_eq!(
        after.completed, 11,
        "counters survive the workers' exit: {after}"
    );
}

/// Past the first 4,096 tasks a thread pool times one task in eight, each
/// sample standing for eight tasks. With an event subscriber listening, every
/// task is stamped (its events carry the times), but the figures must still
/// count each task once: the same samples as without a subscriber, and busy
/// time that never passes the time the workers existed.
#[test]
fn a_subscriber_does_not_inflate_busy_time_or_samples() {
    const TASKS: u64 = 6_000;
    let run = |subscribe: bool| {
        let pool = Pool::builder().workers(1).build().unwrap();
        let events = subscribe.then(|| pool.events());
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                pool.spawn(|| {
                    let start = Instant::now();
                    while start.elapsed() < std::time::Duration::from_micros(100) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        for task in tasks {
            join(task).unwrap();
        }
        wait_until("every task counted", || pool.stats().completed == TASKS);
        let stats = pool.stats();
        drop(events);
        pool.shutdown();
        stats
    };
    let quiet = run(false);
    let watched = run(true);
    assert_eq!(
        watched.run.count, quiet.run.count,
        "samples with and without a subscriber"
    );
    for stats in [&quiet, &watched] {
        // Equal tasks make the sampled estimate close to exact; the margin covers
        // a sample preempted on a loaded machine, far below the eightfold error.
        assert!(
            stats.busy_time.as_secs_f64() <= stats.worker_time.as_secs_f64() * 1.25,
            "busy {:?} within the workers' time {:?}",
            stats.busy_time,
            stats.worker_time
        );
    }
}
