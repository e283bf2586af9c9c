//! RPC by method name: a `crew::service!` served on a thread pool and on a process
//! pool (whose workers re-run this test binary: `crew_worker_entry` below is their
//! `main`), called through the typed client and by name.

mod common;

use std::any::Any;
use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use common::{join, wait_until, worker_processes};
use crew::rpc::{CallOptions, Service};
use crew::{Context, Pool, PoolBuilder, StartError};
use serde::{Deserialize, Serialize};

crew::service! {
    /// Arithmetic and bookkeeping, with one way to fail and one way to panic.
    pub mod calc {
        /// `a + b`.
        fn add(a: i64, b: i64) -> i64;
        /// The `n`th Fibonacci number.
        fn fib(n: u32) -> u64;
        /// `a / b`, or `CalcError::DivByZero`.
        fn div(a: i64, b: i64) -> Result<i64, CalcError>;
        /// Panics with `message`.
        fn explode(message: String) -> u64;
        /// How many calls this worker's state has served, this one included.
        fn served() -> u64;
        /// The worker's process id.
        fn pid() -> u32;
        /// Never returns.
        fn spin();
        /// Returns once the test opens `GATE`.
        fn wait_for_gate();
    }
}

crew::service! {
    /// A private service of one method: its items are visible to this module.
    mod greeter {
        /// A greeting for `name`.
        fn greet(name: String) -> String;
    }
}

struct Greeter;

impl greeter::Handler for Greeter {
    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Greeter)
    }

    fn greet(&mut self, name: String) -> String {
        format!("Hello, {name}!")
    }
}

/// `calc::div`'s own error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CalcError {
    /// The divisor was zero.
    DivByZero,
}

impl fmt::Display for CalcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("division by zero")
    }
}

impl std::error::Error for CalcError {}

/// One worker's state: the calls it served.
struct Calc {
    served: u64,
}

impl calc::Handler for Calc {
    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Calc { served: 0 })
    }

    fn add(&mut self, a: i64, b: i64) -> i64 {
        self.served += 1;
        a + b
    }

    fn fib(&mut self, n: u32) -> u64 {
        self.served += 1;
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..n {
            (a, b) = (b, a.wrapping_add(b));
        }
        a
    }

    fn div(&mut self, a: i64, b: i64) -> Result<i64, CalcError> {
        self.served += 1;
        a.checked_div(b).ok_or(CalcError::DivByZero)
    }

    fn explode(&mut self, message: String) -> u64 {
        panic!("{message}")
    }

    fn served(&mut self) -> u64 {
        self.served += 1;
        self.served
    }

    fn pid(&mut self) -> u32 {
        self.served += 1;
        std::process::id()
    }

    fn spin(&mut self) {
        loop {
            std::hint::spin_loop();
        }
    }

    fn wait_for_gate(&mut self) {
        let (open, opened) = &GATE;
        let mut open = open.lock().unwrap();
        while !*open {
            open = opened.wait(open).unwrap();
        }
    }
}

/// Opened by `a_queued_call_cancels_like_any_task`; only that test calls
/// `wait_for_gate` on threads.
static GATE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

type CalcPool = Pool<calc::Worker<Calc>>;

fn threads(n: usize) -> CalcPool {
    Pool::builder().workers(n).build().unwrap()
}

/// The worker processes' `main`: in a worker it serves and exits; in the test
/// run itself it returns at once.
#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<calc::Worker<Calc>>().run();
}

/// A process pool whose workers re-run this test binary's `crew_worker_entry`.
fn processes(n: usize) -> PoolBuilder<calc::Worker<Calc>> {
    worker_processes(n)
}

#[test]
fn typed_client_calls_on_threads() {
    let pool = threads(2);
    let client = calc::Client::new(&pool);
    assert_eq!(join(client.add(2, 3).unwrap()).unwrap(), 5);
    assert_eq!(join(client.fib(50).unwrap()).unwrap(), 12_586_269_025);
    assert_eq!(join(client.div(84, 2).unwrap()).unwrap(), 42);
    let tasks: Vec<_> = (0..100).map(|i| client.add(i, i).unwrap()).collect();
    for (i, task) in (0..100).zip(tasks) {
        assert_eq!(join(task).unwrap(), 2 * i);
    }
    pool.shutdown();
}

#[test]
fn a_private_service_of_one_method() {
    let pool: Pool<greeter::Worker<Greeter>> = Pool::builder().workers(1).build().unwrap();
    let client = greeter::Client::new(&pool);
    assert_eq!(
        join(client.greet("World".to_owned()).unwrap()).unwrap(),
        "Hello, World!"
    );
    let reply = join(pool.call("greet", "crew".to_owned()).unwrap()).unwrap();
    assert!(matches!(reply, greeter::Reply::greet(ref s) if s == "Hello, crew!"));
    pool.shutdown();
}

#[test]
fn a_client_call_is_a_task_that_can_be_awaited() {
    let pool = threads(1);
    let client = calc::Client::new(&pool);
    let task = client.add(20, 22).unwrap();
    assert!(task.id().as_u64() > 0);
    let sum = futures::executor::block_on(task).unwrap();
    assert_eq!(sum, 42);
    pool.shutdown();
}

#[test]
fn calls_by_name_on_threads() {
    let pool = threads(2);
    let reply = join(pool.call("add", (40i64, 2i64)).unwrap()).unwrap();
    assert!(matches!(reply, calc::Reply::add(42)));
    assert_eq!(reply.method(), "add");

    // One argument: bare or as a one-tuple; none: `()`.
    let bare = join(pool.call("fib", 10u32).unwrap()).unwrap();
    assert!(matches!(bare, calc::Reply::fib(55)));
    let tuple = join(pool.call("fib", (10u32,)).unwrap()).unwrap();
    assert!(matches!(tuple, calc::Reply::fib(55)));
    assert!(matches!(
        join(pool.call("served", ()).unwrap()).unwrap(),
        calc::Reply::served(_)
    ));

    // Arguments that are already dynamic are taken as they are.
    let dynamic: Box<dyn Any + Send> = Box::new((1i64, 1i64));
    let reply = join(pool.call("add", dynamic).unwrap()).unwrap();
    assert!(matches!(reply, calc::Reply::add(2)));

    // The client, and a call built first and submitted later.
    let client = calc::Client::new(&pool);
    let reply = join(client.call_by_name("div", (9i64, 3i64)).unwrap()).unwrap();
    assert!(matches!(reply, calc::Reply::div(3)));
    let call = calc::Call::by_name("add", (5i64, 6i64)).unwrap();
    assert_eq!(call.method(), "add");
    assert!(matches!(
        join(pool.submit(call).unwrap()).unwrap(),
        calc::Reply::add(11)
    ));

    assert_eq!(
        <calc::Worker<Calc> as Service>::METHODS,
        [
            "add",
            "fib",
            "div",
            "explode",
            "served",
            "pid",
            "spin",
            "wait_for_gate"
        ]
    );
    assert_eq!(<calc::Worker<Calc> as Service>::NAME, "calc");
    pool.shutdown();
}

#[test]
fn an_unknown_name_or_wrong_arguments_are_typed_errors_and_submit_nothing() {
    let pool = threads(1);
    let unknown = pool.call("mul", (6i64, 7i64)).unwrap_err();
    assert!(unknown.is_unknown_method());
    assert!(!unknown.is_bad_arguments());
    assert_eq!(unknown.method(), "mul");
    assert_eq!(unknown.expected(), None);
    assert!(unknown.to_string().contains("`mul`"), "{unknown}");

    // Wrong types, wrong count, and a one-tuple where two are expected.
    for wrong in [
        pool.call("add", (6i32, 7i32)).unwrap_err(),
        pool.call("add", (6i64,)).unwrap_err(),
        pool.call("add", (6i64, 7i64, 8i64)).unwrap_err(),
        pool.call("add", "6 + 7").unwrap_err(),
    ] {
        assert!(wrong.is_bad_arguments(), "{wrong:?}");
        assert_eq!(wrong.method(), "add");
        assert_eq!(wrong.expected(), Some("(i64, i64)"));
    }
    let none_expected = pool.call("served", 1u8).unwrap_err();
    assert_eq!(none_expected.expected(), Some("()"));

    let client = calc::Client::new(&pool);
    assert!(client
        .call_by_name("fib", "ten")
        .unwrap_err()
        .is_bad_arguments());
    assert!(calc::Call::by_name("", ()).unwrap_err().is_unknown_method());

    assert_eq!(
        pool.stats().submitted,
        0,
        "a refused call is never submitted"
    );
    pool.shutdown();
}

#[test]
fn a_call_by_name_on_a_closed_pool_says_so() {
    let pool = threads(1);
    pool.shutdown();
    let closed = pool.call("add", (1i64, 2i64)).unwrap_err();
    assert!(closed.is_closed());
    assert!(!closed.is_full());
    assert_eq!(closed.method(), "add");
    let refused = calc::Client::new(&pool).add(1, 2).unwrap_err();
    assert!(refused.is_closed());
    assert_eq!(refused.into_inner().method(), "add");
}

#[test]
fn a_methods_own_error_and_a_panic_fail_that_call_only() {
    let pool = threads(2);
    let client = calc::Client::new(&pool);
    let before = client.add(1, 1).unwrap();
    let failing = client.div(1, 0).unwrap();
    let panicking = client.explode("kaboom".to_owned()).unwrap();
    let after: Vec<_> = (0..20).map(|i| client.add(i, 1).unwrap()).collect();

    let error = join(failing).unwrap_err();
    assert!(error.is_user());
    assert_eq!(error.user_error(), Some(&CalcError::DivByZero));
    assert_eq!(error.into_user_error().unwrap(), CalcError::DivByZero);

    let panic = join(panicking).unwrap_err();
    assert!(panic.is_panic());
    assert_eq!(panic.panic_message(), Some("kaboom"));

    assert_eq!(join(before).unwrap(), 2);
    for (i, task) in (0..20).zip(after) {
        assert_eq!(join(task).unwrap(), i + 1);
    }

    // By name, the error is the service's error enum, with the method's variant.
    let by_name = join(pool.call("div", (1i64, 0i64)).unwrap()).unwrap_err();
    assert!(matches!(
        by_name.user_error(),
        Some(calc::Error::div(CalcError::DivByZero))
    ));
    // A task is counted just after it resolves.
    wait_until("the failures are counted", || {
        let stats = pool.stats();
        stats.finished() == stats.submitted
    });
    let stats = pool.stats();
    assert_eq!((stats.failed, stats.panicked), (2, 1));
    pool.shutdown();
}

#[test]
fn state_persists_across_calls_on_one_worker() {
    let pool = threads(1);
    let client = calc::Client::new(&pool);
    for expected in 1..=5 {
        assert_eq!(join(client.served().unwrap()).unwrap(), expected);
    }
    join(client.add(1, 2).unwrap()).unwrap();
    join(client.div(1, 0).unwrap()).unwrap_err(); // an error keeps the state
    assert_eq!(join(client.served().unwrap()).unwrap(), 8);
    pool.shutdown();
}

#[test]
fn a_queued_call_cancels_like_any_task() {
    let pool = threads(1);
    let client = calc::Client::new(&pool);
    let blocker = client.wait_for_gate().unwrap();
    wait_until("the gate call runs", || blocker.worker().is_some());
    let queued = client.add(1, 2).unwrap();
    assert!(queued.cancel());
    assert!(queued.is_finished(), "a cancelled call resolves at once");
    assert!(join(queued).unwrap_err().is_cancelled());

    *GATE.0.lock().unwrap() = true;
    GATE.1.notify_all();
    join(blocker).unwrap();
    wait_until("the cancelled call is counted", || {
        pool.stats().cancelled == 1
    });
    pool.shutdown();
}

#[test]
fn typed_client_and_calls_by_name_on_processes() {
    let pool = processes(1).build().unwrap();
    let client = calc::Client::new(&pool);
    assert_eq!(join(client.add(2, 3).unwrap()).unwrap(), 5);
    assert_eq!(
        join(client.fib(90).unwrap()).unwrap(),
        2_880_067_194_370_816_120
    );
    let pid = join(client.pid().unwrap()).unwrap();
    assert_ne!(pid, std::process::id(), "the call ran in a worker process");

    let reply = join(pool.call("add", (40i64, 2i64)).unwrap()).unwrap();
    assert!(matches!(reply, calc::Reply::add(42)));
    assert!(pool.call("nope", ()).unwrap_err().is_unknown_method());
    assert!(pool.call("add", 1u8).unwrap_err().is_bad_arguments());
    pool.shutdown();
}

#[test]
fn errors_panics_and_state_on_processes() {
    let pool = processes(1).build().unwrap();
    let client = calc::Client::new(&pool);
    let pid = join(client.pid().unwrap()).unwrap();
    assert_eq!(join(client.served().unwrap()).unwrap(), 2);
    assert_eq!(join(client.served().unwrap()).unwrap(), 3);

    let error = join(client.div(1, 0).unwrap()).unwrap_err();
    assert_eq!(error.user_error(), Some(&CalcError::DivByZero));
    assert_eq!(join(client.served().unwrap()).unwrap(), 5);

    let panic = join(client.explode("far away".to_owned()).unwrap()).unwrap_err();
    assert_eq!(panic.panic_message(), Some("far away"));
    // The panic rebuilt the state (as for any worker) in the same process.
    assert_eq!(join(client.served().unwrap()).unwrap(), 1);
    assert_eq!(join(client.pid().unwrap()).unwrap(), pid);
    pool.shutdown();
}

#[test]
fn a_call_that_runs_past_its_timeout_is_killed_on_processes() {
    let pool = processes(1).build().unwrap();
    let client = calc::Client::new(&pool);
    let first = join(client.pid().unwrap()).unwrap();
    let patient = client
        .clone()
        .with_options(CallOptions::new().timeout(Duration::from_millis(100)));
    let timed_out = join(patient.spin().unwrap()).unwrap_err();
    assert!(timed_out.is_timeout(), "{timed_out:?}");
    // The stuck worker was killed and replaced; the next call runs.
    let second = join(client.pid().unwrap()).unwrap();
    assert_ne!(first, second);
    assert_eq!(join(client.add(1, 1).unwrap()).unwrap(), 2);
    pool.shutdown();
}
