//! Messages between a pool and its workers, outside tasks: the worker's
//! [`Worker::Message`](crate::Worker::Message) type, both ways.
//!
//! # Worker to pool
//!
//! [`Context::send`](crate::Context::send) pushes `(worker id, message)` into
//! every [`Messages`] subscription, through the same kind of bus as the events
//! (`events.rs`): each subscriber has a bounded buffer, a full buffer drops the
//! newest message and counts it ([`Messages::dropped`]), and a worker never
//! waits for a reader. A message sent while nobody subscribes is dropped.
//!
//! Order: messages from one worker reach each subscriber in the order it sent
//! them. On threads `send` pushes at once; on processes the message travels in
//! the worker's frame stream, ahead of the answer of the task that sent it, and
//! the link thread pushes it before it resolves that task. Either way a message
//! sent during a task is delivered before the task's handle resolves.
//!
//! # Pool to worker
//!
//! [`Pool::broadcast`](crate::Pool::broadcast) reaches every live worker,
//! [`Pool::send_to`](crate::Pool::send_to) one. A worker receives them in
//! [`Worker::on_message`](crate::Worker::on_message) between tasks, in the order
//! the pool sent them (a worker running a long task reads them when it ends). A
//! *sticky* broadcast ([`Pool::broadcast_sticky`](crate::Pool::broadcast_sticky))
//! also reaches every worker started later, and every rebuilt worker state
//! (after a panic), right after its `start`: for settings.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::task::{Context as PollContext, Poll};
use std::time::{Duration, Instant};

use crate::events::{Bus, Sub};
use crate::sync::{after, Arc};
use crate::worker::{Outbox, WorkerId};

/// The pool's side of worker-to-pool messages.
pub type MessageBus<M> = Bus<(WorkerId, M)>;

/// The thread backend's outbox: a message goes straight onto the bus. Each
/// worker thread makes one, shared by every context it hands out (an async
/// task's context keeps a clone of it).
pub(crate) struct BusOutbox<M: Clone + Send + 'static>(pub(crate) Arc<MessageBus<M>>);

impl<M: Clone + Send + 'static> Outbox for BusOutbox<M> {
    fn send(
        &self,
        from: WorkerId,
        message: Box<dyn Any + Send>,
    ) -> Result<(), Box<dyn Any + Send>> {
        let message = message.downcast::<M>()?;
        self.0.emit((from, *message));
        Ok(())
    }
}

/// What a thread worker's mailbox holds, in the order the pool sent it.
pub(crate) enum Mail<M> {
    /// A message for this worker's current state only.
    Plain(M),
    /// Entry `n` of the pool's sticky list (delivered unless the worker state
    /// already got it when it started).
    Sticky(usize),
}

/// A thread worker's mailbox.
pub(crate) struct Mailbox<M> {
    pub(crate) queue: VecDeque<Mail<M>>,
}

impl<M> Default for Mailbox<M> {
    fn default() -> Self {
        Mailbox {
            queue: VecDeque::new(),
        }
    }
}

/// A subscription to the messages a pool's workers send, from
/// [`Pool::messages`](crate::Pool::messages): `(sender, message)` pairs.
///
/// Messages from one worker arrive in the order it sent them; a message a
/// task sent arrives before that task's handle resolves. When this
/// subscriber's buffer is full the newest message is dropped and
/// [`dropped`](Messages::dropped) counts it; the pool never waits for a reader.
/// `recv` returns `None` once the pool has shut down and every buffered message
/// was read. Dropping it unsubscribes.
#[must_use = "a Messages subscription buffers messages until it is dropped"]
pub struct Messages<M: Clone + Send + 'static> {
    bus: Arc<MessageBus<M>>,
    sub: Arc<Sub<(WorkerId, M)>>,
}

impl<M: Clone + Send + 'static> Messages<M> {
    pub(crate) fn subscribe(bus: &Arc<MessageBus<M>>) -> Self {
        Messages {
            bus: Arc::clone(bus),
            sub: bus.subscribe_raw(),
        }
    }

    /// The next message and its sender, blocking until one arrives; `None` once
    /// the pool has shut down and everything buffered was read.
    pub fn recv(&self) -> Option<(WorkerId, M)> {
        self.sub.wait(None).ok()
    }

    /// Like [`recv`](Messages::recv), for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<(WorkerId, M), RecvTimeoutError> {
        match self.sub.wait(Some(after(Instant::now(), timeout))) {
            Ok(m) => Ok(m),
            Err(true) => Err(RecvTimeoutError::Disconnected),
            Err(false) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// The next message if one is buffered.
    pub fn try_recv(&self) -> Result<(WorkerId, M), TryRecvError> {
        self.sub.try_recv()
    }

    /// Waits for the next message asynchronously (no particular runtime
    /// needed); `None` when the stream has ended.
    pub fn recv_async(&mut self) -> RecvMessage<'_, M> {
        RecvMessage { messages: self }
    }

    /// Messages this subscriber lost because its buffer was full.
    pub fn dropped(&self) -> u64 {
        self.sub.dropped()
    }
}

impl<M: Clone + Send + 'static> Iterator for Messages<M> {
    type Item = (WorkerId, M);

    /// Blocks like [`Messages::recv`].
    fn next(&mut self) -> Option<(WorkerId, M)> {
        self.recv()
    }
}

impl<M: Clone + Send + 'static> Drop for Messages<M> {
    fn drop(&mut self) {
        self.bus.unsubscribe(&self.sub);
    }
}

impl<M: Clone + Send + 'static> fmt::Debug for Messages<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messages")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The future from [`Messages::recv_async`].
#[must_use = "futures do nothing unless awaited"]
pub struct RecvMessage<'a, M: Clone + Send + 'static> {
    messages: &'a mut Messages<M>,
}

impl<M: Clone + Send + 'static> Future for RecvMessage<'_, M> {
    type Output = Option<(WorkerId, M)>;

    fn poll(self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Self::Output> {
        self.messages.sub.poll_recv(cx)
    }
}

impl<M: Clone + Send + 'static> fmt::Debug for RecvMessage<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvMessage").finish_non_exhaustive()
    }
}
