//! Each generation's tools put together: tell every worker to stop, then wait for all of
//! them. First with a broadcast channel and an mpsc channel, then with `CancellationToken`
//! and `TaskTracker`; last, a small echo server shut down the new way.

use std::future::Future;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::{Framed, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tell_broadcast::{self, Shutdown};
use crate::tell_token;
use crate::wait_tracker::wait_at_most;

// ANCHOR: old_style
/// Runs `workers` workers until `stop` completes, then tells them and waits for them.
pub async fn old_style(workers: usize, stop: impl Future<Output = ()>) {
    let (notice_tx, _) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    for _ in 0..workers {
        // Subscribe here, not inside the task: a task that subscribes after the notice was
        // sent would never hear it.
        let shutdown = Shutdown::new(notice_tx.subscribe());
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _done = done;
            tell_broadcast::worker(shutdown).await;
        });
    }
    stop.await;
    // Dropping the sender is the notice: every `recv` now sees a closed channel.
    drop(notice_tx);
    // Our own `done` sender too, or the `recv` below never returns.
    drop(done_tx);
    let _ = done_rx.recv().await;
}
// ANCHOR_END: old_style

// ANCHOR: new_style
/// The same, with a `CancellationToken` to tell and a `TaskTracker` to wait.
pub async fn new_style(workers: usize, stop: impl Future<Output = ()>) {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    for _ in 0..workers {
        tracker.spawn(tell_token::worker(token.clone()));
    }
    stop.await;
    token.cancel();
    tracker.close();
    tracker.wait().await;
}
// ANCHOR_END: new_style

// ANCHOR: serve
/// Serves echo clients until `stop` completes, then shuts down gracefully: stop accepting,
/// tell every connection, wait at most `grace` for them. Returns whether all finished in time.
pub async fn serve(listener: TcpListener, stop: impl Future<Output = ()>, grace: Duration) -> bool {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    // The accept loop is tracked too, so the tracker cannot look empty while it may still
    // spawn a connection task.
    tracker.spawn(accept_loop(listener, token.clone(), tracker.clone()));
    stop.await;
    token.cancel();
    wait_at_most(&tracker, grace).await
}
// ANCHOR_END: serve

// ANCHOR: accept_loop
/// How long the accept loop waits after `accept` failed before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts clients until `token` is cancelled; each one gets a task in `tracker`.
async fn accept_loop(listener: TcpListener, token: CancellationToken, tracker: TaskTracker) {
    // `accept` is cancel safe, so dropping it on cancellation loses no client.
    while let Some(accepted) = token.run_until_cancelled(listener.accept()).await {
        match accepted {
            Ok((stream, _peer)) => {
                tracker.spawn(echo(stream, token.clone()));
            }
            // A failed accept concerns one client, or passes: log it and go on, after a
            // pause. Out of file descriptors (EMFILE) the connection stays in the backlog,
            // and trying again at once would fail again at once, a busy loop.
            Err(e) => {
                eprintln!("accept failed: {e}; trying again in {ACCEPT_BACKOFF:?}");
                token
                    .run_until_cancelled(tokio::time::sleep(ACCEPT_BACKOFF))
                    .await;
            }
        }
    }
    // Returning drops `listener`: from here on, new clients are refused.
}
// ANCHOR_END: accept_loop

// ANCHOR: echo
/// Sends each line back until the client leaves or `token` is cancelled, then says goodbye.
async fn echo(stream: TcpStream, token: CancellationToken) {
    let mut lines = Framed::new(stream, LinesCodec::new());
    loop {
        tokio::select! {
            // `next` is cancel safe: a line half-read when the token fires stays buffered.
            line = lines.next() => match line {
                Some(Ok(line)) => {
                    if lines.send(line).await.is_err() {
                        return;
                    }
                }
                // End of stream or an error: the client is gone.
                None | Some(Err(_)) => return,
            },
            () = token.cancelled() => break,
        }
    }
    // The client may already be gone; then there is nobody to say goodbye to.
    let _ = lines.send("server shutting down").await;
}
// ANCHOR_END: echo
