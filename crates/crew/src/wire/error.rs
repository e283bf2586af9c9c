//! [`ProtocolError`]: everything that can be wrong with the bytes on a worker's
//! channel.
//!
//! Every kind is final for its connection: after one, the stream cannot be
//! trusted to be on a frame boundary any more. What the receiver does then (kill
//! the worker, replace it) is the process backend's policy; `protocol.md`
//! ("Errors") lists each kind with its cause.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use super::message::{kind_name, Role};
use super::show_bytes;

/// The bytes on a worker's channel broke the wire protocol (see `protocol.md`
/// beside this module for the protocol and what a receiver does on each error).
///
/// Opaque, with `is_*` predicates, so that kinds can be added without breaking
/// callers. `Display` is one sentence.
#[derive(Clone, PartialEq, Eq)]
pub struct ProtocolError {
    repr: Repr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    /// A frame's length field (the raw bytes, when received) or the frame a
    /// sender was asked to encode is above the limit.
    Oversized {
        len: u64,
        limit: u32,
        received: Option<[u8; 4]>,
    },
    /// A length field of 0: not even room for the kind byte.
    EmptyFrame,
    /// The stream ended inside a frame; how many bytes of it had arrived.
    Truncated { buffered: usize },
    /// A frame whose kind byte is not one that `sender` may send.
    UnexpectedKind { kind: u8, sender: Role },
    /// A field, or a length inside the body, runs past the end of the frame.
    Overrun {
        message: &'static str,
        field: &'static str,
        need: u64,
        left: usize,
    },
    /// Bytes left in the body after its last field.
    TrailingBytes { message: &'static str, extra: usize },
    /// A tag byte (an option, an outcome, a role) with no meaning.
    InvalidTag {
        message: &'static str,
        field: &'static str,
        tag: u8,
    },
    /// A string field that is not UTF-8.
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
    },
    /// The handshake failed.
    Handshake(Handshake),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Handshake {
    /// The first frame was not a hello.
    NotHello { kind: u8 },
    /// The hello's first (up to) four bytes, and how many there were.
    BadMagic { got: [u8; 4], len: usize },
    /// The peer speaks another protocol version.
    Version { ours: u16, theirs: u16 },
    /// The hello came from the wrong side.
    Role { expected: Role, got: Role },
    /// The peer's frame limit is below the protocol's minimum.
    LimitTooSmall { got: u32, min: u32 },
}

impl ProtocolError {
    fn new(repr: Repr) -> Self {
        ProtocolError { repr }
    }

    /// A message a sender was asked to encode is over the peer's limit.
    pub(crate) fn oversized(len: u64, limit: u32) -> Self {
        Self::new(Repr::Oversized {
            len,
            limit,
            received: None,
        })
    }

    /// A received length field is over this side's limit.
    pub(crate) fn oversized_received(header: [u8; 4], limit: u32) -> Self {
        Self::new(Repr::Oversized {
            len: u64::from(u32::from_le_bytes(header)),
            limit,
            received: Some(header),
        })
    }

    pub(crate) fn empty_frame() -> Self {
        Self::new(Repr::EmptyFrame)
    }

    pub(crate) fn truncated(buffered: usize) -> Self {
        Self::new(Repr::Truncated { buffered })
    }

    pub(crate) fn unexpected_kind(kind: u8, sender: Role) -> Self {
        Self::new(Repr::UnexpectedKind { kind, sender })
    }

    pub(crate) fn overrun(
        message: &'static str,
        field: &'static str,
        need: u64,
        left: usize,
    ) -> Self {
        Self::new(Repr::Overrun {
            message,
            field,
            need,
            left,
        })
    }

    pub(crate) fn trailing_bytes(message: &'static str, extra: usize) -> Self {
        Self::new(Repr::TrailingBytes { message, extra })
    }

    pub(crate) fn invalid_tag(message: &'static str, field: &'static str, tag: u8) -> Self {
        Self::new(Repr::InvalidTag {
            message,
            field,
            tag,
        })
    }

    pub(crate) fn invalid_utf8(message: &'static str, field: &'static str) -> Self {
        Self::new(Repr::InvalidUtf8 { message, field })
    }

    pub(crate) fn not_hello(kind: u8) -> Self {
        Self::new(Repr::Handshake(Handshake::NotHello { kind }))
    }

    pub(crate) fn bad_magic(bytes: &[u8]) -> Self {
        let mut got = [0; 4];
        let len = bytes.len().min(4);
        got[..len].copy_from_slice(&bytes[..len]);
        Self::new(Repr::Handshake(Handshake::BadMagic { got, len }))
    }

    pub(crate) fn version_mismatch(ours: u16, theirs: u16) -> Self {
        Self::new(Repr::Handshake(Handshake::Version { ours, theirs }))
    }

    pub(crate) fn wrong_role(expected: Role, got: Role) -> Self {
        Self::new(Repr::Handshake(Handshake::Role { expected, got }))
    }

    pub(crate) fn limit_too_small(got: u32, min: u32) -> Self {
        Self::new(Repr::Handshake(Handshake::LimitTooSmall { got, min }))
    }

    /// A frame is longer than the limit: a received length field above the
    /// decoder's limit (refused before anything is allocated for it), or a message
    /// that would not fit under the peer's limit (refused before any of it is
    /// encoded).
    pub fn is_oversized(&self) -> bool {
        matches!(self.repr, Repr::Oversized { .. })
    }

    /// A frame's length field is 0, which leaves no room for its kind byte.
    pub fn is_empty_frame(&self) -> bool {
        matches!(self.repr, Repr::EmptyFrame)
    }

    /// The stream ended in the middle of a frame.
    pub fn is_truncated(&self) -> bool {
        matches!(self.repr, Repr::Truncated { .. })
    }

    /// A frame's kind byte is unknown, or is a kind the sender never sends (a
    /// worker sending a task, a second hello).
    pub fn is_unexpected_kind(&self) -> bool {
        matches!(self.repr, Repr::UnexpectedKind { .. })
    }

    /// A field, or a length inside the body, runs past the end of its frame.
    pub fn is_overrun(&self) -> bool {
        matches!(self.repr, Repr::Overrun { .. })
    }

    /// A frame's body goes on after its last field.
    pub fn is_trailing_bytes(&self) -> bool {
        matches!(self.repr, Repr::TrailingBytes { .. })
    }

    /// A tag byte (an option, a task outcome, a role) has no meaning.
    pub fn is_invalid_tag(&self) -> bool {
        matches!(self.repr, Repr::InvalidTag { .. })
    }

    /// A string field (a panic message, a start error) is not valid UTF-8.
    pub fn is_invalid_utf8(&self) -> bool {
        matches!(self.repr, Repr::InvalidUtf8 { .. })
    }

    /// The handshake failed: the first frame was not a hello, or the hello had the
    /// wrong magic, version or role, or an unusable frame limit.
    pub fn is_handshake(&self) -> bool {
        matches!(self.repr, Repr::Handshake(_))
    }

    /// The handshake failed because the peer speaks another protocol version.
    /// [`ProtocolError::peer_version`] says which.
    pub fn is_version_mismatch(&self) -> bool {
        matches!(self.repr, Repr::Handshake(Handshake::Version { .. }))
    }

    /// The protocol version the peer announced, if that is what failed the
    /// handshake.
    pub fn peer_version(&self) -> Option<u16> {
        match self.repr {
            Repr::Handshake(Handshake::Version { theirs, .. }) => Some(theirs),
            _ => None,
        }
    }
}

impl fmt::Debug for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProtocolError").field(&self.repr).finish()
    }
}

/// `kind 0x10 (task)`, or `unknown kind 0xff`.
struct KindByte(u8);

impl fmt::Display for KindByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match kind_name(self.0) {
            Some(name) => write!(f, "kind {:#04x} ({name})", self.0),
            None => write!(f, "unknown kind {:#04x}", self.0),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            // The raw bytes make a stream of text recognisable (b"Hell" is
            // 1,819,043,144 bytes): the usual cause is something printing to the channel.
            Repr::Oversized {
                len,
                limit,
                received: Some(header),
            } => write!(
                f,
                "a frame's length field {:?} says {len} bytes, over the limit of {limit}",
                show_bytes(header)
            ),
            Repr::Oversized {
                len,
                limit,
                received: None,
            } => write!(
                f,
                "a message of {len} bytes (kind byte and body) is over the peer's limit of {limit}"
            ),
            Repr::EmptyFrame => f.write_str("a frame has length 0, too short for its kind byte"),
            Repr::Truncated { buffered } => write!(
                f,
                "the stream ended inside a frame, {buffered} bytes into it"
            ),
            Repr::UnexpectedKind { kind, sender } => match kind_name(*kind) {
                None => write!(f, "a {sender} sent a frame of unknown kind {kind:#04x}"),
                Some("hello") => write!(
                    f,
                    "a {sender} sent a hello (kind {kind:#04x}) after the handshake"
                ),
                Some(name) => write!(
                    f,
                    "a {sender} sent a `{name}` frame (kind {kind:#04x}), which only a {} sends",
                    sender.other()
                ),
            },
            Repr::Overrun {
                message,
                field,
                need,
                left,
            } => write!(
                f,
                "a `{message}` frame ends inside its `{field}`: the field needs {need} bytes and {left} are left"
            ),
            Repr::TrailingBytes { message, extra } => write!(
                f,
                "a `{message}` frame has {extra} extra byte(s) after its last field"
            ),
            Repr::InvalidTag {
                message,
                field,
                tag,
            } => write!(
                f,
                "a `{message}` frame's `{field}` tag is {tag:#04x}, which means nothing"
            ),
            Repr::InvalidUtf8 { message, field } => {
                write!(f, "a `{message}` frame's `{field}` is not valid UTF-8")
            }
            Repr::Handshake(h) => match h {
                Handshake::NotHello { kind } => write!(
                    f,
                    "handshake failed: the first frame is of {}, not a hello",
                    KindByte(*kind)
                ),
                Handshake::BadMagic { got, len } => write!(
                    f,
                    "handshake failed: the hello starts with {:?} instead of b\"CREW\", so the peer does not speak crew's protocol",
                    show_bytes(&got[..*len])
                ),
                Handshake::Version { ours, theirs } => write!(
                    f,
                    "handshake failed: the peer speaks crew protocol version {theirs} and this side version {ours}"
                ),
                Handshake::Role { expected, got } => write!(
                    f,
                    "handshake failed: expected a hello from a {expected}, got one from a {got}"
                ),
                Handshake::LimitTooSmall { got, min } => write!(
                    f,
                    "handshake failed: the peer accepts frames of at most {got} bytes, below the protocol's minimum of {min}"
                ),
            },
        }
    }
}

impl StdError for ProtocolError {}

impl From<ProtocolError> for io::Error {
    /// An [`io::ErrorKind::InvalidData`] error carrying the protocol error, for read
    /// loops that report everything as `io::Error`.
    fn from(e: ProtocolError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}
