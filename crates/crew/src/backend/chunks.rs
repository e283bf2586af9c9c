//! The contract for chunked `map`: what an engine hands `sources/chunked.rs`.
//!
//! An engine whose tasks cross a boundary (a pipe, a network) pays per task for
//! the crossing, so `map` can ship many items as one *chunk* instead
//! ([`Engine::submit_chunk`](super::Engine::submit_chunk)). The engine answers
//! with [`Batch`]es; `sources/chunked.rs` sizes the chunks and hands the results
//! out one per item. How the process backend builds and answers a chunk is in
//! `processes/chunks.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::TaskError;
use crate::task::Task;

/// One unit `map` keeps in flight on an engine's pool.
pub enum Batch<T, E> {
    /// An ordinary task: an input too large for a chunk, or one that could not
    /// be encoded.
    Task(Task<T, E>),
    /// A chunk of items.
    Chunk(ChunkTask<T, E>),
    /// This many items refused: the pool is shut down.
    Refused(usize),
}

impl<T, E> Batch<T, E> {
    /// How many items it stands for.
    pub fn len(&self) -> usize {
        match self {
            Batch::Task(_) => 1,
            Batch::Chunk(chunk) => chunk.len,
            Batch::Refused(n) => *n,
        }
    }

    /// Whether it stands for no item (an empty refusal).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels what has not finished (queued items never run).
    pub fn cancel(&self) {
        match self {
            Batch::Task(task) => {
                task.cancel();
            }
            Batch::Chunk(chunk) => {
                chunk.task.cancel();
                chunk.results.cancel_split();
            }
            Batch::Refused(_) => {}
        }
    }
}

impl<T, E> fmt::Debug for Batch<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Batch::Task(task) => f.debug_tuple("Task").field(task).finish(),
            Batch::Chunk(chunk) => f.debug_tuple("Chunk").field(chunk).finish(),
            Batch::Refused(n) => f.debug_tuple("Refused").field(n).finish(),
        }
    }
}

/// The consumer's handle to a chunk: `task` resolves when the chunk does, and
/// `results` then holds its items' results.
pub struct ChunkTask<T, E> {
    /// Resolves when the chunk does; its error, if no delivery is there, is
    /// every item's.
    pub task: Task<T, E>,
    /// The items' results once `task` resolved.
    pub results: Arc<dyn ChunkResults<T, E>>,
    /// The number of items.
    pub len: usize,
}

impl<T, E> fmt::Debug for ChunkTask<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkTask")
            .field("task", &self.task)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A resolved chunk's items, as the consumer takes them.
pub enum Delivered<T, E> {
    /// Every item's result, in order, and how long the worker ran them.
    Ran {
        /// One result per item, in input order.
        results: Vec<Result<T, TaskError<E>>>,
        /// How long the items ran, all together, where they ran (it sizes the
        /// next chunk).
        run: Duration,
    },
    /// One task per item, in order (the chunk's worker died under it).
    Split(Vec<Task<T, E>>),
}

impl<T, E> fmt::Debug for Delivered<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delivered::Ran { results, run } => f
                .debug_struct("Ran")
                .field("items", &results.len())
                .field("run", run)
                .finish(),
            Delivered::Split(tasks) => f.debug_tuple("Split").field(&tasks.len()).finish(),
        }
    }
}

/// The typed side of a chunk's slot, seen without the engine's own bounds.
pub trait ChunkResults<T, E>: Send + Sync {
    /// The items' results, decoded here (on the consumer's thread); `None` if
    /// the chunk failed as a whole (its task's error is every item's) or they
    /// were taken already.
    fn take(&self) -> Option<Delivered<T, E>>;
    /// Cancels the split tasks not taken yet.
    fn cancel_split(&self);
}
