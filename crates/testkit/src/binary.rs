//! A step's real binary as a child process: started on port 0, ready once it prints
//! `listening on ADDR`, stopped by real signals, its stderr kept for tests to search.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::failure::{self, SHUTDOWN_TIMEOUT};
use crate::{OutputLines, TIMEOUT, human};

/// A running server binary.
#[derive(Debug)]
pub struct Binary {
    child: Child,
    addr: SocketAddr,
    stderr: OutputLines,
}

impl Binary {
    /// Starts `path 127.0.0.1:0 [extra args]` and waits for its readiness line.
    /// `path` is usually `env!("CARGO_BIN_EXE_step-NN")`.
    pub async fn start(path: &str, extra_args: &[&str]) -> Binary {
        let mut command = Command::new(path);
        command.arg("127.0.0.1:0").args(extra_args);
        Binary::start_command(command).await
    }

    /// Starts the binary under a shell that first lowers the open-file limit to `limit`, so
    /// `accept` fails with EMFILE once that many descriptors are open.
    pub async fn start_with_fd_limit(path: &str, limit: u32) -> Binary {
        Binary::start_with_fd_limit_and_args(path, limit, &[]).await
    }

    /// [`Binary::start_with_fd_limit`] with extra arguments after the address.
    pub async fn start_with_fd_limit_and_args(
        path: &str,
        limit: u32,
        extra_args: &[&str],
    ) -> Binary {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                &format!("ulimit -n {limit} && exec \"$0\" 127.0.0.1:0 \"$@\""),
                path,
            ])
            .args(extra_args);
        Binary::start_command(command).await
    }

    /// Runs `path args...` to completion, for command lines that do not start a server
    /// (`--help`, a bad flag), and returns what it printed; fails the test if it runs longer
    /// than [`TIMEOUT`].
    pub async fn run_to_exit(path: &str, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(path);
        command.args(args).stdin(Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("could not run {path} {args:?}: {e}"),
            Err(_) => panic!(
                "{path} {args:?} was still running after {}; it should have exited",
                human(TIMEOUT)
            ),
        }
    }

    /// The server's process id, for tests that read `/proc/PID/status`.
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .expect("the server process has not been waited for, so it has a pid")
    }

    /// Starts a prepared command whose program prints `listening on ADDR` when ready.
    pub async fn start_command(mut command: Command) -> Binary {
        failure::short_panics();
        // A `todo!()` the server reaches shows as two lines (place and message), not as a
        // backtrace, whatever the learner's shell sets; `TESTKIT_BACKTRACE=1` asks for it.
        command.env("RUST_BACKTRACE", failure::child_backtrace());
        // stderr goes through a plain pipe read by a plain thread, not a runtime task: when a
        // test fails, `Drop` must be able to collect the server's last words while the test's
        // (single-threaded) runtime is blocked in the panic.
        let (err, err_writer) = std::io::pipe().expect("creating a pipe for the server's stderr");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_writer)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("could not start the server binary {command:?}: {e}"));
        // The parent's copy of the writing end goes with `command`, so the reader sees EOF once
        // the server exits.
        drop(command);

        // Keep draining stderr in the background: a server whose stderr pipe fills up blocks.
        let (tx, stderr) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let out = child.stdout.take().expect("stdout was piped above");
        let mut out = BufReader::new(out).lines();
        let first = tokio::time::timeout(TIMEOUT, out.next_line()).await;
        let addr = match first {
            Ok(Ok(Some(line))) => line
                .strip_prefix("listening on ")
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| {
                    panic!("the server's first line should be `listening on ADDR`, got `{line}`")
                }),
            Ok(Ok(None)) | Ok(Err(_)) => {
                panic!("the server exited or closed stdout before printing `listening on ADDR`")
            }
            Err(_) => panic!(
                "the server did not print `listening on ADDR` within {}",
                human(TIMEOUT)
            ),
        };
        // Anything else on stdout is drained so the server never blocks writing it.
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });

        Binary {
            child,
            addr,
            stderr: OutputLines::new(stderr),
        }
    }

    /// The address the server reported in its readiness line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a signal (`libc::SIGINT`, `libc::SIGTERM`) to the server process.
    pub fn signal(&self, signal: i32) {
        let pid = self
            .child
            .id()
            .expect("the server process has not been waited for, so it has a pid");
        let pid = libc::pid_t::try_from(pid).expect("pids fit in pid_t");
        // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        self.signal(libc::SIGINT);
    }

    /// Sends SIGTERM, as `kill PID`, systemd or a container runtime do to stop a service.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the process to exit and returns its status; fails the test if it is still
    /// running after the deadline (and kills it).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(SHUTDOWN_TIMEOUT).await
    }

    /// Waits for the process to exit and fails the test unless it exited with code 0 (a
    /// graceful shutdown), showing the server's stderr.
    pub async fn expect_clean_exit(&mut self) {
        let status = self.wait_exit().await;
        if status.code() != Some(0) {
            // Its stderr, which says why, follows: `Drop` shows it once for every failure.
            panic!(
                "the server should exit with code 0 after a graceful shutdown, but it ended with \
                 {status}"
            );
        }
    }

    /// [`Binary::wait_exit`] with an explicit deadline.
    pub async fn wait_exit_within(&mut self, limit: Duration) -> ExitStatus {
        match failure::shutdown_within("the server process", limit, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the server process failed: {e}"),
            Err(hung) => {
                // Killed on drop too (`kill_on_drop`); killing now lets its stderr end.
                let _ = self.child.start_kill();
                panic!("{hung}");
            }
        }
    }

    /// Waits until the server writes a stderr line containing `needle` and returns that line.
    pub async fn expect_stderr(&mut self, needle: &str) -> String {
        match self.stderr.find(needle, TIMEOUT).await {
            Some(line) => line,
            None => panic!(
                "the server never logged a line containing `{needle}` (within {}); \
                 its stderr follows",
                human(TIMEOUT),
            ),
        }
    }

    /// Every stderr line received so far.
    pub fn stderr_so_far(&mut self) -> &[String] {
        self.stderr.so_far()
    }
}

impl Drop for Binary {
    /// When a test fails while the server runs, show what the server said: its stderr holds the
    /// reason a client only sees as a closed connection (a panic such as a `todo!()` that was
    /// reached, an error it logged). The test harness prints it with the failure.
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the server wrote just before the client noticed may still be in the pipe.
            std::thread::sleep(Duration::from_millis(200));
            // Rust's hint to set RUST_BACKTRACE would only add a thousand lines of tokio.
            let seen: Vec<&str> = self
                .stderr_so_far()
                .iter()
                .map(String::as_str)
                .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE=1`"))
                .skip_while(|l| l.is_empty())
                .collect();
            eprintln!(
                "--- what the server wrote on stderr ---\n{}\n---",
                seen.join("\n")
            );
        }
    }
}
