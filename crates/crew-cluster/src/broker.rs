//! Connecting to NATS and setting up a pool's stream, consumer and buckets, the
//! same way on a client and a node (`protocol.md`, "Streams and buckets").
//!
//! Every call here is bounded by the cluster's broker timeout ([`bounded`]):
//! async-nats retries a lost connection by itself, but a request whose reply
//! never comes must end in an error the caller can retry.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use crate::config::{Cluster, Names, LEVELS};

/// Runs `call`, failing with a clear message after `limit`.
pub(crate) async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer from the broker in {limit:?}")),
    }
}

/// Connects to the cluster's URL. A lost connection is retried for ever with
/// a capped backoff (async-nats does that; see `reconnect_delay`), so a broker
/// restart is survived; `on_connected` runs on every (re)connection.
pub(crate) async fn connect(
    cluster: &Cluster,
    name: &str,
    on_connected: impl Fn() + Send + Sync + 'static,
) -> Result<async_nats::Client, String> {
    let on_connected = std::sync::Arc::new(on_connected);
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(cluster.broker_timeout)
        .request_timeout(Some(cluster.broker_timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let on_connected = std::sync::Arc::clone(&on_connected);
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    on_connected();
                }
            }
        });
    // Several servers, comma-separated: the client tries them in turn, and
    // learns the rest of a cluster from whichever it reaches.
    let urls: Vec<&str> = cluster.url.split(',').map(str::trim).collect();
    bounded(
        cluster.broker_timeout,
        &format!("connecting to {}", cluster.url),
        options.connect(urls),
    )
    .await
}

/// The wait before reconnection attempt `n`: 50 ms doubling to at most 1 s. The
/// library's default grows to several seconds, which is what a task waits on
/// after a broker restart; a second is enough to spare the server.
fn reconnect_delay(attempt: usize) -> Duration {
    let shift = attempt.min(5) as u32;
    Duration::from_millis(50u64 << shift).min(Duration::from_secs(1))
}

/// A JetStream context whose requests time out at the broker timeout.
pub(crate) fn jetstream(client: async_nats::Client, cluster: &Cluster) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(cluster.broker_timeout)
        .build(client)
}

/// What a client and a node use of a pool on the broker.
#[derive(Clone)]
pub(crate) struct PoolObjects {
    pub(crate) tasks: stream::Stream,
    pub(crate) results: kv::Store,
    pub(crate) nodes: kv::Store,
    /// How many times each redelivered task started running (protocol.md,
    /// "Dead letters").
    pub(crate) runs: kv::Store,
}

/// Creates, or opens as they are, the pool's task stream, dead-letter stream
/// and buckets.
pub(crate) async fn ensure_pool(
    js: &jetstream::Context,
    cluster: &Cluster,
    names: &Names,
) -> Result<PoolObjects, String> {
    let limit = cluster.broker_timeout;
    let tasks = bounded(
        limit,
        "creating the task stream",
        js.get_or_create_stream(stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.task_subjects()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            // A full stream refuses new tasks (the publisher gets the input
            // back) instead of dropping old ones.
            discard: stream::DiscardPolicy::New,
            max_messages: cluster.queue_capacity.map_or(-1, |n| n as i64),
            // A publish retried within this window is the same task (Nats-Msg-Id).
            duplicate_window: Duration::from_secs(120),
            num_replicas: cluster.replicas,
            ..Default::default()
        }),
    )
    .await?;
    bounded(
        limit,
        "creating the dead-letter stream",
        js.get_or_create_stream(stream::Config {
            name: names.dead_stream.clone(),
            subjects: vec![names.dead_subject.clone()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            num_replicas: cluster.replicas,
            ..Default::default()
        }),
    )
    .await?;
    let replicas = cluster.replicas;
    let results = ensure_bucket(js, limit, &names.results, cluster.result_ttl, replicas).await?;
    let nodes = ensure_bucket(js, limit, &names.nodes, cluster.heartbeat * 3, replicas).await?;
    let runs = ensure_bucket(js, limit, &names.runs, cluster.result_ttl, replicas).await?;
    Ok(PoolObjects {
        tasks,
        results,
        nodes,
        runs,
    })
}

/// Creates, or opens as it is, a key-value bucket. The bucket's stream is
/// created here with the settings of a standard NATS KV bucket (the same as
/// `create_key_value` would choose), because async-nats's `create_key_value`
/// first reads the account's info, which it cannot parse from the 2.9 servers
/// Debian ships; opening the bucket works on every server.
async fn ensure_bucket(
    js: &jetstream::Context,
    limit: Duration,
    bucket: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    bounded(
        limit,
        &format!("creating bucket {bucket}"),
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            // One value per key: the latest.
            max_messages_per_subject: 1,
            max_age: ttl,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        }),
    )
    .await?;
    bounded(
        limit,
        &format!("opening bucket {bucket}"),
        js.get_key_value(bucket),
    )
    .await
}

/// The consumer's `MaxDeliver` for a pool of `attempts` runs per task.
pub(crate) fn max_deliver(attempts: u32) -> i64 {
    3 * i64::from(attempts) + 1
}

/// The attempts of a consumer whose `MaxDeliver` is `max_deliver`.
pub(crate) fn attempts(max_deliver: i64) -> u32 {
    u32::try_from((max_deliver - 1) / 3)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Creates, or opens as they are, the durable pull consumers the nodes share:
/// one per priority, each filtered on its priority's subject, in
/// [`LEVELS`] order.
///
/// One consumer per level is what lets a node take high before normal before
/// low (`protocol.md`, "Priorities"). Each filter is a literal subject, never
/// a wildcard: on nats-server 2.9, a consumer filtered by a wildcard skips a
/// message for good when a later message of the same subject is deleted
/// (a withdrawn task), so a queued task could be left in the stream with no
/// node ever given it.
pub(crate) async fn ensure_consumers(
    tasks: &stream::Stream,
    cluster: &Cluster,
    names: &Names,
) -> Result<[consumer::PullConsumer; 3], String> {
    let mut out = Vec::with_capacity(LEVELS.len());
    for level in LEVELS {
        let name = names.consumer(level);
        let created = bounded(
            cluster.broker_timeout,
            "creating the node consumers",
            tasks.get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: names.task_subject(level),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: cluster.ack_wait,
                    // Deliveries are not runs: a task can be delivered to a
                    // node that dies before its turn. Runs are counted in the
                    // runs bucket; this is the backstop, whose last delivery
                    // is not run, only dead-lettered (protocol.md, "Dead
                    // letters").
                    max_deliver: max_deliver(cluster.max_attempts),
                    // Nodes fetch no more than their free slots; this only
                    // caps the total a cluster can hold unacknowledged.
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            ),
        )
        .await
        .map_err(|e| {
            format!(
                "{e} (a pool created by crew-cluster before envelope version 2 has one \
                 consumer `nodes` for every priority: drain it, then delete the stream {})",
                names.stream
            )
        })?;
        out.push(created);
    }
    out.try_into()
        .map_err(|_| unreachable!("one consumer per level"))
}
