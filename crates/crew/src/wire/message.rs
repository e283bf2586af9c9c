//! The messages: [`Hello`] (the handshake), [`ToWorker`] (parent to worker) and
//! [`ToParent`] (worker to parent), each with its hand-written binary layout.
//!
//! The layouts are specified byte by byte in `protocol.md` ("Messages"); this file
//! is their one implementation, and the section names in comments are that file's.

use std::fmt;

use super::error::ProtocolError;
use super::frame::Frame;
use super::{show_bytes, MAGIC, MIN_FRAME_LIMIT, PROTOCOL_VERSION};

/// The kind bytes. The high nibble says who sends the frame: `0x0_` either side
/// (only the hello), `0x1_` the parent, `0x2_` the worker ("Kinds").
pub(crate) mod kind {
    pub(crate) const HELLO: u8 = 0x01;

    pub(crate) const TASK: u8 = 0x10;
    pub(crate) const CANCEL: u8 = 0x11;
    pub(crate) const TO_WORKER_MESSAGE: u8 = 0x12;
    pub(crate) const SHUTDOWN: u8 = 0x13;
    pub(crate) const SHARED_TASK: u8 = 0x14;
    pub(crate) const CHUNK: u8 = 0x15;

    pub(crate) const READY: u8 = 0x20;
    pub(crate) const START_FAILED: u8 = 0x21;
    pub(crate) const STARTED: u8 = 0x22;
    pub(crate) const DONE: u8 = 0x23;
    pub(crate) const TO_PARENT_MESSAGE: u8 = 0x24;
    pub(crate) const CHUNK_DONE: u8 = 0x25;
    pub(crate) const PROGRESS: u8 = 0x26;
}

/// The name `protocol.md` gives a kind byte, for error messages.
pub(crate) fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        kind::HELLO => "hello",
        kind::TASK => "task",
        kind::CANCEL => "cancel",
        kind::TO_WORKER_MESSAGE => "message to worker",
        kind::SHUTDOWN => "shutdown",
        kind::SHARED_TASK => "shared task",
        kind::CHUNK => "chunk",
        kind::READY => "ready",
        kind::START_FAILED => "start-failed",
        kind::STARTED => "started",
        kind::DONE => "done",
        kind::TO_PARENT_MESSAGE => "message to parent",
        kind::CHUNK_DONE => "chunk done",
        kind::PROGRESS => "progress",
        _ => return None,
    })
}

/// Which end of a worker's channel a [`Hello`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The pool's process, which sends tasks.
    Parent,
    /// A worker process, which runs them.
    Worker,
}

impl Role {
    /// The other side.
    pub(crate) fn other(self) -> Role {
        match self {
            Role::Parent => Role::Worker,
            Role::Worker => Role::Parent,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Role::Parent => 1,
            Role::Worker => 2,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Parent => "parent",
            Role::Worker => "worker",
        })
    }
}

/// The first frame each side sends ("Handshake" in `protocol.md`).
///
/// On the wire it also carries the magic `b"CREW"` and [`PROTOCOL_VERSION`];
/// decoding checks both (and that the frame limit is at least
/// [`MIN_FRAME_LIMIT`]), so a decoded `Hello` always speaks this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Which side sent it.
    pub role: Role,
    /// The sender's process id: a worker started through a launcher is not the
    /// parent's direct child, and a worker can compare the parent's with its own
    /// parent process id to notice that the parent has gone.
    pub pid: u32,
    /// The largest frame the sender accepts (the value of a frame's length field:
    /// kind byte and body). The other side sets its
    /// [`FrameEncoder`](super::FrameEncoder) to it, so that a message too large to
    /// send fails alone, before it is written, instead of killing the connection.
    pub frame_limit: u32,
}

impl Hello {
    /// A hello from this process (`pid` is [`std::process::id`]), announcing
    /// `frame_limit`, raised to [`MIN_FRAME_LIMIT`] if it is below (as
    /// [`FrameDecoder::new`](super::FrameDecoder::new) does).
    pub fn new(role: Role, frame_limit: u32) -> Hello {
        Hello {
            role,
            pid: std::process::id(),
            frame_limit: frame_limit.max(MIN_FRAME_LIMIT),
        }
    }

    /// Checks that this hello came from the `expected` side (a parent expects a
    /// worker's hello, and a worker a parent's).
    pub fn check_role(&self, expected: Role) -> Result<(), ProtocolError> {
        if self.role == expected {
            Ok(())
        } else {
            Err(ProtocolError::wrong_role(expected, self.role))
        }
    }
}

/// What the parent sends a worker after the handshake.
///
/// Not `#[non_exhaustive]`: a new message is a new protocol version, and every
/// receiver must handle every message, which an exhaustive `match` checks.
#[derive(Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// Run a task.
    Task {
        /// The task's id, unique on this connection; every other message about the
        /// task names it.
        id: u64,
        /// The task's sticky key, if it has one.
        key: Option<u64>,
        /// The input, encoded by the backend (opaque here).
        payload: Vec<u8>,
    },
    /// The parent no longer wants task `id`'s result: drop it if it has not
    /// started, or flag it as cancelled if it is running.
    Cancel {
        /// The task.
        id: u64,
    },
    /// A message from the pool to this worker, encoded by the backend.
    Message {
        /// The message (opaque here).
        payload: Vec<u8>,
    },
    /// Finish the tasks already received, stop, and exit. Nothing follows it.
    Shutdown,
    /// Run a task whose input is in the pool's payload arena (shared memory the
    /// worker was given at start), not in the frame.
    SharedTask {
        /// As in [`ToWorker::Task`].
        id: u64,
        /// As in [`ToWorker::Task`].
        key: Option<u64>,
        /// Where the input starts in the arena.
        offset: u64,
        /// The input's length in bytes.
        len: u64,
    },
    /// Run a *chunk*: many inputs, one after the other, answered by one
    /// [`ToParent::ChunkDone`] with every item's outcome (or one
    /// [`ToParent::Done`] with [`Outcome::NotStarted`] if it is cancelled before
    /// it begins).
    Chunk {
        /// The chunk's id, unique on this connection among the tasks and chunks
        /// in flight; *started*, *cancel* and the answer name it.
        id: u64,
        /// The items' inputs, in the order they run.
        items: ChunkItems,
    },
}

/// What a worker sends the parent after the handshake (exhaustive, as
/// [`ToWorker`] is). `PartialEq` but not `Eq`: a *progress* carries an `f32`.
#[derive(Clone, PartialEq)]
pub enum ToParent {
    /// The worker's start (its init) succeeded; it runs tasks from now on.
    Ready,
    /// The worker's start failed; it exits after this frame.
    StartFailed {
        /// The start error's message.
        message: String,
    },
    /// The worker began running task `id`.
    Started {
        /// The task.
        id: u64,
    },
    /// Task `id` is finished: sent exactly once for every task the worker
    /// received, unless the connection dies first.
    Done {
        /// The task.
        id: u64,
        /// How it ended.
        outcome: Outcome,
    },
    /// A message from the worker to the pool, encoded by the backend.
    Message {
        /// The message (opaque here).
        payload: Vec<u8>,
    },
    /// Chunk `id` is finished: one outcome per item, in the chunk's order.
    ChunkDone {
        /// The chunk.
        id: u64,
        /// Nanoseconds the worker spent running the chunk's items (the pool sizes
        /// its next chunks from it).
        run_nanos: u64,
        /// Every item's outcome.
        outcomes: ChunkOutcomes,
    },
    /// How far running task `id` got, as its code reported it: the latest
    /// report only (a worker coalesces the rest). The parent ignores NaN,
    /// clamps other values to `0.0..=1.0`, and ignores a progress for a task
    /// that is not running there (finished, unknown, a chunk): none of that
    /// is a protocol error.
    Progress {
        /// The task.
        id: u64,
        /// The fraction done, 0.0 to 1.0.
        fraction: f32,
    },
}

/// How a task ended, in a [`ToParent::Done`].
#[derive(Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It returned its output (encoded by the backend).
    Ok(Vec<u8>),
    /// It returned the worker's own error (encoded by the backend).
    UserError(Vec<u8>),
    /// It panicked; the panic's message.
    Panicked(String),
    /// It never ran: a [`ToWorker::Cancel`] arrived before it started. No
    /// [`ToParent::Started`] was sent for it, so the parent may run it elsewhere.
    NotStarted,
    /// It ran, and its result (output or error, encoded) was this many bytes:
    /// more than the parent accepts, so it was not sent.
    TooLarge(u64),
}

/// The inputs of a [`ToWorker::Chunk`], kept as they are on the wire: a sequence
/// of `bytes` fields ("chunk" in `protocol.md`). Building one appends to a single
/// buffer, and decoding one keeps the frame's body, so a chunk of thousands of
/// items costs no allocation per item either way.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChunkItems {
    count: u32,
    /// `count` `bytes` fields, back to back.
    bytes: Vec<u8>,
}

impl ChunkItems {
    /// No items.
    pub fn new() -> Self {
        ChunkItems::default()
    }

    /// Appends one item's input.
    pub fn push(&mut self, item: &[u8]) {
        put_bytes(&mut self.bytes, item);
        self.count += 1;
    }

    /// Appends one item whose input `write` appends to the buffer in place; on
    /// an error nothing is added. Returns the item's length.
    #[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
    pub(crate) fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let start = self.bytes.len();
        put_u32(&mut self.bytes, 0);
        if let Err(e) = write(&mut self.bytes) {
            self.bytes.truncate(start);
            return Err(e);
        }
        let len = self.bytes.len() - start - 4;
        self.bytes[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        self.count += 1;
        Ok(len)
    }

    /// Removes the last item, whose input was `len` bytes long.
    #[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
    pub(crate) fn pop_last(&mut self, len: usize) {
        self.bytes
            .truncate(self.bytes.len().saturating_sub(4 + len));
        self.count = self.count.saturating_sub(1);
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True if there is no item.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The items' encoded size on the wire (their `bytes` fields).
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// The items' inputs, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest = self.bytes.as_slice();
        (0..self.count).map_while(move |_| {
            let (item, tail) = split_bytes(rest)?;
            rest = tail;
            Some(item)
        })
    }
}

/// One item's outcome in a [`ChunkOutcomes`]: as [`Outcome`], without
/// *not started* (a chunk is answered as a whole when it never began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome<'a> {
    /// It returned its output (encoded by the backend).
    Ok(&'a [u8]),
    /// It returned the worker's own error (encoded by the backend).
    UserError(&'a [u8]),
    /// It panicked; the panic's message.
    Panicked(&'a str),
    /// Its result was this many bytes encoded, more than the parent accepts.
    TooLarge(u64),
}

impl ItemOutcome<'_> {
    fn tag(&self) -> u8 {
        match self {
            ItemOutcome::Ok(_) => 0,
            ItemOutcome::UserError(_) => 1,
            ItemOutcome::Panicked(_) => 2,
            ItemOutcome::TooLarge(_) => 3,
        }
    }

    /// The bytes this outcome adds to a chunk's answer: its tag and its field.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            ItemOutcome::Ok(b) | ItemOutcome::UserError(b) => 4 + b.len(),
            ItemOutcome::Panicked(m) => 4 + m.len(),
            ItemOutcome::TooLarge(_) => 8,
        }
    }
}

/// The outcomes of a [`ToParent::ChunkDone`], kept as they are on the wire (a
/// tag and a field per item, "chunk done" in `protocol.md`), with a tally of
/// each kind taken as they are written or checked.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChunkOutcomes {
    count: u32,
    /// How many items ended ok, with a user error, with a panic, too large.
    tally: [u32; 4],
    bytes: Vec<u8>,
}

impl ChunkOutcomes {
    /// No outcomes.
    pub fn new() -> Self {
        ChunkOutcomes::default()
    }

    /// Appends the next item's outcome.
    pub fn push(&mut self, outcome: ItemOutcome<'_>) {
        let tag = outcome.tag();
        self.bytes.push(tag);
        match outcome {
            ItemOutcome::Ok(b) | ItemOutcome::UserError(b) => put_bytes(&mut self.bytes, b),
            ItemOutcome::Panicked(m) => put_bytes(&mut self.bytes, m.as_bytes()),
            ItemOutcome::TooLarge(size) => put_u64(&mut self.bytes, size),
        }
        self.tally[tag as usize] += 1;
        self.count += 1;
    }

    /// The number of outcomes.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True if there is none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The outcomes' encoded size on the wire.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// How many items returned their output, the worker's own error, and
    /// panicked, in that order.
    pub fn tally(&self) -> (usize, usize, usize) {
        let [ok, user, panicked, _] = self.tally;
        (ok as usize, user as usize, panicked as usize)
    }

    /// How many items' results were too large to send.
    pub fn too_large(&self) -> usize {
        self.tally[3] as usize
    }

    /// The outcomes, in the chunk's order.
    pub fn iter(&self) -> impl Iterator<Item = ItemOutcome<'_>> + '_ {
        let mut rest = self.bytes.as_slice();
        (0..self.count).map_while(move |_| {
            let (&tag, tail) = rest.split_first()?;
            if tag == 3 {
                let (size, tail) = tail.split_first_chunk::<8>()?;
                rest = tail;
                return Some(ItemOutcome::TooLarge(u64::from_le_bytes(*size)));
            }
            let (field, tail) = split_bytes(tail)?;
            rest = tail;
            Some(match tag {
                0 => ItemOutcome::Ok(field),
                1 => ItemOutcome::UserError(field),
                // Checked when built or decoded.
                _ => ItemOutcome::Panicked(std::str::from_utf8(field).unwrap_or_default()),
            })
        })
    }
}

/// Splits one `bytes` field off the front of `rest`: `None` if it is not whole
/// (never for the checked buffers of [`ChunkItems`] and [`ChunkOutcomes`]).
fn split_bytes(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let field = rest.get(4..4 + len)?;
    Some((field, &rest[4 + len..]))
}

/// A message type of the wire protocol: [`Hello`], [`ToWorker`] or [`ToParent`].
///
/// Sealed: only this module's types implement it. Encoding goes through a
/// [`FrameEncoder`](super::FrameEncoder) (or [`FrameWriter`](super::FrameWriter)),
/// which checks the size against the peer's limit first.
pub trait WireMessage: Sized + sealed::Encode {
    /// The value of this message's length field: its kind byte plus its body.
    fn frame_len(&self) -> u64 {
        1 + self.body_len()
    }

    /// Decodes a message from `frame`, checking every field ("Messages" in
    /// `protocol.md`). The frame's body becomes the message's payload without a
    /// copy where the payload is the last field.
    fn decode(frame: Frame) -> Result<Self, ProtocolError>;
}

pub(crate) mod sealed {
    /// The encoding half of [`WireMessage`](super::WireMessage), out of reach so
    /// that no other type can implement it.
    pub trait Encode {
        /// The frame's kind byte.
        fn kind(&self) -> u8;
        /// The body's length in bytes.
        fn body_len(&self) -> u64;
        /// Appends exactly `body_len()` bytes. Called only after the frame length
        /// was checked against the limit, so every length fits its `u32` field.
        fn write_body(&self, out: &mut Vec<u8>);
    }
}

// ---------------------------------------------------------------------------
// Encoding primitives ("Field types" in protocol.md).

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A `bytes` field: a `u32` length, then the bytes.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // The frame length was checked against a `u32` limit before any body is
    // written, so this cannot truncate.
    debug_assert!(u32::try_from(bytes.len()).is_ok());
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// The encoded length of a `bytes` field holding `len` bytes.
fn bytes_len(len: usize) -> u64 {
    4 + len as u64
}

/// An `option<u64>` field: a tag (`0` none, `1` some), then the value if some.
fn put_option_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
    }
}

/// The encoded length of an `option<u64>` field.
fn option_u64_len(v: Option<u64>) -> u64 {
    if v.is_some() {
        9
    } else {
        1
    }
}

// ---------------------------------------------------------------------------
// Decoding: a cursor over one body that turns every shortfall into an error.

/// Reads the fields of one frame's body in order. Every read is bounds-checked;
/// nothing here can panic or allocate on the body's say-so.
struct Fields<'a> {
    message: &'static str,
    body: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(message: &'static str, body: &'a [u8]) -> Self {
        Fields {
            message,
            body,
            pos: 0,
        }
    }

    fn left(&self) -> usize {
        self.body.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let left = self.left();
        match usize::try_from(n) {
            // `pos + n <= body.len()`, so neither the sum nor the slice can fail.
            Ok(n) if n <= left => {
                let slice = self.body.get(self.pos..self.pos + n).unwrap_or_default();
                self.pos += n;
                Ok(slice)
            }
            _ => Err(ProtocolError::overrun(self.message, field, n, left)),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// An `option<u64>`: tag `0` (none) or `1` then the value; any other tag is
    /// an error.
    fn option_u64(&mut self, field: &'static str) -> Result<Option<u64>, ProtocolError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.u64(field).map(Some),
            tag => Err(ProtocolError::invalid_tag(self.message, field, tag)),
        }
    }

    /// The length of a `bytes` field that must be the body's last: checks that it
    /// ends exactly where the body does and returns where its bytes start.
    fn last_bytes(&mut self, field: &'static str) -> Result<usize, ProtocolError> {
        let len = self.u32(field)?;
        let left = self.left();
        let start = self.pos;
        self.take(u64::from(len), field)?;
        self.end()?;
        debug_assert_eq!(left, len as usize);
        Ok(start)
    }

    /// Checks that nothing follows the last field.
    fn end(&self) -> Result<(), ProtocolError> {
        match self.left() {
            0 => Ok(()),
            extra => Err(ProtocolError::trailing_bytes(self.message, extra)),
        }
    }
}

/// The body from `start` on, in the body's own allocation (a move of the bytes,
/// not a new allocation).
fn tail(mut body: Vec<u8>, start: usize) -> Vec<u8> {
    body.drain(..start.min(body.len()));
    body
}

fn tail_string(
    body: Vec<u8>,
    start: usize,
    message: &'static str,
    field: &'static str,
) -> Result<String, ProtocolError> {
    String::from_utf8(tail(body, start)).map_err(|_| ProtocolError::invalid_utf8(message, field))
}

// ---------------------------------------------------------------------------
// Hello ("Handshake" in protocol.md).

/// magic, version, role, pid, frame limit.
const HELLO_BODY_LEN: u64 = 4 + 2 + 1 + 4 + 4;

impl sealed::Encode for Hello {
    fn kind(&self) -> u8 {
        kind::HELLO
    }

    fn body_len(&self) -> u64 {
        HELLO_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out.push(self.role.tag());
        put_u32(out, self.pid);
        put_u32(out, self.frame_limit);
    }
}

impl WireMessage for Hello {
    fn decode(frame: Frame) -> Result<Self, ProtocolError> {
        if frame.kind != kind::HELLO {
            return Err(ProtocolError::not_hello(frame.kind));
        }
        // Magic and version first, and nothing else until both match: a peer of
        // another version may lay out the rest differently ("Versions").
        let magic = frame.body.get(..4).unwrap_or(&frame.body);
        if magic != MAGIC {
            return Err(ProtocolError::bad_magic(magic));
        }
        let mut f = Fields::new("hello", &frame.body);
        f.take(4, "magic")?;
        let version = f.u16("version")?;
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::version_mismatch(PROTOCOL_VERSION, version));
        }
        let role = match f.u8("role")? {
            1 => Role::Parent,
            2 => Role::Worker,
            tag => return Err(ProtocolError::invalid_tag("hello", "role", tag)),
        };
        let pid = f.u32("pid")?;
        let frame_limit = f.u32("frame limit")?;
        f.end()?;
        if frame_limit < MIN_FRAME_LIMIT {
            return Err(ProtocolError::limit_too_small(frame_limit, MIN_FRAME_LIMIT));
        }
        Ok(Hello {
            role,
            pid,
            frame_limit,
        })
    }
}

// ---------------------------------------------------------------------------
// Parent to worker ("Parent to worker" in protocol.md).

impl sealed::Encode for ToWorker {
    fn kind(&self) -> u8 {
        match self {
            ToWorker::Task { .. } => kind::TASK,
            ToWorker::Cancel { .. } => kind::CANCEL,
            ToWorker::Message { .. } => kind::TO_WORKER_MESSAGE,
            ToWorker::Shutdown => kind::SHUTDOWN,
            ToWorker::SharedTask { .. } => kind::SHARED_TASK,
            ToWorker::Chunk { .. } => kind::CHUNK,
        }
    }

    fn body_len(&self) -> u64 {
        match self {
            ToWorker::Task { key, payload, .. } => {
                8 + option_u64_len(*key) + bytes_len(payload.len())
            }
            ToWorker::Cancel { .. } => 8,
            ToWorker::Message { payload } => bytes_len(payload.len()),
            ToWorker::Shutdown => 0,
            ToWorker::SharedTask { key, .. } => 8 + option_u64_len(*key) + 16,
            ToWorker::Chunk { items, .. } => chunk_body_len(items),
        }
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        match self {
            ToWorker::Task { id, key, payload } => {
                put_u64(out, *id);
                put_option_u64(out, *key);
                put_bytes(out, payload);
            }
            ToWorker::Cancel { id } => put_u64(out, *id),
            ToWorker::Message { payload } => put_bytes(out, payload),
            ToWorker::Shutdown => {}
            ToWorker::SharedTask {
                id,
                key,
                offset,
                len,
            } => {
                put_u64(out, *id);
                put_option_u64(out, *key);
                put_u64(out, *offset);
                put_u64(out, *len);
            }
            ToWorker::Chunk { id, items } => write_chunk_body(out, *id, items),
        }
    }
}

/// id, count, items.
fn chunk_body_len(items: &ChunkItems) -> u64 {
    8 + 4 + items.bytes.len() as u64
}

fn write_chunk_body(out: &mut Vec<u8>, id: u64, items: &ChunkItems) {
    put_u64(out, id);
    put_u32(out, items.count);
    out.extend_from_slice(&items.bytes);
}

/// A *chunk* frame over borrowed items: the process backend keeps a chunk's
/// inputs until it resolves (a crash re-runs its items one by one), so it
/// encodes the frame without cloning them.
#[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
pub(crate) struct ChunkFrame<'a> {
    pub(crate) id: u64,
    pub(crate) items: &'a ChunkItems,
}

impl sealed::Encode for ChunkFrame<'_> {
    fn kind(&self) -> u8 {
        kind::CHUNK
    }

    fn body_len(&self) -> u64 {
        chunk_body_len(self.items)
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        write_chunk_body(out, self.id, self.items);
    }
}

/// A *task* frame over a borrowed payload: the process backend keeps a task's
/// encoded input until the task resolves (it may be sent again after a crash),
/// so it encodes the frame without cloning it.
#[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
pub(crate) struct TaskFrame<'a> {
    pub(crate) id: u64,
    pub(crate) key: Option<u64>,
    pub(crate) payload: &'a [u8],
}

impl sealed::Encode for TaskFrame<'_> {
    fn kind(&self) -> u8 {
        kind::TASK
    }

    fn body_len(&self) -> u64 {
        8 + option_u64_len(self.key) + bytes_len(self.payload.len())
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        put_u64(out, self.id);
        put_option_u64(out, self.key);
        put_bytes(out, self.payload);
    }
}

impl WireMessage for ToWorker {
    fn decode(frame: Frame) -> Result<Self, ProtocolError> {
        match frame.kind {
            kind::TASK => {
                let mut f = Fields::new("task", &frame.body);
                let id = f.u64("id")?;
                let key = f.option_u64("key")?;
                let start = f.last_bytes("payload")?;
                Ok(ToWorker::Task {
                    id,
                    key,
                    payload: tail(frame.body, start),
                })
            }
            kind::CANCEL => {
                let mut f = Fields::new("cancel", &frame.body);
                let id = f.u64("id")?;
                f.end()?;
                Ok(ToWorker::Cancel { id })
            }
            kind::TO_WORKER_MESSAGE => {
                let start = Fields::new("message to worker", &frame.body).last_bytes("payload")?;
                Ok(ToWorker::Message {
                    payload: tail(frame.body, start),
                })
            }
            kind::SHUTDOWN => {
                Fields::new("shutdown", &frame.body).end()?;
                Ok(ToWorker::Shutdown)
            }
            kind::SHARED_TASK => {
                let mut f = Fields::new("shared task", &frame.body);
                let id = f.u64("id")?;
                let key = f.option_u64("key")?;
                let offset = f.u64("offset")?;
                let len = f.u64("len")?;
                f.end()?;
                Ok(ToWorker::SharedTask {
                    id,
                    key,
                    offset,
                    len,
                })
            }
            kind::CHUNK => {
                let mut f = Fields::new("chunk", &frame.body);
                let id = f.u64("id")?;
                let count = f.u32("count")?;
                let start = f.pos;
                // Every item is checked here, so iterating never meets a short
                // field. Each costs at least its 4 length bytes, so a huge
                // `count` ends in an overrun after as many steps as the body has.
                for _ in 0..count {
                    let len = f.u32("item")?;
                    f.take(u64::from(len), "item")?;
                }
                f.end()?;
                Ok(ToWorker::Chunk {
                    id,
                    items: ChunkItems {
                        count,
                        bytes: tail(frame.body, start),
                    },
                })
            }
            other => Err(ProtocolError::unexpected_kind(other, Role::Parent)),
        }
    }
}

// ---------------------------------------------------------------------------
// Worker to parent ("Worker to parent" in protocol.md).

impl Outcome {
    fn tag(&self) -> u8 {
        match self {
            Outcome::Ok(_) => 0,
            Outcome::UserError(_) => 1,
            Outcome::Panicked(_) => 2,
            Outcome::NotStarted => 3,
            Outcome::TooLarge(_) => 4,
        }
    }
}

impl sealed::Encode for ToParent {
    fn kind(&self) -> u8 {
        match self {
            ToParent::Ready => kind::READY,
            ToParent::StartFailed { .. } => kind::START_FAILED,
            ToParent::Started { .. } => kind::STARTED,
            ToParent::Done { .. } => kind::DONE,
            ToParent::Message { .. } => kind::TO_PARENT_MESSAGE,
            ToParent::ChunkDone { .. } => kind::CHUNK_DONE,
            ToParent::Progress { .. } => kind::PROGRESS,
        }
    }

    fn body_len(&self) -> u64 {
        match self {
            ToParent::Ready => 0,
            ToParent::StartFailed { message } => bytes_len(message.len()),
            ToParent::Started { .. } => 8,
            ToParent::Done { outcome, .. } => {
                8 + 1
                    + match outcome {
                        Outcome::Ok(p) | Outcome::UserError(p) => bytes_len(p.len()),
                        Outcome::Panicked(m) => bytes_len(m.len()),
                        Outcome::NotStarted => 0,
                        Outcome::TooLarge(_) => 8,
                    }
            }
            ToParent::Message { payload } => bytes_len(payload.len()),
            ToParent::ChunkDone { outcomes, .. } => 8 + 8 + 4 + outcomes.bytes.len() as u64,
            ToParent::Progress { .. } => 8 + 4,
        }
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        match self {
            ToParent::Ready => {}
            ToParent::StartFailed { message } => put_bytes(out, message.as_bytes()),
            ToParent::Started { id } => put_u64(out, *id),
            ToParent::Done { id, outcome } => {
                put_u64(out, *id);
                out.push(outcome.tag());
                match outcome {
                    Outcome::Ok(p) | Outcome::UserError(p) => put_bytes(out, p),
                    Outcome::Panicked(m) => put_bytes(out, m.as_bytes()),
                    Outcome::NotStarted => {}
                    Outcome::TooLarge(size) => put_u64(out, *size),
                }
            }
            ToParent::Message { payload } => put_bytes(out, payload),
            ToParent::ChunkDone {
                id,
                run_nanos,
                outcomes,
            } => {
                put_u64(out, *id);
                put_u64(out, *run_nanos);
                put_u32(out, outcomes.count);
                out.extend_from_slice(&outcomes.bytes);
            }
            ToParent::Progress { id, fraction } => {
                put_u64(out, *id);
                put_u32(out, fraction.to_bits());
            }
        }
    }
}

impl WireMessage for ToParent {
    fn decode(frame: Frame) -> Result<Self, ProtocolError> {
        match frame.kind {
            kind::READY => {
                Fields::new("ready", &frame.body).end()?;
                Ok(ToParent::Ready)
            }
            kind::START_FAILED => {
                let start = Fields::new("start-failed", &frame.body).last_bytes("message")?;
                let message = tail_string(frame.body, start, "start-failed", "message")?;
                Ok(ToParent::StartFailed { message })
            }
            kind::STARTED => {
                let mut f = Fields::new("started", &frame.body);
                let id = f.u64("id")?;
                f.end()?;
                Ok(ToParent::Started { id })
            }
            kind::DONE => {
                let mut f = Fields::new("done", &frame.body);
                let id = f.u64("id")?;
                let outcome = match f.u8("outcome")? {
                    0 => {
                        let start = f.last_bytes("output")?;
                        Outcome::Ok(tail(frame.body, start))
                    }
                    1 => {
                        let start = f.last_bytes("error")?;
                        Outcome::UserError(tail(frame.body, start))
                    }
                    2 => {
                        let start = f.last_bytes("panic message")?;
                        Outcome::Panicked(tail_string(frame.body, start, "done", "panic message")?)
                    }
                    3 => {
                        f.end()?;
                        Outcome::NotStarted
                    }
                    4 => {
                        let size = f.u64("size")?;
                        f.end()?;
                        Outcome::TooLarge(size)
                    }
                    tag => return Err(ProtocolError::invalid_tag("done", "outcome", tag)),
                };
                Ok(ToParent::Done { id, outcome })
            }
            kind::TO_PARENT_MESSAGE => {
                let start = Fields::new("message to parent", &frame.body).last_bytes("payload")?;
                Ok(ToParent::Message {
                    payload: tail(frame.body, start),
                })
            }
            kind::CHUNK_DONE => {
                let mut f = Fields::new("chunk done", &frame.body);
                let id = f.u64("id")?;
                let run_nanos = f.u64("run time")?;
                let count = f.u32("count")?;
                let start = f.pos;
                let mut tally = [0u32; 4];
                for _ in 0..count {
                    let tag = f.u8("outcome")?;
                    if tag > 3 {
                        return Err(ProtocolError::invalid_tag("chunk done", "outcome", tag));
                    }
                    tally[usize::from(tag)] += 1;
                    if tag == 3 {
                        f.u64("size")?;
                        continue;
                    }
                    let len = f.u32("outcome")?;
                    let field = f.take(u64::from(len), "outcome")?;
                    if tag == 2 && std::str::from_utf8(field).is_err() {
                        return Err(ProtocolError::invalid_utf8("chunk done", "panic message"));
                    }
                }
                f.end()?;
                Ok(ToParent::ChunkDone {
                    id,
                    run_nanos,
                    outcomes: ChunkOutcomes {
                        count,
                        tally,
                        bytes: tail(frame.body, start),
                    },
                })
            }
            kind::PROGRESS => {
                let mut f = Fields::new("progress", &frame.body);
                let id = f.u64("id")?;
                // Any bits decode: what a NaN or an out-of-range value means
                // is the receiver's policy, not a framing error.
                let fraction = f32::from_bits(f.u32("fraction")?);
                f.end()?;
                Ok(ToParent::Progress { id, fraction })
            }
            other => Err(ProtocolError::unexpected_kind(other, Role::Worker)),
        }
    }
}

// ---------------------------------------------------------------------------
// Debug: payloads can be megabytes, so they print as their length and a prefix.

impl fmt::Debug for ToWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToWorker::Task { id, key, payload } => f
                .debug_struct("Task")
                .field("id", id)
                .field("key", key)
                .field("payload", &show_bytes(payload))
                .finish(),
            ToWorker::Cancel { id } => f.debug_struct("Cancel").field("id", id).finish(),
            ToWorker::Message { payload } => f
                .debug_struct("Message")
                .field("payload", &show_bytes(payload))
                .finish(),
            ToWorker::Shutdown => f.write_str("Shutdown"),
            ToWorker::SharedTask {
                id,
                key,
                offset,
                len,
            } => f
                .debug_struct("SharedTask")
                .field("id", id)
                .field("key", key)
                .field("offset", offset)
                .field("len", len)
                .finish(),
            ToWorker::Chunk { id, items } => f
                .debug_struct("Chunk")
                .field("id", id)
                .field("items", items)
                .finish(),
        }
    }
}

impl fmt::Debug for ToParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToParent::Ready => f.write_str("Ready"),
            ToParent::StartFailed { message } => f
                .debug_struct("StartFailed")
                .field("message", message)
                .finish(),
            ToParent::Started { id } => f.debug_struct("Started").field("id", id).finish(),
            ToParent::Done { id, outcome } => f
                .debug_struct("Done")
                .field("id", id)
                .field("outcome", outcome)
                .finish(),
            ToParent::Message { payload } => f
                .debug_struct("Message")
                .field("payload", &show_bytes(payload))
                .finish(),
            ToParent::ChunkDone {
                id,
                run_nanos,
                outcomes,
            } => f
                .debug_struct("ChunkDone")
                .field("id", id)
                .field("run_nanos", run_nanos)
                .field("outcomes", outcomes)
                .finish(),
            ToParent::Progress { id, fraction } => f
                .debug_struct("Progress")
                .field("id", id)
                .field("fraction", fraction)
                .finish(),
        }
    }
}

impl fmt::Debug for ChunkItems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkItems")
            .field("count", &self.count)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl fmt::Debug for ChunkOutcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ok, user_error, panicked) = self.tally();
        f.debug_struct("ChunkOutcomes")
            .field("ok", &ok)
            .field("user_error", &user_error)
            .field("panicked", &panicked)
            .field("too_large", &self.too_large())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(p) => f.debug_tuple("Ok").field(&show_bytes(p)).finish(),
            Outcome::UserError(p) => f.debug_tuple("UserError").field(&show_bytes(p)).finish(),
            Outcome::Panicked(m) => f.debug_tuple("Panicked").field(m).finish(),
            Outcome::NotStarted => f.write_str("NotStarted"),
            Outcome::TooLarge(size) => f.debug_tuple("TooLarge").field(size).finish(),
        }
    }
}
