//! The monitor thread: keeps the deadlines (task timeouts, tasks' deadlines
//! counted from submission, SIGKILL for a worker that did not exit within the
//! grace after SIGTERM, and an elastic pool's idle workers) until the pool is
//! closed and every worker is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::codec::RemoteWorker;
use super::state::{Alarm, AlarmKind, Lifecycle, Plan, Supervisor};
use crate::error::Failure;
use crate::events::ExitReason;

// ------------------------------------------------------------ the monitor

/// Keeps the deadlines until the pool is closed and every worker is gone.
pub(super) fn monitor_main<W: RemoteWorker>(shared: &Arc<Supervisor<W>>) {
    let mut st = shared.lock();
    loop {
        if st.lifecycle != Lifecycle::Open && st.links.is_empty() && st.starting == 0 {
            st.monitor_running = false;
            drop(st);
            shared.changed.notify_all();
            return;
        }
        let now = Instant::now();
        let due: Vec<Alarm> = {
            let (due, later): (Vec<Alarm>, Vec<Alarm>) =
                st.alarms.drain(..).partition(|a| a.at <= now);
            st.alarms = later;
            due
        };
        let mut plan = Plan::default();
        for alarm in due {
            let Some(i) = Supervisor::<W>::link_index(&st, alarm.worker) else {
                continue;
            };
            match alarm.what {
                AlarmKind::Kill => st.links[i].process.signal_group(Signal::SIGKILL),
                AlarmKind::Silence => {
                    st.links[i].silence_armed = false;
                    // The oldest take-back still unanswered, if any.
                    let oldest = st.links[i].window.iter().filter_map(|f| f.stolen_at).min();
                    let limit = shared.process.silence_limit;
                    if let Some(at) = oldest.filter(|at| *at + limit > now) {
                        // Answered in time; a later one waits: watch it next.
                        st.links[i].silence_armed = true;
                        shared.add_alarm(
                            &mut st,
                            Alarm {
                                at: at + limit,
                                worker: alarm.worker,
                                what: AlarmKind::Silence,
                            },
                        );
                    } else if oldest.is_some() {
                        let why = format!(
                            "crew: the worker did not answer for {:?} (stopped or wedged) \
                             while it held tasks another worker could run; killed",
                            shared.process.silence_limit
                        );
                        shared.kill_silent(&mut st, alarm.worker, why);
                    }
                }
                AlarmKind::Timeout(task) => {
                    // Due while the task is still the head of this worker's
                    // window (its clock: `Supervisor::arm_head`): whether or
                    // not the worker said *started*, it may be running it, and
                    // killing the worker is the only way to stop it.
                    let head = st.links[i]
                        .window
                        .front()
                        .filter(|f| f.entry.id() == task)
                        .map(|f| (Arc::clone(&f.entry), f.head_since));
                    if let Some((entry, since)) = head {
                        let ran = since.map_or(Duration::ZERO, |s| s.elapsed());
                        shared.fail(
                            &mut st,
                            &entry,
                            Failure::TimedOut,
                            Some((alarm.worker, ran)),
                        );
                        shared.kill_link(&mut st, alarm.worker, ExitReason::Killed, None);
                    }
                }
            }
        }
        // Deadlines from submission, wherever their tasks are (`queue_control.rs`).
        shared.expire_deadlines(&mut st, now, &mut plan);
        // Workers idle for `idle_timeout` above the minimum (`sizing.rs`).
        let idle_check = shared.retire_idle(&mut st, now, &mut plan);
        if !plan.start.is_empty() || plan.notify {
            drop(st);
            shared.finish(std::mem::take(&mut plan));
            st = shared.lock();
            continue;
        }
        let next = [
            st.alarms.iter().map(|a| a.at).min(),
            st.deadlines.next(),
            idle_check,
        ]
        .into_iter()
        .flatten()
        .min();
        st = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                shared
                    .alarm
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.alarm.wait(st).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
