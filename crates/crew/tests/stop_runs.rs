//! When `Worker::stop` runs, counted across every way a worker ends, on both
//! backends (`Worker::stop`'s rustdoc, `processes/worker_stop.rs`).
//!
//! `stop` appends a line to a log file the worker learns from its first task
//! (`Job::Log`), so the count survives a worker process. Each scenario waits
//! for the worker to be gone (its `WorkerExited`, sent once it is reaped) or
//! for the count itself, never for time.
//!
//! | how the worker ends | processes | threads |
//! |---|---|---|
//! | shutdown | stop | stop |
//! | cancel / timeout of a running task that checks `is_cancelled` | the worker is killed; stop | the worker lives on; no stop |
//! | `kill_worker`, busy (cooperative task) or idle | stop | stop, once the task returns |
//! | `terminate` with a cooperative task running | stop | stop |
//! | a task that ignores the cancellation | SIGKILL at `kill_grace`; no stop | stop once it returns |
//! | a panic | stop, then start | stop, then start |
//! | a crash (`abort`) | no stop | (ends the pool's process) |
//! | the pool's process killed | stop (the worker's own watchdog bounds it) | — |

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{join, wait_for_event, wait_until, worker_processes, LIMIT};
use crew::{Context, Event, Events, ExitReason, Pool, StartError, Worker, WorkerId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    /// `stop` logs to this file from now on. Answers the process id.
    Log(String),
    /// Runs until cancelled (`Context::is_cancelled`), at most [`LIMIT`].
    UntilCancelled,
    /// Ignores cancellation: runs until this file exists, at most [`LIMIT`].
    UntilFile(String),
    Panic,
    Abort,
}

/// A worker whose `stop` appends one line to its log.
struct Cleaner {
    log: Option<String>,
}

impl Worker for Cleaner {
    type Input = Job;
    type Output = u32;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Cleaner { log: None })
    }

    fn run(&mut self, job: Job, ctx: &mut Context<'_>) -> Result<u32, String> {
        let deadline = Instant::now() + LIMIT;
        match job {
            Job::Log(path) => {
                self.log = Some(path);
                Ok(std::process::id())
            }
            Job::UntilCancelled => {
                while !ctx.is_cancelled() {
                    if Instant::now() > deadline {
                        return Err("never cancelled".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(0)
            }
            Job::UntilFile(path) => {
                while !std::path::Path::new(&path).exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(0)
            }
            Job::Panic => panic!("asked to panic"),
            Job::Abort => std::process::abort(),
        }
    }

    fn stop(&mut self, _ctx: &mut Context<'_>) {
        if let Some(path) = &self.log {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            // One short write with O_APPEND: lines from several processes never mix.
            file.write_all(format!("stop {}\n", std::process::id()).as_bytes())
                .unwrap();
        }
    }
}

#[test]
fn crew_worker_entry() {
    crew::bootstrap::<Cleaner>();
}

/// A file in the temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("crew-stop-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Scratch(path)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// How many times `stop` ran with this log.
    fn stops(&self) -> usize {
        std::fs::read_to_string(&self.0).map_or(0, |s| s.lines().count())
    }

    fn create(&self) {
        std::fs::write(&self.0, b"open").unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One worker, on processes or threads, whose `stop` logs to `log`.
struct One {
    pool: Pool<Cleaner>,
    events: Events,
    log: Scratch,
}

impl One {
    fn processes(name: &str, kill_grace: Duration) -> Self {
        let pool = worker_processes::<Cleaner>(1)
            .kill_grace(kill_grace)
            .build()
            .unwrap();
        One::with(pool, name)
    }

    fn threads(name: &str) -> Self {
        // A cooperative task that times out keeps its thread however slowly
        // this machine runs it.
        let pool = Pool::<Cleaner>::builder()
            .workers(1)
            .abandon_grace(LIMIT)
            .build()
            .unwrap();
        One::with(pool, &format!("threads-{name}"))
    }

    fn with(pool: Pool<Cleaner>, name: &str) -> Self {
        let events = pool.events();
        let log = Scratch::new(name);
        join(pool.submit(Job::Log(log.path())).unwrap()).unwrap();
        One { pool, events, log }
    }

    /// Submits `job` and waits until it runs; answers its worker.
    fn running(&self, job: Job) -> (crew::Task<u32, String>, WorkerId) {
        let task = self.pool.submit(job).unwrap();
        wait_until("the task runs", || task.worker().is_some());
        let worker = task.worker().unwrap();
        (task, worker)
    }

    /// Waits until `worker` is gone (reaped, for a process) and answers why.
    fn exit_of(&self, worker: WorkerId) -> ExitReason {
        wait_for_event(&self.events, "the worker's exit", |e| match e {
            Event::WorkerExited {
                worker: w, reason, ..
            } if w == worker => Some(reason),
            _ => None,
        })
    }
}

impl Drop for One {
    fn drop(&mut self) {
        // Reaps every worker process even when an assertion failed.
        self.pool.terminate();
    }
}

/// A kill a worker process survives long enough to clean up: this grace is far
/// longer than a cooperative task takes to return, and shorter than [`LIMIT`],
/// so a `stop` that did not run shows as a count of 0, not as a hang.
const LONG_GRACE: Duration = Duration::from_secs(5);

// ---- processes --------------------------------------------------------------

#[test]
fn processes_stop_runs_at_shutdown() {
    let one = One::processes("shutdown", LONG_GRACE);
    let worker = one.pool.workers()[0];
    one.pool.shutdown();
    assert_eq!(one.exit_of(worker), ExitReason::Shutdown);
    assert_eq!(one.log.stops(), 1);
}

#[test]
fn processes_stop_runs_after_a_cancel_of_a_cooperative_task() {
    let one = One::processes("cancel", LONG_GRACE);
    let (task, worker) = one.running(Job::UntilCancelled);
    assert!(task.cancel());
    assert!(join(task).unwrap_err().is_cancelled());
    assert_eq!(one.exit_of(worker), ExitReason::Killed);
    assert_eq!(one.log.stops(), 1, "the task saw the cancel, then stop ran");
}

#[test]
fn processes_stop_runs_after_a_timeout_of_a_cooperative_task() {
    let one = One::processes("timeout", LONG_GRACE);
    let worker = one.pool.workers()[0];
    let task = one
        .pool
        .task(Job::UntilCancelled)
        .timeout(Duration::from_millis(100))
        .submit()
        .unwrap();
    assert!(join(task).unwrap_err().is_timeout());
    assert_eq!(one.exit_of(worker), ExitReason::Killed);
    assert_eq!(one.log.stops(), 1);
}

#[test]
fn processes_stop_runs_after_kill_worker_busy_or_idle() {
    let one = One::processes("kill", LONG_GRACE);
    let (task, busy) = one.running(Job::UntilCancelled);
    assert!(one.pool.kill_worker(busy));
    assert!(join(task).unwrap_err().is_killed());
    assert_eq!(one.exit_of(busy), ExitReason::Killed);
    assert_eq!(one.log.stops(), 1, "busy");

    // The replacement, idle (blocked reading its channel) when killed.
    wait_until("a replacement joins", || one.pool.workers().len() == 1);
    join(one.pool.submit(Job::Log(one.log.path())).unwrap()).unwrap();
    let idle = one.pool.workers()[0];
    assert!(one.pool.kill_worker(idle));
    assert_eq!(one.exit_of(idle), ExitReason::Killed);
    assert_eq!(one.log.stops(), 2, "idle");
}

#[test]
fn processes_stop_runs_on_terminate() {
    let one = One::processes("terminate", LONG_GRACE);
    let (task, worker) = one.running(Job::UntilCancelled);
    one.pool.terminate();
    assert!(join(task).unwrap_err().is_cancelled());
    assert_eq!(one.exit_of(worker), ExitReason::Shutdown);
    assert_eq!(one.log.stops(), 1);
}

#[test]
fn processes_stop_does_not_run_when_the_task_ignores_the_kill() {
    let gate = Scratch::new("ignored-gate");
    let one = One::processes("ignored", Duration::from_millis(200));
    let (task, worker) = one.running(Job::UntilFile(gate.path()));
    assert!(task.cancel());
    // SIGKILL at `kill_grace`, with the task still running: no `stop`.
    assert_eq!(one.exit_of(worker), ExitReason::Killed);
    assert_eq!(one.log.stops(), 0);
}

#[test]
fn processes_stop_runs_after_a_panic_and_not_after_a_crash() {
    let one = One::processes("crash", LONG_GRACE);
    // A panic rebuilds the state: `stop`, then `start`, before the answer.
    assert!(join(one.pool.submit(Job::Panic).unwrap())
        .unwrap_err()
        .is_panic());
    assert_eq!(one.log.stops(), 1, "the panicked state was stopped");
    join(one.pool.submit(Job::Log(one.log.path())).unwrap()).unwrap();

    let (task, worker) = (one.pool.submit(Job::Abort).unwrap(), one.pool.workers()[0]);
    assert!(join(task).unwrap_err().is_crash());
    assert_eq!(one.exit_of(worker), ExitReason::Crashed);
    assert_eq!(one.log.stops(), 1, "a crash runs no stop");
}

/// Run as a child process by
/// `processes_stop_runs_when_the_pool_process_is_killed`: a pool whose one
/// worker logs its `stop` and runs a cooperative task; prints `READY <pid>`.
#[test]
fn crew_stop_parent() {
    let Ok(log) = std::env::var("CREW_TEST_STOP_LOG") else {
        return;
    };
    let pool = worker_processes::<Cleaner>(1)
        .kill_grace(LONG_GRACE)
        .build()
        .unwrap();
    let pid = join(pool.submit(Job::Log(log)).unwrap()).unwrap();
    let task = pool.submit(Job::UntilCancelled).unwrap();
    wait_until("the task runs", || task.worker().is_some());
    println!("READY {pid}");
    std::thread::sleep(LIMIT);
}

#[test]
fn processes_stop_runs_when_the_pool_process_is_killed() {
    use std::io::BufRead;
    let log = Scratch::new("orphaned");
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crew_stop_parent",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("CREW_TEST_STOP_LOG", log.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = parent.stdout.take().unwrap();
    let mut parent = Reap(parent);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(pid) = line.strip_prefix("READY ") {
                let _ = tx.send(pid.parse::<u32>().unwrap());
            }
        }
    });
    let worker = rx.recv_timeout(LIMIT).expect("the pool's process is ready");
    // SIGKILL: the pool gets no chance to do anything; the worker hears of it
    // (PR_SET_PDEATHSIG, the end of its channel) and cleans up by itself.
    parent.0.kill().unwrap();
    parent.0.wait().unwrap();
    wait_until("the orphaned worker ran its stop", || log.stops() == 1);
    wait_until("the orphaned worker is gone", || !alive(worker));
}

fn alive(pid: u32) -> bool {
    // A zombie is dead, only not yet reaped by whoever inherited it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

// ---- threads ----------------------------------------------------------------

#[test]
fn threads_stop_runs_at_shutdown() {
    let one = One::threads("shutdown");
    one.pool.shutdown();
    assert_eq!(one.log.stops(), 1);
}

#[test]
fn threads_a_cancel_or_timeout_keeps_the_worker_and_runs_no_stop() {
    let one = One::threads("cancel");
    let (task, worker) = one.running(Job::UntilCancelled);
    assert!(task.cancel());
    assert!(join(task).unwrap_err().is_cancelled());
    let timed = one
        .pool
        .task(Job::UntilCancelled)
        .timeout(Duration::from_millis(50))
        .submit()
        .unwrap();
    assert!(join(timed).unwrap_err().is_timeout());
    // The same worker, with the same state, runs the next task: it was neither
    // stopped nor replaced.
    assert_eq!(
        join(one.pool.submit(Job::Log(one.log.path())).unwrap()).unwrap(),
        std::process::id()
    );
    assert_eq!(one.pool.workers(), vec![worker]);
    assert_eq!(one.log.stops(), 0);
    one.pool.shutdown();
    assert_eq!(one.log.stops(), 1);
}

#[test]
fn threads_stop_runs_after_kill_worker_once_the_task_returns() {
    let gate = Scratch::new("threads-kill-gate");
    let one = One::threads("kill");
    let (task, worker) = one.running(Job::UntilFile(gate.path()));
    assert!(one.pool.kill_worker(worker));
    assert!(join(task).unwrap_err().is_killed());
    assert_eq!(one.exit_of(worker), ExitReason::Killed);
    // The task ignores the kill and still runs (its gate is shut): a thread
    // cannot be stopped, so neither can its state.
    assert_eq!(one.log.stops(), 0);
    gate.create();
    wait_until("the abandoned thread stops its state", || {
        one.log.stops() == 1
    });
}

#[test]
fn threads_stop_runs_on_terminate_and_after_a_panic() {
    let one = One::threads("terminate");
    assert!(join(one.pool.submit(Job::Panic).unwrap())
        .unwrap_err()
        .is_panic());
    wait_until("the panicked state is stopped", || one.log.stops() == 1);
    join(one.pool.submit(Job::Log(one.log.path())).unwrap()).unwrap();
    let (task, _) = one.running(Job::UntilCancelled);
    one.pool.terminate();
    assert!(join(task).unwrap_err().is_cancelled());
    wait_until("the worker stops its state", || one.log.stops() == 2);
}
