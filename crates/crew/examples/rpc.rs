//! RPC by method name, as workerpool's dedicated worker and `proxy()`: a worker
//! process exposes named methods; the pool calls them through a typed client (the
//! proxy: plain method calls, arguments checked by the compiler) and by name (like
//! `pool.exec('fibonacci', [10])`). A method's own error, and an unknown name,
//! come back as typed errors.
//!
//! ```text
//! cargo run --example rpc
//! ```

use std::collections::HashMap;
use std::fmt;

use crew::{Context, Pool, StartError};
use serde::{Deserialize, Serialize};

crew::service! {
    /// What a dedicated worker offers.
    pub mod my_worker {
        /// The `n`th Fibonacci number, remembered per worker.
        fn fibonacci(n: u32) -> u64;
        /// `a + b`.
        fn add(a: i64, b: i64) -> i64;
        /// `a / b`; dividing by zero is the caller's error.
        fn divide(a: i64, b: i64) -> Result<i64, MathError>;
        /// The worker's process id and how many Fibonacci numbers it remembers.
        fn whoami() -> (u32, usize);
    }
}

/// The error `divide` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MathError {
    /// The divisor was zero.
    DivisionByZero,
}

impl fmt::Display for MathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("division by zero")
    }
}

impl std::error::Error for MathError {}

/// One worker process's state: a cache that lives as long as the worker.
struct Dedicated {
    fibonacci: HashMap<u32, u64>,
}

impl my_worker::Handler for Dedicated {
    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Dedicated {
            fibonacci: HashMap::new(),
        })
    }

    fn fibonacci(&mut self, n: u32) -> u64 {
        if let Some(&known) = self.fibonacci.get(&n) {
            return known;
        }
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..n {
            (a, b) = (b, a.wrapping_add(b));
        }
        self.fibonacci.insert(n, a);
        a
    }

    fn add(&mut self, a: i64, b: i64) -> i64 {
        a + b
    }

    fn divide(&mut self, a: i64, b: i64) -> Result<i64, MathError> {
        a.checked_div(b).ok_or(MathError::DivisionByZero)
    }

    fn whoami(&mut self) -> (u32, usize) {
        (std::process::id(), self.fibonacci.len())
    }
}

type Worker = my_worker::Worker<Dedicated>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a worker process this serves the service and never returns.
    crew::bootstrap::<Worker>();

    let pool = Pool::<Worker>::builder().processes(1).build()?;

    // The proxy: a typed client. Each call is a crew `Task`, so it can be
    // joined, awaited, cancelled or given a timeout like any other.
    let proxy = my_worker::Client::new(&pool);
    let fib = proxy.fibonacci(10)?.join()?;
    println!("proxy: fibonacci(10) = {fib}");
    assert_eq!(fib, 55);
    let sum = proxy.add(2, 3)?.join()?;
    println!("proxy: add(2, 3) = {sum}");
    assert_eq!(sum, 5);
    match proxy.divide(1, 0)?.join() {
        Err(e) if e.is_user() => {
            println!("proxy: divide(1, 0) failed: {}", e.user_error().unwrap())
        }
        other => return Err(format!("divide(1, 0) gave {other:?}").into()),
    }
    let (pid, cached) = proxy.whoami()?.join()?;
    println!("proxy: served by process {pid}, which remembers {cached} Fibonacci number");
    assert_ne!(pid, std::process::id());
    assert_eq!(cached, 1);

    // By name, like `pool.exec('fibonacci', [20])`: the name is checked here,
    // before anything is sent, and the answer is the reply enum.
    match pool.call("fibonacci", 20u32)?.join()? {
        my_worker::Reply::fibonacci(n) => {
            println!("exec: fibonacci(20) = {n}");
            assert_eq!(n, 6765);
        }
        other => return Err(format!("unexpected reply {other:?}").into()),
    }
    let unknown = pool.call("multiply", (6i64, 7i64)).unwrap_err();
    println!("exec: {unknown}");
    assert!(unknown.is_unknown_method());
    let wrong = pool.call("add", ("two", "three")).unwrap_err();
    println!("exec: {wrong}");
    assert!(wrong.is_bad_arguments());

    pool.shutdown();
    println!("rpc: all checks passed");
    Ok(())
}
