//! Observability on the thread backend: the latency histograms and per-worker rows
//! of `stats()`, its table, the queue wait in task events, and the health
//! watcher's backlog and periodic stats events.

mod common;

use std::time::Duration;

use common::{block_workers, join, wait_for_event, wait_until, Gate, OpenOnDrop, LIMIT};
use crew::{Event, Health, Pool, WorkerState};

#[test]
fn histograms_count_every_task_and_rows_add_up() {
    const N: u64 = 2_000;
    let pool = Pool::builder().workers(3).build().unwrap();
    wait_until("every worker has started", || {
        pool.stats().per_worker.iter().all(|w| w.started)
    });
    let tasks: Vec<_> = (0..N).map(|i| pool.spawn(move || i * 2)).collect();
    let batch = pool.spawn_batch((0..N).map(|i| move || i + 1));
    for task in tasks.into_iter().chain(batch) {
        join(task).unwrap();
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    let total = 2 * N;
    assert_eq!(stats.completed, total, "{stats}");
    for latency in [stats.wait, stats.run] {
        assert_eq!(latency.count, total, "{stats}");
        assert!(latency.p50 <= latency.p90, "{latency:?}");
        assert!(latency.p90 <= latency.p99, "{latency:?}");
        assert!(latency.p99 <= latency.max, "{latency:?}");
    }
    assert_eq!(stats.per_worker.len(), 3);
    let done: u64 = stats.per_worker.iter().map(|w| w.tasks_done).sum();
    assert_eq!(done, total, "{stats}");
    let ran: u64 = stats.per_worker.iter().map(|w| w.run.count).sum();
    assert_eq!(ran, total, "{stats}");
    let busy: Duration = stats.per_worker.iter().map(|w| w.busy_time).sum();
    assert_eq!(busy, stats.busy_time, "{stats}");
    assert!(stats.worker_time >= stats.busy_time, "{stats}");
    let utilization = stats.utilization();
    assert!((0.0..=1.0).contains(&utilization), "{utilization}");
    for row in &stats.per_worker {
        assert_eq!(row.state, WorkerState::Idle, "{stats}");
        assert_eq!(row.pid, None);
        assert_eq!(row.rss_bytes, None);
    }
    pool.shutdown();
}

#[test]
fn past_the_first_4096_tasks_one_in_eight_is_timed() {
    const N: u64 = 10_000;
    let pool = Pool::builder().workers(2).build().unwrap();
    let tasks: Vec<_> = (0..N).map(|i| pool.spawn(move || i)).collect();
    for task in tasks {
        task.join().unwrap();
    }
    wait_until("every task is counted", || pool.stats().completed == N);
    let stats = pool.stats();
    // Ids 1..=4096, then the multiples of 8 up to 10,000.
    let expected = 4096 + (N / 8 - 4096 / 8);
    assert_eq!(stats.wait.count, expected, "{stats}");
    assert_eq!(stats.run.count, expected, "{stats}");
    assert!(stats.run.p50 <= stats.run.max);
    pool.shutdown();
}

#[test]
fn rows_show_who_is_busy_and_the_table_has_one_row_per_worker() {
    let pool = Pool::builder().workers(3).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 1, &gate);
    let blocked = blockers[0].id();
    wait_until("the blocked task shows as running", || {
        pool.stats()
            .per_worker
            .iter()
            .any(|w| w.current_task == Some(blocked))
    });
    let stats = pool.stats();
    let busy: Vec<_> = stats
        .per_worker
        .iter()
        .filter(|w| w.state == WorkerState::Busy)
        .collect();
    assert_eq!(busy.len(), 1, "{stats}");
    assert_eq!(busy[0].current_task, Some(blocked));

    let table = stats.to_string();
    let rows: Vec<&str> = table
        .lines()
        .filter(|line| line.starts_with("worker-"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    for w in &stats.per_worker {
        let row = rows
            .iter()
            .find(|r| r.split_whitespace().next() == Some(&*w.id.to_string()))
            .unwrap_or_else(|| panic!("no row for {}: {table}", w.id));
        assert!(row.contains(w.state.as_str()), "{row}");
    }
    assert!(
        rows.iter().any(|r| r.contains(&blocked.to_string())),
        "{table}"
    );
    assert!(table.contains("utilization"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("wait")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("run")), "{table}");
    gate.open();
    for task in blockers {
        join(task).unwrap();
    }
    pool.shutdown();
}

#[test]
fn task_events_carry_the_queue_wait() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let events = pool.events();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 1, &gate);
    let queued = pool.spawn(|| 7);
    let id = queued.id();
    gate.open();
    assert_eq!(join(queued).unwrap(), 7);
    for task in blockers {
        join(task).unwrap();
    }
    let started = wait_for_event(&events, "its TaskStarted", |e| match e {
        Event::TaskStarted { task, waited, .. } if task == id => Some(waited),
        _ => None,
    });
    let finished = wait_for_event(&events, "its TaskFinished", |e| match e {
        Event::TaskFinished { task, waited, .. } if task == id => Some(waited),
        _ => None,
    });
    assert_eq!(started, finished, "both report the same wait");
    pool.shutdown();
}

#[test]
fn a_backlog_held_above_the_threshold_is_reported_once() {
    let pool = Pool::builder()
        .workers(1)
        .health(
            Health::new()
                .backlog_threshold(3)
                .backlog_for(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    let events = pool.events();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 1, &gate);
    let queued: Vec<_> = (0..10).map(|i| pool.spawn(move || i)).collect();
    let (depth, workers, threshold) = wait_for_event(&events, "Event::Backlog", |e| match e {
        Event::Backlog {
            queued,
            workers,
            threshold,
            ..
        } => Some((queued, workers, threshold)),
        _ => None,
    });
    assert_eq!(depth, 10);
    assert_eq!(workers, 1);
    assert_eq!(threshold, 3);
    gate.open();
    for task in blockers {
        join(task).unwrap();
    }
    for task in queued {
        join(task).unwrap();
    }
    pool.shutdown();
    let again = events
        .filter(|e| matches!(e, Event::Backlog { .. }))
        .count();
    assert_eq!(again, 0, "one report per episode");
}

#[test]
fn a_queue_at_or_below_the_threshold_is_not_a_backlog() {
    let pool = Pool::builder()
        .workers(1)
        .health(
            Health::new()
                .backlog_threshold(5)
                .backlog_for(Duration::from_millis(5))
                .stats_every(Duration::from_millis(5)),
        )
        .build()
        .unwrap();
    let events = pool.events();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blockers = block_workers(&pool, 1, &gate);
    let queued: Vec<_> = (0..5).map(|i| pool.spawn(move || i)).collect();
    wait_until("stats() shows the 5 queued tasks", || {
        pool.stats().queued == 5
    });
    // Each periodic snapshot is one more look by the watcher; after several
    // that all saw the full queue, a backlog would have been reported by now.
    let mut snapshots = 0;
    let mut backlogs = 0;
    while snapshots < 6 {
        wait_for_event(&events, "Event::Stats", |e| match e {
            Event::Stats { stats, .. } => {
                if stats.queued == 5 {
                    snapshots += 1;
                }
                Some(())
            }
            Event::Backlog { .. } => {
                backlogs += 1;
                None
            }
            _ => None,
        });
    }
    assert_eq!(backlogs, 0);
    gate.open();
    for task in blockers {
        join(task).unwrap();
    }
    for task in queued {
        join(task).unwrap();
    }
    pool.shutdown();
}

#[test]
fn the_watcher_thread_leaves_with_the_pool() {
    let pool: Pool = Pool::builder()
        .workers(1)
        .thread_name("observed")
        .health(Health::new().stats_every(Duration::from_millis(1)))
        .build()
        .unwrap();
    let events = pool.events();
    wait_for_event(&events, "Event::Stats", |e| {
        matches!(e, Event::Stats { .. }).then_some(())
    });
    assert!(
        health_threads() > 0,
        "the watcher runs while the pool is open"
    );
    pool.shutdown();
    // `shutdown` joined the watcher, and the event stream ends.
    assert_eq!(health_threads(), 0);
    let _rest = events.count();
}

/// Threads of this process named by the watcher of the pool above.
fn health_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "observed-health")
        .count()
}

#[test]
fn zero_health_periods_are_refused() {
    let err = Pool::<crew::Closures>::builder()
        .health(Health::new().backlog_for(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("backlog_for"), "{err}");
    let err = Pool::<crew::Closures>::builder()
        .health(Health::new().stats_every(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("stats_every"), "{err}");
}
