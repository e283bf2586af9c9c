//! The process backend end to end: each test's pool re-runs this test binary as
//! its worker program (`crew_worker_entry` below is the worker's `main`).

mod common;

use std::time::Duration;

use common::{wait_until, worker_processes, Rng};
use crew::{Context, Pool, StartError, Worker};
use serde::{Deserialize, Serialize};

/// What a probe task does in the worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    Echo(u64),
    Fail(String),
    Panic(String),
    Exit(i32),
    Abort,
    Segfault,
    Loop,
    /// Prints to stderr, then exits with code 3.
    ScreamAndExit(String),
    Pid,
    Sleep(u64),
    /// Writes junk straight into the channel, then idles.
    Garbage,
    /// Starts a long `sleep` as its own child, prints both pids, and waits.
    Grandchild,
    /// Prints each line to stdout, then returns 0.
    Print(Vec<String>),
    /// Keeps this many more MiB in the worker's state, touched so they count in
    /// its resident memory, and answers the pid.
    Grow(u64),
    /// Answers the sum of the bytes (large ones travel through the payload
    /// arena).
    Blob(serde_bytes::ByteBuf),
    /// Writes into the payload arena's mapping, which is read-only here.
    ScribbleOnArena,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Answer {
    Number(u64),
}

/// A worker with state (its start count), that does what each `Job` says.
struct Probe {
    ran: u64,
    ballast: Vec<Vec<u8>>,
}

impl Worker for Probe {
    type Input = Job;
    type Output = Answer;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Probe {
            ran: 0,
            ballast: Vec::new(),
        })
    }

    fn run(&mut self, job: Job, _ctx: &mut Context<'_>) -> Result<Answer, String> {
        self.ran += 1;
        match job {
            Job::Echo(n) => Ok(Answer::Number(n)),
            Job::Fail(e) => Err(e),
            Job::Panic(m) => panic!("{m}"),
            Job::Exit(code) => std::process::exit(code),
            Job::Abort => std::process::abort(),
            Job::Segfault => {
                // A real invalid write, as native code would make.
                // SAFETY: not safe at all, on purpose: this worker process is
                // meant to die of SIGSEGV, and nothing runs after the write.
                unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u64>(), 1) };
                unreachable!()
            }
            Job::Loop => loop {
                std::hint::spin_loop();
            },
            Job::ScreamAndExit(line) => {
                eprintln!("{line}");
                std::process::exit(3)
            }
            Job::Pid => Ok(Answer::Number(u64::from(std::process::id()))),
            Job::Print(lines) => {
                for line in lines {
                    println!("{line}");
                }
                Ok(Answer::Number(0))
            }
            Job::Blob(bytes) => Ok(Answer::Number(bytes.iter().map(|&b| u64::from(b)).sum())),
            Job::ScribbleOnArena => {
                let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
                let line = maps
                    .lines()
                    .find(|l| l.contains("crew-payloads"))
                    .ok_or("no payload arena is mapped")?;
                let start = line.split('-').next().unwrap();
                let address = usize::from_str_radix(start, 16).map_err(|e| e.to_string())?;
                // SAFETY: not safe: the page is mapped read-only, so this write
                // is meant to kill this worker with SIGSEGV.
                unsafe { std::ptr::write_volatile(address as *mut u8, 1) };
                Err("the payload arena took a write".into())
            }
            Job::Grow(mib) => {
                // Non-zero bytes: every page is written, so it is resident.
                self.ballast.push(vec![7u8; (mib as usize) << 20]);
                Ok(Answer::Number(u64::from(std::process::id())))
            }
            Job::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(Answer::Number(ms))
            }
            Job::Grandchild => {
                let child = std::process::Command::new("sleep")
                    .arg("300")
                    .spawn()
                    .map_err(|e| e.to_string())?;
                println!("PIDS {} {}", std::process::id(), child.id());
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Job::Garbage => {
                use std::io::Write;
                use std::os::fd::FromRawFd;
                // The channel is the only socket the worker holds; find it by
                // writing junk to every descriptor above stderr that is a socket.
                for fd in 3..64 {
                    if let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{fd}")) {
                        use std::os::unix::fs::FileTypeExt;
                        if meta.file_type().is_socket() {
                            // SAFETY: the descriptor is open (its /proc entry
                            // exists) and is never closed here (ManuallyDrop).
                            let mut f = std::mem::ManuallyDrop::new(unsafe {
                                std::fs::File::from_raw_fd(fd)
                            });
                            let _ = f.write_all(b"Hello, this is not a frame");
                        }
                    }
                }
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// A worker whose start always fails.
struct NeverStarts;

impl Worker for NeverStarts {
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Err("the model file is missing".into())
    }

    fn run(&mut self, n: u64, _ctx: &mut Context<'_>) -> Result<u64, String> {
        Ok(n)
    }
}

/// The worker processes' `main`: in a worker it serves and exits; in the test
/// run itself it returns at once.
#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new()
        .worker::<Probe>()
        .worker::<NeverStarts>()
        .run();
}

/// How many workers left for `reason`, over a stream that has ended.
fn exits(events: crew::Events, reason: crew::ExitReason) -> usize {
    events
        .filter(|e| matches!(e, crew::Event::WorkerExited { reason: r, .. } if *r == reason))
        .count()
}

fn echo(pool: &Pool<Probe>, n: u64) -> u64 {
    match pool.submit(Job::Echo(n)).unwrap().join() {
        Ok(Answer::Number(n)) => n,
        Err(e) => panic!("echo failed: {e}"),
    }
}

fn full_size(pool: &Pool<Probe>) {
    wait_until("the pool is back at full size", || {
        pool.stats().per_worker.iter().filter(|w| w.started).count() == pool.size()
            && pool.workers().len() == pool.size()
    });
}

#[test]
fn results_errors_and_panics_cross_the_process_boundary() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    let sum: u64 = tasks
        .into_iter()
        .map(|t| match t.join().unwrap() {
            Answer::Number(n) => n,
        })
        .sum();
    assert_eq!(sum, 999 * 1000 / 2);

    let err = pool
        .submit(Job::Fail("bad input".into()))
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.user_error().map(String::as_str), Some("bad input"));

    let err = pool
        .submit(Job::Panic("kaboom".into()))
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.panic_message(), Some("kaboom"));
    // The payload cannot cross the process boundary: it comes back as the
    // message, a `String`.
    let payload = err.into_panic();
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("kaboom")
    );
    // A panic is not a crash: the process lives on.
    assert_eq!(echo(&pool, 7), 7);
    assert_eq!(pool.stats().crashed, 0);
    pool.shutdown();
}

#[test]
fn each_crash_kind_fails_only_its_task_and_the_pool_recovers() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    type Check = Box<dyn Fn(&crew::TaskError<String>)>;
    let cases: Vec<(Job, Check)> = vec![
        (
            Job::Exit(42),
            Box::new(|e| assert_eq!(e.crash().unwrap().exit_code(), Some(42))),
        ),
        (
            Job::Abort,
            Box::new(|e| assert_eq!(e.crash().unwrap().signal(), Some(6))),
        ),
        (
            Job::Segfault,
            Box::new(|e| assert_eq!(e.crash().unwrap().signal(), Some(11))),
        ),
        (
            Job::ScreamAndExit("native library said no".into()),
            Box::new(|e| {
                let crash = e.crash().unwrap();
                assert_eq!(crash.exit_code(), Some(3));
                assert_eq!(
                    crash.stderr_tail().last().map(String::as_str),
                    Some("native library said no")
                );
            }),
        ),
    ];
    for (job, check) in cases {
        // Work queued behind the crash must survive it.
        let before: Vec<_> = (0..20)
            .map(|i| pool.submit(Job::Echo(i)).unwrap())
            .collect();
        let crash = pool.submit(job.clone()).unwrap();
        let after: Vec<_> = (0..20)
            .map(|i| pool.submit(Job::Echo(100 + i)).unwrap())
            .collect();
        let err = crash.join().unwrap_err();
        assert!(err.is_crash(), "{job:?}: {err}");
        check(&err);
        for (i, t) in before.into_iter().enumerate() {
            assert_eq!(t.join().unwrap(), Answer::Number(i as u64), "{job:?}");
        }
        for (i, t) in after.into_iter().enumerate() {
            assert_eq!(t.join().unwrap(), Answer::Number(100 + i as u64), "{job:?}");
        }
        full_size(&pool);
    }
    assert_eq!(pool.stats().crashed, 4);
    pool.shutdown();
}

#[test]
fn workers_are_separate_processes() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    let pids: std::collections::HashSet<u64> = (0..200)
        .map(|_| pool.submit(Job::Pid).unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| match t.join().unwrap() {
            Answer::Number(pid) => pid,
        })
        .collect();
    assert!(!pids.contains(&u64::from(std::process::id())));
    assert!(!pids.is_empty() && pids.len() <= 2, "{pids:?}");
    pool.shutdown();
}

#[test]
fn a_timeout_kills_an_infinite_loop_and_the_worker_is_replaced() {
    let pool = worker_processes::<Probe>(1).build().unwrap();
    full_size(&pool);
    let before = pool.workers();
    let looping = pool
        .task(Job::Loop)
        .timeout(Duration::from_millis(100))
        .submit()
        .unwrap();
    let queued = pool.submit(Job::Echo(5)).unwrap();
    let err = looping.join().unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(queued.join().unwrap(), Answer::Number(5));
    full_size(&pool);
    assert_ne!(pool.workers(), before, "the looping worker was replaced");
    assert_eq!(pool.stats().timed_out, 1);
    pool.shutdown();
}

/// Waits until the worker said it started a task. (`stats().busy` counts a
/// worker holding a task before its batched *started* arrives, so it does not
/// say the task runs yet.)
#[track_caller]
fn wait_started(events: &crew::Events) {
    common::wait_for_event(events, "TaskStarted", |e| {
        matches!(e, crew::Event::TaskStarted { .. }).then_some(())
    });
}

#[test]
fn cancelling_a_running_task_kills_its_worker() {
    let pool = worker_processes::<Probe>(1).build().unwrap();
    let events = pool.events();
    let looping = pool.submit(Job::Loop).unwrap();
    wait_started(&events);
    assert!(looping.cancel());
    let err = looping.join().unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(echo(&pool, 9), 9);
    pool.shutdown();
    let killed = exits(events, crew::ExitReason::Killed);
    assert_eq!(killed, 1);
}

#[test]
fn cancelling_a_task_waiting_in_a_window_does_not_kill_anyone() {
    let pool = worker_processes::<Probe>(1).build().unwrap();
    full_size(&pool);
    let workers = pool.workers();
    // The loop never ends, so the echo behind it is still waiting, whatever the
    // timing, when it is cancelled.
    let events = pool.events();
    let looping = pool.submit(Job::Loop).unwrap();
    let waiting = pool.submit(Job::Echo(1)).unwrap();
    wait_started(&events);
    assert!(waiting.cancel());
    assert!(waiting.join().unwrap_err().is_cancelled());
    // A kill is decided inside `cancel`; the worker was not chosen for one.
    assert_eq!(pool.workers(), workers);
    assert_eq!(pool.stats().killed, 0);
    // Cancelling the running loop is what kills the worker.
    assert!(looping.cancel());
    assert_eq!(echo(&pool, 2), 2);
    assert_ne!(pool.workers(), workers);
    pool.shutdown();
}

#[test]
fn kill_worker_fails_its_task_as_killed_and_requeues_the_rest() {
    let pool = worker_processes::<Probe>(1).window(8).build().unwrap();
    let looping = pool.submit(Job::Loop).unwrap();
    let behind: Vec<_> = (0..5).map(|i| pool.submit(Job::Echo(i)).unwrap()).collect();
    wait_until("the loop is running", || pool.stats().busy == 1);
    let worker = pool.workers()[0];
    assert!(pool.kill_worker(worker));
    assert!(looping.join().unwrap_err().is_killed());
    for (i, t) in behind.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), Answer::Number(i as u64));
    }
    assert!(!pool.workers().contains(&worker));
    assert!(
        !pool.kill_worker(worker),
        "a dead worker cannot be killed twice"
    );
    pool.shutdown();
}

#[test]
fn retries_run_a_task_again_after_its_worker_exits() {
    let pool = worker_processes::<Probe>(1).retries(2).build().unwrap();
    // Exits every time: it is tried 1 + 2 times, then fails as a crash.
    let err = pool.submit(Job::Exit(7)).unwrap().join().unwrap_err();
    assert_eq!(err.crash().unwrap().exit_code(), Some(7));
    let stats = pool.stats();
    assert_eq!(stats.crashed, 1);
    // A signal is not retried unless asked: one death only.
    let events = pool.events();
    let err = pool.submit(Job::Abort).unwrap().join().unwrap_err();
    assert_eq!(err.crash().unwrap().signal(), Some(6));
    assert_eq!(echo(&pool, 1), 1);
    pool.shutdown();
    let deaths = exits(events, crew::ExitReason::Crashed);
    assert_eq!(deaths, 1);
}

#[test]
fn a_worker_that_cannot_start_is_reported_not_respawned_in_a_loop() {
    let pool = worker_processes::<NeverStarts>(2)
        .start_attempts(3)
        .start_backoff(Duration::from_millis(5))
        .build()
        .unwrap();
    let events = pool.events();
    let err = pool.submit(1).unwrap().join().unwrap_err();
    assert!(err.is_start_failure(), "{err}");
    assert_eq!(err.start_error_message(), Some("the model file is missing"));
    let stats = pool.stats();
    assert!(stats.start_failures >= 3);
    // Tasks submitted while it is broken fail at once, too.
    assert!(pool
        .submit(2)
        .unwrap()
        .join()
        .unwrap_err()
        .is_start_failure());
    pool.shutdown();
    let failed = events
        .filter(|e| matches!(e, crew::Event::WorkerStartFailed { .. }))
        .count();
    assert!(failed >= 3);
}

#[test]
fn a_worker_writing_garbage_fails_with_a_protocol_error_and_is_replaced() {
    let pool = worker_processes::<Probe>(1).build().unwrap();
    let err = pool.submit(Job::Garbage).unwrap().join().unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert_eq!(echo(&pool, 3), 3);
    pool.shutdown();
}

#[test]
fn workers_are_recycled_after_max_tasks() {
    let pool = worker_processes::<Probe>(1)
        .max_tasks_per_worker(10)
        .build()
        .unwrap();
    let events = pool.events();
    let pids: std::collections::HashSet<u64> = (0..40)
        .map(|_| match pool.submit(Job::Pid).unwrap().join().unwrap() {
            Answer::Number(pid) => pid,
        })
        .collect();
    assert!(pids.len() >= 3, "40 tasks at ~10 per worker: {pids:?}");
    pool.shutdown();
    let recycled = exits(events, crew::ExitReason::Recycled);
    assert!(recycled >= 2);
}

#[test]
fn a_worker_above_max_memory_is_recycled_after_its_task() {
    let pool = worker_processes::<Probe>(1)
        .max_memory(200 << 20)
        .build()
        .unwrap();
    let events = pool.events();
    let pid = |job| match pool.submit(job).unwrap().join().unwrap() {
        Answer::Number(pid) => pid,
    };
    // Well below the limit: the same process keeps serving.
    let small = pid(Job::Grow(1));
    assert_eq!(pid(Job::Pid), small);
    // Above it: the task itself succeeds, then its worker is replaced.
    let big = pid(Job::Grow(300));
    assert_eq!(big, small);
    wait_until("the bloated worker is recycled", || pid(Job::Pid) != big);
    wait_until("the bloated worker process is gone", || {
        !std::path::Path::new(&format!("/proc/{big}")).exists()
    });
    pool.shutdown();
    let recycled = exits(events, crew::ExitReason::Recycled);
    assert_eq!(recycled, 1);
}

#[test]
fn output_lines_are_forwarded_with_the_worker_id() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&seen);
    let pool = worker_processes::<Probe>(1)
        .on_output(move |worker, stream, line| {
            if line.starts_with("line ") {
                sink.lock().unwrap().push((worker, stream, line.to_owned()));
            }
        })
        .build()
        .unwrap();
    full_size(&pool);
    let worker = pool.workers()[0];
    let lines: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
    pool.submit(Job::Print(lines.clone()))
        .unwrap()
        .join()
        .unwrap();
    wait_until("all 50 lines arrive", || seen.lock().unwrap().len() == 50);
    let seen = seen.lock().unwrap().clone();
    for ((from, stream, line), expected) in seen.into_iter().zip(&lines) {
        assert_eq!(from, worker);
        assert_eq!(stream, crew::OutputStream::Stdout);
        assert_eq!(&line, expected, "lines arrive whole and in order");
    }
    pool.shutdown();
}

#[test]
fn ten_thousand_tasks_with_random_crashes_each_resolve_once() {
    let seed = std::env::var("CREW_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("random crash mix: CREW_SEED={seed}");
    let mut rng = Rng::new(seed);
    let pool = worker_processes::<Probe>(3).build().unwrap();
    // About 1 task in 200 kills its worker, one of three ways; 1 in 50 fails
    // with its own error.
    let jobs: Vec<Job> = (0..10_000u64)
        .map(|i| match rng.next() % 1000 {
            0 | 1 => Job::Exit(9),
            2 | 3 => Job::Abort,
            4 => Job::Segfault,
            5..=24 => Job::Fail(format!("no {i}")),
            _ => Job::Echo(i),
        })
        .collect();
    let tasks: Vec<_> = jobs
        .iter()
        .map(|job| pool.submit(job.clone()).unwrap())
        .collect();
    let (mut ok, mut failed, mut crashed) = (0u64, 0u64, 0u64);
    for (i, (job, task)) in jobs.iter().zip(tasks).enumerate() {
        let result = task.join();
        match (job, result) {
            (Job::Echo(n), Ok(Answer::Number(m))) if *n == m => ok += 1,
            (Job::Fail(e), Err(err)) if err.user_error() == Some(e) => failed += 1,
            (Job::Exit(9), Err(err)) if err.crash().unwrap().exit_code() == Some(9) => crashed += 1,
            (Job::Abort, Err(err)) if err.crash().unwrap().signal() == Some(6) => crashed += 1,
            (Job::Segfault, Err(err)) if err.crash().unwrap().signal() == Some(11) => crashed += 1,
            (job, result) => panic!("seed {seed}: task {i} ({job:?}) resolved {result:?}"),
        }
    }
    full_size(&pool);
    let stats = pool.stats();
    assert_eq!(stats.submitted, 10_000, "seed {seed}");
    assert_eq!(stats.finished(), 10_000, "seed {seed}: {stats:?}");
    assert_eq!(stats.completed, ok, "seed {seed}");
    assert_eq!(stats.failed, failed, "seed {seed}");
    assert_eq!(stats.crashed, crashed, "seed {seed}");
    assert_eq!(stats.queued + stats.busy, 0, "seed {seed}");
    eprintln!("ok {ok}, failed {failed}, crashed {crashed}");
    pool.shutdown();
}

fn blob(len: usize, seed: u8) -> (Job, u64) {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let sum = bytes.iter().map(|&b| u64::from(b)).sum();
    (Job::Blob(serde_bytes::ByteBuf::from(bytes)), sum)
}

#[test]
fn large_inputs_travel_through_shared_memory_intact() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    // Sizes around the arena threshold (64 KiB) and well above it; several
    // rounds, so blocks are freed and reused.
    let sizes = [1, 65_535, 65_536, 65_537, 300_000, 1 << 20, 3 << 20];
    for round in 0..4u8 {
        let (tasks, sums): (Vec<_>, Vec<_>) = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let (job, sum) = blob(len, round.wrapping_mul(7).wrapping_add(i as u8));
                (pool.submit(job).unwrap(), sum)
            })
            .unzip();
        for ((task, sum), len) in tasks.into_iter().zip(sums).zip(sizes) {
            assert_eq!(task.join().unwrap(), Answer::Number(sum), "{len} bytes");
        }
    }
    pool.shutdown();
}

#[test]
fn large_inputs_queued_behind_a_crash_run_again_intact() {
    let pool = worker_processes::<Probe>(1).window(8).build().unwrap();
    let crash = pool.submit(Job::Abort).unwrap();
    let behind: Vec<_> = (0..6u8)
        .map(|i| {
            let (job, sum) = blob(200_000, i);
            (pool.submit(job).unwrap(), sum)
        })
        .collect();
    assert!(crash.join().unwrap_err().is_crash());
    for (task, sum) in behind {
        assert_eq!(task.join().unwrap(), Answer::Number(sum));
    }
    pool.shutdown();
}

#[test]
fn a_worker_cannot_write_into_the_shared_inputs() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    let (big, sum) = blob(1 << 20, 9);
    let kept = pool.submit(big).unwrap();
    let err = pool
        .submit(Job::ScribbleOnArena)
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.crash().map(|c| c.signal()), Some(Some(11)), "{err}");
    assert_eq!(kept.join().unwrap(), Answer::Number(sum));
    let (big, sum) = blob(1 << 20, 10);
    assert_eq!(
        pool.submit(big).unwrap().join().unwrap(),
        Answer::Number(sum)
    );
    pool.shutdown();
}

#[test]
fn sticky_keys_go_to_the_same_worker() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    full_size(&pool);
    for key in 0..4u64 {
        let pids: std::collections::HashSet<u64> = (0..20)
            .map(|_| pool.task(Job::Pid).key(key).submit().unwrap())
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| match t.join().unwrap() {
                Answer::Number(pid) => pid,
            })
            .collect();
        assert_eq!(pids.len(), 1, "key {key}: {pids:?}");
    }
    pool.shutdown();
}

#[test]
fn shutdown_runs_queued_work_then_reaps_every_worker() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    let pids: Vec<u64> = (0..4)
        .map(|_| match pool.submit(Job::Pid).unwrap().join().unwrap() {
            Answer::Number(p) => p,
        })
        .collect();
    pool.shutdown();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), Answer::Number(i as u64));
    }
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} still exists after shutdown"
        );
    }
    assert!(pool.submit(Job::Echo(1)).unwrap_err().is_closed());
}

#[test]
fn terminate_closes_queued_work_and_cancels_running_work() {
    let pool = worker_processes::<Probe>(1).build().unwrap();
    let events = pool.events();
    let running = pool.submit(Job::Loop).unwrap();
    wait_started(&events);
    let queued: Vec<_> = (0..50)
        .map(|i| pool.submit(Job::Echo(i)).unwrap())
        .collect();
    pool.terminate();
    assert!(running.join().unwrap_err().is_cancelled());
    for t in queued {
        assert!(t.join().unwrap_err().is_closed());
    }
    pool.shutdown();
}

/// Run as a child process by `no_orphans_after_the_parent_is_killed`: a pool of
/// 4 workers, each mid-task with a grandchild, printing their pids.
#[test]
fn crew_orphan_parent() {
    if std::env::var_os("CREW_TEST_ORPHAN_PARENT").is_none() {
        return;
    }
    let pool = worker_processes::<Probe>(4)
        .on_output(|_, _, line| {
            if line.starts_with("PIDS ") {
                println!("{line}");
            }
        })
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..4).map(|_| pool.submit(Job::Grandchild)).collect();
    let _ = tasks;
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
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

#[test]
fn no_orphans_after_the_parent_is_killed() {
    use std::io::BufRead;
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crew_orphan_parent",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("CREW_TEST_ORPHAN_PARENT", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Reap the parent even if an assertion below fails.
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
            if let Some(rest) = line.strip_prefix("PIDS ") {
                let pids: Vec<u32> = rest.split(' ').filter_map(|p| p.parse().ok()).collect();
                let _ = tx.send(pids);
            }
        }
    });
    let mut pids = Vec::new();
    for _ in 0..4 {
        let got = rx
            .recv_timeout(common::LIMIT)
            .expect("each worker reports its pids");
        pids.extend(got);
    }
    assert_eq!(pids.len(), 8);
    assert!(pids.iter().all(|&p| alive(p)));
    // SIGKILL: the parent gets no chance to clean up.
    parent.0.kill().unwrap();
    parent.0.wait().unwrap();
    wait_until("every worker and grandchild is gone", || {
        pids.iter().all(|&p| !alive(p))
    });
}

// ---- `map` on a process pool: chunks (`processes/chunks.rs`) ----------------------

/// Every outcome counter of `stats` added up: each item resolves exactly once.
fn resolved(stats: &crew::Stats) -> u64 {
    stats.completed
        + stats.failed
        + stats.panicked
        + stats.cancelled
        + stats.timed_out
        + stats.killed
        + stats.closed
        + stats.start_failed
        + stats.crashed
}

#[test]
fn map_over_fifty_thousand_items_yields_every_result_in_order() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    let results: Vec<_> = pool.map((0..50_000).map(Job::Echo)).collect();
    assert_eq!(results.len(), 50_000);
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), Answer::Number(i as u64));
    }
    // A bounded window cuts chunks to fit, and keeps the order.
    let mut in_order = pool.map_window((0..3_000).map(Job::Echo), 7);
    let mut seen = 0;
    while let Some(result) = in_order.next() {
        assert!(in_order.in_flight() <= 7);
        assert_eq!(result.unwrap(), Answer::Number(seen));
        seen += 1;
    }
    assert_eq!(seen, 3_000);
    let stats = pool.stats();
    assert_eq!(stats.submitted, 53_000);
    assert_eq!(stats.completed, 53_000);
    assert_eq!(resolved(&stats), stats.submitted);
}

#[test]
fn map_errors_and_panics_come_back_in_their_place() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    let job = |i: u64| match i {
        i if i % 97 == 5 => Job::Fail(format!("bad {i}")),
        i if i % 101 == 7 => Job::Panic(format!("boom {i}")),
        i => Job::Echo(i),
    };
    let (mut failed, mut panicked) = (0, 0);
    for (i, result) in pool.map((0..5_000).map(job)).enumerate() {
        let i = i as u64;
        match job(i) {
            Job::Echo(n) => assert_eq!(result.unwrap(), Answer::Number(n)),
            Job::Fail(message) => {
                failed += 1;
                assert_eq!(result.unwrap_err().user_error(), Some(&message));
            }
            Job::Panic(message) => {
                panicked += 1;
                let error = result.unwrap_err();
                assert!(error.is_panic(), "{error}");
                assert!(error.panic_message().unwrap().contains(&message));
            }
            _ => unreachable!(),
        }
    }
    assert!(failed > 0 && panicked > 0);
    let stats = pool.stats();
    assert_eq!(stats.failed, failed);
    assert_eq!(stats.panicked, panicked);
    assert_eq!(stats.completed, 5_000 - failed - panicked);
    assert_eq!(resolved(&stats), 5_000);
    // The panics rebuilt the workers' state and left the pool whole.
    assert_eq!(echo(&pool, 42), 42);
}

#[test]
fn a_crash_inside_a_chunk_fails_only_the_crashing_item() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    const CRASH_AT: u64 = 3_000;
    let jobs = (0..6_000).map(|i| {
        if i == CRASH_AT {
            Job::Exit(3)
        } else {
            Job::Echo(i)
        }
    });
    for (i, result) in pool.map(jobs).enumerate() {
        let i = i as u64;
        if i == CRASH_AT {
            let error = result.unwrap_err();
            assert!(error.is_crash(), "{error}");
            assert_eq!(error.crash().unwrap().exit_code(), Some(3));
        } else {
            assert_eq!(result.unwrap(), Answer::Number(i), "item {i}");
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.crashed, 1);
    assert_eq!(stats.completed, 5_999);
    assert_eq!(resolved(&stats), stats.submitted);
    assert_eq!(echo(&pool, 7), 7);
}

#[test]
fn dropping_a_map_early_cancels_the_rest_and_the_pool_stays_usable() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    let mut results = pool.map((0..10_000_000).map(Job::Echo));
    for i in 0..10 {
        assert_eq!(results.next().unwrap().unwrap(), Answer::Number(i));
    }
    drop(results);
    wait_until("every item pulled has resolved", || {
        let stats = pool.stats();
        resolved(&stats) == stats.submitted
    });
    let stats = pool.stats();
    assert!(stats.submitted < 10_000_000, "the map stopped pulling");
    assert!(stats.cancelled > 0);
    assert_eq!(echo(&pool, 9), 9);
    assert!(pool.wait_idle_timeout(common::LIMIT));
}

#[test]
fn map_unordered_yields_every_item_once() {
    let pool = worker_processes::<Probe>(2).build().unwrap();
    let mut seen = vec![false; 20_000];
    for (index, result) in pool.map_unordered((0..20_000).map(Job::Echo)) {
        assert_eq!(result.unwrap(), Answer::Number(index as u64));
        assert!(!seen[index], "item {index} came twice");
        seen[index] = true;
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(pool.stats().completed, 20_000);
}

#[test]
fn map_with_a_default_timeout_runs_item_by_item() {
    let pool = worker_processes::<Probe>(2)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let results: Vec<_> = pool
        .map((0..200).map(Job::Echo))
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, (0..200).map(Answer::Number).collect::<Vec<_>>());
}
