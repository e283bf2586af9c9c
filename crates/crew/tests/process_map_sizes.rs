//! `map` on a process pool returns what `submit` would, item for item, whatever
//! the output sizes (issue: chunk answers past the frame limit).
//!
//! Small fast items grow the chunks to thousands of items; when the later items
//! return 8 MiB each, one chunk's answer would pass the pool's frame
//! limit (64 MiB). Every item must still get its own result, not a failure
//! saying its result did not fit.
#![cfg(all(feature = "process", target_os = "linux"))]

mod common;

use common::{join, worker_processes};
use crew::{Context, Pool, StartError, Worker};
use serde_bytes::ByteBuf;

/// Items from this index on return [`BIG`] bytes; the ones before return a few.
const GROWS_AT: u32 = 20_000;
const ITEMS: u32 = 20_100;
/// Large enough that a chunk of more than 8 such items passes 64 MiB.
const BIG: usize = 8 << 20;

/// Returns `item` bytes, each the item's low byte: tiny at first, then large.
struct Grows;

impl Worker for Grows {
    type Input = u32;
    type Output = ByteBuf;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Grows)
    }

    fn run(&mut self, item: u32, _ctx: &mut Context<'_>) -> Result<ByteBuf, String> {
        let len = if item < GROWS_AT { 4 } else { BIG };
        Ok(ByteBuf::from(vec![item as u8; len]))
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Grows>().run();
}

/// Terminates the pool when dropped, so a failing test leaves no worker behind.
struct Reaped(Pool<Grows>);

impl Drop for Reaped {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

#[test]
fn map_returns_every_result_when_outputs_outgrow_a_chunk_answer() {
    let pool = Reaped(worker_processes::<Grows>(2).build().unwrap());
    // What `submit` gives, for a tiny item and for large ones.
    let expected = |item: u32| {
        let len = if item < GROWS_AT { 4 } else { BIG };
        vec![item as u8; len]
    };
    for item in [0, GROWS_AT, ITEMS - 1] {
        let alone = join(pool.0.submit(item).unwrap()).unwrap();
        assert_eq!(alone.as_slice(), expected(item).as_slice());
    }
    let mut failed = Vec::new();
    let mut count = 0;
    for (i, result) in pool.0.map(0..ITEMS).enumerate() {
        count += 1;
        let item = i as u32;
        match &result {
            Ok(out) if out.as_slice() == expected(item).as_slice() => {}
            _ => failed.push((item, result.map(|v| v.len()).map_err(|e| e.to_string()))),
        }
    }
    assert_eq!(count, ITEMS as usize);
    assert!(
        failed.is_empty(),
        "{} of {ITEMS} items differ from submit; first: {:?}",
        failed.len(),
        failed.first()
    );
}
