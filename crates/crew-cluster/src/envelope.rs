//! The bytes of a task and of a result on the broker (`protocol.md`, "Envelopes").
//!
//! Every payload starts with a four-byte header: the magic `b"CW"`, the
//! envelope version, and the kind (a task, a result, or one of the notices
//! beside them: a task's start and progress, a node's worker event, a node's
//! report, a control message and its answer, a worker's message). The body after it is
//! [`postcard`], as in the process backend: both ends are built from the same
//! worker type, so nothing needs to describe itself. A payload that is short,
//! has another magic, version or kind, or whose body does not decode as the
//! expected type, is a [`BadEnvelope`], never a panic.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The first two bytes of every crew payload.
pub(crate) const MAGIC: [u8; 2] = *b"CW";
/// The envelope version this build writes and reads: 2 added the result's
/// worker and run time, and the kinds after the result.
pub(crate) const VERSION: u8 = 2;
/// The header's kind byte for a task.
pub(crate) const KIND_TASK: u8 = 1;
/// The header's kind byte for a result.
pub(crate) const KIND_RESULT: u8 = 2;
/// A task started on a node ([`StartedBody`]), to the task's client.
pub(crate) const KIND_STARTED: u8 = 3;
/// A node's worker started, restarted, failed to start or exited
/// ([`NodeEventBody`]), on the pool's events subject.
pub(crate) const KIND_NODE_EVENT: u8 = 4;
/// A node's answer to a stats request (`node::relay::Report`).
pub(crate) const KIND_REPORT: u8 = 5;
/// A client's message to nodes ([`Control`]).
pub(crate) const KIND_CONTROL: u8 = 6;
/// A node's answer to a kill ([`Killed`]).
pub(crate) const KIND_KILLED: u8 = 7;
/// A message from a worker to the pool ([`WorkerMessage`]).
pub(crate) const KIND_MESSAGE: u8 = 8;
/// A running task's progress ([`ProgressBody`]), to the task's client.
pub(crate) const KIND_PROGRESS: u8 = 9;
/// The offset of the kind byte.
pub(crate) const KIND_AT: usize = 3;
const HEADER_LEN: usize = 4;

/// The NATS header that carries a task's id on a task, a result and a dead letter.
pub(crate) const H_TASK: &str = "Crew-Task";
/// The NATS header that names the subject a task's result goes to.
pub(crate) const H_REPLY: &str = "Crew-Reply";
/// The NATS header on a task whose client wants its start and its progress
/// told ([`StartedBody`], [`ProgressBody`]); its value is `started`.
pub(crate) const H_NOTIFY: &str = "Crew-Notify";
/// The NATS header that says why a message was dead-lettered.
pub(crate) const H_DEAD_REASON: &str = "Crew-Dead-Reason";
/// The NATS header that says how many times a dead letter was delivered.
pub(crate) const H_DELIVERIES: &str = "Crew-Deliveries";

/// Why bytes on the broker are not a crew envelope of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadEnvelope(pub(crate) String);

impl std::fmt::Display for BadEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task's body: its per-task options and the worker's input.
#[derive(Serialize, Deserialize)]
pub(crate) struct TaskBody<I> {
    /// The task's own timeout, in milliseconds; `None` keeps the node pool's.
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) input: I,
}

/// A result's body: which task, where it ran, and how it ended.
#[derive(Serialize, Deserialize)]
pub(crate) struct ResultBody<O, E> {
    pub(crate) task: String,
    /// The node that produced it (empty for a dead letter with no node to name).
    pub(crate) node: String,
    /// The delivery that ran it (1 = first).
    pub(crate) delivery: u32,
    /// The node's local worker that ran it (0: none, as for a dead letter).
    pub(crate) worker: u64,
    /// How long it ran there, in microseconds.
    pub(crate) ran_micros: u64,
    pub(crate) outcome: Outcome<O, E>,
}

/// A task started: sent by its node to the task's client (its `Crew-Reply`
/// subject, the inbox its result comes to) when the task asked for it
/// ([`H_NOTIFY`]). Core NATS: a lost one costs only the event's timing (the
/// result names the worker too).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct StartedBody {
    pub(crate) task: String,
    pub(crate) node: String,
    /// The node's local worker that runs it.
    pub(crate) worker: u64,
}

/// A running task's progress report (`Context::progress`, already clamped
/// to `0.0..=1.0`): sent by its node to the task's client, like
/// [`StartedBody`], each time it changes, the last one before the result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct ProgressBody {
    pub(crate) task: String,
    pub(crate) fraction: f32,
}

/// A node's worker event, on the pool's events subject.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeEventBody {
    pub(crate) node: String,
    /// The node's local worker.
    pub(crate) worker: u64,
    pub(crate) event: NodeEvent,
}

/// What happened to a node's worker (crew's worker events).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeEvent {
    Started,
    StartFailed {
        message: String,
        consecutive: u32,
    },
    Restarted {
        reason: String,
    },
    /// `crew::ExitReason`, by name (`shutdown`, `killed`, …).
    Exited {
        reason: String,
    },
}

/// A client's message to the nodes: on the pool's control subject (every
/// node) or one node's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// A `W::Message` (postcard) for every worker; with `sticky`, also for
    /// every worker the node starts later.
    Broadcast { sticky: bool, message: Vec<u8> },
    /// A `W::Message` (postcard) for one of the node's workers.
    SendTo { worker: u64, message: Vec<u8> },
    /// Kill one of the node's workers (a request: the node answers [`Killed`]).
    Kill { worker: u64 },
}

/// A node's answer to [`Control::Kill`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Killed {
    /// Whether the worker was there and was killed.
    pub(crate) killed: bool,
    /// The cluster task it was running, if any.
    pub(crate) task: Option<String>,
}

/// A message a worker sent to its pool (`Context::send`), on the pool's
/// messages subject.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerMessage {
    pub(crate) node: String,
    pub(crate) worker: u64,
    /// The `W::Message`, postcard.
    pub(crate) message: Vec<u8>,
}

/// How a task ended, as it crosses the broker. Mirrors the kinds of
/// `crew::TaskError` a node's local pool reports, plus the cluster's own.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum Outcome<O, E> {
    Ok(O),
    User(E),
    Panicked(String),
    TimedOut,
    Cancelled,
    Killed,
    Crashed(String),
    StartFailed(String),
    /// The node's local pool was closed under the task.
    Closed,
    /// Bytes that were not a valid task, or a result that could not be encoded.
    Protocol(String),
    /// Dead-lettered: delivered too many times, or not a task at all.
    DeadLettered {
        deliveries: u32,
        reason: String,
    },
}

fn header(kind: u8) -> Vec<u8> {
    vec![MAGIC[0], MAGIC[1], VERSION, kind]
}

/// Encodes a task's envelope.
pub(crate) fn encode_task<I: Serialize>(body: &TaskBody<I>) -> Result<Vec<u8>, postcard::Error> {
    let mut out = header(KIND_TASK);
    postcard::to_io(body, &mut out)?;
    Ok(out)
}

/// Encodes a result's envelope.
pub(crate) fn encode_result<O: Serialize, E: Serialize>(
    body: &ResultBody<O, E>,
) -> Result<Vec<u8>, postcard::Error> {
    let mut out = header(KIND_RESULT);
    postcard::to_io(body, &mut out)?;
    Ok(out)
}

/// Encodes a payload of `kind` (one of the notices after the result).
pub(crate) fn encode_kind<T: Serialize>(kind: u8, body: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = header(kind);
    postcard::to_io(body, &mut out)?;
    Ok(out)
}

/// Decodes a payload of `kind`; `what` names it in the error.
pub(crate) fn decode_kind<T: DeserializeOwned>(
    bytes: &[u8],
    kind: u8,
    what: &str,
) -> Result<T, BadEnvelope> {
    decode(bytes, kind, what)
}

/// Decodes a task's envelope.
pub(crate) fn decode_task<I: DeserializeOwned>(bytes: &[u8]) -> Result<TaskBody<I>, BadEnvelope> {
    decode(bytes, KIND_TASK, "task")
}

/// Decodes a result's envelope.
pub(crate) fn decode_result<O: DeserializeOwned, E: DeserializeOwned>(
    bytes: &[u8],
) -> Result<ResultBody<O, E>, BadEnvelope> {
    decode(bytes, KIND_RESULT, "result")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], kind: u8, what: &str) -> Result<T, BadEnvelope> {
    let Some((head, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(BadEnvelope(format!(
            "a {what} envelope of {} bytes is shorter than its {HEADER_LEN}-byte header",
            bytes.len()
        )));
    };
    if head[..2] != MAGIC {
        return Err(BadEnvelope(format!(
            "not a crew {what}: it starts with {:02x?}, not {MAGIC:02x?}",
            &head[..2]
        )));
    }
    if head[2] != VERSION {
        return Err(BadEnvelope(format!(
            "a {what} envelope of version {}; this build reads version {VERSION}",
            head[2]
        )));
    }
    if head[3] != kind {
        return Err(BadEnvelope(format!(
            "expected a {what} envelope (kind {kind}), got kind {}",
            head[3]
        )));
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(BadEnvelope(format!(
            "a {what} body with {} bytes left over",
            rest.len()
        ))),
        Err(e) => Err(BadEnvelope(format!(
            "a {what} body that does not decode: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_round_trips() {
        let body = TaskBody {
            timeout_ms: Some(250),
            input: (7u32, String::from("seven")),
        };
        let bytes = encode_task(&body).unwrap();
        let back: TaskBody<(u32, String)> = decode_task(&bytes).unwrap();
        assert_eq!(back.timeout_ms, Some(250));
        assert_eq!(back.input, (7, "seven".to_owned()));
    }

    #[test]
    fn result_round_trips() {
        let body: ResultBody<u64, String> = ResultBody {
            task: "abc.1".into(),
            node: "n1".into(),
            delivery: 2,
            worker: 3,
            ran_micros: 1500,
            outcome: Outcome::User("bad".into()),
        };
        let bytes = encode_result(&body).unwrap();
        let back: ResultBody<u64, String> = decode_result(&bytes).unwrap();
        assert_eq!(back.task, "abc.1");
        assert_eq!((back.delivery, back.worker, back.ran_micros), (2, 3, 1500));
        assert_eq!(back.outcome, Outcome::User("bad".into()));
    }

    #[test]
    fn notices_round_trip_and_keep_their_kind() {
        let started = StartedBody {
            task: "abc.2".into(),
            node: "n1".into(),
            worker: 4,
        };
        let bytes = encode_kind(KIND_STARTED, &started).unwrap();
        assert_eq!(bytes[KIND_AT], KIND_STARTED);
        let back: StartedBody = decode_kind(&bytes, KIND_STARTED, "started").unwrap();
        assert_eq!(back, started);
        assert!(decode_kind::<StartedBody>(&bytes, KIND_RESULT, "result").is_err());
        let control = Control::SendTo {
            worker: 2,
            message: vec![1, 2, 3],
        };
        let bytes = encode_kind(KIND_CONTROL, &control).unwrap();
        assert_eq!(
            decode_kind::<Control>(&bytes, KIND_CONTROL, "control").unwrap(),
            control
        );
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        let good = encode_task(&TaskBody {
            timeout_ms: None,
            input: 5u64,
        })
        .unwrap();
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"CW".to_vec(),
            b"hello world".to_vec(),
            vec![b'C', b'W', VERSION + 1, KIND_TASK, 0, 5],
            vec![b'C', b'W', VERSION, KIND_RESULT, 0, 5],
            good[..good.len() - 1].to_vec(),
            [good.as_slice(), &[1, 2, 3]].concat(),
        ];
        for bytes in cases {
            assert!(
                decode_task::<u64>(&bytes).is_err(),
                "{bytes:?} decoded as a task"
            );
        }
        assert_eq!(decode_task::<u64>(&good).unwrap().input, 5);
    }
}
