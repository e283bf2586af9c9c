//! A third backend, for tests only: the proof that the engine seam
//! (`crew::backend`) is real. `Loopback` implements [`Engine`] from outside
//! crew, as the cluster backend does, and runs its tasks on an inner thread
//! pool; the outer `Pool` reaches it only through `Arc<dyn Engine<W>>`, built
//! with `PoolBuilder::engine`. The conformance suite runs every scenario on it
//! as `loopback::<scenario>` (`tests/conformance.rs`).
//!
//! What it forwards, it forwards whole (tasks, stats, messages, kills); what a
//! pool owns itself, it owns: the event bus the outer pool's health watcher
//! emits into, fed by a forwarding thread with the inner pool's events.

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::task::{Context as PollContext, Poll, Waker};
use std::time::Instant;

use crew::backend::{Admission, BackendKind, Config, Engine, EventBus, TaskOptions, WhenFull};
use crew::{Events, Idle, Messages, Pool, PoolBuilder, SendError, ShutdownTimedOut, Stats, Task};
use crew::{ResizeError, SubmitError, Worker, WorkerId};

/// The inner pool's event buffer: large, so the forwarder never drops.
const FORWARD_BUFFER: usize = 1 << 16;

/// An engine over an inner thread pool of `W`.
pub(crate) struct Loopback<W: Worker> {
    inner: Pool<W>,
    bus: Arc<EventBus>,
    capacity: Option<usize>,
    /// Whether `map` goes through `submit_chunk` (the trait's default: one
    /// task per item), so that the chunked window runs on this engine too.
    chunks: bool,
    /// `Idle` futures of the inner pool still pending, kept so that their
    /// wakers stay registered (`poll_idle`).
    idle: Mutex<Vec<Idle<W>>>,
}

impl<W: Worker> Loopback<W> {
    /// Starts the inner pool with the outer pool's settings, and the thread
    /// that forwards its events.
    pub(crate) fn start(config: &Config) -> std::io::Result<Arc<dyn Engine<W>>> {
        Self::start_with(config, false)
    }

    fn start_with(config: &Config, chunks: bool) -> std::io::Result<Arc<dyn Engine<W>>> {
        let mut builder = Pool::<W>::builder()
            .workers_range(config.workers()..=config.max_workers())
            .idle_timeout(config.idle_timeout())
            .grow_backlog(config.grow_backlog())
            .event_buffer(FORWARD_BUFFER)
            .start_attempts(config.start_attempts())
            .start_backoff(config.start_backoff())
            .when_full(match config.when_full() {
                WhenFull::CallerRuns => WhenFull::CallerRuns,
                _ => WhenFull::Block,
            });
        if let Some(timeout) = config.default_timeout() {
            builder = builder.timeout(timeout);
        }
        if let Some(capacity) = config.queue_capacity() {
            builder = builder.queue_capacity(capacity);
        }
        let inner = builder.build().map_err(std::io::Error::other)?;
        let bus = Arc::new(EventBus::new(config.event_buffer()));
        let events = inner.events();
        let forward = Arc::clone(&bus);
        std::thread::Builder::new()
            .name("loopback-events".into())
            .spawn(move || forward_events(events, &forward))?;
        Ok(Arc::new(Loopback {
            inner,
            bus,
            capacity: config.queue_capacity(),
            chunks,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// A builder for a loopback pool of `n` workers.
    #[allow(dead_code)] // each test binary uses one of the two
    pub(crate) fn builder(n: usize) -> PoolBuilder<W> {
        Pool::<W>::builder().workers(n).engine(Loopback::start)
    }

    /// The same, with `map` going through the engine's `submit_chunk`.
    #[allow(dead_code)]
    pub(crate) fn chunked_builder(n: usize) -> PoolBuilder<W> {
        Pool::<W>::builder()
            .workers(n)
            .engine(|config: &Config| Loopback::start_with(config, true))
    }
}

/// Re-emits the inner pool's events until it shuts down, then ends the outer
/// subscriptions.
fn forward_events(events: Events, bus: &EventBus) {
    for event in events {
        bus.emit(event);
    }
    bus.close();
}

impl<W: Worker> Engine<W> for Loopback<W> {
    fn kind(&self) -> BackendKind {
        BackendKind::Other("loopback")
    }

    fn submit(
        &self,
        input: W::Input,
        options: TaskOptions,
        admission: Admission,
    ) -> Result<Task<W::Output, W::Error>, SubmitError<W::Input>> {
        let mut task = self.inner.task(input).priority(options.priority());
        if let Some(timeout) = options.timeout() {
            task = task.timeout(timeout);
        }
        if let Some(deadline) = options.deadline() {
            task = task.deadline_at(deadline);
        }
        if let Some(key) = options.key() {
            task = task.key(key);
        }
        if let Some(n) = options.retries() {
            task = task.retries(n);
        }
        match admission {
            Admission::Try => task.try_submit(),
            _ => task.submit(),
        }
    }

    fn poll_room(&self, waker: &Waker) -> bool {
        let room = match self.capacity {
            None => true,
            Some(cap) => self.inner.is_closed() || self.inner.stats().queued < cap,
        };
        if !room {
            // A test engine: no room watcher, the submitter is polled again.
            std::thread::yield_now();
            waker.wake_by_ref();
        }
        room
    }

    fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        match deadline {
            None => {
                self.inner.wait_idle();
                true
            }
            Some(d) => self
                .inner
                .wait_idle_timeout(d.saturating_duration_since(Instant::now())),
        }
    }

    fn poll_idle(&self, waker: &Waker) -> bool {
        let mut cx = PollContext::from_waker(waker);
        let mut pending = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain_mut(|f| std::pin::Pin::new(f).poll(&mut cx).is_pending());
        let mut idle = self.inner.idle();
        match std::pin::Pin::new(&mut idle).poll(&mut cx) {
            Poll::Ready(()) => true,
            Poll::Pending => {
                pending.push(idle);
                false
            }
        }
    }

    fn close(&self) {
        // `Pool` has no close-without-waiting (dropping the last handle is
        // one, but the engine holds it): a thread shuts the inner pool down,
        // which drains it as a close must.
        let inner = self.inner.clone();
        let _ = std::thread::Builder::new()
            .name("loopback-close".into())
            .spawn(move || inner.shutdown());
    }

    fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        match deadline {
            None => {
                self.inner.shutdown();
                Ok(())
            }
            Some(d) => self
                .inner
                .shutdown_timeout(d.saturating_duration_since(Instant::now())),
        }
    }

    fn terminate(&self) {
        self.inner.terminate();
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn cancel_queued(&self) -> usize {
        self.inner.cancel_queued()
    }

    fn kill_worker(&self, id: WorkerId) -> bool {
        self.inner.kill_worker(id)
    }

    fn worker_ids(&self) -> Vec<WorkerId> {
        self.inner.workers()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn resize(&self, workers: RangeInclusive<usize>) -> Result<(), ResizeError> {
        self.inner.resize_range(workers)
    }

    fn chunks_enabled(&self) -> bool {
        self.chunks
    }

    fn stats(&self) -> Stats {
        self.inner.stats()
    }

    fn bus(&self) -> Arc<EventBus> {
        Arc::clone(&self.bus)
    }

    fn messages(&self) -> Messages<W::Message> {
        self.inner.messages()
    }

    fn broadcast(&self, message: W::Message, sticky: bool) {
        if sticky {
            self.inner.broadcast_sticky(message);
        } else {
            self.inner.broadcast(message);
        }
    }

    fn send_to(&self, id: WorkerId, message: W::Message) -> Result<(), W::Message> {
        self.inner.send_to(id, message).map_err(|e| match e {
            SendError::NoSuchWorker(m) | SendError::WrongType(m) | SendError::Unavailable(m) => m,
        })
    }
}
