//! The sampler: once a tick, reads every pool, turns the difference from the
//! previous tick into rates, and keeps the last few minutes of points for the
//! dashboard's charts.
//!
//! Throughput and the outcome rates come from [`crew::Stats`] counters (exact:
//! a difference of two lifetime totals). The latency percentiles of a point
//! come from the task events of that tick only (see [`Lifecycle`]), so a chart
//! shows how latency moves, not the lifetime figure, which changes less and
//! less as a pool ages.

use std::collections::VecDeque;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::lifecycle::Lifecycle;
use crate::snapshot::{PoolSnapshot, StatsJson};
use crate::source::Source;

/// One tick of one pool, as the charts draw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the dashboard started.
    pub t: f64,
    /// Tasks finished per second over the tick, of every outcome.
    pub throughput: f64,
    /// Tasks that returned `Ok`, per second.
    pub ok_rate: f64,
    /// Tasks that finished any other way, per second.
    pub failed_rate: f64,
    /// Tasks queued at the tick.
    pub queued: usize,
    /// Workers busy at the tick.
    pub busy: usize,
    /// Workers at the tick.
    pub workers: usize,
    /// Median run time of the tasks that finished in the tick, in seconds
    /// (`None` if none did).
    pub run_p50: Option<f64>,
    /// 99th percentile of the same.
    pub run_p99: Option<f64>,
    /// Median wait (submit to start) of the same tasks, in seconds.
    pub wait_p50: Option<f64>,
    /// 99th percentile of the same.
    pub wait_p99: Option<f64>,
}

/// One pool's live state as the event stream sends it each tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolTick {
    /// The pool now.
    #[serde(flatten)]
    pub snapshot: PoolSnapshot,
    /// Its newest point.
    pub point: Point,
}

/// One pool's kept points, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolHistory {
    /// The pool's name.
    pub name: String,
    /// Its points.
    pub points: Vec<Point>,
}

/// What the sampler keeps per pool between ticks.
pub(crate) struct Track {
    points: VecDeque<Point>,
    /// The previous tick's totals and time, for rates.
    prev: Option<(Instant, u64, u64)>,
}

impl Track {
    pub(crate) fn new() -> Self {
        Track {
            points: VecDeque::new(),
            prev: None,
        }
    }

    pub(crate) fn points(&self) -> Vec<Point> {
        self.points.iter().copied().collect()
    }

    /// Reads `source` now and appends a point, dropping the oldest past `keep`.
    pub(crate) fn tick(&mut self, source: &Source, start: Instant, keep: usize) -> PoolTick {
        let now = Instant::now();
        let stats = source.stats();
        let snapshot = source.snapshot_of(&stats);
        let (finished, ok) = (stats.finished(), stats.completed);
        let (throughput, ok_rate) = match self.prev {
            Some((then, f0, ok0)) => {
                let dt = now.duration_since(then).as_secs_f64().max(1e-3);
                (
                    finished.saturating_sub(f0) as f64 / dt,
                    ok.saturating_sub(ok0) as f64 / dt,
                )
            }
            None => (0.0, 0.0),
        };
        self.prev = Some((now, finished, ok));
        let window = source.lifecycle.as_ref().map(Lifecycle::take_window);
        let (mut run, mut wait) = window.map(|w| (w.run, w.wait)).unwrap_or_default();
        let point = Point {
            t: now.duration_since(start).as_secs_f64(),
            throughput,
            ok_rate,
            failed_rate: (throughput - ok_rate).max(0.0),
            queued: stats.queued,
            busy: stats.busy,
            workers: stats.workers,
            run_p50: quantile(&mut run, 0.5),
            run_p99: quantile(&mut run, 0.99),
            wait_p50: quantile(&mut wait, 0.5),
            wait_p99: quantile(&mut wait, 0.99),
        };
        self.points.push_back(point);
        while self.points.len() > keep {
            self.points.pop_front();
        }
        PoolTick { snapshot, point }
    }
}

/// The `q` quantile of `samples` (nanoseconds) in seconds, by the nearest-rank
/// method; sorts `samples` in place (a no-op the second time).
fn quantile(samples: &mut [u64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1] as f64 / 1e9)
}

impl StatsJson {
    /// Tasks finished with an outcome other than `Ok`.
    pub fn failures(&self) -> u64 {
        self.finished() - self.completed
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<u64> = (1..=100).rev().map(|n| n * 1_000_000_000).collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50.0));
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut [7_000_000_000], 0.99), Some(7.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
