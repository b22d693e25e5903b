//! Scenarios for a hardened server (step 06 on): what a client that breaks a rule is told,
//! that it is then closed, and that nobody else notices.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{Client, TIMEOUT, human};

/// A login line longer than `max_line_len` gets `error: line too long` and the connection is
/// closed.
pub async fn refuses_long_login_line(addr: SocketAddr, max_line_len: usize) {
    let mut client = Client::connect(addr, "a client with a long name line").await;
    // Exactly one byte too many and no newline: the server has read everything we sent when
    // it refuses, so it closes with FIN, not with a reset that could swallow the error line.
    client
        .send_bytes("x".repeat(max_line_len + 1).as_bytes())
        .await;
    client.expect("error: line too long").await;
    client.expect_eof().await;
}

/// A message line of exactly `max_line_len` bytes is delivered; one byte more gets `error:
/// line too long` after everything already queued for the sender, the connection is closed,
/// and the line reaches nobody.
pub async fn refuses_long_message_line(addr: SocketAddr, max_line_len: usize) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let prefix = "bob: ";
    let fits = format!("{prefix}{}", "x".repeat(max_line_len - prefix.len()));
    alice.send(&fits).await;
    bob.expect(&format!("from alice: {}", &fits[prefix.len()..]))
        .await;
    // Something queued for alice before her bad line: it must reach her before the error.
    bob.send("alice: read this first").await;
    alice.expect("from bob: read this first").await;
    bob.send("alice: and this").await;
    // bob's lines are routed in order: once this comes back, `and this` is queued for alice.
    bob.send("bob: sync").await;
    bob.expect("from bob: sync").await;
    let too_long = format!("{prefix}{}", "y".repeat(max_line_len + 1 - prefix.len()));
    alice.send_bytes(too_long.as_bytes()).await;
    alice.expect("from bob: and this").await;
    alice.expect("error: line too long").await;
    alice.expect_eof().await;
    bob.expect_nothing().await;
    // bob is unaffected, and alice's name is free again.
    let mut alice = Client::login(addr, "alice").await;
    bob.send("alice: welcome back").await;
    alice.expect("from bob: welcome back").await;
}

/// A client that sends a bad line receives every line read before it, its own copies
/// included, then the `error:` line, then an end-of-file and not a reset, although it goes on
/// sending after the bad line; the other recipient gets every accepted line and nothing after.
/// The lines before the bad one were accepted: they travel through the broker, so the error
/// must wait for them, and the unread input after it must not turn the close into a reset.
pub async fn refusal_comes_after_accepted_lines(addr: SocketAddr, max_line_len: usize) {
    const ACCEPTED: usize = 300;
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    // One write: the server reads the good lines and the bad one together.
    let mut bytes = String::new();
    for i in 0..ACCEPTED {
        bytes.push_str(&format!("alice, bob: {i}\n"));
    }
    bytes.push_str(&"x".repeat(max_line_len + 1));
    bytes.push('\n');
    alice.send_bytes(bytes.as_bytes()).await;
    let lines = alice
        .lines_until_eof_while_typing("bob: after the bad line", Duration::from_secs(30))
        .await;
    let mut expected: Vec<String> = (0..ACCEPTED).map(|i| format!("from alice: {i}")).collect();
    expected.push("error: line too long".to_string());
    assert!(
        lines == expected,
        "alice: expected her {ACCEPTED} accepted lines, then `error: line too long`, then the \
         end; got {} lines (first difference at line {:?}; last line {:?})",
        lines.len(),
        lines.iter().zip(&expected).position(|(a, b)| a != b),
        lines.last()
    );
    for i in 0..ACCEPTED {
        bob.expect(&format!("from alice: {i}")).await;
    }
    // Nothing alice typed after her bad line reached bob: the next line is bob's own.
    bob.send("bob: done").await;
    bob.expect("from bob: done").await;
}

/// A line that is not UTF-8, at login or later, gets `error: invalid UTF-8` and the
/// connection is closed; other clients keep chatting.
pub async fn refuses_invalid_utf8(addr: SocketAddr) {
    let mut stranger = Client::connect(addr, "a client with a binary name").await;
    stranger.send_bytes(b"\xff\xfebob\n").await;
    stranger.expect("error: invalid UTF-8").await;
    stranger.expect_eof().await;

    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut carol = Client::login(addr, "carol").await;
    alice.send_bytes(b"bob: caf\xe9\n").await;
    alice.expect("error: invalid UTF-8").await;
    alice.expect_eof().await;
    bob.expect_nothing().await;
    carol.send("bob: still here").await;
    bob.expect("from carol: still here").await;
}

/// Names that are empty, blank, contain `,` `:` or control characters, or are longer than 32
/// bytes get `error: invalid name` and are closed; a 32-byte name with a space is fine.
pub async fn refuses_invalid_names(addr: SocketAddr) {
    let long = "n".repeat(33);
    for bad in [
        "",
        "   ",
        "a,b",
        "a:b",
        "bob:",
        "a\u{7}b",
        "a\u{1b}[2Jb",
        &long,
    ] {
        let mut client = Client::connect(addr, &format!("a client named {bad:?}")).await;
        client.send(bad).await;
        client.expect("error: invalid name").await;
        client.expect_eof().await;
    }
    let longest = format!("max {}", "m".repeat(28));
    let mut max = Client::login(addr, &longest).await;
    max.send(&format!("{longest}: hello")).await;
    max.expect(&format!("from {longest}: hello")).await;
}

/// While `bob` is connected, a second `bob` gets `error: name taken` and is closed. Lines it
/// sent right after its name, before the answer came, are never routed as `bob`; the first
/// `bob` keeps its name and its messages.
pub async fn refuses_taken_name(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut impostor = Client::connect(addr, "a second bob").await;
    // One write: the message is on its way before the server has even looked at the name.
    impostor
        .send_bytes(b"bob\nalice: this is bob, send me your password\n")
        .await;
    impostor.expect("error: name taken").await;
    impostor.lines_until_eof().await;
    alice.expect_nothing().await;
    alice.send("bob: are you still you?").await;
    bob.expect("from alice: are you still you?").await;
    bob.send("alice: yes").await;
    alice.expect("from bob: yes").await;
}

/// A client that sends no name within the login timeout gets `error: login timed out` and
/// is closed (the server under test must use a timeout well under [`TIMEOUT`]).
pub async fn closes_silent_login(addr: SocketAddr) {
    let mut silent = Client::connect(addr, "a client that never sends its name").await;
    silent.expect("error: login timed out").await;
    silent.expect_eof().await;
    let mut half = Client::connect(addr, "a client that sends half its name").await;
    half.send_bytes(b"ali").await;
    half.expect("error: login timed out").await;
    half.expect_eof().await;
}

/// A client that does not read while `lines` lines of about `line_len` bytes are sent to it is
/// disconnected once the server's writes to it have made no progress for `stall_timeout`: it
/// receives a gap-free prefix of them (the last one perhaps cut short) and then the end, not
/// all of them. The flooder is slowed, not dropped: its lines wait for the slow client until
/// then, so the flood lasts at least `stall_timeout`, and it is still connected afterwards.
/// Meanwhile two other clients keep exchanging messages, each answered within [`TIMEOUT`] (a
/// broker that waited for the slow client would stall them all). Its name is free again
/// afterwards.
pub async fn drops_slow_consumer(
    addr: SocketAddr,
    lines: usize,
    line_len: usize,
    stall_timeout: Duration,
) {
    let mut slow = Client::login_with_small_buffer(addr, "slow").await;
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut flooder = Client::login(addr, "flooder").await;
    let padding = "x".repeat(line_len);
    let started = tokio::time::Instant::now();
    let flood = tokio::spawn({
        let padding = padding.clone();
        async move {
            for i in 0..lines {
                flooder.send(&format!("slow: {i} {padding}")).await;
            }
            // The flooder's lines are read in order: once this comes back, all were routed.
            flooder.send("flooder: done").await;
            flooder.expect("from flooder: done").await;
            (flooder, started.elapsed())
        }
    });
    let mut rounds = 0;
    while !flood.is_finished() || rounds < 20 {
        alice.send(&format!("bob: ping {rounds}")).await;
        bob.expect(&format!("from alice: ping {rounds}")).await;
        bob.send(&format!("alice: pong {rounds}")).await;
        alice.expect(&format!("from bob: pong {rounds}")).await;
        rounds += 1;
    }
    let (mut flooder, flood_took) = flood.await.expect("the flooder panicked");
    assert!(
        flood_took >= stall_timeout,
        "flooder: the flood was routed in {flood_took:?}, less than the stall timeout of \
         {stall_timeout:?}: its lines did not wait for the slow client, so somebody else paid"
    );
    let got = slow.lines_until_eof_within(Duration::from_secs(30)).await;
    assert!(
        got.len() < lines,
        "slow: received all {lines} lines although it read nothing until the flood was over: \
         the server queued them all instead of dropping a client that fell behind"
    );
    for (i, line) in got.iter().enumerate() {
        let expected = format!("from flooder: {i} {padding}");
        // The server may cut the connection in the middle of a write: the last line may be
        // only the start of one.
        let whole_or_cut = *line == expected || (i + 1 == got.len() && expected.starts_with(line));
        assert!(
            whole_or_cut,
            "slow: line {i} should be message {i} of the flood, got `{}`",
            line.chars().take(40).collect::<String>()
        );
    }
    let mut slow = Client::login(addr, "slow").await;
    flooder.send("slow: welcome back").await;
    slow.expect("from flooder: welcome back").await;
}

/// With `limit` clients connected, one more gets `error: server full` and is closed, while
/// the others keep chatting; once one leaves, a new client gets in.
pub async fn refuses_beyond_connection_limit(addr: SocketAddr, limit: usize) {
    assert!(
        limit >= 2,
        "the scenario needs room for two chatting clients"
    );
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut others = Vec::new();
    for i in 2..limit {
        others.push(Client::login(addr, &format!("c{i}")).await);
    }
    match Client::try_login(addr, "one-too-many").await {
        Err(line) if line == "error: server full" => {}
        Err(line) => panic!("one-too-many: expected `error: server full`, got `{line}`"),
        Ok(_) => panic!("one-too-many: logged in although {limit} clients were connected"),
    }
    alice.send("bob: still chatting").await;
    bob.expect("from alice: still chatting").await;
    drop(others.pop());
    drop(bob);
    // The server frees the slots once it has noticed the clients left: keep trying.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut latecomer = loop {
        match Client::try_login(addr, "latecomer").await {
            Ok(client) => break client,
            Err(line) if tokio::time::Instant::now() < deadline => {
                assert_eq!(line, "error: server full", "latecomer: unexpected answer");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(line) => panic!(
                "latecomer: still `{line}` {} after two clients left",
                human(TIMEOUT)
            ),
        }
    };
    alice.send("latecomer: welcome").await;
    latecomer.expect("from alice: welcome").await;
}
