//! A `nats-server` with JetStream on, started and stopped by its owner: for tests,
//! examples and the bench, which must never depend on a server the machine
//! happens to run.
//!
//! [`NatsServer::start`] listens on loopback on a free port with a fresh
//! temporary store; [`NatsServer::restart`] kills it and starts it again on the
//! same port and store (what a test of "the broker went away" needs); `Drop`
//! kills it by its pid and waits for it, so a failing test leaves no server
//! behind.
//!
//! The server binary is looked up on `PATH`, then at `/usr/sbin/nats-server`
//! (where Debian's package puts it). If it is absent, [`NatsServer::start`]
//! returns an error that says how to install it: a test that needs the server
//! fails, it never skips.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The line `nats-server` logs once it accepts clients (JetStream included).
const READY_LINE: &str = "Server is ready";

/// How many of the server's last log lines are kept for error messages.
const LOG_TAIL: usize = 40;

/// A running `nats-server` with JetStream, owned by this value.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    /// Arguments after the standard ones (a cluster member's routes).
    extra: Vec<String>,
    /// The JetStream store; kept across restarts, removed on drop.
    store: tempfile::TempDir,
    /// The server process; `None` only between a kill and the next start.
    child: Option<Child>,
    /// The server's log lines, written by the drain thread, read for errors.
    log: Arc<Log>,
}

/// The server's output, as a drain thread reads it.
#[derive(Default)]
struct Log {
    /// Written by the drain thread; read by [`NatsServer::wait_ready`].
    state: Mutex<LogState>,
    ready: Condvar,
}

#[derive(Default)]
struct LogState {
    tail: std::collections::VecDeque<String>,
    ready: bool,
    closed: bool,
}

impl NatsServer {
    /// Starts a server on `127.0.0.1`, a free port and a new temporary store, and
    /// waits until it accepts clients.
    pub fn start() -> std::io::Result<NatsServer> {
        let mut server = NatsServer::new(free_port()?, Vec::new())?;
        server.spawn()?;
        Ok(server)
    }

    fn new(port: u16, extra: Vec<String>) -> std::io::Result<NatsServer> {
        Ok(NatsServer {
            binary: find_binary()?,
            port,
            extra,
            store: tempfile::Builder::new().prefix("crew-nats-").tempdir()?,
            child: None,
            log: Arc::new(Log::default()),
        })
    }

    /// The URL clients connect to: `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, as a crash would) and waits for it to exit. Its
    /// store stays; [`NatsServer::start_again`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, after
    /// [`NatsServer::kill`].
    pub fn start_again(&mut self) -> std::io::Result<()> {
        self.kill();
        // The port was ours a moment ago; a connection in TIME_WAIT does not stop
        // a listener (Go listeners set SO_REUSEADDR), but another program could
        // take it in between. Retry the start a few times rather than fail on
        // the first refusal.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.start_again()
    }

    /// The server's last log lines, oldest first.
    pub fn log_tail(&self) -> Vec<String> {
        let state = self
            .log
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.tail.iter().cloned().collect()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        self.log = Arc::new(Log::default());
        let mut child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr was piped");
        self.child = Some(child);
        let log = Arc::clone(&self.log);
        std::thread::Builder::new()
            .name("nats-server-log".into())
            .spawn(move || drain(stderr, &log))?;
        self.wait_ready()
    }

    /// Waits until the server logs that it is ready, and its port accepts a
    /// connection; kills it and fails if that takes longer than the deadline or
    /// it exits first.
    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut state = self
            .log
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !state.ready && !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .log
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let ready = state.ready;
        drop(state);
        if ready && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            return Ok(());
        }
        self.kill();
        Err(std::io::Error::other(format!(
            "nats-server on port {} did not become ready; its last lines:\n{}",
            self.port,
            self.log_tail().join("\n")
        )))
    }
}

/// Several `nats-server`s with JetStream, routed into one NATS cluster on
/// loopback, each with its own port and store. Each is a [`NatsServer`]: kill
/// and start one with [`NatsCluster::server`].
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers (at least 3 for a JetStream cluster that survives
    /// the loss of one) and waits until each accepts clients. JetStream may
    /// still be electing its leader: clients should retry their first calls.
    pub fn start(n: usize) -> std::io::Result<NatsCluster> {
        let ports = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<Vec<(u16, u16)>>>()?;
        let routes = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = ports
            .iter()
            .enumerate()
            .map(|(i, (port, route))| {
                NatsServer::new(
                    *port,
                    vec![
                        "--server_name".into(),
                        format!("crew-{i}"),
                        "--cluster_name".into(),
                        "crew".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{route}"),
                        "--routes".into(),
                        routes.clone(),
                    ],
                )
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        // Each waits for its "ready" line, which a member logs once it listens,
        // before its routes are up: so they can start one after the other.
        for server in &mut servers {
            server.spawn()?;
        }
        Ok(NatsCluster { servers })
    }

    /// Every server's URL, comma-separated, as [`Cluster::connect`](crate::Cluster::connect) takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`.
    pub fn server(&mut self, i: usize) -> &mut NatsServer {
        &mut self.servers[i]
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("store", &self.store.path())
            .finish()
    }
}

/// Reads the server's log until it closes, keeping the tail and noting when it
/// says it is ready. Draining matters: a full pipe would stall the server.
fn drain(stderr: std::process::ChildStderr, log: &Log) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let mut state = log.state.lock().unwrap_or_else(PoisonError::into_inner);
        if line.contains(READY_LINE) {
            state.ready = true;
            log.ready.notify_all();
        }
        if state.tail.len() == LOG_TAIL {
            state.tail.pop_front();
        }
        state.tail.push_back(line);
    }
    let mut state = log.state.lock().unwrap_or_else(PoisonError::into_inner);
    state.closed = true;
    log.ready.notify_all();
}

/// `nats-server` on `PATH`, else where Debian installs it.
fn find_binary() -> std::io::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"));
    on_path
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "nats-server not found on PATH nor in /usr/sbin: install it with \
                 `apt-get install nats-server` (the cluster tests start their own)",
            )
        })
}

/// A port free on loopback now. Another program could take it before the server
/// binds it; the start then fails with the server's own message, never silently.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
