//! The dashboard on two pools under a varied load, so the page has something
//! to show:
//!
//! - `isolated`, a process pool (3 workers, 300 ms timeout, recycled every
//!   200 tasks) whose parser returns, errs, panics, aborts its process (a
//!   crash) or hangs (killed by the timeout);
//! - `threads`, a thread pool of closures that return, panic, or overrun a
//!   50 ms timeout.
//!
//! `cargo run --release --example dashboard -- --addr 127.0.0.1:9000`, then
//! open `http://127.0.0.1:9000/`; Prometheus scrapes `/metrics`, and
//! `cargo run --release --bin crew-top -- --url http://127.0.0.1:9000` shows
//! it in a terminal. `--seconds N` stops after N seconds (the default is to
//! run until interrupted).

use std::time::{Duration, Instant};

use crew::{Context, Pool, StartError, Worker};

/// A record parser standing in for native code that is not safe on every input.
struct Parser;

impl Worker for Parser {
    type Input = u32;
    type Output = u32;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Parser)
    }

    fn run(&mut self, record: u32, _ctx: &mut Context<'_>) -> Result<u32, String> {
        match record % 200 {
            // What a memory bug in native code does to its process.
            13 => std::process::abort(),
            // A pathological input: the pool's timeout kills the process.
            42 => loop {
                std::thread::sleep(Duration::from_millis(50));
            },
            77 | 177 => panic!("record {record}: unexpected field"),
            r if r % 10 == 0 => Err(format!("record {record} is empty")),
            r => {
                std::thread::sleep(Duration::from_millis(u64::from(r % 15)));
                Ok(r % 7 + 1)
            }
        }
    }
}

struct Args {
    addr: String,
    seconds: Option<u64>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:9000".to_owned(),
        seconds: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--addr" => args.addr = it.next().ok_or("--addr needs an address")?,
            "--seconds" => {
                let n = it.next().ok_or("--seconds needs a number")?;
                args.seconds = Some(n.parse().map_err(|_| format!("bad --seconds {n}"))?);
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; use --addr ADDR [--seconds N]"
                ))
            }
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a worker process this serves `Parser` and never returns.
    crew::bootstrap::<Parser>();
    let args = args()?;

    let isolated = Pool::<Parser>::builder()
        .processes(3)
        .timeout(Duration::from_millis(300))
        .max_tasks_per_worker(200)
        .build()?;
    let threads = Pool::builder().workers(4).build()?;
    let server = crew_observe::Dashboard::new()
        .pool("isolated", &isolated)
        .pool("threads", &threads)
        .serve(args.addr.as_str())?;
    println!(
        "dashboard on {} (metrics at {}metrics)",
        server.url(),
        server.url()
    );

    let start = Instant::now();
    let mut n: u32 = 0;
    loop {
        if args
            .seconds
            .is_some_and(|s| start.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
        n = n.wrapping_add(1);
        // Keep the queues short: the point is a steady mix, not a backlog.
        if isolated.stats().queued < 50 {
            // A handle dropped unjoined still resolves; its outcome shows in stats.
            drop(isolated.submit(n)?);
        }
        if threads.stats().queued < 50 {
            let k = n;
            match k % 60 {
                7 => drop(threads.spawn(move || panic!("task {k} panicked"))),
                31 => drop(
                    threads
                        .job(move |_ctx: &mut Context<'_>| {
                            std::thread::sleep(Duration::from_millis(120))
                        })
                        .timeout(Duration::from_millis(50))
                        .spawn(),
                ),
                _ => drop(threads.spawn(move || {
                    std::thread::sleep(Duration::from_millis(u64::from(k % 20)));
                    k
                })),
            }
        }
        std::thread::sleep(Duration::from_millis(8));
    }
    drop(server);
    isolated.shutdown();
    threads.shutdown();
    Ok(())
}
