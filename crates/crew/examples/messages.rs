//! Messages both ways (work-pool's `postMessageToPool` / `onMessage` /
//! `postMessageToWorkers`): the pool tells every worker which unit to report in,
//! including workers started later; workers report their progress while tasks
//! run; the pool reads the reports as they come.
//!
//! Run with `cargo run --example messages`.

use std::collections::BTreeMap;

use crew::{Context, Pool, StartError, Worker};

/// What the pool and the workers say to each other.
#[derive(Debug, Clone)]
enum Talk {
    /// Pool to workers: report sizes in this unit.
    Unit(&'static str),
    /// Worker to pool: this much of a file is done.
    Progress { file: u32, percent: u32 },
    /// Worker to pool: the unit it now reports in.
    Using(&'static str),
}

/// "Compresses" files; reports progress every 25%.
struct Compressor {
    unit: &'static str,
}

impl Worker for Compressor {
    type Input = u32; // a file number
    type Output = String;
    type Error = String;
    type Message = Talk;

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Compressor { unit: "bytes" })
    }

    fn run(&mut self, file: u32, ctx: &mut Context<'_>) -> Result<String, String> {
        let size = 1000 * u64::from(file + 1);
        for percent in [25, 50, 75, 100] {
            // ... a quarter of the work ...
            ctx.send(Talk::Progress { file, percent })
                .map_err(|e| e.to_string())?;
        }
        let shown = match self.unit {
            "KB" => format!("{} KB", size / 1000),
            _ => format!("{size} bytes"),
        };
        Ok(format!("file {file}: {shown}"))
    }

    fn on_message(&mut self, message: Talk, ctx: &mut Context<'_>) {
        if let Talk::Unit(unit) = message {
            self.unit = unit;
            let _ = ctx.send(Talk::Using(unit));
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::<Compressor>::builder().workers(3).build()?;
    let messages = pool.messages();
    // (So that the count printed at the end is always 3: a worker still starting
    // when the pool shuts down never starts, and never takes the unit.)
    while pool.stats().per_worker.iter().filter(|w| w.started).count() < 3 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }

    // Sticky: every worker gets it, and so would a replacement or a state
    // rebuilt after a panic.
    pool.broadcast_sticky(Talk::Unit("KB"));

    let tasks: Vec<_> = (0..6)
        .map(|file| pool.submit(file))
        .collect::<Result<_, _>>()?;
    for task in tasks {
        println!("{}", task.join()?);
    }
    pool.shutdown();

    // Every message sent before shutdown, then the end of the stream.
    let mut progress: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut using = 0;
    for (worker, message) in messages {
        match message {
            Talk::Progress { file, percent } => progress.entry(file).or_default().push(percent),
            Talk::Using(unit) => {
                println!("{worker} reports in {unit}");
                using += 1;
            }
            Talk::Unit(_) => unreachable!("workers do not send units"),
        }
    }
    // Each file's reports came from one worker, in the order it sent them.
    assert!(progress.values().all(|p| p == &[25, 50, 75, 100]));
    println!(
        "messages: {} files reported 4 steps each in order; {using} workers took the unit",
        progress.len()
    );
    assert_eq!(progress.len(), 6);
    assert_eq!(using, 3);
    Ok(())
}
