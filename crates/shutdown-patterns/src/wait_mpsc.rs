//! Waiting for tasks, the older way: every task holds a clone of an mpsc `Sender` it never
//! uses, and the `Receiver`'s `recv` returns `None` once the last clone has been dropped.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time;

// ANCHOR: wait
/// Runs one task per duration (each just sleeps that long) and returns when all have finished.
pub async fn run_and_wait(work: Vec<Duration>) {
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    for duration in work {
        let done = done_tx.clone();
        tokio::spawn(async move {
            // Never used to send: dropping it when the task ends, however it ends, is the
            // message.
            let _done = done;
            time::sleep(duration).await;
        });
    }
    // Our own sender too, or `recv` below would wait for us forever.
    drop(done_tx);
    // Nothing is ever sent, so `recv` returns only `None`: once the last sender is dropped.
    let _ = done_rx.recv().await;
}
// ANCHOR_END: wait
