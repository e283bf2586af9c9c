//! One worker process, from the pool's side: how it is started, how frames are
//! written to it, how its output is captured, and how it is killed and reaped.
//!
//! # Starting
//!
//! The pool makes a socket pair and starts the worker program with its end of the
//! pair at the same descriptor number (the descriptor is made inheritable in the
//! child only, between `fork` and `exec`, so a worker started concurrently by
//! another thread never inherits another worker's channel). In that same window:
//!
//! - `setpgid(0, 0)`: the worker leads its own process group, so a kill reaches
//!   everything it started;
//! - `PR_SET_PDEATHSIG(SIGTERM)`: if the thread that started it dies (the pool's
//!   process is killed), the kernel sends SIGTERM, and the worker stops as it
//!   does when killed (`worker_stop.rs`): `Worker::stop` if its task returns
//!   within `kill_grace`, then it kills its group. That thread is the worker's
//!   link thread, which lives until the worker is reaped.
//!
//! stdin is `/dev/null`; stdout and stderr are pipes read line by line by one
//! capture thread each.
//!
//! # Writing without blocking the caller
//!
//! Frames go to an [`FrameWriter`]. Whoever adds frames also tries to write them, with
//! a non-blocking `send`, under the writer lock, so frames leave in the order they
//! were added and a burst of them leaves in one call. If the socket is full (the
//! worker is busy and large payloads are in flight), the rest stays in the writer
//! and the writer thread, woken once, waits for the socket to drain. So
//! `submit` never blocks on a worker's socket, and frames still leave promptly.
//!
//! # Killing and reaping
//!
//! Kills go to the process group: SIGTERM first, which the worker answers by
//! running `Worker::stop` once its task returns and killing its group itself
//! (`worker_stop.rs`), then SIGKILL after the grace period (the monitor's job)
//! for a worker whose task did not return. The link thread reaps: it waits for the exit
//! without reaping (`waitid` with `WNOWAIT`), kills the group with SIGKILL (the
//! worker's own children), and only then reaps, under the `reaped` lock. A signal
//! is only ever sent under that lock, with `reaped` false, so it can never reach a
//! process that reused the worker's pid.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{send, MsgFlags};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use super::worker_main::{ENV_ARENA_FD, ENV_FD, ENV_GRACE, ENV_ID, ENV_PARENT, ENV_TYPE};
use crate::error::Crash;
use crate::sync::lock;
use crate::wire::FrameEncoder;
use crate::worker::WorkerId;

/// Lines of stderr kept for a crash report.
pub(crate) const STDERR_TAIL: usize = 20;

/// Bytes of stderr kept for a crash report, over all its lines.
pub(crate) const STDERR_TAIL_BYTES: usize = 16 << 10;

/// The longest line kept in a crash report's stderr tail (longer ones are cut
/// and say so).
const TAIL_LINE: usize = 4 << 10;

/// The longest line of a worker's output handed to `on_output` (or printed);
/// the rest of a longer line is dropped as it is read, and the line says how
/// much was cut.
pub(crate) const MAX_LINE: usize = 64 << 10;

/// Which of a worker's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// The worker's stdout.
    Stdout,
    /// The worker's stderr.
    Stderr,
}

/// Receives each line a worker process prints: its id, the stream, the line
/// (without its newline). See [`PoolBuilder::on_output`](crate::PoolBuilder::on_output).
pub type OutputHandler = Arc<dyn Fn(WorkerId, OutputStream, &str) + Send + Sync>;

/// How to start worker processes.
#[derive(Clone)]
pub(crate) struct Launcher {
    /// The worker program; `None`: the current executable (`bootstrap`).
    pub(crate) program: Option<PathBuf>,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// `W`'s type name, in the worker's environment: which worker type the
    /// process serves (a `Bootstrap` may serve several).
    pub(crate) type_name: &'static str,
    /// Where the worker's output lines go (default: this process's stderr).
    pub(crate) output: Option<OutputHandler>,
    /// The payload arena every worker inherits (`None`: inputs go inline).
    pub(crate) arena: Option<Arc<super::arena::Arena>>,
    /// The frame limit of every worker's channel, both ways
    /// (`ProcessConfig::frame_limit`): crew's worker adopts the pool's.
    pub(crate) frame_limit: u32,
    /// `kill_grace`, in the worker's environment: how long it gives itself to
    /// stop once told to, when no pool is left to SIGKILL it
    /// (`worker_stop.rs`).
    pub(crate) kill_grace: Duration,
}

/// A started worker process.
/// Read-only after spawn except where a field says: shared by the link
/// thread (reads, reaps), dispatchers (the writer) and killers (`child`).
pub(crate) struct WorkerProcess {
    /// Its pid, which is also its process group's id.
    pub(crate) pid: i32,
    /// The pool's end of the socket pair; read by the link thread only.
    pub(crate) stream: UnixStream,
    /// Frames to it: appended by dispatchers under the pool's lock, written
    /// after it (and by its writer thread).
    pub(crate) writer: FrameWriter,
    /// The child handle, and whether it has been reaped; signals are sent only
    /// under this lock while it is `false`.
    child: Mutex<(Child, bool)>,
    /// Its last stderr lines (at most `STDERR_TAIL`), for `Crash`; written by
    /// the stderr capture thread, read when it is reaped.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// The output capture threads, joined after the reap.
    capture: Mutex<Vec<JoinHandle<()>>>,
    /// How many capture threads have finished (and a condvar to wait for it).
    captured: Arc<(Mutex<usize>, Condvar)>,
}

impl WorkerProcess {
    /// Starts the worker program for worker `id`.
    pub(crate) fn spawn(launcher: &Launcher, id: WorkerId) -> io::Result<Arc<WorkerProcess>> {
        let (ours, theirs) = UnixStream::pair()?;
        let program = launcher
            .program
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        let mut command = Command::new(program);
        let their_fd = theirs.as_raw_fd();
        let arena_fd = launcher.arena.as_ref().map(|a| a.file().as_raw_fd());
        if let Some(fd) = arena_fd {
            command.env(ENV_ARENA_FD, fd.to_string());
        }
        command
            .args(&launcher.args)
            .env(ENV_FD, their_fd.to_string())
            .env(ENV_TYPE, launcher.type_name)
            .env(ENV_ID, id.as_u64().to_string())
            .env(ENV_PARENT, std::process::id().to_string())
            .env(ENV_GRACE, launcher.kill_grace.as_micros().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec, and only
        // makes raw system calls (fcntl, prctl), which are async-signal-safe; it
        // allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                // SAFETY: `theirs` is open in the parent until after spawn, so
                // the descriptor is valid in this forked child.
                let fd = std::os::fd::BorrowedFd::borrow_raw(their_fd);
                let flags = fcntl(fd, FcntlArg::F_GETFD).map_err(io::Error::from)?;
                let mut flags = FdFlag::from_bits_truncate(flags);
                flags.remove(FdFlag::FD_CLOEXEC);
                fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(io::Error::from)?;
                if let Some(arena) = arena_fd {
                    // SAFETY: the arena (its memory file) lives in the parent
                    // for the pool's life, so the descriptor is valid here.
                    let arena = std::os::fd::BorrowedFd::borrow_raw(arena);
                    fcntl(arena, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        drop(theirs);
        let pid = child.id() as i32;

        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let captured = Arc::new((Mutex::new(0usize), Condvar::new()));
        let mut capture = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            capture.push(spawn_capture(
                out,
                id,
                OutputStream::Stdout,
                launcher.output.clone(),
                None,
                Arc::clone(&captured),
            )?);
        }
        if let Some(err) = child.stderr.take() {
            capture.push(spawn_capture(
                err,
                id,
                OutputStream::Stderr,
                launcher.output.clone(),
                Some(Arc::clone(&stderr_tail)),
                Arc::clone(&captured),
            )?);
        }
        let writer = FrameWriter::new(ours.try_clone()?, launcher.frame_limit);
        Ok(Arc::new(WorkerProcess {
            pid,
            stream: ours,
            writer,
            child: Mutex::new((child, false)),
            stderr_tail,
            capture: Mutex::new(capture),
            captured,
        }))
    }

    /// Sends `signal` to the worker's process group, unless it was reaped.
    pub(crate) fn signal_group(&self, signal: Signal) {
        let guard = lock(&self.child);
        if !guard.1 {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }

    /// The worker's resident memory in bytes, from `/proc`.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        // RssAnon + RssFile: the process's own memory. RssShmem is left out: it
        // holds the pages of the payload arena the worker has read, which are
        // the pool's memory, shared, and counted once there.
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let kib = |field: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line[field.len()..].split_whitespace().next()?.parse().ok()
        };
        Some((kib("RssAnon:")? + kib("RssFile:")?) * 1024)
    }

    /// Waits for the process to exit, kills what is left of its group, reaps it,
    /// and reports how it ended with the last lines of its stderr.
    pub(crate) fn reap(&self) -> Crash {
        // Wait for the exit but leave the zombie, so the pid (and the group id)
        // stays ours while the group is killed.
        while let Err(Errno::EINTR) = waitid(
            Id::Pid(Pid::from_raw(self.pid)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {}
        let status = {
            let mut guard = lock(&self.child);
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let status = guard.0.wait().ok();
            guard.1 = true;
            status
        };
        self.writer.close();
        // The capture threads reach the end of the pipes once every process that
        // held them is gone; give them a moment to hand over the last lines.
        {
            let (count, cv) = &*self.captured;
            let deadline = Instant::now() + Duration::from_millis(500);
            let mut done = lock(count);
            while *done < 2 {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                done = cv
                    .wait_timeout(done, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        let finished: Vec<JoinHandle<()>> = {
            let mut capture = lock(&self.capture);
            let (count, _) = &*self.captured;
            if *lock(count) >= 2 {
                std::mem::take(&mut *capture)
            } else {
                Vec::new() // a grandchild holds a pipe open: leave them detached
            }
        };
        for handle in finished {
            let _ = handle.join();
        }
        Crash {
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            stderr: lock(&self.stderr_tail).iter().cloned().collect(),
        }
    }
}

fn spawn_capture<R: io::Read + Send + 'static>(
    pipe: R,
    id: WorkerId,
    stream: OutputStream,
    handler: Option<OutputHandler>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
    captured: Arc<(Mutex<usize>, Condvar)>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("crew-{id}-out"))
        .spawn(move || {
            let mut lines = LineSplitter::new(MAX_LINE);
            let mut deliver = |line: &str| {
                if let Some(tail) = &tail {
                    push_tail(&mut lock(tail), line);
                }
                match &handler {
                    Some(h) => h(id, stream, line),
                    None => eprintln!("[{id}] {line}"),
                }
            };
            let mut reader = BufReader::with_capacity(64 << 10, pipe);
            loop {
                let used = match reader.fill_buf() {
                    Ok([]) => break,
                    Ok(bytes) => {
                        lines.feed(bytes, &mut deliver);
                        bytes.len()
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                reader.consume(used);
            }
            lines.finish(&mut deliver);
            let (count, cv) = &*captured;
            *lock(count) += 1;
            cv.notify_all();
        })
}

/// Cuts a worker's output into lines, with bounded memory whatever it prints
/// (DESIGN.md, invariant 7).
///
/// - A line ends at `\n`, at `\r\n`, or at a lone `\r`: a progress bar that
///   redraws itself with `\r` gives one line per redraw instead of one line
///   that never ends.
/// - A line longer than the cap keeps its first `cap` bytes, and says how many
///   more it had (`… [crew: N more bytes of this line were cut]`); the rest is
///   read and dropped as it comes, so 256 MB without a newline costs the pool
///   `cap` bytes, not 256 MB.
struct LineSplitter {
    cap: usize,
    /// The line so far (at most `cap` bytes).
    line: Vec<u8>,
    /// Bytes of the current line dropped past the cap.
    cut: u64,
    /// The last byte seen was a `\r` (so a `\n` right after it ends nothing).
    after_cr: bool,
}

impl LineSplitter {
    fn new(cap: usize) -> Self {
        LineSplitter {
            cap,
            line: Vec::new(),
            cut: 0,
            after_cr: false,
        }
    }

    fn feed(&mut self, mut bytes: &[u8], deliver: &mut impl FnMut(&str)) {
        while !bytes.is_empty() {
            if self.after_cr && bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
            self.after_cr = false;
            let end = bytes.iter().position(|b| *b == b'\n' || *b == b'\r');
            let (text, rest) = match end {
                Some(at) => (&bytes[..at], Some((bytes[at], &bytes[at + 1..]))),
                None => (bytes, None),
            };
            let room = self.cap - self.line.len();
            let keep = text.len().min(room);
            self.line.extend_from_slice(&text[..keep]);
            self.cut += (text.len() - keep) as u64;
            match rest {
                Some((ending, rest)) => {
                    self.emit(deliver);
                    self.after_cr = ending == b'\r';
                    bytes = rest;
                }
                None => bytes = &[],
            }
        }
    }

    /// Delivers what is left at the end of the stream.
    fn finish(&mut self, deliver: &mut impl FnMut(&str)) {
        if !self.line.is_empty() || self.cut > 0 {
            self.emit(deliver);
        }
    }

    fn emit(&mut self, deliver: &mut impl FnMut(&str)) {
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if self.cut > 0 {
            text.push_str(&cut_note(self.cut));
        }
        deliver(&text);
        self.line.clear();
        if self.line.capacity() > self.cap {
            self.line.shrink_to(self.cap);
        }
        self.cut = 0;
    }
}

fn cut_note(bytes: u64) -> String {
    format!(" … [crew: {bytes} more bytes of this line were cut]")
}

/// Keeps `line` in a crash report's stderr tail: at most [`STDERR_TAIL`]
/// lines and [`STDERR_TAIL_BYTES`] bytes, the oldest lines dropped first, one
/// line longer than [`TAIL_LINE`] cut (and saying so).
fn push_tail(tail: &mut VecDeque<String>, line: &str) {
    let line = if line.len() > TAIL_LINE {
        let mut at = TAIL_LINE;
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        format!("{}{}", &line[..at], cut_note((line.len() - at) as u64))
    } else {
        line.to_owned()
    };
    tail.push_back(line);
    while tail.len() > STDERR_TAIL
        || (tail.len() > 1 && tail.iter().map(String::len).sum::<usize>() > STDERR_TAIL_BYTES)
    {
        tail.pop_front();
    }
}

/// Frames on their way to one worker; see the module docs.
pub(crate) struct FrameWriter {
    /// The pending frames and the socket; appended to by dispatchers, drained
    /// by whoever writes (the dispatcher after unlocking, or the writer thread).
    state: Arc<(Mutex<WriterState>, Condvar)>,
    /// The writer thread, started with the writer (`None` if the OS refused
    /// it); it sleeps until a write the socket refused needs finishing.
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct WriterState {
    /// Frames encoded and not yet written.
    encoder: FrameEncoder,
    /// The pool's end of the socket (a clone of `WorkerProcess::stream`).
    stream: UnixStream,
    /// The writer thread was asked to finish a write the socket refused.
    writer_armed: bool,
    /// The worker is gone: frames are dropped.
    closed: bool,
}

impl FrameWriter {
    /// A writer whose frames keep to `frame_limit` until the worker's hello
    /// says what it accepts: crew's worker announces the pool's own limit, so
    /// frames appended before its hello arrives (sticky messages) are held to
    /// the limit it will enforce.
    fn new(stream: UnixStream, frame_limit: u32) -> FrameWriter {
        let state = Arc::new((
            Mutex::new(WriterState {
                encoder: FrameEncoder::new(frame_limit),
                stream,
                writer_armed: false,
                closed: false,
            }),
            Condvar::new(),
        ));
        let writer = {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name("crew-writer".into())
                .spawn(move || run_writer(&state))
                .ok()
        };
        FrameWriter {
            state,
            writer: Mutex::new(writer),
        }
    }

    /// Appends frames with `fill` and writes what the socket takes now. Returns
    /// what `fill` returned.
    pub(crate) fn send<T>(&self, fill: impl FnOnce(&mut FrameEncoder) -> T) -> T {
        let (state, cv) = &*self.state;
        let mut st = lock(state);
        let result = fill(&mut st.encoder);
        if !st.closed {
            pump(&mut st, cv);
        } else {
            st.encoder.clear();
        }
        result
    }

    /// Appends frames with `fill` without writing them; [`pump`](FrameWriter::pump)
    /// writes them (a dispatcher appends under the pool's lock and writes after).
    pub(crate) fn append<T>(&self, fill: impl FnOnce(&mut FrameEncoder) -> T) -> T {
        fill(&mut lock(&self.state.0).encoder)
    }

    /// Writes what the socket takes now of what was appended.
    pub(crate) fn pump(&self) {
        let (state, cv) = &*self.state;
        let mut st = lock(state);
        if st.closed {
            st.encoder.clear();
        } else {
            pump(&mut st, cv);
        }
    }

    /// Sets the largest frame the worker accepts (from its hello).
    pub(crate) fn set_frame_limit(&self, limit: u32) {
        lock(&self.state.0).encoder.set_frame_limit(limit);
    }

    /// The worker is gone: drop what is waiting, end the writer thread.
    pub(crate) fn close(&self) {
        let (state, cv) = &*self.state;
        {
            let mut st = lock(state);
            st.closed = true;
            st.encoder.clear();
        }
        cv.notify_all();
        if let Some(handle) = lock(&self.writer).take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// Writes from the front of the encoder until it is empty or the socket is full.
fn pump(st: &mut WriterState, cv: &Condvar) {
    while !st.encoder.is_empty() {
        let fd = st.stream.as_fd().as_raw_fd();
        match send(
            fd,
            st.encoder.as_bytes(),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => st.encoder.consume(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                if !st.writer_armed {
                    st.writer_armed = true;
                    cv.notify_all();
                }
                return;
            }
            Err(_) => {
                // The worker closed its end or died; its link thread sees that on
                // the read side and deals with it.
                st.closed = true;
                st.encoder.clear();
                return;
            }
        }
    }
}

fn run_writer(state: &(Mutex<WriterState>, Condvar)) {
    let (state, cv) = state;
    let mut st = lock(state);
    loop {
        while !st.writer_armed && !st.closed {
            st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.closed {
            return;
        }
        let fd = match st.stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        };
        drop(st);
        // Wait until the socket takes more, without holding the lock (others keep
        // appending). A bounded wait, so a close is noticed.
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLOUT,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8));
        st = lock(state);
        st.writer_armed = false;
        if !st.closed {
            pump(&mut st, cv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(cap: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut lines = LineSplitter::new(cap);
        for chunk in chunks {
            lines.feed(chunk, &mut |l| out.push(l.to_owned()));
        }
        lines.finish(&mut |l| out.push(l.to_owned()));
        out
    }

    #[test]
    fn lines_end_at_newline_crlf_and_lone_cr() {
        assert_eq!(
            split(100, &[b"a\nb\r", b"\nc\rd\r\re"]),
            ["a", "b", "c", "d", "", "e"]
        );
    }

    #[test]
    fn a_long_line_is_cut_and_says_so_and_the_buffer_stays_small() {
        let mut lines = LineSplitter::new(8);
        let mut out = Vec::new();
        for _ in 0..1000 {
            lines.feed(&[b'x'; 1000], &mut |l| out.push(l.to_owned()));
            assert!(lines.line.capacity() <= 64);
        }
        lines.feed(b"\nnext\n", &mut |l| out.push(l.to_owned()));
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with("xxxxxxxx …"), "{}", out[0]);
        assert!(out[0].contains("999992 more bytes"), "{}", out[0]);
        assert_eq!(out[1], "next");
    }

    #[test]
    fn the_tail_is_bounded_in_lines_and_bytes() {
        let mut tail = VecDeque::new();
        for _ in 0..100 {
            push_tail(&mut tail, &"y".repeat(MAX_LINE));
        }
        let bytes: usize = tail.iter().map(String::len).sum();
        assert!(bytes <= STDERR_TAIL_BYTES, "{bytes}");
        assert!(tail
            .iter()
            .all(|l| l.contains("more bytes of this line were cut")));
        for n in 0..100 {
            push_tail(&mut tail, &n.to_string());
        }
        assert_eq!(tail.len(), STDERR_TAIL);
        assert_eq!(tail.back().map(String::as_str), Some("99"));
    }
}
