//! Diagnostics on stderr. `REEF_RUN_DEBUG=1` adds a line per step of a run with the time
//! since reef-run started (where the milliseconds of a start go).

use std::sync::OnceLock;
use std::time::Instant;

struct Debug {
    on: bool,
    start: Instant,
}

fn debug() -> &'static Debug {
    static D: OnceLock<Debug> = OnceLock::new();
    D.get_or_init(|| Debug {
        on: std::env::var_os("REEF_RUN_DEBUG").is_some_and(|v| !v.is_empty() && v != "0"),
        start: Instant::now(),
    })
}

/// Starts the clock (call first thing in main).
pub fn init() {
    let _ = debug();
}

/// One debug line, if enabled.
pub fn step(what: impl FnOnce() -> String) {
    let d = debug();
    if d.on {
        eprintln!(
            "reef-run: [{:7.2} ms] {}",
            d.start.elapsed().as_secs_f64() * 1e3,
            what()
        );
    }
}
