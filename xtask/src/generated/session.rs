//! "Run it": a terminal session recorded from the real step binary, not typed by hand.
//!
//! The step's binary is started on `127.0.0.1:0` and driven by scripted clients over TCP. Every
//! line the server prints (stdout and stderr share one pipe, as in a terminal) and every line a
//! client types or receives is recorded, labelled with its terminal. Ordering is made
//! deterministic by waiting: the recorder never moves on until the line the script expects has
//! arrived, and the server's remaining output is taken only after it exited. The bound port is
//! shown as 8080, the default a learner's `cargo run` uses.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::{File, banner, step_file};
use crate::process;
use crate::workspace::Step;

/// `book/generated/step-NN-session.md`.
pub const SUFFIX: &str = "-session";

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
    /// A client terminal runs `nc 127.0.0.1 8080`.
    Connect(&'static str),
    /// A client types a line.
    Type(&'static str, &'static str),
    /// A client receives exactly this line next.
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
}

use Act::*;

/// The script for a step. Steps past the last scripted one reuse the latest script, so a new
/// step gets a session without touching this file (its chapter can then ask for a better one).
pub fn script(number: u32) -> Vec<Act> {
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
        0 | 1 => acts.extend([
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
        _ => {
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
    }
    acts
}

/// Builds the step binaries and records one session per step. With `twice`, each session is
/// recorded a second time and must come out the same: a script that lets two tasks' lines race
/// is caught when the files are written, not later as a flaky freshness check.
pub fn generate(root: &Path, steps: &[Step], twice: bool) -> Result<Vec<File>> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    let binaries = build(root, steps)?;
    let mut files = Vec::new();
    for step in steps {
        let package = step.expected_package();
        let Some(binary) = binaries.get(&package) else {
            bail!("building {package} produced no binary named {package}");
        };
        let transcript = record(&package, binary, &script(step.number))
            .with_context(|| format!("recording the session of {package}"))?;
        if twice {
            let again = record(&package, binary, &script(step.number))
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
        files.push(File {
            path: step_file(step, SUFFIX),
            contents: render(&package, &transcript),
        });
    }
    Ok(files)
}

/// Builds the steps' binaries; returns binary name -> path. `cargo test --no-run` rather than
/// `cargo build`: it builds the binaries with the same features as the tests do, so after
/// `cargo test --workspace` (as in `ci`) nothing is compiled twice.
fn build(root: &Path, steps: &[Step]) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = process::cargo(root);
    cmd.args([
        "test",
        "--no-run",
        "--locked",
        "--message-format=json-render-diagnostics",
    ]);
    for step in steps {
        cmd.args(["-p", &step.expected_package()]);
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

/// What a client's reader thread sees.
enum Incoming {
    Line(String),
    Closed,
}

/// A client terminal's connection.
struct Conn {
    stream: TcpStream,
    incoming: Receiver<Incoming>,
}

/// The server process; killed if the recording fails half-way.
struct ServerProcess {
    child: Child,
    output: Receiver<Option<String>>,
    exited: bool,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Recorder<'a> {
    package: &'a str,
    lines: Vec<Line>,
    server: Option<ServerProcess>,
    port: u16,
    /// Other loopback ports seen in the output (clients' ephemeral ports), in order of
    /// appearance, so they can be shown as stable numbers.
    other_ports: Vec<u16>,
    conns: BTreeMap<&'static str, Conn>,
}

/// Runs `script` against the binary and returns the transcript.
pub fn record(package: &str, binary: &Path, script: &[Act]) -> Result<Vec<Line>> {
    let mut r = Recorder {
        package,
        lines: Vec::new(),
        server: None,
        port: 0,
        other_ports: Vec::new(),
        conns: BTreeMap::new(),
    };
    for act in script {
        r.act(binary, *act).map_err(|e| {
            anyhow!(
                "{e}\n(at {act:?}; the transcript so far:)\n{}",
                render_lines(&r.lines)
            )
        })?;
    }
    for (name, conn) in &r.conns {
        if let Ok(Incoming::Line(line)) = conn.incoming.try_recv() {
            bail!("{name} received `{line}`, which the script does not expect");
        }
    }
    Ok(r.lines)
}

impl Recorder<'_> {
    fn show(&mut self, terminal: &str, text: impl Into<String>) {
        self.lines.push((terminal.to_string(), text.into()));
    }

    fn server(&mut self) -> Result<&mut ServerProcess> {
        self.server
            .as_mut()
            .ok_or_else(|| anyhow!("the script uses the server before `Start`"))
    }

    fn conn(&mut self, name: &str) -> Result<&mut Conn> {
        self.conns
            .get_mut(name)
            .ok_or_else(|| anyhow!("{name} is not connected"))
    }

    fn act(&mut self, binary: &Path, act: Act) -> Result<()> {
        match act {
            Start => {
                let mut command = Command::new("sh");
                // One pipe for stdout and stderr keeps their lines in the order the server
                // wrote them, as a terminal shows them.
                command
                    .args(["-c", "exec \"$0\" 127.0.0.1:0 2>&1"])
                    .arg(binary)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped());
                // Ctrl-C must act as it does in a terminal. A CI runner may start us with
                // SIGINT ignored, and an ignored signal stays ignored across exec (the shell may
                // not undo it), so a step without a handler would never stop: restore the
                // default action in the child before it runs anything.
                // SAFETY: between fork and exec only async-signal-safe calls are allowed, and
                // signal(2) is one; nothing else is touched.
                #[allow(unsafe_code)]
                unsafe {
                    use std::os::unix::process::CommandExt;
                    command.pre_exec(|| {
                        libc::signal(libc::SIGINT, libc::SIG_DFL);
                        Ok(())
                    });
                }
                let mut child = command
                    .spawn()
                    .with_context(|| format!("starting {}", binary.display()))?;
                let stdout = child
                    .stdout
                    .take()
                    .context("the server's stdout is piped")?;
                let (tx, output) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(Some(line)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(None);
                });
                self.server = Some(ServerProcess {
                    child,
                    output,
                    exited: false,
                });
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
            Connect(name) => {
                if self.conns.contains_key(name) {
                    bail!("{name} is already connected");
                }
                let stream = TcpStream::connect(("127.0.0.1", self.port))
                    .with_context(|| format!("{name} could not connect"))?;
                let reader = stream.try_clone()?;
                let (tx, incoming) = mpsc::channel();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(reader);
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
                self.conns.insert(name, Conn { stream, incoming });
                self.show(name, format!("$ nc 127.0.0.1 {SHOWN_PORT}"));
            }
            Type(name, text) => {
                let conn = self.conn(name)?;
                conn.stream
                    .write_all(format!("{text}\n").as_bytes())
                    .with_context(|| format!("{name} could not send `{text}`"))?;
                self.show(name, text);
            }
            Recv(name, expected) => {
                let conn = self.conn(name)?;
                match conn.incoming.recv_timeout(WAIT) {
                    Ok(Incoming::Line(line)) if line == expected => self.show(name, line),
                    Ok(Incoming::Line(line)) => {
                        bail!("{name} expected `{expected}` but received `{line}`")
                    }
                    Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => {
                        bail!("{name} expected `{expected}` but the server closed the connection")
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
                        Ok(Some(line)) => line,
                        Ok(None) | Err(RecvTimeoutError::Disconnected) => {
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
                if let Ok(Incoming::Line(line)) = conn.incoming.try_recv() {
                    bail!("{name} received `{line}`, which the script does not expect");
                }
                let _ = conn.stream.shutdown(Shutdown::Both);
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
                let server = self.server()?;
                let deadline = Instant::now() + WAIT;
                let status = loop {
                    if let Some(status) = server.child.try_wait()? {
                        break status;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "the server was still running {WAIT:?} after the script expected it to exit"
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                server.exited = true;
                // The process is gone, so its output ends: take all of it.
                loop {
                    let server = self.server()?;
                    match server.output.recv_timeout(WAIT) {
                        Ok(Some(line)) => self.show_server(line),
                        Ok(None) | Err(RecvTimeoutError::Disconnected) => break,
                        Err(RecvTimeoutError::Timeout) => {
                            bail!("the server exited but its output did not end")
                        }
                    }
                }
                // What a shell reports: the exit code, or 128 + the signal that killed it.
                let code = status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + status.signal().unwrap_or(0)
                });
                self.show("server", "$ echo $?");
                self.show("server", code.to_string());
            }
            Eof(name) => {
                let conn = self.conn(name)?;
                match conn.incoming.recv_timeout(WAIT) {
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
        }
        Ok(())
    }

    /// Shows server lines until one contains `needle`, and returns that one (not yet shown).
    fn server_line_containing(&mut self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let server = self.server()?;
            match server.output.recv_timeout(left) {
                Ok(Some(line)) if line.contains(needle) => return Ok(line),
                Ok(Some(line)) => self.show_server(line),
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
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
        self.show("server", line);
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

/// The generated Markdown: a sentence on how to read it, then the transcript.
fn render(package: &str, lines: &[Line]) -> String {
    let body = render_lines(lines);
    let fence = super::changes::fence_for(&body);
    format!(
        "{}\nOne terminal runs the server (`cargo run -q -p {package}`); each of the others runs \
         `nc 127.0.0.1 8080` for one person. Every line is labelled with the terminal it appears \
         in, in the order things happened. In a client's terminal, lines starting with `from` \
         come from the server and the others are typed; text in square brackets is a note, not \
         output. This session was recorded from the real binary by `cargo xtask gen`.\n\n\
         {fence}text\n{body}{fence}\n",
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

    /// Every script starts the server, ends with it gone, and closes every client it opens.
    #[test]
    fn scripts_are_complete() {
        for n in 1..=9 {
            let s = script(n);
            assert_eq!(s.first(), Some(&Start), "step {n}");
            assert!(
                s.contains(&Exit),
                "step {n} never waits for the server to exit"
            );
            let opened = s.iter().filter(|a| matches!(a, Connect(_))).count();
            let closed = s.iter().filter(|a| matches!(a, Close(_) | Eof(_))).count();
            assert_eq!(
                opened, closed,
                "step {n}: every connection must end in the script"
            );
        }
    }
}
