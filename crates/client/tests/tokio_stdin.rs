//! The reason the client reads stdin on a thread of its own, checked against the tokio in
//! Cargo.lock: a pending `tokio::io::stdin()` read keeps a finished runtime from shutting down
//! until input arrives, while a read on a plain std thread does not.
//!
//! Each test runs itself again as a child process (selected by an environment variable) so it
//! can give that child a stdin pipe that stays open and watch whether the child ends.

use std::process::Stdio;
use std::time::Duration;

use testkit::TIMEOUT;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Set in the child: which way of reading stdin it should use.
const MODE: &str = "CLIENT_STDIN_DEMO_MODE";

/// How long the parent watches a child that should be stuck. Generous: a child that is not
/// stuck drops its runtime within milliseconds.
const STUCK: Duration = Duration::from_secs(1);

/// A `tokio::io::stdin()` read left pending keeps the runtime's drop waiting until a line comes.
#[test]
fn tokio_stdin_holds_up_runtime_shutdown() {
    if child_mode("tokio") {
        return;
    }
    parent("tokio_stdin_holds_up_runtime_shutdown", "tokio", true);
}

/// A read on a std thread of our own does not: the runtime drops and the process ends at once.
#[test]
fn std_thread_stdin_does_not() {
    if child_mode("thread") {
        return;
    }
    parent("std_thread_stdin_does_not", "thread", false);
}

/// In the child, runs the experiment for `mode` and returns true; in the parent, returns false.
///
/// The experiment: start a read of stdin, let it block, finish `block_on` (as `main` returning
/// does), then drop the runtime, printing a line at each stage.
fn child_mode(mode: &str) -> bool {
    if std::env::var(MODE).as_deref() != Ok(mode) {
        return false;
    }
    // Building a runtime only fails when the OS refuses threads; nothing to test then.
    let runtime = tokio::runtime::Runtime::new().expect("building a tokio runtime");
    runtime.block_on(async {
        if mode == "tokio" {
            tokio::spawn(async {
                let mut byte = [0u8; 1];
                let _ = tokio::io::stdin().read(&mut byte).await;
            });
        } else {
            std::thread::spawn(|| {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            });
        }
        // Give the read time to start and block.
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    println!("block_on returned");
    drop(runtime);
    println!("runtime dropped");
    true
}

/// Runs the test `name` again as a child in `mode`, with a stdin pipe that stays open, and
/// checks whether the child's runtime drop is stuck until a line is written.
fn parent(name: &str, mode: &str, expect_stuck: bool) {
    let runtime = tokio::runtime::Runtime::new().expect("building a tokio runtime");
    runtime.block_on(async {
        let exe = std::env::current_exe().expect("the path of this test binary");
        let mut child = Command::new(exe)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(MODE, mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("running this test binary again as a child");
        let mut stdin = child.stdin.take().expect("stdin was piped above");
        let stdout = child.stdout.take().expect("stdout was piped above");
        let mut lines = BufReader::new(stdout).lines();

        // Skips the test harness's own output until `wanted`, within `limit`; false on timeout.
        // (`contains`: the harness prints `test NAME ... ` with no newline before our line.)
        let mut wait_for = async |wanted: &str, limit: Duration| {
            tokio::time::timeout(limit, async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains(wanted) {
                        return true;
                    }
                }
                panic!("the child closed stdout before printing `{wanted}`")
            })
            .await
            .unwrap_or(false)
        };

        assert!(
            wait_for("block_on returned", TIMEOUT).await,
            "the {mode} child never finished its block_on"
        );
        if expect_stuck {
            assert!(
                !wait_for("runtime dropped", STUCK).await,
                "with {mode} stdin, dropping the runtime did not wait for the pending read"
            );
            stdin
                .write_all(b"a line at last\n")
                .await
                .expect("writing to the child's stdin");
            assert!(
                wait_for("runtime dropped", TIMEOUT).await,
                "with {mode} stdin, the runtime still did not drop after a line arrived"
            );
        } else {
            assert!(
                wait_for("runtime dropped", TIMEOUT).await,
                "with {mode} stdin, dropping the runtime waited although stdin stayed open"
            );
        }
        let status = tokio::time::timeout(TIMEOUT, child.wait())
            .await
            .expect("the child should exit once its runtime is dropped")
            .expect("waiting for the child");
        assert!(status.success(), "the child exited with {status:?}");
        drop(stdin);
    });
}
