//! The basics, end to end: closures and a worker type, results by join and await.

use crew::{Context, Pool, StartError, Worker};

#[test]
fn closures_return_their_results() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let tasks: Vec<_> = (0..1000u64).map(|i| pool.spawn(move || i * 2)).collect();
    let sum: u64 = tasks.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(sum, 999 * 1000);
    pool.shutdown();
}

struct Adder {
    base: u64,
}

impl Worker for Adder {
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Adder { base: 0 })
    }

    fn run(&mut self, input: u64, _ctx: &mut Context<'_>) -> Result<u64, String> {
        if input == 13 {
            return Err("unlucky".into());
        }
        Ok(self.base + input + 1)
    }
}

#[test]
fn worker_type_runs_inputs_and_keeps_user_errors() {
    let pool = Pool::<Adder>::builder().workers(2).build().unwrap();
    assert_eq!(pool.submit(41).unwrap().join().unwrap(), 42);
    let err = pool.submit(13).unwrap().join().unwrap_err();
    assert!(err.is_user());
    assert_eq!(err.user_error().map(String::as_str), Some("unlucky"));
    pool.shutdown();
}

#[test]
fn task_is_a_future() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let t = pool.spawn(|| 7);
    assert_eq!(futures::executor::block_on(t).unwrap(), 7);
}
