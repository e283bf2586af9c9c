//! How long an idle thread keeps looking before it parks.
//!
//! Parking and waking cost a futex syscall on each side (10–50 µs on the VMs crew
//! is measured on), so a thread that runs out of work keeps looking for a while:
//!
//! 1. a few rounds of busy-spinning with exponential backoff (crossbeam's
//!    `Backoff::spin`), which catch work that arrives within a microsecond or two;
//! 2. then up to `yield_rounds` rounds of `yield_now`. A yield gives the core away
//!    at once if any other thread wants it, so on a machine with fewer cores than
//!    busy threads this phase costs the others almost nothing, while on an idle
//!    machine it keeps the thread responsive for tens of microseconds (the gap
//!    between a result and the next submission in a request/response loop).
//!
//! On a single core the busy-spin phase is skipped: spinning there only delays the
//! thread that would produce the work. The numbers follow rayon-core's idle loop
//! (32 yield rounds before a worker becomes sleepy).

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use crossbeam_utils::Backoff;

/// Yield rounds for a worker that found no work.
pub(crate) const WORKER_YIELD_ROUNDS: u32 = 32;
/// Yield rounds for a caller waiting on a task's result.
pub(crate) const JOIN_YIELD_ROUNDS: u32 = 16;

fn multicore() -> bool {
    static MULTICORE: OnceLock<bool> = OnceLock::new();
    *MULTICORE.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get) > 1)
}

/// Busy-spin rounds before yielding. `Backoff::spin` doubles its pause up to
/// 2^6 iterations and then stays there (it never reports `is_completed`), so the
/// round count is ours: 7 rounds cover 1 + 2 + … + 64 pauses, about 1–3 µs.
const SPIN_ROUNDS: u32 = 7;

/// One idle episode: call [`Spin::next`] between looks; it returns false when the
/// thread should park.
pub(crate) struct Spin {
    backoff: Backoff,
    spins_left: u32,
    yields_left: u32,
}

impl Spin {
    pub(crate) fn new(yield_rounds: u32) -> Self {
        Spin {
            backoff: Backoff::new(),
            spins_left: if multicore() { SPIN_ROUNDS } else { 0 },
            yields_left: yield_rounds,
        }
    }

    /// Waits one round. False once the budget is spent: time to park.
    #[inline]
    pub(crate) fn next(&mut self) -> bool {
        if self.spins_left > 0 {
            self.spins_left -= 1;
            self.backoff.spin();
            return true;
        }
        if self.yields_left == 0 {
            return false;
        }
        self.yields_left -= 1;
        std::thread::yield_now();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_episode_ends() {
        let mut spin = Spin::new(WORKER_YIELD_ROUNDS);
        let rounds = (0..10_000).take_while(|_| spin.next()).count();
        assert!(rounds < 10_000, "Spin::next never said to park");
        assert!(rounds >= WORKER_YIELD_ROUNDS as usize);
    }
}
