//! Waiting for tasks with tokio-util's `TaskTracker`: spawn through it, `close` it, `wait`.

use std::time::Duration;

use tokio::time;
use tokio_util::task::TaskTracker;

// ANCHOR: wait
/// Runs one task per duration (each just sleeps that long) and returns when all have finished.
pub async fn run_and_wait(work: Vec<Duration>) {
    let tracker = TaskTracker::new();
    for duration in work {
        tracker.spawn(time::sleep(duration));
    }
    // No more tasks: without `close`, `wait` would never return, even with every task done.
    tracker.close();
    tracker.wait().await;
}
// ANCHOR_END: wait

// ANCHOR: deadline
/// Closes `tracker` and waits for its tasks for at most `grace`. Returns whether they all
/// finished. `TaskTracker` has no deadline of its own; `timeout` adds one.
pub async fn wait_at_most(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    time::timeout(grace, tracker.wait()).await.is_ok()
}
// ANCHOR_END: deadline
