//! Each generation's tools together: told and waited for. And the echo server's graceful
//! shutdown over real TCP on loopback.

use std::time::Duration;

use shutdown_patterns::{TICK, together};
use testkit::Client;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{self, Instant, timeout};

const STOP_AT: Duration = Duration::from_secs(1);

/// Broadcast to tell, mpsc to wait: returns one clean-up tick after the stop, so it waited for
/// every worker.
#[tokio::test(start_paused = true)]
async fn old_style_tells_and_waits_for_every_worker() {
    let start = Instant::now();
    let stopped = timeout(
        Duration::from_secs(3600),
        together::old_style(3, time::sleep(STOP_AT)),
    );
    stopped.await.expect("old_style returned");
    assert_eq!(start.elapsed(), STOP_AT + TICK);
}

/// `CancellationToken` to tell, `TaskTracker` to wait: the same result.
#[tokio::test(start_paused = true)]
async fn new_style_tells_and_waits_for_every_worker() {
    let start = Instant::now();
    let stopped = timeout(
        Duration::from_secs(3600),
        together::new_style(3, time::sleep(STOP_AT)),
    );
    stopped.await.expect("new_style returned");
    assert_eq!(start.elapsed(), STOP_AT + TICK);
}

/// On stop, the echo server says goodbye to each connected client, closes it, finishes within
/// the grace period, and refuses new clients.
#[tokio::test]
async fn echo_server_shuts_down_gracefully() {
    let (listener, addr) = testkit::loopback_listener().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop = async {
        // Sent or dropped: either way, stop.
        let _ = stop_rx.await;
    };
    let server = tokio::spawn(together::serve(listener, stop, Duration::from_secs(5)));

    let mut alice = Client::connect(addr, "alice").await;
    let mut bob = Client::connect(addr, "bob").await;
    alice.send("hello").await;
    alice.expect("hello").await;
    bob.send("hi").await;
    bob.expect("hi").await;

    stop_tx
        .send(())
        .expect("the server is waiting for the stop");
    for client in [&mut alice, &mut bob] {
        client.expect("server shutting down").await;
        client.expect_eof().await;
    }
    let finished = timeout(Duration::from_secs(10), server).await;
    assert!(matches!(finished, Ok(Ok(true))), "serve: {finished:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new client was accepted"
    );
}
