//! The facts chapter 05 states about tokio-util's `CancellationToken` and `TaskTracker`, each
//! shown on the real types (and, for the token, next to `Notify`, which lacks the property).

use std::sync::Arc;
use std::time::Duration;

use testkit::TIMEOUT;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long we wait for something that must not happen before we say it did not.
const NOT_YET: Duration = Duration::from_millis(300);

// ANCHOR: level_triggered
/// `cancelled()` is level-triggered: a future made after the token was cancelled completes at
/// once. (A `notified()` made after `notify_waiters` never completes.)
#[tokio::test]
async fn cancelled_made_after_cancel_completes() {
    let token = CancellationToken::new();
    token.cancel();
    assert!(
        tokio::time::timeout(NOT_YET, token.cancelled())
            .await
            .is_ok(),
        "a `cancelled()` made after `cancel()` should complete at once"
    );

    let notify = Notify::new();
    notify.notify_waiters();
    assert!(
        tokio::time::timeout(NOT_YET, notify.notified())
            .await
            .is_err(),
        "a `notified()` made after `notify_waiters()` was expected to wait forever"
    );
}
// ANCHOR_END: level_triggered

/// Cancelling a parent cancels its children; cancelling a child leaves the parent and the
/// other children alone.
#[tokio::test]
async fn child_tokens_follow_their_parent_only() {
    let parent = CancellationToken::new();
    let first = parent.child_token();
    let second = parent.child_token();
    first.cancel();
    assert!(first.is_cancelled());
    assert!(
        !parent.is_cancelled() && !second.is_cancelled(),
        "cancelling one child must not cancel its parent or its siblings"
    );
    parent.cancel();
    assert!(
        second.is_cancelled(),
        "cancelling the parent must cancel every child"
    );
}

/// A drop guard cancels its token when it is dropped, however the scope that held it ends.
#[tokio::test]
async fn drop_guard_cancels_when_dropped() {
    let token = CancellationToken::new();
    let watcher = tokio::spawn({
        let guard = token.clone().drop_guard();
        async move {
            let _guard = guard;
            panic!("the task holding the guard fails");
        }
    });
    assert!(watcher.await.is_err(), "the task was expected to panic");
    assert!(
        token.is_cancelled(),
        "the guard dropped while the task unwound, so the token should be cancelled"
    );
}

// ANCHOR: wait_needs_close
/// `wait()` does not return before `close()`, even with no task left; after `close()` it
/// returns once the tracked tasks are done.
#[tokio::test]
async fn tracker_wait_needs_close() {
    let tracker = TaskTracker::new();
    let (finish, finished) = oneshot::channel::<()>();
    tracker.spawn(async move {
        let _ = finished.await;
    });
    finish.send(()).expect("the task waits for this");
    assert!(
        tokio::time::timeout(NOT_YET, tracker.wait()).await.is_err(),
        "`wait()` was expected not to return before `close()`"
    );
    tracker.close();
    assert!(
        tokio::time::timeout(TIMEOUT, tracker.wait()).await.is_ok(),
        "after `close()`, `wait()` should return once the task is done"
    );
}
// ANCHOR_END: wait_needs_close

/// A task started with plain `tokio::spawn` is not tracked: `wait()` returns while it still
/// runs.
#[tokio::test]
async fn tracker_does_not_see_plain_spawn() {
    let tracker = TaskTracker::new();
    let (_keep_running, until_dropped) = oneshot::channel::<()>();
    let untracked = Arc::new(());
    let witness = Arc::clone(&untracked);
    tokio::spawn(async move {
        let _witness = witness;
        let _ = until_dropped.await;
    });
    tracker.close();
    assert!(
        tokio::time::timeout(TIMEOUT, tracker.wait()).await.is_ok(),
        "`wait()` should return: no task is tracked"
    );
    assert_eq!(
        Arc::strong_count(&untracked),
        2,
        "the untracked task should still be running when `wait()` returns"
    );
}
