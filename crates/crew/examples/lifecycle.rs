//! Init and teardown: each worker builds its state once in `start` and releases it
//! in `stop`.
//!
//! ```text
//! cargo run --example lifecycle
//! ```
//!
//! Three workers each open a (pretend) connection when they start, answer queries
//! with it, and close it when the pool shuts down. One query panics: the pool
//! reports the panic to that query's caller, stops the worker's half-used state
//! and starts it afresh, so the worker runs `start` twice and `stop` twice.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crew::{Context, Pool, StartError, Worker, WorkerId};

const WORKERS: usize = 3;

static STARTS: AtomicUsize = AtomicUsize::new(0);
static STOPS: AtomicUsize = AtomicUsize::new(0);

/// One worker's state: built by `start`, used by every `run`, torn down by `stop`.
struct Connection {
    worker: WorkerId,
    opened: Instant,
    queries: u32,
}

impl Worker for Connection {
    type Input = &'static str;
    type Output = String;
    type Error = Infallible;
    type Message = ();

    fn start(ctx: &mut Context<'_>) -> Result<Self, StartError> {
        STARTS.fetch_add(1, SeqCst);
        println!("  {}: start, opening a connection", ctx.worker_id());
        Ok(Connection {
            worker: ctx.worker_id(),
            opened: Instant::now(),
            queries: 0,
        })
    }

    fn run(&mut self, query: &'static str, _ctx: &mut Context<'_>) -> Result<String, Infallible> {
        self.queries += 1;
        if query == "DROP TABLE" {
            panic!("refusing to run {query:?}");
        }
        Ok(format!(
            "{query} -> answered by {} (query #{} on this connection)",
            self.worker, self.queries
        ))
    }

    fn stop(&mut self, _ctx: &mut Context<'_>) {
        STOPS.fetch_add(1, SeqCst);
        println!(
            "  {}: stop, closing the connection after {} queries ({:?} open)",
            self.worker,
            self.queries,
            self.opened.elapsed()
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("building a pool of {WORKERS} workers");
    let pool = Pool::<Connection>::builder().workers(WORKERS).build()?;

    let queries = ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4", "SELECT 5"];
    let tasks = queries
        .iter()
        .map(|q| pool.submit(q))
        .collect::<Result<Vec<_>, _>>()?;
    for task in tasks {
        println!("  {}", task.join()?);
    }

    println!("one query panics (the panic hook prints it to stderr; the pool catches it)");
    let err = pool.submit("DROP TABLE")?.join().unwrap_err();
    println!("  the caller gets: {err}");
    // The worker rebuilds its state right after the panic, on its own thread; wait
    // for that before shutting down (a pool that is closing would skip the rebuild).
    let deadline = Instant::now() + Duration::from_secs(10);
    while STARTS.load(SeqCst) < WORKERS + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }

    println!("shutting down");
    pool.shutdown();

    // `shutdown` returns after every worker's `stop` has run.
    let (starts, stops) = (STARTS.load(SeqCst), STOPS.load(SeqCst));
    if !err.is_panic() || starts != WORKERS + 1 || stops != starts {
        eprintln!(
            "unexpected: panic {}, {starts} starts, {stops} stops",
            err.is_panic()
        );
        std::process::exit(1);
    }
    println!("all {WORKERS} workers stopped: {starts} starts, {stops} stops (one rebuild after the panic)");
    Ok(())
}
