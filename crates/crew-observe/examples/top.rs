//! `top` on a pool in this process: a thread pool running a mix of short and
//! long tasks (and a few panics), shown live in the terminal until `q`.
//!
//! `cargo run --release --example top`
//!
//! For a pool in another process, serve a dashboard there and run
//! `crew-top --url http://HOST:PORT`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Panic messages go to stderr, which would scribble over the view; crew
    // still hands each panic to its task.
    std::panic::set_hook(Box::new(|_| {}));
    let pool = crew::Pool::builder().workers(4).build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (pool, stop) = (pool.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if pool.stats().queued < 20 {
                    drop(pool.spawn(move || {
                        assert!(!n.is_multiple_of(97), "task {n} hit a bad input");
                        std::thread::sleep(Duration::from_millis(
                            n % 7 * 5 + u64::from(n.is_multiple_of(50)) * 300,
                        ));
                    }));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let shown = crew_observe::top::Top::pool("example", &pool)
        .refresh(Duration::from_millis(500))
        .run();
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    pool.shutdown();
    Ok(shown?)
}
