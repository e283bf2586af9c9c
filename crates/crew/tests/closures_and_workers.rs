//! The two kinds of pool, every way of submitting to each, and the user's own error
//! reaching the caller as the value it was (not a string).

mod common;

use std::error::Error as StdError;
use std::fmt;

use common::join;
use crew::{Context, Pool, Priority, StartError, TaskError, Worker};

#[test]
fn closure_pool_spawn_spawn_with_and_job() {
    let pool = Pool::builder().workers(2).build().unwrap();
    assert_eq!(pool.size(), 2);

    let plain = pool.spawn(|| "plain".to_owned());
    let with_ctx = pool.spawn_with(|ctx| (ctx.worker_id(), ctx.task_id(), ctx.is_cancelled()));
    let with_ctx_id = with_ctx.id();
    let built = pool
        .job(|_ctx| 40 + 2)
        .priority(Priority::High)
        .timeout(std::time::Duration::from_secs(60))
        .spawn();

    assert!(plain.id() < with_ctx_id, "ids increase in submission order");
    assert!(with_ctx_id < built.id(), "ids increase in submission order");

    assert_eq!(join(plain).unwrap(), "plain");
    let (worker, task, cancelled) = join(with_ctx).unwrap();
    assert!(
        pool.workers().contains(&worker),
        "{worker} is one of the pool's"
    );
    assert_eq!(
        task,
        Some(with_ctx_id),
        "the context names the task it runs"
    );
    assert!(!cancelled);
    assert_eq!(join(built).unwrap(), 42);
    pool.shutdown();
}

#[test]
fn task_reports_the_worker_that_ran_it() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let task = pool.spawn_with(|ctx| ctx.worker_id());
    common::wait_until("the task finishes", || task.is_finished());
    let reported = task.worker().expect("a task that ran names its worker");
    assert_eq!(join(task).unwrap(), reported);
}

/// A worker with per-worker state: counts the inputs this instance has handled.
struct Tally {
    handled: u64,
}

impl Worker for Tally {
    type Input = u64;
    type Output = (u64, u64);
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Tally { handled: 0 })
    }

    fn run(&mut self, input: u64, _ctx: &mut Context<'_>) -> Result<(u64, u64), Self::Error> {
        self.handled += 1;
        Ok((input * 10, self.handled))
    }
}

#[test]
fn worker_pool_submit_and_task_builder() {
    let pool = Pool::<Tally>::builder().workers(1).build().unwrap();
    let a = pool.submit(1).unwrap();
    let b = pool
        .task(2)
        .priority(Priority::Low)
        .timeout(std::time::Duration::from_secs(60))
        .submit()
        .unwrap();
    let c = pool.submit(3).unwrap();
    // One worker, one instance: its state persists from task to task.
    let mut handled: Vec<u64> = [a, b, c]
        .into_iter()
        .map(|t| {
            let (out, n) = join(t).unwrap();
            assert!(out % 10 == 0 && (1..=3).contains(&(out / 10)));
            n
        })
        .collect();
    handled.sort_unstable();
    assert_eq!(handled, vec![1, 2, 3]);
    pool.shutdown();
}

/// An error type that is not a string: the caller must get this very value back.
#[derive(Debug, PartialEq, Eq)]
struct QueryFailed {
    code: u32,
    table: &'static str,
}

impl fmt::Display for QueryFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query on {} failed with {}", self.table, self.code)
    }
}

impl StdError for QueryFailed {}

struct Db;

impl Worker for Db {
    type Input = u32;
    type Output = u32;
    type Error = QueryFailed;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Db)
    }

    fn run(&mut self, code: u32, _ctx: &mut Context<'_>) -> Result<u32, QueryFailed> {
        if code == 0 {
            Ok(0)
        } else {
            Err(QueryFailed {
                code,
                table: "users",
            })
        }
    }
}

#[test]
fn user_error_is_kept_and_reachable() {
    let pool = Pool::<Db>::builder().workers(2).build().unwrap();
    assert_eq!(join(pool.submit(0).unwrap()).unwrap(), 0);

    let err: TaskError<QueryFailed> = join(pool.submit(503).unwrap()).unwrap_err();
    assert!(err.is_user());
    for other in [
        err.is_panic(),
        err.is_cancelled(),
        err.is_timeout(),
        err.is_closed(),
        err.is_killed(),
        err.is_start_failure(),
    ] {
        assert!(!other, "a user error is only a user error: {err:?}");
    }
    let expected = QueryFailed {
        code: 503,
        table: "users",
    };
    assert_eq!(err.user_error(), Some(&expected));
    // Through `source()`: it displays as the user's error, and the typed value
    // is reached through the `UserError` view (one `Error` impl serves every
    // `E: Debug + Display`, so it cannot hand out `E` itself as a `dyn Error`).
    let source = err.source().expect("a user error is the source");
    assert_eq!(source.to_string(), expected.to_string());
    assert_eq!(
        source
            .downcast_ref::<crew::UserError<QueryFailed>>()
            .map(crew::UserError::get),
        Some(&expected)
    );
    // Display does not repeat the source.
    assert!(!err.to_string().contains("503"), "{err}");
    // And by value.
    assert_eq!(err.into_user_error().ok(), Some(expected));

    // `map_user` converts the user error and keeps its kind.
    let mapped = join(pool.submit(7).unwrap())
        .unwrap_err()
        .map_user(|e| e.code);
    assert!(mapped.is_user());
    assert_eq!(mapped.user_error(), Some(&7));
    pool.shutdown();
}
