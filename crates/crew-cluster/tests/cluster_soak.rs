//! 10,000 tasks across three node processes with seeded faults: user errors,
//! panics, timeouts, cancels, poison tasks that kill their node, and nodes
//! killed with SIGKILL mid-run. Every handle resolves once, with the outcome its
//! task asked for; nothing is left in the stream; the stats add up.

mod common;

use std::time::{Duration, Instant};

use common::{cluster, server, Chaos, ChildNode, Job};

const TASKS: usize = 10_000;
const NODES: usize = 3;
const LIMIT: Duration = Duration::from_secs(240);

/// xorshift64*: a seeded sequence, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Doubled(u64),
    User,
    Panic,
    Timeout,
    DeadLetter,
    /// Cancelled if the cancel won, else its output.
    CancelledOr(u64),
}

#[test]
fn ten_thousand_tasks_three_nodes_seeded_faults() {
    let seed = std::env::var("CREW_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de_u64);
    eprintln!("seed {seed} (set CREW_SOAK_SEED to replay)");
    let mut rng = Rng(seed | 1);

    let server = server();
    let cluster = cluster(&server, "soak");
    let client = cluster.client::<Chaos>().unwrap();
    let mut nodes: Vec<ChildNode> = (0..NODES)
        .map(|_| ChildNode::start(&server.url(), "soak", 2))
        .collect();
    let mut node_kills = 0;

    let mut tasks = Vec::with_capacity(TASKS);
    let mut expected = Vec::with_capacity(TASKS);
    let mut aborts = 0;
    for i in 0..TASKS {
        let roll = rng.next() % 1000;
        let n = i as u64;
        let (task, expect) = match roll {
            0..=39 => (client.submit(Job::Fail(format!("e{i}"))), Expect::User),
            40..=69 => (client.submit(Job::Panic(format!("p{i}"))), Expect::Panic),
            70..=79 => (
                client
                    .task(Job::Spin)
                    .timeout(Duration::from_millis(20))
                    .submit(),
                Expect::Timeout,
            ),
            80 if aborts < 2 => {
                aborts += 1;
                (client.submit(Job::Abort), Expect::DeadLetter)
            }
            81..=120 => {
                let task = client.submit(Job::Double(n)).unwrap();
                let _ = task.cancel();
                (Ok(task), Expect::CancelledOr(2 * n))
            }
            _ => (client.submit(Job::Double(n)), Expect::Doubled(2 * n)),
        };
        tasks.push(task.expect("the broker takes every task"));
        expected.push(expect);
        // Kill a node now and then, mid-run, and start another in its place.
        if i > 0 && i % 3_000 == 0 {
            let victim = (rng.next() % NODES as u64) as usize;
            nodes.remove(victim).kill9();
            nodes.push(ChildNode::start(&server.url(), "soak", 2));
            node_kills += 1;
        }
    }

    // Replace nodes the poison tasks kill until every task has resolved.
    let deadline = Instant::now() + LIMIT;
    let mut poisoned = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "{} tasks unresolved",
            tasks.iter().filter(|t| !t.is_finished()).count()
        );
        for node in nodes.iter_mut() {
            if node.has_exited() {
                poisoned += 1;
                *node = ChildNode::start(&server.url(), "soak", 2);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut cancelled = 0;
    for (i, (task, expect)) in tasks.into_iter().zip(expected).enumerate() {
        let result = task.join();
        let ok = match (expect, &result) {
            (Expect::Doubled(v), Ok(out)) => *out == v,
            (Expect::User, Err(e)) => e.user_error() == Some(&format!("e{i}")),
            (Expect::Panic, Err(e)) => e.panic_message() == Some(format!("p{i}").as_str()),
            (Expect::Timeout, Err(e)) => e.is_timeout(),
            // It ran (and killed its node) exactly its three attempts.
            (Expect::DeadLetter, Err(e)) => e.is_dead_letter() && e.deliveries() == Some(3),
            (Expect::CancelledOr(_), Err(e)) if e.is_cancelled() => {
                cancelled += 1;
                true
            }
            (Expect::CancelledOr(v), Ok(out)) => *out == v,
            _ => false,
        };
        assert!(ok, "task {i}: expected {expect:?}, got {result:?}");
    }
    assert!(cancelled > 0, "some cancels won");
    // Each run of a poison task kills its node; two can die together on one.
    assert!(
        (3..=3 * aborts).contains(&poisoned),
        "{poisoned} nodes killed by {aborts} poison tasks of 3 attempts"
    );

    let stats = client.stats().unwrap();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.dead_letters, aborts as u64);
    common::wait_until(Duration::from_secs(30), "the stream to drain", || {
        client.queued().unwrap() == 0
    });
    eprintln!(
        "{TASKS} tasks, {node_kills} nodes killed, {poisoned} killed by poison, {cancelled} cancelled; \
         live nodes: {} done, {} redeliveries",
        stats.done, stats.redeliveries
    );
}
