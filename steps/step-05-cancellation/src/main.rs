//! The step-05 binary: binds the address from the command line, installs the SIGINT and
//! SIGTERM handlers, says it is ready, and serves until either signal arrives; then it shuts
//! down gracefully and exits 0.

use std::future::Future;

use tokio::net::TcpListener;

// ANCHOR: main
#[tokio::main]
async fn main() -> step_05::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listener = TcpListener::bind(&addr).await?;
    // The handlers are installed here, before the readiness line: from that line on, both
    // signals mean a graceful shutdown.
    let shutdown = shutdown_signal()?;
    // Tests and scripts wait for this exact line before they connect.
    println!("listening on {}", listener.local_addr()?);
    step_05::run(listener, shutdown).await?;
    eprintln!("shut down cleanly");
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: signals
/// Completes when the process is asked to stop: Ctrl-C in a terminal (SIGINT), or SIGTERM, which
/// `kill`, systemd and container runtimes send. Both triggers funnel into one future.
///
/// Unlike `tokio::signal::ctrl_c()`, `signal(..)` installs its handler when it is called, so the
/// handlers exist when this function returns, before the future is ever polled.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => eprintln!("SIGINT received, shutting down"),
            _ = terminate.recv() => eprintln!("SIGTERM received, shutting down"),
        }
    })
}
// ANCHOR_END: signals

/// Windows has no SIGTERM: Ctrl-C only. `windows::ctrl_c()` too installs its handler when called.
#[cfg(windows)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut ctrl_c = tokio::signal::windows::ctrl_c()?;
    Ok(async move {
        ctrl_c.recv().await;
        eprintln!("Ctrl-C received, shutting down");
    })
}
