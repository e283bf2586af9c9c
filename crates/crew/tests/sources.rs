//! `map`, `map_unordered` and their closure forms: order, completeness, the
//! bounded window, per-item errors, cancel on drop, and a shut-down pool.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use common::wait_until;
use crew::{Context, Pool, StartError, Worker};

/// Squares its input after a pseudo-random amount of work, so tasks finish out of
/// order; odd inputs above 1,000,000 are the worker's own error.
struct Squarer;

fn busy(n: u64) {
    let mut x = n | 1;
    for _ in 0..(n * 7919 % 5_000) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
}

impl Worker for Squarer {
    type Input = u64;
    type Output = u64;
    type Error = u64;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Squarer)
    }

    fn run(&mut self, n: u64, _ctx: &mut Context<'_>) -> Result<u64, u64> {
        busy(n);
        if n > 1_000_000 && n % 2 == 1 {
            return Err(n);
        }
        Ok(n * n)
    }
}

#[test]
fn map_yields_results_in_input_order() {
    let pool = Pool::<Squarer>::builder().workers(3).build().unwrap();
    let results: Vec<u64> = pool.map(0..2_000u64).map(Result::unwrap).collect();
    assert_eq!(results, (0..2_000u64).map(|n| n * n).collect::<Vec<_>>());
}

#[test]
fn map_unordered_yields_every_item_once_with_its_index() {
    let pool = Pool::<Squarer>::builder().workers(3).build().unwrap();
    let mut seen = BTreeSet::new();
    for (index, result) in pool.map_unordered(0..2_000u64) {
        assert_eq!(result.unwrap(), (index as u64) * (index as u64));
        assert!(seen.insert(index), "index {index} came twice");
    }
    assert_eq!(seen, (0..2_000).collect::<BTreeSet<_>>());
}

#[test]
fn an_endless_source_never_has_more_than_the_window_in_flight() {
    let pool = Pool::<Squarer>::builder().workers(2).build().unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let source = {
        let pulled = Arc::clone(&pulled);
        (0u64..).inspect(move |_| {
            pulled.fetch_add(1, SeqCst);
        })
    };
    const WINDOW: usize = 5;
    let mut yielded = 0;
    for result in pool.map_window(source, WINDOW).take(1_000) {
        result.unwrap();
        yielded += 1;
        let ahead = pulled.load(SeqCst) - yielded;
        assert!(
            ahead <= WINDOW,
            "{ahead} inputs in flight with a window of {WINDOW}"
        );
    }
    assert_eq!(yielded, 1_000);

    // The unordered form keeps the same bound.
    let pulled = Arc::new(AtomicUsize::new(0));
    let source = {
        let pulled = Arc::clone(&pulled);
        (0u64..).inspect(move |_| {
            pulled.fetch_add(1, SeqCst);
        })
    };
    let mut map = pool.map_unordered(source);
    let window = 4 * pool.size();
    for yielded in 1..=1_000 {
        map.next().unwrap().1.unwrap();
        assert!(pulled.load(SeqCst) - yielded <= window);
        assert!(map.in_flight() <= window);
    }
}

#[test]
fn an_error_stays_in_its_place_and_the_rest_continue() {
    let pool = Pool::<Squarer>::builder().workers(2).build().unwrap();
    let inputs: Vec<u64> = (1_000_000..1_000_100).collect();
    let results: Vec<_> = pool.map(inputs.clone()).collect();
    assert_eq!(results.len(), inputs.len());
    for (n, r) in inputs.iter().zip(&results) {
        if n % 2 == 1 {
            assert_eq!(r.as_ref().unwrap_err().user_error(), Some(n));
        } else {
            assert_eq!(r.as_ref().unwrap(), &(n * n));
        }
    }
}

#[test]
fn dropping_the_results_early_cancels_what_is_still_queued() {
    // One worker, so the default window is 4: items 0..=3 are submitted by the
    // first `next()`. Item 0 returns at once; items after it hold the worker until
    // `hold` is cleared.
    let pool = Pool::builder().workers(1).build().unwrap();
    let hold = Arc::new(AtomicBool::new(true));
    let ran = Arc::new(AtomicUsize::new(0));
    {
        let (held, counted) = (Arc::clone(&hold), Arc::clone(&ran));
        let mut results = pool.map_fn(0..1_000u64, move |n| {
            counted.fetch_add(1, SeqCst);
            while n > 0 && held.load(SeqCst) {
                std::thread::yield_now();
            }
            n
        });
        assert_eq!(results.next().unwrap().unwrap(), 0);
        wait_until("item 1 is running", || ran.load(SeqCst) == 2);
        assert_eq!(
            results.in_flight(),
            3,
            "items 1 (running), 2 and 3 (queued)"
        );
    } // dropped: item 1 resolves as cancelled, items 2 and 3 never run
    hold.store(false, SeqCst);
    assert!(pool.wait_idle_timeout(common::LIMIT));
    assert_eq!(ran.load(SeqCst), 2, "only items 0 and 1 ever ran");
    let stats = pool.stats();
    assert_eq!(stats.submitted, 4, "only the window was submitted: {stats}");
    assert_eq!(stats.completed, 1, "{stats}");
    assert_eq!(stats.cancelled, 3, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

#[test]
fn closure_forms_map_any_function() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let words = vec!["alpha", "beta", "gamma", "delta"];
    let lens: Vec<usize> = pool
        .map_fn(words.clone(), str::len)
        .map(Result::unwrap)
        .collect();
    assert_eq!(lens, vec![5, 4, 5, 5]);
    let mut unordered: Vec<(usize, usize)> = pool
        .map_fn_unordered(words, str::len)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort();
    assert_eq!(unordered, vec![(0, 5), (1, 4), (2, 5), (3, 5)]);
}

#[test]
fn on_a_shut_down_pool_every_item_yields_a_closed_error() {
    let pool = Pool::<Squarer>::builder().workers(1).build().unwrap();
    pool.shutdown();
    let results: Vec<_> = pool.map(0..10u64).collect();
    assert_eq!(results.len(), 10);
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.is_closed())));
    let unordered: Vec<_> = pool.map_unordered(0..10u64).collect();
    assert_eq!(unordered.len(), 10);
    assert!(unordered
        .iter()
        .all(|(_, r)| r.as_ref().is_err_and(|e| e.is_closed())));

    let closures = Pool::builder().workers(1).build().unwrap();
    closures.shutdown();
    let results: Vec<_> = closures.map_fn(0..3u64, |n| n).collect();
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.is_closed())));
    wait_until("nothing left running", || closures.stats().busy == 0);
}
