//! Test support shared by every step, exercise and tool of a-chat: run a server in-process on a
//! port-0 listener or as its real binary, connect clients, and read with a timeout.
//!
//! Every helper that waits has a deadline, and every failure is a sentence that says which
//! behaviour is missing ("bob: expected `from alice: hi` within 5 s, but nothing arrived"), so a
//! learner running an exercise's check knows what to fix without reading a backtrace.

mod binary;
mod client;
mod failure;
mod output;
pub mod scenarios;
mod server;

use std::time::Duration;

pub use binary::Binary;
pub use client::Client;
pub use failure::{BACKTRACE_VAR, SHUTDOWN_TIMEOUT, USUAL_CAUSES, short_panics};
pub use output::OutputLines;
pub use server::{Server, Shutdown, connected_pair, loopback_listener, start};

/// How long a helper waits for something that should happen: a line, an EOF, an exit.
/// Generous, because CI machines are slow and noisy; a test only waits this long when it fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a helper watches for something that must *not* happen (a line that should not be
/// delivered). Shorter than [`TIMEOUT`]: these tests pass by waiting it out.
pub const QUIET: Duration = Duration::from_millis(300);

/// Formats a duration for failure messages: `5 s`, `300 ms`.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}
