//! `TaskError` as a new user meets it: `?` into the three common boxed error
//! types for a worker whose error is a `String`, the user's error in `Debug`,
//! `source()`, and a panic's payload carried back and re-raised.

mod common;

use std::error::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};

use common::join;
use crew::{Context, Pool, StartError, UserError, Worker};

/// A worker whose error is a plain `String`, the most common choice.
struct Parse;

impl Worker for Parse {
    type Input = &'static str;
    type Output = u32;
    type Error = String;
    type Message = ();

    fn start(_: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Parse)
    }

    fn run(&mut self, text: &'static str, _: &mut Context<'_>) -> Result<u32, String> {
        text.parse().map_err(|_| format!("not a number: {text}"))
    }
}

fn parse_pool() -> Pool<Parse> {
    Pool::<Parse>::builder().workers(1).build().unwrap()
}

fn into_box(pool: &Pool<Parse>, text: &'static str) -> Result<u32, Box<dyn Error>> {
    Ok(join(pool.submit(text)?)?)
}

fn into_box_send_sync(
    pool: &Pool<Parse>,
    text: &'static str,
) -> Result<u32, Box<dyn Error + Send + Sync>> {
    Ok(join(pool.submit(text)?)?)
}

fn into_anyhow(pool: &Pool<Parse>, text: &'static str) -> anyhow::Result<u32> {
    Ok(join(
        pool.submit(text).map_err(|e| anyhow::anyhow!("{e}"))?,
    )?)
}

#[test]
fn question_mark_into_box_dyn_error() {
    let pool = parse_pool();
    assert_eq!(into_box(&pool, "7").unwrap(), 7);
    let error = into_box(&pool, "seven").unwrap_err();
    assert_eq!(error.to_string(), "the task returned an error");
    assert_eq!(error.source().unwrap().to_string(), "not a number: seven");
    // `fn main() -> Result<(), Box<dyn Error>>` prints the Debug form.
    assert_eq!(
        format!("{error:?}"),
        r#"TaskError::User("not a number: seven")"#
    );
}

#[test]
fn question_mark_into_box_dyn_error_send_sync() {
    let pool = parse_pool();
    let error = into_box_send_sync(&pool, "x").unwrap_err();
    // It can cross threads, as `Send + Sync` promises.
    let shown = std::thread::spawn(move || error.source().unwrap().to_string())
        .join()
        .unwrap();
    assert_eq!(shown, "not a number: x");
}

#[test]
fn question_mark_into_anyhow() {
    let pool = parse_pool();
    assert_eq!(into_anyhow(&pool, "12").unwrap(), 12);
    let error = into_anyhow(&pool, "twelve").unwrap_err();
    // anyhow's alternate form prints the chain: crew's sentence, then the user's.
    assert_eq!(
        format!("{error:#}"),
        "the task returned an error: not a number: twelve"
    );
    let task_error = error.downcast_ref::<crew::TaskError<String>>().unwrap();
    assert_eq!(
        task_error.user_error().map(String::as_str),
        Some("not a number: twelve")
    );
}

#[test]
fn debug_shows_the_users_error() {
    let pool = parse_pool();
    let error = join(pool.submit("nine").unwrap()).unwrap_err();
    assert_eq!(
        format!("{error:?}"),
        r#"TaskError::User("not a number: nine")"#
    );
    // And an `unwrap()` panic says it too.
    let result: Result<u32, _> = Err(error);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        let _: u32 = std::hint::black_box(result).unwrap();
    }))
    .unwrap_err();
    let message = caught.downcast_ref::<String>().unwrap();
    assert!(message.contains("not a number: nine"), "{message}");
}

/// A typed error of the user's own.
#[derive(Debug, PartialEq)]
struct Rejected(u32);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rejected {}", self.0)
    }
}

impl Error for Rejected {}

/// Fails every task with the error its input builds.
struct Fails<E>(std::marker::PhantomData<E>);

impl<E: Send + 'static> Worker for Fails<E> {
    type Input = fn() -> E;
    type Output = ();
    type Error = E;
    type Message = ();

    fn start(_: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Fails(std::marker::PhantomData))
    }

    fn run(&mut self, make: fn() -> E, _: &mut Context<'_>) -> Result<(), E> {
        Err(make())
    }
}

fn fail_with<E: Send + 'static>(make: fn() -> E) -> crew::TaskError<E> {
    let pool = Pool::<Fails<E>>::builder().workers(1).build().unwrap();
    let error = join(pool.submit(make).unwrap()).unwrap_err();
    pool.shutdown();
    error
}

#[test]
fn source_reaches_a_typed_error_and_a_boxed_ones_chain() {
    // A typed error: the source displays it and downcasts to the UserError view.
    let error = fail_with(|| Rejected(3));
    let source = error.source().unwrap();
    assert_eq!(source.to_string(), "rejected 3");
    assert_eq!(
        source
            .downcast_ref::<UserError<Rejected>>()
            .map(UserError::get),
        Some(&Rejected(3))
    );
    assert_eq!(format!("{error:?}"), "TaskError::User(Rejected(3))");

    // A boxed error is the source itself (not a view), so it downcasts.
    let error = fail_with(|| -> Box<dyn Error + Send + Sync> {
        Box::new(std::io::Error::other(Rejected(4)))
    });
    let source = error.source().unwrap();
    let io = source.downcast_ref::<std::io::Error>().unwrap();
    let inner = io.get_ref().unwrap().downcast_ref::<Rejected>();
    assert_eq!(inner, Some(&Rejected(4)));
    // And `?` takes it up too (a `Box<dyn Error>` is not itself an `Error`).
    let up = (|| -> Result<(), Box<dyn Error>> { Err(error)? })();
    assert_eq!(up.unwrap_err().to_string(), "the task returned an error");
}

#[test]
fn a_panic_payload_comes_back_and_resumes_on_the_caller() {
    let pool = Pool::builder().workers(1).build().unwrap();

    // A payload that is neither &str nor String survives as itself.
    #[derive(Debug, PartialEq)]
    struct Custom(u64);
    let task = pool.spawn(|| -> u32 { std::panic::panic_any(Custom(99)) });
    let error = join(task).unwrap_err();
    assert!(error.is_panic());
    assert_eq!(error.panic_message(), Some("Box<dyn Any>"));
    let payload = error.into_panic();
    assert_eq!(payload.downcast_ref::<Custom>(), Some(&Custom(99)));

    // `resume_unwind` re-raises it on this thread, with the same payload.
    let task = pool.spawn(|| -> u32 { std::panic::panic_any(Custom(7)) });
    let error = join(task).unwrap_err();
    let caught = catch_unwind(AssertUnwindSafe(move || {
        let _ = error.resume_unwind();
    }))
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<Custom>(), Some(&Custom(7)));

    // Any other kind is handed back untouched.
    let task = pool.spawn(|| 1u32);
    task.cancel();
    let error = join(task).err();
    if let Some(error) = error {
        let back = error.try_into_panic().unwrap_err();
        assert!(back.is_cancelled());
        assert!(!back.resume_unwind().is_panic());
    }
    pool.shutdown();
}

#[test]
fn an_async_tasks_panic_payload_comes_back() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let task = pool.spawn_async(async { std::panic::panic_any(5u8) });
    let payload = join(task).unwrap_err().into_panic();
    assert_eq!(payload.downcast_ref::<u8>(), Some(&5));
    pool.shutdown();
}
