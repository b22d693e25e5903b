//! The `select!` pitfall of chapter 03, shown on real sockets: a branch with a refutable pattern
//! is disabled when the value does not match, so after EOF (or a read error) the loop waits on
//! its other branches forever. The step's reader handles every outcome and ends at EOF.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use testkit::{Client, TIMEOUT, scenarios};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec};

/// How long a reader loop gets to finish after its client's EOF before we call it stuck. A
/// correct loop finishes in microseconds; the buggy ones never do.
const STUCK: Duration = Duration::from_secs(1);

/// What a reader loop selects on besides its lines (a shutdown signal, say). In these tests it
/// never fires, as in a server that is not shutting down.
type Stop = oneshot::Receiver<()>;

/// Lines the reader has seen, so the test knows it is alive and reading.
type Seen = mpsc::UnboundedSender<String>;

// ANCHOR: refutable_pattern
/// WRONG. At EOF `lines.next()` returns `None`, which does not match `Some(Ok(line))`, so
/// `select!` disables that branch and waits for `stop` alone. The loop never ends, and a reader
/// that never ends never drops its `_shutdown_sender`: the peer's name stays taken.
async fn reader_with_refutable_pattern(stream: TcpStream, seen: Seen, mut stop: Stop) {
    let mut lines = FramedRead::new(stream, LinesCodec::new());
    loop {
        tokio::select! {
            Some(Ok(line)) = lines.next() => {
                let _ = seen.send(line);
            }
            _ = &mut stop => break,
        }
    }
}
// ANCHOR_END: refutable_pattern

// ANCHOR: refutable_next_line
/// WRONG, the same mistake with `AsyncBufReadExt::lines`: at EOF `next_line()` returns
/// `Ok(None)`, which does not match `Ok(Some(line))`.
async fn reader_with_refutable_next_line(stream: TcpStream, seen: Seen, mut stop: Stop) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        tokio::select! {
            Ok(Some(line)) = lines.next_line() => {
                let _ = seen.send(line);
            }
            _ = &mut stop => break,
        }
    }
}
// ANCHOR_END: refutable_next_line

// ANCHOR: explicit_match
/// RIGHT. The branch takes whatever `next()` returns and handles each case: a line, a read
/// error, EOF.
async fn reader_with_explicit_match(stream: TcpStream, seen: Seen, mut stop: Stop) {
    let mut lines = FramedRead::new(stream, LinesCodec::new());
    loop {
        tokio::select! {
            line = lines.next() => match line {
                Some(Ok(line)) => {
                    let _ = seen.send(line);
                }
                Some(Err(e)) => {
                    eprintln!("read failed: {e}");
                    break;
                }
                None => break,
            },
            _ = &mut stop => break,
        }
    }
}
// ANCHOR_END: explicit_match

/// Runs `reader` on one accepted connection, has the client send a line and then close, and
/// reports whether the reader finished within [`STUCK`] of the client's EOF.
async fn finishes_after_eof<R, Fut>(reader: R) -> bool
where
    R: FnOnce(TcpStream, Seen, Stop) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (listener, addr) = testkit::loopback_listener().await;
    let mut client = Client::connect(addr, "client").await;
    let (stream, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("the connection was accepted in time")
        .expect("accepting a loopback connection");
    let (seen_sender, mut seen) = mpsc::unbounded_channel();
    // Kept alive until the end of the test: `stop` must not fire.
    let (_stop_sender, stop) = oneshot::channel();
    let task = tokio::spawn(reader(stream, seen_sender, stop));

    client.send("hello").await;
    let first = tokio::time::timeout(TIMEOUT, seen.recv()).await;
    assert_eq!(
        first,
        Ok(Some("hello".to_string())),
        "the reader should be reading lines before the client leaves"
    );
    // The client closes its connection: the reader sees EOF.
    drop(client);
    tokio::time::timeout(STUCK, task).await.is_ok()
}

/// The refutable pattern `Some(Ok(line)) = lines.next()` in `select!` hangs after the client's
/// EOF: the loop never finishes.
#[tokio::test]
async fn refutable_pattern_hangs_after_eof() {
    assert!(
        !finishes_after_eof(reader_with_refutable_pattern).await,
        "expected the loop with a refutable pattern to hang after EOF, but it finished"
    );
}

/// The same with `Ok(Some(line)) = lines.next_line()`: the loop never finishes after EOF.
#[tokio::test]
async fn refutable_next_line_hangs_after_eof() {
    assert!(
        !finishes_after_eof(reader_with_refutable_next_line).await,
        "expected the loop with a refutable pattern to hang after EOF, but it finished"
    );
}

/// Matching every outcome of `next()` explicitly ends the loop at EOF.
#[tokio::test]
async fn explicit_match_finishes_after_eof() {
    assert!(
        finishes_after_eof(reader_with_explicit_match).await,
        "the loop that matches `None` should end at EOF"
    );
}

/// The step's own reader ends at EOF: its writer is told, the server closes the socket, and
/// the name can be used again.
#[tokio::test]
async fn step_reader_ends_at_eof_and_frees_the_name() {
    let server = testkit::start(step_03::run).await;
    scenarios::half_closed_client_is_removed(server.addr()).await;
}
