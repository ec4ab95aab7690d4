//! reef-run's state directory under concurrent use: `reef-run ps` in a loop beside many named
//! starts. Listing must never take away a starting reef-run's half-made entry (it did: ps
//! found the `.new-NAME-PID` directory's lock file created but not yet flocked, took it as
//! abandoned and removed it, and the start failed writing `state.json`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reef_tests::run::*;

/// Named starts, and how many run at once.
const STARTS: usize = 100;
const WORKERS: usize = 8;
/// Concurrent `ps` loops.
const LISTERS: usize = 6;
/// Busy threads, so that reef-run is often preempted mid-step (races show up under load).
const BURNERS: usize = 4;
/// The whole test's bound (the starts take about 12 s on 2 busy cores).
const BOUND: Duration = Duration::from_secs(50);

#[test]
fn ps_in_a_loop_never_breaks_a_named_start() {
    let h = RunHost::new();
    let began = Instant::now();
    let next = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let listed = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let fail = |what: String| {
        failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what)
    };

    std::thread::scope(|s| {
        for _ in 0..BURNERS {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        for _ in 0..LISTERS {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let out = h.run(&["ps", "--output", "json"]);
                    if code(&out) != 0 || !out.stderr.is_empty() {
                        fail(format!("ps: {}", describe(&out)));
                    }
                    listed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= STARTS || began.elapsed() > BOUND {
                        break;
                    }
                    let name = format!("stress{i}");
                    let out = h.run(&["--name", &name, "--", "true"]);
                    if code(&out) != 0 {
                        fail(format!("start {name}: {}", describe(&out)));
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        done.store(true, Ordering::Relaxed);
    });

    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    let started = next.load(Ordering::Relaxed).min(STARTS);
    assert!(
        failures.is_empty(),
        "{} of {started} starts / {} listings failed:\n{}",
        failures.len(),
        listed.load(Ordering::Relaxed),
        failures.join("\n")
    );
    assert_eq!(started, STARTS, "only {started} starts within {BOUND:?}");
    assert!(listed.load(Ordering::Relaxed) > 0, "ps never ran");
    h.assert_clean("after the stress");
}
