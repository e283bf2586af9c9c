//! The sleep/wake protocol: when an idle worker parks, and who wakes it.
//!
//! The protocol, its rules and the proof that no task is left queued while every
//! worker sleeps are in `sleep.md` beside this file; the sections named in quotes
//! in the comments below are that file's.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::sync::modelled::{
    current, fence, lock, Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Thread,
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
///
/// It parks on its own mutex and condition variable rather than on the thread's
/// park token: user code running on the worker may call `thread::park` itself (a
/// task joining another task does), and must not consume the pool's wake-ups.
#[derive(Debug)]
pub(crate) struct Sleeper {
    /// The worker's thread, for nudges during start backoff; set by `bind`.
    thread: Mutex<Option<Thread>>,
    /// Set (by a waker, under `sleepers`) when this sleeper was taken off the
    /// sleepers list and counted as searching on its behalf; cleared by the
    /// sleeper. Guarded by `wake_lock` for the purpose of waiting.
    notified: AtomicBool,
    /// Held while checking `notified` and while setting it, so a wake-up between
    /// the check and the wait is not lost.
    wake_lock: Mutex<()>,
    wake_cond: Condvar,
}

impl Sleeper {
    pub(crate) fn new() -> Self {
        Sleeper {
            thread: Mutex::new(None),
            notified: AtomicBool::new(false),
            wake_lock: Mutex::new(()),
            wake_cond: Condvar::new(),
        }
    }

    /// Marks this sleeper woken and signals it. Must be called with `sleepers`
    /// held (lock order: `sleepers`, then `wake_lock`).
    fn notify(&self) {
        let _guard = lock(&self.wake_lock);
        self.notified.store(true, Relaxed);
        self.wake_cond.notify_one();
    }

    /// Waits until `notified` is set (then clears it and returns `Woken`), until
    /// `interrupted()`, or until `timeout` has passed.
    fn wait(&self, interrupted: impl Fn() -> bool, timeout: Option<Duration>) -> Parked {
        let deadline = timeout.map(|t| {
            Instant::now()
                .checked_add(t)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60 * 60 * 24 * 365))
        });
        let mut guard = lock(&self.wake_lock);
        loop {
            if self.notified.swap(false, Acquire) {
                return Parked::Woken;
            }
            if interrupted() {
                return Parked::Interrupted;
            }
            guard = match deadline {
                None => self
                    .wake_cond
                    .wait(guard)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Parked::TimedOut;
                    }
                    self.wake_cond
                        .wait_timeout(guard, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Wakes the thread so it re-checks its `interrupted` condition, without
    /// changing any count.
    fn interrupt(&self) {
        let _guard = lock(&self.wake_lock);
        self.wake_cond.notify_one();
    }

    /// Records the calling thread as this sleeper's thread.
    pub(crate) fn bind(&self) {
        *lock(&self.thread) = Some(current());
    }

    /// Nudges the thread without changing any count: it re-checks its own
    /// conditions, whether it is parked here or waiting out a start backoff.
    pub(crate) fn unpark(&self) {
        self.interrupt();
        if let Some(t) = lock(&self.thread).as_ref() {
            t.unpark();
        }
    }
}

/// How a `park` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parked {
    /// A waker took this worker off the list; it is counted as searching.
    Woken,
    /// Work was visible, or `should_stay_awake` held; counted as searching.
    Interrupted,
    /// The timeout passed with nothing to do. The worker is *still on the list
    /// and counted as sleeping*: it must call [`Sleep::park_again`] or
    /// [`Sleep::leave`].
    TimedOut,
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

    /// A worker that found no work in its own queue begins searching. Returns how
    /// many workers were searching already (the spin policy uses it).
    #[inline]
    pub(crate) fn start_searching(&self) -> usize {
        searching(self.counts.fetch_add(SEARCHING_ONE, AcqRel))
    }

    /// Whether no worker is parked (a snapshot). While that holds, a worker may
    /// look for work without announcing itself as searching ("Quiet spinning").
    #[inline]
    pub(crate) fn nobody_sleeping(&self) -> bool {
        sleeping(self.counts.load(Acquire)) == 0
    }

    /// A searching worker found work (or is leaving). Returns true if it was the
    /// last searcher; it must then call [`Sleep::wake_if_work`] ("Handing over").
    #[inline]
    pub(crate) fn stop_searching(&self) -> bool {
        searching(self.counts.fetch_sub(SEARCHING_ONE, AcqRel)) == 1
    }

    /// "Handing over": the last searcher found work. If more work is visible and
    /// someone sleeps, wake one, so queued work always has a searcher. Returns
    /// true if more work was visible but nobody slept (every other worker is
    /// busy), which is when an elastic pool considers growing.
    #[inline]
    pub(crate) fn wake_if_work(&self, has_work: impl FnOnce() -> bool) -> bool {
        fence(std::sync::atomic::Ordering::SeqCst);
        let asleep = sleeping(self.counts.load(Acquire)) > 0;
        if !has_work() {
            return false;
        }
        if asleep {
            self.wake_one();
            return false;
        }
        true
    }

    /// "Submitting": called after work was pushed. Wakes a sleeper only if no
    /// worker is searching (a searcher will find the work itself). Returns true if
    /// no worker was idle at all (none searching, none parked): every worker is
    /// busy, which is when an elastic pool considers growing.
    #[inline]
    pub(crate) fn notify_work(&self) -> bool {
        fence(std::sync::atomic::Ordering::SeqCst);
        let counts = self.counts.load(Acquire);
        if searching(counts) == 0 {
            if sleeping(counts) > 0 {
                self.wake_one();
                return false;
            }
            return true;
        }
        false
    }

    /// Takes one sleeper off the list, counts it as searching, and unparks it.
    #[cold]
    pub(crate) fn wake_one(&self) {
        // `notify` runs under the list lock: a sleeper that leaves the list by
        // itself (`unregister`) takes the same lock first, so it either is still on
        // the list here or has already consumed this notification. Notifying after
        // the unlock would let a stale `notified` end its *next* wait while it is
        // listed and counted as sleeping, corrupting the counts.
        let mut list = lock(&self.sleepers);
        let Some(s) = list.pop() else { return };
        self.counts.fetch_sub(SLEEPING_ONE - SEARCHING_ONE, AcqRel);
        s.notify();
    }

    /// Wakes every sleeper (shutdown, terminate). Each is counted as searching.
    #[cold]
    pub(crate) fn wake_all(&self) {
        let mut list = lock(&self.sleepers);
        for s in list.drain(..) {
            self.counts.fetch_sub(SLEEPING_ONE - SEARCHING_ONE, AcqRel);
            s.notify(); // under the list lock, as in `wake_one`
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
                self.counts.fetch_sub(SLEEPING_ONE - SEARCHING_ONE, AcqRel);
                target.notify(); // under the list lock, as in `wake_one`
                return;
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
        timeout: Option<Duration>,
    ) -> Parked {
        {
            let mut list = lock(&self.sleepers);
            list.push(Arc::clone(me));
            // Searching -> sleeping in one step, so a submitter never sees this
            // worker as neither (which could make it skip a needed wake).
            self.counts.fetch_add(SLEEPING_ONE - SEARCHING_ONE, AcqRel);
        }
        // The re-check must come after the registration above ("Proof").
        fence(std::sync::atomic::Ordering::SeqCst);
        if has_work() || should_stay_awake() {
            self.unregister(me);
            return Parked::Interrupted;
        }
        before_sleep();
        self.wait_listed(me, &should_stay_awake, timeout)
    }

    /// Waits again after `Parked::TimedOut` (the worker is still listed).
    pub(crate) fn park_again(
        &self,
        me: &Arc<Sleeper>,
        should_stay_awake: impl Fn() -> bool,
        timeout: Option<Duration>,
    ) -> Parked {
        self.wait_listed(me, &should_stay_awake, timeout)
    }

    fn wait_listed(
        &self,
        me: &Arc<Sleeper>,
        should_stay_awake: &impl Fn() -> bool,
        timeout: Option<Duration>,
    ) -> Parked {
        match me.wait(should_stay_awake, timeout) {
            // The waker took us off the list and counted us as searching.
            Parked::Woken => {
                // The invariant a stale notification would break (see `wake_one`).
                #[cfg(any(debug_assertions, crew_loom))]
                assert!(
                    !lock(&self.sleepers).iter().any(|s| Arc::ptr_eq(s, me)),
                    "a woken sleeper is still on the sleepers list"
                );
                Parked::Woken
            }
            Parked::Interrupted => {
                self.unregister(me);
                Parked::Interrupted
            }
            Parked::TimedOut => Parked::TimedOut,
        }
    }

    /// A worker that timed out in `park` stops waiting: it leaves the list (if a
    /// waker has not taken it off already) and is counted as searching again, so
    /// its `stop_searching` hands any work that woke it over to another worker.
    pub(crate) fn stop_waiting(&self, me: &Arc<Sleeper>) {
        self.unregister(me);
    }

    /// Leaves the sleepers list (if a waker has not already taken us off it) and
    /// counts this worker as searching again.
    fn unregister(&self, me: &Arc<Sleeper>) {
        let mut list = lock(&self.sleepers);
        if let Some(at) = list.iter().position(|s| Arc::ptr_eq(s, me)) {
            list.swap_remove(at);
            self.counts.fetch_sub(SLEEPING_ONE - SEARCHING_ONE, AcqRel);
        } else {
            // A waker took us off and already counted us as searching, and (under
            // the list lock we hold now) already set `notified`; consume it so it
            // does not end a later wait early.
            let _guard = lock(&me.wake_lock);
            me.notified.store(false, Relaxed);
        }
    }

    /// (searching, sleeping), for the loom model's final check.
    #[cfg(crew_loom)]
    pub(crate) fn snapshot(&self) -> (usize, usize) {
        let c = self.counts.load(Acquire);
        (searching(c), sleeping(c))
    }
}

#[cfg(all(test, crew_loom))]
mod loom_model {
    //! Every interleaving of one submitter and two workers over two tasks. A lost
    //! wake-up shows up as loom's "deadlock" (every thread blocked in `park`).

    use super::*;
    use loom::sync::atomic::Ordering::{AcqRel, Acquire};

    const TASKS: usize = 2;

    struct Model {
        sleep: Sleep,
        queued: AtomicUsize,
        taken: AtomicUsize,
    }

    impl Model {
        fn try_take(&self) -> bool {
            let mut n = self.queued.load(Acquire);
            while n > 0 {
                match self.queued.compare_exchange(n, n - 1, AcqRel, Acquire) {
                    Ok(_) => return true,
                    Err(now) => n = now,
                }
            }
            false
        }
    }

    fn worker(m: Arc<Model>) {
        let me = Arc::new(Sleeper::new());
        me.bind();
        let mut searching = false;
        loop {
            if m.taken.load(Acquire) == TASKS {
                if searching {
                    m.sleep.stop_searching();
                }
                break;
            }
            if m.try_take() {
                if searching {
                    searching = false;
                    if m.sleep.stop_searching() {
                        m.sleep.wake_if_work(|| m.queued.load(Acquire) > 0);
                    }
                }
                if m.taken.fetch_add(1, AcqRel) + 1 == TASKS {
                    // The model's shutdown: everything ran, release the others.
                    m.sleep.wake_all();
                }
                continue;
            }
            if !searching {
                m.sleep.start_searching();
                searching = true;
                continue; // one spin round
            }
            m.sleep.park(
                &me,
                || m.queued.load(Acquire) > 0,
                || m.taken.load(Acquire) == TASKS,
                || {},
                None,
            );
        }
    }

    #[test]
    fn no_task_is_left_queued_while_every_worker_sleeps() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let m = Arc::new(Model {
                sleep: Sleep::new(),
                queued: AtomicUsize::new(0),
                taken: AtomicUsize::new(0),
            });
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let m = Arc::clone(&m);
                    loom::thread::spawn(move || worker(m))
                })
                .collect();
            for _ in 0..TASKS {
                m.queued.fetch_add(1, AcqRel);
                m.sleep.notify_work();
            }
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(m.taken.load(Acquire), TASKS);
            // Every worker left the sleep state it entered: the counts balance and
            // nobody is still listed as parked.
            assert_eq!(m.sleep.snapshot(), (0, 0));
            assert!(lock(&m.sleep.sleepers).is_empty());
        });
    }
}
