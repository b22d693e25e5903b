//! From bytes to lines: once a client is logged in, its reader takes every complete line of
//! one read off its buffer at once, and checks the rules `LinesCodec` checked before (length,
//! UTF-8) and those of message lines (see `protocol`).

use crate::config::{INVALID_UTF8, LINE_TOO_LONG, MAX_DESTINATIONS};
use crate::protocol::first_refused;

// ANCHOR: take_lines
/// Takes the complete lines off the front of `buffer`, as one `String` of lines each ending
/// in `\n`, and says which rule the next line broke, if one did: longer than
/// `max_line_len` (a line still without its `\n` counts too), not UTF-8, or one of
/// [`line_refusal`]'s. The lines before a broken one are returned; the broken one and what
/// follows go nowhere.
pub(crate) fn take_lines(
    buffer: &mut Vec<u8>,
    max_line_len: usize,
) -> (Option<String>, Option<&'static str>) {
    let mut end = 0;
    let mut broken = None;
    // Whether a line has as many commas as a line may list names: only such a line can list
    // too many (see `first_refused`).
    let mut crowded = false;
    while let Some(newline) = buffer[end..].iter().position(|&b| b == b'\n') {
        if newline > max_line_len {
            broken = Some(LINE_TOO_LONG);
            break;
        }
        let line = &buffer[end..end + newline];
        crowded |= line.iter().filter(|&&b| b == b',').count() >= MAX_DESTINATIONS;
        end += newline + 1;
    }
    if broken.is_none() && buffer.len() - end > max_line_len {
        broken = Some(LINE_TOO_LONG);
    }
    if end == 0 {
        return (None, broken);
    }
    // The partial line stays; the complete ones leave, with the buffer's capacity.
    let rest = buffer.split_off(end);
    let complete = std::mem::replace(buffer, rest);
    let (lines, broken) = match String::from_utf8(complete) {
        Ok(lines) => (Some(lines), broken),
        Err(e) => {
            // Keep the lines before the one with the bad bytes.
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            let good = bytes[..valid]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1);
            bytes.truncate(good);
            // Valid by construction: these bytes come before `valid_up_to`.
            let lines = String::from_utf8(bytes).ok().filter(|l| !l.is_empty());
            (lines, Some(INVALID_UTF8))
        }
    };
    // A line that breaks a rule of message lines comes before any line refused above, so its
    // refusal is the one the client gets, and it goes nowhere.
    let Some(mut lines) = lines else {
        return (None, broken);
    };
    match first_refused(&lines, crowded) {
        Some((start, error)) => {
            lines.truncate(start);
            (Some(lines).filter(|l| !l.is_empty()), Some(error))
        }
        None => (Some(lines), broken),
    }
}
// ANCHOR_END: take_lines

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CONTROL_CHARACTER, TOO_MANY_DESTINATIONS};

    /// `take_lines` takes every complete line and leaves a partial one; a line too long
    /// (finished or not) or not UTF-8 is reported, and the lines before it are still taken.
    #[test]
    fn take_lines_keeps_what_came_before_a_broken_line() {
        let mut buffer = b"a: 1\nb: 2\r\nc: par".to_vec();
        assert_eq!(
            take_lines(&mut buffer, 10),
            (Some("a: 1\nb: 2\r\n".to_string()), None)
        );
        assert_eq!(buffer, b"c: par");
        assert_eq!(take_lines(&mut buffer, 10), (None, None));

        let mut buffer = b"a: 1\nb: 0123456789x\nc: 3\n".to_vec();
        assert_eq!(
            take_lines(&mut buffer, 10),
            (Some("a: 1\n".to_string()), Some(LINE_TOO_LONG))
        );
        let mut buffer = b"a: 1\nb: 0123456789".to_vec();
        assert_eq!(
            take_lines(&mut buffer, 10),
            (Some("a: 1\n".to_string()), Some(LINE_TOO_LONG)),
            "a line already too long without its newline"
        );

        let mut buffer = b"a: 1\nb: \xff\nc: 3\n".to_vec();
        assert_eq!(
            take_lines(&mut buffer, 10),
            (Some("a: 1\n".to_string()), Some(INVALID_UTF8))
        );
        let mut buffer = b"\xffa: 1\n".to_vec();
        assert_eq!(take_lines(&mut buffer, 10), (None, Some(INVALID_UTF8)));
    }

    /// A line with a control character (tab excepted) or a bidirectional embedding, override
    /// or isolate, or with more than `MAX_DESTINATIONS` names, is refused by `take_lines`: the
    /// lines before it are taken, it and the rest go nowhere, and its refusal wins over that of
    /// a later line. Ordinary Unicode, tabs and CRLF endings pass.
    #[test]
    fn take_lines_applies_the_message_rules() {
        let take = |bytes: &[u8]| take_lines(&mut bytes.to_vec(), 4096);
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
            assert_eq!(
                take(&[format!("a: 1\n{bad}\n").as_bytes(), b"b: \xff\n"].concat()),
                (Some("a: 1\n".to_string()), Some(CONTROL_CHARACTER)),
                "{bad:?}"
            );
        }
        let good = "bob: a\tb café 日本語 🦀 👩\u{200d}💻 שלום \u{200e} ’quoted’\r\nno colon\n";
        assert_eq!(take(good.as_bytes()), (Some(good.to_string()), None));
        let names = |n: usize| vec!["bob"; n].join(" , ");
        let most = format!("{}: x\n", names(MAX_DESTINATIONS));
        assert_eq!(take(most.as_bytes()), (Some(most.clone()), None));
        let too_many = format!("{most}{}: x\nbob: after\n", names(MAX_DESTINATIONS + 1));
        assert_eq!(
            take(too_many.as_bytes()),
            (Some(most), Some(TOO_MANY_DESTINATIONS))
        );
        // Empty names are not names: commas alone do not count.
        let commas = format!("bob{}: x\n", ",".repeat(2 * MAX_DESTINATIONS));
        assert_eq!(take(commas.as_bytes()), (Some(commas.clone()), None));
    }
}
