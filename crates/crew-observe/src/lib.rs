//! See a crew pool work: Prometheus metrics, a live web dashboard, and a
//! terminal `top`.
//!
//! Everything here reads crew's public API: [`Pool::stats`](crew::Pool::stats)
//! for the figures (counts per outcome, latency percentiles, one row per
//! worker) and [`Pool::events`](crew::Pool::events) for what stats do not keep
//! (worker restarts and crashes, per-second latencies).
//!
//! - [`Metrics`] (feature `metrics`, on by default): the pools in the
//!   Prometheus / OpenMetrics text format, via `prometheus-client`. It reads
//!   `stats()` at scrape time and **costs nothing while tasks run**.
//! - [`Dashboard`]: a small synchronous HTTP server (`tiny_http`) with one
//!   self-contained page that updates live over server-sent events, plus
//!   `/api/stats` (JSON), `/events` and `/metrics`.
//! - [`top`] (feature `top`, on by default): a terminal view of a pool in this
//!   process or of a dashboard's `/api/stats`; the `crew-top` binary wraps it.
//!
//! ```no_run
//! let pool = crew::Pool::builder().workers(4).build()?;
//! let server = crew_observe::Dashboard::new()
//!     .pool("work", &pool)
//!     .serve("127.0.0.1:9000")?;
//! // open http://127.0.0.1:9000/ ; Prometheus scrapes http://127.0.0.1:9000/metrics
//! for n in 0..1000u64 {
//!     pool.spawn(move || n * n);
//! }
//! pool.wait_idle();
//! drop(server); // stops the server
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! An observer holds a clone of each pool's handle: a pool stays open (its
//! last user handle dropping does not drain it) until the observer is dropped.
#![forbid(unsafe_code)]

mod dashboard;
pub mod history;
mod lifecycle;
#[cfg(feature = "metrics")]
mod metrics;
mod snapshot;
mod source;
#[cfg(feature = "top")]
pub mod top;

pub use dashboard::{Dashboard, DashboardServer, MAX_STREAMS};
pub use lifecycle::Lifecycle;
#[cfg(feature = "metrics")]
pub use metrics::{Metrics, CONTENT_TYPE};
pub use snapshot::{LatencyJson, LifecycleJson, PoolSnapshot, Snapshot, StatsJson, WorkerJson};
