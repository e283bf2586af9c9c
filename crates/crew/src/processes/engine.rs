//! The process backend as the pool sees it: starting it, and the [`Engine`]
//! implementation behind `Pool`'s `Remote` arm, stats included.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::arena;
use super::codec::{self, RemoteWorker};
use super::key_table::{KeyTable, KEY_TABLE_CAP};
use super::monitor::monitor_main;
use super::process_handle::Launcher;
use super::state::{Entry, Lifecycle, Observed, Plan, State, Supervisor};
use super::ProcessConfig;
use crate::backend::{Admission, BackendKind, Batch, Config, Engine};
use crate::error::{Failure, ResizeError, ShutdownTimedOut, SubmitError};
use crate::events::{Bus, Events, ExitReason};
use crate::stats::{Figures, OutcomeCounts, Stats, WorkerFigures};
use crate::task::cell::Outcome;
use crate::task::{Task, TaskId, TaskOptions};
use crate::wire::ToWorker;
use crate::worker::WorkerId;

/// Starts a process pool of `W`. The builder's `processes` stores this function.
pub(crate) fn start<W: RemoteWorker>(
    config: Config,
    process: ProcessConfig,
) -> std::io::Result<Arc<dyn Engine<W>>> {
    let events = Arc::new(Bus::new(config.event_buffer));
    let config_event_buffer = config.event_buffer;
    let launcher = Launcher {
        program: process.program.clone(),
        args: process.args.clone(),
        type_name: std::any::type_name::<W>(),
        output: process.output.clone(),
        // Without an arena (memfd refused), every input goes through the socket.
        arena: arena::Arena::new().ok(),
        frame_limit: process.frame_limit(),
        kill_grace: process.kill_grace,
    };
    let shared = Arc::new(Supervisor::<W> {
        state: Mutex::new(State {
            lifecycle: Lifecycle::Open,
            sticky_messages: Vec::new(),
            queue: Default::default(),
            links: Vec::new(),
            starting: 0,
            min_workers: config.workers(),
            max_workers: config.max_workers(),
            key_owners: KeyTable::new(KEY_TABLE_CAP),
            estimates: KeyTable::new(KEY_TABLE_CAP),
            counts: [0; Outcome::SLOTS],
            submitted: 0,
            start_failures: 0,
            last_start_error: None,
            room_wakers: Vec::new(),
            idle_wakers: Vec::new(),
            threads: Vec::new(),
            alarms: Vec::new(),
            monitor_running: true,
            observed: Observed::new(),
            deadlines: Default::default(),
            take_backs: Vec::new(),
            next_take_back: 0,
        }),
        changed: Condvar::new(),
        alarm: Condvar::new(),
        next_task: AtomicU64::new(1),
        next_worker: AtomicU64::new(1),
        size: AtomicUsize::new(config.workers()),
        config,
        process,
        launcher,
        events,
        messages: Arc::new(Bus::new(config_event_buffer)),
    });
    let monitor = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("crew-monitor".into())
            .spawn(move || monitor_main(&shared))?
    };
    let mut st = shared.lock();
    st.threads.push(monitor);
    let plan = shared.plan_capacity(&mut st);
    drop(st);
    shared.start_links(plan.start);
    Ok(Arc::new(shared))
}

// ------------------------------------------------------------ the engine

impl<W: RemoteWorker> Engine<W> for Arc<Supervisor<W>> {
    fn kind(&self) -> BackendKind {
        BackendKind::Processes
    }

    fn submit(
        &self,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        self.submit_entry(input, options, admission)
    }

    fn poll_room(&self, waker: &Waker) -> bool {
        let mut st = self.lock();
        let full = self
            .config
            .queue_capacity
            .is_some_and(|cap| Supervisor::<W>::queued(&st) >= cap);
        if full && st.lifecycle == Lifecycle::Open {
            st.room_wakers.push(waker.clone());
            false
        } else {
            true
        }
    }

    fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        while !Supervisor::<W>::is_idle(&st) {
            st = match deadline {
                None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.changed
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        true
    }

    fn poll_idle(&self, waker: &Waker) -> bool {
        let mut st = self.lock();
        if Supervisor::<W>::is_idle(&st) {
            return true;
        }
        st.idle_wakers.push(waker.clone());
        false
    }

    fn close(&self) {
        let mut st = self.lock();
        if st.lifecycle == Lifecycle::Open {
            st.lifecycle = Lifecycle::Closing;
        }
        let mut plan = Plan::default();
        self.dispatch(&mut st, &mut plan);
        plan.wakers.append(&mut st.room_wakers);
        plan.notify = true;
        if st.links.is_empty() && st.starting == 0 {
            self.alarm.notify_all();
            self.events.close();
            self.messages.close();
        }
        drop(st);
        self.finish(plan);
    }

    fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        self.close();
        let mut st = self.lock();
        let mut timed_out = false;
        let mut still_running = 0;
        while !(st.links.is_empty() && st.starting == 0 && !st.monitor_running) {
            st = match deadline {
                Some(d) if !timed_out => {
                    let now = Instant::now();
                    if now >= d {
                        timed_out = true;
                        still_running = st.links.len();
                        drop(st);
                        self.terminate();
                        self.lock()
                    } else {
                        self.changed
                            .wait_timeout(st, (d - now).min(Duration::from_millis(100)))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                }
                _ => {
                    self.changed
                        .wait_timeout(st, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            self.alarm.notify_all();
        }
        let threads = std::mem::take(&mut st.threads);
        drop(st);
        for t in threads {
            let _ = t.join();
        }
        if timed_out {
            Err(ShutdownTimedOut { still_running })
        } else {
            Ok(())
        }
    }

    fn terminate(&self) {
        let mut st = self.lock();
        if st.lifecycle == Lifecycle::Terminating {
            return;
        }
        st.lifecycle = Lifecycle::Terminating;
        let queued: Vec<Entry<W>> = st.queue.iter_mut().flat_map(|q| q.drain(..)).collect();
        for entry in queued {
            self.fail(&mut st, &entry, Failure::Closed, None);
        }
        let ids: Vec<WorkerId> = st.links.iter().map(|l| l.id).collect();
        for id in ids {
            self.kill_link(&mut st, id, ExitReason::Shutdown, Some(Failure::Cancelled));
        }
        let mut plan = Plan::default();
        plan.wakers.append(&mut st.room_wakers);
        plan.notify = true;
        drop(st);
        self.finish(plan);
    }

    fn is_closed(&self) -> bool {
        self.lock().lifecycle != Lifecycle::Open
    }

    fn cancel_queued(&self) -> usize {
        Supervisor::cancel_queued(self)
    }

    fn kill_worker(&self, id: WorkerId) -> bool {
        let mut st = self.lock();
        let killed = self.kill_link(&mut st, id, ExitReason::Killed, Some(Failure::Killed));
        let plan = if killed {
            self.plan_capacity(&mut st)
        } else {
            Plan::default()
        };
        drop(st);
        self.finish(plan);
        killed
    }

    fn worker_ids(&self) -> Vec<WorkerId> {
        let st = self.lock();
        let mut ids: Vec<WorkerId> = st
            .links
            .iter()
            .filter(|l| l.killing.is_none() && !l.retiring)
            .map(|l| l.id)
            .collect();
        ids.sort();
        ids
    }

    fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    fn resize(&self, workers: std::ops::RangeInclusive<usize>) -> Result<(), ResizeError> {
        Supervisor::resize(self, *workers.start(), *workers.end())
    }

    fn events(&self) -> Events {
        self.events.subscribe()
    }

    fn messages(&self) -> crate::Messages<W::Message> {
        crate::Messages::subscribe(&self.messages)
    }

    fn broadcast(&self, message: W::Message, sticky: bool) {
        let payload = match codec::encode_message(&message, sticky) {
            Ok(payload) => payload,
            Err(e) => {
                eprintln!(
                    "crew: a broadcast message could not be encoded, so it was not sent: {e}"
                );
                return;
            }
        };
        let mut st = self.lock();
        if sticky {
            st.sticky_messages.push(payload.clone());
        }
        let mut plan = Plan::default();
        let mut refused = None;
        for link in &st.links {
            let sent = link.process.writer.append(|enc| {
                enc.push(&ToWorker::Message {
                    payload: payload.clone(),
                })
            });
            refused = refused.or(sent.err());
            plan.flush.push(Arc::clone(&link.process));
        }
        drop(st);
        if let Some(e) = refused {
            // Above the frame limit (`max_message_size`): no worker can take it.
            eprintln!("crew: a broadcast message was not sent: {e}");
        }
        for process in &plan.flush {
            process.writer.pump();
        }
    }

    fn send_to(&self, id: WorkerId, message: W::Message) -> Result<(), W::Message> {
        let payload = match codec::encode_message(&message, false) {
            Ok(payload) => payload,
            Err(e) => {
                eprintln!("crew: a message could not be encoded, so it was not sent: {e}");
                return Ok(());
            }
        };
        let st = self.lock();
        let Some(link) = st.links.iter().find(|l| l.id == id && l.killing.is_none()) else {
            return Err(message);
        };
        let process = Arc::clone(&link.process);
        let sent = process
            .writer
            .append(|enc| enc.push(&ToWorker::Message { payload }));
        drop(st);
        if let Err(e) = sent {
            eprintln!("crew: a message was not sent: {e}");
        }
        process.writer.pump();
        Ok(())
    }

    fn bus(&self) -> Arc<Bus> {
        Arc::clone(&self.events)
    }

    fn chunks_enabled(&self) -> bool {
        self.config.default_timeout.is_none()
    }

    fn submit_chunk(
        &self,
        pull: &mut dyn FnMut() -> Option<W::Input>,
        max_items: usize,
    ) -> Vec<Batch<W::Output, W::Error>> {
        Supervisor::submit_chunk(self, pull, max_items)
    }

    fn stats(&self) -> Stats {
        let st = self.lock();
        let now = Instant::now();
        let mut busy_so_far = Duration::ZERO;
        let mut worker_time = st.observed.retired_worker_time;
        let mut processes = Vec::with_capacity(st.links.len());
        let workers: Vec<WorkerFigures> = st
            .links
            .iter()
            .map(|l| {
                let so_far = l.running.map_or(Duration::ZERO, |(_, since)| {
                    now.saturating_duration_since(since)
                });
                busy_so_far += so_far;
                worker_time += now.saturating_duration_since(l.born);
                processes.push(Arc::clone(&l.process));
                WorkerFigures {
                    id: l.id,
                    started: l.ready,
                    stopping: l.killing.is_some() || l.retiring || l.shutdown_sent,
                    // The task it said it started (the one `Task::worker` names).
                    current_task: l.running.map(|(r, _)| TaskId(r)),
                    // A worker holding tasks is busy even before its *started*
                    // arrives (it may be stopped mid-task); a worker being
                    // killed holds its place until it is reaped.
                    occupied: usize::from(
                        l.running.is_some() || !l.window.is_empty() || l.killing.is_some(),
                    ),
                    tasks_done: l.tasks_done,
                    busy_time: l.timings.busy() + so_far,
                    run: l.timings.run_latency(),
                    pid: u32::try_from(l.process.pid).ok(),
                    rss_bytes: None,
                }
            })
            .collect();
        let mut figures = Figures {
            submitted: st.submitted,
            outcomes: OutcomeCounts::from_slots(st.counts),
            abandoned_threads: 0,
            start_failures: st.start_failures,
            last_start_error: st.last_start_error.clone(),
            timings: st.observed.timings.clone(),
            uptime: now.saturating_duration_since(st.observed.created),
            busy_so_far,
            worker_time,
            workers,
        };
        drop(st);
        // `/proc` is read after the lock is released.
        for (row, process) in figures.workers.iter_mut().zip(processes) {
            row.rss_bytes = process.rss_bytes();
        }
        figures.into_stats()
    }
}
