//! What `select!` does to the branch that loses, and what each operation loses with it.
//! In-memory pipes (`tokio::io::duplex`) and paused time make every interleaving exact.

use std::future::Future;
use std::time::Duration;

use shutdown_patterns::TICK;
use shutdown_patterns::cancel_safety::{
    next_line_with_ticks, pinned_write_all_with_ticks, read_line_with_ticks, send_or_give_back,
    send_or_give_up, write_all_with_ticks,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{self, timeout};

/// Awaits `future`, failing the test if it has not finished after an hour of paused time.
async fn finishes<F: Future>(future: F) -> F::Output {
    timeout(Duration::from_secs(3600), future)
        .await
        .expect("still running after an hour (of paused time)")
}

// ANCHOR: loser_dropped
/// `select!` drops the branch that loses: its future, and everything that future owns.
#[tokio::test]
async fn select_drops_the_losing_branch() {
    let (owned_by_loser, watch_it) = oneshot::channel::<()>();
    let loser = async move {
        let _owned = owned_by_loser;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = loser => unreachable!("a pending future cannot win"),
        () = std::future::ready(()) => {}
    }
    // The loser held the sender; the sender is gone, so the loser was dropped.
    assert!(watch_it.await.is_err());
}
// ANCHOR_END: loser_dropped

/// A client that sends half a line, pauses for three ticks, then sends the rest.
async fn slow_writer(mut client: tokio::io::DuplexStream) {
    client.write_all(b"hel").await.expect("pipe open");
    time::sleep(TICK * 3).await;
    client.write_all(b"lo\n").await.expect("pipe open");
}

/// `read_line` in `select!` loses the part of a line that came before a tick.
#[tokio::test(start_paused = true)]
async fn read_line_loses_a_partial_line() {
    let (client, server) = duplex(64);
    tokio::spawn(slow_writer(client));
    let line = finishes(read_line_with_ticks(server)).await;
    assert_eq!(line.expect("no I/O error"), "lo\n");
}

/// `FramedRead::next` in `select!` keeps a partial line across ticks.
#[tokio::test(start_paused = true)]
async fn framed_read_keeps_a_partial_line() {
    let (client, server) = duplex(64);
    tokio::spawn(slow_writer(client));
    let line = finishes(next_line_with_ticks(server)).await;
    assert_eq!(
        line.map(|l| l.expect("valid line")),
        Some("hello".to_string())
    );
}

/// Writes `hello\n` with `write` into a pipe that holds 4 bytes and that nobody reads for
/// 2.5 ticks, and returns everything that arrived.
async fn write_through_a_small_pipe<F, Fut>(write: F) -> Vec<u8>
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (writer, mut reader) = duplex(4);
    tokio::spawn(write(writer));
    time::sleep(TICK * 5 / 2).await;
    let mut got = Vec::new();
    finishes(reader.read_to_end(&mut got))
        .await
        .expect("no I/O error");
    got
}

/// `write_all` in `select!` starts over after a tick: the start of the data arrives twice.
#[tokio::test(start_paused = true)]
async fn write_all_repeats_after_a_tick() {
    let got = write_through_a_small_pipe(|mut w| async move {
        write_all_with_ticks(&mut w, b"hello\n")
            .await
            .expect("pipe open");
    })
    .await;
    assert_eq!(got, b"hellhello\n");
}

/// A pinned `write_all`, polled across ticks, writes the data exactly once.
#[tokio::test(start_paused = true)]
async fn pinned_write_all_writes_once() {
    let got = write_through_a_small_pipe(|mut w| async move {
        pinned_write_all_with_ticks(&mut w, b"hello\n")
            .await
            .expect("pipe open");
    })
    .await;
    assert_eq!(got, b"hello\n");
}

/// `mpsc::Sender::send` in `select!` drops the value when the other branch wins: it is
/// neither in the channel nor given back.
#[tokio::test(start_paused = true)]
async fn send_in_select_loses_the_value() {
    let (tx, mut rx) = mpsc::channel(1);
    tx.send("first").await.expect("receiver alive");
    assert!(!send_or_give_up(&tx, "second", TICK).await);
    assert_eq!(rx.recv().await, Some("first"));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
}

/// `reserve` in `select!` gives the value back when the other branch wins.
#[tokio::test(start_paused = true)]
async fn reserve_in_select_keeps_the_value() {
    let (tx, _rx) = mpsc::channel(1);
    tx.send("first").await.expect("receiver alive");
    assert_eq!(send_or_give_back(&tx, "second", TICK).await, Err("second"));
}

/// When every branch is disabled by its pattern and there is no `else`, `select!` panics.
#[tokio::test]
#[should_panic(expected = "all branches are disabled and there is no else branch")]
async fn select_panics_when_every_branch_is_disabled() {
    let end_of_stream = async { None::<String> };
    tokio::select! {
        Some(line) = end_of_stream => drop(line),
    }
}
