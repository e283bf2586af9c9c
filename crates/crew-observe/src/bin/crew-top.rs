//! `crew-top`: a live terminal view of the pools behind a crew dashboard.
//!
//! `crew-top --url http://127.0.0.1:9000 [--refresh-ms 1000]`
//!
//! Keys: `b` busy, `r` rss, `d` done, `i` id (sort); `Tab` next pool; `q` quit.

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: crew-top --url http://HOST:PORT [--refresh-ms MS]";

fn main() -> ExitCode {
    let mut url = None;
    let mut refresh = Duration::from_secs(1);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--url", Some(u)) => url = Some(u),
            ("--refresh-ms", Some(ms)) => match ms.parse() {
                Ok(ms) => refresh = Duration::from_millis(ms),
                Err(_) => return usage(&format!("bad --refresh-ms {ms}")),
            },
            ("-h" | "--help", _) => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            (other, _) => return usage(&format!("unexpected argument {other}")),
        }
    }
    let Some(url) = url else {
        return usage("--url is required");
    };
    match crew_observe::top::Top::url(&url).refresh(refresh).run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crew-top: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("crew-top: {problem}\n{USAGE}");
    ExitCode::from(2)
}
