//! Pipelines (`map(..).then(..)`): three stages give what the sequential
//! composition gives, in input order (or each index once, unordered); an item that
//! fails in a stage reaches the end typed with that stage and enters no later one;
//! a blocked stage stops the source (the pulls stay within the sum of the windows);
//! dropping the iterator cancels every stage's tasks; the `Stream` form; a feed as
//! the first stage; a process pool as two of the stages; a bar per stage.

mod common;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::time::Duration;

use common::{wait_until, worker_processes, Counter, Gate, OpenOnDrop, LIMIT};
use crew::{Context, Pool, StageError, StartError, Worker};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Stage 1's error: the number it refused.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Rejected(u64);

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is a multiple of 5", self.0)
    }
}

impl std::error::Error for Rejected {}

/// Triples its input; refuses multiples of 5 with its own error, and panics on 13.
struct Triple;

impl Worker for Triple {
    type Input = u64;
    type Output = u64;
    type Error = Rejected;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Triple)
    }

    fn run(&mut self, n: u64, _ctx: &mut Context<'_>) -> Result<u64, Rejected> {
        if n == 13 {
            panic!("thirteen");
        }
        if n.is_multiple_of(5) {
            return Err(Rejected(n));
        }
        Ok(n * 3)
    }
}

/// A stage's output that the next stage takes through `From`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tagged(u64);

impl From<u64> for Tagged {
    fn from(n: u64) -> Self {
        Tagged(n)
    }
}

/// Adds 1 to a tagged number.
struct Increment;

impl Worker for Increment {
    type Input = Tagged;
    type Output = u64;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Increment)
    }

    fn run(&mut self, n: Tagged, _ctx: &mut Context<'_>) -> Result<u64, Self::Error> {
        Ok(n.0 + 1)
    }
}

/// Passes its input on: a first stage whose window `map_window` sets.
struct Echo;

impl Worker for Echo {
    type Input = u64;
    type Output = u64;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Echo)
    }

    fn run(&mut self, n: u64, _ctx: &mut Context<'_>) -> Result<u64, Self::Error> {
        Ok(n)
    }
}

fn echo(workers: usize) -> Pool<Echo> {
    Pool::<Echo>::builder().workers(workers).build().unwrap()
}

/// The worker processes' `main` for `a_process_pool_runs_two_of_the_stages`.
#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Triple>().run();
}

/// Makes the items finish out of order: a short, varying pause.
fn jitter(n: u64) {
    std::thread::sleep(Duration::from_micros((n * 7919) % 5 * 150));
}

fn closures(workers: usize) -> Pool {
    Pool::builder().workers(workers).build().unwrap()
}

#[test]
fn three_stages_give_the_sequential_composition_in_input_order() {
    let first = closures(2);
    let triple = Pool::<Triple>::builder().workers(3).build().unwrap();
    let increment = Pool::<Increment>::builder().workers(2).build().unwrap();
    // No multiples of 5 and no 13: every item succeeds.
    let inputs: Vec<u64> = (1..400u64)
        .filter(|n: &u64| !n.is_multiple_of(5) && *n != 13)
        .collect();
    let results: Vec<(usize, u64)> = first
        .map_fn(inputs.clone(), |n| {
            jitter(n);
            n + 100
        })
        .then(&triple) // u64 into u64
        .then(&increment) // u64 into Tagged, by From
        .window(3)
        .into_iter()
        .map(|(index, result)| (index, result.unwrap()))
        .collect();
    let expected: Vec<(usize, u64)> = inputs
        .iter()
        .enumerate()
        .map(|(index, n)| (index, (n + 100) * 3 + 1))
        .collect();
    assert_eq!(results, expected);
}

#[test]
fn an_unordered_pipeline_yields_each_index_once() {
    let pool = closures(3);
    let inputs: Vec<u64> = (0..300).collect();
    let mut seen = BTreeSet::new();
    let increment = pool_of_increment();
    let pipeline = pool
        .map_fn_unordered(inputs.clone(), |n| {
            jitter(n);
            n * 2
        })
        .then_fn(&pool, |n| {
            jitter(n + 1);
            n + 1
        })
        .then_with(&increment, Tagged)
        .window(2);
    for (index, result) in pipeline {
        assert_eq!(result.unwrap(), inputs[index] * 2 + 2, "item {index}");
        assert!(seen.insert(index), "index {index} came twice");
    }
    assert_eq!(seen.len(), inputs.len());
}

fn pool_of_increment() -> Pool<Increment> {
    Pool::<Increment>::builder().workers(1).build().unwrap()
}

#[test]
fn an_item_that_fails_in_the_middle_stage_reaches_the_end_typed_with_its_stage() {
    let first = closures(2);
    let triple = Pool::<Triple>::builder().workers(2).build().unwrap();
    let last = closures(2);
    let last_runs = Counter::new();
    let counted = last_runs.clone();
    let results: Vec<_> = first
        .map_fn(0..40u64, |n| n)
        .then(&triple) // stage 1: rejects multiples of 5, panics on 13
        .then_fn(&last, move |n| {
            counted.bump();
            n + 1
        })
        .into_iter()
        .collect();
    assert_eq!(results.len(), 40);
    for (index, result) in results {
        let n = index as u64;
        match result {
            Ok(value) => {
                assert!(
                    !n.is_multiple_of(5) && n != 13,
                    "item {n} should have failed"
                );
                assert_eq!(value, n * 3 + 1);
            }
            Err(error) => {
                assert_eq!(error.stage(), 1, "item {n}: {error:?}");
                if n == 13 {
                    assert!(error.task_error().is_panic(), "{error:?}");
                    assert_eq!(error.task_error().panic_message(), Some("thirteen"));
                    assert!(error.user_error().is_none());
                } else {
                    assert_eq!(n % 5, 0, "item {n} failed: {error:?}");
                    let user = error.user_error().expect("the worker's own error");
                    assert_eq!(user.downcast_ref::<Rejected>(), Some(&Rejected(n)));
                    assert!(error.task_error().is_user());
                }
                // The chain: the stage, its task's error, the worker's own error.
                assert_eq!(error.to_string(), "pipeline stage 1 failed");
                let task_error = std::error::Error::source(&error).expect("the task's error");
                if n != 13 {
                    let user = task_error.source().expect("the worker's error");
                    assert_eq!(user.to_string(), format!("{n} is a multiple of 5"));
                }
            }
        }
    }
    // The 9 items that failed in stage 1 (0, 5, …, 35 and 13) never entered
    // stage 2.
    assert_eq!(last_runs.get(), 40 - 9);
}

/// A source that counts its pulls and records the most items pulled and not yet
/// handed out (`handed` is counted by the consumer, the same thread that pulls).
struct Counting {
    pulled: Arc<AtomicUsize>,
    handed: Arc<AtomicUsize>,
    most_outstanding: Arc<AtomicUsize>,
    left: u64,
}

impl Iterator for Counting {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let pulled = self.pulled.fetch_add(1, SeqCst) + 1;
        let outstanding = pulled - self.handed.load(SeqCst);
        self.most_outstanding.fetch_max(outstanding, SeqCst);
        Some(self.left)
    }
}

#[derive(Default, Clone)]
struct Counts {
    pulled: Arc<AtomicUsize>,
    handed: Arc<AtomicUsize>,
    most_outstanding: Arc<AtomicUsize>,
}

impl Counts {
    fn source(&self, n: u64) -> Counting {
        Counting {
            pulled: Arc::clone(&self.pulled),
            handed: Arc::clone(&self.handed),
            most_outstanding: Arc::clone(&self.most_outstanding),
            left: n,
        }
    }
}

/// Runs a 3-stage pipeline (windows 2, 3, 2) on its own thread, whose stage
/// `blocked` holds every item for which `hold` is true until `gate` opens; waits
/// until the stages before have settled, checks the pulls, then opens the gate.
fn blocked_stage_bounds_the_source(blocked: usize, hold: fn(u64) -> bool, settled: usize) {
    const WINDOWS: usize = 2 + 3 + 2;
    const ITEMS: u64 = 200;
    let first = echo(2);
    let pools = [closures(2), closures(2)];
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let counts = Counts::default();
    let ran = [Counter::new(), Counter::new(), Counter::new()];
    let stage = |k: usize| {
        let gate = gate.clone();
        let ran = ran[k].clone();
        move |n: u64| {
            ran.bump();
            if k == blocked && hold(n) {
                gate.wait();
            }
            n
        }
    };
    std::thread::scope(|scope| {
        let consumer = scope.spawn(|| {
            let pipeline = first
                .map_window(counts.source(ITEMS), 2)
                .then_fn(&pools[0], stage(1))
                .window(3)
                .then_fn(&pools[1], stage(2))
                .window(2);
            let mut results = 0;
            for (_, result) in pipeline {
                result.unwrap();
                results += 1;
                counts.handed.fetch_add(1, SeqCst);
            }
            results
        });
        // Stage 0 is `map_window`'s own; the runs of stages 1 and 2 tell when
        // the items have gone as far as they can.
        wait_until("the stages before the blocked one have settled", || {
            ran[1].get() + ran[2].get() >= settled
        });
        let pulled = counts.pulled.load(SeqCst);
        assert!(
            pulled <= WINDOWS,
            "{pulled} items pulled behind a blocked stage, windows total {WINDOWS}"
        );
        gate.open();
        assert_eq!(consumer.join().unwrap(), ITEMS as usize);
    });
    assert_eq!(counts.pulled.load(SeqCst), ITEMS as usize);
    // `next()` refills the windows before it returns a result, and this
    // consumer counts the result only once it has it: one more.
    let most = counts.most_outstanding.load(SeqCst);
    assert!(
        most <= WINDOWS + 1,
        "{most} items were in the pipeline at once"
    );
    assert!(first.wait_idle_timeout(LIMIT));
    for pool in &pools {
        assert!(pool.wait_idle_timeout(LIMIT));
    }
}

#[test]
fn a_blocked_last_stage_stops_the_source_within_the_windows() {
    // Stage 2 holds 2 items (blocked), stage 1 passes 2 on and keeps 3.
    blocked_stage_bounds_the_source(2, |_| true, 5 + 2);
}

#[test]
fn a_slow_first_item_stops_an_ordered_pipeline_within_the_windows() {
    // The source counts down: 199 is the first item, held in stage 1 while the
    // others run ahead and wait for their turn at the end.
    // Then all 7 pulled items have run in stage 1, and the 6 behind the first
    // in stage 2.
    blocked_stage_bounds_the_source(1, |n| n == 199, 7 + 6);
}

/// A worker that waits on its gate until the gate opens or its task is cancelled.
struct Waits;

static WAITS_GATE: std::sync::OnceLock<Gate> = std::sync::OnceLock::new();
static WAITS_STARTED: AtomicUsize = AtomicUsize::new(0);

impl Worker for Waits {
    type Input = u64;
    type Output = u64;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Waits)
    }

    fn run(&mut self, n: u64, ctx: &mut Context<'_>) -> Result<u64, Self::Error> {
        WAITS_STARTED.fetch_add(1, SeqCst);
        if n >= 3 {
            let gate = WAITS_GATE.get_or_init(Gate::new);
            wait_until("the gate opens or the task is cancelled", || {
                gate.is_open() || ctx.is_cancelled()
            });
        }
        Ok(n)
    }
}

#[test]
fn dropping_the_pipeline_cancels_every_stage() {
    // One worker per pool: items finish, and so reach the last stage, in order.
    let first = echo(1);
    let middle = closures(1);
    let last = Pool::<Waits>::builder().workers(1).build().unwrap();
    let gate = WAITS_GATE.get_or_init(Gate::new).clone();
    let _open = OpenOnDrop(gate.clone());
    let counts = Counts::default();
    // Polled by hand (as a stream, with a waker that does nothing), so this
    // thread can keep the pipeline moving while it waits, then drop it.
    let mut stream = first
        .map_window(counts.source(1_000).map(|n| 999 - n), 4)
        .then_fn(&middle, |n| n)
        .window(4)
        .then(&last)
        .window(3)
        .into_stream();
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    let mut out = Vec::new();
    // Items 0, 1 and 2 pass the last stage; 3 blocks its one worker, and 4 and
    // 5 wait in its queue.
    wait_until("three results out, item 3 running, 4 and 5 queued", || {
        while let Poll::Ready(Some((index, result))) = stream.poll_next_unpin(&mut cx) {
            out.push((index, result.unwrap()));
        }
        out.len() == 3 && WAITS_STARTED.load(SeqCst) == 4 && last.stats().submitted == 6
    });
    assert_eq!(out, [(0, 0), (1, 1), (2, 2)]);
    drop(stream);
    let pulled = counts.pulled.load(SeqCst);
    assert!(pulled <= 3 + 4 + 4 + 3, "{pulled} pulled");
    // Every task resolved: each pool goes idle with every task it accepted
    // finished one way or another.
    assert!(first.wait_idle_timeout(LIMIT));
    assert!(middle.wait_idle_timeout(LIMIT));
    assert!(last.wait_idle_timeout(LIMIT));
    for stats in [first.stats(), middle.stats(), last.stats()] {
        assert_eq!(stats.submitted, stats.finished(), "{stats}");
    }
    let stats = last.stats();
    // The running one (it saw the cancel and returned) and the two queued.
    assert_eq!(stats.cancelled, 3, "{stats}");
    // The queued ones never ran.
    assert_eq!(WAITS_STARTED.load(SeqCst), 4);
    assert!(!gate.is_open());
}

#[test]
fn a_pipeline_is_a_stream_too() {
    let pool = closures(2);
    let stream = pool
        .map_fn(0..50u64, |n| n + 1)
        .then_fn(&pool, |n| n * 10)
        .into_stream();
    let results: Vec<(usize, u64)> = futures::executor::block_on(
        stream
            .map(|(index, result)| (index, result.unwrap()))
            .collect(),
    );
    let expected: Vec<(usize, u64)> = (0..50).map(|n| (n as usize, (n + 1) * 10)).collect();
    assert_eq!(results, expected);
}

#[test]
fn a_feed_can_be_the_first_stage() {
    let pool = closures(2);
    let triple = Pool::<Triple>::builder().workers(2).build().unwrap();
    let (jobs, queue) = mpsc::channel();
    let producer = std::thread::spawn(move || {
        for n in [1u64, 2, 5, 7] {
            jobs.send(n).unwrap();
        }
    });
    let mut results: Vec<(usize, Result<u64, StageError>)> = pool
        .feed_fn(queue, |n| n * 2)
        .then(&triple)
        .into_iter()
        .collect();
    producer.join().unwrap();
    results.sort_by_key(|(index, _)| *index);
    let values: Vec<_> = results
        .iter()
        .map(|(_, r)| {
            r.as_ref()
                .map_err(|e| (e.stage(), e.task_error().is_user()))
        })
        .collect();
    // 5 × 2 = 10 is a multiple of 5: refused in stage 1.
    assert_eq!(values, [Ok(&6), Ok(&12), Err((1, true)), Ok(&42)]);
}

/// Terminates the pool when dropped, so a failing test leaves no worker behind.
struct Reaped(Pool<Triple>);

impl Drop for Reaped {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

#[test]
fn a_process_pool_runs_two_of_the_stages() {
    let processes = Reaped(worker_processes::<Triple>(2).build().unwrap());
    let threads = closures(2);
    let inputs: Vec<u64> = (1..30).filter(|n| *n != 13).collect();
    // Stage 0 on processes (one task per item), stage 1 on threads, stage 2 on
    // processes again.
    let results: Vec<(usize, Result<u64, StageError>)> = processes
        .0
        .map(inputs.clone())
        .then_fn(&threads, |n| n + 1)
        .then(&processes.0)
        .into_iter()
        .collect();
    assert_eq!(results.len(), inputs.len());
    for (index, result) in results {
        let n = inputs[index];
        let after_two = n * 3 + 1;
        match result {
            Ok(value) => assert_eq!(value, after_two * 3, "item {n}"),
            Err(e) if n.is_multiple_of(5) => assert_eq!(e.stage(), 0, "item {n}: {e:?}"),
            // 4 × 3 + 1: a panic in the worker process, its message carried.
            Err(e) if after_two == 13 => {
                assert_eq!(e.stage(), 2);
                assert_eq!(e.task_error().panic_message(), Some("thirteen"));
            }
            Err(e) => {
                assert_eq!(e.stage(), 2, "item {n}: {e:?}");
                assert_eq!(after_two % 5, 0, "item {n}");
                let user = e.user_error().unwrap().downcast_ref::<Rejected>();
                assert_eq!(user, Some(&Rejected(after_two)));
            }
        }
    }
    // A map that already ran chunked (it handed a result out) keeps running so
    // as a first stage.
    let mut map = processes.0.map(vec![1u64, 2, 3, 4]);
    assert_eq!(map.next().map(Result::unwrap), Some(3));
    let rest: Vec<(usize, u64)> = map
        .then_fn(&threads, |n| n + 1)
        .into_iter()
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    assert_eq!(rest, [(1, 7), (2, 10), (3, 13)]);
}

#[cfg(feature = "indicatif")]
#[test]
fn each_stage_drives_its_own_bar() {
    use crew::indicatif::ProgressBar;
    let pool = closures(2);
    let triple = Pool::<Triple>::builder().workers(2).build().unwrap();
    let bars = [
        ProgressBar::hidden(),
        ProgressBar::hidden(),
        ProgressBar::hidden(),
    ];
    let results = pool
        .map_fn(0..20u64, |n| n)
        .with_progress_bar(bars[0].clone())
        .then(&triple) // 0, 5, 10, 15 and 13 fail here
        .with_progress_bar(bars[1].clone())
        .then_fn(&pool, |n| n)
        .with_progress_bar(bars[2].clone())
        .into_iter()
        .count();
    assert_eq!(results, 20);
    for bar in &bars {
        assert_eq!((bar.position(), bar.length()), (20, Some(20)));
        assert!(bar.is_finished());
    }
    assert_eq!(bars[0].message(), "");
    assert_eq!(bars[1].message(), "(5 failed)");
    // Items that failed earlier pass the last stage without counting as its
    // failures.
    assert_eq!(bars[2].message(), "");
}
