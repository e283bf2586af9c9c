//! The cluster backend of crew: the same `Worker` type, run by worker nodes on
//! any host, fed from a NATS JetStream work queue.
//!
//! A program keeps its `Worker` type and its calling code, and changes one
//! builder line: `Pool::<W>::builder().cluster(Cluster::connect(url).pool_name("resize"))`
//! ([`PoolBuilderExt::cluster`]). The nodes are programs that call [`serve`]
//! (or [`bootstrap`]) for the same `W`. [`ClusterClient`] is the same client
//! without `Pool`, with what only a cluster has (status by id, the nodes).
//!
//! # How a task flows
//! 1. The pool's client ([`ClusterClient`], made by [`Cluster::client`]) encodes the input in a
//!    small versioned envelope and publishes it to the pool's WorkQueue stream,
//!    on the subject of its priority, with its id as `Nats-Msg-Id` (a retried
//!    publish is stored once). It returns a [`ClusterTask`] handle once the
//!    stream has acknowledged it.
//! 2. A node ([`serve`], [`Node::start`]) pulls tasks from the pool's durable
//!    consumers, high priority before normal before low, never more than its
//!    local crew pool has free slots, and runs
//!    each on that local pool (threads, or processes for isolation: timeouts,
//!    crash isolation and recycling are crew's own). While a task runs, the node
//!    renews its lease with in-progress acks.
//! 3. The node writes the result to the results bucket (kept for a TTL, looked
//!    up by id with [`ClusterClient::result_of`]), publishes it to the client's
//!    inbox, and only then acks the task.
//! 4. The client resolves the handle from its inbox, or from the bucket if the
//!    inbox message was lost to a broker outage. Each handle resolves exactly
//!    once.
//!
//! # Delivery
//! Resolution is exactly once; execution is **at least once**. A node that dies
//! (or is cut off) mid-task loses its lease after the ack wait, and the task runs
//! again elsewhere, as a process worker's task would after a crash. A task
//! handed out [`Cluster::max_attempts`] times without a result is dead-lettered:
//! its handle fails with [`ClusterError::is_dead_letter`] and its message is
//! kept in the pool's dead-letter stream. Bytes on the task subject that are not
//! a crew task are dead-lettered at once; a node never crashes on them.
//!
//! # Beside tasks
//! A `Pool` on the cluster is the same `Pool` as on one machine: its events
//! (task starts from the nodes, ends from the client, worker events from the
//! nodes), `stats()` (this client's counts; every node's workers, latency
//! histograms and the dead-letter count), messages both ways, `kill_worker`,
//! `cancel_queued` and deadlines. What is not carried yet is in the `engine`
//! module's docs; crew's conformance scenarios run on the cluster
//! (`tests/conformance.rs`).
//!
//! The protocol (names, envelopes, acks, dead letters, what travels beside
//! tasks) is in `protocol.md` beside this file.
//!
//! # Example
//! ```no_run
//! use crew::{Context, Pool, StartError, Worker};
//! use crew_cluster::{Cluster, PoolBuilderExt};
//!
//! struct Double;
//! impl Worker for Double {
//!     type Input = u64;
//!     type Output = u64;
//!     type Error = String;
//!     type Message = ();
//!     fn start(_: &mut Context<'_>) -> Result<Self, StartError> {
//!         Ok(Double)
//!     }
//!     fn run(&mut self, n: u64, _: &mut Context<'_>) -> Result<u64, String> {
//!         Ok(n * 2)
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // A program that is also a node when started with CREW_CLUSTER_URL set.
//!     crew_cluster::bootstrap::<Double>();
//!
//!     let cluster = Cluster::connect("nats://127.0.0.1:4222").pool_name("double");
//!     // A node in this process too (usually one runs on each host instead).
//!     let _node = crew_cluster::Node::start(cluster.clone(), Pool::<Double>::builder().workers(2))?;
//!     let pool = Pool::<Double>::builder().cluster(cluster).build()?;
//!     let task = pool.submit(21)?;
//!     assert_eq!(task.join().expect("a node doubles it"), 42);
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod broker;
mod client;
mod config;
mod engine;
mod envelope;
mod error;
mod node;
pub mod testing;

pub use client::{ClusterClient, ClusterStats, ClusterTask, ClusterTaskBuilder};
pub use config::Cluster;
pub use engine::{ClusterEngine, PoolBuilderExt};
pub use error::{BrokerError, ClusterError, SubmitError};
pub use node::{bootstrap, serve, Node, NodeRow, ENV_POOL, ENV_URL, ENV_WORKERS};
