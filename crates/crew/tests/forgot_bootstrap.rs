//! A process-pool program whose `main` forgets `crew::bootstrap`: its worker
//! processes re-run `main`, which builds a process pool of its own. crew refuses
//! that pool in the worker (a `BuildError` naming the missing call), so the
//! process count stays at n + 1 instead of growing without end, and the parent's
//! tasks fail with a start error that names the call.
//!
//! `crew_worker_entry` below is the forgetful `main`: it never calls
//! `crew::bootstrap`. Each run records itself in a directory of marker files named
//! for the test process, so the test can count every worker process that ran and
//! see who started it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{join, WORKER_ENTRY};
use crew::{Context, Pool, StartError, Worker};

/// A worker that is never served (the entry forgets to bootstrap it).
struct Echo;

impl Worker for Echo {
    type Input = u32;
    type Output = u32;
    type Error = String;
    type Message = ();

    fn start(_: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Echo)
    }

    fn run(&mut self, n: u32, _: &mut Context<'_>) -> Result<u32, String> {
        Ok(n)
    }
}

/// The pool's environment variable that marks a worker process (crew's own).
const WORKER_FD: &str = "CREW_WORKER_FD";
/// Set by a forgetful worker for its own children: the test process's pid, so
/// that every generation records into the same directory.
const ROOT: &str = "CREW_TEST_FORGOT_ROOT";
/// How deep a chain of workers may go before the entry stops on its own: a
/// brake, so that a broken guard fails this test instead of the machine.
const BRAKE: &str = "CREW_TEST_FORGOT_DEPTH";

fn markers(root: u32) -> PathBuf {
    std::env::temp_dir().join(format!("crew-forgot-bootstrap-{root}"))
}

/// Removes the marker directory when the test ends, passed or failed.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The forgetful `main`. In the test process itself it does nothing.
#[test]
fn crew_worker_entry() {
    if std::env::var_os(WORKER_FD).is_none() {
        return;
    }
    let parent = std::os::unix::process::parent_id();
    let root: u32 = match std::env::var(ROOT) {
        Ok(root) => root.parse().unwrap(),
        Err(_) => parent,
    };
    let depth: u32 = std::env::var(BRAKE).map_or(0, |d| d.parse().unwrap());
    // This process runs one test on one thread (WORKER_ENTRY): nothing else
    // reads the environment while it is changed.
    std::env::set_var(ROOT, root.to_string());
    std::env::set_var(BRAKE, (depth + 1).to_string());
    let built = if depth >= 2 {
        Err("the brake: this worker is a grandchild of a grandchild".to_owned())
    } else {
        // What the forgetful program does next: build its process pool.
        Pool::<Echo>::builder()
            .processes(2)
            .args(WORKER_ENTRY)
            .build()
            .map(|_| ())
            .map_err(|e| format!("{} | not_bootstrapped={}", e, e.is_not_bootstrapped()))
    };
    let record = format!("{parent}\n{built:?}");
    // Written whole or not at all: the pool may kill a worker at shutdown.
    let dir = markers(root);
    let partial = dir.join(format!("{}.partial", std::process::id()));
    std::fs::write(&partial, record).unwrap();
    std::fs::rename(partial, dir.join(std::process::id().to_string())).unwrap();
    // The program gives up, as a `main` whose `build()?` failed would.
    std::process::exit(3);
}

#[test]
fn a_worker_without_bootstrap_refuses_its_pool_and_the_parent_says_why() {
    let me = std::process::id();
    let dir = markers(me);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveDir(dir.clone());

    let n = 2;
    let pool = Pool::<Echo>::builder()
        .processes(n)
        .args(WORKER_ENTRY)
        .on_output(|_, _, _| {})
        .start_attempts(2)
        .start_backoff(Duration::from_millis(10))
        .kill_grace(Duration::from_millis(200))
        .build()
        .unwrap();
    let error = join(pool.submit(1).unwrap()).unwrap_err();
    pool.shutdown();

    // Every worker that ran was the test's own child: none started workers of
    // its own, so at any moment there were at most n + 1 processes.
    let records: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.path().extension().is_none())
        .map(|entry| {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            (entry.file_name().into_string().unwrap(), text)
        })
        .collect();
    assert!(!records.is_empty(), "no worker process ran");
    for (pid, record) in &records {
        let (parent, built) = record.split_once('\n').unwrap();
        assert_eq!(
            parent,
            me.to_string(),
            "worker {pid} was started by {parent}"
        );
        assert!(built.contains("not_bootstrapped=true"), "{built}");
        assert!(built.contains("crew::bootstrap::<W>()"), "{built}");
    }

    // The parent's tasks fail with a start error that names the call.
    assert!(error.is_start_failure(), "{error:?}");
    let message = error.start_error_message().unwrap();
    assert!(message.contains("crew::bootstrap::<W>()"), "{message}");
    assert!(message.contains("first in `main`"), "{message}");
}
