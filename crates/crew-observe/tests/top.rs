//! `crew-top` driven in a pseudo-terminal (`portable-pty`), its screen read
//! back through a terminal emulator (`vt100`): the header and the worker rows
//! appear, `b` reorders the rows by busy time, `i` back by id, `Ctrl-L`
//! repaints, and `q` exits.
//!
//! The pool runs in this process behind the library's dashboard; `crew-top`
//! reads its `/api/stats` like any client.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use common::wait_for;
use crew::{Context, Pool, StartError, Worker};
use portable_pty::{native_pty_system, Child, CommandBuilder, PtySize};

/// Sleeps 15 ms if it runs on the worker numbered by its input, returns at
/// once elsewhere; answers whether it slept.
struct SlowOn;

impl Worker for SlowOn {
    type Input = u64;
    type Output = bool;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(SlowOn)
    }

    fn run(&mut self, target: u64, ctx: &mut Context<'_>) -> Result<bool, String> {
        let slow = ctx.worker_id().as_u64() == target;
        if slow {
            std::thread::sleep(Duration::from_millis(15));
        }
        Ok(slow)
    }
}

/// The `crew-top` process. Drop kills it (by its pid) and waits for it.
struct TopProcess {
    child: Box<dyn Child + Send + Sync>,
}

impl Drop for TopProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

const ROWS: u16 = 30;
const COLS: u16 = 120;

/// The worker ids on screen, top to bottom.
fn worker_rows(screen: &str) -> Vec<u64> {
    screen
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("worker-"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn top_shows_workers_sorts_on_keys_and_quits_on_q() {
    let pool = Pool::<SlowOn>::builder().workers(3).build().expect("build");
    // Make the highest-numbered worker clearly the busiest, so sorting by
    // busy time moves it from the bottom row to the top: only it sleeps.
    let busiest = pool
        .workers()
        .iter()
        .map(|w| w.as_u64())
        .max()
        .expect("workers");
    let mut slept = 0;
    wait_for(
        "the chosen worker to run a few tasks",
        Duration::from_secs(30),
        || {
            let batch: Vec<_> = (0..6)
                .map(|_| pool.submit(busiest).expect("submit"))
                .collect();
            slept += batch
                .into_iter()
                .map(|t| t.join())
                .filter(|r| r == &Ok(true))
                .count();
            if slept >= 3 {
                Ok(())
            } else {
                Err(format!("{slept} so far"))
            }
        },
    );

    let server = crew_observe::Dashboard::new()
        .pool("ptytest", &pool)
        .serve("127.0.0.1:0")
        .expect("serve");

    let pty = native_pty_system()
        .openpty(PtySize {
            rows: ROWS,
            cols: COLS,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("open a pseudo-terminal");
    let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_crew-top"));
    cmd.args([
        "--url",
        &format!("http://{}", server.addr()),
        "--refresh-ms",
        "200",
    ]);
    cmd.env("TERM", "xterm-256color");
    let child = pty.slave.spawn_command(cmd).expect("start crew-top");
    let mut top = TopProcess { child };
    drop(pty.slave);

    // Everything crew-top draws goes through a terminal emulator.
    let mut reader = pty.master.try_clone_reader().expect("pty reader");
    let mut keys = pty.master.take_writer().expect("pty writer");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut term = vt100::Parser::new(ROWS, COLS, 0);
    let screen = |term: &mut vt100::Parser| {
        while let Ok(bytes) = rx.try_recv() {
            term.process(&bytes);
        }
        term.screen().contents()
    };

    let by_id: Vec<u64> = {
        let mut ids: Vec<u64> = pool.workers().iter().map(|w| w.as_u64()).collect();
        ids.sort_unstable();
        ids
    };
    wait_for(
        "the header and one row per worker",
        Duration::from_secs(30),
        || {
            let s = screen(&mut term);
            let ok = s.contains("crew top")
                && s.contains("pool ptytest")
                && s.contains("sorted by id")
                && s.contains("run p50")
                && s.contains("queued 0")
                && worker_rows(&s) == by_id;
            if ok {
                Ok(())
            } else {
                Err(s)
            }
        },
    );

    keys.write_all(b"b").expect("type b");
    keys.flush().expect("flush");
    wait_for("rows sorted by busy time", Duration::from_secs(10), || {
        let s = screen(&mut term);
        let rows = worker_rows(&s);
        if s.contains("sorted by busy") && rows.first() == Some(&busiest) && rows.len() == 3 {
            Ok(())
        } else {
            Err(s)
        }
    });

    keys.write_all(b"i").expect("type i");
    keys.flush().expect("flush");
    wait_for("rows sorted by id again", Duration::from_secs(10), || {
        let s = screen(&mut term);
        if s.contains("sorted by id") && worker_rows(&s) == by_id {
            Ok(())
        } else {
            Err(s)
        }
    });

    // Ctrl-L repaints from a cleared screen: everything comes back.
    keys.write_all(b"\x0c").expect("type Ctrl-L");
    keys.flush().expect("flush");
    wait_for("the view after a repaint", Duration::from_secs(10), || {
        let s = screen(&mut term);
        if s.contains("crew top") && s.contains("sorted by id") && worker_rows(&s) == by_id {
            Ok(())
        } else {
            Err(s)
        }
    });

    keys.write_all(b"q").expect("type q");
    keys.flush().expect("flush");
    let status = wait_for(
        "crew-top to exit on q",
        Duration::from_secs(10),
        || match top.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_owned()),
            Err(e) => Err(e.to_string()),
        },
    );
    assert!(status.success(), "crew-top exited with {status:?}");

    drop(top);
    drop(server);
    pool.shutdown();
}
