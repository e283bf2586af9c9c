//! Chunks: how `map` ships many items as one unit on a process pool.
//!
//! One task per item costs a frame each way, a slot in a worker's window, a
//! `Task` and a pass through the state lock: about 100–180 k items/s on two
//! workers, far below what a process pool can do for small items. A *chunk*
//! carries many encoded inputs in one *chunk* frame and is answered by one
//! *chunk done* frame with every item's outcome (`wire/protocol.md`, "chunk").
//!
//! # How a chunk moves
//!
//! - **Submitting** ([`Supervisor::submit_chunk`]): the caller (`sources/chunked.rs`)
//!   asks for up to `n` items; they are pulled from its iterator and encoded
//!   straight into one buffer (no allocation per item), until `n` items or
//!   [`CHUNK_BYTES`] of encoding, and never past `max_message_size` (a chunk is
//!   one frame, held to the same limit as any other). An input of
//!   [`SHARED_ABOVE`] bytes or more ends the chunk and goes as an ordinary task
//!   (through the payload arena), and so do one that cannot be encoded or is
//!   above `max_message_size` (it fails alone, as `submit` would refuse it) and
//!   one that would take the chunk past the limit (it runs as a task).
//! - **Scheduling**: a chunk is one entry in the queue and in a worker's window,
//!   like a task, with `n` task ids reserved for its items (item `i` runs as task
//!   `id + i`). Its estimated run time is `n` times the per-item estimate, so
//!   least-loaded placement and taking unstarted work back treat it by its weight.
//! - **Answering** ([`Supervisor::on_chunk_done`]): the link thread moves the answer's
//!   bytes into the chunk's slot and resolves the chunk, under the state lock but
//!   without decoding anything; stats count each item by the outcome tallies the
//!   frame decoder took. The consumer decodes the outputs on its own thread when
//!   it takes them ([`ChunkResults::take`]), so the lock is held for a move, not
//!   for thousands of decodes.
//!
//! # Answers that do not fit
//!
//! A chunk's answer is one frame, so all its items' outcomes together must fit
//! the frame limit; items that grow from bytes to megabytes would not. The
//! worker ends the answer before the outcome that would not fit (`wire/protocol.md`,
//! *chunk done*), and [`Supervisor::on_chunk_done`] gives the consumer a split:
//! the answered items as tasks already resolved (decoded there, only in this
//! rare case), the rest as ordinary tasks with the items' ids, queued at the
//! front. The item whose outcome did not fit runs twice (once in the chunk);
//! the ones after it run once. A full answer takes the fast path untouched.
//!
//! # Failures
//!
//! A chunk resolves as a whole only with one of crew's failures, and then every
//! item gets that failure and is counted once: cancelled (the `Map` was dropped;
//! a running chunk's worker is killed, as for a running task), closed (the pool
//! was terminated), killed (`kill_worker`), start failure.
//!
//! **A worker that dies while it runs a chunk** (a crash charged to the chunk, as
//! a crash is charged to a task, `supervisor.md`) does not fail the chunk's
//! items: the chunk is *split* ([`Supervisor::split_chunk`]) into one ordinary task
//! per item, with the items' ids, queued at the front, and the consumer takes
//! their handles. So only the item that crashes fails with `Crash` (or retries, if
//! the pool retries); the items before it, whose answers died with the worker,
//! run a second time (at least once, never lost, as for tasks re-sent after a
//! crash).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::arena::SHARED_ABOVE;
use super::codec::{self, EncodedInput, RemoteWorker};
use super::state::{Entry, Lifecycle, Plan, RemoteCell, State, Supervisor};
use crate::backend::{Admission, Batch, ChunkResults, ChunkTask, Delivered};
use crate::error::{Failure, Panic, TaskError};
use crate::events::Event;
use crate::sync::lock;
use crate::task::cell::{Core, Header, Limits, Outcome};
use crate::task::{Priority, Task, TaskId, TaskOptions};
use crate::wire::{ChunkItems, ChunkOutcomes, ItemOutcome};
use crate::worker::WorkerId;

/// A chunk's encoded inputs stay under about this many bytes (the last item may
/// go over it): far below the frame limit, and small enough that a few chunks
/// per worker in flight hold little memory.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// The failure a chunk's own result slot is resolved with once its items'
/// results (or their split tasks) are in its [`ChunkPart`]. No one reads it as a
/// result: the consumer takes the delivery first, and reads the failure only
/// when there is none.
fn delivered() -> Failure {
    Failure::Closed
}

/// What a chunk holds besides what every task holds (`RemoteCell::chunk`).
pub(super) struct ChunkPart<W: RemoteWorker> {
    /// The number of items.
    pub(super) len: usize,
    /// The pool's `max_message_size`, for an item whose result was too large.
    limit: u64,
    /// Written by the link thread (answer) or the reaper (split), before the
    /// chunk's core is resolved; taken by the consumer after it saw it resolved.
    delivery: Mutex<Delivery<W>>,
}

enum Delivery<W: RemoteWorker> {
    Pending,
    /// The worker's answer, still encoded, and how long the items ran.
    Ran {
        outcomes: ChunkOutcomes,
        run: Duration,
    },
    /// Its worker died under it: one ordinary task per item.
    Split(Vec<Task<W::Output, W::Error>>),
    Taken,
}

impl<W: RemoteWorker> ChunkPart<W> {
    fn new(len: usize, limit: u64) -> Self {
        ChunkPart {
            len,
            limit,
            delivery: Mutex::new(Delivery::Pending),
        }
    }
}

impl<W: RemoteWorker> ChunkResults<W::Output, W::Error> for RemoteCell<W> {
    fn take(&self) -> Option<Delivered<W::Output, W::Error>> {
        let chunk = self.chunk.as_ref()?;
        let delivery = std::mem::replace(&mut *lock(&chunk.delivery), Delivery::Taken);
        match delivery {
            Delivery::Ran { outcomes, run } => {
                let results = outcomes
                    .iter()
                    .map(|o| decode_item::<W>(o, chunk.limit))
                    .collect();
                Some(Delivered::Ran { results, run })
            }
            Delivery::Split(tasks) => Some(Delivered::Split(tasks)),
            Delivery::Pending | Delivery::Taken => None,
        }
    }

    fn cancel_split(&self) {
        let Some(chunk) = self.chunk.as_ref() else {
            return;
        };
        let tasks = {
            let mut delivery = lock(&chunk.delivery);
            match std::mem::replace(&mut *delivery, Delivery::Taken) {
                Delivery::Split(tasks) => tasks,
                other => {
                    *delivery = other;
                    return;
                }
            }
        };
        // Outside the slot's lock: a cancel takes the pool's lock, which is
        // held while the slot is written.
        for task in &tasks {
            task.cancel();
        }
    }
}

/// One item's result from its outcome in the answer. An output that does not
/// decode fails that item alone with a protocol error (a single task's would
/// also fail its worker; here the frame itself was sound).
fn decode_item<W: RemoteWorker>(
    outcome: ItemOutcome<'_>,
    limit: u64,
) -> Result<W::Output, TaskError<W::Error>> {
    let protocol = |what: &str, e: postcard::Error| {
        TaskError::failure(Failure::Protocol(format!(
            "could not decode the task's {what}: {e}"
        )))
    };
    match outcome {
        ItemOutcome::Ok(bytes) => codec::decode(bytes).map_err(|e| protocol("output", e)),
        ItemOutcome::UserError(bytes) => match codec::decode(bytes) {
            Ok(error) => Err(TaskError::user(error)),
            Err(e) => Err(protocol("error", e)),
        },
        ItemOutcome::Panicked(message) => Err(TaskError::failure(Failure::Panicked(
            Panic::message(message),
        ))),
        ItemOutcome::TooLarge(size) => Err(TaskError::failure(Failure::TooLarge {
            what: "result",
            size,
            limit,
        })),
    }
}

impl<W: RemoteWorker> RemoteCell<W> {
    /// How many items this entry stands for: 1 for a task.
    pub(super) fn items(&self) -> usize {
        self.chunk.as_ref().map_or(1, |c| c.len)
    }

    /// The task ids of its items: its own id for a task.
    pub(super) fn item_ids(&self) -> impl Iterator<Item = TaskId> {
        let first = self.id();
        (0..self.items() as u64).map(move |i| TaskId(first.wrapping_add(i)))
    }
}

impl<W: RemoteWorker> Supervisor<W> {
    /// Pulls up to `max_items` inputs from `pull` into one chunk and submits it
    /// (module docs, "How a chunk moves"). Returns the chunk, then the ordinary
    /// task of an input that ended it early, if any; nothing if `pull` had none.
    pub(super) fn submit_chunk(
        self: &Arc<Self>,
        pull: &mut dyn FnMut() -> Option<W::Input>,
        max_items: usize,
    ) -> Vec<Batch<W::Output, W::Error>> {
        let mut items = ChunkItems::new();
        let mut alone = None;
        // The chunk frame's fields besides the items fit in `FRAME_OVERHEAD`, so
        // items within the limit make a frame the worker accepts.
        let limit = usize::try_from(self.process.max_message_size).unwrap_or(usize::MAX);
        while items.len() < max_items.max(1) && items.encoded_len() < CHUNK_BYTES {
            let Some(input) = pull() else { break };
            match items.push_with(|buf| codec::encode_append(&input, buf)) {
                Ok(len) if len < SHARED_ABOVE && items.encoded_len() <= limit => {}
                Ok(len) => {
                    items.pop_last(len);
                    alone = Some(input);
                    break;
                }
                Err(_) => {
                    alone = Some(input);
                    break;
                }
            }
        }
        let mut batches = Vec::with_capacity(2);
        if !items.is_empty() {
            batches.push(self.submit_items(items));
        }
        if let Some(input) = alone {
            batches.push(
                match self.submit_entry(input, TaskOptions::default(), Admission::Wait) {
                    Ok(task) => Batch::Task(task),
                    // `map` has no submit error to give: the item resolves with
                    // it (`TaskError::is_too_large`).
                    Err(refused) if refused.is_too_large() => {
                        Batch::Task(self.failed_task(refused.failure(), TaskOptions::default()))
                    }
                    Err(_) => Batch::Refused(1),
                },
            );
        }
        batches
    }

    /// Queues one chunk of encoded `items` (as `submit_entry` queues a task).
    fn submit_items(self: &Arc<Self>, items: ChunkItems) -> Batch<W::Output, W::Error> {
        let len = items.len();
        let mut st = self.lock();
        loop {
            if st.lifecycle != Lifecycle::Open {
                return Batch::Refused(len);
            }
            match self.config.queue_capacity {
                Some(cap) if Self::queued(&st) >= cap => {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                _ => break,
            }
        }
        let first = self.next_task.fetch_add(len as u64, Relaxed);
        let entry = Arc::new(RemoteCell {
            core: Core::new(Header::new(
                TaskId(first),
                Priority::Normal,
                Limits::NONE,
                false,
            )),
            input: Mutex::new(EncodedInput::Chunk(items)),
            key: None,
            retries_left: AtomicU32::new(0),
            suspect: AtomicBool::new(false),
            shared: Arc::downgrade(self),
            chunk: Some(ChunkPart::new(len, self.process.max_message_size)),
        });
        st.submitted += len as u64;
        let mut plan = Plan::default();
        if let Some(failure) = self.broken(&st) {
            self.fail(&mut st, &entry, failure, None);
        } else {
            st.queue[Priority::Normal.index()].push_back(Arc::clone(&entry));
            self.dispatch(&mut st, &mut plan);
        }
        drop(st);
        self.finish(plan);
        Batch::Chunk(ChunkTask {
            task: Task::new(Arc::clone(&entry) as Arc<dyn crate::task::cell::Handle<_, _>>),
            results: entry,
            len,
        })
    }

    /// `resolve` for a chunk: only ever one of crew's failures, which every item
    /// gets; each item is counted (and reported) once.
    pub(super) fn resolve_chunk(
        &self,
        st: &mut State<W>,
        entry: &Entry<W>,
        result: Result<W::Output, TaskError<W::Error>>,
        worker: Option<(WorkerId, Duration)>,
        release: bool,
    ) -> bool {
        let failure = match result {
            Err(e) => e
                .as_failure()
                .cloned()
                .unwrap_or_else(|| Failure::Protocol("a chunk resolved as one task".into())),
            Ok(_) => Failure::Protocol("a chunk resolved as one task".into()),
        };
        if release {
            entry.release_input();
        }
        if !entry.core.resolve(Err(TaskError::failure(failure.clone()))) {
            return false;
        }
        let outcome = Outcome::of_failure(&failure);
        st.counts[outcome as usize] += entry.items() as u64;
        if let Some((worker, ran)) = worker {
            st.observed.timings.record_run(ran, 1);
            if let Some(i) = Self::link_index(st, worker) {
                st.links[i].timings.record_run(ran, 1);
            }
        }
        if self.events.is_active() {
            for task in entry.item_ids() {
                self.events.emit(match worker {
                    Some((worker, ran)) => Event::TaskFinished {
                        task,
                        worker,
                        outcome: outcome.into(),
                        waited: Duration::ZERO,
                        ran,
                    },
                    None => Event::TaskDiscarded {
                        task,
                        outcome: outcome.into(),
                    },
                });
            }
        }
        true
    }

    /// Applies a *chunk done* from the worker at `st.links[i]` (module docs,
    /// "How a chunk moves").
    pub(super) fn on_chunk_done(
        &self,
        st: &mut State<W>,
        i: usize,
        chunk_id: u64,
        run_nanos: u64,
        outcomes: ChunkOutcomes,
        plan: &mut Plan,
    ) -> Result<(), String> {
        let worker = st.links[i].id;
        let link = &mut st.links[i];
        let Some(at) = link.window.iter().position(|f| f.entry.id() == chunk_id) else {
            return Err(format!("finished a chunk it was not sent ({chunk_id})"));
        };
        let len = match &link.window[at].entry.chunk {
            Some(chunk) => chunk.len,
            None => return Err(format!("answered task {chunk_id} as a chunk")),
        };
        // A shorter answer is allowed: the worker stopped where the next outcome
        // would have passed the frame limit (module docs, "Answers that do not
        // fit"). A longer one is not.
        let answered = outcomes.len();
        if answered > len {
            return Err(format!(
                "answered chunk {chunk_id} of {len} items with {answered} outcomes"
            ));
        }
        let flight = link.window.remove(at).expect("position is in range");
        link.outstanding = (link.outstanding - flight.est).max(0.0);
        if link.running.is_some_and(|(r, _)| r == chunk_id) {
            link.running = None;
        }
        let entry = flight.entry;
        // The inputs of the items left unanswered, to run again as tasks.
        let unanswered: Vec<Vec<u8>> = match &*lock(&entry.input) {
            EncodedInput::Chunk(items) if answered < len => {
                items.iter().skip(answered).map(<[u8]>::to_vec).collect()
            }
            _ => Vec::new(),
        };
        entry.release_input();
        let run = Duration::from_nanos(run_nanos);
        let per_item = run / answered.max(1) as u32;
        // The per-item run time feeds the estimate tasks without a key share.
        let micros = per_item.as_secs_f64() * 1e6;
        let est = st.estimates.get_or_insert_mut(entry.key, || micros);
        *est = 0.8 * *est + 0.2 * micros;

        let (ok, user_error, panicked) = outcomes.tally();
        let too_large = outcomes.too_large();
        let tags: Vec<Outcome> = if self.events.is_active() {
            outcomes
                .iter()
                .map(|o| match o {
                    ItemOutcome::Ok(_) => Outcome::Ok,
                    ItemOutcome::UserError(_) => Outcome::UserError,
                    ItemOutcome::Panicked(_) => Outcome::Panicked,
                    ItemOutcome::TooLarge(_) => Outcome::TooLarge,
                })
                .collect()
        } else {
            Vec::new()
        };
        let chunk = entry.chunk.as_ref().expect("checked above");
        let mut requeue = Vec::new();
        if answered < len {
            // Rare (a short answer): the answered items are decoded here, and
            // every item gets a task of its own, so the consumer sees a split.
            let first = entry.id();
            let mut tasks = Vec::with_capacity(len);
            for (i, outcome) in outcomes.iter().enumerate() {
                let cell =
                    self.item_cell(&entry, first.wrapping_add(i as u64), EncodedInput::Released);
                cell.core.resolve(decode_item::<W>(outcome, chunk.limit));
                tasks.push(Task::new(cell as Arc<dyn crate::task::cell::Handle<_, _>>));
            }
            for (i, bytes) in unanswered.into_iter().enumerate() {
                let id = first.wrapping_add((answered + i) as u64);
                let cell = self.item_cell(&entry, id, EncodedInput::Inline(bytes));
                tasks.push(Task::new(
                    Arc::clone(&cell) as Arc<dyn crate::task::cell::Handle<_, _>>
                ));
                requeue.push(cell);
            }
            *lock(&chunk.delivery) = Delivery::Split(tasks);
        } else {
            *lock(&chunk.delivery) = Delivery::Ran { outcomes, run };
        }
        if entry.core.resolve(Err(TaskError::failure(delivered()))) {
            let queue = &mut st.queue[Priority::Normal.index()];
            for part in requeue.into_iter().rev() {
                queue.push_front(part);
            }
            st.counts[Outcome::Ok as usize] += ok as u64;
            st.counts[Outcome::UserError as usize] += user_error as u64;
            st.counts[Outcome::Panicked as usize] += panicked as u64;
            st.counts[Outcome::TooLarge as usize] += too_large as u64;
            let weight = u32::try_from(len).unwrap_or(u32::MAX);
            st.observed.timings.record_run(per_item, weight);
            st.links[i].timings.record_run(per_item, weight);
            for (task, outcome) in entry.item_ids().zip(tags) {
                self.events.emit(Event::TaskFinished {
                    task,
                    worker,
                    outcome: outcome.into(),
                    waited: Duration::ZERO,
                    ran: per_item,
                });
            }
        } else {
            // Cancelled on its way back: nobody takes the results.
            *lock(&chunk.delivery) = Delivery::Taken;
        }
        let link = &mut st.links[i];
        link.tasks_done += answered as u64;
        let recycle = link.recycle_after.is_some_and(|n| link.tasks_done >= n)
            || self
                .process
                .max_memory
                .is_some_and(|max| link.process.rss_bytes().is_some_and(|rss| rss > max));
        // A worker being killed is not recycled: its answers in the grace
        // (`worker_stop.rs`) must not turn its kill into a retirement.
        if recycle && !link.retiring && link.killing.is_none() {
            link.retiring = true;
            let more = self.plan_capacity(st);
            plan.start.extend(more.start);
        }
        Ok(())
    }

    /// A worker died while it ran this chunk: queues one ordinary task per item,
    /// at the front, with the items' ids, and hands their handles to the
    /// consumer (module docs, "Failures"). The items count themselves as they
    /// resolve; the chunk was counted as submitted item by item already.
    pub(super) fn split_chunk(self: &Arc<Self>, st: &mut State<W>, entry: Entry<W>) {
        let input = std::mem::replace(&mut *lock(&entry.input), EncodedInput::Released);
        let (EncodedInput::Chunk(items), Some(chunk)) = (input, entry.chunk.as_ref()) else {
            return;
        };
        if entry.core.header().is_decided() {
            return;
        }
        let first = entry.id();
        let parts: Vec<Entry<W>> = items
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                self.item_cell(
                    &entry,
                    first.wrapping_add(i as u64),
                    EncodedInput::Inline(bytes.to_vec()),
                )
            })
            .collect();
        let tasks = parts
            .iter()
            .map(|p| Task::new(Arc::clone(p) as Arc<dyn crate::task::cell::Handle<_, _>>))
            .collect();
        *lock(&chunk.delivery) = Delivery::Split(tasks);
        if !entry.core.resolve(Err(TaskError::failure(delivered()))) {
            // Cancelled meanwhile: its items never run.
            *lock(&chunk.delivery) = Delivery::Taken;
            return;
        }
        let queue = &mut st.queue[Priority::Normal.index()];
        for part in parts.into_iter().rev() {
            queue.push_front(part);
        }
    }

    /// An ordinary task for one item of a chunk, with the item's id: what a
    /// split or a short answer makes of the chunk's items.
    fn item_cell(&self, chunk: &Entry<W>, id: u64, input: EncodedInput) -> Entry<W> {
        Arc::new(RemoteCell {
            core: Core::new(Header::new(
                TaskId(id),
                Priority::Normal,
                Limits::NONE,
                false,
            )),
            input: Mutex::new(input),
            key: None,
            retries_left: AtomicU32::new(self.process.retries),
            suspect: AtomicBool::new(false),
            shared: chunk.shared.clone(),
            chunk: None,
        })
    }
}
