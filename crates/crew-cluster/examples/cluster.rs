//! A client and two worker nodes on one machine, all started by this example:
//! a nats-server with JetStream on loopback (in a temporary directory), two
//! node processes (this same program, re-run as nodes), and a `Pool` whose
//! builder has one more line than a thread pool's.
//!
//! `cargo run -p crew-cluster --example cluster` (needs `nats-server`:
//! `apt-get install nats-server`).
//!
//! On real hosts, each node is a program that calls `crew_cluster::serve` (or
//! `bootstrap`, as here) with the broker's URL, and the client connects to the
//! same URL.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crew::{Context, Pool, StartError, Worker};
use crew_cluster::testing::NatsServer;
use crew_cluster::{Cluster, PoolBuilderExt};

/// Counts the primes below a number; reports which node process did it.
struct Primes;

impl Worker for Primes {
    type Input = u64;
    type Output = (u64, u32);
    type Error = String;
    type Message = ();

    fn start(_: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Primes)
    }

    fn run(&mut self, below: u64, _: &mut Context<'_>) -> Result<(u64, u32), String> {
        if below > 10_000_000 {
            return Err(format!("{below} is too large for an example"));
        }
        let count = (2..below)
            .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
            .count() as u64;
        Ok((count, std::process::id()))
    }
}

/// A node process, killed and reaped when dropped.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Started as a node (CREW_CLUSTER_URL set): serve and never return.
    crew_cluster::bootstrap::<Primes>();

    let server = NatsServer::start()?;
    println!("nats-server with JetStream on {}", server.url());
    let cluster = Cluster::connect(server.url())
        .pool_name("primes")
        .ack_wait(Duration::from_secs(5));

    // The client first, so the pool's stream and consumer get its settings.
    let pool = Pool::<Primes>::builder().cluster(cluster).build()?;

    let nodes: Vec<NodeProcess> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe()?)
                .env(crew_cluster::ENV_URL, server.url())
                .env(crew_cluster::ENV_POOL, "primes")
                .env(crew_cluster::ENV_WORKERS, "2")
                .stdin(Stdio::null())
                .spawn()
                .map(NodeProcess)
        })
        .collect::<Result<_, _>>()?;
    println!(
        "2 nodes of 2 workers: pids {:?}",
        nodes.iter().map(|n| n.0.id()).collect::<Vec<_>>()
    );

    let tasks: Vec<_> = (1..=8)
        .map(|i| pool.submit(i * 20_000))
        .collect::<Result<_, _>>()?;
    for (i, task) in (1..=8).zip(tasks) {
        let (count, pid) = task.join().map_err(|e| e.to_string())?;
        println!(
            "{:>7} has {count:>6} primes below it (node pid {pid})",
            i * 20_000
        );
    }
    match pool.submit(u64::MAX)?.join() {
        Err(e) => println!(
            "a typed error crosses the cluster too: {:?}",
            e.user_error()
        ),
        Ok(_) => unreachable!("the worker refuses it"),
    }
    let stats = pool.stats();
    println!(
        "submitted {}, completed {}, failed {}; {} workers on the nodes",
        stats.submitted, stats.completed, stats.failed, stats.workers
    );
    pool.shutdown();
    drop(nodes);
    Ok(())
}
