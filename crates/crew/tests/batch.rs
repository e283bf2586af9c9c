//! `spawn_batch` and `submit_batch`: handles come back in order with the right
//! results; on a closed (or closing) pool every handle resolves as closed and the
//! counters still add up; on a bounded queue smaller than the batch, the batch
//! waits for room and completes.

mod common;

use std::thread::JoinHandle;
use std::time::Duration;

use common::{block_workers, join, wait_until, Counter, Flag, Gate, OpenOnDrop, SetOnDrop, LIMIT};
use crew::{Context, Pool, Priority, StartError, Task, Worker};

/// Squares its input.
struct Square;

impl Worker for Square {
    type Input = u64;
    type Output = u64;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Square)
    }

    fn run(&mut self, n: u64, _ctx: &mut Context<'_>) -> Result<u64, Self::Error> {
        Ok(n * n)
    }
}

/// A worker type whose tasks wait for a gate (after bumping a counter) or square
/// a number.
struct Gated;

enum Cmd {
    Hold(Gate, Counter),
    Square(u64),
}

impl Worker for Gated {
    type Input = Cmd;
    type Output = u64;
    type Error = std::convert::Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Gated)
    }

    fn run(&mut self, cmd: Cmd, _ctx: &mut Context<'_>) -> Result<u64, Self::Error> {
        match cmd {
            Cmd::Hold(gate, started) => {
                started.bump();
                gate.wait();
                Ok(0)
            }
            Cmd::Square(n) => Ok(n * n),
        }
    }
}

/// Terminates the pool when dropped, so a failing assertion never leaves a
/// submitter blocked on a full queue.
struct TerminateOnDrop<W: Worker>(Pool<W>);

impl<W: Worker> Drop for TerminateOnDrop<W> {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

/// Joins a helper thread, failing the test if it has not finished within `LIMIT`.
#[track_caller]
fn join_thread<T>(handle: JoinHandle<T>) -> T {
    wait_until("a helper thread finishes", || handle.is_finished());
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Asserts that task ids increase along `tasks` (the order of the batch).
#[track_caller]
fn assert_ids_increase<T, E>(tasks: &[Task<T, E>]) {
    for pair in tasks.windows(2) {
        assert!(
            pair[0].id() < pair[1].id(),
            "{:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[track_caller]
fn assert_reconciled<W: Worker>(pool: &Pool<W>) {
    assert!(pool.wait_idle_timeout(LIMIT), "the pool becomes idle");
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

/// Closes the pool on another thread (`shutdown` waits for held workers) and
/// returns once it is closed.
fn shut_down_in_background<W: Worker>(pool: &Pool<W>) -> JoinHandle<()> {
    let closer = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown())
    };
    wait_until("the pool is closed", || pool.is_closed());
    closer
}

// ------------------------------------------------------------------ in order

#[test]
fn spawn_batch_of_ten_thousand_returns_handles_in_order() {
    const N: u64 = 10_000;
    let pool = Pool::builder().workers(2).build().unwrap();
    let tasks = pool.spawn_batch((0..N).map(|i| move || i * 3));
    assert_eq!(tasks.len(), N as usize);
    assert_ids_increase(&tasks);
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i as u64 * 3, "handle {i}");
    }
    assert_reconciled(&pool);
    let stats = pool.stats();
    assert_eq!(stats.submitted, N, "{stats}");
    assert_eq!(stats.completed, N, "{stats}");
    pool.shutdown();
}

#[test]
fn submit_batch_on_a_worker_pool_returns_handles_in_order() {
    const N: u64 = 1_000;
    let pool = Pool::<Square>::builder().workers(2).build().unwrap();
    let tasks = pool
        .submit_batch(0..N)
        .expect("an open pool takes the batch");
    assert_eq!(tasks.len(), N as usize);
    assert_ids_increase(&tasks);
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), (i * i) as u64, "handle {i}");
    }
    let empty = pool.submit_batch(std::iter::empty()).unwrap();
    assert!(empty.is_empty());
    assert_reconciled(&pool);
    assert_eq!(pool.stats().completed, N);
    pool.shutdown();
}

// ------------------------------------------------------------------ closed

#[test]
fn spawn_batch_on_a_shut_down_pool_resolves_every_handle_as_closed() {
    let pool = Pool::builder().workers(2).build().unwrap();
    pool.shutdown();
    let dropped: Vec<Flag> = (0..5).map(|_| Flag::new()).collect();
    let closures = dropped.iter().map(|flag| {
        let guard = SetOnDrop(flag.clone());
        move || {
            let _guard = &guard;
            panic!("a closed pool ran a batch closure")
        }
    });
    let tasks: Vec<Task<()>> = pool.spawn_batch(closures);
    assert_eq!(tasks.len(), 5, "one handle per closure");
    for (i, t) in tasks.into_iter().enumerate() {
        assert!(t.is_finished(), "handle {i} is resolved at once");
        let err = join(t).unwrap_err();
        assert!(err.is_closed(), "handle {i}: {err:?}");
    }
    assert!(
        dropped.iter().all(Flag::get),
        "every refused closure was dropped"
    );
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

#[test]
fn submit_batch_on_a_shut_down_pool_gives_the_first_input_back() {
    let pool = Pool::<Square>::builder().workers(2).build().unwrap();
    pool.shutdown();
    let err = pool
        .submit_batch([10, 11, 12])
        .expect_err("a closed pool takes no batch");
    assert!(err.is_closed(), "{err:?}");
    assert!(!err.is_full(), "{err:?}");
    assert_eq!(err.into_inner(), 10, "the refused input is the first one");
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

/// A batch refused while the pool is closing (closed, but a worker still busy) is
/// refused like a single `submit`: no task of it is accepted, so none is counted,
/// and the counters still reconcile.
#[test]
fn spawn_batch_refused_while_the_pool_drains_is_counted_once() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let blocker = block_workers(&pool, 1, &gate);
    let closer = shut_down_in_background(&pool);

    let tasks = pool.spawn_batch((0..3_u32).map(|i| move || i));
    assert_eq!(tasks.len(), 3);
    for t in tasks {
        assert!(join(t).unwrap_err().is_closed());
    }
    gate.open();
    join_thread(closer);
    join(blocker.into_iter().next().unwrap()).unwrap();

    let stats = pool.stats();
    assert_eq!(stats.submitted, 1, "only the blocker was accepted: {stats}");
    assert_eq!(stats.completed, 1, "{stats}");
    assert_eq!(stats.closed, 0, "refused tasks are not counted: {stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

#[test]
fn submit_batch_refused_while_the_pool_drains_is_counted_once() {
    let pool = Pool::<Gated>::builder().workers(1).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let started = Counter::new();
    let blocker = pool
        .submit(Cmd::Hold(gate.clone(), started.clone()))
        .unwrap();
    started.wait_for(1);
    let closer = shut_down_in_background(&pool);

    let err = pool
        .submit_batch([Cmd::Square(2), Cmd::Square(3)])
        .expect_err("a closing pool takes no batch");
    assert!(err.is_closed(), "{err:?}");
    assert!(matches!(err.into_inner(), Cmd::Square(2)));
    gate.open();
    join_thread(closer);
    join(blocker).unwrap();

    let stats = pool.stats();
    assert_eq!(stats.submitted, 1, "only the blocker was accepted: {stats}");
    assert_eq!(stats.closed, 0, "refused inputs are not counted: {stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}

/// The user-visible side of counting a refused batch task twice: `wait_idle`
/// reports an idle pool while a task is still running.
#[test]
fn wait_idle_is_not_fooled_by_a_batch_refused_while_the_pool_drains() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let (gate, last) = (Gate::new(), Gate::new());
    let _open = (OpenOnDrop(gate.clone()), OpenOnDrop(last.clone()));
    let blocker = block_workers(&pool, 1, &gate);
    // Queued before the close; `Low` so that the worker pops the refused batch
    // task (`Normal`) first.
    let running = Flag::new();
    let queued = {
        let (last, running) = (last.clone(), running.clone());
        pool.job(move |_ctx| {
            running.set();
            last.wait();
        })
        .priority(Priority::Low)
        .spawn()
    };
    let closer = shut_down_in_background(&pool);
    let refused = pool.spawn_batch([|| ()]);
    assert!(join(refused.into_iter().next().unwrap())
        .unwrap_err()
        .is_closed());

    gate.open();
    join(blocker.into_iter().next().unwrap()).unwrap();
    wait_until("the queued task runs", || running.get());
    assert!(!queued.is_finished());
    // Bounded so that the test fails rather than hangs when the pool is right.
    assert!(
        !pool.wait_idle_timeout(Duration::from_millis(100)),
        "wait_idle returned while a task was still running: {}",
        pool.stats()
    );

    last.open();
    join(queued).unwrap();
    join_thread(closer);
}

// ------------------------------------------------------------------ bounded

#[test]
fn spawn_batch_larger_than_the_queue_waits_for_room_and_completes() {
    const N: u32 = 1_000;
    let pool = Pool::builder()
        .workers(2)
        .queue_capacity(8)
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _terminate = TerminateOnDrop(pool.clone());
    let blockers = block_workers(&pool, 2, &gate);

    let entered = Flag::new();
    let batch = {
        let (pool, entered) = (pool.clone(), entered.clone());
        std::thread::spawn(move || {
            entered.set();
            pool.spawn_batch((0..N).map(|i| move || i + 1))
        })
    };
    wait_until("the batch starts", || entered.get());
    // Until the batch has filled the queue, `try_spawn` may take places too.
    let mut extra = Vec::new();
    wait_until("the queue is full", || match pool.try_spawn(|| 0_u32) {
        Ok(task) => {
            extra.push(task);
            false
        }
        Err(e) => e.is_full(),
    });
    assert!(
        !batch.is_finished(),
        "with every worker held, a batch of {N} cannot fit in 8 places"
    );

    gate.open();
    let tasks = join_thread(batch);
    assert_eq!(tasks.len(), N as usize);
    assert_ids_increase(&tasks);
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), i as u32 + 1, "handle {i}");
    }
    for t in blockers {
        join(t).unwrap();
    }
    for t in extra {
        join(t).unwrap();
    }
    assert_reconciled(&pool);
    pool.shutdown();
}

#[test]
fn submit_batch_larger_than_the_queue_completes() {
    const N: u64 = 1_000;
    let pool = Pool::<Square>::builder()
        .workers(2)
        .queue_capacity(4)
        .build()
        .unwrap();
    let _terminate = TerminateOnDrop(pool.clone());
    let batch = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.submit_batch(0..N))
    };
    let tasks = join_thread(batch).expect("an open pool takes the batch");
    assert_eq!(tasks.len(), N as usize);
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(join(t).unwrap(), (i * i) as u64, "handle {i}");
    }
    assert_reconciled(&pool);
    assert_eq!(pool.stats().completed, N);
    pool.shutdown();
}

#[test]
fn a_bounded_batch_cut_short_by_shutdown_resolves_every_handle() {
    const N: u32 = 100;
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(4)
        .build()
        .unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let _terminate = TerminateOnDrop(pool.clone());
    let blocker = block_workers(&pool, 1, &gate);

    let entered = Flag::new();
    let batch = {
        let (pool, entered) = (pool.clone(), entered.clone());
        std::thread::spawn(move || {
            entered.set();
            pool.spawn_batch((0..N).map(|i| move || i))
        })
    };
    wait_until("the batch starts", || entered.get());
    // Only makes it likely that the batch is waiting for room when the pool
    // closes; the assertions hold for any interleaving.
    std::thread::sleep(Duration::from_millis(20));
    let closer = shut_down_in_background(&pool);
    let tasks = join_thread(batch);
    gate.open();
    join_thread(closer);
    join(blocker.into_iter().next().unwrap()).unwrap();

    assert_eq!(tasks.len(), N as usize, "one handle per closure");
    let mut ran = 0;
    let mut closed_from = None;
    for (i, t) in tasks.into_iter().enumerate() {
        match join(t) {
            Ok(out) => {
                assert_eq!(out, i as u32);
                assert!(closed_from.is_none(), "task {i} ran after a refused one");
                ran += 1;
            }
            Err(e) => {
                assert!(e.is_closed(), "handle {i}: {e:?}");
                closed_from.get_or_insert(i);
            }
        }
    }
    assert!(ran <= 4, "at most the queue's capacity was taken: {ran}");
    let stats = pool.stats();
    assert_eq!(stats.submitted, N as u64 + 1, "{stats}");
    assert_eq!(stats.submitted, stats.finished(), "{stats}");
}
