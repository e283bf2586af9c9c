//! Tasks that spawn tasks: children (and grandchildren) spawned from inside the
//! pool all run; children pushed onto a busy worker's own deque are stolen by an
//! idle one.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{join, Counter, LIMIT};
use crew::{Pool, Task, WorkerId};

#[test]
fn children_and_grandchildren_spawned_from_inside_all_complete() {
    const CHILDREN: usize = 100;
    const GRANDCHILDREN: usize = 3;
    let pool = Pool::builder().workers(2).build().unwrap();
    let done = Counter::new();
    let parent = {
        let (inner, done) = (pool.clone(), done.clone());
        pool.spawn(move || -> Vec<Task<usize>> {
            (0..CHILDREN)
                .map(|i| {
                    let (inner, done) = (inner.clone(), done.clone());
                    inner.clone().spawn(move || {
                        // Detached: only the counter knows they ran.
                        for _ in 0..GRANDCHILDREN {
                            let done = done.clone();
                            drop(inner.spawn(move || done.bump()));
                        }
                        done.bump();
                        i
                    })
                })
                .collect()
        })
    };
    let children = join(parent).unwrap();
    assert_eq!(children.len(), CHILDREN);
    for (i, t) in children.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i, "child {i}");
    }
    done.wait_for(CHILDREN * (1 + GRANDCHILDREN));
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(
        stats.completed,
        (1 + CHILDREN * (1 + GRANDCHILDREN)) as u64,
        "{stats}"
    );
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    pool.shutdown();
}

#[test]
fn children_on_a_busy_workers_deque_are_stolen_by_the_idle_one() {
    const CHILDREN: usize = 20;
    let pool = Pool::builder().workers(2).build().unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let ran_on = Arc::new(Mutex::new(Vec::new()));
    // The parent spawns its children onto its own worker's deque, then holds that
    // worker until every child has finished (or the deadline passes): only the
    // other worker can run them, and only by stealing.
    let parent = {
        let (inner, finished, ran_on) = (pool.clone(), finished.clone(), ran_on.clone());
        pool.spawn_with(move |ctx| {
            let me = ctx.worker_id();
            let children: Vec<Task<WorkerId>> = (0..CHILDREN)
                .map(|_| {
                    let (finished, ran_on) = (finished.clone(), ran_on.clone());
                    inner.spawn_with(move |ctx| {
                        ran_on.lock().unwrap().push(ctx.worker_id());
                        finished.fetch_add(1, SeqCst);
                        ctx.worker_id()
                    })
                })
                .collect();
            let deadline = Instant::now() + LIMIT;
            while finished.load(SeqCst) < CHILDREN && Instant::now() < deadline {
                std::thread::yield_now();
            }
            (me, finished.load(SeqCst), children)
        })
    };
    let (parent_worker, finished_while_held, children) = join(parent).unwrap();
    assert_eq!(
        finished_while_held,
        CHILDREN,
        "the children ran while their parent held its worker; ran on {:?}",
        ran_on.lock().unwrap()
    );
    for (i, t) in children.into_iter().enumerate() {
        let worker = join(t).unwrap();
        assert_ne!(
            worker, parent_worker,
            "child {i} ran on the parent's own worker, which was busy"
        );
    }
    let workers: Vec<WorkerId> = ran_on.lock().unwrap().clone();
    assert!(workers.iter().all(|w| *w != parent_worker), "{workers:?}");
    pool.shutdown();
}

#[test]
fn a_parent_that_joins_its_children_does_not_deadlock_with_a_second_worker() {
    // Joining inside a task parks the worker; its children sit on its own deque,
    // so the other worker must steal them for the join to return.
    let pool = Pool::builder().workers(2).build().unwrap();
    let parent = {
        let inner = pool.clone();
        pool.spawn_with(move |ctx| {
            let me = ctx.worker_id();
            let children: Vec<Task<(u64, WorkerId)>> = (1..=10_u64)
                .map(|i| inner.spawn_with(move |ctx| (i * i, ctx.worker_id())))
                .collect();
            let mut sum = 0;
            let mut stolen = 0;
            for t in children {
                let (square, worker) = t
                    .join_timeout(LIMIT / 2)
                    .unwrap_or_else(|t| panic!("{t:?} was never run"))
                    .unwrap();
                sum += square;
                stolen += usize::from(worker != me);
            }
            (sum, stolen)
        })
    };
    let (sum, stolen) = join(parent).unwrap();
    assert_eq!(sum, 385);
    assert_eq!(stolen, 10, "every child ran on the other worker");
    assert!(pool.wait_idle_timeout(LIMIT));
    pool.shutdown();
}
