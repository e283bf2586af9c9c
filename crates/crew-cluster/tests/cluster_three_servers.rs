//! A three-server NATS cluster on loopback with the pool's streams and buckets
//! replicated three times: one server is killed (SIGKILL) and work goes on;
//! tasks submitted before and after the kill all resolve.

mod common;

use std::time::{Duration, Instant};

use common::{Chaos, Job};
use crew::Pool;
use crew_cluster::testing::NatsCluster;
use crew_cluster::{Cluster, Node, PoolBuilderExt};

const LIMIT: Duration = Duration::from_secs(60);

/// Retries `attempt` until it succeeds or `LIMIT` passes: a new JetStream
/// cluster elects its leaders after its servers are up.
fn retry<T, E: std::fmt::Display>(what: &str, mut attempt: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[test]
fn one_server_of_three_killed_work_goes_on() {
    let mut servers =
        NatsCluster::start(3).unwrap_or_else(|e| panic!("the cluster tests need nats-server: {e}"));
    let cluster = Cluster::connect(servers.urls())
        .pool_name("ha")
        .replicas(3)
        .ack_wait(Duration::from_secs(2))
        .max_attempts(3)
        .broker_timeout(Duration::from_secs(3))
        .sweep_interval(Duration::from_millis(500))
        .heartbeat(Duration::from_millis(500));
    let pool = retry("a pool on the new cluster", || {
        Pool::<Chaos>::builder().cluster(cluster.clone()).build()
    });
    let _node = retry("a node on the new cluster", || {
        Node::start(cluster.clone(), Pool::<Chaos>::builder().workers(2))
    });

    let before: Vec<_> = (0..20)
        .map(|n| pool.submit(Job::Double(n)).unwrap())
        .collect();
    for (n, task) in before.into_iter().enumerate() {
        assert_eq!(task.join_timeout(LIMIT).unwrap().unwrap(), 2 * n as u64);
    }

    // Tasks in flight while a server dies, and tasks submitted after.
    let during: Vec<_> = (0..20)
        .map(|n| pool.submit(Job::Double(n)).unwrap())
        .collect();
    servers.server(0).kill();
    let after: Vec<_> = (20..40)
        .map(|n| retry("a submit after the kill", || pool.submit(Job::Double(n))))
        .collect();
    for (n, task) in (0..).zip(during.into_iter().chain(after)) {
        let out = task.join_timeout(LIMIT).expect("every task resolves");
        assert_eq!(out.unwrap(), 2 * n as u64);
    }
    assert!(pool.wait_idle_timeout(LIMIT));
    assert_eq!(pool.stats().completed, 60);
}
