//! Every limit of step 07 and every way it fails: the `Config` the binary builds from its
//! flags and checks before serving, the `error: ...` lines a client is told before it is closed,
//! and the `Result` every fallible function returns.

use std::fmt;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::codec::LinesCodecError;

// ANCHOR: result
/// Any error, boxed: enough for a server that logs errors rather than matching on them.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The `Result` every fallible function of this step returns.
pub type Result<T> = std::result::Result<T, Error>;
// ANCHOR_END: result

// ANCHOR: config
/// Every limit of the server. The binary starts from [`Config::default`] and changes what its
/// command-line flags say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The longest line a client may send, in bytes, not counting the `\n`. A longer line gets
    /// `error: line too long` and the connection is closed. The limit counts the bytes before
    /// the `\n` as they arrive, so the `\r` of a CRLF ending counts too: on purpose, the rule is
    /// about what the server must buffer, and a CRLF client simply has one byte less of text.
    pub max_line_len: usize,
    /// How long a new client has to send its name before it is closed.
    pub login_timeout: Duration,
    /// How many bytes of lines one client may have queued for others and not yet written to
    /// their sockets: its credit, as in step 06. A reader pays for each batch of lines before
    /// it goes (see [`batch_cost`](crate::batch_cost)) and waits, not reading its client,
    /// without the credit.
    pub sender_budget: usize,
    /// How long a write of one chunk to a client may take. A client that takes nothing for
    /// that long has stopped reading: it is disconnected as too slow.
    pub stall_timeout: Duration,
    /// How many events the readers may queue for the broker; a reader that finds the queue
    /// full waits (it stops reading its client) until the broker catches up.
    pub broker_queue_len: usize,
    /// How many clients may be connected at once. One more gets `error: server full`.
    pub max_connections: usize,
    /// How long a graceful shutdown may take. After it, the remaining connections are closed
    /// and [`run`](crate::run) returns [`GracePeriodExpired`].
    pub grace_period: Duration,
    /// How long a connection we close in order (at shutdown, or after an `error:` line) waits,
    /// after our FIN, for the client to close its side before the socket is closed anyway.
    pub linger: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_line_len: 4096,
            login_timeout: Duration::from_secs(10),
            sender_budget: 256 * 1024,
            stall_timeout: Duration::from_secs(5),
            broker_queue_len: 1024,
            max_connections: 10_000,
            grace_period: Duration::from_secs(10),
            linger: Duration::from_secs(2),
        }
    }
}

/// The longest name a client may log in with, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// The most names one message line may list, counted as written (a name written twice counts
/// twice). A line that lists more gets `error: too many destinations` and the connection is
/// closed.
pub const MAX_DESTINATIONS: usize = 32;

/// How long the accept loop waits after `accept` failed before it tries again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The size a connection's read buffer starts at. Most chat lines fit; the buffer grows for a
/// longer line, and a client that sends in bulk gets [`BUSY_READ_BUFFER`].
pub(crate) const READ_BUFFER: usize = 512;

/// The room a client that sends lines in bulk gets in its read buffer: one read takes in
/// dozens of the fan-out's lines instead of seven.
pub(crate) const BUSY_READ_BUFFER: usize = 8 * 1024;
// ANCHOR_END: config

impl Config {
    /// Checks that every limit can be used: counts are at least 1 (a queue of 0 cannot hold
    /// anything, and tokio panics on one) and at most what tokio's semaphores can count, and
    /// the sender budget pays for the costliest line (or a client that sent one would wait
    /// for ever) and fits the `u32` a semaphore acquires at once.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let counts = [
            ("max line length", self.max_line_len),
            ("broker queue length", self.broker_queue_len),
            ("max connections", self.max_connections),
        ];
        for (what, n) in counts {
            if n == 0 || n > Semaphore::MAX_PERMITS {
                return Err(format!(
                    "the {what} must be between 1 and {}, not {n}",
                    Semaphore::MAX_PERMITS
                ));
            }
        }
        if self.login_timeout.is_zero() {
            return Err("the login timeout must be longer than 0".to_string());
        }
        // `from NAME: text\n` with the longest name and text, to every name a line may list.
        let costliest = MAX_DESTINATIONS * ("from : \n".len() + MAX_NAME_LEN + self.max_line_len);
        if self.sender_budget < costliest || u32::try_from(self.sender_budget).is_err() {
            return Err(format!(
                "the sender budget must pay for a line of the longest kind to {MAX_DESTINATIONS} \
                 destinations: between {costliest} and {} bytes with this max line length, not {}",
                u32::MAX,
                self.sender_budget
            ));
        }
        if self.stall_timeout.is_zero() {
            return Err("the stall timeout must be longer than 0".to_string());
        }
        Ok(())
    }
}

// ANCHOR: errors
/// What a client is told, as its last line, before the server closes its connection.
pub(crate) const LINE_TOO_LONG: &str = "error: line too long";
pub(crate) const INVALID_UTF8: &str = "error: invalid UTF-8";
pub(crate) const INVALID_NAME: &str = "error: invalid name";
pub(crate) const NAME_TAKEN: &str = "error: name taken";
pub(crate) const LOGIN_TIMED_OUT: &str = "error: login timed out";
pub(crate) const SERVER_FULL: &str = "error: server full";
pub(crate) const CONTROL_CHARACTER: &str = "error: control character";
pub(crate) const TOO_MANY_DESTINATIONS: &str = "error: too many destinations";

/// The line to send a client whose input broke a rule, or `None` when the error is not the
/// client's fault to be told about (the connection failed: nobody is there to read it).
pub(crate) fn refusal(error: &LinesCodecError) -> Option<&'static str> {
    match error {
        // `LinesCodec` discards the rest of the line rather than buffering it, so the memory
        // an attacker can make us hold for one connection is `max_line_len` plus what one read
        // brings in past it (the read buffer), not the length of their line.
        LinesCodecError::MaxLineLengthExceeded => Some(LINE_TOO_LONG),
        // The codec reports a line that is not UTF-8 as an I/O error of kind `InvalidData`.
        LinesCodecError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => Some(INVALID_UTF8),
        LinesCodecError::Io(_) => None,
    }
}

/// Returned by [`run`](crate::run) when the grace period ran out before every connection was
/// done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracePeriodExpired {
    /// The grace period that ran out.
    pub grace_period: Duration,
}

impl fmt::Display for GracePeriodExpired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the graceful shutdown took longer than {:?}; the remaining connections were closed",
            self.grace_period
        )
    }
}

impl std::error::Error for GracePeriodExpired {}
// ANCHOR_END: errors

#[cfg(test)]
mod tests {
    use super::*;

    /// What the codec reports maps to the right error line; a failing connection maps to none.
    #[test]
    fn refusal_lines() {
        assert_eq!(
            refusal(&LinesCodecError::MaxLineLengthExceeded),
            Some(LINE_TOO_LONG)
        );
        let invalid = std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8");
        assert_eq!(refusal(&LinesCodecError::Io(invalid)), Some(INVALID_UTF8));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(refusal(&LinesCodecError::Io(reset)), None);
    }
}
