//! The link threads: one per worker process. It starts the process, reads
//! every frame the process sends and applies them under the state lock (a
//! whole read's worth at a time), and once the process ends it reaps it and
//! settles the tasks it held, so the pool starts a replacement.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::codec::{self, RemoteWorker};
use super::process_handle::WorkerProcess;
use super::state::{Entry, Lifecycle, LinkState, Plan, State, Supervisor};
use super::worker_main;
use crate::error::{Crash, Failure, Panic, TaskError};
use crate::events::{Event, ExitReason};
use crate::stats::Timings;
use crate::task::TaskId;
use crate::wire::ProtocolError;
use crate::wire::{
    FrameDecoder, Hello, Outcome as WireOutcome, Role, ToParent, ToWorker, WireMessage,
};
use crate::worker::WorkerId;

impl<W: RemoteWorker> Supervisor<W> {
    // ------------------------------------------------------------ frames

    /// Applies the frames of one read from worker `id`.
    pub(super) fn on_frames(
        &self,
        st: &mut State<W>,
        id: WorkerId,
        frames: Vec<ToParent>,
        plan: &mut Plan,
    ) -> Result<(), String> {
        let Some(i) = Self::link_index(st, id) else {
            return Ok(());
        };
        for frame in frames {
            match frame {
                ToParent::Ready => {
                    if st.links[i].ready {
                        return Err("a second ready".into());
                    }
                    st.links[i].ready = true;
                    st.links[i].idle_since = Some(Instant::now());
                    st.start_failures = 0;
                    crate::trace::worker_started(id);
                    if self.events.is_active() {
                        self.events.emit(Event::WorkerStarted { worker: id });
                    }
                }
                ToParent::StartFailed { message } => {
                    // The link thread reports it when the process exits.
                    st.last_start_error = Some(message);
                }
                ToParent::Message { payload } => match codec::decode::<W::Message>(&payload) {
                    Ok(message) => {
                        plan.woken_readers
                            .push(self.messages.emit_deferred((id, message)));
                    }
                    Err(e) => {
                        return Err(format!("could not decode a message from the worker: {e}"))
                    }
                },
                ToParent::Started { id: task } => {
                    let link = &mut st.links[i];
                    let Some(flight) = link.window.iter_mut().find(|f| f.entry.id() == task) else {
                        return Err(format!("started a task it was not sent ({task})"));
                    };
                    // A take-back that lost the race: answered, the worker is
                    // not silent (it runs the task where it is).
                    flight.stolen_at = None;
                    let take_back = flight.take_back.take();
                    let entry = Arc::clone(&flight.entry);
                    let now = Instant::now();
                    link.running = Some((task, now));
                    entry.core.header().set_worker(id);
                    if let Some(call) = take_back {
                        // Begun before `cancel_queued`'s *cancel* came: it runs.
                        Self::take_back_answered(st, call, 0);
                        plan.notify = true;
                    }
                    if entry.core.header().is_decided() {
                        // Cancelled while it was on its way: stop it the only way.
                        self.kill_link(st, id, ExitReason::Killed, None);
                        continue;
                    }
                    let waited = entry
                        .core
                        .header()
                        .queued_at
                        .map_or(Duration::ZERO, |q| now.saturating_duration_since(q));
                    st.observed.timings.record_wait(waited);
                    crate::trace::remote_started(TaskId(task), id, waited);
                    if self.events.is_active() {
                        for task in entry.item_ids() {
                            self.events.emit(Event::TaskStarted {
                                task,
                                worker: id,
                                waited,
                            });
                        }
                    }
                    // The timeout clock started when the task became the
                    // head of the window (`Supervisor::arm_head`), not here.
                }
                ToParent::Done { id: task, outcome } => {
                    let link = &mut st.links[i];
                    let Some(at) = link.window.iter().position(|f| f.entry.id() == task) else {
                        return Err(format!("finished a task it was not sent ({task})"));
                    };
                    if link.window[at].entry.chunk.is_some()
                        && !matches!(outcome, WireOutcome::NotStarted)
                    {
                        return Err(format!("answered chunk {task} as a task"));
                    }
                    let flight = link.window.remove(at).expect("position is in range");
                    link.outstanding = (link.outstanding - flight.est).max(0.0);
                    let ran = match link.running {
                        Some((r, since)) if r == task => {
                            link.running = None;
                            Some(since.elapsed())
                        }
                        _ => None,
                    };
                    let entry = flight.entry;
                    let not_started = matches!(outcome, WireOutcome::NotStarted);
                    // Asked back by `cancel_queued`: cancelled if not started.
                    let take_back = flight.take_back;
                    let requeue = not_started
                        && flight.stolen
                        && take_back.is_none()
                        && !entry.core.header().is_decided();
                    if !requeue {
                        entry.release_input();
                    }
                    if let Some(call) = take_back {
                        if !not_started {
                            Self::take_back_answered(st, call, 0);
                        }
                        plan.notify = true;
                    }
                    let limit = self.process.max_message_size;
                    let too_large = |size: u64| {
                        Err(TaskError::failure(Failure::TooLarge {
                            what: "result",
                            size,
                            limit,
                        }))
                    };
                    let result: Result<W::Output, TaskError<W::Error>> = match outcome {
                        WireOutcome::NotStarted => {
                            if requeue {
                                let level = entry.core.header().priority.index();
                                st.queue[level].push_front(entry);
                            } else if let Some(call) = take_back {
                                self.cancel_taken_back(st, &entry, call);
                            }
                            continue;
                        }
                        // crew's worker never sends a result above the limit
                        // (it sends *too large*); one from another worker is
                        // refused the same way, not decoded.
                        WireOutcome::TooLarge(size) => too_large(size),
                        WireOutcome::Ok(bytes) | WireOutcome::UserError(bytes)
                            if bytes.len() as u64 > limit =>
                        {
                            too_large(bytes.len() as u64)
                        }
                        WireOutcome::Ok(bytes) => match codec::decode::<W::Output>(&bytes) {
                            Ok(output) => Ok(output),
                            Err(e) => {
                                let message = format!("could not decode the task's output: {e}");
                                self.fail(
                                    st,
                                    &entry,
                                    Failure::Protocol(message.clone()),
                                    Some((id, ran.unwrap_or_default())),
                                );
                                return Err(message);
                            }
                        },
                        WireOutcome::UserError(bytes) => match codec::decode::<W::Error>(&bytes) {
                            Ok(error) => Err(TaskError::user(error)),
                            Err(e) => {
                                let message = format!("could not decode the task's error: {e}");
                                self.fail(
                                    st,
                                    &entry,
                                    Failure::Protocol(message.clone()),
                                    Some((id, ran.unwrap_or_default())),
                                );
                                return Err(message);
                            }
                        },
                        WireOutcome::Panicked(message) => Err(TaskError::failure(
                            Failure::Panicked(Panic::message(message)),
                        )),
                    };
                    if let Some(ran) = ran {
                        let micros = ran.as_secs_f64() * 1e6;
                        let est = st.estimates.get_or_insert_mut(entry.key, || micros);
                        *est = 0.8 * *est + 0.2 * micros;
                    }
                    self.resolve(st, &entry, result, Some((id, ran.unwrap_or_default())));
                    let link = &mut st.links[i];
                    link.tasks_done += 1;
                    let recycle = link.recycle_after.is_some_and(|n| link.tasks_done >= n)
                        || self.process.max_memory.is_some_and(|max| {
                            link.process.rss_bytes().is_some_and(|rss| rss > max)
                        });
                    // A worker being killed is not recycled: its answers in the grace
                    // (`worker_stop.rs`) must not turn its kill into a retirement.
                    if recycle && !link.retiring && link.killing.is_none() {
                        link.retiring = true;
                        let more = self.plan_capacity(st);
                        plan.start.extend(more.start);
                    }
                }
                ToParent::ChunkDone {
                    id: chunk,
                    run_nanos,
                    outcomes,
                } => self.on_chunk_done(st, i, chunk, run_nanos, outcomes, plan)?,
                ToParent::Progress { id: task, fraction } => {
                    // Ignored, not a fault, for a task this worker does not
                    // hold (it finished, or the frame crossed a take-back) and
                    // for a chunk (whose items have no handle of their own).
                    // `set` ignores NaN, clamps, and ignores a decided task.
                    let flight = st.links[i].window.iter().find(|f| f.entry.id() == task);
                    if let Some(flight) = flight.filter(|f| f.entry.chunk.is_none()) {
                        if flight.entry.core.progress().set(fraction) {
                            plan.progressed.push(Arc::clone(&flight.entry) as _);
                        }
                    }
                }
            }
        }
        // Answers moved the head of the window: the next task's clock starts.
        self.arm_head(st, i);
        let link = &mut st.links[i];
        if link.window.is_empty() && link.backlog.is_empty() && link.idle_since.is_none() {
            link.idle_since = Some(Instant::now()); // elastic retirement's clock
        }
        self.dispatch(st, plan);
        Ok(())
    }
}

// ------------------------------------------------------------ link threads

/// How a worker's channel ended.
pub(super) enum End {
    /// The worker closed it (it exited, or was killed).
    Closed,
    /// It sent bytes that break the protocol.
    Protocol(String),
    /// It closed the channel in the middle of a frame. If the process died
    /// (a signal, a non-zero exit), that is a crash: an OOM kill while it
    /// wrote a large answer is a crash with its signal, retried like any
    /// other. If it exited cleanly with half a frame written, it broke the
    /// protocol.
    Cut(String),
}

/// The life of one worker process: start it (after `backoff`), read and apply
/// its frames, then reap it and settle its tasks.
pub(super) fn link_main<W: RemoteWorker>(shared: &Arc<Supervisor<W>>, backoff: Duration) {
    if !backoff.is_zero() {
        let deadline = Instant::now() + backoff;
        let mut st = shared.lock();
        loop {
            let now = Instant::now();
            if now >= deadline || st.lifecycle == Lifecycle::Terminating {
                break;
            }
            st = shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    {
        let mut st = shared.lock();
        let wanted = match st.lifecycle {
            // Unless a shrink came first: the pool already counts its
            // maximum without this start (`sizing.rs`).
            Lifecycle::Open => Supervisor::<W>::counted(&st).saturating_sub(1) < st.max_workers,
            Lifecycle::Closing => Supervisor::<W>::queued(&st) > 0,
            Lifecycle::Terminating => false,
        };
        if !wanted {
            st.starting -= 1;
            shared.check_finished(&st);
            drop(st);
            shared.changed.notify_all();
            return;
        }
    }
    let id = WorkerId::new(shared.next_worker.fetch_add(1, Relaxed));
    let process = match WorkerProcess::spawn(&shared.launcher, id) {
        Ok(p) => p,
        Err(e) => {
            let mut st = shared.lock();
            st.starting -= 1;
            start_failed(
                shared,
                &mut st,
                id,
                format!("could not start the worker process: {e}"),
            );
            let plan = shared.plan_capacity(&mut st);
            shared.check_finished(&st);
            drop(st);
            shared.changed.notify_all();
            shared.start_links(plan.start);
            return;
        }
    };
    // The hello goes first, before any dispatcher can reach this worker.
    let _ = process
        .writer
        .send(|enc| enc.push(&Hello::new(Role::Parent, shared.process.frame_limit())));
    {
        let mut st = shared.lock();
        st.starting -= 1;
        let recycle_after = shared
            .process
            .max_tasks_per_worker
            .map(|n| with_jitter(n, id));
        st.links.push(LinkState {
            id,
            process: Arc::clone(&process),
            ready: false,
            retiring: false,
            retired: false,
            killing: None,
            shutdown_sent: false,
            window: VecDeque::new(),
            running: None,
            outstanding: 0.0,
            backlog: VecDeque::new(),
            tasks_done: 0,
            recycle_after,
            timings: Timings::new(),
            born: Instant::now(),
            idle_since: None,
            silenced: None,
            silence_armed: false,
        });
        // Sticky messages first, under the lock a broadcast takes: each one
        // reaches this worker exactly once, before its first task.
        for payload in &st.sticky_messages {
            let _ = process.writer.append(|enc| {
                enc.push(&ToWorker::Message {
                    payload: payload.clone(),
                })
            });
        }
        if st.lifecycle == Lifecycle::Terminating {
            shared.kill_link(&mut st, id, ExitReason::Shutdown, None);
        }
        if st.lifecycle == Lifecycle::Open && Supervisor::<W>::counted(&st) > st.max_workers {
            // A shrink came while this process was starting (after the check
            // above): it retires as soon as it is up, running `stop`.
            let i = st.links.len() - 1;
            shared.retire_link(&mut st, i, &mut Plan::default());
        }
        if Supervisor::<W>::counted(&st) > st.min_workers {
            // Above its minimum, the pool retires idle workers: the monitor
            // may be waiting with no deadline at all (`retire_idle`).
            shared.alarm.notify_all();
        }
    }
    process.writer.pump();
    let end = read_frames(shared, &process, id);
    if matches!(end, End::Protocol(_)) {
        process.signal_group(Signal::SIGKILL);
    }
    let crash = process.reap();
    let end = match end {
        End::Cut(_) if crash.signal.is_some() || crash.exit_code != Some(0) => End::Closed,
        End::Cut(message) => End::Protocol(message),
        end => end,
    };
    link_ended(shared, id, end, crash);
}

/// Spreads recycling: each worker retires after `n` tasks, give or take 10%.
pub(super) fn with_jitter(n: u64, id: WorkerId) -> u64 {
    let spread = (n / 10).max(1);
    // A cheap, per-worker deterministic mix (splitmix64 of the id).
    let mut x = id.as_u64().wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (n - spread.min(n - 1)) + x % (2 * spread + 1)
}

/// Reads frames until the channel ends; applies each read's frames at once.
pub(super) fn read_frames<W: RemoteWorker>(
    shared: &Arc<Supervisor<W>>,
    process: &Arc<WorkerProcess>,
    id: WorkerId,
) -> End {
    // The limit this pool announced in its hello: a length above it is refused
    // as soon as its four bytes are in, before anything is allocated for it.
    let mut decoder = FrameDecoder::new(shared.process.frame_limit());
    let mut greeted = false;
    let mut frames = Vec::new();
    let mut poll = Duration::ZERO;
    let limit = shared.process.silence_limit;
    loop {
        if decoder.buffered_len() > 0 && !readable_within(&process.stream, limit) {
            // Part of a frame came and the rest did not: the worker is stopped
            // or wedged in the middle of a write. A partial read has a
            // deadline like any other wait on a worker (invariant 6).
            return End::Protocol(format!(
                "the worker stopped in the middle of a frame ({} bytes of it came, \
                 then nothing for {limit:?})",
                decoder.buffered_len()
            ));
        }
        match worker_main::read_soon(&mut decoder, &process.stream, poll) {
            Ok(0) => {
                return match decoder.finish() {
                    Ok(()) => End::Closed,
                    Err(e) if e.is_truncated() => End::Cut(e.to_string()),
                    Err(e) => End::Protocol(e.to_string()),
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return End::Closed,
        }
        loop {
            let next: Result<Option<ToParent>, ProtocolError> = if greeted {
                decoder.next_message()
            } else {
                match decoder.next_frame() {
                    Ok(Some(frame)) => match Hello::decode(frame).and_then(|h| {
                        h.check_role(Role::Worker)?;
                        Ok(h)
                    }) {
                        Ok(hello) => {
                            process.writer.set_frame_limit(hello.frame_limit);
                            greeted = true;
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            match next {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return End::Protocol(e.to_string()),
            }
        }
        if frames.is_empty() {
            continue;
        }
        let mut plan = Plan::default();
        let mut st = shared.lock();
        let applied = shared.on_frames(&mut st, id, std::mem::take(&mut frames), &mut plan);
        poll = Supervisor::<W>::answer_expected_within(&st, id);
        drop(st);
        shared.finish(plan);
        if let Err(message) = applied {
            return End::Protocol(message);
        }
    }
}

/// Whether `stream` has bytes (or its end) to read within `limit`.
fn readable_within(stream: &std::os::unix::net::UnixStream, limit: Duration) -> bool {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            stream.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
            Ok(0) if Instant::now() < deadline => continue,
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true, // let the read report it
        }
    }
}

pub(super) fn start_failed<W: RemoteWorker>(
    shared: &Supervisor<W>,
    st: &mut State<W>,
    id: WorkerId,
    message: String,
) {
    st.start_failures += 1;
    st.last_start_error = Some(message.clone());
    if shared.events.is_active() {
        shared.events.emit(Event::WorkerStartFailed {
            worker: id,
            message,
            consecutive: st.start_failures,
        });
    }
    // The circuit breaker: with no worker up after `start_attempts` failures in a
    // row, waiting tasks fail instead of waiting for ever.
    if let Some(failure) = shared.broken(st) {
        let waiting: Vec<Entry<W>> = st.queue.iter_mut().flat_map(|q| q.drain(..)).collect();
        for entry in waiting {
            shared.fail(st, &entry, failure.clone(), None);
        }
    }
}

/// Settles everything worker `id` held once its process is reaped.
pub(super) fn link_ended<W: RemoteWorker>(
    shared: &Arc<Supervisor<W>>,
    id: WorkerId,
    end: End,
    crash: Crash,
) {
    let mut st = shared.lock();
    let Some(i) = Supervisor::<W>::link_index(&st, id) else {
        return;
    };
    let link = st.links.remove(i);
    let mut crash = crash;
    if let Some(note) = &link.silenced {
        crash.stderr.push(note.clone());
    }
    st.observed.retired_worker_time += link.born.elapsed();
    st.alarms.retain(|a| a.worker != id);
    st.key_owners.retain(|_, w| *w != id);
    let mut window = link.window;
    let reason = match (&link.killing, link.retiring, &end) {
        (Some(reason), _, _) => *reason,
        (None, true, End::Closed) if crash.exit_code == Some(0) && link.retired => {
            ExitReason::Retired
        }
        (None, true, End::Closed) if crash.exit_code == Some(0) => ExitReason::Recycled,
        (None, false, End::Closed) if link.shutdown_sent && crash.exit_code == Some(0) => {
            ExitReason::Shutdown
        }
        _ => ExitReason::Crashed,
    };
    if !link.ready && link.killing.is_none() {
        // It never got to take tasks: a start failure.
        let message = match st.last_start_error.take() {
            Some(m) if crash.exit_code == Some(0) => m,
            _ => match &end {
                End::Protocol(e) => format!("the worker process failed the handshake: {e}"),
                End::Closed | End::Cut(_) => super::guard::explain(&crash)
                    .unwrap_or_else(|| format!("the worker process {crash}")),
            },
        };
        start_failed(shared, &mut st, id, message);
    } else if reason == ExitReason::Crashed {
        // The death is charged to the task it said it was running. If it had
        // not said (its *started* was still buffered, with the answers of the
        // tasks before it) and held one task only, that task is charged. With
        // several, nobody is: every task it held runs again, each alone on a
        // worker (`suspect`), so a second death names the task.
        let culprit = match link.running {
            Some((r, _)) => window.iter().position(|f| f.entry.id() == r),
            None if window.len() == 1 => Some(0),
            None => {
                for flight in &window {
                    flight.entry.suspect.store(true, Relaxed);
                }
                None
            }
        };
        if let Some(at) = culprit {
            let flight = window.remove(at).expect("position is in range");
            if let Some(call) = flight.take_back {
                // Charged with the death, not cancelled: it may have run.
                Supervisor::<W>::take_back_answered(&mut st, call, 0);
            }
            let entry = flight.entry;
            let ran = link
                .running
                .map(|(_, since)| since.elapsed())
                .unwrap_or_default();
            let by_signal = crash.signal.is_some();
            let retry = !entry.core.header().is_decided()
                && (!by_signal || shared.process.retry_signals)
                && entry
                    .retries_left
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                && matches!(end, End::Closed);
            let failure = match &end {
                End::Protocol(message) | End::Cut(message) => Failure::Protocol(message.clone()),
                End::Closed => Failure::Crashed(crash.clone()),
            };
            if entry.chunk.is_some() {
                // Its items run again one by one, so only the culprit fails.
                shared.split_chunk(&mut st, entry);
            } else if retry {
                st.queue[entry.core.header().priority.index()].push_front(entry);
            } else {
                shared.fail(&mut st, &entry, failure, Some((id, ran)));
            }
        }
    } else if let Some((running, since)) = link.running {
        // Killed by crew: the killer resolved the task; count any still open.
        if let Some(at) = window.iter().position(|f| f.entry.id() == running) {
            let entry = window.remove(at).expect("position is in range").entry;
            let failure = match reason {
                ExitReason::Shutdown => Failure::Cancelled,
                _ => Failure::Killed,
            };
            shared.fail(&mut st, &entry, failure, Some((id, since.elapsed())));
        }
    }
    // Everything else it held had not started: queue it again, in order.
    let terminating = st.lifecycle == Lifecycle::Terminating;
    for flight in window.into_iter().rev() {
        let entry = flight.entry;
        if let Some(call) = flight.take_back {
            // `cancel_queued` asked for it and it did not run here: cancelled.
            shared.cancel_taken_back(&mut st, &entry, call);
            continue;
        }
        if entry.core.header().is_decided() {
            // The process is reaped: no one reads its input any more.
            entry.release_input();
            continue;
        }
        if terminating {
            shared.fail(&mut st, &entry, Failure::Closed, None);
        } else {
            st.queue[entry.core.header().priority.index()].push_front(entry);
        }
    }
    for entry in link.backlog.into_iter().rev() {
        if !entry.core.header().is_decided() {
            if terminating {
                shared.fail(&mut st, &entry, Failure::Closed, None);
            } else {
                st.queue[entry.core.header().priority.index()].push_front(entry);
            }
        }
    }
    if link.ready {
        crate::trace::worker_exited(id, reason);
    }
    if shared.events.is_active() && link.ready {
        shared
            .events
            .emit(Event::WorkerExited { worker: id, reason });
    }
    let mut plan = shared.plan_capacity(&mut st);
    if let Some(failure) = shared.broken(&st) {
        let waiting: Vec<Entry<W>> = st.queue.iter_mut().flat_map(|q| q.drain(..)).collect();
        for entry in waiting {
            shared.fail(&mut st, &entry, failure.clone(), None);
        }
    }
    shared.dispatch(&mut st, &mut plan);
    plan.notify = true;
    if st.links.is_empty() && st.starting == 0 && st.lifecycle != Lifecycle::Open {
        shared.alarm.notify_all();
        shared.events.close();
        shared.messages.close();
    }
    drop(st);
    shared.finish(plan);
}
