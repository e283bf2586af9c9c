//! Fault-injection soak on the process backend: a seeded mix of tasks that
//! succeed, return errors, panic, are cancelled before or while running (a
//! running task's cancel sends its worker SIGTERM: the task sees
//! `is_cancelled` and returns, and the worker ends itself without answering),
//! time out while ignoring the cancellation (a hard kill at `kill_grace`), or
//! kill their own worker process (exit, abort, segfault), stop it (SIGSTOP)
//! under a timeout, write half a frame and go silent, or die in the middle of
//! writing a frame, while a chaos thread kills workers and stops and continues
//! them (SIGSTOP, SIGCONT). Every handle must resolve exactly once, with an outcome the
//! injected fault allows; the stats must reconcile with what was submitted; and
//! the pool must end at its size.
//!
//! `CREW_SOAK_TASKS` (default 20,000) and `CREW_SOAK_SEED` replay a run; the seed
//! is printed on failure. Process pools have a fixed size, so unlike the thread
//! soak nothing resizes the pool.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, worker_processes, Rng, LIMIT};
use crew::{Context, StartError, Task, TaskError, Worker};
use serde::{Deserialize, Serialize};

/// The fault a task carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Fault {
    /// Returns `Ok(id)`.
    None,
    /// Returns the worker's own error, `Err(id)`.
    UserError,
    /// Panics with a message naming the id.
    Panic,
    /// Cancelled right after submission (it may or may not have started).
    CancelEarly,
    /// Runs until it sees `is_cancelled` (its worker got SIGTERM), then returns
    /// so the worker stops itself; the test cancels it once it has started.
    CancelRunning,
    /// Spins far past a short timeout, ignoring the cancellation: only the
    /// SIGKILL after `kill_grace` ends it.
    TimeOut,
    /// `exit(9)`.
    Exit,
    /// `abort()`.
    Abort,
    /// A write through a null pointer.
    Segfault,
    /// Stops its own process (SIGSTOP), under a short timeout: it times out on
    /// the pool's clock (or answers, if the chaos thread continues it first).
    StopSelf,
    /// Writes a frame header promising 1,000 bytes and 3 of them, then waits:
    /// a protocol error once the partial read's deadline passes.
    HalfFrame,
    /// Writes half of a large frame and kills its own process (SIGKILL): a
    /// crash by signal 9, not a protocol error.
    CutFrame,
}

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

struct Soak;

impl Worker for Soak {
    type Input = (u64, Fault);
    type Output = u64;
    type Error = u64;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Soak)
    }

    fn run(&mut self, (id, fault): (u64, Fault), ctx: &mut Context<'_>) -> Result<u64, u64> {
        match fault {
            Fault::None | Fault::CancelEarly => Ok(id),
            Fault::UserError => Err(id),
            Fault::Panic => panic!("injected panic in task {id}"),
            Fault::CancelRunning | Fault::TimeOut => {
                // Only a kill ends it (or a generous bound, so a lost kill shows
                // up as a wrong outcome, not a hang).
                let cooperative = fault == Fault::CancelRunning;
                let deadline = std::time::Instant::now() + LIMIT;
                while std::time::Instant::now() < deadline {
                    if cooperative && ctx.is_cancelled() {
                        // Whatever it returns, the cancel decided its outcome.
                        return Ok(id);
                    }
                    std::hint::spin_loop();
                }
                Ok(id)
            }
            Fault::StopSelf => {
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP).unwrap();
                Ok(id)
            }
            Fault::HalfFrame => {
                use std::io::Write;
                let _ = channel().write_all(&[0xe8, 0x03, 0x00, 0x00, 0x23, 1, 2]);
                std::thread::sleep(LIMIT);
                Ok(id)
            }
            Fault::CutFrame => {
                use std::io::Write;
                let mut frame = vec![0u8; 1 << 16];
                frame[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
                frame[4] = 0x23;
                let _ = channel().write_all(&frame);
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
                unreachable!()
            }
            Fault::Exit => std::process::exit(9),
            Fault::Abort => std::process::abort(),
            Fault::Segfault => {
                // SAFETY: not safe, on purpose: this worker process is meant to
                // die of SIGSEGV.
                unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u64>(), 1) };
                unreachable!()
            }
        }
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Soak>().run();
}

/// Whether `result` is an outcome that `fault` allows. A kill can hit any task
/// that was running (the chaos thread kills workers at random), so `Killed` is
/// allowed for every fault; `cancelled` says whether this test's `cancel()` call
/// reported that it resolved the task.
fn allowed(id: u64, fault: Fault, cancelled: bool, result: &Result<u64, TaskError<u64>>) -> bool {
    if let Err(e) = result {
        if e.is_killed() {
            return !cancelled;
        }
        // A worker stopped longer than `silence_limit` while another waited
        // for its unstarted tasks is killed, and the task it ran is a crash
        // that says so.
        let silenced = e.crash().is_some_and(|c| {
            c.signal() == Some(9) && c.stderr_tail().iter().any(|l| l.contains("did not answer"))
        });
        if silenced && !cancelled {
            return true;
        }
    }
    if cancelled {
        return matches!(result, Err(e) if e.is_cancelled());
    }
    match (fault, result) {
        (Fault::None | Fault::CancelEarly, Ok(v)) => *v == id,
        (Fault::UserError, Err(e)) => e.user_error() == Some(&id),
        (Fault::Panic, Err(e)) => e
            .panic_message()
            .is_some_and(|m| m == format!("injected panic in task {id}")),
        (Fault::TimeOut, Err(e)) => e.is_timeout(),
        (Fault::Exit, Err(e)) => e.crash().is_some_and(|c| c.exit_code() == Some(9)),
        (Fault::Abort, Err(e)) => e.crash().is_some_and(|c| c.signal() == Some(6)),
        (Fault::Segfault, Err(e)) => e.crash().is_some_and(|c| c.signal() == Some(11)),
        (Fault::StopSelf, Ok(v)) => *v == id,
        (Fault::StopSelf, Err(e)) => e.is_timeout(),
        (Fault::HalfFrame, Err(e)) => e.is_protocol(),
        (Fault::CutFrame, Err(e)) => e.crash().is_some_and(|c| c.signal() == Some(9)),
        _ => false,
    }
}

#[test]
fn every_task_resolves_once_with_the_outcome_its_fault_implies() {
    if std::env::var_os("CREW_WORKER_FD").is_some() {
        return;
    }
    let tasks: u64 = std::env::var("CREW_SOAK_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("CREW_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("soak: {tasks} tasks, CREW_SOAK_SEED={seed}");
    let result = std::panic::catch_unwind(|| soak(tasks, seed));
    if let Err(panic) = result {
        eprintln!("soak FAILED; replay with CREW_SOAK_SEED={seed} CREW_SOAK_TASKS={tasks}");
        std::panic::resume_unwind(panic);
    }
}

fn soak(tasks: u64, seed: u64) {
    const WORKERS: usize = 3;
    // Short: a task that ignores its kill (`TimeOut`) spins through the whole
    // grace, on cores the other workers need.
    let pool = worker_processes::<Soak>(WORKERS)
        .kill_grace(Duration::from_millis(25))
        .silence_limit(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut rng = Rng::new(seed);

    // The chaos thread kills a random live worker now and then, and stops and
    // continues one, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let stops = Arc::new(AtomicUsize::new(0));
    let chaos = {
        let (pool, stop, kills) = (pool.clone(), Arc::clone(&stop), Arc::clone(&kills));
        let stops = Arc::clone(&stops);
        let mut rng = Rng::new(seed.rotate_left(17));
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                // Pacing only: no assertion depends on how many kills happen.
                std::thread::sleep(Duration::from_millis(20));
                if rng.below(2) == 0 {
                    if let Some(pid) = pick_worker_pid(&pool, &mut rng) {
                        use nix::sys::signal::{kill, Signal};
                        let pid = nix::unistd::Pid::from_raw(pid);
                        if kill(pid, Signal::SIGSTOP).is_ok() {
                            stops.fetch_add(1, SeqCst);
                            // Pacing only: how long the worker stays stopped.
                            std::thread::sleep(Duration::from_millis(rng.below(15)));
                            let _ = kill(pid, Signal::SIGCONT);
                        }
                    }
                    continue;
                }
                let workers = pool.workers();
                if !workers.is_empty() {
                    let victim = workers[rng.below(workers.len() as u64) as usize];
                    if pool.kill_worker(victim) {
                        kills.fetch_add(1, SeqCst);
                    }
                }
            }
        })
    };

    let mut handles: Vec<(u64, Fault, bool, Task<u64, u64>)> = Vec::with_capacity(tasks as usize);
    let mut running_to_cancel: Vec<usize> = Vec::new();
    for id in 0..tasks {
        let fault = match rng.below(1000) {
            0..=863 => Fault::None,
            864..=865 => Fault::StopSelf,
            866..=867 => Fault::HalfFrame,
            868..=869 => Fault::CutFrame,
            870..=919 => Fault::UserError,
            920..=959 => Fault::Panic,
            960..=984 => Fault::CancelEarly,
            985..=989 => Fault::TimeOut,
            990..=993 => Fault::CancelRunning,
            994..=995 => Fault::Exit,
            996..=997 => Fault::Abort,
            _ => Fault::Segfault,
        };
        let task = match fault {
            Fault::StopSelf => pool
                .task((id, fault))
                .timeout(Duration::from_millis(50))
                .submit(),
            Fault::TimeOut => pool
                .task((id, fault))
                .timeout(Duration::from_millis(5))
                .submit(),
            _ => pool.submit((id, fault)),
        }
        .expect("the pool is open");
        let cancelled = fault == Fault::CancelEarly && task.cancel();
        if fault == Fault::CancelRunning {
            running_to_cancel.push(handles.len());
        }
        handles.push((id, fault, cancelled, task));
        if id % 500 == 499 {
            cancel_started(&mut handles, &mut running_to_cancel);
        }
    }
    cancel_started(&mut handles, &mut running_to_cancel);

    let mut seen = std::collections::HashMap::<&'static str, u64>::new();
    for (id, fault, cancelled, task) in handles {
        let result = match task.join_timeout(LIMIT) {
            Ok(r) => r,
            Err(_) => panic!("task {id} ({fault:?}) did not resolve"),
        };
        assert!(
            allowed(id, fault, cancelled, &result),
            "task {id}: fault {fault:?}, cancel won {cancelled}, got {result:?}"
        );
        let kind = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_user() => "err",
            Err(e) if e.is_panic() => "panic",
            Err(e) if e.is_cancelled() => "cancelled",
            Err(e) if e.is_timeout() => "timed out",
            Err(e) if e.is_killed() => "killed",
            Err(e) if e.is_crash() => "crashed",
            Err(e) if e.is_protocol() => "protocol",
            Err(e) => panic!("task {id}: unexpected {e:?}"),
        };
        *seen.entry(kind).or_default() += 1;
    }
    stop.store(true, SeqCst);
    chaos.join().unwrap();
    eprintln!(
        "soak: outcomes {seen:?}, workers killed {}, stopped and continued {}",
        kills.load(SeqCst),
        stops.load(SeqCst)
    );

    assert!(pool.wait_idle_timeout(LIMIT), "{}", pool.stats());
    let stats = pool.stats();
    let count = |k: &str| seen.get(k).copied().unwrap_or(0);
    assert_eq!(stats.submitted, tasks, "{stats}");
    assert_eq!(stats.finished(), tasks, "{stats}");
    assert_eq!(stats.completed, count("ok"), "{stats}");
    assert_eq!(stats.failed, count("err"), "{stats}");
    assert_eq!(stats.panicked, count("panic"), "{stats}");
    assert_eq!(stats.cancelled, count("cancelled"), "{stats}");
    assert_eq!(stats.timed_out, count("timed out"), "{stats}");
    assert_eq!(stats.killed, count("killed"), "{stats}");
    assert_eq!(
        stats.crashed,
        count("crashed") + count("protocol"),
        "{stats}"
    );
    assert!(count("panic") > 0 && count("timed out") > 0 && count("crashed") > 0);

    wait_until("the pool is back to its size", || {
        pool.stats().per_worker.iter().filter(|w| w.started).count() == WORKERS
    });
    pool.shutdown_timeout(LIMIT).expect("the pool drains");
}

/// Cancels each `CancelRunning` task once it has started (or finished).
fn cancel_started(handles: &mut [(u64, Fault, bool, Task<u64, u64>)], pending: &mut Vec<usize>) {
    for &at in pending.iter() {
        let (_, _, cancelled, task) = &mut handles[at];
        wait_until("the task started", || {
            task.worker().is_some() || task.is_finished()
        });
        *cancelled = task.cancel();
    }
    pending.clear();
}

/// The pid of a random live worker process of `pool`, checked to still be one
/// of this test binary's worker processes just before it is signalled (a pid
/// read from `stats` could have been reaped and reused since).
fn pick_worker_pid(pool: &crew::Pool<Soak>, rng: &mut Rng) -> Option<i32> {
    let pids: Vec<u32> = pool
        .stats()
        .per_worker
        .iter()
        .filter_map(|w| w.pid)
        .collect();
    if pids.is_empty() {
        return None;
    }
    let pid = pids[rng.below(pids.len() as u64) as usize];
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == b"crew_worker_entry");
    ours.then(|| i32::try_from(pid).ok()).flatten()
}
