//! How a failing check reads: short panic reports, and a shutdown that hangs fails fast with
//! its usual causes.
//!
//! A learner's shell often has `RUST_BACKTRACE=1` set. With it, every failing test and every
//! `todo!()` the server reaches prints a backtrace of some thirty lines of tokio internals, and
//! the one line that matters (which gap, which behaviour) is lost among a thousand others. So
//! the test kit prints every panic of a test process as two lines, its place and its message,
//! and starts server binaries with `RUST_BACKTRACE=0` (the workspace's `.cargo/config.toml`
//! sets it for every process cargo runs, tests without the kit included).
//! `TESTKIT_BACKTRACE=1` adds the backtraces back, for whoever needs them.

use std::collections::HashSet;
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

/// The variable that restores Rust's own panic reports in tests and servers.
pub const BACKTRACE_VAR: &str = "TESTKIT_BACKTRACE";

/// How long a graceful shutdown may take, in-process or as a binary, before the test calls it
/// stuck. Generous (a shutdown on loopback takes milliseconds), yet short enough that a check
/// whose shutdown hangs fails in seconds, not minutes.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How much longer any other shutdown may take once one has hung in the same test process.
/// A shutdown that hangs usually hangs in every test; waiting the full deadline in each of
/// them made a check with one such bug take a minute and a half.
const AFTER_ANOTHER_HUNG: Duration = Duration::from_secs(1);

/// The name of the first test whose shutdown hung in this process.
static HUNG: OnceLock<String> = OnceLock::new();

/// What usually keeps a shutdown from finishing, for the failure message.
pub const USUAL_CAUSES: &str = "Usual causes: a sender still alive (a clone of the broker's or \
     a peer's sender that nobody drops, so a loop waiting for its channel to close never ends); \
     a TaskTracker never closed (`wait()` returns only after `close()`); a task outside the \
     tracker, or one that never looks at the shutdown signal (a reader still waiting for a line).";

/// Installs the short panic report for this test process, once. Every testkit entry point
/// calls it, so a test gets it by using the kit; a test file that does not can call it first.
///
/// A panic that repeats (the same place and message in the same thread, as when a property
/// test shrinks an input that reaches a `todo!()`) is reported once.
pub fn short_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let backtraces = std::env::var_os(BACKTRACE_VAR).is_some_and(|v| v != "0");
        let seen: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("<unnamed>");
            let place = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_else(|| "an unknown place".to_string());
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(a panic without a message)");
            let report = format!("panicked in '{name}' at {place}:\n{message}");
            // A poisoned set (a panic while reporting) only means a report may repeat.
            let new = seen
                .lock()
                .map(|mut seen| seen.insert(report.clone()))
                .unwrap_or(true);
            if !new {
                return;
            }
            // `eprintln!` goes to the test harness's capture, so the report shows with the
            // failing test (and not at all for a test that expects a panic and passes).
            if backtraces {
                let trace = std::backtrace::Backtrace::force_capture();
                eprintln!("{report}\n{trace}");
            } else {
                eprintln!("{report}");
            }
        }));
    });
}

/// The value of `RUST_BACKTRACE` for a server binary a test starts: `0`, unless
/// `TESTKIT_BACKTRACE` asks for backtraces.
pub(crate) fn child_backtrace() -> &'static str {
    match std::env::var(BACKTRACE_VAR) {
        Ok(v) if v != "0" => "1",
        _ => "0",
    }
}

/// Waits for `finished`, a shutdown the test has asked for, at most `limit`, or
/// [`AFTER_ANOTHER_HUNG`] once another test of this process saw its shutdown hang. `Err` is the
/// failure message, naming `what` did not finish and the usual causes; it also records the hang
/// for the other tests.
pub(crate) async fn shutdown_within<F: Future>(
    what: &str,
    limit: Duration,
    finished: F,
) -> Result<F::Output, String> {
    let started = tokio::time::Instant::now();
    let first = tokio::select! {
        out = finished => return Ok(out),
        () = tokio::time::sleep(limit) => None,
        first = another_hung() => Some(first),
    };
    let also = as_in(first.unwrap_or_else(record_hang));
    let waited = started.elapsed().as_secs_f64();
    Err(format!(
        "{what} was still running {waited:.1} s after it was asked to shut down{also}.\n\
         {USUAL_CAUSES}"
    ))
}

/// Records that a shutdown hung in the current test, unless one already did in this process,
/// and returns the name of the test where the first one hung.
pub(crate) fn record_hang() -> String {
    let me = current_test();
    HUNG.get_or_init(|| me).clone()
}

/// ` (as in `first`, whose shutdown hung first)`, or nothing when `first` is this test.
pub(crate) fn as_in(first: String) -> String {
    if first == current_test() {
        String::new()
    } else {
        format!(" (as in `{first}`, whose shutdown hung first)")
    }
}

/// The name of the running test: the test harness names each test's thread after it.
fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("another test")
        .to_string()
}

/// Completes [`AFTER_ANOTHER_HUNG`] after a shutdown has hung in another test of this process,
/// with that test's name; never, if none has.
pub(crate) async fn another_hung() -> String {
    loop {
        if let Some(first) = HUNG.get() {
            tokio::time::sleep(AFTER_ANOTHER_HUNG).await;
            return first.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
