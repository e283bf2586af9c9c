//! crew's "Hello, World!": a pool, one task, its result.
//!
//! ```text
//! cargo run --example hello
//! ```

use std::convert::Infallible;

use crew::{Context, Pool, StartError, Worker};

/// The worker entrypoint: what one worker does with one task.
struct Greeter;

impl Worker for Greeter {
    type Input = String;
    type Output = String;
    type Error = Infallible;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Greeter)
    }

    fn run(&mut self, name: String, _ctx: &mut Context<'_>) -> Result<String, Infallible> {
        Ok(format!("Hello, {name}!"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::<Greeter>::builder().build()?;

    let task = pool.submit("World".to_owned())?;
    println!("{}", task.join()?);

    pool.shutdown();
    Ok(())
}
