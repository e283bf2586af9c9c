//! The bytes of a task and of a result on the broker (`protocol.md`, "Envelopes").
//!
//! Every payload starts with a four-byte header: the magic `b"CW"`, the
//! envelope version, and the kind (task or result). The body after it is
//! [`postcard`], as in the process backend: both ends are built from the same
//! worker type, so nothing needs to describe itself. A payload that is short,
//! has another magic, version or kind, or whose body does not decode as the
//! expected type, is a [`BadEnvelope`], never a panic.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The first two bytes of every crew payload.
pub(crate) const MAGIC: [u8; 2] = *b"CW";
/// The envelope version this build writes and reads.
pub(crate) const VERSION: u8 = 1;
/// The header's kind byte for a task.
pub(crate) const KIND_TASK: u8 = 1;
/// The header's kind byte for a result.
pub(crate) const KIND_RESULT: u8 = 2;
const HEADER_LEN: usize = 4;

/// The NATS header that carries a task's id on a task, a result and a dead letter.
pub(crate) const H_TASK: &str = "Crew-Task";
/// The NATS header that names the subject a task's result goes to.
pub(crate) const H_REPLY: &str = "Crew-Reply";
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
    pub(crate) outcome: Outcome<O, E>,
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
            outcome: Outcome::User("bad".into()),
        };
        let bytes = encode_result(&body).unwrap();
        let back: ResultBody<u64, String> = decode_result(&bytes).unwrap();
        assert_eq!(back.task, "abc.1");
        assert_eq!(back.delivery, 2);
        assert_eq!(back.outcome, Outcome::User("bad".into()));
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
