//! Step 04's real binary and real Ctrl-C (SIGINT): after the readiness line, SIGINT starts a
//! graceful shutdown that delivers what was read, closes every connection and exits with 0.

use testkit::{Binary, scenarios};

const BIN: &str = env!("CARGO_BIN_EXE_step-04");

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
    let mut bin = Binary::start(BIN, &[]).await;
    scenarios::shutdown_delivers_accepted_burst(bin.addr(), || bin.interrupt(), 5_000).await;
    bin.expect_clean_exit().await;
}

/// With clients still writing when SIGINT lands, each recipient gets a gap-free, in-order
/// prefix from each sender, every socket closes, and the process exits with 0.
#[tokio::test]
async fn sigint_while_clients_write() {
    let mut bin = Binary::start(BIN, &[]).await;
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
    let mut bin = Binary::start(BIN, &[]).await;
    scenarios::shutdown_delivers_backlog_to_every_recipient(bin.addr(), || bin.interrupt()).await;
    bin.expect_clean_exit().await;
}
