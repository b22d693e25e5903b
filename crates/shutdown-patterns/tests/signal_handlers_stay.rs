//! A real signal sent after its listener is gone. Alone in its own test binary: without the
//! handler tokio installed, this signal would end the whole test process.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::send_to_self;
use shutdown_patterns::when::Signals;

/// Once installed, a signal handler stays after every listener is dropped: a later SIGTERM no
/// longer kills the process (here, the test process goes on and the test passes).
#[tokio::test]
async fn handlers_stay_installed_after_the_listener_is_dropped() {
    let signals = Signals::install().expect("signal handlers install");
    drop(signals);
    send_to_self(libc::SIGTERM);
    // Give the signal time to arrive; with the default action it would end the process here.
    tokio::time::sleep(Duration::from_millis(200)).await;
}
