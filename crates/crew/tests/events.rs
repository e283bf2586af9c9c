//! `Pool::events`: what subscribers see for tasks (started, finished with each
//! outcome, discarded) and workers (started, failing to start, restarted,
//! exited), with several subscribers, with a subscriber that never reads, and
//! asynchronously.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{join, recv_to_end, recv_until, Gate, OpenOnDrop, LIMIT};
use crew::{
    Context, Event, ExitReason, Pool, PoolBuilder, StartError, TaskId, TaskOutcome, Worker,
    WorkerId,
};

fn terminal(events: &[Event], task: TaskId) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| {
            e.task() == Some(task)
                && matches!(e, Event::TaskFinished { .. } | Event::TaskDiscarded { .. })
        })
        .collect()
}

fn has_terminal(events: &[Event], task: TaskId) -> bool {
    !terminal(events, task).is_empty()
}

/// The one terminal event of `task`, as (outcome, whether it ran).
#[track_caller]
fn outcome_of(events: &[Event], task: TaskId) -> (TaskOutcome, bool) {
    let t = terminal(events, task);
    assert_eq!(
        t.len(),
        1,
        "exactly one terminal event for {task}: {events:#?}"
    );
    (
        t[0].outcome().unwrap(),
        matches!(t[0], Event::TaskFinished { .. }),
    )
}

/// A builder whose worker threads wait for `gate` before running, so a test can
/// subscribe before any worker starts.
fn gated<W: Worker>(workers: usize, gate: &Gate) -> PoolBuilder<W> {
    let gate = gate.clone();
    Pool::<W>::builder()
        .workers(workers)
        .spawn_handler(move |builder, body| {
            let gate = gate.clone();
            builder.spawn(move || {
                gate.wait();
                body()
            })
        })
}

#[test]
fn every_worker_starts_and_exits_on_shutdown() {
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let pool: Pool = gated(3, &gate).build().unwrap();
    let events = pool.events();
    gate.open();
    let workers: HashSet<WorkerId> = pool.workers().into_iter().collect();
    assert_eq!(workers.len(), 3);
    // A worker that has not started when the pool closes never starts, so wait.
    let mut seen = recv_until(&events, |seen| {
        seen.iter()
            .filter(|e| matches!(e, Event::WorkerStarted { .. }))
            .count()
            == 3
    });
    pool.shutdown();
    seen.extend(recv_to_end(&events));
    for w in &workers {
        let started = seen
            .iter()
            .filter(|e| matches!(e, Event::WorkerStarted { worker, .. } if worker == w))
            .count();
        assert_eq!(started, 1, "{w}: {seen:#?}");
        let exits: Vec<_> = seen
            .iter()
            .filter(|e| matches!(e, Event::WorkerExited { worker, .. } if worker == w))
            .collect();
        assert_eq!(exits.len(), 1, "{w}: {seen:#?}");
        assert!(
            matches!(
                exits[0],
                Event::WorkerExited {
                    reason: ExitReason::Shutdown,
                    ..
                }
            ),
            "{exits:?}"
        );
        // Per worker, start comes before exit (both from its own thread).
        let start_at = seen
            .iter()
            .position(|e| matches!(e, Event::WorkerStarted { worker, .. } if worker == w));
        let exit_at = seen
            .iter()
            .position(|e| matches!(e, Event::WorkerExited { worker, .. } if worker == w));
        assert!(start_at < exit_at, "{seen:#?}");
    }
    // The stream stays ended.
    assert!(events.recv().is_none());
}

#[test]
fn each_task_of_a_batch_starts_then_completes() {
    let pool = Pool::builder().workers(3).build().unwrap();
    let events = pool.events();
    let tasks = pool.spawn_batch((0..200u64).map(|i| move || i * 2));
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id()).collect();
    for t in tasks {
        join(t).unwrap();
    }
    let seen = recv_until(&events, |seen| ids.iter().all(|id| has_terminal(seen, *id)));
    for id in &ids {
        let mine: Vec<&Event> = seen.iter().filter(|e| e.task() == Some(*id)).collect();
        assert_eq!(mine.len(), 2, "{mine:?}");
        let (
            Event::TaskStarted { worker: w1, .. },
            Event::TaskFinished {
                worker: w2,
                outcome,
                ..
            },
        ) = (mine[0], mine[1])
        else {
            panic!("expected started, then finished: {mine:?}");
        };
        assert_eq!(w1, w2);
        assert_eq!(*outcome, TaskOutcome::Completed);
    }
}

/// A worker whose input says what to do.
struct Scripted;

enum Do {
    Succeed,
    Fail,
    Panic,
}

impl Worker for Scripted {
    type Input = Do;
    type Output = ();
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Scripted)
    }

    fn run(&mut self, input: Do, _ctx: &mut Context<'_>) -> Result<(), String> {
        match input {
            Do::Succeed => Ok(()),
            Do::Fail => Err("no".to_owned()),
            Do::Panic => panic!("boom"),
        }
    }
}

#[test]
fn failed_and_panicked_tasks_and_the_restart() {
    let pool = Pool::<Scripted>::builder().workers(1).build().unwrap();
    let events = pool.events();
    let failed = pool.submit(Do::Fail).unwrap();
    let panicked = pool.submit(Do::Panic).unwrap();
    let after = pool.submit(Do::Succeed).unwrap();
    let ids = [failed.id(), panicked.id(), after.id()];
    assert!(join(failed).unwrap_err().is_user());
    assert!(join(panicked).unwrap_err().is_panic());
    join(after).unwrap();
    let seen = recv_until(&events, |seen| ids.iter().all(|id| has_terminal(seen, *id)));
    assert_eq!(outcome_of(&seen, ids[0]), (TaskOutcome::Failed, true));
    assert_eq!(outcome_of(&seen, ids[1]), (TaskOutcome::Panicked, true));
    assert_eq!(outcome_of(&seen, ids[2]), (TaskOutcome::Completed, true));
    let restarted = seen
        .iter()
        .find_map(|e| match e {
            Event::WorkerRestarted { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no WorkerRestarted: {seen:#?}"));
    assert!(restarted.contains(&ids[1].to_string()), "{restarted}");
}

#[test]
fn cancelled_running_and_queued_tasks() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let events = pool.events();
    let (tx, rx) = std::sync::mpsc::channel();
    let running = pool
        .job(move |ctx: &mut Context<'_>| {
            tx.send(()).unwrap();
            let deadline = Instant::now() + LIMIT;
            while !ctx.is_cancelled() && Instant::now() < deadline {
                std::thread::yield_now();
            }
        })
        .spawn();
    rx.recv_timeout(LIMIT).unwrap();
    let queued = pool.spawn(|| ());
    let ids = [running.id(), queued.id()];
    assert!(queued.cancel());
    assert!(running.cancel());
    assert!(join(running).unwrap_err().is_cancelled());
    assert!(join(queued).unwrap_err().is_cancelled());
    let seen = recv_until(&events, |seen| ids.iter().all(|id| has_terminal(seen, *id)));
    assert_eq!(outcome_of(&seen, ids[0]), (TaskOutcome::Cancelled, true));
    // Cancelled while queued: it never ran, so no TaskStarted either.
    assert_eq!(outcome_of(&seen, ids[1]), (TaskOutcome::Cancelled, false));
    assert!(!seen
        .iter()
        .any(|e| matches!(e, Event::TaskStarted { task, .. } if *task == ids[1])));
}

#[test]
fn timed_out_task_that_returns_keeps_its_worker() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let events = pool.events();
    let task = pool
        .job(|ctx: &mut Context<'_>| {
            let deadline = Instant::now() + LIMIT;
            while !ctx.is_cancelled() && Instant::now() < deadline {
                std::thread::yield_now();
            }
        })
        .timeout(Duration::from_millis(20))
        .spawn();
    let id = task.id();
    assert!(join(task).unwrap_err().is_timeout());
    let seen = recv_until(&events, |seen| has_terminal(seen, id));
    assert_eq!(outcome_of(&seen, id), (TaskOutcome::TimedOut, true));
    pool.shutdown();
    let rest = recv_to_end(&events);
    let all: Vec<Event> = seen.into_iter().chain(rest).collect();
    assert_eq!(terminal(&all, id).len(), 1, "{all:#?}");
    assert!(
        !all.iter().any(|e| matches!(
            e,
            Event::WorkerExited {
                reason: ExitReason::Abandoned,
                ..
            }
        )),
        "{all:#?}"
    );
}

#[test]
fn timed_out_task_that_never_returns_abandons_its_worker() {
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let pool = Pool::builder()
        .workers(1)
        .abandon_grace(Duration::from_millis(10))
        .build()
        .unwrap();
    let events = pool.events();
    let (tx, rx) = std::sync::mpsc::channel();
    let stuck_gate = gate.clone();
    let task = pool
        .job(move |ctx: &mut Context<'_>| {
            tx.send(ctx.worker_id()).unwrap();
            stuck_gate.wait(); // ignores cancellation
        })
        .timeout(Duration::from_millis(10))
        .spawn();
    let id = task.id();
    let stuck = rx.recv_timeout(LIMIT).unwrap();
    assert!(join(task).unwrap_err().is_timeout());
    let seen = recv_until(&events, |seen| {
        seen.iter().any(|e| {
            matches!(e, Event::WorkerExited { worker, reason: ExitReason::Abandoned, .. } if *worker == stuck)
        })
    });
    assert_eq!(outcome_of(&seen, id), (TaskOutcome::TimedOut, true));
    // Its TaskFinished comes before the worker's exit (same emitting thread).
    let finished_at = seen
        .iter()
        .position(|e| e.task() == Some(id) && e.outcome().is_some());
    let exited_at = seen
        .iter()
        .position(|e| matches!(e, Event::WorkerExited { .. }));
    assert!(finished_at < exited_at, "{seen:#?}");
    // Let the stuck thread return: it must not report the task a second time.
    gate.open();
    pool.shutdown();
    let rest = recv_to_end(&events);
    assert!(terminal(&rest, id).is_empty(), "{rest:#?}");
    let stuck_exits = rest
        .iter()
        .filter(|e| matches!(e, Event::WorkerExited { worker, .. } if *worker == stuck))
        .count();
    assert_eq!(stuck_exits, 0, "{rest:#?}");
}

#[test]
fn killed_worker_reports_its_task_and_its_exit() {
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let pool = Pool::builder().workers(2).build().unwrap();
    let events = pool.events();
    let (tx, rx) = std::sync::mpsc::channel();
    let g = gate.clone();
    let task = pool
        .job(move |ctx: &mut Context<'_>| {
            tx.send(ctx.worker_id()).unwrap();
            g.wait();
        })
        .spawn();
    let id = task.id();
    let victim = rx.recv_timeout(LIMIT).unwrap();
    assert!(pool.kill_worker(victim));
    assert!(join(task).unwrap_err().is_killed());
    let seen = recv_until(&events, |seen| {
        seen.iter().any(|e| {
            matches!(e, Event::WorkerExited { worker, reason: ExitReason::Killed, .. } if *worker == victim)
        })
    });
    assert_eq!(outcome_of(&seen, id), (TaskOutcome::Killed, true));
    gate.open();
}

/// A worker whose start always fails.
struct NeverStarts;

impl Worker for NeverStarts {
    type Input = ();
    type Output = ();
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Err("database unreachable".into())
    }

    fn run(&mut self, _: (), _ctx: &mut Context<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[test]
fn start_failures_are_reported_with_their_message() {
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let pool = gated::<NeverStarts>(1, &gate)
        .start_attempts(2)
        .start_backoff(Duration::from_millis(1))
        .build()
        .unwrap();
    let events = pool.events();
    gate.open();
    let seen = recv_until(&events, |seen| {
        seen.iter()
            .filter(|e| matches!(e, Event::WorkerStartFailed { .. }))
            .count()
            >= 2
    });
    let failures: Vec<(&str, u32)> = seen
        .iter()
        .filter_map(|e| match e {
            Event::WorkerStartFailed {
                message,
                consecutive,
                ..
            } => Some((message.as_str(), *consecutive)),
            _ => None,
        })
        .collect();
    assert_eq!(
        &failures[..2],
        &[("database unreachable", 1), ("database unreachable", 2)]
    );
    // A task submitted now fails at once; it is reported as discarded.
    let task = pool.submit(()).unwrap();
    let id = task.id();
    assert!(join(task).unwrap_err().is_start_failure());
    let seen = recv_until(&events, |seen| has_terminal(seen, id));
    assert_eq!(outcome_of(&seen, id), (TaskOutcome::StartFailed, false));
}

#[test]
fn two_subscribers_both_see_everything() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let a = pool.events();
    let b = pool.events();
    let tasks = pool.spawn_batch((0..100).map(|i| move || i));
    for t in tasks {
        join(t).unwrap();
    }
    pool.shutdown();
    let mut seen_a: Vec<String> = recv_to_end(&a).iter().map(|e| format!("{e:?}")).collect();
    let mut seen_b: Vec<String> = recv_to_end(&b).iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(a.dropped() + b.dropped(), 0);
    // Each emitter pushes to the subscribers one after the other, so two emitting
    // threads may interleave differently in each: compare as multisets.
    seen_a.sort();
    seen_b.sort();
    assert_eq!(seen_a, seen_b);
    let finished = seen_a
        .iter()
        .filter(|e| e.starts_with("TaskFinished"))
        .count();
    assert_eq!(finished, 100);
}

#[test]
fn a_subscriber_that_never_reads_does_not_block_the_pool() {
    let pool = Pool::builder().workers(2).event_buffer(8).build().unwrap();
    let lazy = pool.events();
    let tasks = pool.spawn_batch((0..10_000u64).map(|i| move || i));
    let mut sum = 0;
    for t in tasks {
        sum += join(t).unwrap();
    }
    assert_eq!(sum, (0..10_000u64).sum());
    assert!(lazy.dropped() > 0);
    // What it kept is the oldest: the first events, in order.
    let kept: Vec<Event> = std::iter::from_fn(|| lazy.try_recv().ok()).collect();
    assert_eq!(kept.len(), 8, "{kept:#?}");
}

#[test]
fn a_dropped_subscription_stops_receiving_and_others_carry_on() {
    let pool = Pool::builder().workers(2).event_buffer(8).build().unwrap();
    let gone = pool.events();
    let kept = pool.events();
    drop(gone);
    let task = pool.spawn(|| 7);
    let id = task.id();
    assert_eq!(join(task).unwrap(), 7);
    let seen = recv_until(&kept, |seen| has_terminal(seen, id));
    assert_eq!(outcome_of(&seen, id), (TaskOutcome::Completed, true));
    // More tasks than either buffer holds: only the live subscriber's counts grow.
    for t in pool.spawn_batch((0..100).map(|i| move || i)) {
        join(t).unwrap();
    }
    assert!(kept.dropped() > 0);
}

#[test]
fn builder_rejects_a_zero_event_buffer() {
    let err = Pool::<crew::Closures>::builder()
        .event_buffer(0)
        .build()
        .unwrap_err();
    assert!(err.is_invalid_setting());
    assert!(err.to_string().contains("event_buffer"), "{err}");
}

#[test]
fn async_subscribers_need_no_runtime() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut events = pool.events();
    let task = pool.spawn(|| 1);
    let id = task.id();
    let finished = futures::executor::block_on(async {
        loop {
            match events.recv_async().await {
                Some(Event::TaskFinished { task, outcome, .. }) if task == id => break outcome,
                Some(_) => continue,
                None => panic!("stream ended early"),
            }
        }
    });
    assert_eq!(finished, TaskOutcome::Completed);
    assert_eq!(join(task).unwrap(), 1);
    // After shutdown, the async side ends too.
    pool.shutdown();
    let ended = futures::executor::block_on(async {
        let mut n = 0;
        while events.recv_async().await.is_some() {
            n += 1;
        }
        n
    });
    assert!(ended < 100, "{ended}");
}
