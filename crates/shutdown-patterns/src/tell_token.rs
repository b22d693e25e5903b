//! Telling tasks to stop with tokio-util's `CancellationToken`: one cancel, seen by every
//! clone, and remembered, so a task that looks late still sees it.

use tokio::sync::mpsc;
use tokio::time;
use tokio_util::sync::CancellationToken;

use crate::{TICK, clean_up};

// ANCHOR: worker
/// Works once per tick until `token` is cancelled, cleans up, and returns its ticks.
pub async fn worker(token: CancellationToken) -> u32 {
    let mut ticks = 0;
    let mut interval = time::interval(TICK);
    loop {
        tokio::select! {
            _ = interval.tick() => ticks += 1,
            // Cancel safe, and it completes at once if the token was cancelled earlier.
            () = token.cancelled() => break,
        }
    }
    clean_up().await;
    ticks
}
// ANCHOR_END: worker

// ANCHOR: run_until_cancelled
/// The same worker with `run_until_cancelled`: each tick runs unless the token is cancelled
/// first, in which case the tick is dropped and `None` ends the loop.
pub async fn worker_until_cancelled(token: CancellationToken) -> u32 {
    let mut ticks = 0;
    let mut interval = time::interval(TICK);
    while token.run_until_cancelled(interval.tick()).await.is_some() {
        ticks += 1;
    }
    clean_up().await;
    ticks
}
// ANCHOR_END: run_until_cancelled

// ANCHOR: drop_guard
/// Waits for the first shutdown request, then cancels `token`, and it cancels it however this
/// task ends: a request, every trigger gone (`None`), a panic, or an abort. The guard's drop
/// does the cancelling, so no path out of this function can forget it.
pub async fn cancel_on_request<T>(
    mut requests: mpsc::Receiver<T>,
    token: CancellationToken,
) -> Option<T> {
    let _cancel_on_exit = token.drop_guard();
    requests.recv().await
}
// ANCHOR_END: drop_guard
