//! A node's fetch loop: takes tasks from the pool's stream, high before normal
//! before low, never more than its local pool has free slots, and hands each
//! to a task handler with its slot (`protocol.md`, "Priorities" and "A
//! node", step 2).
//!
//! # A sweep
//! When a slot is free, the loop *sweeps* the levels, highest first. At each
//! level it takes first what an open poll of that level brought (the
//! *reserve*, oldest first), then asks the level's consumer for as many tasks
//! as slots are still free, without waiting (a `no_wait` pull: the server
//! answers at once with what it has). It stops at the first level that fills
//! the slots. So a task starts only when no task of a higher level was in the
//! stream at its sweep, and within a level in stream order.
//!
//! A level is not asked when it is known empty: a poll of it is open (the
//! server would have given that poll a task), or a sweep found it empty in
//! the last [`EMPTY_FOR`]. This spares a node whose tasks are all normal a
//! round trip to the empty high level at every refill; the price is that a
//! high task published within [`EMPTY_FOR`] of such a sweep may start after
//! a normal one taken in that window.
//!
//! # Waiting
//! A sweep that finds nothing, with slots still free, opens a *poll* on every
//! level that has none: a pull of one task that waits up to [`PULL_WAIT`] on
//! the server. The loop then waits for a poll to bring a task (or to end, and
//! sweeps again). An idle node so starts a new task one server hop after it
//! is published, at whatever level.
//!
//! A poll cannot be taken back once sent: one may bring a task after the
//! slots have gone to tasks of another level. That task waits in the reserve,
//! its lease renewed, until a slot frees; a handler checks first that its
//! client has not withdrawn it meanwhile. The reserve holds at most one task
//! per level, and only tasks that came while the node was idle: this is the
//! one way a node holds a task it has no free slot for.
//!
//! Any broker error on a level drops its consumer handle; the loop reopens
//! the consumers after [`RETRY_WAIT`] (async-nats reconnects the connection
//! underneath).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self};
use crew::RemoteWorker;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::{handle, withdrawn, NodeCtx, RETRY_WAIT};
use crate::broker::{self, bounded};
use crate::envelope::H_TASK;

/// How long one poll waits on the server for a task. Bounds how often an
/// idle node sweeps (once per this, when nothing comes).
const PULL_WAIT: Duration = Duration::from_millis(500);

/// How long a level a sweep found empty is taken to stay empty.
const EMPTY_FOR: Duration = Duration::from_millis(5);

/// What a poll sends the loop.
enum Polled {
    /// A task of level `.0` (boxed: a message is large, an end is not).
    Task(usize, Box<jetstream::Message>),
    /// The poll of level `.0` ended; `.1` is false if the broker failed.
    End(usize, bool),
}

/// The loop's state between sweeps.
struct Levels {
    /// Each level's consumer (`None` after a broker error, until reopened).
    consumers: [Option<PullConsumer>; 3],
    /// What polls brought, by level, oldest first.
    reserve: [VecDeque<jetstream::Message>; 3],
    /// Whether a poll of each level is open.
    polling: [bool; 3],
    /// When a sweep last found each level empty.
    empty_at: [Option<Instant>; 3],
}

impl Levels {
    fn known_empty(&self, level: usize) -> bool {
        self.polling[level] || self.empty_at[level].is_some_and(|at| at.elapsed() < EMPTY_FOR)
    }

    fn absorb(&mut self, polled: Polled) {
        match polled {
            Polled::Task(level, message) => self.reserve[level].push_back(*message),
            Polled::End(level, healthy) => {
                self.polling[level] = false;
                if !healthy {
                    self.consumers[level] = None;
                }
            }
        }
    }
}

/// Takes tasks while there are free slots, until stopped; then gives back
/// what it holds, waits for every slot to come back (every running task
/// delivered) and closes the local pool.
pub(super) async fn fetch_loop<W: RemoteWorker>(
    ctx: Arc<NodeCtx<W>>,
    consumers: [PullConsumer; 3],
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(ctx.slots));
    let mut levels = Levels {
        consumers: consumers.map(Some),
        reserve: Default::default(),
        polling: [false; 3],
        empty_at: [None; 3],
    };
    // At most two messages per open poll (a task, its end): bounded.
    let (polls, mut polled) = mpsc::unbounded_channel::<Polled>();
    let mut renew = tokio::time::interval(ctx.ack_wait / 3);
    loop {
        if *stop.borrow() {
            break;
        }
        while let Ok(p) = polled.try_recv() {
            levels.absorb(p);
        }
        if levels.consumers.iter().any(Option::is_none) && !reopen(&ctx, &mut levels).await {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_WAIT) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // At least one free slot, then every other free slot.
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            Some(p) = polled.recv() => {
                levels.absorb(p);
                continue;
            }
            _ = renew.tick() => {
                renew_reserve(&ctx, &levels).await;
                continue;
            }
            _ = stop.changed() => break,
        };
        let mut permits = vec![first];
        while let Ok(p) = Arc::clone(&slots).try_acquire_owned() {
            permits.push(p);
        }
        sweep(&ctx, &mut levels, &mut permits).await;
        if permits.is_empty() {
            continue;
        }
        drop(permits);
        // Nothing anywhere, slots free: poll every level, and wait.
        for level in 0..3 {
            if levels.polling[level] {
                continue;
            }
            if let Some(consumer) = levels.consumers[level].clone() {
                levels.polling[level] = true;
                let limit = ctx.cluster.broker_timeout;
                tokio::spawn(poll(consumer, level, polls.clone(), limit));
            }
        }
        tokio::select! {
            Some(p) = polled.recv() => levels.absorb(p),
            _ = renew.tick() => renew_reserve(&ctx, &levels).await,
            _ = stop.changed() => break,
        }
    }
    // Open polls end within their wait; what they bring, and the reserve, goes
    // back to the stream (never started here) for another node.
    let limit = PULL_WAIT + ctx.cluster.broker_timeout;
    let deadline = Instant::now() + limit;
    while levels.polling.iter().any(|p| *p) {
        match tokio::time::timeout_at(deadline, polled.recv()).await {
            Ok(Some(p)) => levels.absorb(p),
            _ => break,
        }
    }
    for message in levels.reserve.iter_mut().flat_map(|r| r.drain(..)) {
        let _ = bounded(
            ctx.cluster.broker_timeout,
            "giving a task back",
            message.ack_with(AckKind::Nak(None)),
        )
        .await;
    }
    super::wind_down(&ctx, &slots).await;
}

/// Hands tasks to as many of `permits` as it can, highest level first (see
/// the module docs); the permits left over mean nothing is waiting.
async fn sweep<W: RemoteWorker>(
    ctx: &Arc<NodeCtx<W>>,
    levels: &mut Levels,
    permits: &mut Vec<OwnedSemaphorePermit>,
) {
    for level in 0..3 {
        while !permits.is_empty() {
            let Some(message) = levels.reserve[level].pop_front() else {
                break;
            };
            if let Some(permit) = permits.pop() {
                let span = task_span(ctx, &message);
                tokio::spawn(held(Arc::clone(ctx), message, permit).instrument(span));
            }
        }
        if permits.is_empty() {
            return;
        }
        if levels.known_empty(level) {
            continue;
        }
        let Some(consumer) = levels.consumers[level].clone() else {
            continue;
        };
        let asked = permits.len();
        match take(ctx, &consumer, asked).await {
            Ok(messages) => {
                let got = messages.len();
                for message in messages {
                    match permits.pop() {
                        Some(permit) => {
                            let span = task_span(ctx, &message);
                            tokio::spawn(handle(Arc::clone(ctx), message, permit).instrument(span));
                        }
                        // More than asked (never in practice): it waits its
                        // turn in the reserve.
                        None => levels.reserve[level].push_back(message),
                    }
                }
                if got < asked {
                    levels.empty_at[level] = Some(Instant::now());
                } else {
                    // Filled: lower levels wait for the next sweep.
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(node = %ctx.id, "{e}");
                levels.consumers[level] = None;
            }
        }
    }
}

/// The span a task's handler runs in: `crew.cluster.task`, with the node's id
/// and the task's, so that what the handler (and a `tracing` subscriber on
/// the node) records says where it ran.
fn task_span<W: RemoteWorker>(ctx: &NodeCtx<W>, message: &jetstream::Message) -> tracing::Span {
    let task = message
        .headers
        .as_ref()
        .and_then(|h| h.get(H_TASK))
        .map_or("", |v| v.as_str());
    tracing::info_span!("crew.cluster.task", node = %ctx.id, task = %task)
}

/// Up to `n` tasks the consumer has now, without waiting.
async fn take<W: RemoteWorker>(
    ctx: &NodeCtx<W>,
    consumer: &PullConsumer,
    n: usize,
) -> Result<Vec<jetstream::Message>, String> {
    let limit = ctx.cluster.broker_timeout;
    let mut batch = bounded(
        limit,
        "pulling tasks",
        consumer.fetch().max_messages(n).messages(),
    )
    .await?;
    let mut out = Vec::with_capacity(n);
    loop {
        match tokio::time::timeout(limit, batch.next()).await {
            Ok(Some(Ok(message))) => out.push(message),
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => return Err(format!("pulling tasks: {e}")),
            Err(_) => return Err(format!("pulling tasks: no answer in {limit:?}")),
        }
    }
}

/// One poll of `level`: a pull of one task that waits up to [`PULL_WAIT`].
async fn poll(
    consumer: PullConsumer,
    level: usize,
    to: mpsc::UnboundedSender<Polled>,
    limit: Duration,
) {
    let batch = bounded(
        limit,
        "polling for tasks",
        consumer
            .batch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages(),
    )
    .await;
    let healthy = match batch {
        Ok(mut batch) => loop {
            match tokio::time::timeout(PULL_WAIT + limit, batch.next()).await {
                Ok(Some(Ok(message))) => {
                    let _ = to.send(Polled::Task(level, Box::new(message)));
                }
                Ok(None) => break true,
                Ok(Some(Err(_))) | Err(_) => break false,
            }
        },
        Err(_) => false,
    };
    let _ = to.send(Polled::End(level, healthy));
}

/// A task that waited in the reserve: run unless its client withdrew it
/// meanwhile.
async fn held<W: RemoteWorker>(
    ctx: Arc<NodeCtx<W>>,
    message: jetstream::Message,
    slot: OwnedSemaphorePermit,
) {
    let sequence = message.info().map_or(0, |i| i.stream_sequence);
    if withdrawn(&ctx, sequence).await {
        let _ = bounded(
            ctx.cluster.broker_timeout,
            "acking a withdrawn task",
            message.double_ack(),
        )
        .await;
        return;
    }
    handle(ctx, message, slot).await;
}

/// Renews the leases of the tasks in the reserve.
async fn renew_reserve<W: RemoteWorker>(ctx: &NodeCtx<W>, levels: &Levels) {
    for message in levels.reserve.iter().flatten() {
        let _ = bounded(
            ctx.cluster.broker_timeout,
            "renewing a lease",
            message.ack_with(AckKind::Progress),
        )
        .await;
    }
}

/// Reopens the stream and the consumers; false if the broker failed.
async fn reopen<W: RemoteWorker>(ctx: &NodeCtx<W>, levels: &mut Levels) -> bool {
    let opened = async {
        let objects = broker::ensure_pool(&ctx.js, &ctx.cluster, &ctx.names).await?;
        broker::ensure_consumers(&objects.tasks, &ctx.cluster, &ctx.names).await
    }
    .await;
    match opened {
        Ok(consumers) => {
            levels.consumers = consumers.map(Some);
            true
        }
        Err(e) => {
            tracing::warn!(node = %ctx.id, "the node's consumers: {e}");
            false
        }
    }
}
