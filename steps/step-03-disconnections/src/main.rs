//! The step-03 binary: binds the address from the command line, says it is ready, serves.

use tokio::net::TcpListener;

// ANCHOR: main
#[tokio::main]
async fn main() -> step_03::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listener = TcpListener::bind(&addr).await?;
    // Tests and scripts wait for this exact line before they connect.
    println!("listening on {}", listener.local_addr()?);
    // This step has no shutdown: it serves until the process is killed.
    step_03::run(listener, std::future::pending()).await
}
// ANCHOR_END: main
