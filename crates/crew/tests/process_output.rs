//! Whatever a worker process prints, the pool's memory stays bounded
//! (DESIGN.md, invariant 7), and what is cut is said:
//!
//! - a line without end (32 MiB, no newline) reaches `on_output` cut to a bounded
//!   length, saying how much was cut;
//! - the same on stderr before a crash leaves a bounded stderr tail in the
//!   `Crash`;
//! - a `\r` progress bar gives one line per redraw, not one line that never ends.
#![cfg(all(feature = "process", target_os = "linux"))]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{join, worker_processes};
use crew::{Context, OutputStream, Pool, StartError, Worker};
use serde::{Deserialize, Serialize};

/// Bounds the tests hold the pool to: a delivered line is at most 64 KiB and the
/// note saying what was cut; a crash's stderr tail is at most 16 KiB in all.
const LINE_BOUND: usize = (64 << 10) + 100;
const TAIL_BOUND: usize = 16 << 10;
const FLOOD: usize = 32 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    /// Prints `FLOOD` bytes to stdout with no newline, then one short line.
    FloodOut,
    /// Prints `FLOOD` bytes to stderr with no newline, then exits with 3.
    FloodErrThenExit,
    /// Draws a progress bar with `\r`, then a newline.
    Progress,
}

struct Printer;

impl Worker for Printer {
    type Input = Job;
    type Output = ();
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Printer)
    }

    fn run(&mut self, job: Job, _ctx: &mut Context<'_>) -> Result<(), String> {
        let block = vec![b'x'; 1 << 20];
        match job {
            Job::FloodOut => {
                let mut out = std::io::stdout().lock();
                for _ in 0..FLOOD / block.len() {
                    out.write_all(&block).unwrap();
                }
                out.write_all(b"\nafter the flood\n").unwrap();
                out.flush().unwrap();
                Ok(())
            }
            Job::FloodErrThenExit => {
                let mut err = std::io::stderr().lock();
                for _ in 0..FLOOD / block.len() {
                    err.write_all(&block).unwrap();
                }
                err.flush().unwrap();
                std::process::exit(3)
            }
            Job::Progress => {
                let mut out = std::io::stdout().lock();
                for pct in (10..=100).step_by(10) {
                    write!(out, "{pct}%\r").unwrap();
                }
                out.write_all(b"\ndone\n").unwrap();
                out.flush().unwrap();
                Ok(())
            }
        }
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Printer>().run();
}

/// Terminates the pool when dropped, so a failing test leaves no worker behind.
struct Reaped(Pool<Printer>);

impl Drop for Reaped {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

type Lines = Arc<Mutex<Vec<(OutputStream, String)>>>;

fn pool_recording() -> (Reaped, Lines) {
    let lines: Lines = Arc::default();
    let seen = Arc::clone(&lines);
    let pool = worker_processes::<Printer>(1)
        .on_output(move |_, stream, line| seen.lock().unwrap().push((stream, line.to_owned())))
        .build()
        .unwrap();
    (Reaped(pool), lines)
}

#[test]
fn a_line_without_end_is_cut_and_says_so() {
    let (pool, lines) = pool_recording();
    join(pool.0.submit(Job::FloodOut).unwrap()).unwrap();
    pool.0.shutdown();
    let lines = lines.lock().unwrap();
    let longest = lines.iter().map(|(_, l)| l.len()).max().unwrap();
    assert!(longest <= LINE_BOUND, "a {longest}-byte line was delivered");
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("more bytes of this line were cut")),
        "the cut is not said"
    );
    assert!(lines.iter().any(|(_, l)| l == "after the flood"));
}

#[test]
fn a_crash_keeps_a_bounded_stderr_tail() {
    let (pool, _lines) = pool_recording();
    let err = join(pool.0.submit(Job::FloodErrThenExit).unwrap()).unwrap_err();
    let crash = err.crash().unwrap_or_else(|| panic!("not a crash: {err}"));
    assert_eq!(crash.exit_code(), Some(3));
    let bytes: usize = crash.stderr_tail().iter().map(String::len).sum();
    assert!(bytes <= TAIL_BOUND, "a {bytes}-byte stderr tail");
    assert!(crash
        .stderr_tail()
        .iter()
        .any(|l| l.contains("more bytes of this line were cut")));
}

#[test]
fn a_carriage_return_progress_bar_gives_one_line_per_redraw() {
    let (pool, lines) = pool_recording();
    join(pool.0.submit(Job::Progress).unwrap()).unwrap();
    pool.0.shutdown();
    let lines: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, l)| *s == OutputStream::Stdout && (l.ends_with('%') || l == "done"))
        .map(|(_, l)| l.clone())
        .collect();
    let expected: Vec<String> = (10..=100)
        .step_by(10)
        .map(|p| format!("{p}%"))
        .chain(["done".to_owned()])
        .collect();
    assert_eq!(lines, expected);
}
