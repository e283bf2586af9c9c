//! `top` for crew pools: a live terminal view (feature `top`, with `ratatui`
//! on `crossterm`).
//!
//! It shows one pool at a time: a header with the worker counts, the queue,
//! the task outcomes and the wait and run percentiles, then one row per worker.
//! Keys: `b` sorts by busy time, `r` by resident memory, `d` by tasks done,
//! `i` by worker id; `Tab` shows the next pool; `Ctrl-L` repaints; `q` (or
//! `Esc`, `Ctrl-C`) quits.
//!
//! Figures come from a feed, read on a thread of its own so a slow or
//! unreachable server never freezes the screen:
//! - [`Top::url`]: a dashboard's `/api/stats` over HTTP (what `crew-top --url`
//!   does);
//! - [`Top::pool`]: a pool in this process, through `Pool::stats` (no event
//!   subscription, so no cost while tasks run).

use std::io::{self, Stdout};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use crew::{Pool, Worker};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::crossterm::{cursor, execute};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{Frame, Terminal};

use crate::snapshot::{PoolSnapshot, Snapshot, WorkerJson};
use crate::source::Source;

/// Where a [`Top`] reads its figures from: a function the feed thread calls
/// once per refresh.
type Fetch = Box<dyn FnMut() -> Result<Snapshot, String> + Send>;

/// A terminal view of one or more pools. Build it with [`Top::url`] or
/// [`Top::pool`], then [`run`](Top::run) it.
#[must_use = "a Top shows nothing until `run` is called"]
pub struct Top {
    fetch: Fetch,
    /// What the header says the figures come from.
    origin: String,
    refresh: Duration,
}

/// How the worker rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// By worker id, ascending (the default).
    Id,
    /// By busy time, most first.
    Busy,
    /// By resident memory, most first (workers without a figure last).
    Rss,
    /// By tasks done, most first.
    Done,
}

impl SortKey {
    fn name(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::Busy => "busy",
            SortKey::Rss => "rss",
            SortKey::Done => "done",
        }
    }
}

/// Orders `workers` by `key`; ties (and `Id`) by ascending id, so the order
/// is stable from one refresh to the next.
pub fn sort_workers(workers: &mut [WorkerJson], key: SortKey) {
    workers.sort_by(|a, b| {
        let primary = match key {
            SortKey::Id => std::cmp::Ordering::Equal,
            SortKey::Busy => b.busy_seconds.total_cmp(&a.busy_seconds),
            SortKey::Rss => b.rss_bytes.cmp(&a.rss_bytes),
            SortKey::Done => b.tasks_done.cmp(&a.tasks_done),
        };
        primary.then(a.id.cmp(&b.id))
    });
}

impl Top {
    /// Reads `base` + `/api/stats` (a [`Dashboard`](crate::Dashboard)) each
    /// refresh. `base` is like `http://127.0.0.1:9000`.
    pub fn url(base: &str) -> Top {
        let origin = base.trim_end_matches('/').to_owned();
        let url = format!("{origin}/api/stats");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .into();
        Top {
            fetch: Box::new(move || {
                let mut response = agent.get(&url).call().map_err(|e| e.to_string())?;
                let body = response
                    .body_mut()
                    .read_to_string()
                    .map_err(|e| e.to_string())?;
                serde_json::from_str(&body).map_err(|e| format!("not a crew snapshot: {e}"))
            }),
            origin,
            refresh: Duration::from_secs(1),
        }
    }

    /// Shows `pool`, in this process, under `name`. Holds a clone of its
    /// handle until the view quits.
    pub fn pool<W: Worker>(name: &str, pool: &Pool<W>) -> Top {
        let source = Arc::new(Source::new(name, pool, None));
        Top {
            fetch: Box::new(move || {
                Ok(Snapshot {
                    pools: vec![source.snapshot()],
                })
            }),
            origin: "this process".to_owned(),
            refresh: Duration::from_secs(1),
        }
    }

    /// How often the figures are read (default one second; at least 50 ms).
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(50));
        self
    }

    /// Takes over the terminal (raw mode, alternate screen) until `q`, then
    /// restores it — also when this thread returns an error or unwinds.
    ///
    /// Unlike `ratatui::init`, it installs no panic hook: a task of an
    /// in-process pool that panics (and is caught by crew) must not tear the
    /// screen down under a view that keeps running. Anything the program
    /// itself prints to the terminal (a panic message) lands on the screen;
    /// `Ctrl-L` repaints it.
    pub fn run(self) -> io::Result<()> {
        let snapshots = spawn_feed(self.fetch, self.refresh)?;
        let mut screen = Screen::enter()?;
        let mut view = View {
            origin: self.origin,
            sort: SortKey::Id,
            pool: 0,
            latest: None,
            error: None,
        };
        loop {
            screen.terminal.draw(|frame| view.draw(frame))?;
            // Wait for a key or the next snapshot, whichever comes first.
            if event::poll(Duration::from_millis(50))? {
                if let Event::Key(key) = event::read()? {
                    if key.kind == KeyEventKind::Release {
                        continue;
                    }
                    if key.code == KeyCode::Char('l')
                        && key.modifiers.contains(KeyModifiers::CONTROL)
                    {
                        screen.repaint()?;
                    } else if view.key(key.code, key.modifiers) {
                        return Ok(());
                    }
                }
            }
            match snapshots.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(snapshot)) => {
                    view.latest = Some(snapshot);
                    view.error = None;
                }
                Ok(Err(e)) => view.error = Some(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("the feed thread stopped"))
                }
            }
        }
    }
}

/// The terminal while the view owns it: raw mode and the alternate screen,
/// both undone on drop (a normal return, an error, or an unwind of the view's
/// thread).
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> io::Result<Screen> {
        terminal::enable_raw_mode()?;
        // From here on, Drop undoes whatever was done.
        let mut screen = Screen {
            terminal: Terminal::new(CrosstermBackend::new(io::stdout()))?,
        };
        execute!(io::stdout(), EnterAlternateScreen)?;
        screen.terminal.hide_cursor()?;
        Ok(screen)
    }

    /// Clears the screen and starts from fresh buffers, so the next draw
    /// paints every cell. (`Terminal::clear` would ask the terminal for its
    /// cursor position, which not every terminal answers.)
    fn repaint(&mut self) -> io::Result<()> {
        execute!(io::stdout(), terminal::Clear(terminal::ClearType::All))?;
        self.terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        self.terminal.hide_cursor()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        // Nothing to report a failure to while restoring; try every step.
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
}

impl std::fmt::Debug for Top {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Top")
            .field("origin", &self.origin)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

/// Calls `fetch` every `refresh` on a thread of its own and sends each
/// result. The thread ends when the receiver is dropped (the view quit).
fn spawn_feed(
    mut fetch: Fetch,
    refresh: Duration,
) -> io::Result<Receiver<Result<Snapshot, String>>> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("crew-top-feed".into())
        .spawn(move || loop {
            if tx.send(fetch()).is_err() {
                return;
            }
            std::thread::sleep(refresh);
        })?;
    Ok(rx)
}

/// What the screen shows.
struct View {
    origin: String,
    sort: SortKey,
    /// Index of the pool shown, among the snapshot's pools.
    pool: usize,
    latest: Option<Snapshot>,
    /// The last fetch's error, shown until a fetch succeeds.
    error: Option<String>,
}

impl View {
    /// Applies a key; `true` means quit.
    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return true,
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return true,
            KeyCode::Char('b') => self.sort = SortKey::Busy,
            KeyCode::Char('r') => self.sort = SortKey::Rss,
            KeyCode::Char('d') => self.sort = SortKey::Done,
            KeyCode::Char('i') => self.sort = SortKey::Id,
            KeyCode::Tab => {
                let n = self.latest.as_ref().map_or(1, |s| s.pools.len().max(1));
                self.pool = (self.pool + 1) % n;
            }
            _ => {}
        }
        false
    }

    fn draw(&self, frame: &mut Frame<'_>) {
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(5),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let pools = self.latest.as_ref().map_or(&[][..], |s| &s.pools[..]);
        let pool = pools.get(self.pool.min(pools.len().saturating_sub(1)));
        frame.render_widget(self.header(pool, pools.len()), head);
        if let Some(pool) = pool {
            frame.render_widget(self.table(pool), body);
        }
        let foot_line = match &self.error {
            Some(e) => Line::from(Span::styled(
                format!("cannot read {}: {e} (retrying)", self.origin),
                Style::new().fg(Color::Red),
            )),
            None => Line::from(Span::styled(
                "b busy · r rss · d done · i id · tab next pool · q quit",
                Style::new().fg(Color::DarkGray),
            )),
        };
        frame.render_widget(Paragraph::new(foot_line), foot);
    }

    fn header(&self, pool: Option<&PoolSnapshot>, count: usize) -> Paragraph<'static> {
        let bold = Style::new().add_modifier(Modifier::BOLD);
        let Some(p) = pool else {
            return Paragraph::new(format!("crew top — waiting for {}", self.origin))
                .block(Block::bordered());
        };
        let s = &p.stats;
        let title = Line::from(vec![
            Span::styled("crew top", bold),
            Span::raw(format!(
                " — pool {} ({}/{}) from {} · up {} · sorted by {}",
                p.name,
                self.pool.min(count.saturating_sub(1)) + 1,
                count,
                self.origin,
                dur(s.uptime_seconds),
                self.sort.name()
            )),
        ]);
        let workers = Line::from(format!(
            "workers {} (busy {}, idle {})   queued {}   submitted {}   utilization {:.1}%",
            s.workers,
            s.busy,
            s.idle,
            s.queued,
            s.submitted,
            s.utilization * 100.0
        ));
        let outcomes = Line::from(format!(
            "ok {}  err {}  panic {}  timeout {}  cancelled {}  killed {}  crashed {}  closed {}",
            s.completed,
            s.failed,
            s.panicked,
            s.timed_out,
            s.cancelled,
            s.killed,
            s.crashed,
            s.closed
        ));
        let latency = Line::from(format!(
            "wait p50 {} p90 {} p99 {}   run p50 {} p90 {} p99 {} max {}",
            dur(s.wait.p50),
            dur(s.wait.p90),
            dur(s.wait.p99),
            dur(s.run.p50),
            dur(s.run.p90),
            dur(s.run.p99),
            dur(s.run.max)
        ));
        Paragraph::new(vec![title, workers, outcomes, latency])
    }

    fn table(&self, pool: &PoolSnapshot) -> Table<'static> {
        let mut workers = pool.stats.per_worker.clone();
        sort_workers(&mut workers, self.sort);
        let header = Row::new([
            "WORKER", "STATE", "TASK", "DONE", "BUSY", "RUN P50", "RUN P99", "PID", "RSS",
        ])
        .style(Style::new().add_modifier(Modifier::REVERSED));
        let rows = workers.into_iter().map(|w| {
            let color = match w.state.as_str() {
                "busy" => Color::Cyan,
                "idle" => Color::Green,
                _ => Color::Yellow,
            };
            Row::new(vec![
                Span::raw(format!("worker-{}", w.id)),
                Span::styled(w.state.clone(), Style::new().fg(color)),
                Span::raw(w.current_task.clone().unwrap_or_else(|| "-".into())),
                Span::raw(w.tasks_done.to_string()),
                Span::raw(dur(w.busy_seconds)),
                Span::raw(dur(w.run.p50)),
                Span::raw(dur(w.run.p99)),
                Span::raw(w.pid.map_or_else(|| "-".into(), |p| p.to_string())),
                Span::raw(
                    w.rss_bytes
                        .map_or_else(|| "-".into(), |b| format!("{:.1}M", b as f64 / 1048576.0)),
                ),
            ])
        });
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(9),
                Constraint::Length(12),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(9),
            ],
        )
        .header(header)
    }
}

/// A duration in seconds, with a unit and three significant digits.
fn dur(s: f64) -> String {
    if s <= 0.0 {
        "0".into()
    } else if s < 1e-6 {
        format!("{:.0}ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.3}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.3}ms", s * 1e3)
    } else {
        format!("{s:.3}s")
    }
    .replace(".000", "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::LatencyJson;

    fn worker(id: u64, busy: f64, rss: Option<u64>, done: u64) -> WorkerJson {
        WorkerJson {
            id,
            state: "idle".into(),
            current_task: None,
            tasks_done: done,
            busy_seconds: busy,
            run: LatencyJson::default(),
            pid: None,
            rss_bytes: rss,
        }
    }

    fn ids(w: &[WorkerJson]) -> Vec<u64> {
        w.iter().map(|w| w.id).collect()
    }

    #[test]
    fn sorts_by_each_key_with_id_breaking_ties() {
        let mut w = vec![
            worker(3, 0.5, Some(10), 7),
            worker(1, 0.1, None, 9),
            worker(2, 0.5, Some(30), 1),
        ];
        sort_workers(&mut w, SortKey::Busy);
        assert_eq!(ids(&w), [2, 3, 1]);
        sort_workers(&mut w, SortKey::Rss);
        assert_eq!(ids(&w), [2, 3, 1]);
        sort_workers(&mut w, SortKey::Done);
        assert_eq!(ids(&w), [1, 3, 2]);
        sort_workers(&mut w, SortKey::Id);
        assert_eq!(ids(&w), [1, 2, 3]);
    }

    #[test]
    fn keys_change_the_sort_and_q_quits() {
        let mut v = View {
            origin: "test".into(),
            sort: SortKey::Id,
            pool: 0,
            latest: None,
            error: None,
        };
        assert!(!v.key(KeyCode::Char('b'), KeyModifiers::NONE));
        assert_eq!(v.sort, SortKey::Busy);
        assert!(!v.key(KeyCode::Char('r'), KeyModifiers::NONE));
        assert_eq!(v.sort, SortKey::Rss);
        assert!(v.key(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(v.key(KeyCode::Char('q'), KeyModifiers::NONE));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(dur(0.0), "0");
        assert_eq!(dur(0.0012), "1.200ms");
        assert_eq!(dur(2.0), "2s");
        assert_eq!(dur(0.000_000_5), "500ns");
    }
}
