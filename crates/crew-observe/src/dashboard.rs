//! `Dashboard`: a small HTTP server with a live page for one or more pools.
//!
//! # Routes
//!
//! | path | what |
//! |---|---|
//! | `/` | the page: one self-contained HTML file (inline CSS, JS and SVG charts; nothing fetched from elsewhere) |
//! | `/events` | a server-sent event stream: first a `history` event (the points kept so far), then a `tick` event per sampler tick |
//! | `/api/stats` | a [`Snapshot`] as JSON, read when asked |
//! | `/api/history` | the kept points of every pool as JSON |
//! | `/metrics` | the [`Metrics`](crate::Metrics) exporter's text (feature `metrics`) |
//!
//! # Threads
//!
//! - The **acceptor** takes requests (`tiny_http`, synchronous) and answers
//!   every route but `/events` itself: each answer is one `stats()` call or a
//!   copy of a string the sampler made.
//! - The **sampler** reads each pool once per tick (one second by default),
//!   keeps the last points ([`history`](crate::history)), serializes the tick
//!   once, and wakes the streams.
//! - Each **stream** (an open `/events`) has a thread that writes every new
//!   tick to its client, and ends when the client goes away or the server
//!   stops. At most [`MAX_STREAMS`] are open at once; more get a 503.
//!
//! Every thread checks the stop flag at least every `POLL` (100 ms), so
//! dropping the [`DashboardServer`] returns within about that time, after
//! joining them all — except a stream blocked writing to a client that stopped
//! reading: the drop waits up to two seconds for it, then leaves it to end
//! when its write fails (until then it holds the pools' handles).
//!
//! # Exposure
//!
//! The server has no authentication and serves read-only figures (task and
//! worker ids, pids, error counts, never inputs or outputs). Bind it to the
//! loopback address, or put it behind a proxy that authenticates.
//!
//! # Not yet
//!
//! A cluster's nodes (and its dead letters) will appear once the cluster
//! backend exists and its stats carry them; today every pool is one local
//! pool.
//!
//! # Cost
//!
//! Each pool is read once per tick and once per `/api/stats` or `/metrics`
//! request. The dashboard also subscribes to each pool's events for the
//! worker restart and crash counts and the per-tick latencies, which has a
//! per-task cost while the dashboard runs: see [`Lifecycle`].

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crew::{Pool, Worker};
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::history::{PoolHistory, PoolTick, Track};
use crate::lifecycle::{lock, Lifecycle};
use crate::snapshot::Snapshot;
use crate::source::Source;

/// The page, served at `/`.
const PAGE: &str = include_str!("page.html");

/// Open `/events` streams allowed at once.
pub const MAX_STREAMS: usize = 32;

/// The longest any server thread goes without checking whether to stop.
const POLL: Duration = Duration::from_millis(100);

/// How long dropping the server waits for its open streams to end.
const STREAM_GRACE: Duration = Duration::from_secs(2);

/// Builds a dashboard: add pools, then [`serve`](Dashboard::serve).
///
/// ```no_run
/// let pool: crew::Pool = crew::Pool::builder().build()?;
/// let server = crew_observe::Dashboard::new()
///     .pool("work", &pool)
///     .serve("127.0.0.1:9000")?;
/// println!("dashboard on http://{}", server.addr());
/// // ... the server stops when `server` is dropped.
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a Dashboard does nothing until `serve` is called"]
pub struct Dashboard {
    sources: Vec<Arc<Source>>,
    tick: Duration,
    keep: usize,
    /// The first error from watching a pool's events, reported by `serve`.
    error: Option<io::Error>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            sources: Vec::new(),
            tick: Duration::from_secs(1),
            keep: 300,
            error: None,
        }
    }
}

impl Dashboard {
    /// A dashboard with no pool yet, ticking every second and keeping five
    /// minutes of points.
    pub fn new() -> Self {
        Dashboard::default()
    }

    /// Adds `pool` under `name`. The dashboard holds a clone of its handle (so
    /// the pool stays open while the server runs) and subscribes to its events
    /// (see the module docs for that cost). If the OS refuses the event
    /// reader's thread, [`serve`](Dashboard::serve) returns that error.
    pub fn pool<W: Worker>(mut self, name: &str, pool: &Pool<W>) -> Self {
        match Lifecycle::watch(pool) {
            Ok(lifecycle) => self
                .sources
                .push(Arc::new(Source::new(name, pool, Some(lifecycle)))),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// How often the pools are sampled and the page updated (default one
    /// second; at least 50 ms).
    pub fn tick(mut self, every: Duration) -> Self {
        self.tick = every.max(Duration::from_millis(50));
        self
    }

    /// How many points each chart keeps (default 300: five minutes at one
    /// tick a second; at least 2).
    pub fn keep(mut self, points: usize) -> Self {
        self.keep = points.max(2);
        self
    }

    /// Binds `addr` and starts serving. Port 0 picks a free port: read it from
    /// [`DashboardServer::addr`].
    pub fn serve(self, addr: impl ToSocketAddrs) -> io::Result<DashboardServer> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
        let server = Server::http(addr).map_err(io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the server has no IP address"))?;
        let shared = Arc::new(Shared {
            sources: self.sources,
            start: Instant::now(),
            stop: AtomicBool::new(false),
            live: Mutex::new(Live::default()),
            changed: Condvar::new(),
            streams: AtomicUsize::new(0),
            stream_threads: Mutex::new(Vec::new()),
        });
        let mut tracks: Vec<Track> = shared.sources.iter().map(|_| Track::new()).collect();
        // A first tick before any request, so the page never starts empty.
        shared.sample(&mut tracks, self.keep);

        let sampler = {
            let shared = Arc::clone(&shared);
            let (every, keep) = (self.tick, self.keep);
            std::thread::Builder::new()
                .name("crew-observe-sampler".into())
                .spawn(move || shared.run_sampler(tracks, every, keep))?
        };
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("crew-observe-http".into())
                .spawn(move || shared.run_acceptor(server))
        };
        let acceptor = match acceptor {
            Ok(t) => t,
            Err(e) => {
                shared.stop();
                let _ = sampler.join();
                return Err(e);
            }
        };
        Ok(DashboardServer {
            addr,
            shared,
            threads: vec![sampler, acceptor],
        })
    }
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("pools", &self.sources.len())
            .field("tick", &self.tick)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// A running dashboard. **Dropping it stops the server** (as does
/// [`shutdown`](DashboardServer::shutdown)): it closes the listener and every
/// open stream, joins the server's threads, and releases the pools' handles.
#[must_use = "dropping the DashboardServer stops the server"]
pub struct DashboardServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl DashboardServer {
    /// The address it listens on (with the port chosen if 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL, `http://ADDR/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops the server and waits for its threads (as dropping it does).
    pub fn shutdown(self) {}
}

impl Drop for DashboardServer {
    fn drop(&mut self) {
        self.shared.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // A stream thread sees the stop within POLL, unless it is blocked
        // writing to a client that stopped reading (a full socket buffer).
        // Wait a bounded time for the streams, then leave such a thread
        // behind: it ends when that write fails.
        let streams = std::mem::take(&mut *lock(&self.shared.stream_threads));
        let deadline = Instant::now() + STREAM_GRACE;
        while streams.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in streams {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl std::fmt::Debug for DashboardServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// State shared by the server's threads.
struct Shared {
    /// The pools. Fixed once serving.
    sources: Vec<Arc<Source>>,
    start: Instant,
    /// Set once by `DashboardServer::drop`; read by every thread.
    stop: AtomicBool,
    /// Written by the sampler each tick; read by streams and `/api/history`.
    live: Mutex<Live>,
    /// Signalled by the sampler after each tick, and by `stop`.
    changed: Condvar,
    /// Open streams. Incremented by the acceptor, decremented by each stream
    /// thread as it ends.
    streams: AtomicUsize,
    /// The stream threads, joined on drop. Pushed by the acceptor.
    stream_threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The sampler's output.
#[derive(Default)]
struct Live {
    /// Bumped each tick, so a stream knows it has something new.
    generation: u64,
    /// The last tick as JSON (an array of [`PoolTick`]).
    tick_json: String,
    /// Every pool's kept points as JSON (an array of [`PoolHistory`]).
    history_json: String,
}

#[derive(Serialize)]
struct Ticks<'a> {
    t: f64,
    pools: &'a [PoolTick],
}

#[derive(Serialize)]
struct Histories {
    pools: Vec<PoolHistory>,
}

impl Shared {
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Take the lock so a stream between its check and its wait sees this.
        let _live = lock(&self.live);
        self.changed.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run_sampler(&self, mut tracks: Vec<Track>, every: Duration, keep: usize) {
        let mut next = Instant::now() + every;
        loop {
            // Sleep in slices of POLL so a stop is seen promptly.
            loop {
                if self.stopped() {
                    return;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                std::thread::sleep((next - now).min(POLL));
            }
            next += every;
            // After a stall (a suspended process), do not fire a burst of ticks.
            if next < Instant::now() {
                next = Instant::now() + every;
            }
            self.sample(&mut tracks, keep);
        }
    }

    /// One tick: read every pool, record a point, publish the JSON.
    fn sample(&self, tracks: &mut [Track], keep: usize) {
        let ticks: Vec<PoolTick> = self
            .sources
            .iter()
            .zip(tracks.iter_mut())
            .map(|(source, track)| track.tick(source, self.start, keep))
            .collect();
        let tick_json = json(&Ticks {
            t: self.start.elapsed().as_secs_f64(),
            pools: &ticks,
        });
        let history_json = json(&Histories {
            pools: self
                .sources
                .iter()
                .zip(tracks.iter())
                .map(|(s, t)| PoolHistory {
                    name: s.name.clone(),
                    points: t.points(),
                })
                .collect(),
        });
        let mut live = lock(&self.live);
        live.generation += 1;
        live.tick_json = tick_json;
        live.history_json = history_json;
        drop(live);
        self.changed.notify_all();
    }

    fn run_acceptor(self: Arc<Self>, server: Server) {
        while !self.stopped() {
            match server.recv_timeout(POLL) {
                Ok(Some(request)) => self.route(request),
                Ok(None) => {}
                // A failed accept concerns one connection; keep serving.
                Err(_) => {}
            }
        }
    }

    fn route(self: &Arc<Self>, request: Request) {
        if request.method() != &Method::Get && request.method() != &Method::Head {
            let _ = request.respond(Response::from_string("only GET\n").with_status_code(405));
            return;
        }
        let path = request.url().split('?').next().unwrap_or("/").to_owned();
        let answer = match path.as_str() {
            "/" | "/index.html" => Some((PAGE.to_owned(), "text/html; charset=utf-8")),
            "/api/stats" => Some((json(&self.snapshot()), "application/json")),
            "/api/history" => Some((lock(&self.live).history_json.clone(), "application/json")),
            #[cfg(feature = "metrics")]
            "/metrics" => Some((
                crate::Metrics::from_sources(self.sources.clone()).encode(),
                crate::metrics::CONTENT_TYPE,
            )),
            "/events" => {
                self.open_stream(request);
                return;
            }
            _ => None,
        };
        let response = match answer {
            Some((body, content_type)) => Response::from_string(body)
                .with_header(header("Content-Type", content_type))
                .with_header(header("Cache-Control", "no-store")),
            None => Response::from_string("not found\n").with_status_code(404),
        };
        // A client that went away is not the server's error.
        let _ = request.respond(response);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            pools: self.sources.iter().map(|s| s.snapshot()).collect(),
        }
    }

    /// Hands an `/events` request to a thread of its own, or answers 503 when
    /// [`MAX_STREAMS`] are open.
    fn open_stream(self: &Arc<Self>, request: Request) {
        if self.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::SeqCst);
            let _ = request
                .respond(Response::from_string("too many open streams\n").with_status_code(503));
            return;
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("crew-observe-stream".into())
            .spawn(move || {
                let writer = request.into_writer();
                // Any write error means the client left: the stream just ends.
                let _ = shared.stream(writer);
                shared.streams.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(t) => {
                let mut threads = lock(&self.stream_threads);
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            // The request went with the closure; its connection closes.
            Err(_) => {
                self.streams.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Writes the stream: the headers, the history, then each new tick, each
    /// event as one HTTP chunk (flushed at once, so it reaches the page now).
    /// When the server stops, the last chunk ends the response, so the page
    /// sees the stream end (and its `EventSource` starts reconnecting) instead
    /// of a connection that stays silent.
    fn stream(&self, mut out: Box<dyn Write + Send>) -> io::Result<()> {
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        let (mut seen, history, tick) = {
            let live = lock(&self.live);
            (
                live.generation,
                live.history_json.clone(),
                live.tick_json.clone(),
            )
        };
        write_event(&mut out, "history", &history)?;
        write_event(&mut out, "tick", &tick)?;
        loop {
            let tick = {
                let mut live = lock(&self.live);
                while live.generation == seen && !self.stopped() {
                    live = self
                        .changed
                        .wait_timeout(live, POLL)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                if self.stopped() {
                    break;
                }
                seen = live.generation;
                live.tick_json.clone()
            };
            write_event(&mut out, "tick", &tick)?;
        }
        out.write_all(b"0\r\n\r\n")?;
        out.flush()
    }
}

/// One server-sent event in one HTTP chunk. `data` is one line of JSON
/// (serde_json writes no newline), as a single `data:` field requires.
fn write_event(out: &mut dyn Write, event: &str, data: &str) -> io::Result<()> {
    let body = format!("event: {event}\ndata: {data}\n\n");
    write!(out, "{:x}\r\n{body}\r\n", body.len())?;
    out.flush()
}

fn json<T: Serialize>(value: &T) -> String {
    // These types are plain data with string keys: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|_| unreachable!("constant, valid header"))
}
