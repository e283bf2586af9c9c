//! The `dashboard` example, run as a user runs it: its process pool must
//! show every kind of failure it injects (errors, panics, crashes, timeouts)
//! with worker pids and RSS, on `/api/stats` and on `/metrics`.
//!
//! `cargo test` builds the examples next to the test binaries
//! (`target/<profile>/examples/`), which is where this test finds it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{get, wait_for};
use crew_observe::Snapshot;

/// The example's process. Drop kills it by its pid and waits; its worker
/// processes follow their parent (crew's parent-death signal).
struct Example(Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example_binary() -> PathBuf {
    // target/<profile>/deps/example-<hash> → target/<profile>/examples/dashboard
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join("dashboard");
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p crew-observe` builds it",
        path.display()
    );
    path
}

#[test]
fn example_shows_every_injected_failure_of_its_process_pool() {
    let mut child = Command::new(example_binary())
        .args(["--addr", "127.0.0.1:0", "--seconds", "120"])
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the dashboard example");
    let stdout = child.stdout.take().expect("piped stdout");
    let example = Example(child);

    // Its first line says where it serves: "dashboard on http://ADDR/ (...)".
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read the example's first line");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();

    let snapshot = wait_for(
        "every failure kind on the process pool",
        Duration::from_secs(90),
        || {
            let (_, body) = get(&format!("{url}api/stats"))?;
            let snapshot: Snapshot = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let isolated = snapshot
                .pools
                .iter()
                .find(|p| p.name == "isolated")
                .ok_or("no pool named isolated")?;
            let s = &isolated.stats;
            let crashes = isolated.lifecycle.map_or(0, |l| l.crashed);
            if s.failed > 0 && s.panicked > 0 && s.crashed > 0 && s.timed_out > 0 && crashes > 0 {
                Ok(snapshot)
            } else {
                Err(body)
            }
        },
    );
    let isolated = &snapshot.pools[0];
    assert!(
        isolated
            .stats
            .per_worker
            .iter()
            .any(|w| w.pid.is_some() && w.rss_bytes.is_some_and(|b| b > 0)),
        "process workers have a pid and an RSS: {isolated:?}"
    );
    let threads = snapshot
        .pools
        .iter()
        .find(|p| p.name == "threads")
        .expect("the thread pool");
    assert!(
        threads.stats.per_worker.iter().all(|w| w.pid.is_none()),
        "{threads:?}"
    );
    assert!(!threads.stats.per_worker.is_empty(), "{threads:?}");

    let (status, metrics) = get(&format!("{url}metrics")).expect("GET /metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("crew_worker_rss_bytes{pool=\"isolated\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("crew_tasks_finished_total{pool=\"isolated\",outcome=\"crashed\"}"),
        "{metrics}"
    );
    drop(example);
}
