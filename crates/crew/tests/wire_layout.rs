//! The wire protocol's byte layout: every example in `src/wire/protocol.md`,
//! byte for byte, and a round trip of every message through the public API.

use crew::wire::{
    ChunkItems, ChunkOutcomes, Frame, FrameDecoder, FrameEncoder, Hello, ItemOutcome, Outcome,
    Role, ToParent, ToWorker, WireMessage, DEFAULT_FRAME_LIMIT, MAGIC, MIN_FRAME_LIMIT,
    PROTOCOL_VERSION,
};

/// Parses `"10 00 ff"` into bytes.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("test hex"))
        .collect()
}

fn encode<M: WireMessage>(message: &M) -> Vec<u8> {
    let mut out = FrameEncoder::default();
    out.push(message).expect("fits the default limit");
    out.as_bytes().to_vec()
}

/// Decodes exactly one message from `bytes`, fed all at once.
fn decode_one<M: WireMessage>(bytes: &[u8]) -> M {
    let mut decoder = FrameDecoder::default();
    decoder.feed(bytes);
    let message = decoder
        .next_message::<M>()
        .expect("valid")
        .expect("complete");
    assert_eq!(decoder.next_frame(), Ok(None));
    decoder.finish().expect("ends on a boundary");
    message
}

/// Checks that `message` encodes to exactly `expected` (as written in
/// protocol.md) and that those bytes decode back to `message`.
#[track_caller]
fn assert_layout<M: WireMessage + PartialEq + std::fmt::Debug>(message: M, expected: &str) {
    let bytes = hex(expected);
    assert_eq!(encode(&message), bytes, "encoding of {message:?}");
    assert_eq!(message.frame_len() + 4, bytes.len() as u64);
    assert_eq!(decode_one::<M>(&bytes), message);
}

#[test]
fn constants_are_the_documented_ones() {
    assert_eq!(PROTOCOL_VERSION, 5);
    assert_eq!(&MAGIC, b"CREW");
    assert_eq!(DEFAULT_FRAME_LIMIT, 64 << 20);
    assert_eq!(MIN_FRAME_LIMIT, 4096);
}

#[test]
fn hello_layout() {
    assert_layout(
        Hello {
            role: Role::Worker,
            pid: 4242,
            frame_limit: DEFAULT_FRAME_LIMIT,
        },
        "10 00 00 00  01  43 52 45 57  05 00  02  92 10 00 00  00 00 00 04",
    );
    assert_layout(
        Hello {
            role: Role::Parent,
            pid: 1,
            frame_limit: MIN_FRAME_LIMIT,
        },
        "10 00 00 00  01  43 52 45 57  05 00  01  01 00 00 00  00 10 00 00",
    );
}

#[test]
fn parent_to_worker_layouts() {
    assert_layout(
        ToWorker::Task {
            id: 7,
            key: Some(3),
            payload: b"hi".to_vec(),
        },
        "18 00 00 00  10  07 00 00 00 00 00 00 00  01 03 00 00 00 00 00 00 00  02 00 00 00 68 69",
    );
    assert_layout(
        ToWorker::Task {
            id: 7,
            key: None,
            payload: b"hi".to_vec(),
        },
        "10 00 00 00  10  07 00 00 00 00 00 00 00  00  02 00 00 00 68 69",
    );
    assert_layout(
        ToWorker::Cancel { id: 7 },
        "09 00 00 00  11  07 00 00 00 00 00 00 00",
    );
    assert_layout(
        ToWorker::Message {
            payload: b"hi".to_vec(),
        },
        "07 00 00 00  12  02 00 00 00 68 69",
    );
    assert_layout(ToWorker::Shutdown, "01 00 00 00  13");
    assert_layout(
        ToWorker::SharedTask {
            id: 7,
            key: None,
            offset: 8192,
            len: 1 << 20,
        },
        "1a 00 00 00  14  07 00 00 00 00 00 00 00  00  00 20 00 00 00 00 00 00  00 00 10 00 00 00 00 00",
    );
}

#[test]
fn worker_to_parent_layouts() {
    assert_layout(ToParent::Ready, "01 00 00 00  20");
    assert_layout(
        ToParent::StartFailed {
            message: "no".into(),
        },
        "07 00 00 00  21  02 00 00 00 6e 6f",
    );
    assert_layout(
        ToParent::Started { id: 7 },
        "09 00 00 00  22  07 00 00 00 00 00 00 00",
    );
    let done = |outcome| ToParent::Done { id: 7, outcome };
    assert_layout(
        done(Outcome::Ok(b"HI".to_vec())),
        "10 00 00 00  23  07 00 00 00 00 00 00 00  00  02 00 00 00 48 49",
    );
    assert_layout(
        done(Outcome::UserError(b"e".to_vec())),
        "0f 00 00 00  23  07 00 00 00 00 00 00 00  01  01 00 00 00 65",
    );
    assert_layout(
        done(Outcome::Panicked("boom".into())),
        "12 00 00 00  23  07 00 00 00 00 00 00 00  02  04 00 00 00 62 6f 6f 6d",
    );
    assert_layout(
        done(Outcome::NotStarted),
        "0a 00 00 00  23  07 00 00 00 00 00 00 00  03",
    );
    assert_layout(
        done(Outcome::TooLarge(100 << 20)),
        "12 00 00 00  23  07 00 00 00 00 00 00 00  04  00 00 40 06 00 00 00 00",
    );
    assert_layout(
        ToParent::Message {
            payload: b"hi".to_vec(),
        },
        "07 00 00 00  24  02 00 00 00 68 69",
    );
    assert_layout(
        ToParent::Progress {
            id: 7,
            fraction: 0.25,
        },
        "0d 00 00 00  26  07 00 00 00 00 00 00 00  00 00 80 3e",
    );
}

/// A *progress* carries any `f32`'s bits, NaN included: what a value means
/// is the receiver's policy (the pool ignores NaN and clamps), not a framing
/// error.
#[test]
fn progress_decodes_any_bits() {
    for bits in [
        f32::NAN.to_bits(),
        0xffff_ffff,
        (-1.5f32).to_bits(),
        f32::INFINITY.to_bits(),
    ] {
        let mut bytes = hex("0d 00 00 00  26  07 00 00 00 00 00 00 00");
        bytes.extend_from_slice(&bits.to_le_bytes());
        let ToParent::Progress { id, fraction } = decode_one::<ToParent>(&bytes) else {
            panic!("not a progress")
        };
        assert_eq!((id, fraction.to_bits()), (7, bits));
    }
}

fn items(inputs: &[&[u8]]) -> ChunkItems {
    let mut items = ChunkItems::new();
    for input in inputs {
        items.push(input);
    }
    items
}

fn outcomes(each: &[ItemOutcome<'_>]) -> ChunkOutcomes {
    let mut outcomes = ChunkOutcomes::new();
    for outcome in each {
        outcomes.push(*outcome);
    }
    outcomes
}

#[test]
fn chunk_layouts() {
    assert_layout(
        ToWorker::Chunk {
            id: 7,
            items: items(&[b"hi", b""]),
        },
        "17 00 00 00  15  07 00 00 00 00 00 00 00  02 00 00 00  02 00 00 00 68 69  00 00 00 00",
    );
    assert_layout(
        ToParent::ChunkDone {
            id: 7,
            run_nanos: 1000,
            outcomes: outcomes(&[
                ItemOutcome::Ok(b"HI"),
                ItemOutcome::UserError(b"e"),
                ItemOutcome::Panicked("boom"),
            ]),
        },
        "2b 00 00 00  25  07 00 00 00 00 00 00 00  e8 03 00 00 00 00 00 00  03 00 00 00
         00 02 00 00 00 48 49  01 01 00 00 00 65  02 04 00 00 00 62 6f 6f 6d",
    );
    assert_layout(
        ToParent::ChunkDone {
            id: 7,
            run_nanos: 1000,
            outcomes: outcomes(&[ItemOutcome::Ok(b"HI"), ItemOutcome::TooLarge(100 << 20)]),
        },
        "25 00 00 00  25  07 00 00 00 00 00 00 00  e8 03 00 00 00 00 00 00  02 00 00 00
         00 02 00 00 00 48 49  03 00 00 40 06 00 00 00 00",
    );
}

#[test]
fn chunks_hand_back_their_items_and_outcomes_in_order() {
    let sent = items(&[b"a", b"", &[0xff; 300]]);
    let ToWorker::Chunk { items: got, .. } = decode_one(&encode(&ToWorker::Chunk {
        id: 1,
        items: sent.clone(),
    })) else {
        panic!("not a chunk")
    };
    assert_eq!(got.len(), 3);
    assert_eq!(got.encoded_len(), sent.encoded_len());
    let inputs: Vec<&[u8]> = got.iter().collect();
    assert_eq!(inputs, [&b"a"[..], b"", &[0xff; 300]]);

    let each = [
        ItemOutcome::Panicked("✗"),
        ItemOutcome::Ok(b""),
        ItemOutcome::Ok(b"x"),
        ItemOutcome::UserError(b"no"),
        ItemOutcome::TooLarge(u64::MAX),
        ItemOutcome::Ok(b"after"),
    ];
    let ToParent::ChunkDone { outcomes: got, .. } = decode_one(&encode(&ToParent::ChunkDone {
        id: 1,
        run_nanos: u64::MAX,
        outcomes: outcomes(&each),
    })) else {
        panic!("not a chunk done")
    };
    assert_eq!(got.iter().collect::<Vec<_>>(), each);
    assert_eq!(got.tally(), (3, 1, 1));
    assert_eq!(got.too_large(), 1);
}

/// Every message, with edge values (zero, maximum, empty, non-ASCII).
fn every_to_worker() -> Vec<ToWorker> {
    vec![
        ToWorker::Task {
            id: 0,
            key: None,
            payload: Vec::new(),
        },
        ToWorker::Task {
            id: u64::MAX,
            key: Some(u64::MAX),
            payload: vec![0; 1000],
        },
        ToWorker::Task {
            id: 1,
            key: Some(0),
            payload: (0..=255).collect(),
        },
        ToWorker::Cancel { id: 0 },
        ToWorker::Cancel { id: u64::MAX },
        ToWorker::Message {
            payload: Vec::new(),
        },
        ToWorker::Message {
            payload: b"\x00\xff".to_vec(),
        },
        ToWorker::Shutdown,
        ToWorker::Chunk {
            id: 0,
            items: ChunkItems::new(),
        },
        ToWorker::Chunk {
            id: u64::MAX,
            items: items(&[b"", &[1; 1000], b"z"]),
        },
    ]
}

fn every_to_parent() -> Vec<ToParent> {
    vec![
        ToParent::Ready,
        ToParent::StartFailed {
            message: String::new(),
        },
        ToParent::StartFailed {
            message: "could not open «db» ✗".into(),
        },
        ToParent::Started { id: 0 },
        ToParent::Started { id: u64::MAX },
        ToParent::Done {
            id: 1,
            outcome: Outcome::Ok(Vec::new()),
        },
        ToParent::Done {
            id: 2,
            outcome: Outcome::Ok(vec![7; 300]),
        },
        ToParent::Done {
            id: 3,
            outcome: Outcome::UserError(b"bad input".to_vec()),
        },
        ToParent::Done {
            id: 4,
            outcome: Outcome::Panicked(String::new()),
        },
        ToParent::Done {
            id: u64::MAX,
            outcome: Outcome::Panicked("attempt to divide by zero 🦀".into()),
        },
        ToParent::Done {
            id: 5,
            outcome: Outcome::NotStarted,
        },
        ToParent::Done {
            id: 6,
            outcome: Outcome::TooLarge(0),
        },
        ToParent::Done {
            id: 7,
            outcome: Outcome::TooLarge(u64::MAX),
        },
        ToParent::Message {
            payload: Vec::new(),
        },
        ToParent::Message {
            payload: vec![1, 2, 3],
        },
        ToParent::ChunkDone {
            id: 0,
            run_nanos: 0,
            outcomes: ChunkOutcomes::new(),
        },
        ToParent::Progress {
            id: 0,
            fraction: 0.0,
        },
        ToParent::Progress {
            id: u64::MAX,
            fraction: 1.0,
        },
        ToParent::Progress {
            id: 9,
            fraction: -7.5,
        },
        ToParent::ChunkDone {
            id: u64::MAX,
            run_nanos: 12_345,
            outcomes: outcomes(&[
                ItemOutcome::Ok(&[7; 300]),
                ItemOutcome::Panicked("attempt to divide by zero 🦀"),
                ItemOutcome::TooLarge(1 << 30),
                ItemOutcome::UserError(b""),
            ]),
        },
    ]
}

#[test]
fn every_message_round_trips_alone() {
    for message in every_to_worker() {
        assert_eq!(decode_one::<ToWorker>(&encode(&message)), message);
    }
    for message in every_to_parent() {
        assert_eq!(decode_one::<ToParent>(&encode(&message)), message);
    }
    for role in [Role::Parent, Role::Worker] {
        for frame_limit in [MIN_FRAME_LIMIT, DEFAULT_FRAME_LIMIT, u32::MAX] {
            let hello = Hello {
                role,
                pid: u32::MAX,
                frame_limit,
            };
            assert_eq!(decode_one::<Hello>(&encode(&hello)), hello);
        }
    }
}

#[test]
fn every_message_round_trips_in_one_batch() {
    let mut batch = FrameEncoder::default();
    batch
        .push(&Hello::new(Role::Worker, DEFAULT_FRAME_LIMIT))
        .expect("fits");
    for message in every_to_parent() {
        batch.push(&message).expect("fits");
    }
    let mut decoder = FrameDecoder::default();
    decoder.feed(batch.as_bytes());
    let hello: Hello = decoder.next_message().expect("valid").expect("complete");
    assert_eq!(hello.role, Role::Worker);
    assert_eq!(hello.pid, std::process::id());
    let mut got = Vec::new();
    while let Some(message) = decoder.next_message::<ToParent>().expect("valid") {
        got.push(message);
    }
    decoder.finish().expect("ends on a boundary");
    assert_eq!(got, every_to_parent());
}

#[test]
fn payloads_are_handed_over_as_they_were() {
    // The decoder reuses the body's buffer for the payload (the last field); the
    // bytes must come out exactly, whatever precedes them.
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let task = ToWorker::Task {
        id: 9,
        key: Some(42),
        payload: payload.clone(),
    };
    match decode_one::<ToWorker>(&encode(&task)) {
        ToWorker::Task { payload: got, .. } => assert_eq!(got, payload),
        other => panic!("decoded {other:?}"),
    }
}

#[test]
fn frames_decode_without_a_message_type() {
    let bytes = encode(&ToParent::Started { id: 7 });
    let mut decoder = FrameDecoder::default();
    decoder.feed(&bytes);
    let frame = decoder.next_frame().expect("valid").expect("complete");
    assert_eq!(frame, Frame::new(0x22, 7u64.to_le_bytes().to_vec()));
    assert_eq!(
        ToParent::decode(frame.clone()),
        Ok(ToParent::Started { id: 7 })
    );
    // The same frame is not something a parent sends.
    assert!(ToWorker::decode(frame).unwrap_err().is_unexpected_kind());
}

#[test]
fn raw_frames_encode_as_documented() {
    let mut out = FrameEncoder::default();
    out.push_frame(0x20, &[]).expect("fits");
    out.push_frame(0xab, b"xyz").expect("fits");
    assert_eq!(
        out.as_bytes(),
        hex("01 00 00 00 20  04 00 00 00 ab 78 79 7a")
    );
}

#[test]
fn handshake_both_ways() {
    // Each side sends its hello without waiting for the other's.
    let parent_hello = Hello::new(Role::Parent, DEFAULT_FRAME_LIMIT);
    let worker_hello = Hello::new(Role::Worker, MIN_FRAME_LIMIT);

    let at_worker: Hello = decode_one(&encode(&parent_hello));
    at_worker.check_role(Role::Parent).expect("from a parent");
    let at_parent: Hello = decode_one(&encode(&worker_hello));
    at_parent.check_role(Role::Worker).expect("from a worker");

    // The wrong side's hello is a handshake error.
    let err = at_parent.check_role(Role::Parent).unwrap_err();
    assert!(err.is_handshake());
    assert!(!err.is_version_mismatch());

    // The parent then keeps to the worker's limit.
    let mut to_worker = FrameEncoder::default();
    to_worker.set_frame_limit(at_parent.frame_limit);
    assert_eq!(to_worker.frame_limit(), MIN_FRAME_LIMIT);
    let too_big = ToWorker::Task {
        id: 1,
        key: None,
        payload: vec![0; MIN_FRAME_LIMIT as usize],
    };
    assert!(to_worker.push(&too_big).unwrap_err().is_oversized());
    assert!(to_worker.is_empty());
}

#[test]
fn hello_new_raises_a_tiny_limit_to_the_minimum() {
    assert_eq!(Hello::new(Role::Parent, 0).frame_limit, MIN_FRAME_LIMIT);
    assert_eq!(FrameDecoder::new(0).frame_limit(), MIN_FRAME_LIMIT);
    assert_eq!(
        FrameDecoder::new(u32::MAX).frame_limit(),
        u32::MAX,
        "any limit above the minimum is kept"
    );
}

#[test]
fn debug_output_stays_short_for_large_payloads() {
    let task = ToWorker::Task {
        id: 1,
        key: None,
        payload: vec![b'a'; 10_000_000],
    };
    let shown = format!("{task:?}");
    assert!(shown.len() < 200, "{shown}");
    assert!(shown.contains("10000000 bytes"), "{shown}");
    let frame = Frame::new(0x10, vec![0; 1_000_000]);
    assert!(format!("{frame:?}").len() < 200);
    assert_eq!(
        format!("{:?}", Outcome::Ok(b"hi\n".to_vec())),
        r#"Ok(b"hi\n")"#
    );
}
