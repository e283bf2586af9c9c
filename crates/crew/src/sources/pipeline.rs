//! Pipelines: every item of a source through several pools in turn, as in
//! `decode.map(files).then(&transform).then(&encode)`.
//!
//! # Stages
//!
//! A pipeline starts as a [`Map`], [`MapUnordered`] or [`Feed`] (stage 0, on the
//! pool that made it); each `then` adds a stage on a pool of its own (or the same
//! one), of any backend. Stage k+1 takes stage k's successful outputs as its
//! inputs: `then` converts with `From`, `then_with` with a closure, `then_fn`
//! hands them to a closure on a thread pool. Each stage submits one task per item,
//! on process pools too: `map` ships chunks of many small items, but a pipeline's
//! item (a file, an image) is expected to be worth a task of its own, and a
//! chunk would hold back the items that finished first.
//!
//! Each stage holds its tasks in flight in a futures-util `FuturesUnordered` (a
//! [`Task`] is a future; each gets its own waker, so only the tasks that finished
//! are polled) and its finished results in a queue, until the next stage takes
//! them.
//!
//! # Backpressure
//!
//! An item counts against a stage's *window* from the moment that stage takes it
//! until the next stage takes its result (for the last stage: until it is handed
//! out, or, in an ordered pipeline, put aside to wait for its turn). A stage takes
//! from the stage before only while it holds fewer than its window. So every
//! stage works ahead until its window is full of finished results; a stage whose
//! results nobody takes fills up and stops taking from the stage before it, which
//! fills in turn, back to the source: a slow or blocked last stage stops the
//! first from pulling more.
//!
//! A *gate* on the source also keeps at most the sum of the stages' windows
//! items pulled and not yet handed out. The windows alone bound an unordered
//! pipeline; in an ordered one, items finished ahead of their turn wait outside
//! every window, and the gate is what bounds them. (Were they kept in the last
//! stage's window, it could fill with items waiting for one that cannot reach
//! it: the last stage always drains, so every item reaches the end.) A shut gate
//! registers no waker: it is shut only while items are in the pipeline, and the
//! next of them to finish wakes the consumer, who reopens it by taking a result.
//!
//! # Errors
//!
//! An item that fails in a stage enters no later stage: its error passes through
//! them (taking a place in each window, as a finished result does, until the
//! next stage takes it) and reaches the end in the item's place, as a [`StageError`] that says which stage failed. The
//! other items carry on.
//!
//! The stages' worker error types differ, and a pipeline yields one item type, so
//! the user's error is boxed: a `StageError` holds a
//! `TaskError<Box<dyn Error + Send + Sync>>`, converted with `Into` (which every
//! `E: Error + Send + Sync`, `String`, `&'static str` and `Infallible` do). The box keeps
//! the error's own type (`downcast_ref`), message and source chain, and every
//! other kind (a panic and its payload, a crash, a timeout) is kept as it was. An
//! enum with a variant per stage would be more precise, but its type would grow
//! with every `then`, and would have to be spelled out to match on it.
//!
//! # Order
//!
//! Inside the pipeline, every stage passes items on as they finish, so one slow
//! item holds back no other in its stage. A pipeline that starts from `map` is
//! *ordered*: its results are put back in input order at the end (items that
//! finished early wait there, within the gate). One that starts from
//! `map_unordered` or `feed` hands results out as the last stage finishes them.
//! Either way each result comes with its input's index.
//!
//! # Who drives it, and dropping it
//!
//! The consumer: `next()` (or `poll_next`) *pumps* the stages, from the source
//! to the last, each taking from the one before while it has room and polling
//! its tasks; all on the caller's thread, which parks when nothing is ready
//! (every task wakes it when it resolves). Between two `next()` calls nothing
//! moves; the windows, refilled just before `next()` returns, keep the pools
//! busy meanwhile. As with `map`, a source that blocks delays everything behind
//! it (start from `feed` for such a source: its feeder thread does the waiting).
//! The stages share plain `Rc`/`Cell` state with no lock, so a pipeline is not
//! `Send`: it lives on the thread that iterates it.
//!
//! Dropping the iterator or the stream drops every stage's futures in flight;
//! each holds its task in a [`Cancelling`], which cancels it if it has not
//! resolved, so queued tasks never run and running ones see
//! [`Context::is_cancelled`](crate::Context::is_cancelled). Inputs not yet pulled
//! from the source never are.

use std::cell::Cell;
use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as PollContext, Poll, Waker};
use std::thread::{self, ThreadId};

use futures_core::Stream;
use futures_util::future::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::{default_window, refused, Map, MapUnordered, Slot};
use crate::error::{Failure, TaskError};
use crate::feed::{Feed, Unpark};
use crate::pool::Pool;
use crate::task::Task;
use crate::worker::{Closures, Worker};

/// A user error as a [`StageError`] carries it.
type BoxError = Box<dyn StdError + Send + Sync>;

/// What every stage yields: the item's input index and its result so far.
type Item<T> = (usize, Result<T, StageError>);

/// Why an item of a [`Pipeline`] has no result: the stage it failed in, and that
/// stage's [`TaskError`], its user error boxed.
///
/// Stages count from 0, the pool the pipeline started on (its `map`, or `feed`);
/// the first `then` is stage 1. An item that failed in a stage entered no later
/// one.
///
/// The user error of every stage, whatever its worker's `Error` type, is a
/// `Box<dyn Error + Send + Sync>` (converted with `Into`), so one type serves
/// every stage; [`user_error`](StageError::user_error) then `downcast_ref` gets
/// the stage's own type back. Every other kind (a panic with its payload, a
/// crash, a timeout, a cancel) is kept as the stage's pool reported it.
///
/// `Display` names the stage; [`source`](StdError::source) is the `TaskError`.
///
/// ```
/// # use crew::{Context, Pool, StartError, Worker};
/// # #[derive(Debug)] struct Odd(u64);
/// # impl std::fmt::Display for Odd { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{} is odd", self.0) } }
/// # impl std::error::Error for Odd {}
/// /// Halves even numbers; an odd one is its error.
/// struct Halve;
/// impl Worker for Halve {
///     type Input = u64;
///     type Output = u64;
///     type Error = Odd;
///     type Message = ();
///     fn start(_: &mut Context<'_>) -> Result<Self, StartError> { Ok(Halve) }
///     fn run(&mut self, n: u64, _: &mut Context<'_>) -> Result<u64, Odd> {
///         if n % 2 == 0 { Ok(n / 2) } else { Err(Odd(n)) }
///     }
/// }
/// let halve = Pool::<Halve>::builder().workers(2).build()?;
/// let results: Vec<_> = halve.map([8, 6]).then(&halve).into_iter().collect();
/// assert_eq!(*results[0].1.as_ref().unwrap(), 2); // 8 → 4 → 2
/// let failed = results[1].1.as_ref().unwrap_err(); // 6 → 3 → odd
/// assert_eq!(failed.stage(), 1);
/// assert_eq!(failed.user_error().unwrap().downcast_ref::<Odd>().unwrap().0, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StageError {
    stage: usize,
    error: TaskError<BoxError>,
}

impl StageError {
    fn new<E: Into<BoxError>>(stage: usize, error: TaskError<E>) -> Self {
        StageError {
            stage,
            error: error.map_user(Into::into),
        }
    }

    /// The stage the item failed in: 0 for the pool the pipeline started on, 1
    /// for the first `then`, and so on.
    pub fn stage(&self) -> usize {
        self.stage
    }

    /// The stage's error: its `is_*` predicates say what happened.
    pub fn task_error(&self) -> &TaskError<BoxError> {
        &self.error
    }

    /// Takes the stage's error out.
    pub fn into_task_error(self) -> TaskError<BoxError> {
        self.error
    }

    /// The stage worker's own error, if that is what failed the item; its
    /// `downcast_ref` gives the worker's `Error` type back.
    pub fn user_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.error.user_error().map(|boxed| &**boxed)
    }
}

impl fmt::Debug for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageError")
            .field("stage", &self.stage)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pipeline stage {} failed", self.stage)
    }
}

impl StdError for StageError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.error)
    }
}

/// A task in a stage's window: cancelled if dropped before it resolved (module
/// docs, "Who drives it, and dropping it").
struct Cancelling<T, E> {
    task: Task<T, E>,
    resolved: bool,
}

impl<T, E> Cancelling<T, E> {
    fn new(task: Task<T, E>) -> Self {
        Cancelling {
            task,
            resolved: false,
        }
    }
}

impl<T, E> Future for Cancelling<T, E> {
    type Output = Result<T, TaskError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Self::Output> {
        let polled = Pin::new(&mut self.task).poll(cx);
        self.resolved = polled.is_ready();
        polled
    }
}

impl<T, E> Drop for Cancelling<T, E> {
    fn drop(&mut self) {
        if !self.resolved {
            self.task.cancel();
        }
    }
}

/// What the source stage pulled: a task, or a result it already has (an input
/// the pool refused, or one a started map had finished).
enum Pulled<T, E> {
    Running(usize, Cancelling<T, E>),
    Done(Option<(usize, Result<T, TaskError<E>>)>),
}

// `Pulled` never pins what it holds: results are moved out, tasks are `Unpin`.
impl<T, E> Unpin for Pulled<T, E> {}

impl<T, E> Future for Pulled<T, E> {
    type Output = (usize, Result<T, TaskError<E>>);

    fn poll(self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Pulled::Running(index, task) => Pin::new(task).poll(cx).map(|r| (*index, r)),
            Pulled::Done(done) => match done.take() {
                Some(item) => Poll::Ready(item),
                None => unreachable!("crew: a pipeline's pulled item polled after it finished"),
            },
        }
    }
}

/// The gate on the source (module docs, "Backpressure"). Only the consumer's
/// thread touches it: the source stage counts pulls, the exit hand-outs.
#[derive(Debug, Default)]
struct Gate {
    /// The sum of the built stages' windows.
    cap: Cell<usize>,
    /// Items pulled from the source and not yet handed out.
    outstanding: Cell<usize>,
}

/// One stage of a running pipeline, with every stage before it behind it.
///
/// A stage holds at most its window of items, in flight (`running`) or
/// finished and not yet taken (`done`).
trait Stage<T> {
    /// Moves what can move, from the source to this stage: each stage takes
    /// from the one before while it has room, and polls its tasks in flight
    /// (registering `cx`'s waker with each).
    fn pump(&mut self, cx: &mut PollContext<'_>);
    /// A finished result, if there is one, freeing its place in the window.
    fn take(&mut self) -> Option<Item<T>>;
    /// Nothing more will come out of this stage.
    fn is_done(&self) -> bool;
}

/// A stage and every stage before it.
type Stages<'a, T> = Box<dyn Stage<T> + 'a>;

/// Builds the last stage over the ones before it, given its window and bar.
type Build<'a, T> = Box<dyn FnOnce(usize, Tally) -> Stages<'a, T> + 'a>;

/// A stage's progress bar, if it has one (feature `indicatif`): counts the items
/// as the stage hands them on.
#[derive(Default)]
struct Tally {
    #[cfg(feature = "indicatif")]
    progress: Option<crate::progress::Progress>,
}

impl Tally {
    /// `item` left `stage` (`None`: nothing did, and the stage may be done).
    #[inline]
    fn count<T>(&mut self, stage: usize, item: Option<&Item<T>>, done: bool) {
        #[cfg(feature = "indicatif")]
        if let Some(progress) = &mut self.progress {
            match item {
                Some((_, Ok(_))) => progress.record(true),
                Some((_, Err(e))) if e.stage == stage => progress.record(false),
                Some(_) => progress.skip(),
                None if done => progress.finish(),
                None => {}
            }
        }
        #[cfg(not(feature = "indicatif"))]
        let _ = (stage, item, done);
    }
}

/// Stage 0 of a pipeline that starts from a map: pulls the map's source (which
/// submits) while it has room and the gate is open.
struct SourceStage<'a, T, E> {
    pull: Box<dyn FnMut() -> Option<Pulled<T, E>> + 'a>,
    pulled_all: bool,
    gate: Rc<Gate>,
    window: usize,
    running: FuturesUnordered<Pulled<T, E>>,
    done: VecDeque<Item<T>>,
    tally: Tally,
}

impl<T, E: Into<BoxError>> Stage<T> for SourceStage<'_, T, E> {
    fn pump(&mut self, cx: &mut PollContext<'_>) {
        let gate = &self.gate;
        // A shut gate registers no waker: whatever is in the pipeline wakes the
        // consumer (module docs, "Backpressure").
        while !self.pulled_all
            && self.running.len() + self.done.len() < self.window
            && gate.outstanding.get() < gate.cap.get()
        {
            match (self.pull)() {
                Some(pulled) => {
                    gate.outstanding.set(gate.outstanding.get() + 1);
                    self.running.push(pulled);
                }
                None => self.pulled_all = true,
            }
        }
        while let Poll::Ready(Some((index, result))) = self.running.poll_next_unpin(cx) {
            let result = result.map_err(|e| StageError::new(0, e));
            self.done.push_back((index, result));
        }
    }

    fn take(&mut self) -> Option<Item<T>> {
        let item = self.done.pop_front();
        let done = item.is_none() && self.is_done();
        self.tally.count(0, item.as_ref(), done);
        item
    }

    fn is_done(&self) -> bool {
        self.pulled_all && self.running.is_empty() && self.done.is_empty()
    }
}

/// Stage 0 of a pipeline that starts from a feed: the feed has its own window
/// (and bar), so this holds one result at most.
struct FeedStage<T, E> {
    feed: crate::FeedStream<T, E>,
    done: Option<Item<T>>,
    ended: bool,
}

impl<T, E: Into<BoxError>> Stage<T> for FeedStage<T, E> {
    fn pump(&mut self, cx: &mut PollContext<'_>) {
        if self.done.is_some() || self.ended {
            return;
        }
        match Pin::new(&mut self.feed).poll_next(cx) {
            Poll::Ready(Some((index, result))) => {
                self.done = Some((index, result.map_err(|e| StageError::new(0, e))));
            }
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
    }

    fn take(&mut self) -> Option<Item<T>> {
        self.done.take()
    }

    fn is_done(&self) -> bool {
        self.ended && self.done.is_none()
    }
}

/// A `then` stage: `run(index, input)` is the future of one item on its pool.
struct ThenStage<'a, U, T, F, M> {
    upstream: Stages<'a, U>,
    run: F,
    stage: usize,
    window: usize,
    running: FuturesUnordered<M>,
    done: VecDeque<Item<T>>,
    tally: Tally,
}

impl<U, T, F, M> Stage<T> for ThenStage<'_, U, T, F, M>
where
    F: FnMut(usize, U) -> M,
    M: Future<Output = Item<T>>,
{
    fn pump(&mut self, cx: &mut PollContext<'_>) {
        loop {
            self.upstream.pump(cx);
            let mut took = false;
            while self.running.len() + self.done.len() < self.window {
                let Some((index, result)) = self.upstream.take() else {
                    break;
                };
                took = true;
                match result {
                    Ok(input) => self.running.push((self.run)(index, input)),
                    // A failed item skips the stage, keeping its place.
                    Err(e) => self.done.push_back((index, Err(e))),
                }
            }
            // What was taken left room behind: let the stages before refill it.
            if !took {
                break;
            }
        }
        while let Poll::Ready(Some(item)) = self.running.poll_next_unpin(cx) {
            self.done.push_back(item);
        }
    }

    fn take(&mut self) -> Option<Item<T>> {
        let item = self.done.pop_front();
        let done = item.is_none() && self.is_done();
        self.tally.count(self.stage, item.as_ref(), done);
        item
    }

    fn is_done(&self) -> bool {
        self.running.is_empty() && self.done.is_empty() && self.upstream.is_done()
    }
}

/// Several pools in turn: every item of a source through each stage, with a
/// bounded window per stage; from `then`, `then_with` or `then_fn` on a
/// [`Map`], [`MapUnordered`], [`Feed`] or another `Pipeline`.
///
/// - **Stages**: stage k+1 takes stage k's successful outputs as its inputs;
///   each runs on its own pool, of any backend, one task per item.
/// - **Backpressure**: each stage holds at most its [`window`](Pipeline::window)
///   of items (default `4 × size()` of its pool), from its submission until the
///   next stage takes it; a full stage stops the one before it, back to the
///   source. At most the sum of the windows are pulled and not handed out.
/// - **Errors** stay with their item: a failed item enters no later stage, and
///   reaches the end as a [`StageError`] naming its stage.
/// - **Order**: from `map`, results come in input order; from `map_unordered` or
///   `feed`, as they finish. Each comes with its input's index.
/// - **Drop**: dropping the iterator (or stream) cancels every task in flight in
///   every stage.
///
/// A `Pipeline` is a plan: it runs nothing until it is iterated (it is
/// [`IntoIterator`]) or made a [`Stream`] ([`into_stream`](Pipeline::into_stream)).
/// `next()` does all the moving between stages on the caller's thread (see the
/// module docs of `sources::pipeline`); the pipeline is not `Send`.
///
/// ```
/// let pool: crew::Pool = crew::Pool::builder().workers(2).build()?;
/// let lengths = pool
///     .map_fn(["a", "bb", "ccc"], |s| s.repeat(2)) // stage 0
///     .then_fn(&pool, |s| s.len()) // stage 1
///     .window(2); // at most 2 items in stage 1
/// for (index, length) in lengths {
///     assert_eq!(length?, 2 * (index + 1));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a Pipeline runs nothing until iterated"]
pub struct Pipeline<'a, T> {
    /// The last stage, built when another is added or the pipeline is iterated,
    /// so that `window` and the progress methods can still change it.
    build: Build<'a, T>,
    /// The last stage's number and window.
    stage: usize,
    window: usize,
    /// The gate on the source; `None` for a feed, whose own window bounds it.
    gate: Option<Rc<Gate>>,
    /// For an ordered pipeline, the index of its first item.
    ordered: Option<usize>,
    /// How many inputs the source holds, when it knows exactly.
    #[cfg_attr(not(feature = "indicatif"), allow(dead_code))]
    len: Option<u64>,
    /// The last stage's bar.
    tally: Tally,
}

impl<'a, T: 'a> Pipeline<'a, T> {
    /// A pipeline whose only (and last) stage is stage 0, the source's.
    fn source(build: Build<'a, T>, window: usize, gate: Option<Rc<Gate>>) -> Self {
        Pipeline {
            build,
            stage: 0,
            window,
            gate,
            ordered: None,
            len: None,
            tally: Tally::default(),
        }
    }

    /// Adds a stage that runs every item on `pool`, converting each output of
    /// the stage before with `From`.
    ///
    /// The stage's window is `4 × pool.size()`; change it with
    /// [`window`](Pipeline::window). Submitting waits for room without blocking
    /// ([`Pool::submit_async`]). Its worker's error becomes the item's
    /// [`StageError`] through `Into<Box<dyn Error + Send + Sync>>`.
    pub fn then<'p, W>(self, pool: &'p Pool<W>) -> Pipeline<'p, W::Output>
    where
        'a: 'p,
        W: Worker,
        W::Input: From<T>,
        W::Error: Into<BoxError>,
    {
        self.then_with(pool, <W::Input as From<T>>::from)
    }

    /// Like [`then`](Pipeline::then), converting each output of the stage
    /// before into `pool`'s input with `adapt` (on the consumer's thread, as it
    /// is submitted).
    pub fn then_with<'p, W, F>(self, pool: &'p Pool<W>, mut adapt: F) -> Pipeline<'p, W::Output>
    where
        'a: 'p,
        W: Worker,
        W::Error: Into<BoxError>,
        F: FnMut(T) -> W::Input + 'p,
    {
        let stage = self.stage + 1;
        self.then_stage(default_window(pool), move |output| {
            run_on(pool, stage, adapt(output))
        })
    }

    /// Adds a stage that runs `f` on every item on a closures pool, as
    /// [`Pool::map_fn`] does (waiting, as [`Pool::spawn`] does, when the pool's
    /// queue is full).
    pub fn then_fn<'p, F, U>(self, pool: &'p Pool<Closures>, f: F) -> Pipeline<'p, U>
    where
        'a: 'p,
        T: Send + 'static,
        F: Fn(T) -> U + Send + Sync + 'static,
        U: Send + 'static,
    {
        let stage = self.stage + 1;
        let f = Arc::new(f);
        self.then_stage(default_window(pool), move |output| {
            let f = Arc::clone(&f);
            Cancelling::new(pool.spawn(move || f(output)))
                .map(move |result| result.map_err(|e| StageError::new(stage, e)))
        })
    }

    /// Keeps at most `window` items (at least 1) in the last stage added: taken
    /// from the stage before and not yet taken by the next (or handed out).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// The results as a [`Stream`] instead of a blocking iterator. It needs no
    /// particular runtime; dropping it cancels what is in flight, as dropping
    /// the iterator does.
    pub fn into_stream(self) -> PipelineStream<'a, T> {
        PipelineStream { exit: self.exit() }
    }

    /// Adds a stage whose item futures `run` makes.
    fn then_stage<'p, U, F, Fut>(self, window: usize, mut run: F) -> Pipeline<'p, U>
    where
        'a: 'p,
        U: 'p,
        F: FnMut(T) -> Fut + 'p,
        Fut: Future<Output = Result<U, StageError>> + 'p,
    {
        let stage = self.stage + 1;
        let (upstream, rest) = self.finish();
        let build: Build<'p, U> = Box::new(move |window, tally| {
            Box::new(ThenStage {
                upstream,
                run: move |index, input| run(input).map(move |result| (index, result)),
                stage,
                window,
                running: FuturesUnordered::new(),
                done: VecDeque::new(),
                tally,
            })
        });
        Pipeline {
            build,
            stage,
            window,
            gate: rest.gate,
            ordered: rest.ordered,
            len: rest.len,
            tally: Tally::default(),
        }
    }

    /// Builds the last stage: its window joins the gate's cap.
    fn finish(self) -> (Stages<'a, T>, Rest) {
        if let Some(gate) = &self.gate {
            gate.cap.set(gate.cap.get() + self.window);
        }
        let stages = (self.build)(self.window, self.tally);
        let rest = Rest {
            gate: self.gate,
            ordered: self.ordered,
            len: self.len,
        };
        (stages, rest)
    }

    fn exit(self) -> Exit<'a, T> {
        let (last, rest) = self.finish();
        Exit {
            last,
            gate: rest.gate,
            reorder: rest.ordered.map(|first| Reorder {
                next: first,
                waiting: VecDeque::new(),
            }),
            ended: false,
        }
    }

    #[cfg(feature = "indicatif")]
    fn attach_progress(mut self, bar: ::indicatif::ProgressBar) -> Self {
        self.tally.progress = Some(crate::progress::Progress::new(bar, self.len));
        self
    }
}

#[cfg(feature = "indicatif")]
impl<'a, T: 'a> Pipeline<'a, T> {
    /// Shows a progress bar on stderr for the last stage added (feature
    /// `indicatif`): the items it has passed on (to the next stage, or out), of
    /// how many when the source knows its exact length, the rate, an ETA, and
    /// how many failed in this stage. An item that failed in an earlier stage
    /// advances the bar without counting as failed. Drawn only when stderr is a
    /// terminal.
    ///
    /// For a bar per stage, call it (or [`with_progress_bar`](Self::with_progress_bar),
    /// with the bars of one `MultiProgress`) after each `then`, and on the `map`
    /// or `feed` the pipeline starts from.
    pub fn with_progress(self) -> Self {
        let bar = crate::progress::stderr_bar(self.len);
        self.attach_progress(bar)
    }

    /// Like [`with_progress`](Self::with_progress), drawn on `target`.
    pub fn with_progress_to(self, target: ::indicatif::ProgressDrawTarget) -> Self {
        let bar = crate::progress::styled_bar(self.len, target);
        self.attach_progress(bar)
    }

    /// Drives `bar` (one of a `MultiProgress`, say) with the last stage's
    /// items, as [`with_progress`](Self::with_progress) counts them; crew sets
    /// its length (if it has none and the source knows it), position and
    /// message, the style and target are yours.
    pub fn with_progress_bar(self, bar: ::indicatif::ProgressBar) -> Self {
        self.attach_progress(bar)
    }
}

/// What a built pipeline passes on to its next stage or its exit.
struct Rest {
    gate: Option<Rc<Gate>>,
    ordered: Option<usize>,
    len: Option<u64>,
}

impl<'a, T: 'a> IntoIterator for Pipeline<'a, T> {
    type Item = Item<T>;
    type IntoIter = PipelineIter<'a, T>;

    fn into_iter(self) -> PipelineIter<'a, T> {
        PipelineIter {
            exit: self.exit(),
            parker: None,
        }
    }
}

impl<T> fmt::Debug for Pipeline<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("stages", &(self.stage + 1))
            .field("last_window", &self.window)
            .field("ordered", &self.ordered.is_some())
            .finish_non_exhaustive()
    }
}

/// An ordered pipeline's results that finished before their turn.
struct Reorder<T> {
    /// The index of the next result to hand out.
    next: usize,
    /// `waiting[i]` is the result of index `next + i`, once it has finished.
    /// Never longer than the gate's cap: only pulled items have results.
    waiting: VecDeque<Option<Result<T, StageError>>>,
}

impl<T> Reorder<T> {
    fn insert(&mut self, (index, result): Item<T>) {
        let Some(at) = index.checked_sub(self.next) else {
            unreachable!("crew: a pipeline's item {index} finished twice")
        };
        if self.waiting.len() <= at {
            self.waiting.resize_with(at + 1, || None);
        }
        self.waiting[at] = Some(result);
    }

    /// The next result in input order, if it has finished. `all`: the stages
    /// are done, so take whatever is left (nothing, unless an index was lost).
    fn pop(&mut self, all: bool) -> Option<Item<T>> {
        while let Some(front) = self.waiting.front() {
            if front.is_none() && !all {
                return None;
            }
            let index = self.next;
            self.next += 1;
            if let Some(result) = self.waiting.pop_front().flatten() {
                return Some((index, result));
            }
        }
        None
    }
}

/// The end of a running pipeline: the last stage (with every stage behind it),
/// the gate to reopen as results are handed out, and (ordered) the results
/// waiting for their turn.
struct Exit<'a, T> {
    last: Stages<'a, T>,
    gate: Option<Rc<Gate>>,
    reorder: Option<Reorder<T>>,
    ended: bool,
}

impl<T> Exit<'_, T> {
    fn poll_item(&mut self, cx: &mut PollContext<'_>) -> Poll<Option<Item<T>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            self.last.pump(cx);
            let next = match &mut self.reorder {
                None => self.last.take(),
                Some(reorder) => {
                    // Everything finished is taken, so the last stage never
                    // fills with items waiting for their turn.
                    let mut took = false;
                    while let Some(item) = self.last.take() {
                        reorder.insert(item);
                        took = true;
                    }
                    match reorder.pop(false) {
                        Some(item) => Some(item),
                        // Taking made room: pump again.
                        None if took => continue,
                        None => None,
                    }
                }
            };
            if let Some(item) = next {
                if let Some(gate) = &self.gate {
                    gate.outstanding
                        .set(gate.outstanding.get().saturating_sub(1));
                }
                // Refill the room this leaves before the caller works on the
                // result, so the pools keep busy meanwhile.
                self.last.pump(cx);
                return Poll::Ready(Some(item));
            }
            if !self.last.is_done() {
                return Poll::Pending;
            }
            // Every item has come out; an ordered pipeline has none left waiting
            // (unless an index was lost, and then what is left comes now).
            if let Some(item) = self.reorder.as_mut().and_then(|r| r.pop(true)) {
                return Poll::Ready(Some(item));
            }
            self.ended = true;
            return Poll::Ready(None);
        }
    }
}

/// A [`Pipeline`]'s results as a blocking iterator: `(input index, result)`;
/// from `Pipeline::into_iter` (a `for` loop over the pipeline).
///
/// Dropping it cancels every task in flight in every stage.
#[must_use = "iterators are lazy; dropping it cancels what is in flight"]
pub struct PipelineIter<'a, T> {
    exit: Exit<'a, T>,
    /// The waker that unparks the thread iterating, made once per thread.
    parker: Option<(ThreadId, Waker)>,
}

impl<T> Iterator for PipelineIter<'_, T> {
    type Item = Item<T>;

    /// Blocks until the next result is ready, or every result has been handed
    /// out.
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
            match self.exit.poll_item(&mut cx) {
                Poll::Ready(item) => return item,
                // A stale unpark only costs one more look.
                Poll::Pending => thread::park(),
            }
        }
    }
}

impl<T> fmt::Debug for PipelineIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineIter")
            .field("ended", &self.exit.ended)
            .finish_non_exhaustive()
    }
}

/// A [`Pipeline`]'s results as a [`Stream`]; from [`Pipeline::into_stream`].
///
/// Needs no particular runtime. Dropping it cancels every task in flight in
/// every stage.
#[must_use = "streams do nothing unless polled; dropping it cancels what is in flight"]
pub struct PipelineStream<'a, T> {
    exit: Exit<'a, T>,
}

impl<T> Stream for PipelineStream<'_, T> {
    type Item = Item<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Option<Self::Item>> {
        self.exit.poll_item(cx)
    }
}

// Results are moved out, never polled in place: nothing in a pipeline is pinned
// but its stages, which are boxed.
impl<T> Unpin for PipelineStream<'_, T> {}

impl<T> fmt::Debug for PipelineStream<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineStream")
            .field("ended", &self.exit.ended)
            .finish_non_exhaustive()
    }
}

/// Submits `input` to `pool` (waiting for room without blocking) and waits for
/// its result; the item future of a `then` stage.
async fn run_on<W>(pool: &Pool<W>, stage: usize, input: W::Input) -> Result<W::Output, StageError>
where
    W: Worker,
    W::Error: Into<BoxError>,
{
    match pool.submit_async(input).await {
        Ok(task) => Cancelling::new(task)
            .await
            .map_err(|e| StageError::new(stage, e)),
        // Refused: the pool is closed (a `map` yields the same for its items).
        Err(_) => Err(StageError::new(
            stage,
            TaskError::<W::Error>::failure(Failure::Closed),
        )),
    }
}

/// Stage 0 over `pull`, which submits the next input, and its gate.
fn source_stage<'a, T, E>(
    pull: Box<dyn FnMut() -> Option<Pulled<T, E>> + 'a>,
) -> (Build<'a, T>, Rc<Gate>)
where
    T: 'a,
    E: Into<BoxError> + 'a,
{
    let gate = Rc::new(Gate::default());
    let shared = Rc::clone(&gate);
    let build: Build<'a, T> = Box::new(move |window, tally| {
        Box::new(SourceStage {
            pull,
            pulled_all: false,
            gate: shared,
            window,
            running: FuturesUnordered::new(),
            done: VecDeque::new(),
            tally,
        })
    });
    (build, gate)
}

impl<'a, T, E> Map<'a, T, E> {
    /// This map as stage 0 of a pipeline, ordered, one task per item.
    fn into_pipeline<'p>(mut self) -> Pipeline<'p, T>
    where
        'a: 'p,
        T: 'p,
        E: Into<BoxError> + 'p,
    {
        if self.unstarted.is_some() {
            self.start(false);
        }
        let window = self.window;
        let first = self.handed;
        let len = self.source.len;
        #[cfg(feature = "indicatif")]
        let progress = self.progress.take();
        let pull: Box<dyn FnMut() -> Option<Pulled<T, E>> + 'p> = if self.chunked.is_some() {
            // Already running chunked (it handed results out before `then`):
            // it stays so, its results joined as the stage pulls them.
            let mut map = self;
            let mut index = first;
            Box::new(move || {
                let result = map.next()?;
                index += 1;
                Some(Pulled::Done(Some((index - 1, result))))
            })
        } else {
            let mut index = first;
            let mut number = move || {
                index += 1;
                index - 1
            };
            let pulled = |slot, index| match slot {
                Slot::Task(task) => Pulled::Running(index, Cancelling::new(task)),
                Slot::Refused(failure) => Pulled::Done(Some((index, refused(failure)))),
            };
            // What is already in flight goes first, wrapped now so that it is
            // cancelled if the pipeline is dropped before taking it.
            let mut in_flight: VecDeque<Pulled<T, E>> = std::mem::take(&mut self.in_flight)
                .into_iter()
                .map(|slot| pulled(slot, number()))
                .collect();
            let mut source = std::mem::replace(&mut self.source.pull, Box::new(|| None));
            if self.exhausted {
                source = Box::new(|| None);
            }
            Box::new(move || {
                if let Some(pulled) = in_flight.pop_front() {
                    return Some(pulled);
                }
                let slot = source()?;
                Some(pulled(slot, number()))
            })
        };
        let (build, gate) = source_stage(pull);
        let mut pipeline = Pipeline::source(build, window, Some(gate));
        pipeline.ordered = Some(first);
        pipeline.len = len;
        #[cfg(feature = "indicatif")]
        {
            pipeline.tally.progress = progress;
        }
        pipeline
    }
}

impl<'a, T, E> MapUnordered<'a, T, E> {
    /// This map as stage 0 of a pipeline, unordered, one task per item.
    fn into_pipeline<'p>(mut self) -> Pipeline<'p, T>
    where
        'a: 'p,
        T: 'p,
        E: Into<BoxError> + 'p,
    {
        if self.unstarted.is_some() {
            self.start(false);
        }
        let window = self.slots.len();
        let len = self.source.len;
        #[cfg(feature = "indicatif")]
        let progress = self.progress.take();
        let pull: Box<dyn FnMut() -> Option<Pulled<T, E>> + 'p> = if self.chunked.is_some() {
            // Already running chunked: it stays so (see `Map::into_pipeline`).
            let mut map = self;
            Box::new(move || Some(Pulled::Done(Some(map.next()?))))
        } else {
            // Finished results and tasks in flight go first.
            let mut in_flight: VecDeque<Pulled<T, E>> = std::mem::take(&mut self.ready)
                .into_iter()
                .map(|done| Pulled::Done(Some(done)))
                .collect();
            for (index, task) in self.slots.iter_mut().filter_map(Option::take) {
                in_flight.push_back(Pulled::Running(index, Cancelling::new(task)));
            }
            let mut index = self.next_index;
            let mut source = std::mem::replace(&mut self.source.pull, Box::new(|| None));
            if self.exhausted {
                source = Box::new(|| None);
            }
            Box::new(move || {
                if let Some(pulled) = in_flight.pop_front() {
                    return Some(pulled);
                }
                let slot = source()?;
                index += 1;
                Some(match slot {
                    Slot::Task(task) => Pulled::Running(index - 1, Cancelling::new(task)),
                    Slot::Refused(failure) => Pulled::Done(Some((index - 1, refused(failure)))),
                })
            })
        };
        let (build, gate) = source_stage(pull);
        let mut pipeline = Pipeline::source(build, window, Some(gate));
        pipeline.len = len;
        #[cfg(feature = "indicatif")]
        {
            pipeline.tally.progress = progress;
        }
        pipeline
    }
}

impl<T, E> Feed<T, E> {
    /// This feed as stage 0 of a pipeline, unordered. The feed's own window
    /// bounds it (its feeder thread pulls the source), so it needs no gate.
    fn into_pipeline<'p>(self) -> Pipeline<'p, T>
    where
        T: 'p,
        E: Into<BoxError> + 'p,
    {
        let len = self.source_len();
        let feed = self.into_stream();
        let build: Build<'p, T> = Box::new(move |_window, _tally| {
            Box::new(FeedStage {
                feed,
                done: None,
                ended: false,
            })
        });
        let mut pipeline = Pipeline::source(build, 1, None);
        pipeline.len = len;
        pipeline
    }
}

/// `then`, `then_with` and `then_fn` on a pipeline's possible first stage
/// (`$what`), each making it stage 0 and adding stage 1.
macro_rules! then_methods {
    ($what:literal, $order:literal) => {
        #[doc = concat!("Makes this ", $what, " the first stage of a [`Pipeline`] and adds a stage on")]
        /// `pool`, fed with this stage's successful outputs (converted with
        /// `From`). Results come
        #[doc = concat!($order, "; see [`Pipeline::then`].")]
        ///
        /// On a process pool, a pipeline's first stage submits one task per item
        /// (no chunks: see [`Pipeline`]).
        pub fn then<'p, W>(self, pool: &'p Pool<W>) -> Pipeline<'p, W::Output>
        where
            Self: 'p,
            T: 'p,
            E: Into<BoxError> + 'p,
            W: Worker,
            W::Input: From<T>,
            W::Error: Into<BoxError>,
        {
            self.into_pipeline().then(pool)
        }

        /// Like `then`, converting each output into `pool`'s input with
        /// `adapt`; see [`Pipeline::then_with`].
        pub fn then_with<'p, W, F>(self, pool: &'p Pool<W>, adapt: F) -> Pipeline<'p, W::Output>
        where
            Self: 'p,
            T: 'p,
            E: Into<BoxError> + 'p,
            W: Worker,
            W::Error: Into<BoxError>,
            F: FnMut(T) -> W::Input + 'p,
        {
            self.into_pipeline().then_with(pool, adapt)
        }

        /// Like `then`, running `f` on each output on a closures pool; see
        /// [`Pipeline::then_fn`].
        pub fn then_fn<'p, F, U>(self, pool: &'p Pool<Closures>, f: F) -> Pipeline<'p, U>
        where
            Self: 'p,
            T: Send + 'static,
            E: Into<BoxError> + 'p,
            F: Fn(T) -> U + Send + Sync + 'static,
            U: Send + 'static,
        {
            self.into_pipeline().then_fn(pool, f)
        }
    };
}

impl<'a, T, E> Map<'a, T, E> {
    then_methods!("map", "in input order");
}

impl<'a, T, E> MapUnordered<'a, T, E> {
    then_methods!("map", "as the last stage finishes them");
}

impl<T, E> Feed<T, E> {
    then_methods!("feed", "as the last stage finishes them");
}
