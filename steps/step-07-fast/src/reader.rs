//! The reader task of one connection: it reads the client's name, asks the broker for it, then
//! hands the broker every complete line of one read in one event, paid for with the client's
//! credit. Here too: the lingering close that the reader and the writer share.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;

use crate::config::{
    BUSY_READ_BUFFER, Config, INVALID_NAME, LOGIN_TIMED_OUT, NAME_TAKEN, READ_BUFFER, Result,
    refusal,
};
use crate::event::{ClientWriter, Event, Handover, Login, Sender};
use crate::lines::take_lines;
use crate::outbox::batch_cost;
use crate::protocol::parse_login;

// ANCHOR: connection_loop
/// Who a connection is and how it is told to stop.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Tells this session apart from earlier and later ones with the same name.
    pub(crate) id: u64,
    /// Cancelled when the server's graceful shutdown begins.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when this connection must end now: the broker found it too slow, or the
    /// grace period is over.
    pub(crate) close: CancellationToken,
    pub(crate) config: Config,
}

/// Sending to the broker fails only if it is gone, which cannot happen while we hold a sender
/// unless it panicked; then the error ends this connection and is logged. (The event itself,
/// which may hold a socket, is not `Sync` and cannot travel inside the error.)
const BROKER_GONE: &str = "the broker is gone";

// ANCHOR: close_in_order
/// Closes a connection without losing what we wrote to it: a lingering close.
///
/// Closing a socket while some of the client's bytes are still unread makes the kernel answer
/// with RST instead of FIN, and a reset throws away whatever we wrote that the client had not
/// received yet. So we first shut down our writing direction (FIN: the client reads everything
/// we sent, then the end), then read and discard what the client still sends until it closes
/// its side, and only then let the socket go. `linger`, counted from the FIN, bounds the wait
/// for a client that never closes. `input` is `None` when the client left: nothing more comes.
pub(crate) async fn close_in_order<W, R>(mut output: W, input: Option<R>, linger: Duration)
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    // Fails only if the connection is broken already: then there is nothing left to save.
    if output.shutdown().await.is_err() {
        return;
    }
    if let Some(mut input) = input {
        let mut sink = tokio::io::sink();
        // Ends at the client's EOF, at a read error, or after `linger`: all three mean done.
        let discard = tokio::io::copy(&mut input, &mut sink);
        let _ = tokio::time::timeout(linger, discard).await;
    }
}
// ANCHOR_END: close_in_order

/// Writes `error` to a client we are not serving and closes the connection in order.
pub(crate) async fn refuse<W, R>(
    mut output: W,
    input: R,
    error: &str,
    linger: Duration,
) -> Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    eprintln!("refused a client: {error}");
    output.write_all(format!("{error}\n").as_bytes()).await?;
    close_in_order(output, Some(input), linger).await;
    Ok(())
}

/// Reads one client: its login line, then message lines until it disconnects, breaks a rule
/// or shutdown begins, and turns them into events for the broker. The writing half goes to
/// the broker, which hands it to the peer's writer task along with the receiving end of the
/// reader's farewell oneshot and the connection's tokens.
pub(crate) async fn connection_loop<S>(
    broker: Sender<Event>,
    stream: S,
    slot: OwnedSemaphorePermit,
    connection: Connection,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Connection {
        id,
        shutdown,
        close,
        config,
    } = connection;
    // The halves can move into different tasks: this one reads, the writer task writes.
    let (reader, writer) = tokio::io::split(stream);
    let writer = ClientWriter {
        stream: Box::new(writer),
        _slot: slot,
    };
    // ANCHOR: line_limit
    // For the login line, `LinesCodec` splits the byte stream at `\n` (dropping a `\r` before
    // it) and checks that the line is UTF-8. With a maximum it never buffers more than
    // `max_line_len` bytes of one line: past that, it reports `MaxLineLengthExceeded`. (After
    // the login, `take_lines` checks the same two rules, and those of message lines.)
    // ANCHOR: read_buffer
    // The buffer starts at `READ_BUFFER` bytes instead of `FramedRead::new`'s 8 KiB: an idle
    // client costs that much. It grows to hold a long line, and a client that sends in bulk
    // gets more room (`BUSY_READ_BUFFER`, below).
    let mut lines = FramedRead::with_capacity(
        reader,
        LinesCodec::new_with_max_length(config.max_line_len),
        READ_BUFFER,
    );
    // ANCHOR_END: read_buffer
    // ANCHOR_END: line_limit
    // ANCHOR: reader_shutdown
    // ANCHOR: login
    // A client that never sends its name must not hold up the shutdown, nor a slot for ever.
    let first_line = tokio::select! {
        // `biased`: look at the shutdown first.
        biased;
        // Nobody is writing to this client yet: we close it in order ourselves.
        () = shutdown.cancelled() => {
            close_in_order(writer.stream, Some(lines.into_inner()), config.linger).await;
            return Ok(());
        }
        line = tokio::time::timeout(config.login_timeout, lines.next()) => line,
    };
    // Until the broker has the writing half, this task is the only one that writes to the
    // client: it answers a bad login line itself.
    let linger = config.linger;
    let name = match first_line {
        Err(_elapsed) => {
            return refuse(writer.stream, lines.into_inner(), LOGIN_TIMED_OUT, linger).await;
        }
        Ok(None) => return Err("peer disconnected before sending a name".into()),
        Ok(Some(Err(e))) => match refusal(&e) {
            Some(error) => return refuse(writer.stream, lines.into_inner(), error, linger).await,
            None => return Err(e.into()),
        },
        Ok(Some(Ok(line))) => match parse_login(&line) {
            Some(name) => name,
            None => {
                return refuse(writer.stream, lines.into_inner(), INVALID_NAME, linger).await;
            }
        },
    };
    // ANCHOR_END: login
    // ANCHOR_END: reader_shutdown
    // ANCHOR: shutdown_sender
    // The reader's last word to its writer. Dropping the sender (on return, on `?`, on a
    // panic) says "the client left: stop". Sending a `Handover` says "I stopped reading (for
    // the shutdown, or because the client broke a rule): write what is owed, then close in
    // order", and hands over the reading half for that.
    let (hand_over, reader_gone) = oneshot::channel::<Handover>();
    // ANCHOR_END: shutdown_sender
    // ANCHOR: join
    // The broker answers whether the name is free, and we wait for the answer before reading
    // on: a client refused as `bob` must not get a single line routed as `bob`. The broker
    // never waits for us, so waiting for it cannot deadlock.
    let (answer, answered) = oneshot::channel();
    broker
        .send(Event::NewPeer {
            name: name.clone(),
            id,
            stream: writer,
            reader_gone,
            close,
            login: answer,
        })
        .await
        .map_err(|_| BROKER_GONE)?;
    match answered.await {
        Ok(Login::Accepted) => eprintln!("{name} logged in"),
        // The broker gave the writing half back: we answer, as for any bad login.
        Ok(Login::Taken(writer)) => {
            return refuse(writer.stream, lines.into_inner(), NAME_TAKEN, linger).await;
        }
        Err(_) => return Err("the broker dropped the login".into()),
    }
    // ANCHOR_END: join

    // ANCHOR: send_line
    // From here on the reader takes its client's bytes in bulk: every complete line that one
    // read brings goes to the broker in one event. (`FramedRead` read the login line and may
    // have read past it: those bytes are the start of the buffer.)
    let parts = lines.into_parts();
    let mut reader = parts.io;
    let mut buffer = parts.read_buf.to_vec();
    let from: Arc<str> = Arc::from(name.as_str());
    let mut room = READ_BUFFER;
    let mut stopping = std::pin::pin!(shutdown.cancelled());
    let mut ended = false;
    // This client's credit, as in step 06.
    let credit = Arc::new(Semaphore::new(config.sender_budget));
    let farewell = loop {
        let (lines, broken) = take_lines(&mut buffer, config.max_line_len);
        let mut lines = lines.unwrap_or_default();
        // ANCHOR: pay
        // The lines are paid for before they go, as many per event as the budget pays for
        // (all of them, unless the client floods): without the credit we wait, and so does
        // this client's input.
        while !lines.is_empty() {
            let (cost, end) = batch_cost(&from, &lines, config.sender_budget);
            let rest = lines.split_off(end);
            // Fits: `batch_cost` stays within the budget, which `Config::validate` checked
            // is a `u32`, or costs one line, which the budget pays for.
            let cost = u32::try_from(cost).expect("validated: cost <= budget");
            // Never fails: nobody closes this semaphore.
            let credit = Arc::clone(&credit)
                .acquire_many_owned(cost)
                .await
                .map_err(|_| "the credit was closed")?;
            // `send` waits while the broker's queue is full: this client is not read
            // meanwhile, which is the backpressure we want.
            broker
                .send(Event::Lines {
                    from: Arc::clone(&from),
                    lines,
                    credit,
                })
                .await
                .map_err(|_| BROKER_GONE)?;
            lines = rest;
        }
        // ANCHOR_END: pay
        // ANCHOR: bad_line
        // The lines before the one that broke a rule are on their way; this one and
        // everything after it are not.
        if let Some(error) = broken {
            eprintln!("{name}: {error}; closing the connection");
            break Some(error);
        }
        // ANCHOR_END: bad_line
        if ended {
            eprintln!("{name} disconnected");
            return Ok(());
        }
        // ANCHOR: busy_read_buffer
        // The room for the next read. A read that filled all the room it had may have left
        // more in the socket: the client sends faster than we read, and gets room for many
        // lines per read. A client that sends a line now and then keeps a small buffer.
        buffer.reserve(room);
        let offered = buffer.capacity() - buffer.len();
        // ANCHOR_END: busy_read_buffer
        tokio::select! {
            // Shutdown is checked first, so a client that keeps sending cannot keep its
            // reader going once the signal is out: every line after it stays unread.
            biased;
            () = &mut stopping => {
                eprintln!("{name}: stopped reading, shutting down");
                break None;
            }
            // Cancel safe: if shutdown wins, nothing was read.
            read = reader.read_buf(&mut buffer) => match read? {
                // The end of the stream. A last line without `\n` still counts, as it did
                // for `LinesCodec`.
                0 => {
                    if !buffer.is_empty() {
                        buffer.push(b'\n');
                    }
                    ended = true;
                }
                n => room = if n == offered { BUSY_READ_BUFFER } else { READ_BUFFER },
            },
        }
    };
    // ANCHOR_END: send_line
    // ANCHOR: hand_over
    // We stopped reading, for the shutdown or for a broken rule. What the client sends from
    // now on stays unread: the writer takes our half of the socket, to read and discard it
    // when it closes the connection. (The send fails only if the writer has ended already:
    // then the half is dropped here.)
    let leaving = farewell.is_some();
    let _ = hand_over.send(Handover {
        input: Box::new(reader),
        farewell,
        linger,
    });
    // The lines read before the bad one are on their way through the broker, to every
    // recipient and perhaps to this client too. `Leave` follows them on the same channel: when
    // the broker gets to it, it has routed them all, and it closes our queue, so the writer
    // writes them before the error line. (At shutdown the broker closes every queue anyway.)
    if leaving {
        broker
            .send(Event::Leave { name, id })
            .await
            .map_err(|_| BROKER_GONE)?;
    }
    // ANCHOR_END: hand_over
    Ok(())
}
// ANCHOR_END: connection_loop

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// The server's end of a pipe that records, for each read that brings bytes, how much
    /// room the reader offered.
    struct RoomRecorder {
        inner: tokio::io::DuplexStream,
        rooms: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl AsyncRead for RoomRecorder {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let room = buf.remaining();
            let before = buf.filled().len();
            let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                // Only this test's tasks touch the list, and none of them panics holding it.
                self.rooms.lock().expect("not poisoned").push(room);
            }
            polled
        }
    }

    impl AsyncWrite for RoomRecorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A client that logs in and sends a line now and then is read with the small buffer; one
    /// that sends lines in bulk gets room for many per read: 1 000 messages sent at once
    /// (16 000 bytes) take a handful of reads, where 512 bytes of room take 32.
    #[tokio::test]
    async fn talking_clients_get_a_bigger_read_buffer() {
        let (mut client, served) = tokio::io::duplex(64 * 1024);
        let rooms = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stream = RoomRecorder {
            inner: served,
            rooms: Arc::clone(&rooms),
        };
        let (events, mut received) = mpsc::channel(2048);
        let slot = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a fresh semaphore has room");
        let connection = Connection {
            id: 1,
            shutdown: CancellationToken::new(),
            close: CancellationToken::new(),
            config: Config::default(),
        };
        let reader = tokio::spawn(connection_loop(events, stream, slot, connection));

        client
            .write_all(b"alice\n")
            .await
            .expect("the pipe is open");
        let Some(Event::NewPeer { login, stream, .. }) = received.recv().await else {
            panic!("the reader should ask the broker to log alice in");
        };
        login
            .send(Login::Accepted)
            .expect("the reader waits for the answer");
        let login_rooms = rooms.lock().expect("not poisoned").clone();
        assert!(
            login_rooms.iter().all(|&room| room <= READ_BUFFER),
            "the login was read with {login_rooms:?} bytes of room"
        );

        // One line alone: it does not make the client a bulk sender.
        client
            .write_all(b"bob: hi\n")
            .await
            .expect("the pipe is open");
        let event = tokio::time::timeout(Duration::from_secs(5), received.recv()).await;
        assert!(
            matches!(&event, Ok(Some(Event::Lines { lines, .. })) if lines == "bob: hi\n"),
            "the line should reach the broker"
        );

        let message = b"bob: 0123456789\n";
        client
            .write_all(&message.repeat(1000))
            .await
            .expect("the pipe has room for all of it");
        let mut routed = String::new();
        while routed.len() < message.len() * 1000 {
            match tokio::time::timeout(Duration::from_secs(5), received.recv()).await {
                Ok(Some(Event::Lines { lines, .. })) => routed.push_str(&lines),
                other => panic!("each line should reach the broker, got {other:?}"),
            }
        }
        assert_eq!(
            routed.as_bytes(),
            message.repeat(1000),
            "lines lost or reordered"
        );
        let rooms = rooms.lock().expect("not poisoned").clone();
        let (quiet, bulk) = rooms.split_at(login_rooms.len() + 1);
        assert!(
            quiet
                .iter()
                .chain(&bulk[..1])
                .all(|&room| room <= READ_BUFFER),
            "a client that sent one line got a bigger buffer: reads offered {rooms:?} bytes"
        );
        assert!(
            bulk.len() <= 4,
            "{} bytes took {} reads, offering {bulk:?} bytes of room",
            message.len() * 1000,
            bulk.len()
        );
        drop((client, stream));
        let _ = reader.await;
    }
}
