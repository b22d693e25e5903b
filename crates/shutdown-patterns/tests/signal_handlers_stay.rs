//! A real signal sent after its listener is gone. Alone in its own test binary: without the
//! handler tokio installed, this signal would end the whole test process.
#![cfg(unix)]

use std::time::Duration;

use shutdown_patterns::when::Signals;

/// Once installed, a signal handler stays after every listener is dropped: a later SIGTERM no
/// longer kills the process (here, the test process goes on and the test passes).
#[tokio::test]
async fn handlers_stay_installed_after_the_listener_is_dropped() {
    let signals = Signals::install().expect("signal handlers install");
    drop(signals);
    // SAFETY: kill(2) with our own pid and a valid signal number has no memory effects.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(getpid(), SIGTERM) failed");
    // Give the signal time to arrive; with the default action it would end the process here.
    tokio::time::sleep(Duration::from_millis(200)).await;
}
