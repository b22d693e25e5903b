//! What the tasks of step 07 send each other: the readers' events for the broker (a whole
//! read of lines in one `Lines` event), the broker's answer to a login, and the handover from a
//! reader to its writer. The reader, the writer, the broker and the server speak in these types.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use crate::{Config, outbox::PeerQueue, outbox::batch_cost};

// ANCHOR: channels
/// The sending end of the readers' channel to the broker. It is bounded: an unbounded queue
/// lets one client make the server hold any amount of memory. (Each peer's queue is bounded
/// too, in bytes: see [`PeerQueue`]. The disconnect channel stays unbounded: each writer sends
/// on it once, so it never holds more than one entry per connection.)
pub(crate) type Sender<T> = mpsc::Sender<T>;
/// The receiving end of those channels.
pub(crate) type Receiver<T> = mpsc::Receiver<T>;
// ANCHOR_END: channels

// ANCHOR: event
/// The writing half of a client's connection, boxed so that the broker does not care what
/// kind of stream it is, together with the connection's slot: the slot is freed when the
/// last task using the connection lets go of it, and that is its writer.
pub(crate) struct ClientWriter {
    pub(crate) stream: Box<dyn AsyncWrite + Send + Unpin>,
    pub(crate) _slot: OwnedSemaphorePermit,
}

impl fmt::Debug for ClientWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientWriter")
    }
}

/// What a reader hands its writer when it stops reading while the client is still there.
pub(crate) struct Handover {
    /// The reading half of the socket, for the lingering close.
    pub(crate) input: Box<dyn AsyncRead + Send + Unpin>,
    /// The `error: ...` line to write after everything queued, if the client broke a rule;
    /// `None` at shutdown.
    pub(crate) farewell: Option<&'static str>,
    /// How long to wait for the client to close its side: [`Config::linger`].
    pub(crate) linger: Duration,
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("farewell", &self.farewell)
            .finish_non_exhaustive()
    }
}

/// The broker's answer to a login.
#[derive(Debug)]
pub(crate) enum Login {
    Accepted,
    /// The name is in use: here is the writing half back.
    Taken(ClientWriter),
}

/// What readers tell the broker. Every event flows one way: reader -> broker. (The answer to
/// a login flows back on a oneshot, but the broker never waits on anyone, so the channels
/// still cannot wait on each other in a circle.)
#[derive(Debug)]
pub(crate) enum Event {
    /// A client wants to log in as `name`; `stream` is the half of its socket to write to,
    /// `reader_gone` completes when its reader ends (with a [`Handover`] if it stopped reading
    /// while the client was still there, with an error if the client left), `close` is the
    /// connection's token, and `login` takes the broker's answer.
    NewPeer {
        name: String,
        id: u64,
        stream: ClientWriter,
        reader_gone: oneshot::Receiver<Handover>,
        close: CancellationToken,
        login: oneshot::Sender<Login>,
    },
    /// The session `id` of `name` broke a rule and is leaving: no more lines for it. Its
    /// queue closes once it holds everything routed to it before.
    Leave { name: String, id: u64 },
    /// Lines from the client `from`, as it wrote them, each ending in `\n`: all the complete
    /// lines one read brought, so that one event carries dozens of messages when the client
    /// sends in bulk. `credit` pays for them (see [`batch_cost`]).
    Lines {
        from: Arc<str>,
        lines: String,
        credit: OwnedSemaphorePermit,
    },
}
// ANCHOR_END: event
