//! Feeding a pool from an iterator: [`Pool::map`] (results in input order) and
//! [`Pool::map_unordered`] (results as they complete), and their closure forms on
//! `Pool<Closures>`.
//!
//! Both keep a bounded *window* of tasks in flight: an input is pulled from the
//! iterator only when a result has been handed out, so an endless source (a channel
//! receiver, a generator) stays bounded in memory. Each item's error is yielded in
//! its place and does not stop the rest. Dropping the iterator cancels the tasks
//! still in its window (queued ones never run; running ones see
//! [`Context::is_cancelled`](crate::Context::is_cancelled)).
//!
//! The input iterator is pulled on the caller's thread, inside `next()`: an input
//! iterator that blocks (a channel with nothing in it) delays the results already
//! finished until it yields. [`Pool::feed`](crate::Pool::feed) is the form for such
//! a source (`feed.rs`). Unordered results are found without polling: each
//! task in the window is given a waker that names its slot.
//!
//! On a process pool (without a default timeout) the three ship their inputs in
//! adaptively sized *chunks* of many items instead of one task per item
//! (`sources/chunked.rs`); results still come one per item. The chunked window
//! is built on the first `next()`, so that a map that becomes a pipeline's first
//! stage (`then`, `sources/pipeline.rs`) can go one task per item instead.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context as PollContext, Poll, Wake, Waker};

use crate::error::{Failure, TaskError};
use crate::feed::exact_len;
use crate::pool::Pool;
use crate::sync::lock;
use crate::task::Task;
use crate::worker::{Closures, Worker};

mod chunked;
pub(crate) mod pipeline;

/// One item's place in the window: its task, or the error it got without one.
enum Slot<T, E> {
    Task(Task<T, E>),
    /// The pool refused the input: closed, or (a process pool) too large.
    Refused(Failure),
}

/// Pulls the next input and submits it. Built by `Pool::pull` / `Pool::pull_fn`.
type Pull<'a, T, E> = Box<dyn FnMut() -> Option<Slot<T, E>> + 'a>;

/// A source for `Map` / `MapUnordered`: how to pull, and how many inputs there
/// are when the iterator knows exactly (for a progress bar's total).
struct Source<'a, T, E> {
    pull: Pull<'a, T, E>,
    #[cfg_attr(not(feature = "indicatif"), allow(dead_code))]
    len: Option<u64>,
}

/// A process pool's `map` or `map_unordered` before its first result: built as a
/// chunked window by the first `next()` (`true`), or as one task per item when
/// the map becomes a pipeline's first stage (`false`).
type Unstarted<'a, T, E> = Box<dyn FnOnce(bool) -> Started<'a, T, E> + 'a>;

enum Started<'a, T, E> {
    Chunked(chunked::Chunked<'a, T, E>),
    PerItem(Source<'a, T, E>),
}

fn refused<T, E>(failure: Failure) -> Result<T, TaskError<E>> {
    Err(TaskError::failure(failure))
}

/// The default window: enough to keep every worker busy with one task queued
/// behind each.
fn default_window<W: Worker>(pool: &Pool<W>) -> usize {
    (pool.size() * 4).max(4)
}

impl<W: Worker> Pool<W> {
    /// Runs every input through `Worker::run` and yields the results in input
    /// order, keeping at most `4 × size()` tasks in flight (see
    /// [`map_window`](Pool::map_window)). On a shut-down pool the remaining items
    /// yield closed errors.
    ///
    /// On a process pool the inputs travel in chunks of many items, sized so that
    /// a chunk runs for about 2 ms in its worker, with three chunks per worker in
    /// flight (not `4 × size()` items); each item still gets its own result. With a
    /// pool default [`timeout`](crate::PoolBuilder::timeout), items go one task
    /// each, so the timeout applies to each.
    pub fn map<I>(&self, inputs: I) -> Map<'_, W::Output, W::Error>
    where
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: 'static,
    {
        if self.chunk_engine().is_some() {
            let (unstarted, len) = self.unstarted(inputs, None, true);
            return Map::unstarted(unstarted, len, default_window(self));
        }
        self.map_window(inputs, default_window(self))
    }

    /// [`map`](Pool::map) with an explicit window (at least 1): at most `window`
    /// inputs pulled and not yet handed out (on a process pool, chunks are cut to
    /// fit it).
    pub fn map_window<I>(&self, inputs: I, window: usize) -> Map<'_, W::Output, W::Error>
    where
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: 'static,
    {
        if self.chunk_engine().is_some() {
            let (unstarted, len) = self.unstarted(inputs, Some(window), true);
            return Map::unstarted(unstarted, len, window);
        }
        Map::new(self.pull(inputs), window)
    }

    /// Like [`map`](Pool::map), but yields each result as soon as its task
    /// finishes (as `concurrent.futures.as_completed`), with the input's index.
    /// On a process pool, in chunks as `map` (a chunk's results come together).
    pub fn map_unordered<I>(&self, inputs: I) -> MapUnordered<'_, W::Output, W::Error>
    where
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: 'static,
    {
        if self.chunk_engine().is_some() {
            let (unstarted, len) = self.unstarted(inputs, None, false);
            return MapUnordered::unstarted(unstarted, len, default_window(self));
        }
        MapUnordered::new(self.pull(inputs), default_window(self))
    }

    /// A process pool's map, built on its first use (see [`Unstarted`]), and the
    /// input's exact length if it knows it.
    fn unstarted<I>(
        &self,
        inputs: I,
        window: Option<usize>,
        ordered: bool,
    ) -> (Unstarted<'_, W::Output, W::Error>, Option<u64>)
    where
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: 'static,
    {
        let inputs = inputs.into_iter();
        let len = exact_len(inputs.size_hint());
        let unstarted: Unstarted<'_, W::Output, W::Error> =
            Box::new(move |chunks| match self.chunk_engine() {
                Some(engine) if chunks => Started::Chunked(chunked::Chunked::new(
                    Arc::clone(engine),
                    inputs,
                    self.size(),
                    window,
                    ordered,
                )),
                _ => Started::PerItem(self.pull(inputs)),
            });
        (unstarted, len)
    }

    fn pull<I>(&self, inputs: I) -> Source<'_, W::Output, W::Error>
    where
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: 'static,
    {
        let mut inputs = inputs.into_iter();
        let len = exact_len(inputs.size_hint());
        let pull = Box::new(move || {
            let input = inputs.next()?;
            Some(match self.submit(input) {
                Ok(task) => Slot::Task(task),
                Err(refused) => Slot::Refused(refused.failure()),
            })
        });
        Source { pull, len }
    }
}

/// How a pool of functions (`functions/`) turns a task's result into the
/// caller's type.
#[cfg(all(feature = "process", target_os = "linux"))]
type Convert<W, T, E> =
    fn(Result<<W as Worker>::Output, TaskError<<W as Worker>::Error>>) -> Result<T, TaskError<E>>;

/// `map` and `map_unordered` through a conversion, for a pool of functions:
/// each item becomes the worker's input by `make`, and each result comes back
/// through `convert` (on a process pool, chunk by chunk: `chunked::convert_batch`).
#[cfg(all(feature = "process", target_os = "linux"))]
impl<W: Worker> Pool<W> {
    pub(crate) fn map_through<'a, I, M, T, E>(
        &'a self,
        inputs: I,
        make: M,
        convert: Convert<W, T, E>,
    ) -> Map<'a, T, E>
    where
        I: IntoIterator,
        I::IntoIter: 'a,
        M: FnMut(I::Item) -> W::Input + 'a,
        T: Send + 'static,
        E: Send + 'static,
    {
        let inputs = inputs.into_iter().map(make);
        if self.chunk_engine().is_some() {
            let (unstarted, len) = self.unstarted_through(inputs, true, convert);
            return Map::unstarted(unstarted, len, default_window(self));
        }
        Map::new(self.pull_through(inputs, convert), default_window(self))
    }

    pub(crate) fn map_unordered_through<'a, I, M, T, E>(
        &'a self,
        inputs: I,
        make: M,
        convert: Convert<W, T, E>,
    ) -> MapUnordered<'a, T, E>
    where
        I: IntoIterator,
        I::IntoIter: 'a,
        M: FnMut(I::Item) -> W::Input + 'a,
        T: Send + 'static,
        E: Send + 'static,
    {
        let inputs = inputs.into_iter().map(make);
        if self.chunk_engine().is_some() {
            let (unstarted, len) = self.unstarted_through(inputs, false, convert);
            return MapUnordered::unstarted(unstarted, len, default_window(self));
        }
        MapUnordered::new(self.pull_through(inputs, convert), default_window(self))
    }

    /// As `unstarted`, through `convert`: chunked on the first `next()`, or one
    /// task per item as a pipeline's first stage.
    fn unstarted_through<'a, I, T, E>(
        &'a self,
        inputs: I,
        ordered: bool,
        convert: Convert<W, T, E>,
    ) -> (Unstarted<'a, T, E>, Option<u64>)
    where
        I: Iterator<Item = W::Input> + 'a,
        T: Send + 'static,
        E: Send + 'static,
    {
        let len = exact_len(inputs.size_hint());
        let unstarted: Unstarted<'a, T, E> = Box::new(move |chunks| match self.chunk_engine() {
            Some(engine) if chunks => Started::Chunked(chunked::Chunked::converted(
                Arc::clone(engine),
                inputs,
                self.size(),
                ordered,
                convert,
            )),
            _ => Started::PerItem(self.pull_through(inputs, convert)),
        });
        (unstarted, len)
    }

    fn pull_through<'a, I, T, E>(
        &'a self,
        mut inputs: I,
        convert: Convert<W, T, E>,
    ) -> Source<'a, T, E>
    where
        I: Iterator<Item = W::Input> + 'a,
        T: Send + 'static,
        E: Send + 'static,
    {
        let len = exact_len(inputs.size_hint());
        let pull = Box::new(move || {
            let input = inputs.next()?;
            Some(match self.submit(input) {
                Ok(task) => Slot::Task(crate::task::map_result(task, convert)),
                Err(refused) => Slot::Refused(refused.failure()),
            })
        });
        Source { pull, len }
    }
}

impl Pool<Closures> {
    /// Runs `f` on every input on the pool and yields the results in input order,
    /// keeping at most `4 × size()` tasks in flight (rayon's `par_iter().map()`
    /// with a result per item and a bounded window).
    pub fn map_fn<I, F, T>(&self, inputs: I, f: F) -> Map<'_, T, Infallible>
    where
        I: IntoIterator,
        I::IntoIter: 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        Map::new(self.pull_fn(inputs, f), default_window(self))
    }

    /// Like [`map_fn`](Pool::map_fn), yielding results as they complete, with the
    /// input's index.
    pub fn map_fn_unordered<I, F, T>(&self, inputs: I, f: F) -> MapUnordered<'_, T, Infallible>
    where
        I: IntoIterator,
        I::IntoIter: 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        MapUnordered::new(self.pull_fn(inputs, f), default_window(self))
    }

    fn pull_fn<I, F, T>(&self, inputs: I, f: F) -> Source<'_, T, Infallible>
    where
        I: IntoIterator,
        I::IntoIter: 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        let mut inputs = inputs.into_iter();
        let len = exact_len(inputs.size_hint());
        let pull = Box::new(move || {
            let input = inputs.next()?;
            let f = Arc::clone(&f);
            // On a shut-down pool `spawn` hands back a task already resolved as
            // closed, which the window yields in its place.
            Some(Slot::Task(self.spawn(move || f(input))))
        });
        Source { pull, len }
    }
}

/// Results in input order; from [`Pool::map`] or [`Pool::map_fn`].
#[must_use = "a Map runs nothing until iterated; dropping it cancels its window"]
pub struct Map<'a, T, E> {
    source: Source<'a, T, E>,
    window: usize,
    exhausted: bool,
    in_flight: VecDeque<Slot<T, E>>,
    /// Results handed out so far: the input index of the next one.
    handed: usize,
    /// On a process pool, until the first `next()`.
    unstarted: Option<Unstarted<'a, T, E>>,
    /// On a process pool: the chunks in flight (then `source` and `in_flight`
    /// are unused).
    chunked: Option<chunked::Chunked<'a, T, E>>,
    #[cfg(feature = "indicatif")]
    progress: Option<crate::progress::Progress>,
}

impl<'a, T, E> Map<'a, T, E> {
    fn new(source: Source<'a, T, E>, window: usize) -> Self {
        Map {
            source,
            window: window.max(1),
            exhausted: false,
            in_flight: VecDeque::new(),
            handed: 0,
            unstarted: None,
            chunked: None,
            #[cfg(feature = "indicatif")]
            progress: None,
        }
    }

    fn unstarted(unstarted: Unstarted<'a, T, E>, len: Option<u64>, window: usize) -> Self {
        let source = Source {
            pull: Box::new(|| None),
            len,
        };
        let mut map = Map::new(source, window);
        map.unstarted = Some(unstarted);
        map
    }

    /// Builds an unstarted map: chunked (`next()`), or one task per item.
    #[cold]
    fn start(&mut self, chunks: bool) {
        if let Some(unstarted) = self.unstarted.take() {
            match unstarted(chunks) {
                Started::Chunked(chunked) => self.chunked = Some(chunked),
                Started::PerItem(source) => self.source.pull = source.pull,
            }
        }
    }

    #[cfg(feature = "indicatif")]
    crate::progress::progress_methods!(source.len);

    /// Inputs submitted and not yet handed out.
    pub fn in_flight(&self) -> usize {
        if let Some(chunks) = &self.chunked {
            return chunks.in_flight();
        }
        self.in_flight.len()
    }
}

impl<T, E> Iterator for Map<'_, T, E> {
    type Item = Result<T, TaskError<E>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.unstarted.is_some() {
            self.start(true);
        }
        if let Some(chunks) = &mut self.chunked {
            let result = chunks.next_ordered();
            #[cfg(feature = "indicatif")]
            if let Some(progress) = &mut self.progress {
                match &result {
                    Some(r) => progress.record(r.is_ok()),
                    None => progress.finish(),
                }
            }
            self.handed += usize::from(result.is_some());
            return result;
        }
        while !self.exhausted && self.in_flight.len() < self.window {
            match (self.source.pull)() {
                Some(slot) => self.in_flight.push_back(slot),
                None => self.exhausted = true,
            }
        }
        let Some(slot) = self.in_flight.pop_front() else {
            #[cfg(feature = "indicatif")]
            if let Some(progress) = &mut self.progress {
                progress.finish();
            }
            return None;
        };
        let result = match slot {
            Slot::Task(task) => task.join(),
            Slot::Refused(failure) => refused(failure),
        };
        #[cfg(feature = "indicatif")]
        if let Some(progress) = &mut self.progress {
            progress.record(result.is_ok());
        }
        self.handed += 1;
        Some(result)
    }
}

impl<T, E> Drop for Map<'_, T, E> {
    fn drop(&mut self) {
        for slot in &self.in_flight {
            if let Slot::Task(task) = slot {
                task.cancel();
            }
        }
    }
}

impl<T, E> fmt::Debug for Map<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("window", &self.window)
            .field("in_flight", &self.in_flight.len())
            .field("exhausted", &self.exhausted)
            .finish()
    }
}

/// Which window slots have been woken: the waker of each task pushes its slot
/// number here.
#[derive(Default)]
struct Woken {
    slots: Mutex<Vec<usize>>,
    cond: Condvar,
}

struct SlotWaker {
    woken: Arc<Woken>,
    slot: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.woken.slots).push(self.slot);
        self.woken.cond.notify_one();
    }
}

/// Results as they complete, each with its input's index; from
/// [`Pool::map_unordered`] or [`Pool::map_fn_unordered`].
#[must_use = "a MapUnordered runs nothing until iterated; dropping it cancels its window"]
pub struct MapUnordered<'a, T, E> {
    source: Source<'a, T, E>,
    exhausted: bool,
    /// The window: slot number → (input index, task). Free slots are `None`.
    slots: Vec<Option<(usize, Task<T, E>)>>,
    free: Vec<usize>,
    wakers: Vec<Waker>,
    woken: Arc<Woken>,
    /// Items that finished (or were refused) before anyone asked.
    ready: VecDeque<(usize, Result<T, TaskError<E>>)>,
    next_index: usize,
    /// On a process pool, until the first `next()`.
    unstarted: Option<Unstarted<'a, T, E>>,
    /// On a process pool: the chunks in flight (then the fields above are
    /// unused).
    chunked: Option<chunked::Chunked<'a, T, E>>,
    #[cfg(feature = "indicatif")]
    progress: Option<crate::progress::Progress>,
}

impl<'a, T, E> MapUnordered<'a, T, E> {
    fn unstarted(unstarted: Unstarted<'a, T, E>, len: Option<u64>, window: usize) -> Self {
        let source = Source {
            pull: Box::new(|| None),
            len,
        };
        let mut map = MapUnordered::new(source, window);
        map.unstarted = Some(unstarted);
        map
    }

    /// Builds an unstarted map: chunked (`next()`), or one task per item.
    #[cold]
    fn start(&mut self, chunks: bool) {
        if let Some(unstarted) = self.unstarted.take() {
            match unstarted(chunks) {
                Started::Chunked(chunked) => self.chunked = Some(chunked),
                Started::PerItem(source) => self.source.pull = source.pull,
            }
        }
    }

    fn new(source: Source<'a, T, E>, window: usize) -> Self {
        let window = window.max(1);
        let woken = Arc::new(Woken::default());
        let wakers = (0..window)
            .map(|slot| {
                Waker::from(Arc::new(SlotWaker {
                    woken: Arc::clone(&woken),
                    slot,
                }))
            })
            .collect();
        MapUnordered {
            source,
            exhausted: false,
            slots: (0..window).map(|_| None).collect(),
            free: (0..window).rev().collect(),
            wakers,
            woken,
            ready: VecDeque::new(),
            next_index: 0,
            unstarted: None,
            chunked: None,
            #[cfg(feature = "indicatif")]
            progress: None,
        }
    }

    #[cfg(feature = "indicatif")]
    crate::progress::progress_methods!(source.len);

    /// Items pulled from the input and not yet handed out (running, queued, or
    /// finished and waiting to be yielded).
    pub fn in_flight(&self) -> usize {
        if let Some(chunks) = &self.chunked {
            return chunks.in_flight();
        }
        self.slots.len() - self.free.len() + self.ready.len()
    }

    /// Polls the task in `slot` with that slot's waker; a finished one moves to
    /// `ready` and frees the slot.
    fn poll_slot(&mut self, slot: usize) {
        let Some((_, task)) = self.slots[slot].as_mut() else {
            return; // a stale wake-up for a slot already emptied
        };
        let mut cx = PollContext::from_waker(&self.wakers[slot]);
        if let Poll::Ready(result) = Pin::new(task).poll(&mut cx) {
            if let Some((index, _)) = self.slots[slot].take() {
                self.ready.push_back((index, result));
                self.free.push(slot);
            }
        }
    }

    fn fill(&mut self) {
        // Finished results not yet handed out count against the window too, so
        // a fast pool cannot pull the input ahead of the consumer.
        while !self.exhausted && self.in_flight() < self.slots.len() {
            let Some(slot) = self.free.pop() else { return };
            let index = self.next_index;
            match (self.source.pull)() {
                None => {
                    self.free.push(slot);
                    self.exhausted = true;
                }
                Some(Slot::Refused(failure)) => {
                    self.next_index += 1;
                    self.free.push(slot);
                    self.ready.push_back((index, refused(failure)));
                }
                Some(Slot::Task(task)) => {
                    self.next_index += 1;
                    self.slots[slot] = Some((index, task));
                    self.poll_slot(slot);
                }
            }
        }
    }
}

impl<T, E> Iterator for MapUnordered<'_, T, E> {
    type Item = (usize, Result<T, TaskError<E>>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.unstarted.is_some() {
            self.start(true);
        }
        if let Some(chunks) = &mut self.chunked {
            let item = chunks.next_unordered();
            #[cfg(feature = "indicatif")]
            if let Some(progress) = &mut self.progress {
                match &item {
                    Some((_, r)) => progress.record(r.is_ok()),
                    None => progress.finish(),
                }
            }
            return item;
        }
        loop {
            self.fill();
            if let Some(item) = self.ready.pop_front() {
                #[cfg(feature = "indicatif")]
                if let Some(progress) = &mut self.progress {
                    progress.record(item.1.is_ok());
                }
                return Some(item);
            }
            if self.slots.len() == self.free.len() {
                // Exhausted and nothing left in the window.
                #[cfg(feature = "indicatif")]
                if let Some(progress) = &mut self.progress {
                    progress.finish();
                }
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
            for slot in woken {
                self.poll_slot(slot);
            }
        }
    }
}

impl<T, E> Drop for MapUnordered<'_, T, E> {
    fn drop(&mut self) {
        for (_, task) in self.slots.iter().flatten() {
            task.cancel();
        }
    }
}

impl<T, E> fmt::Debug for MapUnordered<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapUnordered")
            .field("window", &self.slots.len())
            .field("in_flight", &self.in_flight())
            .field("exhausted", &self.exhausted)
            .finish()
    }
}
