//! Deadlines that hold without the worker process's cooperation (DESIGN.md
//! invariant 6), and deaths that are reported as what they are:
//!
//! - a worker stopped (SIGSTOP) right as its task starts, before its batched
//!   *started* went out: the task's timeout still fires, on the pool's clock;
//! - a long queue behind a slow task in one window does not time out the tasks
//!   that never started;
//! - a stopped worker's window does not hold its tasks hostage: they run
//!   elsewhere;
//! - a worker that writes half a frame and goes silent: the partial read has a
//!   deadline, its window's tasks run elsewhere, and `stats` never calls it idle;
//! - a worker killed in the middle of writing its answer is a crash (with its
//!   signal), retried under `retries` and `retry_on_signal`.
#![cfg(all(feature = "process", target_os = "linux"))]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::{join, wait_until, worker_processes};
use crew::{Context, Pool, StartError, Task, Worker, WorkerState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    Echo(u64),
    /// Sleeps this many milliseconds, then answers.
    Sleep(u64),
    /// Stops its own process (SIGSTOP) at once.
    StopSelf,
    /// Writes a frame header promising 1,000 bytes and 3 of them into the
    /// channel, then sleeps for a minute.
    HalfFrame,
    /// If the file does not exist: creates it, writes half of a large frame
    /// into the channel and kills its own process (SIGKILL). Otherwise answers.
    CutOnce(PathBuf),
}

struct Prober;

/// The worker's channel to the pool: the one socket among its descriptors.
fn channel() -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileTypeExt;
    for fd in 3..64 {
        let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        if meta.file_type().is_socket() {
            // SAFETY: the descriptor is open (its /proc entry exists) and is
            // never closed here (ManuallyDrop).
            return std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        }
    }
    panic!("no channel");
}

impl Worker for Prober {
    type Input = Job;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Prober)
    }

    fn run(&mut self, job: Job, _ctx: &mut Context<'_>) -> Result<u64, String> {
        use nix::sys::signal::{raise, Signal};
        match job {
            Job::Echo(n) => Ok(n),
            Job::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(ms)
            }
            Job::StopSelf => {
                raise(Signal::SIGSTOP).unwrap();
                Ok(0)
            }
            Job::HalfFrame => {
                let _ = channel().write_all(&[0xe8, 0x03, 0x00, 0x00, 0x23, 1, 2]);
                std::thread::sleep(Duration::from_secs(60));
                Ok(0)
            }
            Job::CutOnce(path) => {
                if std::fs::File::create_new(&path).is_ok() {
                    let mut frame = vec![0u8; 1 << 16];
                    frame[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
                    frame[4] = 0x23;
                    let _ = channel().write_all(&frame);
                    raise(Signal::SIGKILL).unwrap();
                }
                Ok(7)
            }
        }
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Prober>().run();
}

/// Terminates the pool when dropped, so a failing test leaves no stopped or
/// sleeping worker process behind (terminate kills and reaps them).
struct Reaped(Pool<Prober>);

impl Drop for Reaped {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crew-deadlines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn a_timeout_fires_when_the_worker_stops_as_the_task_starts() {
    let pool = Reaped(worker_processes::<Prober>(1).build().unwrap());
    let stopped = pool
        .0
        .task(Job::StopSelf)
        .timeout(Duration::from_millis(300))
        .submit()
        .unwrap();
    let err = join(stopped).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(join(pool.0.submit(Job::Echo(5)).unwrap()).unwrap(), 5);
}

#[test]
fn tasks_queued_behind_a_slow_task_in_a_window_do_not_time_out() {
    let pool = Reaped(worker_processes::<Prober>(1).window(16).build().unwrap());
    let slow = pool.0.submit(Job::Sleep(600)).unwrap();
    let quick: Vec<Task<u64, String>> = (0..8)
        .map(|n| {
            pool.0
                .task(Job::Echo(n))
                .timeout(Duration::from_millis(300))
                .submit()
                .unwrap()
        })
        .collect();
    assert_eq!(join(slow).unwrap(), 600);
    for (n, task) in quick.into_iter().enumerate() {
        assert_eq!(join(task).unwrap(), n as u64);
    }
}

#[test]
fn a_stopped_workers_window_runs_elsewhere() {
    let pool = Reaped(
        worker_processes::<Prober>(2)
            .window(16)
            .silence_limit(Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    let stopped = pool.0.submit(Job::StopSelf).unwrap();
    let echoes: Vec<Task<u64, String>> = (0..40)
        .map(|n| pool.0.submit(Job::Echo(n)).unwrap())
        .collect();
    for (n, task) in echoes.into_iter().enumerate() {
        assert_eq!(join(task).unwrap(), n as u64);
    }
    assert!(!stopped.is_finished(), "a task without a timeout may wait");
    pool.0.terminate();
    assert!(join(stopped).is_err());
}

#[test]
fn a_half_written_frame_has_a_deadline_and_its_window_runs_elsewhere() {
    let pool = Reaped(
        worker_processes::<Prober>(1)
            .window(16)
            .silence_limit(Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    wait_until("the worker is up", || {
        pool.0
            .stats()
            .per_worker
            .iter()
            .any(|w| w.state == WorkerState::Idle)
    });
    let half = pool.0.submit(Job::HalfFrame).unwrap();
    let echoes: Vec<Task<u64, String>> = (0..5)
        .map(|n| pool.0.submit(Job::Echo(n)).unwrap())
        .collect();
    // While the half frame's task is unresolved its worker is never idle.
    wait_until("the half frame's task resolves", || {
        let stats = pool.0.stats();
        let done = half.is_finished();
        if !done {
            for w in &stats.per_worker {
                assert_ne!(w.state, WorkerState::Idle, "{stats:#?}");
            }
        }
        done
    });
    let err = join(half).unwrap_err();
    assert!(err.is_protocol(), "{err}");
    for (n, task) in echoes.into_iter().enumerate() {
        assert_eq!(join(task).unwrap(), n as u64);
    }
}

#[test]
fn a_worker_killed_while_writing_its_answer_is_a_crash() {
    let pool = Reaped(worker_processes::<Prober>(1).build().unwrap());
    let path = scratch("crash");
    let err = join(pool.0.submit(Job::CutOnce(path.clone())).unwrap()).unwrap_err();
    assert!(err.is_crash(), "{err}");
    assert!(!err.is_protocol(), "{err}");
    assert_eq!(err.crash().unwrap().signal(), Some(9), "{err}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_worker_killed_while_writing_its_answer_is_retried() {
    let pool = Reaped(
        worker_processes::<Prober>(1)
            .retries(1)
            .retry_on_signal(true)
            .build()
            .unwrap(),
    );
    let path = scratch("retry");
    assert_eq!(
        join(pool.0.submit(Job::CutOnce(path.clone())).unwrap()).unwrap(),
        7
    );
    let _ = std::fs::remove_file(path);
}
