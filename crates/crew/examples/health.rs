//! Monitoring a pool, as the usual worker-pool health tutorial does it: a burst of
//! work larger than the pool, the health watcher warning that the queue stays
//! deep, and the stats table (wait and run percentiles, utilization, one row per
//! worker) printed while the work runs and once it is done.
//!
//! `cargo run --example health`

use std::time::Duration;

use crew::{Event, Health, Pool};

/// One unit of simulated work: a short computation, then 5 ms of waiting (as on
/// a database or a remote service).
fn work(n: u64) -> u64 {
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::thread::sleep(Duration::from_millis(5));
    x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const WORKERS: usize = 2;
    const BURST: u64 = 200;

    let pool: Pool = Pool::builder()
        .workers(WORKERS)
        .thread_name("health")
        .health(
            Health::new() // warn above 5 queued tasks per worker (the default) ...
                .backlog_for(Duration::from_millis(50)) // ... held for 50 ms
                .stats_every(Duration::from_millis(100)), // and a snapshot every 100 ms
        )
        .build()?;

    // Subscribe before the burst; a thread reports what the watcher says.
    let events = pool.events();
    let monitor = std::thread::spawn(move || {
        let mut backlogs = 0;
        let mut snapshots = 0;
        for event in events {
            match event {
                Event::Backlog {
                    queued,
                    workers,
                    threshold,
                    since,
                    ..
                } => {
                    backlogs += 1;
                    println!(
                        "BACKLOG: {queued} tasks queued on {workers} workers \
                         (above {threshold} for {since:?}): add workers or slow the producer"
                    );
                }
                Event::Stats { stats, .. } => {
                    snapshots += 1;
                    if snapshots <= 2 {
                        println!("--- while the burst runs\n{stats}\n");
                    }
                }
                _ => {}
            }
        }
        (backlogs, snapshots)
    });

    // The burst: far more tasks than two workers clear at once.
    let tasks: Vec<_> = (0..BURST).map(|n| pool.spawn(move || work(n))).collect();
    let mut checksum = 0u64;
    for task in tasks {
        checksum ^= task.join()?;
    }
    pool.wait_idle();

    let stats = pool.stats();
    println!("--- at the end\n{stats}\n");
    pool.shutdown();
    let (backlogs, snapshots) = monitor.join().map_err(|_| "the monitor thread panicked")?;

    // What the run promises: every task counted in both histograms, one row per
    // worker, and the backlog seen.
    let all_counted =
        stats.completed == BURST && stats.wait.count == BURST && stats.run.count == BURST;
    let rows = stats
        .to_string()
        .lines()
        .filter(|l| l.starts_with("worker-"))
        .count();
    if !all_counted || rows != WORKERS || backlogs == 0 || snapshots == 0 {
        return Err(format!(
            "health: unexpected result: counted {all_counted}, {rows} rows, {backlogs} backlog reports"
        )
        .into());
    }
    println!(
        "health: {BURST} tasks, {backlogs} backlog report, {snapshots} snapshots, checksum {checksum:x}"
    );
    println!("health: all checks passed");
    Ok(())
}
