//! A `Task` is a `Future` that needs no particular runtime: awaited under tokio's
//! multi-thread and current-thread schedulers, including while it is still pending.

mod common;

use std::time::Duration;

use common::{Gate, OpenOnDrop, LIMIT};
use crew::{Context, Pool, StartError, Worker};

/// Awaits tasks that resolve only after the awaiting code has had to register a
/// waker: each waits on a gate that another OS thread opens a little later.
async fn await_pending_tasks() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let tasks: Vec<_> = (0..10_u64)
        .map(|i| {
            let gate = gate.clone();
            pool.spawn(move || {
                gate.wait();
                i * i
            })
        })
        .collect();
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            // Only makes it likely that the first await finds the task pending.
            std::thread::sleep(Duration::from_millis(20));
            gate.open();
        })
    };
    let mut sum = 0;
    for t in tasks {
        sum += tokio::time::timeout(LIMIT, t)
            .await
            .expect("the task resolved")
            .unwrap();
    }
    assert_eq!(sum, 285);
    opener.join().unwrap();

    // Many ready-or-nearly-ready tasks awaited concurrently from tokio tasks.
    let handles: Vec<_> = (0..100_u64)
        .map(|i| {
            let t = pool.spawn(move || i + 1);
            tokio::spawn(async move { t.await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += tokio::time::timeout(LIMIT, h).await.unwrap().unwrap();
    }
    assert_eq!(total, 5050);

    // A failure arrives through the future too.
    let panicked = pool.spawn(|| -> u8 { panic!("async boom") });
    let err = tokio::time::timeout(LIMIT, panicked)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.panic_message(), Some("async boom"));

    tokio::time::timeout(LIMIT, pool.idle()).await.unwrap();
    pool.shutdown();
}

struct Halver;

impl Worker for Halver {
    type Input = u32;
    type Output = u32;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Halver)
    }

    fn run(&mut self, n: u32, _ctx: &mut Context<'_>) -> Result<u32, String> {
        if n.is_multiple_of(2) {
            Ok(n / 2)
        } else {
            Err(format!("{n} is odd"))
        }
    }
}

async fn await_worker_tasks() {
    let pool = Pool::<Halver>::builder().workers(2).build().unwrap();
    let even = pool.submit(84).unwrap();
    let odd = pool.submit(7).unwrap();
    assert_eq!(
        tokio::time::timeout(LIMIT, even).await.unwrap().unwrap(),
        42
    );
    let err = tokio::time::timeout(LIMIT, odd).await.unwrap().unwrap_err();
    assert_eq!(err.user_error().map(String::as_str), Some("7 is odd"));
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_under_multi_thread_runtime() {
    await_pending_tasks().await;
    await_worker_tasks().await;
}

#[tokio::test(flavor = "current_thread")]
async fn await_under_current_thread_runtime() {
    await_pending_tasks().await;
    await_worker_tasks().await;
}
