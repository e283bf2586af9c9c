//! Queue control on the process backend: cancelling every task that has not
//! started ([`Pool::cancel_queued`](crate::Pool::cancel_queued)), and deadlines
//! counted from submission (`TaskBuilder::deadline`). Both act on the places an
//! unstarted task can be (`supervisor.md`, "Queue control"):
//!
//! - **never sent**: the pool's queue, a worker's sticky backlog. Only the pool
//!   holds these: they are resolved at once.
//! - **sent, behind in a worker's window**: only the worker knows whether it
//!   has begun one (its *started* is batched). The pool asks, as steal-back
//!   does: a *cancel*, which a live worker answers at once even in the middle of
//!   a long task (its watcher reads the socket), *not started* if it had not
//!   begun (the task is then the pool's again), nothing if it had (its
//!   *started* comes).
//! - **said *started***: running.
//!
//! `cancel_queued` must not touch a running task, so for a sent task it waits
//! for the worker's answer before deciding: the flight is marked with the
//! call's number ([`InFlight::take_back`](super::state::InFlight::take_back)),
//! *not started* cancels it, *started* lets it run, and the call waits (one
//! round trip) until every flight it marked is answered. A worker that does not
//! answer within `silence_limit` is killed by the monitor (the silence alarm
//! steal-back uses) and what it had not begun is cancelled at its reaping, so
//! the wait is bounded.
//!
//! A deadline must hold whatever the worker does (DESIGN.md, invariant 6), so it
//! does not wait for an answer: a task still unsent or sent but not said
//! *started* resolves as timed out at once; for a sent one a *cancel* follows,
//! and if the worker had begun it after all, its *started* finds the task
//! decided and the worker is killed (as for a cancelled task, `link.rs`). A task
//! said *started* is running: timed out and its worker killed, as a timeout
//! does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::RemoteWorker;
use super::state::{Alarm, AlarmKind, Entry, Plan, State, Supervisor, TakeBack};
use crate::error::Failure;
use crate::events::ExitReason;
use crate::wire::ToWorker;
use crate::worker::WorkerId;

/// Beyond `silence_limit` and `kill_grace`, how long `cancel_queued` waits for
/// a silent worker's reaping before it returns with what it has counted.
const REAP_MARGIN: Duration = Duration::from_secs(1);

impl<W: RemoteWorker> Supervisor<W> {
    /// `Pool::cancel_queued` (see the module docs): cancels what was never
    /// sent, asks each worker for what it holds and has not begun, and waits
    /// for the answers. Returns how many tasks (chunk items one each) it
    /// cancelled.
    pub(super) fn cancel_queued(self: &Arc<Self>) -> usize {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut plan = Plan::default();
        let mut cancelled = 0;
        let never_sent: Vec<Entry<W>> = st
            .queue
            .iter_mut()
            .flat_map(|q| q.drain(..))
            .chain(st.links.iter_mut().flat_map(|l| l.backlog.drain(..)))
            .collect();
        for entry in &never_sent {
            if self.fail(st, entry, Failure::Cancelled, None) {
                cancelled += entry.items();
            }
        }
        let call = st.next_take_back;
        st.next_take_back += 1;
        let now = Instant::now();
        let mut pending = 0;
        let mut watch = Vec::new();
        for link in st.links.iter_mut() {
            let running = link.running.map(|(id, _)| id);
            let mut asked = false;
            for flight in link.window.iter_mut() {
                let id = flight.entry.id();
                // Running, another call's, or settled (cancelled, timed out).
                if running == Some(id)
                    || flight.take_back.is_some()
                    || flight.entry.core.header().is_decided()
                {
                    continue;
                }
                flight.take_back = Some(call);
                pending += 1;
                // A flight being stolen back has its *cancel* out already:
                // its *not started* now cancels it instead of queueing it.
                if !flight.cancel_sent {
                    flight.cancel_sent = true;
                    flight.stolen_at = Some(now);
                    let _ = link
                        .process
                        .writer
                        .append(|enc| enc.push(&ToWorker::Cancel { id }));
                    asked = true;
                }
            }
            if asked {
                plan.flush.push(Arc::clone(&link.process));
                if !link.silence_armed && link.killing.is_none() {
                    link.silence_armed = true;
                    watch.push(link.id);
                }
            }
        }
        for worker in watch {
            self.add_alarm(
                st,
                Alarm {
                    at: now + self.process.silence_limit,
                    worker,
                    what: AlarmKind::Silence,
                },
            );
        }
        if pending > 0 {
            st.take_backs.push(TakeBack {
                call,
                pending,
                cancelled: 0,
            });
        }
        // The queue emptied: submitters waiting for room may go on.
        self.dispatch(st, &mut plan);
        plan.wakers.append(&mut st.room_wakers);
        plan.notify = true;
        drop(guard);
        drop(never_sent);
        self.finish(plan);
        if pending == 0 {
            return cancelled;
        }
        let limit = now + self.process.silence_limit + self.process.kill_grace + REAP_MARGIN;
        let mut st = self.lock();
        loop {
            let at = st.take_backs.iter().position(|t| t.call == call);
            let now = Instant::now();
            if at.is_none_or(|i| st.take_backs[i].pending == 0) || now >= limit {
                if let Some(i) = at {
                    cancelled += st.take_backs.swap_remove(i).cancelled;
                }
                return cancelled;
            }
            st = self
                .changed
                .wait_timeout(st, limit - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A flight `cancel_queued` call `call` asked back was answered (or its
    /// worker ended); `cancelled` tasks of it were cancelled.
    pub(super) fn take_back_answered(st: &mut State<W>, call: u64, cancelled: usize) {
        if let Some(t) = st.take_backs.iter_mut().find(|t| t.call == call) {
            t.pending = t.pending.saturating_sub(1);
            t.cancelled += cancelled;
        }
    }

    /// A flight `cancel_queued` call `call` asked back is the pool's again (*not
    /// started*, or its worker was reaped): it is cancelled, and the call told.
    pub(super) fn cancel_taken_back(&self, st: &mut State<W>, entry: &Entry<W>, call: u64) {
        let cancelled = if self.fail(st, entry, Failure::Cancelled, None) {
            entry.items()
        } else {
            0
        };
        Self::take_back_answered(st, call, cancelled);
    }

    /// Keeps `entry`'s deadline for the monitor. Returns the settled entries
    /// pruned to make room, for the caller to drop after the lock.
    pub(super) fn watch_deadline(
        &self,
        st: &mut State<W>,
        at: Instant,
        entry: Entry<W>,
    ) -> Vec<Entry<W>> {
        let (earliest, pruned) = st
            .deadlines
            .push(at, entry, |e| e.core.header().is_decided());
        if earliest {
            // The monitor sleeps until the earliest instant it knows.
            self.alarm.notify_one();
        }
        pruned
    }

    /// The monitor's part: times out every task whose deadline has come,
    /// wherever it is (see the module docs). Frames and wakers go in `plan`.
    pub(super) fn expire_deadlines(&self, st: &mut State<W>, now: Instant, plan: &mut Plan) {
        let due: Vec<Entry<W>> = st
            .deadlines
            .pop_due(now)
            .into_iter()
            .filter(|e| !e.core.header().is_decided())
            .collect();
        if due.is_empty() {
            return;
        }
        let ids: HashSet<u64> = due.iter().map(|e| e.id()).collect();
        let mut never_sent: Vec<Entry<W>> = Vec::new();
        let mut take = |e: &Entry<W>| {
            let hit = ids.contains(&e.id());
            if hit {
                never_sent.push(Arc::clone(e));
            }
            !hit
        };
        for queue in st.queue.iter_mut() {
            queue.retain(&mut take);
        }
        for link in st.links.iter_mut() {
            link.backlog.retain(&mut take);
        }
        let mut unanswered: Vec<Entry<W>> = Vec::new();
        let mut running: Vec<(WorkerId, Entry<W>, Instant)> = Vec::new();
        for link in st.links.iter_mut() {
            let mut asked = false;
            for flight in link.window.iter_mut() {
                let id = flight.entry.id();
                if !ids.contains(&id) {
                    continue;
                }
                match link.running {
                    Some((r, since)) if r == id => {
                        running.push((link.id, Arc::clone(&flight.entry), since));
                    }
                    _ => {
                        unanswered.push(Arc::clone(&flight.entry));
                        if !flight.cancel_sent {
                            flight.cancel_sent = true;
                            let _ = link
                                .process
                                .writer
                                .append(|enc| enc.push(&ToWorker::Cancel { id }));
                            asked = true;
                        }
                    }
                }
            }
            if asked {
                plan.flush.push(Arc::clone(&link.process));
            }
        }
        for entry in &never_sent {
            self.fail(st, entry, Failure::TimedOut, None);
        }
        for entry in &unanswered {
            // The worker may still read its input (an arena block): kept until
            // it answers, or is reaped.
            let timed_out = Err(crate::error::TaskError::failure(Failure::TimedOut));
            self.settle(st, entry, timed_out, None, false);
        }
        for (worker, entry, since) in running {
            self.fail(
                st,
                &entry,
                Failure::TimedOut,
                Some((worker, since.elapsed())),
            );
            self.kill_link(st, worker, ExitReason::Killed, None);
        }
        plan.wakers.append(&mut st.room_wakers);
        plan.notify = true;
    }
}
