//! The JSON shapes served at `/api/stats` and in the dashboard's event stream,
//! and read back by `crew-top --url`.
//!
//! They mirror [`crew::Stats`] field for field, with durations as seconds
//! (`f64`), so a browser and any HTTP client read them without knowing Rust's
//! `Duration`. They are plain serde types in both directions: the server
//! writes them, the `top` client parses them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lifecycle::Lifecycle;

/// Everything `/api/stats` returns: one entry per observed pool, in the order
/// they were added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The pools.
    pub pools: Vec<PoolSnapshot>,
}

/// One pool in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSnapshot {
    /// The name it was added under.
    pub name: String,
    /// Its [`crew::Stats`] when the snapshot was taken.
    pub stats: StatsJson,
    /// Worker starts, restarts and exits seen on its event stream, if the pool
    /// is observed with events (the dashboard always is).
    pub lifecycle: Option<LifecycleJson>,
}

/// [`crew::Stats`] as JSON. See there for what each figure means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // each field is the `crew::Stats` field of the same name
pub struct StatsJson {
    pub workers: usize,
    pub busy: usize,
    pub idle: usize,
    pub queued: usize,
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub panicked: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    pub killed: u64,
    pub closed: u64,
    pub start_failed: u64,
    pub crashed: u64,
    pub abandoned_threads: usize,
    pub start_failures: u32,
    pub last_start_error: Option<String>,
    pub wait: LatencyJson,
    pub run: LatencyJson,
    pub uptime_seconds: f64,
    pub busy_seconds: f64,
    pub worker_seconds: f64,
    pub utilization: f64,
    pub per_worker: Vec<WorkerJson>,
}

/// [`crew::Latency`] as JSON, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[allow(missing_docs)] // each field is the `crew::Latency` field of the same name
pub struct LatencyJson {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// [`crew::WorkerStats`] as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerJson {
    /// The worker id's number (`worker-3` is 3).
    pub id: u64,
    /// `starting`, `idle`, `busy` or `stopping`.
    pub state: String,
    /// The task it runs, as crew prints it (`task-7`), if any.
    pub current_task: Option<String>,
    /// Tasks it finished with.
    pub tasks_done: u64,
    /// Time it spent running tasks, in seconds.
    pub busy_seconds: f64,
    /// Run times of its tasks.
    pub run: LatencyJson,
    /// Its process id (process pools).
    pub pid: Option<u32>,
    /// Its resident memory in bytes (process pools on Linux).
    pub rss_bytes: Option<u64>,
}

/// What a [`Lifecycle`] counted, as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LifecycleJson {
    /// Workers that started (`WorkerStarted`).
    pub started: u64,
    /// Workers that rebuilt their state after a panic (`WorkerRestarted`).
    pub restarted: u64,
    /// `Worker::start` failures (`WorkerStartFailed`).
    pub start_failed: u64,
    /// Worker processes that died or broke the protocol (`WorkerExited`,
    /// reason `Crashed`).
    pub crashed: u64,
    /// Worker processes replaced after their task or memory limit.
    pub recycled: u64,
    /// Threads given up on after a timeout or a kill.
    pub abandoned: u64,
    /// Workers retired by `kill_worker`.
    pub killed: u64,
    /// Extra workers of an elastic pool retired when idle.
    pub retired: u64,
    /// Workers that left at shutdown.
    pub shutdown: u64,
    /// Events the observer lost because its buffer was full: the counts above
    /// may be short by up to this many.
    pub events_dropped: u64,
}

impl LifecycleJson {
    pub(crate) fn of(lifecycle: &Lifecycle) -> Self {
        lifecycle.counts()
    }
}

impl StatsJson {
    /// The JSON form of `stats`.
    pub fn from_stats(stats: &crew::Stats) -> Self {
        StatsJson {
            workers: stats.workers,
            busy: stats.busy,
            idle: stats.idle,
            queued: stats.queued,
            submitted: stats.submitted,
            completed: stats.completed,
            failed: stats.failed,
            panicked: stats.panicked,
            cancelled: stats.cancelled,
            timed_out: stats.timed_out,
            killed: stats.killed,
            closed: stats.closed,
            start_failed: stats.start_failed,
            crashed: stats.crashed,
            abandoned_threads: stats.abandoned_threads,
            start_failures: stats.start_failures,
            last_start_error: stats.last_start_error.clone(),
            wait: LatencyJson::from_latency(&stats.wait),
            run: LatencyJson::from_latency(&stats.run),
            uptime_seconds: secs(stats.uptime),
            busy_seconds: secs(stats.busy_time),
            worker_seconds: secs(stats.worker_time),
            utilization: stats.utilization(),
            per_worker: stats
                .per_worker
                .iter()
                .map(WorkerJson::from_worker)
                .collect(),
        }
    }

    /// Tasks finished with, of every outcome (as [`crew::Stats::finished`]).
    pub fn finished(&self) -> u64 {
        self.completed
            + self.failed
            + self.panicked
            + self.cancelled
            + self.timed_out
            + self.killed
            + self.closed
            + self.start_failed
            + self.crashed
    }
}

impl LatencyJson {
    /// The JSON form of `latency`.
    pub fn from_latency(latency: &crew::Latency) -> Self {
        LatencyJson {
            count: latency.count,
            p50: secs(latency.p50),
            p90: secs(latency.p90),
            p99: secs(latency.p99),
            max: secs(latency.max),
        }
    }
}

impl WorkerJson {
    /// The JSON form of `worker`.
    pub fn from_worker(worker: &crew::WorkerStats) -> Self {
        WorkerJson {
            id: worker.id.as_u64(),
            state: worker.state.as_str().to_owned(),
            current_task: worker.current_task.map(|t| t.to_string()),
            tasks_done: worker.tasks_done,
            busy_seconds: secs(worker.busy_time),
            run: LatencyJson::from_latency(&worker.run),
            pid: worker.pid,
            rss_bytes: worker.rss_bytes,
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
