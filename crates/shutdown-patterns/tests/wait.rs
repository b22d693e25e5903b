//! Waiting for tasks: an mpsc channel whose senders are dropped, and `TaskTracker`. Paused
//! time, so "returns exactly when the last task ends" and "never returns" are exact and fast.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use shutdown_patterns::{wait_mpsc, wait_tracker};
use tokio::sync::mpsc;
use tokio::time::{self, Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Long enough that anything that would happen has happened; free on paused time.
const NEVER: Duration = Duration::from_secs(3600);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Awaits `future`, failing the test if it has not finished after [`NEVER`].
async fn finishes<F: Future>(future: F) -> F::Output {
    timeout(NEVER, future)
        .await
        .expect("still running after an hour (of paused time)")
}

// --- mpsc: senders held by tasks -----------------------------------------------------------

/// `recv()` returns `None` once every task has dropped its sender: exactly when the longest
/// task ends.
#[tokio::test(start_paused = true)]
async fn mpsc_wait_returns_when_the_last_sender_is_dropped() {
    let start = Instant::now();
    finishes(wait_mpsc::run_and_wait(vec![secs(1), secs(3), secs(2)])).await;
    assert_eq!(start.elapsed(), secs(3));
}

// ANCHOR: forgot_own_sender
/// Keeping our own sender is the classic bug: every task has ended, and `recv()` still waits.
#[tokio::test(start_paused = true)]
async fn mpsc_wait_hangs_while_main_keeps_its_sender() {
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    for duration in [secs(1), secs(2)] {
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _done = done;
            time::sleep(duration).await;
        });
    }
    // Missing here: `drop(done_tx);`

    assert!(
        timeout(NEVER, done_rx.recv()).await.is_err(),
        "recv returned"
    );
    // Both tasks are long gone; the one sender left is ours.
    assert_eq!(done_tx.strong_count(), 1);
}
// ANCHOR_END: forgot_own_sender

// --- TaskTracker -----------------------------------------------------------------------------

/// `wait()` returns exactly when the longest tracked task ends, once the tracker is closed.
#[tokio::test(start_paused = true)]
async fn tracker_wait_returns_when_the_last_task_ends() {
    let start = Instant::now();
    finishes(wait_tracker::run_and_wait(vec![secs(1), secs(3), secs(2)])).await;
    assert_eq!(start.elapsed(), secs(3));
}

// ANCHOR: wait_needs_close
/// `wait()` does not return before `close()`, even with no task at all.
#[tokio::test(start_paused = true)]
async fn tracker_wait_needs_close() {
    let tracker = TaskTracker::new();
    assert!(
        timeout(NEVER, tracker.wait()).await.is_err(),
        "wait returned"
    );

    tracker.close();
    assert!(tracker.wait().now_or_never().is_some());
}
// ANCHOR_END: wait_needs_close

/// A closed tracker still waits for a task that is running: closing only allows `wait()` to
/// return once the tracker is empty.
#[tokio::test(start_paused = true)]
async fn closed_tracker_waits_for_running_tasks() {
    let start = Instant::now();
    let tracker = TaskTracker::new();
    tracker.close();
    // `close` does not stop new tasks from being tracked.
    tracker.spawn(time::sleep(secs(2)));
    finishes(tracker.wait()).await;
    assert_eq!(start.elapsed(), secs(2));
}

// ANCHOR: untracked
/// A task started with plain `tokio::spawn` is not tracked: `wait()` returns while it runs.
#[tokio::test(start_paused = true)]
async fn tracker_ignores_plain_tokio_spawn() {
    let tracker = TaskTracker::new();
    let untracked = tokio::spawn(time::sleep(secs(10)));
    tracker.close();

    assert!(tracker.wait().now_or_never().is_some());
    assert!(!untracked.is_finished());
}
// ANCHOR_END: untracked

// ANCHOR: no_deadline
/// `TaskTracker` has no deadline of its own: a task that ignores the token holds `wait()`
/// until a `timeout` around it gives up.
#[tokio::test(start_paused = true)]
async fn tracker_deadline_comes_from_timeout() {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(time::sleep(NEVER)); // never looks at `token`

    token.cancel();
    let start = Instant::now();
    let all_done = wait_tracker::wait_at_most(&tracker, secs(5)).await;
    assert!(!all_done);
    assert_eq!(start.elapsed(), secs(5));
    assert_eq!(tracker.len(), 1, "the stubborn task is still running");
}
// ANCHOR_END: no_deadline

/// Within the deadline, `wait_at_most` reports that every task finished.
#[tokio::test(start_paused = true)]
async fn tracker_deadline_met() {
    let tracker = TaskTracker::new();
    tracker.spawn(time::sleep(secs(1)));
    let start = Instant::now();
    assert!(wait_tracker::wait_at_most(&tracker, secs(5)).await);
    assert_eq!(start.elapsed(), secs(1));
}
