//! Priorities: queued `High` tasks run before `Normal` before `Low`, and a `Low`
//! task still gets a pick within every aging cycle (`scheduler/queues.rs`:
//! `AGING_CYCLE` is 8 picks per worker).

mod common;

use std::sync::{Arc, Mutex};

use common::{block_workers, join, Gate, OpenOnDrop};
use crew::{Pool, Priority};

/// Picks per rotation of the starting level, as in `scheduler/queues.rs`.
const AGING_CYCLE: usize = 8;

fn spawn_recording(
    pool: &Pool,
    order: &Arc<Mutex<Vec<(Priority, usize)>>>,
    priority: Priority,
    n: usize,
) -> crew::Task<()> {
    let order = Arc::clone(order);
    pool.job(move |_ctx| order.lock().unwrap().push((priority, n)))
        .priority(priority)
        .spawn()
}

#[test]
fn high_before_normal_before_low() {
    // One worker, so the order it picks tasks in is the order they run in.
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate);

    // Two of each, submitted lowest first and interleaved: 6 picks, below the
    // aging cycle, so plain priority order must hold.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for n in 0..2 {
        for p in [Priority::Low, Priority::Normal, Priority::High] {
            tasks.push(spawn_recording(&pool, &order, p, n));
        }
    }
    assert!(tasks.len() < AGING_CYCLE);
    gate.open();
    for t in blocker.into_iter().chain(tasks) {
        join(t).unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        vec![
            (Priority::High, 0),
            (Priority::High, 1),
            (Priority::Normal, 0),
            (Priority::Normal, 1),
            (Priority::Low, 0),
            (Priority::Low, 1),
        ],
        "highest first, and first in, first out within a level"
    );
    pool.shutdown();
}

#[test]
fn low_is_not_starved_by_a_flood_of_high() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate);

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = vec![spawn_recording(&pool, &order, Priority::Low, 0)];
    const HIGHS: usize = 3 * AGING_CYCLE;
    for n in 0..HIGHS {
        tasks.push(spawn_recording(&pool, &order, Priority::High, n));
    }
    gate.open();
    for t in blocker.into_iter().chain(tasks) {
        join(t).unwrap();
    }
    let order = order.lock().unwrap().clone();
    let low_at = order.iter().position(|(p, _)| *p == Priority::Low).unwrap();
    assert!(
        low_at < AGING_CYCLE,
        "the Low task ran at pick {low_at}, after more than one aging cycle: {order:?}"
    );
    assert!(low_at > 0, "High tasks went first: {order:?}");
    pool.shutdown();
}
