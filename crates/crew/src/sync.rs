//! The synchronization primitives crew is written against.
//!
//! Most of crew uses `std`'s directly. The primitives of the lock-free sleep/wake
//! protocol come from [`modelled`], which is loom's under `RUSTFLAGS="--cfg crew_loom"`,
//! so the loom model in `scheduler/sleep.rs` explores every interleaving of the real
//! protocol code, not of a copy.
//!
//! Lock-poisoning policy: crew never runs user code while holding one of its own
//! locks, so a poisoned lock can only mean a panic inside crew between two
//! consistent states. [`lock`] takes the guard anyway (`PoisonError::into_inner`):
//! resolving every task matters more than stopping at the first broken invariant,
//! and the invariants crew checks abort instead of panicking.

pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize},
    Arc, Condvar, Mutex, MutexGuard,
};

/// Locks `mutex`, ignoring poisoning (see the module docs for why).
#[inline]
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `from + d`, or a point ~30 years on if that is not representable (a user may
/// pass `Duration::MAX` as a timeout; that must mean "never", not a panic).
#[inline]
pub(crate) fn after(from: std::time::Instant, d: std::time::Duration) -> std::time::Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + std::time::Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

/// Waits on `cond` until notified, or until `deadline` if there is one. Returns
/// the guard, as `Err` if the deadline had already passed (the caller then gives
/// up). Spurious wake-ups come back as `Ok`: callers re-check their condition in
/// a loop.
pub(crate) fn wait_until<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<std::time::Instant>,
) -> Result<MutexGuard<'a, T>, MutexGuard<'a, T>> {
    match deadline {
        None => Ok(cond
            .wait(guard)
            .unwrap_or_else(std::sync::PoisonError::into_inner)),
        Some(d) => {
            let now = std::time::Instant::now();
            if now >= d {
                return Err(guard);
            }
            let (guard, _) = cond
                .wait_timeout(guard, d - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(guard)
        }
    }
}

/// The primitives of the modelled protocols: loom's under `cfg(crew_loom)`.
pub(crate) mod modelled {
    #[cfg(crew_loom)]
    pub(crate) use loom::{
        cell::UnsafeCell,
        sync::{
            atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize},
            Arc, Condvar, Mutex, MutexGuard,
        },
        thread::{current, Thread},
    };
    #[cfg(not(crew_loom))]
    pub(crate) use std::{
        sync::{
            atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize},
            Arc, Condvar, Mutex, MutexGuard,
        },
        thread::{current, Thread},
    };

    /// `std::cell::UnsafeCell` with loom's access API (`with_mut`), so the loom
    /// model checks every access to a task's payload and result slot for races.
    #[cfg(not(crew_loom))]
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(crew_loom))]
    impl<T> UnsafeCell<T> {
        #[inline]
        pub(crate) const fn new(value: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        /// Runs `f` with a raw pointer to the value; the caller's `unsafe` block
        /// justifies the access.
        #[inline]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// Locks `mutex`, ignoring poisoning, as [`super::lock`] does.
    #[inline]
    pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        #[cfg(crew_loom)]
        {
            mutex.lock().unwrap()
        }
        #[cfg(not(crew_loom))]
        {
            mutex
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}
