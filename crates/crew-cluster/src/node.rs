//! A worker node: an ordinary local crew pool fed from the pool's JetStream
//! consumers (`protocol.md`, "A node").
//!
//! Threads of a node (all on its own small tokio runtime):
//! - the *fetch loop* (`fetch.rs`) waits for a free slot of the local pool,
//!   then takes as many tasks as there are free slots, high before normal
//!   before low, and hands each to a *task handler* with its slot;
//! - a *task handler* decodes the task (or dead-letters it), runs it on the
//!   local pool while renewing its lease with in-progress acks, writes its result
//!   (results bucket, then the client's inbox), and only then acks it; at each
//!   renewal it also checks that the task's message is still in the stream
//!   (gone means withdrawn: a cancel whose message this node missed);
//! - the *cancel listener* cancels a running task the client asked to cancel;
//! - the *heartbeat* writes the node's row in the nodes bucket;
//! - the *relays* (`relay.rs`) tell clients of task starts, worker events and
//!   worker messages, answer their stats requests with the node's report, and
//!   take their broadcasts, messages and kills.
//!
//! Any broker error in the fetch loop drops the consumer handles and opens them
//! again after a backoff; async-nats reconnects the connection underneath. So a
//! broker restart costs a node a few seconds, never its life.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, consumer::PullConsumer, kv};
use async_nats::HeaderMap;
use crew::backend::{Figures, OutcomeCounts, Timings};
use crew::{Pool, PoolBuilder, RemoteWorker, TaskError, TaskId};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{
    watch, Notify, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock,
    Semaphore,
};

use crate::broker::{self, bounded, PoolObjects};
use crate::config::{Cluster, Names};
use crate::envelope::{
    self, Outcome, ResultBody, H_DEAD_REASON, H_DELIVERIES, H_NOTIFY, H_REPLY, H_TASK,
};

mod fetch;
mod relay;

use crate::error::BrokerError;
pub(crate) use relay::Report;

/// The wait before the fetch loop reopens the consumers after a broker error.
const RETRY_WAIT: Duration = Duration::from_millis(250);

/// A node's heartbeat row in the nodes bucket (`protocol.md`, "Heartbeats").
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// The node's id (its key in the bucket).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its local pool's size: the most tasks it runs at once.
    pub workers: usize,
    /// Tasks running now.
    pub busy: usize,
    /// Its resident memory, in bytes (0 where it cannot be read).
    pub rss_bytes: u64,
    /// Tasks it finished whose result it delivered (every outcome below but
    /// dead letters).
    pub done: u64,
    /// Of those: tasks that returned their output.
    pub succeeded: u64,
    /// Tasks that returned the worker's own error.
    pub user_errors: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Tasks that ran past their timeout.
    pub timed_out: u64,
    /// Tasks cancelled while it ran them.
    pub cancelled: u64,
    /// Tasks that failed otherwise (a worker process crashed, was killed, could
    /// not start).
    pub other_failures: u64,
    /// Deliveries that were redeliveries (a node before it died or was cut off).
    pub redeliveries: u64,
    /// Messages it has dead-lettered.
    pub dead_lettered: u64,
}

/// A node's counters, written by its task handlers, read by its heartbeat.
#[derive(Default)]
struct Counters {
    busy: AtomicUsize,
    done: AtomicU64,
    /// The local pool's results by outcome, counted by crew's own rule (the
    /// one a local pool's `stats()` follows); the heartbeat reads them back
    /// through [`Figures::into_stats`]. One short lock per finished task.
    outcomes: Mutex<OutcomeCounts>,
    redeliveries: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Counters {
    /// The row's outcome columns: succeeded, user errors, panicked, timed
    /// out, cancelled, and every other failure.
    fn outcome_columns(&self) -> [u64; 6] {
        let outcomes = *lock(&self.outcomes);
        let s = Figures {
            outcomes,
            ..Figures::default()
        }
        .into_stats();
        let named = [s.completed, s.failed, s.panicked, s.timed_out, s.cancelled];
        let other = outcomes.total().saturating_sub(named.iter().sum());
        [named[0], named[1], named[2], named[3], named[4], other]
    }
}

/// What the task handlers, the fetch loop, the cancel listener and the heartbeat
/// of one node share.
struct NodeCtx<W: RemoteWorker> {
    cluster: Cluster,
    names: Names,
    id: String,
    host: String,
    pool: Pool<W>,
    /// The local pool's size, the number of slots.
    slots: usize,
    client: async_nats::Client,
    js: jetstream::Context,
    objects: PoolObjects,
    /// The consumer's lease and attempts, read from the consumer itself, so that
    /// every node follows whoever created it.
    ack_wait: Duration,
    max_attempts: u32,
    max_deliver: u32,
    /// Running tasks by id, and the signal that cancels each. Written by task
    /// handlers (insert at start, remove at end); read by the cancel listener.
    running: Mutex<HashMap<String, Arc<Notify>>>,
    /// Set when a shutdown gave up waiting for running tasks and cancelled
    /// them: their handlers give them back instead of reporting the cancel.
    handing_back: AtomicBool,
    /// Taken shared by a first delivery while it waits and runs, exclusively by a
    /// redelivery (write-preferring: a waiting redelivery holds back new tasks).
    exclusive: Arc<RwLock<()>>,
    counters: Counters,
    /// The cluster task each task of the local pool runs, by local task id.
    /// Written by task handlers (inserted under this lock around the local
    /// submit, so the event relay never sees a local id before its entry;
    /// removed once the local task resolved); read by the relays
    /// (`relay.rs`) to name the cluster task of a local event or worker row.
    local: Mutex<HashMap<TaskId, LocalTask>>,
    /// Wait and run times of the tasks this node ran, recorded by the task
    /// handlers before they publish the result; read by reports.
    timings: Mutex<Timings>,
    /// Local tasks resolved so far (written by task handlers): a report waits
    /// until the local pool's own counts include them (`relay.rs`).
    resolved_local: AtomicU64,
    /// When the node started (a report's uptime).
    born: std::time::Instant,
}

/// The cluster task a local task runs.
struct LocalTask {
    /// Its cluster id.
    key: String,
    /// Its client's inbox, if its client wants its start told (`H_NOTIFY`).
    notify: Option<String>,
}

/// A running node, started by [`Node::start`]. Dropping it shuts it down as
/// [`Node::shutdown`] does.
#[must_use = "dropping a Node shuts it down"]
pub struct Node {
    id: String,
    stop: watch::Sender<bool>,
    /// The fetch loop, which returns once every slot is back after a stop.
    main: Option<tokio::task::JoinHandle<()>>,
    /// The most a shutdown waits for the fetch loop to return.
    shutdown_bound: Duration,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Node {
    /// Starts a node that serves `W` from `cluster` on a local pool built from
    /// `local` (`Pool::<W>::builder().workers(4)`, or `.processes(4)` for
    /// isolation), and returns once it is connected and its consumer exists.
    pub fn start<W: RemoteWorker>(
        cluster: Cluster,
        local: PoolBuilder<W>,
    ) -> Result<Node, BrokerError> {
        Node::start_with(cluster, local, false)
    }

    /// [`Node::start`]; a `patient` node retries the broker until it answers
    /// instead of failing.
    fn start_with<W: RemoteWorker>(
        cluster: Cluster,
        local: PoolBuilder<W>,
        patient: bool,
    ) -> Result<Node, BrokerError> {
        let names = cluster.names().map_err(BrokerError::new)?;
        let pool = local
            .build()
            .map_err(|e| BrokerError::new(format!("building the node's local pool: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("crew-node")
            .enable_all()
            .build()
            .map_err(|e| BrokerError::new(format!("starting the node's runtime: {e}")))?;
        let host = host_name();
        // The whole nuid: its first characters are a prefix shared by every
        // nuid this process makes, so two nodes of one process would share a
        // shorter id (and so a row, a control subject and a worker numbering).
        let id = format!(
            "{}-{}-{}",
            key_safe(&host),
            std::process::id(),
            nuid::next()
        );
        let (stop, stop_rx) = watch::channel(false);
        let main = runtime.block_on(async {
            let (client, js, objects, consumers, cancels, relays) = loop {
                match setup(&cluster, &names, &id).await {
                    Ok(parts) => break parts,
                    Err(e) if patient => {
                        eprintln!("crew node {id}: {e}; trying again in {PATIENCE:?}");
                        tokio::time::sleep(PATIENCE).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            // Every level's consumer has the same policy: read the normal one's.
            let config = &consumers[1].cached_info().config;
            let ack_wait = config.ack_wait;
            let max_deliver = u32::try_from(config.max_deliver).unwrap_or(u32::MAX);
            let max_attempts = broker::attempts(config.max_deliver);
            let slots = pool.size().max(1);
            let ctx = Arc::new(NodeCtx {
                cluster,
                names,
                id: id.clone(),
                host,
                pool,
                slots,
                client,
                js,
                objects,
                ack_wait,
                max_attempts,
                max_deliver,
                running: Mutex::new(HashMap::new()),
                exclusive: Arc::new(RwLock::new(())),
                handing_back: AtomicBool::new(false),
                counters: Counters::default(),
                local: Mutex::new(HashMap::new()),
                timings: Mutex::new(Timings::new()),
                resolved_local: AtomicU64::new(0),
                born: std::time::Instant::now(),
            });
            relay::start(&ctx, relays);
            tokio::spawn(cancel_listener(Arc::clone(&ctx), cancels));
            // Listed before `start` returns, so that a client that asks for
            // the nodes right after finds this one.
            beat(&ctx).await;
            tokio::spawn(heartbeat(Arc::clone(&ctx), stop_rx.clone()));
            // What a shutdown may take (`fetch_loop`'s end): one ack wait for
            // running tasks, two broker timeouts for the handed-back ones, one
            // for the local pool and one for the heartbeat's removal.
            let shutdown_bound = ack_wait + ctx.cluster.broker_timeout * 4 + Duration::from_secs(1);
            Ok::<_, String>((
                tokio::spawn(fetch::fetch_loop(ctx, consumers, stop_rx)),
                shutdown_bound,
            ))
        });
        match main {
            Ok((main, shutdown_bound)) => Ok(Node {
                id,
                stop,
                main: Some(main),
                shutdown_bound,
                runtime: Some(runtime),
            }),
            Err(e) => {
                runtime.shutdown_background();
                Err(BrokerError::new(e))
            }
        }
    }

    /// The node's id, as it appears in the nodes bucket and on results.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops pulling tasks, lets the running ones finish and deliver their
    /// results, then closes the local pool and the connection. Tasks still
    /// running after one ack wait are cancelled on the local pool and handed
    /// back to the stream, for another node.
    pub fn shutdown(mut self) {
        self.stop_and_wait();
    }

    fn stop_and_wait(&mut self) {
        let _ = self.stop.send(true);
        if let (Some(runtime), Some(main)) = (self.runtime.take(), self.main.take()) {
            // The fetch loop's shutdown is bounded step by step (one ack wait
            // for running tasks, then broker timeouts); this is the backstop.
            let backstop = self.shutdown_bound;
            let _ = runtime.block_on(async move { tokio::time::timeout(backstop, main).await });
            runtime.shutdown_background();
        }
    }

    /// Serves until the process is killed.
    fn block(mut self) -> ! {
        if let (Some(runtime), Some(main)) = (self.runtime.as_ref(), self.main.take()) {
            let _ = runtime.block_on(main);
        }
        // The fetch loop only returns after a stop, which nothing sends here.
        std::process::exit(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

/// What a node needs of the broker: its connection, JetStream, the pool's
/// streams and buckets, the consumers, the cancel subscription and the relays'
/// subscriptions.
async fn setup(
    cluster: &Cluster,
    names: &Names,
    id: &str,
) -> Result<
    (
        async_nats::Client,
        jetstream::Context,
        PoolObjects,
        [PullConsumer; 3],
        async_nats::Subscriber,
        relay::Subscriptions,
    ),
    String,
> {
    let client = broker::connect(cluster, &format!("crew node {id}"), || {}).await?;
    let js = broker::jetstream(client.clone(), cluster);
    let objects = broker::ensure_pool(&js, cluster, names).await?;
    let consumers = broker::ensure_consumers(&objects.tasks, cluster, names).await?;
    let cancels = bounded(
        cluster.broker_timeout,
        "subscribing to cancels",
        client.subscribe(names.cancel_subject.clone()),
    )
    .await?;
    let relays = relay::subscribe(&client, cluster, names, id).await?;
    Ok((client, js, objects, consumers, cancels, relays))
}

/// How long a node started by [`serve`] waits before trying an unreachable
/// broker again.
const PATIENCE: Duration = Duration::from_secs(1);

/// The `main` of a worker node: serves `W` from `cluster` on a local pool built
/// from `local`, until the process is killed. A broker that cannot be reached
/// yet (the node started first, or the broker restarts) is tried again every
/// second, saying so on stderr; returns only if the node cannot start for
/// another reason (a bad pool name, a local pool that cannot be built).
///
/// A node that runs its tasks in worker processes (`.processes(n)`) re-runs its
/// own executable for them: call `crew::bootstrap::<W>()` first in `main`.
///
/// ```no_run
/// # use crew::{Context, Pool, StartError, Worker};
/// # struct Resize;
/// # impl Worker for Resize {
/// #     type Input = u32; type Output = u32; type Error = String; type Message = ();
/// #     fn start(_: &mut Context<'_>) -> Result<Self, StartError> { Ok(Resize) }
/// #     fn run(&mut self, i: u32, _: &mut Context<'_>) -> Result<u32, String> { Ok(i) }
/// # }
/// fn main() {
///     let cluster = crew_cluster::Cluster::connect("nats://127.0.0.1:4222").pool_name("resize");
///     let err = crew_cluster::serve(cluster, Pool::<Resize>::builder().workers(4));
///     eprintln!("node: {err}");
/// }
/// ```
pub fn serve<W: RemoteWorker>(cluster: Cluster, local: PoolBuilder<W>) -> BrokerError {
    match Node::start_with(cluster, local, true) {
        Ok(node) => node.block(),
        Err(e) => e,
    }
}

/// The environment variable [`bootstrap`] reads the NATS URL from.
pub const ENV_URL: &str = "CREW_CLUSTER_URL";
/// The environment variable [`bootstrap`] reads the pool's name from.
pub const ENV_POOL: &str = "CREW_CLUSTER_POOL";
/// The environment variable [`bootstrap`] reads the node's worker count from.
pub const ENV_WORKERS: &str = "CREW_CLUSTER_WORKERS";

/// Call first in `main` of a program that can also be a worker node of `W`: if
/// [`ENV_URL`] is set, serves `W` as a node (pool [`ENV_POOL`], `default` if
/// unset; [`ENV_WORKERS`] threads, the available parallelism if unset) and
/// never returns; otherwise returns at once. A node that cannot start prints why
/// and exits with status 2.
pub fn bootstrap<W: RemoteWorker>() {
    let Some(url) = std::env::var_os(ENV_URL) else {
        return;
    };
    let mut cluster = Cluster::connect(url.to_string_lossy().into_owned());
    if let Some(pool) = std::env::var_os(ENV_POOL) {
        cluster = cluster.pool_name(pool.to_string_lossy().into_owned());
    }
    let mut local = Pool::<W>::builder();
    if let Some(n) = std::env::var(ENV_WORKERS)
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        local = local.workers(n);
    }
    let err = serve(cluster, local);
    eprintln!("crew cluster node: {err}");
    std::process::exit(2);
}

/// The end of a node's fetch loop (`fetch.rs`), once it stopped taking
/// tasks: waits for every slot to come back (every running task delivered),
/// then closes the local pool and removes the node's row.
async fn wind_down<W: RemoteWorker>(ctx: &NodeCtx<W>, slots: &Semaphore) {
    // Every handler holds a slot until its task is delivered and acked. Running
    // tasks get one ack wait to finish; then they are cancelled on the local
    // pool and handed back to the stream for another node.
    let all = u32::try_from(ctx.slots).unwrap_or(u32::MAX);
    if tokio::time::timeout(ctx.ack_wait, slots.acquire_many(all))
        .await
        .is_err()
    {
        ctx.handing_back.store(true, Ordering::Release);
        ctx.pool.terminate();
        let _ = tokio::time::timeout(ctx.cluster.broker_timeout * 2, slots.acquire_many(all)).await;
    }
    // Off the runtime's threads (it blocks), and bounded: a task that ignores
    // its cancel keeps its thread, which is left to finish on its own, and
    // never holds up the node's shutdown.
    let pool = ctx.pool.clone();
    let grace = ctx.cluster.broker_timeout;
    let _ = tokio::task::spawn_blocking(move || pool.shutdown_timeout(grace)).await;
    let _ = bounded(
        ctx.cluster.broker_timeout,
        "removing the heartbeat",
        ctx.objects.nodes.delete(&ctx.id),
    )
    .await;
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Runs one delivered task and delivers its result; or dead-letters it.
async fn handle<W: RemoteWorker>(
    ctx: Arc<NodeCtx<W>>,
    message: jetstream::Message,
    _slot: OwnedSemaphorePermit,
) {
    let (delivered, sequence) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(1),
            info.stream_sequence,
        ),
        Err(_) => (1, 0),
    };
    if delivered > 1 {
        ctx.counters.redeliveries.fetch_add(1, Ordering::Relaxed);
    }
    let headers = message.headers.as_ref();
    let task = header(headers, H_TASK).map(str::to_owned);
    let reply = header(headers, H_REPLY).map(str::to_owned);
    let body = envelope::decode_task::<W::Input>(&message.payload);
    let (task, body) = match (task, body) {
        (Some(task), Ok(body)) => (task, body),
        (task, Err(e)) => {
            let reason = format!("not a crew task: {e}");
            return dead_letter(&ctx, &message, delivered, sequence, reason, task, reply).await;
        }
        (None, Ok(_)) => {
            let reason = format!("a task without its {H_TASK} header");
            return dead_letter(&ctx, &message, delivered, sequence, reason, None, reply).await;
        }
    };
    if delivered >= ctx.max_deliver {
        let reason = format!(
            "delivered {delivered} times without a result (each node that took it died or was cut off)"
        );
        return dead_letter(
            &ctx,
            &message,
            delivered,
            sequence,
            reason,
            Some(task),
            reply,
        )
        .await;
    }
    // Renew the lease three times per ack wait, so one lost renewal is not a
    // redelivery; from here on, while the task waits for its turn and runs.
    let mut renew = tokio::time::interval(ctx.ack_wait / 3);
    renew.tick().await;
    // A redelivered task runs alone on this node (protocol.md, "Redeliveries
    // run alone"): if it is what killed its last node, it takes no other task
    // down with it.
    let exclusive = if delivered > 1 {
        let mut write = std::pin::pin!(Arc::clone(&ctx.exclusive).write_owned());
        Turn::Alone(loop {
            tokio::select! {
                guard = &mut write => break guard,
                _ = renew.tick() => renew_lease(&ctx, &message).await,
            }
        })
    } else {
        let mut read = std::pin::pin!(Arc::clone(&ctx.exclusive).read_owned());
        Turn::Shared(loop {
            tokio::select! {
                guard = &mut read => break guard,
                _ = renew.tick() => renew_lease(&ctx, &message).await,
            }
        })
    };
    if delivered > 1 {
        // Checked once the turn is ours: while this delivery waited, an earlier
        // one may have finished (or the client cancelled the task).
        match settled(&ctx, &task, sequence).await {
            Settled::Result(entry) => {
                drop(exclusive);
                return deliver(&ctx, &message, &task, reply.as_deref(), entry, Keep::Latest).await;
            }
            Settled::Withdrawn => {
                drop(exclusive);
                let _ = bounded(
                    ctx.cluster.broker_timeout,
                    "acking a withdrawn task",
                    message.double_ack(),
                )
                .await;
                return;
            }
            Settled::No => {}
        }
        match count_run(&ctx, &task).await {
            Ok(Run::Go) => {}
            Ok(Run::Exhausted(runs)) => {
                drop(exclusive);
                let reason = format!(
                    "it ran {runs} times without a result (each node that ran it died or was cut off)"
                );
                return dead_letter(&ctx, &message, runs, sequence, reason, Some(task), reply)
                    .await;
            }
            Err(e) => {
                // Without the count the attempts cannot be kept: try later.
                tracing::warn!(node = %ctx.id, task, "{e}");
                let _ = bounded(
                    ctx.cluster.broker_timeout,
                    "giving a task back",
                    message.ack_with(AckKind::Nak(Some(RETRY_WAIT))),
                )
                .await;
                return;
            }
        }
    }
    let cancel = Arc::new(Notify::new());
    lock(&ctx.running).insert(task.clone(), Arc::clone(&cancel));
    let mut builder = ctx.pool.task(body.input);
    if let Some(ms) = body.timeout_ms {
        builder = builder.timeout(Duration::from_millis(ms));
    }
    let notify = match header(headers, H_NOTIFY) {
        Some("started") => reply.clone(),
        _ => None,
    };
    let submitted_at = std::time::Instant::now();
    let waited = waited_since(&message);
    let progress_to = notify.clone();
    let submitted = {
        // Under the lock: the event relay looks the local id up when the
        // local task starts, which may be before `submit` returns.
        let mut local = lock(&ctx.local);
        builder.submit().inspect(|t| {
            let entry = LocalTask {
                key: task.clone(),
                notify,
            };
            local.insert(t.id(), entry);
        })
    };
    let mut running = match submitted {
        Ok(t) => t,
        Err(_) => {
            // The local pool is closing: give the task back for another node.
            lock(&ctx.running).remove(&task);
            let _ = bounded(
                ctx.cluster.broker_timeout,
                "giving a task back",
                message.ack_with(AckKind::Nak(None)),
            )
            .await;
            return;
        }
    };
    ctx.counters.busy.fetch_add(1, Ordering::Relaxed);
    // The task's progress goes to its client as it changes, if it asked.
    let mut progress = progress_to.as_ref().map(|_| running.watch_progress());
    let mut told = None;
    let result = loop {
        tokio::select! {
            result = &mut running => break result,
            report = next_progress(&mut progress) => match (report, &progress_to) {
                (Some(fraction), Some(to)) => {
                    relay::progress(&ctx, &task, to, fraction).await;
                    told = Some(fraction);
                }
                _ => progress = None,
            },
            _ = renew.tick() => {
                renew_lease(&ctx, &message).await;
                // The cancel message is core NATS, at most once: one this node
                // missed (it was reconnecting, or the task had not reached
                // `running` yet) must not leave the task running for ever, its
                // slot lost. The client deletes the message before it sends
                // the cancel, so a message gone from the stream is the cancel.
                if withdrawn(&ctx, sequence).await {
                    running.cancel();
                }
            }
            _ = cancel.notified() => {
                running.cancel();
            }
        }
    };
    drop(exclusive);
    let ran = submitted_at.elapsed();
    // The last report, if the watch had not yielded it yet: before the result.
    if let (Some(to), Some(fraction)) = (&progress_to, running.progress()) {
        if told != Some(fraction) {
            relay::progress(&ctx, &task, to, fraction).await;
        }
    }
    let worker = running.worker().map_or(0, |w| w.as_u64());
    {
        // Before the result goes out: a client that has it and asks for the
        // node's figures finds this task in them.
        let mut timings = lock(&ctx.timings);
        timings.record_wait(waited);
        timings.record_run(ran, 1);
    }
    lock(&ctx.local).remove(&running.id());
    ctx.resolved_local.fetch_add(1, Ordering::Relaxed);
    lock(&ctx.running).remove(&task);
    ctx.counters.busy.fetch_sub(1, Ordering::Relaxed);
    if ctx.handing_back.load(Ordering::Acquire) && result.as_ref().is_err_and(|e| e.is_cancelled())
    {
        // This node's shutdown cancelled it: another node runs it.
        let _ = bounded(
            ctx.cluster.broker_timeout,
            "handing a task back",
            message.ack_with(AckKind::Nak(None)),
        )
        .await;
        return;
    }
    lock(&ctx.counters.outcomes).record(&result);
    let outcome = outcome_of(result);
    // A cancel's result never replaces one a run stored: the message may be
    // gone because another node ran the task (after this one lost its lease)
    // and acked it, not because its client cancelled it.
    let keep = if matches!(outcome, Outcome::Cancelled) {
        Keep::First
    } else {
        Keep::Latest
    };
    let body = ResultBody {
        task: task.clone(),
        node: ctx.id.clone(),
        delivery: delivered,
        worker,
        ran_micros: u64::try_from(ran.as_micros()).unwrap_or(u64::MAX),
        outcome,
    };
    let bytes = match envelope::encode_result(&body) {
        Ok(b) => b,
        Err(e) => {
            let failed: ResultBody<(), ()> = ResultBody {
                task: task.clone(),
                node: ctx.id.clone(),
                delivery: delivered,
                worker,
                ran_micros: 0,
                outcome: Outcome::Protocol(format!("the task's result could not be encoded: {e}")),
            };
            envelope::encode_result(&failed).expect("a unit result always encodes")
        }
    };
    deliver(&ctx, &message, &task, reply.as_deref(), bytes.into(), keep).await;
    ctx.counters.done.fetch_add(1, Ordering::Relaxed);
}

/// The next change of a task's progress; pending for ever without a watch.
async fn next_progress(watch: &mut Option<crew::ProgressWatch>) -> Option<f32> {
    match watch {
        Some(watch) => futures_util::StreamExt::next(watch).await,
        None => std::future::pending().await,
    }
}

/// How long a task waited between its publication (the stream's timestamp,
/// the broker's clock) and now (this host's clock): across hosts this carries
/// their clocks' offset; a negative wait counts as none.
fn waited_since(message: &jetstream::Message) -> Duration {
    let Ok(info) = message.info() else {
        return Duration::ZERO;
    };
    let published = info.published.unix_timestamp_nanos();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    u64::try_from(now - published).map_or(Duration::ZERO, Duration::from_nanos)
}

/// What a redelivered task finds once it has its turn.
enum Settled {
    /// A result is in the results bucket already (a node ran it, then died or
    /// lost its lease before the ack): deliver that one.
    Result(bytes::Bytes),
    /// Its message is gone from the stream: the client cancelled it.
    Withdrawn,
    /// Neither: run it.
    No,
}

/// Looks for a result of `task`, and for its message (stream sequence
/// `sequence`). A broker error counts as "neither": running a task twice is
/// allowed (at least once), losing it is not.
async fn settled<W: RemoteWorker>(ctx: &NodeCtx<W>, task: &str, sequence: u64) -> Settled {
    let limit = ctx.cluster.broker_timeout;
    if let Ok(Some(entry)) = bounded(limit, "reading a result", ctx.objects.results.get(task)).await
    {
        return Settled::Result(entry);
    }
    if withdrawn(ctx, sequence).await {
        Settled::Withdrawn
    } else {
        Settled::No
    }
}

/// Whether the task's message (stream sequence `sequence`, 0 if unknown) is
/// gone from the stream while this node still holds it unacked: only the
/// client's cancel removes it then. A broker error or no answer is "no": the
/// task goes on, and the next check may tell.
async fn withdrawn<W: RemoteWorker>(ctx: &NodeCtx<W>, sequence: u64) -> bool {
    if sequence == 0 {
        return false;
    }
    let limit = ctx.cluster.broker_timeout;
    let lookup = tokio::time::timeout(limit, ctx.objects.tasks.get_raw_message(sequence)).await;
    matches!(lookup, Ok(Err(e)) if e.kind() == RawMessageErrorKind::NoMessageFound)
}

/// Whether a redelivered task may run.
enum Run {
    Go,
    /// It ran this many times already (the first delivery counts as one).
    Exhausted(u32),
}

/// Counts a run of a redelivered task in the runs bucket, unless its attempts
/// are used up. A first delivery is taken to have run (it is not written, to
/// spare a broker round trip per task); each redelivery that starts running is
/// written, so a delivery to a node that died before the task's turn costs no
/// attempt.
async fn count_run<W: RemoteWorker>(ctx: &NodeCtx<W>, task: &str) -> Result<Run, String> {
    let limit = ctx.cluster.broker_timeout;
    let recorded = bounded(limit, "reading a run count", ctx.objects.runs.get(task))
        .await?
        .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse::<u32>().ok())
        .unwrap_or(0);
    let runs = 1 + recorded;
    if runs >= ctx.max_attempts {
        return Ok(Run::Exhausted(runs));
    }
    bounded(
        limit,
        "writing a run count",
        ctx.objects
            .runs
            .put(task, (recorded + 1).to_string().into()),
    )
    .await?;
    Ok(Run::Go)
}

/// A task's turn on the node: shared with other first deliveries, or alone.
enum Turn {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Alone(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// Extends a task's lease by one ack wait.
async fn renew_lease<W: RemoteWorker>(ctx: &NodeCtx<W>, message: &jetstream::Message) {
    let _ = bounded(
        ctx.cluster.broker_timeout,
        "renewing a lease",
        message.ack_with(AckKind::Progress),
    )
    .await;
}

/// How the local pool's error crosses the broker.
fn outcome_of<O, E>(result: Result<O, TaskError<E>>) -> Outcome<O, E> {
    let e = match result {
        Ok(output) => return Outcome::Ok(output),
        Err(e) => e,
    };
    if e.is_panic() {
        return Outcome::Panicked(e.panic_message().unwrap_or_default().to_owned());
    }
    if e.is_timeout() {
        return Outcome::TimedOut;
    }
    if e.is_cancelled() {
        return Outcome::Cancelled;
    }
    if e.is_killed() {
        return Outcome::Killed;
    }
    if e.is_closed() {
        return Outcome::Closed;
    }
    if e.is_crash() {
        return Outcome::Crashed(e.crash().map(|c| c.to_string()).unwrap_or_default());
    }
    if e.is_start_failure() {
        return Outcome::StartFailed(e.start_error_message().unwrap_or_default().to_owned());
    }
    if e.is_protocol() {
        return Outcome::Protocol(e.to_string());
    }
    match e.into_user_error() {
        Ok(user) => Outcome::User(user),
        Err(other) => Outcome::Protocol(other.to_string()),
    }
}

/// Writes a result (the client's inbox, then the results bucket), then acks
/// the task. Retried until the task's lease would run out: past that, the task
/// is redelivered anyway, and its next node finds the result in the bucket.
async fn deliver<W: RemoteWorker>(
    ctx: &NodeCtx<W>,
    message: &jetstream::Message,
    task: &str,
    reply: Option<&str>,
    bytes: bytes::Bytes,
    keep: Keep,
) {
    let limit = ctx.cluster.broker_timeout;
    let deadline = tokio::time::Instant::now() + ctx.ack_wait;
    // The client's inbox first: it waits on this one, and it costs no round
    // trip (core NATS, at most once). The bucket is what makes the result
    // durable: written before the ack, so a redelivery finds it.
    if let Some(reply) = reply {
        let mut headers = HeaderMap::new();
        headers.insert(H_TASK, task);
        // Only queued on the connection, but that waits while its buffer is
        // full (the broker away): bounded, and the bucket below is the copy
        // that counts.
        let _ = bounded(
            limit,
            "publishing a result",
            ctx.client
                .publish_with_headers(reply.to_owned(), headers, bytes.clone()),
        )
        .await;
    }
    let mut stored = false;
    loop {
        if !stored {
            stored = store_result(ctx, task, &bytes, keep).await;
        }
        if stored {
            match bounded(limit, "acking a task", message.double_ack()).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(node = %ctx.id, task, "{e}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(node = %ctx.id, task, "gave up delivering a result; the task will be redelivered");
            return;
        }
        tokio::time::sleep(RETRY_WAIT).await;
    }
}

/// Which result the results bucket keeps for a task.
#[derive(Clone, Copy)]
enum Keep {
    /// The latest one delivered.
    Latest,
    /// The one there, if any: this one only goes in if there is none.
    First,
}

/// Writes a task's result in the results bucket; true once it is there (or,
/// under [`Keep::First`], another one is).
async fn store_result<W: RemoteWorker>(
    ctx: &NodeCtx<W>,
    task: &str,
    bytes: &bytes::Bytes,
    keep: Keep,
) -> bool {
    let limit = ctx.cluster.broker_timeout;
    let results = &ctx.objects.results;
    match keep {
        Keep::Latest => bounded(limit, "storing a result", results.put(task, bytes.clone()))
            .await
            .is_ok(),
        Keep::First => match tokio::time::timeout(limit, results.create(task, bytes.clone())).await
        {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == kv::CreateErrorKind::AlreadyExists,
            Err(_) => false,
        },
    }
}

/// Moves a message to the dead-letter stream, tells its client if it has one,
/// and acks it (`protocol.md`, "Dead letters").
async fn dead_letter<W: RemoteWorker>(
    ctx: &NodeCtx<W>,
    message: &jetstream::Message,
    deliveries: u32,
    sequence: u64,
    reason: String,
    task: Option<String>,
    reply: Option<String>,
) {
    let limit = ctx.cluster.broker_timeout;
    let reason = reason.replace(['\r', '\n'], " ");
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(H_DEAD_REASON, reason.as_str());
    headers.insert(H_DELIVERIES, deliveries.to_string().as_str());
    headers.insert("Crew-Node", ctx.id.as_str());
    headers.insert("Crew-Subject", message.subject.as_str());
    // The same message dead-lettered twice (a node died between this publish and
    // its ack) is one dead letter.
    headers.insert("Nats-Msg-Id", format!("dead-{sequence}").as_str());
    let deadline = tokio::time::Instant::now() + ctx.ack_wait;
    loop {
        let published = async {
            let ack = bounded(
                limit,
                "publishing a dead letter",
                ctx.js.publish_with_headers(
                    ctx.names.dead_subject.clone(),
                    headers.clone(),
                    message.payload.clone(),
                ),
            )
            .await?;
            bounded(limit, "publishing a dead letter", ack.into_future()).await
        }
        .await;
        match published {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(node = %ctx.id, "{e}");
                tokio::time::sleep(RETRY_WAIT).await;
            }
            Err(e) => {
                // Not acked: the message stays in the stream for an operator.
                tracing::warn!(node = %ctx.id, "{e}; the message stays in the task stream");
                return;
            }
        }
    }
    ctx.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(node = %ctx.id, task = task.as_deref().unwrap_or("?"), "dead-lettered: {reason}");
    match task {
        Some(task) => {
            let body: ResultBody<(), ()> = ResultBody {
                task: task.clone(),
                node: ctx.id.clone(),
                delivery: deliveries,
                worker: 0,
                ran_micros: 0,
                outcome: Outcome::DeadLettered { deliveries, reason },
            };
            let bytes = envelope::encode_result(&body).expect("a unit result always encodes");
            deliver(
                ctx,
                message,
                &task,
                reply.as_deref(),
                bytes.into(),
                Keep::Latest,
            )
            .await;
        }
        None => {
            let _ = bounded(limit, "acking a dead letter", message.double_ack()).await;
        }
    }
}

/// Cancels running tasks the clients ask to cancel.
async fn cancel_listener<W: RemoteWorker>(
    ctx: Arc<NodeCtx<W>>,
    mut cancels: async_nats::Subscriber,
) {
    while let Some(message) = cancels.next().await {
        let Ok(task) = std::str::from_utf8(&message.payload) else {
            continue;
        };
        if let Some(signal) = lock(&ctx.running).get(task) {
            signal.notify_one();
        }
    }
}

/// Writes the node's row every heartbeat interval until stopped.
async fn heartbeat<W: RemoteWorker>(ctx: Arc<NodeCtx<W>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(ctx.cluster.heartbeat);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        beat(&ctx).await;
    }
}

/// Writes the node's row in the nodes bucket.
async fn beat<W: RemoteWorker>(ctx: &NodeCtx<W>) {
    if let Ok(bytes) = postcard::to_stdvec(&ctx.row()) {
        let _ = bounded(
            ctx.cluster.broker_timeout,
            "writing the heartbeat",
            ctx.objects.nodes.put(&ctx.id, bytes.into()),
        )
        .await;
    }
}

impl<W: RemoteWorker> NodeCtx<W> {
    /// The node's row, as its heartbeat and its reports carry it.
    fn row(&self) -> NodeRow {
        let c = &self.counters;
        let [succeeded, user_errors, panicked, timed_out, cancelled, other_failures] =
            c.outcome_columns();
        NodeRow {
            id: self.id.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            workers: self.slots,
            busy: c.busy.load(Ordering::Relaxed),
            rss_bytes: rss_bytes(),
            done: c.done.load(Ordering::Relaxed),
            succeeded,
            user_errors,
            panicked,
            timed_out,
            cancelled,
            other_failures,
            redeliveries: c.redeliveries.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        }
    }
}

/// Task handlers never panic while holding it, but poisoning is not worth a crash.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's resident set, from `/proc/self/statm` (Linux, 4 KiB pages), in
/// bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `s` with every byte a bucket key may not hold replaced by `_`.
fn key_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
