//! No thread is leaked: after 10,000 tasks, 200 killed workers (each replaced),
//! tasks that timed out and were abandoned, and a shutdown, the process has the
//! same threads as before the pool existed. Reads `/proc/self/task` (Linux).
//!
//! This file holds a single test so no other test's threads come and go while it
//! counts.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{join, wait_until};
use crew::Pool;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn kills_timeouts_and_shutdown_leave_no_thread_behind() {
    if threads() == 0 {
        eprintln!("no /proc/self/task here; nothing to count");
        return;
    }
    let baseline = threads();
    let pool = Pool::builder()
        .workers(4)
        .abandon_grace(Duration::from_millis(1))
        .build()
        .unwrap();

    // 10,000 tasks, with a kill of some worker after every 50.
    for round in 0..200u64 {
        let tasks: Vec<_> = (0..50u64)
            .map(|i| pool.spawn(move || round * 50 + i))
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let r = join(t);
            assert!(
                r.is_ok() || r.as_ref().is_err_and(|e| e.is_killed()),
                "{r:?}"
            );
            if let Ok(v) = r {
                assert_eq!(v, round * 50 + i as u64);
            }
        }
        let victim = pool.workers()[(round % 4) as usize];
        assert!(pool.kill_worker(victim), "a live worker can be killed");
    }

    // Tasks that outlive their timeout: their threads are abandoned and replaced,
    // then leave once the task returns.
    let release = Arc::new(AtomicBool::new(false));
    let stuck: Vec<_> = (0..3)
        .map(|_| {
            let release = Arc::clone(&release);
            pool.job(move |_| {
                while !release.load(SeqCst) {
                    std::thread::yield_now();
                }
            })
            .timeout(Duration::from_millis(1))
            .spawn()
        })
        .collect();
    for t in stuck {
        assert!(join(t).unwrap_err().is_timeout());
    }
    wait_until("the stuck threads were abandoned", || {
        pool.stats().abandoned_threads == 3
    });
    release.store(true, SeqCst);
    wait_until("the abandoned threads left", || {
        pool.stats().abandoned_threads == 0
    });

    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    assert_eq!(stats.workers, 4, "{stats}");
    pool.shutdown();
    drop(pool);
    wait_until("the process is back to its threads before the pool", || {
        threads() == baseline
    });
}
