//! crew's error types.
//!
//! Every error is an opaque struct with a private kind and `is_*` predicates, so
//! that new kinds (the process backend's crashes and protocol errors) can be added
//! without breaking callers. `Display` is one sentence and never repeats `source()`.

use std::any::Any;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;

/// Why a task did not produce its output.
///
/// `E` is the worker's own error type (`Worker::Error`); for closures it is
/// [`Infallible`]. The user's error is kept as it was returned, reachable through
/// [`TaskError::user_error`], [`TaskError::into_user_error`] and `source()`.
pub struct TaskError<E = Infallible> {
    repr: Repr<E>,
}

enum Repr<E> {
    User(E),
    Failure(Failure),
}

/// The failures crew itself detects. They carry no user type, so the scheduler can
/// resolve any task with one of them without knowing its output type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The task panicked; the panic's message.
    Panicked(String),
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
    Crashed(Crash),
    /// The worker broke the wire protocol, or its output could not be decoded.
    Protocol(String),
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
            repr: Repr::User(error),
        }
    }

    pub(crate) fn failure(failure: Failure) -> Self {
        TaskError {
            repr: Repr::Failure(failure),
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

    /// The worker process broke the wire protocol (garbage, a truncated or
    /// oversized frame) or sent an output that could not be decoded; it was
    /// killed and replaced.
    pub fn is_protocol(&self) -> bool {
        matches!(self.repr, Repr::Failure(Failure::Protocol(_)))
    }

    pub(crate) fn outcome(&self) -> crate::task::cell::Outcome {
        use crate::task::cell::Outcome;
        match &self.repr {
            Repr::User(_) => Outcome::UserError,
            Repr::Failure(Failure::Panicked(_)) => Outcome::Panicked,
            Repr::Failure(Failure::Cancelled) => Outcome::Cancelled,
            Repr::Failure(Failure::TimedOut) => Outcome::TimedOut,
            Repr::Failure(Failure::Closed) => Outcome::Closed,
            Repr::Failure(Failure::StartFailed(_)) => Outcome::StartFailed,
            Repr::Failure(Failure::Killed) => Outcome::Killed,
            Repr::Failure(Failure::Crashed(_)) => Outcome::Crashed,
            Repr::Failure(Failure::Protocol(_)) => Outcome::Protocol,
        }
    }

    /// The worker's own error, if the task returned one.
    pub fn user_error(&self) -> Option<&E> {
        match &self.repr {
            Repr::User(e) => Some(e),
            Repr::Failure(_) => None,
        }
    }

    /// Takes the worker's own error out, or gives `self` back if this is another kind.
    pub fn into_user_error(self) -> Result<E, Self> {
        match self.repr {
            Repr::User(e) => Ok(e),
            repr => Err(TaskError { repr }),
        }
    }

    /// The panic's message, if the task panicked. A payload that was neither a
    /// `&str` nor a `String` is reported as `"Box<dyn Any>"`.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.repr {
            Repr::Failure(Failure::Panicked(m)) => Some(m),
            _ => None,
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
            Repr::User(e) => TaskError::user(f(e)),
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

impl<E> fmt::Debug for TaskError<E> {
    // Hand-written so that `TaskError<E>: Debug` needs no `E: Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::User(_) => f.write_str("TaskError::User(..)"),
            Repr::Failure(x) => write!(f, "TaskError::{x:?}"),
        }
    }
}

impl<E> fmt::Display for TaskError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::User(_) => f.write_str("the task returned an error"),
            Repr::Failure(Failure::Panicked(m)) => write!(f, "the task panicked: {m}"),
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
        }
    }
}

impl<E: StdError + 'static> StdError for TaskError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.repr {
            Repr::User(e) => Some(e),
            Repr::Failure(_) => None,
        }
    }
}

impl<E: PartialEq> PartialEq for TaskError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (&self.repr, &other.repr) {
            (Repr::User(a), Repr::User(b)) => a == b,
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
        }
    }
}

impl<T> StdError for SubmitError<T> {}

/// A pool setting that cannot work, reported by `PoolBuilder::build`.
#[derive(Debug)]
pub struct BuildError {
    kind: BuildErrorKind,
}

#[derive(Debug)]
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
    ZeroWindow,
    /// `max_tasks_per_worker(0)`.
    ZeroMaxTasks,
    /// A setting process pools do not offer; its name.
    NotForProcesses(&'static str),
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

    /// A setting was out of range (as opposed to the OS refusing a thread).
    pub fn is_invalid_setting(&self) -> bool {
        !matches!(self.kind, BuildErrorKind::Spawn(_))
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
            BuildErrorKind::NotForProcesses(what) => {
                write!(f, "`{what}` is not available for process workers")
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
