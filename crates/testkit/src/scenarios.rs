//! Over-the-wire scenarios shared by the steps (and their exercises). Each function proves one
//! claim a chapter makes, against a server at `addr`, and panics with a sentence saying which
//! behaviour is missing. A step's `tests/` names the claims it makes by calling these.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::Client;

/// Each named, connected destination receives `from NAME: text`; nobody else does.
pub async fn delivers_to_named_destination(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut carol = Client::login(addr, "carol").await;
    alice.send("bob: hello bob").await;
    bob.expect("from alice: hello bob").await;
    carol.expect_nothing().await;
    alice.expect_nothing().await;
}

/// A message to several destinations reaches each of them once.
pub async fn delivers_to_several_destinations(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut carol = Client::login(addr, "carol").await;
    alice.send("bob, carol, alice: hi all").await;
    bob.expect("from alice: hi all").await;
    carol.expect("from alice: hi all").await;
    alice.expect("from alice: hi all").await;
    bob.expect_nothing().await;
    carol.expect_nothing().await;
}

/// Whitespace around names and around the text is trimmed, and CRLF endings work.
pub async fn trims_whitespace(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    alice.send("   bob  ,carol  :    spaced out   ").await;
    bob.expect("from alice: spaced out").await;
    alice.send_bytes(b"bob: windows line\r\n").await;
    bob.expect("from alice: windows line").await;
}

/// Only the first `:` separates destinations from the text: `bob: a:b` sends `a:b`.
pub async fn keeps_colon_in_text(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    alice.send("bob: a:b").await;
    bob.expect("from alice: a:b").await;
    alice.send("bob: time is 12:30: late").await;
    bob.expect("from alice: time is 12:30: late").await;
}

/// A line without `:` is ignored: nothing is delivered and the sender stays connected.
pub async fn ignores_lines_without_colon(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    alice.send("bob hello, no colon here").await;
    alice.send("").await;
    bob.expect_nothing().await;
    // The connection still works after the bad lines.
    alice.send("bob: after the bad lines").await;
    bob.expect("from alice: after the bad lines").await;
}

/// Unknown destinations are skipped; the known ones still receive the message.
pub async fn skips_unknown_destinations(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    alice.send("nobody, bob, ghost: still here").await;
    bob.expect("from alice: still here").await;
    alice.send("nobody: lost").await;
    alice.send("bob: and again").await;
    bob.expect("from alice: and again").await;
}

/// Messages from one sender arrive in the order sent, also when two senders interleave.
pub async fn keeps_per_sender_order(addr: SocketAddr, per_sender: usize) {
    let mut receiver = Client::login(addr, "receiver").await;
    let senders = ["s1", "s2"];
    let mut tasks = Vec::new();
    for name in senders {
        let mut sender = Client::login(addr, name).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_sender {
                sender.send(&format!("receiver: {i}")).await;
            }
            sender
        }));
    }
    let mut next: HashMap<String, usize> = HashMap::new();
    for _ in 0..per_sender * senders.len() {
        let line = receiver.recv().await;
        let (from, n) = parse_numbered(&line)
            .unwrap_or_else(|| panic!("receiver: got `{line}`, not a numbered message"));
        let want = next.entry(from.clone()).or_default();
        assert_eq!(
            n, *want,
            "receiver: from {from} expected message {want} next, got {n}: order was not kept"
        );
        *want += 1;
    }
    for task in tasks {
        task.await.expect("a sender task panicked");
    }
    receiver.expect_nothing().await;
}

/// Many clients can be connected and chatting at the same time.
pub async fn serves_many_clients_at_once(addr: SocketAddr, clients: usize) {
    let mut all = Vec::new();
    for i in 0..clients {
        all.push(Client::login(addr, &format!("c{i}")).await);
    }
    for (i, client) in all.iter_mut().enumerate() {
        let to = (i + 1) % clients;
        client.send(&format!("c{to}: hi from {i}")).await;
    }
    for (i, client) in all.iter_mut().enumerate() {
        let from = (i + clients - 1) % clients;
        client
            .expect(&format!("from c{from}: hi from {from}"))
            .await;
    }
}

/// A client that disconnects is removed, and its name can be used again at once by a new
/// connection, which receives what is sent to it after it logged in.
pub async fn name_reusable_after_disconnect(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    alice.send("bob: first").await;
    bob.expect("from alice: first").await;
    drop(bob);
    // `login` only returns once the new bob is registered and receives its own messages.
    let mut bob = Client::login(addr, "bob").await;
    alice.send("bob: second").await;
    bob.expect("from alice: second").await;
    bob.expect_nothing().await;
}

/// A client that closes only its writing half is removed too (its reader saw EOF), and the
/// server closes its socket.
pub async fn half_closed_client_is_removed(addr: SocketAddr) {
    let mut bob = Client::login(addr, "bob").await;
    bob.close_write().await;
    bob.expect_eof().await;
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    alice.send("bob: new session").await;
    bob.expect("from alice: new session").await;
}

/// A connection reset by the client is handled like a disconnect: the server goes on, others
/// keep chatting, and the name can be used again.
pub async fn survives_connection_reset(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let bob = Client::login(addr, "bob").await;
    bob.reset();
    // Messages to the departed bob must not hurt anyone.
    for i in 0..100 {
        alice.send(&format!("bob: into the void {i}")).await;
    }
    let mut carol = Client::login(addr, "carol").await;
    alice.send("carol: still up?").await;
    carol.expect("from alice: still up?").await;
    let mut bob = Client::login(addr, "bob").await;
    alice.send("bob: welcome back").await;
    bob.expect("from alice: welcome back").await;
}

/// On shutdown, logged-in clients that are idle see the server close their connection.
pub async fn shutdown_closes_idle_clients(addr: SocketAddr, trigger: impl FnOnce()) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    trigger();
    alice.expect_eof().await;
    bob.expect_eof().await;
}

/// Every message the server has read before shutdown reaches its recipient, complete and in
/// order, before the recipient's socket closes.
pub async fn shutdown_delivers_accepted_burst(
    addr: SocketAddr,
    trigger: impl FnOnce(),
    burst: usize,
) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    for i in 0..burst {
        alice.send(&format!("bob: {i}")).await;
    }
    // Alice's lines are read in order, so once this comes back the whole burst has been read.
    alice.send("alice: burst sent").await;
    alice.expect("from alice: burst sent").await;
    trigger();
    let lines = bob.lines_until_eof_within(Duration::from_secs(30)).await;
    let expected: Vec<String> = (0..burst).map(|i| format!("from alice: {i}")).collect();
    assert!(
        lines == expected,
        "bob: after shutdown expected all {burst} messages alice sent before it, in order; got \
         {} lines (first difference at line {:?})",
        lines.len(),
        lines.iter().zip(&expected).position(|(a, b)| a != b)
    );
    alice.expect_eof().await;
}

/// With clients still writing when shutdown starts, each recipient receives from each sender
/// a gap-free, in-order prefix of what it sent; readers stop reading although clients keep
/// sending; every socket closes.
pub async fn shutdown_while_clients_write(addr: SocketAddr, trigger: impl FnOnce()) {
    const SENDERS: usize = 3;
    const RECEIVERS: usize = 3;
    let mut receivers = Vec::new();
    for r in 0..RECEIVERS {
        receivers.push(Client::login(addr, &format!("r{r}")).await);
    }
    let dest = (0..RECEIVERS)
        .map(|r| format!("r{r}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut sender = Client::login(addr, &format!("s{s}")).await;
        let dest = dest.clone();
        // Paced at about 5 000 lines a second for up to 30 s: far longer than a shutdown may
        // take, so a server whose readers keep reading never finishes within the deadline.
        senders.push(tokio::spawn(async move {
            let mut sent = 0;
            'send: while sent < 150_000 {
                for _ in 0..10 {
                    if !sender.try_send(&format!("{dest}: {sent}")).await {
                        break 'send;
                    }
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (sender, sent)
        }));
    }
    // Let traffic flow, and be sure some of it was delivered, before shutting down.
    for receiver in &mut receivers {
        receiver.recv().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    trigger();

    for mut receiver in receivers {
        let lines = receiver
            .lines_until_eof_within(Duration::from_secs(30))
            .await;
        let mut next: HashMap<String, usize> = HashMap::new();
        for line in &lines {
            let (from, n) = parse_numbered(line).unwrap_or_else(|| {
                panic!("{}: got `{line}`, not a numbered message", receiver.name())
            });
            let want = next.entry(from.clone()).or_default();
            assert_eq!(
                n,
                *want,
                "{}: from {from} expected message {want} next, got {n}: a message was lost, \
                 duplicated or reordered during shutdown",
                receiver.name()
            );
            *want += 1;
        }
        assert!(
            !lines.is_empty(),
            "{}: received nothing at all, so this test proved nothing",
            receiver.name()
        );
    }
    for task in senders {
        let (mut sender, sent) = task.await.expect("a sender task panicked");
        assert!(
            sent < 150_000,
            "{}: could send all its messages, so the server kept reading after shutdown began",
            sender.name()
        );
        // The server closes every socket, including those of clients it stopped reading.
        sender.lines_until_eof().await;
    }
}

/// Clients that never sent their name, or sent half a line, do not hold up shutdown: their
/// connections are closed.
pub async fn shutdown_not_held_by_silent_clients(addr: SocketAddr, trigger: impl FnOnce()) {
    let mut silent = Client::connect(addr, "a client that never sent its name").await;
    let mut half_name = Client::connect(addr, "a client that sent half its name").await;
    half_name.send_bytes(b"ali").await;
    let mut half_line = Client::login(addr, "bob").await;
    half_line.send_bytes(b"bob: half a li").await;
    // Give the server time to read the partial lines before the signal.
    tokio::time::sleep(Duration::from_millis(100)).await;
    trigger();
    silent.lines_until_eof().await;
    half_name.lines_until_eof().await;
    half_line.lines_until_eof().await;
}

/// Splits `from NAME: N` into `(NAME, N)`.
fn parse_numbered(line: &str) -> Option<(String, usize)> {
    let rest = line.strip_prefix("from ")?;
    let (from, n) = rest.split_once(": ")?;
    Some((from.to_string(), n.parse().ok()?))
}
