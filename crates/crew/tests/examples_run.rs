//! Runs each example the way a reader would (`cargo run --example NAME`) and checks
//! that it exits successfully and prints the line it promises, so the examples
//! cannot rot.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A guard against a hung example, not a performance bound: the first run may
/// have to compile the example, possibly while other tests hold the build lock.
const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn hello_greets_the_world() {
    run_example("hello", "Hello, World!");
}

#[test]
fn lifecycle_stops_every_worker() {
    run_example(
        "lifecycle",
        "all 3 workers stopped: 4 starts, 4 stops (one rebuild after the panic)",
    );
}

#[test]
fn job_events_reports_each_job_once() {
    run_example(
        "job_events",
        "job_events: 6 jobs, 6 end events (4 completed, 1 panicked, 1 killed)",
    );
}

#[test]
fn async_jobs_runs_several_jobs_per_worker() {
    run_example(
        "async_jobs",
        "async_jobs: 16 jobs on 2 workers, 4 at once on each",
    );
}

#[test]
fn image_queue_resizes_every_upload_but_the_broken_one() {
    run_example(
        "image_queue --features indicatif",
        "image_queue: 40 uploads, 39 thumbnails, 1 failed",
    );
}

#[test]
fn pipeline_writes_every_thumbnail_but_the_corrupt_file() {
    run_example(
        "pipeline --features indicatif",
        "pipeline: 24 files, 23 thumbnails written, 1 failed in stage 0 (decode)",
    );
}

#[test]
fn messages_go_both_ways() {
    run_example(
        "messages",
        "messages: 6 files reported 4 steps each in order; 3 workers took the unit",
    );
}

#[test]
fn isolation_survives_a_segfault_and_a_loop() {
    run_example("isolation", "isolation: all checks passed");
}

#[test]
fn functions_run_in_worker_processes_with_no_worker_type() {
    run_example("functions", "functions: all checks passed");
}

#[test]
fn rpc_calls_a_worker_process_by_client_and_by_name() {
    run_example("rpc", "rpc: all checks passed");
}

#[test]
fn health_reports_the_backlog_and_prints_the_table() {
    run_example("health", "health: all checks passed");
}

#[test]
fn progress_reaches_each_caller() {
    run_example("progress", "progress: 3 clips followed to 100%");
}

#[test]
fn tour_passes_its_own_checks() {
    run_example("tour", "tour: all checks passed");
}

/// Kills and reaps the child on every exit path, including a failed assertion.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill(); // fails harmlessly if it already exited
        let _ = self.0.wait();
    }
}

/// `name` may carry cargo flags after the example's name (`"image_queue
/// --features indicatif"`, for an example with `required-features`).
fn run_example(name: &str, expected_line: &str) {
    let mut words = name.split_whitespace();
    let example = words.next().expect("an example name");
    let child = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--package", env!("CARGO_PKG_NAME")])
        .args(["--example", example])
        .args(words)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // The tour panics on purpose; keep its report short.
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start cargo: {e}"));
    let mut child = Reaped(child);
    // Read both pipes on their own threads, so a chatty example never blocks on
    // a full pipe while we wait for it.
    let stdout = drain(child.0.stdout.take());
    let stderr = drain(child.0.stderr.take());

    let status = wait(&mut child.0, name);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success(),
        "`cargo run --example {name}` failed ({status})\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout.lines().any(|line| line.trim() == expected_line),
        "`cargo run --example {name}` did not print {expected_line:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

/// Waits for the child to exit, failing the test (and so killing it) past `LIMIT`.
fn wait(child: &mut Child, name: &str) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => panic!("`cargo run --example {name}` still running after {LIMIT:?}"),
            Err(e) => panic!("could not wait for `cargo run --example {name}`: {e}"),
        }
    }
}

/// Reads a pipe to its end on a new thread.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}
