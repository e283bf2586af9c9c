//! The sleep/wake protocol: when an idle worker parks, and who wakes it.
//!
//! The protocol, its rules and the proof that no task is left queued while every
//! worker sleeps are in `README.md` beside this file; the sections named in the
//! comments below are that file's.

use std::sync::atomic::Ordering::SeqCst;

use crossbeam_utils::CachePadded;

use crate::sync::modelled::{
    current, fence, lock, park, Arc, AtomicBool, AtomicUsize, Mutex, Thread,
};

/// `counts` packs two numbers into one word so both change in one atomic step.
const SEARCHING_ONE: usize = 1;
/// The sleeping count lives in the upper half of `counts`.
const SLEEPING_SHIFT: u32 = usize::BITS / 2;
const SLEEPING_ONE: usize = 1 << SLEEPING_SHIFT;
const HALF_MASK: usize = SLEEPING_ONE - 1;

#[inline]
fn searching(counts: usize) -> usize {
    counts & HALF_MASK
}

#[inline]
fn sleeping(counts: usize) -> usize {
    counts >> SLEEPING_SHIFT
}

/// One worker's parking spot.
#[derive(Debug)]
pub(crate) struct Sleeper {
    /// The worker's thread; set when the thread starts (`bind`).
    thread: Mutex<Option<Thread>>,
    /// Set (by a waker) when this sleeper was taken off the sleepers list and
    /// counted as searching on its behalf; cleared by the sleeper. Read by the
    /// sleeper to tell a real wake-up from a spurious `park` return.
    notified: AtomicBool,
}

impl Sleeper {
    pub(crate) fn new() -> Self {
        Sleeper {
            thread: Mutex::new(None),
            notified: AtomicBool::new(false),
        }
    }

    /// Records the calling thread as this sleeper's thread.
    pub(crate) fn bind(&self) {
        *lock(&self.thread) = Some(current());
    }

    /// Unparks the thread without changing any count (a nudge: the thread
    /// re-checks its own conditions).
    pub(crate) fn unpark(&self) {
        if let Some(t) = lock(&self.thread).as_ref() {
            t.unpark();
        }
    }
}

/// The pool-wide sleep state.
#[derive(Debug)]
pub(crate) struct Sleep {
    /// Searching workers (spinning for work) in the low half, parked workers in the
    /// high half. Written by workers (start/stop searching, park) and by wakers;
    /// read by every submission. See "The counts".
    counts: CachePadded<AtomicUsize>,
    /// The parked workers, most recently parked last. Touched only on the park
    /// and wake paths.
    sleepers: Mutex<Vec<Arc<Sleeper>>>,
}

impl Sleep {
    pub(crate) fn new() -> Self {
        Sleep {
            counts: CachePadded::new(AtomicUsize::new(0)),
            sleepers: Mutex::new(Vec::new()),
        }
    }

    /// A worker that found no work in its own queue begins searching.
    #[inline]
    pub(crate) fn start_searching(&self) {
        self.counts.fetch_add(SEARCHING_ONE, SeqCst);
    }

    /// A searching worker found work (or is leaving). Returns true if it was the
    /// last searcher; it must then call [`Sleep::wake_if_work`] ("Handing over").
    #[inline]
    pub(crate) fn stop_searching(&self) -> bool {
        searching(self.counts.fetch_sub(SEARCHING_ONE, SeqCst)) == 1
    }

    /// "Handing over": the last searcher found work. If more work is visible and
    /// someone sleeps, wake one, so queued work always has a searcher.
    #[inline]
    pub(crate) fn wake_if_work(&self, has_work: impl FnOnce() -> bool) {
        fence(SeqCst);
        if sleeping(self.counts.load(SeqCst)) > 0 && has_work() {
            self.wake_one();
        }
    }

    /// "Submitting": called after work was pushed. Wakes a sleeper only if no
    /// worker is searching (a searcher will find the work itself).
    #[inline]
    pub(crate) fn notify_work(&self) {
        fence(SeqCst);
        let counts = self.counts.load(SeqCst);
        if searching(counts) == 0 && sleeping(counts) > 0 {
            self.wake_one();
        }
    }

    /// Takes one sleeper off the list, counts it as searching, and unparks it.
    #[cold]
    pub(crate) fn wake_one(&self) {
        let sleeper = {
            let mut list = lock(&self.sleepers);
            let Some(s) = list.pop() else { return };
            self.counts.fetch_sub(SLEEPING_ONE - SEARCHING_ONE, SeqCst);
            s.notified.store(true, SeqCst);
            s
        };
        sleeper.unpark();
    }

    /// Wakes every sleeper (shutdown, terminate). Each is counted as searching.
    #[cold]
    pub(crate) fn wake_all(&self) {
        let woken: Vec<Arc<Sleeper>> = {
            let mut list = lock(&self.sleepers);
            for s in list.iter() {
                self.counts.fetch_sub(SLEEPING_ONE - SEARCHING_ONE, SeqCst);
                s.notified.store(true, SeqCst);
            }
            std::mem::take(&mut *list)
        };
        for s in woken {
            s.unpark();
        }
    }

    /// Wakes one particular worker if it sleeps (it was killed or abandoned), or
    /// nudges it if it does not.
    #[cold]
    pub(crate) fn wake_worker(&self, target: &Arc<Sleeper>) {
        {
            let mut list = lock(&self.sleepers);
            if let Some(at) = list.iter().position(|s| Arc::ptr_eq(s, target)) {
                list.swap_remove(at);
                self.counts.fetch_sub(SLEEPING_ONE - SEARCHING_ONE, SeqCst);
                target.notified.store(true, SeqCst);
            }
        }
        target.unpark();
    }

    /// "Parking": a searching worker that found nothing for a while goes to
    /// sleep. Returns when it has been woken or `should_stay_awake` turned true;
    /// either way it is then counted as searching again.
    ///
    /// `has_work` is the final re-check of every queue; `should_stay_awake` reports
    /// shutdown, kill and the like, and is re-checked after every wake-up.
    pub(crate) fn park(
        &self,
        me: &Arc<Sleeper>,
        has_work: impl Fn() -> bool,
        should_stay_awake: impl Fn() -> bool,
        before_sleep: impl FnOnce(),
    ) {
        {
            let mut list = lock(&self.sleepers);
            list.push(Arc::clone(me));
            // Searching -> sleeping in one step, so a submitter never sees this
            // worker as neither (which could make it skip a needed wake).
            self.counts.fetch_add(SLEEPING_ONE - SEARCHING_ONE, SeqCst);
        }
        // The re-check must come after the registration above ("Proof").
        fence(SeqCst);
        if has_work() || should_stay_awake() {
            self.unregister(me);
            return;
        }
        before_sleep();
        loop {
            park();
            if me.notified.swap(false, SeqCst) {
                return; // the waker counted us as searching
            }
            if should_stay_awake() {
                self.unregister(me);
                return;
            }
            // A spurious return: we are still on the list and still counted as
            // sleeping, so any new work will wake someone.
        }
    }

    /// Leaves the sleepers list (if a waker has not already taken us off it) and
    /// counts this worker as searching again.
    fn unregister(&self, me: &Arc<Sleeper>) {
        let mut list = lock(&self.sleepers);
        if let Some(at) = list.iter().position(|s| Arc::ptr_eq(s, me)) {
            list.swap_remove(at);
            self.counts.fetch_sub(SLEEPING_ONE - SEARCHING_ONE, SeqCst);
        } else {
            // A waker took us off and already counted us as searching; its unpark
            // token may still be pending, which only causes one spurious return.
            me.notified.store(false, SeqCst);
        }
    }

    /// (searching, sleeping), for stats and tests.
    pub(crate) fn snapshot(&self) -> (usize, usize) {
        let c = self.counts.load(SeqCst);
        (searching(c), sleeping(c))
    }
}
