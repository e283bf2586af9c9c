//! How long an idle thread keeps looking before it parks.
//!
//! Parking and waking cost a futex syscall on each side (10–50 µs on the VMs crew
//! is measured on), so a thread that runs out of work keeps looking for a while:
//!
//! 1. `WORKER_SPIN_ROUNDS` rounds of busy-spinning, each `PAUSES_PER_ROUND` pause
//!    instructions (≈ 0.5 µs) between two looks, about 50 µs in all. Short fixed
//!    rounds rather than an exponential ramp: a round of 64 pauses (crossbeam's
//!    `Backoff` at its cap) is 1–2 µs on these machines, which showed up directly
//!    as round-trip latency (1.1 µs p50 against 0.5 µs with short rounds).
//! 2. then up to `yield_rounds` rounds of `yield_now`, which give the core away at
//!    once if any other thread wants it.
//!
//! **Adapting to the core count.** Busy-spinning only pays while a core is free
//! for it. So at most `cores` workers spin at a time; a worker that starts
//! searching while that many already do skips phase 1 ([`may_spin`]), and on a
//! single core nobody spins. Measured on 2 cores with 2 workers (W2 round trips,
//! `crew-bench`): limiting spinners to `cores - 1` put 1–2 % of round trips behind
//! a parked worker (p99 ≈ 46 µs against ≈ 1 µs) and did not raise W1 throughput;
//! yielding without any spin phase cost ≈ 9 µs per round trip, because a
//! `sched_yield` between the submitter and a worker that share a core is a context
//! switch. Pure spinning has the opposite failure: when the submitter and the
//! spinning worker share a vCPU (the scheduler placed them so for a whole process
//! in about one run in three), the woken submitter waited out the worker's entire
//! spin phase, and 2–8 % of round trips took ≈ 46 µs. So the spin phase yields once
//! every `YIELD_EVERY_SPIN_ROUNDS` rounds. A caller waiting on a result spins only briefly (`JOIN_SPIN_ROUNDS`):
//! it may share a core with the very worker it waits for. A worker that was just
//! woken spins whatever the count: it was woken because work is waiting.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

/// Busy-spin rounds before yielding (phase 1), for a worker looking for work.
pub(crate) const WORKER_SPIN_ROUNDS: u32 = 100;
/// Busy-spin rounds for a caller waiting on a result: short, because that caller
/// may share a core with the very worker it waits for (measured: a 50 µs join
/// spin pushed a 1.6 µs round trip to 84 µs on a loaded 2-core machine).
pub(crate) const JOIN_SPIN_ROUNDS: u32 = 8;
/// Pause instructions per spin round.
const PAUSES_PER_ROUND: u32 = 16;
/// Every this many spin rounds, one `yield_now` instead of pauses: if the thread
/// this one waits for shares its core, it gets the core within a few
/// microseconds instead of after the whole spin phase.
const YIELD_EVERY_SPIN_ROUNDS: u32 = 8;

/// Spin rounds of a worker's quiet phase, before it announces itself as
/// searching (`scheduler/sleep.md`, "Quiet spinning"): about 4 µs.
pub(crate) const QUIET_SPIN_ROUNDS: u32 = 8;

/// Yield rounds for a worker that found no work.
pub(crate) const WORKER_YIELD_ROUNDS: u32 = 32;
/// Yield rounds for a caller waiting on a task's result.
pub(crate) const JOIN_YIELD_ROUNDS: u32 = 16;

fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

/// Whether a worker may busy-spin when `already_spinning` others do.
#[inline]
pub(crate) fn may_spin(already_spinning: usize) -> bool {
    cores() > 1 && already_spinning < cores()
}

/// One idle episode: call [`Spin::next`] between looks; it returns false when the
/// thread should park.
pub(crate) struct Spin {
    spins_left: u32,
    yields_left: u32,
}

impl Spin {
    /// `spin_rounds` for phase 1 (0 to skip it; see [`may_spin`]).
    pub(crate) fn new(spin_rounds: u32, yield_rounds: u32) -> Self {
        Spin {
            spins_left: if cores() > 1 { spin_rounds } else { 0 },
            yields_left: yield_rounds,
        }
    }

    /// Waits one round. False once the budget is spent: time to park.
    #[inline]
    pub(crate) fn next(&mut self) -> bool {
        if self.spins_left > 0 {
            self.spins_left -= 1;
            // Never on the last round (`spins_left == 0`): a short spin such as the
            // quiet phase's 8 rounds then costs no syscall at all.
            if self.spins_left != 0 && self.spins_left.is_multiple_of(YIELD_EVERY_SPIN_ROUNDS) {
                std::thread::yield_now();
            } else {
                for _ in 0..PAUSES_PER_ROUND {
                    std::hint::spin_loop();
                }
            }
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
        let mut spin = Spin::new(WORKER_SPIN_ROUNDS, WORKER_YIELD_ROUNDS);
        let rounds = (0..10_000).take_while(|_| spin.next()).count();
        assert!(rounds < 10_000, "Spin::next never said to park");
        assert!(rounds >= WORKER_YIELD_ROUNDS as usize);
    }
}
