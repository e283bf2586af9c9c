//! The dashboard in a real browser: headless Chromium opens the page served by
//! the library over a pool in this process, and the test reads the live DOM
//! through the DevTools protocol (a websocket, `tungstenite`).
//!
//! The load injects a known number of errors, panics and timeouts on top of a
//! steady stream of successes; the page must show exactly those counts, one
//! row per worker, and a non-zero throughput, and its tick counter must move.
//! A screenshot is saved to `target/tmp/crew-observe/dashboard.png`.
//!
//! Chromium must be installed (Debian: `apt-get install -y chromium`; `.ci/run`
//! does it). If it cannot start, the test fails saying so: it never skips.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{get, wait_for, Faulty, Op};
use crew::Pool;
use serde_json::{json, Value};

const WORKERS: usize = 3;
const ERRORS: u64 = 7;
const PANICS: u64 = 3;
const TIMEOUTS: u64 = 2;

/// Headless Chromium with a fresh profile. Drop stops it by its pid — SIGTERM
/// first, so it shuts its helper processes down and reaps them, SIGKILL if it
/// has not exited within 5 s — waits for it, then removes the profile.
struct Chromium {
    child: Child,
    profile: PathBuf,
    /// The DevTools HTTP endpoint, `127.0.0.1:PORT`.
    devtools: String,
}

impl Chromium {
    fn launch(url: &str) -> Chromium {
        let profile = scratch_dir().join(format!("chromium-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the browser profile dir");
        let spawned = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,1400",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => panic!(
                "could not start Chromium ({e}). The browser test needs it: \
                 install it with `apt-get install -y chromium` (Debian), or set \
                 CREW_CHROMIUM to a Chromium or Chrome binary"
            ),
        };
        // Chromium prints its DevTools address on stderr; keep draining stderr
        // afterwards so a full pipe never blocks it.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(ws) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(Ok(ws.trim().to_owned()));
                }
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
            let _ = tx.send(Err(tail.join("\n")));
        });
        let mut browser = Chromium {
            child,
            profile,
            devtools: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(ws)) => {
                // ws://127.0.0.1:PORT/devtools/browser/ID
                let host = ws
                    .trim_start_matches("ws://")
                    .split('/')
                    .next()
                    .unwrap_or_default();
                browser.devtools = host.to_owned();
            }
            Ok(Err(stderr)) => panic!(
                "Chromium exited before opening DevTools (is it installed and runnable? \
                 `apt-get install -y chromium`). Its stderr:\n{stderr}"
            ),
            Err(_) => panic!("Chromium did not open DevTools within 60 s"),
        }
        browser
    }

    /// The DevTools websocket of the page showing `url`.
    fn page(&self, url: &str) -> Cdp {
        let ws = wait_for("the dashboard page target", Duration::from_secs(30), || {
            let (_, body) = get(&format!("http://{}/json/list", self.devtools))?;
            let targets: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            targets
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                })
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                .ok_or(body)
        });
        Cdp::connect(&ws)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn chromium_binary() -> String {
    std::env::var("CREW_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crew-observe");
    std::fs::create_dir_all(&dir).expect("create target/tmp/crew-observe");
    dir
}

/// A DevTools protocol session with one page: commands by id, events ignored.
struct Cdp {
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    fn connect(ws_url: &str) -> Cdp {
        let host = ws_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default();
        let stream = TcpStream::connect(host).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set a read timeout");
        let (socket, _) =
            tungstenite::client(ws_url, stream).expect("DevTools websocket handshake");
        Cdp { socket, next_id: 0 }
    }

    /// Sends `method` and returns its `result`, skipping the events that
    /// arrive meanwhile. The socket's read timeout bounds each read.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("send {method}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "no answer to {method} within 30 s"
            );
            let frame = self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("read the answer to {method}: {e}"));
            let tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
            if answer["id"] == id {
                if let Some(err) = answer.get("error") {
                    panic!("{method} failed: {err}");
                }
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value as JSON.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        if let Some(e) = result.get("exceptionDetails") {
            panic!("the page threw evaluating {expression}: {e}");
        }
        result["result"]["value"].clone()
    }
}

/// Stops the background load when dropped (also when the test fails).
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// A success every 10 ms until dropped.
    fn start(pool: &Pool<Faulty>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (pool, flag) = (pool.clone(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if pool.stats().queued < 20 {
                    drop(pool.submit(Op::Ok(5)));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const READ_PAGE: &str = r#"(() => {
  const pool = document.querySelector('section.pool[data-pool="under-test"]');
  if (!pool) return null;
  const v = sel => { const n = pool.querySelector(sel); return n && n.dataset.value !== undefined ? Number(n.dataset.value) : null; };
  return {
    ticks: Number(document.body.dataset.ticks),
    status: document.getElementById('status').textContent,
    workerRows: pool.querySelectorAll('tr[data-worker]').length,
    workerStates: Array.from(pool.querySelectorAll('tr[data-worker] td:nth-child(2)')).map(td => td.dataset.value),
    throughput: v('[data-field="throughput"]'),
    failures: v('[data-field="failures"]'),
    failed: v('[data-kind="failed"]'),
    panicked: v('[data-kind="panicked"]'),
    timedOut: v('[data-kind="timed_out"]'),
    crashed: v('[data-kind="crashed"]'),
    restarted: v('[data-life="restarted"]'),
    charts: pool.querySelectorAll('.chart svg path').length,
  };
})()"#;

#[test]
fn dashboard_page_shows_live_figures_in_chromium() {
    let pool = Pool::<Faulty>::builder()
        .workers(WORKERS)
        .build()
        .expect("build the pool");
    let server = crew_observe::Dashboard::new()
        .tick(Duration::from_millis(250))
        .pool("under-test", &pool)
        .serve("127.0.0.1:0")
        .expect("serve the dashboard");
    let url = server.url();
    let load = Load::start(&pool);

    let browser = Chromium::launch(&url);
    let mut page = browser.page(&url);

    // The page is live: worker rows, a moving tick count, work per second.
    let first = wait_for(
        "worker rows and throughput",
        Duration::from_secs(30),
        || {
            let s = page.eval(READ_PAGE);
            if s["workerRows"] == WORKERS && s["throughput"].as_f64().is_some_and(|t| t > 0.0) {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    );
    assert_eq!(first["status"], "live", "{first}");
    assert_eq!(first["failures"], 0, "only successes so far: {first}");
    assert!(
        first["workerStates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| ["idle", "busy", "starting"].contains(&s.as_str().unwrap_or(""))),
        "{first}"
    );

    // Inject failures of three kinds, and wait until every one has resolved.
    let mut injected = Vec::new();
    for _ in 0..ERRORS {
        injected.push(pool.submit(Op::Err).expect("submit"));
    }
    for _ in 0..PANICS {
        injected.push(pool.submit(Op::Panic).expect("submit"));
    }
    for _ in 0..TIMEOUTS {
        let task = pool.task(Op::Hang(600)).timeout(Duration::from_millis(150));
        injected.push(task.submit().expect("submit"));
    }
    let (mut user, mut panicked, mut timed_out) = (0, 0, 0);
    for task in injected {
        match task.join() {
            Err(e) if e.is_user() => user += 1,
            Err(e) if e.is_panic() => panicked += 1,
            Err(e) if e.is_timeout() => timed_out += 1,
            other => panic!("an injected failure resolved as {other:?}"),
        }
    }
    assert_eq!((user, panicked, timed_out), (ERRORS, PANICS, TIMEOUTS));

    // The page shows exactly what was injected, by kind, without a reload.
    let seen = wait_for(
        "the injected failures on the page",
        Duration::from_secs(30),
        || {
            let s = page.eval(READ_PAGE);
            let ok = s["failed"] == ERRORS
                && s["panicked"] == PANICS
                && s["timedOut"] == TIMEOUTS
                && s["failures"] == ERRORS + PANICS + TIMEOUTS
                && s["ticks"].as_u64() > first["ticks"].as_u64();
            if ok {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    );
    assert_eq!(seen["crashed"], 0, "{seen}");
    assert_eq!(seen["workerRows"], WORKERS, "{seen}");
    assert!(
        seen["charts"].as_u64().unwrap_or(0) >= 2,
        "charts drawn: {seen}"
    );
    // The lifecycle figures are the dashboard's own event counts; the page
    // shows the same number the JSON endpoint reports.
    let (_, api) = get(&format!("{url}api/stats")).expect("GET /api/stats");
    let api: Value = serde_json::from_str(&api).expect("JSON");
    let restarted = &api["pools"][0]["lifecycle"]["restarted"];
    assert!(restarted.as_u64().is_some(), "{api}");
    wait_for(
        "the restart count on the page",
        Duration::from_secs(10),
        || {
            let s = page.eval(READ_PAGE);
            if s["restarted"].as_u64() >= restarted.as_u64() {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    );

    // A picture of it, for people.
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64 PNG");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = scratch_dir().join("dashboard.png");
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());

    drop(page);
    drop(browser);
    drop(load);
    drop(server);
    pool.shutdown();
}
