//! What a line may hold: the login name's rules, the parsing of a `dest1, dest2: text` message
//! line, and the rules a message line must follow before it is routed. Pure functions of one
//! line, so they are tested without a server.

use crate::config::{CONTROL_CHARACTER, MAX_DESTINATIONS, MAX_NAME_LEN, TOO_MANY_DESTINATIONS};

// ANCHOR: parse
/// A parsed `dest1, dest2: text` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The destinations, trimmed, in the order written; empty names are dropped.
    pub dest: Vec<String>,
    /// Everything after the first `:`, trimmed.
    pub text: String,
}

// ANCHOR: unsafe_char
/// Whether a terminal would obey `c` rather than show it. Control characters (C0, DEL and C1:
/// what `char::is_control` says) move the cursor, erase, and start escape sequences; Unicode's
/// bidirectional embeddings, overrides and isolates (U+202A to U+202E, U+2066 to U+2069)
/// reorder what follows them on the line. A name may contain none of them; a message may
/// contain a tab, which only moves the cursor forward.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
// ANCHOR_END: unsafe_char

// ANCHOR: validate_name
/// Parses the first line a client sends: its login name, trimmed. `None` unless it is a valid
/// name: not empty, at most [`MAX_NAME_LEN`] bytes, and without `,` or `:` (which separate
/// names in a message line) or characters that [`is_unsafe`] refuses (which could forge lines
/// in a log or a terminal).
pub fn parse_login(line: &str) -> Option<String> {
    // ANCHOR: exercise_validate_name
    // Trim the line and return the name only if it follows the rules above.
    // Refuse (None) an empty name, one longer than MAX_NAME_LEN bytes, and one with a `,`, a
    // `:` or a character that `is_unsafe` refuses.
    let name = line.trim();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c == ',' || c == ':' || is_unsafe(c));
    valid.then(|| name.to_string())
    // ANCHOR_END: exercise_validate_name
}
// ANCHOR_END: validate_name

/// Parses a message line. Only the first `:` separates destinations from the text, so
/// `bob: a:b` sends `a:b`. A line without `:` is not a message: `None`.
pub fn parse_message(line: &str) -> Option<Message> {
    let (dest, text) = line.split_once(':')?;
    let dest = dest
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect();
    Some(Message {
        dest,
        text: text.trim().to_string(),
    })
}

// ANCHOR: message_rules
/// Parses a message line, as [`parse_message`] does, once it has checked the line's own
/// rules: no character [`is_unsafe`] refuses but tab, anywhere in the line (the text goes to
/// other people's terminals), and at most [`MAX_DESTINATIONS`] names. `Err` holds the refusal.
pub(crate) fn accept_message(line: &str) -> std::result::Result<Option<Message>, &'static str> {
    if line.chars().any(|c| c != '\t' && is_unsafe(c)) {
        return Err(CONTROL_CHARACTER);
    }
    match parse_message(line) {
        Some(message) if message.dest.len() > MAX_DESTINATIONS => Err(TOO_MANY_DESTINATIONS),
        parsed => Ok(parsed),
    }
}
// ANCHOR_END: message_rules
// ANCHOR_END: parse

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(dest: &[&str], text: &str) -> Option<Message> {
        Some(Message {
            dest: dest.iter().map(|d| d.to_string()).collect(),
            text: text.to_string(),
        })
    }

    /// A message line with a control character (tab excepted) or a bidirectional embedding,
    /// override or isolate anywhere in it is refused, and so is one that lists more than
    /// `MAX_DESTINATIONS` names; ordinary Unicode and tabs pass unchanged.
    #[test]
    fn message_rules() {
        for bad in [
            "bob: hi\rfrom carol: I am carol",
            "bob: \u{1b}]0;pwned\u{7}",
            "bob: \u{1b}[2K",
            "bob: a\0b",
            "bob: a\u{7f}",
            "bob: \u{9b}2J",
            "bob: \u{202e}olleh",
            "bob: \u{2066}x",
            "bob: trailing form feed\u{c}",
            "b\u{1b}ob: in a name",
            "no colon \u{1b}",
        ] {
            assert_eq!(accept_message(bad), Err(CONTROL_CHARACTER), "{bad:?}");
        }
        assert_eq!(accept_message("bob: a\tb"), Ok(msg(&["bob"], "a\tb")));
        let unicode = "café 日本語 🦀 👩\u{200d}💻 שלום \u{200e}";
        assert_eq!(
            accept_message(&format!("bob: {unicode}")),
            Ok(msg(&["bob"], unicode))
        );
        assert_eq!(accept_message("no colon"), Ok(None));
        let names = |n: usize| vec!["bob"; n].join(",");
        let most = format!("{}: x", names(MAX_DESTINATIONS));
        assert_eq!(
            accept_message(&most).map(|m| m.map(|m| m.dest.len())),
            Ok(Some(MAX_DESTINATIONS))
        );
        let too_many = format!("{}: x", names(MAX_DESTINATIONS + 1));
        assert_eq!(accept_message(&too_many), Err(TOO_MANY_DESTINATIONS));
    }
}
