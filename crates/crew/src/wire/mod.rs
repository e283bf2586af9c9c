//! The wire protocol the process backend speaks between the pool's process (the
//! *parent*) and each worker process, over one private byte stream per worker.
//!
//! **Not covered by semver.** This module is public for crew's own tests and is
//! hidden from the documentation: its Rust types change with the process
//! backend in any release. What stays put is the protocol that `protocol.md`
//! specifies, versioned by the handshake's `PROTOCOL_VERSION`.
//!
//! The protocol itself, byte by byte, with the reasons behind each choice and
//! what a receiver does on each error, is specified in `protocol.md` beside this
//! module, precisely enough to write a worker in another language. This module
//! is its implementation, in three layers:
//!
//! - **Frames** ([`Frame`]): `len: u32 LE | kind: u8 | body`. The
//!   [`FrameDecoder`] splits a stream into frames whatever pieces it arrives in,
//!   refuses a length above its limit before allocating anything, and never
//!   panics. The [`FrameEncoder`] appends frames to one reusable buffer, so a
//!   batch of them goes out in one write; [`FrameWriter`] puts one in front of an
//!   `io::Write`.
//! - **Handshake** ([`Hello`]): the first frame each way, carrying the magic
//!   `b"CREW"`, the [`PROTOCOL_VERSION`], the sender's [`Role`] and pid, and the
//!   largest frame the sender accepts.
//! - **Messages** ([`ToWorker`], [`ToParent`]): the envelope around tasks, their
//!   outcomes, cancellations and user messages. Payloads are opaque bytes here;
//!   the backend puts the user's serde-encoded values in them.
//!
//! Every way the bytes can be wrong is a [`ProtocolError`], and every one is
//! final for its connection. The module holds no `unsafe` code.
//!
//! # Example: both ends of a channel
//!
//! ```
//! use crew::wire::{
//!     FrameDecoder, FrameWriter, Hello, Outcome, Role, ToParent, ToWorker, WireMessage,
//!     DEFAULT_FRAME_LIMIT,
//! };
//!
//! // The parent greets and sends a task, in one batch.
//! let mut parent = FrameWriter::new(Vec::new(), DEFAULT_FRAME_LIMIT);
//! parent.send(&Hello::new(Role::Parent, DEFAULT_FRAME_LIMIT))?;
//! parent.send(&ToWorker::Task { id: 1, key: None, payload: b"input".to_vec() })?;
//! parent.flush()?;
//!
//! // The worker reads the hello first, then messages.
//! let mut from_parent = FrameDecoder::new(DEFAULT_FRAME_LIMIT);
//! from_parent.feed(parent.get_ref());
//! let hello: Hello = from_parent.next_message()?.expect("a whole hello");
//! hello.check_role(Role::Parent)?;
//! let mut worker = FrameWriter::new(Vec::new(), hello.frame_limit);
//! worker.send(&Hello::new(Role::Worker, DEFAULT_FRAME_LIMIT))?;
//! worker.send(&ToParent::Ready)?;
//! while let Some(message) = from_parent.next_message::<ToWorker>()? {
//!     if let ToWorker::Task { id, payload, .. } = message {
//!         worker.send(&ToParent::Started { id })?;
//!         let output = payload.to_ascii_uppercase();
//!         worker.send(&ToParent::Done { id, outcome: Outcome::Ok(output) })?;
//!     }
//! }
//! worker.flush()?;
//!
//! // The parent reads the answers.
//! let mut from_worker = FrameDecoder::new(DEFAULT_FRAME_LIMIT);
//! from_worker.feed(worker.get_ref());
//! let hello = Hello::decode(from_worker.next_frame()?.expect("a whole hello"))?;
//! hello.check_role(Role::Worker)?;
//! let mut answers = Vec::new();
//! while let Some(message) = from_worker.next_message::<ToParent>()? {
//!     answers.push(message);
//! }
//! from_worker.finish()?;
//! assert_eq!(answers, [
//!     ToParent::Ready,
//!     ToParent::Started { id: 1 },
//!     ToParent::Done { id: 1, outcome: Outcome::Ok(b"INPUT".to_vec()) },
//! ]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

use std::fmt;

mod error;
mod frame;
pub(crate) mod message;

pub use error::ProtocolError;
pub use frame::{Frame, FrameDecoder, FrameEncoder, FrameWriter};
pub use message::{
    ChunkItems, ChunkOutcomes, Hello, ItemOutcome, Outcome, Role, ToParent, ToWorker, WireMessage,
};

/// The protocol version this build speaks. Both sides must speak the same one
/// (`protocol.md`, "Versions"); it changes whenever any layout does.
pub const PROTOCOL_VERSION: u16 = 5;

/// The first four bytes of every hello's body.
pub const MAGIC: [u8; 4] = *b"CREW";

/// The frame limit used when none is configured: 64 MiB of kind byte and body.
/// Large enough for the payloads a pool is meant to carry (an image, a batch of
/// records); a decoder only allocates as much as actually arrives, so the limit
/// is a bound, not a cost.
pub const DEFAULT_FRAME_LIMIT: u32 = 64 * 1024 * 1024;

/// The smallest frame limit a side may announce: 4 KiB. Every receiver accepts a
/// frame this large, so a hello, every control message and a panic or start error
/// message cut to fit always get through.
pub const MIN_FRAME_LIMIT: u32 = 4 * 1024;

/// Bytes shown in `Debug` output at most; payloads can be megabytes.
const SHOWN_BYTES: usize = 32;

/// `Debug` for opaque bytes: `b"..."` escaped, cut after [`SHOWN_BYTES`] with the
/// total length.
pub(crate) fn show_bytes(bytes: &[u8]) -> impl fmt::Debug + '_ {
    struct Show<'a>(&'a [u8]);
    impl fmt::Debug for Show<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let shown = &self.0[..self.0.len().min(SHOWN_BYTES)];
            f.write_str("b\"")?;
            for &b in shown {
                fmt::Display::fmt(&std::ascii::escape_default(b), f)?;
            }
            f.write_str("\"")?;
            if shown.len() < self.0.len() {
                write!(f, "... ({} bytes)", self.0.len())?;
            }
            Ok(())
        }
    }
    Show(bytes)
}
