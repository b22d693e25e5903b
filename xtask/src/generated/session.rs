//! "Run it": a terminal session recorded from the real step binary, not typed by hand.
//!
//! The step's binary is started on `127.0.0.1:0` and driven by scripted clients over TCP. Every
//! line the server prints (stdout and stderr share one pipe, as in a terminal) and every line a
//! client types or receives is recorded, labelled with its terminal. Ordering is made
//! deterministic by waiting: the recorder never moves on until the line the script expects has
//! arrived, and the server's remaining output is taken only after it exited. The bound port is
//! shown as 8080, the default a learner's `cargo run` uses.
//!
//! A client terminal runs either `nc` (a TCP connection driven by the recorder) or the
//! project's own client (`crates/client`, a process whose stdin the recorder types into and
//! whose stdout and stderr it reads through one pipe). The client chapter's session,
//! `book/generated/client-session.md`, uses the latter against step 05.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::{File, banner, step_file};
use crate::process;
use crate::workspace::Step;

/// `book/generated/step-NN-session.md`.
pub const SUFFIX: &str = "-session";

/// The client chapter's session, in `book/generated/`.
pub const CLIENT_NAME: &str = "client-session.md";

/// The client's package, and the directory whose presence makes its session part of the book.
const CLIENT_PACKAGE: &str = "client";
const CLIENT_DIR: &str = "crates/client";

/// The step the client chapter runs its clients against: the book's final server of the
/// first part, the one the chapter tells a learner to start.
const CLIENT_SERVER_STEP: u32 = 5;

/// How long the recorder waits for any expected event. Generous: it only waits this long when
/// the step does not do what the script expects, and CI machines are slow.
const WAIT: Duration = Duration::from_secs(15);

/// The port the transcript shows: the steps' default.
const SHOWN_PORT: u16 = 8080;

/// One thing that happens in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// The server terminal runs the step and waits for `listening on ADDR`.
    Start,
    /// The terminal runs the step, a program that is not a server (step 00), with no
    /// arguments; `Exit` then shows what it printed.
    Run,
    /// A client terminal runs `nc 127.0.0.1 8080`.
    Connect(&'static str),
    /// A client terminal runs the project's client, `cargo run -q -p client -- --name NAME`,
    /// with this name. Its stdout and stderr share one pipe, as in a terminal.
    Client(&'static str),
    /// A client types a line (into `nc`, or into the client's stdin).
    Type(&'static str, &'static str),
    /// A client receives exactly this line next; for the project's client, this is the next
    /// line it prints, its own messages included (ports shown as in the server's lines).
    Recv(&'static str, &'static str),
    /// The server prints a line containing this (every line before it is shown too).
    Log(&'static str),
    /// The server prints lines containing each of these, in any order (different tasks print
    /// them at the same time); they are shown in the order given here, so the transcript is
    /// the same on every run.
    Logs(&'static [&'static str]),
    /// A client presses Ctrl-C: `nc` exits and the connection closes.
    Close(&'static str),
    /// Ctrl-C in the server terminal (SIGINT to the server).
    Interrupt,
    /// Wait for the server to exit; show the rest of its output and its exit status.
    Exit,
    /// The server closes this client's connection (nothing else arrives first). Like `nc`, the
    /// client keeps its side open until the script closes it or ends.
    Eof(&'static str),
    /// Wait for the project's client to exit; show the rest of its output and its exit status.
    ClientExit(&'static str),
}

use Act::*;

/// The script for a step. Steps past the last scripted one reuse the latest script, so a new
/// step gets a session without touching this file (its chapter can then ask for a better one).
pub fn script(number: u32) -> Vec<Act> {
    // Step 00 is no server: it runs its examples, prints how long each took, and exits.
    if number == 0 {
        return vec![Run, Exit];
    }
    let mut acts = vec![
        Start,
        Connect("alice"),
        Type("alice", "alice"),
        Log("alice logged in"),
        Connect("bob"),
        Type("bob", "bob"),
        Log("bob logged in"),
    ];
    match number {
        // Step 01 only logs what it parsed: nothing reaches bob.
        1 => acts.extend([
            Type("alice", "bob: hello bob"),
            Log("alice -> bob: hello bob"),
            Type("bob", "alice, carol: hi alice, it is 12:30"),
            Log("bob -> alice, carol: hi alice, it is 12:30"),
            Type("alice", "anyone there?"),
            Log("alice: ignored a line without ':'"),
            Close("bob"),
            Log("bob disconnected"),
            Interrupt,
            Exit,
            Eof("alice"),
        ]),
        // Step 02 delivers, but never removes a peer: bob cannot come back.
        //
        // From here on, each newcomer speaks first: a reader logs "logged in" just before it
        // registers with the broker, so a message sent to bob at once could overtake his
        // registration. When alice has received bob's line, bob is registered for sure.
        2 => acts.extend([
            Type("bob", "alice: hi alice, bob here"),
            Recv("alice", "from bob: hi alice, bob here"),
            Type("alice", "bob, carol: hello bob, lunch at 12:30?"),
            Recv("bob", "from alice: hello bob, lunch at 12:30?"),
            Type("alice", "anyone there?"),
            Log("alice: ignored a line without ':'"),
            Close("bob"),
            Log("bob disconnected"),
            Connect("bob"),
            Type("bob", "bob"),
            Log("bob is taken; login refused"),
            Eof("bob"),
            Interrupt,
            Exit,
            Eof("alice"),
        ]),
        // Step 03 removes a peer that left, so its name works again; Ctrl-C still kills.
        3 => acts.extend([
            Type("bob", "alice: hi alice, bob here"),
            Recv("alice", "from bob: hi alice, bob here"),
            Type("alice", "bob, carol: hello bob, lunch at 12:30?"),
            Recv("bob", "from alice: hello bob, lunch at 12:30?"),
            Close("bob"),
            Log("bob left"),
            Connect("bob"),
            Type("bob", "bob"),
            Log("bob logged in"),
            Type("bob", "alice: back again"),
            Recv("alice", "from bob: back again"),
            Type("alice", "bob: welcome back"),
            Recv("bob", "from alice: welcome back"),
            Interrupt,
            Exit,
            Eof("alice"),
            Eof("bob"),
        ]),
        // Steps 04 and 05 shut down gracefully on Ctrl-C and exit 0. One client is connected
        // at the signal. In step 04 its reader and writer both hear the `Notify` and log at the
        // same time; step 05's writer logs nothing.
        4 | 5 => {
            acts.extend([
                Type("bob", "alice: hi alice, bob here"),
                Recv("alice", "from bob: hi alice, bob here"),
                Type("alice", "bob: hello bob"),
                Recv("bob", "from alice: hello bob"),
                Close("bob"),
                Log("bob left"),
                Type("alice", "alice: a note to self"),
                Recv("alice", "from alice: a note to self"),
                Interrupt,
                Log("shutting down"),
            ]);
            acts.push(if number == 4 {
                Logs(&["alice: stopped reading", "alice's writer finished"])
            } else {
                Log("alice: stopped reading")
            });
            acts.extend([Exit, Eof("alice")]);
        }
        // Step 06 refuses what breaks the rules with an `error: ...` line and closes that
        // connection, and nobody else notices: carol tries alice's name, dave sends a message
        // before logging in (a name with a `:`), and alice and bob chat on. Both are still
        // connected at Ctrl-C, so both readers log at the same time.
        _ => acts.extend([
            Type("bob", "alice: hi alice, bob here"),
            Recv("alice", "from bob: hi alice, bob here"),
            Connect("carol"),
            Type("carol", "alice"),
            Log("alice is taken; login refused"),
            Log("refused a client: error: name taken"),
            Recv("carol", "error: name taken"),
            Eof("carol"),
            Connect("dave"),
            Type("dave", "alice: hi, dave here"),
            Log("refused a client: error: invalid name"),
            Recv("dave", "error: invalid name"),
            Eof("dave"),
            Type("alice", "bob: did you see that?"),
            Recv("bob", "from alice: did you see that?"),
            Interrupt,
            Log("shutting down"),
            Logs(&["alice: stopped reading", "bob: stopped reading"]),
            Exit,
            Eof("alice"),
            Eof("bob"),
        ]),
    }
    acts
}

/// The client chapter's script: step 05 and two clients of our own. They chat, then Ctrl-C
/// stops the server, and each client says so and exits 0 by itself, with its stdin still open.
pub fn client_script() -> Vec<Act> {
    /// What the client prints once it has sent its name (on stderr, which shares the pipe).
    const ALICE_CONNECTED: &str =
        "connected to 127.0.0.1:8080 as alice. Type `NAME: message` to chat; Ctrl-D leaves.";
    const BOB_CONNECTED: &str =
        "connected to 127.0.0.1:8080 as bob. Type `NAME: message` to chat; Ctrl-D leaves.";
    const CLOSED: &str = "the server closed the connection";
    vec![
        Start,
        Client("alice"),
        Recv("alice", ALICE_CONNECTED),
        Log("alice logged in"),
        Client("bob"),
        Recv("bob", BOB_CONNECTED),
        Log("bob logged in"),
        // Bob speaks first: when alice has his line, he is registered with the broker for sure
        // (see the step scripts above).
        Type("bob", "alice: hi alice, bob here"),
        Recv("alice", "from bob: hi alice, bob here"),
        Type("alice", "bob: hello bob, lunch at 12:30?"),
        Recv("bob", "from alice: hello bob, lunch at 12:30?"),
        Type("bob", "alice: yes, see you there"),
        Recv("alice", "from bob: yes, see you there"),
        Interrupt,
        Log("shutting down"),
        Logs(&["alice: stopped reading", "bob: stopped reading"]),
        Exit,
        Recv("alice", CLOSED),
        ClientExit("alice"),
        Recv("bob", CLOSED),
        ClientExit("bob"),
    ]
}

/// Builds the step binaries and records one session per step, and the client chapter's session
/// when `crates/client` exists. With `twice`, each session is recorded a second time and must
/// come out the same: a script that lets two tasks' lines race is caught when the files are
/// written, not later as a flaky freshness check.
pub fn generate(root: &Path, steps: &[Step], twice: bool) -> Result<Vec<File>> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    let with_client = root.join(CLIENT_DIR).is_dir();
    let mut packages: Vec<String> = steps.iter().map(Step::expected_package).collect();
    if with_client {
        packages.push(CLIENT_PACKAGE.to_string());
    }
    let binaries = build(root, &packages)?;
    let binary = |package: &str| {
        binaries
            .get(package)
            .ok_or_else(|| anyhow!("building {package} produced no binary named {package}"))
    };
    let mut files = Vec::new();
    for step in steps {
        let package = step.expected_package();
        let binaries = Binaries {
            server: binary(&package)?,
            client: None,
        };
        let transcript = record_checked(&package, &binaries, &script(step.number), twice)?;
        files.push(File {
            path: step_file(step, SUFFIX),
            contents: render(&step_intro(step.number, &package), &transcript),
        });
    }
    if with_client {
        let package = format!("step-{CLIENT_SERVER_STEP:02}");
        if !steps.iter().any(|s| s.number == CLIENT_SERVER_STEP) {
            bail!("{CLIENT_DIR} exists, but its session runs against {package}, which is gone");
        }
        let binaries = Binaries {
            server: binary(&package)?,
            client: Some(binary(CLIENT_PACKAGE)?),
        };
        let transcript = record_checked(&package, &binaries, &client_script(), twice)
            .context("(the client chapter's session)")?;
        files.push(File {
            path: Path::new(super::DIR).join(CLIENT_NAME),
            contents: render(&client_intro(&package), &transcript),
        });
    }
    Ok(files)
}

/// Records a session, and with `twice` records it again and checks both are the same.
fn record_checked(
    package: &str,
    binaries: &Binaries,
    script: &[Act],
    twice: bool,
) -> Result<Vec<Line>> {
    let transcript = record(package, binaries, script)
        .with_context(|| format!("recording the session of {package}"))?;
    if twice {
        let again = record(package, binaries, script)
            .with_context(|| format!("recording the session of {package} again"))?;
        if again != transcript {
            bail!(
                "the session of {package} differs between two runs, so its freshness check \
                 would be flaky. Make the script in xtask/src/generated/session.rs wait for \
                 the lines that race (`Log`, or `Logs` for lines in any order).\nfirst \
                 run:\n{}\nsecond run:\n{}",
                render_lines(&transcript),
                render_lines(&again)
            );
        }
    }
    Ok(transcript)
}

/// Builds the packages' binaries; returns binary name -> path. `cargo test --no-run` rather
/// than `cargo build`: it builds the binaries with the same features as the tests do, so after
/// `cargo test --workspace` (as in `ci`) nothing is compiled twice.
fn build(root: &Path, packages: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = process::cargo(root);
    cmd.args([
        "test",
        "--no-run",
        "--locked",
        "--message-format=json-render-diagnostics",
    ]);
    for package in packages {
        cmd.args(["-p", package]);
    }
    cmd.stderr(Stdio::inherit());
    let out = process::output(&mut cmd)?;
    if !out.status.success() {
        bail!("`{}` failed ({})", process::display(&cmd), out.status);
    }
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_bin = msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        // `cargo test` also builds each `main.rs` as a unit-test harness: skip those.
        let is_test_harness = msg["profile"]["test"].as_bool().unwrap_or(false);
        if msg["reason"] != "compiler-artifact" || !is_bin || is_test_harness {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            binaries.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(binaries)
}

/// A recorded line: the terminal and what it shows.
type Line = (String, String);

/// The programs a session runs.
pub struct Binaries<'a> {
    /// The step's server.
    pub server: &'a Path,
    /// The project's client, for scripts with `Client` acts.
    pub client: Option<&'a Path>,
}

/// What a reader thread sees: a line of a connection or of a process's output, or its end.
enum Incoming {
    Line(String),
    Closed,
}

/// Reads `source` line by line on a thread of its own; the channel ends with `Closed`.
fn read_lines(source: impl Read + Send + 'static) -> Receiver<Incoming> {
    let (tx, incoming) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        loop {
            let mut buf = String::new();
            match reader.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = buf.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send(Incoming::Line(line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Incoming::Closed);
    });
    incoming
}

/// A process started as in a terminal; killed if the recording fails half-way.
struct Process {
    child: Child,
    /// Its stdout and stderr, through one pipe.
    output: Receiver<Incoming>,
    exited: bool,
}

impl Process {
    /// Starts `binary` with `args`. One pipe for stdout and stderr keeps their lines in the
    /// order the program wrote them, as a terminal shows them. With `stdin`, its stdin is a
    /// pipe (taken from the returned child) instead of empty.
    fn start(binary: &Path, args: &[&str], stdin: bool) -> Result<Self> {
        let mut command = Command::new("sh");
        command
            .args(["-c", "exec \"$0\" \"$@\" 2>&1"])
            .arg(binary)
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped());
        // Ctrl-C must act as it does in a terminal, even when a CI runner started us with
        // SIGINT ignored (the shell may not undo that).
        chat_load::sys::default_sigint_in_child(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        Ok(Process {
            child,
            output: read_lines(stdout),
            exited: false,
        })
    }

    /// Waits for the process to exit (at most [`WAIT`]).
    fn wait(&mut self, who: &str) -> Result<ExitStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = true;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{who} was still running {WAIT:?} after the script expected it to exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a shell reports as `$?`: the exit code, or 128 + the signal that killed it.
fn shell_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    })
}

/// A client terminal: `nc` (a connection the recorder drives) or the project's client.
enum Conn {
    Nc {
        stream: TcpStream,
        incoming: Receiver<Incoming>,
    },
    Client {
        process: Process,
        /// `None` once the client has exited.
        stdin: Option<ChildStdin>,
    },
}

impl Conn {
    /// The lines this terminal shows that the recorder did not type.
    fn incoming(&self) -> &Receiver<Incoming> {
        match self {
            Conn::Nc { incoming, .. } => incoming,
            Conn::Client { process, .. } => &process.output,
        }
    }

    /// Where typed lines go.
    fn input(&mut self) -> Result<&mut dyn Write> {
        match self {
            Conn::Nc { stream, .. } => Ok(stream),
            Conn::Client { stdin, .. } => stdin
                .as_mut()
                .map(|s| s as &mut dyn Write)
                .ok_or_else(|| anyhow!("the client has exited")),
        }
    }
}

struct Recorder<'a> {
    package: &'a str,
    binaries: &'a Binaries<'a>,
    lines: Vec<Line>,
    server: Option<Process>,
    /// The label of the step's terminal: `server`, or `step` for a program that is no server.
    terminal: &'static str,
    port: u16,
    /// Other loopback ports seen in the output (clients' ephemeral ports), in order of
    /// appearance, so they can be shown as stable numbers.
    other_ports: Vec<u16>,
    conns: BTreeMap<&'static str, Conn>,
}

/// Runs `script` against the binaries and returns the transcript.
pub fn record(package: &str, binaries: &Binaries, script: &[Act]) -> Result<Vec<Line>> {
    let mut r = Recorder {
        package,
        binaries,
        lines: Vec::new(),
        server: None,
        terminal: "server",
        port: 0,
        other_ports: Vec::new(),
        conns: BTreeMap::new(),
    };
    for act in script {
        r.act(*act).map_err(|e| {
            anyhow!(
                "{e}\n(at {act:?}; the transcript so far:)\n{}",
                render_lines(&r.lines)
            )
        })?;
    }
    for (name, conn) in &r.conns {
        if let Ok(Incoming::Line(line)) = conn.incoming().try_recv() {
            bail!("{name} received `{line}`, which the script does not expect");
        }
    }
    Ok(r.lines)
}

impl Recorder<'_> {
    fn show(&mut self, terminal: &str, text: impl Into<String>) {
        self.lines.push((terminal.to_string(), text.into()));
    }

    fn server(&mut self) -> Result<&mut Process> {
        self.server
            .as_mut()
            .ok_or_else(|| anyhow!("the script uses the server before `Start`"))
    }

    fn conn(&mut self, name: &str) -> Result<&mut Conn> {
        self.conns
            .get_mut(name)
            .ok_or_else(|| anyhow!("{name} is not connected"))
    }

    fn act(&mut self, act: Act) -> Result<()> {
        match act {
            Start => {
                self.server = Some(Process::start(
                    self.binaries.server,
                    &["127.0.0.1:0"],
                    false,
                )?);
                self.show("server", format!("$ cargo run -q -p {}", self.package));
                let line = self.server_line_containing("listening on ")?;
                let port = line
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse().ok())
                    .ok_or_else(|| anyhow!("no port in the readiness line `{line}`"))?;
                self.port = port;
                self.show_server(line);
            }
            Run => {
                self.server = Some(Process::start(self.binaries.server, &[], false)?);
                self.terminal = "step";
                self.show(self.terminal, format!("$ cargo run -q -p {}", self.package));
            }
            Connect(name) => {
                if self.conns.contains_key(name) {
                    bail!("{name} is already connected");
                }
                let stream = TcpStream::connect(("127.0.0.1", self.port))
                    .with_context(|| format!("{name} could not connect"))?;
                let incoming = read_lines(stream.try_clone()?);
                self.conns.insert(name, Conn::Nc { stream, incoming });
                self.show(name, format!("$ nc 127.0.0.1 {SHOWN_PORT}"));
            }
            Client(name) => {
                if self.conns.contains_key(name) {
                    bail!("{name} is already connected");
                }
                let client = self
                    .binaries
                    .client
                    .context("the script runs the client, but no client binary was built")?;
                let addr = format!("127.0.0.1:{}", self.port);
                let mut process = Process::start(client, &[&addr, "--name", name], true)?;
                let stdin = process.child.stdin.take();
                self.conns.insert(name, Conn::Client { process, stdin });
                // The address is left out: the client's default is the shown port.
                self.show(
                    name,
                    format!("$ cargo run -q -p {CLIENT_PACKAGE} -- --name {name}"),
                );
            }
            Type(name, text) => {
                let conn = self.conn(name)?;
                let input = conn.input()?;
                input
                    .write_all(format!("{text}\n").as_bytes())
                    .and_then(|()| input.flush())
                    .with_context(|| format!("{name} could not send `{text}`"))?;
                self.show(name, text);
            }
            Recv(name, expected) => {
                let received = self.conn(name)?.incoming().recv_timeout(WAIT);
                match received {
                    Ok(Incoming::Line(line)) => {
                        let line = self.normalize(&line);
                        if line != expected {
                            bail!("{name} expected `{expected}` but received `{line}`");
                        }
                        self.show(name, line);
                    }
                    Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => {
                        bail!("{name} expected `{expected}` but its output ended")
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        bail!("{name} expected `{expected}` but nothing arrived within {WAIT:?}")
                    }
                }
            }
            Log(needle) => {
                let line = self.server_line_containing(needle)?;
                self.show_server(line);
                // The task that printed it usually has one more thing to do (a reader sends
                // its registration right after "logged in"); give it a moment. Correctness
                // does not rest on this: the scripts also wait for what the clients see.
                std::thread::sleep(Duration::from_millis(50));
            }
            Logs(needles) => {
                let mut found: Vec<Option<String>> = vec![None; needles.len()];
                let deadline = Instant::now() + WAIT;
                while found.iter().any(Option::is_none) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let line = match self.server()?.output.recv_timeout(left) {
                        Ok(Incoming::Line(line)) => line,
                        Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => {
                            bail!("the server exited before printing lines containing {needles:?}")
                        }
                        Err(RecvTimeoutError::Timeout) => bail!(
                            "the server did not print lines containing each of {needles:?} \
                             within {WAIT:?}"
                        ),
                    };
                    let slot = needles
                        .iter()
                        .zip(&found)
                        .position(|(n, f)| f.is_none() && line.contains(n));
                    match slot {
                        Some(i) => found[i] = Some(line),
                        // Lines from other tasks in between would make the order vary.
                        None => bail!(
                            "while waiting for lines containing {needles:?} in any order, the \
                             server printed `{line}`: add it to the set or wait for it first"
                        ),
                    }
                }
                for line in found.into_iter().flatten() {
                    self.show_server(line);
                }
            }
            Close(name) => {
                let conn = self
                    .conns
                    .remove(name)
                    .ok_or_else(|| anyhow!("{name} is not connected"))?;
                let Conn::Nc { stream, incoming } = conn else {
                    bail!(
                        "`Close` is for `nc` terminals; the client's script ends with `ClientExit`"
                    );
                };
                if let Ok(Incoming::Line(line)) = incoming.try_recv() {
                    bail!("{name} received `{line}`, which the script does not expect");
                }
                let _ = stream.shutdown(Shutdown::Both);
                self.show(name, "^C");
            }
            Interrupt => {
                let pid = self.server()?.child.id();
                let pid = libc::pid_t::try_from(pid).context("the pid fits in pid_t")?;
                // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is shared.
                #[allow(unsafe_code)]
                let rc = unsafe { libc::kill(pid, libc::SIGINT) };
                if rc != 0 {
                    bail!("sending SIGINT to the server failed");
                }
                self.show("server", "^C");
            }
            Exit => {
                let status = self.server()?.wait("the server")?;
                // The process is gone, so its output ends: take all of it.
                while let Some(line) =
                    self.rest_of_output("the server", |r| r.server.as_ref().map(|p| &p.output))?
                {
                    self.show_server(line);
                }
                self.show(self.terminal, "$ echo $?");
                self.show(self.terminal, shell_code(status).to_string());
            }
            Eof(name) => {
                let conn = self.conn(name)?;
                if !matches!(conn, Conn::Nc { .. }) {
                    bail!("`Eof` is for `nc` terminals: `Recv` what the client prints instead");
                }
                match conn.incoming().recv_timeout(WAIT) {
                    Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => {}
                    Ok(Incoming::Line(line)) => {
                        bail!(
                            "{name} expected the server to close the connection, but received `{line}`"
                        )
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        bail!("{name} expected the server to close the connection within {WAIT:?}")
                    }
                }
                self.show(name, "[the server closed the connection]");
            }
            ClientExit(name) => {
                let Conn::Client { process, stdin } = self.conn(name)? else {
                    bail!("`ClientExit` is for terminals that run the client");
                };
                let status = process.wait(name)?;
                *stdin = None;
                while let Some(line) =
                    self.rest_of_output(name, |r| r.conns.get(name).map(Conn::incoming))?
                {
                    let line = self.normalize(&line);
                    self.show(name, line);
                }
                self.show(name, "$ echo $?");
                self.show(name, shell_code(status).to_string());
            }
        }
        Ok(())
    }

    /// The next line of an exited process's output, or `None` at its end.
    fn rest_of_output(
        &self,
        who: &str,
        output: impl Fn(&Self) -> Option<&Receiver<Incoming>>,
    ) -> Result<Option<String>> {
        let output = output(self).ok_or_else(|| anyhow!("{who} is not running"))?;
        match output.recv_timeout(WAIT) {
            Ok(Incoming::Line(line)) => Ok(Some(line)),
            Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => bail!("{who} exited but its output did not end"),
        }
    }

    /// Shows server lines until one contains `needle`, and returns that one (not yet shown).
    fn server_line_containing(&mut self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let server = self.server()?;
            match server.output.recv_timeout(left) {
                Ok(Incoming::Line(line)) if line.contains(needle) => return Ok(line),
                Ok(Incoming::Line(line)) => self.show_server(line),
                Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    bail!("the server exited before printing a line containing `{needle}`")
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("the server did not print a line containing `{needle}` within {WAIT:?}")
                }
            }
        }
    }

    fn show_server(&mut self, line: String) {
        let line = self.normalize(&line);
        self.show(self.terminal, line);
    }

    /// Shows the bound port as 8080 and other loopback ports as 50001, 50002, ... in order of
    /// appearance, so the transcript is the same on every run.
    fn normalize(&mut self, line: &str) -> String {
        const HOST: &str = "127.0.0.1:";
        let mut out = String::new();
        let mut rest = line;
        while let Some(i) = rest.find(HOST) {
            out.push_str(&rest[..i + HOST.len()]);
            rest = &rest[i + HOST.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(port) = digits.parse::<u16>() else {
                continue;
            };
            rest = &rest[digits.len()..];
            let shown = if port == self.port {
                SHOWN_PORT
            } else {
                let index = match self.other_ports.iter().position(|p| *p == port) {
                    Some(i) => i,
                    None => {
                        self.other_ports.push(port);
                        self.other_ports.len() - 1
                    }
                };
                50001 + u16::try_from(index).unwrap_or(0)
            };
            out.push_str(&shown.to_string());
        }
        out.push_str(rest);
        out
    }
}

/// The transcript as aligned `terminal │ text` lines.
fn render_lines(lines: &[Line]) -> String {
    let width = lines.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(terminal, text)| {
            format!("{terminal:<width$} │ {text}")
                .trim_end()
                .to_string()
                + "\n"
        })
        .collect()
}

/// How to read a step's session.
fn step_intro(number: u32, package: &str) -> String {
    if number == 0 {
        return format!(
            "One terminal runs the step (`cargo run -q -p {package}`), which prints one line per \
             way of running the jobs, with the seconds it took, and exits. This session was \
             recorded from the real binary by `cargo xtask gen`."
        );
    }
    format!(
        "One terminal runs the server (`cargo run -q -p {package}`); each of the others runs \
         `nc 127.0.0.1 8080` for one person. Every line is labelled with the terminal it appears \
         in, in the order things happened. In a client's terminal, lines starting with `from` \
         come from the server and the others are typed; text in square brackets is a note, not \
         output. This session was recorded from the real binary by `cargo xtask gen`."
    )
}

/// How to read the client chapter's session.
fn client_intro(package: &str) -> String {
    format!(
        "One terminal runs the server (`cargo run -q -p {package}`); each of the others runs \
         the client for one person, connecting to the default address, 127.0.0.1:8080. Every \
         line is labelled with the terminal it appears in, in the order things happened. In a \
         client's terminal, lines starting with `from` come from the server, `connected ...` \
         and `the server closed the connection` are the client's own messages, and the others \
         are typed. This session was recorded from the real binaries by `cargo xtask gen`."
    )
}

/// The generated Markdown: a paragraph on how to read it, then the transcript.
fn render(intro: &str, lines: &[Line]) -> String {
    let body = render_lines(lines);
    let fence = super::changes::fence_for(&body);
    format!(
        "{}\n{intro}\n\n{fence}text\n{body}{fence}\n",
        banner("cargo xtask gen")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines are labelled and aligned, and nothing trails an empty line.
    #[test]
    fn renders_aligned_lines() {
        let lines = vec![
            (
                "server".to_string(),
                "listening on 127.0.0.1:8080".to_string(),
            ),
            ("bob".to_string(), String::new()),
        ];
        assert_eq!(
            render_lines(&lines),
            "server │ listening on 127.0.0.1:8080\nbob    │\n"
        );
    }

    /// Every script starts the server (or, for step 00, runs the step), ends with it gone, and closes every client it opens;
    /// every client process it starts, it waits for.
    #[test]
    fn scripts_are_complete() {
        let scripts = (0..=9).map(|n| (format!("step {n}"), script(n)));
        for (which, s) in scripts.chain([("the client".to_string(), client_script())]) {
            assert!(matches!(s.first(), Some(Start | Run)), "{which}");
            assert!(
                s.contains(&Exit),
                "{which} never waits for the server to exit"
            );
            let opened = s.iter().filter(|a| matches!(a, Connect(_))).count();
            let closed = s.iter().filter(|a| matches!(a, Close(_) | Eof(_))).count();
            assert_eq!(
                opened, closed,
                "{which}: every connection must end in the script"
            );
            let started = s.iter().filter(|a| matches!(a, Client(_))).count();
            let exited = s.iter().filter(|a| matches!(a, ClientExit(_))).count();
            assert_eq!(
                started, exited,
                "{which}: every client process must exit in the script"
            );
        }
        assert!(client_script().iter().any(|a| matches!(a, Client(_))));
    }
}
