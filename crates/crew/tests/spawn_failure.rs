//! Worker threads that cannot be started (`PoolBuilder::spawn_handler` returning an
//! error): `build()` fails with a spawn error, not a settings error, and leaves no
//! thread behind; a replacement that fails to start is retried by the monitor after
//! `start_backoff` until the pool is back to its size, while the surviving workers
//! keep running tasks; nothing panics.

mod common;

use std::error::Error as StdError;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::thread::{Builder, JoinHandle};
use std::time::{Duration, Instant};

use common::{join, wait_until, LIMIT};
use crew::{Closures, Pool, PoolBuilder};

const BACKOFF: Duration = Duration::from_millis(10);

// ------------------------------------------------------------------ helpers

/// Names of the threads that panicked, recorded by a panic hook installed once
/// for this test binary. Each test names its pool's threads with its own prefix
/// and checks that none of them panicked (a panic inside a task is caught by the
/// pool, but the hook still sees it).
static PANICKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            PANICKED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name);
            previous(info);
        }));
    });
}

#[track_caller]
fn assert_no_panic_on_threads(prefix: &str) {
    let panicked: Vec<String> = PANICKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|name| name.starts_with(prefix))
        .cloned()
        .collect();
    assert!(panicked.is_empty(), "threads panicked: {panicked:?}");
}

/// A spawn handler that starts the first `succeed_first` threads, then refuses
/// `fail_next` more and keeps refusing while `hold` is set; after that it starts
/// threads again. It records when each refusal happened and how many of the
/// threads it started are still running.
#[derive(Clone)]
struct Spawner {
    succeed_first: usize,
    fail_next: usize,
    hold: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    refusals: Arc<Mutex<Vec<Instant>>>,
    alive: Arc<AtomicUsize>,
}

impl Spawner {
    fn new(succeed_first: usize, fail_next: usize) -> Self {
        Spawner {
            succeed_first,
            fail_next,
            hold: Arc::default(),
            calls: Arc::default(),
            refusals: Arc::default(),
            alive: Arc::default(),
        }
    }

    fn refusals(&self) -> usize {
        self.refusals.lock().unwrap().len()
    }

    fn alive(&self) -> usize {
        self.alive.load(SeqCst)
    }

    fn handler(
        &self,
    ) -> impl Fn(Builder, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>> + Send + Sync + 'static
    {
        let spawner = self.clone();
        move |builder, body| spawner.spawn(builder, body)
    }

    fn spawn(
        &self,
        builder: Builder,
        body: Box<dyn FnOnce() + Send>,
    ) -> io::Result<JoinHandle<()>> {
        let call = self.calls.fetch_add(1, SeqCst);
        if call >= self.succeed_first {
            let mut refusals = self.refusals.lock().unwrap();
            if refusals.len() < self.fail_next || self.hold.load(SeqCst) {
                refusals.push(Instant::now());
                return Err(io::Error::other("no threads for you"));
            }
        }
        let alive = Arc::clone(&self.alive);
        alive.fetch_add(1, SeqCst);
        let started = builder.spawn(move || {
            struct Leave(Arc<AtomicUsize>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, SeqCst);
                }
            }
            let _leave = Leave(alive);
            body();
        });
        if started.is_err() {
            self.alive.fetch_sub(1, SeqCst);
        }
        started
    }
}

fn builder(name: &str, workers: usize, spawner: &Spawner) -> PoolBuilder<Closures> {
    record_panics();
    Pool::builder()
        .workers(workers)
        .thread_name(name)
        .start_backoff(BACKOFF)
        .spawn_handler(spawner.handler())
}

fn sum_of_tasks(pool: &Pool, n: u32) -> u32 {
    let tasks: Vec<_> = (0..n).map(|i| pool.spawn(move || i)).collect();
    tasks.into_iter().map(|t| join(t).unwrap()).sum()
}

// ------------------------------------------------------------------ build

#[test]
fn build_fails_with_a_spawn_error_when_no_thread_can_start() {
    let spawner = Spawner::new(0, usize::MAX);
    let err = builder("sf-none", 2, &spawner)
        .build()
        .expect_err("no worker thread could start");
    assert!(
        !err.is_invalid_setting(),
        "the settings were fine, the OS said no: {err:?}"
    );
    let source = err.source().expect("the OS error is the source");
    assert_eq!(source.to_string(), "no threads for you");
    assert!(
        !err.to_string().contains("no threads for you"),
        "Display does not repeat the source: {err}"
    );
    assert_eq!(
        spawner.calls.load(SeqCst),
        1,
        "gave up at the first refusal"
    );
    assert_eq!(spawner.alive(), 0);
    assert_no_panic_on_threads("sf-none");
}

#[test]
fn build_that_fails_part_way_leaves_no_thread_behind() {
    let spawner = Spawner::new(2, usize::MAX);
    let err = builder("sf-partial", 3, &spawner)
        .build()
        .expect_err("the third worker thread could not start");
    assert!(!err.is_invalid_setting(), "{err:?}");
    assert_eq!(spawner.calls.load(SeqCst), 3);
    wait_until("the two threads that did start exit", || {
        spawner.alive() == 0
    });
    assert_no_panic_on_threads("sf-partial");
}

// ------------------------------------------------------------------ replacement

#[test]
fn a_replacement_that_cannot_start_is_retried_until_the_pool_is_whole() {
    const REFUSALS: usize = 3;
    let spawner = Spawner::new(2, REFUSALS);
    spawner.hold.store(true, SeqCst);
    let pool = builder("sf-replace", 2, &spawner).build().unwrap();
    let before = pool.workers();
    assert_eq!(before.len(), 2);

    let victim = before[0];
    assert!(pool.kill_worker(victim));
    assert!(spawner.refusals() >= 1, "the replacement was tried at once");
    assert_eq!(
        pool.workers(),
        [before[1]],
        "one short while spawning fails"
    );

    // The survivor keeps running tasks meanwhile.
    assert_eq!(sum_of_tasks(&pool, 100), 4950);
    wait_until("the monitor retries the replacement", || {
        spawner.refusals() >= REFUSALS
    });
    assert_eq!(pool.workers(), [before[1]], "still one short");
    assert_eq!(sum_of_tasks(&pool, 100), 4950);

    // Spawning works again: the pool gets back to its size, with a new worker.
    spawner.hold.store(false, SeqCst);
    wait_until("the pool is back to two workers", || {
        pool.workers().len() == 2
    });
    let after = pool.workers();
    assert!(after.contains(&before[1]), "{after:?}");
    assert!(!after.contains(&victim), "{after:?}");
    wait_until("the killed worker's thread exits", || spawner.alive() == 2);
    assert_eq!(sum_of_tasks(&pool, 100), 4950);

    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.completed, 300, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
    pool.shutdown();
    assert_no_panic_on_threads("sf-replace");
}
