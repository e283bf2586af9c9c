//! Submitting to a closed pool: a worker pool gives the input back inside
//! `SubmitError`; a closure pool gives a task already resolved as closed.

mod common;

use common::{Flag, SetOnDrop};
use crew::{Context, Pool, Priority, StartError, Worker};

/// An input that is neither `Clone` nor `Copy`: getting it back means getting the
/// very value back.
#[derive(Debug, PartialEq, Eq)]
struct Order {
    id: u64,
    lines: Vec<String>,
}

struct Shop;

impl Worker for Shop {
    type Input = Order;
    type Output = usize;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Shop)
    }

    fn run(&mut self, order: Order, _ctx: &mut Context<'_>) -> Result<usize, Self::Error> {
        Ok(order.lines.len())
    }
}

fn order(id: u64) -> Order {
    Order {
        id,
        lines: vec!["tea".into(), "scones".into()],
    }
}

#[test]
fn submit_after_shutdown_gives_the_input_back() {
    let pool = Pool::<Shop>::builder().workers(2).build().unwrap();
    assert_eq!(common::join(pool.submit(order(1)).unwrap()).unwrap(), 2);
    pool.shutdown();
    assert!(pool.is_closed());

    let err = pool.submit(order(2)).expect_err("the pool is closed");
    assert!(err.is_closed());
    assert!(!err.is_full());
    assert_eq!(err.input(), &order(2));
    assert_eq!(err.into_inner(), order(2));

    let err = pool
        .task(order(3))
        .priority(Priority::High)
        .submit()
        .expect_err("the pool is closed");
    assert!(err.is_closed());
    assert_eq!(err.into_inner(), order(3));
}

#[test]
fn submit_after_terminate_gives_the_input_back() {
    let pool = Pool::<Shop>::builder().workers(1).build().unwrap();
    pool.terminate();
    let err = pool.submit(order(4)).expect_err("the pool is closed");
    assert!(err.is_closed());
    assert_eq!(err.into_inner(), order(4));
}

#[test]
fn spawn_after_shutdown_gives_a_closed_task() {
    let pool = Pool::builder().workers(2).build().unwrap();
    pool.shutdown();

    let ran = Flag::new();
    let dropped = Flag::new();
    let task = {
        let ran = ran.clone();
        let guard = SetOnDrop(dropped.clone());
        pool.spawn(move || {
            let _guard = guard;
            ran.set();
        })
    };
    assert!(task.is_finished(), "already resolved");
    assert!(dropped.get(), "the closure was dropped");
    assert_eq!(task.worker(), None);
    let err = task.join().unwrap_err();
    assert!(err.is_closed(), "{err:?}");

    let built = pool.job(|_ctx| 1).priority(Priority::Low).spawn();
    assert!(built.is_finished());
    assert!(built.join().unwrap_err().is_closed());

    let with_ctx = pool.spawn_with(|_ctx| 2);
    assert!(futures::executor::block_on(with_ctx)
        .unwrap_err()
        .is_closed());
    assert!(!ran.get(), "nothing ran");
    assert_eq!(pool.stats().submitted, 0, "nothing was accepted");
}
