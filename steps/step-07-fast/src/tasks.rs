//! How every task of a connection runs: on the server's tracker, so that the shutdown waits
//! for it; with its error logged, not lost; and under its connection's `close` token, so that
//! it can be stopped wherever it is waiting. Both wrappers are combinators, not `async` blocks,
//! so that a connection's task is the size of its own state.

use std::future::Future;

use futures::FutureExt as _;
use tokio::task::JoinHandle;
use tokio_util::future::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Result;

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
    // ANCHOR: no_double
    // `map`, not `async move { fut.await }`: an async block keeps the future it captured
    // and, once awaited, a second copy of it, so each such wrapper doubles the memory of
    // every connection's task. A combinator holds `fut` once.
    tracker.spawn(fut.map(|result| {
        if let Err(e) = result {
            eprintln!("connection failed: {e}");
        }
    }))
    // ANCHOR_END: no_double
}

/// Runs `fut` until it ends or `close` is cancelled, whichever comes first. Dropping `fut`
/// drops whatever it holds, sockets included: that is how a stuck connection is closed.
///
/// Not an `async fn`, for the same reason as above: `with_cancellation_token_owned` is a
/// plain future that holds `fut` once, where `async fn` + `run_until_cancelled` held it
/// twice, and `run_until_cancelled`, itself an `async fn`, twice again.
pub(crate) fn until_closed<F>(close: CancellationToken, fut: F) -> impl Future<Output = Result<()>>
where
    F: Future<Output = Result<()>>,
{
    fut.with_cancellation_token_owned(close)
        .map(|finished| finished.unwrap_or(Ok(())))
}
// ANCHOR_END: spawn_and_log_error

#[cfg(test)]
mod tests {
    use super::*;

    /// `until_closed` holds the future it wraps once: every connection's task is about the
    /// size of its own state, not two or four times that.
    #[test]
    fn until_closed_holds_the_future_once() {
        let big = async {
            let state = [1u8; 4096];
            tokio::task::yield_now().await;
            assert_eq!(state[4095], 1);
            Ok(())
        };
        let alone = std::mem::size_of_val(&big);
        let wrapped = std::mem::size_of_val(&until_closed(CancellationToken::new(), big));
        assert!(alone >= 4096);
        assert!(
            wrapped < alone + 256,
            "a {alone}-byte future takes {wrapped} bytes once wrapped"
        );
    }
}
