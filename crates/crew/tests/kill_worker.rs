//! `Pool::kill_worker`: an idle or busy worker is retired and replaced by one with a
//! new id; a task it was running resolves as killed; the pool keeps working.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Instant;

use common::{join, wait_until, Flag, Gate, OpenOnDrop, LIMIT};
use crew::{Pool, WorkerId};

fn sum_of_tasks(pool: &Pool, n: u32) -> u32 {
    let tasks: Vec<_> = (0..n).map(|i| pool.spawn(move || i)).collect();
    tasks.into_iter().map(|t| join(t).unwrap()).sum()
}

#[test]
fn killing_an_idle_worker_replaces_it() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let before = pool.workers();
    assert_eq!(before.len(), 2);
    let victim = before[0];

    assert!(pool.kill_worker(victim));
    assert!(!pool.workers().contains(&victim), "no longer counted");
    assert!(
        !pool.kill_worker(victim),
        "a retired worker cannot be killed again"
    );

    wait_until("a replacement joins", || pool.workers().len() == 2);
    let after = pool.workers();
    let new: Vec<WorkerId> = after
        .iter()
        .copied()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(new.len(), 1, "before {before:?}, after {after:?}");
    assert!(after.contains(&before[1]), "the other worker is untouched");

    assert_eq!(sum_of_tasks(&pool, 100), 4950);
    pool.shutdown();
}

#[test]
fn killing_a_busy_worker_resolves_its_task_as_killed() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let before = pool.workers();
    let saw_cancel = Flag::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let task = {
        let saw_cancel = saw_cancel.clone();
        pool.spawn_with(move |ctx| {
            tx.send(ctx.worker_id()).unwrap();
            let deadline = Instant::now() + LIMIT;
            while !ctx.is_cancelled() && Instant::now() < deadline {
                std::thread::yield_now();
            }
            if ctx.is_cancelled() {
                saw_cancel.set();
            }
            "finished"
        })
    };
    let busy = rx.recv_timeout(LIMIT).unwrap();
    assert!(before.contains(&busy));

    assert!(pool.kill_worker(busy));
    assert!(task.is_finished(), "the task resolves at once");
    let err = join(task).unwrap_err();
    assert!(err.is_killed(), "{err:?}");
    wait_until("the task sees the kill as a cancellation", || {
        saw_cancel.get()
    });

    wait_until("a replacement joins", || {
        let now = pool.workers();
        now.len() == 2 && !now.contains(&busy)
    });
    let after = pool.workers();
    assert!(
        after.iter().any(|id| !before.contains(id)),
        "the replacement has a new id: before {before:?}, after {after:?}"
    );

    assert_eq!(sum_of_tasks(&pool, 100), 4950);
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.killed, 1, "{stats}");
    assert_eq!(stats.completed, 100, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    pool.shutdown();
}

#[test]
fn killing_every_worker_in_turn_keeps_the_pool_working() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut seen = pool.workers();
    for round in 0..5 {
        for id in pool.workers() {
            assert!(pool.kill_worker(id), "round {round}: kill {id}");
        }
        wait_until("replacements join", || pool.workers().len() == 2);
        for id in pool.workers() {
            assert!(!seen.contains(&id), "{id} is a new id");
            seen.push(id);
        }
        assert_eq!(sum_of_tasks(&pool, 20), 190);
    }
    pool.shutdown();
}

#[test]
fn tasks_queued_on_a_stuck_killed_worker_run_elsewhere() {
    // One worker whose task spawns children (they go to its own deque), then
    // blocks, ignoring cancellation. Killed, it keeps its thread; the children must
    // still run on the replacement while the killed thread stays stuck.
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let parent = {
        let (pool, gate) = (pool.clone(), gate.clone());
        pool.clone().spawn_with(move |ctx| {
            let children: Vec<_> = (0..50_u32).map(|i| pool.spawn(move || i)).collect();
            tx.send((ctx.worker_id(), children)).unwrap();
            gate.wait();
        })
    };
    let (stuck, children) = rx.recv_timeout(LIMIT).unwrap();
    assert!(pool.kill_worker(stuck));
    assert!(join(parent).unwrap_err().is_killed());
    let sum: u32 = children.into_iter().map(|t| join(t).unwrap()).sum();
    assert_eq!(sum, 1225);
    assert!(!gate.is_open(), "the killed thread is still stuck");
    gate.open();
    pool.shutdown();
}

/// Lets the stuck task of the next test go once the test is over.
static RELEASE_KILLED: AtomicBool = AtomicBool::new(false);

#[test]
fn shutdown_does_not_wait_for_a_killed_thread_stuck_in_its_task() {
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            RELEASE_KILLED.store(true, SeqCst);
        }
    }
    let _release = Release;
    let pool = Pool::builder().workers(2).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stuck = pool.spawn_with(move |ctx| {
        tx.send(ctx.worker_id()).unwrap();
        // Ignores cancellation.
        while !RELEASE_KILLED.load(SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
    let id = rx.recv_timeout(LIMIT).unwrap();
    assert!(pool.kill_worker(id));
    assert!(join(stuck).unwrap_err().is_killed());
    wait_until("a replacement joins", || pool.workers().len() == 2);

    // The killed thread "exits when that task returns"; it is no worker of the pool
    // any more, so shutting the pool down must not wait for it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        pool.shutdown();
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(LIMIT).is_err() {
        RELEASE_KILLED.store(true, SeqCst);
        let after_release = done_rx.recv_timeout(LIMIT).is_ok();
        panic!(
            "shutdown() was still blocked after {LIMIT:?} while the killed thread was \
             stuck; returned once that thread was let go: {after_release}"
        );
    }
}
