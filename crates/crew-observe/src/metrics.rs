//! `Metrics`: crew pools in the Prometheus / OpenMetrics text format, built on
//! `prometheus-client` (feature `metrics`).
//!
//! # Cost
//!
//! None on the hot path. The exporter is a `prometheus_client` collector:
//! nothing is recorded while tasks run; each scrape calls
//! [`Pool::stats`](crew::Pool::stats) once per pool and writes what it
//! returns. A scrape costs what `stats()` costs (a brief lock of each worker's
//! slot to merge its histograms): about 50–100 µs for a pool of two workers
//! on a two-core VM. Measured with `crew-bench --exporter` (BENCHMARKS.md,
//! "Exporter on vs off"): with a scrape every 10 ms, W1 and W2 are within
//! noise of no exporter on both backends; only a scrape every millisecond
//! (a thousand times Prometheus's usual rate) slowed the fastest path, W1
//! with `spawn_batch`, by about 15%. The one opt-in exception is
//! [`Metrics::pool_with_events`], which subscribes to the pool's events for
//! the worker lifecycle counters (see [`Lifecycle`] for that cost).
//!
//! # Metrics
//!
//! Every sample carries a `pool` label (the name given to [`Metrics::pool`]),
//! so several pools share one registry. Names follow the Prometheus
//! conventions: a `crew_` prefix, base units (`_seconds`, `_bytes`), `_total`
//! on counters.
//!
//! | metric | type | labels | from |
//! |---|---|---|---|
//! | `crew_tasks_submitted_total` | counter | pool | `Stats::submitted` |
//! | `crew_tasks_finished_total` | counter | pool, outcome | `completed`, `failed`, `panicked`, `cancelled`, `timed_out`, `killed`, `closed`, `start_failed`, `crashed` |
//! | `crew_tasks_queued` | gauge | pool | `queued` |
//! | `crew_workers` | gauge | pool, state | `busy`, `idle`, and `starting`/`stopping` (counted from the worker rows) |
//! | `crew_abandoned_threads` | gauge | pool | `abandoned_threads` |
//! | `crew_worker_start_failures` | gauge | pool | `start_failures` (consecutive) |
//! | `crew_task_wait_seconds`, `crew_task_run_seconds` | gauge | pool, quantile | `wait`, `run`: p50, p90, p99, max (as quantile 1) |
//! | `crew_task_wait_measured_total`, `crew_task_run_measured_total` | counter | pool | the tasks those percentiles measured |
//! | `crew_busy_seconds_total`, `crew_worker_seconds_total` | counter | pool | `busy_time`, `worker_time` (their rates' ratio is the utilization) |
//! | `crew_uptime_seconds` | gauge | pool | `uptime` |
//! | `crew_worker_tasks_done_total` | counter | pool, worker | `WorkerStats::tasks_done` |
//! | `crew_worker_busy_seconds_total` | counter | pool, worker | `WorkerStats::busy_time` |
//! | `crew_worker_rss_bytes` | gauge | pool, worker | `WorkerStats::rss_bytes` (process workers only) |
//! | `crew_worker_restarts_total` | counter | pool | `WorkerRestarted` events (with events only) |
//! | `crew_worker_exits_total` | counter | pool, reason | `WorkerExited` events by reason: `crashed`, `recycled`, `abandoned`, `killed`, `retired`, `shutdown` (with events only) |
//! | `crew_observer_events_dropped_total` | counter | pool | events the observer lost to a full buffer (with events only) |
//!
//! Worker crashes are visible without events too: tasks lost to one count in
//! `crew_tasks_finished_total{outcome="crashed"}`.
//!
//! ## Why latencies are quantile gauges, not histograms
//!
//! crew keeps HDR histograms internally but its public [`crew::Latency`]
//! offers the count and the p50, p90, p99 and max only — not bucket counts,
//! and not the sum of the samples. A Prometheus histogram needs cumulative
//! bucket counts, and a summary needs a `_sum`; neither can be derived from
//! percentiles without inventing numbers. So the percentiles are exported as
//! they are: a gauge per quantile with the `quantile` label a summary would
//! use (max as `quantile="1"`), plus the sample count as a counter. The
//! percentiles cover the pool's whole life, and like a summary's they cannot be
//! averaged across pools. (A bucket accessor on `crew::Latency` would allow
//! true histograms; nothing here would change but this module.)
//!
//! ## Dead letters
//!
//! A cluster backend's dead letters (`crew_dead_letters_total`) belong here
//! once that backend exists and its stats carry them; today no crew backend
//! has dead letters, and the exporter does not print a made-up zero.

use std::fmt::Write as _;
use std::sync::Arc;

use crew::{Pool, Stats, Worker, WorkerState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::lifecycle::Lifecycle;
use crate::snapshot::LifecycleJson;
use crate::source::Source;

/// The content type of [`Metrics::encode`]'s output, for an HTTP response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An exporter for one or more pools.
///
/// ```
/// let pool = crew::Pool::builder().workers(2).build()?;
/// pool.spawn(|| 1 + 1).join()?;
/// let metrics = crew_observe::Metrics::new().pool("adder", &pool);
/// let text = metrics.encode();
/// assert!(text.contains(r#"crew_tasks_finished_total{pool="adder",outcome="completed"} 1"#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// It holds a clone of each pool's handle, so a pool stays open while its
/// exporter lives.
#[derive(Debug, Default)]
pub struct Metrics {
    sources: Vec<Arc<Source>>,
}

impl Metrics {
    /// An exporter with no pool yet.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Adds `pool` under the label `pool="name"`. Read at scrape time only: no
    /// cost while tasks run.
    pub fn pool<W: Worker>(mut self, name: &str, pool: &Pool<W>) -> Self {
        self.sources.push(Arc::new(Source::new(name, pool, None)));
        self
    }

    /// Like [`pool`](Metrics::pool), and also subscribes to its events for the
    /// worker restart and exit counters. That subscription has a cost on every
    /// task: see [`Lifecycle`]. Fails only if the OS refuses a thread.
    pub fn pool_with_events<W: Worker>(
        mut self,
        name: &str,
        pool: &Pool<W>,
    ) -> std::io::Result<Self> {
        let lifecycle = Lifecycle::watch(pool)?;
        self.sources
            .push(Arc::new(Source::new(name, pool, Some(lifecycle))));
        Ok(self)
    }

    pub(crate) fn from_sources(sources: Vec<Arc<Source>>) -> Self {
        Metrics { sources }
    }

    /// Registers these pools as a collector in `registry`, for a program that
    /// exports its own metrics too. The registry reads the pools on each of its
    /// encodes.
    pub fn register(self, registry: &mut Registry) {
        registry.register_collector(Box::new(PoolCollector {
            sources: self.sources,
        }));
    }

    /// The pools' metrics now, in the OpenMetrics text format (which Prometheus
    /// scrapes), ending with `# EOF`. Serve it with [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(PoolCollector {
            sources: self.sources.clone(),
        }));
        let mut out = String::new();
        // Writing to a String cannot fail, and the collector reports no error
        // of its own.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The `prometheus_client` collector: reads every pool once per encode.
#[derive(Debug)]
struct PoolCollector {
    sources: Vec<Arc<Source>>,
}

/// One pool's figures for one scrape.
struct Row<'a> {
    pool: &'a str,
    stats: Stats,
    lifecycle: Option<LifecycleJson>,
}

type Labels = Vec<(&'static str, String)>;

impl Collector for PoolCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows: Vec<Row<'_>> = self
            .sources
            .iter()
            .map(|s| Row {
                pool: &s.name,
                stats: s.stats(),
                lifecycle: s.lifecycle.as_ref().map(Lifecycle::counts),
            })
            .collect();
        let per_pool = |f: &dyn Fn(&Row<'_>) -> f64| -> Vec<(Labels, f64)> {
            rows.iter().map(|r| (pool(r), f(r))).collect()
        };

        counter(
            &mut enc,
            "crew_tasks_submitted",
            "Tasks accepted by the pool.",
            None,
            rows.iter().map(|r| (pool(r), r.stats.submitted)),
        )?;
        counter(
            &mut enc,
            "crew_tasks_finished",
            "Tasks finished with, by outcome.",
            None,
            rows.iter().flat_map(|r| {
                outcomes(&r.stats).into_iter().map(move |(outcome, n)| {
                    let mut l = pool(r);
                    l.push(("outcome", outcome.to_owned()));
                    (l, n)
                })
            }),
        )?;
        gauge(
            &mut enc,
            "crew_tasks_queued",
            "Tasks accepted and not started yet.",
            None,
            rows.iter().map(|r| (pool(r), r.stats.queued as i64)),
        )?;
        gauge(
            &mut enc,
            "crew_workers",
            "Workers the pool counts, by state.",
            None,
            rows.iter().flat_map(|r| {
                worker_states(&r.stats).into_iter().map(move |(state, n)| {
                    let mut l = pool(r);
                    l.push(("state", state.to_owned()));
                    (l, n)
                })
            }),
        )?;
        gauge(
            &mut enc,
            "crew_abandoned_threads",
            "Threads given up on after a timeout or kill that have not returned.",
            None,
            rows.iter()
                .map(|r| (pool(r), r.stats.abandoned_threads as i64)),
        )?;
        gauge(
            &mut enc,
            "crew_worker_start_failures",
            "Consecutive Worker::start failures, pool-wide (0 once one succeeds).",
            None,
            rows.iter()
                .map(|r| (pool(r), i64::from(r.stats.start_failures))),
        )?;
        for (name, help, pick) in [
            (
                "crew_task_wait",
                "Time from submit to start, percentiles over the pool's life (quantile 1 is the max).",
                (|s: &Stats| s.wait) as fn(&Stats) -> crew::Latency,
            ),
            (
                "crew_task_run",
                "Time tasks ran, percentiles over the pool's life (quantile 1 is the max).",
                |s: &Stats| s.run,
            ),
        ] {
            gauge(
                &mut enc,
                name,
                help,
                Some(&Unit::Seconds),
                rows.iter().flat_map(|r| {
                    let l = pick(&r.stats);
                    [
                        ("0.5", l.p50),
                        ("0.9", l.p90),
                        ("0.99", l.p99),
                        ("1", l.max),
                    ]
                    .into_iter()
                    .map(move |(q, d)| {
                        let mut labels = pool(r);
                        labels.push(("quantile", q.to_owned()));
                        (labels, d.as_secs_f64())
                    })
                }),
            )?;
            counter(
                &mut enc,
                &format!("{name}_measured"),
                "Tasks measured for the percentiles (a thread pool samples past its first 4096 tasks).",
                None,
                rows.iter().map(|r| (pool(r), pick(&r.stats).count)),
            )?;
        }
        counter(
            &mut enc,
            "crew_busy",
            "Time workers spent running tasks, summed over workers.",
            Some(&Unit::Seconds),
            per_pool(&|r| r.stats.busy_time.as_secs_f64()),
        )?;
        counter(
            &mut enc,
            "crew_worker",
            "Time workers spent in the pool, summed over workers.",
            Some(&Unit::Seconds),
            per_pool(&|r| r.stats.worker_time.as_secs_f64()),
        )?;
        gauge(
            &mut enc,
            "crew_uptime",
            "Time since the pool was built.",
            Some(&Unit::Seconds),
            per_pool(&|r| r.stats.uptime.as_secs_f64()),
        )?;
        counter(
            &mut enc,
            "crew_worker_tasks_done",
            "Tasks a worker ran and finished with, of every outcome.",
            None,
            rows.iter().flat_map(|r| {
                r.stats
                    .per_worker
                    .iter()
                    .map(move |w| (worker(r, w.id), w.tasks_done))
            }),
        )?;
        counter(
            &mut enc,
            "crew_worker_busy",
            "Time a worker spent running tasks.",
            Some(&Unit::Seconds),
            rows.iter().flat_map(|r| {
                r.stats
                    .per_worker
                    .iter()
                    .map(move |w| (worker(r, w.id), w.busy_time.as_secs_f64()))
            }),
        )?;
        let rss: Vec<(Labels, u64)> = rows
            .iter()
            .flat_map(|r| {
                r.stats
                    .per_worker
                    .iter()
                    .filter_map(move |w| Some((worker(r, w.id), w.rss_bytes?)))
            })
            .collect();
        if !rss.is_empty() {
            gauge(
                &mut enc,
                "crew_worker_rss",
                "Resident memory of a worker process.",
                Some(&Unit::Bytes),
                rss,
            )?;
        }

        let watched: Vec<(&Row<'_>, LifecycleJson)> = rows
            .iter()
            .filter_map(|r| Some((r, r.lifecycle?)))
            .collect();
        if !watched.is_empty() {
            counter(
                &mut enc,
                "crew_worker_restarts",
                "Workers that rebuilt their state after a panic.",
                None,
                watched.iter().map(|(r, c)| (pool(r), c.restarted)),
            )?;
            counter(
                &mut enc,
                "crew_worker_exits",
                "Workers that left the pool, by reason.",
                None,
                watched.iter().flat_map(|(r, c)| {
                    [
                        ("crashed", c.crashed),
                        ("recycled", c.recycled),
                        ("abandoned", c.abandoned),
                        ("killed", c.killed),
                        ("retired", c.retired),
                        ("shutdown", c.shutdown),
                    ]
                    .into_iter()
                    .map(move |(reason, n)| {
                        let mut l = pool(r);
                        l.push(("reason", reason.to_owned()));
                        (l, n)
                    })
                }),
            )?;
            counter(
                &mut enc,
                "crew_observer_events_dropped",
                "Events the observer lost to a full buffer; the counters above may be short by as many.",
                None,
                watched.iter().map(|(r, c)| (pool(r), c.events_dropped)),
            )?;
        }
        Ok(())
    }
}

fn pool(r: &Row<'_>) -> Labels {
    vec![("pool", r.pool.to_owned())]
}

fn worker(r: &Row<'_>, id: crew::WorkerId) -> Labels {
    let mut l = pool(r);
    let mut name = String::new();
    let _ = write!(name, "{id}");
    l.push(("worker", name));
    l
}

/// Every outcome counter of `Stats`, by its label value.
fn outcomes(s: &Stats) -> [(&'static str, u64); 9] {
    [
        ("completed", s.completed),
        ("failed", s.failed),
        ("panicked", s.panicked),
        ("cancelled", s.cancelled),
        ("timed_out", s.timed_out),
        ("killed", s.killed),
        ("closed", s.closed),
        ("start_failed", s.start_failed),
        ("crashed", s.crashed),
    ]
}

/// Workers by state. `busy` and `idle` are the pool's own counts; `starting`
/// and `stopping` are counted from the worker rows.
fn worker_states(s: &Stats) -> [(&'static str, i64); 4] {
    let count = |state| s.per_worker.iter().filter(|w| w.state == state).count() as i64;
    [
        ("busy", s.busy as i64),
        ("idle", s.idle as i64),
        ("starting", count(WorkerState::Starting)),
        ("stopping", count(WorkerState::Stopping)),
    ]
}

/// One counter family: its descriptor, then one sample per label set.
fn counter<V: EncodeCounterValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, V, f64>(&value, None::<&Exemplar<NoLabelSet, f64>>)?;
    }
    Ok(())
}

/// One gauge family: its descriptor, then one sample per label set.
fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}
