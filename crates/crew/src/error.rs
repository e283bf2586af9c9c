//! crew's error types.
//!
//! Every error is an opaque struct with a private kind and `is_*` predicates, so
//! that new kinds (the process backend's crashes and protocol errors) can be added
//! without breaking callers. `Display` is one sentence and never repeats `source()`.

use std::any::Any;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt::{self, Debug, Display};
use std::sync::{Mutex, PoisonError};

/// Why a task did not produce its output.
///
/// `E` is the worker's own error type (`Worker::Error`); for closures it is
/// [`Infallible`]. The user's error is kept as it was returned, reachable through
/// [`TaskError::user_error`], [`TaskError::into_user_error`] and `source()`.
///
/// # With `?`
///
/// `TaskError<E>` is a [`std::error::Error`] for every `E: Debug + Display`, not
/// only for `E: Error`, so the common `type Error = String` goes up with `?` into
/// `Box<dyn Error>`, `Box<dyn Error + Send + Sync>` or `anyhow::Error`:
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = crew::Pool::builder().workers(1).build()?;
/// let n: u32 = pool.spawn(|| 6 * 7).join()?;
/// # assert_eq!(n, 42);
/// # Ok(()) }
/// ```
///
/// `source()` is the user's error. Rust has no specialization, so one impl serves
/// every `E` and cannot call `E::source` for the `E` that happen to be errors;
/// instead the source is the user's error itself when it is boxed
/// (`Box<dyn Error + Send + Sync>`, `Box<dyn Error + Send>`, `Box<dyn Error>`)
/// or a [`std::io::Error`], with its own chain intact, and otherwise a
/// [`UserError<E>`] that displays it and gives `E` back through
/// [`UserError::get`] (so `source().downcast_ref::<UserError<MyError>>()` reaches a
/// typed error). [`TaskError::user_error`] is the direct way to `E`.
///
/// # Panics carried back
///
/// A task that panicked keeps its payload: [`TaskError::into_panic`] gives it
/// back, and [`TaskError::resume_unwind`] re-raises it on the caller's thread, as
/// `std::thread::JoinHandle::join` and tokio's `JoinError::into_panic` allow.
pub struct TaskError<E = Infallible> {
    repr: Repr<E>,
}

enum Repr<E> {
    User(UserError<E>),
    Failure(Failure),
}

/// The worker's own error, as the [`source`](StdError::source) of a
/// [`TaskError`]: it displays (and debug-prints) as the error it holds.
///
/// It exists because a `TaskError<E>` is an error for every `E: Debug + Display`
/// (a `String` included) and `source()` must return a `dyn Error`.
#[repr(transparent)]
pub struct UserError<E>(E);

impl<E> UserError<E> {
    /// The worker's error.
    pub fn get(&self) -> &E {
        &self.0
    }

    /// Takes the worker's error out.
    pub fn into_inner(self) -> E {
        self.0
    }
}

impl<E: Debug> Debug for UserError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: Display> Display for UserError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: Debug + Display> StdError for UserError<E> {}

/// The user's error as an error source: the error itself where its type says it
/// is one (the boxed forms and `io::Error`, found by `Any`, because stable Rust
/// cannot ask "is `E: Error`" in a generic impl), else the [`UserError`] view.
fn user_source<E: Debug + Display + 'static>(user: &UserError<E>) -> &(dyn StdError + 'static) {
    let any: &dyn Any = &user.0;
    if let Some(boxed) = any.downcast_ref::<Box<dyn StdError + Send + Sync>>() {
        return &**boxed;
    }
    if let Some(boxed) = any.downcast_ref::<Box<dyn StdError + Send>>() {
        return &**boxed;
    }
    if let Some(boxed) = any.downcast_ref::<Box<dyn StdError>>() {
        return &**boxed;
    }
    if let Some(io) = any.downcast_ref::<std::io::Error>() {
        return io;
    }
    user
}

/// A caught panic: its message (what `Display` shows) and, on a thread pool, the
/// payload itself, for [`TaskError::into_panic`]. An engine outside this crate
/// builds one from a message ([`Panic::message`]).
pub struct Panic {
    message: String,
    /// `None` once taken, and for panics that crossed a process boundary (their
    /// payload cannot travel; `into_panic` builds one from the message). In a
    /// `Mutex` only so that `TaskError` stays `Sync` (the payload is `Send` only);
    /// it is locked once, when the payload is taken by value.
    payload: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Panic {
    /// A panic caught on this process's thread: the payload is kept.
    pub(crate) fn caught(payload: Box<dyn Any + Send>) -> Box<Self> {
        Box::new(Panic {
            message: panic_message(&*payload),
            payload: Mutex::new(Some(payload)),
        })
    }

    /// A panic known by its message only (a worker process's, a remote node's,
    /// or crew's own).
    pub fn message(message: impl Into<String>) -> Box<Self> {
        Box::new(Panic {
            message: message.into(),
            payload: Mutex::new(None),
        })
    }

    /// The payload, or the message as a `String` payload where there is none.
    fn into_payload(mut self) -> Box<dyn Any + Send> {
        let slot = self
            .payload
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        match slot.take() {
            Some(payload) => payload,
            None => Box::new(std::mem::take(&mut self.message)),
        }
    }
}

impl Drop for Panic {
    fn drop(&mut self) {
        // A payload whose `Drop` panics must not unwind out of whoever drops the
        // error last (it may be a worker thread releasing a detached task).
        let slot = self
            .payload
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(payload) = slot.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
        }
    }
}

impl Debug for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Debug::fmt(&self.message, f)
    }
}

// Failures are cloned to resolve several tasks with one (a chunk of a process
// pool's `map`, a shutdown); those carry no payload. A clone keeps the message
// only: a payload cannot be duplicated.
impl Clone for Panic {
    fn clone(&self) -> Self {
        Panic {
            message: self.message.clone(),
            payload: Mutex::new(None),
        }
    }
}

impl PartialEq for Panic {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Panic {}

/// The failures crew itself detects. They carry no user type, so the scheduler can
/// resolve any task with one of them without knowing its output type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The task panicked; the panic's message and, on threads, its payload.
    /// Boxed: a panic is rare, and every task's result slot has room for a
    /// `Failure`.
    Panicked(Box<Panic>),
    /// `Task::cancel` (or the pool's `terminate`) resolved it.
    Cancelled,
    /// It ran longer than its timeout.
    TimedOut,
    /// The pool was closed before the task could run.
    Closed,
    /// No worker could be started to run it; the last start error's message.
    StartFailed(String),
    /// `Pool::kill_worker` retired the worker that was running it.
    Killed,
    /// The worker process died under the task: how, and its last stderr lines.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    Crashed(Crash),
    /// The worker broke the wire protocol, or its output could not be decoded.
    Protocol(String),
    /// Joined from a worker of its own pool while every other worker the pool may
    /// have was blocked the same way: it could never start (`threads::join_watch`).
    /// Counted as cancelled in stats and events.
    Deadlock,
    /// A process pool's task had an input or a result larger, encoded, than
    /// the pool's `max_message_size`. A result this large is not sent (the
    /// worker stays up). An input this large is refused at `submit`
    /// ([`SubmitError::is_too_large`]); this failure carries it only where there
    /// is no submit error to give (`map`, `feed`). Counted as failed in stats.
    TooLarge {
        /// What was too large: `"input"` or `"result"` (an output or the
        /// worker's own error).
        what: &'static str,
        /// Its encoded size, in bytes.
        size: u64,
        /// The pool's `max_message_size`, in bytes.
        limit: u64,
    },
}

/// How a worker process ended, and what it last wrote to stderr. Carried by
/// [`TaskError::crash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) stderr: Vec<String>,
}

impl Crash {
    /// The exit code, if the process exited (`exit(n)`, or returned from `main`).
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    /// The signal that ended it (11 for a segfault, 6 for `abort`, 9 for SIGKILL,
    /// which is also what the OOM killer sends).
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// The last lines the worker wrote to stderr before it died (at most 20),
    /// oldest first.
    pub fn stderr_tail(&self) -> &[String] {
        &self.stderr
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.exit_code, self.signal) {
            (_, Some(sig)) => write!(f, "killed by signal {sig}")?,
            (Some(code), None) => write!(f, "exited with code {code}")?,
            (None, None) => f.write_str("closed its channel")?,
        }
        if let Some(last) = self.stderr.last() {
            write!(f, "; its last stderr line: {last}")?;
        }
        Ok(())
    }
}

impl<E> TaskError<E> {
    pub(crate) fn user(error: E) -> Self {
        TaskError {
            repr: Repr::User(UserError(error)),
        }
    }

    pub(crate) fn failure(failure: Failure) -> Self {
        TaskError {
            repr: Repr::Failure(failure),
        }
    }

    /// The user's error, or crew's failure as a `TaskError` of any user type.
    #[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))]
    pub(crate) fn split_user<F>(self) -> Result<E, TaskError<F>> {
        match self.repr {
            Repr::User(e) => Ok(e.0),
            Repr::Failure(failure) => Err(TaskError::failure(failure)),
        }
    }

    /// crew's failure, if it is one (not the user's error).
    pub(crate) fn as_failure(&self) -> Option<&Failure> {
        match &self.repr {
            Repr::Failure(failure) => Some(failure),
            Repr::User(_) => None,
        }
    }

    /// The task ran and returned the worker's own error.
    pub fn is_user(&self) -> bool {
        matches!(self.repr, Repr::User(_))
    }

    /// The task panicked. [`TaskError::panic_message`] gives the message.
    pub fn is_panic(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Panicked(_)))
    }

    /// The task was cancelled, by [`Task::cancel`](crate::Task::cancel) or by
    /// [`Pool::terminate`](crate::Pool::terminate).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Cancelled))
    }

    /// The task ran past its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::TimedOut))
    }

    /// The pool was shut down before the task could run.
    pub fn is_closed(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Closed))
    }

    /// No worker could be started to run the task: `Worker::start` kept failing.
    pub fn is_start_failure(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::StartFailed(_)))
    }

    /// The worker running the task was retired by
    /// [`Pool::kill_worker`](crate::Pool::kill_worker).
    pub fn is_killed(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Killed))
    }

    /// The worker process died while running the task (a segfault, `abort`,
    /// `exit`, the OOM killer). [`TaskError::crash`] says how.
    pub fn is_crash(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Crashed(_)))
    }

    /// How the worker process died, if [`is_crash`](TaskError::is_crash).
    pub fn crash(&self) -> Option<&Crash> {
        match &self.repr {
            Repr::Failure(Failure::Crashed(c)) => Some(c),
            _ => None,
        }
    }

    /// The task was joined ([`Task::join`](crate::Task::join)) from inside a task
    /// on a worker of its own pool while every worker the pool may have was
    /// blocked joining tasks that had not started: nothing could ever run it, so
    /// the join resolved it with this error instead of waiting for ever. (crew's
    /// `join` blocks its worker; it does not run other tasks meanwhile, as
    /// rayon's `join` does.) Counted as cancelled in [`Stats`](crate::Stats).
    pub fn is_deadlock(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Deadlock))
    }

    /// The worker process broke the wire protocol (garbage, a truncated or
    /// oversized frame) or sent an output that could not be decoded; it was
    /// killed and replaced.
    ///
    /// A call of a plain function (`Pool::spawn_fn`) also fails this way,
    /// without a kill, when its worker would not run it: the worker is a
    /// different build of the program, or serde could not encode or decode
    /// its arguments, result or error. The message says which.
    pub fn is_protocol(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Protocol(_)))
    }

    /// The task's result (its output, or the worker's own error) or its input
    /// was larger, encoded, than the process pool's
    /// `PoolBuilder::max_message_size`; the message
    /// gives both sizes. A result this large is not sent back, and the worker
    /// goes on with its next task. (An input this large is refused by `submit`
    /// itself, [`SubmitError::is_too_large`]; `map` and `feed` report it here.)
    pub fn is_too_large(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::TooLarge { .. }))
    }

    /// The worker's own error, if the task returned one.
    pub fn user_error(&self) -> Option<&E> {
        match &self.repr {
            Repr::User(e) => Some(&e.0),
            Repr::Failure(_) => None,
        }
    }

    /// Takes the worker's own error out, or gives `self` back if this is another kind.
    pub fn into_user_error(self) -> Result<E, Self> {
        match self.repr {
            Repr::User(e) => Ok(e.0),
            repr => Err(TaskError { repr }),
        }
    }

    /// The panic's message, if the task panicked. A payload that was neither a
    /// `&str` nor a `String` is reported as `"Box<dyn Any>"`.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.repr {
            Repr::Failure(Failure::Panicked(p)) => Some(&p.message),
            _ => None,
        }
    }

    /// The panic's payload, if the task panicked; gives `self` back otherwise.
    ///
    /// On a thread pool this is the very payload the task panicked with (a
    /// `&'static str`, a `String`, or whatever `panic_any` was given). A panic in
    /// a worker *process* cannot send its payload across the process boundary:
    /// the payload is then its message as a `String`.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, Self> {
        match self.repr {
            Repr::Failure(Failure::Panicked(panic)) => Ok((*panic).into_payload()),
            repr => Err(TaskError { repr }),
        }
    }

    /// The panic's payload (see [`try_into_panic`](TaskError::try_into_panic)).
    ///
    /// # Panics
    ///
    /// If the task did not panic; check [`is_panic`](TaskError::is_panic) first.
    #[track_caller]
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        match self.try_into_panic() {
            Ok(payload) => payload,
            Err(_) => panic!("TaskError::into_panic called on an error that is not a panic"),
        }
    }

    /// Re-raises the task's panic on this thread with its payload
    /// ([`std::panic::resume_unwind`]) if the task panicked; returns `self`
    /// otherwise, so the other kinds can be handled as errors:
    ///
    /// ```
    /// let pool = crew::Pool::builder().workers(1).build().unwrap();
    /// use std::panic::{catch_unwind, AssertUnwindSafe};
    ///
    /// let task = pool.spawn(|| -> u32 { panic!("boom") });
    /// let error = task.join().unwrap_err();
    /// let payload = catch_unwind(AssertUnwindSafe(|| error.resume_unwind())).unwrap_err();
    /// assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    /// ```
    #[must_use]
    pub fn resume_unwind(self) -> Self {
        match self.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(this) => this,
        }
    }

    /// The message of the last `Worker::start` error, if no worker could start.
    pub fn start_error_message(&self) -> Option<&str> {
        match &self.repr {
            Repr::Failure(Failure::StartFailed(m)) => Some(m),
            _ => None,
        }
    }

    /// Converts the user error with `f`, keeping every other kind as it is.
    pub fn map_user<F, O>(self, f: O) -> TaskError<F>
    where
        O: FnOnce(E) -> F,
    {
        match self.repr {
            Repr::User(e) => TaskError::user(f(e.0)),
            Repr::Failure(x) => TaskError::failure(x),
        }
    }
}

/// Turns a caught panic payload into the message a caller will read.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

impl<E: Debug> Debug for TaskError<E> {
    // Shows the user's error: it is what `fn main() -> Result<(), Box<dyn Error>>`
    // and `unwrap()` print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::User(e) => write!(f, "TaskError::User({:?})", e.0),
            Repr::Failure(x) => write!(f, "TaskError::{x:?}"),
        }
    }
}

impl<E> fmt::Display for TaskError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::User(_) => f.write_str("the task returned an error"),
            Repr::Failure(Failure::Panicked(p)) => {
                write!(f, "the task panicked: {}", p.message)
            }
            Repr::Failure(Failure::Cancelled) => f.write_str("the task was cancelled"),
            Repr::Failure(Failure::TimedOut) => f.write_str("the task ran past its timeout"),
            Repr::Failure(Failure::Closed) => {
                f.write_str("the pool was shut down before the task could run")
            }
            Repr::Failure(Failure::StartFailed(m)) => {
                write!(f, "no worker could be started to run the task: {m}")
            }
            Repr::Failure(Failure::Killed) => f.write_str("the worker running the task was killed"),
            Repr::Failure(Failure::Crashed(c)) => {
                write!(f, "the worker process running the task died: {c}")
            }
            Repr::Failure(Failure::Protocol(m)) => {
                write!(f, "the worker process broke the protocol: {m}")
            }
            Repr::Failure(Failure::TooLarge { what, size, limit }) => write!(
                f,
                "the task's {what} is {size} bytes encoded, more than the pool's \
                 max_message_size ({limit} bytes)"
            ),
            Repr::Failure(Failure::Deadlock) => f.write_str(
                "the task was joined from a worker of its own pool while every worker was \
                 blocked waiting: it could never start",
            ),
        }
    }
}

// Bounded on `Debug + Display`, not `Error`, so that `?` works for a `String`
// error; see "With `?`" on `TaskError` for what `source()` gives.
impl<E: Debug + Display + 'static> StdError for TaskError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.repr {
            Repr::User(e) => Some(user_source(e)),
            Repr::Failure(_) => None,
        }
    }
}

impl<E: PartialEq> PartialEq for TaskError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (&self.repr, &other.repr) {
            (Repr::User(a), Repr::User(b)) => a.0 == b.0,
            (Repr::Failure(a), Repr::Failure(b)) => a == b,
            _ => false,
        }
    }
}

/// A submission the pool did not take. The input comes back inside.
pub struct SubmitError<T> {
    input: T,
    kind: SubmitErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubmitErrorKind {
    Closed,
    Full,
    /// The encoded input's size and the pool's `max_message_size`.
    TooLarge {
        size: u64,
        limit: u64,
    },
}

impl<T> SubmitError<T> {
    pub(crate) fn closed(input: T) -> Self {
        SubmitError {
            input,
            kind: SubmitErrorKind::Closed,
        }
    }

    pub(crate) fn full(input: T) -> Self {
        SubmitError {
            input,
            kind: SubmitErrorKind::Full,
        }
    }

    #[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
    pub(crate) fn too_large(input: T, size: u64, limit: u64) -> Self {
        SubmitError {
            input,
            kind: SubmitErrorKind::TooLarge { size, limit },
        }
    }

    /// What a task refused this way resolves with where the refusal cannot be
    /// returned (`map`, `feed`): the input too large, or closed.
    pub(crate) fn failure(&self) -> Failure {
        match self.kind {
            SubmitErrorKind::TooLarge { size, limit } => Failure::TooLarge {
                what: "input",
                size,
                limit,
            },
            SubmitErrorKind::Closed | SubmitErrorKind::Full => Failure::Closed,
        }
    }

    /// The same error around a different input (to unwrap crew's internal payload
    /// types before handing the error to the user).
    pub(crate) fn map_input<U>(self, f: impl FnOnce(T) -> U) -> SubmitError<U> {
        SubmitError {
            input: f(self.input),
            kind: self.kind,
        }
    }

    /// The pool is shut down (or shutting down) and takes no new work.
    pub fn is_closed(&self) -> bool {
        self.kind == SubmitErrorKind::Closed
    }

    /// The queue is at its capacity (only from the `try_` submission calls).
    pub fn is_full(&self) -> bool {
        self.kind == SubmitErrorKind::Full
    }

    /// The input, encoded, is larger than the process pool's
    /// `PoolBuilder::max_message_size` (the message
    /// gives both sizes). It was not sent; a thread pool never says this.
    pub fn is_too_large(&self) -> bool {
        matches!(self.kind, SubmitErrorKind::TooLarge { .. })
    }

    /// The input that was not taken.
    pub fn into_inner(self) -> T {
        self.input
    }

    /// A reference to the input that was not taken.
    pub fn input(&self) -> &T {
        &self.input
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SubmitErrorKind::Closed => f.write_str("the pool is shut down and takes no new work"),
            SubmitErrorKind::Full => f.write_str("the pool's queue is full"),
            SubmitErrorKind::TooLarge { size, limit } => write!(
                f,
                "the task's input is {size} bytes encoded, more than the pool's \
                 max_message_size ({limit} bytes); it was not sent"
            ),
        }
    }
}

impl<T> StdError for SubmitError<T> {}

/// A pool setting that cannot work, reported by `PoolBuilder::build`.
pub struct BuildError {
    kind: BuildErrorKind,
}

// With the sentence: `build().unwrap()` and `main` returning the error print the
// Debug form, and the kind alone would not say what to do.
impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildError")
            .field("kind", &self.kind)
            .field("message", &self.to_string())
            .finish()
    }
}

#[derive(Debug)]
#[cfg_attr(not(all(feature = "process", target_os = "linux")), allow(dead_code))] // process backend only
pub(crate) enum BuildErrorKind {
    /// `workers(0)`, or a `min..=max` range that is empty or has `max == 0`.
    NoWorkers,
    /// `queue_capacity(0)`.
    ZeroCapacity,
    /// A zero duration where a positive one is needed; the setting's name.
    ZeroDuration(&'static str),
    /// `start_attempts(0)`.
    ZeroStartAttempts,
    /// `grow_backlog(0)`.
    ZeroGrowBacklog,
    /// `event_buffer(0)`.
    ZeroEventBuffer,
    /// `concurrency(0)`.
    ZeroConcurrency,
    /// `window(0)`.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    ZeroWindow,
    /// `max_tasks_per_worker(0)`.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    ZeroMaxTasks,
    /// `max_message_size` outside its range; the value given, and the range.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    MessageSize { given: u64, min: u64, max: u64 },
    /// A setting process pools do not offer; its name.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    NotForProcesses(&'static str),
    /// A process pool built inside a worker process whose `main` did not call
    /// `crew::bootstrap` (see `processes/guard.rs`).
    #[cfg(all(feature = "process", target_os = "linux"))]
    NotBootstrapped,
    /// A process-only setting on a pool that did not choose `.processes(n)`;
    /// its name.
    NeedsProcesses(&'static str),
    /// The OS would not start a worker thread (or process).
    Spawn(std::io::Error),
}

impl BuildError {
    pub(crate) fn new(kind: BuildErrorKind) -> Self {
        BuildError { kind }
    }

    /// A setting was out of range (as opposed to the OS refusing a thread, or a
    /// missing `crew::bootstrap`).
    pub fn is_invalid_setting(&self) -> bool {
        match self.kind {
            BuildErrorKind::Spawn(_) => false,
            #[cfg(all(feature = "process", target_os = "linux"))]
            BuildErrorKind::NotBootstrapped => false,
            _ => true,
        }
    }

    /// A process pool was built inside a worker process whose `main` did not
    /// call [`crew::bootstrap`](crate::bootstrap) first. Such a worker would
    /// start workers of its own, which would do the same, without end; the pool
    /// refuses to start instead, and the parent pool's start error says which
    /// call is missing.
    #[cfg(all(feature = "process", target_os = "linux"))]
    pub fn is_not_bootstrapped(&self) -> bool {
        matches!(self.kind, BuildErrorKind::NotBootstrapped)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BuildErrorKind::NoWorkers => f.write_str("a pool needs at least one worker"),
            BuildErrorKind::ZeroCapacity => {
                f.write_str("a queue capacity must be at least 1 (leave it unset for no bound)")
            }
            BuildErrorKind::ZeroDuration(what) => write!(f, "`{what}` must be longer than zero"),
            BuildErrorKind::ZeroStartAttempts => f.write_str("`start_attempts` must be at least 1"),
            BuildErrorKind::ZeroGrowBacklog => f.write_str("`grow_backlog` must be at least 1"),
            BuildErrorKind::ZeroEventBuffer => f.write_str("`event_buffer` must be at least 1"),
            BuildErrorKind::ZeroConcurrency => f.write_str("`concurrency` must be at least 1"),
            BuildErrorKind::ZeroWindow => f.write_str("`window` must be at least 1"),
            BuildErrorKind::ZeroMaxTasks => {
                f.write_str("`max_tasks_per_worker` must be at least 1")
            }
            BuildErrorKind::MessageSize { given, min, max } => write!(
                f,
                "`max_message_size` must be between {min} and {max} bytes (it was {given})"
            ),
            BuildErrorKind::NotForProcesses(what) => {
                write!(f, "`{what}` is not available for process workers")
            }
            #[cfg(all(feature = "process", target_os = "linux"))]
            BuildErrorKind::NotBootstrapped => {
                f.write_str(crate::processes::guard::NOT_BOOTSTRAPPED)
            }
            BuildErrorKind::NeedsProcesses(what) => write!(
                f,
                "`{what}` is a process pool setting: it needs `.processes(n)` \
                 (the backend is never chosen by a setting alone)"
            ),
            BuildErrorKind::Spawn(_) => f.write_str("the OS refused to start a worker thread"),
        }
    }
}

impl StdError for BuildError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            BuildErrorKind::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Pool::resize`](crate::Pool::resize) (or
/// [`resize_range`](crate::Pool::resize_range)) changed nothing. The pool and
/// its tasks are untouched.
#[derive(Clone, PartialEq, Eq)]
pub struct ResizeError {
    kind: ResizeErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResizeErrorKind {
    /// `resize(0)`, or a range that is empty or has `max == 0`.
    NoWorkers,
    /// The pool is shut down (or shutting down).
    Closed,
    /// The pool's engine cannot change its size (the cluster: its workers are
    /// the nodes' own pools).
    Unsupported,
}

impl ResizeError {
    pub(crate) fn no_workers() -> Self {
        ResizeError {
            kind: ResizeErrorKind::NoWorkers,
        }
    }

    pub(crate) fn closed() -> Self {
        ResizeError {
            kind: ResizeErrorKind::Closed,
        }
    }

    pub(crate) fn unsupported() -> Self {
        ResizeError {
            kind: ResizeErrorKind::Unsupported,
        }
    }

    /// The size asked for leaves the pool no worker to run its tasks:
    /// `resize(0)`, or a range that is empty or ends at 0, refused as
    /// `PoolBuilder::workers(0)` is. (A range that starts at 0 is accepted: the
    /// pool then grows from nothing when work comes.)
    pub fn is_no_workers(&self) -> bool {
        self.kind == ResizeErrorKind::NoWorkers
    }

    /// The pool is shut down, or shutting down: its size no longer changes.
    pub fn is_closed(&self) -> bool {
        self.kind == ResizeErrorKind::Closed
    }

    /// The pool's backend cannot be resized from here (the cluster backend:
    /// each node sizes its own pool).
    pub fn is_unsupported(&self) -> bool {
        self.kind == ResizeErrorKind::Unsupported
    }
}

impl fmt::Debug for ResizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResizeError")
            .field("kind", &self.kind)
            .finish()
    }
}

impl fmt::Display for ResizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ResizeErrorKind::NoWorkers => "a pool needs at least one worker",
            ResizeErrorKind::Closed => "the pool is shut down; its size no longer changes",
            ResizeErrorKind::Unsupported => "this pool's backend cannot be resized",
        })
    }
}

impl StdError for ResizeError {}

/// `Pool::shutdown_timeout` ran out of time. Every task has still been resolved:
/// what had not run was resolved as closed, what was running as cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownTimedOut {
    pub(crate) still_running: usize,
}

impl ShutdownTimedOut {
    /// How many worker threads were still running user code when time ran out.
    /// They are left to finish on their own.
    pub fn still_running(&self) -> usize {
        self.still_running
    }
}

impl fmt::Display for ShutdownTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the pool did not drain in time; {} worker thread(s) were still running",
            self.still_running
        )
    }
}

impl StdError for ShutdownTimedOut {}

/// The error type `Worker::start` returns.
pub type StartError = Box<dyn StdError + Send + Sync + 'static>;
