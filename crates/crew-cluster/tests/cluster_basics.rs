//! Results, typed errors and panics round-trip through a real nats-server and a
//! node in this process; status by id; cancel of a queued task; bad bytes on
//! the task subject are dead-lettered and the node keeps serving.

mod common;

use std::time::Duration;

use common::{cluster, server, wait_until, Chaos, Job};
use crew::Pool;
use crew_cluster::Node;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn results_errors_and_panics_round_trip() {
    let server = server();
    let cluster = cluster(&server, "basics");
    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(2)).unwrap();
    let client = cluster.client::<Chaos>().unwrap();

    let doubled: Vec<_> = (0..50)
        .map(|n| client.submit(Job::Double(n)).unwrap())
        .collect();
    let failed = client.submit(Job::Fail("no such image".into())).unwrap();
    let panicked = client.submit(Job::Panic("bad pixel".into())).unwrap();
    let slow = client
        .task(Job::Spin)
        .timeout(Duration::from_millis(200))
        .submit()
        .unwrap();

    for (n, task) in doubled.into_iter().enumerate() {
        let out = task.join_timeout(LIMIT).expect("a result in time");
        assert_eq!(out.unwrap(), 2 * n as u64);
    }
    let e = failed.join_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.is_user(), "{e}");
    assert_eq!(e.user_error().map(String::as_str), Some("no such image"));
    let e = panicked.join_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.is_panic(), "{e}");
    assert_eq!(e.panic_message(), Some("bad pixel"));
    let e = slow.join_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(client.pending(), 0);

    // The node's heartbeat counts each outcome.
    wait_until(LIMIT, "the node to report 53 tasks", || {
        client.stats().unwrap().done == 53
    });
    let stats = client.stats().unwrap();
    assert_eq!(
        [
            stats.succeeded,
            stats.user_errors,
            stats.panicked,
            stats.timed_out,
            stats.cancelled,
            stats.other_failures
        ],
        [50, 1, 1, 1, 0, 0],
        "{stats:?}"
    );
}

#[test]
fn a_handle_is_a_future() {
    let server = server();
    let cluster = cluster(&server, "futures");
    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    let client = cluster.client::<Chaos>().unwrap();
    let task = client.submit(Job::Double(4)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = runtime.block_on(async { tokio::time::timeout(LIMIT, task).await });
    assert_eq!(out.expect("a result in time").unwrap(), 8);
}

#[test]
fn results_are_kept_by_id() {
    let server = server();
    let cluster = cluster(&server, "status");
    let client = cluster.client::<Chaos>().unwrap();
    let task = client.submit(Job::Double(21)).unwrap();
    let id = task.id().to_owned();
    // No node yet: queued, no result.
    assert!(client.result_of(&id).unwrap().is_none());
    assert_eq!(client.queued().unwrap(), 1);
    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 42);

    // Another client (as after a restart) reads it by id.
    // (The node writes the bucket just after the inbox, before its ack.)
    let other = cluster.client::<Chaos>().unwrap();
    wait_until(LIMIT, "the result in the bucket", || {
        other.result_of(&id).unwrap().is_some()
    });
    assert_eq!(other.result_of(&id).unwrap().unwrap().unwrap(), 42);
    assert!(other.result_of("no-such-task.1").unwrap().is_none());
    wait_until(LIMIT, "the stream to drain", || {
        client.queued().unwrap() == 0
    });
}

#[test]
fn cancel_of_a_queued_task() {
    let server = server();
    let cluster = cluster(&server, "cancel");
    let client = cluster.client::<Chaos>().unwrap();
    let queued = client.submit(Job::Double(1)).unwrap();
    let kept = client.submit(Job::Double(2)).unwrap();
    assert!(queued.cancel());
    assert!(!queued.cancel(), "a second cancel finds nothing to cancel");
    let e = queued.join_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert_eq!(
        client.queued().unwrap(),
        1,
        "the cancelled task left the stream"
    );

    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    assert_eq!(kept.join_timeout(LIMIT).unwrap().unwrap(), 4);
}

#[test]
fn cancel_of_a_running_task() {
    let server = server();
    // A long lease: a task that spins until cancelled must not be redelivered
    // because a loaded machine delayed a renewal.
    let cluster = cluster(&server, "cancel-running").ack_wait(Duration::from_secs(10));
    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    let client = cluster.client::<Chaos>().unwrap();
    let spinning = client.submit(Job::Spin).unwrap();
    wait_until(LIMIT, "the task to start", || {
        client.nodes().unwrap().iter().any(|n| n.busy == 1)
    });
    assert!(spinning.cancel());
    let e = spinning.join_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    // The node stopped it: its one worker is free for the next task.
    let next = client.submit(Job::Double(5)).unwrap();
    assert_eq!(next.join_timeout(LIMIT).unwrap().unwrap(), 10);
}

/// A running task whose message leaves the stream without a cancel message
/// reaching its node (a client killed between the two, a cancel lost to a
/// reconnection, or another node that ran it after this one lost its lease)
/// is cancelled at the node's next lease renewal: its worker is not lost to
/// it. The cancel's result does not replace a result a run stored.
#[test]
fn a_withdrawn_task_stops_without_its_cancel_message() {
    let server = server();
    // Renewals (and the check) every second.
    let cluster = cluster(&server, "withdrawn").ack_wait(Duration::from_secs(3));
    let _node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    let client = cluster.client::<Chaos>().unwrap();
    let first = client.submit(Job::Double(7)).unwrap();
    let first_id = first.id().to_owned();
    assert_eq!(first.join_timeout(LIMIT).unwrap().unwrap(), 14);
    wait_until(LIMIT, "the first result in the bucket", || {
        client.result_of(&first_id).unwrap().is_some()
    });
    let spinning = client.submit(Job::Spin).unwrap();
    let spinning_id = spinning.id().to_owned();
    wait_until(LIMIT, "the task to start", || {
        client.nodes().unwrap().iter().any(|n| n.busy == 1)
    });
    // As a plain JetStream client: a result for the spinning task (as another
    // node that ran it would have stored), then the delete alone, with no
    // cancel message.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let results = js.get_key_value("crew_withdrawn_results").await.unwrap();
        let stored = results.get(&first_id).await.unwrap().unwrap();
        results.put(&spinning_id, stored).await.unwrap();
        let mut stream = js.get_stream("CREW_withdrawn").await.unwrap();
        let sequence = stream.info().await.unwrap().state.last_sequence;
        assert!(stream.delete_message(sequence).await.unwrap());
    });
    // The handle resolves from whichever comes first: the stored result (the
    // client's sweep) or the node's cancel.
    match spinning.join_timeout(LIMIT).unwrap() {
        Ok(out) => assert_eq!(out, 14),
        Err(e) => assert!(e.is_cancelled(), "{e}"),
    }
    // The node stopped it (it spins until cancelled): its one worker takes
    // the next task.
    let next = client.submit(Job::Double(6)).unwrap();
    assert_eq!(next.join_timeout(LIMIT).unwrap().unwrap(), 12);
    // The next task ran, so the cancelled one's delivery is over.
    let kept = client.result_of(&spinning_id).unwrap().unwrap();
    assert_eq!(kept.unwrap(), 14, "the stored result stays");
}

/// Listing the nodes ends even while they write their heartbeats (a listing
/// that followed the writes never returned: issue 13).
#[test]
fn listing_nodes_ends_while_they_beat() {
    let server = server();
    // A heartbeat every 50 ms: most listings overlap a write to the bucket.
    let cluster = cluster(&server, "beats").heartbeat(Duration::from_millis(50));
    let node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    let client = cluster.client::<Chaos>().unwrap();
    wait_until(LIMIT, "the node's first heartbeat", || {
        !client.nodes().unwrap().is_empty()
    });
    // The listings run on a thread of their own, so a listing that never ends
    // fails this test instead of hanging it.
    const LISTINGS: usize = 200;
    let (tx, rx) = std::sync::mpsc::channel();
    let lister = client.clone();
    std::thread::spawn(move || {
        for _ in 0..LISTINGS {
            if tx.send(lister.nodes()).is_err() {
                return;
            }
        }
    });
    let mut seen = 0;
    for _ in 0..LISTINGS {
        let rows = rx
            .recv_timeout(LIMIT)
            .expect("a listing of the nodes ends")
            .unwrap();
        // The row may be between its expiry and the next beat on a loaded
        // machine; it is never another node's, nor there twice.
        assert!(
            rows.len() <= 1 && rows.iter().all(|r| r.id == node.id()),
            "{rows:?}"
        );
        seen += rows.len();
    }
    assert!(seen > 0, "the node was listed");
}

#[test]
fn bad_bytes_on_the_task_subject_are_dead_lettered() {
    let server = server();
    let cluster = cluster(&server, "junk");
    let node = Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(1)).unwrap();
    let client = cluster.client::<Chaos>().unwrap();

    // Raw publishes from a plain NATS client, as any program on the bus could.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let nats = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(nats);
        for junk in [&b""[..], b"hello", b"CW\x01\x01\xff\xff\xff\xff\xff\xff"] {
            js.publish("crew.junk.task.normal", junk.to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    wait_until(LIMIT, "three dead letters", || {
        client.dead_letters().unwrap() == 3
    });
    // The node still serves.
    let task = client.submit(Job::Double(8)).unwrap();
    assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 16);
    wait_until(LIMIT, "the stream to drain", || {
        client.queued().unwrap() == 0
    });
    let rows = client.nodes().unwrap();
    assert!(
        rows.iter().any(|r| r.id == node.id()),
        "the node's heartbeat: {rows:?}"
    );
}

#[test]
fn a_bad_pool_name_is_refused() {
    let server = server();
    let e = cluster(&server, "no.dots").client::<Chaos>().unwrap_err();
    assert!(e.to_string().contains("pool name"), "{e}");
}
