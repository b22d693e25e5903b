//! What `select!` does to the branches that lose: it drops their futures. These functions put
//! operations that are, and are not, cancel safe into a `select!` beside a ticking timer (a
//! heartbeat, a deadline check), so the tests can show what each one loses.

use std::io;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use crate::TICK;

// ANCHOR: read_line_in_select
/// Reads one line while a timer ticks. Wrong: every tick drops the `read_line` future, and
/// the bytes it had already taken from the reader are dropped with it.
pub async fn read_line_with_ticks<R: AsyncRead + Unpin>(reader: R) -> io::Result<String> {
    let mut reader = BufReader::new(reader);
    let mut interval = time::interval(TICK);
    let mut line = String::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            read = reader.read_line(&mut line) => {
                read?;
                return Ok(line);
            }
        }
    }
}
// ANCHOR_END: read_line_in_select

// ANCHOR: framed_in_select
/// The same with `FramedRead`. A half-received line waits in the `FramedRead`'s own buffer,
/// which outlives every `next()` future, so a tick loses nothing.
pub async fn next_line_with_ticks<R: AsyncRead + Unpin>(
    reader: R,
) -> Option<Result<String, LinesCodecError>> {
    let mut lines = FramedRead::new(reader, LinesCodec::new());
    let mut interval = time::interval(TICK);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            line = lines.next() => return line,
        }
    }
}
// ANCHOR_END: framed_in_select

// ANCHOR: write_all_in_select
/// Writes `data` while a timer ticks. Wrong: a tick can drop `write_all` after it wrote part
/// of `data`, and the next round starts again from the first byte.
pub async fn write_all_with_ticks<W: AsyncWrite + Unpin>(
    writer: &mut W,
    data: &[u8],
) -> io::Result<()> {
    let mut interval = time::interval(TICK);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            written = writer.write_all(data) => return written,
        }
    }
}
// ANCHOR_END: write_all_in_select

// ANCHOR: pinned_write_all
/// Right: create the `write_all` future once, pin it, and poll the same future in every
/// round. Losing a round now only pauses it; nothing is dropped until it completes.
pub async fn pinned_write_all_with_ticks<W: AsyncWrite + Unpin>(
    writer: &mut W,
    data: &[u8],
) -> io::Result<()> {
    let mut interval = time::interval(TICK);
    let write = writer.write_all(data);
    tokio::pin!(write);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            written = &mut write => return written,
        }
    }
}
// ANCHOR_END: pinned_write_all

// ANCHOR: send_in_select
/// Offers `value` to a bounded channel for at most `patience`. Wrong: if the channel stays
/// full, the timer wins, the `send` future is dropped, and `value` inside it.
pub async fn send_or_give_up<T>(tx: &mpsc::Sender<T>, value: T, patience: Duration) -> bool {
    tokio::select! {
        sent = tx.send(value) => sent.is_ok(),
        () = time::sleep(patience) => false,
    }
}
// ANCHOR_END: send_in_select

// ANCHOR: reserve_in_select
/// Right: wait for a free slot with `reserve`, which holds no value. If the timer wins, only
/// the place in the queue is lost, and `value` goes back to the caller.
pub async fn send_or_give_back<T>(
    tx: &mpsc::Sender<T>,
    value: T,
    patience: Duration,
) -> Result<(), T> {
    tokio::select! {
        permit = tx.reserve() => match permit {
            Ok(permit) => {
                permit.send(value);
                Ok(())
            }
            // The receiver is gone.
            Err(_) => Err(value),
        },
        () = time::sleep(patience) => Err(value),
    }
}
// ANCHOR_END: reserve_in_select
