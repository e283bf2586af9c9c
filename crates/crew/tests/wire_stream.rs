//! The wire protocol over byte streams: any split of a valid stream decodes the
//! same, `FrameDecoder::read_from` against awkward readers, `FrameWriter`'s one
//! write per batch, and the decoder's and encoder's memory
//! (`src/wire/protocol.md`, "The decoder").

use std::io::{self, Read, Write};

use crew::wire::{
    FrameDecoder, FrameEncoder, FrameWriter, Hello, Outcome, ProtocolError, Role, ToParent,
    ToWorker, DEFAULT_FRAME_LIMIT, MIN_FRAME_LIMIT,
};

/// A worker's side of a short conversation, every kind of frame included.
fn conversation() -> (Hello, Vec<ToParent>) {
    let hello = Hello {
        role: Role::Worker,
        pid: 77,
        frame_limit: MIN_FRAME_LIMIT,
    };
    let messages = vec![
        ToParent::Ready,
        ToParent::Started { id: 1 },
        ToParent::Message {
            payload: b"progress".to_vec(),
        },
        ToParent::Done {
            id: 1,
            outcome: Outcome::Ok(vec![9; 40]),
        },
        ToParent::Started { id: 2 },
        ToParent::Done {
            id: 2,
            outcome: Outcome::Panicked("index out of bounds".into()),
        },
        ToParent::Done {
            id: 3,
            outcome: Outcome::NotStarted,
        },
        ToParent::Started { id: 4 },
        ToParent::Done {
            id: 4,
            outcome: Outcome::UserError(Vec::new()),
        },
        ToParent::StartFailed {
            message: "é".into(),
        },
    ];
    (hello, messages)
}

fn encoded_conversation() -> Vec<u8> {
    let (hello, messages) = conversation();
    let mut out = FrameEncoder::default();
    out.push(&hello).expect("fits");
    for m in &messages {
        out.push(m).expect("fits");
    }
    out.as_bytes().to_vec()
}

/// Everything `decoder` can give now: the hello if `hello` is still `None`, then
/// messages.
fn drain(
    decoder: &mut FrameDecoder,
    hello: &mut Option<Hello>,
    into: &mut Vec<ToParent>,
) -> Result<(), ProtocolError> {
    if hello.is_none() {
        match decoder.next_message::<Hello>()? {
            Some(h) => *hello = Some(h),
            None => return Ok(()),
        }
    }
    while let Some(m) = decoder.next_message()? {
        into.push(m);
    }
    Ok(())
}

#[test]
fn a_valid_stream_split_at_every_byte_decodes_the_same() {
    let bytes = encoded_conversation();
    let (want_hello, want) = conversation();
    for split in 0..=bytes.len() {
        let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
        let (mut hello, mut got) = (None, Vec::new());
        decoder.feed(&bytes[..split]);
        drain(&mut decoder, &mut hello, &mut got).expect("valid");
        decoder.feed(&bytes[split..]);
        drain(&mut decoder, &mut hello, &mut got).expect("valid");
        decoder.finish().expect("ends on a boundary");
        assert_eq!(hello, Some(want_hello), "split at {split}");
        assert_eq!(got, want, "split at {split}");
    }
}

#[test]
fn a_valid_stream_fed_one_byte_at_a_time_decodes_the_same() {
    let bytes = encoded_conversation();
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    let (mut hello, mut got) = (None, Vec::new());
    for b in &bytes {
        decoder.feed(std::slice::from_ref(b));
        drain(&mut decoder, &mut hello, &mut got).expect("valid");
    }
    decoder.finish().expect("ends on a boundary");
    assert_eq!(got, conversation().1);
}

#[test]
fn a_stream_cut_anywhere_inside_a_frame_is_truncated() {
    let bytes = encoded_conversation();
    let mut boundaries = vec![0];
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
        boundaries.push(at);
    }
    for cut in 0..bytes.len() {
        let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
        decoder.feed(&bytes[..cut]);
        let (mut hello, mut got) = (None, Vec::new());
        drain(&mut decoder, &mut hello, &mut got).expect("valid so far");
        let end = decoder.finish();
        if boundaries.contains(&cut) {
            assert_eq!(end, Ok(()), "cut at {cut}");
        } else {
            assert!(end.unwrap_err().is_truncated(), "cut at {cut}");
        }
    }
}

/// A reader that hands out at most `step` bytes per read and fails with
/// `Interrupted` every other call.
struct Awkward<'a> {
    bytes: &'a [u8],
    step: usize,
    interrupt: bool,
}

impl Read for Awkward<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = self.step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[test]
fn read_from_retries_interrupts_and_reads_until_the_end() {
    let bytes = encoded_conversation();
    for step in [1, 3, 7, 64, 100_000] {
        let mut reader = Awkward {
            bytes: &bytes,
            step,
            interrupt: false,
        };
        let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
        let (mut hello, mut got) = (None, Vec::new());
        loop {
            drain(&mut decoder, &mut hello, &mut got).expect("valid");
            if decoder.read_from(&mut reader).expect("reads") == 0 {
                break;
            }
        }
        decoder.finish().expect("ends on a boundary");
        assert_eq!(got, conversation().1, "step {step}");
    }
}

#[test]
fn read_from_after_an_error_reports_it_as_invalid_data() {
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    decoder.feed(&[0, 0, 0, 0]);
    let e = decoder.next_frame().unwrap_err();
    let io = decoder.read_from(&mut &[1u8, 2, 3][..]).unwrap_err();
    assert_eq!(io.kind(), io::ErrorKind::InvalidData);
    assert_eq!(
        io.get_ref().and_then(|i| i.downcast_ref::<ProtocolError>()),
        Some(&e)
    );
}

#[test]
fn read_from_takes_a_large_frame_in_few_reads_and_bounded_memory() {
    let payload = vec![0xab; 3 << 20];
    let mut out = FrameEncoder::default();
    out.push(&ToWorker::Message {
        payload: payload.clone(),
    })
    .expect("fits");
    let bytes = out.as_bytes().to_vec();

    let mut reader = &bytes[..];
    let mut decoder = FrameDecoder::new(DEFAULT_FRAME_LIMIT);
    let mut reads = 0;
    let mut peak = 0;
    let message = loop {
        if let Some(m) = decoder.next_message::<ToWorker>().expect("valid") {
            break m;
        }
        assert!(decoder.read_from(&mut reader).expect("reads") > 0);
        reads += 1;
        peak = peak.max(decoder.buffered_capacity());
    };
    assert_eq!(message, ToWorker::Message { payload });
    // Doubling from 64 KiB: about log2(3 MiB / 64 KiB) + 1 reads.
    assert!(reads <= 12, "{reads} reads");
    assert!(
        peak <= 2 * bytes.len(),
        "peak {peak} for {} bytes",
        bytes.len()
    );
    // Once taken, the large buffer is given back.
    assert!(
        decoder.buffered_capacity() <= 256 * 1024,
        "{}",
        decoder.buffered_capacity()
    );
}

#[test]
fn the_decoder_gives_a_large_buffer_back_after_the_frame() {
    let mut out = FrameEncoder::default();
    out.push(&ToParent::Message {
        payload: vec![1; 2 << 20],
    })
    .expect("fits");
    out.push(&ToParent::Ready).expect("fits");
    let bytes = out.as_bytes();

    let mut decoder = FrameDecoder::default();
    // The big frame and part of the next one arrive in one piece.
    decoder.feed(&bytes[..bytes.len() - 2]);
    assert!(decoder.buffered_capacity() >= 2 << 20);
    assert!(decoder.next_frame().expect("valid").is_some());
    assert!(decoder.buffered_capacity() <= 256 * 1024);
    decoder.feed(&bytes[bytes.len() - 2..]);
    assert_eq!(decoder.next_message(), Ok(Some(ToParent::Ready)));
    decoder.finish().expect("ends on a boundary");
}

/// A writer that counts the calls to `write` and `flush`.
#[derive(Default)]
struct Counting {
    bytes: Vec<u8>,
    writes: usize,
    flushes: usize,
    fail: bool,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if self.fail {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

#[test]
fn frame_writer_sends_a_batch_in_one_write() {
    let mut w = FrameWriter::new(Counting::default(), DEFAULT_FRAME_LIMIT);
    w.send(&Hello::new(Role::Parent, DEFAULT_FRAME_LIMIT))
        .expect("fits");
    for id in 0..10 {
        w.send(&ToWorker::Task {
            id,
            key: Some(id % 3),
            payload: vec![id as u8; 100],
        })
        .expect("fits");
    }
    assert_eq!(w.get_ref().writes, 0, "send only buffers");
    let batch = w.encoder().len();
    w.flush().expect("writes");
    assert_eq!(w.get_ref().writes, 1);
    assert_eq!(w.get_ref().flushes, 1);
    assert_eq!(w.get_ref().bytes.len(), batch);
    assert!(w.encoder().is_empty());

    // Nothing buffered: no write, but the writer is still flushed.
    w.flush().expect("nothing to write");
    assert_eq!(w.get_ref().writes, 1);
    assert_eq!(w.get_ref().flushes, 2);

    // What was written decodes to what was sent.
    let (inner, _) = w.into_parts();
    let mut decoder = FrameDecoder::default();
    decoder.feed(&inner.bytes);
    let hello: Hello = decoder.next_message().expect("valid").expect("complete");
    assert_eq!(hello.role, Role::Parent);
    let mut ids = Vec::new();
    while let Some(ToWorker::Task { id, .. }) = decoder.next_message().expect("valid") {
        ids.push(id);
    }
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    decoder.finish().expect("ends on a boundary");
}

#[test]
fn frame_writer_refuses_what_the_peer_cannot_take_and_keeps_the_rest() {
    let mut w = FrameWriter::new(Counting::default(), DEFAULT_FRAME_LIMIT);
    w.encoder_mut().set_frame_limit(MIN_FRAME_LIMIT);
    w.send(&ToWorker::Cancel { id: 1 }).expect("fits");
    let e = w
        .send(&ToWorker::Message {
            payload: vec![0; MIN_FRAME_LIMIT as usize],
        })
        .unwrap_err();
    assert!(e.is_oversized());
    w.send(&ToWorker::Shutdown).expect("fits");
    w.flush().expect("writes");
    let mut decoder = FrameDecoder::default();
    decoder.feed(&w.get_ref().bytes);
    assert_eq!(decoder.next_message(), Ok(Some(ToWorker::Cancel { id: 1 })));
    assert_eq!(decoder.next_message(), Ok(Some(ToWorker::Shutdown)));
    assert_eq!(decoder.next_message::<ToWorker>(), Ok(None));
}

#[test]
fn frame_writer_reports_a_failed_write_and_empties_its_buffer() {
    let mut w = FrameWriter::new(
        Counting {
            fail: true,
            ..Counting::default()
        },
        DEFAULT_FRAME_LIMIT,
    );
    w.send(&ToWorker::Shutdown).expect("fits");
    assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    assert!(w.encoder().is_empty());
    assert_eq!(w.get_ref().flushes, 0);
}

#[test]
fn the_encoder_consumes_partial_writes() {
    let mut out = FrameEncoder::default();
    out.push(&ToWorker::Cancel { id: 5 }).expect("fits");
    out.push(&ToWorker::Shutdown).expect("fits");
    let all = out.as_bytes().to_vec();
    out.consume(3);
    assert_eq!(out.as_bytes(), &all[3..]);
    out.consume(0);
    assert_eq!(out.len(), all.len() - 3);
    out.consume(usize::MAX);
    assert!(out.is_empty());
}

#[test]
fn the_encoder_gives_a_large_buffer_back_when_emptied() {
    let big = ToWorker::Message {
        payload: vec![0; 4 << 20],
    };
    let mut out = FrameEncoder::default();
    out.push(&big).expect("fits");
    assert!(out.buffered_capacity() >= 4 << 20);
    out.clear();
    assert!(out.buffered_capacity() <= 256 * 1024);

    out.push(&big).expect("fits");
    out.consume(out.len());
    assert!(out.buffered_capacity() <= 256 * 1024);

    let mut w = FrameWriter::new(Vec::new(), DEFAULT_FRAME_LIMIT);
    w.send(&big).expect("fits");
    w.flush().expect("writes");
    assert!(w.encoder().buffered_capacity() <= 256 * 1024);
}

/// Partial writes (`consume` of a few bytes at a time) interleaved with new
/// frames hand out exactly the bytes pushed, in order.
#[test]
fn partial_consumes_interleaved_with_pushes_keep_the_stream_intact() {
    use crew::wire::{FrameEncoder, ToWorker, DEFAULT_FRAME_LIMIT};
    let mut encoder = FrameEncoder::new(DEFAULT_FRAME_LIMIT);
    let mut reference = FrameEncoder::new(DEFAULT_FRAME_LIMIT);
    let mut written = Vec::new();
    for round in 0..200u64 {
        let message = ToWorker::Task {
            id: round,
            key: None,
            payload: vec![round as u8; (round as usize * 37) % 3000],
        };
        encoder.push(&message).unwrap();
        reference.push(&message).unwrap();
        // A "write" that takes an odd share of what is waiting.
        let take = (encoder.len() / 3).max(1).min(encoder.len());
        written.extend_from_slice(&encoder.as_bytes()[..take]);
        encoder.consume(take);
    }
    written.extend_from_slice(encoder.as_bytes());
    encoder.consume(encoder.len());
    assert!(encoder.is_empty());
    assert_eq!(written, reference.as_bytes());
}
