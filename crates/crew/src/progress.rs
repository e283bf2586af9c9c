//! Progress bars (feature `indicatif`): how many items are done (of how many, when
//! the source says), the rate, an ETA, and how many failed, for [`Map`],
//! [`MapUnordered`], [`Feed`], each stage of a [`Pipeline`] and
//! [`Pool::wait_idle_with_progress`].
//!
//! A source's results are counted where they are handed out (in `next()` /
//! `poll_next`), so the bar shows what the caller has received, not what the
//! workers have finished. `wait_idle` has no results to count: its bar follows the
//! pool's [`Stats`](crate::Stats) instead.
//!
//! One task's own progress (`Context::progress`) needs nothing from this
//! module: a `ProgressWatch` is an iterator of fractions to feed a bar with
//! (see its docs).
//!
//! Bars drawn to stderr hide themselves when stderr is not a terminal (indicatif's
//! rule), so a program that logs to a file or a pipe shows nothing.
//!
//! [`Map`]: crate::Map
//! [`MapUnordered`]: crate::MapUnordered
//! [`Feed`]: crate::Feed
//! [`Pipeline`]: crate::Pipeline

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pool::Pool;
use crate::worker::Worker;

const KNOWN_TOTAL: &str =
    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} done, {per_sec:1}, ETA {eta} {msg}";
const UNKNOWN_TOTAL: &str = "{spinner} [{elapsed_precise}] {pos} done, {per_sec:1} {msg}";

/// How often `wait_idle_with_progress` reads the pool's stats to redraw: a
/// display refresh, not part of what `wait_idle` waits for.
const IDLE_REFRESH: Duration = Duration::from_millis(100);

/// crew's look for a bar: with `total`, a bar with `done/total` and an ETA;
/// without, a spinner with the count. Both show the rate and, in the message,
/// the failures.
fn style(total_known: bool) -> ProgressStyle {
    let template = if total_known {
        KNOWN_TOTAL
    } else {
        UNKNOWN_TOTAL
    };
    // The templates are constants; should indicatif ever refuse one, a plain bar
    // is better than no progress at all.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A bar in crew's style on `target`, for `total` items if known.
pub(crate) fn styled_bar(total: Option<u64>, target: ProgressDrawTarget) -> ProgressBar {
    ProgressBar::with_draw_target(total, target).with_style(style(total.is_some()))
}

/// The bar a source drives: counts results as they are handed out.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
    failed: u64,
    ended: bool,
}

impl Progress {
    /// Drives `bar`, setting its length to `total` if the bar has none.
    pub(crate) fn new(bar: ProgressBar, total: Option<u64>) -> Self {
        if let (None, Some(total)) = (bar.length(), total) {
            bar.set_length(total);
        }
        Progress {
            bar,
            failed: 0,
            ended: false,
        }
    }

    /// One result handed out.
    pub(crate) fn record(&mut self, ok: bool) {
        if !ok {
            self.failed += 1;
            self.bar.set_message(failures(self.failed));
        }
        self.bar.inc(1);
    }

    /// One item passed on without being worked on here: a pipeline stage's
    /// item that failed in an earlier stage. It advances the bar, not the
    /// failures.
    pub(crate) fn skip(&mut self) {
        self.bar.inc(1);
    }

    /// The source is exhausted: the bar is left drawn in its final state.
    pub(crate) fn finish(&mut self) {
        if !self.ended {
            self.ended = true;
            self.bar.finish();
        }
    }
}

impl Drop for Progress {
    /// Dropped before the end (the caller stopped early): the bar stays where it
    /// was, marked as not finished.
    fn drop(&mut self) {
        if !self.ended {
            self.bar.abandon();
        }
    }
}

/// The progress-bar builder methods of a source type (`Map`, `MapUnordered`,
/// `Feed`): each type has a `progress: Option<Progress>` field, and a
/// `self.len()`-like `Option<u64>` total in `self.source.len` or `self.len`.
macro_rules! progress_methods {
    ($($total:ident).+) => {
        /// Shows a progress bar on stderr while the results are handed out
        /// (feature `indicatif`): results received (of how many, when the source
        /// knows its exact length), the rate, an ETA, and how many failed. The
        /// bar is finished when the source ends and abandoned (left as it is) if
        /// this is dropped first. Like every indicatif bar on stderr, it is drawn
        /// only when stderr is a terminal.
        pub fn with_progress(self) -> Self {
            let total = self.$($total).+;
            self.attach_progress($crate::progress::stderr_bar(total))
        }

        /// Like [`with_progress`](Self::with_progress), drawn on `target` (a
        /// `ProgressDrawTarget::term_like` for a custom terminal or an in-memory
        /// buffer, `hidden()` to count without drawing, …).
        pub fn with_progress_to(self, target: ::indicatif::ProgressDrawTarget) -> Self {
            let total = self.$($total).+;
            self.attach_progress($crate::progress::styled_bar(total, target))
        }

        /// Drives `bar` (one of a `MultiProgress`, say) with the results: crew
        /// sets its length if it has none and the source knows its exact
        /// length, its position, and a message with the failures; the bar's
        /// style and target are yours.
        pub fn with_progress_bar(self, bar: ::indicatif::ProgressBar) -> Self {
            self.attach_progress(bar)
        }

        fn attach_progress(mut self, bar: ::indicatif::ProgressBar) -> Self {
            let total = self.$($total).+;
            self.progress = Some($crate::progress::Progress::new(bar, total));
            self
        }
    };
}
pub(crate) use progress_methods;

fn failures(n: u64) -> String {
    format!("({n} failed)")
}

/// A bar in crew's style on stderr, for `total` items if known.
pub(crate) fn stderr_bar(total: Option<u64>) -> ProgressBar {
    styled_bar(total, ProgressDrawTarget::stderr())
}

impl<W: Worker> Pool<W> {
    /// [`wait_idle`](Pool::wait_idle) with a progress bar on stderr (feature
    /// `indicatif`): tasks finished since the call, of those finished plus those
    /// still queued or running (the total grows if more are submitted meanwhile),
    /// the rate, an ETA and the failures (every outcome but success).
    pub fn wait_idle_with_progress(&self) {
        self.wait_idle_with_progress_bar(stderr_bar(Some(0)));
    }

    /// [`wait_idle_with_progress`](Pool::wait_idle_with_progress) drawing on
    /// `bar` (its style and target are kept; crew sets its length, position and
    /// message).
    pub fn wait_idle_with_progress_bar(&self, bar: ProgressBar) {
        let start = self.stats();
        let finished_before = start.finished();
        let failed_before = start.finished() - start.completed;
        loop {
            let idle = self.wait_idle_timeout(IDLE_REFRESH);
            let now = self.stats();
            let done = now.finished().saturating_sub(finished_before);
            // Every accepted task is queued, running, or counted in one outcome.
            let outstanding = now.submitted.saturating_sub(now.finished());
            let failed = (now.finished() - now.completed).saturating_sub(failed_before);
            bar.set_length(done + outstanding);
            bar.set_position(done);
            if failed > 0 {
                bar.set_message(failures(failed));
            }
            if idle {
                bar.finish();
                return;
            }
        }
    }
}
