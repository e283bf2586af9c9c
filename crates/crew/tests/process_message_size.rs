//! A process pool's `max_message_size`: the largest input, result and frame a
//! worker's channel carries (issue: outputs over a fixed 64 MiB failed as a
//! panic, with no setting).
//!
//! - a result over the limit resolves `is_too_large` (not a panic), with both
//!   sizes in its message, and the same worker runs the next task;
//! - an input over the limit is refused by `submit` with its input back, and
//!   `map` / `feed` resolve that item alone as `is_too_large`;
//! - `build` refuses a limit out of range;
//! - a worker that announces a frame longer than the limit is a protocol fault
//!   at once, before the pool waits for (or allocates) the rest;
//! - the default limit is still 64 MiB.
#![cfg(all(feature = "process", target_os = "linux"))]

mod common;

use common::{join, worker_processes};
use crew::{Context, Pool, StartError, Worker};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    /// Returns this many bytes.
    Output(u32),
    /// Returns the worker's own error, this many bytes long.
    Fail(u32),
    /// Returns its input.
    Echo(ByteBuf),
    /// Returns the last sticky message this worker received (empty if none).
    Sticky,
    /// Writes a frame header claiming this length (and a *done* kind byte)
    /// straight into the channel, then waits to be killed.
    Lie(u32),
}

struct Sizes {
    sticky: ByteBuf,
}

impl Worker for Sizes {
    type Input = Job;
    type Output = ByteBuf;
    type Error = String;
    type Message = ByteBuf;

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Sizes {
            sticky: ByteBuf::new(),
        })
    }

    fn on_message(&mut self, message: ByteBuf, _ctx: &mut Context<'_>) {
        self.sticky = message;
    }

    fn run(&mut self, job: Job, _ctx: &mut Context<'_>) -> Result<ByteBuf, String> {
        match job {
            Job::Output(len) => Ok(ByteBuf::from(vec![7; len as usize])),
            Job::Fail(len) => Err("e".repeat(len as usize)),
            Job::Echo(bytes) => Ok(bytes),
            Job::Sticky => Ok(self.sticky.clone()),
            Job::Lie(len) => {
                use std::io::Write;
                use std::os::fd::FromRawFd;
                use std::os::unix::fs::FileTypeExt;
                let mut header = len.to_le_bytes().to_vec();
                header.push(0x23);
                for fd in 3..64 {
                    let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
                        continue;
                    };
                    if meta.file_type().is_socket() {
                        // SAFETY: the descriptor is open (its /proc entry exists)
                        // and is never closed here (ManuallyDrop).
                        let mut channel =
                            std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
                        let _ = channel.write_all(&header);
                    }
                }
                // The pool kills this process; the bound only keeps a broken
                // test from leaving it behind for long.
                std::thread::sleep(std::time::Duration::from_secs(30));
                std::process::exit(0)
            }
        }
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Sizes>().run();
}

/// Terminates the pool when dropped, so a failing test leaves no worker behind.
struct Reaped(Pool<Sizes>);

impl Drop for Reaped {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

const LIMIT: u64 = 16 << 10;

fn small_pool() -> Reaped {
    Reaped(
        worker_processes::<Sizes>(1)
            .max_message_size(LIMIT)
            .build()
            .unwrap(),
    )
}

#[test]
fn a_result_over_the_limit_is_too_large_and_the_worker_goes_on() {
    let pool = small_pool();
    let pool = &pool.0;
    let err = join(pool.submit(Job::Output(32 << 10)).unwrap()).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    assert!(!err.is_panic() && !err.is_protocol(), "{err}");
    let message = err.to_string();
    // postcard: a 3-byte length, then the bytes.
    assert!(message.contains("32771 bytes"), "{message}");
    assert!(message.contains(&LIMIT.to_string()), "{message}");
    let worker = pool.workers();

    // The worker's own error is held to the same limit.
    let err = join(pool.submit(Job::Fail(32 << 10)).unwrap()).unwrap_err();
    assert!(err.is_too_large(), "{err}");

    // The same worker, still up, runs the next tasks; a result exactly at the
    // limit gets through (a 2-byte length, then the bytes), one byte more not.
    let out = join(pool.submit(Job::Output(LIMIT as u32 - 2)).unwrap()).unwrap();
    assert_eq!(out.len(), LIMIT as usize - 2);
    let err = join(pool.submit(Job::Output(LIMIT as u32 - 1)).unwrap()).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    assert_eq!(pool.workers(), worker);

    let stats = pool.stats();
    assert_eq!((stats.completed, stats.failed), (1, 3));
    assert_eq!((stats.panicked, stats.crashed), (0, 0));
}

#[test]
fn an_input_over_the_limit_is_refused_at_submit_with_the_input_back() {
    let pool = small_pool();
    let pool = &pool.0;
    // Over the limit inline, and large enough for the shared-memory path.
    for len in [LIMIT as usize, 100 << 10] {
        let input = Job::Echo(ByteBuf::from(vec![1; len]));
        let refused = pool.submit(input).unwrap_err();
        assert!(refused.is_too_large(), "{refused}");
        assert!(!refused.is_closed() && !refused.is_full());
        assert!(
            refused.to_string().contains(&LIMIT.to_string()),
            "{refused}"
        );
        match refused.into_inner() {
            Job::Echo(bytes) => assert_eq!(bytes.len(), len),
            other => panic!("gave back {other:?}"),
        }
    }
    let refused = pool
        .task(Job::Echo(ByteBuf::from(vec![1; 20 << 10])))
        .submit()
        .unwrap_err();
    assert!(refused.is_too_large(), "{refused}");
    // Nothing was sent or counted.
    assert_eq!(pool.stats().submitted, 0);
    let fits = Job::Echo(ByteBuf::from(vec![1; LIMIT as usize - 8]));
    assert_eq!(
        join(pool.submit(fits).unwrap()).unwrap().len(),
        LIMIT as usize - 8
    );
}

#[test]
fn map_and_feed_resolve_only_the_item_too_large() {
    let pool = small_pool();
    let pool = &pool.0;
    let small = || Job::Echo(ByteBuf::from(vec![2; 10]));
    let big = || Job::Echo(ByteBuf::from(vec![2; 20 << 10]));
    let jobs = || vec![small(), big(), small(), Job::Output(20 << 10), small()];
    // What each result is: the output's length, or which part was too large.
    let kind = |result: &Result<ByteBuf, crew::TaskError<String>>| match result {
        Ok(out) => format!("ok {}", out.len()),
        Err(e) if e.is_too_large() && e.to_string().contains("input") => "input".into(),
        Err(e) if e.is_too_large() && e.to_string().contains("result") => "result".into(),
        Err(e) => format!("{e}"),
    };
    // `map` ships chunks on a process pool, in order.
    let got: Vec<String> = pool.map(jobs()).map(|r| kind(&r)).collect();
    assert_eq!(got, ["ok 10", "input", "ok 10", "result", "ok 10"]);
    // `feed` submits one by one, and yields (index, result) as tasks finish.
    let mut got: Vec<(usize, String)> = pool.feed(jobs()).map(|(i, r)| (i, kind(&r))).collect();
    got.sort();
    let got: Vec<String> = got.into_iter().map(|(_, kind)| kind).collect();
    assert_eq!(got, ["ok 10", "input", "ok 10", "result", "ok 10"]);
}

#[test]
fn build_refuses_a_limit_out_of_range() {
    for bytes in [0, 1, 4095, (1 << 30) + 1, u64::MAX] {
        let err = worker_processes::<Sizes>(1)
            .max_message_size(bytes)
            .build()
            .unwrap_err();
        assert!(err.is_invalid_setting(), "{bytes}: {err}");
        assert!(err.to_string().contains("max_message_size"), "{err}");
    }
    // A process setting: on a thread pool it is refused, not ignored.
    let err = Pool::<Sizes>::builder()
        .workers(1)
        .max_message_size(1 << 20)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("max_message_size"), "{err}");
}

#[test]
fn a_worker_announcing_a_frame_over_the_limit_fails_at_once() {
    // A long silence limit: only the frame limit can end this in time.
    let pool = Reaped(
        worker_processes::<Sizes>(1)
            .max_message_size(LIMIT)
            .silence_limit(std::time::Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let pool = &pool.0;
    let err = join(pool.submit(Job::Lie(1 << 20)).unwrap()).unwrap_err();
    assert!(err.is_protocol(), "{err}");
    // The pool's frame limit: the message size and the frame's fields.
    assert!(err.to_string().contains(&(LIMIT + 64).to_string()), "{err}");
    // Replaced; the pool goes on.
    let out = join(pool.submit(Job::Output(3)).unwrap()).unwrap();
    assert_eq!(out.len(), 3);
}

#[test]
fn a_sticky_message_larger_than_a_page_reaches_a_replacement() {
    let pool = small_pool();
    let pool = &pool.0;
    let message = ByteBuf::from(vec![3; 8 << 10]);
    pool.broadcast_sticky(message.clone());
    assert_eq!(join(pool.submit(Job::Sticky).unwrap()).unwrap(), message);
    // The replacement gets the sticky message before its first task.
    let worker = pool.workers()[0];
    assert!(pool.kill_worker(worker));
    assert_eq!(join(pool.submit(Job::Sticky).unwrap()).unwrap(), message);
}

#[test]
fn the_default_limit_is_64_mib() {
    let pool = Reaped(worker_processes::<Sizes>(1).build().unwrap());
    let pool = &pool.0;
    let err = join(pool.submit(Job::Output(64 << 20)).unwrap()).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    assert!(err.to_string().contains("67108864 bytes)"), "{err}");
    assert_eq!(join(pool.submit(Job::Output(3)).unwrap()).unwrap().len(), 3);
}
