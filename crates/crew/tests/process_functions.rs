//! A pool of plain functions (`Pool<Functions>`, `spawn_fn`): each call runs in
//! a worker process that re-runs this test binary (`crew_worker_entry` below,
//! which registers no worker type: every `Bootstrap` serves functions), and
//! gets what any task gets: typed errors, panics, crash isolation, timeouts
//! and cancels by kill, retries, chunked `map`, events and stats. A worker of
//! another build (a copy of this binary with another build identity) refuses
//! every call, and runs none.
#![cfg(all(feature = "process", target_os = "linux"))]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{join, wait_until, WORKER_ENTRY};
use crew::{Event, Functions, Pool, TaskOutcome};
use serde::{Deserialize, Serialize};

/// The worker processes' `main`: nothing is registered, functions are served.
#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().run();
}

/// A pool of `n` worker processes re-running this binary; terminated when
/// dropped, so a failing test leaves no process behind.
struct Reaped(Pool<Functions>);

impl Drop for Reaped {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

impl std::ops::Deref for Reaped {
    type Target = Pool<Functions>;
    fn deref(&self) -> &Pool<Functions> {
        &self.0
    }
}

fn builder(n: usize) -> crew::PoolBuilder<Functions> {
    Pool::<Functions>::builder()
        .processes(n)
        .args(WORKER_ENTRY)
        .on_output(|_, _, _| {})
        .kill_grace(Duration::from_millis(200))
}

fn pool(n: usize) -> Reaped {
    Reaped(builder(n).build().unwrap())
}

/// A path in the temporary directory, unique to this test process and `name`,
/// removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("crew-functions-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }

    fn arg(&self) -> String {
        self.0.to_str().unwrap().to_owned()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pid(pool: &Pool<Functions>) -> u32 {
    join(pool.spawn_fn((), |()| std::process::id()).unwrap()).unwrap()
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum ParseError {
    Empty,
    NotANumber(String),
}

fn parse(text: String) -> Result<u64, ParseError> {
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    text.parse().map_err(|_| ParseError::NotANumber(text))
}

#[test]
fn a_function_runs_in_a_worker_process_and_its_result_comes_back() {
    let pool = pool(2);
    assert_ne!(pid(&pool), std::process::id());
    let task = pool
        .spawn_fn(("crew".to_owned(), 3usize), |(word, n)| word.repeat(n))
        .unwrap();
    assert_eq!(join(task).unwrap(), "crewcrewcrew");
    // A function item, and several calls at once.
    fn cube(x: i64) -> i64 {
        x * x * x
    }
    let tasks: Vec<_> = (-50..50).map(|x| pool.spawn_fn(x, cube).unwrap()).collect();
    let sum: i64 = tasks.into_iter().map(|t| join(t).unwrap()).sum();
    assert_eq!(sum, (-50..50i64).map(cube).sum());
}

#[test]
fn a_functions_err_is_the_tasks_own_typed_error() {
    let pool = pool(1);
    let parse = pool.fallible(parse);
    assert_eq!(join(parse.spawn("42".into()).unwrap()).unwrap(), 42);
    let error = join(parse.spawn(String::new()).unwrap()).unwrap_err();
    assert!(error.is_user(), "{error}");
    assert_eq!(error.user_error(), Some(&ParseError::Empty));
    let error = join(parse.spawn("x".into()).unwrap()).unwrap_err();
    assert_eq!(
        error.into_user_error().unwrap(),
        ParseError::NotANumber("x".into())
    );
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.failed), (1, 2));
}

#[test]
fn a_panic_fails_its_call_with_the_message_and_the_worker_goes_on() {
    let pool = pool(1);
    let before = pid(&pool);
    let error = join(
        pool.spawn_fn(7u32, |n| -> u32 { panic!("no luck with {n}") })
            .unwrap(),
    )
    .unwrap_err();
    assert_eq!(error.panic_message(), Some("no luck with 7"));
    // A panic is caught in the worker: the same process runs the next call.
    assert_eq!(pid(&pool), before);
}

#[test]
fn an_abort_costs_only_its_own_call() {
    let pool = pool(2);
    let aborts = pool
        .spawn_fn((), |()| -> u8 { std::process::abort() })
        .unwrap();
    let fine: Vec<_> = (0..20u8)
        .map(|i| pool.spawn_fn(i, |i| i + 1).unwrap())
        .collect();
    let error = join(aborts).unwrap_err();
    assert!(error.is_crash(), "{error}");
    assert_eq!(error.crash().unwrap().signal(), Some(6));
    for (i, task) in fine.into_iter().enumerate() {
        assert_eq!(join(task).unwrap(), i as u8 + 1);
    }
    wait_until("the crashed worker is replaced", || {
        pool.workers().len() == 2
    });
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_timeout_kills_the_worker_running_the_function() {
    let pool = pool(1);
    let before = pid(&pool);
    let stuck = pool
        .function(sleep_ms)
        .task(60_000)
        .timeout(Duration::from_millis(100))
        .submit()
        .unwrap();
    assert!(join(stuck).unwrap_err().is_timeout());
    // The worker was killed; its replacement runs the next call.
    assert_ne!(pid(&pool), before);
    assert_eq!(pool.stats().timed_out, 1);
}

#[test]
fn cancelling_a_running_function_kills_its_worker() {
    let pool = pool(1);
    let events = pool.events();
    let task = pool.spawn_fn(60_000, sleep_ms).unwrap();
    let worker = common::wait_for_event(&events, "the call's start", |e| match e {
        Event::TaskStarted { worker, .. } => Some(worker),
        _ => None,
    });
    assert_eq!(task.worker(), Some(worker));
    assert!(task.cancel());
    assert!(join(task).unwrap_err().is_cancelled());
    wait_until("the killed worker is gone", || {
        !pool.workers().contains(&worker)
    });
    assert_eq!(
        join(pool.spawn_fn(2, |x: u32| x * 21).unwrap()).unwrap(),
        42
    );
}

/// Exits the worker process the first time (when `marker` does not exist
/// yet), answers 7 the second.
fn exits_once(marker: String) -> u32 {
    if std::fs::File::create_new(&marker).is_ok() {
        std::process::exit(3);
    }
    7
}

#[test]
fn a_call_whose_worker_died_runs_again_with_retries() {
    let pool = pool(1);
    let marker = TempPath::new("retry");
    let task = pool
        .function(exits_once)
        .task(marker.arg())
        .retries(1)
        .submit()
        .unwrap();
    assert_eq!(join(task).unwrap(), 7);
    assert!(marker.0.exists(), "the first run created the marker");

    // Without retries, the death is the call's error.
    let marker = TempPath::new("no-retry");
    let error = join(pool.spawn_fn(marker.arg(), exits_once).unwrap()).unwrap_err();
    assert_eq!(error.crash().map(|c| c.exit_code()), Some(Some(3)));
}

#[test]
fn map_over_a_function_returns_every_result_in_order() {
    let pool = pool(2);
    let squares: Vec<u64> = pool
        .function(|x: u64| x * x)
        .map(0..5_000)
        .map(Result::unwrap)
        .collect();
    assert_eq!(squares, (0..5_000u64).map(|x| x * x).collect::<Vec<_>>());

    let mut seen = vec![false; 3_000];
    for (index, result) in pool.function(|x: usize| x + 1).map_unordered(0..3_000) {
        assert_eq!(result.unwrap(), index + 1);
        assert!(!std::mem::replace(&mut seen[index], true), "twice: {index}");
    }
    assert!(seen.iter().all(|&s| s));

    // A fallible function's errors come back in their places, typed.
    let inputs = ["1", "", "3", "x"].map(String::from);
    let results: Vec<_> = pool.fallible(parse).map(inputs).collect();
    assert_eq!(results[0].as_ref().unwrap(), &1);
    assert_eq!(
        results[1].as_ref().unwrap_err().user_error(),
        Some(&ParseError::Empty)
    );
    assert_eq!(results[2].as_ref().unwrap(), &3);
    assert!(results[3].as_ref().unwrap_err().is_user());
}

fn exit_at_3000(i: u64) -> u64 {
    if i == 3_000 {
        std::process::exit(3);
    }
    i
}

#[test]
fn a_crash_inside_a_mapped_chunk_fails_only_the_crashing_item() {
    let pool = pool(2);
    for (i, result) in pool.function(exit_at_3000).map(0..6_000).enumerate() {
        if i == 3_000 {
            let error = result.unwrap_err();
            assert_eq!(
                error.crash().map(|c| c.exit_code()),
                Some(Some(3)),
                "{error}"
            );
        } else {
            assert_eq!(result.unwrap(), i as u64, "item {i}");
        }
    }
    let stats = pool.stats();
    assert_eq!((stats.crashed, stats.completed), (1, 5_999));
}

#[test]
fn calls_show_in_events_and_stats() {
    let pool = pool(1);
    let events = pool.events();
    let fallible = pool.fallible(parse);
    join(fallible.spawn("5".into()).unwrap()).unwrap();
    join(fallible.spawn(String::new()).unwrap()).unwrap_err();
    let seen = common::recv_until(&events, |seen| {
        seen.iter()
            .filter(|e| matches!(e, Event::TaskFinished { .. }))
            .count()
            == 2
    });
    let outcomes: Vec<TaskOutcome> = seen
        .iter()
        .filter_map(|e| match e {
            Event::TaskFinished { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, [TaskOutcome::Completed, TaskOutcome::Failed]);
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed, stats.failed), (2, 1, 1));
}

#[test]
fn arguments_above_the_message_size_are_given_back() {
    let pool = Reaped(builder(1).max_message_size(4096).build().unwrap());
    let big = "x".repeat(10_000);
    let error = pool.spawn_fn(big.clone(), |s| s.len()).unwrap_err();
    assert!(error.is_too_large());
    assert_eq!(error.into_inner(), big);
}

#[test]
fn a_pool_of_functions_on_threads_runs_them_too() {
    let pool = Pool::<Functions>::builder().workers(2).build().unwrap();
    assert_eq!(pid(&pool), std::process::id());
    assert_eq!(join(pool.spawn_fn(20u8, |x| x + 22).unwrap()).unwrap(), 42);
    pool.shutdown();
}

/// A copy of this test binary that is another build: its GNU build id (the
/// identity crew compares) has one byte changed, or, if the linker wrote none,
/// the file has one more byte (crew then hashes the file). The code is the
/// same, so what the test shows is that the identity alone decides: a worker
/// of another build runs nothing.
struct OtherBuild(PathBuf);

impl OtherBuild {
    fn new() -> Self {
        let mut bytes = std::fs::read("/proc/self/exe").unwrap();
        // An ELF note: name size 4, its description's size, type 3
        // (NT_GNU_BUILD_ID), the name "GNU\0", then the description (the id).
        let header = [3, 0, 0, 0, b'G', b'N', b'U', 0];
        let found = bytes.windows(header.len()).enumerate().find_map(|(i, w)| {
            (w == header && i >= 8 && bytes[i - 8..i - 4] == [4, 0, 0, 0]).then_some(i)
        });
        match found {
            Some(at) => bytes[at + header.len()] ^= 0xff,
            None => bytes.push(0),
        }
        let path =
            std::env::temp_dir().join(format!("crew-functions-{}-other-build", std::process::id()));
        write_executable(&path, &bytes);
        OtherBuild(path)
    }
}

fn write_executable(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
}

impl Drop for OtherBuild {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn touch(path: String) {
    std::fs::write(path, b"ran").unwrap();
}

#[test]
fn a_worker_of_another_build_refuses_every_call_and_runs_none() {
    let other = OtherBuild::new();
    let pool = Reaped(builder(1).program(&other.0).build().unwrap());
    let marker = TempPath::new("ran-in-other-build");

    let error = join(pool.spawn_fn(marker.arg(), touch).unwrap()).unwrap_err();
    assert!(error.is_protocol(), "{error}");
    assert!(error.to_string().contains("different build"), "{error}");
    // Mapped calls travel in chunks and are refused one by one the same way.
    for result in pool.function(touch).map(vec![marker.arg(); 100]) {
        let error = result.unwrap_err();
        assert!(error.to_string().contains("different build"), "{error}");
    }
    assert!(
        !marker.0.exists(),
        "a worker of another build ran a function"
    );
    // The refusal is an answer, not a crash: the worker is still the same one.
    assert_eq!(pool.stats().crashed, 0);
}
