//! A chat client for tests: writes lines, reads lines with a deadline, and fails with a sentence
//! naming the client and what it was waiting for.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use crate::{QUIET, TIMEOUT, failure, human};

/// The receive buffer of [`Client::login_with_small_buffer`], in bytes.
const SMALL_BUFFER: u32 = 4096;

/// One client connection. `name` labels it in failure messages (and is its login name once
/// [`Client::login`] has sent it).
#[derive(Debug)]
pub struct Client {
    name: String,
    lines: FramedRead<OwnedReadHalf, LinesCodec>,
    writer: OwnedWriteHalf,
}

/// What one read brought.
enum Read {
    Line(String),
    Eof,
    Error(LinesCodecError),
    TimedOut,
}

impl Client {
    /// Opens a connection and sends nothing. `label` names the client in failure messages.
    pub async fn connect(addr: SocketAddr, label: &str) -> Client {
        let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => panic!("{label}: could not connect to the server at {addr}: {e}"),
            Err(_) => panic!(
                "{label}: connecting to the server at {addr} took more than {}",
                human(TIMEOUT)
            ),
        };
        Client::from_stream(stream, label)
    }

    /// Connects, sends `name` as the login line, and waits until the server has registered it:
    /// it sends itself a message and waits for it to come back. After this returns, messages
    /// sent to `name` by anyone reach this client.
    pub async fn login(addr: SocketAddr, name: &str) -> Client {
        Client::connect(addr, name).await.log_in_as(name).await
    }

    /// [`Client::login`] over a socket with a receive buffer of a few kilobytes (the kernel's
    /// automatic growth disabled), for a client that reads late: what the server writes to it
    /// backs up in the server after a few kilobytes, so the server still has it queued when the
    /// test acts next.
    pub async fn login_with_small_buffer(addr: SocketAddr, name: &str) -> Client {
        let socket = TcpSocket::new_v4().expect("creating a TCP socket");
        socket
            .set_recv_buffer_size(SMALL_BUFFER)
            .expect("setting SO_RCVBUF on a fresh socket");
        let stream = match tokio::time::timeout(TIMEOUT, socket.connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => panic!("{name}: could not connect to the server at {addr}: {e}"),
            Err(_) => panic!(
                "{name}: connecting to the server at {addr} took more than {}",
                human(TIMEOUT)
            ),
        };
        Client::from_stream(stream, name).log_in_as(name).await
    }

    /// Connects and tries to log in as `name`: `Ok` once the server has registered it (as
    /// [`Client::login`]), or `Err` with the line the server answered instead, such as
    /// `error: server full`.
    pub async fn try_login(addr: SocketAddr, name: &str) -> Result<Client, String> {
        let mut client = Client::connect(addr, name).await;
        client.send(name).await;
        client.send(&format!("{name}: logged in?")).await;
        let expected = format!("from {name}: logged in?");
        match client.read(TIMEOUT).await {
            Read::Line(line) if line == expected => Ok(client),
            Read::Line(line) => Err(line),
            other => panic!(
                "{name}: after logging in, expected `{expected}` or an error line within {}, \
                 but {}",
                human(TIMEOUT),
                describe(&other)
            ),
        }
    }

    fn from_stream(stream: TcpStream, label: &str) -> Client {
        crate::failure::short_panics();
        let (read, writer) = stream.into_split();
        Client {
            name: label.to_string(),
            lines: FramedRead::new(read, LinesCodec::new()),
            writer,
        }
    }

    /// Sends the login line and waits for a message to itself to come back.
    async fn log_in_as(self, name: &str) -> Client {
        let mut client = self;
        client.send(name).await;
        client.send(&format!("{name}: logged in?")).await;
        let expected = format!("from {name}: logged in?");
        match client.read(TIMEOUT).await {
            Read::Line(line) if line == expected => client,
            Read::Line(line) => panic!(
                "{name}: after logging in, a message to itself should come back as `{expected}`, \
                 but the server sent `{line}`"
            ),
            other => panic!(
                "{name}: after logging in, a message to itself should come back as `{expected}` \
                 within {}, but {}",
                human(TIMEOUT),
                describe(&other)
            ),
        }
    }

    /// The name this client logged in with (or its label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one line; the newline is added.
    pub async fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes()).await;
    }

    /// Sends raw bytes: half lines, invalid UTF-8, CRLF.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        match tokio::time::timeout(TIMEOUT, self.writer.write_all(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}: the server no longer accepts data: {e}", self.name),
            Err(_) => panic!(
                "{}: the server did not accept {} bytes within {}",
                self.name,
                bytes.len(),
                human(TIMEOUT)
            ),
        }
    }

    /// Sends raw bytes and reports whether the write succeeded (for clients that keep writing
    /// while the server shuts down, where a failing write is expected).
    pub async fn try_send(&mut self, line: &str) -> bool {
        let bytes = format!("{line}\n");
        matches!(
            tokio::time::timeout(TIMEOUT, self.writer.write_all(bytes.as_bytes())).await,
            Ok(Ok(()))
        )
    }

    /// Like [`Client::send_bytes`], but reports whether the server took the bytes instead of
    /// failing the test: for clients the server is expected to cut off.
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(TIMEOUT, self.writer.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Reads the next line, failing the test if none arrives in time.
    pub async fn recv(&mut self) -> String {
        match self.read(TIMEOUT).await {
            Read::Line(line) => line,
            other => panic!(
                "{}: expected a line within {}, but {}",
                self.name,
                human(TIMEOUT),
                describe(&other)
            ),
        }
    }

    /// Reads the next line and checks that it is exactly `expected`.
    pub async fn expect(&mut self, expected: &str) {
        match self.read(TIMEOUT).await {
            Read::Line(line) if line == expected => {}
            Read::Line(line) => panic!(
                "{}: expected `{expected}`, but the server sent `{line}` instead",
                self.name
            ),
            other => panic!(
                "{}: expected `{expected}` within {}, but {}",
                self.name,
                human(TIMEOUT),
                describe(&other)
            ),
        }
    }

    /// Checks that nothing arrives for a while (and the connection stays open).
    pub async fn expect_nothing(&mut self) {
        match self.read(QUIET).await {
            Read::TimedOut => {}
            Read::Line(line) => panic!(
                "{}: expected no message, but the server sent `{line}`",
                self.name
            ),
            other => panic!(
                "{}: expected the connection to stay open and quiet, but {}",
                self.name,
                describe(&other)
            ),
        }
    }

    /// Reads until the server closes the connection and returns every line that came first.
    /// A reset counts as closed: what matters is that the server let go of the socket.
    pub async fn lines_until_eof(&mut self) -> Vec<String> {
        self.lines_until_eof_within(TIMEOUT).await
    }

    /// [`Client::lines_until_eof`] with a deadline of its own, for clients that receive a lot.
    ///
    /// Lines must keep coming: a connection silent for [`TIMEOUT`] without closing fails at
    /// once, as it does when a shutdown has already hung in another test of this process.
    /// Such a server usually never closes it (a writer that never ends), and waiting out
    /// the whole deadline in every test made a check with that bug take minutes.
    pub async fn lines_until_eof_within(&mut self, limit: Duration) -> Vec<String> {
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let read = tokio::select! {
                read = self.read(left.min(TIMEOUT)) => read,
                first = failure::another_hung() => {
                    panic!("{}", self.still_open(&lines, started, &failure::as_in(first)))
                }
            };
            match read {
                Read::Line(line) => lines.push(line),
                Read::Eof | Read::Error(_) => return lines,
                Read::TimedOut => {
                    let also = failure::as_in(failure::record_hang());
                    panic!("{}", self.still_open(&lines, started, &also));
                }
            }
        }
    }

    /// Reads until the server closes the connection, while writing `line` over and over, as
    /// fast as the server takes it, the whole time: a client that keeps typing through the end
    /// of its connection. Returns every line read. Fails the test if the connection ends with
    /// a reset instead of an end-of-file: a server that closes its socket with unread input
    /// makes the kernel send RST, which throws away what the server wrote and this client had
    /// not yet received.
    pub async fn lines_until_eof_while_typing(
        &mut self,
        line: &str,
        limit: Duration,
    ) -> Vec<String> {
        // Fifty lines per write, written in a cycle from `at`: `write` is cancel safe (it
        // either wrote some bytes or none), so the bytes on the wire stay whole lines.
        let typed = format!("{line}\n").repeat(50).into_bytes();
        let mut at = 0;
        let deadline = tokio::time::Instant::now() + limit;
        let mut lines = Vec::new();
        loop {
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, self.lines.next()) => read,
                written = self.writer.write(&typed[at..]) => {
                    match written {
                        Ok(n) => at = (at + n) % typed.len(),
                        // A server that closes in order reads until we close: our writes
                        // keep succeeding until we have read its end-of-file. (The kernel
                        // reports a reset once, to whichever call comes first: here, or in
                        // the read below.)
                        Err(e) => panic!("{}", self.reset_message(lines.len(), &e)),
                    }
                    continue;
                }
            };
            match read {
                Ok(Some(Ok(line))) => lines.push(line),
                Ok(None) => return lines,
                Ok(Some(Err(e))) => panic!("{}", self.reset_message(lines.len(), &e)),
                Err(_) => panic!(
                    "{}: expected the server to close the connection within {}, but it stayed \
                     open (received {} lines)",
                    self.name,
                    human(limit),
                    lines.len()
                ),
            }
        }
    }

    fn reset_message(&self, received: usize, error: &dyn std::fmt::Display) -> String {
        format!(
            "{}: expected the server to close the connection in order (end-of-file), but after \
             {received} lines the connection failed: {error}. A reset means the server closed its \
             socket with input still unread, and what it had written that had not arrived yet \
             was lost",
            self.name
        )
    }

    /// The failure of a connection the server did not close; `also` names the test where a
    /// shutdown hung first, if another one.
    fn still_open(&self, lines: &[String], since: tokio::time::Instant, also: &str) -> String {
        format!(
            "{}: expected the server to close the connection, but it was still open and silent \
             {:.1} s later (received {} lines; the last was {:?}){also}.\n{}",
            self.name,
            since.elapsed().as_secs_f64(),
            lines.len(),
            // Long lines are cut: the failure message should stay readable.
            lines.last().map(|l| l.chars().take(80).collect::<String>()),
            failure::USUAL_CAUSES
        )
    }

    /// Checks that the server closes the connection without sending anything more.
    pub async fn expect_eof(&mut self) {
        let lines = self.lines_until_eof().await;
        assert!(
            lines.is_empty(),
            "{}: expected the connection to close with nothing more sent, but got {lines:?}",
            self.name
        );
    }

    /// Closes the writing half (the server sees EOF) but keeps reading.
    pub async fn close_write(&mut self) {
        // Shutting down a socket we still own only fails if it is already gone, which is fine.
        let _ = self.writer.shutdown().await;
    }

    /// Drops the connection with a TCP reset instead of an orderly close.
    pub fn reset(self) {
        let stream = self
            .writer
            .reunite(self.lines.into_inner())
            .expect("the two halves of one client's stream always reunite");
        // SO_LINGER with a zero timeout makes the close send RST.
        stream
            .set_zero_linger()
            .expect("setting SO_LINGER on a connected socket");
        drop(stream);
    }

    async fn read(&mut self, limit: Duration) -> Read {
        match tokio::time::timeout(limit, self.lines.next()).await {
            Err(_) => Read::TimedOut,
            Ok(None) => Read::Eof,
            Ok(Some(Ok(line))) => Read::Line(line),
            Ok(Some(Err(e))) => Read::Error(e),
        }
    }
}

fn describe(read: &Read) -> String {
    match read {
        Read::Line(line) => format!("the server sent `{line}`"),
        Read::Eof => "the server closed the connection".to_string(),
        Read::Error(e) => format!("reading failed: {e}"),
        Read::TimedOut => "nothing arrived".to_string(),
    }
}
