//! The library's pure functions by example: the parser and the name rules (their property
//! tests are in `properties.rs`), the bytes a recipient gets for a line and what they cost,
//! and which limits `Config::validate` accepts.

use std::time::Duration;

use step_07::{
    Config, MAX_DESTINATIONS, Message, append_message, batch_cost, parse_login, parse_message,
    queue_cost,
};

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
