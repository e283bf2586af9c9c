//! Messages between a pool and its workers, both ways, on both backends: each
//! scenario is written once and run on threads and on processes (whose workers
//! re-run this test binary: `crew_worker_entry`).

mod common;

use common::{wait_until, worker_processes, LIMIT};
use crew::{Context, Pool, PoolBuilder, SendError, StartError, Worker, WorkerId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Msg {
    /// Pool to worker: remember this setting (answers `Ack`).
    Set(u64),
    /// Worker to pool: "I now have this setting".
    Ack(u64),
    /// Worker to pool: progress of a task.
    Step(u64),
    /// Pool to worker: panic in `on_message`.
    Explode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    /// Sends `Step(0..n)`, then answers n.
    Count(u64),
    /// Answers the worker's current setting.
    Setting,
    /// Panics (the state is rebuilt).
    Panic,
    /// Tries to send a message of another type; answers whether it was refused
    /// as the wrong type.
    WrongType,
}

/// Keeps one setting, which messages change.
struct Talker {
    setting: u64,
}

impl Worker for Talker {
    type Input = Job;
    type Output = u64;
    type Error = String;
    type Message = Msg;

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Talker { setting: 0 })
    }

    fn run(&mut self, job: Job, ctx: &mut Context<'_>) -> Result<u64, String> {
        match job {
            Job::Count(n) => {
                for i in 0..n {
                    ctx.send(Msg::Step(i)).map_err(|e| e.to_string())?;
                }
                Ok(n)
            }
            Job::Setting => Ok(self.setting),
            Job::Panic => panic!("task panicked on purpose"),
            Job::WrongType => Ok(u64::from(matches!(
                ctx.send("not a Msg"),
                Err(SendError::WrongType("not a Msg"))
            ))),
        }
    }

    fn on_message(&mut self, message: Msg, ctx: &mut Context<'_>) {
        match message {
            Msg::Set(n) => {
                self.setting = n;
                ctx.send(Msg::Ack(n)).unwrap();
            }
            Msg::Explode => panic!("on_message panicked on purpose"),
            Msg::Ack(_) | Msg::Step(_) => {}
        }
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Talker>().run();
}

fn threads(n: usize) -> PoolBuilder<Talker> {
    Pool::<Talker>::builder().workers(n)
}

fn processes(n: usize) -> PoolBuilder<Talker> {
    worker_processes::<Talker>(n)
}

/// Receives messages until `want` has seen what it needs, failing after LIMIT.
fn collect(
    messages: &crew::Messages<Msg>,
    mut want: impl FnMut(&[(WorkerId, Msg)]) -> bool,
) -> Vec<(WorkerId, Msg)> {
    let deadline = std::time::Instant::now() + LIMIT;
    let mut seen = Vec::new();
    while !want(&seen) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match messages.recv_timeout(left) {
            Ok(m) => seen.push(m),
            Err(e) => panic!("waiting for messages: {e:?}; seen {seen:?}"),
        }
    }
    seen
}

fn started(pool: &Pool<Talker>, n: usize) {
    wait_until("every worker has started", || {
        pool.stats().per_worker.iter().filter(|w| w.started).count() == n
    });
}

// ------------------------------------------------------------ the scenarios

/// A task's messages arrive in order, and before its handle resolves; every
/// subscriber gets all of them.
fn messages_from_a_task_arrive_in_order_before_its_result(make: fn(usize) -> PoolBuilder<Talker>) {
    let pool = make(2).build().unwrap();
    let first = pool.messages();
    let second = pool.messages();
    let task = pool.submit(Job::Count(100)).unwrap();
    assert_eq!(task.join().unwrap(), 100);
    for messages in [&first, &second] {
        // Already there: no waiting.
        let steps: Vec<u64> = std::iter::from_fn(|| messages.try_recv().ok())
            .map(|(_, m)| match m {
                Msg::Step(i) => i,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(steps, (0..100).collect::<Vec<_>>());
        assert_eq!(messages.dropped(), 0);
    }
    pool.shutdown();
}

/// A broadcast reaches every worker, idle ones at once.
fn a_broadcast_reaches_every_idle_worker(make: fn(usize) -> PoolBuilder<Talker>) {
    let pool = make(3).build().unwrap();
    started(&pool, 3);
    let messages = pool.messages();
    pool.broadcast(Msg::Set(7));
    let acks = collect(&messages, |seen| seen.len() == 3);
    let mut from: Vec<WorkerId> = acks
        .iter()
        .map(|(w, m)| {
            assert_eq!(m, &Msg::Ack(7));
            *w
        })
        .collect();
    from.sort();
    assert_eq!(from, pool.workers());
    pool.shutdown();
}

/// `send_to` reaches one worker, before the tasks submitted after it; an
/// unknown id gives the message back.
fn send_to_reaches_one_worker_before_later_tasks(make: fn(usize) -> PoolBuilder<Talker>) {
    let pool = make(1).build().unwrap();
    started(&pool, 1);
    let worker = pool.workers()[0];
    pool.send_to(worker, Msg::Set(42)).unwrap();
    assert_eq!(pool.submit(Job::Setting).unwrap().join().unwrap(), 42);
    let gone = WorkerId::CALLER;
    assert_eq!(
        pool.send_to(gone, Msg::Set(1)),
        Err(SendError::NoSuchWorker(Msg::Set(1)))
    );
    pool.shutdown();
}

/// A sticky broadcast also reaches a replacement worker and a state rebuilt
/// after a panic; a plain one does not outlive the state it reached.
fn sticky_broadcasts_reach_later_workers_and_rebuilt_states(
    make: fn(usize) -> PoolBuilder<Talker>,
) {
    let pool = make(1).build().unwrap();
    started(&pool, 1);
    let messages = pool.messages();
    pool.broadcast_sticky(Msg::Set(5));
    collect(&messages, |seen| seen.len() == 1);
    // A panic rebuilds the state: the sticky setting comes back.
    assert!(pool.submit(Job::Panic).unwrap().join().is_err());
    assert_eq!(pool.submit(Job::Setting).unwrap().join().unwrap(), 5);
    // A replacement gets it too.
    let old = pool.workers()[0];
    assert!(pool.kill_worker(old));
    wait_until("a replacement worker", || {
        pool.workers().first().is_some_and(|w| *w != old)
    });
    assert_eq!(pool.submit(Job::Setting).unwrap().join().unwrap(), 5);
    // A plain setting is lost with its state.
    pool.broadcast(Msg::Set(9));
    assert_eq!(pool.submit(Job::Setting).unwrap().join().unwrap(), 9);
    assert!(pool.submit(Job::Panic).unwrap().join().is_err());
    assert_eq!(pool.submit(Job::Setting).unwrap().join().unwrap(), 5);
    pool.shutdown();
}

/// A panic in `on_message` rebuilds the state; the pool goes on.
fn a_panic_in_on_message_rebuilds_the_state(make: fn(usize) -> PoolBuilder<Talker>) {
    let pool = make(1).build().unwrap();
    started(&pool, 1);
    let worker = pool.workers()[0];
    pool.send_to(worker, Msg::Set(3)).unwrap();
    pool.send_to(worker, Msg::Explode).unwrap();
    // Handled in order: set, explode (state rebuilt, setting back to 0).
    assert_eq!(pool.submit(Job::Setting).unwrap().join().unwrap(), 0);
    pool.send_to(worker, Msg::Set(4)).unwrap();
    assert_eq!(pool.submit(Job::Setting).unwrap().join().unwrap(), 4);
    pool.shutdown();
}

/// `Context::send` of another type is refused with the message back.
fn a_message_of_the_wrong_type_is_refused(make: fn(usize) -> PoolBuilder<Talker>) {
    let pool = make(1).build().unwrap();
    assert_eq!(pool.submit(Job::WrongType).unwrap().join().unwrap(), 1);
    pool.shutdown();
}

/// The stream ends after shutdown, once everything buffered was read.
fn messages_end_after_shutdown(make: fn(usize) -> PoolBuilder<Talker>) {
    let pool = make(1).build().unwrap();
    let messages = pool.messages();
    assert_eq!(pool.submit(Job::Count(3)).unwrap().join().unwrap(), 3);
    pool.shutdown();
    let rest: Vec<_> = messages.collect();
    assert_eq!(rest.len(), 3);
}

/// Mail sent just before a shutdown is read before the workers stop, as queued
/// work is run.
fn a_broadcast_just_before_shutdown_is_read(make: fn(usize) -> PoolBuilder<Talker>) {
    let pool = make(2).build().unwrap();
    started(&pool, 2);
    let messages = pool.messages();
    pool.broadcast(Msg::Set(8));
    pool.shutdown();
    let acks: Vec<_> = messages.collect();
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert!(acks.iter().all(|(_, m)| *m == Msg::Ack(8)), "{acks:?}");
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod on_threads {
            $(#[test] fn $scenario() { super::$scenario(super::threads) })*
        }
        mod on_processes {
            $(#[test] fn $scenario() { super::$scenario(super::processes) })*
        }
    };
}

on_both_backends!(
    messages_from_a_task_arrive_in_order_before_its_result,
    a_broadcast_reaches_every_idle_worker,
    send_to_reaches_one_worker_before_later_tasks,
    sticky_broadcasts_reach_later_workers_and_rebuilt_states,
    a_panic_in_on_message_rebuilds_the_state,
    a_message_of_the_wrong_type_is_refused,
    messages_end_after_shutdown,
    a_broadcast_just_before_shutdown_is_read,
);
