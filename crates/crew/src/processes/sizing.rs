//! How many worker processes a pool runs: `Pool::resize` and elastic sizing
//! (`workers_range` with `idle_timeout`) on the process backend. Any thread,
//! under the state lock: the caller's (`resize`), whoever dispatches (growth),
//! the monitor (idle retirement). `supervisor.md`, "Sizing", has the policy
//! and its reasons.
//!
//! The pool keeps `State::min_workers` processes and may grow to
//! `State::max_workers`. The workers it *counts* are the registered links that
//! are neither retiring nor being killed, plus the link threads still starting
//! a process ([`Supervisor::counted`]): a recycled or killed worker's
//! replacement is already counted while it starts, and a retiring one is not.
//!
//! - **Replacing** (`plan_capacity`, `state.rs`) starts links up to
//!   `min_workers`; a link thread about to start a process gives up if the pool
//!   already counts `max_workers` without it (a shrink came first).
//! - **Shrinking** ([`Supervisor::retire_link`]) marks a link `retiring` and
//!   `retired`: no task is sent to it any more; the sticky tasks waiting in its
//!   backlog go back to the queue at once; every task in its window that it has
//!   not said *started* is asked back with a *cancel*, as steal-back asks (its
//!   *not started* queues the task again, for the workers that stay; a
//!   *started* means it runs where it is). Once its window is empty, dispatch
//!   sends it *shutdown*: it runs `Worker::stop` and exits, and its link
//!   reports `ExitReason::Retired`. A worker that does not answer the take-back
//!   within `silence_limit` is killed (the steal-back alarm), so a retirement
//!   cannot hold tasks hostage.
//! - **Growing under a backlog** ([`Supervisor::grow_if_backlogged`]) and
//!   **retiring idle workers** ([`Supervisor::retire_idle`]): see their docs.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::RemoteWorker;
use super::state::{Alarm, AlarmKind, Lifecycle, Plan, State, Supervisor};
use crate::error::ResizeError;
use crate::wire::ToWorker;

impl<W: RemoteWorker> Supervisor<W> {
    /// The workers the pool counts (module docs): registered links neither
    /// retiring nor being killed, and links still starting.
    pub(super) fn counted(st: &State<W>) -> usize {
        st.links
            .iter()
            .filter(|l| !l.retiring && l.killing.is_none())
            .count()
            + st.starting
    }

    /// `Pool::resize_range`: keep `min` processes, grow up to `max`. Below
    /// `min`, links retired by an earlier shrink that have not been told to
    /// shut down stay instead, then new ones start; above `max`, the extra
    /// ones retire, least loaded first (an idle worker before one with tasks in
    /// its window). Returns at once.
    pub(super) fn resize(self: &Arc<Self>, min: usize, max: usize) -> Result<(), ResizeError> {
        let mut st = self.lock();
        if st.lifecycle != Lifecycle::Open {
            return Err(ResizeError::closed());
        }
        st.min_workers = min;
        st.max_workers = max;
        self.size.store(min, Relaxed);
        let mut plan = Plan::default();
        let counted = Self::counted(&st);
        if counted < min {
            let mut missing = min - counted;
            for link in st.links.iter_mut() {
                if missing > 0 && link.retired && link.killing.is_none() && !link.shutdown_sent {
                    // Its window's take-backs may still be answered: each
                    // *not started* queues its task again, which dispatch may
                    // send straight back here.
                    link.retired = false;
                    link.retiring = false;
                    missing -= 1;
                }
            }
        } else if counted > max {
            let mut candidates: Vec<(usize, f64, usize)> = st
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.retiring && l.killing.is_none())
                .map(|(i, l)| (l.window.len() + l.backlog.len(), l.outstanding, i))
                .collect();
            candidates.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            // Links still starting cannot be picked: each gives up at its start
            // if the pool counts `max` without it.
            let excess = counted - max;
            for (_, _, i) in candidates.into_iter().take(excess) {
                self.retire_link(&mut st, i, &mut plan);
            }
        }
        let more = self.plan_capacity(&mut st);
        plan.start.extend(more.start);
        self.dispatch(&mut st, &mut plan);
        plan.notify = true;
        // The idle retirement's bounds changed: the monitor looks again.
        self.alarm.notify_all();
        drop(st);
        self.finish(plan);
        Ok(())
    }

    /// Retires link `i` because the pool shrank (module docs): no new task, its
    /// backlog back to the queue, its unstarted window tasks asked back; it is
    /// told to shut down once its window is empty (`dispatch`).
    pub(super) fn retire_link(&self, st: &mut State<W>, i: usize, plan: &mut Plan) {
        let now = Instant::now();
        let link = &mut st.links[i];
        let worker = link.id;
        link.retiring = true;
        link.retired = true;
        let backlog: Vec<_> = link.backlog.drain(..).collect();
        let running = link.running.map(|(id, _)| id);
        let mut asked = false;
        for flight in link.window.iter_mut() {
            let id = flight.entry.id();
            // Said started, or already asked back (steal-back, `cancel_queued`,
            // a cancelled or timed-out task).
            if running == Some(id) || flight.cancel_sent {
                continue;
            }
            flight.cancel_sent = true;
            flight.stolen = true;
            flight.stolen_at = Some(now);
            let _ = link
                .process
                .writer
                .append(|enc| enc.push(&ToWorker::Cancel { id }));
            asked = true;
        }
        if asked {
            if !plan.flush.iter().any(|p| Arc::ptr_eq(p, &link.process)) {
                plan.flush.push(Arc::clone(&link.process));
            }
            if !link.silence_armed {
                link.silence_armed = true;
                self.add_alarm(
                    st,
                    Alarm {
                        at: now + self.process.silence_limit,
                        worker,
                        what: AlarmKind::Silence,
                    },
                );
            }
        }
        // Its sticky keys go to whichever worker takes them next.
        st.key_owners.retain(|_, w| *w != worker);
        for entry in backlog.into_iter().rev() {
            if !entry.core.header().is_decided() {
                st.queue[entry.core.header().priority.index()].push_front(entry);
            }
        }
        plan.notify = true;
    }

    /// Elastic growth, checked at every dispatch of a pool below its maximum:
    /// one more worker process starts when every worker the pool counts is busy
    /// (none with an empty window) and the tasks waiting for a worker (the
    /// queue, sticky backlogs, and every window's tasks behind its head) are
    /// more than `grow_backlog` per worker (any at all with no worker).
    ///
    /// **One start at a time.** A process start costs milliseconds (an exec,
    /// the worker's `start`, the handshake) where a thread costs microseconds,
    /// and a burst would otherwise start a process per submission before the
    /// first is up. So nothing starts while any start is in flight (a link
    /// thread starting, or a process that has not said *ready*), and the
    /// decision is made again, with the new worker counted, once it is up.
    /// After failed starts the same backoff as a replacement's applies. The
    /// new worker, idle, takes tasks back from the busiest window at once
    /// (steal-back), so what had queued behind a long task moves to it.
    pub(super) fn grow_if_backlogged(&self, st: &mut State<W>, plan: &mut Plan) {
        if st.max_workers <= st.min_workers || st.lifecycle != Lifecycle::Open {
            return;
        }
        let in_flight = st.starting > 0
            || st
                .links
                .iter()
                .any(|l| !l.ready && l.killing.is_none() && !l.retiring);
        if in_flight {
            return;
        }
        let mut counted = 0;
        let mut waiting = Self::queued(st);
        for link in st
            .links
            .iter()
            .filter(|l| !l.retiring && l.killing.is_none())
        {
            if link.window.is_empty() {
                return; // an idle worker: no need to grow
            }
            counted += 1;
            waiting += link.window.len() - 1 + link.backlog.len();
        }
        if counted >= st.max_workers || waiting == 0 {
            return;
        }
        if counted == 0 || waiting > self.config.grow_backlog * counted {
            st.starting += 1;
            plan.start.push(self.start_backoff(st));
        }
    }

    /// The monitor's part of elastic sizing: while the pool counts more than
    /// `min_workers`, retires the workers idle (nothing in their window or
    /// backlog) for `idle_timeout`, the longest idle first, down to the
    /// minimum. Returns when to look again: when the next idle worker's time
    /// is up, and at most `idle_timeout` from now while the pool is above its
    /// minimum, since a worker that goes idle after this look is due no sooner
    /// than that (so nobody has to wake the monitor when a window empties).
    pub(super) fn retire_idle(
        &self,
        st: &mut State<W>,
        now: Instant,
        plan: &mut Plan,
    ) -> Option<Instant> {
        if st.lifecycle != Lifecycle::Open {
            return None;
        }
        let counted = Self::counted(st);
        if counted <= st.min_workers {
            return None;
        }
        let limit = self.config.idle_timeout;
        let mut idle: Vec<(Instant, usize)> = st
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.ready
                    && !l.retiring
                    && l.killing.is_none()
                    && l.window.is_empty()
                    && l.backlog.is_empty()
            })
            .filter_map(|(i, l)| l.idle_since.map(|since| (since, i)))
            .collect();
        idle.sort();
        let mut over = counted - st.min_workers;
        let mut next = Some(now + limit);
        let mut retired = false;
        for (since, i) in idle {
            if over == 0 {
                break;
            }
            let due = since + limit;
            if due <= now {
                self.retire_link(st, i, plan);
                retired = true;
                over -= 1;
            } else {
                next = next.min(Some(due));
            }
        }
        if retired {
            self.dispatch(st, plan); // *shutdown* to the retired, idle workers
        }
        if over == 0 {
            None
        } else {
            next
        }
    }

    /// The delay before starting a worker after `start_failures` failed
    /// starts in a row: none after a good start, then `start_backoff`
    /// doubling up to `max_start_backoff`.
    pub(super) fn start_backoff(&self, st: &State<W>) -> Duration {
        if st.start_failures == 0 {
            return Duration::ZERO;
        }
        let exp = st.start_failures.saturating_sub(1).min(16);
        self.config
            .start_backoff
            .saturating_mul(1 << exp)
            .min(self.config.max_start_backoff)
    }
}
