//! Step 07: the hardened server of step 06, made fast. Same protocol, same limits, same
//! graceful shutdown; what changes is the cost of each message. Accepted sockets send at once
//! (`TCP_NODELAY`); a message is formatted once, by its reader, into one shared allocation
//! that every recipient's queue points to; a writer sends everything queued for its client in
//! one write; and an idle connection holds small buffers only. (The binary also listens with a
//! deeper backlog: see `main.rs`.)

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
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
    /// `error: line too long` and the connection is closed.
    pub max_line_len: usize,
    /// How long a new client has to send its name before it is closed.
    pub login_timeout: Duration,
    /// How many bytes of lines may wait for one peer (each line counted with its slot in the
    /// queue, see [`queue_cost`]). A peer whose queue would go over is too slow: it is
    /// disconnected.
    pub peer_queue_bytes: usize,
    /// How many events the readers may queue for the broker; a reader that finds the queue
    /// full waits (it stops reading its client) until the broker catches up.
    pub broker_queue_len: usize,
    /// How many clients may be connected at once. One more gets `error: server full`.
    pub max_connections: usize,
    /// How long a graceful shutdown may take. After it, the remaining connections are closed
    /// and [`run`] returns [`GracePeriodExpired`].
    pub grace_period: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_line_len: 4096,
            login_timeout: Duration::from_secs(10),
            peer_queue_bytes: 512 * 1024,
            broker_queue_len: 1024,
            max_connections: 10_000,
            grace_period: Duration::from_secs(10),
        }
    }
}

/// The longest name a client may log in with, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// How long the accept loop waits after `accept` failed before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The size a connection's read buffer starts at. Most chat lines fit; the codec grows the
/// buffer for a longer line, and a client that sends in bulk gets [`BUSY_READ_BUFFER`].
const READ_BUFFER: usize = 512;

/// The room a client that sends lines in bulk gets in its read buffer: one read takes in
/// about eighty-five of the fan-out's lines instead of seven.
const BUSY_READ_BUFFER: usize = 8 * 1024;
// ANCHOR_END: config

impl Config {
    /// Checks that every limit can be used: counts are at least 1 (a queue of 0 cannot hold
    /// anything, and tokio panics on one) and at most what tokio's semaphores can count, and
    /// a peer's queue holds at least one line of the longest kind (or every message to a
    /// client would drop it).
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
        // `from NAME: text\n` with the longest name and text, and its slot.
        let longest = "from : \n".len() + MAX_NAME_LEN + self.max_line_len + size_of::<Line>();
        if self.peer_queue_bytes < longest {
            return Err(format!(
                "the peer queue must hold at least one line of the longest kind: {longest} \
                 bytes or more with this max line length, not {}",
                self.peer_queue_bytes
            ));
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

/// The line to send a client whose input broke a rule, or `None` when the error is not the
/// client's fault to be told about (the connection failed: nobody is there to read it).
fn refusal(error: &LinesCodecError) -> Option<&'static str> {
    match error {
        // `LinesCodec` discards the rest of the line rather than buffering it, so the memory
        // an attacker can make us hold is `max_line_len`, not the length of their line.
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
/// A line as the writers send it, `from NAME: text\n`, built once per message. `Arc<str>`: every
/// recipient's queue holds a pointer to the same allocation, and cloning it for one more
/// recipient is an atomic increment, not a copy of the text.
type Line = Arc<str>;

/// Builds the line every recipient of `text` from `from` receives: `from NAME: text\n`.
///
/// The reader of the sender calls it, so the work is spread over the runtime's threads instead
/// of piling up in the one broker task, and it is done once per message, not once per recipient.
pub fn message_line(from: &str, text: &str) -> Arc<str> {
    // ANCHOR: exercise_message_line
    // Build the line once, in an allocation every recipient will share.
    // Put `from NAME: text\n` in a String of exactly the right capacity (`push_str`, no
    // `format!`), then turn it into an `Arc<str>`.
    let mut line = String::with_capacity("from : \n".len() + from.len() + text.len());
    line.push_str("from ");
    line.push_str(from);
    line.push_str(": ");
    line.push_str(text);
    line.push('\n');
    Arc::from(line)
    // ANCHOR_END: exercise_message_line
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
/// What one queued line costs its peer's budget: its bytes and its slot in the queue. The
/// bytes are shared with the line's other recipients, but this peer alone can keep them
/// alive, so each recipient is charged all of them.
pub fn queue_cost(line: &str) -> usize {
    line.len() + size_of::<Line>()
}

/// A peer's queue, bounded in bytes instead of lines: a thousand short lines and a few long
/// ones weigh what they hold. Step 06 counted lines, which is either too few short ones (a
/// reader that loses the CPU for a moment falls 1024 lines behind at once) or too many long
/// ones (1024 lines of 4 KiB are 4 MiB).
///
/// The channel itself is unbounded; the bound is the `queued` counter, which the broker alone
/// raises and the writer lowers for every line it takes out. The broker's check can only be
/// too strict, never too lenient: whatever the writer does meanwhile makes the queue shorter.
/// (Not counted: the `Arc`'s own header and the allocator's rounding, and the batch being
/// written, at most [`BATCH_BYTES`] and a line.)
#[derive(Debug)]
struct PeerQueue {
    lines: mpsc::UnboundedSender<Line>,
    queued: Arc<AtomicUsize>,
    budget: usize,
}

/// The writer's end of a [`PeerQueue`]: every line taken out gives its cost back.
#[derive(Debug)]
struct QueueReceiver {
    lines: mpsc::UnboundedReceiver<Line>,
    queued: Arc<AtomicUsize>,
}

/// A queue for one peer, holding at most `budget` bytes of lines (see [`queue_cost`]).
fn peer_queue(budget: usize) -> (PeerQueue, QueueReceiver) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let queue = PeerQueue {
        lines: sender,
        queued: Arc::clone(&queued),
        budget,
    };
    (
        queue,
        QueueReceiver {
            lines: receiver,
            queued,
        },
    )
}

impl PeerQueue {
    /// Queues `line` unless that would take the queue over its budget. Never waits.
    fn try_send(&self, line: &Line) -> std::result::Result<(), TrySendError<()>> {
        let cost = queue_cost(line);
        // `Relaxed`: the counter orders nothing else; the channel carries the line itself.
        if self.queued.load(Ordering::Relaxed).saturating_add(cost) > self.budget {
            return Err(TrySendError::Full(()));
        }
        self.queued.fetch_add(cost, Ordering::Relaxed);
        self.lines.send(Arc::clone(line)).map_err(|_| {
            // The receiving end is gone; the line was not queued after all.
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            TrySendError::Closed(())
        })
    }

    /// The bytes waiting, as counted by [`queue_cost`].
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl QueueReceiver {
    /// The next line, waiting for one; `None` once the broker dropped the queue and every line
    /// is out. Cancel safe, as `UnboundedReceiver::recv` is: nothing after its `await` can be
    /// interrupted, so a line is either returned or left in the queue.
    async fn recv(&mut self) -> Option<Line> {
        let line = self.lines.recv().await?;
        self.queued.fetch_sub(queue_cost(&line), Ordering::Relaxed);
        Some(line)
    }

    /// The next line if one is queued, without waiting.
    fn try_recv(&mut self) -> std::result::Result<Line, TryRecvError> {
        let line = self.lines.try_recv()?;
        self.queued.fetch_sub(queue_cost(&line), Ordering::Relaxed);
        Ok(line)
    }

    /// How many lines are waiting.
    fn len(&self) -> usize {
        self.lines.len()
    }

    /// The bytes waiting, as counted by [`queue_cost`].
    fn bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
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

// ANCHOR: validate_name
/// Parses the first line a client sends: its login name, trimmed. `None` unless it is a valid
/// name: not empty, at most [`MAX_NAME_LEN`] bytes, and without `,` or `:` (which separate
/// names in a message line) or control characters (which could forge lines in a log or a
/// terminal).
pub fn parse_login(line: &str) -> Option<String> {
    let name = line.trim();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c == ',' || c == ':' || c.is_control());
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
        tracker.spawn(broker_loop(
            events,
            tracker.clone(),
            config.peer_queue_bytes,
        ));
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
            spawn_and_log_error(
                &self.tracker,
                until_closed(self.close.clone(), refuse(stream, SERVER_FULL)),
            );
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
        // map, which closes each writer's channel; 7. the writers write what is queued and end.
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
    // `LinesCodec` splits the byte stream at `\n` (dropping a `\r` before it) and checks that
    // each line is UTF-8. With a maximum it never buffers more than `max_line_len` bytes of
    // one line: past that, it reports `MaxLineLengthExceeded`.
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
        () = shutdown.cancelled() => return Ok(()),
        line = tokio::time::timeout(config.login_timeout, lines.next()) => line,
    };
    // Until the broker has the writing half, this task is the only one that writes to the
    // client: it answers a bad login line itself.
    let name = match first_line {
        Err(_elapsed) => return refuse(writer.stream, LOGIN_TIMED_OUT).await,
        Ok(None) => return Err("peer disconnected before sending a name".into()),
        Ok(Some(Err(e))) => match refusal(&e) {
            Some(error) => return refuse(writer.stream, error).await,
            None => return Err(e.into()),
        },
        Ok(Some(Ok(line))) => match parse_login(&line) {
            Some(name) => name,
            None => return refuse(writer.stream, INVALID_NAME).await,
        },
    };
    // ANCHOR_END: login
    // ANCHOR_END: reader_shutdown
    // ANCHOR: shutdown_sender
    // The reader's last word to its writer. Dropping the sender (on return, on `?`, on a
    // panic) says "the client left: stop"; sending a line on it says "the client broke a
    // rule: write what is queued, then this line, then close".
    let (farewell, reader_gone) = oneshot::channel::<String>();
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
            shutdown: shutdown.clone(),
            close,
            login: answer,
        })
        .await
        .map_err(|_| BROKER_GONE)?;
    match answered.await {
        Ok(Login::Accepted) => eprintln!("{name} logged in"),
        // The broker gave the writing half back: we answer, as for any bad login.
        Ok(Login::Taken(writer)) => return refuse(writer.stream, NAME_TAKEN).await,
        Err(_) => return Err("the broker dropped the login".into()),
    }
    // ANCHOR_END: join

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
                // ANCHOR: send_line
                Some(Ok(mut received)) => {
                    // ANCHOR: busy_read_buffer
                    // `FramedRead` reads only into the room its buffer has left. When one read
                    // brought more than this line, the client sends faster than one line at a
                    // time: it gets room for many lines per read. A client that sends a line
                    // now and then keeps the small buffer it logged in with.
                    let buffer = lines.read_buffer_mut();
                    if !buffer.is_empty() && buffer.capacity() - buffer.len() < BUSY_READ_BUFFER / 2
                    {
                        buffer.reserve(BUSY_READ_BUFFER);
                    }
                    // ANCHOR_END: busy_read_buffer
                    match split_message(&received) {
                    Some((dest, text)) => {
                        // The line the recipients get is built here, once, not by the broker
                        // for each of them.
                        let line = message_line(&name, text);
                        // The destination list is the start of what we received: cut the
                        // rest off and send that same `String`, no copy, no `Vec` of names.
                        let dest_len = dest.len();
                        received.truncate(dest_len);
                        // `send` waits while the broker's queue is full: this client is not
                        // read meanwhile, which is the backpressure we want.
                        broker
                            .send(Event::Message {
                                dest: received,
                                line,
                            })
                            .await
                            .map_err(|_| BROKER_GONE)?;
                    }
                    None => eprintln!("{name}: ignored a line without ':'"),
                    }
                }
                // ANCHOR_END: send_line
                // ANCHOR: bad_line
                Some(Err(e)) => match refusal(&e) {
                    Some(error) => {
                        eprintln!("{name}: {error}; closing the connection");
                        // Fails only if the writer has ended: then nobody is left to tell.
                        let _ = farewell.send(error.to_string());
                        break;
                    }
                    None => return Err(e.into()),
                },
                // ANCHOR_END: bad_line
                None => {
                    eprintln!("{name} disconnected");
                    break;
                }
            },
        }
    }
    Ok(())
}

/// Sending to the broker fails only if it is gone, which cannot happen while we hold a sender
/// unless it panicked; then the error ends this connection and is logged. (The event itself,
/// which may hold a socket, is not `Sync` and cannot travel inside the error.)
const BROKER_GONE: &str = "the broker is gone";

/// Writes `error` to a client we are not serving and closes the connection.
async fn refuse<W>(mut stream: W, error: &str) -> Result<()>
where
    W: AsyncWrite + Unpin,
{
    eprintln!("refused a client: {error}");
    stream.write_all(format!("{error}\n").as_bytes()).await?;
    // Closes our writing direction, so the client reads the line and then the end.
    stream.shutdown().await?;
    Ok(())
}
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
    /// `reader_gone` completes when its reader ends (with a last line, or with an error if
    /// there is none), `shutdown` and `close` are the connection's tokens, and `login` takes
    /// the broker's answer.
    NewPeer {
        name: String,
        id: u64,
        stream: ClientWriter,
        reader_gone: oneshot::Receiver<String>,
        shutdown: CancellationToken,
        close: CancellationToken,
        login: oneshot::Sender<Login>,
    },
    /// `line`, already in the form its recipients get (`from NAME: text\n`), goes to the peers
    /// named in `dest`, the destination list as the client wrote it (`bob, carol`).
    Message { dest: String, line: Line },
}
// ANCHOR_END: event

// ANCHOR: broker_loop
/// A connected peer, as the broker sees it.
#[derive(Debug)]
struct Peer {
    /// Which connection this is: a writer that ends removes the entry only if it is its own.
    id: u64,
    /// The peer's queue, holding at most `peer_queue_bytes` bytes of lines.
    queue: PeerQueue,
    /// Cancelling it ends the peer's reader and writer at once.
    close: CancellationToken,
}

/// Owns the map from names to peers, routes messages, and removes a peer when its writer ends
/// or when it falls too far behind.
///
/// One task owns the map, so no lock is needed: every change to it is an event handled here,
/// one at a time. This task never waits for a peer: a slow client must not slow everyone
/// else down. Writers are spawned on `tracker`, so `run` waits for them.
async fn broker_loop(mut events: Receiver<Event>, tracker: TaskTracker, peer_queue_bytes: usize) {
    let mut peers: HashMap<String, Peer> = HashMap::new();
    // Writers send `(name, id, receiver)` here when they end.
    let (disconnect_sender, mut disconnect_receiver) = mpsc::unbounded_channel();

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
            // No formatting and no copy here: each recipient's queue gets a pointer to the
            // line its sender's reader built.
            Event::Message { dest, line } => {
                for name in destinations(&dest) {
                    deliver(&mut peers, name, &line);
                }
            }
            // ANCHOR_END: route
            Event::NewPeer {
                name,
                id,
                stream,
                reader_gone,
                shutdown,
                close,
                login,
            } => match peers.entry(name) {
                Entry::Occupied(entry) => {
                    eprintln!("{} is taken; login refused", entry.key());
                    // Fails only if the reader is gone; then nobody needs the answer.
                    let _ = login.send(Login::Taken(stream));
                }
                Entry::Vacant(entry) => {
                    let (queue, mut receiver) = peer_queue(peer_queue_bytes);
                    let name = entry.key().clone();
                    entry.insert(Peer {
                        id,
                        queue,
                        close: close.clone(),
                    });
                    // If the reader is gone, so is its end of `reader_gone`: the writer we
                    // start sees that and ends at once.
                    let _ = login.send(Login::Accepted);
                    let disconnect_sender = disconnect_sender.clone();
                    spawn_and_log_error(&tracker, async move {
                        let result = until_closed(
                            close,
                            writer_loop(&mut receiver, stream, reader_gone, shutdown),
                        )
                        .await;
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
/// Queues `line` for the peer called `name`, if it is connected, without ever waiting.
///
/// The policy for a slow consumer: a peer whose queue cannot take `line` within its
/// `peer_queue_bytes` has fallen too far behind. It is disconnected at once and told nothing
/// more (anything we wrote would wait behind the lines it is not reading). Its name is free
/// again right away.
fn deliver(peers: &mut HashMap<String, Peer>, name: &str, line: &Line) {
    let Some(peer) = peers.get(name) else {
        return;
    };
    match peer.queue.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(())) => {
            eprintln!(
                "{name} is too slow: {} bytes are waiting for it; disconnecting it",
                peer.queue.queued()
            );
            // Its reader and writer stop at their next `await`, even in the middle of a
            // write that would never finish.
            peer.close.cancel();
            peers.remove(name);
        }
        // The writer has ended and its disconnect is on its way; the line is lost with the
        // client.
        Err(TrySendError::Closed(_)) => eprintln!("{name} is gone; a message to it was dropped"),
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
/// Writes every message the broker routes to one peer, in order, to its socket.
///
/// It ends when its reader ends (the client left: `reader_gone` fails), after a last line
/// when its reader stopped the client for breaking a rule, when its channel closes (the broker
/// dropped the sender) or when a write fails. Once shutdown has begun it ends only when its
/// channel closes, after writing everything queued. (And at once, wherever it is, when the
/// connection's `close` token is cancelled: the caller runs it under `until_closed`.)
async fn writer_loop(
    messages: &mut QueueReceiver,
    stream: ClientWriter,
    mut reader_gone: oneshot::Receiver<String>,
    shutdown: CancellationToken,
) -> Result<()> {
    // The slot stays taken until this function returns and the socket is dropped. The lines
    // end in `\n` already: the writer writes their bytes as they are, with no codec and no
    // buffer of its own while it is idle.
    let ClientWriter { mut stream, _slot } = stream;
    // ANCHOR: writer_drain
    // Once shutdown has begun, our reader stops on its own, while the broker may still route
    // us messages it read before the signal. So from then on "the reader is gone" no longer
    // means "the client left": we ignore it and write until the broker closes our channel.
    let mut shutting_down = false;
    loop {
        tokio::select! {
            // `biased`: the branches are polled in this order, not at random.
            biased;
            // A queued message is always written first.
            message = messages.recv() => match message {
                // ANCHOR: batch
                Some(message) => {
                    let_queue_fill(messages).await;
                    write_batch(message, messages, &mut stream).await?;
                }
                // ANCHOR_END: batch
                None => break,
            },
            // `&mut`: the same receiver is polled on every turn instead of being moved into
            // the first one.
            reader_gone = &mut reader_gone, if !shutting_down => match reader_gone {
                // ANCHOR: farewell
                // The client broke a rule. We only get here with an empty queue (`biased`:
                // queued messages come first), so it has had everything queued before its
                // error; now the error, and the end.
                Ok(farewell) => {
                    stream.write_all(format!("{farewell}\n").as_bytes()).await?;
                    stream.flush().await?;
                    break;
                }
                // ANCHOR_END: farewell
                // The sender was dropped: the reader has ended. Why? The token is a state we
                // can ask: a reader stops for shutdown only after the token was cancelled,
                // so if it is not cancelled, the client left.
                Err(_) if !shutdown.is_cancelled() => break,
                Err(_) => shutting_down = true,
            },
        }
    }
    // ANCHOR_END: writer_drain
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
    let mut queued = messages.len();
    while messages.bytes() < BATCH_BYTES {
        tokio::task::yield_now().await;
        let now = messages.len();
        if now == queued {
            break;
        }
        queued = now;
    }
}
// ANCHOR_END: let_queue_fill

// ANCHOR: write_batch
/// How many bytes one batch gathers at most before it is written. Enough for hundreds of
/// chat lines per system call; small enough that a writer stuck on a client that does not
/// read holds little memory besides its queue.
const BATCH_BYTES: usize = 16 * 1024;

/// Writes `first` and whatever else is already queued (up to about [`BATCH_BYTES`]) with one
/// `write_all`: one system call for many lines, where step 06's codec copied each line into
/// its own 8 KiB buffer first. A writer that made one call per line could fall behind a
/// client that reads perfectly well, and be dropped as too slow.
///
/// The batch is a buffer of this call: a writer between batches holds none, so ten thousand
/// idle clients cost ten thousand empty queues, not ten thousand buffers.
async fn write_batch<W>(first: Line, messages: &mut QueueReceiver, stream: &mut W) -> Result<()>
where
    W: AsyncWrite + Unpin,
{
    // ANCHOR: exercise_write_batch
    // Write `first` and the lines already queued behind it with one write.
    // If `try_recv` finds nothing more, write `first` as it is; otherwise copy `first` and
    // every line `try_recv` gives into one Vec<u8> (stop at BATCH_BYTES) and `write_all` it.
    // Flush at the end.
    match messages.try_recv() {
        // One line: write it from the shared allocation, no copy.
        Err(_) => stream.write_all(first.as_bytes()).await?,
        Ok(second) => {
            let mut batch = Vec::with_capacity(BATCH_BYTES);
            batch.extend_from_slice(first.as_bytes());
            batch.extend_from_slice(second.as_bytes());
            while batch.len() < BATCH_BYTES {
                let Ok(line) = messages.try_recv() else {
                    break;
                };
                batch.extend_from_slice(line.as_bytes());
            }
            stream.write_all(&batch).await?;
        }
    }
    // A no-op on a TCP socket, which keeps no buffer of its own; needed for any stream that
    // does.
    stream.flush().await?;
    Ok(())
    // ANCHOR_END: exercise_write_batch
}
// ANCHOR_END: write_batch
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
        _farewell: oneshot::Sender<String>,
        login: oneshot::Receiver<Login>,
    }

    fn new_peer(name: &str, id: u64, slots: &Arc<Semaphore>) -> (Event, HandPeer) {
        let (client, served) = tokio::io::duplex(64 * 1024);
        let (farewell, reader_gone) = oneshot::channel();
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
            shutdown: CancellationToken::new(),
            close: CancellationToken::new(),
            login,
        };
        let peer = HandPeer {
            client: FramedRead::new(client, LinesCodec::new()),
            _farewell: farewell,
            login: answered,
        };
        (event, peer)
    }

    fn to_bob(text: &str) -> Event {
        Event::Message {
            dest: "bob".to_string(),
            line: message_line("alice", text),
        }
    }

    /// The reconnect race: `bob` is dropped as too slow, a new `bob` logs in, and only then
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
        // A queue of two lines: the third finds it full (the old writer has not run yet).
        let queued = [
            old_bob,
            to_bob("1"),
            to_bob("2"),
            to_bob("3"),
            new_bob,
            to_bob("for the new bob"),
        ];
        for event in queued {
            events.send(event).await.expect("the channel has room");
        }
        let two_lines = 2 * queue_cost(&message_line("alice", "1"));
        tracker.spawn(broker_loop(receiver, tracker.clone(), two_lines));
        assert!(matches!(old.login.await, Ok(Login::Accepted)));
        assert!(
            matches!(new.login.await, Ok(Login::Accepted)),
            "the old bob was dropped as too slow, so its name was free for the new one"
        );
        // The old writer was closed before it wrote anything: its client sees the end. The
        // writer's disconnect is sent in the same poll, before this test task runs again.
        let old_lines: Vec<_> = tokio::time::timeout(Duration::from_secs(5), old.client.next())
            .await
            .expect("the old bob's connection should close")
            .into_iter()
            .collect();
        assert!(old_lines.is_empty(), "the old bob got {old_lines:?}");
        // The broker handles the stale disconnect before this (it polls disconnects first).
        events
            .send(to_bob("after the stale disconnect"))
            .await
            .expect("the broker is running");
        for expected in [
            "from alice: for the new bob",
            "from alice: after the stale disconnect",
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

    /// A peer's queue counts bytes, not lines: it takes lines while their costs fit its
    /// budget, refuses the one that does not (however few lines are queued), gets room back
    /// for each line taken out (by `try_recv` or by `recv`), and a line refused because the
    /// receiving end is gone leaves the count as it was.
    #[tokio::test]
    async fn peer_queue_counts_bytes() {
        let short = message_line("alice", "hi");
        let long = message_line("alice", &"x".repeat(200));
        let (queue, mut receiver) = peer_queue(3 * queue_cost(&short));
        for _ in 0..3 {
            queue.try_send(&short).expect("three short lines fit");
        }
        assert_eq!(queue.queued(), 3 * queue_cost(&short));
        assert!(matches!(
            queue.try_send(&short),
            Err(TrySendError::Full(()))
        ));
        assert_eq!(receiver.try_recv().as_deref(), Ok(&*short));
        assert_eq!(queue.queued(), 2 * queue_cost(&short));
        assert_eq!(receiver.recv().await.as_deref(), Some(&*short));
        assert_eq!(queue.queued(), queue_cost(&short));
        assert!(
            matches!(queue.try_send(&long), Err(TrySendError::Full(()))),
            "a long line does not fit where two short ones were taken out"
        );
        queue.try_send(&short).expect("a short one does");
        assert_eq!(receiver.len(), 2);
        let (queue, receiver) = peer_queue(1 << 20);
        drop(receiver);
        assert!(matches!(
            queue.try_send(&short),
            Err(TrySendError::Closed(()))
        ));
        assert_eq!(queue.queued(), 0, "a line nobody will write still counted");
    }

    /// The line every recipient gets is the wire format, `from NAME: text\n`, text as given.
    #[test]
    fn message_line_is_the_wire_format() {
        assert_eq!(&*message_line("alice", "a:b c"), "from alice: a:b c\n");
        assert_eq!(&*message_line("é", ""), "from é: \n");
    }

    /// A sink that records each write it is given, and takes all of it.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.push(buf.to_vec());
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

    /// A line alone is written as it is; lines queued behind it go out in the same single
    /// write, in order.
    #[tokio::test]
    async fn queued_lines_go_out_in_one_write() {
        let (queue, mut messages) = peer_queue(1 << 20);
        let mut out = Recorder::default();
        write_batch(message_line("alice", "alone"), &mut messages, &mut out)
            .await
            .expect("the recorder takes everything");
        assert_eq!(out.writes, [b"from alice: alone\n".to_vec()]);

        for i in 1..50 {
            queue
                .try_send(&message_line("alice", &i.to_string()))
                .expect("the queue has room");
        }
        let mut out = Recorder::default();
        write_batch(message_line("alice", "0"), &mut messages, &mut out)
            .await
            .expect("the recorder takes everything");
        let expected: String = (0..50).map(|i| format!("from alice: {i}\n")).collect();
        assert_eq!(out.writes.len(), 1, "50 queued lines took several writes");
        assert_eq!(String::from_utf8_lossy(&out.writes[0]), expected);
        assert!(
            messages.try_recv().is_err(),
            "the batch left lines in the queue"
        );
    }

    /// A batch stops once it holds `BATCH_BYTES`: the memory a writer adds to its queue is
    /// bounded, and what is left is written next time, in order.
    #[tokio::test]
    async fn a_batch_is_bounded() {
        let (queue, mut messages) = peer_queue(1 << 20);
        let text = "x".repeat(100);
        for _ in 0..999 {
            queue
                .try_send(&message_line("alice", &text))
                .expect("the queue has room");
        }
        let line_len = message_line("alice", &text).len();
        let mut out = Recorder::default();
        write_batch(message_line("alice", &text), &mut messages, &mut out)
            .await
            .expect("the recorder takes everything");
        assert_eq!(out.writes.len(), 1);
        let written = out.writes[0].len();
        assert!(
            (BATCH_BYTES..BATCH_BYTES + line_len).contains(&written),
            "a batch of {written} bytes; expected {BATCH_BYTES} up to one line more"
        );
        assert_eq!(
            messages.len(),
            1000 - written / line_len,
            "every line not written should still be queued"
        );
    }

    /// A writer woken for one line lets its queue fill while the broker is still routing to
    /// it: twenty lines queued one per scheduler turn, behind the one that woke it, all go
    /// into the batch that follows, where without the wait it would hold a line or two.
    #[tokio::test]
    async fn a_writer_lets_its_queue_fill() {
        let (queue, mut messages) = peer_queue(1 << 20);
        // Stands in for the broker: one line per turn, as if routing between other work.
        let broker = tokio::spawn(async move {
            for i in 1..=20 {
                queue
                    .try_send(&message_line("alice", &i.to_string()))
                    .expect("the queue has room");
                tokio::task::yield_now().await;
            }
        });
        // Nothing is queued behind the first line yet: the stand-in has not run.
        let first = message_line("alice", "0");
        let_queue_fill(&messages).await;
        let mut out = Recorder::default();
        write_batch(first, &mut messages, &mut out)
            .await
            .expect("the recorder takes everything");
        broker.await.expect("the stand-in does not panic");
        let expected: String = (0..=20).map(|i| format!("from alice: {i}\n")).collect();
        let written: String = out
            .writes
            .iter()
            .map(|w| String::from_utf8_lossy(w))
            .collect();
        assert_eq!(
            written, expected,
            "the batch should hold the line that woke the writer and the 20 queued behind it"
        );
        assert_eq!(messages.len(), 0, "lines were left in the queue");
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
        assert!(matches!(event, Ok(Some(Event::Message { .. }))));

        let message = b"bob: 0123456789\n";
        client
            .write_all(&message.repeat(1000))
            .await
            .expect("the pipe has room for all of it");
        for _ in 0..1000 {
            let event = tokio::time::timeout(Duration::from_secs(5), received.recv()).await;
            assert!(
                matches!(event, Ok(Some(Event::Message { .. }))),
                "each line should reach the broker"
            );
        }
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
                peer_queue_bytes: 0,
                ..Config::default()
            },
            // Not even one line of 4 KiB fits.
            Config {
                peer_queue_bytes: 4096,
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
