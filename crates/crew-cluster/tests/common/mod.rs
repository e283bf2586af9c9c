//! What the cluster tests share: a worker with every outcome on demand, nodes as
//! child processes (this test binary re-run as a node), and waiting with a
//! deadline.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crew::{Context, StartError, Worker};
use crew_cluster::testing::NatsServer;
use crew_cluster::Cluster;
use serde::{Deserialize, Serialize};

/// What a [`Chaos`] task does.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Job {
    /// Returns `2 * n`.
    Double(u64),
    /// Returns the user error.
    Fail(String),
    /// Panics with the message.
    Panic(String),
    /// Writes `dir/tag.<pid>` (a marker the test waits for), sleeps `ms`, then
    /// returns the pid of the node that ran it.
    Hold { dir: PathBuf, tag: String, ms: u64 },
    /// Kills the whole node process (a poison task on a thread node).
    Abort,
    /// Loops until cancelled, then returns 0.
    Spin,
}

/// A worker whose every task says how it ends.
#[derive(Debug)]
pub struct Chaos;

impl Worker for Chaos {
    type Input = Job;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Chaos)
    }

    fn run(&mut self, job: Job, ctx: &mut Context<'_>) -> Result<u64, String> {
        match job {
            Job::Double(n) => Ok(n * 2),
            Job::Fail(e) => Err(e),
            Job::Panic(m) => panic!("{m}"),
            Job::Hold { dir, tag, ms } => {
                let pid = std::process::id();
                std::fs::write(dir.join(format!("{tag}.{pid}")), b"").map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_millis(ms));
                Ok(u64::from(pid))
            }
            Job::Abort => std::process::abort(),
            Job::Spin => {
                while !ctx.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(0)
            }
        }
    }
}

/// The test that, in a child started by [`ChildNode::start`], serves [`Chaos`]
/// as a node; in the test run itself it returns at once.
#[test]
fn cluster_node_entry() {
    if std::env::var_os(crew_cluster::ENV_URL).is_some() {
        // The tests' panics are on purpose; their messages reach the client.
        std::panic::set_hook(Box::new(|_| {}));
    }
    crew_cluster::bootstrap::<Chaos>();
}

/// The arguments that make this test binary run only [`cluster_node_entry`].
const NODE_ENTRY: [&str; 5] = [
    "common::cluster_node_entry",
    "--exact",
    "--nocapture",
    "--test-threads=1",
    "-q",
];

/// A node in a child process; killed (SIGKILL) and reaped on drop.
pub struct ChildNode {
    child: Child,
}

impl ChildNode {
    /// Starts a node of `workers` threads serving pool `pool` at `url`.
    pub fn start(url: &str, pool: &str, workers: usize) -> ChildNode {
        let child = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args(NODE_ENTRY)
            .env(crew_cluster::ENV_URL, url)
            .env(crew_cluster::ENV_POOL, pool)
            .env(crew_cluster::ENV_WORKERS, workers.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a node process");
        ChildNode { child }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(mut self) {
        self.kill_now();
    }

    /// Whether it has exited (and reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A server for one test; a test that cannot start it fails, saying how to
/// install it.
pub fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|e| panic!("the cluster tests need nats-server: {e}"))
}

/// The cluster settings tests use: a short lease so a dead node's tasks come
/// back fast, and a short sweep.
pub fn cluster(server: &NatsServer, pool: &str) -> Cluster {
    Cluster::connect(server.url())
        .pool_name(pool)
        .ack_wait(Duration::from_secs(2))
        .max_attempts(3)
        .broker_timeout(Duration::from_secs(2))
        .sweep_interval(Duration::from_millis(500))
        .heartbeat(Duration::from_millis(500))
}

/// Waits until `condition` holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids that wrote a marker for `tag` in `dir`.
pub fn markers(dir: &Path, tag: &str) -> Vec<u32> {
    let prefix = format!("{tag}.");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix(&prefix).map(str::to_owned))
                })
                .filter_map(|pid| pid.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
