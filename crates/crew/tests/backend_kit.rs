//! The kit an engine outside crew builds with (`crew::backend`, unstable), used
//! as such an engine would: task handles made with `new_task` and resolved
//! through their `Resolver`, a cancel reported back, `Stats` assembled from
//! `Figures`, and the event bus; and `map` through an outside engine's
//! `submit_chunk` (`tests/loopback_engine/`).

#[path = "loopback_engine/mod.rs"]
mod loopback_engine;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crew::backend::{
    self, new_task, EventBus, Failure, Figures, OnCancel, OutcomeCounts, Timings, WorkerFigures,
};
use crew::{Event, Priority, TaskId, WorkerState};

#[test]
fn a_task_resolves_once_through_its_resolver() {
    let (task, resolver) = new_task::<u32, String>(backend::task_id(7), Priority::High, None);
    assert_eq!(task.id(), resolver.id());
    assert_eq!(resolver.priority(), Priority::High);
    assert!(!task.is_finished());

    let worker = crew::WorkerId::CALLER;
    resolver.set_worker(worker);
    assert!(resolver.resolve(Ok(42)));
    // A second outcome (a late cancel, a crash report) is dropped.
    assert!(!resolver.fail(Failure::Killed));
    assert!(!resolver.resolve(Err(backend::user_error("late".into()))));
    assert!(resolver.is_resolved());
    assert_eq!(task.worker(), Some(worker));
    assert_eq!(task.join().unwrap(), 42);
}

#[test]
fn a_task_awaits_and_carries_the_users_error_and_crews_failures() {
    let (task, resolver) = new_task::<u32, String>(backend::task_id(1), Priority::Normal, None);
    let waiter = std::thread::spawn(move || futures::executor::block_on(task));
    resolver.resolve(Err(backend::user_error("no".into())));
    let err = waiter.join().unwrap().unwrap_err();
    assert_eq!(err.user_error().map(String::as_str), Some("no"));

    let (task, resolver) = new_task::<u32, String>(backend::task_id(2), Priority::Normal, None);
    let crash = backend::crash(None, Some(9), vec!["out of memory".into()]);
    assert!(resolver.fail(Failure::Crashed(crash)));
    let err = task.join().unwrap_err();
    assert_eq!(err.crash().and_then(|c| c.signal()), Some(9));
}

#[test]
fn a_cancel_resolves_the_handle_and_tells_the_engine_once() {
    let cancelled: Arc<Mutex<Vec<TaskId>>> = Arc::default();
    let on_cancel: OnCancel = {
        let cancelled = Arc::clone(&cancelled);
        Arc::new(move |id| cancelled.lock().unwrap().push(id))
    };
    let (task, resolver) =
        new_task::<u32, String>(backend::task_id(3), Priority::Low, Some(on_cancel));
    assert!(task.cancel());
    assert!(!task.cancel(), "a second cancel changes nothing");
    // The engine's answer, arriving after the cancel, is dropped.
    assert!(!resolver.resolve(Ok(1)));
    assert_eq!(*cancelled.lock().unwrap(), [resolver.id()]);
    assert!(task.join().unwrap_err().is_cancelled());
}

#[test]
fn stats_are_assembled_from_an_engines_figures() {
    let mut outcomes = OutcomeCounts::default();
    outcomes.record::<u32, String>(&Ok(1));
    outcomes.record::<u32, String>(&Err(backend::user_error("e".into())));
    outcomes.record_failure(&Failure::TimedOut, 2);
    assert_eq!(outcomes.total(), 4);
    assert_eq!(
        backend::event::outcome_of::<u32, String>(&Err(backend::failed(Failure::TimedOut))),
        crew::TaskOutcome::TimedOut
    );

    let mut timings = Timings::new();
    timings.record_wait(Duration::from_millis(1));
    timings.record_run(Duration::from_millis(3), 1);
    let row = |id: u64, occupied: usize, stopping: bool| WorkerFigures {
        id: crew::WorkerId::CALLER,
        started: true,
        stopping,
        current_task: (occupied > 0).then(|| backend::task_id(id)),
        occupied,
        tasks_done: id,
        busy_time: Duration::ZERO,
        run: timings.run_latency(),
        pid: None,
        rss_bytes: None,
    };
    let stats = Figures {
        submitted: 7,
        outcomes,
        timings: timings.clone(),
        workers: vec![row(5, 1, true), row(6, 0, false)],
        ..Figures::default()
    }
    .into_stats();
    assert_eq!((stats.completed, stats.failed, stats.timed_out), (1, 1, 2));
    assert_eq!(stats.finished(), 4);
    // Seven submitted, four finished, one held by a worker: two queued.
    assert_eq!((stats.queued, stats.busy, stats.idle), (2, 1, 1), "{stats}");
    let states: Vec<WorkerState> = stats.per_worker.iter().map(|w| w.state).collect();
    assert!(states.contains(&WorkerState::Busy) && states.contains(&WorkerState::Idle));
    assert_eq!(stats.run.count, 1);
    assert_eq!(stats.busy_time, Duration::from_millis(3));
}

#[test]
fn the_event_bus_delivers_to_subscribers_until_closed() {
    let bus = Arc::new(EventBus::new(16));
    let events = bus.subscribe();
    let worker = crew::WorkerId::CALLER;
    bus.emit(backend::event::worker_started(worker));
    bus.emit(backend::event::task_discarded(
        backend::task_id(9),
        crew::TaskOutcome::Cancelled,
    ));
    bus.close();
    bus.emit(backend::event::worker_exited(
        worker,
        crew::ExitReason::Shutdown,
    ));
    let seen: Vec<Event> = events.collect();
    assert!(
        matches!(
            seen.as_slice(),
            [Event::WorkerStarted { .. }, Event::TaskDiscarded { .. }]
        ),
        "{seen:?}"
    );
}

struct Double;

impl crew::Worker for Double {
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut crew::Context<'_>) -> Result<Self, crew::StartError> {
        Ok(Double)
    }

    fn run(&mut self, n: u64, _ctx: &mut crew::Context<'_>) -> Result<u64, String> {
        if n == 13 {
            return Err("unlucky".into());
        }
        Ok(n * 2)
    }
}

#[test]
fn map_runs_through_an_outside_engines_chunks() {
    let pool = loopback_engine::Loopback::<Double>::chunked_builder(2)
        .build()
        .unwrap();
    assert_eq!(pool.backend_kind(), crew::BackendKind::Other("loopback"));
    assert!(!pool.is_process_pool());

    let results: Vec<Result<u64, String>> = pool
        .map(0..50u64)
        .map(|r| r.map_err(|e| e.into_user_error().unwrap_or_else(|e| e.to_string())))
        .collect();
    assert_eq!(results.len(), 50);
    for (n, result) in results.iter().enumerate() {
        match n {
            13 => assert_eq!(*result, Err("unlucky".to_owned())),
            _ => assert_eq!(*result, Ok(n as u64 * 2)),
        }
    }
    let mut unordered: Vec<(usize, u64)> = pool
        .map_unordered(0..10u64)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort();
    assert_eq!(
        unordered,
        (0..10).map(|i| (i, i as u64 * 2)).collect::<Vec<_>>()
    );

    pool.shutdown();
    // A closed pool refuses every item; an endless input still ends.
    let refused: Vec<_> = pool.map(0..).take(3).collect();
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|r| r.as_ref().unwrap_err().is_closed()));
}
