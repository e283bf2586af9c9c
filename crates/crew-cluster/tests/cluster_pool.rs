//! `Pool<W>` on the cluster, through crew's backend seam, against a real
//! nats-server and nodes in this process or in child processes: what crew's
//! conformance scenarios (`tests/conformance.rs`) do not cover, a node in a
//! child process, a poison task, a pool built before its nodes start.

mod common;

use std::time::{Duration, Instant};

use common::{cluster, server, wait_until, Chaos, ChildNode, Job};
use crew::backend::BackendKind;
use crew::Pool;
use crew_cluster::{Node, PoolBuilderExt};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn results_errors_panics_and_timeouts() {
    let server = server();
    let cluster = cluster(&server, "pool");
    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(2)).unwrap();
    let pool = Pool::<Chaos>::builder()
        .cluster(cluster)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(pool.backend_kind(), BackendKind::Other("cluster"));

    let doubled: Vec<_> = (0..20)
        .map(|n| pool.submit(Job::Double(n)).unwrap())
        .collect();
    let failed = pool.submit(Job::Fail("no".into())).unwrap();
    let panicked = pool.submit(Job::Panic("boom".into())).unwrap();
    // The pool's default timeout applies on the node.
    let spun = pool.submit(Job::Spin).unwrap();
    for (n, task) in doubled.into_iter().enumerate() {
        assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 2 * n as u64);
    }
    let e = failed.join_timeout(LIMIT).unwrap().unwrap_err();
    assert_eq!(e.user_error().map(String::as_str), Some("no"));
    let e = panicked.join_timeout(LIMIT).unwrap().unwrap_err();
    assert_eq!(e.panic_message(), Some("boom"));
    let e = spun.join_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.is_timeout(), "{e}");

    let ordered: Vec<u64> = pool
        .map((0..10).map(Job::Double))
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ordered, (0..10).map(|n| 2 * n).collect::<Vec<_>>());

    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.submitted, 33, "{stats:?}");
    assert_eq!(stats.completed, 30);
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.panicked, 1);
    assert_eq!(stats.timed_out, 1);
    assert_eq!(stats.workers, 2, "the node's two workers: {stats:?}");
    pool.shutdown();
}

#[test]
fn a_handle_awaits_and_cancels() {
    let server = server();
    // A long lease: a task that spins until cancelled must not be redelivered
    // because a loaded machine delayed a renewal.
    let cluster = cluster(&server, "pool-cancel").ack_wait(Duration::from_secs(10));
    let pool = Pool::<Chaos>::builder()
        .cluster(cluster.clone())
        .build()
        .unwrap();

    // No node yet: the task waits in the stream, and a cancel takes it out.
    let queued = pool.submit(Job::Double(1)).unwrap();
    assert!(queued.cancel());
    let e = queued.join_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    let client = cluster.client::<Chaos>().unwrap();
    wait_until(LIMIT, "the cancelled task to leave the stream", || {
        client.queued().unwrap() == 0
    });

    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    // A running task's cancel reaches its node: the one worker is free again.
    let spinning = pool.submit(Job::Spin).unwrap();
    wait_until(LIMIT, "the task to run", || {
        client.nodes().unwrap().iter().any(|n| n.busy == 1)
    });
    assert!(spinning.cancel());
    let next = pool.submit(Job::Double(21)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = runtime.block_on(async { tokio::time::timeout(LIMIT, next).await });
    assert_eq!(out.unwrap().unwrap(), 42);
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 2);
    assert_eq!(stats.completed, 1);
}

#[test]
fn shutdown_waits_terminate_cancels_and_submit_after_is_closed() {
    let server = server();
    let cluster = cluster(&server, "pool-close");
    let pool = Pool::<Chaos>::builder()
        .cluster(cluster.clone())
        .build()
        .unwrap();
    // The nodes size their own pools: the client's pool cannot be resized.
    let resize = pool.resize(3).unwrap_err();
    assert!(resize.is_unsupported(), "{resize:?}");
    let queued: Vec<_> = (0..5)
        .map(|n| pool.submit(Job::Double(n)).unwrap())
        .collect();
    // Nothing runs them: a shutdown with a deadline terminates what is left.
    let started = Instant::now();
    let e = pool
        .shutdown_timeout(Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(e.still_running(), 5);
    assert!(started.elapsed() < LIMIT);
    // Never started: closed, as a terminated pool's queued tasks are.
    for task in queued {
        let e = task.join_timeout(LIMIT).unwrap().unwrap_err();
        assert!(e.is_closed(), "{e}");
    }
    let refused = pool.submit(Job::Double(9)).unwrap_err();
    assert!(refused.is_closed());
    assert!(matches!(refused.into_inner(), Job::Double(9)));

    // A graceful shutdown waits for queued work to run.
    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(2)).unwrap();
    let pool = Pool::<Chaos>::builder().cluster(cluster).build().unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|n| pool.submit(Job::Double(n)).unwrap())
        .collect();
    pool.shutdown();
    for (n, task) in tasks.into_iter().enumerate() {
        assert!(task.is_finished());
        assert_eq!(task.join().unwrap(), 2 * n as u64);
    }
}

#[test]
fn a_poison_task_fails_as_a_crash() {
    let server = server();
    let cluster = cluster(&server, "pool-poison");
    let pool = Pool::<Chaos>::builder().cluster(cluster).build().unwrap();
    let poison = pool.submit(Job::Abort).unwrap();
    let mut node = ChildNode::start(&server.url(), "pool-poison", 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !poison.is_finished() {
        assert!(Instant::now() < deadline, "the poison task never resolved");
        if node.has_exited() {
            node = ChildNode::start(&server.url(), "pool-poison", 1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = poison.join().unwrap_err();
    assert!(e.is_crash(), "{e}");
    let why = e.crash().unwrap().stderr_tail().join("\n");
    assert!(why.contains("dead-lettered after 3"), "{why}");
    let stats = pool.stats();
    assert_eq!((stats.crashed, stats.dead_letters), (1, 1), "{stats}");
}

/// A pool whose last handle is dropped with tasks in flight still resolves
/// them: its client lives until they have.
#[test]
fn dropping_the_pool_leaves_its_tasks_resolving() {
    let server = server();
    let cluster = cluster(&server, "pool-dropped");
    let pool = Pool::<Chaos>::builder()
        .cluster(cluster.clone())
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|n| pool.submit(Job::Double(n)).unwrap())
        .collect();
    drop(pool);
    // The node comes after the pool is gone.
    let _node = Node::start(cluster, Pool::<Chaos>::builder().workers(2)).unwrap();
    for (n, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 2 * n as u64);
    }
}

/// Two nodes make one pool: their workers have distinct ids (the first node's
/// keep their local ids, the second's are numbered past them), `stats()` has a
/// row for each with its node's pid, merges both nodes' latencies and counts
/// the dead letters; a busy worker of the second node is killed by its id,
/// and its task resolves as killed.
#[test]
fn several_nodes_make_one_pool() {
    let server = server();
    let cluster = cluster(&server, "pool-two").ack_wait(Duration::from_secs(10));
    let _a = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    let _b = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(2)).unwrap();
    let pool = Pool::<Chaos>::builder().cluster(cluster).build().unwrap();
    let events = pool.events();
    wait_until(LIMIT, "three workers", || pool.size() == 3);
    let workers = pool.workers();
    assert_eq!(workers.len(), 3, "{workers:?}");
    let (first, second): (Vec<crew::WorkerId>, Vec<crew::WorkerId>) =
        workers.iter().partition(|w| w.as_u64() < 1 << 32);
    assert!(!first.is_empty(), "the first node's ids: {workers:?}");
    assert!(!second.is_empty(), "ids past the first node's: {workers:?}");

    let tasks: Vec<_> = (0..20)
        .map(|n| pool.submit(Job::Double(n)).unwrap())
        .collect();
    for (n, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 2 * n as u64);
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    let stats = pool.stats();
    assert_eq!(stats.workers, 3, "{stats}");
    assert_eq!(stats.completed, 20, "{stats}");
    assert_eq!(stats.run.count, 20, "both nodes' runs, merged: {stats}");
    assert_eq!(stats.wait.count, 20, "{stats}");
    let done: u64 = stats.per_worker.iter().map(|w| w.tasks_done).sum();
    assert_eq!(done, 20, "{stats}");
    assert!(
        stats
            .per_worker
            .iter()
            .all(|w| w.pid == Some(std::process::id())),
        "each row has its node's pid: {stats}"
    );

    // A worker of the second node, busy, killed by the pool's id for it.
    let spinning: Vec<_> = (0..3).map(|_| pool.submit(Job::Spin).unwrap()).collect();
    wait_until(LIMIT, "every worker busy", || pool.stats().busy == 3);
    let victim = second[0];
    let on_victim = spinning
        .iter()
        .position(|t| t.worker() == Some(victim))
        .expect("a task runs on every worker");
    assert!(pool.kill_worker(victim));
    assert!(spinning[on_victim].is_finished(), "resolved at once");
    for (i, task) in spinning.into_iter().enumerate() {
        if i == on_victim {
            let e = task.join_timeout(LIMIT).unwrap().unwrap_err();
            assert!(e.is_killed(), "{e}");
        } else {
            assert!(task.cancel());
        }
    }
    let seen = recv_until(
        &events,
        |e| matches!(e, crew::Event::WorkerExited { worker, .. } if *worker == victim),
    );
    assert!(seen, "the victim's exit reaches the pool's events");
    wait_until(LIMIT, "a replacement on the second node", || {
        let now = pool.workers();
        now.len() == 3 && !now.contains(&victim)
    });
    pool.shutdown();
}

/// Receives events until one matches; false after [`LIMIT`].
fn recv_until(events: &crew::Events, wanted: impl Fn(&crew::Event) -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(e) if wanted(&e) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}
