//! Telling tasks to stop: broadcast (an event), watch (a state), `CancellationToken` (a state
//! shared by clones, arranged in a tree). Paused time: "never hears it" is checked with a long
//! timeout that takes no real time, and durations are exact.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use shutdown_patterns::tell_broadcast::{self, Shutdown};
use shutdown_patterns::{TICK, tell_token, tell_watch};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{self, Instant, timeout};
use tokio_util::sync::CancellationToken;

/// Long enough that anything that would happen has happened; free on paused time.
const NEVER: Duration = Duration::from_secs(3600);

/// Awaits `future`, failing the test if it has not finished after [`NEVER`].
async fn finishes<F: Future>(future: F) -> F::Output {
    timeout(NEVER, future)
        .await
        .expect("still running after an hour (of paused time)")
}

// --- broadcast ---------------------------------------------------------------------------

/// One notice stops every worker that subscribed before it was sent; each finishes its
/// clean-up one tick later.
#[tokio::test(start_paused = true)]
async fn broadcast_notice_reaches_every_subscriber() {
    let start = Instant::now();
    let (notice, _) = broadcast::channel(1);
    let workers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(tell_broadcast::worker(Shutdown::new(notice.subscribe()))))
        .collect();
    // Ticks at 0, 100 and 200 ms, then the notice at 250 ms.
    time::sleep(TICK * 5 / 2).await;
    notice.send(()).expect("three workers are subscribed");
    for worker in workers {
        assert_eq!(finishes(worker).await.expect("worker does not panic"), 3);
    }
    assert_eq!(start.elapsed(), TICK * 5 / 2 + TICK);
}

/// Dropping the sender tells every subscriber too: `recv` sees a closed channel.
#[tokio::test(start_paused = true)]
async fn dropping_the_broadcast_sender_is_a_notice() {
    let (notice, _) = broadcast::channel::<()>(1);
    let mut shutdown = Shutdown::new(notice.subscribe());
    drop(notice);
    assert!(timeout(NEVER, shutdown.recv()).await.is_ok());
    assert!(shutdown.is_shutdown());
}

// ANCHOR: late_subscriber
/// A receiver that subscribes after the notice never hears it: broadcast carries events.
#[tokio::test(start_paused = true)]
async fn broadcast_late_subscriber_misses_the_notice() {
    let (notice, _early) = broadcast::channel(1);
    notice.send(()).expect("one receiver is subscribed");

    let mut late = Shutdown::new(notice.subscribe());
    assert!(
        timeout(NEVER, late.recv()).await.is_err(),
        "late subscriber heard it"
    );
}
// ANCHOR_END: late_subscriber

/// With nobody subscribed, `send` fails and the notice is kept for no one.
#[tokio::test(start_paused = true)]
async fn broadcast_send_without_subscribers_is_lost() {
    let (notice, first) = broadcast::channel(1);
    drop(first);
    assert!(notice.send(()).is_err());
    let mut late = Shutdown::new(notice.subscribe());
    assert!(
        timeout(NEVER, late.recv()).await.is_err(),
        "late subscriber heard it"
    );
}

/// `Shutdown::recv` returns at once the second time: the flag remembers the event, which the
/// channel itself delivers only once.
#[tokio::test(start_paused = true)]
async fn shutdown_flag_remembers_the_notice() {
    let (notice, _) = broadcast::channel(1);
    let mut shutdown = Shutdown::new(notice.subscribe());
    notice.send(()).expect("one receiver is subscribed");
    finishes(shutdown.recv()).await;
    assert!(shutdown.recv().now_or_never().is_some());
}

// --- watch -------------------------------------------------------------------------------

/// Setting the watch flag stops a running worker, which then cleans up for one tick.
#[tokio::test(start_paused = true)]
async fn watch_flag_stops_a_worker() {
    let start = Instant::now();
    let (stopping, rx) = watch::channel(false);
    let worker = tokio::spawn(tell_watch::worker(rx));
    time::sleep(TICK * 5 / 2).await;
    tell_watch::tell(&stopping);
    assert_eq!(finishes(worker).await.expect("worker does not panic"), 3);
    assert_eq!(start.elapsed(), TICK * 5 / 2 + TICK);
}

// ANCHOR: watch_late
/// A worker that starts after the flag was set stops at once: watch holds a state.
#[tokio::test(start_paused = true)]
async fn watch_late_worker_sees_the_state() {
    let (stopping, _) = watch::channel(false);
    tell_watch::tell(&stopping);

    let start = Instant::now();
    finishes(tell_watch::worker(stopping.subscribe())).await;
    assert_eq!(start.elapsed(), TICK, "only the clean-up tick");
}
// ANCHOR_END: watch_late

/// `send` with no receiver stores nothing, so a later subscriber sees the old value;
/// `send_replace` stores the new value whoever is listening.
#[tokio::test(start_paused = true)]
async fn watch_send_without_receivers_stores_nothing() {
    let (stopping, first) = watch::channel(false);
    drop(first);
    assert!(stopping.send(true).is_err());
    assert!(!*stopping.subscribe().borrow());
    stopping.send_replace(true);
    assert!(*stopping.subscribe().borrow());
}

// --- CancellationToken -------------------------------------------------------------------

/// Cancelling a worker's token stops it; both worker shapes (`select!` on `cancelled()`, and
/// `run_until_cancelled`) stop at the cancel and clean up for one tick.
#[tokio::test(start_paused = true)]
async fn token_stops_workers() {
    let start = Instant::now();
    let token = CancellationToken::new();
    let a = tokio::spawn(tell_token::worker(token.clone()));
    let b = tokio::spawn(tell_token::worker_until_cancelled(token.clone()));
    time::sleep(TICK * 5 / 2).await;
    token.cancel();
    assert_eq!(finishes(a).await.expect("worker does not panic"), 3);
    assert_eq!(finishes(b).await.expect("worker does not panic"), 3);
    assert_eq!(start.elapsed(), TICK * 5 / 2 + TICK);
}

// ANCHOR: clones_share
/// Cancelling any clone cancels them all: clones share one state.
#[tokio::test(start_paused = true)]
async fn token_clones_share_one_state() {
    let token = CancellationToken::new();
    let clone = token.clone();
    let waiter = tokio::spawn(async move { clone.cancelled().await });

    token.clone().cancel();
    assert!(token.is_cancelled());
    assert!(
        timeout(NEVER, waiter).await.is_ok(),
        "the waiting clone was not woken"
    );
}
// ANCHOR_END: clones_share

// ANCHOR: level_triggered
/// `cancelled()` completes at once for a task that asks after the cancel: unlike
/// `Notify::notify_waiters`, a cancel is remembered (level-triggered).
#[tokio::test(start_paused = true)]
async fn token_cancelled_is_level_triggered() {
    let token = CancellationToken::new();
    token.cancel();

    // A task that looks only now still sees it, on the first poll.
    assert!(token.cancelled().now_or_never().is_some());
    // So does a worker started after the cancel: it only does its clean-up.
    let start = Instant::now();
    finishes(tell_token::worker(token.clone())).await;
    assert_eq!(start.elapsed(), TICK);
}
// ANCHOR_END: level_triggered

// ANCHOR: child_token
/// Cancelling a parent cancels its children; cancelling a child leaves its parent and its
/// siblings alone.
#[tokio::test(start_paused = true)]
async fn child_tokens_follow_their_parent_only() {
    let server = CancellationToken::new();
    let alice = server.child_token();
    let bob = server.child_token();

    alice.cancel();
    assert!(!server.is_cancelled() && !bob.is_cancelled());

    server.cancel();
    assert!(bob.is_cancelled());
    // A child made from a cancelled token is born cancelled.
    assert!(server.child_token().is_cancelled());
}
// ANCHOR_END: child_token

/// The drop guard cancels the token when the watcher returns with a request.
#[tokio::test(start_paused = true)]
async fn drop_guard_cancels_on_request() {
    let token = CancellationToken::new();
    let (requests_tx, requests) = mpsc::channel(1);
    let watcher = tokio::spawn(tell_token::cancel_on_request(requests, token.clone()));
    time::sleep(TICK).await;
    assert!(!token.is_cancelled());

    requests_tx
        .send("stop")
        .await
        .expect("the watcher is listening");
    assert_eq!(
        finishes(watcher).await.expect("watcher does not panic"),
        Some("stop")
    );
    assert!(token.is_cancelled());
}

// ANCHOR: drop_guard_abort
/// The drop guard cancels the token however the watcher ends, even when it is aborted.
#[tokio::test(start_paused = true)]
async fn drop_guard_cancels_when_the_watcher_is_aborted() {
    let token = CancellationToken::new();
    let (_requests_tx, requests) = mpsc::channel::<()>(1);
    let watcher = tokio::spawn(tell_token::cancel_on_request(requests, token.clone()));
    // Let it start: an async fn's body, and so the guard, exists only once it is polled.
    time::sleep(TICK).await;

    watcher.abort();
    assert!(finishes(watcher).await.is_err_and(|e| e.is_cancelled()));
    assert!(token.is_cancelled());
}
// ANCHOR_END: drop_guard_abort

/// The drop guard cancels the token when every trigger is gone, since no request can come.
#[tokio::test(start_paused = true)]
async fn drop_guard_cancels_when_every_trigger_is_gone() {
    let token = CancellationToken::new();
    let (requests_tx, requests) = mpsc::channel::<()>(1);
    drop(requests_tx);
    assert_eq!(
        finishes(tell_token::cancel_on_request(requests, token.clone())).await,
        None
    );
    assert!(token.is_cancelled());
}

// ANCHOR: run_until_cancelled
/// `run_until_cancelled` returns `Some(output)` if the future finishes first, and `None` if
/// the token is cancelled first, dropping the future.
#[tokio::test(start_paused = true)]
async fn run_until_cancelled_returns_some_or_none() {
    let token = CancellationToken::new();
    assert_eq!(token.run_until_cancelled(async { 7 }).await, Some(7));

    let canceller = token.clone();
    tokio::spawn(async move {
        time::sleep(TICK).await;
        canceller.cancel();
    });
    let (owned_by_future, dropped) = oneshot::channel::<()>();
    let slow = async move {
        let _owned = owned_by_future;
        time::sleep(NEVER).await;
        7
    };
    assert_eq!(finishes(token.run_until_cancelled(slow)).await, None);
    assert!(
        finishes(dropped).await.is_err(),
        "the future was not dropped"
    );
}
// ANCHOR_END: run_until_cancelled

/// On a token that is already cancelled, `run_until_cancelled` returns `None` without running
/// the future, even one that is ready.
#[tokio::test(start_paused = true)]
async fn run_until_cancelled_on_a_cancelled_token_runs_nothing() {
    let token = CancellationToken::new();
    token.cancel();
    assert_eq!(token.run_until_cancelled(async { 7 }).await, None);
}
