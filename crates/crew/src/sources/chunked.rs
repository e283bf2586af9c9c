//! `map`, `map_window` and `map_unordered` on a process pool: the inputs travel
//! in *chunks* of many items (`backend/chunks.rs`; the process backend's in
//! `processes/chunks.rs`), and results still come out
//! one per item.
//!
//! # Chunk size
//!
//! Adaptive, as joblib's auto-batching: a chunk should take the worker about
//! [`TARGET`] to run, long enough that the per-chunk costs (a frame each way, a
//! pass through the pool's lock, a wake-up) vanish behind the items, short enough
//! that a cancel, the end of the input or a slow item is not held back.
//!
//! - The first chunks hold one item each, so a short map, or a map of slow items,
//!   starts at once.
//! - Every answered chunk says how long its items ran (measured in the worker).
//!   From the time per item, the ideal size is `TARGET / per item`. The size moves
//!   to it when the last chunk ran under half the target or over twice it (not in
//!   between, so it does not jitter), by at most ×8 up or ÷4 down per answer:
//!   from one item to tens of thousands takes five or six answers.
//! - At most [`MAX_ITEMS`] items, and about 1 MiB of encoded input (the pool cuts
//!   a chunk there), so a few chunks in flight hold little memory.
//! - When the input's length is known, no chunk holds more than the items left
//!   divided by four per worker (as `multiprocessing.Pool.map`'s chunksize, but of
//!   what is left, so chunks shrink towards the end and no worker is left with a
//!   long last chunk while the others idle).
//! - [`CHUNKS_PER_WORKER`] chunks per worker are kept in flight, so a worker has
//!   the next chunk in its window when it finishes one.
//!
//! # The window
//!
//! `map` keeps at most `CHUNKS_PER_WORKER × size` chunks in flight, and no item
//! bound beyond that. `map_window(inputs, n)` also keeps at most `n` items pulled
//! and not handed out, by cutting chunks to the room left.
//!
//! # Failures
//!
//! A chunk that fails as a whole (cancelled, closed, killed, a start failure)
//! gives each of its items that failure. A chunk whose worker crashed comes back
//! as one task per item, joined in order (so `map_unordered` waits for all of a
//! split chunk's items before yielding the next finished chunk's). Dropping the
//! iterator cancels every chunk and task in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as PollContext, Poll, Waker};
use std::time::Duration;

use super::{SlotWaker, Woken};
use crate::backend::{Batch, ChunkResults, Delivered, Engine};
use crate::error::{Failure, TaskError};
use crate::sync::lock;
use crate::worker::Worker;

/// How long a chunk should take the worker to run.
const TARGET: Duration = Duration::from_millis(2);
/// The most items in one chunk.
const MAX_ITEMS: usize = 1 << 16;
/// Chunks kept in flight per worker.
const CHUNKS_PER_WORKER: usize = 3;

/// The adaptive chunk size (module docs, "Chunk size").
#[derive(Debug)]
struct Sizer {
    size: usize,
}

impl Sizer {
    fn new() -> Self {
        Sizer { size: 1 }
    }

    /// A chunk of `items` ran for `run` in its worker.
    fn observe(&mut self, items: usize, run: Duration) {
        if items == 0 {
            return;
        }
        let per_item = run.as_secs_f64() / items as f64;
        let ran = per_item * self.size as f64;
        let target = TARGET.as_secs_f64();
        if ran > target / 2.0 && ran < target * 2.0 {
            return;
        }
        let ideal = if per_item > 0.0 {
            target / per_item
        } else {
            f64::INFINITY
        };
        let size = self.size as f64;
        self.size = ideal
            .clamp(size / 4.0, size * 8.0)
            .clamp(1.0, MAX_ITEMS as f64) as usize;
    }
}

/// Pulls up to `n` items into chunks; returns them and whether the input ended.
type PullChunk<'a, T, E> = Box<dyn FnMut(usize) -> (Vec<Batch<T, E>>, bool) + 'a>;

/// One unit in flight: a chunk, a task, or refused items.
struct Unit<T, E> {
    /// Its number, named by its waker.
    seq: usize,
    /// The input index of its first item.
    base: usize,
    batch: Batch<T, E>,
}

/// The chunked window behind `Map` and `MapUnordered` on a process pool.
pub(super) struct Chunked<'a, T, E> {
    pull: PullChunk<'a, T, E>,
    /// Items the input still holds, when it knows exactly.
    remaining: Option<usize>,
    workers: usize,
    /// Items pulled and not handed out, at most.
    window: usize,
    max_units: usize,
    sizer: Sizer,
    exhausted: bool,
    /// In submission order.
    units: VecDeque<Unit<T, E>>,
    /// Items in `units`.
    pending: usize,
    /// Results not yet handed out, with their input index.
    ready: VecDeque<(usize, Result<T, TaskError<E>>)>,
    next_index: usize,
    next_seq: usize,
    ordered: bool,
    woken: Arc<Woken>,
}

impl<'a, T, E> Chunked<'a, T, E> {
    /// A chunked window over `inputs` on `engine`'s pool of `workers`.
    pub(super) fn new<W, I>(
        engine: Arc<dyn Engine<W>>,
        inputs: I,
        workers: usize,
        window: Option<usize>,
        ordered: bool,
    ) -> Self
    where
        W: Worker<Output = T, Error = E>,
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: 'a,
    {
        Chunked::through(engine, inputs, workers, window, ordered, |batch| batch)
    }

    /// A chunked window whose results go through `convert` (a pool of
    /// functions, `functions/`).
    #[cfg(all(feature = "process", target_os = "linux"))]
    pub(super) fn converted<W, I>(
        engine: Arc<dyn Engine<W>>,
        inputs: I,
        workers: usize,
        ordered: bool,
        convert: fn(Result<W::Output, TaskError<W::Error>>) -> Result<T, TaskError<E>>,
    ) -> Self
    where
        W: Worker,
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: 'a,
        T: Send + 'static,
        E: Send + 'static,
    {
        Chunked::through(engine, inputs, workers, None, ordered, move |batch| {
            convert_batch(batch, convert)
        })
    }

    /// The window over `inputs`, each batch the engine hands back passed
    /// through `each`.
    fn through<W, I>(
        engine: Arc<dyn Engine<W>>,
        inputs: I,
        workers: usize,
        window: Option<usize>,
        ordered: bool,
        each: impl Fn(Batch<W::Output, W::Error>) -> Batch<T, E> + 'a,
    ) -> Self
    where
        W: Worker,
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: 'a,
    {
        let mut inputs = inputs.into_iter();
        let remaining = crate::feed::exact_len(inputs.size_hint()).map(|n| n as usize);
        let pull: PullChunk<'a, T, E> = Box::new(move |n| {
            let mut ended = false;
            let mut next = || {
                let input = inputs.next();
                ended |= input.is_none();
                input
            };
            let batches = engine.submit_chunk(&mut next, n);
            (batches.into_iter().map(&each).collect(), ended)
        });
        let workers = workers.max(1);
        Chunked {
            pull,
            remaining,
            workers,
            window: window.unwrap_or(usize::MAX).max(1),
            max_units: CHUNKS_PER_WORKER * workers,
            sizer: Sizer::new(),
            exhausted: false,
            units: VecDeque::new(),
            pending: 0,
            ready: VecDeque::new(),
            next_index: 0,
            next_seq: 0,
            ordered,
            woken: Arc::new(Woken::default()),
        }
    }

    /// Items pulled and not handed out.
    pub(super) fn in_flight(&self) -> usize {
        self.pending + self.ready.len()
    }

    /// Submits chunks while there is room.
    fn fill(&mut self) {
        while !self.exhausted && self.units.len() < self.max_units && self.in_flight() < self.window
        {
            let mut size = self.sizer.size.min(self.window - self.in_flight());
            if let Some(left) = self.remaining {
                size = size.min((left / (4 * self.workers)).max(1));
            }
            let (batches, ended) = (self.pull)(size);
            self.exhausted = ended;
            for batch in batches {
                let len = batch.len();
                if let Some(left) = &mut self.remaining {
                    *left = left.saturating_sub(len);
                }
                let unit = Unit {
                    seq: self.next_seq,
                    base: self.next_index,
                    batch,
                };
                self.next_seq += 1;
                self.next_index += len;
                self.pending += len;
                if !self.ordered {
                    // Registers its waker (or finds it finished already).
                    if let Some(unit) = self.poll_unit(unit) {
                        self.units.push_back(unit);
                    }
                } else {
                    self.units.push_back(unit);
                }
            }
        }
    }

    /// Polls `unit` with its own waker: settles it if it has finished, else
    /// gives it back.
    fn poll_unit(&mut self, mut unit: Unit<T, E>) -> Option<Unit<T, E>> {
        let waker = Waker::from(Arc::new(SlotWaker {
            woken: Arc::clone(&self.woken),
            slot: unit.seq,
        }));
        let mut cx = PollContext::from_waker(&waker);
        let polled = match &mut unit.batch {
            Batch::Task(task) => Pin::new(task).poll(&mut cx),
            Batch::Chunk(chunk) => Pin::new(&mut chunk.task).poll(&mut cx),
            Batch::Refused(_) => Poll::Ready(Err(TaskError::failure(Failure::Closed))),
        };
        match polled {
            Poll::Ready(result) => {
                let settled = match unit.batch {
                    Batch::Task(_) => Settled::One(result),
                    Batch::Refused(n) => Settled::Refused(n),
                    Batch::Chunk(chunk) => Settled::Chunk {
                        len: chunk.len,
                        results: chunk.results,
                        result,
                    },
                };
                self.settle(unit.base, settled);
                None
            }
            Poll::Pending => Some(unit),
        }
    }

    /// Puts a finished unit's items' results, in order, in `ready`.
    fn settle(&mut self, base: usize, settled: Settled<T, E>) {
        let mut index = base;
        let ready = &mut self.ready;
        let mut push = |r| {
            ready.push_back((index, r));
            index += 1;
        };
        match settled {
            Settled::One(result) => push(result),
            Settled::Refused(n) => {
                for _ in 0..n {
                    push(Err(TaskError::failure(Failure::Closed)));
                }
            }
            Settled::Chunk {
                len,
                results,
                result,
            } => match results.take() {
                Some(Delivered::Ran { results, run }) => {
                    self.sizer.observe(results.len(), run);
                    for r in results {
                        push(r);
                    }
                }
                Some(Delivered::Split(tasks)) => {
                    for task in tasks {
                        push(task.join());
                    }
                }
                None => {
                    // Failed as a whole: its own error is every item's.
                    let failure = match &result {
                        Err(e) => e.as_failure().cloned(),
                        Ok(_) => None,
                    }
                    .unwrap_or(Failure::Closed);
                    for _ in 0..len {
                        push(Err(TaskError::failure(failure.clone())));
                    }
                }
            },
        }
        self.pending -= index - base;
    }

    /// The next result in input order.
    pub(super) fn next_ordered(&mut self) -> Option<Result<T, TaskError<E>>> {
        loop {
            self.fill();
            if let Some((_, result)) = self.ready.pop_front() {
                return Some(result);
            }
            let unit = self.units.pop_front()?;
            let settled = match unit.batch {
                Batch::Task(task) => Settled::One(task.join()),
                Batch::Refused(n) => Settled::Refused(n),
                Batch::Chunk(chunk) => Settled::Chunk {
                    len: chunk.len,
                    results: chunk.results,
                    result: chunk.task.join(),
                },
            };
            self.settle(unit.base, settled);
        }
    }

    /// The next result to finish, with its input index.
    pub(super) fn next_unordered(&mut self) -> Option<(usize, Result<T, TaskError<E>>)> {
        loop {
            self.fill();
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.units.is_empty() {
                return None;
            }
            let woken = {
                let mut slots = lock(&self.woken.slots);
                while slots.is_empty() {
                    slots = self
                        .woken
                        .cond
                        .wait(slots)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                std::mem::take(&mut *slots)
            };
            for seq in woken {
                let Some(at) = self.units.iter().position(|u| u.seq == seq) else {
                    continue; // a stale wake-up for a unit already settled
                };
                if let Some(unit) = self.units.remove(at) {
                    if let Some(unit) = self.poll_unit(unit) {
                        self.units.insert(at, unit);
                    }
                }
            }
        }
    }
}

/// A batch of a pool of functions, its results passed through `convert`
/// (`Chunked::converted`). A chunk's own task resolves only with one of crew's
/// failures (`processes/chunks.rs`), which `convert` passes on untouched; its
/// items are converted as they are taken, on the consumer's thread, and split
/// tasks get a converted handle each.
#[cfg(all(feature = "process", target_os = "linux"))]
fn convert_batch<T0, E0, T, E>(
    batch: Batch<T0, E0>,
    convert: fn(Result<T0, TaskError<E0>>) -> Result<T, TaskError<E>>,
) -> Batch<T, E>
where
    T0: Send + 'static,
    E0: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    use crate::backend::ChunkTask;
    use crate::task::map_result;
    match batch {
        Batch::Task(task) => Batch::Task(map_result(task, convert)),
        Batch::Refused(n) => Batch::Refused(n),
        Batch::Chunk(chunk) => Batch::Chunk(ChunkTask {
            task: map_result(chunk.task, convert),
            results: Arc::new(Converted {
                inner: chunk.results,
                convert,
            }),
            len: chunk.len,
        }),
    }
}

/// A chunk's results, converted as they are taken.
#[cfg(all(feature = "process", target_os = "linux"))]
struct Converted<T0, E0, T, E> {
    inner: Arc<dyn ChunkResults<T0, E0>>,
    convert: fn(Result<T0, TaskError<E0>>) -> Result<T, TaskError<E>>,
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl<T0, E0, T, E> ChunkResults<T, E> for Converted<T0, E0, T, E>
where
    T0: Send + 'static,
    E0: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn take(&self) -> Option<Delivered<T, E>> {
        Some(match self.inner.take()? {
            Delivered::Ran { results, run } => Delivered::Ran {
                results: results.into_iter().map(self.convert).collect(),
                run,
            },
            Delivered::Split(tasks) => Delivered::Split(
                tasks
                    .into_iter()
                    .map(|task| crate::task::map_result(task, self.convert))
                    .collect(),
            ),
        })
    }

    fn cancel_split(&self) {
        self.inner.cancel_split();
    }
}

/// A finished unit, its handle spent.
enum Settled<T, E> {
    One(Result<T, TaskError<E>>),
    Refused(usize),
    Chunk {
        len: usize,
        results: Arc<dyn ChunkResults<T, E>>,
        /// The chunk's own result: its failure if it failed as a whole.
        result: Result<T, TaskError<E>>,
    },
}

impl<T, E> Drop for Chunked<'_, T, E> {
    fn drop(&mut self) {
        for unit in &self.units {
            unit.batch.cancel();
        }
    }
}
