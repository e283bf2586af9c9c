//! Nasty inputs for the wire protocol, one per test: each must be refused with
//! its own `ProtocolError` kind, without a panic and without allocating on the
//! input's say-so (`src/wire/protocol.md`, "Errors").

use crew::wire::{
    Frame, FrameDecoder, FrameEncoder, Hello, ProtocolError, Role, ToParent, ToWorker, WireMessage,
    MIN_FRAME_LIMIT, PROTOCOL_VERSION,
};

/// A frame's bytes: `len`, `kind`, `body`.
fn frame_bytes(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// The error from feeding `bytes` to a fresh decoder (with the smallest limit)
/// and taking one frame.
#[track_caller]
fn frame_error(bytes: &[u8]) -> ProtocolError {
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    decoder.feed(bytes);
    decoder.next_frame().expect_err("a framing error")
}

#[track_caller]
fn from_worker(kind: u8, body: &[u8]) -> ProtocolError {
    ToParent::decode(Frame::new(kind, body.to_vec())).expect_err("a protocol error")
}

#[track_caller]
fn from_parent(kind: u8, body: &[u8]) -> ProtocolError {
    ToWorker::decode(Frame::new(kind, body.to_vec())).expect_err("a protocol error")
}

#[track_caller]
fn hello_error(body: &[u8]) -> ProtocolError {
    Hello::decode(Frame::new(0x01, body.to_vec())).expect_err("a handshake error")
}

fn hello_body(version: u16, role: u8, frame_limit: u32) -> Vec<u8> {
    let mut body = b"CREW".to_vec();
    body.extend_from_slice(&version.to_le_bytes());
    body.push(role);
    body.extend_from_slice(&1234u32.to_le_bytes());
    body.extend_from_slice(&frame_limit.to_le_bytes());
    body
}

/// Displays as one sentence: one line, not empty, no trailing period.
#[track_caller]
fn assert_one_sentence(e: &ProtocolError) {
    let text = e.to_string();
    assert!(
        !text.is_empty() && !text.contains('\n') && !text.ends_with('.'),
        "{text:?}"
    );
}

// ---- framing -----------------------------------------------------------------

#[test]
fn length_u32_max_is_refused_before_allocating() {
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    decoder.feed(&[0xff, 0xff, 0xff, 0xff, 0x10]);
    let e = decoder.next_frame().unwrap_err();
    assert!(e.is_oversized(), "{e}");
    assert!(e.to_string().contains("4294967295"), "{e}");
    assert!(decoder.buffered_capacity() < 64, "{decoder:?}");
    assert_one_sentence(&e);
}

#[test]
fn length_just_over_the_limit_is_refused_and_at_the_limit_accepted() {
    let e = frame_error(&(MIN_FRAME_LIMIT + 1).to_le_bytes());
    assert!(e.is_oversized());

    let body = vec![0x5a; MIN_FRAME_LIMIT as usize - 1];
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    decoder.feed(&frame_bytes(0x12, &body));
    let frame = decoder
        .next_frame()
        .expect("at the limit")
        .expect("complete");
    assert_eq!(frame.body, body);
}

#[test]
fn length_zero_is_an_empty_frame() {
    let e = frame_error(&[0, 0, 0, 0]);
    assert!(e.is_empty_frame(), "{e}");
    assert_one_sentence(&e);
    // Even with bytes after it.
    assert!(frame_error(&[0, 0, 0, 0, 0x20, 0x20]).is_empty_frame());
}

#[test]
fn text_on_the_channel_shows_its_bytes() {
    // A worker that prints to its channel: "Hello" makes a huge length.
    let e = frame_error(b"Hello, world!\n");
    assert!(e.is_oversized());
    assert!(e.to_string().contains("Hell"), "{e}");
}

#[test]
fn a_partial_length_field_is_not_an_error_until_the_end() {
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    decoder.feed(&[5, 0, 0]);
    assert_eq!(decoder.next_frame(), Ok(None));
    let e = decoder.finish().unwrap_err();
    assert!(e.is_truncated(), "{e}");
    assert_one_sentence(&e);
}

#[test]
fn a_partial_body_is_truncated_at_the_end() {
    let mut bytes = frame_bytes(0x22, &7u64.to_le_bytes());
    bytes.pop();
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    decoder.feed(&bytes);
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.buffered_len(), bytes.len());
    assert!(decoder.finish().unwrap_err().is_truncated());
}

#[test]
fn an_empty_stream_finishes_cleanly() {
    let decoder = FrameDecoder::default();
    assert_eq!(decoder.finish(), Ok(()));
}

#[test]
fn errors_are_sticky() {
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    decoder.feed(&[0, 0, 0, 0]);
    let first = decoder.next_frame().unwrap_err();
    // A valid frame after the error is not taken: the boundary is lost.
    decoder.feed(&frame_bytes(0x20, &[]));
    assert_eq!(decoder.next_frame(), Err(first.clone()));
    assert_eq!(decoder.finish(), Err(first));
    assert_eq!(decoder.buffered_len(), 0);
    assert_eq!(decoder.buffered_capacity(), 0, "the buffer is let go");
}

#[test]
fn a_message_that_does_not_decode_makes_the_stream_fail() {
    let mut decoder = FrameDecoder::new(MIN_FRAME_LIMIT);
    decoder.feed(&frame_bytes(0xff, &[]));
    decoder.feed(&frame_bytes(0x20, &[]));
    let e = decoder.next_message::<ToParent>().unwrap_err();
    assert!(e.is_unexpected_kind());
    assert_eq!(decoder.next_message::<ToParent>(), Err(e));
}

// ---- kinds ---------------------------------------------------------------------

#[test]
fn kind_0xff_is_unknown_both_ways() {
    let e = from_worker(0xff, &[]);
    assert!(e.is_unexpected_kind(), "{e}");
    assert!(e.to_string().contains("0xff"), "{e}");
    assert_one_sentence(&e);
    assert!(from_parent(0xff, &[]).is_unexpected_kind());
    assert!(from_worker(0x00, &[]).is_unexpected_kind());
}

#[test]
fn kinds_from_the_wrong_side_are_refused() {
    // A worker sending a task, a parent sending a done.
    let e = from_worker(0x10, &[0; 13]);
    assert!(e.is_unexpected_kind());
    assert!(e.to_string().contains("task"), "{e}");
    assert!(from_parent(0x23, &[0; 9]).is_unexpected_kind());
    assert!(from_parent(0x26, &[0; 12]).is_unexpected_kind());
    // A hello after the handshake.
    let e = from_worker(0x01, &hello_body(PROTOCOL_VERSION, 2, MIN_FRAME_LIMIT));
    assert!(e.is_unexpected_kind());
    assert!(e.to_string().contains("hello"), "{e}");
}

// ---- fields --------------------------------------------------------------------

#[test]
fn progress_must_be_exactly_an_id_and_a_fraction() {
    assert!(from_worker(0x26, &[0; 11]).is_overrun());
    assert!(from_worker(0x26, &[0; 13]).is_trailing_bytes());
    assert!(from_worker(0x26, &[]).is_overrun());
}

#[test]
fn done_with_a_string_longer_than_the_frame_overruns() {
    let mut body = 7u64.to_le_bytes().to_vec();
    body.push(2); // panicked
    body.extend_from_slice(&1000u32.to_le_bytes());
    body.extend_from_slice(b"short");
    let e = from_worker(0x23, &body);
    assert!(e.is_overrun(), "{e}");
    assert_one_sentence(&e);
}

#[test]
fn a_length_of_u32_max_inside_a_body_overruns_without_allocating() {
    for outcome in [0u8, 1, 2] {
        let mut body = 7u64.to_le_bytes().to_vec();
        body.push(outcome);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(from_worker(0x23, &body).is_overrun());
    }
    let mut task = 1u64.to_le_bytes().to_vec();
    task.push(0);
    task.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(from_parent(0x10, &task).is_overrun());
    assert!(from_worker(0x21, &u32::MAX.to_le_bytes()).is_overrun());
}

#[test]
fn bodies_that_end_inside_a_field_overrun() {
    assert!(from_worker(0x22, &[7, 0, 0]).is_overrun()); // started, short id
    assert!(from_parent(0x11, &[]).is_overrun()); // cancel, no id
    assert!(from_worker(0x23, &7u64.to_le_bytes()).is_overrun()); // done, no outcome
    assert!(from_parent(0x10, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 3]).is_overrun()); // task, short key
    assert!(from_parent(0x12, &[2, 0]).is_overrun()); // message, short length
}

#[test]
fn invalid_utf8_in_panicked_and_start_failed() {
    let mut body = 7u64.to_le_bytes().to_vec();
    body.push(2);
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[0xc3, 0x28]);
    let e = from_worker(0x23, &body);
    assert!(e.is_invalid_utf8(), "{e}");
    assert_one_sentence(&e);

    let mut body = 1u32.to_le_bytes().to_vec();
    body.push(0xff);
    assert!(from_worker(0x21, &body).is_invalid_utf8());
}

#[test]
fn trailing_bytes_after_the_last_field() {
    let e = from_parent(0x11, &[7, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(e.is_trailing_bytes(), "{e}");
    assert_one_sentence(&e);
    assert!(from_parent(0x13, &[0]).is_trailing_bytes()); // shutdown has no body
    assert!(from_worker(0x20, &[0]).is_trailing_bytes()); // nor ready
                                                          // A payload shorter than what follows its length.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(b"ab");
    assert!(from_worker(0x24, &body).is_trailing_bytes());
    // Not started carries nothing.
    let mut done = 7u64.to_le_bytes().to_vec();
    done.extend_from_slice(&[3, 0]);
    assert!(from_worker(0x23, &done).is_trailing_bytes());
}

#[test]
fn tags_with_no_meaning() {
    let mut task = 1u64.to_le_bytes().to_vec();
    task.push(2); // key tag: only 0 or 1
    task.extend_from_slice(&[0; 12]);
    let e = from_parent(0x10, &task);
    assert!(e.is_invalid_tag(), "{e}");
    assert_one_sentence(&e);

    let mut done = 1u64.to_le_bytes().to_vec();
    done.push(5); // outcome tag: 0 to 4
    assert!(from_worker(0x23, &done).is_invalid_tag());
}

#[test]
fn a_too_large_outcome_carries_exactly_its_size() {
    let mut done = 1u64.to_le_bytes().to_vec();
    done.push(4);
    done.extend_from_slice(&[0; 7]); // a size cut short
    assert!(from_worker(0x23, &done).is_overrun());
    done.extend_from_slice(&[0; 2]); // a byte after it
    assert!(from_worker(0x23, &done).is_trailing_bytes());
    // The same in a chunk done: a tag 3 and eight bytes, no length field.
    assert!(from_worker(0x25, &chunk_done_body(1, &[3, 1, 0, 0, 0])).is_overrun());
    assert!(
        from_worker(0x25, &chunk_done_body(1, &[3, 1, 0, 0, 0, 0, 0, 0, 0, 9])).is_trailing_bytes()
    );
}

/// A chunk body: id 7, then `count`, then `rest` as it is.
fn chunk_body(count: u32, rest: &[u8]) -> Vec<u8> {
    let mut body = 7u64.to_le_bytes().to_vec();
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(rest);
    body
}

/// A chunk done body: id 7, run time 1, then `count`, then `rest` as it is.
fn chunk_done_body(count: u32, rest: &[u8]) -> Vec<u8> {
    let mut body = 7u64.to_le_bytes().to_vec();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(rest);
    body
}

#[test]
fn a_chunk_whose_items_do_not_fill_its_count_overruns() {
    // Two items announced, one there.
    let e = from_parent(0x15, &chunk_body(2, &[1, 0, 0, 0, b'a']));
    assert!(e.is_overrun(), "{e}");
    assert_one_sentence(&e);
    // A huge count over an empty body fails at once, without allocating.
    assert!(from_parent(0x15, &chunk_body(u32::MAX, &[])).is_overrun());
    // An item whose length runs past the body.
    assert!(from_parent(0x15, &chunk_body(1, &u32::MAX.to_le_bytes())).is_overrun());
    // A chunk done with fewer outcomes than its count.
    assert!(from_worker(0x25, &chunk_done_body(3, &[0, 0, 0, 0, 0])).is_overrun());
    // Only from the side that sends it.
    assert!(from_worker(0x15, &chunk_body(0, &[])).is_unexpected_kind());
    assert!(from_parent(0x25, &chunk_done_body(0, &[])).is_unexpected_kind());
}

#[test]
fn a_chunk_with_more_than_its_count_has_trailing_bytes() {
    let e = from_parent(0x15, &chunk_body(1, &[1, 0, 0, 0, b'a', 0]));
    assert!(e.is_trailing_bytes(), "{e}");
    assert!(from_worker(0x25, &chunk_done_body(0, &[0])).is_trailing_bytes());
}

#[test]
fn a_chunk_done_with_a_bad_tag_or_a_bad_panic_message_is_refused() {
    // Tags go up to 3 (too large). Not started is not an item outcome: a
    // chunk that never began is answered with *done*.
    let e = from_worker(0x25, &chunk_done_body(1, &[4, 0, 0, 0, 0]));
    assert!(e.is_invalid_tag(), "{e}");
    assert_one_sentence(&e);
    let e = from_worker(0x25, &chunk_done_body(1, &[2, 2, 0, 0, 0, 0xc3, 0x28]));
    assert!(e.is_invalid_utf8(), "{e}");
}

// ---- handshake -------------------------------------------------------------------

#[test]
fn hello_with_the_wrong_magic() {
    let mut body = hello_body(PROTOCOL_VERSION, 2, MIN_FRAME_LIMIT);
    body[..4].copy_from_slice(b"HTTP");
    let e = hello_error(&body);
    assert!(e.is_handshake(), "{e}");
    assert!(e.to_string().contains("HTTP"), "{e}");
    assert_one_sentence(&e);
    // Shorter than the magic.
    assert!(hello_error(b"CR").is_handshake());
    assert!(hello_error(b"").is_handshake());
}

#[test]
fn hello_of_another_version() {
    let other = PROTOCOL_VERSION + 1;
    let e = hello_error(&hello_body(other, 2, MIN_FRAME_LIMIT));
    assert!(e.is_handshake() && e.is_version_mismatch(), "{e}");
    assert_eq!(e.peer_version(), Some(other));
    assert_one_sentence(&e);
    // Nothing after the version is read: a future hello may be laid out otherwise.
    let e = hello_error(b"CREW\x07\x00whatever follows");
    assert_eq!(e.peer_version(), Some(7));
}

#[test]
fn hello_that_is_not_first() {
    let e = Hello::decode(Frame::new(0x10, vec![0; 13])).unwrap_err();
    assert!(e.is_handshake(), "{e}");
    assert!(!e.is_version_mismatch());
    assert_one_sentence(&e);
}

#[test]
fn hello_with_a_bad_role_a_tiny_limit_or_extra_bytes() {
    assert!(hello_error(&hello_body(PROTOCOL_VERSION, 0, MIN_FRAME_LIMIT)).is_invalid_tag());
    assert!(hello_error(&hello_body(PROTOCOL_VERSION, 3, MIN_FRAME_LIMIT)).is_invalid_tag());

    let e = hello_error(&hello_body(PROTOCOL_VERSION, 2, MIN_FRAME_LIMIT - 1));
    assert!(e.is_handshake(), "{e}");
    assert_one_sentence(&e);

    let mut body = hello_body(PROTOCOL_VERSION, 2, MIN_FRAME_LIMIT);
    body.push(0);
    assert!(hello_error(&body).is_trailing_bytes());
    assert!(hello_error(&body[..8]).is_overrun());
}

#[test]
fn hello_from_the_wrong_side() {
    let hello = Hello::decode(Frame::new(
        0x01,
        hello_body(PROTOCOL_VERSION, 1, MIN_FRAME_LIMIT),
    ))
    .expect("a valid hello");
    assert_eq!(hello.role, Role::Parent);
    let e = hello.check_role(Role::Worker).unwrap_err();
    assert!(e.is_handshake(), "{e}");
    assert_one_sentence(&e);
}

// ---- sending ---------------------------------------------------------------------

#[test]
fn an_oversized_message_is_refused_before_any_byte_is_written() {
    let mut out = FrameEncoder::new(MIN_FRAME_LIMIT);
    out.push(&ToParent::Ready).expect("fits");
    let before = out.as_bytes().to_vec();

    // The frame length is 1 (kind) + 8 (id) + 1 (tag) + 4 (length) + payload.
    let fits = vec![0; MIN_FRAME_LIMIT as usize - 14];
    let done = |payload: Vec<u8>| ToParent::Done {
        id: 1,
        outcome: crew::wire::Outcome::Ok(payload),
    };
    let mut too_big = fits.clone();
    too_big.push(0);
    let e = out.push(&done(too_big)).unwrap_err();
    assert!(e.is_oversized(), "{e}");
    assert_one_sentence(&e);
    assert_eq!(
        out.as_bytes(),
        before,
        "nothing of the refused frame is written"
    );

    out.push(&done(fits)).expect("exactly at the limit");
    assert_eq!(out.len(), before.len() + 4 + MIN_FRAME_LIMIT as usize);
    assert!(out.push_frame(0x24, &[0; 5000]).unwrap_err().is_oversized());
}

#[test]
fn protocol_errors_convert_to_invalid_data() {
    let e = frame_error(&[0, 0, 0, 0]);
    let io: std::io::Error = e.clone().into();
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
    let inner = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ProtocolError>());
    assert_eq!(inner, Some(&e));
}
