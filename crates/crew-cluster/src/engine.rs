//! `Pool<W>` on the cluster: [`ClusterEngine`] implements crew's backend seam
//! (`crew::backend::Engine`) over a [`ClusterClient`], and [`PoolBuilderExt`]
//! adds the one builder line, `.cluster(Cluster::connect(url).pool_name(p))`.
//!
//! What the engine maps, and how:
//! - a task is a cluster task whose result resolves a crew `Task` (through its
//!   `Resolver`); crew's `Task::cancel` withdraws it from the stream and cancels
//!   it on the node that runs it;
//! - the pool's default timeout applies to tasks that set none; priorities are
//!   the task's subject;
//! - `wait_idle`, `shutdown` and `idle()` wait for this client's tasks;
//!   `terminate` resolves them as cancelled and withdraws them;
//! - `stats()` counts this client's tasks by outcome, and takes workers, busy,
//!   idle and queued from the nodes' heartbeats and the stream.
//!
//! Not carried yet (documented, not pretended): messages between the pool and
//! its workers (`broadcast`, `send_to`, `messages()` are empty), events (the
//! bus stays silent), `kill_worker` and per-worker rows (workers live on other
//! hosts), sticky keys and retries (redelivery is the cluster's retry),
//! `cancel_queued` (the seam's default: it cancels nothing and returns 0;
//! `Task::cancel` still withdraws one task), deadlines counted from
//! submission (`TaskBuilder::deadline` is ignored: only the timeout, counted
//! on the node from the task's start, is sent), and a task's progress
//! (`Context::progress` on a node reaches the node's local handle only;
//! `Task::progress` here stays `None`: the engine never calls
//! `Resolver::set_progress`), and `Pool::resize` (the
//! seam's default: `ResizeError::is_unsupported`). The workers are the nodes'
//! local pools, each sized by the builder its node was started with (a node
//! fetches as many tasks as its pool's size); the cluster's capacity changes
//! by starting and stopping nodes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use crew::backend::{
    self, Admission, BackendKind, Config, Engine, EventBus, Failure, Figures, MessageBus,
    OutcomeCounts, TaskOptions,
};
use crew::{
    Events, Messages, PoolBuilder, RemoteWorker, ShutdownTimedOut, Stats, SubmitError, Task,
    TaskError, WorkerId,
};

use crate::client::{ClusterClient, Sink};
use crate::config::Cluster;
use crate::error::ClusterError;

/// Adds [`cluster`](PoolBuilderExt::cluster) to crew's `PoolBuilder`.
pub trait PoolBuilderExt<W: RemoteWorker> {
    /// Runs the pool's tasks on the nodes of a cluster pool instead of local
    /// threads: `Pool::<W>::builder().cluster(Cluster::connect(url).pool_name("resize")).build()`.
    /// `build()` connects, and fails if the broker cannot be reached. The
    /// pool's `workers` setting is the nodes' business and is ignored here; its
    /// `queue_capacity` bounds the stream if this client creates it.
    fn cluster(self, cluster: Cluster) -> PoolBuilder<W>;
}

impl<W: RemoteWorker> PoolBuilderExt<W> for PoolBuilder<W> {
    fn cluster(self, cluster: Cluster) -> PoolBuilder<W> {
        self.engine(move |config: &Config| {
            let engine: Arc<dyn Engine<W>> = Arc::new(ClusterEngine::start(cluster, config)?);
            Ok(engine)
        })
    }
}

/// A `Pool<W>` whose workers are the nodes of a cluster pool.
pub struct ClusterEngine<W: RemoteWorker> {
    client: ClusterClient<W>,
    default_timeout: Option<Duration>,
    bus: Arc<EventBus>,
    mail: Arc<MessageBus<W::Message>>,
    closed: AtomicBool,
    built: Instant,
    /// Written when a task is accepted and when it resolves (by the client's
    /// dispatcher, sweeper, or a cancel); read by `stats`.
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    submitted: u64,
    outcomes: OutcomeCounts,
}

impl<W: RemoteWorker> ClusterEngine<W> {
    fn start(mut cluster: Cluster, config: &Config) -> std::io::Result<ClusterEngine<W>> {
        if cluster.queue_capacity.is_none() {
            cluster.queue_capacity = config.queue_capacity().map(|n| n as u64);
        }
        let client = cluster.client::<W>().map_err(std::io::Error::other)?;
        Ok(ClusterEngine {
            client,
            default_timeout: config.default_timeout(),
            bus: Arc::new(EventBus::new(config.event_buffer())),
            mail: Arc::new(MessageBus::new(config.event_buffer())),
            closed: AtomicBool::new(false),
            built: Instant::now(),
            counts: Arc::new(Mutex::new(Counts::default())),
        })
    }

    /// The client underneath, for what `Pool` has no method for
    /// ([`ClusterClient::stats`], status by id).
    pub fn client(&self) -> &ClusterClient<W> {
        &self.client
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

impl<W: RemoteWorker> Engine<W> for ClusterEngine<W> {
    fn kind(&self) -> BackendKind {
        BackendKind::Other("cluster")
    }

    fn submit(
        &self,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(backend::submit_closed(input));
        }
        // The task's number is its crew id too, so a cancel (which names the
        // crew id) finds the cluster task.
        let client = self.client.clone();
        let on_cancel: backend::OnCancel = {
            let counts = Arc::clone(&self.counts);
            Arc::new(move |id: crew::TaskId| {
                lock(&counts)
                    .outcomes
                    .record_failure(&Failure::Cancelled, 1);
                client.forget(id.as_u64());
            })
        };
        let n = self.client.next_number();
        let (task, resolver) = backend::new_task::<W::Output, W::Error>(
            backend::task_id(n),
            options.priority(),
            Some(on_cancel),
        );
        let sink: Sink<W> = {
            let counts = Arc::clone(&self.counts);
            Box::new(move |result: Result<W::Output, ClusterError<W::Error>>| {
                let result = result.map_err(to_task_error);
                let mut counts = lock(&counts);
                // A handle cancelled first keeps its cancel (counted then).
                if !resolver.is_resolved() {
                    counts.outcomes.record(&result);
                }
                drop(counts);
                resolver.resolve(result);
            })
        };
        let timeout = options.timeout().or(self.default_timeout);
        let wait = !matches!(admission, Admission::Try);
        match self
            .client
            .submit_numbered(n, input, options.priority(), timeout, wait, sink)
        {
            Ok(()) => {
                lock(&self.counts).submitted += 1;
                Ok(task)
            }
            Err(e) if e.is_full() => Err(backend::submit_full(e.into_inner())),
            Err(e) => Err(backend::submit_closed(e.into_inner())),
        }
    }

    fn poll_room(&self, _waker: &Waker) -> bool {
        // The stream is the queue, and its room is known only by publishing:
        // a submission that finds it full waits (or is refused under `Try`).
        true
    }

    fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        self.client.wait_idle(deadline)
    }

    fn poll_idle(&self, waker: &Waker) -> bool {
        self.client.poll_idle(waker)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        self.close();
        if self.client.wait_idle(deadline) {
            self.bus.close();
            return Ok(());
        }
        let still = self.client.pending();
        self.terminate();
        Err(backend::shutdown_timed_out(still))
    }

    fn terminate(&self) {
        self.close();
        self.client.resolve_all(ClusterError::cancelled);
        self.bus.close();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn kill_worker(&self, _id: WorkerId) -> bool {
        // Workers are on other hosts; a node's own pool kills its workers.
        false
    }

    fn worker_ids(&self) -> Vec<WorkerId> {
        Vec::new()
    }

    fn size(&self) -> usize {
        self.client
            .nodes()
            .map(|nodes| nodes.iter().map(|n| n.workers).sum())
            .unwrap_or(0)
    }

    fn events(&self) -> Events {
        self.bus.subscribe()
    }

    fn stats(&self) -> Stats {
        let counts = lock(&self.counts);
        let figures = Figures {
            submitted: counts.submitted,
            outcomes: counts.outcomes,
            uptime: self.built.elapsed(),
            ..Figures::default()
        };
        drop(counts);
        let mut stats = figures.into_stats();
        if let Ok(cluster) = self.client.stats() {
            stats.workers = cluster.workers;
            stats.busy = cluster.busy;
            stats.idle = cluster.idle;
            stats.queued = usize::try_from(cluster.queued.saturating_sub(cluster.busy as u64))
                .unwrap_or(usize::MAX);
        }
        stats
    }

    fn bus(&self) -> Arc<EventBus> {
        Arc::clone(&self.bus)
    }

    fn messages(&self) -> Messages<W::Message> {
        backend::subscribe_messages(&self.mail)
    }

    fn broadcast(&self, _message: W::Message, _sticky: bool) {
        // Not carried to nodes yet (see the module docs).
    }

    fn send_to(&self, _id: WorkerId, message: W::Message) -> Result<(), W::Message> {
        Err(message)
    }
}

impl<W: RemoteWorker> std::fmt::Debug for ClusterEngine<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterEngine")
            .field("client", &self.client)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// No user code runs under this lock.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
