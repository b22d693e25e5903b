//! Client connections: resolving the (loopback-only) address, logging in and registering, and a
//! line reader that parses in place and never waits without a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::Error;
use crate::wire::{HELLO, Names};

/// The longest line the reader accepts; ours are under 100 bytes.
const MAX_LINE: usize = 4096;
/// The reader's buffer starts small (an idle client of the connections scenario needs little)
/// and doubles, while it keeps filling up, to this size: many lines per `read` under load.
const BUFFER_START: usize = 1024;
const BUFFER_MAX: usize = 64 * 1024;

/// Resolves `addr` and refuses anything that is not a loopback address: this tool generates
/// heavy traffic and must only ever aim it at the machine it runs on.
pub async fn resolve_loopback(addr: &str) -> Result<SocketAddr, Error> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve `{addr}`: {e}"))?
        .collect();
    match found.iter().find(|a| a.ip().is_loopback()) {
        Some(a) => Ok(*a),
        None => Err(format!(
            "`{addr}` is not a loopback address ({found:?}); chat-load only sends traffic to \
             127.0.0.0/8 or ::1"
        )
        .into()),
    }
}

/// Why a read ended without a line.
#[derive(Debug)]
pub enum ReadEnd {
    /// The server closed the connection.
    Eof,
    /// Nothing arrived within the deadline.
    TimedOut,
    /// The connection failed (a reset counts as the server letting go, like EOF, for callers
    /// that wait for the close).
    Failed(std::io::Error),
    /// A line longer than [`MAX_LINE`].
    TooLong,
}

impl std::fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadEnd::Eof => write!(f, "the server closed the connection"),
            ReadEnd::TimedOut => write!(f, "nothing arrived in time"),
            ReadEnd::Failed(e) => write!(f, "reading failed: {e}"),
            ReadEnd::TooLong => write!(f, "the server sent a line over {MAX_LINE} bytes"),
        }
    }
}

/// Reads lines into one reusable buffer, without allocating per line.
#[derive(Debug)]
pub struct LineReader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    read_at: Instant,
}

impl LineReader {
    fn new(half: OwnedReadHalf) -> LineReader {
        LineReader {
            half,
            buf: vec![0; BUFFER_START],
            start: 0,
            end: 0,
            read_at: Instant::now(),
        }
    }

    /// When the last read from the socket returned: every line in the buffer had arrived by
    /// then. One clock reading per read instead of one per line.
    pub fn read_at(&self) -> Instant {
        self.read_at
    }

    /// Whether bytes are waiting in the buffer (the next call may not need the socket).
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// The next line if a whole one is in the buffer already, without its `\n`: no socket,
    /// no timer, nothing to wait for. A receiver takes the lines of one read this way, and
    /// only the last one costs a [`LineReader::next_line`].
    pub fn buffered_line(&mut self) -> Option<&[u8]> {
        let len = self.buffered_line_len()?;
        Some(self.take_line(len))
    }

    /// The length of the first whole line in the buffer, without its `\n`.
    fn buffered_line_len(&self) -> Option<usize> {
        self.buf[self.start..self.end]
            .iter()
            .position(|&b| b == b'\n')
    }

    /// Takes the first `len` bytes and the `\n` after them out of the buffer.
    fn take_line(&mut self, len: usize) -> &[u8] {
        let line = self.start;
        self.start += len + 1;
        &self.buf[line..line + len]
    }

    /// The next line, without its `\n`. Waits at most `limit` for each read from the socket.
    /// Cancel safe: a cancelled call loses nothing, the bytes stay in the buffer.
    pub async fn next_line(&mut self, limit: Duration) -> Result<&[u8], ReadEnd> {
        loop {
            // Not `buffered_line`: a borrow returned from inside a loop would outlive the
            // loop's next turn, which the borrow checker does not allow.
            if let Some(len) = self.buffered_line_len() {
                return Ok(self.take_line(len));
            }
            if self.end - self.start > MAX_LINE {
                return Err(ReadEnd::TooLong);
            }
            if self.end == self.buf.len() {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                } else if self.buf.len() < BUFFER_MAX {
                    self.buf.resize(self.buf.len() * 2, 0);
                }
            }
            match tokio::time::timeout(limit, self.half.read(&mut self.buf[self.end..])).await {
                Err(_) => return Err(ReadEnd::TimedOut),
                Ok(Ok(0)) => return Err(ReadEnd::Eof),
                Ok(Ok(n)) => {
                    self.end += n;
                    self.read_at = Instant::now();
                }
                Ok(Err(e)) => return Err(ReadEnd::Failed(e)),
            }
        }
    }
}

/// A logged-in, registered client.
#[derive(Debug)]
pub struct Conn {
    /// Its index in the run (its name is `names.name(index)`).
    pub index: u32,
    /// The reading half.
    pub reader: LineReader,
    /// The writing half.
    pub writer: OwnedWriteHalf,
    /// How long connecting, logging in and registering took.
    pub setup: Duration,
    /// This end's address, to find the connection in `/proc/net/tcp`.
    pub local: SocketAddr,
    /// Bytes written so far (the login and the registration message).
    pub written: u64,
}

/// Connects client `index`, logs in with its name, and waits until the server has registered
/// it: the client sends itself a message and waits for it to come back, so from then on
/// messages to this name reach it.
pub async fn login(
    addr: SocketAddr,
    names: &Names,
    index: u32,
    limit: Duration,
) -> Result<Conn, Error> {
    let started = Instant::now();
    let name = names.name(index);
    let stream = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("{name}: cannot connect to {addr}: {e}").into()),
        Err(_) => {
            return Err(format!("{name}: connecting to {addr} took over {limit:?}").into());
        }
    };
    // Our own writes must not wait for the server's delayed ACKs (Nagle): latency measured
    // here should be the server's, not the tool's.
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let (read, mut writer) = stream.into_split();
    let mut reader = LineReader::new(read);
    let hello = format!("{name}\n{name}: {HELLO}\n");
    match tokio::time::timeout(limit, writer.write_all(hello.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("{name}: sending the login failed: {e}").into()),
        Err(_) => return Err(format!("{name}: the server did not take the login").into()),
    }
    let expected = format!("from {name}: {HELLO}");
    match reader.next_line(limit).await {
        Ok(line) if line == expected.as_bytes() => Ok(Conn {
            index,
            reader,
            writer,
            setup: started.elapsed(),
            local,
            written: hello.len() as u64,
        }),
        Ok(line) => Err(format!(
            "{name}: registering, expected `{expected}` but the server sent `{}`",
            String::from_utf8_lossy(line)
        )
        .into()),
        Err(end) => Err(format!(
            "{name}: registering, expected `{expected}` within {limit:?}, but {end}"
        )
        .into()),
    }
}
