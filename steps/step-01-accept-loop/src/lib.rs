//! Step 01: the accept loop. The server accepts any number of clients, spawns one task per
//! connection, reads the login line and the `dest: text` lines, and logs what it parsed.
//! Nothing is delivered yet: step 02 adds the broker that does.

use std::future::Future;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LinesCodec};

// ANCHOR: result
/// Any error, boxed: enough for a server that logs errors rather than matching on them.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The `Result` every fallible function of this step returns.
pub type Result<T> = std::result::Result<T, Error>;
// ANCHOR_END: result

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
/// In this step shutting down only stops the accept loop: connections already open are left
/// to the runtime. Step 04 makes shutdown graceful.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    tokio::select! {
        () = accept_loop(listener) => {}
        () = shutdown => {}
    }
    Ok(())
}
// ANCHOR_END: run

// ANCHOR: accept_loop
/// Accepts connections forever, one task each.
///
/// No `?` here: `accept` fails for reasons that concern one connection (it was reset before we
/// took it) or that pass (too many open files). Returning the error would end the loop and
/// with it the whole server, so we log it and go on.
async fn accept_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                spawn_and_log_error(connection_loop(stream));
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}
// ANCHOR_END: accept_loop

// ANCHOR: connection_loop
/// Reads one client: its login line, then message lines until it disconnects.
async fn connection_loop(stream: TcpStream) -> Result<()> {
    // `LinesCodec` splits the byte stream at `\n` (dropping a `\r` before it) and checks that
    // each line is UTF-8. `FramedRead` turns it into a `Stream` of lines.
    let mut lines = FramedRead::new(stream, LinesCodec::new());

    let name = match lines.next().await {
        None => return Err("peer disconnected before sending a name".into()),
        Some(line) => parse_login(&line?).ok_or("peer sent an empty name")?,
    };
    eprintln!("{name} logged in");

    while let Some(line) = lines.next().await {
        let line = line?;
        match parse_message(&line) {
            Some(Message { dest, text }) => eprintln!("{name} -> {}: {text}", dest.join(", ")),
            None => eprintln!("{name}: ignored a line without ':'"),
        }
    }
    eprintln!("{name} disconnected");
    Ok(())
}
// ANCHOR_END: connection_loop

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
