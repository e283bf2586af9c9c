//! What a node says beside results, and what it takes beside tasks
//! (`protocol.md`, "Beside tasks"). Each runs as a task of the node's runtime:
//!
//! - the *event relay* reads the local pool's events: a task's start goes to
//!   the task's client when it asked for it (`Crew-Notify`; so does its
//!   progress, which the task's handler sends with [`progress`]), a worker's start,
//!   restart, failed start or exit goes on the pool's events subject;
//! - the *message relay* reads what the local workers send their pool
//!   (`Context::send`) and publishes it on the pool's messages subject;
//! - the *reporter* answers a client's stats request with the node's
//!   [`Report`]: its row, one row per local worker, and its latency samples;
//! - the *control listener* takes broadcasts and messages for the local
//!   workers, and kills.
//!
//! Everything here is core NATS, at most once, like crew's own events: a relay
//! never waits for a reader, and what a slow or absent reader misses is lost,
//! never queued without bound. Each publish is bounded by the broker timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subscriber};
use crew::{Event, Events, ExitReason, Messages, RemoteWorker, WorkerId};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{lock, NodeCtx, NodeRow};
use crate::broker::bounded;
use crate::config::{Cluster, Names};
use crate::envelope::{
    self, Control, Killed, NodeEvent, NodeEventBody, ProgressBody, StartedBody, WorkerMessage,
    H_TASK, KIND_CONTROL, KIND_KILLED, KIND_MESSAGE, KIND_NODE_EVENT, KIND_PROGRESS, KIND_REPORT,
    KIND_STARTED,
};

/// The most a report waits for the local pool's counts to include every task
/// the node has seen resolve (a local worker counts its task just after
/// resolving it).
const SETTLE: Duration = Duration::from_millis(100);

/// A node's answer to a stats request: everything a client's `Pool::stats`
/// takes from it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Report {
    pub(crate) row: NodeRow,
    /// One row per worker of the local pool.
    pub(crate) workers: Vec<WorkerRow>,
    /// The wait-time histogram: `(nanoseconds, count)` per bucket
    /// (`crew::backend::TimingSamples`).
    pub(crate) wait: Vec<(u64, u64)>,
    /// The run-time histogram, the same way.
    pub(crate) run: Vec<(u64, u64)>,
    /// The recorded run times' sum, in nanoseconds.
    pub(crate) busy_nanos: u64,
    /// The local pool's worker time, in nanoseconds.
    pub(crate) worker_time_nanos: u64,
    /// Since the node started, in nanoseconds.
    pub(crate) uptime_nanos: u64,
}

/// One local worker in a [`Report`].
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct WorkerRow {
    /// Its local id.
    pub(crate) id: u64,
    pub(crate) started: bool,
    pub(crate) stopping: bool,
    /// Whether it runs a task now.
    pub(crate) busy: bool,
    /// The cluster task it runs, if any.
    pub(crate) task: Option<String>,
    pub(crate) tasks_done: u64,
    pub(crate) busy_nanos: u64,
    /// Its run times: count, then p50, p90, p99 and max in nanoseconds.
    pub(crate) run: [u64; 5],
}

/// The subscriptions the relays read, made while the node sets up (so that a
/// node that cannot subscribe does not start).
pub(in crate::node) struct Subscriptions {
    stats: Subscriber,
    control: Subscriber,
    control_mine: Subscriber,
}

pub(in crate::node) async fn subscribe(
    client: &async_nats::Client,
    cluster: &Cluster,
    names: &Names,
    id: &str,
) -> Result<Subscriptions, String> {
    let limit = cluster.broker_timeout;
    let sub = |subject: String| {
        bounded(
            limit,
            "subscribing to the pool's requests",
            client.subscribe(subject),
        )
    };
    Ok(Subscriptions {
        stats: sub(names.stats_subject.clone()).await?,
        control: sub(names.control_subject.clone()).await?,
        control_mine: sub(names.node_control_subject(id)).await?,
    })
}

/// Starts the relays (on the node's runtime: called inside it).
pub(in crate::node) fn start<W: RemoteWorker>(ctx: &Arc<NodeCtx<W>>, subs: Subscriptions) {
    tokio::spawn(relay_events(Arc::clone(ctx), ctx.pool.events()));
    tokio::spawn(relay_messages(Arc::clone(ctx), ctx.pool.messages()));
    tokio::spawn(reporter(Arc::clone(ctx), subs.stats));
    tokio::spawn(control(Arc::clone(ctx), subs.control, subs.control_mine));
}

/// Publishes `payload` on `subject` (core NATS), bounded.
async fn publish<W: RemoteWorker>(
    ctx: &NodeCtx<W>,
    subject: String,
    headers: Option<HeaderMap>,
    payload: Vec<u8>,
) {
    let client = &ctx.client;
    let limit = ctx.cluster.broker_timeout;
    let _ = match headers {
        Some(h) => {
            bounded(
                limit,
                "relaying",
                client.publish_with_headers(subject, h, payload.into()),
            )
            .await
        }
        None => bounded(limit, "relaying", client.publish(subject, payload.into())).await,
    };
}

/// The event relay.
async fn relay_events<W: RemoteWorker>(ctx: Arc<NodeCtx<W>>, mut events: Events) {
    while let Some(event) = StreamExt::next(&mut events).await {
        let (worker, happened) = match event {
            Event::TaskStarted { task, worker, .. } => {
                let to = lock(&ctx.local)
                    .get(&task)
                    .and_then(|l| Some((l.key.clone(), l.notify.clone()?)));
                if let Some((key, reply)) = to {
                    started(&ctx, key, reply, worker).await;
                }
                continue;
            }
            Event::WorkerStarted { worker, .. } => (worker, NodeEvent::Started),
            Event::WorkerStartFailed {
                worker,
                message,
                consecutive,
                ..
            } => (
                worker,
                NodeEvent::StartFailed {
                    message,
                    consecutive,
                },
            ),
            Event::WorkerRestarted { worker, reason, .. } => {
                (worker, NodeEvent::Restarted { reason })
            }
            Event::WorkerExited { worker, reason, .. } => (
                worker,
                NodeEvent::Exited {
                    reason: exit_name(reason).to_owned(),
                },
            ),
            _ => continue,
        };
        let body = NodeEventBody {
            node: ctx.id.clone(),
            worker: worker.as_u64(),
            event: happened,
        };
        if let Ok(bytes) = envelope::encode_kind(KIND_NODE_EVENT, &body) {
            publish(&ctx, ctx.names.events_subject.clone(), None, bytes).await;
        }
    }
}

/// Tells a task's client that it started on `worker`.
async fn started<W: RemoteWorker>(ctx: &NodeCtx<W>, key: String, reply: String, worker: WorkerId) {
    let mut headers = HeaderMap::new();
    headers.insert(H_TASK, key.as_str());
    let body = StartedBody {
        task: key,
        node: ctx.id.clone(),
        worker: worker.as_u64(),
    };
    if let Ok(bytes) = envelope::encode_kind(KIND_STARTED, &body) {
        publish(ctx, reply, Some(headers), bytes).await;
    }
}

/// Tells a task's client its progress (`to` is its inbox).
pub(in crate::node) async fn progress<W: RemoteWorker>(
    ctx: &NodeCtx<W>,
    key: &str,
    to: &str,
    fraction: f32,
) {
    let mut headers = HeaderMap::new();
    headers.insert(H_TASK, key);
    let body = ProgressBody {
        task: key.to_owned(),
        fraction,
    };
    if let Ok(bytes) = envelope::encode_kind(KIND_PROGRESS, &body) {
        publish(ctx, to.to_owned(), Some(headers), bytes).await;
    }
}

/// `crew::ExitReason` by name, as it crosses the broker (the client reads
/// it back in `engine/state.rs`).
fn exit_name(reason: ExitReason) -> &'static str {
    match reason {
        ExitReason::Shutdown => "shutdown",
        ExitReason::Retired => "retired",
        ExitReason::Killed => "killed",
        ExitReason::Abandoned => "abandoned",
        ExitReason::Crashed => "crashed",
        ExitReason::Recycled => "recycled",
        _ => "other",
    }
}

/// The message relay.
async fn relay_messages<W: RemoteWorker>(ctx: Arc<NodeCtx<W>>, mut messages: Messages<W::Message>) {
    while let Some((worker, message)) = StreamExt::next(&mut messages).await {
        let Ok(message) = postcard::to_stdvec(&message) else {
            continue;
        };
        let body = WorkerMessage {
            node: ctx.id.clone(),
            worker: worker.as_u64(),
            message,
        };
        if let Ok(bytes) = envelope::encode_kind(KIND_MESSAGE, &body) {
            publish(&ctx, ctx.names.messages_subject.clone(), None, bytes).await;
        }
    }
}

/// Answers stats requests, each on a task of its own.
async fn reporter<W: RemoteWorker>(ctx: Arc<NodeCtx<W>>, mut requests: Subscriber) {
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let report = report(&ctx).await;
            if let Ok(bytes) = envelope::encode_kind(KIND_REPORT, &report) {
                publish(&ctx, reply.to_string(), None, bytes).await;
            }
        });
    }
}

/// The node's report. The local pool's figures are read once they count every
/// task whose result this node has delivered (or after [`SETTLE`]), so that a
/// client that has its results finds them in the workers' rows.
async fn report<W: RemoteWorker>(ctx: &NodeCtx<W>) -> Report {
    let settle = Instant::now() + SETTLE;
    let stats = loop {
        let resolved = ctx
            .resolved_local
            .load(std::sync::atomic::Ordering::Relaxed);
        let stats = ctx.pool.stats();
        if stats.finished() >= resolved || Instant::now() >= settle {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let local = lock(&ctx.local);
    let workers = stats
        .per_worker
        .iter()
        .map(|w| {
            // A local task that resolved (its entry is gone) no longer holds
            // its worker, whatever the local row says a moment later.
            let task = w
                .current_task
                .and_then(|t| local.get(&t))
                .map(|l| l.key.clone());
            WorkerRow {
                id: w.id.as_u64(),
                started: w.started,
                stopping: w.state == crew::WorkerState::Stopping,
                busy: task.is_some(),
                task,
                tasks_done: w.tasks_done,
                busy_nanos: nanos(w.busy_time),
                run: [
                    w.run.count,
                    nanos(w.run.p50),
                    nanos(w.run.p90),
                    nanos(w.run.p99),
                    nanos(w.run.max),
                ],
            }
        })
        .collect::<Vec<_>>();
    drop(local);
    let samples = lock(&ctx.timings).samples();
    let mut row = ctx.row();
    row.busy = workers.iter().filter(|w| w.busy).count();
    Report {
        row,
        workers,
        wait: samples.wait,
        run: samples.run,
        busy_nanos: nanos(samples.busy),
        worker_time_nanos: nanos(stats.worker_time),
        uptime_nanos: nanos(ctx.born.elapsed()),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Takes broadcasts, messages for one worker and kills.
async fn control<W: RemoteWorker>(ctx: Arc<NodeCtx<W>>, all: Subscriber, mine: Subscriber) {
    let mut both = futures_util::stream::select(all, mine);
    while let Some(message) = both.next().await {
        let Ok(control) =
            envelope::decode_kind::<Control>(&message.payload, KIND_CONTROL, "control")
        else {
            continue;
        };
        match control {
            Control::Broadcast { sticky, message } => {
                if let Ok(m) = postcard::from_bytes::<W::Message>(&message) {
                    if sticky {
                        ctx.pool.broadcast_sticky(m);
                    } else {
                        ctx.pool.broadcast(m);
                    }
                }
            }
            Control::SendTo { worker, message } => {
                let m = postcard::from_bytes::<W::Message>(&message);
                if let (Some(id), Ok(m)) = (local_worker(&ctx, worker), m) {
                    // A worker gone since is the message lost, as a worker
                    // that exits with mail unread loses it.
                    let _ = ctx.pool.send_to(id, m);
                }
            }
            Control::Kill { worker } => {
                let answer = kill(&ctx, worker);
                if let (Some(reply), Ok(bytes)) =
                    (message.reply, envelope::encode_kind(KIND_KILLED, &answer))
                {
                    publish(&ctx, reply.to_string(), None, bytes).await;
                }
            }
        }
    }
}

/// The local worker numbered `n`, if it is live.
fn local_worker<W: RemoteWorker>(ctx: &NodeCtx<W>, n: u64) -> Option<WorkerId> {
    ctx.pool.workers().into_iter().find(|w| w.as_u64() == n)
}

/// Kills local worker `n` (its local task resolves as killed, and the node
/// delivers that as the task's result); says which cluster task it ran.
fn kill<W: RemoteWorker>(ctx: &NodeCtx<W>, n: u64) -> Killed {
    let Some(id) = local_worker(ctx, n) else {
        return Killed {
            killed: false,
            task: None,
        };
    };
    let current = ctx
        .pool
        .stats()
        .per_worker
        .iter()
        .find(|w| w.id == id)
        .and_then(|w| w.current_task);
    let task = current.and_then(|t| lock(&ctx.local).get(&t).map(|l| l.key.clone()));
    let killed = ctx.pool.kill_worker(id);
    Killed {
        killed,
        task: task.filter(|_| killed),
    }
}
