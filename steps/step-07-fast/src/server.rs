//! The server: what every connection shares, the accept loop and its connection limit, the
//! graceful shutdown within the grace period, and `run`, which ties them together.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::broker_loop;
use crate::config::{ACCEPT_BACKOFF, Config, GracePeriodExpired, Result, SERVER_FULL};
use crate::event::{Event, Sender};
use crate::reader::{Connection, connection_loop, refuse};
use crate::tasks::{spawn_and_log_error, until_closed};

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

// ANCHOR: accept_loop
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
// ANCHOR_END: accept_loop

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
