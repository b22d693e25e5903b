//! The tools of a graceful shutdown, one small module each, so the "Graceful shutdown patterns"
//! chapter can show every tool as compiled code and every claim it makes as a test.
//!
//! A graceful shutdown has three parts:
//! - [`when`]: deciding *when* to stop (signals, and other triggers funneled into one channel);
//! - *telling* every task to stop: the older tools in [`tell_broadcast`] and [`tell_watch`],
//!   today's in [`tell_token`];
//! - *waiting* for the tasks to finish: the older tool in [`wait_mpsc`], today's in
//!   [`wait_tracker`].
//!
//! [`together`] puts each generation's tools side by side; [`cancel_safety`] backs the
//! "`select!` and cancel safety" reference page.

pub mod cancel_safety;
pub mod tell_broadcast;
pub mod tell_token;
pub mod tell_watch;
pub mod together;
pub mod wait_mpsc;
pub mod wait_tracker;
#[cfg(unix)]
pub mod when;

use std::time::Duration;

/// How often the example workers do a unit of work.
pub const TICK: Duration = Duration::from_millis(100);

/// What an example worker does on its way out, after it was told to stop: in a real program,
/// flushing a buffer or saying goodbye to a client. It takes one [`TICK`], so a test can tell
/// "waited for the workers" (the caller returns one tick after the stop) from "did not wait".
pub async fn clean_up() {
    tokio::time::sleep(TICK).await;
}
