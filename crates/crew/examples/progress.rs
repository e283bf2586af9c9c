//! A long task tells whoever waits on it how far it got (piscina's "40% done",
//! without a pool-wide channel): `Context::progress` in the worker,
//! `Task::watch_progress` on the handle. The workers are processes here; on
//! threads the code is the same.
//!
//! `cargo run --example progress`

use std::time::Duration;

use crew::{Context, Pool, StartError, Worker};

/// Renders a clip frame by frame, and says how far it got after each frame.
struct Render;

impl Worker for Render {
    type Input = u32; // frames to render
    type Output = u32; // frames rendered
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Render)
    }

    fn run(&mut self, frames: u32, ctx: &mut Context<'_>) -> Result<u32, String> {
        for frame in 1..=frames {
            std::thread::sleep(Duration::from_millis(2)); // stands in for the work
                                                          // Cheap and never blocking: only the latest value is kept.
            ctx.progress(frame as f32 / frames as f32);
        }
        Ok(frames)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    crew::bootstrap::<Render>(); // in a worker process: serves Render, never returns

    let pool = Pool::<Render>::builder().processes(2).build()?;
    let clips = [40, 60, 80];
    let tasks = clips
        .iter()
        .map(|&frames| pool.submit(frames))
        .collect::<Result<Vec<_>, _>>()?;

    // One thread per task follows its progress while this one waits for the
    // results. A watch yields each change (coalesced, never queued) and ends
    // once its task has finished.
    let followers: Vec<_> = tasks
        .iter()
        .enumerate()
        .map(|(clip, task)| {
            let progress = task.watch_progress();
            std::thread::spawn(move || {
                let mut quarter = 0;
                let mut last = 0.0;
                for p in progress {
                    assert!(p >= last, "this task's progress only rises");
                    last = p;
                    if (p * 4.0) as u32 > quarter {
                        quarter = (p * 4.0) as u32;
                        println!("clip {clip}: {:>3.0}%", p * 100.0);
                    }
                }
                last
            })
        })
        .collect();

    for (task, frames) in tasks.into_iter().zip(clips) {
        assert_eq!(task.join()?, frames);
    }
    let finals: Vec<f32> = followers
        .into_iter()
        .map(|f| f.join().expect("a follower panicked"))
        .collect();
    assert!(finals.iter().all(|&p| p == 1.0), "{finals:?}");
    println!("progress: {} clips followed to 100%", finals.len());
    pool.shutdown();
    Ok(())
}
