//! Telling tasks to stop with a `watch` channel: it holds a *state* (`true` once we are
//! stopping), so a task that looks late still sees it.

use tokio::sync::watch;
use tokio::time;

use crate::{TICK, clean_up};

// ANCHOR: worker
/// Works once per tick until the watched flag is `true`, cleans up, and returns its ticks.
pub async fn worker(mut stopping: watch::Receiver<bool>) -> u32 {
    let mut ticks = 0;
    let mut interval = time::interval(TICK);
    loop {
        tokio::select! {
            _ = interval.tick() => ticks += 1,
            // `wait_for` checks the current value first, so a worker that starts after the
            // flag was set stops at once. An error means the sender is gone: stop as well.
            _ = stopping.wait_for(|&stop| stop) => break,
        }
    }
    clean_up().await;
    ticks
}
// ANCHOR_END: worker

// ANCHOR: tell
/// Sets the flag. `send_replace`, not `send`: `send` fails, and stores nothing, when no
/// receiver exists at that moment, so a worker subscribing later would never see it.
pub fn tell(stopping: &watch::Sender<bool>) {
    stopping.send_replace(true);
}
// ANCHOR_END: tell
