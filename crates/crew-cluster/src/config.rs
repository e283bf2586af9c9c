//! [`Cluster`]: where the broker is, which pool, and the delivery policy, shared
//! by clients and nodes; and the names of every stream, consumer, bucket and
//! subject derived from the pool's name (see `protocol.md`).

use std::time::Duration;

/// Where a cluster pool lives and how its tasks are delivered: the NATS URL, the
/// pool's name, and the delivery policy. Clients
/// ([`Cluster::client`](crate::Cluster::client)) and nodes
/// ([`serve`](crate::serve)) of one pool must agree on the name; the first one to
/// connect creates the stream, consumer and buckets with its policy, and later
/// ones use them as they are.
///
/// ```no_run
/// let cluster = crew_cluster::Cluster::connect("nats://127.0.0.1:4222").pool_name("resize");
/// ```
#[derive(Clone)]
pub struct Cluster {
    pub(crate) url: String,
    pub(crate) pool: String,
    pub(crate) ack_wait: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) broker_timeout: Duration,
    pub(crate) result_ttl: Duration,
    pub(crate) queue_capacity: Option<u64>,
    pub(crate) sweep_interval: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) replicas: usize,
}

impl Cluster {
    /// A cluster pool on the NATS server(s) at `url` (`nats://host:port`, or
    /// several separated by commas: the servers of one NATS cluster), named `default` until
    /// [`Cluster::pool_name`] says otherwise. Nothing connects yet.
    pub fn connect(url: impl Into<String>) -> Cluster {
        Cluster {
            url: url.into(),
            pool: "default".into(),
            ack_wait: Duration::from_secs(30),
            max_attempts: 5,
            broker_timeout: Duration::from_secs(5),
            result_ttl: Duration::from_secs(3600),
            queue_capacity: None,
            sweep_interval: Duration::from_secs(2),
            heartbeat: Duration::from_secs(2),
            replicas: 1,
        }
    }

    /// The pool's name: letters, digits, `-` and `_` (it becomes part of stream
    /// and subject names). Clients and nodes with the same name share one queue.
    pub fn pool_name(mut self, name: impl Into<String>) -> Cluster {
        self.pool = name.into();
        self
    }

    /// How long a node may hold a task without a word before JetStream gives it
    /// to another node (default 30 s). A running task's node renews the lease
    /// every third of this, so only a dead or cut-off node loses its tasks; a
    /// short wait makes redelivery after a crash fast, at the cost of more
    /// renewals.
    pub fn ack_wait(mut self, wait: Duration) -> Cluster {
        self.ack_wait = wait;
        self
    }

    /// How many times a task may start running before it is dead-lettered
    /// (default 5). Each run after the first follows a node that died or was
    /// cut off with the task; a task that kills every node it reaches stops
    /// here, failing with [`ClusterError::is_dead_letter`](crate::ClusterError::is_dead_letter).
    /// A task that was delivered to a dying node but had not started there does
    /// not use an attempt.
    pub fn max_attempts(mut self, attempts: u32) -> Cluster {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The limit on every single call to the broker (a publish's ack, a fetch's
    /// reply, a bucket read; default 5 s). A call that times out is retried or
    /// reported, never waited on for ever.
    pub fn broker_timeout(mut self, timeout: Duration) -> Cluster {
        self.broker_timeout = timeout;
        self
    }

    /// How long results stay in the results bucket for lookup by id (default 1 h).
    pub fn result_ttl(mut self, ttl: Duration) -> Cluster {
        self.result_ttl = ttl;
        self
    }

    /// The most tasks the stream holds (default: unbounded). A submit to a full
    /// stream fails with [`SubmitError::is_full`](crate::SubmitError::is_full)
    /// and gives the input back.
    pub fn queue_capacity(mut self, tasks: u64) -> Cluster {
        self.queue_capacity = Some(tasks);
        self
    }

    /// How often a client looks up, in the results bucket, the tasks whose
    /// result has not reached its inbox (default 2 s): a result published while
    /// the client was cut off from the broker is collected this way.
    pub fn sweep_interval(mut self, interval: Duration) -> Cluster {
        self.sweep_interval = interval;
        self
    }

    /// How often a node writes its heartbeat (default 2 s); a node is listed
    /// until three heartbeats are missed.
    pub fn heartbeat(mut self, interval: Duration) -> Cluster {
        self.heartbeat = interval;
        self
    }

    /// How many servers of a NATS cluster keep a copy of the pool's streams and
    /// buckets (default 1; 3 on a three-server cluster survives the loss of one
    /// server). At most the number of servers with JetStream.
    pub fn replicas(mut self, replicas: usize) -> Cluster {
        self.replicas = replicas.max(1);
        self
    }

    /// The pool's name, checked: it becomes part of subject and stream names.
    pub(crate) fn names(&self) -> Result<Names, String> {
        let ok = !self.pool.is_empty()
            && self
                .pool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Names::new(&self.pool))
        } else {
            Err(format!(
                "pool name {:?} must be letters, digits, '-' and '_'",
                self.pool
            ))
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url)
            .field("pool", &self.pool)
            .field("ack_wait", &self.ack_wait)
            .field("max_attempts", &self.max_attempts)
            .field("broker_timeout", &self.broker_timeout)
            .field("result_ttl", &self.result_ttl)
            .field("queue_capacity", &self.queue_capacity)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// The priorities a node takes tasks of, in the order it takes them
/// (`protocol.md`, "Priorities").
pub(crate) const LEVELS: [crew::Priority; 3] = [
    crew::Priority::High,
    crew::Priority::Normal,
    crew::Priority::Low,
];

/// A priority's name in subjects and consumer names.
fn level_name(priority: crew::Priority) -> &'static str {
    match priority {
        crew::Priority::High => "high",
        crew::Priority::Low => "low",
        _ => "normal",
    }
}

/// Every broker name of one pool (`protocol.md`, "Names").
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) pool: String,
    /// The WorkQueue stream of tasks.
    pub(crate) stream: String,
    /// The dead-letter stream.
    pub(crate) dead_stream: String,
    /// The subject dead letters are published on.
    pub(crate) dead_subject: String,
    /// The results bucket (KV).
    pub(crate) results: String,
    /// The node heartbeat bucket (KV).
    pub(crate) nodes: String,
    /// The bucket of run counts of redelivered tasks (KV).
    pub(crate) runs: String,
    /// Where cancels of running tasks are published.
    pub(crate) cancel_subject: String,
    /// Where nodes publish their workers' events.
    pub(crate) events_subject: String,
    /// Where nodes publish their workers' messages to the pool.
    pub(crate) messages_subject: String,
    /// Where clients ask the nodes for their reports.
    pub(crate) stats_subject: String,
    /// Where clients send every node a control message (a broadcast).
    pub(crate) control_subject: String,
}

impl Names {
    fn new(pool: &str) -> Names {
        Names {
            pool: pool.to_owned(),
            stream: format!("CREW_{pool}"),
            dead_stream: format!("CREW_{pool}_DEAD"),
            dead_subject: format!("crew.{pool}.dead"),
            results: format!("crew_{pool}_results"),
            nodes: format!("crew_{pool}_nodes"),
            runs: format!("crew_{pool}_runs"),
            cancel_subject: format!("crew.{pool}.cancel"),
            events_subject: format!("crew.{pool}.events"),
            messages_subject: format!("crew.{pool}.messages"),
            stats_subject: format!("crew.{pool}.stats"),
            control_subject: format!("crew.{pool}.control"),
        }
    }

    /// Where clients send one node a control message (to one of its
    /// workers, a kill).
    pub(crate) fn node_control_subject(&self, node: &str) -> String {
        format!("crew.{}.control.{node}", self.pool)
    }

    /// The subject of a task of this priority.
    pub(crate) fn task_subject(&self, priority: crew::Priority) -> String {
        format!("crew.{}.task.{}", self.pool, level_name(priority))
    }

    /// The durable pull consumer every node shares for the tasks of this
    /// priority (its filter is the priority's subject).
    pub(crate) fn consumer(&self, priority: crew::Priority) -> String {
        format!("nodes-{}", level_name(priority))
    }

    /// Every task subject.
    pub(crate) fn task_subjects(&self) -> String {
        format!("crew.{}.task.*", self.pool)
    }

    /// A client's result inbox.
    pub(crate) fn reply_subject(&self, client: &str) -> String {
        format!("crew.{}.reply.{client}", self.pool)
    }
}
