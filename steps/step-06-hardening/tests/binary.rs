//! Step 06's real binary: real signals and exit codes. As in step 05, SIGINT or SIGTERM after
//! the readiness line starts a graceful shutdown that delivers what was read, closes every
//! connection and exits with 0. New: the grace period bounds that shutdown (exit code 3), a
//! second signal exits at once (130 or 143), accept errors are survived, and the flags are
//! checked (exit code 2).

use std::time::{Duration, Instant};

use testkit::{Binary, Client, TIMEOUT, scenarios};

const BIN: &str = env!("CARGO_BIN_EXE_step-06");

/// Credit and patience enough for the shutdown scenarios, whose recipients read nothing until the
/// signal: they are about delivering what was read, not about slow consumers.
const ROOMY: &[&str] = &["--sender-budget", "4000000000", "--stall-timeout", "60m"];

/// SIGINT right after the readiness line is handled gracefully (the handler is installed
/// before the line is printed): exit code 0, not death by signal. Ten rounds, because a server
/// that prints the line before installing its handler loses this race only now and then.
#[tokio::test]
async fn sigint_right_after_readiness_exits_0() {
    for _ in 0..10 {
        let mut bin = Binary::start(BIN, &[]).await;
        bin.interrupt();
        bin.expect_clean_exit().await;
    }
}

/// On SIGINT, idle clients see their connections closed, and the process exits with 0.
#[tokio::test]
async fn sigint_closes_idle_clients() {
    let mut bin = Binary::start(BIN, &[]).await;
    scenarios::shutdown_closes_idle_clients(bin.addr(), || bin.interrupt()).await;
    bin.expect_clean_exit().await;
}

/// A burst of 5 000 messages read before SIGINT arrives complete and in order, then exit 0.
#[tokio::test]
async fn sigint_delivers_accepted_burst() {
    let mut bin = Binary::start(BIN, ROOMY).await;
    scenarios::shutdown_delivers_accepted_burst(bin.addr(), || bin.interrupt(), 5_000).await;
    bin.expect_clean_exit().await;
}

/// With clients still writing when SIGINT lands, each recipient gets a gap-free, in-order
/// prefix from each sender, every socket closes, and the process exits with 0.
#[tokio::test]
async fn sigint_while_clients_write() {
    let mut bin = Binary::start(BIN, ROOMY).await;
    scenarios::shutdown_while_clients_write(bin.addr(), || bin.interrupt()).await;
    bin.expect_clean_exit().await;
}

/// Clients that never sent their name, or sent half a line, do not hold up the exit.
#[tokio::test]
async fn sigint_not_held_by_silent_clients() {
    let mut bin = Binary::start(BIN, &[]).await;
    scenarios::shutdown_not_held_by_silent_clients(bin.addr(), || bin.interrupt()).await;
    bin.expect_clean_exit().await;
}

/// Messages read but not yet routed when SIGINT lands reach every recipient, including one
/// whose queue was empty when its reader stopped; then exit 0.
#[tokio::test]
async fn sigint_delivers_backlog_to_every_recipient() {
    let mut bin = Binary::start(BIN, ROOMY).await;
    scenarios::shutdown_delivers_backlog_to_every_recipient(bin.addr(), || bin.interrupt()).await;
    bin.expect_clean_exit().await;
}

/// SIGTERM right after the readiness line is handled gracefully too: exit code 0 (ten rounds,
/// as for SIGINT).
#[tokio::test]
async fn sigterm_right_after_readiness_exits_0() {
    for _ in 0..10 {
        let mut bin = Binary::start(BIN, &[]).await;
        bin.terminate();
        bin.expect_clean_exit().await;
    }
}

/// SIGTERM starts the same graceful shutdown as SIGINT: a burst read before it is delivered
/// complete and in order, then exit 0.
#[tokio::test]
async fn sigterm_delivers_accepted_burst() {
    let mut bin = Binary::start(BIN, ROOMY).await;
    scenarios::shutdown_delivers_accepted_burst(bin.addr(), || bin.terminate(), 5_000).await;
    bin.expect_clean_exit().await;
}

/// With clients still writing when SIGTERM lands, each recipient gets a gap-free, in-order
/// prefix from each sender, every socket closes, and the process exits with 0.
#[tokio::test]
async fn sigterm_while_clients_write() {
    let mut bin = Binary::start(BIN, ROOMY).await;
    scenarios::shutdown_while_clients_write(bin.addr(), || bin.terminate()).await;
    bin.expect_clean_exit().await;
}

/// Logs in `slow`, which never reads, and has `flooder` send it `lines` lines of 1 kB: more
/// than the socket buffers hold, so the server's writer for `slow` is stuck with lines still
/// queued. Returns both clients (dropping them would close the connections).
async fn stuck_writer(bin: &Binary, lines: usize) -> (Client, Client) {
    let slow = Client::login_with_small_buffer(bin.addr(), "slow").await;
    let mut flooder = Client::login(bin.addr(), "flooder").await;
    let padding = "x".repeat(1000);
    for i in 0..lines {
        flooder.send(&format!("slow: {i} {padding}")).await;
    }
    // Lines are routed in order: once this comes back, the flood is in slow's queue.
    flooder.send("flooder: flooded").await;
    flooder.expect("from flooder: flooded").await;
    (slow, flooder)
}

/// With a writer stuck on a client that does not read, SIGINT starts the shutdown and the
/// grace period ends it: exit code 3 after at least the grace period, the stuck connection
/// closed.
#[tokio::test]
async fn grace_period_bounds_the_shutdown() {
    let mut bin = Binary::start(
        BIN,
        &[
            "--grace-period",
            "1s",
            "--sender-budget",
            "4000000000",
            "--stall-timeout",
            "60m",
        ],
    )
    .await;
    let (mut slow, _flooder) = stuck_writer(&bin, 10_000).await;
    let signalled = Instant::now();
    bin.interrupt();
    let status = bin.wait_exit_within(TIMEOUT).await;
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(3),
        "after the grace period the server should exit with 3, got {status}"
    );
    assert!(
        took >= Duration::from_secs(1),
        "the server gave up after {took:?}, before the 1 s grace period was over"
    );
    bin.expect_stderr("the grace period of 1s is over").await;
    // The process is gone, so is the socket: slow reads what was sent, then the end.
    let got = slow.lines_until_eof_within(Duration::from_secs(30)).await;
    assert!(
        got.len() < 10_000,
        "slow received all {} lines: the writer was not stuck, so this test proved nothing",
        got.len()
    );
}

/// A second SIGINT during a stuck graceful shutdown exits at once with 130.
#[tokio::test]
async fn second_sigint_exits_at_once() {
    let mut bin = Binary::start(
        BIN,
        &[
            "--grace-period",
            "60s",
            "--sender-budget",
            "4000000000",
            "--stall-timeout",
            "60m",
        ],
    )
    .await;
    let (_slow, _flooder) = stuck_writer(&bin, 10_000).await;
    bin.interrupt();
    bin.expect_stderr("SIGINT received, shutting down").await;
    bin.interrupt();
    let status = bin.wait_exit_within(TIMEOUT).await;
    assert_eq!(
        status.code(),
        Some(130),
        "a second SIGINT should exit with 130, got {status}"
    );
}

/// SIGTERM during a stuck graceful shutdown (here after SIGINT) exits at once with 143.
#[tokio::test]
async fn sigterm_after_sigint_exits_at_once() {
    let mut bin = Binary::start(
        BIN,
        &[
            "--grace-period",
            "60s",
            "--sender-budget",
            "4000000000",
            "--stall-timeout",
            "60m",
        ],
    )
    .await;
    let (_slow, _flooder) = stuck_writer(&bin, 10_000).await;
    bin.interrupt();
    bin.expect_stderr("SIGINT received, shutting down").await;
    bin.terminate();
    let status = bin.wait_exit_within(TIMEOUT).await;
    assert_eq!(
        status.code(),
        Some(143),
        "SIGTERM second should exit with 143, got {status}"
    );
}

/// Out of file descriptors, the server logs the failed accept, keeps serving the clients it
/// has, and accepts again once descriptors are free.
#[tokio::test]
async fn survives_running_out_of_file_descriptors() {
    let mut bin = Binary::start_with_fd_limit(BIN, 24).await;
    let mut alice = Client::login(bin.addr(), "alice").await;
    let mut bob = Client::login(bin.addr(), "bob").await;
    // More connections than descriptors are left: the kernel completes them all (they wait
    // in the listen backlog), the server accepts until EMFILE.
    let mut crowd = Vec::new();
    for i in 0..40 {
        crowd.push(Client::connect(bin.addr(), &format!("crowd {i}")).await);
    }
    bin.expect_stderr("accept failed: Too many open files")
        .await;
    // It waits between attempts instead of spinning: a few failures in half a second (about
    // five at 100 ms), not the thousands of a busy loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = bin
        .stderr_so_far()
        .iter()
        .filter(|line| line.contains("accept failed"))
        .count();
    assert!(
        failures <= 20,
        "{failures} failed accepts logged in half a second: the accept loop does not back off"
    );
    alice.send("bob: still here").await;
    bob.expect("from alice: still here").await;
    drop(crowd);
    // The server notices the crowd left (each in turn: those it had accepted see EOF, those
    // still in the backlog are accepted and see EOF at once), and then takes new clients.
    let mut carol = Client::login(bin.addr(), "carol").await;
    alice.send("carol: welcome").await;
    carol.expect("from alice: welcome").await;
    bin.interrupt();
    bin.expect_clean_exit().await;
}

/// `--help` lists every flag with its default and the exit codes, and exits 0.
#[tokio::test]
async fn help_lists_flags_and_exit_codes() {
    let out = Binary::run_to_exit(BIN, &["--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "`--help` should exit 0");
    for needle in [
        "--max-line-len BYTES",
        "--login-timeout DURATION",
        "--sender-budget BYTES",
        "--stall-timeout DURATION",
        "--broker-queue-len EVENTS",
        "--max-connections N",
        "--grace-period DURATION",
        "--linger DURATION",
        "[default: 4096]",
        "[default: 10000]",
        "3 grace period over",
        "130/143",
    ] {
        assert!(
            help.contains(needle),
            "`--help` should mention `{needle}`:\n{help}"
        );
    }
}

/// A bad flag is named on stderr and the exit code is 2; nothing is served.
#[tokio::test]
async fn bad_flag_exits_2() {
    for args in [
        &["--sender-budget", "lots"][..],
        &["--no-such-flag", "1"],
        &["--grace-period", "5"],
    ] {
        let out = Binary::run_to_exit(BIN, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} should exit 2; stderr: {stderr}"
        );
        assert!(
            stderr.contains(args[0]),
            "{args:?}: the error should name the flag; stderr: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing should be served");
    }
}

/// An address that cannot be bound exits with 1 and says why.
#[tokio::test]
async fn unusable_address_exits_1() {
    let out = Binary::run_to_exit(BIN, &["256.0.0.1:0"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("cannot listen on 256.0.0.1:0"),
        "stderr: {stderr}"
    );
}
