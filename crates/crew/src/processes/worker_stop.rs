//! How a worker process stops when it is told to, rather than asked: the
//! pool's kill (SIGTERM to its process group), its parent's death (SIGTERM
//! through `PR_SET_PDEATHSIG`, and the end of its channel). Runs inside the
//! worker process, beside `worker_main.rs`.
//!
//! # The protocol
//!
//! SIGTERM is caught by signal-hook (a handler that only writes a byte to a
//! self-pipe) and handled on a thread of its own that reads the pipe, so
//! nothing runs in signal context. That
//! thread, or the runner or the watcher when they read the end of the channel,
//! calls [`Stopping::request`], once:
//!
//! 1. `requested` is raised, and the task the runner is in (its header, see
//!    [`Stopping::enter`]) gets `CANCEL`: its code sees `Context::is_cancelled`.
//! 2. The channel's reading side is shut down, which wakes a runner blocked in
//!    `read` (it reads the end of the stream).
//! 3. A watchdog thread is armed: at `kill_grace` it kills the process group,
//!    whatever the runner is doing.
//!
//! The runner checks `requested` before each task and after each one
//! (`Stopping::leave`). Once it sees it, it runs no further task, sends no
//! answer for the task that was running (the kill decided that one: the pool
//! resolved it as cancelled, timed out or killed), runs `W::stop` on its state,
//! writes out what is buffered (messages `stop` sent among it), and kills its
//! process group with SIGKILL, itself included, so whatever the worker's code
//! started goes too.
//!
//! So `W::stop` runs after a kill exactly when the runner gets control back
//! within the grace: the worker was idle or between tasks, or its task
//! returned (it checks `is_cancelled`, or was about to finish anyway), and
//! `stop` itself ends in time. Otherwise the pool's SIGKILL at `kill_grace`
//! (or, with no pool left, the watchdog's) ends the group, and `stop` does not
//! run, or does not finish. A process that dies by itself (a segfault, `abort`,
//! `exit`, an OOM kill) never runs it.
//!
//! # Why each step
//!
//! - *A thread, not a handler.* `W::stop` is user code holding `&mut W`, which
//!   only the runner owns; a signal handler may call nothing but
//!   async-signal-safe functions. The signal thread only flags and wakes.
//! - *`CANCEL` under the `running` lock.* `enter` stores the header and reads
//!   `requested` under the lock `request` takes after raising it, so a task
//!   that begins as the request comes either sees the flag at once or is seen
//!   by `request`: no task starts uncancelled after a stop was requested.
//! - *No answer for the task that ran.* It saw `is_cancelled` and may return
//!   anything; an `Ok` from a task cut short must not resolve a task the kill
//!   did not target (one that began as the kill came). Without an answer the
//!   pool treats it as it treats any task on a killed worker: resolved by the
//!   killer, or killed if it said *started*, or queued again if it had not.
//! - *The watchdog.* The pool SIGKILLs the group at `kill_grace` itself, but
//!   when the parent is gone nobody will: the worker bounds its own cleanup
//!   with the same grace (read from [`ENV_GRACE`](super::worker_main)), so
//!   nothing outlives the pool by more than that.
//! - *The group kill at the end.* The pool's SIGTERM reached the whole group,
//!   but `PR_SET_PDEATHSIG` signals the worker alone, and children may ignore
//!   SIGTERM: SIGKILL to the group is the one way to leave nothing behind.
//!
//! Worker code that sets its own SIGTERM handler with `sigaction` replaces
//! crew's (one registered through signal-hook runs beside it): SIGTERM then
//! does what that handler does, and the pool's SIGKILL at `kill_grace` still
//! ends the group.
//!
//! If the signal thread cannot be set up (no thread, no self-pipe), SIGTERM
//! falls back to killing the group at once, as a plain handler (`kill(2)` is
//! async-signal-safe): nothing may outlive the pool, even without `stop`.

use std::io::Read;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;
use signal_hook::consts::SIGTERM;

use super::worker_main::kill_own_group;
use crate::sync::lock;
use crate::task::cell::{Header, Limits};
use crate::task::{Priority, TaskId};

/// Whether this worker process was told to stop, and the task it runs (module
/// docs). Shared by the runner, the watcher and the signal thread.
pub(super) struct Stopping {
    /// Raised once by [`request`](Self::request); read by the runner before
    /// and after each task, and by the watcher.
    requested: AtomicBool,
    /// The header of the task the runner is in: set and cleared by the runner
    /// ([`enter`](Self::enter), [`leave`](Self::leave)), read by `request`.
    running: Mutex<Option<Arc<Header>>>,
    /// A second handle on the channel, whose reading side `request` shuts down
    /// to wake a runner blocked in `read`. `None` if it could not be cloned:
    /// then SIGTERM kills the group at once (module docs).
    channel: Option<UnixStream>,
    /// How long the worker gives itself once told to stop: the pool's
    /// `kill_grace`.
    grace: Duration,
}

impl Stopping {
    /// Sets up SIGTERM handling for a worker process on `channel`, which gives
    /// itself `grace` once told to stop.
    pub(super) fn install(channel: &UnixStream, grace: Duration) -> Arc<Stopping> {
        let channel = channel.try_clone().ok();
        let ready = channel.is_some();
        let stopping = Arc::new(Stopping {
            requested: AtomicBool::new(false),
            running: Mutex::new(None),
            channel,
            grace,
        });
        if !ready || !stopping.spawn_signal_thread() {
            kill_group_on_term();
        }
        stopping
    }

    /// Handles SIGTERM on a thread of its own; false if that cannot be set up.
    ///
    /// The self-pipe is a pipe, not a socket pair (as signal-hook's iterator
    /// would make): the worker's channel stays the one socket a worker process
    /// holds, which tests and tools that look for it rely on.
    fn spawn_signal_thread(self: &Arc<Self>) -> bool {
        let Ok((mut wakes, on_signal)) = std::io::pipe() else {
            return false;
        };
        // The handler writes one byte to `on_signal`, without blocking.
        let Ok(handler) = signal_hook::low_level::pipe::register(SIGTERM, on_signal) else {
            return false;
        };
        let stopping = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("crew-sigterm".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                loop {
                    match wakes.read(&mut byte) {
                        Ok(0) => return,
                        Ok(_) => stopping.request(),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            });
        if spawned.is_err() {
            signal_hook::low_level::unregister(handler);
            return false;
        }
        true
    }

    /// Tells the runner to stop (module docs): cancels the task it runs, wakes
    /// it if it waits for the pool, and arms the watchdog. Idempotent.
    pub(super) fn request(&self) {
        if self.requested.swap(true, SeqCst) {
            return;
        }
        if let Some(header) = lock(&self.running).as_ref() {
            header.request_cancel();
        }
        if let Some(channel) = &self.channel {
            let _ = channel.shutdown(Shutdown::Read);
        }
        let grace = self.grace;
        let watchdog = std::thread::Builder::new()
            .name("crew-stop-watchdog".into())
            .spawn(move || {
                // A real deadline, not a test's wait: past it the worker's
                // cleanup is over, finished or not.
                std::thread::sleep(grace);
                kill_own_group()
            });
        if watchdog.is_err() {
            kill_own_group();
        }
    }

    /// Whether the worker was told to stop.
    #[inline]
    pub(super) fn is_requested(&self) -> bool {
        self.requested.load(SeqCst)
    }

    /// The header of task `id`, which the runner is about to run: cancelled
    /// already if a stop was requested, and cancelled by a later request until
    /// [`leave`](Self::leave).
    pub(super) fn enter(&self, id: u64) -> Arc<Header> {
        let header = Arc::new(Header::with_queued_at(
            TaskId(id),
            Priority::Normal,
            Limits::NONE,
            false,
            None,
        ));
        let mut running = lock(&self.running);
        if self.is_requested() {
            header.request_cancel();
        }
        *running = Some(Arc::clone(&header));
        header
    }

    /// The task has returned. True if a stop was requested before it did: its
    /// outcome is not sent (module docs).
    pub(super) fn leave(&self) -> bool {
        *lock(&self.running) = None;
        self.is_requested()
    }
}

/// The fallback when SIGTERM cannot be handled on a thread: kill the whole
/// process group at once.
fn kill_group_on_term() {
    extern "C" fn kill_group(_: nix::libc::c_int) {
        // kill(2) is async-signal-safe; pid 0 is this process's group.
        let _ = signal::kill(Pid::from_raw(0), Signal::SIGKILL);
    }
    // SAFETY: the handler only calls kill(2), which is async-signal-safe.
    unsafe {
        let _ = signal::signal(Signal::SIGTERM, SigHandler::Handler(kill_group));
    }
}
