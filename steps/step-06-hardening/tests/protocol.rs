//! The rules for one value at a time, by example: how a message line is parsed, which login
//! names pass, and which configurations can work. (`properties.rs` checks the same parser and
//! name rules on thousands of random lines; the rules a message line must follow before it is
//! routed are unit tests in `src/protocol.rs`, because that check is private.)

use std::time::Duration;

use step_06::{Config, Message, parse_login, parse_message};

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
