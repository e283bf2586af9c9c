//! `Source`: one observed pool, with its type erased, so the exporter and the
//! dashboard hold pools of different worker types in one list.

use crew::{Pool, Stats, Worker};

use crate::lifecycle::Lifecycle;
use crate::snapshot::{LifecycleJson, PoolSnapshot, StatsJson};

/// One named pool: how to read its stats, and its lifecycle counter if it is
/// observed with events.
pub(crate) struct Source {
    pub(crate) name: String,
    /// Calls `Pool::stats` on a clone of the pool's handle. Holding the handle
    /// keeps the pool open (dropping the user's last handle does not drain it)
    /// until the observer that owns this source is dropped.
    stats: Box<dyn Fn() -> Stats + Send + Sync>,
    pub(crate) lifecycle: Option<Lifecycle>,
}

impl Source {
    pub(crate) fn new<W: Worker>(name: &str, pool: &Pool<W>, lifecycle: Option<Lifecycle>) -> Self {
        let pool = pool.clone();
        Source {
            name: name.to_owned(),
            stats: Box::new(move || pool.stats()),
            lifecycle,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        (self.stats)()
    }

    /// The JSON form of the pool now.
    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        self.snapshot_of(&self.stats())
    }

    pub(crate) fn snapshot_of(&self, stats: &Stats) -> PoolSnapshot {
        PoolSnapshot {
            name: self.name.clone(),
            stats: StatsJson::from_stats(stats),
            lifecycle: self.lifecycle.as_ref().map(LifecycleJson::of),
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("events", &self.lifecycle.is_some())
            .finish_non_exhaustive()
    }
}
