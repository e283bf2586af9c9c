//! `Pool<W>` on the cluster: [`ClusterEngine`] implements crew's backend seam
//! (`crew::backend::Engine`) over a [`ClusterClient`], and [`PoolBuilderExt`]
//! adds the one builder line, `.cluster(Cluster::connect(url).pool_name(p))`.
//!
//! What the engine maps, and how (`protocol.md`, "Beside tasks", has the
//! subjects and payloads):
//! - a task is a cluster task whose result resolves a crew `Task` (through its
//!   `Resolver`); crew's `Task::cancel` withdraws it from the stream and cancels
//!   it on the node that runs it;
//! - the pool's default timeout applies to tasks that set none; a priority is
//!   the task's subject, and nodes take high before normal before low
//!   (`protocol.md`, "Priorities"); a deadline from submission is kept by this
//!   client's clock: a task still unresolved at its deadline resolves as timed
//!   out and is withdrawn (and cancelled on its node if it runs);
//! - the pool's workers are the nodes' local workers. This client numbers
//!   them: a node gets an ordinal the first time the client hears of it, and
//!   its local worker `l` is the pool's worker `ordinal << 32 | l`, so the
//!   first node's workers keep their local ids ([`view`]). `workers()`,
//!   `size()` and `stats()` ask every node for its report (a core NATS
//!   request each node answers, bounded); a pool that has shut down lists none;
//! - `stats()` counts this client's tasks by outcome (and so `queued`: this
//!   client's tasks neither finished nor running), and takes from the nodes'
//!   reports one row per worker (with its node's pid and RSS), the wait and run
//!   histograms (merged), the worker time, and from the dead-letter stream its
//!   count (`Stats::dead_letters`). A node's row (host, pid, RSS, tasks done,
//!   each outcome) is in [`ClusterClient::stats`];
//! - events: each task's `TaskStarted` comes from its node (a notice to this
//!   client's inbox) or, if that notice was lost, is made up from the result
//!   (which names the worker and the run time) just before its end; the end
//!   (`TaskFinished`, or `TaskDiscarded` for a task that never started) is
//!   this client's, emitted by whoever resolves the handle; worker events come
//!   from the nodes (the pool's events subject). Core NATS: lossy, as crew's
//!   own events are when a subscriber falls behind;
//! - a task's progress: its node sends each change (`Context::progress`) to
//!   this client, the last one before the result, and the engine stores it in
//!   the handle (`Task::progress`, `Task::watch_progress`);
//! - messages both ways: `broadcast` (sticky too) reaches every node's local
//!   workers, `send_to` one worker; what workers send (`Context::send`) comes
//!   from every node to every client of the pool. Unlike on threads and
//!   processes, a message a task sends may arrive after its result;
//! - `kill_worker` asks the worker's node (a request): its task resolves as
//!   killed at once, and the node replaces the worker;
//! - `queue_capacity` bounds this client's tasks no node has said it started
//!   (a submission waits for room, `try_submit` gives the input back, and
//!   `submit_async` is woken when a task starts or ends): the pool's queue is
//!   this client's. The stream's own bound, [`Cluster::queue_capacity`],
//!   counts every client's tasks and the ones nodes run too (a WorkQueue
//!   stream keeps a message until its ack);
//! - `cancel_queued` cancels this client's tasks no node has said it started;
//!   a task that a node took but whose start has not reached this client yet
//!   is cancelled too (its node stops it at its next lease renewal);
//! - `wait_idle`, `shutdown` and `idle()` wait for this client's tasks;
//!   `terminate` resolves the ones that started as cancelled and the rest as
//!   closed, and withdraws them all. The nodes and their workers outlive the
//!   pool: no worker exits when it shuts down.
//!
//! Not carried yet (documented, not pretended): sticky keys and retries
//! (redelivery is the cluster's retry): a key is ignored, and any node may
//! run any task. Resizing: `Pool::resize` is refused
//! (`ResizeError::is_unsupported`): the workers are the nodes' local pools,
//! each sized by the builder its node was started with, so the cluster's
//! capacity changes by starting and stopping nodes.
//!
//! Every conformance scenario of crew (`crates/crew/tests/scenarios/`) runs on
//! the cluster (`tests/conformance.rs`) but the four that resize a pool,
//! skipped for the reason above and listed, with it, in the scenarios'
//! `CLUSTER_SKIPS`: `resize_grows_then_retires_idle_workers`,
//! `resize_lets_busy_workers_finish_their_task`,
//! `resize_racing_submit_loses_nothing` and
//! `elastic_grows_under_a_burst_and_shrinks_when_idle`.

mod state;
mod view;

use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use crew::backend::{Admission, BackendKind, Config, Engine, EventBus, TaskOptions};
use crew::{
    Events, Messages, PoolBuilder, RemoteWorker, ShutdownTimedOut, Stats, SubmitError, Task,
    WorkerId,
};

use crate::client::ClusterClient;
use crate::config::Cluster;
use state::State;

/// Adds [`cluster`](PoolBuilderExt::cluster) to crew's `PoolBuilder`.
pub trait PoolBuilderExt<W: RemoteWorker> {
    /// Runs the pool's tasks on the nodes of a cluster pool instead of local
    /// threads: `Pool::<W>::builder().cluster(Cluster::connect(url).pool_name("resize")).build()`.
    /// `build()` connects, and fails if the broker cannot be reached. The
    /// pool's `workers` setting is the nodes' business and is ignored here; its
    /// `queue_capacity` bounds this client's tasks that no node has started
    /// ([`Cluster::queue_capacity`] bounds the stream, for every client).
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
    state: Arc<State<W>>,
}

impl<W: RemoteWorker> ClusterEngine<W> {
    fn start(cluster: Cluster, config: &Config) -> std::io::Result<ClusterEngine<W>> {
        let client = cluster.client::<W>().map_err(std::io::Error::other)?;
        let state = State::start(client, config).map_err(std::io::Error::other)?;
        Ok(ClusterEngine { state })
    }

    /// The client underneath, for what `Pool` has no method for
    /// ([`ClusterClient::stats`], status by id).
    pub fn client(&self) -> &ClusterClient<W> {
        &self.state.client
    }
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
        self.state.submit(input, options, admission)
    }

    fn poll_room(&self, waker: &Waker) -> bool {
        self.state.poll_room(waker)
    }

    fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        self.state.client.wait_idle(deadline)
    }

    fn poll_idle(&self, waker: &Waker) -> bool {
        self.state.client.poll_idle(waker)
    }

    fn close(&self) {
        self.state.close();
    }

    fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        self.state.shutdown(deadline)
    }

    fn terminate(&self) {
        self.state.terminate();
    }

    fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    fn cancel_queued(&self) -> usize {
        self.state.cancel_queued()
    }

    fn kill_worker(&self, id: WorkerId) -> bool {
        self.state.kill_worker(id)
    }

    fn worker_ids(&self) -> Vec<WorkerId> {
        self.state.worker_ids()
    }

    fn size(&self) -> usize {
        self.state.size()
    }

    fn events(&self) -> Events {
        self.state.bus.subscribe()
    }

    fn stats(&self) -> Stats {
        self.state.stats()
    }

    fn bus(&self) -> Arc<EventBus> {
        Arc::clone(&self.state.bus)
    }

    fn messages(&self) -> Messages<W::Message> {
        crew::backend::subscribe_messages(&self.state.mail)
    }

    fn broadcast(&self, message: W::Message, sticky: bool) {
        self.state.broadcast(message, sticky);
    }

    fn send_to(&self, id: WorkerId, message: W::Message) -> Result<(), W::Message> {
        self.state.send_to(id, message)
    }
}

impl<W: RemoteWorker> std::fmt::Debug for ClusterEngine<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterEngine")
            .field("client", &self.state.client)
            .field("closed", &self.state.is_closed())
            .finish_non_exhaustive()
    }
}
