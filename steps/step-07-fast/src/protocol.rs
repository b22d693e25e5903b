//! What a client's line means: its login name, a message line's destinations and text, and
//! the rules a message line must keep (no control character but tab, at most
//! `MAX_DESTINATIONS` names). Pure functions on `&str`: no I/O, no tasks.

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
    let name = line.trim();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c == ',' || c == ':' || is_unsafe(c));
    valid.then(|| name.to_string())
}
// ANCHOR_END: validate_name

// ANCHOR: split_message
/// Splits a message line at its first `:` into the destination list, as written, and the
/// text, trimmed. `None` for a line without `:`.
pub(crate) fn split_message(line: &str) -> Option<(&str, &str)> {
    let (dest, text) = line.split_once(':')?;
    Some((dest, text.trim()))
}

/// The names in a destination list: split at commas, trimmed, empty names dropped.
pub(crate) fn destinations(dest: &str) -> impl Iterator<Item = &str> {
    dest.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
}
// ANCHOR_END: split_message

/// Parses a message line. Only the first `:` separates destinations from the text, so
/// `bob: a:b` sends `a:b`. A line without `:` is not a message: `None`.
///
/// The server itself uses the two halves above, which borrow from the line instead of
/// copying each name and the text into a `String` of its own.
pub fn parse_message(line: &str) -> Option<Message> {
    let (dest, text) = split_message(line)?;
    Some(Message {
        dest: destinations(dest).map(String::from).collect(),
        text: text.to_string(),
    })
}
// ANCHOR_END: parse

// ANCHOR: message_rules
/// The first of `lines` (each ending in `\n`) that breaks a rule of message lines, if one
/// does: where it starts, and its refusal. `crowded` says whether a line has at least
/// [`MAX_DESTINATIONS`] commas.
pub(crate) fn first_refused(lines: &str, crowded: bool) -> Option<(usize, &'static str)> {
    // Every character `is_unsafe` refuses starts with a byte below 0x20 (`\n` aside), 0x7f
    // (DEL), 0xc2 (the C1 controls) or 0xe2 (the bidirectional ones). One pass over all the
    // lines, with no early exit so that it runs as a vector loop, finds whether any byte
    // does. Mostly none does, and no line is crowded: then no line needs a closer look.
    let suspect = lines.bytes().fold(false, |found, b| {
        found | ((b < 0x20) & (b != b'\n')) | (b == 0x7f) | (b == 0xc2) | (b == 0xe2)
    });
    if !suspect && !crowded {
        return None;
    }
    let mut start = 0;
    for line in lines.split_inclusive('\n') {
        // The ending the broker drops (`str::lines`): `\n`, and a `\r` before it.
        let bare = line.strip_suffix('\n').unwrap_or(line);
        let bare = bare.strip_suffix('\r').unwrap_or(bare);
        if let Some(error) = line_refusal(bare, suspect) {
            return Some((start, error));
        }
        start += line.len();
    }
    None
}

/// The refusal for a message line that breaks a rule of its own: a character [`is_unsafe`]
/// refuses but tab, anywhere in the line (the text goes to other people's terminals), or more
/// than [`MAX_DESTINATIONS`] names. `suspect` says whether it may hold such a character.
fn line_refusal(line: &str, suspect: bool) -> Option<&'static str> {
    if suspect && line.chars().any(|c| c != '\t' && is_unsafe(c)) {
        return Some(CONTROL_CHARACTER);
    }
    let (dest, _text) = line.split_once(':')?;
    // More names than the limit take a comma each and a byte each at least: a shorter list,
    // or one with fewer commas, has no more names than the limit. Most lines stop here.
    if dest.len() > 2 * MAX_DESTINATIONS
        && dest.bytes().filter(|&b| b == b',').count() >= MAX_DESTINATIONS
        && destinations(dest).nth(MAX_DESTINATIONS).is_some()
    {
        return Some(TOO_MANY_DESTINATIONS);
    }
    None
}
// ANCHOR_END: message_rules
