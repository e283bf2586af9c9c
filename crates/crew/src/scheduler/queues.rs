//! Where queued tasks wait: one global injector per priority level, plus each
//! worker's own deque, with the crossbeam-deque `find_task` pattern for stealing.
//!
//! # Priorities
//!
//! Three levels, each its own [`Injector`]. A worker normally looks at `High`, then
//! `Normal` (its own deque first, then the injector), then `Low`. To keep a flood of
//! high-priority work from starving the rest, every worker rotates its starting
//! level on a fixed cycle of [`AGING_CYCLE`] picks: one pick in the cycle starts at
//! `Low`, one at `Normal`, the rest at `High`. So whenever a lower level has work,
//! it gets at least one pick in every `AGING_CYCLE` on every worker: a guaranteed
//! share rather than a wait that can grow without bound. This is the equivalent of
//! aging without timestamps on the hot path.
//!
//! # Where tasks go
//!
//! - Submissions from outside the pool go to the injector of their level.
//! - `Normal` tasks spawned from inside a worker go to that worker's own deque
//!   (no contention, cache-warm); other levels go to their injector so that the
//!   priority order holds across workers.
//! - A worker takes from the `Normal` injector in batches (`steal_batch_and_pop`):
//!   one trip through the shared queue moves several tasks into its own deque.
//!   `High` and `Low` are taken one at a time so a batch never puts low-priority
//!   work ahead of a high-priority task that arrives next.
//! - An idle worker steals from the other workers' deques, also in batches.
//!
//! Corner cut, on purpose: a `High` task that arrives while a worker's deque holds
//! a stolen batch of `Normal` tasks still runs next on that worker, because the
//! worker checks the `High` injector before its own deque; but a `High` task never
//! preempts one that is already running.

use crossbeam_deque::{Injector, Steal, Stealer, Worker as Deque};

/// How soon a task runs relative to others. Higher levels run first, but lower
/// levels are never starved: see the scheduler docs ("Priorities").
///
/// # Why three levels and not a number
///
/// Peers differ: piscina and `concurrent.futures` have no priorities, p-queue
/// and work-pool take any number. crew keeps three levels, on purpose:
///
/// - **Cost.** Each level is its own lock-free queue, so a submission is a push
///   and a worker's pick a few loads. Arbitrary numbers need one ordered queue
///   (a heap behind a lock, O(log n) a push) on every submission, the hot path
///   crew is built to keep cheap.
/// - **No starvation.** The aging rotation gives each level a guaranteed share
///   of every worker's picks. With open-ended numbers, a share per number is
///   not possible, and a steady flow at one number starves everything below
///   it (p-queue's documented behaviour).
/// - **Meaning.** Three names say what callers mean ("ahead of the rest",
///   "background"); a number invites ever larger ones.
///
/// Order within a level is submission order. On a process pool priority
/// decides what is sent first; a window runs in the order it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Runs when nothing else waits, and at a guaranteed minimum share otherwise.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Runs before `Normal` and `Low` tasks that are still queued.
    High,
}

impl Priority {
    /// The number of levels.
    pub(crate) const LEVELS: usize = 3;

    /// Index into per-level arrays, 0 = highest.
    #[inline]
    pub(crate) fn index(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// Picks per rotation of the starting level; see "Priorities".
pub(crate) const AGING_CYCLE: u32 = 8;

const HIGH: usize = 0;
const NORMAL: usize = 1;
const LOW: usize = 2;

/// The level order for pick number `tick`.
#[inline]
fn order(tick: u32) -> [usize; Priority::LEVELS] {
    match tick % AGING_CYCLE {
        0 => [LOW, NORMAL, HIGH],
        4 => [NORMAL, HIGH, LOW],
        _ => [HIGH, NORMAL, LOW],
    }
}

/// The global queues, one per level.
pub(crate) struct Injectors<J> {
    levels: [Injector<J>; Priority::LEVELS],
}

impl<J> Injectors<J> {
    pub(crate) fn new() -> Self {
        Injectors {
            levels: [Injector::new(), Injector::new(), Injector::new()],
        }
    }

    #[inline]
    pub(crate) fn push(&self, job: J, priority: Priority) {
        self.levels[priority.index()].push(job);
    }

    /// Whether every level is empty (a snapshot).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.levels.iter().all(Injector::is_empty)
    }

    /// The number of entries queued globally (a snapshot; includes tombstones).
    pub(crate) fn len(&self) -> usize {
        self.levels.iter().map(Injector::len).sum()
    }

    /// Takes one entry from any level, highest first (for draining).
    pub(crate) fn steal_any(&self) -> Option<J> {
        for level in &self.levels {
            loop {
                match level.steal() {
                    Steal::Success(j) => return Some(j),
                    Steal::Empty => break,
                    Steal::Retry => continue,
                }
            }
        }
        None
    }

    /// Finds the next task for a worker whose own deque is `local`, trying its
    /// peers' deques (`peers`) last. `tick` counts the worker's picks ("Priorities").
    #[inline]
    pub(crate) fn find(&self, local: &Deque<J>, peers: &[Stealer<J>], tick: u32) -> Option<J> {
        // Fast path: nothing high-priority waits and it is not an aging pick, so
        // the worker's own deque comes first.
        if !tick.is_multiple_of(AGING_CYCLE) && self.levels[HIGH].is_empty() {
            if let Some(j) = local.pop() {
                return Some(j);
            }
        }
        self.find_slow(local, peers, tick)
    }

    fn find_slow(&self, local: &Deque<J>, peers: &[Stealer<J>], tick: u32) -> Option<J> {
        for level in order(tick) {
            let found = if level == NORMAL {
                local
                    .pop()
                    .or_else(|| retry(|| self.levels[NORMAL].steal_batch_and_pop(local)))
            } else {
                retry(|| self.levels[level].steal())
            };
            if found.is_some() {
                return found;
            }
        }
        steal_from_peers(local, peers)
    }
}

/// Tries each peer's deque once, in the registry's order, then again while any
/// answered `Retry`. (A fixed order: with the few workers a pool has, the first
/// non-empty peer is found in a handful of loads either way.)
fn steal_from_peers<J>(local: &Deque<J>, peers: &[Stealer<J>]) -> Option<J> {
    loop {
        let mut retry_needed = false;
        for stealer in peers {
            match stealer.steal_batch_and_pop(local) {
                Steal::Success(j) => return Some(j),
                Steal::Empty => {}
                Steal::Retry => retry_needed = true,
            }
        }
        if !retry_needed {
            return None;
        }
    }
}

#[inline]
fn retry<J>(mut attempt: impl FnMut() -> Steal<J>) -> Option<J> {
    loop {
        match attempt() {
            Steal::Success(j) => return Some(j),
            Steal::Empty => return None,
            Steal::Retry => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_runs_before_normal_and_low() {
        let q = Injectors::new();
        let local = Deque::new_fifo();
        q.push("low", Priority::Low);
        q.push("normal", Priority::Normal);
        q.push("high", Priority::High);
        // tick 1 is an ordinary pick: highest first.
        assert_eq!(q.find(&local, &[], 1), Some("high"));
        assert_eq!(q.find(&local, &[], 2), Some("normal"));
        assert_eq!(q.find(&local, &[], 3), Some("low"));
        assert_eq!(q.find(&local, &[], 5), None);
    }

    #[test]
    fn every_level_gets_a_share_of_each_cycle() {
        let q = Injectors::new();
        let local = Deque::new_fifo();
        for _ in 0..100 {
            q.push(HIGH, Priority::High);
            q.push(NORMAL, Priority::Normal);
            q.push(LOW, Priority::Low);
        }
        let mut picked = [0u32; 3];
        for tick in 1..=AGING_CYCLE * 4 {
            picked[q.find(&local, &[], tick).unwrap()] += 1;
        }
        assert!(picked[LOW] >= 4, "low got {picked:?}");
        assert!(picked[NORMAL] >= 4, "normal got {picked:?}");
        assert!(picked[HIGH] > picked[LOW], "high got {picked:?}");
    }

    #[test]
    fn idle_worker_steals_from_a_peer() {
        let q: Injectors<u32> = Injectors::new();
        let busy = Deque::new_fifo();
        let idle = Deque::new_fifo();
        for i in 0..10 {
            busy.push(i);
        }
        let stealer = busy.stealer();
        assert_eq!(q.find(&idle, std::slice::from_ref(&stealer), 1), Some(0));
        assert!(
            !idle.is_empty(),
            "a batch moved into the idle worker's deque"
        );
    }
}
