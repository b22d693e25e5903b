//! The step-04 binary: binds the address from the command line, installs the Ctrl-C handler,
//! says it is ready, and serves until Ctrl-C; then it shuts down gracefully and exits 0.

use std::pin::pin;
use std::task::Poll;

use tokio::net::TcpListener;

// ANCHOR: main
#[tokio::main]
async fn main() -> step_04::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listener = TcpListener::bind(&addr).await?;

    // ANCHOR: signals
    // `ctrl_c()` installs tokio's SIGINT handler when it is first polled, not when it is
    // called; until then Ctrl-C kills the process on the spot. So we poll it once now, before
    // saying we are ready: from the readiness line on, Ctrl-C means a graceful shutdown.
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    let interrupted_already = match futures::poll!(ctrl_c.as_mut()) {
        Poll::Pending => false,
        Poll::Ready(Ok(())) => true,
        Poll::Ready(Err(e)) => return Err(format!("cannot listen for Ctrl-C: {e}").into()),
    };
    let shutdown = async move {
        // A finished future must not be polled again.
        if !interrupted_already {
            if let Err(e) = ctrl_c.await {
                eprintln!("listening for Ctrl-C failed: {e}");
            }
        }
        eprintln!("shutting down");
    };
    // ANCHOR_END: signals

    // Tests and scripts wait for this exact line before they connect.
    println!("listening on {}", listener.local_addr()?);
    step_04::run(listener, shutdown).await?;
    eprintln!("shut down cleanly");
    Ok(())
}
// ANCHOR_END: main
