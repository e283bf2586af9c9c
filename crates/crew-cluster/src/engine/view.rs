//! The pool's view of the nodes: its ids for their workers ([`WorkerIds`]),
//! and what it builds from their reports (`stats`, `workers`, `size`) or
//! asks of them (a kill, messages for their workers).

use std::collections::HashMap;
use std::time::Duration;

use crew::backend::{self, Figures, TimingSamples, Timings, WorkerFigures};
use crew::{Latency, RemoteWorker, Stats, WorkerId};

use super::state::{lock, State};
use crate::envelope::{self, Control, Killed, KIND_CONTROL, KIND_KILLED, KIND_REPORT};
use crate::node::Report;

/// The pool's ids for the nodes' workers. A node gets an ordinal the first
/// time this client hears of it (0, 1, …, never reused), and its local worker
/// `l` is the pool's worker `ordinal << 32 | l`: the first node's workers keep
/// their local ids. Ids are this client's: another client may number the
/// same worker otherwise. One entry per node ever seen (a node id and a
/// number), so a client that sees nodes come and go for years keeps a few
/// bytes for each.
#[derive(Debug, Default)]
pub(super) struct WorkerIds {
    ordinals: HashMap<String, u64>,
    nodes: Vec<String>,
}

/// Bits of a worker id that are the node's local id.
const LOCAL_BITS: u32 = 32;

impl WorkerIds {
    /// The pool's id of `node`'s local worker `local` (`None` for 0, or a
    /// local id too large to fit).
    pub(super) fn id(&mut self, node: &str, local: u64) -> Option<WorkerId> {
        if local >> LOCAL_BITS != 0 {
            return None;
        }
        let ordinal = match self.ordinals.get(node) {
            Some(o) => *o,
            None => {
                let o = self.nodes.len() as u64;
                self.ordinals.insert(node.to_owned(), o);
                self.nodes.push(node.to_owned());
                o
            }
        };
        backend::worker_id(ordinal << LOCAL_BITS | local)
    }

    /// The node and local id of the pool's worker `id`, if its node is known.
    pub(super) fn local(&self, id: WorkerId) -> Option<(&str, u64)> {
        let raw = id.as_u64();
        let node = self.nodes.get(usize::try_from(raw >> LOCAL_BITS).ok()?)?;
        Some((node, raw & ((1 << LOCAL_BITS) - 1)))
    }
}

impl<W: RemoteWorker> State<W> {
    /// Every node's report (none once the pool has ended, or if the broker
    /// cannot be reached), by node id.
    fn reports(&self) -> Vec<Report> {
        if self.has_ended() {
            return Vec::new();
        }
        let answers = self
            .client
            .gather(self.client.names().stats_subject.clone())
            .unwrap_or_default();
        let mut reports: Vec<Report> = answers
            .iter()
            .filter_map(|a| envelope::decode_kind(a, KIND_REPORT, "a node's report").ok())
            .collect();
        reports.sort_by(|a, b| a.row.id.cmp(&b.row.id));
        reports
    }

    /// The pool's ids of every worker in `reports`.
    fn ids_of(&self, reports: &[Report]) -> Vec<WorkerId> {
        let mut ids = lock(&self.ids);
        let mut out: Vec<WorkerId> = reports
            .iter()
            .flat_map(|r| r.workers.iter().map(move |w| (&r.row.id, w.id)))
            .filter_map(|(node, local)| ids.id(node, local))
            .collect();
        out.sort();
        out
    }

    pub(super) fn worker_ids(&self) -> Vec<WorkerId> {
        self.ids_of(&self.reports())
    }

    pub(super) fn size(&self) -> usize {
        self.reports().iter().map(|r| r.workers.len()).sum()
    }

    /// This client's counts, and the nodes' workers, latencies and times.
    pub(super) fn stats(&self) -> Stats {
        let reports = self.reports();
        let mut timings = Timings::new();
        let mut worker_time = Duration::ZERO;
        let mut workers = Vec::new();
        let mut running = Vec::new();
        for report in &reports {
            timings.add(&Timings::from_samples(&TimingSamples {
                wait: report.wait.clone(),
                run: report.run.clone(),
                busy: Duration::from_nanos(report.busy_nanos),
            }));
            worker_time += Duration::from_nanos(report.worker_time_nanos);
            for w in &report.workers {
                let Some(id) = self.worker(&report.row.id, w.id) else {
                    continue;
                };
                // Only this client's tasks have an id here.
                let current = w.task.as_deref().and_then(|t| self.client.number_of(t));
                if let Some(n) = current {
                    running.push((n, id));
                }
                workers.push(WorkerFigures {
                    id,
                    started: w.started,
                    stopping: w.stopping,
                    current_task: current.map(backend::task_id),
                    occupied: usize::from(w.busy),
                    tasks_done: w.tasks_done,
                    busy_time: Duration::from_nanos(w.busy_nanos),
                    run: latency(w.run),
                    pid: Some(report.row.pid),
                    rss_bytes: Some(report.row.rss_bytes),
                });
            }
        }
        // A row that runs a task is news of its start, if the notice has not
        // come (or was lost): the handle learns its worker, the events its
        // start.
        for (n, worker) in running {
            self.running(n, worker);
        }
        let counts = lock(&self.counts);
        let figures = Figures {
            submitted: counts.submitted,
            outcomes: counts.outcomes,
            timings,
            uptime: self.built.elapsed(),
            worker_time,
            workers,
            ..Figures::default()
        };
        drop(counts);
        let mut stats = figures.into_stats();
        if !self.has_ended() {
            stats.dead_letters = self.client.dead_letters().unwrap_or(0);
        }
        stats
    }

    /// Asks the worker's node to kill it; its task (if this client's)
    /// resolves as killed at once.
    pub(super) fn kill_worker(&self, id: WorkerId) -> bool {
        let Some((node, local)) = lock(&self.ids).local(id).map(|(n, l)| (n.to_owned(), l)) else {
            return false;
        };
        let Ok(request) = envelope::encode_kind(KIND_CONTROL, &Control::Kill { worker: local })
        else {
            return false;
        };
        let subject = self.client.names().node_control_subject(&node);
        let Ok(answer) = self.client.request(subject, request) else {
            return false;
        };
        let Ok(answer) = envelope::decode_kind::<Killed>(&answer, KIND_KILLED, "a kill's answer")
        else {
            return false;
        };
        if let Some(n) = answer
            .task
            .as_deref()
            .and_then(|t| self.client.number_of(t))
        {
            self.killed(n);
        }
        answer.killed
    }

    /// Sends `message` to every node's workers.
    pub(super) fn broadcast(&self, message: W::Message, sticky: bool) {
        let Ok(message) = postcard::to_stdvec(&message) else {
            return;
        };
        if let Ok(bytes) =
            envelope::encode_kind(KIND_CONTROL, &Control::Broadcast { sticky, message })
        {
            let _ = self
                .client
                .publish(self.client.names().control_subject.clone(), bytes);
        }
    }

    /// Sends `message` to worker `id` on its node; gives it back if its node
    /// is unknown to this client (or the message cannot be encoded).
    pub(super) fn send_to(&self, id: WorkerId, message: W::Message) -> Result<(), W::Message> {
        let Some((node, local)) = lock(&self.ids).local(id).map(|(n, l)| (n.to_owned(), l)) else {
            return Err(message);
        };
        let Ok(bytes) = postcard::to_stdvec(&message) else {
            return Err(message);
        };
        let control = Control::SendTo {
            worker: local,
            message: bytes,
        };
        match envelope::encode_kind(KIND_CONTROL, &control) {
            Ok(bytes) => {
                let subject = self.client.names().node_control_subject(&node);
                self.client.publish(subject, bytes).map_err(|_| message)
            }
            Err(_) => Err(message),
        }
    }
}

/// A worker row's run times as crew's `Latency`.
fn latency([count, p50, p90, p99, max]: [u64; 5]) -> Latency {
    let mut latency = Latency::default();
    latency.count = count;
    latency.p50 = Duration::from_nanos(p50);
    latency.p90 = Duration::from_nanos(p90);
    latency.p99 = Duration::from_nanos(p99);
    latency.max = Duration::from_nanos(max);
    latency
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_node_keeps_its_local_ids() {
        let mut ids = WorkerIds::default();
        let a1 = ids.id("a", 1).unwrap();
        assert_eq!(a1.as_u64(), 1);
        let b1 = ids.id("b", 1).unwrap();
        assert_eq!(b1.as_u64(), 1 << 32 | 1);
        assert_eq!(ids.id("a", 1), Some(a1), "stable");
        assert_eq!(ids.local(b1), Some(("b", 1)));
        assert_eq!(ids.local(a1), Some(("a", 1)));
        assert!(ids.id("a", 0).is_none(), "0 is never a worker");
        assert!(ids.id("a", 1 << 32).is_none());
        let unknown = backend::worker_id(7 << 32 | 1).unwrap();
        assert_eq!(ids.local(unknown), None);
    }
}
