//! The names most programs use, for a glob import:
//!
//! ```
//! use crew::prelude::*;
//!
//! struct Double;
//!
//! impl Worker for Double {
//!     type Input = u32;
//!     type Output = u32;
//!     type Error = String;
//!     type Message = ();
//!
//!     fn start(_: &mut Context<'_>) -> Result<Self, StartError> {
//!         Ok(Double)
//!     }
//!
//!     fn run(&mut self, n: u32, _: &mut Context<'_>) -> Result<u32, String> {
//!         Ok(2 * n)
//!     }
//! }
//!
//! let pool = Pool::<Double>::builder().workers(1).build()?;
//! let task: Task<u32, String> = pool.submit(21)?;
//! assert_eq!(task.join()?, 42);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! It holds the types a program names to build a pool, write a worker and read
//! results; everything else stays under `crew::`.

pub use crate::{
    AsyncWorker, Context, Pool, PoolBuilder, Priority, Scope, StartError, Task, TaskError, Worker,
    WorkerId,
};

#[cfg(all(feature = "process", target_os = "linux"))]
pub use crate::{bootstrap, RemoteWorker};
