//! The one worker-state rule (`Figures::into_stats` in `stats.rs`), on both
//! backends: a worker that holds a task is `Busy`, and counted in `busy`, even
//! while it is being stopped; a worker that holds none and is leaving is
//! `Stopping`, and not counted. The rows and the counts always agree.
//!
//! The process pools re-run this test binary as their worker program
//! (`crew_worker_entry` below is the worker's `main`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{join, wait_until, worker_processes, LIMIT};
use crew::{Context, Pool, StartError, Stats, Worker, WorkerId, WorkerState};
use serde::{Deserialize, Serialize};

/// Where the thread test's worker `stop` waits (a file gate; `None` in worker
/// processes, whose `stop` returns at once).
static STOP_GATE: Mutex<Option<PathBuf>> = Mutex::new(None);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WaitFor(String);

struct Held;

/// Waits until `path` exists, or `cancelled()`.
fn wait_for_file(path: &Path, cancelled: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + LIMIT;
    while !path.exists() && !cancelled() {
        if Instant::now() > deadline {
            return Err(format!("{} never appeared", path.display()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

impl Worker for Held {
    type Input = WaitFor;
    type Output = ();
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Held)
    }

    fn run(&mut self, job: WaitFor, ctx: &mut Context<'_>) -> Result<(), String> {
        // Cooperative: a killed worker process's task returns, so it can stop
        // and exit before its (long) `kill_grace` is up.
        wait_for_file(Path::new(&job.0), || ctx.is_cancelled())
    }

    fn stop(&mut self, _ctx: &mut Context<'_>) {
        let gate = STOP_GATE.lock().unwrap().clone();
        if let Some(path) = gate {
            let _ = wait_for_file(&path, || false);
        }
    }
}

/// The worker processes' `main`: in a worker it serves and exits; in the test
/// run itself it returns at once.
#[test]
fn crew_worker_entry() {
    crew::bootstrap::<Held>();
}

/// A file whose creation opens a gate; removed on drop.
struct FileGate(PathBuf);

impl FileGate {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("crew-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        FileGate(path)
    }

    fn job(&self) -> WaitFor {
        WaitFor(self.0.to_string_lossy().into_owned())
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

/// The invariant every snapshot keeps: `busy` is the rows in `Busy`.
#[track_caller]
fn assert_rows_agree(stats: &Stats) {
    let busy_rows = stats
        .per_worker
        .iter()
        .filter(|w| w.state == WorkerState::Busy)
        .count();
    assert_eq!(stats.busy, busy_rows, "{stats}");
    assert_eq!(stats.busy + stats.idle, stats.workers, "{stats}");
}

fn row(stats: &Stats, id: WorkerId) -> Option<WorkerState> {
    stats
        .per_worker
        .iter()
        .find(|w| w.id == id)
        .map(|w| w.state)
}

#[test]
fn threads_a_worker_running_its_stop_is_stopping_and_not_busy() {
    let task_gate = FileGate::new("state-threads-task");
    let stop_gate = FileGate::new("state-threads-stop");
    *STOP_GATE.lock().unwrap() = Some(stop_gate.0.clone());
    let pool = Pool::<Held>::builder().workers(1).build().unwrap();
    let task = pool.submit(task_gate.job()).unwrap();
    wait_until("the task runs", || pool.stats().busy == 1);
    let stats = pool.stats();
    let id = stats.per_worker[0].id;
    assert_eq!(row(&stats, id), Some(WorkerState::Busy), "{stats}");
    assert_rows_agree(&stats);

    let closer = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown())
    };
    task_gate.open();
    join(task).unwrap();
    wait_until("the worker runs its stop", || {
        row(&pool.stats(), id) == Some(WorkerState::Stopping)
    });
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.idle), (0, 1), "{stats}");
    assert_rows_agree(&stats);

    stop_gate.open();
    closer.join().unwrap();
    *STOP_GATE.lock().unwrap() = None;
}

/// Freezes a process with SIGSTOP; on drop (also when the test fails) lets it
/// go again with SIGCONT, so the pool can reap it.
struct Frozen(nix::unistd::Pid);

impl Frozen {
    fn new(pid: u32) -> Self {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let stat = format!("/proc/{pid}/stat");
        wait_until("the worker process is stopped", || {
            std::fs::read_to_string(&stat).is_ok_and(|s| {
                // The state follows the parenthesised command name.
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
        });
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn processes_a_killed_worker_still_holding_its_place_is_busy() {
    let task_gate = FileGate::new("state-processes-task");
    // A long grace: the killed worker stays unreaped until the test lets it go.
    let pool = worker_processes::<Held>(1)
        .kill_grace(LIMIT * 2)
        .build()
        .unwrap();
    let task = pool.submit(task_gate.job()).unwrap();
    wait_until("the task runs", || pool.stats().busy == 1);
    let stats = pool.stats();
    let worker = &stats.per_worker[0];
    let (id, pid) = (worker.id, worker.pid.expect("a worker process has a pid"));
    assert_eq!(worker.state, WorkerState::Busy, "{stats}");

    // Frozen, its SIGTERM stays pending: it is being killed and not reaped.
    let frozen = Frozen::new(pid);
    assert!(pool.kill_worker(id));
    assert!(join(task).unwrap_err().is_killed());
    let stats = pool.stats();
    assert_eq!(row(&stats, id), Some(WorkerState::Busy), "{stats}");
    assert!(stats.busy >= 1, "{stats}");
    assert_rows_agree(&stats);

    drop(frozen);
    // `workers()` no longer names it (it is being killed); its row goes when
    // it is reaped.
    assert!(!pool.workers().contains(&id));
    wait_until("the killed worker is reaped", || {
        row(&pool.stats(), id).is_none()
    });
    assert_rows_agree(&pool.stats());
    task_gate.open();
    pool.shutdown();
}

/// A worker that `resize` retires while it runs a task: `workers()` leaves it
/// out at once, its row stays `Busy` (and counted in `busy`) until its task
/// ends, then it goes; the rows and the counts agree all along.
fn a_retiring_worker_is_busy_until_its_task_ends(pool: Pool<Held>, name: &str) {
    let gate = FileGate::new(name);
    let tasks: Vec<_> = (0..2).map(|_| pool.submit(gate.job()).unwrap()).collect();
    wait_until("both tasks run", || pool.stats().busy == 2);
    let before: Vec<WorkerId> = pool.workers();
    pool.resize(1).unwrap();
    let kept = pool.workers();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let leaving = *before.iter().find(|w| !kept.contains(w)).unwrap();
    let stats = pool.stats();
    assert_eq!(row(&stats, leaving), Some(WorkerState::Busy), "{stats}");
    assert_eq!((stats.workers, stats.busy), (2, 2), "{stats}");
    assert_rows_agree(&stats);

    gate.open();
    for task in tasks {
        join(task).unwrap();
    }
    wait_until("the retired worker's row goes", || {
        row(&pool.stats(), leaving).is_none()
    });
    let stats = pool.stats();
    assert_eq!(stats.workers, 1, "{stats}");
    assert_rows_agree(&stats);
    pool.shutdown();
}

#[test]
fn threads_a_retiring_worker_is_busy_until_its_task_ends() {
    let pool = Pool::<Held>::builder().workers(2).build().unwrap();
    a_retiring_worker_is_busy_until_its_task_ends(pool, "state-threads-resize");
}

#[test]
fn processes_a_retiring_worker_is_busy_until_its_task_ends() {
    let pool = worker_processes::<Held>(2).build().unwrap();
    wait_until("both workers are up", || {
        let stats = pool.stats();
        stats.workers == 2 && stats.per_worker.iter().all(|w| w.started)
    });
    a_retiring_worker_is_busy_until_its_task_ends(pool, "state-processes-resize");
}
