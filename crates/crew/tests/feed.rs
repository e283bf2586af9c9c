//! `feed`, `feed_fn` and `feed_stream`: a long-lived source (a channel, an endless
//! iterator, an async stream) fed into the pool until it closes. Every input yields
//! once; the window bounds what is in flight; errors stay with their item; dropping
//! the feed cancels its window and stops the feeder; a source that panics; the
//! `Stream` form under `futures` and tokio; and once on a process pool.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};

use common::{wait_until, worker_processes, Gate, OpenOnDrop};
use crew::{Context, Pool, StartError, Worker};
use futures::StreamExt;

/// Squares its input; odd inputs above 1,000,000 are the worker's own error.
struct Squarer;

impl Worker for Squarer {
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Squarer)
    }

    fn run(&mut self, n: u64, _ctx: &mut Context<'_>) -> Result<u64, String> {
        if n > 1_000_000 && n % 2 == 1 {
            return Err(format!("{n} is odd"));
        }
        Ok(n * n)
    }
}

/// The worker processes' `main` for `a_feed_runs_on_a_process_pool`: in a worker
/// it serves and exits; in the test run itself it returns at once.
#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Squarer>().run();
}

/// Checks that `results` hold every input of `inputs` once, squared, at its index.
fn assert_all_squared(results: BTreeMap<usize, u64>, inputs: &[u64]) {
    assert_eq!(results.len(), inputs.len(), "one result per input");
    for (index, n) in inputs.iter().enumerate() {
        assert_eq!(results.get(&index), Some(&(n * n)), "input {index}");
    }
}

#[test]
fn a_channel_feed_yields_every_input_once_and_ends_when_the_channel_closes() {
    let pool = Pool::<Squarer>::builder().workers(3).build().unwrap();
    let (jobs, queue) = mpsc::channel();
    let inputs: Vec<u64> = (0..2_000).collect();
    let producer = {
        let inputs = inputs.clone();
        std::thread::spawn(move || {
            for n in inputs {
                jobs.send(n).unwrap();
            }
        }) // `jobs` dropped: the channel closes
    };
    let mut results = BTreeMap::new();
    for (index, result) in pool.feed(queue).window(7) {
        assert!(
            results.insert(index, result.unwrap()).is_none(),
            "index {index} came twice"
        );
    }
    producer.join().unwrap();
    assert_all_squared(results, &inputs);
    // A handle resolves a moment before its worker counts it.
    assert!(pool.wait_idle_timeout(common::LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.submitted, 2_000, "{stats}");
    assert_eq!(stats.completed, 2_000, "{stats}");
}

#[test]
fn an_endless_source_never_has_more_than_the_window_in_flight() {
    // More workers than the window: if the feed ever let more than WINDOW inputs
    // out, more than WINDOW tasks could run at once.
    const WINDOW: usize = 3;
    let pool = Pool::builder().workers(8).build().unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let most_running = Arc::new(AtomicUsize::new(0));
    let pulled = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());

    let source = {
        let pulled = Arc::clone(&pulled);
        (0u64..).inspect(move |_| {
            pulled.fetch_add(1, SeqCst);
        })
    };
    let task = {
        let (running, most_running, gate) = (
            Arc::clone(&running),
            Arc::clone(&most_running),
            gate.clone(),
        );
        move |n: u64| {
            let now = running.fetch_add(1, SeqCst) + 1;
            most_running.fetch_max(now, SeqCst);
            gate.wait(); // the first WINDOW tasks hold until the window is seen full
            running.fetch_sub(1, SeqCst);
            n
        }
    };
    let mut feed = pool.feed_fn(source, task).window(WINDOW);

    // Start the feeder, then see the window fill: WINDOW tasks running at once,
    // so the bound checked below is reached, not just never approached.
    let mut yielded = 0;
    let first = std::thread::scope(|s| {
        let first = s.spawn(|| feed.next());
        wait_until("the window is full of running tasks", || {
            running.load(SeqCst) == WINDOW
        });
        assert_eq!(pulled.load(SeqCst), WINDOW, "pulled beyond the window");
        gate.open();
        first.join().unwrap()
    });
    first.unwrap().1.unwrap();
    yielded += 1;

    while yielded < 2_000 {
        feed.next().unwrap().1.unwrap();
        yielded += 1;
        let ahead = pulled.load(SeqCst) - yielded;
        assert!(ahead <= WINDOW, "{ahead} inputs pulled and not yet yielded");
        assert!(feed.in_flight() <= WINDOW);
    }
    drop(feed);
    assert_eq!(
        most_running.load(SeqCst),
        WINDOW,
        "most tasks running at once"
    );
    assert!(pool.wait_idle_timeout(common::LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

#[test]
fn an_error_stays_with_its_item_and_the_rest_continue() {
    let pool = Pool::<Squarer>::builder().workers(2).build().unwrap();
    let inputs: Vec<u64> = (1_000_000..1_000_100).collect();
    let mut seen = 0;
    for (index, result) in pool.feed(inputs.clone()) {
        let n = inputs[index];
        match result {
            Ok(square) => assert_eq!(square, n * n),
            Err(e) => {
                assert_eq!(n % 2, 1, "only odd inputs fail");
                assert_eq!(e.user_error(), Some(&format!("{n} is odd")));
            }
        }
        seen += 1;
    }
    assert_eq!(seen, inputs.len());
}

/// A feed over a channel whose items after the first hold their worker until
/// `hold` is cleared; returns what the drop tests need.
struct Held {
    pool: Pool,
    hold: Arc<AtomicBool>,
    ran: Arc<AtomicUsize>,
}

impl Held {
    fn new() -> Self {
        Held {
            pool: Pool::builder().workers(1).build().unwrap(),
            hold: Arc::new(AtomicBool::new(true)),
            ran: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn feed(&self, queue: mpsc::Receiver<u64>) -> crew::Feed<u64> {
        let (held, counted) = (Arc::clone(&self.hold), Arc::clone(&self.ran));
        self.pool.feed_fn(queue, move |n| {
            counted.fetch_add(1, SeqCst);
            while n > 0 && held.load(SeqCst) {
                std::thread::yield_now();
            }
            n
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.hold.store(false, SeqCst); // never leave the worker spinning
    }
}

#[test]
fn dropping_the_feed_cancels_its_window_and_stops_a_feeder_waiting_for_room() {
    let held = Held::new();
    let (jobs, queue) = mpsc::channel();
    for n in 0..100 {
        jobs.send(n).unwrap();
    }
    let mut feed = held.feed(queue).window(4);
    assert_eq!(feed.next().unwrap().1.unwrap(), 0);
    // Item 0 handed out, so the feeder refills: item 1 runs, items 2, 3 and 4 wait.
    wait_until("item 1 runs and the window is full again", || {
        held.ran.load(SeqCst) == 2 && held.pool.stats().submitted == 5
    });
    assert_eq!(feed.in_flight(), 4);

    drop(feed); // items 1 (running) to 4 (queued) are cancelled

    // The feeder was waiting for room; it leaves and drops the receiver.
    wait_until("the feeder has dropped the channel", || {
        jobs.send(0).is_err()
    });
    held.hold.store(false, SeqCst);
    assert!(held.pool.wait_idle_timeout(common::LIMIT));
    assert_eq!(held.ran.load(SeqCst), 2, "only items 0 and 1 ever ran");
    let stats = held.pool.stats();
    assert_eq!(
        stats.submitted, 5,
        "nothing submitted after the drop: {stats}"
    );
    assert_eq!(stats.completed, 1, "{stats}");
    assert_eq!(stats.cancelled, 4, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

#[test]
fn dropping_the_feed_stops_a_feeder_blocked_on_an_empty_channel() {
    let held = Held::new();
    let (jobs, queue) = mpsc::channel();
    jobs.send(0).unwrap();
    let mut feed = held.feed(queue);
    assert_eq!(feed.next().unwrap().1.unwrap(), 0);
    drop(feed); // the feeder is (or soon will be) blocked in `recv`

    // The next input wakes it: it sees the feed gone, drops that input unrun and
    // the receiver with it, so a later send fails.
    wait_until("the feeder has dropped the channel", || {
        jobs.send(1).is_err()
    });
    assert!(held.pool.wait_idle_timeout(common::LIMIT));
    assert_eq!(held.ran.load(SeqCst), 1, "nothing ran after the drop");
    assert_eq!(held.pool.stats().submitted, 1);
}

#[test]
fn results_already_finished_are_not_held_back_by_an_empty_channel() {
    // The producer sends one input and then waits for its result before sending
    // more: were the channel pulled on the consumer's thread, the consumer would
    // block in `recv` and never see that result (a deadlock).
    let pool = Pool::<Squarer>::builder().workers(2).build().unwrap();
    let (jobs, queue) = mpsc::channel();
    let (acks, acked) = mpsc::channel::<u64>();
    let producer = std::thread::spawn(move || {
        for n in 0..20u64 {
            jobs.send(n).unwrap();
            let square = acked.recv_timeout(common::LIMIT).expect("no result came");
            assert_eq!(square, n * n);
        }
    });
    for (_, result) in pool.feed(queue) {
        acks.send(result.unwrap()).unwrap();
    }
    producer.join().unwrap();
}

#[test]
fn a_source_that_panics_hands_out_its_window_then_panics_on_the_consumer() {
    let pool = Pool::<Squarer>::builder().workers(2).build().unwrap();
    let source = (0u64..).inspect(|&n| {
        if n == 10 {
            panic!("the source broke at 10");
        }
    });
    let mut yielded = 0;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (_, result) in pool.feed(source).window(4) {
            result.unwrap();
            yielded += 1;
        }
    }));
    let panic = outcome.expect_err("the source's panic reaches the consumer");
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"the source broke at 10")
    );
    assert_eq!(yielded, 10, "every input before the panic was yielded");
}

#[test]
fn a_shut_down_pool_yields_a_closed_error_per_input() {
    let pool = Pool::<Squarer>::builder().workers(1).build().unwrap();
    pool.shutdown();
    let results: Vec<_> = pool.feed(0..10u64).collect();
    assert_eq!(results.len(), 10);
    assert!(results
        .iter()
        .all(|(_, r)| r.as_ref().is_err_and(|e| e.is_closed())));
}

#[test]
fn the_stream_form_runs_under_futures_block_on() {
    let pool = Pool::<Squarer>::builder().workers(2).build().unwrap();
    let inputs: Vec<u64> = (0..500).collect();

    // An async source, results as a Stream.
    let results = futures::executor::block_on(
        pool.feed_stream(futures::stream::iter(inputs.clone()))
            .window(5)
            .into_stream()
            .map(|(index, result)| (index, result.unwrap()))
            .collect::<BTreeMap<_, _>>(),
    );
    assert_all_squared(results, &inputs);

    // A channel source (feeder thread), results as a Stream.
    let (jobs, queue) = mpsc::channel();
    for &n in &inputs {
        jobs.send(n).unwrap();
    }
    drop(jobs);
    let results = futures::executor::block_on(
        pool.feed(queue)
            .into_stream()
            .map(|(index, result)| (index, result.unwrap()))
            .collect::<BTreeMap<_, _>>(),
    );
    assert_all_squared(results, &inputs);

    // An async source, results through the blocking iterator.
    let results = pool
        .feed_stream(futures::stream::iter(inputs.clone()))
        .map(|(index, result)| (index, result.unwrap()))
        .collect::<BTreeMap<_, _>>();
    assert_all_squared(results, &inputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_form_runs_under_tokio_with_an_async_channel() {
    let pool = Pool::<Squarer>::builder().workers(2).build().unwrap();
    let (mut jobs, queue) = futures::channel::mpsc::channel::<u64>(4);
    let producer = tokio::spawn(async move {
        use futures::SinkExt;
        for n in 0..300u64 {
            // Waits (asynchronously) while the channel is full.
            jobs.send(n).await.unwrap();
        }
    }); // `jobs` dropped: the stream ends
    let mut feed = pool.feed_stream(queue).window(3).into_stream();
    let mut results = BTreeMap::new();
    while let Some((index, result)) = feed.next().await {
        assert!(feed.in_flight() <= 3);
        results.insert(index, result.unwrap());
    }
    producer.await.unwrap();
    assert_all_squared(results, &(0..300).collect::<Vec<_>>());

    // The Stream form: a Feed can move into a spawned task.
    let results = pool.feed(0..50u64).into_stream();
    let task = tokio::spawn(results.map(|(_, r)| r.unwrap()).collect::<Vec<_>>());
    let mut squares = task.await.unwrap();
    squares.sort_unstable();
    assert_eq!(squares, (0..50u64).map(|n| n * n).collect::<Vec<_>>());
}

#[test]
fn a_feed_runs_on_a_process_pool() {
    let pool = worker_processes::<Squarer>(2).build().unwrap();
    let (jobs, queue) = mpsc::channel();
    let producer = std::thread::spawn(move || {
        for n in (0..200u64).chain([1_000_001]) {
            jobs.send(n).unwrap();
        }
    });
    let mut results = BTreeMap::new();
    let mut errors = Vec::new();
    for (index, result) in pool.feed(queue).window(6) {
        match result {
            Ok(square) => {
                results.insert(index, square);
            }
            Err(e) => errors.push((index, e.user_error().cloned())),
        }
    }
    producer.join().unwrap();
    assert_all_squared(results, &(0..200).collect::<Vec<_>>());
    assert_eq!(errors, vec![(200, Some("1000001 is odd".to_owned()))]);
    pool.shutdown();
}
