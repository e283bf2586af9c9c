//! Property tests of the wire protocol: arbitrary messages round-trip; arbitrary
//! bytes in arbitrary pieces never panic the decoder, never yield a frame over
//! the limit and never grow it past its memory bound; decoding is canonical; an
//! oversized length is refused before anything is allocated; a stream cut inside
//! a frame is truncated (`src/wire/protocol.md`, "The decoder").
//!
//! Case counts are kept modest so the suite stays fast. Failures are not
//! persisted to files: a case found here becomes a named test in
//! `wire_corpus.rs`.

use proptest::collection::vec;
use proptest::prelude::*;

use crew::wire::{
    ChunkItems, ChunkOutcomes, Frame, FrameDecoder, FrameEncoder, Hello, ItemOutcome, Outcome,
    Role, ToParent, ToWorker, WireMessage, MIN_FRAME_LIMIT,
};

// ---- strategies ------------------------------------------------------------------

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..16),
        1 => vec(any::<u8>(), 0..600),
    ]
}

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        (any::<u64>(), any::<Option<u64>>(), payload())
            .prop_map(|(id, key, payload)| ToWorker::Task { id, key, payload }),
        any::<u64>().prop_map(|id| ToWorker::Cancel { id }),
        payload().prop_map(|payload| ToWorker::Message { payload }),
        Just(ToWorker::Shutdown),
        (
            any::<u64>(),
            any::<Option<u64>>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(id, key, offset, len)| ToWorker::SharedTask {
                id,
                key,
                offset,
                len
            }),
        (any::<u64>(), vec(payload(), 0..6)).prop_map(|(id, inputs)| {
            let mut items = ChunkItems::new();
            for input in &inputs {
                items.push(input);
            }
            ToWorker::Chunk { id, items }
        }),
    ]
}

/// A chunk's outcomes: each (tag, payload, text) becomes one item outcome.
fn chunk_outcomes() -> impl Strategy<Value = ChunkOutcomes> {
    vec((0..4u8, payload(), text(), any::<u64>()), 0..6).prop_map(|each| {
        let mut outcomes = ChunkOutcomes::new();
        for (tag, payload, text, size) in &each {
            outcomes.push(match tag {
                0 => ItemOutcome::Ok(payload),
                1 => ItemOutcome::UserError(payload),
                2 => ItemOutcome::Panicked(text),
                _ => ItemOutcome::TooLarge(*size),
            });
        }
        outcomes
    })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        payload().prop_map(Outcome::Ok),
        payload().prop_map(Outcome::UserError),
        text().prop_map(Outcome::Panicked),
        Just(Outcome::NotStarted),
        any::<u64>().prop_map(Outcome::TooLarge),
    ]
}

fn to_parent() -> impl Strategy<Value = ToParent> {
    prop_oneof![
        Just(ToParent::Ready),
        text().prop_map(|message| ToParent::StartFailed { message }),
        any::<u64>().prop_map(|id| ToParent::Started { id }),
        (any::<u64>(), outcome()).prop_map(|(id, outcome)| ToParent::Done { id, outcome }),
        payload().prop_map(|payload| ToParent::Message { payload }),
        (any::<u64>(), any::<u64>(), chunk_outcomes()).prop_map(|(id, run_nanos, outcomes)| {
            ToParent::ChunkDone {
                id,
                run_nanos,
                outcomes,
            }
        }),
        // Any bits but NaN's, which would not compare equal to itself after
        // the round trip (`wire_layout.rs` checks that NaN's bits cross).
        (any::<u64>(), any::<u32>()).prop_map(|(id, bits)| {
            let fraction = f32::from_bits(bits);
            ToParent::Progress {
                id,
                fraction: if fraction.is_nan() { 0.5 } else { fraction },
            }
        }),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        prop_oneof![Just(Role::Parent), Just(Role::Worker)],
        any::<u32>(),
        MIN_FRAME_LIMIT..=u32::MAX,
    )
        .prop_map(|(role, pid, frame_limit)| Hello {
            role,
            pid,
            frame_limit,
        })
}

/// Cuts `bytes` into pieces whose sizes cycle through `sizes` (each at least 1).
fn pieces<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        out.push(piece);
        rest = tail;
        i += 1;
    }
    out
}

/// Something that looks like a stream: honest frames, frames whose length lies,
/// and raw garbage, in any order.
#[derive(Debug, Clone)]
enum Segment {
    Frame(u8, Vec<u8>),
    LyingLength(u32, Vec<u8>),
    Garbage(Vec<u8>),
}

fn segment() -> impl Strategy<Value = Segment> {
    let kind = prop_oneof![
        3 => prop_oneof![Just(0x01u8), 0x10..=0x14u8, 0x20..=0x24u8],
        1 => any::<u8>(),
    ];
    let length = prop_oneof![
        4 => 0..64u32,
        1 => (MIN_FRAME_LIMIT - 2)..=(MIN_FRAME_LIMIT + 2),
        1 => any::<u32>(),
    ];
    prop_oneof![
        4 => (kind, vec(any::<u8>(), 0..48)).prop_map(|(k, b)| Segment::Frame(k, b)),
        1 => (length, vec(any::<u8>(), 0..48)).prop_map(|(l, b)| Segment::LyingLength(l, b)),
        1 => vec(any::<u8>(), 0..16).prop_map(Segment::Garbage),
    ]
}

/// A frame that is valid, or one small mutation away from valid (a byte
/// changed, bytes cut off or added), or random.
fn near_valid_frame() -> impl Strategy<Value = Frame> {
    let valid = prop_oneof![
        to_parent().prop_map(|m| encode_all(&[m])),
        to_worker().prop_map(|m| encode_all(&[m])),
        hello().prop_map(|m| encode_all(&[m])),
    ]
    .prop_map(|bytes| Frame::new(bytes[4], bytes[5..].to_vec()));
    let mutation = prop_oneof![
        2 => Just(None),
        3 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(Some),
    ];
    prop_oneof![
        4 => (valid, mutation, 0..3usize, vec(any::<u8>(), 0..3)).prop_map(
            |(mut frame, mutation, cut, extra)| {
                if let Some((at, byte)) = mutation {
                    if !frame.body.is_empty() {
                        let i = at.index(frame.body.len());
                        frame.body[i] = byte;
                    }
                }
                let keep = frame.body.len().saturating_sub(cut);
                frame.body.truncate(keep);
                frame.body.extend_from_slice(&extra);
                frame
            }
        ),
        1 => (any::<u8>(), vec(any::<u8>(), 0..40)).prop_map(|(k, b)| Frame::new(k, b)),
    ]
}

fn stream(segments: &[Segment]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segments {
        match s {
            Segment::Frame(kind, body) => {
                out.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
                out.push(*kind);
                out.extend_from_slice(body);
            }
            Segment::LyingLength(len, rest) => {
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(rest);
            }
            Segment::Garbage(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

fn encode_all<M: WireMessage>(messages: &[M]) -> Vec<u8> {
    let mut out = FrameEncoder::default();
    for m in messages {
        out.push(m).expect("fits the default limit");
    }
    out.as_bytes().to_vec()
}

/// Feeds `bytes` in the given pieces, taking every message after each piece.
fn decode_in_pieces<M: WireMessage>(bytes: &[u8], sizes: &[usize]) -> Vec<M> {
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    let mut got = Vec::new();
    for piece in pieces(bytes, sizes) {
        decoder.feed(piece);
        while let Some(m) = decoder.next_message::<M>().expect("valid stream") {
            got.push(m);
        }
    }
    decoder.finish().expect("ends on a boundary");
    got
}

// ---- properties --------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn messages_round_trip(
        down in vec(to_worker(), 0..8),
        up in vec(to_parent(), 0..8),
        hellos in vec(hello(), 0..3),
        sizes in vec(1..40usize, 1..6),
    ) {
        prop_assert_eq!(&decode_in_pieces::<ToWorker>(&encode_all(&down), &sizes), &down);
        prop_assert_eq!(&decode_in_pieces::<ToParent>(&encode_all(&up), &sizes), &up);
        prop_assert_eq!(&decode_in_pieces::<Hello>(&encode_all(&hellos), &sizes), &hellos);
        for m in &up {
            prop_assert_eq!(encode_all(std::slice::from_ref(m)).len() as u64, 4 + m.frame_len());
        }
    }

    #[test]
    fn a_valid_stream_decodes_the_same_in_any_pieces(
        up in vec(to_parent(), 1..10),
        a in vec(1..64usize, 1..8),
        b in vec(1..64usize, 1..8),
    ) {
        let bytes = encode_all(&up);
        prop_assert_eq!(decode_in_pieces::<ToParent>(&bytes, &a), decode_in_pieces::<ToParent>(&bytes, &b));
    }

    #[test]
    fn arbitrary_streams_never_panic_or_exceed_the_limit(
        segments in vec(segment(), 0..12),
        sizes in vec(1..80usize, 1..8),
    ) {
        let bytes = stream(&segments);
        let largest_piece = sizes.iter().copied().max().unwrap_or(1);
        let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
        let mut error = None;
        'feed: for piece in pieces(&bytes, &sizes) {
            decoder.feed(piece);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        let frame_len = 1 + frame.body.len() as u64; // the length field
                        prop_assert!(frame_len <= u64::from(MIN_FRAME_LIMIT));
                        // Decoding any frame as anything may fail, but never panics.
                        let _ = ToParent::decode(frame.clone());
                        let _ = ToWorker::decode(frame.clone());
                        let _ = Hello::decode(frame);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break 'feed;
                    }
                }
            }
            // One partial frame plus one piece, at most.
            prop_assert!(
                decoder.buffered_capacity() <= 4 + MIN_FRAME_LIMIT as usize + largest_piece,
                "capacity {} ", decoder.buffered_capacity()
            );
        }
        match error {
            Some(e) => {
                // Sticky, and the same at the end.
                prop_assert_eq!(decoder.next_frame(), Err(e.clone()));
                prop_assert_eq!(decoder.finish(), Err(e));
            }
            None => {
                let end = decoder.finish();
                prop_assert_eq!(end.is_ok(), decoder.buffered_len() == 0);
                if let Err(e) = end {
                    prop_assert!(e.is_truncated());
                }
            }
        }
    }

    #[test]
    fn decoding_is_canonical(frame in near_valid_frame()) {
        // Whatever frame decodes re-encodes to exactly the same bytes: there is
        // one encoding per message, so no byte of a frame goes unchecked.
        let mut raw = FrameEncoder::default();
        raw.push_frame(frame.kind, &frame.body).expect("fits");
        if let Ok(m) = ToParent::decode(frame.clone()) {
            prop_assert_eq!(encode_all(&[m]), raw.as_bytes());
        }
        if let Ok(m) = ToWorker::decode(frame.clone()) {
            prop_assert_eq!(encode_all(&[m]), raw.as_bytes());
        }
        if let Ok(m) = Hello::decode(frame) {
            prop_assert_eq!(encode_all(&[m]), raw.as_bytes());
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating(
        len in (MIN_FRAME_LIMIT + 1)..=u32::MAX,
        after in vec(any::<u8>(), 0..8),
        split in 0..4usize,
    ) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&after);
        let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
        decoder.feed(&bytes[..split]);
        prop_assert_eq!(decoder.next_frame(), Ok(None));
        decoder.feed(&bytes[split..]);
        let e = decoder.next_frame().unwrap_err();
        prop_assert!(e.is_oversized());
        prop_assert!(decoder.buffered_capacity() <= 64, "capacity {}", decoder.buffered_capacity());

        // The same through `read_from`: one read, then refused.
        let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
        let mut reader = &bytes[..];
        decoder.read_from(&mut reader).expect("reads");
        prop_assert!(decoder.next_frame().unwrap_err().is_oversized());
        prop_assert!(decoder.buffered_capacity() <= 64 * 1024);
    }

    #[test]
    fn a_stream_cut_inside_its_last_frame_is_truncated(
        up in vec(to_parent(), 1..6),
        cut_back in 1..100usize,
    ) {
        let bytes = encode_all(&up);
        let last_len = encode_all(&up[up.len() - 1..]).len();
        // 1 to `last_len - 1` bytes short: inside the last frame, not at its start.
        let cut = bytes.len() - cut_back.min(last_len - 1);
        let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
        decoder.feed(&bytes[..cut]);
        let mut got = Vec::new();
        while let Some(m) = decoder.next_message::<ToParent>().expect("valid so far") {
            got.push(m);
        }
        prop_assert_eq!(&got[..], &up[..up.len() - 1]);
        prop_assert!(decoder.finish().unwrap_err().is_truncated());
    }
}
