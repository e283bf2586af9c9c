//! Plain functions in worker processes, with no `Worker` type: what
//! `ProcessPoolExecutor.submit(fn, *args)` and workerpool's `pool.exec(fn, args)`
//! do, with a typed handle per call. A checksum runs in another process; a
//! validator's `Err` comes back as the task's typed error; a function that
//! aborts costs only its own call; one stuck for ever is killed by its timeout;
//! a thousand inputs go through `map` in chunks.
//!
//! `cargo run --example functions`

use std::time::Duration;

use crew::{Functions, Pool};
use serde::{Deserialize, Serialize};

/// FNV-1a over the bytes: stands in for real work on the caller's data.
fn checksum(bytes: serde_bytes::ByteBuf) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Debug, Serialize, Deserialize)]
enum Invalid {
    Empty,
    TooLong(usize),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Empty => f.write_str("the name is empty"),
            Invalid::TooLong(n) => write!(f, "the name has {n} bytes, more than 16"),
        }
    }
}

/// A user name, or why it is not one: the `Err` is the task's own error.
fn validate(name: String) -> Result<String, Invalid> {
    match name.len() {
        0 => Err(Invalid::Empty),
        n if n > 16 => Err(Invalid::TooLong(n)),
        _ => Ok(name.to_lowercase()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a worker process this serves the pool's calls and never returns.
    // Every `bootstrap` serves functions; `Functions` names no other type.
    crew::bootstrap::<Functions>();

    let pool = Pool::<Functions>::builder().processes(2).build()?;

    // One call, its arguments and result carried by serde. The closure
    // captures nothing: what it needs comes in its arguments.
    let pid = pool.spawn_fn((), |()| std::process::id())?.join()?;
    println!("a call ran in process {pid}, not {}", std::process::id());
    assert_ne!(pid, std::process::id());
    let data = serde_bytes::ByteBuf::from(b"hello, crew".to_vec());
    let sum = pool.spawn_fn(data.clone(), checksum)?.join()?;
    assert_eq!(sum, checksum(data));

    // A fallible function: its `Err` is the task's error, typed.
    let validate = pool.fallible(validate);
    assert_eq!(validate.spawn("Ada".into())?.join()?, "ada");
    let error = validate.spawn("x".repeat(40))?.join().unwrap_err();
    println!("rejected: {:?}", error.user_error());
    assert!(matches!(error.user_error(), Some(Invalid::TooLong(40))));

    // An abort kills only its worker process, and only its own call fails.
    let crash = pool
        .spawn_fn((), |()| -> u32 { std::process::abort() })?
        .join()
        .unwrap_err();
    println!("a call aborted its worker: {crash}");
    assert!(crash.is_crash());

    // A call stuck for ever is killed with its worker by its timeout.
    let stuck = pool
        .function(|()| -> u32 {
            loop {
                std::thread::park();
            }
        })
        .task(())
        .timeout(Duration::from_millis(200))
        .submit()?;
    assert!(stuck.join().unwrap_err().is_timeout());

    // A thousand inputs, shipped to the workers in chunks, results in order.
    let squares: Vec<u64> = pool
        .function(|x: u64| x * x)
        .map(0..1_000)
        .collect::<Result<_, _>>()?;
    assert_eq!(squares[999], 998_001);

    let stats = pool.stats();
    println!("{stats}");
    assert_eq!((stats.crashed, stats.timed_out, stats.failed), (1, 1, 1));
    pool.shutdown();
    println!("functions: all checks passed");
    Ok(())
}
