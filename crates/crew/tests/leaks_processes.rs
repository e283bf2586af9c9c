//! Nothing is leaked by the process backend: after 10,000 tasks (large inputs
//! among them, through the shared payload arena) and 200 worker deaths (kills
//! and crashes, each followed by a respawn), and a shutdown, this process has
//! the file descriptors, threads and child processes it had before the pool.
//! Reads `/proc` (Linux).
//!
//! The only scenario in this file, so no other test's threads or descriptors
//! come and go while it counts (`crew_worker_entry` returns at once here).

mod common;

use common::{join, wait_until, worker_processes};
use crew::{Context, StartError, Worker};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    Echo(u64),
    /// Answers the sum of the bytes.
    Sum(serde_bytes::ByteBuf),
    Exit,
}

struct Probe;

impl Worker for Probe {
    type Input = Job;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Probe)
    }

    fn run(&mut self, job: Job, _ctx: &mut Context<'_>) -> Result<u64, String> {
        match job {
            Job::Echo(n) => Ok(n),
            Job::Sum(bytes) => Ok(bytes.iter().map(|&b| u64::from(b)).sum()),
            Job::Exit => std::process::exit(5),
        }
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Probe>().run();
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Processes whose parent is this one.
fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(") ")?.1.to_owned();
                    rest.split(' ').nth(1).map(|ppid| ppid == me)
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn ten_thousand_tasks_and_200_respawns_leave_nothing_behind() {
    if count("/proc/self/fd") == 0 {
        eprintln!("no /proc here; nothing to count");
        return;
    }
    let (fds, threads) = (count("/proc/self/fd"), count("/proc/self/task"));
    assert!(children().is_empty(), "no child before the pool");

    let pool = worker_processes::<Probe>(2).build().unwrap();

    let big = serde_bytes::ByteBuf::from(vec![1u8; 200_000]);
    for round in 0..200u64 {
        let tasks: Vec<_> = (0..50u64)
            .map(|i| {
                let job = if i == 0 {
                    Job::Sum(big.clone())
                } else {
                    Job::Echo(round * 50 + i)
                };
                pool.submit(job).unwrap()
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let expected = if i == 0 {
                200_000
            } else {
                round * 50 + i as u64
            };
            assert_eq!(join(task).unwrap(), expected);
        }
        // A death every round: a kill on even rounds, a crash on odd ones.
        if round % 2 == 0 {
            wait_until("a live worker to kill", || !pool.workers().is_empty());
            let victim = pool.workers()[0];
            pool.kill_worker(victim);
        } else {
            assert!(join(pool.submit(Job::Exit).unwrap())
                .unwrap_err()
                .is_crash());
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    assert_eq!(stats.crashed, 100, "{stats}");
    pool.shutdown();
    drop(pool);

    wait_until("every worker process is reaped", || children().is_empty());
    wait_until("the descriptors are back to the baseline", || {
        count("/proc/self/fd") <= fds
    });
    wait_until("the threads are back to the baseline", || {
        count("/proc/self/task") <= threads
    });
}
