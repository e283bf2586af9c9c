//! Jobs and their events, as parallelcode shows them: a job's start, its end or
//! its error, and `kill(workerId)` retiring the worker under a long job.
//!
//! `cargo run --example job_events`

use std::time::{Duration, Instant};

use crew::{Event, Pool, TaskOutcome};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::builder().workers(2).thread_name("job").build()?;

    // Subscribe before any job runs; a thread prints events as they happen. The
    // stream ends once the pool is shut down and its workers are gone.
    let events = pool.events();
    let printer = std::thread::spawn(move || {
        let mut finished = Vec::new();
        for event in events {
            match &event {
                Event::TaskStarted { task, worker, .. } => println!("start  {task} on {worker}"),
                Event::TaskFinished {
                    task,
                    worker,
                    outcome,
                    ..
                } => {
                    println!("end    {task} on {worker}: {outcome:?}");
                    finished.push(*outcome);
                }
                Event::WorkerStarted { worker, .. } => println!("ready  {worker}"),
                Event::WorkerRestarted { worker, reason, .. } => {
                    println!("reset  {worker} ({reason})")
                }
                Event::WorkerExited { worker, reason, .. } => {
                    println!("exit   {worker}: {reason:?}")
                }
                other => println!("event  {other:?}"),
            }
        }
        finished
    });

    // Four quick jobs, one that fails, and one long job that checks for
    // cancellation.
    let quick: Vec<_> = (1..=4u64)
        .map(|n| pool.spawn(move || (1..=n * 1_000).sum::<u64>()))
        .collect();
    let failing = pool.spawn(|| -> u64 { panic!("bad input") });
    let long = pool.spawn_with(|ctx| {
        while !ctx.is_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        0u64
    });

    for task in quick {
        task.join()?;
    }
    let error = failing.join().unwrap_err();
    println!("the failing job: {error}");

    // Kill the worker running the long job (parallelcode's `kill(workerId)`).
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        if let Some(worker) = long.worker() {
            break worker;
        }
        if Instant::now() > deadline {
            return Err("the long job never started".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    pool.kill_worker(victim);
    let killed = long.join().unwrap_err();
    let workers: Vec<String> = pool.workers().iter().map(ToString::to_string).collect();
    println!("the long job: {killed}; workers now {}", workers.join(", "));

    pool.shutdown();
    let finished = printer.join().map_err(|_| "the printer panicked")?;
    let completed = finished
        .iter()
        .filter(|o| **o == TaskOutcome::Completed)
        .count();
    if finished.len() != 6 || completed != 4 || !killed.is_killed() || !pool.workers().is_empty() {
        return Err(format!("unexpected events: {finished:?}").into());
    }
    println!("job_events: 6 jobs, 6 end events (4 completed, 1 panicked, 1 killed)");
    Ok(())
}
