//! Helpers shared by crew-observe's integration tests: a worker with every
//! kind of outcome, a deadline-bounded wait, and a small HTTP GET.

#![allow(dead_code, unreachable_pub)] // each test binary uses a part

use std::time::{Duration, Instant};

use crew::{Context, StartError, Worker};

/// What a [`Faulty`] task does.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Sleeps this many milliseconds, then returns `Ok`.
    Ok(u64),
    /// Returns the worker's own error.
    Err,
    /// Panics.
    Panic,
    /// Sleeps this many milliseconds (longer than the pool's timeout).
    Hang(u64),
}

/// A thread-pool worker whose tasks succeed, fail, panic or overrun on demand.
pub struct Faulty;

impl Worker for Faulty {
    type Input = Op;
    type Output = ();
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Faulty)
    }

    fn run(&mut self, op: Op, _ctx: &mut Context<'_>) -> Result<(), String> {
        match op {
            Op::Ok(ms) | Op::Hang(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
            Op::Err => Err("bad input".to_owned()),
            Op::Panic => panic!("injected panic"),
        }
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics after
/// `timeout` saying what it waited for and the last thing it saw.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("gave up after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// GETs `url` (with a 10 s timeout) and returns the status and body.
pub fn get(url: &str) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    Ok((status, body))
}
