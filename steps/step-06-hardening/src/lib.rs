//! Step 06: the server of step 05, hardened. Every resource a client can make the server
//! spend has a limit: line length, name length, time to log in, the bytes of a client's lines
//! queued for others and not yet written (its credit), the time a client may stop reading,
//! open connections, and the time a graceful shutdown may take. Input that breaks the rules gets an
//! `error: ...` line and the connection is closed; nothing a client sends can take the server
//! down, slow down other clients, or keep the process alive.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};
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
    /// their sockets: its credit. A line costs the bytes its recipients receive, `from NAME:
    /// text\n` once per distinct destination (see [`line_cost`]); a reader without the credit
    /// for its next line waits, and stops reading its client, until the recipients' writers
    /// have written enough. The one who floods is the one who waits.
    pub sender_budget: usize,
    /// How long a write to a client may make no progress. A client that takes nothing for
    /// that long has stopped reading: it is disconnected as too slow, and the credit its
    /// queue held returns to its senders.
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

/// What one line costs its sender's credit for each distinct destination: the bytes of the
/// line that destination receives, `from NAME: text\n`.
pub fn line_cost(from: &str, text: &str) -> usize {
    "from : \n".len() + from.len() + text.len()
}

/// How long the accept loop waits after `accept` failed before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
// ANCHOR_END: config

impl Config {
    /// Checks that every limit can be used: counts are at least 1 (a queue of 0 cannot hold
    /// anything, and tokio panics on one) and at most what tokio's semaphores can count, and
    /// the sender budget pays for the costliest line (or a client that sent one would wait
    /// for ever) and fits the `u32` a semaphore acquires at once.
    pub fn validate(&self) -> std::result::Result<(), String> {
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

// ANCHOR: channels
/// The sending end of the readers' channel to the broker. It is bounded now: an unbounded queue
/// lets one client make the server hold any amount of memory. (Each peer's queue is unbounded
/// as a channel but bounded by its senders' credit: see [`Queued`]. The disconnect channel
/// stays unbounded: each writer sends on it once, so it never holds more than one entry per
/// connection.)
type Sender<T> = mpsc::Sender<T>;
/// The receiving end of those channels.
type Receiver<T> = mpsc::Receiver<T>;
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
    // ANCHOR: exercise_validate_name
    // Trim the line and return the name only if it follows the rules above.
    // Refuse (None) an empty name, one longer than MAX_NAME_LEN bytes, and one with a `,`, a
    // `:` or a character that `is_unsafe` refuses.
    let name = line.trim();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c == ',' || c == ':' || is_unsafe(c));
    valid.then(|| name.to_string())
    // ANCHOR_END: exercise_validate_name
}
// ANCHOR_END: validate_name

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

// ANCHOR: message_rules
/// Parses a message line, as [`parse_message`] does, once it has checked the line's own
/// rules: no character [`is_unsafe`] refuses but tab, anywhere in the line (the text goes to
/// other people's terminals), and at most [`MAX_DESTINATIONS`] names. `Err` holds the refusal.
fn accept_message(line: &str) -> std::result::Result<Option<Message>, &'static str> {
    if line.chars().any(|c| c != '\t' && is_unsafe(c)) {
        return Err(CONTROL_CHARACTER);
    }
    match parse_message(line) {
        Some(message) if message.dest.len() > MAX_DESTINATIONS => Err(TOO_MANY_DESTINATIONS),
        parsed => Ok(parsed),
    }
}
// ANCHOR_END: message_rules
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
    // ANCHOR: exercise_grace_period
    // Wait for the tracker, for at most the grace period; then close what is left.
    // Use `tokio::time::timeout` around `tracker.wait()`; if the grace period runs out, cancel
    // `close`, wait for the tracker again, and return `GracePeriodExpired`.
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
    // ANCHOR_END: exercise_grace_period
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
            Ok((stream, _peer)) => server.serve_connection(stream),
            Err(e) => {
                eprintln!("accept failed: {e}; trying again in {ACCEPT_BACKOFF:?}");
                // The shutdown does not wait for the back-off.
                let backoff = tokio::time::sleep(ACCEPT_BACKOFF);
                server.shutdown.run_until_cancelled(backoff).await;
            }
        }
    }
}
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
    /// `from` sent `text` to the peers named in `dest`, and paid `credit` for it: one
    /// [`line_cost`] per distinct name.
    Message {
        from: String,
        dest: Vec<String>,
        text: String,
        credit: OwnedSemaphorePermit,
    },
}

/// A line waiting in a peer's queue, with the share of its sender's credit it holds: the
/// credit goes back to the sender when the writer has written the line, or when the line is
/// dropped (its peer left or was too slow).
#[derive(Debug)]
struct Queued {
    line: String,
    credit: OwnedSemaphorePermit,
}
// ANCHOR_END: event

// ANCHOR: broker_loop
/// A connected peer, as the broker sees it.
#[derive(Debug)]
struct Peer {
    /// Which connection this is: a writer that ends removes the entry only if it is its own.
    id: u64,
    /// The peer's queue. Unbounded as a channel: what it holds is paid for by its senders'
    /// credit.
    queue: mpsc::UnboundedSender<Queued>,
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
            Event::Message {
                from,
                dest,
                text,
                mut credit,
            } => {
                for (i, name) in dest.iter().enumerate() {
                    // A name written twice gets the line once. The reader let through at most
                    // `MAX_DESTINATIONS` names, so this search stays short.
                    if dest[..i].contains(name) {
                        continue;
                    }
                    let line = format!("from {from}: {text}");
                    // The reader paid one share per distinct name, so the share is there.
                    // (`split` takes at most what is left, and we take no more than paid.)
                    let Some(credit) = credit.split(line_cost(&from, &text)) else {
                        continue;
                    };
                    deliver(&mut peers, name, Queued { line, credit });
                }
                // What is left of `credit` (the shares of names nobody has) is dropped here:
                // it goes back to the sender at once.
            }
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
                    let (queue, mut receiver) = mpsc::unbounded_channel();
                    let name = entry.key().clone();
                    entry.insert(Peer { id, queue });
                    // If the reader is gone, so is its end of `reader_gone`: the writer we
                    // start sees that and ends at once.
                    let _ = login.send(Login::Accepted);
                    let disconnect_sender = disconnect_sender.clone();
                    spawn_and_log_error(&tracker, async move {
                        let writer = writer_loop(&mut receiver, stream, reader_gone, stall_timeout);
                        let result = match until_closed(close.clone(), writer).await {
                            // ANCHOR: too_slow
                            // The client stopped reading: its reader stops too, at its next
                            // `await`, and the lines it did not take go back to the broker
                            // below, which drops them and so returns their senders' credit.
                            Err(e) if e.is::<TooSlow>() => {
                                eprintln!("{name} is too slow: {e}; disconnecting it");
                                close.cancel();
                                Ok(())
                            }
                            // ANCHOR_END: too_slow
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
/// Queues `line` for the peer called `name`, if it is connected, without ever waiting.
///
/// The queue is unbounded as a channel, so the broker never waits and never finds it full:
/// what it holds is bounded by the credit of its senders, each of whom waits for its lines to
/// be written before it may send more. A peer is dropped for time, not for bytes: when its
/// writer makes no progress for `stall_timeout` (see [`write_in_time`]).
fn deliver(peers: &mut HashMap<String, Peer>, name: &str, line: Queued) {
    // Unknown names are skipped: dropping the line returns its credit.
    let Some(peer) = peers.get(name) else {
        return;
    };
    if peer.queue.send(line).is_err() {
        // The writer has ended and its disconnect is on its way; the line is lost with the
        // client, and its credit returns to the sender.
        eprintln!("{name} is gone; a message to it was dropped");
    }
}
// ANCHOR_END: slow_consumer

// ANCHOR: remove_peer
/// Removes a peer whose writer ended, if the entry is still its own: the name may have been
/// freed (the peer broke a rule and left) and taken by a new session since, which must stay.
/// Messages still queued cannot be written any more; the log counts them, and dropping them
/// returns their credit to their senders.
fn remove_peer(
    peers: &mut HashMap<String, Peer>,
    name: String,
    id: u64,
    pending: mpsc::UnboundedReceiver<Queued>,
) {
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
/// channel closes (the broker dropped the sender) or when a write fails. Once the reader has
/// stopped and handed over its half (at shutdown, or after a broken rule), it writes until the
/// broker closes its channel, then the reader's `error:` line if there is one, then closes in
/// order. (And it ends at once, wherever it is, when the connection's `close` token is
/// cancelled: the caller runs it under `until_closed`.) Every write must make progress within
/// `stall_timeout`, or the writer ends with [`TooSlow`].
async fn writer_loop(
    messages: &mut mpsc::UnboundedReceiver<Queued>,
    stream: ClientWriter,
    mut reader_gone: oneshot::Receiver<Handover>,
    stall_timeout: Duration,
) -> Result<()> {
    // The slot stays taken until this function returns and the socket is dropped.
    let ClientWriter { stream, _slot } = stream;
    // The encoder appends the `\n` to each line.
    let mut lines = FramedWrite::new(stream, LinesCodec::new());
    // ANCHOR: writer_drain
    // Once our reader has stopped, the broker may still route us messages it read before:
    // lines read before the shutdown, or before the client's bad line. So from then on we
    // write until the broker closes our channel.
    let mut handover = None;
    loop {
        tokio::select! {
            // `biased`: the branches are polled in this order, not at random.
            biased;
            // A queued message is always written first.
            message = messages.recv() => match message {
                Some(message) => {
                    // ANCHOR: batch
                    // What else is queued goes out in the same write, up to `BATCH_BYTES`: one
                    // system call for many lines. A writer that made one per line would hold
                    // its senders up for nothing. The credit of the lines comes back once they
                    // are written (the `Vec` is dropped at the end of this block).
                    let mut batch = 0;
                    let mut paid = Vec::new();
                    let mut next = Some(message);
                    while let Some(Queued { line, credit }) = next {
                        batch += line.len() + 1;
                        write_in_time(lines.feed(line), stall_timeout).await?;
                        paid.push(credit);
                        next = if batch < BATCH_BYTES { messages.try_recv().ok() } else { None };
                    }
                    write_in_time(SinkExt::<String>::flush(&mut lines), stall_timeout).await?;
                    // ANCHOR_END: batch
                }
                None => break,
            },
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
    // The broker closes our channel only after the reader has stopped: on its `Leave`, which
    // it sends after handing over, or at the end of the server, after every reader. So if we
    // left the loop that way before looking at `reader_gone`, its answer is already there.
    let Some(Handover {
        input,
        farewell,
        linger,
    }) = handover.or_else(|| reader_gone.try_recv().ok())
    else {
        // The client left: nothing to say, nothing to wait for.
        lines.into_inner().shutdown().await?;
        return Ok(());
    };
    // The client broke a rule: it has had everything routed to it before its bad line; now
    // the error, and the end.
    if let Some(farewell) = farewell {
        write_in_time(lines.send(farewell), stall_timeout).await?;
    }
    close_in_order(lines.into_inner(), Some(input), linger).await;
    // ANCHOR_END: farewell
    Ok(())
}

/// How many bytes of lines a writer gathers into one write at most: hundreds of chat lines per
/// system call, and a small part of a sender's budget, so credit comes back in steady steps.
const BATCH_BYTES: usize = 16 * 1024;

// ANCHOR: stall
/// The error a writer ends with when its client took nothing for the stall timeout.
#[derive(Debug)]
struct TooSlow(Duration);

impl fmt::Display for TooSlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a write made no progress for {:?}", self.0)
    }
}

impl std::error::Error for TooSlow {}

/// Runs one step of writing to a client, a line into the codec's buffer (which writes the
/// buffer out once it holds 8 KiB) or a flush, and gives up after `stall_timeout`: a client
/// that reads takes a few KiB in far less, whatever anyone sends it.
async fn write_in_time<F>(write: F, stall_timeout: Duration) -> Result<()>
where
    F: Future<Output = std::result::Result<(), LinesCodecError>>,
{
    // ANCHOR: exercise_stall
    // Give the write at most `stall_timeout`, then give up with `TooSlow`.
    // Use `tokio::time::timeout`: `Ok` holds the write's own result (its error becomes ours
    // with `?`); `Err` means the time ran out, and dropping the write cancels it.
    match tokio::time::timeout(stall_timeout, write).await {
        Ok(written) => Ok(written?),
        Err(_elapsed) => Err(TooSlow(stall_timeout).into()),
    }
    // ANCHOR_END: exercise_stall
}
// ANCHOR_END: stall
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
    tracker.spawn(async move {
        if let Err(e) = fut.await {
            eprintln!("connection failed: {e}");
        }
    })
}

/// Runs `fut` until it ends or `close` is cancelled, whichever comes first. Dropping `fut`
/// drops whatever it holds, sockets included: that is how a stuck connection is closed.
async fn until_closed<F>(close: CancellationToken, fut: F) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    close.run_until_cancelled(fut).await.unwrap_or(Ok(()))
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
            "\u{202e}lorac",
            "a\u{2066}b",
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

    /// A message line with a control character (tab excepted) or a bidirectional embedding,
    /// override or isolate anywhere in it is refused, and so is one that lists more than
    /// `MAX_DESTINATIONS` names; ordinary Unicode and tabs pass unchanged.
    #[test]
    fn message_rules() {
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
            assert_eq!(accept_message(bad), Err(CONTROL_CHARACTER), "{bad:?}");
        }
        assert_eq!(accept_message("bob: a\tb"), Ok(msg(&["bob"], "a\tb")));
        let unicode = "café 日本語 🦀 👩\u{200d}💻 שלום \u{200e}";
        assert_eq!(
            accept_message(&format!("bob: {unicode}")),
            Ok(msg(&["bob"], unicode))
        );
        assert_eq!(accept_message("no colon"), Ok(None));
        let names = |n: usize| vec!["bob"; n].join(",");
        let most = format!("{}: x", names(MAX_DESTINATIONS));
        assert_eq!(
            accept_message(&most).map(|m| m.map(|m| m.dest.len())),
            Ok(Some(MAX_DESTINATIONS))
        );
        let too_many = format!("{}: x", names(MAX_DESTINATIONS + 1));
        assert_eq!(accept_message(&too_many), Err(TOO_MANY_DESTINATIONS));
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

    fn to_bob(text: &str) -> Event {
        let credit = Arc::new(Semaphore::new(1024))
            .try_acquire_many_owned(line_cost("alice", text) as u32)
            .expect("a fresh semaphore has the credit");
        Event::Message {
            from: "alice".to_string(),
            dest: vec!["bob".to_string()],
            text: text.to_string(),
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
            to_bob("for the new bob"),
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
        // and ends: its client sees the end. (The test keeps the handover's sender, so the
        // writer closes as for a client that left.) The writer's disconnect is sent in the
        // same poll, before this test task runs again.
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
