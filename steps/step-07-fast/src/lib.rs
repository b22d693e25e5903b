//! Step 07: the hardened server of step 06, made fast. Same protocol, same limits, same
//! graceful shutdown; what changes is the cost of each message. Accepted sockets send at once
//! (`TCP_NODELAY`); a reader hands the broker every complete line of one read in one event;
//! the broker appends each line as bytes straight into its recipients' queues; a writer sends
//! everything queued for its client in one write; and an idle connection holds small buffers
//! only. (The binary also listens with a deeper backlog: see `main.rs`.)

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::future::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// ANCHOR: result
/// Any error, boxed: enough for a server that logs errors rather than matching on them.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The `Result` every fallible function of this step returns.
pub type Result<T> = std::result::Result<T, Error>;
// ANCHOR_END: result

// ANCHOR: config
/// Every limit of the server. The binary starts from [`Config::default`] and changes what its
/// command-line flags say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The longest line a client may send, in bytes, not counting the `\n`. A longer line gets
    /// `error: line too long` and the connection is closed. The limit counts the bytes before
    /// the `\n` as they arrive, so the `\r` of a CRLF ending counts too: on purpose, the rule is
    /// about what the server must buffer, and a CRLF client simply has one byte less of text.
    pub max_line_len: usize,
    /// How long a new client has to send its name before it is closed.
    pub login_timeout: Duration,
    /// How many bytes of lines one client may have queued for others and not yet written to
    /// their sockets: its credit, as in step 06. A reader pays for each batch of lines before
    /// it goes (see [`batch_cost`]) and waits, not reading its client, without the credit.
    pub sender_budget: usize,
    /// How long a write of one chunk to a client may take. A client that takes nothing for
    /// that long has stopped reading: it is disconnected as too slow.
    pub stall_timeout: Duration,
    /// How many events the readers may queue for the broker; a reader that finds the queue
    /// full waits (it stops reading its client) until the broker catches up.
    pub broker_queue_len: usize,
    /// How many clients may be connected at once. One more gets `error: server full`.
    pub max_connections: usize,
    /// How long a graceful shutdown may take. After it, the remaining connections are closed
    /// and [`run`] returns [`GracePeriodExpired`].
    pub grace_period: Duration,
    /// How long a connection we close in order (at shutdown, or after an `error:` line) waits,
    /// after our FIN, for the client to close its side before the socket is closed anyway.
    pub linger: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_line_len: 4096,
            login_timeout: Duration::from_secs(10),
            sender_budget: 256 * 1024,
            stall_timeout: Duration::from_secs(5),
            broker_queue_len: 1024,
            max_connections: 10_000,
            grace_period: Duration::from_secs(10),
            linger: Duration::from_secs(2),
        }
    }
}

/// The longest name a client may log in with, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// The most names one message line may list, counted as written (a name written twice counts
/// twice). A line that lists more gets `error: too many destinations` and the connection is
/// closed.
pub const MAX_DESTINATIONS: usize = 32;

/// How long the accept loop waits after `accept` failed before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The size a connection's read buffer starts at. Most chat lines fit; the buffer grows for a
/// longer line, and a client that sends in bulk gets [`BUSY_READ_BUFFER`].
const READ_BUFFER: usize = 512;

/// The room a client that sends lines in bulk gets in its read buffer: one read takes in
/// dozens of the fan-out's lines instead of seven.
const BUSY_READ_BUFFER: usize = 8 * 1024;
// ANCHOR_END: config

impl Config {
    /// Checks that every limit can be used: counts are at least 1 (a queue of 0 cannot hold
    /// anything, and tokio panics on one) and at most what tokio's semaphores can count, and
    /// the sender budget pays for the costliest line (or a client that sent one would wait
    /// for ever) and fits the `u32` a semaphore acquires at once.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let counts = [
            ("max line length", self.max_line_len),
            ("broker queue length", self.broker_queue_len),
            ("max connections", self.max_connections),
        ];
        for (what, n) in counts {
            if n == 0 || n > Semaphore::MAX_PERMITS {
                return Err(format!(
                    "the {what} must be between 1 and {}, not {n}",
                    Semaphore::MAX_PERMITS
                ));
            }
        }
        if self.login_timeout.is_zero() {
            return Err("the login timeout must be longer than 0".to_string());
        }
        // `from NAME: text\n` with the longest name and text, to every name a line may list.
        let costliest = MAX_DESTINATIONS * ("from : \n".len() + MAX_NAME_LEN + self.max_line_len);
        if self.sender_budget < costliest || u32::try_from(self.sender_budget).is_err() {
            return Err(format!(
                "the sender budget must pay for a line of the longest kind to {MAX_DESTINATIONS} \
                 destinations: between {costliest} and {} bytes with this max line length, not {}",
                u32::MAX,
                self.sender_budget
            ));
        }
        if self.stall_timeout.is_zero() {
            return Err("the stall timeout must be longer than 0".to_string());
        }
        Ok(())
    }
}

// ANCHOR: errors
/// What a client is told, as its last line, before the server closes its connection.
const LINE_TOO_LONG: &str = "error: line too long";
const INVALID_UTF8: &str = "error: invalid UTF-8";
const INVALID_NAME: &str = "error: invalid name";
const NAME_TAKEN: &str = "error: name taken";
const LOGIN_TIMED_OUT: &str = "error: login timed out";
const SERVER_FULL: &str = "error: server full";
const CONTROL_CHARACTER: &str = "error: control character";
const TOO_MANY_DESTINATIONS: &str = "error: too many destinations";

/// The line to send a client whose input broke a rule, or `None` when the error is not the
/// client's fault to be told about (the connection failed: nobody is there to read it).
fn refusal(error: &LinesCodecError) -> Option<&'static str> {
    match error {
        // `LinesCodec` discards the rest of the line rather than buffering it, so the memory
        // an attacker can make us hold for one connection is `max_line_len` plus what one read
        // brings in past it (the read buffer), not the length of their line.
        LinesCodecError::MaxLineLengthExceeded => Some(LINE_TOO_LONG),
        // The codec reports a line that is not UTF-8 as an I/O error of kind `InvalidData`.
        LinesCodecError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => Some(INVALID_UTF8),
        LinesCodecError::Io(_) => None,
    }
}

/// Returned by [`run`] when the grace period ran out before every connection was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracePeriodExpired {
    /// The grace period that ran out.
    pub grace_period: Duration,
}

impl fmt::Display for GracePeriodExpired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the graceful shutdown took longer than {:?}; the remaining connections were closed",
            self.grace_period
        )
    }
}

impl std::error::Error for GracePeriodExpired {}
// ANCHOR_END: errors

// ANCHOR: line
/// Appends the line a recipient of `text` from `from` receives, `from NAME: text\n`, to the
/// bytes waiting for that recipient.
///
/// The broker calls it once per recipient, straight into the recipient's queue: no `String`
/// per message and no allocation per recipient, only bytes added to a buffer that grows
/// now and then.
pub fn append_message(queue: &mut Vec<u8>, from: &str, text: &str) {
    // Four `extend_from_slice`s and a `push`, no `format!` (which would build a String first).
    queue.extend_from_slice(b"from ");
    queue.extend_from_slice(from.as_bytes());
    queue.extend_from_slice(b": ");
    queue.extend_from_slice(text.as_bytes());
    queue.push(b'\n');
}
// ANCHOR_END: line

// ANCHOR: channels
/// The sending end of the readers' channel to the broker. It is bounded: an unbounded queue
/// lets one client make the server hold any amount of memory. (Each peer's queue is bounded
/// too, in bytes: see [`PeerQueue`]. The disconnect channel stays unbounded: each writer sends
/// on it once, so it never holds more than one entry per connection.)
type Sender<T> = mpsc::Sender<T>;
/// The receiving end of those channels.
type Receiver<T> = mpsc::Receiver<T>;
// ANCHOR_END: channels

// ANCHOR: peer_queue
/// What one line costs its sender's credit for one recipient: the bytes [`append_message`]
/// adds to the recipient's queue.
pub fn queue_cost(from: &str, text: &str) -> usize {
    "from : \n".len() + from.len() + text.len()
}

/// What the first of `lines` (each ending in `\n`) cost at most, together, for a client called
/// `from`, as many of them as `budget` pays for (always one at least): the credit to take,
/// and where the lines it pays for end.
///
/// An upper bound, found without parsing: each line costs [`queue_cost`] with its whole
/// text, untrimmed, for as many recipients as its destination list has commas plus one (at
/// most [`MAX_DESTINATIONS`]). The broker takes the exact share of each line it queues and
/// gives the rest back at once.
pub fn batch_cost(from: &str, lines: &str, budget: usize) -> (usize, usize) {
    let mut cost = 0;
    let mut end = 0;
    for line in lines.split_inclusive('\n') {
        let line_cost = match line.split_once(':') {
            Some((dest, text)) => {
                let names = dest.bytes().filter(|&b| b == b',').count() + 1;
                names.min(MAX_DESTINATIONS) * queue_cost(from, text)
            }
            // Not a message: it costs nothing.
            None => 0,
        };
        if end > 0 && cost + line_cost > budget {
            break;
        }
        cost += line_cost;
        end += line.len();
    }
    (cost, end)
}

/// The bytes waiting for one peer: the broker appends lines to them, the peer's writer takes
/// them a chunk at a time. Not bounded here: each line holds a share of its sender's credit
/// (see [`Config::sender_budget`]), returned when the chunk it is in has been written.
///
/// Shared by two tasks only, the broker and this peer's writer, behind a plain `Mutex`: each
/// holds it for a copy or a swap, never across an `await`. `ready` wakes the writer when the
/// bytes go from none to some.
#[derive(Debug, Default)]
struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
}

/// What an [`Outbox`]'s lock guards.
#[derive(Debug, Default)]
struct Pending {
    /// Lines not yet taken by the writer, each ending in `\n`, oldest first, in chunks of
    /// about [`BATCH_BYTES`]: the writer takes one chunk per write, so however far behind its
    /// client is, each write is small and returns its credit soon. A line never straddles two
    /// chunks.
    chunks: VecDeque<Chunk>,
    /// The bytes in `chunks`.
    queued: usize,
    /// The broker dropped its end: nothing more will be queued.
    closed: bool,
    /// The writer's end is gone: nobody will write what is queued.
    writer_gone: bool,
}

/// Lines for one write, with the credit they hold: one permit per run of lines from the same
/// sender (consecutive shares of one sender's credit are merged).
#[derive(Debug, Default)]
struct Chunk {
    bytes: Vec<u8>,
    credit: Vec<OwnedSemaphorePermit>,
}

impl Outbox {
    /// The lock, poisoned or not: every change under it is an append, a pop or a flag, so a
    /// panic elsewhere cannot leave `Pending` half-changed.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pending {
    /// Appends `from NAME: text\n`, and the credit it holds, to the newest chunk, or starts a
    /// new chunk if the newest has no room left for it (or there is none).
    fn append(&mut self, from: &str, text: &str, credit: OwnedSemaphorePermit) {
        let cost = queue_cost(from, text);
        let chunk = match self.chunks.back_mut() {
            Some(chunk) if chunk.bytes.len() + cost <= BATCH_BYTES => chunk,
            _ => {
                self.chunks.push_back(Chunk::default());
                // Just pushed, so there is a last chunk.
                self.chunks.back_mut().expect("a chunk was just pushed")
            }
        };
        append_message(&mut chunk.bytes, from, text);
        match chunk.credit.last_mut() {
            Some(last) if Arc::ptr_eq(last.semaphore(), credit.semaphore()) => last.merge(credit),
            _ => chunk.credit.push(credit),
        }
        self.queued += cost;
    }
}

/// The broker's end of a peer's [`Outbox`].
#[derive(Debug)]
struct PeerQueue {
    outbox: Arc<Outbox>,
}

/// The writer's end of a peer's [`Outbox`].
#[derive(Debug)]
struct QueueReceiver {
    outbox: Arc<Outbox>,
}

/// A queue for one peer.
fn peer_queue() -> (PeerQueue, QueueReceiver) {
    let outbox = Arc::new(Outbox::default());
    let queue = PeerQueue {
        outbox: Arc::clone(&outbox),
    };
    (queue, QueueReceiver { outbox })
}

impl PeerQueue {
    /// Queues `from NAME: text\n` with the share of its sender's credit it holds. Never
    /// waits; fails only if the writer is gone (then the credit goes back at once).
    fn push(
        &self,
        from: &str,
        text: &str,
        credit: OwnedSemaphorePermit,
    ) -> std::result::Result<(), TrySendError<()>> {
        // ANCHOR: exercise_push
        // Queue the line with its credit.
        // Under the outbox's lock: `Closed` if the writer is gone; otherwise
        // `Pending::append` the line. After the lock is released, wake the writer with
        // `notify_one`, but only if nothing was queued before this line.
        let mut pending = self.outbox.lock();
        if pending.writer_gone {
            return Err(TrySendError::Closed(()));
        }
        let was_empty = pending.queued == 0;
        pending.append(from, text, credit);
        drop(pending);
        // Only the first line wakes the writer: the ones behind it find it awake.
        if was_empty {
            self.outbox.ready.notify_one();
        }
        Ok(())
        // ANCHOR_END: exercise_push
    }
}

impl Drop for PeerQueue {
    /// Closes the queue: the writer writes what is left, then ends.
    fn drop(&mut self) {
        self.outbox.lock().closed = true;
        self.outbox.ready.notify_one();
    }
}

impl Drop for QueueReceiver {
    /// Tells the broker nobody will write what it queues from now on.
    fn drop(&mut self) {
        self.outbox.lock().writer_gone = true;
    }
}

impl QueueReceiver {
    /// Waits until lines are queued or the queue is closed. Cancel safe: `notify_one` keeps a
    /// permit when nobody waits, so a wake-up that comes between two waits is not lost.
    async fn ready(&self) {
        self.outbox.ready.notified().await;
    }

    /// Takes the oldest chunk of queued lines, if any, and says whether the queue is closed
    /// (then, once the chunks run out, nothing more will come). Both are read under one lock:
    /// a line queued just before the close is never missed. The chunk's credit goes back to
    /// its senders when the writer drops it, once written.
    fn take(&self) -> (Option<Chunk>, bool) {
        let mut pending = self.outbox.lock();
        let chunk = pending.chunks.pop_front();
        pending.queued -= chunk.as_ref().map_or(0, |chunk| chunk.bytes.len());
        (chunk, pending.closed)
    }

    /// How many lines are waiting (for the log of a peer that leaves: it counts them).
    fn len(&self) -> usize {
        let pending = self.outbox.lock();
        let lines = |chunk: &Chunk| chunk.bytes.iter().filter(|&&byte| byte == b'\n').count();
        pending.chunks.iter().map(lines).sum()
    }

    /// The bytes waiting, as counted by [`queue_cost`].
    fn bytes(&self) -> usize {
        self.outbox.lock().queued
    }
}
// ANCHOR_END: peer_queue

// ANCHOR: parse
/// A parsed `dest1, dest2: text` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The destinations, trimmed, in the order written; empty names are dropped.
    pub dest: Vec<String>,
    /// Everything after the first `:`, trimmed.
    pub text: String,
}

// ANCHOR: unsafe_char
/// Whether a terminal would obey `c` rather than show it. Control characters (C0, DEL and C1:
/// what `char::is_control` says) move the cursor, erase, and start escape sequences; Unicode's
/// bidirectional embeddings, overrides and isolates (U+202A to U+202E, U+2066 to U+2069)
/// reorder what follows them on the line. A name may contain none of them; a message may
/// contain a tab, which only moves the cursor forward.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
// ANCHOR_END: unsafe_char

// ANCHOR: validate_name
/// Parses the first line a client sends: its login name, trimmed. `None` unless it is a valid
/// name: not empty, at most [`MAX_NAME_LEN`] bytes, and without `,` or `:` (which separate
/// names in a message line) or characters that [`is_unsafe`] refuses (which could forge lines
/// in a log or a terminal).
pub fn parse_login(line: &str) -> Option<String> {
    let name = line.trim();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c == ',' || c == ':' || is_unsafe(c));
    valid.then(|| name.to_string())
}
// ANCHOR_END: validate_name

/// Parses a message line. Only the first `:` separates destinations from the text, so
/// `bob: a:b` sends `a:b`. A line without `:` is not a message: `None`.
///
/// The server itself uses the two halves below, which borrow from the line instead of
/// copying each name and the text into a `String` of its own.
pub fn parse_message(line: &str) -> Option<Message> {
    let (dest, text) = split_message(line)?;
    Some(Message {
        dest: destinations(dest).map(String::from).collect(),
        text: text.to_string(),
    })
}

// ANCHOR: split_message
/// Splits a message line at its first `:` into the destination list, as written, and the
/// text, trimmed. `None` for a line without `:`.
fn split_message(line: &str) -> Option<(&str, &str)> {
    let (dest, text) = line.split_once(':')?;
    Some((dest, text.trim()))
}

/// The names in a destination list: split at commas, trimmed, empty names dropped.
fn destinations(dest: &str) -> impl Iterator<Item = &str> {
    dest.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
}
// ANCHOR_END: split_message
// ANCHOR_END: parse

// ANCHOR: run
/// Serves clients on `listener` with the default [`Config`] until `shutdown` completes, then
/// shuts down gracefully: see [`run_with`].
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    run_with(listener, shutdown, Config::default()).await
}

/// Serves clients on `listener` within the limits of `config` until `shutdown` completes, then
/// shuts down gracefully: it returns `Ok` once every message already read is written and every
/// connection is closed, or [`GracePeriodExpired`] if that takes longer than the grace period
/// (the connections still open are closed first).
pub async fn run_with(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    config: Config,
) -> Result<()> {
    config.validate()?;
    let server = Server::new(config);

    // ANCHOR: trigger
    let trigger = async {
        // Cancels the token when this future ends, however it ends.
        let _cancel_on_exit = server.shutdown.clone().drop_guard();
        shutdown.await;
    };
    // The accept loop ends when the token is cancelled.
    tokio::join!(trigger, accept_loop(listener, &server));
    // ANCHOR_END: trigger

    server.shut_down().await
}
// ANCHOR_END: run

// ANCHOR: server
/// What every connection shares: the way to the broker, the tokens that stop it, the tracker
/// that waits for it, and the connection slots. `run_with` makes one and feeds it the
/// connections it accepts; tests feed it in-memory pipes instead, so that the rules that
/// depend on time can be checked with tokio's paused clock.
pub struct Server {
    config: Config,
    broker: Sender<Event>,
    /// Cancelled when the graceful shutdown begins: readers stop reading, writers write what
    /// is queued, then everyone ends.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over: every task stops at once and drops its half
    /// of the socket. Each connection gets a child, which the broker cancels on its own to
    /// drop one peer that is too slow.
    close: CancellationToken,
    tracker: TaskTracker,
    /// One permit per open connection: at most `max_connections`.
    slots: Arc<Semaphore>,
    /// Numbers every connection, so that the broker can tell one session of `bob` from the
    /// next.
    next_id: AtomicU64,
}

impl Server {
    /// Starts the broker. Call it inside a tokio runtime.
    ///
    /// # Panics
    ///
    /// If `config` is not valid (see [`Config::validate`]); `run_with` checks first.
    pub fn new(config: Config) -> Server {
        let (broker, events) = mpsc::channel(config.broker_queue_len);
        let tracker = TaskTracker::new();
        tracker.spawn(broker_loop(events, tracker.clone(), config.stall_timeout));
        Server {
            config,
            broker,
            shutdown: CancellationToken::new(),
            close: CancellationToken::new(),
            tracker,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            next_id: AtomicU64::new(0),
        }
    }

    // ANCHOR: serve_connection
    /// Serves one client on `stream`: a TCP connection, or anything else that reads and
    /// writes bytes. Returns at once; the connection lives in tasks on the tracker.
    pub fn serve_connection<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        // ANCHOR: connection_limit
        // `try_acquire`, not `acquire().await`: a full server answers at once instead of
        // leaving the client (and the accept loop) waiting for a slot.
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            eprintln!(
                "{} clients connected; refused one",
                self.config.max_connections
            );
            let (input, output) = tokio::io::split(stream);
            let refused = refuse(output, input, SERVER_FULL, self.config.linger);
            spawn_and_log_error(&self.tracker, until_closed(self.close.clone(), refused));
            return;
        };
        // ANCHOR_END: connection_limit
        let connection = Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            // ANCHOR: child_token
            // Children: cancelled when the server's tokens are, and cancellable on their own
            // without touching any other connection (the broker does so with `close` to drop
            // a slow peer).
            shutdown: self.shutdown.child_token(),
            close: self.close.child_token(),
            // ANCHOR_END: child_token
            config: self.config,
        };
        spawn_and_log_error(
            &self.tracker,
            until_closed(
                connection.close.clone(),
                connection_loop(self.broker.clone(), stream, slot, connection),
            ),
        );
    }
    // ANCHOR_END: serve_connection

    /// Shuts down gracefully, as `run_with` does once its `shutdown` future completes: every
    /// reader stops, everything already read is delivered, and this returns `Ok` once every
    /// task is done, or [`GracePeriodExpired`] after the grace period.
    pub async fn shut_down(self) -> Result<()> {
        let Server {
            broker: broker_sender,
            shutdown,
            close,
            tracker,
            config,
            ..
        } = self;
        // ANCHOR: shutdown
        // 1. We have left the accept loop. 2. Every reader and writer sees the token
        // cancelled, or will when it next looks: it stays cancelled.
        shutdown.cancel();
        // 3. Drop our own sender to the broker. 4. Each reader stops and drops its sender, so
        // 5. the broker's channel closes and its receive loop ends. 6. The broker drops the
        // map, which closes each writer's queue; 7. the writers write what is queued and end.
        drop(broker_sender);
        // 8. Wait for every task on the tracker: readers, broker, writers; but no longer than
        // the grace period.
        tracker.close();
        wait_or_close(&tracker, &close, config.grace_period).await
        // ANCHOR_END: shutdown
    }
}
// ANCHOR_END: server

// ANCHOR: grace_period
/// Waits until every task on `tracker` is done, for at most `grace_period`. Then it cancels
/// `close`, which stops every task that is left (a writer blocked on a client that does not
/// read, for one), waits for them to drop their sockets, and returns [`GracePeriodExpired`].
async fn wait_or_close(
    tracker: &TaskTracker,
    close: &CancellationToken,
    grace_period: Duration,
) -> Result<()> {
    if tokio::time::timeout(grace_period, tracker.wait())
        .await
        .is_ok()
    {
        return Ok(());
    }
    eprintln!(
        "the grace period of {grace_period:?} is over; stopping the {} tasks still running",
        tracker.len()
    );
    close.cancel();
    // Prompt: every task stops at its next `await`, and none of them holds another up.
    tracker.wait().await;
    Err(GracePeriodExpired { grace_period }.into())
}
// ANCHOR_END: grace_period

// ANCHOR: accept_loop
/// Accepts connections until the shutdown token is cancelled and hands each to the server.
///
/// No `?` here: `accept` fails for reasons that concern one connection (it was reset before we
/// took it) or that pass (too many open files). Returning the error would end the loop and
/// with it the whole server, so we log it and go on. We wait a little first: when the process
/// is out of file descriptors, the pending connection stays pending, and trying again at once
/// would fail again at once, a busy loop that keeps one core at 100 % until a client leaves.
async fn accept_loop(listener: TcpListener, server: &Server) {
    // `run_until_cancelled` gives `None` once the token is cancelled, dropping the `accept` in
    // progress. That is safe because `accept` is cancel safe: a connection it had not returned
    // yet is not lost half-accepted. Returning drops the listener: no new clients.
    while let Some(accepted) = server.shutdown.run_until_cancelled(listener.accept()).await {
        match accepted {
            Ok((stream, _peer)) => {
                // ANCHOR: nodelay
                no_delay(&stream);
                // ANCHOR_END: nodelay
                server.serve_connection(stream);
            }
            Err(e) => {
                eprintln!("accept failed: {e}; trying again in {ACCEPT_BACKOFF:?}");
                // The shutdown does not wait for the back-off.
                let backoff = tokio::time::sleep(ACCEPT_BACKOFF);
                server.shutdown.run_until_cancelled(backoff).await;
            }
        }
    }
}

// ANCHOR: no_delay
/// Turns off Nagle's algorithm on an accepted socket: each write is sent at once, instead of
/// waiting while an earlier segment is unacknowledged. Our writers already gather what is
/// queued into one write, so Nagle has nothing left to gather; all it would add is the wait
/// for the client's delayed ACK (up to 40 ms on Linux) before a short reply goes out.
fn no_delay(stream: &TcpStream) {
    // Failing only costs speed, not correctness: log it and serve the client anyway.
    if let Err(e) = stream.set_nodelay(true) {
        eprintln!("cannot set TCP_NODELAY: {e}");
    }
}
// ANCHOR_END: no_delay
// ANCHOR_END: accept_loop

// ANCHOR: connection_loop
/// Who a connection is and how it is told to stop.
#[derive(Debug)]
struct Connection {
    /// Tells this session apart from earlier and later ones with the same name.
    id: u64,
    /// Cancelled when the server's graceful shutdown begins.
    shutdown: CancellationToken,
    /// Cancelled when this connection must end now: the broker found it too slow, or the
    /// grace period is over.
    close: CancellationToken,
    config: Config,
}

/// Reads one client: its login line, then message lines until it disconnects, breaks a rule
/// or shutdown begins, and turns them into events for the broker. The writing half goes to
/// the broker, which hands it to the peer's writer task along with the receiving end of the
/// reader's farewell oneshot and the connection's tokens.
async fn connection_loop<S>(
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

// ANCHOR: take_lines
/// Takes the complete lines off the front of `buffer`, as one `String` of lines each ending
/// in `\n`, and says which rule the next line broke, if one did: longer than
/// `max_line_len` (a line still without its `\n` counts too), not UTF-8, or one of
/// [`line_refusal`]'s. The lines before a broken one are returned; the broken one and what
/// follows go nowhere.
fn take_lines(buffer: &mut Vec<u8>, max_line_len: usize) -> (Option<String>, Option<&'static str>) {
    let mut end = 0;
    let mut broken = None;
    // Whether a line has as many commas as a line may list names: only such a line can list
    // too many (see `first_refused`).
    let mut crowded = false;
    while let Some(newline) = buffer[end..].iter().position(|&b| b == b'\n') {
        if newline > max_line_len {
            broken = Some(LINE_TOO_LONG);
            break;
        }
        let line = &buffer[end..end + newline];
        crowded |= line.iter().filter(|&&b| b == b',').count() >= MAX_DESTINATIONS;
        end += newline + 1;
    }
    if broken.is_none() && buffer.len() - end > max_line_len {
        broken = Some(LINE_TOO_LONG);
    }
    if end == 0 {
        return (None, broken);
    }
    // The partial line stays; the complete ones leave, with the buffer's capacity.
    let rest = buffer.split_off(end);
    let complete = std::mem::replace(buffer, rest);
    let (lines, broken) = match String::from_utf8(complete) {
        Ok(lines) => (Some(lines), broken),
        Err(e) => {
            // Keep the lines before the one with the bad bytes.
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            let good = bytes[..valid]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1);
            bytes.truncate(good);
            // Valid by construction: these bytes come before `valid_up_to`.
            let lines = String::from_utf8(bytes).ok().filter(|l| !l.is_empty());
            (lines, Some(INVALID_UTF8))
        }
    };
    // A line that breaks a rule of message lines comes before any line refused above, so its
    // refusal is the one the client gets, and it goes nowhere.
    let Some(mut lines) = lines else {
        return (None, broken);
    };
    match first_refused(&lines, crowded) {
        Some((start, error)) => {
            lines.truncate(start);
            (Some(lines).filter(|l| !l.is_empty()), Some(error))
        }
        None => (Some(lines), broken),
    }
}
// ANCHOR_END: take_lines

// ANCHOR: message_rules
/// The first of `lines` (each ending in `\n`) that breaks a rule of message lines, if one
/// does: where it starts, and its refusal. `crowded` says whether a line has at least
/// [`MAX_DESTINATIONS`] commas.
fn first_refused(lines: &str, crowded: bool) -> Option<(usize, &'static str)> {
    // Every character `is_unsafe` refuses starts with a byte below 0x20 (`\n` aside), 0x7f
    // (DEL), 0xc2 (the C1 controls) or 0xe2 (the bidirectional ones). One pass over all the
    // lines, with no early exit so that it runs as a vector loop, finds whether any byte
    // does. Mostly none does, and no line is crowded: then no line needs a closer look.
    let suspect = lines.bytes().fold(false, |found, b| {
        found | ((b < 0x20) & (b != b'\n')) | (b == 0x7f) | (b == 0xc2) | (b == 0xe2)
    });
    if !suspect && !crowded {
        return None;
    }
    let mut start = 0;
    for line in lines.split_inclusive('\n') {
        // The ending the broker drops (`str::lines`): `\n`, and a `\r` before it.
        let bare = line.strip_suffix('\n').unwrap_or(line);
        let bare = bare.strip_suffix('\r').unwrap_or(bare);
        if let Some(error) = line_refusal(bare, suspect) {
            return Some((start, error));
        }
        start += line.len();
    }
    None
}

/// The refusal for a message line that breaks a rule of its own: a character [`is_unsafe`]
/// refuses but tab, anywhere in the line (the text goes to other people's terminals), or more
/// than [`MAX_DESTINATIONS`] names. `suspect` says whether it may hold such a character.
fn line_refusal(line: &str, suspect: bool) -> Option<&'static str> {
    if suspect && line.chars().any(|c| c != '\t' && is_unsafe(c)) {
        return Some(CONTROL_CHARACTER);
    }
    let (dest, _text) = line.split_once(':')?;
    // More names than the limit take a comma each and a byte each at least: a shorter list,
    // or one with fewer commas, has no more names than the limit. Most lines stop here.
    if dest.len() > 2 * MAX_DESTINATIONS
        && dest.bytes().filter(|&b| b == b',').count() >= MAX_DESTINATIONS
        && destinations(dest).nth(MAX_DESTINATIONS).is_some()
    {
        return Some(TOO_MANY_DESTINATIONS);
    }
    None
}
// ANCHOR_END: message_rules

/// Sending to the broker fails only if it is gone, which cannot happen while we hold a sender
/// unless it panicked; then the error ends this connection and is logged. (The event itself,
/// which may hold a socket, is not `Sync` and cannot travel inside the error.)
const BROKER_GONE: &str = "the broker is gone";

/// Writes `error` to a client we are not serving and closes the connection in order.
async fn refuse<W, R>(mut output: W, input: R, error: &str, linger: Duration) -> Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    eprintln!("refused a client: {error}");
    output.write_all(format!("{error}\n").as_bytes()).await?;
    close_in_order(output, Some(input), linger).await;
    Ok(())
}

// ANCHOR: close_in_order
/// Closes a connection without losing what we wrote to it: a lingering close.
///
/// Closing a socket while some of the client's bytes are still unread makes the kernel answer
/// with RST instead of FIN, and a reset throws away whatever we wrote that the client had not
/// received yet. So we first shut down our writing direction (FIN: the client reads everything
/// we sent, then the end), then read and discard what the client still sends until it closes
/// its side, and only then let the socket go. `linger`, counted from the FIN, bounds the wait
/// for a client that never closes. `input` is `None` when the client left: nothing more comes.
async fn close_in_order<W, R>(mut output: W, input: Option<R>, linger: Duration)
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
// ANCHOR_END: connection_loop

// ANCHOR: event
/// The writing half of a client's connection, boxed so that the broker does not care what
/// kind of stream it is, together with the connection's slot: the slot is freed when the
/// last task using the connection lets go of it, and that is its writer.
struct ClientWriter {
    stream: Box<dyn AsyncWrite + Send + Unpin>,
    _slot: OwnedSemaphorePermit,
}

impl fmt::Debug for ClientWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientWriter")
    }
}

/// What a reader hands its writer when it stops reading while the client is still there.
struct Handover {
    /// The reading half of the socket, for the lingering close.
    input: Box<dyn AsyncRead + Send + Unpin>,
    /// The `error: ...` line to write after everything queued, if the client broke a rule;
    /// `None` at shutdown.
    farewell: Option<&'static str>,
    /// How long to wait for the client to close its side: [`Config::linger`].
    linger: Duration,
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
enum Login {
    Accepted,
    /// The name is in use: here is the writing half back.
    Taken(ClientWriter),
}

/// What readers tell the broker. Every event flows one way: reader -> broker. (The answer to
/// a login flows back on a oneshot, but the broker never waits on anyone, so the channels
/// still cannot wait on each other in a circle.)
#[derive(Debug)]
enum Event {
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

// ANCHOR: broker_loop
/// A connected peer, as the broker sees it.
#[derive(Debug)]
struct Peer {
    /// Which connection this is: a writer that ends removes the entry only if it is its own.
    id: u64,
    /// The peer's queue, bounded by its senders' credit.
    queue: PeerQueue,
    /// The number of the last line queued for this peer (see [`deliver`]).
    last_line: u64,
}

/// Owns the map from names to peers, routes messages, and removes a peer when its writer ends
/// (the client left, or stopped reading for `stall_timeout`).
///
/// One task owns the map, so no lock is needed: every change to it is an event handled here,
/// one at a time. This task never waits for a peer: a slow client must not slow everyone
/// else down. Writers are spawned on `tracker`, so `run` waits for them.
async fn broker_loop(mut events: Receiver<Event>, tracker: TaskTracker, stall_timeout: Duration) {
    let mut peers: HashMap<String, Peer> = HashMap::new();
    // Writers send `(name, id, receiver)` here when they end.
    let (disconnect_sender, mut disconnect_receiver) = mpsc::unbounded_channel();
    // The number of the last line routed (see `deliver`).
    let mut line_number: u64 = 0;

    loop {
        let event = tokio::select! {
            // Departures first: when a writer has ended and a new login arrives at the same
            // time, the departed name is free before the login is handled, so a client that
            // reconnects at once gets its name back.
            biased;
            disconnect = disconnect_receiver.recv() => {
                // `None` cannot happen here: we hold `disconnect_sender` until after the loop.
                if let Some((name, id, pending)) = disconnect {
                    remove_peer(&mut peers, name, id, pending);
                }
                continue;
            },
            event = events.recv() => match event {
                Some(event) => event,
                // Every reader and the server are gone: no more events will come.
                None => break,
            },
        };
        match event {
            // ANCHOR: route
            // Each line is split where it lies in the event's `String`; each recipient's
            // queue gets a copy of the bytes its line is made of, appended to what it holds.
            Event::Lines {
                from,
                lines,
                mut credit,
            } => {
                // `lines` drops each `\n` and the `\r` of a CRLF ending before it.
                for line in lines.lines() {
                    match split_message(line) {
                        Some((dest, text)) => {
                            // Each line routed gets a number, so that a peer named twice in it
                            // can tell it already has it.
                            line_number += 1;
                            for name in destinations(dest) {
                                deliver(&mut peers, name, line_number, &from, text, &mut credit);
                            }
                        }
                        None => eprintln!("{from}: ignored a line without ':'"),
                    }
                }
            }
            // What is left of `credit` (the over-estimate, and the shares of names nobody has)
            // is dropped with the event: it goes back to the sender at once.
            // ANCHOR_END: route
            Event::Leave { name, id } => {
                // Dropping the entry drops the queue's sender: the writer writes what the
                // queue holds, then sees it closed. (A newer session of the same name stays.)
                if let Entry::Occupied(entry) = peers.entry(name) {
                    if entry.get().id == id {
                        entry.remove();
                    }
                }
            }
            Event::NewPeer {
                name,
                id,
                stream,
                reader_gone,
                close,
                login,
            } => match peers.entry(name) {
                Entry::Occupied(entry) => {
                    eprintln!("{} is taken; login refused", entry.key());
                    // Fails only if the reader is gone; then nobody needs the answer.
                    let _ = login.send(Login::Taken(stream));
                }
                Entry::Vacant(entry) => {
                    let (queue, mut receiver) = peer_queue();
                    let name = entry.key().clone();
                    entry.insert(Peer {
                        id,
                        queue,
                        // Lines are numbered from 1.
                        last_line: 0,
                    });
                    // If the reader is gone, so is its end of `reader_gone`: the writer we
                    // start sees that and ends at once.
                    let _ = login.send(Login::Accepted);
                    let disconnect_sender = disconnect_sender.clone();
                    spawn_and_log_error(&tracker, async move {
                        let writer = writer_loop(&mut receiver, stream, reader_gone, stall_timeout);
                        let result = match until_closed(close.clone(), writer).await {
                            // The client stopped reading, as in step 06: its reader stops too,
                            // and dropping its queue below returns its senders' credit.
                            Err(e) if e.is::<TooSlow>() => {
                                eprintln!("{name} is too slow: {e}; disconnecting it");
                                close.cancel();
                                Ok(())
                            }
                            result => result,
                        };
                        // Hand the receiver back however the writer ended. This send fails
                        // only once the broker has ended, and then nobody needs the peer
                        // removed.
                        let _ = disconnect_sender.send((name, id, receiver));
                        result
                    });
                }
            },
        }
    }

    // ANCHOR: broker_drain
    // Dropping the map drops every peer's sender: each writer writes what is queued and ends.
    // No need to wait for the writers here: they are on the tracker, and `run` waits for
    // everything on it.
    drop(peers);
    // ANCHOR_END: broker_drain
}

// ANCHOR: slow_consumer
/// Queues `from NAME: text` for the peer called `name`, if it is connected and line number
/// `line` is not queued for it yet, without ever waiting, with its share of `credit`.
///
/// As in step 06, the queue never refuses a line for its size: its senders' credit bounds
/// it, and a peer is dropped for time, when its writer makes no progress for the stall
/// timeout.
fn deliver(
    peers: &mut HashMap<String, Peer>,
    name: &str,
    line: u64,
    from: &str,
    text: &str,
    credit: &mut OwnedSemaphorePermit,
) {
    let Some(peer) = peers.get_mut(name) else {
        return;
    };
    // A name written twice in one line: the line is queued for this peer already. (No search
    // through the names before it, as step 06 does: the peer remembers.)
    if peer.last_line == line {
        return;
    }
    peer.last_line = line;
    // The reader paid an upper bound for each name it may reach, so the share is there.
    let Some(share) = credit.split(queue_cost(from, text)) else {
        return;
    };
    if peer.queue.push(from, text, share).is_err() {
        // The writer has ended and its disconnect is on its way; the line is lost with the
        // client, and its credit goes back.
        eprintln!("{name} is gone; a message to it was dropped");
    }
}
// ANCHOR_END: slow_consumer

// ANCHOR: remove_peer
/// Removes a peer whose writer ended, if the entry is still its own: the name may have been
/// freed (the peer was too slow) and taken by a new session since, which must stay. Messages
/// still queued cannot be written any more; the log counts them.
fn remove_peer(peers: &mut HashMap<String, Peer>, name: String, id: u64, pending: QueueReceiver) {
    if let Entry::Occupied(entry) = peers.entry(name.clone()) {
        if entry.get().id == id {
            entry.remove();
        }
    }
    match pending.len() {
        0 => eprintln!("{name} left"),
        n => eprintln!("{name} left; {n} messages to it were not delivered"),
    }
}
// ANCHOR_END: remove_peer
// ANCHOR_END: broker_loop

// ANCHOR: writer_loop
/// Writes every message the broker routes to one peer, in order, to its socket, then closes
/// the connection.
///
/// It ends when its reader ends because the client left (`reader_gone` fails), when its
/// queue closes (the broker dropped its end) or when a write fails. Once the reader has
/// stopped and handed over its half (at shutdown, or after a broken rule), it writes until the
/// broker closes its queue, then the reader's `error:` line if there is one, then closes in
/// order. (And it ends at once, wherever it is, when the connection's `close` token is
/// cancelled: the caller runs it under `until_closed`.)
async fn writer_loop(
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

/// How many bytes a writer lets its queue gather before it takes them (see
/// [`let_queue_fill`]), and the size of the chunks it takes: enough for hundreds of chat
/// lines per system call, and small beside a sender's budget.
const BATCH_BYTES: usize = 16 * 1024;

/// The error a writer ends with when its client took nothing for the stall timeout.
#[derive(Debug)]
struct TooSlow(Duration);

impl fmt::Display for TooSlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a write made no progress for {:?}", self.0)
    }
}

impl std::error::Error for TooSlow {}
// ANCHOR_END: writer_loop

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
    // ANCHOR: no_double
    // `map`, not `async move { fut.await }`: an async block keeps the future it captured
    // and, once awaited, a second copy of it, so each such wrapper doubles the memory of
    // every connection's task. A combinator holds `fut` once.
    tracker.spawn(fut.map(|result| {
        if let Err(e) = result {
            eprintln!("connection failed: {e}");
        }
    }))
    // ANCHOR_END: no_double
}

/// Runs `fut` until it ends or `close` is cancelled, whichever comes first. Dropping `fut`
/// drops whatever it holds, sockets included: that is how a stuck connection is closed.
///
/// Not an `async fn`, for the same reason as above: `with_cancellation_token_owned` is a
/// plain future that holds `fut` once, where `async fn` + `run_until_cancelled` held it
/// twice, and `run_until_cancelled`, itself an `async fn`, twice again.
fn until_closed<F>(close: CancellationToken, fut: F) -> impl Future<Output = Result<()>>
where
    F: Future<Output = Result<()>>,
{
    fut.with_cancellation_token_owned(close)
        .map(|finished| finished.unwrap_or(Ok(())))
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

    /// Names with `,` `:` or control characters, or longer than 32 bytes, are refused; 32
    /// bytes, inner spaces and non-ASCII letters are fine.
    #[test]
    fn invalid_names() {
        for bad in [
            "a,b",
            "a:b",
            "bob:",
            "a\u{7}b",
            "a\tb",
            "a\u{1b}[31mb",
            "\0",
        ] {
            assert_eq!(parse_login(bad), None, "{bad:?} should be refused");
        }
        assert_eq!(parse_login(&"x".repeat(33)), None);
        // 16 two-byte characters are 32 bytes; 17 are 34.
        assert_eq!(parse_login(&"é".repeat(16)), Some("é".repeat(16)));
        assert_eq!(parse_login(&"é".repeat(17)), None);
        assert_eq!(parse_login(&"x".repeat(32)), Some("x".repeat(32)));
        assert_eq!(parse_login("bob smith"), Some("bob smith".to_string()));
    }

    /// What the codec reports maps to the right error line; a failing connection maps to none.
    #[test]
    fn refusal_lines() {
        assert_eq!(
            refusal(&LinesCodecError::MaxLineLengthExceeded),
            Some(LINE_TOO_LONG)
        );
        let invalid = std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8");
        assert_eq!(refusal(&LinesCodecError::Io(invalid)), Some(INVALID_UTF8));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(refusal(&LinesCodecError::Io(reset)), None);
    }

    /// One side of a peer the test logs in by hand: the client's end of its pipe, and what
    /// its reader would hold.
    struct HandPeer {
        client: FramedRead<tokio::io::DuplexStream, LinesCodec>,
        _hand_over: oneshot::Sender<Handover>,
        login: oneshot::Receiver<Login>,
    }

    fn new_peer(name: &str, id: u64, slots: &Arc<Semaphore>) -> (Event, HandPeer) {
        let (client, served) = tokio::io::duplex(64 * 1024);
        let (hand_over, reader_gone) = oneshot::channel();
        let (login, answered) = oneshot::channel();
        let slot = Arc::clone(slots)
            .try_acquire_owned()
            .expect("the test's semaphore has room");
        let event = Event::NewPeer {
            name: name.to_string(),
            id,
            stream: ClientWriter {
                stream: Box::new(served),
                _slot: slot,
            },
            reader_gone,
            close: CancellationToken::new(),
            login,
        };
        let peer = HandPeer {
            client: FramedRead::new(client, LinesCodec::new()),
            _hand_over: hand_over,
            login: answered,
        };
        (event, peer)
    }

    /// Credit from a semaphore of its own, for a test that does not look at it.
    fn free() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(0))
            .try_acquire_many_owned(0)
            .expect("no permits are needed")
    }

    fn to_bob(text: &str) -> Event {
        let lines = format!("bob: {text}\n");
        let (cost, _) = batch_cost("alice", &lines, 1 << 20);
        let credit = Arc::new(Semaphore::new(cost))
            .try_acquire_many_owned(cost as u32)
            .expect("a fresh semaphore has the credit");
        Event::Lines {
            from: Arc::from("alice"),
            lines,
            credit,
        }
    }

    /// The reconnect race: `bob` breaks a rule and leaves, a new `bob` logs in, and only then
    /// does the old `bob`'s writer end. Its disconnect must not remove the new session (the
    /// connection id does not match), so messages keep reaching the new `bob`.
    ///
    /// Deterministic: on this single-threaded runtime the broker handles every event queued
    /// before it runs in one go, so the old writer cannot end before the new `bob` is in.
    #[tokio::test]
    async fn stale_writer_does_not_remove_a_new_session() {
        let slots = Arc::new(Semaphore::new(8));
        let (events, receiver) = mpsc::channel(64);
        let tracker = TaskTracker::new();
        let (old_bob, mut old) = new_peer("bob", 1, &slots);
        let (new_bob, mut new) = new_peer("bob", 2, &slots);
        // The old bob's reader sends `Leave` (it broke a rule) after one line was routed to it.
        let queued = [
            old_bob,
            to_bob("1"),
            Event::Leave {
                name: "bob".to_string(),
                id: 1,
            },
            new_bob,
            to_bob("4"),
        ];
        for event in queued {
            events.send(event).await.expect("the channel has room");
        }
        tracker.spawn(broker_loop(
            receiver,
            tracker.clone(),
            Duration::from_secs(5),
        ));
        assert!(matches!(old.login.await, Ok(Login::Accepted)));
        assert!(
            matches!(new.login.await, Ok(Login::Accepted)),
            "the old bob left, so its name was free for the new one"
        );
        // The old writer writes what was queued before `Leave`, then sees its queue closed
        // and ends: its client sees the end. The writer's disconnect is sent in the same
        // poll, before this test task runs again.
        let old_line = tokio::time::timeout(Duration::from_secs(5), old.client.next()).await;
        assert!(
            matches!(&old_line, Ok(Some(Ok(line))) if line == "from alice: 1"),
            "the old bob got {old_line:?}"
        );
        let end = tokio::time::timeout(Duration::from_secs(5), old.client.next())
            .await
            .expect("the old bob's connection should close");
        assert!(end.is_none(), "the old bob got {end:?} after its line");
        // The broker handles the stale disconnect before this (it polls disconnects first).
        events
            .send(to_bob("5"))
            .await
            .expect("the broker is running");
        for expected in [
            "from alice: 4", // for the new bob
            "from alice: 5", // after the stale disconnect
        ] {
            let line = tokio::time::timeout(Duration::from_secs(5), new.client.next()).await;
            match line {
                Ok(Some(Ok(line))) => assert_eq!(line, expected),
                other => panic!(
                    "the new bob should receive `{expected}`, got {other:?}: the old writer's \
                     disconnect removed the new session"
                ),
            }
        }
    }

    /// A line's credit stays taken while it is queued and while its chunk is being written,
    /// and goes back to its sender when the chunk is dropped; a line refused because the
    /// writer is gone gives its credit back at once.
    #[test]
    fn credit_returns_when_written() {
        let credit = Arc::new(Semaphore::new(100));
        let share = |n| {
            Arc::clone(&credit)
                .try_acquire_many_owned(n)
                .expect("credit left")
        };
        let (queue, receiver) = peer_queue();
        for _ in 0..3 {
            queue
                .push("alice", "hi", share(10))
                .expect("the writer is there");
        }
        assert_eq!(credit.available_permits(), 70);
        let (chunk, closed) = receiver.take();
        let chunk = chunk.expect("three lines were queued");
        assert_eq!(chunk.bytes, b"from alice: hi\n".repeat(3));
        assert_eq!(chunk.credit.len(), 1, "shares of one sender are merged");
        assert!(!closed);
        assert_eq!(
            credit.available_permits(),
            70,
            "the chunk being written still holds it"
        );
        drop(chunk);
        assert_eq!(credit.available_permits(), 100);
        drop(receiver);
        assert!(matches!(
            queue.push("alice", "hi", share(10)),
            Err(TrySendError::Closed(()))
        ));
        assert_eq!(
            credit.available_permits(),
            100,
            "a line nobody will write kept its credit"
        );
    }

    /// A batch costs at most what its recipients will receive, counted without parsing: each
    /// line its text (untrimmed) times its names (commas plus one, at most
    /// `MAX_DESTINATIONS`); a line without `:` costs nothing; and a batch is cut where the
    /// budget runs out, but never before its first line.
    #[test]
    fn batch_cost_is_an_upper_bound() {
        let exact = queue_cost("alice", "hi");
        let (cost, end) = batch_cost("alice", "bob: hi\n", 1 << 20);
        assert!(cost >= exact && cost <= exact + 2, "{cost}");
        assert_eq!(end, 8);
        let (cost, _) = batch_cost("alice", "bob, carol,bob: hi\nno colon\n", 1 << 20);
        assert!(cost >= 3 * exact, "{cost}");
        let many = format!("{}: hi\n", vec!["b"; 100].join(","));
        let (cost, _) = batch_cost("alice", &many, 1 << 20);
        assert!(cost <= MAX_DESTINATIONS * (exact + 2), "{cost}");
        let two = "bob: hi\nbob: hi\n";
        let (one, end) = batch_cost("alice", two, 1);
        assert_eq!(
            end, 8,
            "a budget too small for two lines pays for the first only"
        );
        assert!(one > 1, "the first line goes whatever the budget");
    }

    /// The bytes every recipient gets are the wire format, `from NAME: text\n`, text as
    /// given, and [`queue_cost`] counts exactly those bytes.
    #[test]
    fn append_message_is_the_wire_format() {
        let mut queue = b"from bob: earlier\n".to_vec();
        append_message(&mut queue, "alice", "a:b c");
        assert_eq!(queue, b"from bob: earlier\nfrom alice: a:b c\n");
        let mut queue = Vec::new();
        append_message(&mut queue, "é", "");
        assert_eq!(queue, "from é: \n".as_bytes());
        assert_eq!(queue.len(), queue_cost("é", ""));
    }

    /// `take_lines` takes every complete line and leaves a partial one; a line too long
    /// (finished or not) or not UTF-8 is reported, and the lines before it are still taken.
    #[test]
    fn take_lines_keeps_what_came_before_a_broken_line() {
        let mut buffer = b"a: 1\nb: 2\r\nc: par".to_vec();
        assert_eq!(
            take_lines(&mut buffer, 10),
            (Some("a: 1\nb: 2\r\n".to_string()), None)
        );
        assert_eq!(buffer, b"c: par");
        assert_eq!(take_lines(&mut buffer, 10), (None, None));

        let mut buffer = b"a: 1\nb: 0123456789x\nc: 3\n".to_vec();
        assert_eq!(
            take_lines(&mut buffer, 10),
            (Some("a: 1\n".to_string()), Some(LINE_TOO_LONG))
        );
        let mut buffer = b"a: 1\nb: 0123456789".to_vec();
        assert_eq!(
            take_lines(&mut buffer, 10),
            (Some("a: 1\n".to_string()), Some(LINE_TOO_LONG)),
            "a line already too long without its newline"
        );

        let mut buffer = b"a: 1\nb: \xff\nc: 3\n".to_vec();
        assert_eq!(
            take_lines(&mut buffer, 10),
            (Some("a: 1\n".to_string()), Some(INVALID_UTF8))
        );
        let mut buffer = b"\xffa: 1\n".to_vec();
        assert_eq!(take_lines(&mut buffer, 10), (None, Some(INVALID_UTF8)));
    }

    /// A line with a control character (tab excepted) or a bidirectional embedding, override
    /// or isolate, or with more than `MAX_DESTINATIONS` names, is refused by `take_lines`: the
    /// lines before it are taken, it and the rest go nowhere, and its refusal wins over that of
    /// a later line. Ordinary Unicode, tabs and CRLF endings pass.
    #[test]
    fn take_lines_applies_the_message_rules() {
        let take = |bytes: &[u8]| take_lines(&mut bytes.to_vec(), 4096);
        for bad in [
            "bob: hi\rfrom carol: I am carol",
            "bob: \u{1b}]0;pwned\u{7}",
            "bob: \u{1b}[2K",
            "bob: a\0b",
            "bob: a\u{7f}",
            "bob: \u{9b}2J",
            "bob: \u{202e}olleh",
            "bob: \u{2066}x",
            "bob: trailing form feed\u{c}",
            "b\u{1b}ob: in a name",
            "no colon \u{1b}",
        ] {
            assert_eq!(
                take(&[format!("a: 1\n{bad}\n").as_bytes(), b"b: \xff\n"].concat()),
                (Some("a: 1\n".to_string()), Some(CONTROL_CHARACTER)),
                "{bad:?}"
            );
        }
        let good = "bob: a\tb café 日本語 🦀 👩\u{200d}💻 שלום \u{200e} ’quoted’\r\nno colon\n";
        assert_eq!(take(good.as_bytes()), (Some(good.to_string()), None));
        let names = |n: usize| vec!["bob"; n].join(" , ");
        let most = format!("{}: x\n", names(MAX_DESTINATIONS));
        assert_eq!(take(most.as_bytes()), (Some(most.clone()), None));
        let too_many = format!("{most}{}: x\nbob: after\n", names(MAX_DESTINATIONS + 1));
        assert_eq!(
            take(too_many.as_bytes()),
            (Some(most), Some(TOO_MANY_DESTINATIONS))
        );
        // Empty names are not names: commas alone do not count.
        let commas = format!("bob{}: x\n", ",".repeat(2 * MAX_DESTINATIONS));
        assert_eq!(take(commas.as_bytes()), (Some(commas.clone()), None));
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

    /// `until_closed` holds the future it wraps once: every connection's task is about the
    /// size of its own state, not two or four times that.
    #[test]
    fn until_closed_holds_the_future_once() {
        let big = async {
            let state = [1u8; 4096];
            tokio::task::yield_now().await;
            assert_eq!(state[4095], 1);
            Ok(())
        };
        let alone = std::mem::size_of_val(&big);
        let wrapped = std::mem::size_of_val(&until_closed(CancellationToken::new(), big));
        assert!(alone >= 4096);
        assert!(
            wrapped < alone + 256,
            "a {alone}-byte future takes {wrapped} bytes once wrapped"
        );
    }

    /// Limits of 0 (and beyond what tokio can count) are refused; the defaults are valid.
    #[test]
    fn config_validation() {
        assert_eq!(Config::default().validate(), Ok(()));
        for broken in [
            Config {
                sender_budget: 1000,
                ..Config::default()
            },
            Config {
                stall_timeout: Duration::ZERO,
                ..Config::default()
            },
            Config {
                max_connections: usize::MAX,
                ..Config::default()
            },
            Config {
                login_timeout: Duration::ZERO,
                ..Config::default()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?} should be refused");
        }
    }
}
