//! Framing: [`Frame`], the incremental [`FrameDecoder`], the batching
//! [`FrameEncoder`] and the [`FrameWriter`] convenience over `io::Write`.
//!
//! A frame is `len: u32 LE | kind: u8 | body: [u8; len - 1]` ("Frames" in
//! `protocol.md`). The decoder's memory bound and its no-panic argument are in
//! "The decoder" there.

use std::fmt;
use std::io::{self, Read, Write};

use super::error::ProtocolError;
use super::message::WireMessage;
use super::{show_bytes, DEFAULT_FRAME_LIMIT, MIN_FRAME_LIMIT};

/// The length field's size.
const HEADER: usize = 4;

/// How much [`FrameDecoder::read_from`] asks for at least: Linux's default pipe
/// buffer, so one read can empty a full pipe.
const READ_CHUNK: usize = 64 * 1024;

/// A buffer larger than this is given back to the allocator once the large frame
/// that grew it has been taken (decoder) or written (encoder), so one 50 MB
/// payload does not pin 50 MB per worker for the rest of its life.
const RETAIN: usize = 4 * READ_CHUNK;

/// One frame: its kind byte and its body (without the length field).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body holds (`protocol.md`, "Kinds").
    pub kind: u8,
    /// The body: the length field's value minus one bytes.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame of `kind` around `body`.
    pub fn new(kind: u8, body: Vec<u8>) -> Frame {
        Frame { kind, body }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &format_args!("{:#04x}", self.kind))
            .field("body", &show_bytes(&self.body))
            .finish()
    }
}

/// Splits a byte stream into [`Frame`]s, whatever pieces the bytes arrive in.
///
/// Feed it bytes as they come ([`feed`](Self::feed), or
/// [`read_from`](Self::read_from) a reader), then take frames with
/// [`next_frame`](Self::next_frame) (or [`next_message`](Self::next_message))
/// until it returns `Ok(None)`: a frame not yet complete is not an error. When the
/// stream ends, [`finish`](Self::finish) reports a frame cut short.
///
/// A length field above the limit, or of zero, is an error as soon as its four
/// bytes are in, before anything is allocated for the frame. Errors are sticky:
/// after one, the stream has no trustworthy frame boundary, so every later call
/// returns the same error and fed bytes are dropped.
///
/// Memory: fed in chunks and drained between them, it holds at most one partial
/// frame plus one chunk (`4 + frame_limit + chunk` bytes), and gives a large
/// buffer back once the frame that needed it has been taken.
///
/// ```
/// use crew::wire::{FrameDecoder, FrameEncoder, ToParent};
///
/// let mut out = FrameEncoder::default();
/// out.push(&ToParent::Started { id: 7 })?;
/// out.push(&ToParent::Ready)?;
///
/// let mut decoder = FrameDecoder::default();
/// let (a, b) = out.as_bytes().split_at(5); // bytes arrive in any pieces
/// decoder.feed(a);
/// assert_eq!(decoder.next_message::<ToParent>()?, None); // not complete yet
/// decoder.feed(b);
/// assert_eq!(decoder.next_message()?, Some(ToParent::Started { id: 7 }));
/// assert_eq!(decoder.next_message()?, Some(ToParent::Ready));
/// assert_eq!(decoder.next_message::<ToParent>()?, None);
/// decoder.finish()?; // the stream ended on a frame boundary
/// # Ok::<(), crew::wire::ProtocolError>(())
/// ```
pub struct FrameDecoder {
    /// Storage, always initialised: `buf[start..end]` is received and not yet
    /// taken; `buf[end..]` is room for the next read. Only this decoder touches it.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The largest length field accepted.
    limit: u32,
    /// The first error; once set, the stream is dead.
    failed: Option<ProtocolError>,
}

impl FrameDecoder {
    /// A decoder that accepts frames whose length field (kind byte and body) is at
    /// most `frame_limit`, raised to [`MIN_FRAME_LIMIT`] if it is below. Announce
    /// the same limit in your [`Hello`](super::Hello).
    pub fn new(frame_limit: u32) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            limit: frame_limit.max(MIN_FRAME_LIMIT),
            failed: None,
        }
    }

    /// The largest length field this decoder accepts.
    pub fn frame_limit(&self) -> u32 {
        self.limit
    }

    /// Changes the limit (raised to [`MIN_FRAME_LIMIT`] if it is below) for
    /// every frame not yet taken: a side that learns its limit from the peer's
    /// [`Hello`](super::Hello) reads that hello first, then sets it.
    pub fn set_frame_limit(&mut self, frame_limit: u32) {
        self.limit = frame_limit.max(MIN_FRAME_LIMIT);
    }

    /// Appends bytes received from the stream. After an error they are dropped.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() || bytes.is_empty() {
            return;
        }
        self.make_room(bytes.len());
        // `make_room` left at least `bytes.len()` bytes of room after `end`.
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads once from `reader` straight into the decoder's buffer, retrying on
    /// [`io::ErrorKind::Interrupted`], and returns how many bytes came (`0` is the
    /// end of the stream: call [`finish`](Self::finish)).
    ///
    /// It asks for at least 64 KiB, and for more while a frame larger than that is
    /// arriving (doubling what it holds, up to what the frame still needs), so a
    /// large frame takes few reads without the buffer outgrowing the bytes that
    /// actually came. After a protocol error it reads nothing and returns that
    /// error as [`io::ErrorKind::InvalidData`].
    pub fn read_from<R: Read + ?Sized>(&mut self, reader: &mut R) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        let pending = self.end - self.start;
        let frame_rest = match self.pending_frame_len() {
            Some(Ok(total)) => total.saturating_sub(pending),
            _ => 0,
        };
        self.make_room(READ_CHUNK.max(frame_rest.min(pending)));
        let room = &mut self.buf[self.end..];
        let n = loop {
            match reader.read(room) {
                Ok(n) => break n.min(room.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.end += n;
        Ok(n)
    }

    /// The next complete frame, `Ok(None)` if its bytes have not all arrived yet,
    /// or the stream's (sticky) error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let total = match self.pending_frame_len() {
            None => return Ok(None),
            Some(Ok(total)) => total,
            Some(Err(e)) => return Err(self.fail(e)),
        };
        let Some(bytes) = self.buf[self.start..self.end].get(..total) else {
            return Ok(None);
        };
        // `pending_frame_len` refused a zero length, so `total >= HEADER + 1`.
        let frame = match bytes {
            [_, _, _, _, kind, body @ ..] => Frame::new(*kind, body.to_vec()),
            _ => return Ok(None),
        };
        self.start += total;
        self.after_take();
        Ok(Some(frame))
    }

    /// The next complete frame decoded as an `M`; see
    /// [`next_frame`](Self::next_frame). A frame that does not decode is the
    /// stream's error too: it makes the decoder fail for good.
    pub fn next_message<M: WireMessage>(&mut self) -> Result<Option<M>, ProtocolError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(frame) => M::decode(frame).map(Some).map_err(|e| self.fail(e)),
        }
    }

    /// The stream has ended: `Ok` if it ended on a frame boundary, the stream's
    /// error if it had one, and otherwise a [`ProtocolError::is_truncated`] error.
    /// Call it once [`next_frame`](Self::next_frame) has returned `Ok(None)`: any
    /// byte still buffered then belongs to a frame that will never be complete.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.end - self.start {
            0 => Ok(()),
            buffered => Err(ProtocolError::truncated(buffered)),
        }
    }

    /// How many received bytes are waiting to be taken as frames.
    pub fn buffered_len(&self) -> usize {
        self.end - self.start
    }

    /// How many bytes the decoder's buffer holds allocated: what the decoder
    /// costs in memory, for tests and statistics.
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The whole length (length field included) of the frame at the front of the
    /// buffer, once its length field is in; an error for a length of 0 or above
    /// the limit.
    fn pending_frame_len(&self) -> Option<Result<usize, ProtocolError>> {
        let header = self
            .buf
            .get(self.start..self.end)?
            .first_chunk::<HEADER>()?;
        let len = u32::from_le_bytes(*header);
        Some(if len == 0 {
            Err(ProtocolError::empty_frame())
        } else if len > self.limit {
            Err(ProtocolError::oversized_received(*header, self.limit))
        } else {
            // Fails only where `usize` cannot hold the frame's size (a 32-bit
            // target with a limit near 4 GiB); such a frame is refused.
            usize::try_from(len)
                .ok()
                .and_then(|len| len.checked_add(HEADER))
                .ok_or_else(|| ProtocolError::oversized_received(*header, self.limit))
        })
    }

    #[cold]
    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.failed = Some(e.clone());
        // The bytes can never be taken now; let them go.
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
        e
    }

    /// Leaves at least `want` bytes of room after `end`: first by moving the
    /// pending bytes to the front, then by growing the buffer (doubling, but never
    /// past what one maximal frame plus this chunk needs).
    fn make_room(&mut self, want: usize) {
        if self.buf.len() - self.end >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end >= want {
                return;
            }
        }
        let needed = self.end.saturating_add(want);
        if needed > self.buf.capacity() {
            let ceiling = HEADER
                .saturating_add(self.limit as usize)
                .saturating_add(want.max(READ_CHUNK));
            let target = needed.max(self.buf.capacity().saturating_mul(2).min(ceiling));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.resize(needed, 0);
    }

    /// After a frame was taken: reset the offsets if the buffer is empty, and give
    /// back a large buffer once what is left is small.
    #[inline]
    fn after_take(&mut self) {
        let pending = self.end - self.start;
        if self.buf.len() > RETAIN && pending <= RETAIN / 2 {
            self.shrink();
        } else if pending == 0 {
            self.start = 0;
            self.end = 0;
        }
    }

    #[cold]
    fn shrink(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        self.buf.truncate(RETAIN);
        self.buf.shrink_to(RETAIN);
    }
}

impl Default for FrameDecoder {
    /// A decoder with [`DEFAULT_FRAME_LIMIT`].
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_FRAME_LIMIT)
    }
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("frame_limit", &self.limit)
            .field("buffered_len", &self.buffered_len())
            .field("buffered_capacity", &self.buffered_capacity())
            .field("failed", &self.failed)
            .finish()
    }
}

/// Encodes frames back to back into one reusable buffer, so that a batch of them
/// goes out in one `write`.
///
/// Each [`push`](Self::push) appends one whole frame, or nothing: a message whose
/// frame would be over the limit (the peer's, from its
/// [`Hello`](super::Hello)) is refused before any byte of it is written, and
/// the frames already in the buffer stay valid. Write out
/// [`as_bytes`](Self::as_bytes), then [`consume`](Self::consume) what was
/// written (or [`clear`](Self::clear)).
///
/// ```
/// use crew::wire::{FrameEncoder, ToWorker};
///
/// let mut batch = FrameEncoder::default();
/// for id in 0..3 {
///     batch.push(&ToWorker::Task { id, key: None, payload: vec![1, 2, 3] })?;
/// }
/// let mut pipe = Vec::new();
/// std::io::Write::write_all(&mut pipe, batch.as_bytes())?; // one write, three tasks
/// batch.clear();
/// assert_eq!(pipe.len(), 3 * (4 + 1 + 8 + 1 + 4 + 3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FrameEncoder {
    buf: Vec<u8>,
    /// Bytes before this offset were consumed (written). Advancing an offset
    /// instead of moving the rest forward keeps a large buffer written in many
    /// partial writes linear, not quadratic; the consumed prefix is dropped when
    /// everything is consumed or when it is at least half the buffer.
    start: usize,
    limit: u32,
}

impl FrameEncoder {
    /// An empty buffer that refuses frames whose length field would exceed
    /// `frame_limit`. Until the peer's hello has said what it accepts, use
    /// [`DEFAULT_FRAME_LIMIT`] (a hello always fits).
    pub fn new(frame_limit: u32) -> FrameEncoder {
        FrameEncoder {
            buf: Vec::new(),
            start: 0,
            limit: frame_limit,
        }
    }

    /// The largest length field this encoder writes.
    pub fn frame_limit(&self) -> u32 {
        self.limit
    }

    /// Sets the limit: the `frame_limit` of the peer's [`Hello`](super::Hello).
    pub fn set_frame_limit(&mut self, frame_limit: u32) {
        self.limit = frame_limit;
    }

    /// Appends `message` as one frame, or, if its frame would be over the limit,
    /// nothing, and returns a [`ProtocolError::is_oversized`] error.
    pub fn push<M: WireMessage>(&mut self, message: &M) -> Result<(), ProtocolError> {
        self.push_encodable(message)
    }

    /// `push` for anything with an encoding, including the borrowed
    /// [`TaskFrame`](super::message::TaskFrame) the backend sends.
    pub(crate) fn push_encodable<M: super::message::sealed::Encode>(
        &mut self,
        message: &M,
    ) -> Result<(), ProtocolError> {
        let len = 1 + message.body_len();
        self.check(len)?;
        self.compact();
        let before = self.buf.len();
        self.begin_frame(len, message.kind());
        message.write_body(&mut self.buf);
        debug_assert_eq!((self.buf.len() - before) as u64, HEADER as u64 + len);
        Ok(())
    }

    /// Appends a frame of `kind` around `body` as they are, with the same limit
    /// check as [`push`](Self::push). For tests and tools: it can send what no
    /// message type encodes.
    pub fn push_frame(&mut self, kind: u8, body: &[u8]) -> Result<(), ProtocolError> {
        let len = 1 + body.len() as u64;
        self.check(len)?;
        self.compact();
        self.begin_frame(len, kind);
        self.buf.extend_from_slice(body);
        Ok(())
    }

    /// The encoded frames not yet consumed, ready for one write.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// How many encoded bytes are waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether no encoded byte is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many bytes the buffer holds allocated: what the encoder costs in
    /// memory, for tests and statistics.
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Drops the first `n` bytes (all of them if `n` is larger): a write took them.
    pub fn consume(&mut self, n: usize) {
        if n >= self.len() {
            self.clear();
        } else {
            self.start += n;
        }
    }

    /// Drops every waiting byte, keeping the buffer for the next batch (unless a
    /// large message grew it: that memory is given back).
    pub fn clear(&mut self) {
        self.start = 0;
        self.buf.clear();
        if self.buf.capacity() > RETAIN {
            self.buf.shrink_to(RETAIN);
        }
    }

    fn check(&self, len: u64) -> Result<(), ProtocolError> {
        if len > u64::from(self.limit) {
            Err(ProtocolError::oversized(len, self.limit))
        } else {
            Ok(())
        }
    }

    /// Writes the length field and the kind byte; `len` was checked against the
    /// (`u32`) limit.
    /// Drops the consumed prefix once it is at least half the buffer, before
    /// the buffer grows: amortised, each byte moves at most once more.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    fn begin_frame(&mut self, len: u64, kind: u8) {
        if let Some(total) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(HEADER))
        {
            self.buf.reserve(total);
        }
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        self.buf.push(kind);
    }
}

impl Default for FrameEncoder {
    /// An encoder with [`DEFAULT_FRAME_LIMIT`].
    fn default() -> Self {
        FrameEncoder::new(DEFAULT_FRAME_LIMIT)
    }
}

impl fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("frame_limit", &self.limit)
            .field("len", &self.len())
            .finish()
    }
}

/// A [`FrameEncoder`] in front of a blocking writer: [`send`](Self::send) only
/// buffers, [`flush`](Self::flush) writes the whole batch with one `write_all` and
/// flushes the writer.
///
/// It does not flush on drop: frames sent but not flushed are discarded. After an
/// I/O error, part of a frame may have been written, so the stream is unusable.
///
/// ```
/// use crew::wire::{FrameWriter, Hello, Role, ToParent, DEFAULT_FRAME_LIMIT};
///
/// let mut w = FrameWriter::new(Vec::new(), DEFAULT_FRAME_LIMIT);
/// w.send(&Hello::new(Role::Worker, DEFAULT_FRAME_LIMIT))?;
/// w.send(&ToParent::Ready)?;
/// assert!(w.get_ref().is_empty()); // still buffered
/// w.flush()?;
/// assert_eq!(w.get_ref().len(), (4 + 1 + 15) + (4 + 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FrameWriter<W> {
    inner: W,
    encoder: FrameEncoder,
}

impl<W: Write> FrameWriter<W> {
    /// A writer over `inner` whose encoder refuses frames over `frame_limit`
    /// (see [`FrameEncoder::new`]).
    pub fn new(inner: W, frame_limit: u32) -> FrameWriter<W> {
        FrameWriter {
            inner,
            encoder: FrameEncoder::new(frame_limit),
        }
    }

    /// Buffers `message` as one frame (see [`FrameEncoder::push`]); writes nothing.
    pub fn send<M: WireMessage>(&mut self, message: &M) -> Result<(), ProtocolError> {
        self.encoder.push(message)
    }

    /// Writes every buffered frame with one `write_all`, then flushes the writer.
    /// The buffer is emptied whether or not the write succeeds.
    pub fn flush(&mut self) -> io::Result<()> {
        let result = if self.encoder.is_empty() {
            Ok(())
        } else {
            self.inner.write_all(self.encoder.as_bytes())
        };
        self.encoder.clear();
        result?;
        self.inner.flush()
    }

    /// The encoder: its buffered bytes, its limit (set it from the peer's hello).
    pub fn encoder(&self) -> &FrameEncoder {
        &self.encoder
    }

    /// The encoder, to change its limit or push raw frames.
    pub fn encoder_mut(&mut self) -> &mut FrameEncoder {
        &mut self.encoder
    }

    /// The writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The writer. Writing to it directly between frames corrupts the stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The writer and the encoder, with whatever it still buffers.
    pub fn into_parts(self) -> (W, FrameEncoder) {
        (self.inner, self.encoder)
    }
}

impl<W> fmt::Debug for FrameWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameWriter")
            .field("encoder", &self.encoder)
            .finish_non_exhaustive()
    }
}
