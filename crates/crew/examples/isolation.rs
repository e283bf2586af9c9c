//! Process workers: a "native" parser that segfaults on one input and loops for
//! ever on another, run in isolated worker processes. The crash costs only the
//! task that caused it, the loop is killed by its timeout, and everything else
//! completes.
//!
//! `cargo run --example isolation`

use std::time::Duration;

use crew::{Context, Pool, StartError, Worker};

/// Parses records; stands in for a C library that is not safe on every input.
struct Parser {
    parsed: u64,
}

impl Worker for Parser {
    type Input = u32;
    type Output = String;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Parser { parsed: 0 })
    }

    fn run(&mut self, record: u32, _ctx: &mut Context<'_>) -> Result<String, String> {
        self.parsed += 1;
        match record {
            13 => {
                eprintln!("parser: record 13 has a corrupt header");
                // What a memory bug in native code does.
                // SAFETY: not safe, on purpose: this process dies of SIGSEGV here.
                unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u32>(), record) };
                unreachable!()
            }
            42 => loop {
                std::hint::spin_loop(); // a parser stuck on a pathological input
            },
            r if r % 10 == 0 => Err(format!("record {r} is empty")),
            r => Ok(format!(
                "record {r}: {} fields (pid {})",
                r % 7 + 1,
                std::process::id()
            )),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a worker process this serves `Parser` and never returns.
    crew::bootstrap::<Parser>();

    let pool = Pool::<Parser>::builder()
        .processes(2)
        .timeout(Duration::from_millis(500))
        .build()?;
    let tasks: Vec<_> = (1..=50).map(|r| (r, pool.submit(r))).collect();
    let (mut ok, mut failed) = (0, 0);
    for (record, task) in tasks {
        match task?.join() {
            Ok(_) => ok += 1,
            Err(e) if e.is_user() => failed += 1,
            Err(e) if e.is_crash() => {
                let crash = e.crash().expect("a crash");
                println!("record {record}: worker crashed ({crash})");
                assert_eq!(crash.signal(), Some(11));
            }
            Err(e) if e.is_timeout() => println!("record {record}: killed after its timeout"),
            Err(e) => return Err(e.into()),
        }
    }
    let stats = pool.stats();
    println!("{ok} parsed, {failed} rejected; {stats}");
    assert_eq!((ok, failed), (43, 5));
    assert_eq!((stats.crashed, stats.timed_out), (1, 1));
    pool.shutdown();
    println!("isolation: all checks passed");
    Ok(())
}
