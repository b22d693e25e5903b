//! How every task of a connection runs: on the server's tracker, so that the shutdown waits
//! for it; with its error logged, not lost; and under its connection's `close` token, so that
//! it can be stopped wherever it is waiting.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Result;

// ANCHOR: spawn_and_log_error
/// Spawns `fut` on `tracker` and logs its error, if any, instead of losing it.
///
/// A task's error goes nowhere unless someone awaits its `JoinHandle`, and the accept loop
/// never does. Logging here means one failing connection is reported and nothing else happens.
/// Spawning on the tracker (never with a plain `tokio::spawn`, which it would not see) lets
/// `run` wait for the task.
pub(crate) fn spawn_and_log_error<F>(tracker: &TaskTracker, fut: F) -> JoinHandle<()>
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    tracker.spawn(async move {
        if let Err(e) = fut.await {
            eprintln!("connection failed: {e}");
        }
    })
}

/// Runs `fut` until it ends or `close` is cancelled, whichever comes first. Dropping `fut`
/// drops whatever it holds, sockets included: that is how a stuck connection is closed.
pub(crate) async fn until_closed<F>(close: CancellationToken, fut: F) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    close.run_until_cancelled(fut).await.unwrap_or(Ok(()))
}
// ANCHOR_END: spawn_and_log_error
