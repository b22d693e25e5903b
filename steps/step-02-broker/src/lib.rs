//! Step 02: the broker. Each connection gets a reader task and a writer task; one broker task
//! owns the map of peers and routes every message from a reader to the writers of its
//! destinations. Now it is a working chat. Its limitation: peers are never removed (step 03).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;

use futures::{SinkExt, StreamExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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
/// In this step shutting down only stops the accept loop: connections already open, the
/// broker and the writers are left to the runtime. Step 04 makes shutdown graceful.
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
    // ANCHOR: exercise_reader_events
    // Register with the broker: send it a `NewPeer` event with the writing half of the socket.
    // Then turn each line into a `Message` event (log lines without `:`) until EOF.
    // Sending fails only if the broker is gone, which cannot happen while we hold a sender
    // unless it panicked; then the error ends this connection and is logged.
    broker.send(Event::NewPeer {
        name: name.clone(),
        stream: writer,
    })?;

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
    // ANCHOR_END: exercise_reader_events
}
// ANCHOR_END: connection_loop

// ANCHOR: event
/// What readers tell the broker. Every event flows one way: reader -> broker.
#[derive(Debug)]
enum Event {
    /// A client logged in as `name`; `stream` is the half of its socket to write to.
    NewPeer {
        name: String,
        stream: OwnedWriteHalf,
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
/// Owns the map from names to the peers' writer channels and routes messages.
///
/// One task owns the map, so no lock is needed: every change to it is an event handled here,
/// one at a time. The loop ends when every sender of `events` is dropped.
///
/// Limitation of this step: a peer is never removed. Once a client leaves, its name stays
/// taken, and messages to it go to a writer that is gone or writes into a closed socket.
async fn broker_loop(mut events: Receiver<Event>) {
    let mut peers: HashMap<String, Sender<String>> = HashMap::new();

    while let Some(event) = events.recv().await {
        match event {
            Event::Message { from, dest, text } => {
                // ANCHOR: exercise_route
                // Send `from NAME: text` to the channel of each destination that is in the map.
                // Skip the other names, and log a failed send instead of panicking.
                for name in dest {
                    // Unknown destinations are skipped.
                    if let Some(peer) = peers.get(&name) {
                        // No `unwrap`: a writer ends when writing to its client fails, and
                        // then this send fails. A client that left must not crash the task
                        // every other client depends on.
                        if peer.send(format!("from {from}: {text}")).is_err() {
                            eprintln!("{name} is gone; a message to it was dropped");
                        }
                    }
                }
                // ANCHOR_END: exercise_route
            }
            Event::NewPeer { name, stream } => match peers.entry(name) {
                // The name is in use. Dropping `stream` closes the newcomer's receiving side,
                // so it sees the connection end without being registered. Limitation: its
                // reader is not told and goes on sending lines under that name; the hardening
                // step answers a taken name with an error and closes the whole connection.
                Entry::Occupied(entry) => eprintln!("{} is taken; login refused", entry.key()),
                Entry::Vacant(entry) => {
                    // ANCHOR: exercise_new_peer
                    // Give the new peer a channel: keep the sender in the map and spawn a
                    // writer task that owns the receiver and the socket's writing half.
                    let (sender, receiver) = mpsc::unbounded_channel();
                    entry.insert(sender);
                    spawn_and_log_error(writer_loop(receiver, stream));
                    // ANCHOR_END: exercise_new_peer
                }
            },
        }
    }
}
// ANCHOR_END: broker_loop

// ANCHOR: writer_loop
/// Writes every message the broker routes to one peer, in order, to its socket.
///
/// It ends when its channel closes (the broker dropped the sender) or a write fails.
async fn writer_loop(mut messages: Receiver<String>, stream: OwnedWriteHalf) -> Result<()> {
    // ANCHOR: exercise_writer_loop
    // Write each message from `messages` to the socket as one line, until the channel closes.
    // The encoder appends the `\n` to each line.
    let mut lines = FramedWrite::new(stream, LinesCodec::new());
    while let Some(message) = messages.recv().await {
        lines.send(message).await?;
    }
    Ok(())
    // ANCHOR_END: exercise_writer_loop
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
}
