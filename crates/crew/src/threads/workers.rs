//! The thread backend's workers as a set: spawning and replacing them,
//! retrying failed spawns, abandoning a stuck one, killing, the mail they get
//! (broadcast, send_to) and their start and stop bookkeeping. Runs on whichever
//! thread acts on the set (a submitter growing the pool, the monitor, a worker
//! leaving); a worker's own loop is `worker_loop.rs`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use crossbeam_deque::{Stealer, Worker as Deque};
use crossbeam_utils::CachePadded;

use crate::error::{panic_message, Failure, ResizeError};
use crate::events::{Event, ExitReason};
use crate::messages::{Mail, Mailbox};
use crate::scheduler::sleep::Sleeper;
use crate::stats::Timings;
use crate::sync::{after, lock, modelled, Arc, AtomicBool, Mutex};
use crate::task::cell::Job;
use crate::worker::{Worker, WorkerId};

use super::{new_counts, worker_loop, Registry, Running, Shared, Slot, Work};
use super::{BROKEN, TERMINATING};

impl<W: Worker> Shared<W> {
    // ------------------------------------------------------------ workers

    /// Starts one more worker thread.
    pub(crate) fn spawn_worker(&self) -> std::io::Result<()> {
        let Some(shared) = self.arc() else {
            return Ok(()); // the pool is being dropped
        };
        let id = WorkerId::new(self.next_worker.fetch_add(1, Relaxed) + 1);
        let deque = Deque::new_fifo();
        let slot = Arc::new(Slot {
            id,
            mail: Mutex::new(Mailbox::default()),
            has_mail: AtomicBool::new(false),
            stealer: deque.stealer(),
            sleeper: modelled::Arc::new(Sleeper::new()),
            work: Mutex::new(Work {
                running: None,
                // Room for every async task in flight (none allocated for a pool
                // of one task per worker until it runs an async task).
                suspended: match self.config.concurrency {
                    1 => Vec::new(),
                    n => Vec::with_capacity(n.min(64)),
                },
                timings: Timings::new(),
            }),
            born: Instant::now(),
            stopping: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            retire: AtomicBool::new(false),
            started: AtomicBool::new(false),
            counts: CachePadded::new(new_counts()),
            counts_retired: AtomicBool::new(false),
        });
        let mut builder =
            std::thread::Builder::new().name(format!("{}-{}", self.config.thread_name, id.raw()));
        if let Some(size) = self.config.stack_size {
            builder = builder.stack_size(size);
        }
        {
            let mut reg = lock(&self.registry);
            // Checked under the lock that adds the worker: growth and a
            // replacement racing each other must not take the pool past its
            // maximum (each saw room before the other added its worker).
            // Workers asked to retire are on their way out: they do not count.
            if reg.live.len() - reg.retiring >= self.max_workers() {
                return Ok(());
            }
            reg.live.push(Arc::clone(&slot));
            self.set_live_count(&reg);
            self.publish_peers(&mut reg);
        }
        let thread_slot = Arc::clone(&slot);
        let body = move || worker_loop::run(shared, thread_slot, deque);
        // Outside the registry lock, and a panicking handler is an error like any
        // other: the handler is user code.
        let spawned = match &self.config.spawn_handler {
            Some(handler) => catch_unwind(AssertUnwindSafe(|| handler(builder, Box::new(body))))
                .unwrap_or_else(|panic| {
                    Err(std::io::Error::other(format!(
                        "spawn_handler panicked: {}",
                        panic_message(&*panic)
                    )))
                }),
            None => builder.spawn(body),
        };
        let mut reg = lock(&self.registry);
        match spawned {
            Ok(handle) => {
                reg.handles.retain(|(_, h)| !h.is_finished());
                if !slot.abandoned.load(SeqCst) {
                    reg.handles.push((id, handle));
                }
                Ok(())
            }
            Err(e) => {
                reg.live.retain(|s| !Arc::ptr_eq(s, &slot));
                self.set_live_count(&reg);
                self.publish_peers(&mut reg);
                drop(reg);
                // The thread never ran: the worker failed to start, once (its
                // retry gets a new id).
                self.events.emit(Event::WorkerStartFailed {
                    worker: id,
                    message: format!("could not start the worker thread: {e}"),
                    consecutive: 1,
                });
                Err(e)
            }
        }
    }

    /// Starts a replacement for a worker that left; on failure the monitor retries
    /// after a backoff.
    pub(super) fn replace_worker(&self) {
        if self.lifecycle.load(Acquire) & TERMINATING != 0 {
            return;
        }
        if self.spawn_worker().is_err() {
            let retry_at = self.schedule_retry(1);
            if let Some(shared) = self.arc() {
                self.monitor.wake_at(&shared, retry_at);
            }
        }
    }

    /// Records `failed` spawns to retry and returns when: `start_backoff` after
    /// the first failure, doubling while failures go on (up to `max_start_backoff`).
    pub(super) fn schedule_retry(&self, failed: usize) -> Instant {
        let mut reg = lock(&self.registry);
        reg.missing += failed;
        reg.retry_delay = if reg.retry_delay.is_zero() {
            self.config.start_backoff
        } else {
            reg.retry_delay
                .saturating_mul(2)
                .min(self.config.max_start_backoff)
        };
        let at = after(Instant::now(), reg.retry_delay);
        reg.retry_at = Some(at);
        at
    }

    /// Called by the monitor: retries replacements that failed to spawn, once
    /// their backoff has passed. Returns when to look again.
    pub(super) fn respawn_missing(&self, now: Instant) -> Option<Instant> {
        let missing = {
            let mut reg = lock(&self.registry);
            match reg.retry_at {
                _ if reg.missing == 0 => return None,
                Some(at) if at > now => return Some(at),
                _ => std::mem::take(&mut reg.missing),
            }
        };
        let mut failed = 0;
        for _ in 0..missing {
            if self.lifecycle.load(Acquire) & TERMINATING != 0 {
                break;
            }
            if self.spawn_worker().is_err() {
                failed += 1;
            }
        }
        if failed == 0 {
            lock(&self.registry).retry_delay = std::time::Duration::ZERO;
            return None;
        }
        Some(self.schedule_retry(failed))
    }

    /// Moves a leaving worker's counts into the retired totals, once.
    pub(super) fn retire_counts(reg: &mut Registry<W>, slot: &Slot<W>) {
        if slot.counts_retired.swap(true, SeqCst) {
            return;
        }
        for (i, c) in slot.counts.iter().enumerate() {
            reg.retired[i] += c.load(Acquire);
        }
        reg.retired_timings.add(&lock(&slot.work).timings);
        reg.retired_worker_time += slot.born.elapsed();
    }

    pub(super) fn publish_peers(&self, reg: &mut Registry<W>) {
        let peers = reg
            .live
            .iter()
            .chain(reg.abandoned.iter())
            .map(|s| (s.id, s.stealer.clone()))
            .collect();
        reg.peers = Arc::new(peers);
        self.peers_epoch.fetch_add(1, Release);
    }

    /// The current peer list and its epoch.
    pub(super) fn peers(&self) -> (usize, Arc<Vec<(WorkerId, Stealer<Job<W>>)>>) {
        let reg = lock(&self.registry);
        (self.peers_epoch.load(Acquire), Arc::clone(&reg.peers))
    }

    /// Gives up on a worker: its running tasks (if any) resolve with `failure`, the
    /// pool stops counting it, and a replacement starts. The thread exits when it
    /// gets control back; if it never does, it is left behind (threads cannot be
    /// killed). Returns false if the worker was not live.
    ///
    /// With async tasks in flight, one task's timeout abandons the thread they
    /// all share: the tasks that did not time out themselves resolve as killed.
    ///
    /// Events: each running task's `TaskFinished` (if it was observed), then the
    /// worker's `WorkerExited` (`Killed` or `Abandoned`). Taking the `Running`
    /// entries is what makes this thread, and not the worker, the one that counts
    /// the tasks and emits their terminal events.
    pub(crate) fn abandon(&self, slot: &Arc<Slot<W>>, failure: Failure) -> bool {
        let reason = match failure {
            Failure::Killed => ExitReason::Killed,
            _ => ExitReason::Abandoned,
        };
        {
            let mut reg = lock(&self.registry);
            let Some(at) = reg.live.iter().position(|s| Arc::ptr_eq(s, slot)) else {
                return false;
            };
            slot.abandoned.store(true, SeqCst);
            let slot = reg.live.swap_remove(at);
            if slot.retire.swap(false, SeqCst) {
                reg.retiring -= 1;
            }
            self.set_live_count(&reg);
            reg.handles.retain(|(id, _)| *id != slot.id); // detach
            if slot.started.swap(false, SeqCst) {
                reg.started -= 1;
            }
            reg.abandoned.push(slot);
        }
        // Resolve first (outside the lock: resolving wakes the caller's waker),
        // then take the entries: a worker leaving with async tasks in flight waits
        // for its entries to be gone before it drops their futures, so each task
        // ends with this failure, not as closed.
        let failure_of = |r: &Running<W>| match failure {
            // Timed out by the monitor (it noted when to abandon): its own
            // timeout; otherwise a bystander of another task's.
            Failure::TimedOut if r.abandon_at.is_none() => Failure::Killed,
            _ => failure.clone(),
        };
        let doomed: Vec<(Job<W>, Failure)> = lock(&slot.work)
            .entries()
            .map(|r| (r.job.clone(), failure_of(r)))
            .collect();
        for (job, failure) in doomed {
            job.fail(failure);
        }
        // Whoever takes an entry counts its task (and records its run time):
        // here, or the worker if its task returned meanwhile.
        let taken: Vec<(Running<W>, Duration)> = {
            let mut work = lock(&slot.work);
            let running = work.take_all();
            running
                .into_iter()
                .map(|running| {
                    let ran = running.started.map_or(Duration::ZERO, |s| s.elapsed());
                    if running.weight > 0 {
                        work.timings.record_run(ran, running.weight);
                    }
                    (running, ran)
                })
                .collect()
        };
        for (running, ran) in taken {
            // A no-op for the tasks resolved above; this resolves one the worker
            // published after they were collected.
            running.job.fail(failure_of(&running));
            let outcome = running.job.header().settled_outcome();
            self.count(outcome);
            if running.observed {
                self.events.emit(Event::TaskFinished {
                    task: running.job.header().id(),
                    worker: slot.id,
                    outcome: outcome.into(),
                    waited: running.waited,
                    ran,
                });
            }
        }
        crate::trace::worker_exited(slot.id, reason);
        self.events.emit(Event::WorkerExited {
            worker: slot.id,
            reason,
        });
        self.sleep.wake_worker(&slot.sleeper);
        self.replace_worker();
        // Its deque may hold work and every other worker may be asleep.
        self.sleep.notify_work();
        self.notify_idle();
        true
    }

    /// `Pool::kill_worker`.
    pub(crate) fn kill_worker(&self, id: WorkerId) -> bool {
        let slot = lock(&self.registry)
            .live
            .iter()
            .find(|s| s.id == id)
            .cloned();
        slot.is_some_and(|slot| self.abandon(&slot, Failure::Killed))
    }

    // ------------------------------------------------------------ resizing

    /// `Pool::resize_range` (`threads.md`, "Resizing"): the pool keeps `min`
    /// workers and may grow to `max`. Decided under the registry lock, so two
    /// resizes, growth, a replacement and a worker's retirement see one count:
    ///
    /// - below `min`: workers asked to retire that have not left stay instead
    ///   (their flag cleared), then new ones start, after the lock;
    /// - above `max`: the extra ones are asked to retire, idle ones first (no
    ///   task on them now). Each finishes what runs on it, takes nothing new,
    ///   and leaves through `try_retire`, which confirms the request under this
    ///   lock: a request withdrawn meanwhile keeps the worker.
    ///
    /// Every idle worker is woken, so that each parks again with the timeout
    /// the new range calls for (a fixed pool's workers park without one).
    pub(crate) fn resize(&self, min: usize, max: usize) -> Result<(), ResizeError> {
        let (spawn, asked) = {
            let mut reg = lock(&self.registry);
            if self.is_closed() {
                return Err(ResizeError::closed());
            }
            self.min_workers.store(min, Relaxed);
            self.max_workers.store(max, Relaxed);
            self.joins.set_max(max);
            let staying = reg.live.len() - reg.retiring;
            let mut spawn = 0;
            let mut asked = Vec::new();
            if staying < min {
                let mut missing = min - staying;
                for slot in &reg.live {
                    if missing > 0 && slot.retire.swap(false, SeqCst) {
                        missing -= 1;
                    }
                }
                reg.retiring -= (min - staying) - missing;
                spawn = missing;
            } else if staying > max {
                // Idle first: a worker with nothing in flight now leaves at
                // once; a busy one after its task.
                let mut candidates: Vec<(bool, Arc<Slot<W>>)> = reg
                    .live
                    .iter()
                    .filter(|s| !s.retire.load(SeqCst))
                    .map(|s| (!lock(&s.work).is_empty(), Arc::clone(s)))
                    .collect();
                candidates.sort_by_key(|(busy, _)| *busy);
                for (_, slot) in candidates.into_iter().take(staying - max) {
                    slot.retire.store(true, SeqCst);
                    reg.retiring += 1;
                    asked.push(slot);
                }
            }
            self.set_live_count(&reg);
            (spawn, asked)
        };
        for slot in &asked {
            // A parked worker wakes and leaves; one waiting out a start backoff
            // gives up starting.
            self.sleep.wake_worker(&slot.sleeper);
        }
        self.sleep.wake_all();
        for started in 0..spawn {
            if self.spawn_worker().is_err() {
                // The monitor starts the rest after a backoff, as replacements.
                let retry_at = self.schedule_retry(spawn - started);
                if let Some(shared) = self.arc() {
                    self.monitor.wake_at(&shared, retry_at);
                }
                break;
            }
        }
        self.notify_idle();
        Ok(())
    }

    // ------------------------------------------------------------ messages

    /// Puts `message` in every live worker's mailbox (and, if `sticky`, in the
    /// list every later worker state gets at its start).
    pub(crate) fn broadcast(&self, message: W::Message, sticky: bool) {
        // The sticky list's lock is held while mailboxes are filled, so a worker
        // that replays the list at its start (under the same lock) and the
        // `Sticky(n)` entries in its mailbox agree on what it already has.
        let mut list = lock(&self.sticky);
        let index = sticky.then(|| {
            list.push(message.clone());
            list.len() - 1
        });
        let slots: Vec<Arc<Slot<W>>> = lock(&self.registry).live.clone();
        for slot in &slots {
            let mail = match index {
                Some(n) => Mail::Sticky(n),
                None => Mail::Plain(message.clone()),
            };
            self.deliver(slot, mail);
        }
        drop(list);
    }

    /// Puts `message` in worker `id`'s mailbox; gives it back if no live
    /// worker has that id.
    pub(crate) fn send_to(&self, id: WorkerId, message: W::Message) -> Result<(), W::Message> {
        let slot = lock(&self.registry)
            .live
            .iter()
            .find(|s| s.id == id)
            .cloned();
        match slot {
            Some(slot) => {
                self.deliver(&slot, Mail::Plain(message));
                Ok(())
            }
            None => Err(message),
        }
    }

    pub(super) fn deliver(&self, slot: &Slot<W>, mail: Mail<W::Message>) {
        {
            let mut mailbox = lock(&slot.mail);
            mailbox.queue.push_back(mail);
            slot.has_mail.store(true, SeqCst);
        }
        // An idle worker is parked: wake it to read its mail now.
        self.sleep.wake_worker(&slot.sleeper);
    }

    /// The ids of the workers the pool counts, oldest first (not those asked
    /// to retire).
    pub(crate) fn worker_ids(&self) -> Vec<WorkerId> {
        let mut ids: Vec<WorkerId> = lock(&self.registry)
            .live
            .iter()
            .filter(|s| !s.retire.load(Relaxed))
            .map(|s| s.id)
            .collect();
        ids.sort();
        ids
    }

    // ------------------------------------------------------------ starting

    /// Records a good start and emits `WorkerStarted` (or `WorkerRestarted` with
    /// `restarted`'s reason). False if the worker was abandoned meanwhile.
    pub(super) fn on_started(&self, slot: &Slot<W>, restarted: Option<String>) -> bool {
        // Declared before the guard, so dropped (and its wakers woken) after it.
        let _wake;
        let mut reg = lock(&self.registry);
        if slot.abandoned.load(SeqCst) {
            return false;
        }
        slot.started.store(true, SeqCst);
        reg.started += 1;
        reg.start_failures = 0;
        self.lifecycle.fetch_and(!BROKEN, SeqCst);
        // Under the registry lock: `abandon` removes the worker under it too and
        // emits `WorkerExited` after, so the two can never arrive swapped.
        crate::trace::worker_started(slot.id);
        let event = match restarted {
            None => Event::WorkerStarted { worker: slot.id },
            Some(reason) => Event::WorkerRestarted {
                worker: slot.id,
                reason,
            },
        };
        _wake = self.events.emit_deferred(event);
        true
    }

    pub(super) fn on_start_failed(&self, message: String) {
        let trip = {
            let mut reg = lock(&self.registry);
            reg.start_failures += 1;
            reg.last_start_error = Some(message.clone());
            reg.start_failures >= self.config.start_attempts && reg.started == 0
        };
        if trip {
            self.lifecycle.fetch_or(BROKEN, SeqCst);
            self.drain(Failure::StartFailed(message));
        }
    }

    pub(super) fn last_start_error(&self) -> String {
        lock(&self.registry)
            .last_start_error
            .clone()
            .unwrap_or_else(|| "Worker::start failed".to_owned())
    }

    pub(super) fn on_stopped(&self, slot: &Slot<W>) {
        let mut reg = lock(&self.registry);
        if slot.started.swap(false, SeqCst) {
            reg.started -= 1;
        }
    }
}
