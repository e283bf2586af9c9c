//! The crew tour: a pool of stateful workers doing real work, and every way a task
//! can end.
//!
//! ```text
//! cargo run --release --example tour
//! ```
//!
//! Each worker builds a CRC-32 lookup table and a reusable 64 KiB buffer once, in
//! `start`, and then checksums blocks of pseudo-random bytes. The tour runs a batch
//! of a few thousand such tasks with live progress, then shows a worker's own error,
//! a panic, a cancel, a priority task, two timeouts (one cooperative, one that
//! ignores it and gets its thread replaced), a killed worker and `wait_idle`, and
//! ends with the pool's stats. It checks what it shows and exits non-zero if
//! anything is off.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crew::{Context, Pool, Priority, StartError, Task, Worker, WorkerId};

const WORKERS: usize = 4;
const BATCH: u64 = 5_000;
const BLOCK_BYTES: usize = 64 * 1024;
const PROGRESS_EVERY: u64 = 500;
/// Normal-priority tasks queued ahead of the one high-priority task.
const QUEUED_AHEAD: usize = 40;

/// The order in which tasks start running, across all workers.
static START_ORDER: AtomicU64 = AtomicU64::new(0);
static STARTS: AtomicUsize = AtomicUsize::new(0);
static STOPS: AtomicUsize = AtomicUsize::new(0);

/// What one task asks a worker to do.
enum Job {
    /// Checksum the block generated from `seed`. Seed 0 is refused.
    Checksum { seed: u64 },
    /// Report the worker's id on `started`, then occupy the worker until
    /// `release` is closed.
    Hold {
        started: mpsc::Sender<WorkerId>,
        release: mpsc::Receiver<()>,
    },
    /// Take `time`; stop early if cancelled, unless `stubborn`.
    Slow { time: Duration, stubborn: bool },
    /// Panic with this message.
    Explode(&'static str),
}

/// The worker's own error: why it refused a task.
#[derive(Debug, PartialEq, Eq)]
struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// What a task returns.
#[derive(Debug)]
struct Done {
    crc: u32,
    worker: WorkerId,
    /// This task's place in `START_ORDER`.
    order: u64,
}

/// One worker's state: built once by `start`, used by every task it runs.
struct Checksummer {
    worker: WorkerId,
    table: [u32; 256],
    block: Vec<u8>,
    tasks: u64,
}

impl Worker for Checksummer {
    type Input = Job;
    type Output = Done;
    type Error = Refused;
    type Message = ();

    fn start(ctx: &mut Context<'_>) -> Result<Self, StartError> {
        STARTS.fetch_add(1, SeqCst);
        println!(
            "    {}: start (CRC table built, {} KiB buffer allocated)",
            ctx.worker_id(),
            BLOCK_BYTES / 1024
        );
        Ok(Checksummer {
            worker: ctx.worker_id(),
            table: crc_table(),
            block: vec![0; BLOCK_BYTES],
            tasks: 0,
        })
    }

    fn run(&mut self, job: Job, ctx: &mut Context<'_>) -> Result<Done, Refused> {
        let order = START_ORDER.fetch_add(1, SeqCst);
        self.tasks += 1;
        let crc = match job {
            Job::Checksum { seed: 0 } => return Err(Refused("seed 0 is reserved")),
            Job::Checksum { seed } => {
                fill(&mut self.block, seed);
                crc32(&self.table, &self.block)
            }
            Job::Hold { started, release } => {
                let _ = started.send(ctx.worker_id());
                let _ = release.recv(); // returns once the sender is dropped
                0
            }
            Job::Slow { time, stubborn } => {
                let end = Instant::now() + time;
                while Instant::now() < end && (stubborn || !ctx.is_cancelled()) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                0
            }
            Job::Explode(message) => panic!("{message}"),
        };
        Ok(Done {
            crc,
            worker: self.worker,
            order,
        })
    }

    fn stop(&mut self, _ctx: &mut Context<'_>) {
        STOPS.fetch_add(1, SeqCst);
        println!("    {}: stop after {} tasks", self.worker, self.tasks);
    }
}

fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    table
}

fn crc32(table: &[u32; 256], bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// Fills `block` with xorshift64* output seeded by `seed`.
fn fill(block: &mut [u8], seed: u64) {
    let mut x = seed;
    for chunk in block.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The checksum a worker should report for `seed`, computed here.
fn expected_crc(seed: u64) -> u32 {
    let mut block = vec![0; BLOCK_BYTES];
    fill(&mut block, seed);
    crc32(&crc_table(), &block)
}

type Error = Box<dyn std::error::Error>;

/// Fails the tour with a message unless `$cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

/// Waits for `cond` for at most `limit`; true if it came true.
fn wait_for(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

fn main() {
    if let Err(e) = tour() {
        eprintln!("tour: FAILED: {e}");
        std::process::exit(1);
    }
    println!("tour: all checks passed");
}

fn tour() -> Result<(), Error> {
    println!("crew tour: {WORKERS} workers, {BATCH} checksum tasks of {BLOCK_BYTES} bytes\n");
    let pool = Pool::<Checksummer>::builder()
        .workers(WORKERS)
        .thread_name("tour")
        // How long a timed-out task may take to notice before its thread is
        // given up on (default 100 ms; more here so a loaded machine keeps step 5
        // cooperative).
        .abandon_grace(Duration::from_millis(300))
        .build()?;

    batch(&pool)?;
    user_error(&pool)?;
    panic(&pool)?;
    cancel_and_priority(&pool)?;
    cooperative_timeout(&pool)?;
    stubborn_timeout(&pool)?;
    kill(&pool)?;
    idle(&pool)?;

    println!("\n9. final stats");
    let stats = pool.stats();
    println!("   {stats}");
    let outcomes = [
        ("failed", stats.failed, 1),
        ("panicked", stats.panicked, 1),
        ("cancelled", stats.cancelled, 1),
        ("timed out", stats.timed_out, 2),
        ("killed", stats.killed, 1),
        ("closed", stats.closed, 0),
        ("completed", stats.completed, stats.submitted - 6),
    ];
    for (what, got, want) in outcomes {
        ensure!(got == want, "stats: {what} {got}, expected {want}");
    }
    ensure!(
        stats.finished() == stats.submitted,
        "some task was not counted exactly once"
    );

    pool.shutdown();
    let (starts, stops) = (STARTS.load(SeqCst), STOPS.load(SeqCst));
    println!("   after shutdown: {starts} starts, {stops} stops");
    ensure!(starts == stops, "{starts} starts but {stops} stops");
    Ok(())
}

/// Step 1: The main job: a batch of CPU tasks, with progress printed as results come
/// back.
fn batch(pool: &Pool<Checksummer>) -> Result<(), Error> {
    println!("1. a batch of {BATCH} tasks");
    let began = Instant::now();
    let tasks = (1..=BATCH)
        .map(|seed| pool.submit(Job::Checksum { seed }))
        .collect::<Result<Vec<_>, _>>()?;
    for (seed, task) in (1..=BATCH).zip(tasks) {
        let id = task.id();
        let done = task.join()?;
        // Spot-check the workers' arithmetic against our own.
        if seed % 100 == 0 {
            ensure!(
                done.crc == expected_crc(seed),
                "wrong checksum for seed {seed}"
            );
        }
        if seed % PROGRESS_EVERY == 0 {
            println!(
                "   {seed:>5}/{BATCH}  {id} ran on {}: crc32 {:08x}  ({} ms)",
                done.worker,
                done.crc,
                began.elapsed().as_millis()
            );
        }
    }
    let per_worker: Vec<String> = pool
        .stats()
        .per_worker
        .iter()
        .map(|w| format!("{} {}", w.id, w.tasks_done))
        .collect();
    println!("   tasks per worker: {}", per_worker.join(", "));
    Ok(())
}

/// Step 2: The worker's own error reaches the caller as it was returned.
fn user_error(pool: &Pool<Checksummer>) -> Result<(), Error> {
    println!("\n2. a task the worker refuses (its own error type), awaited as a future");
    let task = pool.submit(Job::Checksum { seed: 0 })?;
    let err = futures::executor::block_on(task).unwrap_err();
    let source = std::error::Error::source(&err).map(ToString::to_string);
    println!("   -> {err}; source(): {}", source.unwrap_or_default());
    ensure!(err.is_user(), "expected the worker's error, got {err}");
    ensure!(
        err.user_error() == Some(&Refused("seed 0 is reserved")),
        "the worker's error came back changed"
    );
    Ok(())
}

/// Step 3: A panic is caught, its message handed to the caller, and the worker's state
/// rebuilt.
fn panic(pool: &Pool<Checksummer>) -> Result<(), Error> {
    println!("\n3. a task that panics (Rust's panic hook prints it; the pool catches it)");
    let before = pool.workers();
    let starts = STARTS.load(SeqCst);
    let err = pool
        .submit(Job::Explode("corrupt input block"))?
        .join()
        .unwrap_err();
    println!("   -> {err}");
    ensure!(
        err.panic_message() == Some("corrupt input block"),
        "expected the panic's message, got {err}"
    );
    // The same worker stops its instance and starts a fresh one.
    ensure!(
        wait_for(Duration::from_secs(10), || STARTS.load(SeqCst)
            == starts + 1),
        "the worker did not rebuild its state"
    );
    ensure!(pool.workers() == before, "a panic replaced the worker");
    Ok(())
}

/// Occupies every worker. They are released when the returned senders are dropped.
type Holds = (Vec<mpsc::Sender<()>>, Vec<Task<Done, Refused>>);

fn hold_all(pool: &Pool<Checksummer>) -> Result<Holds, Error> {
    let (started_tx, started_rx) = mpsc::channel();
    let mut releases = Vec::new();
    let mut holds = Vec::new();
    for _ in 0..WORKERS {
        let (release_tx, release_rx) = mpsc::channel();
        releases.push(release_tx);
        holds.push(pool.submit(Job::Hold {
            started: started_tx.clone(),
            release: release_rx,
        })?);
    }
    // Each hold blocks its worker, so once all have started, all workers are busy.
    for _ in 0..WORKERS {
        started_rx.recv_timeout(Duration::from_secs(10))?;
    }
    Ok((releases, holds))
}

/// Step 4: While every worker is busy: cancel a queued task, and jump the queue with a
/// high-priority one.
fn cancel_and_priority(pool: &Pool<Checksummer>) -> Result<(), Error> {
    println!("\n4. with every worker busy: cancel a queued task, queue a high-priority one");
    let (releases, holds) = hold_all(pool)?;

    let doomed = pool.submit(Job::Checksum { seed: 7 })?;
    // Slow enough (20 ms each) that the order below reflects the workers' picks,
    // not which thread the OS happened to run first.
    let normal = (0..QUEUED_AHEAD)
        .map(|_| {
            pool.submit(Job::Slow {
                time: Duration::from_millis(20),
                stubborn: true,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let urgent = pool
        .task(Job::Checksum { seed: 42 })
        .priority(Priority::High)
        .submit()?;
    println!("   queued behind the busy workers: {}", pool.stats().queued);

    let cancelled = doomed.cancel();
    ensure!(doomed.worker().is_none(), "the cancelled task ran");
    let err = doomed.join().unwrap_err();
    println!("   cancel() -> {cancelled}; its handle: {err}");
    ensure!(
        cancelled && err.is_cancelled(),
        "expected a cancel, got {err}"
    );

    drop(releases);
    for hold in holds {
        hold.join()?;
    }
    let urgent = urgent.join()?;
    let mut ahead = 0;
    for task in normal {
        if task.join()?.order < urgent.order {
            ahead += 1;
        }
    }
    println!(
        "   the high-priority task started after {ahead} of the {QUEUED_AHEAD} normal tasks queued before it"
    );
    // A worker looks at the high-priority queue first on all but its periodic
    // "aging" picks, which never come twice in a row; so normally at most one
    // normal task per worker starts first. The bound checked is looser than that.
    ensure!(
        ahead < QUEUED_AHEAD / 2,
        "the high-priority task waited behind {ahead} tasks"
    );
    Ok(())
}

/// Step 5: A timeout the task honours: it sees `is_cancelled` and returns; its worker
/// keeps its thread.
fn cooperative_timeout(pool: &Pool<Checksummer>) -> Result<(), Error> {
    println!("\n5. a 10 s task with a 200 ms timeout, which checks `is_cancelled`");
    let before = pool.workers();
    let began = Instant::now();
    let task = pool
        .task(Job::Slow {
            time: Duration::from_secs(10),
            stubborn: false,
        })
        .timeout(Duration::from_millis(200))
        .submit()?;
    let err = task.join().unwrap_err();
    println!("   -> {err} after {:.0?}", began.elapsed());
    ensure!(err.is_timeout(), "expected a timeout, got {err}");
    pool.wait_idle();
    ensure!(
        pool.workers() == before,
        "the cooperative task's thread was replaced"
    );
    Ok(())
}

/// Step 6: A timeout the task ignores: the caller gets the timeout at once; after
/// `abandon_grace` the pool gives up on the thread and starts a replacement.
fn stubborn_timeout(pool: &Pool<Checksummer>) -> Result<(), Error> {
    println!("\n6. a 1 s task with a 100 ms timeout, which ignores it");
    let before = pool.workers();
    let began = Instant::now();
    let task = pool
        .task(Job::Slow {
            time: Duration::from_secs(1),
            stubborn: true,
        })
        .timeout(Duration::from_millis(100))
        .submit()?;
    let err = task.join().unwrap_err();
    println!("   -> {err} after {:.0?}", began.elapsed());
    ensure!(err.is_timeout(), "expected a timeout, got {err}");
    ensure!(
        wait_for(Duration::from_secs(10), || {
            pool.workers() != before && pool.stats().workers == WORKERS
        }),
        "the stuck thread was not replaced"
    );
    let stats = pool.stats();
    println!(
        "   replaced: workers {:?} -> {:?}",
        ids(&before),
        ids(&pool.workers())
    );
    println!("   {stats}");
    ensure!(stats.workers == WORKERS, "the pool lost its size");
    // The abandoned thread leaves once its task returns (and runs `stop`).
    ensure!(
        wait_for(Duration::from_secs(10), || no_abandoned_threads(pool)),
        "the abandoned thread never left"
    );
    Ok(())
}

/// Step 7: `kill_worker` retires a worker mid-task and starts a replacement.
fn kill(pool: &Pool<Checksummer>) -> Result<(), Error> {
    println!("\n7. kill the worker running a long task");
    let task = pool.submit(Job::Slow {
        time: Duration::from_secs(10),
        stubborn: false,
    })?;
    ensure!(
        wait_for(Duration::from_secs(10), || task.worker().is_some()),
        "the task never started"
    );
    let Some(victim) = task.worker() else {
        return Err("the task has no worker".into());
    };
    let killed = pool.kill_worker(victim);
    let err = task.join().unwrap_err();
    println!("   kill_worker({victim}) -> {killed}; its task: {err}");
    ensure!(killed && err.is_killed(), "expected a kill, got {err}");
    let now = pool.workers();
    println!("   workers now: {:?}", ids(&now));
    ensure!(
        now.len() == WORKERS && !now.contains(&victim),
        "the killed worker was not replaced"
    );
    // Its thread saw `is_cancelled`, so it returns, runs `stop` and leaves.
    ensure!(
        wait_for(Duration::from_secs(10), || no_abandoned_threads(pool)),
        "the killed worker's thread never left"
    );
    Ok(())
}

/// Step 8: Fire-and-forget tasks, then `wait_idle`.
fn idle(pool: &Pool<Checksummer>) -> Result<(), Error> {
    println!("\n8. 200 detached tasks, then wait_idle");
    for seed in 1..=200 {
        drop(pool.submit(Job::Checksum { seed })?); // a dropped handle detaches
    }
    pool.wait_idle();
    let stats = pool.stats();
    println!("   idle: queued {}, busy {}", stats.queued, stats.busy);
    ensure!(
        stats.queued == 0 && stats.busy == 0,
        "wait_idle returned early"
    );
    Ok(())
}

/// Whether every thread the pool gave up on has returned and left.
fn no_abandoned_threads(pool: &Pool<Checksummer>) -> bool {
    pool.stats().abandoned_threads == 0
}

fn ids(workers: &[WorkerId]) -> Vec<u64> {
    workers.iter().map(|w| w.as_u64()).collect()
}
