//! How the process backend puts the user's values on the wire: [`RemoteWorker`],
//! and the payload encoding.
//!
//! Inputs, outputs, user errors (and, later, messages) are encoded with
//! [`postcard`]: a compact, stable, non-self-describing serde format. Both ends run
//! the same code (the same executable, or one built from the same crew and worker
//! types), so nothing needs to describe itself on the wire, and the encoding is a
//! plain walk over the value. Byte buffers should be `serde_bytes::ByteBuf` (or
//! `#[serde(with = "serde_bytes")]`): serde encodes a plain `Vec<u8>` one element
//! at a time.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::arena::{Arena, Block, SHARED_ABOVE};
use super::FRAME_OVERHEAD;
use crate::wire::{Outcome, MIN_FRAME_LIMIT};
use crate::worker::Worker;

/// A [`Worker`] that can run in a worker process: its input, output, error and
/// message types cross the process boundary, so they are serde types. Implemented for every such
/// `Worker`; there is nothing to write.
pub trait RemoteWorker:
    Worker<
    Input: Serialize + DeserializeOwned,
    Output: Serialize + DeserializeOwned,
    Error: Serialize + DeserializeOwned,
    Message: Serialize + DeserializeOwned,
>
{
}

impl<W> RemoteWorker for W where
    W: Worker<
        Input: Serialize + DeserializeOwned,
        Output: Serialize + DeserializeOwned,
        Error: Serialize + DeserializeOwned,
        Message: Serialize + DeserializeOwned,
    >
{
}

/// The first byte of a pool-to-worker message's payload: a plain message, or a
/// sticky one (the worker keeps it and gives it again to a state it rebuilds).
pub(crate) const MESSAGE_PLAIN: u8 = 0;
pub(crate) const MESSAGE_STICKY: u8 = 1;

/// A pool-to-worker message's payload: its kind byte, then the message.
pub(crate) fn encode_message<M: Serialize>(
    message: &M,
    sticky: bool,
) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![if sticky {
        MESSAGE_STICKY
    } else {
        MESSAGE_PLAIN
    }];
    postcard::to_io(message, &mut out)?;
    Ok(out)
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

/// Why an input was not encoded.
pub(crate) enum InputError {
    /// Its encoding is this many bytes, above `max_message_size`.
    TooLarge(u64),
    /// serde or postcard refused it.
    Encode(postcard::Error),
}

/// Encodes a task's input: into a block of the payload arena if it is large and
/// the arena has room (one measuring pass, then one write into shared memory),
/// into a `Vec` otherwise. An input whose encoding is above `max` bytes is
/// refused, whichever way it would go: before anything is allocated for it on
/// the arena's path, after the encoding on the other.
pub(crate) fn encode_input<T: Serialize>(
    value: &T,
    arena: Option<&Arc<Arena>>,
    max: u64,
) -> Result<EncodedInput, InputError> {
    let too_large = |size: usize| (size as u64 > max).then_some(InputError::TooLarge(size as u64));
    if let Some(arena) = arena {
        let size = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
            .map_err(InputError::Encode)?;
        if let Some(e) = too_large(size) {
            return Err(e);
        }
        if size >= SHARED_ABOVE {
            if let Some(mut block) = arena.alloc(size) {
                postcard::to_slice(value, block.bytes_mut()).map_err(InputError::Encode)?;
                return Ok(EncodedInput::Shared(block));
            }
        }
    }
    let bytes = encode(value).map_err(InputError::Encode)?;
    match too_large(bytes.len()) {
        Some(e) => Err(e),
        None => Ok(EncodedInput::Inline(bytes)),
    }
}

/// Appends `value`'s encoding to `out` (a chunk's buffer), with no buffer of its
/// own.
pub(crate) fn encode_append<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    /// A postcard output that appends to a borrowed `Vec`.
    struct Append<'a>(&'a mut Vec<u8>);
    impl postcard::ser_flavors::Flavor for Append<'_> {
        type Output = ();
        #[inline]
        fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
            self.0.extend_from_slice(data);
            Ok(())
        }
        #[inline]
        fn try_push(&mut self, data: u8) -> postcard::Result<()> {
            self.0.push(data);
            Ok(())
        }
        fn finalize(self) -> postcard::Result<()> {
            Ok(())
        }
    }
    postcard::serialize_with_flavor(value, Append(out))
}

/// A task's encoded input, as the pool keeps it until no worker needs it.
pub(crate) enum EncodedInput {
    /// Sent inside the *task* frame.
    Inline(Vec<u8>),
    /// In the payload arena; a *shared task* frame names the block.
    Shared(Block),
    /// A chunk's items, sent in a *chunk* frame (`processes/chunks.rs`).
    Chunk(crate::wire::ChunkItems),
    /// Let go: the task is over and no worker reads its input any more.
    Released,
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Cuts `message` (on a character boundary) so that a frame carrying it fits
/// in `limit`: a panic or start error message always gets through.
pub(crate) fn shorten(mut message: String, limit: u32) -> String {
    // Room for the kind, the fields before the message and its length.
    let room = (limit.max(MIN_FRAME_LIMIT) as usize).saturating_sub(64);
    if message.len() > room {
        let mut cut = room.saturating_sub(3);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

/// An outcome whose payload would not fit the parent's frame limit becomes
/// *too large* (with the payload's size), instead of a frame the parent must
/// refuse. The pool's frame limit is its `max_message_size` plus
/// [`FRAME_OVERHEAD`], so this keeps exactly the results within
/// `max_message_size`.
pub(crate) fn fit_outcome(outcome: Outcome, limit: u32) -> Outcome {
    let size = match &outcome {
        Outcome::Ok(b) | Outcome::UserError(b) => b.len() as u64,
        _ => return outcome,
    };
    if size + FRAME_OVERHEAD > u64::from(limit) {
        Outcome::TooLarge(size)
    } else {
        outcome
    }
}
