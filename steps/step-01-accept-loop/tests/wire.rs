//! Step 01 over real loopback TCP, against the real binary: it accepts many clients at once,
//! parses what they send and logs it, and one bad connection never stops it.

use testkit::{Binary, Client};

const BIN: &str = env!("CARGO_BIN_EXE_step-01");

/// The binary prints `listening on ADDR` with the port it actually bound.
#[tokio::test]
async fn announces_bound_address() {
    let server = Binary::start(BIN, &[]).await;
    assert_ne!(
        server.addr().port(),
        0,
        "the readiness line must name the bound port"
    );
    Client::connect(server.addr(), "probe").await;
}

/// Several clients connected at once are each read and their parsed lines logged.
#[tokio::test]
async fn logs_lines_from_concurrent_clients() {
    let mut server = Binary::start(BIN, &[]).await;
    let mut alice = Client::connect(server.addr(), "alice").await;
    let mut bob = Client::connect(server.addr(), "bob").await;
    alice.send("alice").await;
    bob.send("bob").await;
    // Interleave the two clients: neither waits for the other.
    bob.send(" carol ,  dave :  hi there ").await;
    alice.send("bob: a:b").await;
    server.expect_stderr("alice logged in").await;
    server.expect_stderr("bob logged in").await;
    server.expect_stderr("bob -> carol, dave: hi there").await;
    server.expect_stderr("alice -> bob: a:b").await;
}

/// A line without `:` is logged as ignored and the connection goes on.
#[tokio::test]
async fn ignores_line_without_colon() {
    let mut server = Binary::start(BIN, &[]).await;
    let mut alice = Client::connect(server.addr(), "alice").await;
    alice.send("alice").await;
    alice.send("no colon here").await;
    alice.send("bob: still reading").await;
    server
        .expect_stderr("alice: ignored a line without ':'")
        .await;
    server.expect_stderr("alice -> bob: still reading").await;
}

/// A failing connection (invalid UTF-8, a reset) is logged and others are still served.
#[tokio::test]
async fn bad_connection_does_not_stop_the_server() {
    let mut server = Binary::start(BIN, &[]).await;
    let mut mallory = Client::connect(server.addr(), "mallory").await;
    mallory.send_bytes(b"\xff\xfe\n").await;
    server.expect_stderr("connection failed").await;
    let reset = Client::connect(server.addr(), "reset").await;
    reset.reset();
    let mut alice = Client::connect(server.addr(), "alice").await;
    alice.send("alice").await;
    alice.send("bob: after the bad ones").await;
    server
        .expect_stderr("alice -> bob: after the bad ones")
        .await;
}

/// An `accept` error (too many open files) is logged and the loop goes on: once descriptors
/// are free again, new clients are served.
#[tokio::test]
async fn accept_error_is_logged_and_loop_continues() {
    let mut server = Binary::start_with_fd_limit(BIN, 32).await;
    let mut crowd = Vec::new();
    for i in 0..40 {
        crowd.push(Client::connect(server.addr(), &format!("crowd{i}")).await);
    }
    server.expect_stderr("accept failed").await;
    drop(crowd);
    // The kernel queued the connections the server could not accept; they are accepted and
    // closed as descriptors come back. A fresh client is then served normally.
    let mut alice = Client::connect(server.addr(), "alice").await;
    alice.send("alice").await;
    alice.send("bob: back to normal").await;
    server.expect_stderr("alice -> bob: back to normal").await;
}
