//! The exporter's output, read back with an OpenMetrics parser
//! (`openmetrics-parser`): it must parse, carry the figures the pools really
//! have (two pools in one exposition, told apart by the `pool` label), and
//! count worker restarts when observed with events.

mod common;

use std::time::Duration;

use common::{get, wait_for, Faulty, Op};
use crew::Pool;
use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

fn parse(text: &str) -> Exposition {
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends in # EOF"
    );
    parse_openmetrics(text).unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{text}"))
}

/// The value of the sample of `family` whose labels include all of `labels`.
fn value(expo: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let fam = expo.families.get(family)?;
    let mut found = None;
    for sample in fam.iter_samples() {
        let set = sample.get_labelset().ok()?;
        if labels
            .iter()
            .all(|(k, v)| set.get_label_value(k) == Some(*v))
        {
            assert!(found.is_none(), "{family}{labels:?} matches two samples");
            found = Some(match &sample.value {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Gauge(g) => g.as_f64(),
                other => panic!("{family}: unexpected value {other:?}"),
            });
        }
    }
    found
}

fn family_type(expo: &Exposition, family: &str) -> OpenMetricsType {
    expo.families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"))
        .family_type
}

/// A fresh pool of two workers.
fn alpha() -> Pool<Faulty> {
    Pool::<Faulty>::builder().workers(2).build().expect("build")
}

/// Runs 5 successes, 3 errors, 2 panics and 1 timeout on `pool`.
fn run_mix(pool: &Pool<Faulty>) {
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(pool.submit(Op::Ok(1)).expect("submit"));
    }
    for _ in 0..3 {
        tasks.push(pool.submit(Op::Err).expect("submit"));
    }
    for _ in 0..2 {
        tasks.push(pool.submit(Op::Panic).expect("submit"));
    }
    let slow = pool.task(Op::Hang(400)).timeout(Duration::from_millis(50));
    tasks.push(slow.submit().expect("submit"));
    for t in tasks {
        let _ = t.join();
    }
}

#[test]
fn exposition_parses_and_tells_pools_apart() {
    let a = alpha();
    let b = Pool::builder().workers(1).build().expect("build");
    for n in 0..4u64 {
        b.spawn(move || n).join().expect("join");
    }
    let metrics = crew_observe::Metrics::new()
        .pool_with_events("alpha", &a)
        .expect("watch alpha")
        .pool("beta", &b);
    // After subscribing: events are not replayed.
    run_mix(&a);

    // A timed-out task's handle resolves at its deadline, but the pool counts
    // it once its thread returns (or is abandoned); restarts come from the
    // event reader thread. Wait until both have caught up.
    let expo = wait_for(
        "every task counted, two restarts",
        Duration::from_secs(10),
        || {
            let expo = parse(&metrics.encode());
            let finished: f64 = ["completed", "failed", "panicked", "timed_out"]
                .iter()
                .filter_map(|o| {
                    value(
                        &expo,
                        "crew_tasks_finished",
                        &[("pool", "alpha"), ("outcome", o)],
                    )
                })
                .sum();
            let restarts = value(&expo, "crew_worker_restarts", &[("pool", "alpha")]);
            if finished == 11.0 && restarts == Some(2.0) {
                Ok(expo)
            } else {
                Err(format!("finished {finished}, restarts {restarts:?}"))
            }
        },
    );

    let outcome = |pool: &str, outcome: &str| {
        value(
            &expo,
            "crew_tasks_finished",
            &[("pool", pool), ("outcome", outcome)],
        )
    };
    assert_eq!(
        value(&expo, "crew_tasks_submitted", &[("pool", "alpha")]),
        Some(11.0)
    );
    assert_eq!(outcome("alpha", "completed"), Some(5.0));
    assert_eq!(outcome("alpha", "failed"), Some(3.0));
    assert_eq!(outcome("alpha", "panicked"), Some(2.0));
    assert_eq!(outcome("alpha", "timed_out"), Some(1.0));
    assert_eq!(outcome("alpha", "crashed"), Some(0.0));
    assert_eq!(
        value(&expo, "crew_tasks_submitted", &[("pool", "beta")]),
        Some(4.0)
    );
    assert_eq!(outcome("beta", "completed"), Some(4.0));
    assert_eq!(
        value(&expo, "crew_tasks_queued", &[("pool", "beta")]),
        Some(0.0)
    );

    assert_eq!(
        family_type(&expo, "crew_tasks_finished"),
        OpenMetricsType::Counter
    );
    assert_eq!(
        family_type(&expo, "crew_tasks_queued"),
        OpenMetricsType::Gauge
    );
    assert_eq!(
        family_type(&expo, "crew_task_run_seconds"),
        OpenMetricsType::Gauge
    );
    assert_eq!(expo.families["crew_task_run_seconds"].unit, "seconds");
    assert_eq!(expo.families["crew_busy_seconds"].unit, "seconds");

    // Latency percentiles are ordered, and count what ran.
    let q = |q: &str| {
        value(
            &expo,
            "crew_task_run_seconds",
            &[("pool", "alpha"), ("quantile", q)],
        )
    };
    let (p50, p90, p99, max) = (q("0.5"), q("0.9"), q("0.99"), q("1"));
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= max,
        "{p50:?} {p90:?} {p99:?} {max:?}"
    );
    assert!(
        max.unwrap() >= 0.05,
        "the timed-out task ran at least its 50 ms timeout"
    );
    assert_eq!(
        value(&expo, "crew_task_run_measured", &[("pool", "alpha")]),
        Some(11.0)
    );

    // One row per worker, and every task that ran is some worker's.
    let done: f64 = expo.families["crew_worker_tasks_done"]
        .iter_samples()
        .filter(|s| s.get_labelset().unwrap().get_label_value("pool") == Some("beta"))
        .map(|s| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            _ => unreachable!(),
        })
        .sum();
    assert_eq!(done, 4.0);

    // Threads have no process, so no RSS family; the lifecycle families exist
    // only for the pool observed with events.
    assert!(!expo.families.contains_key("crew_worker_rss_bytes"));
    assert_eq!(
        value(&expo, "crew_worker_restarts", &[("pool", "beta")]),
        None
    );
    assert_eq!(
        value(
            &expo,
            "crew_worker_exits",
            &[("pool", "alpha"), ("reason", "crashed")]
        ),
        Some(0.0)
    );
    for name in expo.families.keys() {
        assert!(name.starts_with("crew_"), "{name}");
    }
    a.shutdown();
    b.shutdown();
}

#[test]
fn register_adds_the_pools_to_an_existing_registry() {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::registry::Registry;

    let pool = Pool::builder().workers(1).build().expect("build");
    pool.spawn(|| ()).join().expect("join");
    let mut registry = Registry::default();
    let own: Counter = Counter::default();
    own.inc();
    registry.register("app_requests", "The program's own counter.", own);
    crew_observe::Metrics::new()
        .pool("jobs", &pool)
        .register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let expo = parse(&text);
    assert_eq!(value(&expo, "app_requests", &[]), Some(1.0));
    assert_eq!(
        value(
            &expo,
            "crew_tasks_finished",
            &[("pool", "jobs"), ("outcome", "completed")]
        ),
        Some(1.0)
    );
}

#[test]
fn dashboard_serves_metrics_stats_page_and_stream() {
    let pool = alpha();
    run_mix(&pool);
    let server = crew_observe::Dashboard::new()
        .tick(Duration::from_millis(100))
        .pool("alpha", &pool)
        .serve("127.0.0.1:0")
        .expect("serve");
    let url = server.url();

    let (status, text) = get(&format!("{url}metrics")).expect("GET /metrics");
    assert_eq!(status, 200);
    let expo = parse(&text);
    assert_eq!(
        value(
            &expo,
            "crew_tasks_finished",
            &[("pool", "alpha"), ("outcome", "failed")]
        ),
        Some(3.0)
    );

    let (status, json) = get(&format!("{url}api/stats")).expect("GET /api/stats");
    assert_eq!(status, 200);
    let snapshot: crew_observe::Snapshot = serde_json::from_str(&json).expect("a Snapshot");
    assert_eq!(snapshot.pools.len(), 1);
    let stats = &snapshot.pools[0].stats;
    assert_eq!((stats.completed, stats.failed, stats.panicked), (5, 3, 2));
    assert_eq!(stats.per_worker.len(), 2);
    assert!(snapshot.pools[0].lifecycle.is_some());

    let (status, page) = get(&url).expect("GET /");
    assert_eq!(status, 200);
    assert!(page.contains("<!doctype html>") && page.contains("new EventSource"));
    // Self-contained: nothing loaded from another origin.
    for needle in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "@import",
        "url(http",
    ] {
        assert!(!page.contains(needle), "the page refers to {needle}");
    }

    let (status, _) = get(&format!("{url}nope")).expect("GET /nope");
    assert_eq!(status, 404);

    // The stream starts with the history, then ticks.
    use std::io::{BufRead, BufReader, Write};
    let mut conn = std::net::TcpStream::connect(server.addr()).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut lines = BufReader::new(conn).lines();
    let mut events = Vec::new();
    while events.len() < 3 {
        let line = lines.next().expect("the stream went on").expect("read");
        if let Some(name) = line.strip_prefix("event: ") {
            events.push(name.to_owned());
        }
        if line.starts_with("HTTP/1.1") {
            assert!(line.contains("200"), "{line}");
        }
    }
    assert_eq!(events, ["history", "tick", "tick"]);

    // Dropping the server ends the response with the last (empty) chunk.
    drop(server);
    let mut last = String::new();
    for line in lines.by_ref() {
        let line = line.expect("the stream ends cleanly, not by a read timeout");
        if last == "0" && line.is_empty() {
            break;
        }
        last = line;
    }
    assert_eq!(last, "0", "the stream ended with the last chunk");
    pool.shutdown();
}
