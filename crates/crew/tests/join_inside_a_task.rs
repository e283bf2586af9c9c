//! A task that joins a task it spawned on its own pool (a habit from rayon, whose
//! `join` runs other work while it waits; crew's does not). When every worker the
//! pool may have is blocked on a task nobody can start, the join that would
//! complete the deadlock resolves its task as `is_deadlock` instead of hanging.

mod common;

use common::{join, Counter};
use crew::{Pool, TaskError};

#[test]
fn on_one_worker_joining_a_spawned_task_is_refused_not_hung() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let inner = pool.clone();
    let outer = pool.spawn(move || -> Result<u32, TaskError> {
        let child = inner.spawn(|| 42u32);
        child.join()
    });
    let error = join(outer).unwrap().unwrap_err();
    assert!(error.is_deadlock(), "{error:?}");
    assert!(error
        .to_string()
        .contains("joined from a worker of its own pool"));
    // The refused task resolved once and counts as cancelled; the pool goes on.
    assert_eq!(join(pool.spawn(|| 7)).unwrap(), 7);
    pool.wait_idle();
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.cancelled), (2, 1), "{stats:?}");
    pool.shutdown();
}

#[test]
fn with_a_free_worker_the_join_waits_and_succeeds() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let inner = pool.clone();
    let outer = pool.spawn(move || inner.spawn(|| 6 * 7).join().map_err(|e| e.to_string()));
    assert_eq!(join(outer).unwrap(), Ok(42));
    pool.shutdown();
}

#[test]
fn when_every_worker_joins_exactly_one_join_is_refused() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let running = Counter::new();
    let outers: Vec<_> = (0..2u32)
        .map(|i| {
            let (inner, running) = (pool.clone(), running.clone());
            pool.spawn(move || {
                // Both workers busy before either spawns: nobody is free.
                running.bump();
                running.wait_for(2);
                inner.spawn(move || i).join()
            })
        })
        .collect();
    let results: Vec<_> = outers.into_iter().map(|t| join(t).unwrap()).collect();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.is_deadlock()))
        .count();
    let served = results.iter().filter(|r| r.is_ok()).count();
    // The second join would complete the deadlock and is refused; its worker
    // is then free to run the first join's task.
    assert_eq!((refused, served), (1, 1), "{results:?}");
    pool.shutdown();
}

#[test]
fn joining_a_task_of_another_pool_is_never_refused() {
    // One worker, and the joined task belongs to another pool: nothing to refuse.
    let pool = Pool::builder().workers(1).build().unwrap();
    let other = Pool::builder().workers(1).build().unwrap();
    let outer = {
        let other = other.clone();
        pool.spawn(move || other.spawn(|| 5u32).join().map_err(|e| e.to_string()))
    };
    assert_eq!(join(outer).unwrap(), Ok(5));
    pool.shutdown();
    other.shutdown();
}
