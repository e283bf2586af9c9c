//! Bad bytes on the real transport, both ways, with arbitrary and mutated byte
//! streams (proptest):
//!
//! - a worker process that writes them into its channel fails its task with a
//!   protocol error (or, when they decode to nothing at all before it exits, a
//!   crash), is replaced, and the pool goes on: never a hang or a panic;
//! - a worker process that receives them from "its pool" (a socket this test
//!   holds) exits with crew's channel-error status, never by a panic or a signal,
//!   and never hangs.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use common::{join, wait_until, worker_processes, LIMIT, WORKER_ENTRY};
use crew::wire::{FrameEncoder, Hello, Role, ToWorker, DEFAULT_FRAME_LIMIT};
use crew::{Context, StartError, Worker};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    Echo(u64),
    /// Writes these bytes into the channel, then exits with status 0.
    Scribble(#[serde(with = "serde_bytes")] Vec<u8>),
}

struct Scribbler;

impl Worker for Scribbler {
    type Input = Job;
    type Output = u64;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Scribbler)
    }

    fn run(&mut self, job: Job, _ctx: &mut Context<'_>) -> Result<u64, String> {
        match job {
            Job::Echo(n) => Ok(n),
            Job::Scribble(bytes) => {
                use std::os::fd::FromRawFd;
                use std::os::unix::fs::FileTypeExt;
                for fd in 3..64 {
                    let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
                        continue;
                    };
                    if meta.file_type().is_socket() {
                        // SAFETY: the descriptor is open (its /proc entry exists)
                        // and is never closed here (ManuallyDrop).
                        let mut channel =
                            std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
                        let _ = channel.write_all(&bytes);
                    }
                }
                std::process::exit(0)
            }
        }
    }
}

#[test]
fn crew_worker_entry() {
    crew::Bootstrap::new().worker::<Scribbler>().run();
}

/// Bytes that look like frames some of the time: arbitrary, or a valid
/// parent-bound frame with a few bytes flipped, cut short, or followed by junk.
fn nasty() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        Just(vec![0x01u8, 0x00, 0x00, 0x00, 0x20]), // ready (a second one)
        Just(vec![0x09, 0x00, 0x00, 0x00, 0x22, 7, 0, 0, 0, 0, 0, 0, 0]), // started 7
        Just(vec![0xff, 0xff, 0xff, 0x7f, 0x23]),   // a huge length
        Just(b"Hello, this is not a frame".to_vec()),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            valid,
            proptest::collection::vec(any::<(usize, u8)>(), 0..3),
            0usize..16
        )
            .prop_map(|(mut bytes, flips, cut)| {
                for (at, value) in flips {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
                let keep = bytes.len().saturating_sub(cut % 4);
                bytes.truncate(keep);
                bytes
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_worker_writing_bad_bytes_fails_alone_and_is_replaced(bytes in nasty()) {
        let pool = worker_processes::<Scribbler>(1)
            .build()
            .unwrap();
        let err = join(pool.submit(Job::Scribble(bytes.clone())).unwrap()).unwrap_err();
        prop_assert!(err.is_protocol() || err.is_crash(), "{bytes:?}: {err}");
        prop_assert_eq!(join(pool.submit(Job::Echo(11)).unwrap()).unwrap(), 11);
        let stats = pool.stats();
        prop_assert_eq!(stats.completed, 1);
        prop_assert_eq!(stats.crashed, 1);
        pool.shutdown();
    }

    #[test]
    fn a_worker_receiving_bad_bytes_exits_cleanly(junk in nasty(), after_hello in any::<bool>()) {
        use std::os::unix::process::ExitStatusExt;
        let status = worker_fed(&junk, after_hello);
        // 98: crew's exit status for a broken channel; 0 if the bytes happened
        // to end the conversation cleanly; SIGKILL when the channel simply ends
        // (the worker kills its own group: its pool is gone). Never a panic
        // (101), another signal, or a hang.
        prop_assert!(
            matches!(status.code(), Some(98) | Some(0)) || status.signal() == Some(9),
            "{junk:?} (after hello: {after_hello}): {status:?}"
        );
    }
}

/// Starts this test binary as a worker on a socket this test holds, sends it
/// `junk` (after a proper hello if asked), closes the socket, and returns how
/// the worker exited.
fn worker_fed(junk: &[u8], after_hello: bool) -> std::process::ExitStatus {
    use std::os::unix::process::CommandExt;
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(WORKER_ENTRY)
        .env("CREW_WORKER_FD", fd.to_string())
        .env("CREW_WORKER_TYPE", std::any::type_name::<Scribbler>())
        .env("CREW_WORKER_ID", "1")
        .env("CREW_PARENT_PID", std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own process group: a worker that loses its channel kills its group.
    command.process_group(0);
    // SAFETY: runs between fork and exec and only calls fcntl(2), which is
    // async-signal-safe; `fd` is open in the parent until after spawn.
    unsafe {
        command.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    drop(theirs);
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut reap = Reap(child);
    if after_hello {
        let mut enc = FrameEncoder::new(DEFAULT_FRAME_LIMIT);
        enc.push(&Hello::new(Role::Parent, DEFAULT_FRAME_LIMIT))
            .unwrap();
        // A task first, so the worker is past its start when the junk comes.
        enc.push(&ToWorker::Task {
            id: 1,
            key: None,
            payload: Vec::new(),
        })
        .unwrap();
        let _ = ours.write_all(enc.as_bytes());
    }
    let _ = ours.write_all(junk);
    let _ = ours.shutdown(std::net::Shutdown::Write);
    // Drain what the worker says until it closes its end.
    let mut sink = Vec::new();
    ours.set_read_timeout(Some(LIMIT)).unwrap();
    let _ = ours.read_to_end(&mut sink);
    let mut status = None;
    wait_until("the worker exits", || {
        status = reap.0.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}
