//! crew's conformance suite on the cluster backend: the scenarios of
//! `crates/crew/tests/scenarios/` (the same file crew's own
//! `tests/conformance.rs` runs on threads, processes and a loopback engine), each
//! run as `cluster::<scenario>` against a real nats-server and a node in this
//! process (`cargo test -p crew-cluster --test conformance`).
//!
//! Each scenario's pool gets its own pool name (so its own stream, consumers
//! and buckets) and its own node, whose local pool has the scenario's worker
//! count; one nats-server serves every scenario that runs at the same time
//! (started by the first, killed when the last ends). A scenario that cannot
//! run on a cluster is in `CLUSTER_SKIPS` (in the scenarios file) with its
//! reason, printed when it is skipped and named in `src/engine.rs`'s module
//! docs ([`every_skip_is_documented`]).
//!
//! Every scenario runs on a thread of its own under a deadline: one that does
//! not end in time fails, and the server is killed so nothing waits on it.

#[path = "../../crew/tests/scenarios/mod.rs"]
#[macro_use]
mod scenarios;

use std::cell::RefCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crew::{Pool, PoolBuilder, RemoteWorker};
use crew_cluster::testing::NatsServer;
use crew_cluster::{Cluster, Node, PoolBuilderExt};
use scenarios::{Backend, CLUSTER_SKIPS};

/// The most a scenario may take, its node's shutdown included. Each of its
/// waits is bounded by far less (`scenarios::LIMIT`); this is the backstop.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

/// The server the scenarios share; `Weak`, so the last scenario to end drops
/// (kills) it, and a later one starts another.
static SERVER: Mutex<Weak<Server>> = Mutex::new(Weak::new());

struct Server {
    url: String,
    /// Locked only to kill it (a scenario past its deadline).
    process: Mutex<NatsServer>,
}

impl Server {
    fn shared() -> Arc<Server> {
        let mut slot = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = slot.upgrade() {
            return server;
        }
        let process = NatsServer::start()
            .unwrap_or_else(|e| panic!("the cluster tests need nats-server: {e}"));
        let server = Arc::new(Server {
            url: process.url(),
            process: Mutex::new(process),
        });
        *slot = Arc::downgrade(&server);
        server
    }

    fn kill(&self) {
        self.process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kill();
    }
}

/// What one scenario has started: the server it uses and its nodes, shut
/// down when it ends (whether it passed or not).
struct Env {
    server: Arc<Server>,
    nodes: Vec<Node>,
}

thread_local! {
    static ENV: RefCell<Option<Env>> = const { RefCell::new(None) };
}

/// Pool names are unique in this process (the server is shared).
static NEXT_POOL: AtomicUsize = AtomicUsize::new(0);

/// The cluster settings of a scenario's pool: a lease long enough that a held
/// task is never redelivered on a loaded machine, and a short sweep.
fn settings(url: &str, pool: &str) -> Cluster {
    Cluster::connect(url)
        .pool_name(pool)
        .ack_wait(Duration::from_secs(10))
        .max_attempts(3)
        .broker_timeout(Duration::from_secs(2))
        .sweep_interval(Duration::from_millis(200))
        .heartbeat(Duration::from_millis(200))
}

/// A builder for a cluster pool of `n` workers of type `W`: a new pool name,
/// and a node with `n` worker threads serving it (the scenario's node, shut
/// down when the scenario ends).
fn builder<W: RemoteWorker>(backend: Backend, n: usize) -> PoolBuilder<W> {
    assert_eq!(
        backend,
        Backend::Cluster,
        "this crate runs the cluster only"
    );
    ENV.with(|env| {
        let mut env = env.borrow_mut();
        let env = env.as_mut().expect("a cluster scenario runs inside `run`");
        let name = format!("conformance{}", NEXT_POOL.fetch_add(1, Ordering::Relaxed));
        let cluster = settings(&env.server.url, &name);
        let node = Node::start(cluster.clone(), Pool::<W>::builder().workers(n))
            .unwrap_or_else(|e| panic!("starting a node: {e}"));
        env.nodes.push(node);
        Pool::<W>::builder().cluster(cluster)
    })
}

/// Runs `scenario` on the cluster, or says why it is skipped.
fn run(name: &'static str, scenario: fn(Backend)) {
    if let Some(why) = Backend::Cluster.skipped(name) {
        eprintln!("cluster::{name} skipped: {why}");
        return;
    }
    let server = Server::shared();
    let (done, outcome) = mpsc::channel();
    let env = Env {
        server: Arc::clone(&server),
        nodes: Vec::new(),
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            ENV.with(|slot| *slot.borrow_mut() = Some(env));
            let result = catch_unwind(AssertUnwindSafe(|| scenario(Backend::Cluster)));
            // The nodes shut down here, pass or fail (a failing scenario's
            // gates are open by now: they open when dropped).
            drop(ENV.with(|slot| slot.borrow_mut().take()));
            let _ = done.send(result);
        })
        .expect("a scenario thread");
    match outcome.recv_timeout(SCENARIO_LIMIT) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => {
            server.kill();
            panic!("cluster::{name} did not end within {SCENARIO_LIMIT:?}");
        }
    }
}

/// Instantiates each scenario on the cluster: `cluster::name`.
macro_rules! on_the_cluster {
    ($($scenario:ident),* $(,)?) => {
        mod cluster {
            $(
                #[test]
                fn $scenario() {
                    super::run(stringify!($scenario), super::scenarios::$scenario);
                }
            )*
        }
    };
}

every_scenario!(on_the_cluster);

/// Every scenario the cluster skips is named, with its reason, in the engine's
/// module docs (which the README's "not carried yet" line summarizes).
#[test]
fn every_skip_is_documented() {
    let docs = include_str!("../src/engine.rs");
    for (name, why) in CLUSTER_SKIPS {
        eprintln!("cluster::{name} is skipped: {why}");
        assert!(
            docs.contains(&format!("`{name}`")),
            "src/engine.rs's module docs name the skipped scenario `{name}`"
        );
    }
}
