//! Deadlines of tasks that may still be queued: a min-heap by instant, read by
//! each backend's one monitor thread (`threads/monitor.rs`,
//! `processes/monitor.rs`). No timer thread per task: a submitter with a
//! deadline pushes here and wakes the monitor only if its deadline is now the
//! earliest; the monitor pops what is due when it wakes anyway.
//!
//! Only tasks with a deadline (`TaskBuilder::deadline`) ever come here, so a pool
//! that uses none pays nothing.
//!
//! # Bounded memory
//!
//! An entry stays until its instant comes, even if its task finished long
//! before (removing it on every completion would cost each deadlined task a
//! lock on its way out). So that a stream of quick tasks with distant deadlines
//! cannot grow the heap without bound, a push that finds the heap at
//! `prune_at` entries first drops the entries whose task is settled (the
//! caller's `settled`), then sets `prune_at` to twice what is left: each entry
//! is looked at O(1) times on average, and the heap holds at most about twice
//! the deadlined tasks still open (plus [`PRUNE_FLOOR`]).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// The smallest heap that is ever pruned.
pub(crate) const PRUNE_FLOOR: usize = 64;

/// Items (tasks) with the instant each is due. Knows nothing of what an item is.
pub(crate) struct Deadlines<T> {
    heap: BinaryHeap<Due<T>>,
    prune_at: usize,
}

struct Due<T> {
    at: Instant,
    item: T,
}

// Ordered by instant only, reversed: `BinaryHeap` is a max-heap and the
// earliest must come first.
impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl<T> Eq for Due<T> {}

impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Due<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

impl<T> Default for Deadlines<T> {
    fn default() -> Self {
        Deadlines {
            heap: BinaryHeap::new(),
            prune_at: PRUNE_FLOOR,
        }
    }
}

impl<T> Deadlines<T> {
    /// Adds `item`, due `at`. Returns whether it is now the earliest (the
    /// monitor must then be told), and the items pruned to make room (see the
    /// module docs), for the caller to drop once it holds no lock: dropping a
    /// task may run user code (its output's `Drop`).
    pub(crate) fn push(
        &mut self,
        at: Instant,
        item: T,
        settled: impl Fn(&T) -> bool,
    ) -> (bool, Vec<T>) {
        let mut pruned = Vec::new();
        if self.heap.len() >= self.prune_at {
            let (gone, kept): (Vec<Due<T>>, Vec<Due<T>>) =
                self.heap.drain().partition(|d| settled(&d.item));
            self.heap = BinaryHeap::from(kept);
            self.prune_at = (self.heap.len() * 2).max(PRUNE_FLOOR);
            pruned = gone.into_iter().map(|d| d.item).collect();
        }
        let earliest = self.heap.peek().is_none_or(|d| at < d.at);
        self.heap.push(Due { at, item });
        (earliest, pruned)
    }

    /// Takes every item due at `now` or before, earliest first.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Vec<T> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|d| d.at <= now) {
            if let Some(d) = self.heap.pop() {
                due.push(d.item);
            }
        }
        due
    }

    /// When the next item is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|d| d.at)
    }

    /// The number of items held (settled ones included until pruned).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_what_is_due_earliest_first_and_says_when_the_next_is() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut d = Deadlines::default();
        assert!(
            d.push(at(30), "c", |_| false).0,
            "the first is the earliest"
        );
        assert!(d.push(at(10), "a", |_| false).0, "an earlier one is");
        assert!(!d.push(at(20), "b", |_| false).0, "a later one is not");
        assert_eq!(d.next(), Some(at(10)));
        assert_eq!(d.pop_due(at(5)), Vec::<&str>::new());
        assert_eq!(d.pop_due(at(20)), vec!["a", "b"]);
        assert_eq!(d.next(), Some(at(30)));
        assert_eq!(d.pop_due(at(100)), vec!["c"]);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn settled_items_are_pruned_so_the_heap_stays_bounded() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let mut dropped = 0;
        // Every task settles at once (odd ones only stay open): the heap holds
        // at most about twice the open ones, plus the floor.
        for i in 0..10_000u32 {
            let (_, pruned) = d.push(t0 + Duration::from_secs(3600), i, |n| n % 2 == 0);
            dropped += pruned.len();
            assert!(pruned.iter().all(|n| n % 2 == 0), "only settled ones go");
            assert!(d.len() <= 2 * (i as usize / 2 + 1) + PRUNE_FLOOR + 1);
        }
        assert!(dropped > 0);
        let left = d.pop_due(t0 + Duration::from_secs(7200));
        assert_eq!(left.len() + dropped, 10_000, "nothing lost");
        assert!(left.iter().filter(|n| *n % 2 == 1).count() == 5_000);
    }
}
