//! Observability on the process backend: latency counts, per-worker rows with a
//! live pid and a resident size, the queue wait in task events, and the health
//! watcher. The pools re-run this test binary as their worker program
//! (`crew_worker_entry` below is the worker's `main`).

mod common;

use std::time::{Duration, Instant};

use common::{wait_for_event, wait_until, worker_processes, LIMIT};
use crew::{Context, Event, Health, PoolBuilder, StartError, Worker, WorkerState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    Echo(u64),
    /// Waits until the file at this path exists (a gate across processes).
    WaitFor(String),
}

struct Echo;

impl Worker for Echo {
    type Input = Job;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Echo)
    }

    fn run(&mut self, job: Job, _ctx: &mut Context<'_>) -> Result<u64, String> {
        match job {
            Job::Echo(n) => Ok(n),
            Job::WaitFor(path) => {
                let deadline = Instant::now() + LIMIT;
                while !std::path::Path::new(&path).exists() {
                    if Instant::now() > deadline {
                        return Err("the gate file never appeared".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(0)
            }
        }
    }
}

/// The worker processes' `main`: in a worker it serves and exits; in the test
/// run itself it returns at once.
#[test]
fn crew_worker_entry() {
    crew::bootstrap::<Echo>();
}

fn processes(n: usize) -> PoolBuilder<Echo> {
    worker_processes::<Echo>(n)
}

/// A file whose creation releases `Job::WaitFor` tasks; removed on drop.
struct FileGate(std::path::PathBuf);

impl FileGate {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("crew-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        FileGate(path)
    }

    fn job(&self) -> Job {
        Job::WaitFor(self.0.to_string_lossy().into_owned())
    }

    fn open(&self) {
        std::fs::write(&self.0, b"open").unwrap();
    }
}

impl Drop for FileGate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn process_rows_have_a_live_pid_and_memory_and_counts_add_up() {
    const N: u64 = 300;
    let pool = processes(2).build().unwrap();
    // Both rows must be idle at the end: wait for both starts first (a fast
    // worker could otherwise run all 300 before the other is up).
    wait_until("both workers have started", || {
        pool.stats().per_worker.iter().filter(|w| w.started).count() == 2
    });
    let tasks: Vec<_> = (0..N).map(|i| pool.submit(Job::Echo(i)).unwrap()).collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), i as u64);
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.completed, N, "{stats}");
    for latency in [stats.wait, stats.run] {
        assert_eq!(latency.count, N, "{stats}");
        assert!(latency.p50 <= latency.p90, "{latency:?}");
        assert!(latency.p90 <= latency.p99, "{latency:?}");
        assert!(latency.p99 <= latency.max, "{latency:?}");
    }
    assert_eq!(stats.per_worker.len(), 2, "{stats}");
    let done: u64 = stats.per_worker.iter().map(|w| w.tasks_done).sum();
    assert_eq!(done, N, "{stats}");
    let ran: u64 = stats.per_worker.iter().map(|w| w.run.count).sum();
    assert_eq!(ran, N, "{stats}");
    for row in &stats.per_worker {
        let pid = row.pid.expect("a process row has a pid");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker process {pid} is alive"
        );
        assert!(row.rss_bytes.is_some_and(|rss| rss > 0), "{stats}");
        assert_eq!(row.state, WorkerState::Idle, "{stats}");
    }
    let table = stats.to_string();
    assert!(table.contains("pid") && table.contains("rss"), "{table}");
    let rows = table.lines().filter(|l| l.starts_with("worker-")).count();
    assert_eq!(rows, 2, "{table}");
    pool.shutdown();
}

#[test]
fn process_events_carry_the_wait_and_a_backlog_is_reported() {
    let gate = FileGate::new("backlog");
    let pool = processes(1)
        .window(1)
        .health(
            Health::new()
                .backlog_threshold(3)
                .backlog_for(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    let events = pool.events();
    let blocker = pool.submit(gate.job()).unwrap();
    wait_until("the blocker runs", || pool.stats().busy == 1);
    let queued: Vec<_> = (0..10)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    let (depth, workers) = wait_for_event(&events, "Event::Backlog", |e| match e {
        Event::Backlog {
            queued, workers, ..
        } => Some((queued, workers)),
        _ => None,
    });
    assert!(depth > 3, "{depth}");
    assert_eq!(workers, 1);
    gate.open();
    let last = queued.last().unwrap().id();
    assert_eq!(blocker.join_timeout(LIMIT).unwrap().unwrap(), 0);
    for task in queued {
        task.join_timeout(LIMIT).unwrap().unwrap();
    }
    // Both events of a task carry its wait (no figure is asserted: a test never
    // asserts a duration).
    let _started = wait_for_event(&events, "the last TaskStarted", |e| match e {
        Event::TaskStarted { task, waited, .. } if task == last => Some(waited),
        _ => None,
    });
    let _finished = wait_for_event(&events, "the last TaskFinished", |e| match e {
        Event::TaskFinished { task, waited, .. } if task == last => Some(waited),
        _ => None,
    });
    pool.shutdown();
}
