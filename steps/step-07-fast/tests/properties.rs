//! Property tests for what the server does with any line a client can send: the parser and
//! the name validation never panic, never return more than they were given, and only ever
//! accept names that follow the rules.

use proptest::prelude::*;
use step_07::{MAX_NAME_LEN, Message, is_unsafe, parse_login, parse_message};

/// Lines made of the characters that matter to the parser, so that commas, colons, spaces
/// and control characters are common, plus any Unicode at all.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ,:\t\r\u{7}\u{1b}\u{9b}\u{202e}é]{0,80}",
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Any line: `parse_message` does not panic, and its output is no bigger than its input
    /// (no destination or text is made up, duplicated or padded).
    #[test]
    fn parse_message_output_is_bounded(line in line()) {
        // One short report per failure, not one per shrinking step.
        testkit::short_panics();
        if let Some(Message { dest, text }) = parse_message(&line) {
            let out: usize = dest.iter().map(String::len).sum::<usize>() + text.len();
            prop_assert!(out <= line.len());
            prop_assert!(dest.len() <= line.matches(',').count() + 1);
            for name in &dest {
                prop_assert!(!name.is_empty() && !name.contains(',') && !name.contains(':'));
                prop_assert_eq!(name.trim(), name.as_str());
            }
            prop_assert_eq!(text.trim(), text.as_str());
        } else {
            prop_assert!(!line.contains(':'));
        }
    }

    /// Any line: `parse_login` does not panic, and a name it accepts follows every rule.
    #[test]
    fn accepted_names_follow_the_rules(line in line()) {
        // One short report per failure, not one per shrinking step.
        testkit::short_panics();
        if let Some(name) = parse_login(&line) {
            prop_assert!(!name.is_empty());
            prop_assert!(name.len() <= MAX_NAME_LEN);
            prop_assert!(!name.chars().any(|c| c == ',' || c == ':' || is_unsafe(c)));
            prop_assert_eq!(name.trim(), name.as_str());
            prop_assert_eq!(line.trim(), name.as_str());
        }
    }

    /// A valid name survives a round trip: it is accepted as a login, and a message to it
    /// parses back to exactly that destination.
    #[test]
    fn valid_names_round_trip(name in "[a-zA-Zé0-9_.-][a-zA-Zé0-9_. -]{0,14}[a-zA-Zé0-9_.-]") {
        // One short report per failure, not one per shrinking step.
        testkit::short_panics();
        prop_assert_eq!(parse_login(&format!(" {name}\r")), Some(name.clone()));
        let parsed = parse_message(&format!("{name}, {name} : hi")).expect("has a colon");
        prop_assert_eq!(parsed.dest, vec![name.clone(), name]);
    }
}
