//! The monitor: one helper thread per pool, started the first time it is needed
//! (the first task with a timeout, or a replacement thread that failed to spawn).
//!
//! It sleeps until the earliest instant anything is due, then:
//! - resolves running tasks whose timeout expired as `TimedOut` (raising their
//!   cancel flag), and gives each one `abandon_grace` to return;
//! - abandons the threads still inside such a task after the grace and starts
//!   replacements, so the pool keeps its size;
//! - retries replacement threads that failed to spawn.
//!
//! A worker that starts a timed task calls [`Monitor::wake_at`] with its deadline;
//! `dirty` makes sure a deadline published while the monitor was scanning is not
//! missed (the monitor re-scans instead of sleeping).

use std::sync::Weak;
use std::time::Instant;

use super::Shared;
use crate::sync::{lock, wait_until, Arc, Condvar, Mutex};
use crate::worker::Worker;

pub(super) struct Monitor {
    state: Arc<(Mutex<State>, Condvar)>,
}

#[derive(Default)]
struct State {
    thread_started: bool,
    /// Something changed since the monitor last scanned.
    dirty: bool,
    /// The earliest instant anyone asked to be looked at.
    wake_at: Option<Instant>,
    stop: bool,
}

impl Monitor {
    pub(super) fn new() -> Self {
        Monitor {
            state: Arc::new((Mutex::new(State::default()), Condvar::new())),
        }
    }

    /// Asks the monitor to look again at `at` (starting its thread if needed).
    pub(super) fn wake_at<W: Worker>(&self, shared: &Arc<Shared<W>>, at: Instant) {
        let (mutex, cond) = &*self.state;
        let mut st = lock(mutex);
        if st.stop {
            return;
        }
        if !st.thread_started {
            let weak = Arc::downgrade(shared);
            let state = Arc::clone(&self.state);
            let spawned = std::thread::Builder::new()
                .name(format!("{}-monitor", shared.config.thread_name))
                .spawn(move || run(weak, state));
            // If the OS refuses the thread, the next call tries again.
            st.thread_started = spawned.is_ok();
        }
        st.dirty = true;
        if st.wake_at.is_none_or(|w| at < w) {
            st.wake_at = Some(at);
        }
        cond.notify_one();
    }

    /// Ends the monitor thread (pool shut down or dropped).
    pub(super) fn stop(&self) {
        let (mutex, cond) = &*self.state;
        lock(mutex).stop = true;
        cond.notify_one();
    }
}

fn run<W: Worker>(shared: Weak<Shared<W>>, state: Arc<(Mutex<State>, Condvar)>) {
    let (mutex, cond) = &*state;
    loop {
        lock(mutex).dirty = false;
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let now = Instant::now();
            let timeouts = shared.check_deadlines(now);
            let respawn = shared.respawn_missing(now);
            match (timeouts, respawn) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let mut st = lock(mutex);
        st.wake_at = next;
        while !st.stop && !st.dirty {
            let wake_at = st.wake_at;
            match wait_until(cond, st, wake_at) {
                Ok(s) => st = s,
                Err(s) => {
                    st = s;
                    break;
                }
            }
        }
        if st.stop {
            return;
        }
    }
}
