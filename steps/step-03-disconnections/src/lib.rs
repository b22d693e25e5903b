//! Step 03: disconnections. A client that leaves is removed from the map of peers, so its name
//! can be used again. Only the end of a peer's writer task removes it; the reader tells the
//! writer to stop by dropping a oneshot sender. Its limitation: shutting down still only stops
//! the accept loop (step 04).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;

use futures::{SinkExt, StreamExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

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
/// Serves clients on `listener` until `shutdown` completes.
///
/// Limitation of this step: shutting down only stops the accept loop. Connections already
/// open, the broker and the writers are left to the runtime. Step 04 makes shutdown graceful.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (broker_sender, broker_receiver) = mpsc::unbounded_channel();
    // The broker runs until every reader and `broker_sender` are gone. Nobody waits for it
    // yet: that is step 04's job.
    let _broker = tokio::spawn(broker_loop(broker_receiver));
    tokio::select! {
        () = accept_loop(listener, &broker_sender) => {}
        () = shutdown => {}
    }
    Ok(())
}
// ANCHOR_END: run

// ANCHOR: accept_loop
/// Accepts connections forever, one reader task each; every reader gets its own clone of the
/// sender to the broker.
///
/// No `?` here: `accept` fails for reasons that concern one connection (it was reset before we
/// took it) or that pass (too many open files). Returning the error would end the loop and
/// with it the whole server, so we log it and go on.
async fn accept_loop(listener: TcpListener, broker_sender: &Sender<Event>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                spawn_and_log_error(connection_loop(broker_sender.clone(), stream));
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}
// ANCHOR_END: accept_loop

// ANCHOR: connection_loop
/// Reads one client: its login line, then message lines until it disconnects, and turns them
/// into events for the broker. The writing half of the socket goes to the broker, which hands
/// it to the peer's writer task.
async fn connection_loop(broker: Sender<Event>, stream: TcpStream) -> Result<()> {
    // Owned halves can move into different tasks: this one reads, the writer task writes.
    let (reader, writer) = stream.into_split();
    // `LinesCodec` splits the byte stream at `\n` (dropping a `\r` before it) and checks that
    // each line is UTF-8. `FramedRead` turns it into a `Stream` of lines.
    let mut lines = FramedRead::new(reader, LinesCodec::new());

    let name = match lines.next().await {
        None => return Err("peer disconnected before sending a name".into()),
        Some(line) => parse_login(&line?).ok_or("peer sent an empty name")?,
    };
    eprintln!("{name} logged in");
    // ANCHOR: shutdown_sender
    // Nothing is ever sent on this channel (nothing can be: `Void` has no values). Its sender
    // is dropped when this function ends, however it ends: by returning, by `?` on a read
    // error, or by a panic. That drop is the writer's signal to stop, and RAII makes sure it
    // fires exactly once.
    let (_shutdown_sender, reader_gone) = oneshot::channel::<Void>();
    // ANCHOR_END: shutdown_sender
    // Sending fails only if the broker is gone, which cannot happen while we hold a sender
    // unless it panicked; then the error ends this connection and is logged.
    broker.send(Event::NewPeer {
        name: name.clone(),
        stream: writer,
        reader_gone,
    })?;

    // ANCHOR: reader_end
    while let Some(line) = lines.next().await {
        let line = line?;
        match parse_message(&line) {
            Some(Message { dest, text }) => broker.send(Event::Message {
                from: name.clone(),
                dest,
                text,
            })?,
            None => eprintln!("{name}: ignored a line without ':'"),
        }
    }
    eprintln!("{name} disconnected");
    Ok(())
    // ANCHOR_END: reader_end
}
// ANCHOR_END: connection_loop

// ANCHOR: event
/// A type with no values: a `oneshot::Sender<Void>` can only ever be dropped, never used.
#[derive(Debug)]
enum Void {}

/// What readers tell the broker. Every event flows one way: reader -> broker.
#[derive(Debug)]
enum Event {
    /// A client logged in as `name`; `stream` is the half of its socket to write to, and
    /// `reader_gone` completes (with an error: nothing is ever sent) when its reader ends.
    NewPeer {
        name: String,
        stream: OwnedWriteHalf,
        reader_gone: oneshot::Receiver<Void>,
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
async fn broker_loop(mut events: Receiver<Event>) {
    let mut peers: HashMap<String, Sender<String>> = HashMap::new();
    // ANCHOR: broker_select
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
        // ANCHOR_END: broker_select
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
                    // ANCHOR: spawn_writer
                    // ANCHOR: exercise_spawn_writer
                    // Register the peer; spawn a task that runs its writer, then reports its end.
                    // The report is `(name, receiver)` on a clone of `disconnect_sender`, sent
                    // however the writer ended.
                    let (sender, mut receiver) = mpsc::unbounded_channel();
                    let name = entry.key().clone();
                    entry.insert(sender);
                    let disconnect_sender = disconnect_sender.clone();
                    spawn_and_log_error(async move {
                        let result = writer_loop(&mut receiver, stream, reader_gone).await;
                        // Hand the receiver back however the writer ended: only now does the
                        // broker remove the peer. The broker holds `disconnect_receiver` until
                        // every writer is done, so this send cannot fail.
                        let _ = disconnect_sender.send((name, receiver));
                        result
                    });
                    // ANCHOR_END: exercise_spawn_writer
                    // ANCHOR_END: spawn_writer
                }
            },
        }
    }

    // ANCHOR: broker_drain
    // Dropping the map drops every peer's sender, so every writer's channel closes and each
    // writer comes to its end. (Its reader is gone too, so it may stop with messages still
    // queued: step 04's writers drain first.)
    drop(peers);
    // Drop our own disconnect sender, so that the channel closes once the last writer is
    // done...
    drop(disconnect_sender);
    // ...and wait for that: `recv` returns `None` only when every writer has ended.
    while let Some((name, _pending)) = disconnect_receiver.recv().await {
        eprintln!("{name}'s writer finished");
    }
    // ANCHOR_END: broker_drain
}

// ANCHOR: remove_peer
/// Removes a peer whose writer ended. Messages still queued for it cannot be written any more
/// (its client left); the log counts them, so none disappears silently.
fn remove_peer(
    peers: &mut HashMap<String, Sender<String>>,
    name: String,
    pending: Receiver<String>,
) {
    // ANCHOR: exercise_remove_peer
    // Remove `name` from the map, and log how many messages to it were still queued.
    peers.remove(&name);
    match pending.len() {
        0 => eprintln!("{name} left"),
        n => eprintln!("{name} left; {n} messages to it were not delivered"),
    }
    // ANCHOR_END: exercise_remove_peer
}
// ANCHOR_END: remove_peer
// ANCHOR_END: broker_loop

// ANCHOR: writer_loop
/// Writes every message the broker routes to one peer, in order, to its socket.
///
/// It ends when its reader ends (the client left: `reader_gone` completes), when its channel
/// closes (the broker dropped the sender) or when a write fails. It borrows `messages`, so the
/// caller can hand the receiver back to the broker afterwards.
async fn writer_loop(
    messages: &mut Receiver<String>,
    stream: OwnedWriteHalf,
    mut reader_gone: oneshot::Receiver<Void>,
) -> Result<()> {
    // The encoder appends the `\n` to each line.
    let mut lines = FramedWrite::new(stream, LinesCodec::new());
    // ANCHOR: exercise_writer_select
    // Write each message as it arrives; stop when `reader_gone` completes or the channel closes.
    // Two things to wait for, so `while let Some(message) = messages.recv().await` no longer
    // fits: this is the `loop` it desugars to, with a `select!` in place of the one `await`.
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(message) => lines.send(message).await?,
                None => break,
            },
            // `&mut`: the same receiver is polled on every turn instead of being moved into
            // the first one.
            reader_gone = &mut reader_gone => match reader_gone {
                // `Void` has no values, and the compiler knows it: no `Ok` can arrive.
                Ok(void) => match void {},
                // The sender was dropped: the reader has ended.
                Err(_) => break,
            },
        }
    }
    Ok(())
    // ANCHOR_END: exercise_writer_select
}
// ANCHOR_END: writer_loop

// ANCHOR: spawn_and_log_error
/// Spawns `fut` and logs its error, if any, instead of losing it.
///
/// A task's error goes nowhere unless someone awaits its `JoinHandle`, and the accept loop
/// never does. Logging here means one failing connection is reported and nothing else happens.
fn spawn_and_log_error<F>(fut: F) -> JoinHandle<()>
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
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

    /// Runs `writer_loop` on a real connection after closing either its channel (the broker
    /// dropped the sender) or its reader, keeping the other alive, and reports whether the
    /// writer returned `Ok` in time.
    async fn writer_ends(close_channel: bool) -> bool {
        let (_client, server) = testkit::connected_pair().await;
        let (_, write) = server.into_split();
        let (sender, mut messages) = mpsc::unbounded_channel::<String>();
        let (reader_alive, reader_gone) = oneshot::channel::<Void>();
        // The one not closed stays alive until the writer is done.
        let _alive = if close_channel {
            drop(sender);
            (None, Some(reader_alive))
        } else {
            drop(reader_alive);
            (Some(sender), None)
        };
        let writer = writer_loop(&mut messages, write, reader_gone);
        matches!(
            tokio::time::timeout(testkit::TIMEOUT, writer).await,
            Ok(Ok(()))
        )
    }

    /// The writer ends when the broker closes its channel, even while its reader is still
    /// there. A `select!` branch written as `Some(message) = messages.recv()` fails this: at
    /// `None` the branch is disabled and the writer waits for its reader forever.
    #[tokio::test]
    async fn writer_ends_when_its_channel_closes() {
        assert!(
            writer_ends(true).await,
            "the writer kept running after its channel closed"
        );
    }

    /// The writer ends when its reader ends, even while its channel is open. A `select!`
    /// branch written as `Ok(void) = &mut reader_gone` fails this: the branch is disabled and
    /// the writer waits for messages forever, so its peer is never removed.
    #[tokio::test]
    async fn writer_ends_when_its_reader_ends() {
        assert!(
            writer_ends(false).await,
            "the writer kept running after its reader ended"
        );
    }
}
