//! Progress bars (feature `indicatif`): `map`, `map_unordered`, a feed and
//! `wait_idle` draw on a non-terminal target (an in-memory buffer) without
//! panicking, and what they draw shows the done count and the failures.
#![cfg(feature = "indicatif")]

mod common;

use std::io;
use std::sync::{mpsc, Arc, Mutex};

use common::{wait_until, Gate, OpenOnDrop};
use crew::indicatif::{ProgressBar, ProgressDrawTarget, TermLike};
use crew::{Context, Pool, StartError, Worker};

/// A terminal that is a string: everything drawn is appended, so the text holds
/// every frame, the last one last.
#[derive(Debug, Clone, Default)]
struct Screen(Arc<Mutex<String>>);

impl Screen {
    fn target(&self) -> ProgressDrawTarget {
        ProgressDrawTarget::term_like(Box::new(self.clone()))
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// The last line drawn.
    fn last_frame(&self) -> String {
        let text = self.text();
        text.lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or_default()
            .to_owned()
    }
}

impl TermLike for Screen {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        let mut text = self.0.lock().unwrap();
        text.push_str(s);
        text.push('\n');
        Ok(())
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.lock().unwrap().push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> io::Result<()> {
        self.0.lock().unwrap().push('\n');
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Fails on multiples of 7.
struct NoSevens;

impl Worker for NoSevens {
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(NoSevens)
    }

    fn run(&mut self, n: u64, _ctx: &mut Context<'_>) -> Result<u64, String> {
        if n.is_multiple_of(7) {
            return Err(format!("{n} is a multiple of 7"));
        }
        Ok(n)
    }
}

#[test]
fn map_draws_done_of_total_and_the_failures() {
    let pool = Pool::<NoSevens>::builder().workers(2).build().unwrap();
    let screen = Screen::default();
    let results: Vec<_> = pool
        .map(1..=40u64)
        .with_progress_to(screen.target())
        .collect();
    assert_eq!(results.len(), 40);
    let last = screen.last_frame();
    assert!(last.contains("40/40 done"), "last frame: {last:?}");
    assert!(last.contains("(5 failed)"), "last frame: {last:?}");
    assert!(last.contains("/s"), "a rate in the last frame: {last:?}");
}

#[test]
fn map_unordered_and_a_feed_of_unknown_length_draw_the_count() {
    let pool = Pool::<NoSevens>::builder().workers(2).build().unwrap();
    let screen = Screen::default();
    let count = pool
        .map_unordered(1..=30u64)
        .with_progress_to(screen.target())
        .count();
    assert_eq!(count, 30);
    let last = screen.last_frame();
    assert!(last.contains("30/30 done"), "last frame: {last:?}");
    assert!(last.contains("(4 failed)"), "last frame: {last:?}");

    // A channel does not know how many inputs will come: a count, no total.
    let (jobs, queue) = mpsc::channel();
    for n in 1..=25u64 {
        jobs.send(n).unwrap();
    }
    drop(jobs);
    let screen = Screen::default();
    let count = pool.feed(queue).with_progress_to(screen.target()).count();
    assert_eq!(count, 25);
    let last = screen.last_frame();
    assert!(last.contains("25 done"), "last frame: {last:?}");
    assert!(!last.contains("25/"), "no total for a channel: {last:?}");
    assert!(last.contains("(3 failed)"), "last frame: {last:?}");
}

#[test]
fn a_bar_of_your_own_is_driven_and_keeps_its_style() {
    let pool = Pool::<NoSevens>::builder().workers(2).build().unwrap();
    let screen = Screen::default();
    let bar = ProgressBar::with_draw_target(None, screen.target());
    let results: Vec<_> = pool.map(1..=12u64).with_progress_bar(bar.clone()).collect();
    assert_eq!(results.len(), 12);
    assert_eq!(bar.position(), 12);
    assert_eq!(bar.length(), Some(12), "the length comes from the source");
    assert!(bar.is_finished());
    assert!(screen.text().contains("12/12"), "{:?}", screen.text());
}

#[test]
fn dropping_early_leaves_the_bar_where_it_was() {
    let pool = Pool::<NoSevens>::builder().workers(2).build().unwrap();
    let screen = Screen::default();
    let mut map = pool.map(1..=100u64).with_progress_to(screen.target());
    map.next().unwrap().unwrap();
    drop(map);
    let last = screen.last_frame();
    assert!(last.contains("1/100 done"), "last frame: {last:?}");
}

#[test]
fn wait_idle_with_progress_counts_the_tasks_that_were_outstanding() {
    let pool: Pool = Pool::builder().workers(2).build().unwrap();
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let tasks: Vec<_> = (0..10u64)
        .map(|n| {
            let gate = gate.clone();
            pool.spawn(move || {
                gate.wait();
                n
            })
        })
        .collect();
    let screen = Screen::default();
    let bar = crew::indicatif::ProgressBar::with_draw_target(Some(0), screen.target());
    std::thread::scope(|s| {
        // Open the gate once the bar has taken in the 10 tasks, so all of them are
        // counted as done while it watches.
        let watched = bar.clone();
        let gate = gate.clone();
        s.spawn(move || {
            wait_until("the bar counts 10 outstanding tasks", || {
                watched.length() == Some(10)
            });
            gate.open();
        });
        pool.wait_idle_with_progress_bar(bar.clone());
    });
    assert_eq!(bar.position(), 10);
    assert!(bar.is_finished());
    assert!(screen.text().contains("10/10"), "{:?}", screen.text());
    for task in tasks {
        task.join().unwrap();
    }
}
