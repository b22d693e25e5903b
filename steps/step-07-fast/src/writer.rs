//! The writer task of one connection: it lets its queue fill, writes it a chunk at a time
//! within the stall timeout, and at the end writes the reader's farewell, if any, and closes
//! the connection in order.

use std::fmt;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::config::Result;
use crate::event::{ClientWriter, Handover};
use crate::outbox::{BATCH_BYTES, QueueReceiver};
use crate::reader::close_in_order;

// ANCHOR: writer_loop
/// The error a writer ends with when its client took nothing for the stall timeout.
#[derive(Debug)]
pub(crate) struct TooSlow(Duration);

impl fmt::Display for TooSlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a write made no progress for {:?}", self.0)
    }
}

impl std::error::Error for TooSlow {}

// ANCHOR: let_queue_fill
/// Gives the broker a chance to queue more lines before a batch is taken: yields to every
/// other task that is ready to run, and does it again for as long as the queue keeps growing
/// (up to [`BATCH_BYTES`]).
///
/// A writer woken for one line would otherwise write it with the few lines already behind
/// it, while the broker, on the other core, is still routing more to it: many small system
/// calls where one would do. At a light load nothing else is ready, the queue does not grow,
/// and the line waits one trip through the scheduler, a few microseconds.
async fn let_queue_fill(messages: &QueueReceiver) {
    // ANCHOR: exercise_let_queue_fill
    // Yield while the queue keeps growing, up to `BATCH_BYTES`; stop at the first look that
    // finds it no bigger. `tokio::task::yield_now().await` lets the broker run; compare
    // `messages.bytes()` before and after.
    let mut queued = messages.bytes();
    while queued < BATCH_BYTES {
        tokio::task::yield_now().await;
        let now = messages.bytes();
        if now == queued {
            break;
        }
        queued = now;
    }
    // ANCHOR_END: exercise_let_queue_fill
}
// ANCHOR_END: let_queue_fill

/// Writes every message the broker routes to one peer, in order, to its socket, then closes
/// the connection.
///
/// It ends when its reader ends because the client left (`reader_gone` fails), when its
/// queue closes (the broker dropped its end) or when a write fails. Once the reader has
/// stopped and handed over its half (at shutdown, or after a broken rule), it writes until the
/// broker closes its queue, then the reader's `error:` line if there is one, then closes in
/// order. (And it ends at once, wherever it is, when the connection's `close` token is
/// cancelled: the caller runs it under `until_closed`.)
pub(crate) async fn writer_loop(
    messages: &mut QueueReceiver,
    stream: ClientWriter,
    mut reader_gone: oneshot::Receiver<Handover>,
    stall_timeout: Duration,
) -> Result<()> {
    // The slot stays taken until this function returns and the socket is dropped. The lines
    // end in `\n` already: the writer writes their bytes as they are, with no codec and no
    // buffer of its own while it is idle.
    let ClientWriter { mut stream, _slot } = stream;
    // ANCHOR: writer_drain
    // Once our reader has stopped, the broker may still route us messages it read before:
    // lines read before the shutdown, or before the client's bad line. So from then on we
    // write until the broker closes our queue.
    let mut handover = None;
    loop {
        tokio::select! {
            // `biased`: the branches are polled in this order, not at random.
            biased;
            // A queued message is always written first.
            () = messages.ready() => {
                // ANCHOR: batch
                let_queue_fill(messages).await;
                // One write per chunk, until the queue is empty.
                let closed = loop {
                    let (chunk, closed) = messages.take();
                    let Some(chunk) = chunk else { break closed };
                    // A chunk must go out within the stall timeout, or the client is too
                    // slow. (`flush` is a no-op on a TCP socket, which keeps no buffer of its
                    // own; needed for any stream that does.)
                    let write = async {
                        stream.write_all(&chunk.bytes).await?;
                        stream.flush().await
                    };
                    match tokio::time::timeout(stall_timeout, write).await {
                        Ok(written) => written?,
                        Err(_elapsed) => return Err(TooSlow(stall_timeout).into()),
                    }
                    // Written: dropping the chunk returns its credit to its senders.
                    drop(chunk);
                };
                // ANCHOR_END: batch
                if closed {
                    break;
                }
            }
            // `&mut`: the same receiver is polled on every turn instead of being moved into
            // the first one. Once it has answered, the precondition switches it off.
            reader_gone = &mut reader_gone, if handover.is_none() => match reader_gone {
                Ok(reader_stopped) => handover = Some(reader_stopped),
                // The sender was dropped without a word: the client left.
                Err(_) => break,
            },
        }
    }
    // ANCHOR_END: writer_drain
    // ANCHOR: farewell
    // The broker closes our queue only after the reader has stopped: on its `Leave`, which
    // it sends after handing over, or at the end of the server, after every reader. So if we
    // left the loop that way before looking at `reader_gone`, its answer is already there.
    let Some(Handover {
        input,
        farewell,
        linger,
    }) = handover.or_else(|| reader_gone.try_recv().ok())
    else {
        // The client left: nothing to say, nothing to wait for.
        stream.shutdown().await?;
        return Ok(());
    };
    // The client broke a rule: it has had everything routed to it before its bad line; now
    // the error, and the end.
    if let Some(farewell) = farewell {
        let line = format!("{farewell}\n");
        match tokio::time::timeout(stall_timeout, stream.write_all(line.as_bytes())).await {
            Ok(written) => written?,
            Err(_elapsed) => return Err(TooSlow(stall_timeout).into()),
        }
    }
    close_in_order(stream, Some(input), linger).await;
    // ANCHOR_END: farewell
    Ok(())
}
// ANCHOR_END: writer_loop

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncWrite;
    use tokio::sync::{OwnedSemaphorePermit, Semaphore};

    use super::*;
    use crate::outbox::{peer_queue, queue_cost};

    /// Credit from a semaphore of its own, for a test that does not look at it.
    fn free() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(0))
            .try_acquire_many_owned(0)
            .expect("no permits are needed")
    }

    /// A sink that records each write it is given, and takes all of it.
    #[derive(Default, Clone)]
    struct Recorder {
        writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            // Only the test's tasks touch the list, and none of them panics holding it.
            self.writes.lock().expect("not poisoned").clone()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.lock().expect("not poisoned").push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Runs a writer over `messages` into a recorder until its queue is closed; returns what
    /// it wrote, write by write.
    async fn run_writer(mut messages: QueueReceiver) -> Vec<Vec<u8>> {
        let out = Recorder::default();
        let slot = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a fresh semaphore has room");
        let stream = ClientWriter {
            stream: Box::new(out.clone()),
            _slot: slot,
        };
        // The reader stays "alive" for the whole test: its sender is kept here.
        let (_hand_over, reader_gone) = oneshot::channel();
        writer_loop(
            &mut messages,
            stream,
            reader_gone,
            Duration::from_secs(3600),
        )
        .await
        .expect("the recorder takes everything");
        out.writes()
    }

    /// Lines queued while the writer was away go out in one write, in order, and the writer
    /// ends once the queue is closed and written.
    #[tokio::test]
    async fn queued_lines_go_out_in_one_write() {
        let (queue, messages) = peer_queue();
        for i in 0..50 {
            queue
                .push("alice", &i.to_string(), free())
                .expect("the queue has room");
        }
        drop(queue);
        let writes = tokio::time::timeout(Duration::from_secs(5), run_writer(messages))
            .await
            .expect("the writer should end once its queue is closed");
        let expected: String = (0..50).map(|i| format!("from alice: {i}\n")).collect();
        assert_eq!(
            writes.len(),
            1,
            "50 queued lines took {} writes",
            writes.len()
        );
        assert_eq!(String::from_utf8_lossy(&writes[0]), expected);
    }

    /// A client far behind is written one chunk at a time: every write holds whole lines and
    /// at most [`BATCH_BYTES`], so the writer never has more than that in flight, and all the
    /// lines arrive, in order.
    #[tokio::test]
    async fn a_backlog_goes_out_a_chunk_at_a_time() {
        let text = |i: usize| format!("{i:0100}");
        let lines = 4 * BATCH_BYTES / queue_cost("alice", &text(0));
        let (queue, messages) = peer_queue();
        for i in 0..lines {
            queue
                .push("alice", &text(i), free())
                .expect("the queue has room");
        }
        drop(queue);
        let writes = tokio::time::timeout(Duration::from_secs(5), run_writer(messages))
            .await
            .expect("the writer should end once its queue is closed");
        for write in &writes {
            assert!(
                write.len() <= BATCH_BYTES && write.ends_with(b"\n"),
                "a write of {} bytes (at most {BATCH_BYTES}, whole lines)",
                write.len()
            );
        }
        let expected: String = (0..lines)
            .map(|i| format!("from alice: {}\n", text(i)))
            .collect();
        assert_eq!(String::from_utf8_lossy(&writes.concat()), expected);
    }

    /// A writer woken for one line lets its queue fill while the broker is still routing to
    /// it: `let_queue_fill` stays pending for as long as each look finds the queue grown, ends
    /// at the first look that finds nothing new (or at once when a batch is waiting), and the
    /// twenty lines that came meanwhile go into one write with the first. Polled by hand, so
    /// that no order of the scheduler is assumed: `yield_now` promises none.
    #[tokio::test]
    async fn a_writer_lets_its_queue_fill() {
        let (queue, messages) = peer_queue();
        queue
            .push("alice", "0", free())
            .expect("the queue has room");
        {
            let mut fill = std::pin::pin!(let_queue_fill(&messages));
            assert!(
                futures::poll!(fill.as_mut()).is_pending(),
                "it yields before it looks again"
            );
            for i in 1..=20 {
                queue
                    .push("alice", &i.to_string(), free())
                    .expect("the queue has room");
                assert!(
                    futures::poll!(fill.as_mut()).is_pending(),
                    "line {i} arrived while it waited: it waits again"
                );
            }
            assert!(
                futures::poll!(fill.as_mut()).is_ready(),
                "nothing new since the last look: it stops waiting"
            );
        }
        drop(queue);
        let writes = tokio::time::timeout(Duration::from_secs(5), run_writer(messages))
            .await
            .expect("the writer should end once its queue is closed");
        let expected: String = (0..=20).map(|i| format!("from alice: {i}\n")).collect();
        assert_eq!(
            String::from_utf8_lossy(&writes[0]),
            expected,
            "the first write should hold the line that woke the writer and the 20 queued \
             behind it (writes: {})",
            writes.len()
        );
        // A full batch does not wait at all.
        let (queue, messages) = peer_queue();
        let text = "x".repeat(BATCH_BYTES);
        queue
            .push("alice", &text, free())
            .expect("the queue has room");
        let mut fill = std::pin::pin!(let_queue_fill(&messages));
        assert!(futures::poll!(fill.as_mut()).is_ready());
    }
}
