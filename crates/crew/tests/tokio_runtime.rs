//! Feature `tokio`: worker threads enter the runtime the pool was built in (or the
//! one given to `tokio_handle`), so tokio's timers work inside `spawn_async`; and
//! `shutdown_async` drains a pool on a current-thread runtime whose only thread a
//! blocking shutdown would have stopped from driving those timers.

mod common;

use std::time::Duration;

use common::{join, LIMIT};
use crew::Pool;

/// A task that needs tokio's timer driver.
async fn nap_then(value: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(5)).await;
    // And a timeout, which needs the same driver.
    tokio::time::timeout(LIMIT, async { value }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_timers_work_in_spawn_async_on_a_pool_built_in_a_runtime() {
    let pool = Pool::builder().workers(2).concurrency(4).build().unwrap();
    let tasks: Vec<_> = (0..8).map(|i| pool.spawn_async(nap_then(i))).collect();
    for (i, task) in (0..8).zip(tasks) {
        assert_eq!(task.await.unwrap(), i);
    }
    pool.shutdown_async().await;
}

#[test]
fn tokio_timers_work_with_a_handle_given_from_outside_any_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let pool = Pool::builder()
        .workers(1)
        .tokio_handle(runtime.handle().clone())
        .build()
        .unwrap();
    // Joined from a plain thread: the runtime's own thread drives the timer.
    assert_eq!(join(pool.spawn_async(nap_then(9))).unwrap(), 9);
    pool.shutdown();
}

#[test]
fn a_pool_built_outside_any_runtime_enters_none() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let error = join(pool.spawn_async(nap_then(1))).unwrap_err();
    // tokio's own panic, caught and carried to the caller.
    assert!(error.is_panic(), "{error:?}");
    pool.shutdown();
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_async_drains_on_a_current_thread_runtime() {
    // The runtime has one thread: this test's. The pool's tasks sleep on its
    // timers, which only run while this thread is free, so a blocking
    // `shutdown` here would wait for ever.
    let pool = Pool::builder().workers(2).concurrency(2).build().unwrap();
    let tasks: Vec<_> = (0..4).map(|i| pool.spawn_async(nap_then(i))).collect();
    tokio::time::timeout(LIMIT, pool.shutdown_async())
        .await
        .expect("the pool drained");
    assert!(pool.is_closed());
    for (i, task) in (0..4).zip(tasks) {
        // Drained, not dropped: each ran to its end.
        assert_eq!(task.await.unwrap(), i);
    }
    assert_eq!(pool.stats().completed, 4);
}
