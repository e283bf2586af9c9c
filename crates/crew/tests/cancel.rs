//! `Task::cancel`: a queued task resolves `Cancelled` at once and never runs; a
//! running one resolves at once and sees `Context::is_cancelled`.

mod common;

use std::time::Instant;

use common::{block_workers, join, wait_until, Flag, Gate, OpenOnDrop, SetOnDrop, LIMIT};
use crew::Pool;

#[test]
fn cancel_while_queued_resolves_at_once_and_never_runs() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 2, &gate);

    let ran = Flag::new();
    let dropped = Flag::new();
    let task = {
        let ran = ran.clone();
        let guard = SetOnDrop(dropped.clone());
        pool.spawn(move || {
            let _guard = guard;
            ran.set();
        })
    };
    let bystander = pool.spawn(|| 7);
    assert!(!task.is_finished(), "queued behind the blockers");

    assert!(task.cancel(), "this call resolved it");
    assert!(task.is_finished(), "resolved at once, while still queued");
    assert!(dropped.get(), "the closure is dropped at cancel");
    assert!(!task.cancel(), "a second cancel finds it resolved");
    assert_eq!(task.worker(), None, "no worker took it");
    let err = join(task).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");

    gate.open();
    for b in blockers {
        join(b).unwrap();
    }
    assert_eq!(join(bystander).unwrap(), 7, "its neighbour still runs");
    assert!(pool.wait_idle_timeout(LIMIT));
    assert!(!ran.get(), "a task cancelled while queued never runs");
    assert_eq!(pool.stats().cancelled, 1);
    pool.shutdown();
}

#[test]
fn cancel_while_running_is_seen_by_the_task() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let started = Flag::new();
    let observed = Flag::new();
    let task = {
        let (started, observed) = (started.clone(), observed.clone());
        pool.spawn_with(move |ctx| {
            started.set();
            let deadline = Instant::now() + LIMIT;
            while !ctx.is_cancelled() {
                if Instant::now() > deadline {
                    return "never cancelled";
                }
                std::thread::yield_now();
            }
            observed.set();
            "saw the cancel"
        })
    };
    wait_until("the task is running", || started.get());
    assert!(!task.is_finished());

    assert!(task.cancel(), "this call resolved it");
    assert!(task.is_finished(), "a running task resolves at once");
    assert!(!task.cancel());
    let err = join(task).unwrap_err();
    assert!(err.is_cancelled(), "the late output is discarded: {err:?}");
    wait_until("the task observes its cancellation", || observed.get());

    // The worker that ran it keeps working.
    let sum: u32 = (0..20).map(|i| join(pool.spawn(move || i)).unwrap()).sum();
    assert_eq!(sum, 190);
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 1, "{stats}");
    assert_eq!(stats.completed, 20, "{stats}");
    pool.shutdown();
}

#[test]
fn cancel_after_completion_changes_nothing() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let task = pool.spawn(|| 5);
    wait_until("the task finishes", || task.is_finished());
    assert!(!task.cancel(), "already resolved");
    assert_eq!(join(task).unwrap(), 5);
    pool.shutdown();
}
