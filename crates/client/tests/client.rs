//! The real `client` binary, driven through piped stdin, stdout and stderr, against a real
//! a-chat server running in-process on a loopback port. Every read has a deadline.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use testkit::{Client, OutputLines, QUIET, TIMEOUT};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The final server of the book, step 05: the client is tried against the real thing.
use step_05::run as server;

/// How long the client may take to exit once it has a reason to.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client binary as a child process, its output collected line by line.
struct ClientProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: OutputLines,
}

impl ClientProcess {
    /// Starts `client ARGS...` with all three standard streams piped.
    fn start(args: &[&str]) -> ClientProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the client binary that cargo built for this test");
        let stdout = collect_lines(child.stdout.take().expect("stdout was piped above"));
        let stderr = collect_lines(child.stderr.take().expect("stderr was piped above"));
        ClientProcess {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr: OutputLines::new(stderr),
        }
    }

    /// Starts the client for `addr`, logged in as `name` with `--name`, and waits until the
    /// server has registered it: the client sends itself a message and prints it back.
    async fn login(addr: SocketAddr, name: &str) -> ClientProcess {
        let mut client = ClientProcess::start(&[&addr.to_string(), "--name", name]);
        client.wait_registered(name).await;
        client
    }

    /// Waits until the server delivers messages for `name` to this client.
    async fn wait_registered(&mut self, name: &str) {
        self.type_line(&format!("{name}: am I in?")).await;
        self.expect_stdout(&format!("from {name}: am I in?")).await;
    }

    /// Types one line (the newline is added).
    async fn type_line(&mut self, line: &str) {
        self.type_bytes(format!("{line}\n").as_bytes()).await;
    }

    /// Types raw bytes, such as a last line without its newline.
    async fn type_bytes(&mut self, bytes: &[u8]) {
        let stdin = self
            .stdin
            .as_mut()
            .expect("the test closed the client's stdin and then typed again");
        match tokio::time::timeout(TIMEOUT, stdin.write_all(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the client no longer reads its stdin: {e}"),
            Err(_) => panic!("the client did not read {} bytes of input", bytes.len()),
        }
    }

    /// Closes the client's stdin, as Ctrl-D at the start of a line does in a terminal.
    fn end_input(&mut self) {
        self.stdin = None;
    }

    /// Checks that the next line on stdout is `expected`.
    async fn expect_stdout(&mut self, expected: &str) {
        match tokio::time::timeout(TIMEOUT, self.stdout.recv()).await {
            Ok(Some(line)) => assert_eq!(line, expected, "the client printed the wrong line"),
            Ok(None) => panic!(
                "expected the client to print `{expected}`, but it closed stdout; its stderr:\n{}",
                self.stderr_so_far().join("\n")
            ),
            Err(_) => panic!(
                "expected the client to print `{expected}` within {TIMEOUT:?}; its stderr:\n{}",
                self.stderr_so_far().join("\n")
            ),
        }
    }

    /// Checks that the client prints nothing more on stdout for a while.
    async fn expect_no_stdout(&mut self) {
        if let Ok(Some(line)) = tokio::time::timeout(QUIET, self.stdout.recv()).await {
            panic!("expected the client to print nothing on stdout, but it printed `{line}`");
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    async fn expect_stderr(&mut self, needle: &str) -> String {
        match self.stderr.find(needle, TIMEOUT).await {
            Some(line) => line,
            None => panic!(
                "expected the client to write a line containing `{needle}` on stderr within \
                 {TIMEOUT:?}; its stderr:\n{}",
                self.stderr.so_far().join("\n")
            ),
        }
    }

    /// Every stderr line so far.
    fn stderr_so_far(&mut self) -> &[String] {
        self.stderr.so_far()
    }

    /// Sends SIGINT, as Ctrl-C in the client's terminal does.
    async fn interrupt(&mut self) {
        let pid = self
            .child
            .id()
            .expect("the client has not been waited for yet");
        // The shell's own `kill`, so the test needs no extra package and no unsafe code.
        let status = Command::new("sh")
            .args(["-c", "kill -INT \"$1\"", "sh", &pid.to_string()])
            .status()
            .await
            .expect("running sh to send SIGINT");
        assert!(status.success(), "kill -INT {pid} failed");
    }

    /// Waits for the client to exit by itself; fails (and kills it) if it is still running
    /// after the deadline.
    async fn wait_exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the client process failed: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!(
                    "the client was still running {EXIT_TIMEOUT:?} after it had reason to exit; \
                     its stderr:\n{}",
                    self.stderr_so_far().join("\n")
                );
            }
        }
    }

    /// Checks that the client is still running after a while.
    async fn expect_running(&mut self) {
        if let Ok(status) = tokio::time::timeout(QUIET, self.child.wait()).await {
            panic!(
                "expected the client to keep running, but it exited ({status:?}); its stderr:\n{}",
                self.stderr_so_far().join("\n")
            );
        }
    }
}

/// Forwards each line of a child's output to a channel, so a full pipe never blocks the child.
fn collect_lines(
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// An address on which nothing listens: a port the OS just handed out and took back.
async fn unused_addr() -> SocketAddr {
    testkit::loopback_listener().await.1
}

/// A listener for a test that plays the server itself, line by line.
async fn scripted_server() -> (TcpListener, SocketAddr) {
    testkit::loopback_listener().await
}

/// Accepts the client's connection on a scripted server and checks its login line.
async fn accept_login(
    listener: &TcpListener,
    name: &str,
) -> (Lines<BufReader<OwnedReadHalf>>, OwnedWriteHalf) {
    let (stream, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("the client should connect within the deadline")
        .expect("accepting the client's connection");
    let (reader, writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let login = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("the client should send its name within the deadline")
        .expect("reading the client's login line");
    assert_eq!(login.as_deref(), Some(name), "the login line");
    (lines, writer)
}

/// The name given with `--name` is sent as the login line: messages to that name reach the client.
#[tokio::test]
async fn sends_name_from_flag() {
    let server = testkit::start(server).await;
    let mut alice = ClientProcess::login(server.addr(), "alice").await;
    let mut bob = Client::login(server.addr(), "bob").await;
    bob.send("alice: hello from bob").await;
    alice.expect_stdout("from bob: hello from bob").await;
}

/// Without `--name` the client asks for a name, refuses a blank one, and logs in with the next.
#[tokio::test]
async fn asks_for_name() {
    let server = testkit::start(server).await;
    let mut alice = ClientProcess::start(&[&server.addr().to_string()]);
    alice.type_line("   ").await;
    alice.expect_stderr("the name cannot be empty").await;
    alice.type_line("alice").await;
    alice.wait_registered("alice").await;
    let mut bob = Client::login(server.addr(), "bob").await;
    bob.send("alice: you asked well").await;
    alice.expect_stdout("from bob: you asked well").await;
}

/// Lines go both ways: what the user types reaches others, what others send is printed, in order.
#[tokio::test]
async fn delivers_lines_both_ways() {
    let server = testkit::start(server).await;
    let mut alice = ClientProcess::login(server.addr(), "alice").await;
    let mut bob = Client::login(server.addr(), "bob").await;
    for i in 0..20 {
        alice.type_line(&format!("bob: ping {i}")).await;
        bob.expect(&format!("from alice: ping {i}")).await;
        bob.send(&format!("alice: pong {i}")).await;
        alice.expect_stdout(&format!("from bob: pong {i}")).await;
    }
    alice.expect_no_stdout().await;
}

/// Two clients chat with each other through the server.
#[tokio::test]
async fn two_clients_chat() {
    let server = testkit::start(server).await;
    let mut alice = ClientProcess::login(server.addr(), "alice").await;
    let mut bob = ClientProcess::login(server.addr(), "bob").await;
    alice.type_line("bob: hi bob").await;
    bob.expect_stdout("from alice: hi bob").await;
    bob.type_line("alice: hi alice").await;
    alice.expect_stdout("from bob: hi alice").await;
}

/// When the server shuts down, every client exits 0 by itself, although its stdin stays open.
#[tokio::test]
async fn exits_when_server_shuts_down() {
    let mut server = testkit::start(server).await;
    let mut alice = ClientProcess::login(server.addr(), "alice").await;
    let mut bob = ClientProcess::login(server.addr(), "bob").await;
    alice.type_line("bob: see you").await;
    bob.expect_stdout("from alice: see you").await;
    server.trigger_shutdown();
    for client in [&mut alice, &mut bob] {
        // Nobody closes the clients' stdin: the server's close alone must end them.
        assert!(client.stdin.is_some());
        let status = client.wait_exit().await;
        assert!(status.success(), "the client exited with {status:?}");
        client
            .expect_stderr("the server closed the connection")
            .await;
    }
    server.finished().await;
}

/// On end of input the client sends every line typed (the last one even without a newline),
/// also while messages for it are still arriving, and exits 0.
#[tokio::test]
async fn end_of_input_sends_everything_typed() {
    let server = testkit::start(server).await;
    let mut alice = ClientProcess::login(server.addr(), "alice").await;
    let mut bob = Client::login(server.addr(), "bob").await;
    let mut typed = String::new();
    for i in 0..200 {
        // Half to bob, half to alice herself, so her socket has unread data when she leaves:
        // closing a socket with unread data resets the connection, which could destroy lines
        // the server had not read yet.
        typed.push_str(&format!("bob, alice: line {i}\n"));
    }
    typed.push_str("bob: the last line, without a newline");
    alice.type_bytes(typed.as_bytes()).await;
    alice.end_input();
    for i in 0..200 {
        bob.expect(&format!("from alice: line {i}")).await;
    }
    bob.expect("from alice: the last line, without a newline")
        .await;
    let status = alice.wait_exit().await;
    assert!(status.success(), "the client exited with {status:?}");
    // The server closed its side after reading our end of file: it read everything.
    alice
        .expect_stderr("end of input: everything typed was sent; disconnected")
        .await;
}

/// After end of input the client keeps printing what the server sends until the server closes
/// the connection, so nothing addressed to it is cut off and the close is orderly.
///
/// A scripted peer plays the server, to answer at exactly the moment our end of file arrives.
#[tokio::test]
async fn end_of_input_reads_until_server_closes() {
    let (listener, addr) = scripted_server().await;
    let mut client = ClientProcess::start(&[&addr.to_string(), "--name", "alice"]);
    let (mut lines, mut writer) = accept_login(&listener, "alice").await;
    client.type_line("bob: last words").await;
    client.end_input();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("the client's line should arrive within the deadline")
        .expect("reading the client's line");
    assert_eq!(line.as_deref(), Some("bob: last words"));
    let eof = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("the client should close its side within the deadline");
    assert!(
        matches!(eof, Ok(None)),
        "after its input ended the client should close its side in order (end of file), got \
         {eof:?}"
    );
    writer
        .write_all(b"from bob: you left, but this still reaches you\n")
        .await
        .expect("the client's receiving side should still be open after it closed its own");
    client
        .expect_stdout("from bob: you left, but this still reaches you")
        .await;
    drop(writer);
    let status = client.wait_exit().await;
    assert!(status.success(), "the client exited with {status:?}");
    client
        .expect_stderr("end of input: everything typed was sent; disconnected")
        .await;
}

/// A server that keeps the connection open after our end of file (step 02 never closes one)
/// does not hold the client: it leaves after a grace period, and still exits 0.
#[tokio::test]
async fn end_of_input_does_not_wait_forever() {
    let server = testkit::start(step_02::run).await;
    let mut alice = ClientProcess::login(server.addr(), "alice").await;
    let mut bob = Client::login(server.addr(), "bob").await;
    alice.type_line("bob: bye").await;
    alice.end_input();
    bob.expect("from alice: bye").await;
    let status = alice.wait_exit().await;
    assert!(status.success(), "the client exited with {status:?}");
    alice
        .expect_stderr("the server did not close the connection")
        .await;
}

/// When nothing listens at the address, the client says so and exits non-zero, without a panic.
#[tokio::test]
async fn unreachable_server_is_an_error() {
    let addr = unused_addr().await;
    let mut client = ClientProcess::start(&[&addr.to_string(), "--name", "alice"]);
    let status = client.wait_exit().await;
    assert_eq!(status.code(), Some(1), "exit status {status:?}");
    let line = client.expect_stderr("could not connect").await;
    assert!(
        line.contains(&addr.to_string()),
        "`{line}` should name {addr}"
    );
    assert!(
        !client
            .stderr_so_far()
            .iter()
            .any(|l| l.contains("panicked")),
        "the client panicked: {:?}",
        client.stderr_so_far()
    );
}

/// A mistake on the command line is reported with the usage and exit code 2.
#[tokio::test]
async fn bad_arguments_show_usage() {
    let mut client = ClientProcess::start(&["--nmae", "alice"]);
    let status = client.wait_exit().await;
    assert_eq!(status.code(), Some(2), "exit status {status:?}");
    client.expect_stderr("unknown option `--nmae`").await;
    client.expect_stderr("usage: client").await;
}

/// Ctrl-C ends the session at once, from the moment the client says it is connected: it
/// prints a message and exits with 130, its stdin still open.
#[tokio::test]
async fn ctrl_c_exits() {
    let server = testkit::start(server).await;
    let mut alice = ClientProcess::start(&[&server.addr().to_string(), "--name", "alice"]);
    // No round trip first: the handler must exist as soon as this line is printed, or the
    // signal kills the process and the exit status has no code.
    alice.expect_stderr("connected to").await;
    alice.interrupt().await;
    let status = alice.wait_exit().await;
    assert_eq!(status.code(), Some(130), "exit status {status:?}");
    alice.expect_stderr("interrupted").await;
}

/// The server's `error: ...` lines go to stderr marked `server error:`, not to stdout with chat.
///
/// No server step sends `error:` lines yet, so a scripted peer on a real socket plays the server.
#[tokio::test]
async fn server_errors_are_marked() {
    let (listener, addr) = scripted_server().await;
    let mut client = ClientProcess::start(&[&addr.to_string(), "--name", "alice"]);
    let (_lines, mut writer) = accept_login(&listener, "alice").await;
    writer
        .write_all(b"error: no such person: carol\nfrom bob: still here\n")
        .await
        .expect("writing to the client");
    client.expect_stdout("from bob: still here").await;
    let line = client.expect_stderr("no such person").await;
    assert_eq!(line, "server error: no such person: carol");
    client.expect_no_stdout().await;
    client.expect_running().await;
}

/// Whatever the server sends, the client never lets it drive the terminal: a carriage return,
/// escape sequences, NUL, DEL, a C1 control and a bidirectional override are printed as
/// escapes, on stdout and in a marked error line alike, while ordinary Unicode and tabs are
/// printed as they came.
///
/// A scripted peer plays a server that forwards anything, as steps 02 to 05 do.
#[tokio::test]
async fn never_prints_control_characters() {
    let (listener, addr) = scripted_server().await;
    let mut client = ClientProcess::start(&[&addr.to_string(), "--name", "bob"]);
    let (_lines, mut writer) = accept_login(&listener, "bob").await;
    writer
        .write_all(
            "from alice: hi\rfrom carol: I am carol\x1b]0;pwned\x07\x1b[2K\n\
             from alice: \0 \x7f \u{9b}2J \u{202e}lorac\n\
             from alice: café 日本語 👩\u{200d}💻 שלום\tok\n\
             error: bad \x1b[31mred\n"
                .as_bytes(),
        )
        .await
        .expect("writing to the client");
    client
        .expect_stdout(r"from alice: hi\rfrom carol: I am carol\u{1b}]0;pwned\u{7}\u{1b}[2K")
        .await;
    client
        .expect_stdout(r"from alice: \u{0} \u{7f} \u{9b}2J \u{202e}lorac")
        .await;
    client
        .expect_stdout("from alice: café 日本語 👩\u{200d}💻 שלום\tok")
        .await;
    let line = client.expect_stderr("server error:").await;
    assert_eq!(line, r"server error: bad \u{1b}[31mred");
}

/// A typed line with a control character in it (an arrow key types one) is not sent, and the
/// client says so; the next line is sent as usual.
#[tokio::test]
async fn does_not_send_control_characters() {
    let (listener, addr) = scripted_server().await;
    let mut client = ClientProcess::start(&[&addr.to_string(), "--name", "alice"]);
    let (mut lines, _writer) = accept_login(&listener, "alice").await;
    client.type_line("bob: left\x1b[D arrow").await;
    let line = client.expect_stderr("not sent").await;
    assert!(line.contains(r"bob: left\u{1b}[D arrow"), "{line}");
    client.type_line("bob: fine\twith a tab").await;
    let next = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("the client's line should arrive within the deadline")
        .expect("reading the client's line");
    assert_eq!(next.as_deref(), Some("bob: fine\twith a tab"));
}
