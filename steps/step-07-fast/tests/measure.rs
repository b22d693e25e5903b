//! Measurements, not tests of behaviour: what the real binary's memory and exit time are under
//! attack. Ignored in normal runs (the numbers depend on the machine); run them with
//!
//! ```sh
//! cargo test --release -p step-07 --test measure -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each prints its numbers, and fails if a limit is clearly exceeded: memory growth of 16 MiB
//! or more, or an exit that does not come within the grace period (plus one second).

use std::time::{Duration, Instant};

use testkit::{Binary, Client, TIMEOUT};

const BIN: &str = env!("CARGO_BIN_EXE_step-07");

/// The memory limit of issue 5: growth of the resident set, in bytes.
const MAX_GROWTH: u64 = 16 * 1024 * 1024;

/// `VmRSS` (resident now) and `VmHWM` (the peak so far) of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("reading /proc/PID/status (these measurements need Linux)");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Prints the growth of the peak over the resident set before, and fails at 16 MiB.
fn report(what: &str, before: u64, pid: u32) {
    let (rss, peak) = memory(pid);
    let growth = peak.saturating_sub(before);
    println!(
        "{what}: VmRSS before {}, after {}; VmHWM {}; peak growth {}",
        mib(before),
        mib(rss),
        mib(peak),
        mib(growth)
    );
    assert!(
        growth < MAX_GROWTH,
        "{what}: the server's memory grew by {}, over the 16 MiB limit",
        mib(growth)
    );
}

/// RSS growth while a client that never reads is sent 200 MB of messages (default limits, but
/// a stall timeout of 2 s: the flooder waits that long for the non-reader to be dropped, and
/// the test client gives up on a write after 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture, in release"]
async fn memory_while_a_non_reader_is_flooded() {
    let bin = Binary::start(BIN, &["--stall-timeout", "2s"]).await;
    let _slow = Client::login_with_small_buffer(bin.addr(), "slow").await;
    let mut flooder = Client::login(bin.addr(), "flooder").await;
    let (before, _) = memory(bin.pid());
    // 200 000 lines of 1 000 bytes, 1 000 lines per write.
    let line = format!("slow: {}\n", "x".repeat(994));
    let batch = line.repeat(1_000);
    let started = Instant::now();
    for _ in 0..200 {
        flooder.send_bytes(batch.as_bytes()).await;
    }
    flooder.send("flooder: done").await;
    flooder.expect("from flooder: done").await;
    println!(
        "flood: {} MB to a client that never reads, routed in {:?}",
        200 * batch.len() / 1_000_000,
        started.elapsed()
    );
    report("flooded non-reader", before, bin.pid());
}

/// RSS growth while a client sends 64 MB with no newline, before and after logging in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture, in release"]
async fn memory_while_a_client_sends_64_mb_without_newline() {
    let bin = Binary::start(BIN, &[]).await;
    let mut alice = Client::login(bin.addr(), "alice").await;
    let (before, _) = memory(bin.pid());
    let chunk = vec![b'x'; 64 * 1024];
    for logged_in in [false, true] {
        let mut client = if logged_in {
            let mut bob = Client::login(bin.addr(), "bob").await;
            bob.send_bytes(b"alice: ").await;
            bob
        } else {
            Client::connect(bin.addr(), "nameless").await
        };
        let mut sent = 0;
        while sent < 64 * 1024 * 1024 && client.try_send_bytes(&chunk).await {
            sent += chunk.len();
        }
        let when = if logged_in {
            "after login"
        } else {
            "as a name"
        };
        if sent < 64 * 1024 * 1024 {
            // What the client could write is what the kernel's socket buffers took; the server
            // itself read little more than one line's worth before it closed the connection.
            println!(
                "no newline ({when}): the connection was closed after the client wrote {}",
                mib(sent as u64)
            );
        } else {
            println!("no newline ({when}): all 64 MiB were taken; the connection stayed open");
        }
    }
    // The server is still fine.
    alice.send("alice: still here").await;
    alice.expect("from alice: still here").await;
    report("64 MB without newline, twice", before, bin.pid());
}

/// Exit time after SIGINT with a client that never reads and a writer stuck with lines
/// queued: the grace period (default 10 s), not more. The stall timeout is made long enough
/// (`--stall-timeout 60m`, with credit to match) that the client is not dropped as too slow first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture, in release"]
async fn exit_time_with_a_stuck_client() {
    let grace = Duration::from_secs(10);
    let mut bin = Binary::start(
        BIN,
        &["--sender-budget", "4000000000", "--stall-timeout", "60m"],
    )
    .await;
    let _slow = Client::login_with_small_buffer(bin.addr(), "slow").await;
    let mut flooder = Client::login(bin.addr(), "flooder").await;
    let line = format!("slow: {}\n", "x".repeat(994));
    for _ in 0..10 {
        flooder.send_bytes(line.repeat(1_000).as_bytes()).await;
    }
    flooder.send("flooder: done").await;
    flooder.expect("from flooder: done").await;
    let signalled = Instant::now();
    bin.interrupt();
    let status = bin.wait_exit_within(grace + TIMEOUT).await;
    let took = signalled.elapsed();
    println!("exit after SIGINT with a stuck client: {took:?}, {status} (grace period {grace:?})");
    assert_eq!(
        status.code(),
        Some(3),
        "the grace period should have run out"
    );
    assert!(
        took >= grace && took < grace + Duration::from_secs(1),
        "the exit took {took:?}, not the {grace:?} grace period"
    );
}
