//! Step 05: the final server. The same graceful shutdown as step 04, built on tokio-util's
//! `CancellationToken` (telling every task: a state that no task can miss) and `TaskTracker`
//! (waiting for every task). When shutdown begins the server stops accepting, readers stop
//! reading, every message already read is delivered, every socket is closed, and `run`
//! returns once every task is done.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// ANCHOR: result
/// Any error, boxed: enough for a server that logs errors rather than matching on them.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The `Result` every fallible function of this step returns.
pub type Result<T> = std::result::Result<T, Error>;
// ANCHOR_END: result

// ANCHOR: channels
/// The sending end of every channel in this step. Unbounded: a send never waits, so no task
/// can block another. (Step 06 bounds them, because unbounded queues can grow without limit.)
type Sender<T> = mpsc::UnboundedSender<T>;
/// The receiving end of every channel in this step.
type Receiver<T> = mpsc::UnboundedReceiver<T>;
// ANCHOR_END: channels

// ANCHOR: parse
/// A parsed `dest1, dest2: text` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The destinations, trimmed, in the order written; empty names are dropped.
    pub dest: Vec<String>,
    /// Everything after the first `:`, trimmed.
    pub text: String,
}

/// Parses the first line a client sends: its login name, trimmed. `None` for a blank line.
pub fn parse_login(line: &str) -> Option<String> {
    let name = line.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Parses a message line. Only the first `:` separates destinations from the text, so
/// `bob: a:b` sends `a:b`. A line without `:` is not a message: `None`.
pub fn parse_message(line: &str) -> Option<Message> {
    let (dest, text) = line.split_once(':')?;
    let dest = dest
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect();
    Some(Message {
        dest,
        text: text.trim().to_string(),
    })
}
// ANCHOR_END: parse

// ANCHOR: run
// ANCHOR: serve
/// Serves clients on `listener` until `shutdown` completes, then shuts down gracefully: it
/// returns once every message already read is written and every connection is closed.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (broker_sender, broker_receiver) = mpsc::unbounded_channel();
    // Cancelled once, when shutdown begins. Every connection gets a child of it.
    let shutdown_token = CancellationToken::new();
    // Every task of the server is spawned on the tracker, so that we can wait for all of them.
    let tracker = TaskTracker::new();
    tracker.spawn(broker_loop(broker_receiver, tracker.clone()));

    // ANCHOR: exercise_run
    // Serve until `shutdown` completes; then cancel the token and wait for every task.
    // A drop guard cancels `shutdown_token` when the trigger ends, while the accept loop runs
    // beside it; then we drop `broker_sender`, close `tracker` and wait for it.
    // ANCHOR: trigger
    let trigger = async {
        // Cancels the token when this future ends, however it ends.
        let _cancel_on_exit = shutdown_token.clone().drop_guard();
        shutdown.await;
    };
    // The accept loop ends when the token is cancelled.
    tokio::join!(
        trigger,
        accept_loop(listener, &broker_sender, &shutdown_token, &tracker)
    );
    // ANCHOR_END: trigger
    // ANCHOR_END: serve

    // ANCHOR: shutdown
    // 1. We have left the accept loop. 2. Every reader and writer has seen the token
    // cancelled, or will when it next looks: it stays cancelled.
    // 3. Drop our own sender to the broker. 4. Each reader stops and drops its sender, so
    // 5. the broker's channel closes and its receive loop ends. 6. The broker drops the map,
    // which closes each writer's channel; 7. the writers write what is queued and end.
    drop(broker_sender);
    // 8. Wait for every task on the tracker: readers, broker, writers. `wait` returns only
    // once the tracker is closed and empty; closing it does not stop anyone from spawning on
    // it (the broker may still start a writer), it only allows `wait` to finish.
    tracker.close();
    tracker.wait().await;
    // ANCHOR_END: shutdown
    Ok(())
    // ANCHOR_END: exercise_run
}
// ANCHOR_END: run

// ANCHOR: accept_loop
/// Accepts connections until the token is cancelled, one reader task each; every reader gets
/// its own clone of the sender to the broker, and a child token.
///
/// No `?` here: `accept` fails for reasons that concern one connection (it was reset before we
/// took it) or that pass (too many open files). Returning the error would end the loop and
/// with it the whole server, so we log it and go on.
async fn accept_loop(
    listener: TcpListener,
    broker_sender: &Sender<Event>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    // ANCHOR: exercise_accept_loop
    // Accept connections until `shutdown` is cancelled; spawn each on `tracker` with a child token.
    // `run_until_cancelled` gives `None` once the token is cancelled, dropping the `accept` in
    // progress. That is safe because `accept` is cancel safe: a connection it had not returned
    // yet is not lost half-accepted. Returning drops the listener: no new clients.
    while let Some(accepted) = shutdown.run_until_cancelled(listener.accept()).await {
        match accepted {
            Ok((stream, _peer)) => {
                // ANCHOR: child_token
                // Cancelled when the server's token is, and cancellable on its own without
                // touching any other connection (later steps use that to drop one client).
                let connection_shutdown = shutdown.child_token();
                // ANCHOR_END: child_token
                spawn_and_log_error(
                    tracker,
                    connection_loop(broker_sender.clone(), stream, connection_shutdown),
                );
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
    // ANCHOR_END: exercise_accept_loop
}
// ANCHOR_END: accept_loop

// ANCHOR: connection_loop
/// Reads one client: its login line, then message lines until it disconnects or shutdown
/// begins, and turns them into events for the broker. The writing half of the socket goes to
/// the broker, which hands it to the peer's writer task along with `reader_gone`; at shutdown
/// the reading half follows it there, so that the writer can close the connection in order.
async fn connection_loop(
    broker: Sender<Event>,
    stream: TcpStream,
    shutdown: CancellationToken,
) -> Result<()> {
    // Owned halves can move into different tasks: this one reads, the writer task writes.
    let (reader, writer) = stream.into_split();
    // `LinesCodec` splits the byte stream at `\n` (dropping a `\r` before it) and checks that
    // each line is UTF-8. `FramedRead` turns it into a `Stream` of lines.
    let mut lines = FramedRead::new(reader, LinesCodec::new());
    // ANCHOR: reader_shutdown
    // `cancelled()` is made anew on every turn, and that is fine: a token stays cancelled, so
    // the future completes at once if cancellation came while we were busy elsewhere. Nothing
    // to pin, nothing to miss.

    // A client that never sends its name must not hold up the shutdown either.
    let name = tokio::select! {
        // `biased`: look at the shutdown first, on every turn.
        biased;
        // Nobody is writing to this client yet: we close it in order ourselves.
        () = shutdown.cancelled() => {
            close_in_order(writer, Some(lines.into_inner())).await;
            return Ok(());
        }
        line = lines.next() => match line {
            None => return Err("peer disconnected before sending a name".into()),
            Some(line) => parse_login(&line?).ok_or("peer sent an empty name")?,
        },
    };
    // ANCHOR_END: reader_shutdown
    eprintln!("{name} logged in");
    // ANCHOR: shutdown_sender
    // The reader's last word to its writer. If this function ends without a word (by
    // returning, by `?` on a read error, or by a panic), the sender is dropped: that drop says
    // "the client left: stop", and RAII makes sure it comes exactly once. At shutdown the
    // reader sends one thing instead: its half of the socket.
    let (hand_over, reader_gone) = oneshot::channel::<OwnedReadHalf>();
    // ANCHOR_END: shutdown_sender
    // Sending fails only if the broker is gone, which cannot happen while we hold a sender
    // unless it panicked; then the error ends this connection and is logged.
    broker.send(Event::NewPeer {
        name: name.clone(),
        stream: writer,
        reader_gone,
    })?;

    // ANCHOR: exercise_reader_loop
    // Forward message lines to the broker until the client leaves or shutdown begins.
    // Race `lines.next()` against `shutdown.cancelled()`, shutdown first.
    loop {
        tokio::select! {
            // Shutdown is checked first, so a client that keeps sending cannot keep its
            // reader going once the signal is out: every line after it stays unread.
            biased;
            () = shutdown.cancelled() => {
                eprintln!("{name}: stopped reading, shutting down");
                break;
            }
            line = lines.next() => match line {
                Some(line) => match parse_message(&line?) {
                    Some(Message { dest, text }) => broker.send(Event::Message {
                        from: name.clone(),
                        dest,
                        text,
                    })?,
                    None => eprintln!("{name}: ignored a line without ':'"),
                },
                None => {
                    eprintln!("{name} disconnected");
                    return Ok(());
                }
            },
        }
    }
    // ANCHOR: hand_over
    // Only the shutdown gets here. Lines the client sends from now on stay unread; the writer
    // takes our half of the socket, to read and discard them when it closes the connection.
    // (The send fails only if the writer has ended already: then the half is dropped here.)
    let _ = hand_over.send(lines.into_inner());
    // ANCHOR_END: hand_over
    Ok(())
    // ANCHOR_END: exercise_reader_loop
}
// ANCHOR_END: connection_loop

// ANCHOR: event
/// What readers tell the broker. Every event flows one way: reader -> broker.
#[derive(Debug)]
enum Event {
    /// A client logged in as `name`; `stream` is the half of its socket to write to, and
    /// `reader_gone` completes when its reader ends: with the reading half if it stopped for
    /// the shutdown, with an error if the client left.
    NewPeer {
        name: String,
        stream: OwnedWriteHalf,
        reader_gone: oneshot::Receiver<OwnedReadHalf>,
    },
    /// `from` sent `text` to the peers named in `dest`.
    Message {
        from: String,
        dest: Vec<String>,
        text: String,
    },
}
// ANCHOR_END: event

// ANCHOR: broker_loop
/// Owns the map from names to the peers' writer channels, routes messages, and removes a peer
/// when its writer ends.
///
/// One task owns the map, so no lock is needed: every change to it is an event handled here,
/// one at a time. Invariant: a peer's channel outlives its entry in the map, because a writer
/// hands its receiver back on the disconnect channel and only then is the entry removed. So a
/// send to a peer in the map cannot fail, and nothing sent to it vanishes without a trace.
/// Writers are spawned on `tracker`, so `run` waits for them.
async fn broker_loop(mut events: Receiver<Event>, tracker: TaskTracker) {
    let mut peers: HashMap<String, Sender<String>> = HashMap::new();
    // Writers send `(name, receiver)` here when they end.
    let (disconnect_sender, mut disconnect_receiver) = mpsc::unbounded_channel();

    loop {
        let event = tokio::select! {
            // Departures first: when a writer has ended and a new login arrives at the same
            // time, the departed name is free before the login is handled, so a client that
            // reconnects at once gets its name back.
            biased;
            disconnect = disconnect_receiver.recv() => {
                // `None` cannot happen here: we hold `disconnect_sender` until after the loop.
                if let Some((name, pending)) = disconnect {
                    remove_peer(&mut peers, name, pending);
                }
                continue;
            },
            event = events.recv() => match event {
                Some(event) => event,
                // Every reader and the accept loop are gone: no more events will come.
                None => break,
            },
        };
        match event {
            Event::Message { from, dest, text } => {
                for name in dest {
                    // Unknown destinations are skipped.
                    if let Some(peer) = peers.get(&name) {
                        // Cannot fail, by the invariant above. We still handle the error
                        // rather than `unwrap`: a bug here must not crash the task every
                        // other client depends on.
                        if peer.send(format!("from {from}: {text}")).is_err() {
                            eprintln!("{name} is gone; a message to it was dropped");
                        }
                    }
                }
            }
            Event::NewPeer {
                name,
                stream,
                reader_gone,
            } => match peers.entry(name) {
                // The name is in use. Dropping `stream` closes the newcomer's receiving side,
                // so it sees the connection end without being registered. Limitation: its
                // reader is not told and goes on sending lines under that name; the hardening
                // step answers a taken name with an error and closes the whole connection.
                Entry::Occupied(entry) => eprintln!("{} is taken; login refused", entry.key()),
                Entry::Vacant(entry) => {
                    let (sender, mut receiver) = mpsc::unbounded_channel();
                    let name = entry.key().clone();
                    entry.insert(sender);
                    let disconnect_sender = disconnect_sender.clone();
                    spawn_and_log_error(&tracker, async move {
                        let result = writer_loop(&mut receiver, stream, reader_gone).await;
                        // Hand the receiver back however the writer ended: only now does the
                        // broker remove the peer. This send fails only once the broker has
                        // ended, and then nobody needs the peer removed.
                        let _ = disconnect_sender.send((name, receiver));
                        result
                    });
                }
            },
        }
    }

    // ANCHOR: broker_drain
    // Dropping the map drops every peer's sender: each writer writes what is queued and ends.
    // No need to wait for the writers here any more: they are on the tracker, and `run`
    // waits for everything on it.
    drop(peers);
    // ANCHOR_END: broker_drain
}

/// Removes a peer whose writer ended. Messages still queued for it cannot be written any more
/// (its client left); the log counts them, so none disappears silently.
fn remove_peer(
    peers: &mut HashMap<String, Sender<String>>,
    name: String,
    pending: Receiver<String>,
) {
    peers.remove(&name);
    match pending.len() {
        0 => eprintln!("{name} left"),
        n => eprintln!("{name} left; {n} messages to it were not delivered"),
    }
}
// ANCHOR_END: broker_loop

// ANCHOR: writer_loop
/// Writes every message the broker routes to one peer, in order, to its socket, then closes
/// the connection.
///
/// It ends when its reader ends because the client left (`reader_gone` fails), when its
/// channel closes (the broker dropped the sender) or when a write fails. Once the reader has
/// stopped for the shutdown and handed over its half, it ends only when its channel closes,
/// after writing everything queued. It borrows `messages`, so the caller can hand the receiver
/// back to the broker afterwards.
async fn writer_loop(
    messages: &mut Receiver<String>,
    stream: OwnedWriteHalf,
    mut reader_gone: oneshot::Receiver<OwnedReadHalf>,
) -> Result<()> {
    // The encoder appends the `\n` to each line.
    let mut lines = FramedWrite::new(stream, LinesCodec::new());
    // ANCHOR: writer_drain
    // Once shutdown has begun, our reader stops and hands us its half of the socket, while the
    // broker may still route us messages it read before the signal. So from then on we write
    // until the broker closes our channel.
    let mut input = None;
    loop {
        tokio::select! {
            // `biased`: the branches are polled in this order, not at random.
            biased;
            // A queued message is always written first.
            message = messages.recv() => match message {
                Some(message) => lines.send(message).await?,
                None => break,
            },
            // `&mut`: the same receiver is polled on every turn instead of being moved into
            // the first one. Once it has answered, the precondition switches it off.
            reader_gone = &mut reader_gone, if input.is_none() => match reader_gone {
                // The reader stopped for the shutdown.
                Ok(half) => input = Some(half),
                // The sender was dropped without a word: the client left.
                Err(_) => break,
            },
        }
    }
    // ANCHOR_END: writer_drain
    // The broker closes our channel only after every reader has ended, so if we left the loop
    // that way before looking at `reader_gone`, its answer is already there.
    let input = input.or_else(|| reader_gone.try_recv().ok());
    close_in_order(lines.into_inner(), input).await;
    Ok(())
}
// ANCHOR_END: writer_loop

// ANCHOR: close_in_order
/// How long we go on reading a client after our FIN, waiting for it to close its side, before
/// we close the socket anyway.
const LINGER: Duration = Duration::from_secs(2);

/// Closes a connection without losing what we wrote to it: a lingering close.
///
/// Closing a socket while some of the client's bytes are still unread makes the kernel answer
/// with RST instead of FIN, and a reset throws away whatever we wrote that the client had not
/// received yet. So we first shut down our writing direction (FIN: the client reads everything
/// we sent, then the end), then read and discard what the client still sends until it closes
/// its side, and only then let the socket go. `LINGER`, counted from the FIN, bounds the wait
/// for a client that never closes. `input` is `None` when the reader ended because the client
/// left: then nothing more will come.
async fn close_in_order(mut output: OwnedWriteHalf, input: Option<OwnedReadHalf>) {
    // Fails only if the connection is broken already: then there is nothing left to save.
    if output.shutdown().await.is_err() {
        return;
    }
    if let Some(mut input) = input {
        let mut sink = tokio::io::sink();
        // Ends at the client's EOF, at a read error, or after `LINGER`: all three mean done.
        let discard = tokio::io::copy(&mut input, &mut sink);
        let _ = tokio::time::timeout(LINGER, discard).await;
    }
}
// ANCHOR_END: close_in_order

// ANCHOR: spawn_and_log_error
/// Spawns `fut` on `tracker` and logs its error, if any, instead of losing it.
///
/// A task's error goes nowhere unless someone awaits its `JoinHandle`, and the accept loop
/// never does. Logging here means one failing connection is reported and nothing else happens.
/// Spawning on the tracker (never with a plain `tokio::spawn`, which it would not see) lets
/// `run` wait for the task.
fn spawn_and_log_error<F>(tracker: &TaskTracker, fut: F) -> JoinHandle<()>
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    tracker.spawn(async move {
        if let Err(e) = fut.await {
            eprintln!("connection failed: {e}");
        }
    })
}
// ANCHOR_END: spawn_and_log_error

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(dest: &[&str], text: &str) -> Option<Message> {
        Some(Message {
            dest: dest.iter().map(|d| d.to_string()).collect(),
            text: text.to_string(),
        })
    }

    /// Names and text are trimmed; several destinations are split at commas.
    #[test]
    fn trims_names_and_text() {
        assert_eq!(
            parse_message(" bob ,  carol :  hi there  "),
            msg(&["bob", "carol"], "hi there")
        );
    }

    /// Only the first `:` separates destinations from the text.
    #[test]
    fn colon_inside_text_is_kept() {
        assert_eq!(parse_message("bob: a:b"), msg(&["bob"], "a:b"));
    }

    /// A lone `:` is a message with no destinations and no text.
    #[test]
    fn lone_colon() {
        assert_eq!(parse_message(":"), msg(&[], ""));
    }

    /// Empty names between commas are dropped.
    #[test]
    fn empty_destinations_are_dropped() {
        assert_eq!(parse_message("a,,b: x"), msg(&["a", "b"], "x"));
        assert_eq!(parse_message(" , : x"), msg(&[], "x"));
    }

    /// A line without `:` is not a message.
    #[test]
    fn line_without_colon_is_not_a_message() {
        assert_eq!(parse_message("hello bob"), None);
        assert_eq!(parse_message(""), None);
    }

    /// A `\r` left by a CRLF line ending is not part of the text or the name.
    #[test]
    fn crlf_endings() {
        assert_eq!(parse_message("bob: hi\r"), msg(&["bob"], "hi"));
        assert_eq!(parse_login("alice\r"), Some("alice".to_string()));
    }

    /// The login name is trimmed, and a blank login line is refused.
    #[test]
    fn login_line() {
        assert_eq!(parse_login("  alice "), Some("alice".to_string()));
        assert_eq!(parse_login(" \t "), None);
    }
}
