//! Over-the-wire scenarios shared by the steps (and their exercises). Each function proves one
//! claim a chapter makes, against a server at `addr`, and panics with a sentence saying which
//! behaviour is missing. A step's `tests/` names the claims it makes by calling these.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::Client;

mod hardening;
pub use hardening::*;
mod hostile;
pub use hostile::*;

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

/// The limitation of steps 02 to 05 (step 06 fixes it): a client whose login is refused because
/// the name is taken keeps its reader, so its lines are routed under the taken name.
pub async fn refused_login_still_sends_as_taken_name(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let _bob = Client::login(addr, "bob").await;
    let mut impostor = Client::connect(addr, "a second client logging in as bob").await;
    impostor.send("bob").await;
    impostor.send("alice: this is not really bob").await;
    alice.expect("from bob: this is not really bob").await;
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
/// order, before the recipient's socket closes. The messages are long (1 kB) and bob reads
/// nothing until the signal through a small receive buffer, so with a burst of a few thousand
/// most of it is still queued in the server when shutdown begins.
pub async fn shutdown_delivers_accepted_burst(
    addr: SocketAddr,
    trigger: impl FnOnce(),
    burst: usize,
) {
    let (mut alice, mut bob, expected) = burst_queued_for_bob(addr, burst).await;
    trigger();
    let lines = bob.lines_until_eof_within(Duration::from_secs(30)).await;
    assert_burst(&lines, &expected);
    alice.expect_eof().await;
}

/// A client that keeps sending through the shutdown still receives every message the server
/// accepted for it, complete and in order, and then an end-of-file, not a reset. The server
/// stops reading it at the signal, so its later lines pile up unread; closing a socket with
/// unread input makes the kernel answer with RST and drop what was not yet delivered, so the
/// server must close in order: FIN after the last line, then read and discard until the
/// client closes.
pub async fn shutdown_delivers_to_a_client_that_keeps_typing(
    addr: SocketAddr,
    trigger: impl FnOnce(),
    burst: usize,
) {
    const TYPED: &str = "nobody: still typing";
    let (mut alice, mut bob, expected) = burst_queued_for_bob(addr, burst).await;
    // Bob is typing already when the signal lands, and goes on until the server closes.
    bob.send_bytes(format!("{TYPED}\n").repeat(500).as_bytes())
        .await;
    trigger();
    let lines = bob
        .lines_until_eof_while_typing(TYPED, Duration::from_secs(30))
        .await;
    assert_burst(&lines, &expected);
    alice.lines_until_eof().await;
}

/// Logs in alice and bob (with a small receive buffer, not reading) and has alice send bob
/// `burst` messages of about 1 kB; returns once the server has read them all, with the lines
/// bob should receive.
async fn burst_queued_for_bob(addr: SocketAddr, burst: usize) -> (Client, Client, Vec<String>) {
    let padding = "x".repeat(1000);
    let mut alice = Client::login(addr, "alice").await;
    let bob = Client::login_with_small_buffer(addr, "bob").await;
    for i in 0..burst {
        alice.send(&format!("bob: {i} {padding}")).await;
    }
    // Alice's lines are read in order, so once this comes back the whole burst has been read.
    alice.send("alice: burst sent").await;
    alice.expect("from alice: burst sent").await;
    let expected = (0..burst)
        .map(|i| format!("from alice: {i} {padding}"))
        .collect();
    (alice, bob, expected)
}

/// Checks that bob received exactly the burst alice sent him before the shutdown.
fn assert_burst(lines: &[String], expected: &[String]) {
    assert!(
        lines == expected,
        "bob: after shutdown expected all {} messages alice sent before it, in order; got {} \
         lines (first difference at line {:?})",
        expected.len(),
        lines.len(),
        lines.iter().zip(expected).position(|(a, b)| a != b)
    );
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
    // Let traffic flow, and be sure some of it was delivered, before shutting down. The line
    // each receiver reads here is the start of what it checks below.
    let mut first_lines = Vec::new();
    for receiver in &mut receivers {
        first_lines.push(receiver.recv().await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    trigger();

    let mut received = Vec::new();
    for (mut receiver, first) in receivers.into_iter().zip(first_lines) {
        let mut lines = vec![first];
        lines.extend(
            receiver
                .lines_until_eof_within(Duration::from_secs(30))
                .await,
        );
        received.push((
            receiver.name().to_string(),
            gap_free_counts(&receiver, &lines),
        ));
    }
    // Every message went to every receiver, and all of them stayed connected: a message the
    // server read reached all of them or (read after the signal) none.
    assert_same_counts(&received);
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

/// Messages the server has read but not yet routed when shutdown begins still reach every
/// recipient that is connected, also one that had nothing queued when its reader stopped.
///
/// Flooders write as fast as the server reads, so the broker has a backlog when the signal
/// lands. Every line goes to `behind`, which reads only after the signal; every fiftieth also
/// goes to `prompt`, which reads as lines arrive, so its queue is nearly always empty. From
/// each flooder, `behind` must receive a gap-free prefix `0..n`, and `prompt` exactly the
/// multiples of fifty below `n`: what the server read reached both.
pub async fn shutdown_delivers_backlog_to_every_recipient(
    addr: SocketAddr,
    trigger: impl FnOnce(),
) {
    const FLOODERS: usize = 4;
    // Lines per write: big writes let the readers outpace the broker, so it has a backlog.
    const BATCH: usize = 100;
    // One line in this many also goes to `prompt`.
    const EVERY: usize = 50;
    // Lines the first flooder sends before the signal: enough for a backlog, few enough to
    // deliver quickly.
    const BEFORE_SIGNAL: usize = 20_000;
    let prompt = Client::login(addr, "prompt").await;
    let mut behind = Client::login(addr, "behind").await;
    // Everyone logs in before the flood starts: a login behind the flood would wait for it.
    let mut logged_in = Vec::new();
    for f in 0..FLOODERS {
        logged_in.push(Client::login(addr, &format!("f{f}")).await);
    }
    let (flowing, flood_flowing) = tokio::sync::oneshot::channel();
    let mut flowing = Some(flowing);
    let mut flooders = Vec::new();
    for (f, mut flooder) in logged_in.into_iter().enumerate() {
        let mut flowing = if f == 0 { flowing.take() } else { None };
        flooders.push(tokio::spawn(async move {
            let mut sent = 0;
            // Until the server stops reading and closes the connection; capped only so that
            // a server that never stops reading cannot run this forever.
            while sent < 1_000_000 {
                if sent >= BEFORE_SIGNAL {
                    if let Some(flowing) = flowing.take() {
                        let _ = flowing.send(());
                    }
                }
                let batch = (sent..sent + BATCH)
                    .map(|i| match i % EVERY {
                        0 => format!("prompt, behind: {i}"),
                        _ => format!("behind: {i}"),
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                if !flooder.try_send(&batch).await {
                    break;
                }
                sent += BATCH;
            }
            flooder
        }));
    }
    let mut prompt_reader = tokio::spawn(async move {
        let mut prompt = prompt;
        let lines = prompt.lines_until_eof_within(Duration::from_secs(30)).await;
        (prompt, lines)
    });
    tokio::select! {
        flowing = flood_flowing => flowing.expect("the first flooder reports when it is done"),
        // `prompt` ends only once the server closes it: that must not happen before the signal.
        ended = &mut prompt_reader => panic!(
            "prompt: the server closed the connection before shutdown began (it received {} \
             lines)",
            ended.map(|(_, lines)| lines.len()).unwrap_or_default()
        ),
    }
    trigger();
    let behind_lines = behind.lines_until_eof_within(Duration::from_secs(30)).await;
    let (prompt, prompt_lines) = prompt_reader.await.expect("prompt's reader panicked");

    let behind_counts = gap_free_counts(&behind, &behind_lines);
    let mut prompt_next: HashMap<String, usize> = HashMap::new();
    for line in &prompt_lines {
        let (from, n) = parse_numbered(line)
            .unwrap_or_else(|| panic!("prompt: got `{line}`, not a numbered message"));
        let want = prompt_next.entry(from.clone()).or_default();
        assert_eq!(
            n, *want,
            "prompt: from {from} expected message {want} next, got {n}: a message was lost, \
             duplicated or reordered during shutdown"
        );
        *want += EVERY;
    }
    for (from, &n) in &behind_counts {
        let to_prompt = n.div_ceil(EVERY);
        let got = prompt_next.get(from).copied().unwrap_or(0) / EVERY;
        assert_eq!(
            got,
            to_prompt,
            "behind received {n} messages from {from}, so {} should have received the \
             {to_prompt} among them that went to it too, but it received {got}: messages the \
             server read before shutdown were lost for one of the two",
            prompt.name()
        );
    }
    for task in flooders {
        let mut flooder = task.await.expect("a flooder task panicked");
        flooder.lines_until_eof().await;
    }
}

/// Checks that `lines` holds, from each sender, messages `0, 1, 2, ...` with no gap, in order,
/// and returns how many came from each sender.
fn gap_free_counts(receiver: &Client, lines: &[String]) -> HashMap<String, usize> {
    let mut next: HashMap<String, usize> = HashMap::new();
    for line in lines {
        let (from, n) = parse_numbered(line)
            .unwrap_or_else(|| panic!("{}: got `{line}`, not a numbered message", receiver.name()));
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
    next
}

/// Checks that every receiver got the same number of messages from each sender.
fn assert_same_counts(received: &[(String, HashMap<String, usize>)]) {
    let Some((first_name, first)) = received.first() else {
        return;
    };
    for (name, counts) in &received[1..] {
        let mut senders: Vec<&String> = first.keys().chain(counts.keys()).collect();
        senders.sort();
        senders.dedup();
        for sender in senders {
            let a = first.get(sender).copied().unwrap_or(0);
            let b = counts.get(sender).copied().unwrap_or(0);
            assert_eq!(
                a, b,
                "{first_name} got {a} messages from {sender} but {name} got {b}, though every \
                 message went to both: messages read before shutdown were lost for one of them"
            );
        }
    }
}

/// Splits `from NAME: N` into `(NAME, N)`.
fn parse_numbered(line: &str) -> Option<(String, usize)> {
    let rest = line.strip_prefix("from ")?;
    let (from, n) = rest.split_once(": ")?;
    Some((from.to_string(), n.parse().ok()?))
}
