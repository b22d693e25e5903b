//! The writer task of a connection: writes the lines the broker queues for one client, in
//! batches, each write within the stall timeout; then, if its reader handed over, the error
//! line and a close in order.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedWrite, LinesCodec, LinesCodecError};

use crate::Result;
use crate::event::{ClientWriter, Handover, Queued};
use crate::reader::close_in_order;

// ANCHOR: writer_loop
/// How many bytes of lines a writer gathers into one write at most: hundreds of chat lines per
/// system call, and a small part of a sender's budget, so credit comes back in steady steps.
const BATCH_BYTES: usize = 16 * 1024;

// ANCHOR: stall
/// The error a writer ends with when its client took nothing for the stall timeout.
#[derive(Debug)]
pub(crate) struct TooSlow(Duration);

impl fmt::Display for TooSlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a write made no progress for {:?}", self.0)
    }
}

impl std::error::Error for TooSlow {}

/// Runs one step of writing to a client, a line into the codec's buffer (which writes the
/// buffer out once it holds 8 KiB) or a flush, and gives up after `stall_timeout`: a client
/// that reads takes a few KiB in far less, whatever anyone sends it.
async fn write_in_time<F>(write: F, stall_timeout: Duration) -> Result<()>
where
    F: Future<Output = std::result::Result<(), LinesCodecError>>,
{
    // ANCHOR: exercise_stall
    // Give the write at most `stall_timeout`, then give up with `TooSlow`.
    // Use `tokio::time::timeout`: `Ok` holds the write's own result (its error becomes ours
    // with `?`); `Err` means the time ran out, and dropping the write cancels it.
    match tokio::time::timeout(stall_timeout, write).await {
        Ok(written) => Ok(written?),
        Err(_elapsed) => Err(TooSlow(stall_timeout).into()),
    }
    // ANCHOR_END: exercise_stall
}
// ANCHOR_END: stall

/// Writes every message the broker routes to one peer, in order, to its socket, then closes
/// the connection.
///
/// It ends when its reader ends because the client left (`reader_gone` fails), when its
/// channel closes (the broker dropped the sender) or when a write fails. Once the reader has
/// stopped and handed over its half (at shutdown, or after a broken rule), it writes until the
/// broker closes its channel, then the reader's `error:` line if there is one, then closes in
/// order. (And it ends at once, wherever it is, when the connection's `close` token is
/// cancelled: the caller runs it under `until_closed`.) Every write must make progress within
/// `stall_timeout`, or the writer ends with [`TooSlow`].
pub(crate) async fn writer_loop(
    messages: &mut mpsc::UnboundedReceiver<Queued>,
    stream: ClientWriter,
    mut reader_gone: oneshot::Receiver<Handover>,
    stall_timeout: Duration,
) -> Result<()> {
    // The slot stays taken until this function returns and the socket is dropped.
    let ClientWriter { stream, _slot } = stream;
    // The encoder appends the `\n` to each line.
    let mut lines = FramedWrite::new(stream, LinesCodec::new());
    // ANCHOR: writer_drain
    // Once our reader has stopped, the broker may still route us messages it read before:
    // lines read before the shutdown, or before the client's bad line. So from then on we
    // write until the broker closes our channel.
    let mut handover = None;
    loop {
        tokio::select! {
            // `biased`: the branches are polled in this order, not at random.
            biased;
            // A queued message is always written first.
            message = messages.recv() => match message {
                Some(message) => {
                    // ANCHOR: batch
                    // What else is queued goes out in the same write, up to `BATCH_BYTES`: one
                    // system call for many lines. A writer that made one per line would hold
                    // its senders up for nothing. The credit of the lines comes back once they
                    // are written (the `Vec` is dropped at the end of this block).
                    let mut batch = 0;
                    let mut paid = Vec::new();
                    let mut next = Some(message);
                    while let Some(Queued { line, credit }) = next {
                        batch += line.len() + 1;
                        write_in_time(lines.feed(line), stall_timeout).await?;
                        paid.push(credit);
                        next = if batch < BATCH_BYTES { messages.try_recv().ok() } else { None };
                    }
                    write_in_time(SinkExt::<String>::flush(&mut lines), stall_timeout).await?;
                    // ANCHOR_END: batch
                }
                None => break,
            },
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
    // The broker closes our channel only after the reader has stopped: on its `Leave`, which
    // it sends after handing over, or at the end of the server, after every reader. So if we
    // left the loop that way before looking at `reader_gone`, its answer is already there.
    let Some(Handover {
        input,
        farewell,
        linger,
    }) = handover.or_else(|| reader_gone.try_recv().ok())
    else {
        // The client left: nothing to say, nothing to wait for.
        lines.into_inner().shutdown().await?;
        return Ok(());
    };
    // The client broke a rule: it has had everything routed to it before its bad line; now
    // the error, and the end.
    if let Some(farewell) = farewell {
        write_in_time(lines.send(farewell), stall_timeout).await?;
    }
    close_in_order(lines.into_inner(), Some(input), linger).await;
    // ANCHOR_END: farewell
    Ok(())
}
// ANCHOR_END: writer_loop
