//! How the test kit fails: a shutdown that hangs fails within the deadline and names the usual
//! causes, later ones in the same process fail within a second, and server binaries start
//! without backtraces. Its own test binary, because a hang is remembered process-wide.

use std::future::pending;
use std::time::Duration;

use testkit::{Binary, SHUTDOWN_TIMEOUT, Server};
use tokio::process::Command;
use tokio::time::Instant;

/// A server whose `run` never returns, however it is asked to stop.
async fn never_finishes() -> Server {
    testkit::start(|_listener, _shutdown| async { pending::<Result<(), String>>().await }).await
}

/// Asks `server` to shut down in a task of its own and returns the panic message of that
/// task, and how long it took to fail.
async fn shutdown_failure(server: Server) -> (String, Duration) {
    let started = Instant::now();
    let join = tokio::spawn(server.shutdown()).await;
    let took = started.elapsed();
    let panic = join.expect_err("a shutdown that never finishes fails the test");
    let payload = panic.into_panic();
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    (message, took)
}

/// The first hung shutdown fails at the deadline with the usual causes; a second one in the
/// same process fails a second later and says which test hung first.
#[tokio::test(start_paused = true)]
async fn hanging_shutdown_fails_fast_with_its_causes() {
    let (first, took) = shutdown_failure(never_finishes().await).await;
    assert!(
        took >= SHUTDOWN_TIMEOUT && took < SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        "{took:?}"
    );
    for cause in [
        "still running 5.0 s",
        "a sender still alive",
        "a TaskTracker never closed",
        "a task outside the tracker",
    ] {
        assert!(first.contains(cause), "`{cause}` missing from: {first}");
    }

    // Another test: a thread of its own, as the test harness gives every test.
    let (second, took) = std::thread::Builder::new()
        .name("another_test".into())
        .spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("building a runtime");
            runtime.block_on(async { shutdown_failure(never_finishes().await).await })
        })
        .expect("spawning a thread")
        .join()
        .expect("the other test's thread returns its failure");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "the second hang should fail a second after the first was seen, took {took:?}"
    );
    assert!(
        second.contains("as in `hanging_shutdown_fails_fast_with_its_causes`"),
        "{second}"
    );
}

/// A server binary starts with `RUST_BACKTRACE=0` even when the test's shell set it to 1, so
/// a `todo!()` it reaches prints two lines, not a backtrace.
#[tokio::test]
async fn binaries_start_without_backtraces() {
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "echo 'listening on 127.0.0.1:9'; echo \"RUST_BACKTRACE=$RUST_BACKTRACE\" >&2; \
             exec sleep 30",
        ])
        .env("RUST_BACKTRACE", "1");
    let mut bin = Binary::start_command(command).await;
    let line = bin.expect_stderr("RUST_BACKTRACE=").await;
    assert_eq!(line, "RUST_BACKTRACE=0");
}

/// Cargo runs every test of the workspace with `RUST_BACKTRACE=0`, even when the shell set
/// it to 1 (`.cargo/config.toml`), so a test without the kit reports a panic in a few lines.
#[test]
fn cargo_runs_tests_without_backtraces() {
    assert_eq!(std::env::var("RUST_BACKTRACE").as_deref(), Ok("0"));
}
