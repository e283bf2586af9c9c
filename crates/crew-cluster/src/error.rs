//! The cluster's errors: why a task did not produce its output
//! ([`ClusterError`]), why a submit was refused ([`SubmitError`]), and why a
//! client or node could not start, or a lookup failed ([`BrokerError`]).
//!
//! Opaque structs with a private kind and `is_*` predicates, as in crew itself.

use std::error::Error as StdError;
use std::fmt;

use crate::envelope::Outcome;

/// Why a cluster task did not produce its output. `E` is the worker's own error.
pub struct ClusterError<E> {
    repr: Repr<E>,
}

enum Repr<E> {
    User(E),
    Failure(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Panicked(String),
    TimedOut,
    Cancelled,
    Killed,
    Crashed(String),
    StartFailed(String),
    Closed,
    Protocol(String),
    DeadLettered { deliveries: u32, reason: String },
}

impl<E> ClusterError<E> {
    pub(crate) fn from_outcome<O>(outcome: Outcome<O, E>) -> Result<O, ClusterError<E>> {
        let failure = match outcome {
            Outcome::Ok(output) => return Ok(output),
            Outcome::User(e) => {
                return Err(ClusterError {
                    repr: Repr::User(e),
                })
            }
            Outcome::Panicked(m) => Failure::Panicked(m),
            Outcome::TimedOut => Failure::TimedOut,
            Outcome::Cancelled => Failure::Cancelled,
            Outcome::Killed => Failure::Killed,
            Outcome::Crashed(m) => Failure::Crashed(m),
            Outcome::StartFailed(m) => Failure::StartFailed(m),
            Outcome::Closed => Failure::Closed,
            Outcome::Protocol(m) => Failure::Protocol(m),
            Outcome::DeadLettered { deliveries, reason } => {
                Failure::DeadLettered { deliveries, reason }
            }
        };
        Err(ClusterError {
            repr: Repr::Failure(failure),
        })
    }

    pub(crate) fn protocol(message: String) -> Self {
        ClusterError {
            repr: Repr::Failure(Failure::Protocol(message)),
        }
    }

    pub(crate) fn cancelled() -> Self {
        ClusterError {
            repr: Repr::Failure(Failure::Cancelled),
        }
    }

    /// The task ran and returned the worker's own error.
    pub fn is_user(&self) -> bool {
        matches!(self.repr, Repr::User(_))
    }

    /// The worker's own error, if that is what the task returned.
    pub fn user_error(&self) -> Option<&E> {
        match &self.repr {
            Repr::User(e) => Some(e),
            Repr::Failure(_) => None,
        }
    }

    /// The worker's own error, or this error back.
    pub fn into_user_error(self) -> Result<E, Self> {
        match self.repr {
            Repr::User(e) => Ok(e),
            repr => Err(ClusterError { repr }),
        }
    }

    /// The task panicked on its node; [`ClusterError::panic_message`] says how.
    pub fn is_panic(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Panicked(_)))
    }

    /// The panic's message, if the task panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.repr {
            Repr::Failure(Failure::Panicked(m)) => Some(m),
            _ => None,
        }
    }

    /// The task ran past its timeout on its node.
    pub fn is_timeout(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::TimedOut))
    }

    /// The task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Cancelled))
    }

    /// The node's worker running the task was killed.
    pub fn is_killed(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Killed))
    }

    /// The node runs its tasks in worker processes, and the one running this
    /// task died (the node itself lived on to say so).
    pub fn is_crash(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Crashed(_)))
    }

    /// No worker could be started on the node to run the task.
    pub fn is_start_failure(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::StartFailed(_)))
    }

    /// The client was closed, or the node's pool shut down, before the task
    /// could run.
    pub fn is_closed(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Closed))
    }

    /// Bytes on the broker that were not what they should be: the task's input
    /// did not decode on the node, or its result did not decode here.
    pub fn is_protocol(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Protocol(_)))
    }

    /// The task was dead-lettered: handed to nodes
    /// [`Cluster::max_attempts`](crate::Cluster::max_attempts) times without a
    /// result (each node died or was cut off under it), or not a task a node
    /// could read. Its message is in the pool's dead-letter stream.
    pub fn is_dead_letter(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::DeadLettered { .. }))
    }

    /// How many times a dead-lettered task was delivered.
    pub fn deliveries(&self) -> Option<u32> {
        match &self.repr {
            Repr::Failure(Failure::DeadLettered { deliveries, .. }) => Some(*deliveries),
            _ => None,
        }
    }
}

impl<E> fmt::Display for ClusterError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Repr::Failure(failure) = &self.repr else {
            return f.write_str("the task returned an error");
        };
        match failure {
            Failure::Panicked(m) => write!(f, "the task panicked: {m}"),
            Failure::TimedOut => f.write_str("the task ran past its timeout"),
            Failure::Cancelled => f.write_str("the task was cancelled"),
            Failure::Killed => f.write_str("the worker running the task was killed"),
            Failure::Crashed(m) => write!(f, "the worker process running the task died: {m}"),
            Failure::StartFailed(m) => write!(f, "no worker could be started on the node: {m}"),
            Failure::Closed => f.write_str("the pool was closed before the task could run"),
            Failure::Protocol(m) => write!(f, "bad bytes on the broker: {m}"),
            Failure::DeadLettered { deliveries, reason } => write!(
                f,
                "the task was dead-lettered after {deliveries} deliveries: {reason}"
            ),
        }
    }
}

impl<E> fmt::Debug for ClusterError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::User(_) => f.write_str("ClusterError::User(..)"),
            Repr::Failure(failure) => write!(f, "ClusterError::{failure:?}"),
        }
    }
}

impl<E: StdError + 'static> StdError for ClusterError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.repr {
            Repr::User(e) => Some(e),
            Repr::Failure(_) => None,
        }
    }
}

/// A refused submit; the input is given back.
pub struct SubmitError<T> {
    input: T,
    kind: SubmitKind,
}

enum SubmitKind {
    Full,
    Closed,
    Broker(String),
    Encode(String),
}

impl<T> SubmitError<T> {
    pub(crate) fn full(input: T) -> Self {
        SubmitError {
            input,
            kind: SubmitKind::Full,
        }
    }

    pub(crate) fn closed(input: T) -> Self {
        SubmitError {
            input,
            kind: SubmitKind::Closed,
        }
    }

    pub(crate) fn broker(input: T, message: String) -> Self {
        SubmitError {
            input,
            kind: SubmitKind::Broker(message),
        }
    }

    pub(crate) fn encode(input: T, message: String) -> Self {
        SubmitError {
            input,
            kind: SubmitKind::Encode(message),
        }
    }

    /// The stream is at its [`Cluster::queue_capacity`](crate::Cluster::queue_capacity).
    pub fn is_full(&self) -> bool {
        matches!(self.kind, SubmitKind::Full)
    }

    /// The client was shut down.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, SubmitKind::Closed)
    }

    /// The broker did not confirm the publish within its timeouts (it is down,
    /// or unreachable). The task may or may not be queued: a submit of the
    /// same input again is a new task.
    pub fn is_broker(&self) -> bool {
        matches!(self.kind, SubmitKind::Broker(_))
    }

    /// The input could not be encoded.
    pub fn is_encode(&self) -> bool {
        matches!(self.kind, SubmitKind::Encode(_))
    }

    /// The input, given back.
    pub fn into_inner(self) -> T {
        self.input
    }
}

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SubmitKind::Full => f.write_str("the cluster queue is full"),
            SubmitKind::Closed => f.write_str("the cluster client is closed"),
            SubmitKind::Broker(m) => write!(f, "the broker did not take the task: {m}"),
            SubmitKind::Encode(m) => write!(f, "the input could not be encoded: {m}"),
        }
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubmitError({self})")
    }
}

impl<T> StdError for SubmitError<T> {}

/// The broker could not be reached or did not answer in time, or the pool's
/// stream, consumer or buckets could not be set up.
#[derive(Debug)]
pub struct BrokerError {
    message: String,
}

impl BrokerError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        BrokerError {
            message: message.into(),
        }
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for BrokerError {}
