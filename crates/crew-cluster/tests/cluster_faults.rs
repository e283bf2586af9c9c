//! Faults against a real nats-server: a node killed with SIGKILL mid-task, a
//! poison task that kills every node it reaches, and broker restarts with tasks
//! queued and running. Nodes are this test binary re-run as a node process.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{cluster, markers, server, wait_until, Chaos, ChildNode, Job};
use crew::Pool;
use crew_cluster::Node;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn node_killed_mid_task_its_tasks_run_elsewhere_and_resolve_once() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    // The client first: it creates the consumer with the tests' short lease.
    let cluster = cluster(&server, "crash");
    let client = cluster.client::<Chaos>().unwrap();
    let doomed = ChildNode::start(&server.url(), "crash", 2);
    let doomed_pid = doomed.pid();

    let tasks: Vec<_> = (0..12)
        .map(|i| {
            client
                .submit(Job::Hold {
                    dir: dir.path().to_owned(),
                    tag: format!("t{i}"),
                    ms: 400,
                })
                .unwrap()
        })
        .collect();
    // Kill the node while it runs tasks (it has two, holding 400 ms each).
    wait_until(LIMIT, "the first node to start a task", || {
        (0..12).any(|i| markers(dir.path(), &format!("t{i}")).contains(&doomed_pid))
    });
    doomed.kill9();
    let survivor = ChildNode::start(&server.url(), "crash", 2);

    let mut ran_twice = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        let pid = task
            .join_timeout(LIMIT)
            .expect("every task resolves")
            .expect("every task succeeds somewhere");
        let tag = format!("t{i}");
        let started_on: HashSet<u32> = markers(dir.path(), &tag).into_iter().collect();
        assert!(
            started_on.contains(&(pid as u32)),
            "{tag} resolved from a node that ran it"
        );
        if started_on.contains(&doomed_pid) && pid as u32 == survivor.pid() {
            ran_twice += 1;
        }
    }
    assert!(
        ran_twice >= 1,
        "a task the killed node held ran again on the survivor"
    );
    assert_eq!(client.pending(), 0, "nothing left unresolved");
    wait_until(LIMIT, "the stream to drain", || {
        client.queued().unwrap() == 0
    });
    assert_eq!(client.dead_letters().unwrap(), 0);
}

#[test]
fn a_poison_task_is_dead_lettered_after_its_attempts() {
    let server = server();
    let cluster = cluster(&server, "poison");
    let client = cluster.client::<Chaos>().unwrap();
    let poison = client.submit(Job::Abort).unwrap();

    // Keep one node alive: each one the poison reaches dies, and is replaced.
    let mut node = ChildNode::start(&server.url(), "poison", 1);
    let mut deaths = 0;
    let deadline = std::time::Instant::now() + LIMIT;
    let result = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the poison task never resolved"
        );
        if node.has_exited() {
            deaths += 1;
            node = ChildNode::start(&server.url(), "poison", 1);
        }
        if poison.is_finished() {
            break poison.join();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let e = result.unwrap_err();
    assert!(e.is_dead_letter(), "{e}");
    assert_eq!(e.deliveries(), Some(3), "{e}");
    assert_eq!(deaths, 3, "each attempt killed a node");
    assert_eq!(client.dead_letters().unwrap(), 1);
    // The last node lives on and serves.
    let next = client.submit(Job::Double(3)).unwrap();
    assert_eq!(next.join_timeout(LIMIT).unwrap().unwrap(), 6);
    assert!(!node.has_exited());
}

#[test]
fn broker_restarts_lose_nothing() {
    let mut server = server();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&server, "restart");
    let client = cluster.client::<Chaos>().unwrap();

    // Tasks queued while the broker restarts survive in its store.
    let queued: Vec<_> = (0..20)
        .map(|n| client.submit(Job::Double(n)).unwrap())
        .collect();
    server.restart().unwrap();
    wait_until(LIMIT, "the client to see the queued tasks again", || {
        client.queued().ok() == Some(20)
    });
    let node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(2)).unwrap();
    for (n, task) in queued.into_iter().enumerate() {
        assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 2 * n as u64);
    }

    // Tasks running while the broker restarts: their results reach the client
    // after it (from the bucket if the inbox message was lost).
    let running: Vec<_> = (0..2)
        .map(|i| {
            client
                .submit(Job::Hold {
                    dir: dir.path().to_owned(),
                    tag: format!("r{i}"),
                    ms: 500,
                })
                .unwrap()
        })
        .collect();
    wait_until(LIMIT, "both tasks to start", || {
        (0..2).all(|i| !markers(dir.path(), &format!("r{i}")).is_empty())
    });
    server.restart().unwrap();
    for task in running {
        let pid = task.join_timeout(LIMIT).unwrap().unwrap();
        assert_eq!(pid as u32, std::process::id());
    }

    // The node survived both restarts: it takes new work.
    let after: Vec<_> = (0..5)
        .map(|n| client.submit(Job::Double(n)).unwrap())
        .collect();
    for (n, task) in after.into_iter().enumerate() {
        assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 2 * n as u64);
    }
    assert_eq!(client.pending(), 0);
    node.shutdown();
}

/// In a child started by `a_client_killed_mid_submission_leaves_nothing_stuck`:
/// a client that submits tasks until it is killed, writing how many the broker
/// took to a file. In the test run itself it returns at once.
#[test]
fn client_entry() {
    let (Some(url), Some(count)) = (
        std::env::var_os("CREW_TEST_CLIENT_URL"),
        std::env::var_os("CREW_TEST_CLIENT_COUNT"),
    ) else {
        return;
    };
    let cluster =
        crew_cluster::Cluster::connect(url.to_string_lossy().into_owned()).pool_name("orphans");
    let client = cluster.client::<Chaos>().expect("the client connects");
    let mut handles = Vec::new();
    for n in 0.. {
        handles.push(client.submit(Job::Double(n)).expect("the broker takes it"));
        std::fs::write(&count, (n + 1).to_string()).expect("write the count");
    }
}

/// Kills its process on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_killed_mid_submission_leaves_nothing_stuck() {
    let server = server();
    // The observer creates the pool with the tests' settings.
    let cluster = cluster(&server, "orphans");
    let observer = cluster.client::<Chaos>().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let submitted = || {
        std::fs::read_to_string(&count)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let client = Reaped(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "client_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env("CREW_TEST_CLIENT_URL", server.url())
            .env("CREW_TEST_CLIENT_COUNT", &count)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(LIMIT, "the client to submit 50 tasks", || submitted() >= 50);
    drop(client); // SIGKILL, mid-submission.
    let queued = observer.queued().unwrap();
    assert!(
        queued >= 50,
        "the broker kept what the client submitted: {queued}"
    );

    // A node runs every orphaned task; nothing stays in the stream, and each
    // result is there to be collected by id.
    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(2)).unwrap();
    wait_until(LIMIT, "the stream to drain", || {
        observer.queued().unwrap() == 0
    });
    // At least what the stream held when the client died: a publish in flight
    // at the kill may have been stored just after that count.
    wait_until(LIMIT, "the node to report every task", || {
        observer.stats().unwrap().done >= queued
    });
}

#[test]
fn a_node_started_before_its_broker_waits_for_it() {
    use std::io::{BufRead, BufReader};

    let mut server = server();
    let cluster = cluster(&server, "early");
    let client = cluster.client::<Chaos>().unwrap();
    server.kill();

    // The node comes up while the broker is down (this binary as a node,
    // through `bootstrap` and `serve`), and says that it waits.
    let mut node = Reaped(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "common::cluster_node_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(crew_cluster::ENV_URL, server.url())
            .env(crew_cluster::ENV_POOL, "early")
            .env(crew_cluster::ENV_WORKERS, "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = node.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let waiting = rx
        .recv_timeout(LIMIT)
        .expect("the node says it waits for the broker");
    assert!(waiting.contains("trying again"), "{waiting}");

    server.start_again().unwrap();
    let task = client.submit(Job::Double(50)).unwrap();
    assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 100);
    assert!(
        matches!(node.0.try_wait(), Ok(None)),
        "the node still serves"
    );
}
