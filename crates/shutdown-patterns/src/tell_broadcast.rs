//! Telling tasks to stop, the older way: a `broadcast` channel, wrapped in a small `Shutdown`
//! struct in the style of tokio's mini-redis.

use tokio::sync::broadcast;
use tokio::time;

use crate::{TICK, clean_up};

// ANCHOR: shutdown_struct
/// Listens for the shutdown notice on a broadcast channel.
///
/// A broadcast message is an *event*: each receiver gets it once, and a receiver subscribed
/// after it was sent never gets it. The `is_shutdown` flag remembers the event, so asking a
/// second time returns at once instead of waiting for a message that will not come again.
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notice: broadcast::Receiver<()>,
}

impl Shutdown {
    /// Wraps a receiver from `sender.subscribe()`.
    pub fn new(notice: broadcast::Receiver<()>) -> Shutdown {
        Shutdown {
            is_shutdown: false,
            notice,
        }
    }

    /// Whether the notice has been received.
    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Waits for the notice. Cancel safe, because `broadcast::Receiver::recv` is.
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        // A message, a closed channel (the sender was dropped) and a lag all mean "stop".
        let _ = self.notice.recv().await;
        self.is_shutdown = true;
    }
}
// ANCHOR_END: shutdown_struct

// ANCHOR: worker
/// Works once per tick until told to stop, cleans up, and returns how many ticks it worked.
pub async fn worker(mut shutdown: Shutdown) -> u32 {
    let mut ticks = 0;
    let mut interval = time::interval(TICK);
    while !shutdown.is_shutdown() {
        tokio::select! {
            _ = interval.tick() => ticks += 1,
            () = shutdown.recv() => {}
        }
    }
    clean_up().await;
    ticks
}
// ANCHOR_END: worker
