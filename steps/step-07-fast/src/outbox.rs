//! A peer's queue: the bytes waiting for one client, `from NAME: text\n` appended by the broker
//! and taken by the peer's writer a chunk at a time, each chunk holding its senders' credit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::config::MAX_DESTINATIONS;

// ANCHOR: line
/// Appends the line a recipient of `text` from `from` receives, `from NAME: text\n`, to the
/// bytes waiting for that recipient.
///
/// The broker calls it once per recipient, straight into the recipient's queue: no `String`
/// per message and no allocation per recipient, only bytes added to a buffer that grows
/// now and then.
pub fn append_message(queue: &mut Vec<u8>, from: &str, text: &str) {
    // Four `extend_from_slice`s and a `push`, no `format!` (which would build a String first).
    queue.extend_from_slice(b"from ");
    queue.extend_from_slice(from.as_bytes());
    queue.extend_from_slice(b": ");
    queue.extend_from_slice(text.as_bytes());
    queue.push(b'\n');
}
// ANCHOR_END: line

/// How many bytes a writer lets its queue gather before it takes them (see
/// [`let_queue_fill`]), and the size of the chunks it takes: enough for hundreds of chat
/// lines per system call, and small beside a sender's budget.
pub(crate) const BATCH_BYTES: usize = 16 * 1024;

// ANCHOR: peer_queue
/// What one line costs its sender's credit for one recipient: the bytes [`append_message`]
/// adds to the recipient's queue.
pub fn queue_cost(from: &str, text: &str) -> usize {
    "from : \n".len() + from.len() + text.len()
}

/// What the first of `lines` (each ending in `\n`) cost at most, together, for a client called
/// `from`, as many of them as `budget` pays for (always one at least): the credit to take,
/// and where the lines it pays for end.
///
/// An upper bound, found without parsing: each line costs [`queue_cost`] with its whole
/// text, untrimmed, for as many recipients as its destination list has commas plus one (at
/// most [`MAX_DESTINATIONS`]). The broker takes the exact share of each line it queues and
/// gives the rest back at once.
pub fn batch_cost(from: &str, lines: &str, budget: usize) -> (usize, usize) {
    let mut cost = 0;
    let mut end = 0;
    for line in lines.split_inclusive('\n') {
        let line_cost = match line.split_once(':') {
            Some((dest, text)) => {
                let names = dest.bytes().filter(|&b| b == b',').count() + 1;
                names.min(MAX_DESTINATIONS) * queue_cost(from, text)
            }
            // Not a message: it costs nothing.
            None => 0,
        };
        if end > 0 && cost + line_cost > budget {
            break;
        }
        cost += line_cost;
        end += line.len();
    }
    (cost, end)
}

/// The bytes waiting for one peer: the broker appends lines to them, the peer's writer takes
/// them a chunk at a time. Not bounded here: each line holds a share of its sender's credit
/// (see [`Config::sender_budget`]), returned when the chunk it is in has been written.
///
/// Shared by two tasks only, the broker and this peer's writer, behind a plain `Mutex`: each
/// holds it for a copy or a swap, never across an `await`. `ready` wakes the writer when the
/// bytes go from none to some.
#[derive(Debug, Default)]
struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
}

/// What an [`Outbox`]'s lock guards.
#[derive(Debug, Default)]
struct Pending {
    /// Lines not yet taken by the writer, each ending in `\n`, oldest first, in chunks of
    /// about [`BATCH_BYTES`]: the writer takes one chunk per write, so however far behind its
    /// client is, each write is small and returns its credit soon. A line never straddles two
    /// chunks.
    chunks: VecDeque<Chunk>,
    /// The bytes in `chunks`.
    queued: usize,
    /// The broker dropped its end: nothing more will be queued.
    closed: bool,
    /// The writer's end is gone: nobody will write what is queued.
    writer_gone: bool,
}

/// Lines for one write, with the credit they hold: one permit per run of lines from the same
/// sender (consecutive shares of one sender's credit are merged).
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub(crate) bytes: Vec<u8>,
    credit: Vec<OwnedSemaphorePermit>,
}

impl Outbox {
    /// The lock, poisoned or not: every change under it is an append, a pop or a flag, so a
    /// panic elsewhere cannot leave `Pending` half-changed.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pending {
    /// Appends `from NAME: text\n`, and the credit it holds, to the newest chunk, or starts a
    /// new chunk if the newest has no room left for it (or there is none).
    fn append(&mut self, from: &str, text: &str, credit: OwnedSemaphorePermit) {
        let cost = queue_cost(from, text);
        let chunk = match self.chunks.back_mut() {
            Some(chunk) if chunk.bytes.len() + cost <= BATCH_BYTES => chunk,
            _ => {
                self.chunks.push_back(Chunk::default());
                // Just pushed, so there is a last chunk.
                self.chunks.back_mut().expect("a chunk was just pushed")
            }
        };
        append_message(&mut chunk.bytes, from, text);
        match chunk.credit.last_mut() {
            Some(last) if Arc::ptr_eq(last.semaphore(), credit.semaphore()) => last.merge(credit),
            _ => chunk.credit.push(credit),
        }
        self.queued += cost;
    }
}

/// The broker's end of a peer's [`Outbox`].
#[derive(Debug)]
pub(crate) struct PeerQueue {
    outbox: Arc<Outbox>,
}

/// The writer's end of a peer's [`Outbox`].
#[derive(Debug)]
pub(crate) struct QueueReceiver {
    outbox: Arc<Outbox>,
}

/// A queue for one peer.
pub(crate) fn peer_queue() -> (PeerQueue, QueueReceiver) {
    let outbox = Arc::new(Outbox::default());
    let queue = PeerQueue {
        outbox: Arc::clone(&outbox),
    };
    (queue, QueueReceiver { outbox })
}

impl PeerQueue {
    /// Queues `from NAME: text\n` with the share of its sender's credit it holds. Never
    /// waits; fails only if the writer is gone (then the credit goes back at once).
    pub(crate) fn push(
        &self,
        from: &str,
        text: &str,
        credit: OwnedSemaphorePermit,
    ) -> std::result::Result<(), TrySendError<()>> {
        // ANCHOR: exercise_push
        // Queue the line with its credit.
        // Under the outbox's lock: `Closed` if the writer is gone; otherwise
        // `Pending::append` the line. After the lock is released, wake the writer with
        // `notify_one`, but only if nothing was queued before this line.
        let mut pending = self.outbox.lock();
        if pending.writer_gone {
            return Err(TrySendError::Closed(()));
        }
        let was_empty = pending.queued == 0;
        pending.append(from, text, credit);
        drop(pending);
        // Only the first line wakes the writer: the ones behind it find it awake.
        if was_empty {
            self.outbox.ready.notify_one();
        }
        Ok(())
        // ANCHOR_END: exercise_push
    }
}

impl Drop for PeerQueue {
    /// Closes the queue: the writer writes what is left, then ends.
    fn drop(&mut self) {
        self.outbox.lock().closed = true;
        self.outbox.ready.notify_one();
    }
}

impl Drop for QueueReceiver {
    /// Tells the broker nobody will write what it queues from now on.
    fn drop(&mut self) {
        self.outbox.lock().writer_gone = true;
    }
}

impl QueueReceiver {
    /// Waits until lines are queued or the queue is closed. Cancel safe: `notify_one` keeps a
    /// permit when nobody waits, so a wake-up that comes between two waits is not lost.
    pub(crate) async fn ready(&self) {
        self.outbox.ready.notified().await;
    }

    /// Takes the oldest chunk of queued lines, if any, and says whether the queue is closed
    /// (then, once the chunks run out, nothing more will come). Both are read under one lock:
    /// a line queued just before the close is never missed. The chunk's credit goes back to
    /// its senders when the writer drops it, once written.
    pub(crate) fn take(&self) -> (Option<Chunk>, bool) {
        let mut pending = self.outbox.lock();
        let chunk = pending.chunks.pop_front();
        pending.queued -= chunk.as_ref().map_or(0, |chunk| chunk.bytes.len());
        (chunk, pending.closed)
    }

    /// How many lines are waiting (for the log of a peer that leaves: it counts them).
    pub(crate) fn len(&self) -> usize {
        let pending = self.outbox.lock();
        let lines = |chunk: &Chunk| chunk.bytes.iter().filter(|&&byte| byte == b'\n').count();
        pending.chunks.iter().map(lines).sum()
    }

    /// The bytes waiting, as counted by [`queue_cost`].
    pub(crate) fn bytes(&self) -> usize {
        self.outbox.lock().queued
    }
}
// ANCHOR_END: peer_queue

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;

    /// A line's credit stays taken while it is queued and while its chunk is being written,
    /// and goes back to its sender when the chunk is dropped; a line refused because the
    /// writer is gone gives its credit back at once.
    #[test]
    fn credit_returns_when_written() {
        let credit = Arc::new(Semaphore::new(100));
        let share = |n| {
            Arc::clone(&credit)
                .try_acquire_many_owned(n)
                .expect("credit left")
        };
        let (queue, receiver) = peer_queue();
        for _ in 0..3 {
            queue
                .push("alice", "hi", share(10))
                .expect("the writer is there");
        }
        assert_eq!(credit.available_permits(), 70);
        let (chunk, closed) = receiver.take();
        let chunk = chunk.expect("three lines were queued");
        assert_eq!(chunk.bytes, b"from alice: hi\n".repeat(3));
        assert_eq!(chunk.credit.len(), 1, "shares of one sender are merged");
        assert!(!closed);
        assert_eq!(
            credit.available_permits(),
            70,
            "the chunk being written still holds it"
        );
        drop(chunk);
        assert_eq!(credit.available_permits(), 100);
        drop(receiver);
        assert!(matches!(
            queue.push("alice", "hi", share(10)),
            Err(TrySendError::Closed(()))
        ));
        assert_eq!(
            credit.available_permits(),
            100,
            "a line nobody will write kept its credit"
        );
    }
}
