//! A program that renames its crew dependency (`pool = { package = "crew-pool" }`)
//! and has a `crew` of its own: `service!` must reach crew through `$crate`, on a
//! thread pool and on a process pool (whose workers re-run this test binary;
//! `crew_worker_entry` is their `main`), where the generated enums go through serde.
//!
//! Cargo gives a package one name per test binary (a second dev-dependency alias
//! of crew itself is merged into the first), so the rename is made here, which
//! is what the alias does for a user's crate: crew is reachable as `pool` only.

extern crate crew as pool;

use std::time::Duration;

/// Not the crew crate: a name this program uses for something else. Any path the
/// macro spelled `crew::…` would land here and fail to compile.
#[allow(dead_code)]
mod crew {}

pool::service! {
    /// One method that can fail.
    pub mod halver {
        /// `n / 2`, or an error for odd `n`.
        fn halve(n: u64) -> Result<u64, String>;
    }
}

struct Halver;

impl halver::Handler for Halver {
    fn start(_: &mut pool::Context<'_>) -> Result<Self, pool::StartError> {
        Ok(Halver)
    }

    fn halve(&mut self, n: u64) -> Result<u64, String> {
        if n.is_multiple_of(2) {
            Ok(n / 2)
        } else {
            Err(format!("{n} is odd"))
        }
    }
}

fn check(pool: &pool::Pool<halver::Worker<Halver>>) {
    let client = halver::Client::new(pool);
    let limit = Duration::from_secs(10);
    let half = client.halve(10).unwrap().join_timeout(limit).unwrap();
    assert_eq!(half.unwrap(), 5);
    let odd = client.halve(3).unwrap().join_timeout(limit).unwrap();
    let error = odd.unwrap_err();
    assert!(error.is_user(), "{error:?}");
}

#[test]
fn service_works_on_threads_under_another_name() {
    let pool = pool::Pool::<halver::Worker<Halver>>::builder()
        .workers(1)
        .build()
        .unwrap();
    check(&pool);
    pool.shutdown();
}

#[test]
fn service_works_on_processes_under_another_name() {
    let pool = pool::Pool::<halver::Worker<Halver>>::builder()
        .processes(1)
        .args([
            "crew_worker_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .kill_grace(Duration::from_millis(200))
        .build()
        .unwrap();
    check(&pool);
    pool.shutdown();
}

#[test]
fn crew_worker_entry() {
    pool::Bootstrap::new()
        .worker::<halver::Worker<Halver>>()
        .run();
}
