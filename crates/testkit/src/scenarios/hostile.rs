//! Scenarios for the rules that keep one client from speaking as another or silencing another
//! (step 06 on): no control character reaches a recipient, ordinary Unicode arrives byte for
//! byte, one line costs each recipient at most one line, and a flood slows its sender, not its
//! recipient.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Client;

/// Message texts that would drive a recipient's terminal: a carriage return that lets the
/// sender write over its own `from NAME:` (followed by an escape sequence that renames the
/// window and one that erases the line), each of those alone, NUL, DEL, a one-character C1
/// CSI, a form feed at the end (where trimming would hide it), and Unicode's bidirectional
/// override and isolate.
pub const FORGERIES: &[&str] = &[
    "hi\rfrom carol: I am carol\u{1b}]0;pwned\u{7}\u{1b}[2K",
    "hi\rfrom carol: I am carol",
    "\u{1b}]0;pwned\u{7}",
    "\u{1b}[2K",
    "a\0b",
    "a\u{7f}b",
    "\u{9b}2J",
    "trailing form feed\u{c}",
    "\u{202e}lorac morf",
    "\u{2066}isolated",
];

/// Whether `line` holds a character a terminal would obey rather than show: a control
/// character other than tab, or a bidirectional embedding, override or isolate.
pub fn drives_a_terminal(line: &str) -> bool {
    line.chars().any(|c| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

/// A message line with a control character in it never reaches a recipient: each of
/// [`FORGERIES`] (and a destination name with an escape in it) is refused with `error: control
/// character` and the sender is closed, while the recipient's next line is the next clean
/// message, from someone else.
pub async fn refuses_control_characters(addr: SocketAddr) {
    let mut bob = Client::login(addr, "bob").await;
    let mut carol = Client::login(addr, "carol").await;
    let mut lines: Vec<String> = FORGERIES.iter().map(|t| format!("bob: {t}")).collect();
    lines.push("b\u{1b}ob, bob: an escape in a name".to_string());
    for (i, line) in lines.iter().enumerate() {
        let mut alice = Client::login(addr, &format!("alice{i}")).await;
        alice.send(line).await;
        // bob first: what reaches him is the claim; what alice is told is the protocol.
        carol.send(&format!("bob: after forgery {i}")).await;
        let got = bob.recv().await;
        assert!(
            !drives_a_terminal(&got),
            "bob: received {got:?}, with a character that drives a terminal, after alice{i} \
             sent {line:?}"
        );
        assert_eq!(
            got,
            format!("from carol: after forgery {i}"),
            "bob: after alice{i} sent {line:?}, the next line should be carol's"
        );
        alice.expect("error: control character").await;
        alice.expect_eof().await;
    }
}

/// A message of ordinary Unicode (accents, CJK, emoji with modifiers and joiners,
/// right-to-left scripts, a left-to-right mark) and tabs is delivered byte for byte.
pub async fn delivers_unicode_unchanged(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    for text in [
        "café, naïve, Ærøskøbing, ñandú, e\u{301}",
        "日本語のテキスト、中文，한국어",
        "🦀 👍🏽 👩\u{200d}💻 🇫🇷",
        "שלום עולם, مرحبا بالعالم \u{200e}(1)",
        "“quotes” — dashes… ‘and’ €",
        "columns\tseparated\tby tabs",
    ] {
        alice.send(&format!("bob: {text}")).await;
        bob.expect(&format!("from alice: {text}")).await;
    }
}

/// A destination named several times in one line receives the line once.
pub async fn delivers_once_per_named_destination(addr: SocketAddr) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut carol = Client::login(addr, "carol").await;
    alice.send("bob, bob, carol,bob ,  bob: once each").await;
    bob.expect("from alice: once each").await;
    carol.expect("from alice: once each").await;
    alice.send("bob, carol: next").await;
    bob.expect("from alice: next").await;
    carol.expect("from alice: next").await;
}

/// A line may list `max` names; one more gets `error: too many destinations`, the sender is
/// closed, and the line reaches nobody.
pub async fn refuses_too_many_destinations(addr: SocketAddr, max: usize) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut carol = Client::login(addr, "carol").await;
    let names = |n: usize| {
        let mut names: Vec<String> = (2..n).map(|i| format!("nobody{i}")).collect();
        names.extend(["bob".to_string(), "carol".to_string()]);
        names.join(", ")
    };
    alice
        .send(&format!("{}: as many as allowed", names(max)))
        .await;
    bob.expect("from alice: as many as allowed").await;
    carol.expect("from alice: as many as allowed").await;
    alice
        .send(&format!("{}: one too many", names(max + 1)))
        .await;
    alice.expect("error: too many destinations").await;
    alice.expect_eof().await;
    carol.send("bob: only this").await;
    bob.expect("from carol: only this").await;
    carol.expect_nothing().await;
}

/// The one who floods pays, not the one who reads. alice sends 200 lines naming bob `max`
/// times each (as many names as a line may list), then 200 lines of about 4 KiB naming him
/// about a thousand times each; bob reads as fast as he can all the while. bob stays
/// connected, receives each of alice's lines at most once, and then carol's next line.
pub async fn amplified_flood_spares_the_reader(addr: SocketAddr, max: usize) {
    let mut bob = Client::login(addr, "bob").await;
    let mut alice = Client::login(addr, "alice").await;
    let mut carol = Client::login(addr, "carol").await;
    const LINES: usize = 200;
    const MARK: &str = "from carol: after the flood";
    let reader = tokio::spawn(async move {
        let mut from_alice = 0;
        loop {
            // Fails the test if the server closes bob's connection, as it did when a line
            // cost a recipient one line per name written.
            let line = bob.recv().await;
            if line == MARK {
                return from_alice;
            }
            assert!(
                line.starts_with("from alice: "),
                "bob: unexpected line {:?}",
                line.chars().take(80).collect::<String>()
            );
            from_alice += 1;
        }
    });
    let most = vec!["bob"; max].join(",");
    for i in 0..LINES {
        alice.send(&format!("{most}: {i}")).await;
    }
    // alice's lines are read in order: once this comes back, all of the above were routed.
    alice.send("alice: sync").await;
    alice.expect("from alice: sync").await;
    let flood = format!("{}: x\n", vec!["bob"; 1_000].join(","));
    assert!(flood.len() <= 4096, "each flood line fits the line limit");
    for _ in 0..LINES {
        // The server may stop reading alice, or close her connection, at any point.
        if !alice.try_send_bytes(flood.as_bytes()).await {
            break;
        }
    }
    // carol's line comes after everything the server read from alice that it routed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    carol.send("bob: after the flood").await;
    let from_alice = match tokio::time::timeout(Duration::from_secs(60), reader).await {
        Ok(Ok(n)) => n,
        Ok(Err(panic)) => std::panic::resume_unwind(panic.into_panic()),
        Err(_) => panic!("bob: did not receive `{MARK}` within 60 s"),
    };
    assert!(
        from_alice <= 2 * LINES,
        "bob: received {from_alice} lines from alice, who sent {}: one line cost bob more \
         than one line",
        2 * LINES
    );
}

/// The one who floods pays. `senders` clients, each with a name of 32 bytes (the longest the
/// server adds to a line), each send bob `lines` lines of `line_len` bytes and more, in writes
/// of a hundred lines, as fast as the server takes them: far more than any queue budget, and
/// each line bob receives (`from alice...: ...`) is several times longer than the one sent.
/// bob reads as fast as he can. He stays connected and receives every line of every sender,
/// complete and in each sender's order, and carol's line sent after the flood; the senders are
/// still connected afterwards (the server slowed them down instead).
pub async fn flood_spares_the_reader(
    addr: SocketAddr,
    senders: usize,
    lines: usize,
    line_len: usize,
) {
    let mut bob = Client::login(addr, "bob").await;
    let names: Vec<String> = (0..senders)
        .map(|s| format!("alice{s}{}", "e".repeat(26)))
        .collect();
    let mut carol = Client::login(addr, "carol").await;
    const MARK: &str = "from carol: after the flood";
    let padding = "x".repeat(line_len);
    let reader = tokio::spawn({
        let (padding, names) = (padding.clone(), names.clone());
        async move {
            let mut next = vec![0; names.len()];
            let mut marked = false;
            while !marked || next.iter().any(|&n| n < lines) {
                // Fails the test if the server closes bob's connection, as it did when bob's
                // queue had a budget of its own that a flooder could fill.
                let line = bob.recv().await;
                if line == MARK && !marked {
                    marked = true;
                    continue;
                }
                let sender = names
                    .iter()
                    .position(|name| line.starts_with(&format!("from {name}: ")))
                    .unwrap_or_else(|| {
                        panic!("bob: unexpected line {:?}", &line[..line.len().min(60)])
                    });
                let i = next[sender];
                assert_eq!(
                    line,
                    format!("from {}: {i}{padding}", names[sender]),
                    "bob: the next line from {} should be its line {i}",
                    names[sender]
                );
                next[sender] += 1;
            }
        }
    });
    let started = tokio::time::Instant::now();
    let mut floods = Vec::new();
    for name in &names {
        let mut sender = Client::login(addr, name).await;
        let (padding, name) = (padding.clone(), name.clone());
        floods.push(tokio::spawn(async move {
            let mut batch = String::new();
            for i in 0..lines {
                batch.push_str(&format!("bob: {i}{padding}\n"));
                if (i + 1) % 100 == 0 || i + 1 == lines {
                    sender.send_bytes(batch.as_bytes()).await;
                    batch.clear();
                }
            }
            (sender, name)
        }));
    }
    let mut flooders = Vec::new();
    for flood in floods {
        flooders.push(flood.await.expect("a sender panicked"));
    }
    eprintln!(
        "{senders} senders: {lines} lines each taken in {:?}",
        started.elapsed()
    );
    carol.send("bob: after the flood").await;
    match tokio::time::timeout(Duration::from_secs(120), reader).await {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic.into_panic()),
        Err(_) => panic!("bob: did not receive every line and `{MARK}` within 120 s"),
    }
    // Every sender's lines were delivered: each is still connected, and served at once.
    for (mut sender, name) in flooders {
        sender.send(&format!("{name}: still here")).await;
        sender.expect(&format!("from {name}: still here")).await;
    }
}
