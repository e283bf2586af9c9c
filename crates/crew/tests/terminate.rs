//! `terminate`: no new work; queued tasks resolve closed and running ones cancelled,
//! at once; none is left hanging.

mod common;

use std::time::Instant;

use common::{block_workers, join, wait_until, Counter, Gate, OpenOnDrop, LIMIT};
use crew::Pool;

#[test]
fn terminate_resolves_every_queued_and_running_task() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 2, &gate);
    let ran = Counter::new();
    let queued: Vec<_> = (0..1_000)
        .map(|_| {
            let ran = ran.clone();
            pool.spawn(move || ran.bump())
        })
        .collect();

    pool.terminate();
    assert!(pool.is_closed());
    // Nothing has to return first: the blockers are still inside their closures.
    for t in queued {
        let err = join(t).unwrap_err();
        assert!(err.is_closed(), "queued tasks resolve closed: {err:?}");
    }
    for b in blockers {
        let err = join(b).unwrap_err();
        assert!(
            err.is_cancelled(),
            "running tasks resolve cancelled: {err:?}"
        );
    }
    assert!(!gate.is_open());

    gate.open();
    wait_until("every worker leaves", || pool.stats().workers == 0);
    assert_eq!(ran.get(), 0, "no queued task ran after terminate");
    assert!(pool.spawn(|| ()).join().unwrap_err().is_closed());
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    // The spawn after terminate was never accepted, so it is not counted.
    assert_eq!(stats.closed, 1_000, "{stats}");
    assert_eq!(stats.cancelled, 2, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

#[test]
fn terminate_signals_running_tasks_to_stop() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let started = Counter::new();
    let observed = Counter::new();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (started, observed) = (started.clone(), observed.clone());
            pool.spawn_with(move |ctx| {
                started.bump();
                let deadline = Instant::now() + LIMIT;
                while !ctx.is_cancelled() && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                if ctx.is_cancelled() {
                    observed.bump();
                }
            })
        })
        .collect();
    started.wait_for(2);
    pool.terminate();
    for t in tasks {
        assert!(join(t).unwrap_err().is_cancelled());
    }
    observed.wait_for(2);
    wait_until("every worker leaves", || pool.stats().workers == 0);
}

#[test]
fn terminate_resolves_tasks_waiting_in_a_workers_own_queue() {
    // A single worker's task spawns children onto its own deque and blocks: the
    // children are queued where only that worker (or a thief) would find them.
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let ran = Counter::new();
    let parent = {
        let (inner, gate, ran) = (pool.clone(), gate.clone(), ran.clone());
        pool.spawn(move || {
            let children: Vec<_> = (0..100)
                .map(|_| {
                    let ran = ran.clone();
                    inner.spawn(move || ran.bump())
                })
                .collect();
            tx.send(children).unwrap();
            gate.wait();
        })
    };
    let children = rx.recv_timeout(LIMIT).unwrap();
    pool.terminate();
    for t in children {
        assert!(join(t).unwrap_err().is_closed());
    }
    assert!(join(parent).unwrap_err().is_cancelled());
    gate.open();
    wait_until("the worker leaves", || pool.stats().workers == 0);
    assert_eq!(ran.get(), 0);
}
