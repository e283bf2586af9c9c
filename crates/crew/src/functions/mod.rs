//! Plain functions on a pool of worker processes, with no [`Worker`] type:
//! `pool.spawn_fn(args, |args| …)`, as workerpool's `pool.exec(fn, args)`,
//! Python's `ProcessPoolExecutor.submit(fn, *args)` and procspawn's
//! `spawn(args, f)`.
//!
//! A pool of functions is a `Pool<`[`Functions`]`>`: build it as any pool,
//! with [`processes(n)`](crate::PoolBuilder::processes) for worker processes
//! (or `workers(n)` for threads). Its functions are `fn(A) -> R` (or
//! `fn(A) -> Result<T, E>`, whose `Err` is the task's own error): a function
//! item, or a closure that captures nothing, with serde arguments and results.
//! Every call is a task of the pool like any other: a [`Task`] handle, cancel
//! and timeout by killing the worker, crash isolation, retries, priorities,
//! sticky keys, events and stats; [`Function::map`] ships its items in chunks.
//!
//! ```
//! use crew::{Functions, Pool};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // In a worker process this serves the pool and exits; here it returns.
//!     crew::bootstrap::<Functions>();
//!
//!     let pool = Pool::<Functions>::builder().processes(2).build()?;
//!     let pid = pool.spawn_fn((), |()| std::process::id())?.join()?;
//!     assert_ne!(pid, std::process::id()); // it ran in another process
//!
//!     // A function's own error is the task's error, typed.
//!     let parse = pool.fallible(|s: String| s.parse::<u32>().map_err(|e| e.to_string()));
//!     assert_eq!(parse.spawn("42".into())?.join()?, 42);
//!     let error = parse.spawn("forty-two".into())?.join().unwrap_err();
//!     assert_eq!(error.user_error().map(String::as_str), Some("invalid digit found in string"));
//!
//!     // In input order, shipped in chunks.
//!     let square = pool.function(|x: u64| x * x);
//!     let squares: Vec<u64> = square.map(1..=4).collect::<Result<_, _>>()?;
//!     assert_eq!(squares, [1, 4, 9, 16]);
//!     pool.shutdown();
//!     Ok(())
//! }
//! ```
//!
//! # Why functions, and not closures
//!
//! A closure's captured values live in the memory of the process that made
//! it, which a worker process does not share, so a function that crosses must
//! capture nothing. The parameter is a function pointer, `fn(A) -> R`, so the
//! compiler refuses a capturing closure where it is written: *closures can only
//! be coerced to `fn` types if they do not capture any variables*, with the
//! captured variable pointed at. Pass what it needs in `args` instead.
//!
//! ```compile_fail,E0308
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = crew::Pool::<crew::Functions>::builder().workers(1).build()?;
//! let factor = 3;
//! // error[E0308]: expected fn pointer, found closure: `factor` is captured
//! pool.spawn_fn(14u64, move |x| x * factor)?;
//! # Ok(()) }
//! ```
//!
//! # How a function crosses
//!
//! The worker process runs the same executable (it calls
//! [`bootstrap`](crate::bootstrap), which serves [`Functions`] whatever its type
//! list). So a call names the function by its place in the executable: its
//! offset from where the loader put the executable's code (address-space
//! randomization moves the whole executable at once, so offsets agree in every
//! process that runs the same file), with the offset of a *trampoline*, a
//! function crew instantiates for the call's types, which decodes `A`, calls
//! the function and encodes its result. Each call also carries its build's
//! identity (the executable's GNU build id) and a seal over the two offsets,
//! and a worker runs it only if its own build is the same, the seal is crew's
//! and both offsets land in its code. A worker of another build (a pool whose
//! [`program`](crate::PoolBuilder::program) is another executable, or another
//! build of this one) answers with a clear error
//! ([`TaskError::is_protocol`](crate::TaskError::is_protocol), "a different
//! build") and runs nothing. `functions.md` beside this module has the
//! argument in full.

mod image;

use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::Admission;
use crate::error::{Failure, StartError, SubmitError, TaskError};
use crate::pool::Pool;
use crate::sources::{Map, MapUnordered};
use crate::task::{map_result, Priority, Task, TaskOptions};
use crate::worker::{Context, Worker};
use image::Image;

/// The [`Worker`] of a pool of plain functions: `Pool<Functions>` runs
/// [`Pool::spawn_fn`] and the [`Function`]s of
/// [`Pool::function`] and [`Pool::fallible`]. It holds no state; every
/// [`bootstrap`](crate::bootstrap) and [`Bootstrap`](crate::Bootstrap) serves
/// it, so a program needs nothing more than its `bootstrap` call. See the
/// [module docs](crate::functions).
#[derive(Debug)]
pub struct Functions {
    image: &'static Image,
}

impl Worker for Functions {
    type Input = FnCall;
    type Output = FnReply;
    type Error = FnError;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        match Image::get() {
            Ok(image) => Ok(Functions { image }),
            Err(e) => Err(format!("crew cannot run functions in this program: {e}").into()),
        }
    }

    fn run(&mut self, call: FnCall, _ctx: &mut Context<'_>) -> Result<FnReply, FnError> {
        call.run(self.image)
    }
}

/// A call of a function: the input of [`Functions`]. Only crew makes one
/// ([`Function::spawn`] and the rest).
#[derive(Serialize, Deserialize)]
pub struct FnCall {
    /// The caller's build ([`image::Build::tag`]).
    build: u64,
    body: Body,
}

#[derive(Serialize, Deserialize)]
enum Body {
    Run {
        /// The trampoline's offset in the image.
        trampoline: u64,
        /// The function's offset in the image.
        function: u64,
        /// [`Image::seal`] of the two offsets.
        seal: u64,
        /// The arguments, encoded.
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
    },
    /// The caller could not make the call (the function is not in the image,
    /// the arguments could not be encoded): the worker answers this message
    /// back, so the task fails as any task does, counted and reported.
    Refused(String),
}

impl FnCall {
    /// Runs the call in this process, whose image is `image`.
    fn run(self, image: &Image) -> Result<FnReply, FnError> {
        let (trampoline, function, seal, args) = match self.body {
            Body::Refused(message) => return Err(FnError::refused(message)),
            Body::Run {
                trampoline,
                function,
                seal,
                args,
            } => (trampoline, function, seal, args),
        };
        if self.build != image.build.tag {
            return Err(FnError::refused(format!(
                "the worker runs a different build of the program (the pool's build tag is \
                 {:016x}, the worker's {:016x}, {}): a function is sent as its place in the \
                 executable, which only the same build can run, so it was not run; a pool of \
                 functions must run its own executable (no `program` of another build)",
                self.build, image.build.tag, image.build.shown
            )));
        }
        if seal != image.seal(trampoline, function) {
            return Err(FnError::refused(
                "the call's seal does not match its offsets: it was not made by crew for this \
                 build, so it was not run"
                    .to_owned(),
            ));
        }
        let (Some(trampoline), Some(function)) =
            (image.code_at(trampoline), image.code_at(function))
        else {
            return Err(FnError::refused(format!(
                "the call names code outside this program's executable segments (offsets \
                 {trampoline:#x} and {function:#x}), so it was not run"
            )));
        };
        // SAFETY: the call was made by `Function::call` (its seal, which only
        // crew computes, matches) in a process running the same build (the
        // tags are equal: the same executable file, see `functions.md`, "The
        // same build" and "Why it is safe"), from the address of a trampoline
        // instantiated as `Trampoline` and a function of the type that
        // trampoline expects. Both offsets were taken relative to that
        // process's load bias and are added here to this process's (the
        // executable is mapped as one piece, so the code at an offset is the
        // same code in both), and both land in an executable segment of this
        // image. So `trampoline` is the address of that `Trampoline`, and a
        // function pointer has the size and representation of `*const ()` on
        // every target crew builds this module for (Linux).
        let trampoline = unsafe { std::mem::transmute::<*const (), Trampoline>(trampoline) };
        // SAFETY: `function` is the address of the function the trampoline's
        // types describe, by the argument above.
        unsafe { trampoline(function, &args) }.map(FnReply)
    }

    fn refused(build: u64, message: String) -> FnCall {
        FnCall {
            build,
            body: Body::Refused(message),
        }
    }
}

impl fmt::Debug for FnCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("FnCall");
        d.field("build", &format_args!("{:016x}", self.build));
        match &self.body {
            Body::Run {
                trampoline,
                function,
                args,
                ..
            } => d
                .field("trampoline", &format_args!("{trampoline:#x}"))
                .field("function", &format_args!("{function:#x}"))
                .field("args", &format_args!("{} bytes", args.len())),
            Body::Refused(message) => d.field("refused", message),
        };
        d.finish()
    }
}

/// A function's encoded result: the output of [`Functions`], decoded by the
/// [`Function`] that made the call.
#[derive(Serialize, Deserialize)]
pub struct FnReply(#[serde(with = "serde_bytes")] Vec<u8>);

impl fmt::Debug for FnReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FnReply({} bytes)", self.0.len())
    }
}

/// The error of [`Functions`]: a fallible function's own error, encoded, or a
/// call the worker refused. A [`Function`] turns it into the task's error.
#[derive(Serialize, Deserialize)]
pub struct FnError {
    kind: FnErrorKind,
}

#[derive(Serialize, Deserialize)]
enum FnErrorKind {
    /// The function's `Err`, encoded.
    User(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not run, or its result could not be encoded: why.
    Refused(String),
}

impl FnError {
    fn user(encoded: Vec<u8>) -> Self {
        FnError {
            kind: FnErrorKind::User(encoded),
        }
    }

    fn refused(message: String) -> Self {
        FnError {
            kind: FnErrorKind::Refused(message),
        }
    }
}

impl fmt::Debug for FnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FnErrorKind::User(e) => write!(f, "FnError::User({} bytes)", e.len()),
            FnErrorKind::Refused(m) => write!(f, "FnError::Refused({m:?})"),
        }
    }
}

impl fmt::Display for FnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FnErrorKind::User(_) => f.write_str("the function returned an error"),
            FnErrorKind::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for FnError {}

/// What a worker calls for a call: decodes the arguments, calls `function`,
/// encodes what it returned. One is instantiated per argument and result
/// types ([`call_plain`], [`call_fallible`]).
type Trampoline = unsafe fn(*const (), &[u8]) -> Result<Vec<u8>, FnError>;

/// The trampoline of a `fn(A) -> R`.
///
/// # Safety
///
/// `function` must be the address of a `fn(A) -> R`.
unsafe fn call_plain<A: DeserializeOwned, R: Serialize>(
    function: *const (),
    args: &[u8],
) -> Result<Vec<u8>, FnError> {
    // SAFETY: the caller promises `function` is a `fn(A) -> R`; a function
    // pointer and `*const ()` have the same size and representation here.
    let function = unsafe { std::mem::transmute::<*const (), fn(A) -> R>(function) };
    let output = function(decode_args(args)?);
    encode_result(&output, "result")
}

/// The trampoline of a `fn(A) -> Result<T, E>`: an `Err` is the task's own
/// error.
///
/// # Safety
///
/// `function` must be the address of a `fn(A) -> Result<T, E>`.
unsafe fn call_fallible<A: DeserializeOwned, T: Serialize, E: Serialize>(
    function: *const (),
    args: &[u8],
) -> Result<Vec<u8>, FnError> {
    // SAFETY: as in `call_plain`, for `fn(A) -> Result<T, E>`.
    let function = unsafe { std::mem::transmute::<*const (), fn(A) -> Result<T, E>>(function) };
    match function(decode_args(args)?) {
        Ok(output) => encode_result(&output, "result"),
        Err(error) => Err(FnError::user(encode_result(&error, "error")?)),
    }
}

fn decode_args<A: DeserializeOwned>(args: &[u8]) -> Result<A, FnError> {
    postcard::from_bytes(args).map_err(|e| {
        FnError::refused(format!(
            "crew could not decode the function's arguments in the worker: {e}"
        ))
    })
}

fn encode_result<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, FnError> {
    postcard::to_stdvec(value)
        .map_err(|e| FnError::refused(format!("crew could not encode the function's {what}: {e}")))
}

/// How a [`Function`] turns the task of its call into a typed one.
type Convert<T, E> = fn(Result<FnReply, TaskError<FnError>>) -> Result<T, TaskError<E>>;

/// A refused call, or a result that did not decode, is a protocol failure:
/// the message says which.
fn protocol<E>(message: String) -> TaskError<E> {
    TaskError::failure(Failure::Protocol(message))
}

fn decode_output<T: DeserializeOwned, E>(reply: &FnReply) -> Result<T, TaskError<E>> {
    postcard::from_bytes(&reply.0)
        .map_err(|e| protocol(format!("crew could not decode the function's result: {e}")))
}

/// [`Convert`] for a `fn(A) -> R`.
fn convert_plain<R: DeserializeOwned>(
    result: Result<FnReply, TaskError<FnError>>,
) -> Result<R, TaskError<Infallible>> {
    match result {
        Ok(reply) => decode_output(&reply),
        Err(error) => Err(match error.split_user() {
            Err(failure) => failure,
            Ok(FnError {
                kind: FnErrorKind::Refused(message),
            }) => protocol(message),
            Ok(FnError {
                kind: FnErrorKind::User(_),
            }) => protocol("a function that cannot fail answered with an error".into()),
        }),
    }
}

/// [`Convert`] for a `fn(A) -> Result<T, E>`.
fn convert_fallible<T: DeserializeOwned, E: DeserializeOwned>(
    result: Result<FnReply, TaskError<FnError>>,
) -> Result<T, TaskError<E>> {
    match result {
        Ok(reply) => decode_output(&reply),
        Err(error) => Err(match error.split_user() {
            Err(failure) => failure,
            Ok(FnError {
                kind: FnErrorKind::Refused(message),
            }) => protocol(message),
            Ok(FnError {
                kind: FnErrorKind::User(encoded),
            }) => match postcard::from_bytes(&encoded) {
                Ok(error) => TaskError::user(error),
                Err(e) => protocol(format!("crew could not decode the function's error: {e}")),
            },
        }),
    }
}

/// Where a call goes: the offsets of its trampoline and function in this
/// build's image.
#[derive(Debug, Clone, Copy)]
struct Target {
    build: u64,
    trampoline: u64,
    function: u64,
    seal: u64,
}

/// A function, ready to run on a pool of [`Functions`]: from [`Pool::function`]
/// (a `fn(A) -> T`) or [`Pool::fallible`] (a `fn(A) -> Result<T, E>`). Cheap to
/// clone; it borrows the pool.
///
/// Its calls are tasks of the pool: [`spawn`](Function::spawn) one,
/// [`task`](Function::task) one with options, or [`map`](Function::map) an
/// iterator through it.
pub struct Function<'a, A, T, E = Infallible> {
    pool: &'a Pool<Functions>,
    /// Its place in the image, or why it has none.
    target: Result<Target, String>,
    convert: Convert<T, E>,
    _types: PhantomData<fn(A) -> (T, E)>,
}

impl<'a, A, T, E> Function<'a, A, T, E>
where
    A: Serialize,
    T: Send + 'static,
    E: Send + 'static,
{
    fn new(
        pool: &'a Pool<Functions>,
        trampoline: Trampoline,
        function: *const (),
        convert: Convert<T, E>,
    ) -> Self {
        let target = Image::get()
            .map_err(|e| format!("crew cannot send functions from this program: {e}"))
            .and_then(|image| {
                let trampoline = image.offset_of(trampoline as *const ()).ok_or_else(|| {
                    "crew cannot send this function: its types' trampoline is not in the \
                     executable that holds crew (is crew in a shared library?)"
                        .to_owned()
                })?;
                let function = image.offset_of(function).ok_or_else(|| {
                    "crew cannot send this function to another process: its code is not in \
                     the program's executable (a function of a shared library?)"
                        .to_owned()
                })?;
                Ok(Target {
                    build: image.build.tag,
                    trampoline,
                    function,
                    seal: image.seal(trampoline, function),
                })
            });
        Function {
            pool,
            target,
            convert,
            _types: PhantomData,
        }
    }

    /// The call of this function with `args`. A call that cannot be made
    /// still goes to the pool, as a refusal its worker answers: so the task
    /// fails as any task fails, counted in the stats and reported in the
    /// events, and `map` needs no other path.
    fn call(&self, args: &A) -> FnCall {
        let target = match &self.target {
            Ok(target) => *target,
            Err(message) => return FnCall::refused(0, message.clone()),
        };
        match postcard::to_stdvec(args) {
            Ok(args) => FnCall {
                build: target.build,
                body: Body::Run {
                    trampoline: target.trampoline,
                    function: target.function,
                    seal: target.seal,
                    args,
                },
            },
            Err(e) => FnCall::refused(
                target.build,
                format!("crew could not encode the function's arguments: {e}"),
            ),
        }
    }

    fn submit(
        &self,
        args: A,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<T, E>, SubmitError<A>> {
        let call = self.call(&args);
        match self.pool.submit_with(call, options, admission) {
            Ok(task) => Ok(map_result(task, self.convert)),
            Err(refused) => Err(refused.map_input(|_| args)),
        }
    }

    /// Runs the function on `args` in a worker and returns the task's handle,
    /// as [`Pool::submit`] does for a worker's input: it waits while a bounded
    /// queue is full, and gives `args` back in the error if the pool is shut
    /// down or `args` is larger, encoded, than a process pool's
    /// [`max_message_size`](crate::PoolBuilder::max_message_size).
    pub fn spawn(&self, args: A) -> Result<Task<T, E>, SubmitError<A>> {
        self.submit(args, TaskOptions::default(), Admission::Wait)
    }

    /// Like [`spawn`](Function::spawn), but never waits: a full queue gives
    /// `args` back ([`SubmitError::is_full`]).
    pub fn try_spawn(&self, args: A) -> Result<Task<T, E>, SubmitError<A>> {
        self.submit(args, TaskOptions::default(), Admission::Try)
    }

    /// A call with options: `f.task(args).timeout(..).retries(..).submit()`.
    pub fn task(&self, args: A) -> FnTaskBuilder<'a, A, T, E> {
        FnTaskBuilder {
            function: self.clone(),
            args,
            options: TaskOptions::default(),
        }
    }

    /// Runs the function on every input and yields the results in input
    /// order, as [`Pool::map`]: on a process pool the inputs travel in chunks
    /// of many items, each with its own result, and dropping the iterator
    /// cancels what is in flight.
    pub fn map<I>(&self, inputs: I) -> Map<'a, T, E>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: 'static,
        A: 'a,
    {
        let this = self.clone();
        self.pool
            .map_through(inputs, move |args| this.call(&args), self.convert)
    }

    /// Like [`map`](Function::map), but yields each result as it finishes,
    /// with its input's index (as [`Pool::map_unordered`]).
    pub fn map_unordered<I>(&self, inputs: I) -> MapUnordered<'a, T, E>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: 'static,
        A: 'a,
    {
        let this = self.clone();
        self.pool
            .map_unordered_through(inputs, move |args| this.call(&args), self.convert)
    }
}

impl<A, T, E> Clone for Function<'_, A, T, E> {
    fn clone(&self) -> Self {
        Function {
            pool: self.pool,
            target: self.target.clone(),
            convert: self.convert,
            _types: PhantomData,
        }
    }
}

impl<A, T, E> fmt::Debug for Function<'_, A, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Function");
        d.field("args", &std::any::type_name::<A>())
            .field("output", &std::any::type_name::<T>())
            .field("error", &std::any::type_name::<E>());
        match &self.target {
            Ok(target) => d.field("offset", &format_args!("{:#x}", target.function)),
            Err(why) => d.field("unsendable", why),
        };
        d.finish_non_exhaustive()
    }
}

/// Options for one call of a [`Function`]; from [`Function::task`]. The same
/// options as [`TaskBuilder`](crate::TaskBuilder)'s, with the same meaning.
#[must_use = "an FnTaskBuilder does nothing until `.submit()`"]
pub struct FnTaskBuilder<'a, A, T, E = Infallible> {
    function: Function<'a, A, T, E>,
    args: A,
    options: TaskOptions,
}

impl<A, T, E> FnTaskBuilder<'_, A, T, E>
where
    A: Serialize,
    T: Send + 'static,
    E: Send + 'static,
{
    /// The call's priority (default `Normal`).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.options.priority = priority;
        self
    }

    /// The call's timeout, overriding the pool's default, counted from when
    /// it reaches the head of its worker's window (see
    /// [`TaskBuilder::timeout`](crate::TaskBuilder::timeout)). On a process
    /// pool a call past it is killed with its worker process.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// A deadline `within` from now, counted while the call is queued too
    /// (see [`TaskBuilder::deadline`](crate::TaskBuilder::deadline)).
    pub fn deadline(self, within: Duration) -> Self {
        self.deadline_at(crate::sync::after(Instant::now(), within))
    }

    /// Like [`deadline`](FnTaskBuilder::deadline), at an instant.
    pub fn deadline_at(mut self, deadline: Instant) -> Self {
        self.options.deadline = Some(deadline);
        self
    }

    /// A sticky key: on a process pool, calls with the same key go to the same
    /// worker process while it lives.
    pub fn key(mut self, key: u64) -> Self {
        self.options.key = Some(key);
        self
    }

    /// On a process pool, runs the call again up to `n` times if its worker
    /// process dies under it (see [`PoolBuilder::retries`](crate::PoolBuilder::retries)).
    /// Only for idempotent functions.
    pub fn retries(mut self, n: u32) -> Self {
        self.options.retries = Some(n);
        self
    }

    /// Submits the call, waiting while the queue is full (as
    /// [`Function::spawn`]).
    pub fn submit(self) -> Result<Task<T, E>, SubmitError<A>> {
        self.function
            .submit(self.args, self.options, Admission::Wait)
    }

    /// Submits the call without waiting (as [`Function::try_spawn`]).
    pub fn try_submit(self) -> Result<Task<T, E>, SubmitError<A>> {
        self.function
            .submit(self.args, self.options, Admission::Try)
    }
}

impl<A, T, E> fmt::Debug for FnTaskBuilder<'_, A, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTaskBuilder")
            .field("function", &self.function)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A pool of plain functions (see [`crew::functions`](crate::functions)).
impl Pool<Functions> {
    /// Runs `f(args)` in a worker and returns the task's handle: workerpool's
    /// `pool.exec(fn, args)`, Python's `executor.submit(fn, *args)`. `f` is a
    /// function, or a closure that captures nothing (the compiler refuses one
    /// that does: its captured values could not cross to another process; pass
    /// them in `args`). Several arguments go as a tuple.
    ///
    /// The task is one of the pool's like any other: on a process pool, a
    /// crash (a segfault, an `abort`) fails only this task, and a
    /// [`cancel`](Task::cancel) or a timeout kills its worker process. The
    /// input comes back in the error as [`Pool::submit`]'s does. For a
    /// function that returns `Result<T, E>` with `E` as the task's error, see
    /// [`fallible`](Pool::fallible); for options (a timeout, retries),
    /// [`function`](Pool::function) and [`Function::task`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // On threads here, where doc tests run; with `.processes(n)` each call
    /// // runs in a worker process (whose `main` calls `crew::bootstrap`).
    /// let pool = crew::Pool::<crew::Functions>::builder().workers(2).build()?;
    /// let task = pool.spawn_fn((6u32, 7u32), |(a, b)| a * b)?;
    /// assert_eq!(task.join()?, 42);
    /// # Ok(()) }
    /// ```
    pub fn spawn_fn<A, R>(&self, args: A, f: fn(A) -> R) -> Result<Task<R>, SubmitError<A>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.function(f).spawn(args)
    }

    /// `f` as a [`Function`] of this pool, for calls with options
    /// ([`Function::task`]), unordered maps, or many calls of one function.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = crew::Pool::<crew::Functions>::builder().workers(1).build()?;
    /// let double = pool.function(|x: u64| x * 2);
    /// let task = double.task(21).timeout(Duration::from_secs(5)).submit()?;
    /// assert_eq!(task.join()?, 42);
    /// # Ok(()) }
    /// ```
    pub fn function<A, R>(&self, f: fn(A) -> R) -> Function<'_, A, R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Function::new(self, call_plain::<A, R>, f as *const (), convert_plain::<R>)
    }

    /// `f`, whose `Err(e)` is the task's own error: the task fails with
    /// [`TaskError::user_error`] `== Some(&e)`, counted as failed in the stats,
    /// as a [`Worker`]'s error is.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = crew::Pool::<crew::Functions>::builder().workers(1).build()?;
    /// let checked_div = pool.fallible(|(a, b): (i64, i64)| a.checked_div(b).ok_or("division by zero".to_owned()));
    /// assert_eq!(checked_div.spawn((7, 2))?.join()?, 3);
    /// let error = checked_div.spawn((7, 0))?.join().unwrap_err();
    /// assert_eq!(error.user_error().map(String::as_str), Some("division by zero"));
    /// # Ok(()) }
    /// ```
    pub fn fallible<A, T, E>(&self, f: fn(A) -> Result<T, E>) -> Function<'_, A, T, E>
    where
        A: Serialize + DeserializeOwned,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        Function::new(
            self,
            call_fallible::<A, T, E>,
            f as *const (),
            convert_fallible::<T, E>,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{call_plain, Body, FnCall, FnErrorKind, Functions, Image, Trampoline};
    use crate::worker::{Context, Worker};

    fn double(x: u64) -> u64 {
        x * 2
    }

    /// A call as `Function::call` makes it (sealed), with these fields.
    fn call(build: u64, trampoline: u64, function: u64) -> FnCall {
        let seal = Image::get().unwrap().seal(trampoline, function);
        forged(build, trampoline, function, seal)
    }

    fn forged(build: u64, trampoline: u64, function: u64, seal: u64) -> FnCall {
        FnCall {
            build,
            body: Body::Run {
                trampoline,
                function,
                seal,
                args: postcard::to_stdvec(&21u64).unwrap(),
            },
        }
    }

    fn refusal(call: FnCall) -> String {
        let mut worker = Functions {
            image: Image::get().unwrap(),
        };
        let mut ctx = Context::new(crate::WorkerId::new(1), None);
        match worker.run(call, &mut ctx) {
            Err(super::FnError {
                kind: FnErrorKind::Refused(message),
            }) => message,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn offsets() -> (u64, u64, u64) {
        let image = Image::get().unwrap();
        let trampoline = call_plain::<u64, u64> as Trampoline as *const ();
        (
            image.build.tag,
            image.offset_of(trampoline).unwrap(),
            image
                .offset_of(double as fn(u64) -> u64 as *const ())
                .unwrap(),
        )
    }

    #[test]
    fn a_call_runs_its_function() {
        let (build, trampoline, function) = offsets();
        let mut worker = Functions {
            image: Image::get().unwrap(),
        };
        let mut ctx = Context::new(crate::WorkerId::new(1), None);
        let reply = worker
            .run(call(build, trampoline, function), &mut ctx)
            .unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&reply.0).unwrap(), 42);
    }

    #[test]
    fn a_call_from_another_build_is_refused_before_anything_runs() {
        let (build, trampoline, function) = offsets();
        let message = refusal(call(build ^ 1, trampoline, function));
        assert!(message.contains("different build"), "{message}");
    }

    #[test]
    fn a_call_crew_did_not_seal_is_refused() {
        let (build, trampoline, function) = offsets();
        let seal = Image::get().unwrap().seal(trampoline, function);
        // Another function's offset under this pair's seal, as bytes decoded
        // into a `FnCall` by other code could name.
        let message = refusal(forged(build, trampoline, function + 1, seal));
        assert!(message.contains("seal"), "{message}");
        let message = refusal(forged(build, trampoline, function, seal ^ 1));
        assert!(message.contains("seal"), "{message}");
    }

    #[test]
    fn a_call_naming_code_outside_the_executable_is_refused() {
        let (build, trampoline, function) = offsets();
        let message = refusal(call(build, u64::MAX - 7, function));
        assert!(message.contains("outside"), "{message}");
        let message = refusal(call(build, trampoline, u64::MAX - 7));
        assert!(message.contains("outside"), "{message}");
    }
}
