//! Many tiny tasks from many threads at once: every result arrives exactly once, to
//! the handle of the task that produced it.

mod common;

use common::{join, LIMIT};
use crew::Pool;

const SUBMITTERS: usize = 8;
const TOTAL: usize = 100_000;

/// Marks each index once; panics on a duplicate or a missing one.
fn check_exactly_once(results: impl IntoIterator<Item = usize>, total: usize) {
    let mut seen = vec![0_u8; total];
    for i in results {
        assert!(i < total, "result {i} out of range");
        seen[i] += 1;
        assert_eq!(seen[i], 1, "result {i} arrived twice");
    }
    let missing: Vec<usize> = (0..total).filter(|&i| seen[i] == 0).take(10).collect();
    assert!(missing.is_empty(), "results never arrived: {missing:?}..");
}

#[test]
fn a_hundred_thousand_tasks_from_eight_threads() {
    let pool = Pool::builder().workers(4).build().unwrap();
    let per_thread = TOTAL / SUBMITTERS;
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let range = s * per_thread..(s + 1) * per_thread;
                let tasks: Vec<_> = range.clone().map(|i| pool.spawn(move || i)).collect();
                // Each handle must give its own task's result.
                range
                    .zip(tasks)
                    .map(|(i, t)| {
                        let got = join(t).unwrap();
                        assert_eq!(got, i, "task {i}'s handle got another result");
                        got
                    })
                    .collect::<Vec<usize>>()
            })
        })
        .collect();
    let results = submitters
        .into_iter()
        .flat_map(|h| h.join().expect("a submitter failed"));
    check_exactly_once(results, TOTAL);

    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.submitted, TOTAL as u64, "{stats}");
    assert_eq!(stats.completed, TOTAL as u64, "{stats}");
    assert_eq!(stats.queued, 0, "{stats}");
    pool.shutdown();
}

#[test]
fn tasks_spawned_from_inside_tasks_all_arrive() {
    const OUTER: usize = 20;
    const INNER: usize = 1_000;
    let pool = Pool::builder().workers(4).build().unwrap();
    let outers: Vec<_> = (0..OUTER)
        .map(|o| {
            let inner_pool = pool.clone();
            // Normal tasks spawned here go to this worker's own deque; the others
            // steal them.
            pool.spawn(move || {
                (0..INNER)
                    .map(|i| {
                        let index = o * INNER + i;
                        inner_pool.spawn(move || index)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let inner: Vec<_> = outers.into_iter().flat_map(|t| join(t).unwrap()).collect();
    check_exactly_once(inner.into_iter().map(|t| join(t).unwrap()), OUTER * INNER);
    assert!(pool.wait_idle_timeout(LIMIT));
    assert_eq!(pool.stats().completed, (OUTER + OUTER * INNER) as u64);
    pool.shutdown();
}

#[test]
fn one_task_at_a_time_to_a_pool_that_keeps_falling_asleep() {
    // Each round finds the workers searching or parked: a lost wake-up shows up as
    // a task that never runs.
    let pool = Pool::builder().workers(4).build().unwrap();
    let submitters: Vec<_> = (0..2)
        .map(|s| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..2_000_usize {
                    let value = s * 10_000 + i;
                    assert_eq!(join(pool.spawn(move || value)).unwrap(), value);
                    if i % 100 == 0 {
                        // Let the workers go all the way to sleep now and then.
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    pool.shutdown();
}
