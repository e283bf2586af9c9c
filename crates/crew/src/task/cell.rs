//! The task cell: one allocation per task that holds its input, its state and its
//! result slot, shared by the queue (as a [`Job`]) and the caller (as a `Task`).
//!
//! # The state machine
//!
//! `Header::state` is a set of bits. Each bit is set at most once and never cleared,
//! so every transition is a single `fetch_or`, and whoever sees the bit clear in the
//! value `fetch_or` returns is the one thread that made the transition.
//!
//! | bit | set by | means |
//! |---|---|---|
//! | [`CLAIMED`](super::header::CLAIMED) | the worker that starts the task, or whoever discards it | the payload has one owner, who takes it |
//! | [`RESOLVING`] | the first thread to produce an outcome | that thread, alone, writes the result slot |
//! | [`RESOLVED`] | the `RESOLVING` thread, after writing the slot (`Release`) | the handle may read the slot (`Acquire`) |
//! | [`CANCEL`] | `cancel`, a timeout, a kill, `terminate`, *after* their outcome was decided | `Context::is_cancelled()` answers true |
//! | [`WAITER`] | the handle, after storing a waker or thread in `waiter` | the resolver must wake it |
//! | [`WATCHED`] | a progress watcher, after storing its waiter in the side slot | a report that changes the progress, and the resolver, must wake the watchers (`cell.md`, "Progress") |
//!
//! Exactly-once resolution follows from `RESOLVING`: a worker finishing a task, a
//! `cancel`, a timeout and a shutdown may race, but only one of them sees the bit
//! clear; the others drop their outcome (a cancelled task's late output is
//! discarded this way).
//!
//! No lost wake-up: the resolver does `fetch_or(RESOLVED)` and wakes if `WAITER` was
//! set; the handle stores its waiter, then does `fetch_or(WAITER)` and does not sleep
//! if `RESOLVED` was set. Both are read-modify-writes of one atomic, so one of them
//! comes first in its modification order, and whichever comes second sees the other.
//!
//! A [`Job`] that is dropped without having been run (a queue torn down, a bug)
//! resolves its task as closed, so no handle can wait for ever.
//!
//! # Async tasks
//!
//! A payload may turn out to be a future ([`Execution`]): `Runnable::run` then
//! returns [`Started::Suspended`] with an [`AsyncRun`], which the worker's executor
//! polls (`threads/executor.rs`). The `AsyncRun` holds the cell and resolves it with
//! the future's output, exactly as a synchronous run does. Its two extra rules:
//!
//! - **Cancel at a poll boundary.** Before each poll it checks whether the task was
//!   decided elsewhere (cancel, timeout, kill, terminate); if so it drops the future
//!   without polling it. A future parked on something that never fires would never
//!   be polled again, so [`Core::fail`] wakes the waker the run stored in
//!   `Core::poller` before it was last polled. The run registers the waker *before*
//!   it checks the state and `fail` decides the outcome *before* it wakes, so the
//!   wake-up cannot be lost (the `AtomicWaker` contract: a `wake` after a
//!   `register` wakes that waker).
//! - **A panic inside `poll`** resolves the task as panicked, as in a synchronous
//!   run; the run then reports [`Ran::Panicked`] so the worker rebuilds its state.
//!
//! The loom model at the bottom of this file runs these races (worker vs. cancel vs.
//! a parked handle, and worker vs. a shutdown taking the task back) through every
//! interleaving, with loom checking each access to the payload and result slots.
//! It fails if the resolver stops waking the waiter (deadlock) or if two threads
//! can both pass `RESOLVING` (a concurrent write to the result slot).

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, SeqCst};
use std::sync::atomic::{fence, AtomicPtr};
use std::task::{Context as PollContext, Poll, Waker};
use std::time::Instant;

use futures_util::task::AtomicWaker;

use crate::error::{Failure, Panic, TaskError};
use crate::sync::modelled::{current, lock, Mutex, Thread, UnsafeCell};
use crate::sync::Arc;
use crate::task::{Priority, TaskId};
use crate::worker::{Context, Execution, ExecutionKind, Outbox, Worker, WorkerId};

pub(crate) use super::header::{progress_bits, CellRef, Header, Limits, Outcome, ShareCell};
pub(crate) use super::header::{CANCEL, OUTCOME_SHIFT, RESOLVED, RESOLVING, WAITER, WATCHED};

/// Who is waiting for a task's result.
enum Waiter {
    Thread(Thread),
    Waker(Waker),
}

impl Waiter {
    fn wake(self) {
        match self {
            Waiter::Thread(t) => t.unpark(),
            Waiter::Waker(w) => w.wake(),
        }
    }
}

/// The typed half of a cell: result slot and waiter. Generic over the output only,
/// so the handle (`Task<T, E>`) can reach it without knowing the payload type.
pub(crate) struct Core<T, E> {
    header: Header,
    /// Written once by the `RESOLVING` thread, read once by the handle after it
    /// sees `RESOLVED`.
    result: UnsafeCell<Option<Result<T, TaskError<E>>>>,
    /// The handle's waiter. Locked only on the slow path: a handle that finds the
    /// task unresolved, and a resolver that finds `WAITER` set.
    waiter: Mutex<Option<Waiter>>,
    /// What only some tasks need, allocated on first use ([`Side`]): an async
    /// task's executor waker, and progress watchers. Null for a synchronous
    /// task nobody watches: a pointer rather than inline fields keeps every
    /// cell 16 bytes smaller (a cell is allocated per task; W1 felt the
    /// difference). Set at most once; freed with the core.
    side: SideSlot,
}

/// The parts of a cell only some tasks use, in one allocation made the first
/// time one of them is needed.
struct Side {
    /// An async task's executor waker: registered by its [`AsyncRun`] before
    /// each poll, woken by [`Core::fail`] so a cancelled future is dropped
    /// promptly (see "Async tasks").
    poller: AtomicWaker,
    /// Progress watchers waiting for a change, by watcher id: one entry each
    /// (a watcher that waits again replaces its own), so at most one per live
    /// watcher. Taken whole and woken by whoever changes the progress or
    /// resolves the task (`cell.md`, "Progress").
    watchers: Mutex<Vec<(u64, Waiter)>>,
}

/// The pointer to a cell's [`Side`], installed on first use by whichever
/// thread needs it first (a compare-exchange decides; the loser frees its
/// copy).
struct SideSlot(AtomicPtr<Side>);

impl SideSlot {
    fn new() -> Self {
        SideSlot(AtomicPtr::new(std::ptr::null_mut()))
    }

    /// The side, if installed.
    #[inline]
    fn get(&self) -> Option<&Side> {
        let current = self.0.load(SeqCst);
        // SAFETY: non-null means installed by `get_or_install` from a `Box`
        // that lives until the slot is dropped, which `&self` prevents.
        (!current.is_null()).then(|| unsafe { &*current })
    }

    /// The side, installed now if it was not.
    fn get_or_install(&self) -> &Side {
        if let Some(side) = self.get() {
            return side;
        }
        let new = Box::into_raw(Box::new(Side {
            poller: AtomicWaker::new(),
            watchers: Mutex::new(Vec::new()),
        }));
        let current = match self
            .0
            .compare_exchange(std::ptr::null_mut(), new, SeqCst, SeqCst)
        {
            Ok(_) => new,
            Err(installed) => {
                // SAFETY: `new` came from `Box::into_raw` above and was not
                // published.
                drop(unsafe { Box::from_raw(new) });
                installed
            }
        };
        // SAFETY: non-null, from `Box::into_raw`, freed only when the slot is
        // dropped, which `&self` prevents.
        unsafe { &*current }
    }
}

impl Drop for SideSlot {
    fn drop(&mut self) {
        let side = *self.0.get_mut();
        if !side.is_null() {
            // SAFETY: a non-null pointer came from `Box::into_raw` in
            // `get_or_install` and is freed only here, once, when nothing else
            // can reach the slot.
            drop(unsafe { Box::from_raw(side) });
        }
    }
}

/// A task's progress as its handle and watchers see it, without the task's
/// types: its header (where the value is) and its side slot (where watchers
/// wait).
#[derive(Clone, Copy)]
pub(crate) struct ProgressCore<'a> {
    header: &'a Header,
    side: &'a SideSlot,
}

impl ProgressCore<'_> {
    /// The latest progress reported.
    #[inline]
    pub(crate) fn get(&self) -> Option<f32> {
        self.header.progress()
    }

    /// The stored bits: what a watcher passes back as `seen` to
    /// [`register`](Self::register).
    #[inline]
    pub(crate) fn raw(&self) -> u32 {
        self.header.progress_raw()
    }

    #[inline]
    pub(crate) fn is_resolved(&self) -> bool {
        self.header.is_resolved()
    }

    /// Stores watcher `id`'s waiter (`waker`, or this thread) to be woken when
    /// the progress changes or the task resolves. Returns false, meaning "do
    /// not sleep", if the task has resolved or the value is no longer `seen`
    /// (`Header::set_progress` says why no change can slip between).
    pub(crate) fn register(&self, id: u64, waker: Option<&Waker>, seen: u32) -> bool {
        let side = self.side.get_or_install();
        {
            let waiter = match waker {
                Some(w) => Waiter::Waker(w.clone()),
                None => Waiter::Thread(current()),
            };
            let mut watchers = lock(&side.watchers);
            match watchers.iter_mut().find(|(w, _)| *w == id) {
                Some(entry) => entry.1 = waiter,
                None => watchers.push((id, waiter)),
            }
        }
        !self.header.watch() && self.header.progress_raw() == seen
    }

    /// Stores a report from outside the task's code (a worker process's
    /// *progress* frame): `fraction` as [`Core::report_progress`] takes it.
    /// True if the watchers must be woken ([`notify`](Self::notify)), which
    /// the caller may do after releasing its own locks.
    #[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
    pub(crate) fn set(&self, fraction: f32) -> bool {
        progress_bits(fraction).is_some_and(|bits| self.header.set_progress(bits))
    }

    /// Wakes the watchers (the value changed).
    #[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
    pub(crate) fn notify(&self) {
        wake_watchers(self.side);
    }

    /// Forgets watcher `id` (it is being dropped).
    pub(crate) fn unregister(&self, id: u64) {
        if let Some(side) = self.side.get() {
            lock(&side.watchers).retain(|(w, _)| *w != id);
        }
    }
}

/// Wakes every registered progress watcher, outside the list's lock.
#[cold]
fn wake_watchers(side: &SideSlot) {
    if let Some(side) = side.get() {
        let watchers = std::mem::take(&mut *lock(&side.watchers));
        for (_, waiter) in watchers {
            waiter.wake();
        }
    }
}

// SAFETY: the result slot is written by exactly one thread (the one that set
// RESOLVING) before RESOLVED is published with Release, and read by the unique
// handle only after it observes RESOLVED with Acquire; so no two threads access it
// at once, and `T`/`E` only cross threads by value (they are `Send`).
unsafe impl<T: Send, E: Send> Sync for Core<T, E> {}

impl<T, E> Core<T, E> {
    /// An unresolved result slot, for a backend with its own cell type.
    pub(crate) fn new(header: Header) -> Self {
        Core {
            header,
            result: UnsafeCell::new(None),
            waiter: Mutex::new(None),
            side: SideSlot::new(),
        }
    }

    #[inline]
    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// The task's progress, for its handle and watchers.
    #[inline]
    pub(crate) fn progress(&self) -> ProgressCore<'_> {
        ProgressCore {
            header: &self.header,
            side: &self.side,
        }
    }

    /// Stores a progress report (NaN ignored, clamped to `0.0..=1.0`) and
    /// wakes the watchers if it changed the value. Ignored once the task is
    /// decided.
    pub(crate) fn report_progress(&self, fraction: f32) {
        if let Some(bits) = progress_bits(fraction) {
            if self.header.set_progress(bits) {
                self.notify_progress();
            }
        }
    }

    /// Wakes the progress watchers (the value changed).
    pub(crate) fn notify_progress(&self) {
        wake_watchers(&self.side);
    }

    /// Writes `outcome` if no other outcome was chosen first. True if it did.
    pub(crate) fn resolve(&self, outcome: Result<T, TaskError<E>>) -> bool {
        if self.header.state.fetch_or(RESOLVING, AcqRel) & RESOLVING != 0 {
            return false; // someone else resolved it; `outcome` is discarded
        }
        let code = (Outcome::of(&outcome) as usize) << OUTCOME_SHIFT;
        self.result.with_mut(|slot| {
            // SAFETY: we set RESOLVING, so we are the only writer, and the handle does
            // not read before RESOLVED, which we have not set yet.
            unsafe { *slot = Some(outcome) }
        });
        let prev = self.header.state.fetch_or(RESOLVED | code, AcqRel);
        if prev & WAITER != 0 {
            self.wake_waiter();
        }
        if prev & WATCHED != 0 {
            // Watchers learn that no more progress will come.
            wake_watchers(&self.side);
        }
        true
    }

    #[cold]
    fn wake_waiter(&self) {
        let waiter = lock(&self.waiter).take();
        if let Some(w) = waiter {
            w.wake();
        }
    }

    /// Resolves with one of crew's own failures, also raising `CANCEL` so code that
    /// is still running sees `is_cancelled()`.
    ///
    /// The outcome is decided *before* `CANCEL` is raised: code that sees
    /// `is_cancelled()` and returns early can then never win the resolution with
    /// its own output (which would make a cancel, timeout or kill that was already
    /// under way resolve the task as `Ok`). If another outcome won first, the flag
    /// is still raised, so a task that keeps running is told to stop.
    ///
    /// An async task's future is then woken, so its run drops it at once instead
    /// of at its next wake-up, which might never come ("Async tasks").
    pub(crate) fn fail(&self, failure: Failure) -> bool {
        let resolved = self.resolve(Err(TaskError::failure(failure)));
        self.header.state.fetch_or(CANCEL, AcqRel);
        // Pairs with the fence in `Resolve::poll`: either this load sees the
        // run's waker slot, or the run's check sees the task decided.
        fence(SeqCst);
        if let Some(side) = self.side.get() {
            side.poller.wake();
        }
        resolved
    }

    /// The async run's waker slot, installed on first use. Only the task's run
    /// (on its worker's thread) registers in it.
    fn poller(&self) -> &AtomicWaker {
        &self.side.get_or_install().poller
    }

    /// Takes the result.
    ///
    /// # Safety
    /// Only the task's unique handle may call this, at most once, and only after
    /// `header().is_resolved()` returned true on this thread.
    pub(crate) unsafe fn take_result(&self) -> Result<T, TaskError<E>> {
        let result = self.result.with_mut(|slot| {
            // SAFETY: per this function's contract, RESOLVED was observed with
            // Acquire, so the resolver's write happened before, and no one else reads.
            unsafe { (*slot).take() }
        });
        match result {
            Some(r) => r,
            None => unreachable_state("a resolved task had no result"),
        }
    }

    /// Stores `waiter` and publishes `WAITER`. Returns false, without storing the
    /// need to sleep, if the task is already resolved.
    fn register(&self, waiter: Waiter) -> bool {
        {
            let mut slot = lock(&self.waiter);
            if let (Some(Waiter::Waker(old)), Waiter::Waker(new)) = (&*slot, &waiter) {
                if old.will_wake(new) && self.header.state.load(Acquire) & WAITER != 0 {
                    return !self.header.is_resolved();
                }
            }
            *slot = Some(waiter);
        }
        self.header.state.fetch_or(WAITER, AcqRel) & RESOLVED == 0
    }

    pub(crate) fn register_thread(&self) -> bool {
        self.register(Waiter::Thread(current()))
    }

    pub(crate) fn register_waker(&self, waker: &Waker) -> bool {
        self.register(Waiter::Waker(waker.clone()))
    }
}

/// Aborts: a state crew's own protocol makes impossible was reached. Continuing
/// could resolve a task twice or never.
#[cold]
#[inline(never)]
pub(crate) fn unreachable_state(what: &str) -> ! {
    eprintln!("crew: internal invariant broken: {what}; aborting");
    std::process::abort()
}

/// How a payload turns into an output on a worker: an input for the worker, a
/// closure, or a future. A future (and an [`AsyncWorker`](crate::AsyncWorker)'s
/// input) comes back as [`Execution`]'s pending kind, for the executor to finish.
pub(crate) trait Payload<W: Worker>: Send + 'static {
    type Output: Send + 'static;
    type Error: Send + 'static;
    fn execute(self, worker: &mut W, ctx: &mut Context<'_>)
        -> Execution<Self::Output, Self::Error>;
}

/// An input for the pool's `Worker::run` (through `Worker::__execute`, which an
/// async worker overrides to hand back a future).
pub(crate) struct Input<I>(pub(crate) I);

impl<W: Worker> Payload<W> for Input<W::Input> {
    type Output = W::Output;
    type Error = W::Error;
    #[inline]
    fn execute(self, worker: &mut W, ctx: &mut Context<'_>) -> Execution<W::Output, W::Error> {
        worker.__execute(self.0, ctx)
    }
}

/// A future (`Pool::spawn_async`): it runs on the worker's executor and never sees
/// the worker's state.
pub(crate) struct AsyncCall<F>(pub(crate) F);

impl<W, F> Payload<W> for AsyncCall<F>
where
    W: Worker,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;
    type Error = std::convert::Infallible;
    fn execute(self, _worker: &mut W, _ctx: &mut Context<'_>) -> Execution<F::Output, Self::Error> {
        let future = self.0;
        Execution::pending(Box::pin(async move { Ok(future.await) }))
    }
}

/// A closure; it runs on any pool and never sees the worker's state.
pub(crate) struct Call<F, T>(pub(crate) F, PhantomData<fn() -> T>);

impl<F, T> Call<F, T> {
    pub(crate) fn new(f: F) -> Self {
        Call(f, PhantomData)
    }
}

impl<W, F, T> Payload<W> for Call<F, T>
where
    W: Worker,
    F: FnOnce(&mut Context<'_>) -> T + Send + 'static,
    T: Send + 'static,
{
    type Output = T;
    type Error = std::convert::Infallible;
    #[inline]
    fn execute(self, _worker: &mut W, ctx: &mut Context<'_>) -> Execution<T, Self::Error> {
        Execution::done(Ok((self.0)(ctx)))
    }
}

/// A closure that does not take the `Context` (`Pool::spawn`). Its own type, rather
/// than a wrapping closure, so a rejected submission can give the user's closure
/// back.
pub(crate) struct Plain<F>(pub(crate) F);

impl<W, F, T> Payload<W> for Plain<F>
where
    W: Worker,
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    type Output = T;
    type Error = std::convert::Infallible;
    #[inline]
    fn execute(self, _worker: &mut W, _ctx: &mut Context<'_>) -> Execution<T, Self::Error> {
        Execution::done(Ok((self.0)()))
    }
}

/// The whole allocation: the typed core plus the payload.
pub(crate) struct Cell<P, T, E> {
    core: Core<T, E>,
    /// Taken by whoever sets `CLAIMED`.
    payload: UnsafeCell<Option<P>>,
}

// SAFETY: the payload is accessed only by the one thread that set CLAIMED (a
// fetch_or with AcqRel, so it also sees the submitter's write); the core is Sync on
// its own terms above. `P: Send` because it moves to that thread.
unsafe impl<P: Send, T: Send, E: Send> Sync for Cell<P, T, E> {}

impl<P, T, E> Cell<P, T, E> {
    /// Takes the payload back if nobody has claimed it yet (a submission that raced
    /// with shutdown), resolving the task as closed. Its queue entry stays behind as
    /// a tombstone.
    pub(crate) fn take_back(&self) -> Option<P> {
        let payload = self.claim_payload()?;
        self.core.fail(Failure::Closed);
        Some(payload)
    }

    /// Takes the payload if this call wins the claim.
    fn claim_payload(&self) -> Option<P> {
        if !self.core.header.claim() {
            return None;
        }
        self.payload.with_mut(|slot| {
            // SAFETY: we set CLAIMED, so we are the payload's only owner.
            unsafe { (*slot).take() }
        })
    }
}

/// What the worker loop learns from running one job (or, for an async task, from
/// its future's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    /// Someone else had claimed it (cancelled while queued): nothing ran. For an
    /// async task: it was decided elsewhere and its future was dropped.
    Skipped,
    /// It ran and returned (an output or the user's error).
    Returned,
    /// It panicked; the worker's state may be half-updated.
    Panicked,
}

/// How a job's run began.
pub(crate) enum Started {
    /// It ran to its end on the worker's stack.
    Done(Ran),
    /// It is a future: the executor polls it to its end (its task stays running).
    Suspended(AsyncRun),
}

impl Started {
    /// The synchronous result; an async task counts as returned (it is in flight).
    #[cfg(all(test, crew_loom))]
    fn ran(self) -> Ran {
        match self {
            Started::Done(ran) => ran,
            Started::Suspended(_) => Ran::Returned,
        }
    }
}

/// An async task in flight: polled by the worker's executor, it yields the task's
/// id and how it ended once the task is resolved (by its future, or elsewhere).
pub(crate) type AsyncRun = Pin<Box<dyn Future<Output = (TaskId, Ran)>>>;

/// The queue's view of a task: run it on a `W`, or discard it.
pub(crate) trait Runnable<W>: CellRef {
    /// Claims and runs the task on `worker`, resolving it with what it returns. A
    /// future is handed back to be polled instead (`Started::Suspended`); `ctx`
    /// must carry the job (`Context::for_job`), which the run needs to own.
    fn run(&self, worker: &mut W, ctx: &mut Context<'_>) -> Started;
    /// Claims the task without running it (dropping its payload) and resolves it with
    /// `failure`. False if it was already claimed.
    fn discard(&self, failure: Failure) -> bool;
    /// Resolves a task that may be running with `failure` (timeout, kill, terminate).
    fn fail(&self, failure: Failure) -> bool;
}

/// A task whose progress can be watched, seen without its types: what a
/// [`ProgressWatch`](crate::ProgressWatch) holds.
pub(crate) trait Watched: Send + Sync {
    /// The task's progress: its own core's, unless the handle stands for
    /// another task (`task::mapped`).
    fn progress(&self) -> ProgressCore<'_>;
}

/// The handle's view of a task: its core, and cancellation (which needs the payload
/// type to drop the input early).
pub(crate) trait Handle<T, E>: Watched {
    fn core(&self) -> &Core<T, E>;
    fn cancel(&self) -> bool;
    /// Resolves a task that has not started with `failure` (as `cancel` does with
    /// `Cancelled`). False if it had started or resolved. Only thread pools'
    /// cells need it (`threads::join_watch`).
    fn refuse(&self, failure: Failure) -> bool {
        let _ = failure;
        false
    }
    /// The worker running the task: the header's, unless the handle stands for
    /// another task (`task::mapped`).
    fn worker(&self) -> Option<WorkerId> {
        self.core().header().worker()
    }
}

impl<P, T, E> CellRef for Cell<P, T, E>
where
    P: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    #[inline]
    fn header(&self) -> &Header {
        &self.core.header
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn notify_progress(&self) {
        self.core.notify_progress();
    }
}

impl<P, T, E> Watched for Cell<P, T, E>
where
    P: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    #[inline]
    fn progress(&self) -> ProgressCore<'_> {
        self.core.progress()
    }
}

impl<W, P> Runnable<W> for Cell<P, P::Output, P::Error>
where
    W: Worker,
    P: Payload<W>,
{
    fn run(&self, worker: &mut W, ctx: &mut Context<'_>) -> Started {
        let Some(payload) = self.claim_payload() else {
            return Started::Done(Ran::Skipped);
        };
        self.core
            .header
            .worker
            .store(ctx.worker_id().raw(), Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| payload.execute(worker, ctx)));
        let result = match outcome {
            Ok(Execution(ExecutionKind::Done(result))) => result,
            Ok(Execution(ExecutionKind::Pending(future))) => {
                // The run must own the cell: get the typed `Arc` back from the job.
                let owner = ctx.share_cell().map(CellRef::into_any);
                return match owner.map(Arc::downcast::<Self>) {
                    Some(Ok(cell)) => Started::Suspended(Box::pin(Resolve {
                        cell,
                        future: Some(future),
                    })),
                    _ => unreachable_state("an async task ran without its job in the context"),
                };
            }
            Err(panic) => {
                // The payload goes to whoever joins (`TaskError::into_panic`);
                // `Panic`'s Drop catches a payload whose own Drop panics.
                self.core
                    .resolve(Err(TaskError::failure(Failure::Panicked(Panic::caught(
                        panic,
                    )))));
                return Started::Done(Ran::Panicked);
            }
        };
        match result {
            Ok(output) => self.core.resolve(Ok(output)),
            Err(error) => self.core.resolve(Err(TaskError::user(error))),
        };
        Started::Done(Ran::Returned)
    }

    fn discard(&self, failure: Failure) -> bool {
        match self.claim_payload() {
            Some(payload) => {
                // Resolve first: between claim and resolve only crew code runs, which
                // `Header::settled_outcome` relies on. The user's Drop runs after.
                let resolved = self.core.fail(failure);
                let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
                resolved
            }
            None => false,
        }
    }

    fn fail(&self, failure: Failure) -> bool {
        self.core.fail(failure)
    }
}

impl<T, E, P> Handle<T, E> for Cell<P, T, E>
where
    P: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    #[inline]
    fn core(&self) -> &Core<T, E> {
        &self.core
    }

    fn cancel(&self) -> bool {
        // `fail` raises CANCEL once the outcome is decided (see there).
        match self.claim_payload() {
            Some(payload) => {
                // Queued: the input is dropped now; the queue entry stays behind as a
                // tombstone that the worker who pops it will skip. Resolve before the
                // user's Drop runs (see `discard`).
                let resolved = self.core.fail(Failure::Cancelled);
                let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
                resolved
            }
            None => self.core.fail(Failure::Cancelled),
        }
    }

    fn refuse(&self, failure: Failure) -> bool {
        match self.claim_payload() {
            Some(payload) => {
                // As `cancel`: resolve first, the user's Drop after.
                let resolved = self.core.fail(failure);
                let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
                resolved
            }
            None => false,
        }
    }
}

/// An async task's future, in flight on a worker's executor: it resolves the cell
/// with the future's output, drops the future as soon as the task is decided
/// elsewhere, and turns a panic into a panicked outcome ("Async tasks").
struct Resolve<P, T, E> {
    cell: Arc<Cell<P, T, E>>,
    /// `None` once it has ended; dropped right after the task resolves.
    future: Option<Pin<Box<dyn Future<Output = Result<T, E>>>>>,
}

impl<P, T, E> Resolve<P, T, E> {
    /// Drops the user's future, catching a panic in its `Drop` (it must not
    /// unwind through the executor).
    fn drop_future(&mut self) {
        if let Some(future) = self.future.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(future)));
        }
    }
}

impl<P, T, E> Future for Resolve<P, T, E> {
    type Output = (TaskId, Ran);

    fn poll(mut self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<(TaskId, Ran)> {
        let this = &mut *self;
        let core = &this.cell.core;
        let id = core.header.id();
        // Register first, then look: a `fail` after this point wakes us. The
        // fence pairs with `fail`'s (the slot is installed at the first poll).
        core.poller().register(cx.waker());
        fence(SeqCst);
        if core.header.is_decided() {
            // Cancelled, timed out, killed or terminated: drop at this boundary.
            this.drop_future();
            return Poll::Ready((id, Ran::Skipped));
        }
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready((id, Ran::Returned));
        };
        let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
        let (outcome, ran) = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(output))) => (Ok(output), Ran::Returned),
            Ok(Poll::Ready(Err(error))) => (Err(TaskError::user(error)), Ran::Returned),
            Err(panic) => {
                let failure = TaskError::failure(Failure::Panicked(Panic::caught(panic)));
                (Err(failure), Ran::Panicked)
            }
        };
        // Resolve before the user's `Drop` runs (see `discard`).
        core.resolve(outcome);
        this.drop_future();
        Poll::Ready((id, ran))
    }
}

impl<P, T, E> Drop for Resolve<P, T, E> {
    fn drop(&mut self) {
        if self.future.is_some() {
            // Dropped in flight (its worker is leaving): nobody can finish it now.
            self.cell.core.fail(Failure::Closed);
            self.drop_future();
        }
    }
}

/// A queue entry: a shared pointer to a task cell, seen as something to run on `W`.
///
/// Dropping a `Job` whose task is unresolved resolves it as closed, so a handle
/// never waits for a task that no queue holds any more.
pub(crate) struct Job<W>(Arc<dyn Runnable<W>>);

impl<W> Job<W> {
    #[inline]
    pub(crate) fn header(&self) -> &Header {
        self.0.header()
    }

    pub(crate) fn discard(&self, failure: Failure) -> bool {
        self.0.discard(failure)
    }

    pub(crate) fn fail(&self, failure: Failure) -> bool {
        self.0.fail(failure)
    }
}

impl<W> Clone for Job<W> {
    #[inline]
    fn clone(&self) -> Self {
        Job(Arc::clone(&self.0))
    }
}

impl<W> Drop for Job<W> {
    #[inline]
    fn drop(&mut self) {
        if !self.0.header().is_decided() {
            // Only unclaimed tasks are affected: a claimed one is being run or was
            // discarded by someone who resolves it. An unclaimed one whose queue
            // entry is gone would otherwise never resolve.
            self.0.discard(Failure::Closed);
        }
    }
}

impl<W: 'static> ShareCell for Job<W> {
    fn share(&self) -> Arc<dyn CellRef> {
        Arc::clone(&self.0) as Arc<dyn CellRef>
    }

    fn notify_progress(&self) {
        self.0.notify_progress();
    }
}

impl<W: Worker> Job<W> {
    /// Runs the task on `worker` as worker `id` (see `Runnable::run`); its
    /// context sends messages through `outbox`, if there is one.
    #[inline]
    pub(crate) fn run(
        &self,
        worker: &mut W,
        id: WorkerId,
        outbox: Option<&Arc<dyn Outbox>>,
    ) -> Started {
        let mut ctx = Context::for_job(id, self.header(), self, outbox);
        self.0.run(worker, &mut ctx)
    }

    /// The queue's reference to `cell`.
    #[inline]
    pub(crate) fn new<P: Payload<W>>(cell: Arc<Cell<P, P::Output, P::Error>>) -> Self {
        Job(cell)
    }
}

/// Allocates one task. The caller makes the queue's [`Job`] and the user's handle
/// from clones of it; all three share the one allocation.
#[inline]
pub(crate) fn new_cell<P, T, E>(
    id: TaskId,
    priority: Priority,
    limits: Limits,
    bounded: bool,
    queued_at: Option<Instant>,
    pool: usize,
    payload: P,
) -> Arc<Cell<P, T, E>> {
    let mut header = Header::with_queued_at(id, priority, limits, bounded, queued_at);
    header.pool = pool;
    Arc::new(Cell {
        core: Core {
            header,
            result: UnsafeCell::new(None),
            waiter: Mutex::new(None),
            side: SideSlot::new(),
        },
        payload: UnsafeCell::new(Some(payload)),
    })
}

#[cfg(all(test, crew_loom))]
mod loom_model {
    //! Every interleaving of the races a task's state machine must survive: a
    //! worker running the task, a cancel, a shutdown taking it back, and the
    //! handle waiting for the result. Each must end with exactly one outcome, the
    //! result slot written once and read once (loom checks every access to it),
    //! and the waiting handle woken.

    use super::*;
    use crate::task::{Priority, TaskId};
    use crate::worker::{Closures, Context, WorkerId};
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    type TestCell = Cell<Plain<Box<dyn FnOnce() -> u64 + Send>>, u64, Infallible>;

    /// A task whose closure records that it ran and returns 42.
    fn task(ran: &std::sync::Arc<AtomicBool>) -> Arc<TestCell> {
        let ran = std::sync::Arc::clone(ran);
        let f: Box<dyn FnOnce() -> u64 + Send> = Box::new(move || {
            ran.store(true, SeqCst);
            42
        });
        new_cell(
            TaskId(1),
            Priority::Normal,
            Limits::NONE,
            false,
            Some(Instant::now()),
            0,
            Plain(f),
        )
    }

    fn run_on_worker(cell: &Arc<TestCell>) -> Ran {
        let job = Job::<Closures>::new(Arc::clone(cell));
        job.run(&mut Closures, WorkerId::new(1), None).ran()
    }

    /// What the handle does in `join`: register, park until resolved, take.
    fn join(cell: &TestCell) -> Result<u64, TaskError<Infallible>> {
        let core = Handle::core(cell);
        if core.register_thread() {
            while !core.header().is_resolved() {
                loom::thread::park();
            }
        }
        // SAFETY: this is the only handle, it takes once, after seeing RESOLVED.
        unsafe { core.take_result() }
    }

    #[test]
    fn run_racing_cancel_resolves_once_and_wakes_the_joiner() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let ran = std::sync::Arc::new(AtomicBool::new(false));
            let cell = task(&ran);
            let worker = {
                let cell = Arc::clone(&cell);
                loom::thread::spawn(move || run_on_worker(&cell))
            };
            let canceller = {
                let cell = Arc::clone(&cell);
                loom::thread::spawn(move || Handle::cancel(&*cell))
            };
            let result = join(&cell);
            let ran_as = worker.join().unwrap();
            let cancel_won = canceller.join().unwrap();
            match result {
                Ok(v) => {
                    assert_eq!(v, 42);
                    assert!(!cancel_won, "a cancel that lost must say so");
                    assert_eq!(ran_as, Ran::Returned);
                }
                Err(e) => {
                    assert!(e.is_cancelled());
                    assert!(cancel_won, "the cancel that resolved the task says so");
                    // Cancelled while queued: it never ran; cancelled while running:
                    // it ran and its output was discarded.
                    assert_eq!(ran_as == Ran::Skipped, !ran.load(SeqCst));
                }
            }
            let expected = if cancel_won {
                Outcome::Cancelled
            } else {
                Outcome::Ok
            };
            assert_eq!(cell.core.header().outcome(), Some(expected));
        });
    }

    #[test]
    fn a_task_that_stops_when_cancelled_resolves_as_cancelled() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let f = |ctx: &mut Context<'_>| {
                while !ctx.is_cancelled() {
                    loom::thread::yield_now();
                }
                7u64
            };
            let cell: Arc<Cell<_, u64, Infallible>> = new_cell(
                TaskId(1),
                Priority::Normal,
                Limits::NONE,
                false,
                Some(Instant::now()),
                0,
                Call::new(f),
            );
            let worker = {
                let cell = Arc::clone(&cell);
                loom::thread::spawn(move || {
                    let job = Job::<Closures>::new(cell);
                    job.run(&mut Closures, WorkerId::new(1), None).ran()
                })
            };
            // The task only returns once cancelled, so whatever the interleaving
            // the cancel must be what resolves it.
            assert!(Handle::cancel(&*cell), "the cancel resolved the task");
            worker.join().unwrap();
            let core = Handle::core(&*cell);
            assert!(core.header().is_resolved());
            // SAFETY: the only handle, taking once, after seeing RESOLVED.
            let result = unsafe { core.take_result() };
            assert!(result.unwrap_err().is_cancelled());
        });
    }

    #[test]
    fn take_back_racing_a_worker_gives_the_input_to_exactly_one() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let ran = std::sync::Arc::new(AtomicBool::new(false));
            let cell = task(&ran);
            let worker = {
                let cell = Arc::clone(&cell);
                loom::thread::spawn(move || run_on_worker(&cell))
            };
            let taken_back = cell.take_back().is_some();
            let ran_as = worker.join().unwrap();
            let result = join(&cell);
            assert_eq!(taken_back, ran_as == Ran::Skipped);
            assert_eq!(taken_back, !ran.load(SeqCst));
            match result {
                Ok(v) => assert!(!taken_back && v == 42),
                Err(e) => assert!(taken_back && e.is_closed()),
            }
        });
    }

    /// What a progress watcher does (`ProgressWatch::recv`): look, register
    /// its thread, park, until `enough` holds for the value and whether the
    /// task resolved. Returns the bits it last saw. It runs on a thread of
    /// its own: a late unpark must not reach a thread blocked in loom's
    /// `join` (loom does not model such a spurious wake-up).
    fn watch_until(
        cell: Arc<dyn Watched>,
        enough: impl Fn(u32, bool) -> bool + Send + 'static,
    ) -> loom::thread::JoinHandle<u32> {
        loom::thread::spawn(move || {
            let progress = cell.progress();
            loop {
                let resolved = progress.is_resolved();
                let seen = progress.raw();
                if enough(seen, resolved) {
                    return seen;
                }
                if progress.register(1, None, seen) {
                    loom::thread::park();
                }
            }
        })
    }

    #[test]
    fn a_report_wakes_a_waiting_watcher() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let ran = std::sync::Arc::new(AtomicBool::new(false));
            let cell = task(&ran);
            // Only the report can wake it: the task never resolves here.
            let half = 0.5f32.to_bits();
            let watcher = watch_until(Arc::clone(&cell) as Arc<dyn Watched>, move |bits, _| {
                bits == half
            });
            Handle::core(&*cell).report_progress(0.5);
            assert_eq!(watcher.join().unwrap(), half);
        });
    }

    #[test]
    fn the_resolution_wakes_a_watcher_and_shows_the_last_report() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let f = |ctx: &mut Context<'_>| {
                ctx.progress(0.25);
                ctx.progress(0.75);
                7u64
            };
            let cell: Arc<Cell<_, u64, Infallible>> = new_cell(
                TaskId(1),
                Priority::Normal,
                Limits::NONE,
                false,
                Some(Instant::now()),
                0,
                Call::new(f),
            );
            let watcher = watch_until(Arc::clone(&cell) as Arc<dyn Watched>, |_, resolved| {
                resolved
            });
            let job = Job::<Closures>::new(cell);
            job.run(&mut Closures, WorkerId::new(1), None).ran();
            let last = watcher.join().unwrap();
            assert_eq!(last, 0.75f32.to_bits(), "resolved after its last report");
        });
    }
}
