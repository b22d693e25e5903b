//! Real signals sent to this test process. Alone in its own test binary, because a signal
//! reaches every listener in the process, and other tests' listeners would hear it too.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::send_to_self;
use shutdown_patterns::when::{Reason, shutdown_requests};
use tokio::time::timeout;

/// SIGTERM and SIGINT, sent for real, arrive as reasons to stop instead of killing the process.
#[tokio::test]
async fn signals_become_reasons() {
    for (signal, reason) in [
        (libc::SIGTERM, Reason::Terminate),
        (libc::SIGINT, Reason::Interrupt),
    ] {
        // The handlers are installed when `shutdown_requests` returns, so sending right away
        // is safe: without them, this signal would end the test run.
        let (_trigger, mut requests) = shutdown_requests().expect("signal handlers install");
        send_to_self(signal);
        let got = timeout(Duration::from_secs(5), requests.recv()).await;
        assert_eq!(
            got,
            Ok(Some(reason)),
            "signal {signal} did not become a reason"
        );
    }
}
