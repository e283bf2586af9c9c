//! What the pool's engine (`engine.rs`) asks of a client beside tasks, on the
//! client's connection and runtime (`protocol.md`, "Beside tasks"): the hook
//! told each task's start and progress, subscriptions to the pool's events and messages,
//! publishes and requests to the nodes, a gathering of every node's answer,
//! and timers. Every call is bounded, as the client's own are.

use std::time::{Duration, Instant};

use bytes::Bytes;
use crew::RemoteWorker;
use futures_util::StreamExt;

use super::{ClusterClient, OnNotice};
use crate::broker::bounded;
use crate::config::Names;
use crate::error::BrokerError;

/// The most a gathering waits for the nodes' answers (or the broker timeout,
/// if shorter): answers normally come within milliseconds, and a node listed
/// but dead (its row not expired yet) must not stall every `stats()` long.
const GATHER_WAIT: Duration = Duration::from_millis(500);

impl<W: RemoteWorker> ClusterClient<W> {
    /// Sets the hook the dispatcher tells each task's start and progress
    /// (with the task's number); from then on, tasks ask their node for them.
    /// False if a hook was set already.
    pub(crate) fn on_notice(&self, hook: OnNotice) -> bool {
        self.inner.shared.on_notice.set(hook).is_ok()
    }

    /// The pool's broker names.
    pub(crate) fn names(&self) -> &Names {
        &self.inner.shared.names
    }

    /// Calls `each` with every message on `subject`, on the client's runtime,
    /// until the client is dropped. `each` must not block.
    pub(crate) fn listen(
        &self,
        subject: String,
        each: impl Fn(async_nats::Message) + Send + 'static,
    ) -> Result<(), BrokerError> {
        let shared = std::sync::Arc::clone(&self.inner.shared);
        let limit = shared.cluster.broker_timeout;
        let mut subscription = self
            .inner
            .block_on(Some(limit), async move {
                bounded(limit, "subscribing", shared.client.subscribe(subject)).await
            })?
            .map_err(BrokerError::new)?;
        if let Some(runtime) = &self.inner.runtime {
            runtime.spawn(async move {
                while let Some(message) = subscription.next().await {
                    each(message);
                }
            });
        }
        Ok(())
    }

    /// Publishes `payload` on `subject` (core NATS, at most once). Returns
    /// once the message is queued on the connection, so that what one thread
    /// publishes goes out in order.
    pub(crate) fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), BrokerError> {
        let shared = std::sync::Arc::clone(&self.inner.shared);
        let limit = shared.cluster.broker_timeout;
        self.inner
            .block_on(Some(limit), async move {
                bounded(
                    limit,
                    "publishing to the nodes",
                    shared.client.publish(subject, payload.into()),
                )
                .await
            })?
            .map_err(BrokerError::new)
    }

    /// A request one node answers (a kill): its answer, within the broker
    /// timeout.
    pub(crate) fn request(&self, subject: String, payload: Vec<u8>) -> Result<Bytes, BrokerError> {
        let shared = std::sync::Arc::clone(&self.inner.shared);
        let limit = shared.cluster.broker_timeout;
        self.inner
            .block_on(Some(limit), async move {
                bounded(
                    limit,
                    "asking a node",
                    shared.client.request(subject, payload.into()),
                )
                .await
            })?
            .map(|message| message.payload)
            .map_err(BrokerError::new)
    }

    /// Asks every node on `subject` and collects their answers: as many as
    /// the nodes bucket lists nodes, or what came within [`GATHER_WAIT`].
    pub(crate) fn gather(&self, subject: String) -> Result<Vec<Bytes>, BrokerError> {
        let shared = std::sync::Arc::clone(&self.inner.shared);
        let timeout = shared.cluster.broker_timeout;
        let wait = GATHER_WAIT.min(timeout);
        // Listing the nodes, then subscribing, asking and collecting.
        let bound = timeout + wait * 3;
        self.inner
            .block_on(Some(bound), async move {
                let expected = shared.nodes().await?.len();
                if expected == 0 {
                    return Ok(Vec::new());
                }
                let inbox = shared.client.new_inbox();
                let mut answers = bounded(
                    wait,
                    "subscribing for the nodes' answers",
                    shared.client.subscribe(inbox.clone()),
                )
                .await?;
                bounded(
                    wait,
                    "asking the nodes",
                    shared
                        .client
                        .publish_with_reply(subject, inbox, Bytes::new()),
                )
                .await?;
                let deadline = tokio::time::Instant::now() + wait;
                let mut out = Vec::with_capacity(expected);
                while out.len() < expected {
                    match tokio::time::timeout_at(deadline, answers.next()).await {
                        Ok(Some(answer)) => out.push(answer.payload),
                        _ => break,
                    }
                }
                Ok::<_, String>(out)
            })?
            .map_err(BrokerError::new)
    }

    /// Runs `job` on the client's runtime at `at` (it must not block).
    pub(crate) fn at(&self, at: Instant, job: impl FnOnce() + Send + 'static) {
        if let Some(runtime) = &self.inner.runtime {
            runtime.spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                job();
            });
        }
    }
}

impl<W: RemoteWorker> ClusterClient<W> {
    /// The number of task `id` if it is one of this client's (`<client id>.<n>`).
    pub(crate) fn number_of(&self, id: &str) -> Option<u64> {
        let (client, n) = id.rsplit_once('.')?;
        if client == self.inner.client_id {
            n.parse().ok()
        } else {
            None
        }
    }
}
