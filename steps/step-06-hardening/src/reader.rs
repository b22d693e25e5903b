//! The reader task of a connection: the login with its deadline, then message lines, each
//! checked against the rules and paid for with the sender's credit before it goes to the broker.
//! A client that breaks a rule is refused with one line and closed in order: before login by
//! the reader itself, after login through its writer.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::config::{Config, INVALID_NAME, LOGIN_TIMED_OUT, NAME_TAKEN, line_cost, refusal};
use crate::event::{ClientWriter, Event, Handover, Login, Sender};
use crate::protocol::{Message, accept_message, parse_login};

// ANCHOR: connection_loop
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

/// Sending to the broker fails only if it is gone, which cannot happen while we hold a sender
/// unless it panicked; then the error ends this connection and is logged. (The event itself,
/// which may hold a socket, is not `Sync` and cannot travel inside the error.)
const BROKER_GONE: &str = "the broker is gone";

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
    // `LinesCodec` splits the byte stream at `\n` (dropping a `\r` before it) and checks that
    // each line is UTF-8. With a maximum it never buffers more than `max_line_len` bytes of
    // one line: past that, it reports `MaxLineLengthExceeded`.
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(config.max_line_len));
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

    // ANCHOR: credit
    // This client's credit: the bytes of its lines that may wait, queued for others and not
    // yet written to their sockets.
    let credit = Arc::new(Semaphore::new(config.sender_budget));
    // ANCHOR_END: credit
    let farewell = loop {
        tokio::select! {
            // Shutdown is checked first, so a client that keeps sending cannot keep its
            // reader going once the signal is out: every line after it stays unread.
            biased;
            () = shutdown.cancelled() => {
                eprintln!("{name}: stopped reading, shutting down");
                break None;
            }
            line = lines.next() => match line {
                Some(Ok(line)) => match accept_message(&line) {
                    // ANCHOR: pay
                    // The line is paid for before it goes: one share of `line_cost` per
                    // distinct destination (a name written twice is delivered once). Without
                    // the credit we wait, and so does this client's input: the flooder is
                    // slowed to the pace its recipients read at. The credit comes back as
                    // their writers write, or at once for a name nobody has.
                    Ok(Some(Message { dest, text })) => {
                        let distinct = dest
                            .iter()
                            .enumerate()
                            .filter(|&(i, name)| !dest[..i].contains(name))
                            .count();
                        let cost = distinct * line_cost(&name, &text);
                        // Fits: at most `MAX_DESTINATIONS` lines of the longest kind, which
                        // `Config::validate` checked is within the budget and a `u32`.
                        let cost = u32::try_from(cost).expect("validated: cost <= budget");
                        // Never fails: nobody closes this semaphore.
                        let credit = Arc::clone(&credit)
                            .acquire_many_owned(cost)
                            .await
                            .map_err(|_| "the credit was closed")?;
                        // `send` waits while the broker's queue is full: this client is not
                        // read meanwhile, which is the backpressure we want.
                        broker
                            .send(Event::Message {
                                from: name.clone(),
                                dest,
                                text,
                                credit,
                            })
                            .await
                            .map_err(|_| BROKER_GONE)?;
                    }
                    // ANCHOR_END: pay
                    Ok(None) => eprintln!("{name}: ignored a line without ':'"),
                    // A line that breaks a rule of its own ends the connection, as a line
                    // the codec refuses does (below).
                    Err(error) => {
                        eprintln!("{name}: {error}; closing the connection");
                        break Some(error);
                    }
                },
                // ANCHOR: bad_line
                Some(Err(e)) => match refusal(&e) {
                    Some(error) => {
                        eprintln!("{name}: {error}; closing the connection");
                        break Some(error);
                    }
                    None => return Err(e.into()),
                },
                // ANCHOR_END: bad_line
                None => {
                    eprintln!("{name} disconnected");
                    return Ok(());
                }
            },
        }
    };
    // ANCHOR: hand_over
    // We stopped reading, for the shutdown or for a broken rule. What the client sends from
    // now on stays unread: the writer takes our half of the socket, to read and discard it
    // when it closes the connection. (The send fails only if the writer has ended already:
    // then the half is dropped here.)
    let leaving = farewell.is_some();
    let input = Box::new(lines.into_inner());
    let _ = hand_over.send(Handover {
        input,
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
