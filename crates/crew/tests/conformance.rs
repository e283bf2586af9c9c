//! The conformance suite: every scenario is written once, against the `Pool<W>`
//! API, in `tests/scenarios/`, and runs here on both backends, as
//! `threads::<scenario>` and `processes::<scenario>`
//! (`cargo test -p crew-pool --test conformance`), and on a third, test-only
//! one, `loopback::<scenario>`: an engine implemented outside crew through the
//! backend seam (`tests/loopback_engine/`), which runs its tasks on an inner
//! thread pool and so keeps the thread backend's promises. The cluster backend
//! runs the same scenarios in its own crate (`crates/crew-cluster/tests/conformance.rs`).
//!
//! A scenario is a function of the [`Backend`] it runs on; it builds its pool
//! with `backend.builder(n)`, which is [`builder`] below. Where the backends
//! promise different things, the scenario says so in a `match backend` and
//! asserts each side (`tests/scenarios/mod.rs` says more).
//!
//! The process pools re-run this test binary as their worker program:
//! `crew_worker_entry` below is the worker's `main`.

mod common;
mod loopback_engine;
#[macro_use]
mod scenarios;

use common::worker_processes;
use crew::{Pool, PoolBuilder, RemoteWorker};
use scenarios::{sums, Backend, Probe, Sums};

/// The worker processes' `main`: in a worker it serves and exits; in the test
/// run itself it returns at once.
#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new()
        .worker::<Probe>()
        .worker::<sums::Worker<Sums>>()
        .run();
}

/// A builder for a pool of `n` workers of type `W` on `backend`.
fn builder<W: RemoteWorker>(backend: Backend, n: usize) -> PoolBuilder<W> {
    match backend {
        Backend::Threads => Pool::<W>::builder().workers(n),
        Backend::Processes => worker_processes::<W>(n),
        Backend::Loopback => loopback_engine::Loopback::<W>::builder(n),
        Backend::Cluster => unreachable!("crew-cluster's tests/conformance.rs runs the cluster"),
    }
}

/// Instantiates each scenario once per backend: `threads::name`,
/// `processes::name` and `loopback::name`.
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod threads {
            $(
                #[test]
                fn $scenario() {
                    super::scenarios::$scenario(super::Backend::Threads);
                }
            )*
        }
        mod processes {
            $(
                #[test]
                fn $scenario() {
                    super::scenarios::$scenario(super::Backend::Processes);
                }
            )*
        }
        mod loopback {
            $(
                #[test]
                fn $scenario() {
                    super::scenarios::$scenario(super::Backend::Loopback);
                }
            )*
        }
    };
}

every_scenario!(conformance);
