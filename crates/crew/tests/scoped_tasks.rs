//! `Pool::scope`: tasks that borrow the caller's locals, all finished before
//! `scope` returns (joined or not, cancelled or timed out), panics carried out
//! after every task is done, many tasks, and tasks spawning into their scope.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

use common::{Counter, Gate, OpenOnDrop};
use crew::Pool;

#[test]
fn tasks_borrow_locals_and_are_done_when_scope_returns() {
    let pool = Pool::builder().workers(3).build().unwrap();
    let words = vec!["one".to_owned(), "three".to_owned(), "seven".to_owned()];
    let mut lengths = vec![0usize; words.len()];
    let total = AtomicUsize::new(0);
    let returned = pool.scope(|s| {
        for (slot, word) in lengths.iter_mut().zip(&words) {
            // Not joined: the scope waits anyway.
            s.spawn(|| {
                *slot = word.len();
                total.fetch_add(word.len(), SeqCst);
            });
        }
        // A handle can still be joined inside, and gives its value.
        s.spawn(|| words.len()).join().unwrap()
    });
    assert_eq!(returned, 3);
    assert_eq!(lengths, [3, 5, 5]);
    assert_eq!(total.load(SeqCst), 13);
    pool.shutdown();
}

#[test]
fn many_tasks_all_finish() {
    let pool = Pool::builder().workers(4).build().unwrap();
    let hits: Vec<AtomicUsize> = (0..10_000).map(|_| AtomicUsize::new(0)).collect();
    pool.scope(|s| {
        for hit in &hits {
            s.spawn(move || hit.fetch_add(1, SeqCst));
        }
    });
    assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
    pool.shutdown();
}

#[test]
fn tasks_spawn_into_their_scope_on_one_worker() {
    // One worker: each task spawns the next level into the scope and returns,
    // so the worker is free to run it. Depth 5, fan-out 3: 1 + 3 + ... + 243.
    let pool = Pool::builder().workers(1).build().unwrap();
    let ran = AtomicUsize::new(0);
    let levels = Mutex::new(Vec::new());
    fn grow<'scope>(
        s: &'scope crew::Scope<'scope, '_>,
        depth: u32,
        ran: &'scope AtomicUsize,
        levels: &'scope Mutex<Vec<u32>>,
    ) {
        ran.fetch_add(1, SeqCst);
        levels.lock().unwrap().push(depth);
        if depth < 5 {
            for _ in 0..3 {
                s.spawn(move || grow(s, depth + 1, ran, levels));
            }
        }
    }
    pool.scope(|s| {
        s.spawn(|| grow(s, 0, &ran, &levels));
    });
    assert_eq!(ran.load(SeqCst), (0..=5).map(|d| 3usize.pow(d)).sum());
    assert_eq!(levels.lock().unwrap().len(), ran.load(SeqCst));
    pool.shutdown();
}

#[test]
fn a_task_panic_is_resumed_after_every_task_is_done() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let finished = AtomicUsize::new(0);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let caught = catch_unwind(AssertUnwindSafe(|| {
        pool.scope(|s| {
            let panicking = s.spawn(|| -> u32 { std::panic::panic_any(17u64) });
            s.spawn(|| {
                // Still running when the other has panicked.
                gate.wait();
                finished.fetch_add(1, SeqCst);
            });
            // The handle says panicked (with the message); the payload is the
            // scope's to resume.
            let error = panicking.join().unwrap_err();
            assert!(error.is_panic());
            gate.open();
        })
    }))
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<u64>(), Some(&17));
    assert_eq!(
        finished.load(SeqCst),
        1,
        "the scope waited for the other task"
    );
    // The pool is still usable.
    assert_eq!(pool.spawn(|| 1).join().unwrap(), 1);
    pool.shutdown();
}

#[test]
fn a_body_panic_waits_for_the_tasks_then_resumes() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let done = Counter::new();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        pool.scope(|s| {
            for _ in 0..10 {
                s.spawn(|| done.bump());
            }
            panic!("the body gives up");
        })
    }))
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"the body gives up"));
    assert_eq!(done.get(), 10);
    pool.shutdown();
}

/// A scoped task whose handle is cancelled while it runs: it steps, waits for
/// `gate`, steps.
fn cancelled_while_running<'scope>(
    s: &'scope crew::Scope<'scope, '_>,
    steps: &'scope AtomicUsize,
    gate: &'scope Gate,
) -> crew::Task<()> {
    let started = Counter::new();
    let task = {
        let started = started.clone();
        s.spawn(move || {
            steps.fetch_add(1, SeqCst);
            started.bump();
            gate.wait();
            steps.fetch_add(1, SeqCst);
        })
    };
    started.wait_for(1);
    // The handle resolves at once; the closure runs on, using the borrows.
    task.cancel();
    task
}

#[test]
fn a_cancelled_running_task_is_still_waited_for() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let steps = AtomicUsize::new(0);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    pool.scope(|s| {
        let task = cancelled_while_running(s, &steps, &gate);
        assert!(common::join(task).unwrap_err().is_cancelled());
        gate.open();
    });
    assert_eq!(steps.load(SeqCst), 2);
    pool.shutdown();
}

#[test]
fn a_pool_default_timeout_does_not_end_the_scope_early() {
    let pool = Pool::builder()
        .workers(1)
        .timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let steps = AtomicUsize::new(0);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    pool.scope(|s| {
        let task = s.spawn(|| {
            steps.fetch_add(1, SeqCst);
            gate.wait();
            steps.fetch_add(1, SeqCst);
        });
        let error = common::join(task).unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        gate.open();
    });
    assert_eq!(steps.load(SeqCst), 2);
    pool.shutdown();
}

#[test]
fn a_scope_on_a_closed_pool_drops_its_closures_and_returns() {
    let pool = Pool::builder().workers(1).build().unwrap();
    pool.shutdown();
    let local = AtomicUsize::new(0);
    pool.scope(|s| {
        let task = s.spawn(|| local.fetch_add(1, SeqCst));
        assert!(task.join().unwrap_err().is_closed());
    });
    assert_eq!(local.load(SeqCst), 0);
}

#[test]
fn a_scope_inside_a_task_on_one_worker_runs_its_tasks_inline() {
    // The only worker opens the scope: waiting for a queued task would never
    // end, so the scope's tasks (nested spawns included) run on that thread.
    let pool = Pool::builder().workers(1).build().unwrap();
    let inner = pool.clone();
    let outer = pool.spawn(move || {
        let mut squares = [0u64; 4];
        let nested = AtomicUsize::new(0);
        inner.scope(|s| {
            for (i, square) in squares.iter_mut().enumerate() {
                let nested = &nested;
                let handle = s.spawn(move || {
                    *square = (i as u64) * (i as u64);
                    s.spawn(move || nested.fetch_add(1, SeqCst));
                });
                // Already resolved: it ran as it was spawned.
                assert!(handle.is_finished());
            }
        });
        (squares, nested.load(SeqCst))
    });
    let (squares, nested) = common::join(outer).unwrap();
    assert_eq!(squares, [0, 1, 4, 9]);
    assert_eq!(nested, 4);
    pool.shutdown();
}

#[test]
fn an_inline_scope_still_resumes_a_task_panic() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let inner = pool.clone();
    let outer = pool.spawn(move || {
        let ran_after = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            inner.scope(|s| {
                let failed = s.spawn(|| -> u32 { std::panic::panic_any(3u8) });
                assert!(failed.join().unwrap_err().is_panic());
                s.spawn(|| ran_after.fetch_add(1, SeqCst));
            })
        }));
        let payload = caught.unwrap_err();
        (
            payload.downcast_ref::<u8>().copied(),
            ran_after.load(SeqCst),
        )
    });
    assert_eq!(common::join(outer).unwrap(), (Some(3), 1));
    pool.shutdown();
}
