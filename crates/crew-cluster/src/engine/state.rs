//! The engine's state: this client's tasks (each with its handle's resolver
//! and what is known of its start), the counts, and every way a task ends.
//!
//! # Who resolves, who counts, who emits
//!
//! A task's handle is resolved by the first of: its result (the client's
//! sink), its handle's cancel, or the engine itself (a deadline, a kill,
//! `cancel_queued`, `terminate`). The handle's slot decides who is first
//! (`Resolver::resolve` and `Resolver::fail` say whether they won). Only the
//! winner counts the outcome, removes the task's [`Entry`] from the table and
//! emits its end event, so each task is counted once and ends once in the
//! events. A start is recorded (and `TaskStarted` emitted) under the table's
//! lock, only while the entry is there: a start that arrives after the end is
//! dropped, so `TaskStarted` always comes before the end.
//!
//! Locks: `tasks`, `counts` and the worker ids are never held together
//! (`tasks` is released before `counts` or the ids are taken), and no user
//! code runs under any of them (handles are resolved outside the locks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use crew::backend::{
    self, event, Admission, Config, EventBus, Failure, MessageBus, OutcomeCounts, Resolver,
    TaskOptions,
};
use crew::{
    ExitReason, RemoteWorker, ShutdownTimedOut, SubmitError, Task, TaskError, TaskOutcome, WorkerId,
};

use super::view::WorkerIds;
use crate::client::{ClusterClient, Notice, Origin, Sink};
use crate::envelope::{
    self, NodeEvent, NodeEventBody, StartedBody, WorkerMessage, KIND_MESSAGE, KIND_NODE_EVENT,
};
use crate::error::{BrokerError, ClusterError};

/// What the engine keeps, shared with the client's hooks and timers (which
/// hold it weakly) and with each unresolved task's sink (which holds it, so
/// that the client lives until every task it accepted has resolved).
pub(super) struct State<W: RemoteWorker> {
    pub(super) client: ClusterClient<W>,
    default_timeout: Option<Duration>,
    pub(super) bus: Arc<EventBus>,
    pub(super) mail: Arc<MessageBus<W::Message>>,
    closed: AtomicBool,
    /// Set once a shutdown or terminate is through: the pool then lists no
    /// workers (the nodes' workers are no longer its own).
    ended: AtomicBool,
    pub(super) built: Instant,
    /// Written when a task is accepted and by whoever resolves it; read by
    /// `stats`.
    pub(super) counts: Mutex<Counts>,
    /// This client's unresolved tasks, by number. Inserted by `submit`
    /// (before the publish: a start can be told before the publish's ack);
    /// a start is recorded by the started hook and by `stats` (a worker row
    /// that runs it); removed by whoever resolves the task. Its `waiting`
    /// count is the queue `capacity` bounds.
    tasks: Mutex<Tasks<W>>,
    /// The most tasks this client keeps waiting (not started): the pool's
    /// `queue_capacity`.
    capacity: Option<usize>,
    /// Notified when a waiting task starts or ends, or the pool closes:
    /// blocking submissions wait on it for room (with `tasks`' lock).
    room: Condvar,
    /// Woken then too: `submit_async` futures waiting for room.
    room_wakers: Mutex<Vec<Waker>>,
    /// The pool's worker ids for the nodes' workers ([`WorkerIds`]).
    pub(super) ids: Mutex<WorkerIds>,
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) submitted: u64,
    pub(super) outcomes: OutcomeCounts,
}

/// This client's unresolved tasks.
struct Tasks<W: RemoteWorker> {
    entries: HashMap<u64, Entry<W>>,
    /// How many of them have not started (as far as this client knows).
    waiting: usize,
}

impl<W: RemoteWorker> Tasks<W> {
    /// Removes task `n`; the second value says whether a waiting task left
    /// (room for another).
    fn remove(&mut self, n: u64) -> (Option<Entry<W>>, bool) {
        let entry = self.entries.remove(&n);
        let freed = entry.as_ref().is_some_and(|e| e.started.is_none());
        if freed {
            self.waiting -= 1;
        }
        (entry, freed)
    }
}

/// One unresolved task.
struct Entry<W: RemoteWorker> {
    resolver: Resolver<W::Output, W::Error>,
    submitted: Instant,
    /// The worker it started on, and when this client learned it.
    started: Option<(WorkerId, Instant)>,
}

impl<W: RemoteWorker> State<W> {
    /// The state over a connected client: sets the client's started hook and
    /// subscribes to the nodes' worker events and messages.
    pub(super) fn start(
        client: ClusterClient<W>,
        config: &Config,
    ) -> Result<Arc<State<W>>, BrokerError> {
        let state = Arc::new(State {
            client,
            default_timeout: config.default_timeout(),
            bus: Arc::new(EventBus::new(config.event_buffer())),
            mail: Arc::new(MessageBus::new(config.event_buffer())),
            closed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            built: Instant::now(),
            counts: Mutex::new(Counts::default()),
            tasks: Mutex::new(Tasks {
                entries: HashMap::new(),
                waiting: 0,
            }),
            capacity: config.queue_capacity(),
            room: Condvar::new(),
            room_wakers: Mutex::new(Vec::new()),
            ids: Mutex::new(WorkerIds::default()),
        });
        let weak = Arc::downgrade(&state);
        state.client.on_notice(Box::new(move |n, notice| {
            if let Some(state) = weak.upgrade() {
                match notice {
                    Notice::Started(body) => state.started(n, body),
                    Notice::Progress(fraction) => state.progress(n, fraction),
                }
            }
        }));
        let names = state.client.names().clone();
        let weak = Arc::downgrade(&state);
        state.client.listen(names.events_subject, move |message| {
            if let Some(state) = weak.upgrade() {
                state.node_event(&message.payload);
            }
        })?;
        let weak: Weak<State<W>> = Arc::downgrade(&state);
        state
            .client
            .listen(names.messages_subject, move |message| {
                if let Some(state) = weak.upgrade() {
                    state.worker_message(&message.payload);
                }
            })?;
        Ok(state)
    }

    // ------------------------------------------------------------ submitting

    pub(super) fn submit(
        self: &Arc<Self>,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        if self.is_closed() {
            return Err(backend::submit_closed(input));
        }
        let mut tasks = lock(&self.tasks);
        if let Some(capacity) = self.capacity {
            // The queue is this client's tasks no node has started: a
            // submission waits (or, under `Try`, is refused) while it is full.
            while tasks.waiting >= capacity {
                if self.is_closed() {
                    return Err(backend::submit_closed(input));
                }
                if matches!(admission, Admission::Try) {
                    return Err(backend::submit_full(input));
                }
                tasks = self
                    .room
                    .wait(tasks)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if self.is_closed() {
                return Err(backend::submit_closed(input));
            }
        }
        // The task's number is its crew id too, so a cancel (which names the
        // crew id) finds the cluster task.
        let n = self.client.next_number();
        let on_cancel: backend::OnCancel = {
            let state = Arc::downgrade(self);
            Arc::new(move |_id| {
                if let Some(state) = state.upgrade() {
                    state.cancelled(n);
                }
            })
        };
        let (task, resolver) = backend::new_task::<W::Output, W::Error>(
            backend::task_id(n),
            options.priority(),
            Some(on_cancel),
        );
        // The sink holds the state (and so the client and its connection)
        // until the task resolves: a pool whose last handle is dropped with
        // tasks in flight still resolves them. (The client's pending table
        // holds the sink: the cycle ends when the sink runs or is dropped.)
        let sink: Sink<W> = {
            let state = Arc::clone(self);
            let resolver = resolver.clone();
            Box::new(move |result, origin| {
                let result = result.map_err(to_task_error);
                state.settle(n, &resolver, result, origin);
            })
        };
        // Before the publish: a start can be told before the publish's ack.
        tasks.entries.insert(
            n,
            Entry {
                resolver,
                submitted: Instant::now(),
                started: None,
            },
        );
        tasks.waiting += 1;
        drop(tasks);
        // Counted before the publish (and uncounted if it is refused), so
        // that a result that comes first never finds more outcomes than tasks.
        lock(&self.counts).submitted += 1;
        let timeout = options.timeout().or(self.default_timeout);
        let wait = !matches!(admission, Admission::Try);
        let published =
            self.client
                .submit_numbered(n, input, options.priority(), timeout, wait, sink);
        if let Err(e) = published {
            let (_, freed) = lock(&self.tasks).remove(n);
            self.room_freed(freed);
            lock(&self.counts).submitted -= 1;
            return Err(if e.is_full() {
                backend::submit_full(e.into_inner())
            } else {
                backend::submit_closed(e.into_inner())
            });
        }
        if let Some(deadline) = options.deadline() {
            // This client's clock decides (crew's rule: the pool's clock,
            // never a message a worker may not send).
            let state = Arc::downgrade(self);
            self.client.at(deadline, move || {
                if let Some(state) = state.upgrade() {
                    state.fail(n, Failure::TimedOut, true);
                }
            });
        }
        Ok(task)
    }

    // ------------------------------------------------------------ ending

    /// The sink: task `n`'s result (or a failure the client decided).
    fn settle(
        &self,
        n: u64,
        resolver: &Resolver<W::Output, W::Error>,
        result: Result<W::Output, TaskError<W::Error>>,
        origin: Option<Origin>,
    ) {
        let mut one = OutcomeCounts::default();
        one.record(&result);
        let outcome = event::outcome_of(&result);
        if !resolver.resolve(result) {
            // Resolved first by a cancel, a deadline, a kill or `terminate`,
            // which counted it and ended it.
            return;
        }
        lock(&self.counts).outcomes.add(&one);
        let ran = origin
            .filter(|o| o.worker != 0)
            .and_then(|o| Some((self.worker(&o.node, o.worker)?, o.ran)));
        let (entry, freed) = lock(&self.tasks).remove(n);
        self.room_freed(freed);
        self.ended(n, entry, outcome, ran);
    }

    /// The handle's cancel won: count it, end it, withdraw it.
    fn cancelled(&self, n: u64) {
        lock(&self.counts)
            .outcomes
            .record_failure(&Failure::Cancelled, 1);
        let (entry, freed) = lock(&self.tasks).remove(n);
        self.room_freed(freed);
        self.ended(n, entry, TaskOutcome::Cancelled, None);
        self.client.forget(n);
    }

    /// Resolves task `n` with `failure` if it is still unresolved; with
    /// `withdraw`, also takes it out of the stream and cancels it on its
    /// node. True if this resolved it.
    fn fail(&self, n: u64, failure: Failure, withdraw: bool) -> bool {
        let Some(resolver) = lock(&self.tasks)
            .entries
            .get(&n)
            .map(|e| e.resolver.clone())
        else {
            return false;
        };
        if !resolver.fail(failure.clone()) {
            return false;
        }
        lock(&self.counts).outcomes.record_failure(&failure, 1);
        let (entry, freed) = lock(&self.tasks).remove(n);
        self.room_freed(freed);
        let outcome = event::outcome_of(&Err::<(), TaskError<()>>(backend::failed(failure)));
        self.ended(n, entry, outcome, None);
        if withdraw {
            self.client.forget(n);
        }
        true
    }

    /// Emits task `n`'s end: `TaskFinished` if it started (a start made up
    /// from the result's worker and run time first, if its notice never
    /// came), `TaskDiscarded` otherwise.
    fn ended(
        &self,
        n: u64,
        entry: Option<Entry<W>>,
        outcome: TaskOutcome,
        ran: Option<(WorkerId, Duration)>,
    ) {
        let Some(entry) = entry else { return };
        if !self.bus.is_active() {
            return;
        }
        let id = backend::task_id(n);
        let now = Instant::now();
        let started = match (entry.started, ran) {
            (Some(started), _) => Some(started),
            (None, Some((worker, ran))) => {
                let at = now.checked_sub(ran).unwrap_or(now).max(entry.submitted);
                let waited = at.saturating_duration_since(entry.submitted);
                self.bus.emit(event::task_started(id, worker, waited));
                Some((worker, at))
            }
            (None, None) => None,
        };
        match started {
            Some((worker, at)) => {
                let waited = at.saturating_duration_since(entry.submitted);
                let ran = ran.map_or_else(|| now.saturating_duration_since(at), |(_, r)| r);
                self.bus
                    .emit(event::task_finished(id, worker, outcome, waited, ran));
            }
            None => self.bus.emit(event::task_discarded(id, outcome)),
        }
    }

    // ------------------------------------------------------------ starts

    /// The started hook: task `n` started on a node's worker.
    fn started(&self, n: u64, body: StartedBody) {
        if let Some(worker) = self.worker(&body.node, body.worker) {
            self.running(n, worker);
        }
    }

    /// The progress hook: task `n` reported `fraction` on its node.
    fn progress(&self, n: u64, fraction: f32) {
        let resolver = lock(&self.tasks)
            .entries
            .get(&n)
            .map(|e| e.resolver.clone());
        // Outside the table's lock: it wakes the task's progress watchers.
        if let Some(resolver) = resolver {
            resolver.set_progress(fraction);
        }
    }

    /// Records that task `n` runs on `worker` (once), and emits its start.
    pub(super) fn running(&self, n: u64, worker: WorkerId) {
        let mut tasks = lock(&self.tasks);
        let Some(entry) = tasks.entries.get_mut(&n) else {
            return;
        };
        if entry.started.is_some() {
            return;
        }
        let now = Instant::now();
        entry.started = Some((worker, now));
        entry.resolver.set_worker(worker);
        let waited = now.saturating_duration_since(entry.submitted);
        // Under the table's lock: the end, emitted by whoever removes the
        // entry, comes after.
        self.bus
            .emit(event::task_started(backend::task_id(n), worker, waited));
        tasks.waiting -= 1;
        drop(tasks);
        self.room_freed(true);
    }

    /// A waiting task started or ended (if `freed`): wakes a submission that
    /// waits for room.
    fn room_freed(&self, freed: bool) {
        if !freed || self.capacity.is_none() {
            return;
        }
        self.room.notify_all();
        let wakers = std::mem::take(&mut *lock(&self.room_wakers));
        for waker in wakers {
            waker.wake();
        }
    }

    /// True if a task may be submitted now (or the pool is closed: it is then
    /// refused at once); otherwise `waker` is woken when that may change.
    pub(super) fn poll_room(&self, waker: &Waker) -> bool {
        let Some(capacity) = self.capacity else {
            return true;
        };
        let tasks = lock(&self.tasks);
        if tasks.waiting < capacity || self.is_closed() {
            return true;
        }
        // Under `tasks`' lock: a start cannot free room between the check and
        // the push unseen (`room_freed` takes the wakers after it).
        lock(&self.room_wakers).push(waker.clone());
        false
    }

    /// The pool's worker id of `node`'s local worker `local`.
    pub(super) fn worker(&self, node: &str, local: u64) -> Option<WorkerId> {
        lock(&self.ids).id(node, local)
    }

    // ------------------------------------------------------------ from the nodes

    /// A node's worker event, as the pool's.
    fn node_event(&self, bytes: &[u8]) {
        let Ok(body) =
            envelope::decode_kind::<NodeEventBody>(bytes, KIND_NODE_EVENT, "a node's event")
        else {
            return;
        };
        let Some(worker) = self.worker(&body.node, body.worker) else {
            return;
        };
        self.bus.emit(match body.event {
            NodeEvent::Started => event::worker_started(worker),
            NodeEvent::StartFailed {
                message,
                consecutive,
            } => event::worker_start_failed(worker, message, consecutive),
            NodeEvent::Restarted { reason } => event::worker_restarted(worker, reason),
            NodeEvent::Exited { reason } => event::worker_exited(worker, exit_reason(&reason)),
        });
    }

    /// A worker's message to the pool.
    fn worker_message(&self, bytes: &[u8]) {
        let Ok(body) =
            envelope::decode_kind::<WorkerMessage>(bytes, KIND_MESSAGE, "a worker's message")
        else {
            return;
        };
        let (Some(worker), Ok(message)) = (
            self.worker(&body.node, body.worker),
            postcard::from_bytes::<W::Message>(&body.message),
        ) else {
            return;
        };
        self.mail.emit((worker, message));
    }

    // ------------------------------------------------------------ the pool's calls

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Submissions waiting for room are refused now.
        drop(lock(&self.tasks));
        self.room_freed(true);
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether a shutdown or terminate is through.
    pub(super) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.bus.close();
    }

    pub(super) fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        self.close();
        if self.client.wait_idle(deadline) {
            self.end();
            return Ok(());
        }
        let still = self.client.pending();
        self.terminate();
        Err(backend::shutdown_timed_out(still))
    }

    /// Started tasks resolve as cancelled, the others as closed; all are
    /// withdrawn.
    pub(super) fn terminate(&self) {
        self.close();
        let all: Vec<(u64, bool)> = lock(&self.tasks)
            .entries
            .iter()
            .map(|(n, e)| (*n, e.started.is_some()))
            .collect();
        for (n, started) in all {
            let failure = if started {
                Failure::Cancelled
            } else {
                Failure::Closed
            };
            self.fail(n, failure, true);
        }
        // Whatever is left (a submission between the two): cancelled.
        self.client.resolve_all(ClusterError::cancelled);
        self.end();
    }

    /// Cancels every task no node has said it started.
    pub(super) fn cancel_queued(&self) -> usize {
        let queued: Vec<u64> = lock(&self.tasks)
            .entries
            .iter()
            .filter(|(_, e)| e.started.is_none())
            .map(|(n, _)| *n)
            .collect();
        queued
            .into_iter()
            .filter(|n| self.fail(*n, Failure::Cancelled, true))
            .count()
    }

    /// Task `n` was killed with its worker (its node said so).
    pub(super) fn killed(&self, n: u64) {
        // Not withdrawn: the node delivers the kill as the task's result,
        // which then finds the handle resolved.
        self.fail(n, Failure::Killed, false);
    }
}

/// `crew::ExitReason` from its name on the broker (`node::exit_name`).
fn exit_reason(name: &str) -> ExitReason {
    match name {
        "retired" => ExitReason::Retired,
        "killed" => ExitReason::Killed,
        "abandoned" => ExitReason::Abandoned,
        "crashed" => ExitReason::Crashed,
        "recycled" => ExitReason::Recycled,
        _ => ExitReason::Shutdown,
    }
}

/// The cluster's error as crew's. A dead letter is a crash: the task took
/// down every node that ran it (or was not a task at all); the crash's stderr
/// tail holds the reason.
fn to_task_error<E>(error: ClusterError<E>) -> TaskError<E> {
    if error.is_user() {
        return match error.into_user_error() {
            Ok(user) => backend::user_error(user),
            Err(_) => unreachable!("is_user said so"),
        };
    }
    let failure = if let Some(message) = error.panic_message() {
        Failure::Panicked(backend::Panic::message(message))
    } else if error.is_timeout() {
        Failure::TimedOut
    } else if error.is_cancelled() {
        Failure::Cancelled
    } else if error.is_killed() {
        Failure::Killed
    } else if error.is_closed() {
        Failure::Closed
    } else if error.is_start_failure() {
        Failure::StartFailed(error.to_string())
    } else if error.is_dead_letter() || error.is_crash() {
        Failure::Crashed(backend::crash(None, None, vec![error.to_string()]))
    } else {
        Failure::Protocol(error.to_string())
    };
    backend::failed(failure)
}

/// No user code runs under these locks.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
