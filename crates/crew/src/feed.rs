//! Feeding a pool from a long-lived source that runs until it is closed: a channel
//! receiver (any blocking iterator) with [`Pool::feed`], or an async [`Stream`]
//! with [`Pool::feed_stream`]. Results come out of a [`Feed`] as they complete,
//! through a blocking `Iterator`, or a `Stream` ([`Feed::into_stream`]).
//!
//! # Who pulls the source
//!
//! - **A blocking source** (`feed`) is pumped by a *feeder thread* that the feed
//!   starts on its first poll. Only the feeder ever blocks on the source, so a
//!   source with nothing in it never delays results that are already finished
//!   (`map` pulls on the caller's thread and would).
//! - **A `Stream` source** (`feed_stream`) needs no thread: it is polled inside
//!   the feed's own `poll_next`, with the consumer's waker, whenever the window
//!   has room.
//!
//! # The window
//!
//! At most `window` inputs are *in flight*: pulled from the source and not yet
//! handed out as a result. The feeder reserves a place (`in_flight += 1`, under
//! the exchange lock) *before* it pulls, and waits on the `room` condvar while
//! the window is full; the consumer frees a place each time it hands a result
//! out. So however fast the pool and however endless the source, no more than
//! `window` inputs exist between the two, including finished results nobody has
//! asked for yet.
//!
//! # The exchange
//!
//! The feeder and the consumer meet in one mutex-protected [`Exchange`]: tasks the
//! feeder submitted (`arrived`), the window slots whose task woke (`woken`), the
//! consumer's waker, and the two end flags. Every task in the window is polled with
//! a waker naming its slot, so completions are found without polling every task.
//! Nobody calls into a `Task` or a `Waker` while holding the exchange lock: a task
//! may wake its waker from inside `poll` or `cancel`, and that waker takes the
//! lock.
//!
//! # Dropping the feed
//!
//! Drop sets `stopped`, wakes the feeder if it waits for room, and cancels every
//! task in the window and every task that arrived unseen. A feeder that holds a
//! task it has not handed over yet sees `stopped` when it tries, and cancels that
//! task itself; so every submitted task resolves once and none runs on for a
//! consumer that is gone. A feeder blocked *inside* the source (an empty channel)
//! cannot be interrupted: it leaves, dropping the source (the channel's receiver,
//! so senders then see it closed), as soon as the source yields or closes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context as PollContext, Poll, Wake, Waker};
use std::thread::{self, Thread, ThreadId};

use futures_core::Stream;

use crate::error::{Failure, TaskError};
use crate::pool::Pool;
use crate::sync::lock;
use crate::task::Task;
use crate::worker::{Closures, Worker};

/// What one pulled input became: a task, or the error it gets without one
/// (the pool refused it: closed, or too large for a process pool).
enum Submitted<T, E> {
    Task(Task<T, E>),
    Refused(Failure),
}

impl<T, E> Submitted<T, E> {
    fn cancel(&self) {
        if let Submitted::Task(task) = self {
            task.cancel();
        }
    }
}

type Panic = Box<dyn std::any::Any + Send>;

/// Where the feeder and the consumer meet; see the module docs.
struct Exchange<T, E> {
    state: Mutex<ExchangeState<T, E>>,
    /// The feeder waits here while the window is full. Notified by the consumer
    /// when it hands a result out, when the window grows, and on drop.
    room: Condvar,
}

struct ExchangeState<T, E> {
    /// The most inputs in flight. Written by the consumer (`Feed::window`), read
    /// by the feeder.
    window: usize,
    /// Inputs pulled (or being pulled) and not yet handed out as results.
    /// Incremented by the feeder before it pulls (or by the consumer before it
    /// polls a `Stream` source); decremented by the consumer as it hands out.
    in_flight: usize,
    /// Inputs the feeder submitted, with their index, not yet taken by the
    /// consumer. Written by the feeder, drained by the consumer.
    arrived: VecDeque<(usize, Submitted<T, E>)>,
    /// Window slots whose task woke. Pushed by the slot wakers, drained by the
    /// consumer.
    woken: Vec<usize>,
    /// The source has ended (closed, or panicked): nothing more will arrive. Set
    /// once, by whoever pulls the source.
    source_closed: bool,
    /// The source's panic, re-raised on the consumer once the window is empty.
    panic: Option<Panic>,
    /// The consumer is gone: the feeder must stop. Set once, by `Feed::drop`.
    stopped: bool,
    /// Woken when something arrives or wakes. Set by the consumer when it finds
    /// nothing to do; taken by whoever wakes it.
    consumer: Option<Waker>,
}

impl<T, E> Exchange<T, E> {
    fn new(window: usize) -> Self {
        Exchange {
            state: Mutex::new(ExchangeState {
                window,
                in_flight: 0,
                arrived: VecDeque::new(),
                woken: Vec::new(),
                source_closed: false,
                panic: None,
                stopped: false,
                consumer: None,
            }),
            room: Condvar::new(),
        }
    }

    /// Runs `change` on the state, then wakes the consumer outside the lock.
    fn notify_consumer(&self, change: impl FnOnce(&mut ExchangeState<T, E>)) {
        let waker = {
            let mut state = lock(&self.state);
            change(&mut state);
            state.consumer.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The waker of one window slot: records that the slot's task woke.
struct SlotWaker<T, E> {
    exchange: Arc<Exchange<T, E>>,
    slot: usize,
}

impl<T: Send, E: Send> Wake for SlotWaker<T, E> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.exchange
            .notify_consumer(|state| state.woken.push(self.slot));
    }
}

/// Wakes a thread blocked in `Feed::next` (or a pipeline's `next`).
pub(crate) struct Unpark(pub(crate) Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Starts the feeder thread for a blocking source; runs once, on the first poll.
type StartFeeder<T, E> = Box<dyn FnOnce(Arc<Exchange<T, E>>) + Send>;

/// Polls a `Stream` source and submits what it yields.
type PollSource<T, E> =
    Box<dyn FnMut(&mut PollContext<'_>) -> Poll<Option<Submitted<T, E>>> + Send>;

enum Source<T, E> {
    /// A blocking source whose feeder thread has not started yet.
    Unstarted(StartFeeder<T, E>),
    /// The feeder thread runs (or ran) it.
    Feeder,
    /// A `Stream`, polled by the consumer.
    Stream(PollSource<T, E>),
}

/// Results of a long-lived source, as they complete, each with its input's index
/// (its position in the source); from [`Pool::feed`], [`Pool::feed_stream`] or
/// [`Pool::feed_fn`].
///
/// A `Feed` is a blocking [`Iterator`]; [`into_stream`](Feed::into_stream) makes
/// it a [`Stream`]. Either ends once the source is closed and every result has
/// been handed out. An item's error is
/// yielded in its place and does not stop the rest; on a shut-down pool each
/// input yields a closed error. Nothing is pulled until the first `next()` /
/// poll. Dropping a `Feed` cancels what is still in its window and stops the
/// feeder (see the module docs of `feed` for a feeder blocked in its source).
///
/// If the source panics, the results already in the window are handed out, and
/// then the panic resumes in `next()` / `poll_next`, as it would have in the
/// caller's own loop.
#[must_use = "a Feed pulls nothing until iterated; dropping it cancels its window"]
pub struct Feed<T, E = Infallible> {
    exchange: Arc<Exchange<T, E>>,
    source: Source<T, E>,
    /// A copy of the exchange's window, so `Debug` takes no lock.
    window: usize,
    /// The window: slot number → (input index, task). Free slots are `None`.
    slots: Vec<Option<(usize, Task<T, E>)>>,
    free: Vec<usize>,
    wakers: Vec<Waker>,
    /// Results finished (or refused) before anyone asked.
    ready: VecDeque<(usize, Result<T, TaskError<E>>)>,
    /// The next index for a `Stream` source's input (the feeder counts its own).
    next_index: usize,
    /// How many inputs the source says it holds, when it knows exactly.
    #[cfg_attr(not(feature = "indicatif"), allow(dead_code))]
    len: Option<u64>,
    /// The blocking iterator's waker, for the thread that made it.
    parker: Option<(ThreadId, Waker)>,
    ended: bool,
    #[cfg(feature = "indicatif")]
    progress: Option<crate::progress::Progress>,
}

impl<W: Worker> Pool<W> {
    /// Runs every input of a long-lived blocking source (a `std::sync::mpsc` or
    /// crossbeam `Receiver`, or any iterator) through `Worker::run` until the
    /// source is closed, yielding results as they complete, with each input's
    /// index.
    ///
    /// A feeder thread pulls the source, so an empty channel never holds back
    /// results that are ready, and keeps at most [`window`](Feed::window) inputs
    /// in flight (default `4 × size()`). The feeder holds a clone of the pool
    /// until the source closes or the feed is dropped.
    ///
    /// ```
    /// # use crew::{Context, Pool, StartError, Worker};
    /// # struct Double;
    /// # impl Worker for Double {
    /// #     type Input = u64; type Output = u64; type Error = std::convert::Infallible; type Message = ();
    /// #     fn start(_: &mut Context<'_>) -> Result<Self, StartError> { Ok(Double) }
    /// #     fn run(&mut self, n: u64, _: &mut Context<'_>) -> Result<u64, Self::Error> { Ok(2 * n) }
    /// # }
    /// let pool = Pool::<Double>::builder().workers(2).build()?;
    /// let (jobs, queue) = std::sync::mpsc::channel();
    /// std::thread::spawn(move || {
    ///     for n in 0..100 {
    ///         jobs.send(n).unwrap();
    ///     }
    /// }); // the channel closes when the producer ends
    /// let mut total = 0;
    /// for (_index, result) in pool.feed(queue).window(8) {
    ///     total += result?;
    /// }
    /// assert_eq!(total, 9_900);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// The first `next()` / poll panics if the OS refuses to start the feeder
    /// thread, as `std::thread::spawn` does.
    pub fn feed<I>(&self, inputs: I) -> Feed<W::Output, W::Error>
    where
        I: IntoIterator<Item = W::Input>,
        I::IntoIter: Send + 'static,
    {
        let pool = self.clone();
        Feed::from_iter(
            inputs.into_iter(),
            default_window(self),
            move |input| match pool.submit(input) {
                Ok(task) => Submitted::Task(task),
                Err(refused) => Submitted::Refused(refused.failure()),
            },
        )
    }

    /// Like [`feed`](Pool::feed), for an async [`Stream`] of inputs: no thread,
    /// the stream is polled inside the feed's own `poll_next` (or `next()`)
    /// whenever the window has room.
    ///
    /// Submitting an input waits as [`submit`](Pool::submit) does, so on a pool
    /// with a bounded queue a full queue blocks the polling thread briefly.
    pub fn feed_stream<S>(&self, inputs: S) -> Feed<W::Output, W::Error>
    where
        S: Stream<Item = W::Input> + Send + 'static,
    {
        let pool = self.clone();
        Feed::from_stream(inputs, default_window(self), move |input| {
            match pool.submit(input) {
                Ok(task) => Submitted::Task(task),
                Err(refused) => Submitted::Refused(refused.failure()),
            }
        })
    }
}

impl Pool<Closures> {
    /// Runs `f` on every input of a long-lived blocking source until it is
    /// closed; the closure form of [`feed`](Pool::feed).
    pub fn feed_fn<I, F, T>(&self, inputs: I, f: F) -> Feed<T>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let pool = self.clone();
        let f = Arc::new(f);
        Feed::from_iter(inputs.into_iter(), default_window(self), move |input| {
            let f = Arc::clone(&f);
            // A shut-down pool hands back a task already resolved as closed.
            Submitted::Task(pool.spawn(move || f(input)))
        })
    }
}

fn default_window<W: Worker>(pool: &Pool<W>) -> usize {
    (pool.size() * 4).max(4)
}

impl<T: Send + 'static, E: Send + 'static> Feed<T, E> {
    fn from_iter<I, S>(inputs: I, window: usize, submit: S) -> Self
    where
        I: Iterator + Send + 'static,
        S: FnMut(I::Item) -> Submitted<T, E> + Send + 'static,
    {
        let len = exact_len(inputs.size_hint());
        let start: StartFeeder<T, E> = Box::new(move |exchange| {
            let feeder = Arc::clone(&exchange);
            let spawned = thread::Builder::new()
                .name("crew-feed".into())
                .spawn(move || run_feeder(&feeder, inputs, submit));
            if let Err(e) = spawned {
                panic!("crew: could not start the feeder thread: {e}");
            }
        });
        Feed::new(Source::Unstarted(start), window, len)
    }

    fn from_stream<S, F>(inputs: S, window: usize, mut submit: F) -> Self
    where
        S: Stream + Send + 'static,
        F: FnMut(S::Item) -> Submitted<T, E> + Send + 'static,
    {
        let len = exact_len(inputs.size_hint());
        let mut inputs = Box::pin(inputs);
        let poll: PollSource<T, E> = Box::new(move |cx| {
            inputs
                .as_mut()
                .poll_next(cx)
                .map(|input| input.map(&mut submit))
        });
        Feed::new(Source::Stream(poll), window, len)
    }

    fn new(source: Source<T, E>, window: usize, len: Option<u64>) -> Self {
        let window = window.max(1);
        let mut feed = Feed {
            exchange: Arc::new(Exchange::new(window)),
            source,
            window: 0,
            slots: Vec::new(),
            free: Vec::new(),
            wakers: Vec::new(),
            ready: VecDeque::new(),
            next_index: 0,
            len,
            parker: None,
            ended: false,
            #[cfg(feature = "indicatif")]
            progress: None,
        };
        feed.grow_slots(window);
        feed
    }

    /// Keeps at most `window` inputs (at least 1) in flight: pulled from the
    /// source and not yet handed out. May be changed at any time; a smaller
    /// window takes effect as results are handed out.
    pub fn window(mut self, window: usize) -> Self {
        let window = window.max(1);
        lock(&self.exchange.state).window = window;
        self.exchange.room.notify_all();
        self.grow_slots(window);
        self
    }

    #[cfg(feature = "indicatif")]
    crate::progress::progress_methods!(len);

    /// There is a slot for every input that can be in flight; slots are never
    /// taken away, so a stale wake-up always names a slot that exists.
    fn grow_slots(&mut self, window: usize) {
        self.window = window;
        for slot in self.slots.len()..window {
            self.slots.push(None);
            self.free.push(slot);
            self.wakers.push(Waker::from(Arc::new(SlotWaker {
                exchange: Arc::clone(&self.exchange),
                slot,
            })));
        }
    }
}

impl<T, E> Feed<T, E> {
    /// Inputs pulled from the source and not yet handed out (queued, running, or
    /// finished and waiting to be yielded). Never more than the window.
    pub fn in_flight(&self) -> usize {
        lock(&self.exchange.state).in_flight
    }

    /// How many inputs the source holds, when it knows exactly.
    pub(crate) fn source_len(&self) -> Option<u64> {
        self.len
    }

    /// Whether every slot is empty.
    fn window_is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Puts a submitted input into the window (or straight into `ready`).
    fn place(&mut self, index: usize, submitted: Submitted<T, E>) {
        match submitted {
            Submitted::Refused(failure) => self
                .ready
                .push_back((index, Err(TaskError::failure(failure)))),
            Submitted::Task(task) => {
                // The window bounds what is in flight, and there is a slot per
                // place in the window.
                let Some(slot) = self.free.pop() else {
                    unreachable!("crew: more tasks than slots in a feed's window")
                };
                self.slots[slot] = Some((index, task));
                self.poll_slot(slot);
            }
        }
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

    /// Pulls a `Stream` source while the window has room, submitting what it
    /// yields. The stream registers `cx`'s waker when it has nothing.
    fn pull_stream(&mut self, cx: &mut PollContext<'_>) {
        loop {
            let Source::Stream(poll_source) = &mut self.source else {
                return;
            };
            {
                let mut state = lock(&self.exchange.state);
                if state.source_closed || state.in_flight >= state.window {
                    return;
                }
                state.in_flight += 1;
            }
            let submitted = match catch_unwind(AssertUnwindSafe(|| poll_source(cx))) {
                Ok(Poll::Ready(Some(submitted))) => submitted,
                ended => {
                    let mut state = lock(&self.exchange.state);
                    state.in_flight -= 1;
                    match ended {
                        Ok(Poll::Pending) => {}
                        Ok(Poll::Ready(_)) => state.source_closed = true,
                        Err(panic) => {
                            state.source_closed = true;
                            state.panic = Some(panic);
                        }
                    }
                    return;
                }
            };
            let index = self.next_index;
            self.next_index += 1;
            self.place(index, submitted);
        }
    }

    /// The next result, or `Pending` with `cx`'s waker registered.
    fn poll_item(
        &mut self,
        cx: &mut PollContext<'_>,
    ) -> Poll<Option<(usize, Result<T, TaskError<E>>)>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Source::Unstarted(_) = self.source {
            if let Source::Unstarted(start) = std::mem::replace(&mut self.source, Source::Feeder) {
                start(Arc::clone(&self.exchange));
            }
        }
        loop {
            self.pull_stream(cx);
            if let Some(item) = self.ready.pop_front() {
                lock(&self.exchange.state).in_flight -= 1;
                self.exchange.room.notify_one();
                #[cfg(feature = "indicatif")]
                if let Some(progress) = &mut self.progress {
                    progress.record(item.1.is_ok());
                }
                return Poll::Ready(Some(item));
            }
            let (arrived, woken) = {
                let mut state = lock(&self.exchange.state);
                if state.arrived.is_empty() && state.woken.is_empty() {
                    if state.source_closed && self.window_is_empty() {
                        let panic = state.panic.take();
                        drop(state);
                        return self.end(panic);
                    }
                    // The waker this replaces is dropped outside the lock.
                    let _replaced = if state
                        .consumer
                        .as_ref()
                        .is_some_and(|waker| waker.will_wake(cx.waker()))
                    {
                        None
                    } else {
                        state.consumer.replace(cx.waker().clone())
                    };
                    drop(state);
                    return Poll::Pending;
                }
                (
                    std::mem::take(&mut state.arrived),
                    std::mem::take(&mut state.woken),
                )
            };
            for (index, submitted) in arrived {
                self.place(index, submitted);
            }
            for slot in woken {
                self.poll_slot(slot);
            }
        }
    }

    #[cold]
    fn end<R>(&mut self, panic: Option<Panic>) -> Poll<Option<R>> {
        self.ended = true;
        #[cfg(feature = "indicatif")]
        if let Some(progress) = &mut self.progress {
            progress.finish();
        }
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
        Poll::Ready(None)
    }
}

/// The exact number of items a size hint promises, if it does.
pub(crate) fn exact_len((low, high): (usize, Option<usize>)) -> Option<u64> {
    match high {
        Some(high) if high == low => u64::try_from(high).ok(),
        _ => None,
    }
}

/// The feeder thread's body: pump `inputs` into the pool until the source closes
/// or the consumer is gone, then record how it ended.
fn run_feeder<T, E, I, S>(exchange: &Exchange<T, E>, inputs: I, submit: S)
where
    I: Iterator,
    S: FnMut(I::Item) -> Submitted<T, E>,
{
    let panic = catch_unwind(AssertUnwindSafe(|| pump(exchange, inputs, submit))).err();
    exchange.notify_consumer(|state| {
        state.source_closed = true;
        state.panic = panic;
    });
}

fn pump<T, E, I, S>(exchange: &Exchange<T, E>, inputs: I, mut submit: S)
where
    I: Iterator,
    S: FnMut(I::Item) -> Submitted<T, E>,
{
    let mut inputs = inputs;
    for index in 0.. {
        // 1. Reserve a place in the window before pulling, so an input never
        //    exists outside the window's count.
        {
            let mut state = lock(&exchange.state);
            while state.in_flight >= state.window && !state.stopped {
                state = exchange
                    .room
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.stopped {
                return;
            }
            state.in_flight += 1;
        }
        // 2. Pull: this may block for as long as the source likes. If the
        //    source closes (or panics), the place is given back.
        let reserved = Reservation(exchange);
        let Some(input) = inputs.next() else {
            return;
        };
        std::mem::forget(reserved);
        // 3. Submit outside the lock: `submit` may wait for room in the queue.
        //    A consumer that left meanwhile gets nothing more submitted.
        if lock(&exchange.state).stopped {
            return;
        }
        let submitted = submit(input);
        // 4. Hand over, unless the consumer left; then this task is ours to cancel.
        let mut handed = Some((index, submitted));
        let waker = {
            let mut state = lock(&exchange.state);
            if !state.stopped {
                state.arrived.extend(handed.take());
            }
            state.consumer.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some((_, submitted)) = handed {
            submitted.cancel();
            return;
        }
    }
}

/// A place in the window taken before pulling; dropped, it gives the place back.
struct Reservation<'a, T, E>(&'a Exchange<T, E>);

impl<T, E> Drop for Reservation<'_, T, E> {
    fn drop(&mut self) {
        lock(&self.0.state).in_flight -= 1;
    }
}

impl<T, E> Iterator for Feed<T, E> {
    type Item = (usize, Result<T, TaskError<E>>);

    /// Blocks until the next result is ready, or the source is closed and every
    /// result has been handed out.
    fn next(&mut self) -> Option<Self::Item> {
        let me = thread::current();
        let waker = match &self.parker {
            Some((owner, waker)) if *owner == me.id() => waker.clone(),
            _ => {
                let waker = Waker::from(Arc::new(Unpark(me.clone())));
                self.parker = Some((me.id(), waker.clone()));
                waker
            }
        };
        let mut cx = PollContext::from_waker(&waker);
        loop {
            match self.poll_item(&mut cx) {
                Poll::Ready(item) => return item,
                // A stale unpark only costs one more look.
                Poll::Pending => thread::park(),
            }
        }
    }
}

/// A [`Feed`]'s results as a [`Stream`]; from [`Feed::into_stream`].
///
/// Needs no particular runtime. Dropping it cancels the window, as dropping the
/// `Feed` does.
#[must_use = "streams do nothing unless polled; dropping it cancels its window"]
pub struct FeedStream<T, E = Infallible> {
    feed: Feed<T, E>,
}

impl<T, E> Feed<T, E> {
    /// The results as a [`Stream`] instead of a blocking iterator. (Two types,
    /// so that `futures::StreamExt` in scope never makes `next()` ambiguous.)
    pub fn into_stream(self) -> FeedStream<T, E> {
        FeedStream { feed: self }
    }
}

impl<T, E> FeedStream<T, E> {
    /// As [`Feed::in_flight`].
    pub fn in_flight(&self) -> usize {
        self.feed.in_flight()
    }
}

impl<T, E> Stream for FeedStream<T, E> {
    type Item = (usize, Result<T, TaskError<E>>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Option<Self::Item>> {
        self.feed.poll_item(cx)
    }
}

impl<T, E> fmt::Debug for FeedStream<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FeedStream").field(&self.feed).finish()
    }
}

// A `Feed` holds no pinned state: results are moved out, never polled in place.
impl<T, E> Unpin for Feed<T, E> {}

impl<T, E> Drop for Feed<T, E> {
    fn drop(&mut self) {
        let (arrived, _waker) = {
            let mut state = lock(&self.exchange.state);
            state.stopped = true;
            (std::mem::take(&mut state.arrived), state.consumer.take())
        };
        self.exchange.room.notify_all();
        for (_, submitted) in &arrived {
            submitted.cancel();
        }
        for (_, task) in self.slots.iter().flatten() {
            task.cancel();
        }
    }
}

impl<T, E> fmt::Debug for Feed<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            Source::Unstarted(_) => "blocking (not started)",
            Source::Feeder => "blocking (feeder thread)",
            Source::Stream(_) => "stream",
        };
        f.debug_struct("Feed")
            .field("source", &source)
            .field("window", &self.window)
            .field("in_window", &(self.slots.len() - self.free.len()))
            .field("ready", &self.ready.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
