//! `shutdown` drains: everything queued runs and every handle resolves before it
//! returns. `shutdown_timeout` terminates what is left past its deadline.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::Duration;

use common::{block_workers, join, wait_until, Gate, OpenOnDrop, LIMIT};
use crew::Pool;

const QUEUED: usize = 10_000;

#[test]
fn shutdown_runs_ten_thousand_queued_tasks() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 2, &gate);
    let tasks: Vec<_> = (0..QUEUED).map(|i| pool.spawn(move || i)).collect();
    assert!(tasks.iter().all(|t| !t.is_finished()), "all queued");

    // Shut down while everything is still queued, then let the workers go.
    let shutting_down = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown())
    };
    wait_until("the pool is closed", || pool.is_closed());
    assert!(pool.spawn(|| usize::MAX).join().unwrap_err().is_closed());
    gate.open();
    wait_until("shutdown returns", || shutting_down.is_finished());
    shutting_down.join().unwrap();

    // `shutdown` returned: every task has already resolved, and ran.
    assert!(
        tasks.iter().all(|t| t.is_finished()),
        "shutdown waits for the queue"
    );
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i, "task {i} ran to completion");
    }
    for b in blockers {
        join(b).unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.completed, QUEUED as u64 + 2, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    assert_eq!(stats.workers, 0, "{stats}");
}

#[test]
fn shutdown_called_inside_a_task_closes_without_deadlock() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let inner = pool.clone();
    let task = pool.spawn(move || {
        inner.shutdown();
        inner.is_closed()
    });
    assert!(join(task).unwrap(), "closed from inside");
    assert!(pool.is_closed());
    assert!(pool.shutdown_timeout(LIMIT).is_ok());
}

#[test]
fn shutdown_timeout_terminates_what_is_left() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate).pop().unwrap();
    let queued: Vec<_> = (0..100).map(|i| pool.spawn(move || i)).collect();

    let err = pool
        .shutdown_timeout(Duration::from_millis(50))
        .expect_err("the blocker cannot finish in time");
    assert_eq!(err.still_running(), 1, "{err}");
    // Every task is resolved by the time it returns.
    assert!(blocker.is_finished());
    assert!(join(blocker).unwrap_err().is_cancelled());
    for t in queued {
        assert!(t.is_finished());
        assert!(join(t).unwrap_err().is_closed());
    }
    gate.open();
    wait_until("the last worker leaves", || pool.stats().workers == 0);
}

/// Lets the stuck tasks below go once their test is over (or has failed).
static RELEASE_STUCK: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

struct ReleaseOnDrop(usize);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        RELEASE_STUCK[self.0].store(true, SeqCst);
    }
}

/// Builds a pool one of whose threads is stuck, ignoring cancellation, in a task
/// that timed out: the pool has abandoned that thread and replaced it.
fn pool_with_an_abandoned_thread(which: usize) -> Pool {
    let pool = Pool::builder()
        .workers(2)
        .abandon_grace(Duration::from_millis(20))
        .build()
        .unwrap();
    let stuck = pool
        .job(move |_ctx| {
            while !RELEASE_STUCK[which].load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .timeout(Duration::from_millis(20))
        .spawn();
    assert!(join(stuck).unwrap_err().is_timeout());
    wait_until("the stuck thread is abandoned", || {
        let stats = pool.stats();
        stats.abandoned_threads == 1 && stats.workers == 2
    });
    assert_eq!(join(pool.spawn(|| 1)).unwrap(), 1);
    pool
}

/// Runs `f` on another thread and fails the test if it has not returned within
/// `LIMIT`, saying whether it returned once the stuck task was let go (which shows
/// that it was waiting for the abandoned thread).
fn assert_returns_in_time(which: usize, what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    if rx.recv_timeout(LIMIT).is_ok() {
        return;
    }
    RELEASE_STUCK[which].store(true, SeqCst);
    let after_release = rx.recv_timeout(LIMIT).is_ok();
    panic!(
        "{what} was still blocked after {LIMIT:?} while an abandoned thread was stuck; \
         returned once that thread was let go: {after_release}"
    );
}

#[test]
fn shutdown_timeout_does_not_wait_for_an_abandoned_thread() {
    let _release = ReleaseOnDrop(0);
    let pool = pool_with_an_abandoned_thread(0);
    // The stuck thread is no worker of the pool any more, and the timeout bounds
    // the wait in any case: "the threads still running are left to finish on their
    // own".
    assert_returns_in_time(0, "shutdown_timeout(200ms)", move || {
        let _ = pool.shutdown_timeout(Duration::from_millis(200));
    });
}

#[test]
fn shutdown_does_not_wait_for_an_abandoned_thread() {
    let _release = ReleaseOnDrop(1);
    let pool = pool_with_an_abandoned_thread(1);
    // An abandoned thread "leaves when it returns, if ever"; shutdown joins the
    // pool's workers, and the abandoned thread is not one of them.
    assert_returns_in_time(1, "shutdown()", move || pool.shutdown());
}

#[test]
fn shutdown_async_is_pending_until_the_queue_has_drained() {
    use std::future::Future;
    use std::task::{Context, Poll};

    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 1, &gate);
    let queued: Vec<_> = (0..100u32).map(|i| pool.spawn(move || i)).collect();
    let mut shutdown = pool.shutdown_async();
    // Closed at once: nothing new is taken.
    wait_until("the pool is closed", || pool.is_closed());
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    // The worker is held: the shutdown cannot have finished.
    assert_eq!(
        std::pin::Pin::new(&mut shutdown).poll(&mut cx),
        Poll::Pending
    );
    gate.open();
    futures::executor::block_on(shutdown);
    // Drained, not dropped: every queued task ran.
    for (i, task) in (0..100u32).zip(queued) {
        assert!(task.is_finished());
        assert_eq!(join(task).unwrap(), i);
    }
    for blocker in blockers {
        join(blocker).unwrap();
    }
}

#[test]
fn shutdown_async_inside_a_task_closes_and_is_ready_at_once() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let inner = pool.clone();
    let task = pool.spawn(move || {
        // On its own worker it cannot wait for itself: it closes and is ready.
        futures::executor::block_on(inner.shutdown_async());
        inner.is_closed()
    });
    assert!(join(task).unwrap());
    pool.shutdown();
}
