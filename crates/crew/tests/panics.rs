//! A panic in a task reaches its caller with the message; the worker's state is
//! stopped and rebuilt with `start`; the pool keeps its size and keeps working.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

use common::join;
use crew::{Context, Pool, StartError, Worker};

#[test]
fn panic_message_reaches_the_caller() {
    let pool = Pool::builder().workers(2).build().unwrap();

    let formatted = join(pool.spawn(|| -> u32 { panic!("boom {}", 42) })).unwrap_err();
    assert!(formatted.is_panic(), "{formatted:?}");
    assert_eq!(formatted.panic_message(), Some("boom 42"));
    assert!(formatted.to_string().contains("boom 42"), "{formatted}");
    assert!(!formatted.is_user() && !formatted.is_cancelled());

    let literal = join(pool.spawn(|| -> u32 { panic!("static str") })).unwrap_err();
    assert_eq!(literal.panic_message(), Some("static str"));

    let other = join(pool.spawn(|| -> u32 { std::panic::panic_any(7_u32) })).unwrap_err();
    assert!(other.is_panic());
    assert_eq!(other.panic_message(), Some("Box<dyn Any>"));

    // The workers that panicked still run tasks.
    assert_eq!(join(pool.spawn(|| 1)).unwrap(), 1);
    pool.shutdown();
}

/// Which instance (by the order `start` built them) ran, and which were stopped.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);
static STARTS: AtomicUsize = AtomicUsize::new(0);
static STOPPED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

struct Stateful {
    instance: u64,
    handled: u64,
}

enum Req {
    /// Answers (instance, inputs this instance has handled).
    Whoami,
    /// Bumps the state, then panics: the instance is left half-updated.
    Explode(&'static str),
}

impl Worker for Stateful {
    type Input = Req;
    type Output = (u64, u64);
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        STARTS.fetch_add(1, SeqCst);
        Ok(Stateful {
            instance: NEXT_INSTANCE.fetch_add(1, SeqCst),
            handled: 0,
        })
    }

    fn run(&mut self, req: Req, _ctx: &mut Context<'_>) -> Result<(u64, u64), Self::Error> {
        self.handled += 1;
        match req {
            Req::Whoami => Ok((self.instance, self.handled)),
            Req::Explode(msg) => panic!("{msg}"),
        }
    }

    fn stop(&mut self, _ctx: &mut Context<'_>) {
        STOPPED.lock().unwrap().push(self.instance);
    }
}

#[test]
fn worker_state_is_rebuilt_after_a_panic() {
    let pool = Pool::<Stateful>::builder().workers(1).build().unwrap();
    let (first, n) = join(pool.submit(Req::Whoami).unwrap()).unwrap();
    assert_eq!(n, 1);
    assert_eq!(STARTS.load(SeqCst), 1);
    let worker_before = pool.workers();

    let err = join(pool.submit(Req::Explode("state corrupted")).unwrap()).unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("state corrupted"));

    // The next task runs on a fresh instance: new identity, state from scratch.
    let (second, n) = join(pool.submit(Req::Whoami).unwrap()).unwrap();
    assert_ne!(second, first, "a fresh instance after the panic");
    assert_eq!(n, 1, "the fresh instance starts from its own start()");
    assert_eq!(STARTS.load(SeqCst), 2, "start ran again");
    assert_eq!(
        *STOPPED.lock().unwrap(),
        vec![first],
        "stop ran on the panicked instance, and only on it"
    );
    assert_eq!(pool.workers().len(), 1, "the pool keeps its size");
    assert_eq!(pool.workers(), worker_before, "the same worker, rebuilt");
    pool.shutdown();
    assert_eq!(*STOPPED.lock().unwrap(), vec![first, second]);
}

#[test]
fn pool_keeps_its_size_through_many_panics() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let panics: Vec<_> = (0..50)
        .map(|i| pool.spawn(move || -> usize { panic!("panic #{i}") }))
        .collect();
    for (i, t) in panics.into_iter().enumerate() {
        let err = join(t).unwrap_err();
        assert_eq!(err.panic_message(), Some(format!("panic #{i}").as_str()));
    }
    assert_eq!(pool.workers().len(), 2);
    let sum: usize = (0..100)
        .map(|i| pool.spawn(move || i))
        .map(|t| join(t).unwrap())
        .sum();
    assert_eq!(sum, 4950);
    assert!(pool.wait_idle_timeout(common::LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.panicked, 50, "{stats}");
    assert_eq!(stats.completed, 100, "{stats}");
    assert_eq!(stats.workers, 2, "{stats}");
    pool.shutdown();
}
