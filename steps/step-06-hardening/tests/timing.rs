//! The rules that depend on time, on tokio's paused clock: the server is fed in-memory pipes
//! (`tokio::io::duplex`) instead of sockets, the clock only moves when every task waits, and
//! so the login timeout and the grace period are checked to the millisecond, without a single
//! real second of waiting. A pipe of a few bytes is also a client that reads exactly when the
//! test says, which pins down the order of a farewell.

use std::time::Duration;

use futures::StreamExt;
use step_06::{Config, GracePeriodExpired, Server};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LinesCodec};

/// A client on the other end of an in-memory pipe.
struct PipeClient {
    lines: FramedRead<tokio::io::ReadHalf<DuplexStream>, LinesCodec>,
    writer: tokio::io::WriteHalf<DuplexStream>,
}

impl PipeClient {
    /// Connects a client to `server` over a pipe that buffers `capacity` bytes each way.
    fn connect(server: &Server, capacity: usize) -> PipeClient {
        let (client, served) = tokio::io::duplex(capacity);
        server.serve_connection(served);
        let (read, writer) = tokio::io::split(client);
        PipeClient {
            lines: FramedRead::new(read, LinesCodec::new()),
            writer,
        }
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("the server end of the pipe is open");
    }

    /// The next line, or `None` at the end; fails after a (virtual) minute.
    async fn next(&mut self) -> Option<String> {
        match tokio::time::timeout(Duration::from_secs(60), self.lines.next()).await {
            Ok(Some(Ok(line))) => Some(line),
            Ok(Some(Err(e))) => panic!("reading from the pipe failed: {e}"),
            Ok(None) => None,
            Err(_) => panic!("nothing arrived and the pipe stayed open for a minute"),
        }
    }

    /// Whether nothing arrives for `d`.
    async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.lines.next()).await.is_err()
    }
}

/// A client that sends no name is closed exactly when the login timeout (10 s) runs out, told
/// `error: login timed out`, and not a moment before.
#[tokio::test(start_paused = true)]
async fn login_timeout_closes_a_silent_client() {
    let server = Server::new(Config::default());
    let start = Instant::now();
    let mut silent = PipeClient::connect(&server, 1024);
    assert!(
        silent.quiet_for(Duration::from_millis(9_999)).await,
        "the client was answered before the login timeout was over"
    );
    assert_eq!(
        silent.next().await.as_deref(),
        Some("error: login timed out")
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_millis(10_010),
        "closed after {waited:?}, not after the 10 s login timeout"
    );
    assert_eq!(silent.next().await, None, "the connection should be closed");
}

/// A client that logs in in time is not affected by the login timeout later on.
#[tokio::test(start_paused = true)]
async fn login_timeout_only_applies_to_the_login() {
    let server = Server::new(Config::default());
    let mut alice = PipeClient::connect(&server, 1024);
    alice.send("alice").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    alice.send("alice: a minute later").await;
    assert_eq!(
        alice.next().await.as_deref(),
        Some("from alice: a minute later")
    );
}

/// With a writer stuck on a client that does not read, the shutdown takes exactly the grace
/// period, returns `GracePeriodExpired`, and closes the stuck connection.
#[tokio::test(start_paused = true)]
async fn grace_period_ends_a_stuck_shutdown() {
    let grace_period = Duration::from_secs(10);
    // Patient enough that the stuck client is not dropped as too slow first.
    let server = Server::new(Config {
        stall_timeout: Duration::from_secs(3600),
        ..Config::default()
    });
    // A 64-byte pipe: two lines fill it, the rest waits in the server.
    let mut slow = PipeClient::connect(&server, 64);
    slow.send("slow").await;
    let mut flooder = PipeClient::connect(&server, 64 * 1024);
    flooder.send("flooder").await;
    for i in 0..100 {
        flooder.send(&format!("slow: message {i}")).await;
    }
    flooder.send("flooder: all sent").await;
    assert_eq!(
        flooder.next().await.as_deref(),
        Some("from flooder: all sent")
    );

    let start = Instant::now();
    // A (virtual) minute: a shutdown that ignored the grace period would wait for ever.
    let result = tokio::time::timeout(Duration::from_secs(60), server.shut_down())
        .await
        .expect("the shutdown should end after the grace period, not wait for ever");
    let took = start.elapsed();
    let expired = result
        .expect_err("the shutdown cannot finish while slow's writer is stuck")
        .downcast::<GracePeriodExpired>()
        .expect("the error should be GracePeriodExpired");
    assert_eq!(*expired, GracePeriodExpired { grace_period });
    assert!(
        took >= grace_period && took < grace_period + Duration::from_millis(10),
        "the shutdown took {took:?}, not the 10 s grace period"
    );
    // slow gets what fitted in the pipe, then the end: its connection was closed.
    let mut received = 0;
    while let Some(line) = slow.next().await {
        // The last line may be cut short: the connection was closed in the middle of it.
        let whole_or_cut = line.starts_with("from flooder: message ")
            || "from flooder: message ".starts_with(line.as_str());
        assert!(whole_or_cut, "unexpected line `{line}`");
        received += 1;
    }
    assert!(
        received < 100,
        "slow received everything: its writer was never stuck"
    );
    assert_eq!(
        flooder.next().await,
        None,
        "the flooder's connection should be closed too"
    );
}

/// When every client keeps up and closes its side once it has read ours, the shutdown
/// finishes at once, well inside the grace period, and returns `Ok`; everything queued is
/// delivered first.
#[tokio::test(start_paused = true)]
async fn shutdown_within_the_grace_period_is_clean() {
    let server = Server::new(Config::default());
    let mut alice = PipeClient::connect(&server, 64 * 1024);
    alice.send("alice").await;
    for i in 0..100 {
        alice.send(&format!("alice: {i}")).await;
    }
    alice.send("alice: done").await;
    // Wait until the last line is routed (the ones before it are, too).
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("from alice: done") {
        got.push(alice.next().await.expect("alice's messages come back"));
    }
    let start = Instant::now();
    let shut_down = tokio::spawn(server.shut_down());
    assert_eq!(
        alice.next().await,
        None,
        "alice's connection should be closed"
    );
    // Alice answers the server's end with her own, as a well-behaved client does.
    drop(alice);
    shut_down
        .await
        .expect("the shutdown task does not panic")
        .expect("a clean shutdown");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "nothing should have waited"
    );
    assert_eq!(got.len(), 101);
}

/// A client that never closes its side holds the shutdown up for exactly `linger` after the
/// server's end-of-file, no longer: the lingering close is bounded.
#[tokio::test(start_paused = true)]
async fn a_client_that_never_closes_costs_at_most_the_linger() {
    let linger = Duration::from_millis(1500);
    let server = Server::new(Config {
        linger,
        ..Config::default()
    });
    let mut alice = PipeClient::connect(&server, 64 * 1024);
    alice.send("alice").await;
    alice.send("alice: hi").await;
    assert_eq!(alice.next().await.as_deref(), Some("from alice: hi"));
    let start = Instant::now();
    let shut_down = tokio::spawn(server.shut_down());
    assert_eq!(alice.next().await, None, "the server's end comes at once");
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Alice keeps her side open, and even keeps typing: the server reads and discards.
    alice.send("bob: still here").await;
    shut_down
        .await
        .expect("the shutdown task does not panic")
        .expect("a clean shutdown: the linger is not the grace period");
    assert_eq!(
        start.elapsed(),
        linger,
        "the server waited exactly the linger"
    );
    drop(alice);
}

/// A client that breaks a rule while lines are still queued for it (its pipe is full) gets
/// all of them, in order, then the error line, then the end.
#[tokio::test(start_paused = true)]
async fn error_line_comes_after_what_was_queued() {
    let server = Server::new(Config::default());
    // 64 bytes: alice's writer is stuck after two lines, the rest stays in her queue.
    let mut alice = PipeClient::connect(&server, 64);
    alice.send("alice").await;
    let mut bob = PipeClient::connect(&server, 64 * 1024);
    bob.send("bob").await;
    for i in 0..20 {
        bob.send(&format!("alice: queued {i}")).await;
    }
    bob.send("bob: all routed").await;
    assert_eq!(bob.next().await.as_deref(), Some("from bob: all routed"));
    alice
        .writer
        .write_all(b"bob: \xff\n")
        .await
        .expect("the pipe has room for one short line");
    let mut got = Vec::new();
    while let Some(line) = alice.next().await {
        got.push(line);
    }
    let mut expected: Vec<String> = (0..20).map(|i| format!("from bob: queued {i}")).collect();
    expected.push("error: invalid UTF-8".to_string());
    assert_eq!(got, expected);
}

/// A client that stops reading is dropped exactly when writes to it have made no progress for
/// the stall timeout (5 s), not a moment before: at 4.99 s its name is still taken, and right
/// after 5 s it is free. Meanwhile its sender is held up, not dropped: once the slow client is
/// gone, the sender's next line is served.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_after_the_stall_timeout() {
    let server = Server::new(Config::default());
    // A 64-byte pipe: the first line fills it and the writer waits from then on.
    let mut slow = PipeClient::connect(&server, 64);
    slow.send("slow").await;
    let mut alice = PipeClient::connect(&server, 64 * 1024);
    alice.send("alice").await;
    alice.send("alice: logged in").await;
    assert_eq!(alice.next().await.as_deref(), Some("from alice: logged in"));
    let start = Instant::now();
    alice.send(&format!("slow: {}", "x".repeat(200))).await;
    tokio::time::sleep(Duration::from_millis(4_990)).await;
    let mut second = PipeClient::connect(&server, 1024);
    second.send("slow").await;
    assert_eq!(
        second.next().await.as_deref(),
        Some("error: name taken"),
        "the slow client was dropped before the stall timeout was over"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    tokio::time::sleep_until(start + Duration::from_millis(5_001)).await;
    let mut third = PipeClient::connect(&server, 1024);
    third.send("slow").await;
    alice.send("slow: welcome").await;
    assert_eq!(
        third.next().await.as_deref(),
        Some("from alice: welcome"),
        "the slow client should be gone 5 s after its writer stopped making progress"
    );
    // The old client gets the start of the line that stuck, then the end.
    let mut rest = Vec::new();
    while let Some(line) = slow.next().await {
        rest.push(line);
    }
    assert!(rest.len() <= 1, "the slow client got {rest:?}");
}
