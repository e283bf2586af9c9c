//! The guard against a forgotten `crew::bootstrap`.
//!
//! A process pool starts its workers by re-running the current executable.
//! `crew::bootstrap` (or `Bootstrap::run`, or `crew::serve`), called first in
//! `main`, turns such a process into a worker and never returns there. If `main`
//! forgets the call, the worker process runs the whole program again: it builds
//! its own process pool, whose workers do the same, and with `processes(n > 1)`
//! the number of processes grows exponentially.
//!
//! **How a worker knows it is one.** The pool starts each worker with its
//! channel's descriptor in the environment (`CREW_WORKER_FD`, see `child.rs`);
//! the bootstrap functions read the launch variables and remove them before any
//! of the user's code runs. So a process that builds a process pool while the
//! variable is still set is a worker whose `main` skipped the bootstrap.
//!
//! **What happens then.** `PoolBuilder::build` refuses with
//! [`BuildError::is_not_bootstrapped`](crate::BuildError::is_not_bootstrapped),
//! starting nothing, and writes [`NOT_BOOTSTRAPPED`] as one line to stderr, which
//! the parent pool captures. When that worker exits without having started,
//! the parent finds the line in its stderr tail and makes it the start error its
//! waiting tasks fail with, instead of an anonymous "exited with code 1".
//! Thread pools are not refused: they cannot multiply processes.

use super::worker_main::ENV_FD;
use crate::error::{BuildError, BuildErrorKind, Crash};

/// What a worker process that skipped the bootstrap says, on stderr and in the
/// parent's start error. It names the missing call and where it goes.
pub(crate) const NOT_BOOTSTRAPPED: &str = "this crew worker process's `main` did not call \
     `crew::bootstrap::<W>()` (or `crew::Bootstrap::new().worker::<W>().run()`) before \
     building a process pool; call it first in `main`, before anything else runs";

/// Whether this process was started as a crew worker and its launch was never
/// taken by a bootstrap function (which removes the variable).
pub(crate) fn in_unbootstrapped_worker() -> bool {
    std::env::var_os(ENV_FD).is_some()
}

/// The refusal: says it on stderr (for the parent) and returns the error (for
/// the code that tried to build the pool).
#[cold]
pub(crate) fn refuse() -> BuildError {
    eprintln!("crew: {NOT_BOOTSTRAPPED}");
    BuildError::new(BuildErrorKind::NotBootstrapped)
}

/// The start error for a worker that exited before it was ready: the guard's
/// line if the worker wrote it.
pub(crate) fn explain(crash: &Crash) -> Option<String> {
    crash
        .stderr_tail()
        .iter()
        .any(|line| line.contains(NOT_BOOTSTRAPPED))
        .then(|| NOT_BOOTSTRAPPED.to_owned())
}
