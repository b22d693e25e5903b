//! The lines the tool writes and reads: client names, message lines, and their parser.
//!
//! A message line is `dest1, dest2: S N T`: the sender's index `S`, its message number `N`
//! (also the per-pair sequence number, see [`crate::check`]) and the send time `T` in
//! nanoseconds since the run's epoch. The server delivers it as `from NAME: S N T`.

use std::io::Write;

/// The names of one run's clients: `TAG-INDEX`. The tag is fresh for each run, so two runs
/// against one server, or a leftover client of an earlier run, never share a name.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names with a tag made from the process id and the clock.
    pub fn fresh() -> Names {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tag = (std::process::id() ^ nanos) & 0xf_ffff;
        Names::with_tag(&format!("L{tag:05x}"))
    }

    /// Names with a given tag (tests use a fixed one).
    pub fn with_tag(tag: &str) -> Names {
        Names {
            prefix: format!("{tag}-"),
        }
    }

    /// The login name of client `i`.
    pub fn name(&self, i: u32) -> String {
        format!("{}{i}", self.prefix)
    }

    /// The index of a name of this run, `None` for any other name.
    pub fn index(&self, name: &[u8]) -> Option<u32> {
        parse_u64(name.strip_prefix(self.prefix.as_bytes())?)?
            .try_into()
            .ok()
    }

    /// `a, b, c: `, the start of every line a sender writes to these recipients.
    pub fn destinations(&self, recipients: &[u32]) -> Vec<u8> {
        let list: Vec<String> = recipients.iter().map(|&r| self.name(r)).collect();
        format!("{}: ", list.join(", ")).into_bytes()
    }
}

/// The text of the registration message a client sends itself.
pub const HELLO: &str = "hello";

/// Appends one message line to `buf`.
pub fn push_message(buf: &mut Vec<u8>, destinations: &[u8], sender: u32, seq: u64, ts_ns: u64) {
    buf.extend_from_slice(destinations);
    // Writing into a Vec cannot fail.
    let _ = writeln!(buf, "{sender} {seq} {ts_ns}");
}

/// A parsed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The sender the server names in `from NAME:`.
    pub from: u32,
    /// The sender the text names.
    pub sender: u32,
    /// The message number.
    pub seq: u64,
    /// When it was written, in nanoseconds since the run's epoch.
    pub sent_at_ns: u64,
}

/// Parses `from NAME: S N T`.
pub fn parse(names: &Names, line: &[u8]) -> Result<Received, &'static str> {
    let rest = line
        .strip_prefix(b"from ")
        .ok_or("a line that does not start with `from `")?;
    let colon = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or("a line without `:`")?;
    let from = names
        .index(&rest[..colon])
        .ok_or("a message from a client that is not part of this run")?;
    let text = rest[colon + 1..]
        .strip_prefix(b" ")
        .ok_or("no space after `:`")?;
    let mut fields = text.split(|&b| b == b' ');
    let mut field = || fields.next().and_then(parse_u64);
    let (Some(sender), Some(seq), Some(sent_at_ns), None) = (field(), field(), field(), field())
    else {
        return Err("text that is not `SENDER NUMBER TIME`");
    };
    Ok(Received {
        from,
        sender: sender
            .try_into()
            .map_err(|_| "a sender index out of range")?,
        seq,
        sent_at_ns,
    })
}

/// A delivery line as the server writes it (for tests).
pub fn received_line(names: &Names, sender: u32, seq: u64, ts_ns: u64) -> String {
    format!("from {}: {sender} {seq} {ts_ns}", names.name(sender))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a sender writes comes back, once the server prefixes `from NAME: `, as the same
    /// sender, number and time.
    #[test]
    fn message_round_trips() {
        let names = Names::with_tag("x");
        let mut buf = Vec::new();
        push_message(&mut buf, &names.destinations(&[1, 2]), 7, 42, 123_456);
        assert_eq!(buf, b"x-1, x-2: 7 42 123456\n");
        let delivered = format!("from {}: 7 42 123456", names.name(7));
        assert_eq!(
            parse(&names, delivered.as_bytes()),
            Ok(Received {
                from: 7,
                sender: 7,
                seq: 42,
                sent_at_ns: 123_456
            })
        );
    }

    /// Lines that are not exactly a message of this run are rejected, not misread.
    #[test]
    fn rejects_other_lines() {
        let names = Names::with_tag("x");
        for line in [
            "from x-1: hello",
            "from y-1: 1 2 3",
            "from x-1: 1 2 3 4",
            "from x-1: 1 2",
            "from x-1:1 2 3",
            "from x-: 1 2 3",
            "x-1: 1 2 3",
            "from x-1: 1 -2 3",
        ] {
            assert!(parse(&names, line.as_bytes()).is_err(), "{line}");
        }
    }
}
