//! Several jobs per worker at once: an async worker with `concurrency(4)`.
//!
//! Two workers, four jobs in flight on each, sixteen jobs. Every job waits at a
//! barrier for eight jobs to arrive, which can only happen if each of the two
//! workers holds four jobs at once: while one job waits, its worker starts the
//! next. Each worker keeps a count of its jobs in flight in its own state, shared
//! by those jobs (`&self`, a `Cell`), and reports the most it saw.
//!
//! Run it with `cargo run --example async_jobs`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use crew::{Async, AsyncWorker, Context, Pool, StartError, WorkerId};
use tokio::sync::Barrier;

const WORKERS: usize = 2;
const PER_WORKER: usize = 4;
const JOBS: usize = 16;

/// One worker's state, shared by the jobs it has in flight.
struct Fetcher {
    in_flight: Cell<usize>,
    peak: Cell<usize>,
}

impl AsyncWorker for Fetcher {
    /// The job's number and the barrier all jobs meet at.
    type Input = (usize, Arc<Barrier>);
    /// The job's number, the worker that ran it, and that worker's peak so far.
    type Output = (usize, WorkerId, usize);
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Fetcher {
            in_flight: Cell::new(0),
            peak: Cell::new(0),
        })
    }

    async fn run(
        &self,
        (job, barrier): (usize, Arc<Barrier>),
        ctx: &mut Context<'_>,
    ) -> Result<Self::Output, Self::Error> {
        self.in_flight.set(self.in_flight.get() + 1);
        self.peak.set(self.peak.get().max(self.in_flight.get()));
        // The "I/O": a wait that other jobs on this worker overlap with.
        barrier.wait().await;
        self.in_flight.set(self.in_flight.get() - 1);
        Ok((job, ctx.worker_id(), self.peak.get()))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::<Async<Fetcher>>::builder()
        .workers(WORKERS)
        .concurrency(PER_WORKER)
        .build()?;
    let barrier = Arc::new(Barrier::new(WORKERS * PER_WORKER));
    let tasks = pool.submit_batch((0..JOBS).map(|job| (job, Arc::clone(&barrier))))?;

    let mut peaks: BTreeMap<WorkerId, usize> = BTreeMap::new();
    for task in tasks {
        let (job, worker, peak) = task.join()?;
        println!("job {job:2} done on {worker}");
        let best = peaks.entry(worker).or_default();
        *best = (*best).max(peak);
    }
    pool.shutdown();

    for (worker, peak) in &peaks {
        println!("{worker}: at most {peak} jobs in flight");
    }
    assert_eq!(peaks.len(), WORKERS);
    assert!(peaks.values().all(|&peak| peak == PER_WORKER));
    println!("async_jobs: {JOBS} jobs on {WORKERS} workers, {PER_WORKER} at once on each");
    Ok(())
}
