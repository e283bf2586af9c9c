//! `Events` and `Messages` are `futures_core::Stream`s: read with `StreamExt::next`
//! until the pool shuts down and the stream ends.

use futures::executor::block_on;
use futures::StreamExt;

use crew::{Context, Event, Pool, StartError, Worker};

/// Sends one message per task.
struct Talker;

impl Worker for Talker {
    type Input = u32;
    type Output = ();
    type Error = String;
    type Message = u32;

    fn start(_: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Talker)
    }

    fn run(&mut self, n: u32, ctx: &mut Context<'_>) -> Result<(), String> {
        ctx.send(n).map_err(|e| e.to_string())
    }
}

#[test]
fn events_stream_to_its_end() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let mut events = pool.events();
    let task = pool.spawn(|| 1);
    block_on(task).unwrap();
    pool.shutdown();
    let seen: Vec<Event> = block_on(async {
        let mut seen = Vec::new();
        // Both an `Iterator` (blocking) and a `Stream`: name the trait.
        while let Some(event) = StreamExt::next(&mut events).await {
            seen.push(event);
        }
        seen
    });
    assert!(
        seen.iter().any(|e| matches!(e, Event::TaskFinished { .. })),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|e| matches!(e, Event::WorkerExited { .. })),
        "{seen:?}"
    );
}

#[test]
fn messages_stream_in_order_to_their_end() {
    let pool = Pool::<Talker>::builder().workers(1).build().unwrap();
    let messages = pool.messages();
    for n in 0..5 {
        block_on(pool.submit(n).unwrap()).unwrap();
    }
    pool.shutdown();
    let got: Vec<u32> = block_on(StreamExt::map(messages, |(_, n)| n).collect());
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}
