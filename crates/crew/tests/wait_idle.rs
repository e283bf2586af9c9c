//! `wait_idle`, `wait_idle_timeout` and the `idle()` future: they return once no
//! task is queued or running, and not before.

mod common;

use std::future::Future;
use std::sync::mpsc;
use std::task::{Context as PollContext, Poll};
use std::time::Duration;

use common::{block_workers, join, Counter, Gate, OpenOnDrop, LIMIT};
use crew::Pool;

const SHORT: Duration = Duration::from_millis(50);

#[test]
fn wait_idle_blocks_until_every_task_has_run() {
    let pool = Pool::builder().workers(2).build().unwrap();
    assert!(pool.wait_idle_timeout(LIMIT), "a fresh pool is idle");

    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 2, &gate);
    let ran = Counter::new();
    for _ in 0..200 {
        let ran = ran.clone();
        // Detached: dropping the handle does not cancel the task.
        drop(pool.spawn(move || ran.bump()));
    }
    assert!(
        !pool.wait_idle_timeout(SHORT),
        "not idle while tasks are blocked"
    );

    // A blocking `wait_idle` on another thread, so a hang fails the test.
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let (pool, ran) = (pool.clone(), ran.clone());
        std::thread::spawn(move || {
            pool.wait_idle();
            tx.send(ran.get()).unwrap();
        })
    };
    gate.open();
    let seen = rx.recv_timeout(LIMIT).expect("wait_idle returned");
    assert_eq!(seen, 200, "wait_idle returned only after every task ran");
    waiter.join().unwrap();
    for b in blockers {
        join(b).unwrap();
    }
    assert!(pool.wait_idle_timeout(SHORT));
    pool.shutdown();
}

#[test]
fn idle_future_completes_when_the_pool_drains() {
    let pool = Pool::builder().workers(2).build().unwrap();
    futures::executor::block_on(pool.idle()); // a fresh pool is idle at once

    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 2, &gate);
    let ran = Counter::new();
    for _ in 0..100 {
        let ran = ran.clone();
        drop(pool.spawn(move || ran.bump()));
    }

    let mut idle = pool.idle();
    let waker = futures::task::noop_waker();
    let mut cx = PollContext::from_waker(&waker);
    assert_eq!(
        std::pin::Pin::new(&mut idle).poll(&mut cx),
        Poll::Pending,
        "not idle while tasks are blocked"
    );

    let (tx, rx) = mpsc::channel();
    let waiter = {
        let ran = ran.clone();
        std::thread::spawn(move || {
            futures::executor::block_on(idle);
            tx.send(ran.get()).unwrap();
        })
    };
    gate.open();
    let seen = rx.recv_timeout(LIMIT).expect("the idle future completed");
    assert_eq!(seen, 100, "idle() completed only after every task ran");
    waiter.join().unwrap();
    for b in blockers {
        join(b).unwrap();
    }
    pool.shutdown();
}

#[test]
fn a_cancelled_task_still_running_is_not_idle() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate).pop().unwrap();
    assert!(blocker.cancel());
    assert!(blocker.is_finished());
    assert!(
        !pool.wait_idle_timeout(SHORT),
        "the cancelled task's code has not returned"
    );
    gate.open();
    assert!(pool.wait_idle_timeout(LIMIT));
    pool.shutdown();
}

#[test]
fn wait_idle_round_after_round() {
    // The blocking `wait_idle` returns only when notified (a `wait_idle_timeout`
    // would also return at its deadline and hide a missing notification). It runs
    // on a helper thread so that a missed notification fails the test.
    let pool = Pool::builder().workers(2).build().unwrap();
    let ran = Counter::new();
    let (request, requests) = mpsc::channel::<()>();
    let (reply, replies) = mpsc::channel();
    let waiter = {
        let (pool, ran) = (pool.clone(), ran.clone());
        std::thread::spawn(move || {
            for () in requests {
                pool.wait_idle();
                if reply.send(ran.get()).is_err() {
                    return;
                }
            }
        })
    };
    for round in 1..=300 {
        for _ in 0..5 {
            let ran = ran.clone();
            drop(pool.spawn(move || ran.bump()));
        }
        request.send(()).unwrap();
        let seen = replies
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("round {round}: wait_idle never returned"));
        assert_eq!(seen, 5 * round, "round {round}: idle too early");
    }
    drop(request);
    waiter.join().unwrap();
    pool.shutdown();
}
