//! A connection the server neither closes nor writes to fails a test after [`TIMEOUT`], not
//! after the whole deadline given for a long delivery. Its own test binary, because the
//! failure is remembered process-wide as a hung shutdown.

use std::time::Duration;

use testkit::{Client, TIMEOUT};
use tokio::time::Instant;

/// With a 30 s deadline to reach EOF, a silent open connection fails after 5 s, naming the
/// usual causes of a shutdown that hangs.
#[tokio::test(start_paused = true)]
async fn silent_connection_fails_after_the_line_timeout() {
    let (listener, addr) = testkit::loopback_listener().await;
    let mut client = Client::connect(addr, "alice").await;
    // The "server" accepts and then neither writes nor closes.
    let (_held_open, _) = listener.accept().await.expect("accepting on loopback");
    let started = Instant::now();
    let join = tokio::spawn(async move {
        client.lines_until_eof_within(Duration::from_secs(30)).await;
    })
    .await;
    let took = started.elapsed();
    let panic = join.expect_err("a connection that stays open fails the test");
    let payload = panic.into_panic();
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(1),
        "{took:?}"
    );
    assert!(
        message.contains("still open and silent 5.0 s later"),
        "{message}"
    );
    assert!(message.contains("a TaskTracker never closed"), "{message}");
}
