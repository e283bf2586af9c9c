//! The submitting side: [`ClusterClient`] publishes tasks to the pool's stream
//! and resolves each [`ClusterTask`] once, from its result (`protocol.md`,
//! "A client").
//!
//! The client owns a small tokio runtime (one worker thread) that runs its NATS
//! connection, so its users need no runtime of their own. On it run:
//! - the *dispatcher*, which reads the client's inbox and resolves handles;
//! - the *sweeper*, which looks up in the results bucket every task whose result
//!   is late (a result published while the client was cut off from the broker
//!   never reaches the inbox), after every reconnection and every sweep
//!   interval.
//!
//! Exactly once: a handle's entry is removed from the pending table under its
//! lock by whoever resolves it (dispatcher, sweeper, cancel), so a second result
//! for the same task (a redelivery that ran it again) finds nothing and is
//! dropped.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::task::{Context as PollContext, Poll, Waker};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use crew::{Priority, RemoteWorker};
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::broker::{self, bounded, PoolObjects};
use crate::config::{Cluster, Names};
use crate::envelope::{
    self, ProgressBody, StartedBody, TaskBody, H_NOTIFY, H_REPLY, H_TASK, KIND_AT, KIND_PROGRESS,
    KIND_STARTED,
};
use crate::error::{BrokerError, ClusterError, SubmitError};
use crate::node::NodeRow;

// What the pool's engine (`engine.rs`) uses of the client beside tasks:
// core-NATS calls (requests, subscriptions) on the client's connection.
mod calls;

/// The most late tasks one sweep looks up (the rest wait for the next sweep).
const SWEEP_BATCH: usize = 1024;

impl Cluster {
    /// Connects a client of this pool: creates the pool's stream, consumer and
    /// buckets if they do not exist, subscribes to the client's inbox, and
    /// returns once all that is done.
    pub fn client<W: RemoteWorker>(&self) -> Result<ClusterClient<W>, BrokerError> {
        ClusterClient::connect(self.clone())
    }
}

/// A client of a cluster pool: submits `W`'s tasks to the nodes serving it.
/// Cheap to clone; every clone shares one connection.
pub struct ClusterClient<W: RemoteWorker> {
    inner: Arc<Inner<W>>,
}

impl<W: RemoteWorker> Clone for ClusterClient<W> {
    fn clone(&self) -> Self {
        ClusterClient {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Owned by the clients and the handles (never by the runtime's own tasks, so
/// the runtime is never dropped from inside itself).
struct Inner<W: RemoteWorker> {
    shared: Arc<Shared<W>>,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// The prefix of this client's task ids.
    client_id: String,
    /// The next task's number; written by every submit.
    next: AtomicU64,
}

/// What the runtime's tasks and the submitting threads share.
struct Shared<W: RemoteWorker> {
    cluster: Cluster,
    names: Names,
    /// Where this client's results are published.
    inbox: String,
    client: async_nats::Client,
    js: jetstream::Context,
    objects: PoolObjects,
    /// Unresolved tasks by id. Inserted by submit, removed by whoever resolves
    /// the task (dispatcher, sweeper, cancel, a failed publish): the removal is
    /// what makes resolution happen once.
    pending: Mutex<HashMap<String, Pending<W>>>,
    /// Wakes the sweeper at once; notified on every (re)connection.
    sweep_now: Arc<Notify>,
    /// Tasks submitted and not yet resolved: one more before a task enters
    /// `pending`, one less after its sink has run (or it was dropped), so a
    /// waiter for idle never sees a task that left `pending` but whose handle
    /// is not resolved yet.
    outstanding: Mutex<usize>,
    /// Notified when `outstanding` drops to zero.
    idle: Condvar,
    /// Woken when `outstanding` drops to zero; pushed by `poll_idle`.
    idle_wakers: Mutex<Vec<Waker>>,
    /// Told each task's start and progress ([`Notice`]) by the dispatcher,
    /// with the task's number; set once by the pool's engine. While it is
    /// set, tasks ask their node for them (`Crew-Notify`).
    on_notice: OnceLock<OnNotice>,
}

/// What a node tells a client of a running task, beside its result.
#[derive(Debug)]
pub(crate) enum Notice {
    Started(StartedBody),
    Progress(f32),
}

/// What the dispatcher calls with a task's number and a notice about it.
pub(crate) type OnNotice = Box<dyn Fn(u64, Notice) + Send + Sync>;

/// Where a result came from: the node, its local worker, and how long the
/// task ran there.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) node: String,
    /// 0 if no worker ran it (a dead letter).
    pub(crate) worker: u64,
    pub(crate) ran: Duration,
}

/// Where a task's result goes: called once, by whoever resolves the task,
/// with where the result came from if a node sent it.
pub(crate) type Sink<W> = Box<
    dyn FnOnce(
            Result<<W as crew::Worker>::Output, ClusterError<<W as crew::Worker>::Error>>,
            Option<Origin>,
        ) + Send,
>;

/// A task id: the client's id, a dot, the task's number.
fn task_key(client: &str, n: u64) -> String {
    format!("{client}.{n}")
}

/// How long a submission that waits for room waits between tries.
const ROOM_POLL: Duration = Duration::from_millis(20);

/// What a blocking call allows beyond the bound of the future it waits for
/// (see [`Inner::block_on`]): the future ends first unless the client's
/// runtime is starved.
const BACKSTOP_MARGIN: Duration = Duration::from_secs(1);

struct Pending<W: RemoteWorker> {
    sink: Sink<W>,
    submitted: Instant,
    /// The task's sequence in the stream, once the publish is acknowledged (0
    /// until then); a cancel deletes it.
    sequence: u64,
}

impl<W: RemoteWorker> ClusterClient<W> {
    fn connect(cluster: Cluster) -> Result<ClusterClient<W>, BrokerError> {
        let names = cluster.names().map_err(BrokerError::new)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("crew-cluster-client")
            .enable_all()
            .build()
            .map_err(|e| BrokerError::new(format!("starting the client's runtime: {e}")))?;
        let client_id = nuid::next().to_string();
        let sweep_now = Arc::new(Notify::new());
        let on_connected = {
            let sweep_now = Arc::clone(&sweep_now);
            move || sweep_now.notify_one()
        };
        let shared = runtime.block_on(async {
            let client =
                broker::connect(&cluster, &format!("crew client {client_id}"), on_connected)
                    .await?;
            let js = broker::jetstream(client.clone(), &cluster);
            let objects = broker::ensure_pool(&js, &cluster, &names).await?;
            broker::ensure_consumers(&objects.tasks, &cluster, &names).await?;
            let inbox = names.reply_subject(&client_id);
            let results = bounded(
                cluster.broker_timeout,
                "subscribing to the inbox",
                client.subscribe(inbox.clone()),
            )
            .await?;
            // The subscription must be on the server before any task can finish.
            bounded(cluster.broker_timeout, "flushing", client.flush()).await?;
            let shared = Arc::new(Shared {
                cluster,
                names,
                inbox,
                client,
                js,
                objects,
                pending: Mutex::new(HashMap::new()),
                sweep_now,
                outstanding: Mutex::new(0),
                idle: Condvar::new(),
                idle_wakers: Mutex::new(Vec::new()),
                on_notice: OnceLock::new(),
            });
            tokio::spawn(dispatcher(Arc::clone(&shared), results));
            tokio::spawn(sweeper(Arc::clone(&shared)));
            Ok::<_, String>(shared)
        });
        match shared {
            Ok(shared) => Ok(ClusterClient {
                inner: Arc::new(Inner {
                    shared,
                    runtime: Some(runtime),
                    client_id,
                    next: AtomicU64::new(1),
                }),
            }),
            Err(e) => {
                runtime.shutdown_background();
                Err(BrokerError::new(e))
            }
        }
    }

    /// Submits a task and returns its handle once the broker has stored it.
    /// Blocks while the broker is unreachable, up to twice the broker timeout.
    pub fn submit(
        &self,
        input: W::Input,
    ) -> Result<ClusterTask<W::Output, W::Error>, SubmitError<W::Input>> {
        self.task(input).submit()
    }

    /// A task with options (priority, timeout), submitted by
    /// [`ClusterTaskBuilder::submit`].
    pub fn task(&self, input: W::Input) -> ClusterTaskBuilder<'_, W> {
        ClusterTaskBuilder {
            client: self,
            input,
            priority: Priority::Normal,
            timeout: None,
        }
    }

    fn submit_with(
        &self,
        input: W::Input,
        priority: Priority,
        timeout: Option<Duration>,
    ) -> Result<ClusterTask<W::Output, W::Error>, SubmitError<W::Input>> {
        let slot = Arc::new(Slot::new());
        let sink: Sink<W> = {
            let slot = Arc::clone(&slot);
            Box::new(move |result, _| {
                slot.fill(result);
            })
        };
        let n = self.next_number();
        self.submit_numbered(n, input, priority, timeout, false, sink)?;
        let id = task_key(&self.inner.client_id, n);
        Ok(ClusterTask {
            id,
            slot,
            owner: Arc::clone(&self.inner) as Arc<dyn Owner>,
        })
    }

    /// A new task number (the part of a task id after the client's id).
    pub(crate) fn next_number(&self) -> u64 {
        self.inner.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Publishes task number `n` (from [`next_number`](Self::next_number)),
    /// whose result goes to `sink` (called once, by whoever resolves it). With
    /// `wait_for_room`, a full stream is retried until it has room (or the
    /// broker fails) instead of refused.
    pub(crate) fn submit_numbered(
        &self,
        n: u64,
        input: W::Input,
        priority: Priority,
        timeout: Option<Duration>,
        wait_for_room: bool,
        sink: Sink<W>,
    ) -> Result<(), SubmitError<W::Input>> {
        let inner = &self.inner;
        let shared = &inner.shared;
        let body = TaskBody {
            timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            input,
        };
        let bytes = match envelope::encode_task(&body) {
            Ok(b) => b,
            Err(e) => return Err(SubmitError::encode(body.input, e.to_string())),
        };
        let id = task_key(&inner.client_id, n);
        // Before the publish: a result can come back before the ack does.
        *lock(&shared.outstanding) += 1;
        lock(&shared.pending).insert(
            id.clone(),
            Pending {
                sink,
                submitted: Instant::now(),
                sequence: 0,
            },
        );
        let subject = shared.names.task_subject(priority);
        let publish = {
            let shared = Arc::clone(shared);
            let id = id.clone();
            async move {
                loop {
                    match shared
                        .publish(subject.clone(), &id, bytes.clone().into())
                        .await
                    {
                        Err(Refused::Full) if wait_for_room => {
                            tokio::time::sleep(ROOM_POLL).await;
                        }
                        other => return other,
                    }
                }
            }
        };
        // A publish ends by itself within four broker timeouts (`publish`);
        // one that waits for room waits as long as the stream stays full, as
        // a blocking submit to a full queue does.
        let limit = (!wait_for_room).then(|| shared.cluster.broker_timeout * 4);
        let result = inner.block_on(limit, publish);
        match result {
            Ok(Ok(sequence)) => {
                if let Some(p) = lock(&shared.pending).get_mut(&id) {
                    p.sequence = sequence;
                }
                Ok(())
            }
            other => {
                if shared.take(&id).is_some() {
                    shared.done_one();
                }
                Err(match other {
                    Ok(Err(Refused::Full)) => SubmitError::full(body.input),
                    Ok(Err(Refused::Broker(m))) | Err(Blocked::NoAnswer(m)) => {
                        SubmitError::broker(body.input, m)
                    }
                    Ok(Ok(_)) | Err(Blocked::Closed) => SubmitError::closed(body.input),
                })
            }
        }
    }

    /// Forgets task number `n` (its handle resolved another way, as a cancel)
    /// and, in the background, removes it from the stream and asks a node that
    /// runs it to cancel it.
    pub(crate) fn forget(&self, n: u64) {
        let id = task_key(&self.inner.client_id, n);
        let Some(pending) = self.inner.shared.take(&id) else {
            return;
        };
        drop(pending.sink);
        self.inner.shared.done_one();
        if let Some(runtime) = &self.inner.runtime {
            let shared = Arc::clone(&self.inner.shared);
            runtime.spawn(async move { shared.withdraw(id, pending.sequence).await });
        }
    }

    /// Resolves every waiting task with `outcome()` and withdraws it, as
    /// [`ClusterClient::forget`] does.
    pub(crate) fn resolve_all(&self, outcome: impl Fn() -> ClusterError<W::Error>) {
        let all: Vec<(String, Pending<W>)> = lock(&self.inner.shared.pending).drain().collect();
        for (id, pending) in all {
            (pending.sink)(Err(outcome()), None);
            self.inner.shared.done_one();
            if let Some(runtime) = &self.inner.runtime {
                let shared = Arc::clone(&self.inner.shared);
                runtime.spawn(async move { shared.withdraw(id, pending.sequence).await });
            }
        }
    }

    /// Waits until no task of this client waits for its result, or until
    /// `deadline`; true if none waits.
    pub(crate) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        let shared = &self.inner.shared;
        let mut pending = lock(&shared.pending);
        while !pending.is_empty() {
            match deadline {
                None => {
                    pending = shared
                        .idle
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    pending = shared
                        .idle
                        .wait_timeout(pending, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        true
    }

    /// True if no task waits; otherwise `waker` is woken when the last one
    /// resolves.
    pub(crate) fn poll_idle(&self, waker: &Waker) -> bool {
        let shared = &self.inner.shared;
        let outstanding = lock(&shared.outstanding);
        if *outstanding == 0 {
            return true;
        }
        // Under `outstanding`'s lock: `done_one` cannot reach zero and take the
        // wakers between the check and the push.
        lock(&shared.idle_wakers).push(waker.clone());
        false
    }

    /// A task's result by its id ([`ClusterTask::id`]), from the results bucket:
    /// `None` while it has none (queued, running, or its result expired). A
    /// client that restarted collects what finished this way.
    pub fn result_of(
        &self,
        id: &str,
    ) -> Result<Option<Result<W::Output, ClusterError<W::Error>>>, BrokerError> {
        let shared = Arc::clone(&self.inner.shared);
        let id = id.to_owned();
        let limit = shared.cluster.broker_timeout;
        let entry = self
            .inner
            .block_on(Some(limit), async move {
                bounded(limit, "reading a result", shared.objects.results.get(id)).await
            })?
            .map_err(BrokerError::new)?;
        Ok(entry.map(|bytes| decode::<W>(&bytes).0))
    }

    /// The nodes serving this pool now (each one's last heartbeat).
    pub fn nodes(&self) -> Result<Vec<NodeRow>, BrokerError> {
        let shared = Arc::clone(&self.inner.shared);
        let limit = shared.cluster.broker_timeout;
        self.inner
            .block_on(Some(limit), async move { shared.nodes().await })?
            .map_err(BrokerError::new)
    }

    /// How many messages the pool's dead-letter stream holds.
    pub fn dead_letters(&self) -> Result<u64, BrokerError> {
        self.stream_messages(true)
    }

    /// How many tasks the pool's stream holds: queued, or running and not yet
    /// acknowledged.
    pub fn queued(&self) -> Result<u64, BrokerError> {
        self.stream_messages(false)
    }

    fn stream_messages(&self, dead: bool) -> Result<u64, BrokerError> {
        let shared = Arc::clone(&self.inner.shared);
        let limit = shared.cluster.broker_timeout;
        self.inner
            .block_on(Some(limit * 2), async move {
                let name = if dead {
                    &shared.names.dead_stream
                } else {
                    &shared.names.stream
                };
                let mut stream =
                    bounded(limit, "opening a stream", shared.js.get_stream(name)).await?;
                let info = bounded(limit, "reading a stream", stream.info()).await?;
                Ok::<_, String>(info.state.messages)
            })?
            .map_err(BrokerError::new)
    }

    /// The whole pool: every live node's row (from its last heartbeat) and their
    /// sums, and the streams' counts. A node that died takes its counts with it
    /// once its row expires (three missed heartbeats).
    pub fn stats(&self) -> Result<ClusterStats, BrokerError> {
        let nodes = self.nodes()?;
        let queued = self.queued()?;
        let dead_letters = self.dead_letters()?;
        let sum = |f: fn(&NodeRow) -> u64| nodes.iter().map(f).sum::<u64>();
        let workers = nodes.iter().map(|n| n.workers).sum::<usize>();
        let busy = nodes.iter().map(|n| n.busy).sum::<usize>();
        Ok(ClusterStats {
            workers,
            busy,
            idle: workers.saturating_sub(busy),
            queued,
            dead_letters,
            done: sum(|n| n.done),
            succeeded: sum(|n| n.succeeded),
            user_errors: sum(|n| n.user_errors),
            panicked: sum(|n| n.panicked),
            timed_out: sum(|n| n.timed_out),
            cancelled: sum(|n| n.cancelled),
            other_failures: sum(|n| n.other_failures),
            redeliveries: sum(|n| n.redeliveries),
            pending: self.pending(),
            nodes,
        })
    }

    /// How many of this client's tasks have not resolved yet.
    pub fn pending(&self) -> usize {
        lock(&self.inner.shared.pending).len()
    }
}

impl<W: RemoteWorker> Inner<W> {
    /// Runs `future` on the client's runtime and waits for it from this thread
    /// (which may be any thread, even one of another runtime: it blocks on a
    /// plain channel).
    ///
    /// `limit` is the bound the future keeps by itself (each of its broker
    /// calls is bounded); this wait gives up [`BACKSTOP_MARGIN`] later and
    /// aborts the future, so a caller's thread never waits on a future that
    /// failed to keep its bound. `None` only for a submission that waits for
    /// room, which waits as long as the stream stays full.
    fn block_on<T: Send + 'static>(
        &self,
        limit: Option<Duration>,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, Blocked> {
        let runtime = self.runtime.as_ref().ok_or(Blocked::Closed)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let running = runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        let Some(limit) = limit else {
            return rx.recv().map_err(|_| Blocked::Closed);
        };
        let backstop = limit + BACKSTOP_MARGIN;
        match rx.recv_timeout(backstop) {
            Ok(value) => Ok(value),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Blocked::Closed),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                running.abort();
                Err(Blocked::NoAnswer(format!(
                    "no answer from the client's runtime in {backstop:?}"
                )))
            }
        }
    }
}

/// Why [`Inner::block_on`] has no value.
enum Blocked {
    /// The client's runtime is gone (the client is being dropped).
    Closed,
    /// The future did not end within its bound (and was aborted).
    NoAnswer(String),
}

impl From<Blocked> for BrokerError {
    fn from(blocked: Blocked) -> BrokerError {
        match blocked {
            Blocked::Closed => BrokerError::new("the client is closed"),
            Blocked::NoAnswer(m) => BrokerError::new(m),
        }
    }
}

impl<W: RemoteWorker> Drop for Inner<W> {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so a client or handle dropped inside some other
            // async runtime does not panic.
            runtime.shutdown_background();
        }
    }
}

/// Why a publish was refused.
enum Refused {
    Full,
    Broker(String),
}

impl<W: RemoteWorker> Shared<W> {
    /// Publishes a task with its id as `Nats-Msg-Id`, retrying (the same id, so
    /// the stream stores it once) until the broker acknowledges it or twice the
    /// broker timeout has passed. The stream sequence on success.
    async fn publish(
        &self,
        subject: String,
        id: &str,
        bytes: bytes::Bytes,
    ) -> Result<u64, Refused> {
        let limit = self.cluster.broker_timeout;
        let deadline = tokio::time::Instant::now() + limit * 2;
        loop {
            let mut message = PublishMessage::build()
                .payload(bytes.clone())
                .message_id(id)
                .header(H_TASK, id)
                .header(H_REPLY, self.inbox.as_str());
            if self.on_notice.get().is_some() {
                message = message.header(H_NOTIFY, "started");
            }
            let attempt = async {
                let ack = bounded(
                    limit,
                    "publishing a task",
                    self.js.send_publish(subject.clone(), message),
                )
                .await?;
                bounded(limit, "publishing a task", ack.into_future()).await
            }
            .await;
            match attempt {
                Ok(ack) => return Ok(ack.sequence),
                // The stream's discard policy is New: at its capacity it refuses.
                Err(e) if e.contains("maximum messages") => return Err(Refused::Full),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Refused::Broker(e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Removes task `id` from the pending table: whoever gets it resolves it.
    /// The caller then runs its sink (or drops it) and calls `done_one`.
    fn take(&self, id: &str) -> Option<Pending<W>> {
        lock(&self.pending).remove(id)
    }

    /// One task less outstanding (its handle resolved); wakes whoever waits
    /// for idle when none is left.
    fn done_one(&self) {
        let mut outstanding = lock(&self.outstanding);
        *outstanding = outstanding.saturating_sub(1);
        if *outstanding > 0 {
            return;
        }
        self.idle.notify_all();
        let wakers = std::mem::take(&mut *lock(&self.idle_wakers));
        drop(outstanding);
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves task `id` from a result envelope, if it still waits.
    fn resolve(&self, id: &str, bytes: &[u8]) {
        let Some(pending) = self.take(id) else {
            // Resolved already: the other copy of the result (inbox and
            // bucket), a second run's after a redelivery, or a cancelled task's.
            return;
        };
        let (result, origin) = decode::<W>(bytes);
        (pending.sink)(result, origin);
        self.done_one();
    }

    /// A task's start or progress, told by its node: for the engine's hook.
    fn notice(&self, bytes: &[u8]) {
        let Some(hook) = self.on_notice.get() else {
            return;
        };
        let (task, notice) = match bytes.get(KIND_AT) {
            Some(&KIND_STARTED) => {
                match envelope::decode_kind::<StartedBody>(bytes, KIND_STARTED, "started") {
                    Ok(body) => (body.task.clone(), Notice::Started(body)),
                    Err(_) => return,
                }
            }
            _ => match envelope::decode_kind::<ProgressBody>(bytes, KIND_PROGRESS, "progress") {
                Ok(body) => (body.task, Notice::Progress(body.fraction)),
                Err(_) => return,
            },
        };
        // Everything on this inbox is this client's: the number is the id's
        // last part.
        if let Some(n) = task.rsplit('.').next().and_then(|n| n.parse().ok()) {
            hook(n, notice);
        }
    }

    /// Resolves task `id` as cancelled, if it still waits.
    fn resolve_cancelled(&self, id: &str) -> bool {
        let Some(pending) = self.take(id) else {
            return false;
        };
        (pending.sink)(Err(ClusterError::cancelled()), None);
        self.done_one();
        true
    }

    /// Removes task `id` (stream sequence `sequence`, 0 if unknown) from the
    /// stream, and asks the nodes to cancel it if one runs it. True if the
    /// message was still in the stream.
    async fn withdraw(&self, id: String, sequence: u64) -> bool {
        let limit = self.cluster.broker_timeout;
        // Deleting the message is what makes the cancel hold: no node can take
        // it afterwards, and one that has it cannot ack it.
        let deleted = sequence != 0
            && matches!(
                bounded(
                    limit,
                    "cancelling a task",
                    self.objects.tasks.delete_message(sequence),
                )
                .await,
                Ok(true)
            );
        if deleted {
            // A node may be running it: ask it to stop. Core NATS, at most
            // once: a node that misses it finds the message gone at its next
            // lease renewal and cancels the task then (protocol.md, "A node").
            // The publish only queues the message, but waits while the
            // connection's buffer is full (the broker away): bounded too.
            let _ = bounded(
                limit,
                "publishing a cancel",
                self.client
                    .publish(self.names.cancel_subject.clone(), id.into()),
            )
            .await;
        }
        deleted
    }

    /// Every live node's row, read within one broker timeout.
    ///
    /// The keys come from the bucket stream's subjects (a stream info request
    /// with a subject filter: a finite, paged list), never from a KV key
    /// watcher (`Store::keys`). That one is a push consumer that ends only when
    /// a message says nothing is pending after it; when a heartbeat lands while
    /// it starts, no message says so, and it follows the heartbeats for ever,
    /// each within any per-message timeout: `nodes()` never returned (the
    /// cluster tests that poll the nodes hung, one run in about thirty).
    async fn nodes(&self) -> Result<Vec<NodeRow>, String> {
        let limit = self.cluster.broker_timeout;
        bounded(limit, "listing nodes", self.read_nodes()).await
    }

    async fn read_nodes(&self) -> Result<Vec<NodeRow>, String> {
        let bucket = &self.objects.nodes;
        let mut subjects = bucket
            .stream
            .info_with_subjects(format!("{}>", bucket.prefix))
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| e.to_string())?;
            if let Some(key) = subject.strip_prefix(bucket.prefix.as_str()) {
                keys.push(key.to_owned());
            }
        }
        let mut rows = Vec::new();
        for key in keys {
            // A node that shut down left a delete marker: no value.
            let entry = bucket.get(&key).await.map_err(|e| e.to_string())?;
            if let Some(row) = entry.and_then(|b| postcard::from_bytes::<NodeRow>(&b).ok()) {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }
}

/// A result and where it came from.
type Decoded<W> = (
    Result<<W as crew::Worker>::Output, ClusterError<<W as crew::Worker>::Error>>,
    Option<Origin>,
);

fn decode<W: RemoteWorker>(bytes: &[u8]) -> Decoded<W> {
    match envelope::decode_result::<W::Output, W::Error>(bytes) {
        Ok(body) => {
            let origin = Origin {
                node: body.node,
                worker: body.worker,
                ran: Duration::from_micros(body.ran_micros),
            };
            (ClusterError::from_outcome(body.outcome), Some(origin))
        }
        Err(e) => (Err(ClusterError::protocol(format!("a result: {e}"))), None),
    }
}

/// Reads the inbox and resolves handles.
async fn dispatcher<W: RemoteWorker>(shared: Arc<Shared<W>>, mut results: async_nats::Subscriber) {
    while let Some(message) = results.next().await {
        if matches!(
            message.payload.get(KIND_AT),
            Some(&KIND_STARTED | &KIND_PROGRESS)
        ) {
            shared.notice(&message.payload);
            continue;
        }
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(H_TASK))
            .map(|v| v.as_str().to_owned());
        if let Some(id) = id {
            shared.resolve(&id, &message.payload);
        }
    }
}

/// Collects, from the results bucket, results that never reached the inbox.
async fn sweeper<W: RemoteWorker>(shared: Arc<Shared<W>>) {
    let interval = shared.cluster.sweep_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.sweep_now.notified() => {}
        }
        let late: Vec<String> = lock(&shared.pending)
            .iter()
            .filter(|(_, p)| p.submitted.elapsed() >= interval)
            .map(|(id, _)| id.clone())
            .take(SWEEP_BATCH)
            .collect();
        for id in late {
            let entry = bounded(
                shared.cluster.broker_timeout,
                "reading a result",
                shared.objects.results.get(&id),
            )
            .await;
            match entry {
                Ok(Some(bytes)) => shared.resolve(&id, &bytes),
                Ok(None) => {}
                // The broker is away; the next reconnection sweeps again.
                Err(_) => break,
            }
        }
    }
}

/// A snapshot of a cluster pool: [`ClusterClient::stats`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Every live node's last heartbeat.
    pub nodes: Vec<NodeRow>,
    /// Workers across the live nodes.
    pub workers: usize,
    /// Of those, running a task.
    pub busy: usize,
    /// Of those, free.
    pub idle: usize,
    /// Messages in the task stream: queued, or running and not yet acked.
    pub queued: u64,
    /// Messages in the dead-letter stream.
    pub dead_letters: u64,
    /// Tasks the live nodes finished and delivered.
    pub done: u64,
    /// Of those, that returned their output.
    pub succeeded: u64,
    /// That returned the worker's own error.
    pub user_errors: u64,
    /// That panicked.
    pub panicked: u64,
    /// That ran past their timeout.
    pub timed_out: u64,
    /// That were cancelled while running.
    pub cancelled: u64,
    /// That failed otherwise on their node.
    pub other_failures: u64,
    /// Deliveries the live nodes received that were redeliveries.
    pub redeliveries: u64,
    /// This client's tasks not resolved yet.
    pub pending: usize,
}

/// Options of one task before it is submitted: [`ClusterClient::task`].
#[must_use = "a task builder does nothing until submitted"]
pub struct ClusterTaskBuilder<'a, W: RemoteWorker> {
    client: &'a ClusterClient<W>,
    input: W::Input,
    priority: Priority,
    timeout: Option<Duration>,
}

impl<W: RemoteWorker> ClusterTaskBuilder<'_, W> {
    /// The task's priority: its subject in the stream (`protocol.md`,
    /// "Priorities" says what nodes do with it).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The task's timeout on its node (the node's pool default otherwise).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Submits it: see [`ClusterClient::submit`].
    pub fn submit(self) -> Result<ClusterTask<W::Output, W::Error>, SubmitError<W::Input>> {
        self.client
            .submit_with(self.input, self.priority, self.timeout)
    }
}

impl<W: RemoteWorker> std::fmt::Debug for ClusterTaskBuilder<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTaskBuilder")
            .field("priority", &self.priority)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<W: RemoteWorker> std::fmt::Debug for ClusterClient<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("pool", &self.inner.shared.names.pool)
            .field("client", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

/// What a handle needs of its client, whatever the worker type.
trait Owner: Send + Sync {
    fn cancel(&self, id: &str) -> bool;
}

impl<W: RemoteWorker> Owner for Inner<W> {
    fn cancel(&self, id: &str) -> bool {
        let Some(sequence) = lock(&self.shared.pending).get(id).map(|p| p.sequence) else {
            return false;
        };
        let shared = Arc::clone(&self.shared);
        let id_owned = id.to_owned();
        // Two bounded broker calls (the delete, the cancel's publish); the
        // node is never waited for: the delete alone decides.
        let limit = self.shared.cluster.broker_timeout * 2;
        let deleted = self.block_on(Some(limit), async move {
            shared.withdraw(id_owned, sequence).await
        });
        matches!(deleted, Ok(true)) && self.shared.resolve_cancelled(id)
    }
}

/// The handle of one cluster task: resolves once, with the task's output or a
/// [`ClusterError`]. It blocks ([`ClusterTask::join`]) or is awaited (it is a
/// `Future`). Dropping it does not cancel the task; the client's connection
/// lives as long as any handle or client does.
#[must_use = "a task's result is only seen through its handle; dropping it does not cancel it"]
pub struct ClusterTask<T, E> {
    id: String,
    slot: Arc<Slot<T, E>>,
    owner: Arc<dyn Owner>,
}

impl<T, E> ClusterTask<T, E> {
    /// The task's id: unique across clients, the key of its result in the
    /// results bucket ([`ClusterClient::result_of`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether its result has arrived.
    pub fn is_finished(&self) -> bool {
        lock(&self.slot.state).resolved
    }

    /// Cancels the task if it has not finished: removes it from the stream (a
    /// queued task never runs) and tells a node running it to cancel it. True
    /// if this resolved the handle as cancelled.
    pub fn cancel(&self) -> bool {
        self.owner.cancel(&self.id)
    }

    /// Waits for the result.
    pub fn join(self) -> Result<T, ClusterError<E>> {
        let mut state = lock(&self.slot.state);
        loop {
            if let Some(result) = state.result.take() {
                return result;
            }
            state = self
                .slot
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits for the result at most `timeout`; gives the handle back if it has
    /// not come.
    pub fn join_timeout(self, timeout: Duration) -> Result<Result<T, ClusterError<E>>, Self> {
        let deadline = Instant::now() + timeout;
        {
            let mut state = lock(&self.slot.state);
            loop {
                if let Some(result) = state.result.take() {
                    return Ok(result);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .slot
                    .ready
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        Err(self)
    }
}

impl<T, E> Future for ClusterTask<T, E> {
    type Output = Result<T, ClusterError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.slot.state);
        match state.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T, E> std::fmt::Debug for ClusterTask<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTask").field("id", &self.id).finish()
    }
}

/// Where a task's result waits for its handle.
struct Slot<T, E> {
    state: Mutex<SlotState<T, E>>,
    ready: Condvar,
}

struct SlotState<T, E> {
    /// Set once by `fill`, taken once by the handle.
    result: Option<Result<T, ClusterError<E>>>,
    resolved: bool,
    waker: Option<Waker>,
}

impl<T, E> Slot<T, E> {
    fn new() -> Self {
        Slot {
            state: Mutex::new(SlotState {
                result: None,
                resolved: false,
                waker: None,
            }),
            ready: Condvar::new(),
        }
    }

    /// Stores the result unless one was stored before; true if this one was.
    fn fill(&self, result: Result<T, ClusterError<E>>) -> bool {
        let mut state = lock(&self.state);
        if state.resolved {
            return false;
        }
        state.resolved = true;
        state.result = Some(result);
        let waker = state.waker.take();
        drop(state);
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

/// No user code runs under these locks; poisoning is not worth a crash.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
