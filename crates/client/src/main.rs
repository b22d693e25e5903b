//! The a-chat client: sends a login name, then every line typed on stdin, and prints every line
//! the server sends as it arrives, until the server closes the connection, input ends (Ctrl-D)
//! or the user presses Ctrl-C.

mod args;

use std::borrow::Cow;
use std::future::Future;
use std::io::{self, BufRead, IsTerminal, Write};
use std::pin::{Pin, pin};
use std::process::ExitCode;
use std::task::Poll;
use std::thread;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

use args::{Args, Command, USAGE};

/// Any error, boxed, with a message written for the person at the keyboard.
type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

/// After input ends and our side of the connection is closed, how long we wait for the server to
/// close its side before leaving anyway (a server that never closes must not keep us here).
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// How many typed lines may wait between the stdin thread and the socket. A person never fills
/// it; piped input that does simply waits (the thread blocks) until the socket takes more.
const INPUT_QUEUE: usize = 16;

// ANCHOR: main
#[tokio::main]
async fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Command::Chat(args)) => args,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(usage_error) => {
            eprintln!("{usage_error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(ending) => {
            eprintln!("{}", ending.message());
            ending.exit_code()
        }
        // Every error is a sentence for the user (the connection failed, or was lost), so it is
        // printed as it is, without a panic or a debug dump.
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
    // Returning from `main` drops the runtime and ends the process. The stdin thread may still be
    // blocked in `read`: it is a plain std thread the runtime does not know, so nobody waits for
    // it, and the process exit ends it.
}
// ANCHOR_END: main

// ANCHOR: run
/// Gets a login name, connects, logs in, and chats until something ends the session.
async fn run(args: Args) -> Result<Ending> {
    let mut input = spawn_stdin_reader()?;
    let name = match args.name {
        Some(name) => name,
        None => ask_name(&mut input)
            .await
            .ok_or("input ended before a login name was given")?,
    };

    let stream = TcpStream::connect(&args.addr).await.map_err(|e| {
        format!(
            "could not connect to {}: {e}\n\
             Is the server running? Start one with `cargo run -p step-05`.",
            args.addr
        )
    })?;
    let (reader, writer) = stream.into_split();
    let from_server = FramedRead::new(reader, LinesCodec::new());
    let mut to_server = FramedWrite::new(writer, LinesCodec::new());

    // The protocol: the first line is the login name.
    to_server.send(name.as_str()).await.map_err(lost)?;

    // `ctrl_c()` installs its handler when it is first polled, not when it is called. Polling it
    // once here means that from the "connected" line on, Ctrl-C completes this future instead
    // of killing the process. (Until now the default still applies, which is what we want
    // while connecting: Ctrl-C ends a connect that hangs.)
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    if let Poll::Ready(signal) = futures::poll!(ctrl_c.as_mut()) {
        signal.map_err(|e| format!("could not listen for Ctrl-C: {e}"))?;
        return Ok(Ending::Interrupted);
    }
    eprintln!(
        "connected to {} as {name}. Type `NAME: message` to chat; Ctrl-D leaves.",
        args.addr
    );
    chat(from_server, to_server, input, ctrl_c).await
}
// ANCHOR_END: run

// ANCHOR: stdin_thread
/// Reads stdin line by line on a thread of its own and hands each line to the async side.
/// The channel closes (`recv` returns `None`) when input ends.
///
/// Why a std thread and not `tokio::io::stdin()`: reading a terminal cannot be made
/// non-blocking portably, so tokio's `Stdin` runs an ordinary blocking `read` on the runtime's
/// blocking pool, and that read cannot be cancelled. When `main` returns, dropping the runtime
/// waits for its blocking pool, so a client whose server has gone would sit there until the
/// user presses Enter. Tokio's docs recommend a dedicated thread for interactive input; a
/// thread we spawn ourselves is not the runtime's, so nothing waits for it.
fn spawn_stdin_reader() -> Result<mpsc::Receiver<String>> {
    let (sender, receiver) = mpsc::channel(INPUT_QUEUE);
    thread::Builder::new()
        .name("stdin".to_string())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                match line {
                    // `blocking_send` is the right call here: this is not a runtime thread.
                    // It fails only once the receiver is gone, that is, the client is ending.
                    Ok(line) => {
                        if sender.blocking_send(line).is_err() {
                            return;
                        }
                    }
                    // The bytes of a non-UTF-8 line are consumed, so reading can go on.
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        eprintln!("skipped a line that is not valid UTF-8");
                    }
                    Err(e) => {
                        eprintln!("could not read input: {e}");
                        return;
                    }
                }
            }
            // End of input: returning drops `sender`, which closes the channel.
        })
        .map_err(|e| format!("could not start the thread that reads input: {e}"))?;
    Ok(receiver)
}
// ANCHOR_END: stdin_thread

// ANCHOR: ask_name
/// Asks for a login name until a non-blank one is typed; `None` if input ends first.
async fn ask_name(input: &mut mpsc::Receiver<String>) -> Option<String> {
    loop {
        // On stderr, so stdout carries only what the server sends; and only for a person at a
        // terminal, since piped input has no one to read the question.
        if io::stdin().is_terminal() {
            eprint!("login name: ");
        }
        let line = input.recv().await?;
        match args::login_name(&line) {
            Some(name) => return Some(name),
            None => eprintln!("the name cannot be empty"),
        }
    }
}
// ANCHOR_END: ask_name

// ANCHOR: chat_loop
/// Forwards typed lines to the server and server lines to the screen, until one of the ways a
/// session ends.
async fn chat(
    mut from_server: FramedRead<OwnedReadHalf, LinesCodec>,
    mut to_server: FramedWrite<OwnedWriteHalf, LinesCodec>,
    mut input: mpsc::Receiver<String>,
    // Pinned once, outside the loop, so every turn waits on the same, already installed,
    // signal listener.
    mut ctrl_c: Pin<&mut impl Future<Output = io::Result<()>>>,
) -> Result<Ending> {
    // Armed only once input has ended: it bounds the wait for the server to close.
    let mut grace = pin!(tokio::time::sleep(CLOSE_GRACE));
    let mut input_ended = false;

    loop {
        tokio::select! {
            // Every branch future is cancel safe: `next`, `recv`, and the pinned `ctrl_c` and
            // `grace`, which are polled by reference and so survive losing a round.
            line = from_server.next() => match line {
                Some(Ok(line)) => show(&line)?,
                Some(Err(e)) => return Err(lost(e)),
                None if input_ended => return Ok(Ending::InputEnded),
                None => return Ok(Ending::ServerClosed),
            },
            // Disabled once input has ended: a closed channel would return `None` at once,
            // forever, and this branch would spin.
            typed = input.recv(), if !input_ended => match typed {
                // The write is awaited right here, so while one line goes out the loop neither
                // reads from the server nor sees Ctrl-C. For a person typing that is a moment;
                // a client fed megabytes would give writing a task of its own.
                // ANCHOR: not_sent
                // An arrow key in a line-buffered terminal types an escape sequence into the
                // line, and a server from step 06 on closes a client that sends one.
                Some(line) if line.chars().any(is_unsafe) => eprintln!(
                    "not sent: the line has control characters ({}); arrow keys do not edit a \
                     line here",
                    visible(&line)
                ),
                // ANCHOR_END: not_sent
                Some(line) => to_server.send(line).await.map_err(lost)?,
                None => {
                    // Flush what was typed, then half-close: the server reads everything we
                    // sent, then end of file. We keep reading until it closes its side too.
                    // (`LinesCodec` encodes any kind of string, so say which sink we close.)
                    SinkExt::<String>::close(&mut to_server).await.map_err(lost)?;
                    input_ended = true;
                    grace.as_mut().reset(Instant::now() + CLOSE_GRACE);
                }
            },
            () = &mut grace, if input_ended => return Ok(Ending::ServerKeptOpen),
            signal = ctrl_c.as_mut() => {
                signal.map_err(|e| format!("could not listen for Ctrl-C: {e}"))?;
                return Ok(Ending::Interrupted);
            }
        }
    }
}
// ANCHOR_END: chat_loop

// ANCHOR: show
/// Prints one server line: messages on stdout, the server's `error: ...` lines on stderr and
/// marked, so they stand out from chat (and a script can tell them apart). Both go through
/// [`visible`] first: what a server sends never drives the terminal.
fn show(line: &str) -> Result<()> {
    let line = visible(line);
    match line.strip_prefix("error:") {
        Some(error) => eprintln!("server error: {}", error.trim_start()),
        // `writeln!` rather than `println!`: if stdout is closed (`client | head -1`),
        // `println!` panics, while this returns an error that ends the session.
        None => writeln!(io::stdout(), "{line}")
            .map_err(|e| format!("could not write to stdout: {e}"))?,
    }
    Ok(())
}
// ANCHOR_END: show

// ANCHOR: visible
/// `line` as it is safe to print: every character a terminal would obey rather than show is
/// written as its escape (`\r`, `\u{1b}`), so no server, and no client a server forwards,
/// can write over a line, rename the window or erase the screen. Everything else, tab
/// included, is printed as it came; most lines are returned as they are, without a copy.
fn visible(line: &str) -> Cow<'_, str> {
    if !line.chars().any(is_unsafe) {
        return Cow::Borrowed(line);
    }
    let mut shown = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if is_unsafe(c) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// Whether a terminal would obey `c` rather than show it: a control character (C0, DEL, C1)
/// other than tab, which only moves the cursor forward, or one of Unicode's bidirectional
/// embeddings, overrides and isolates, which reorder the rest of the line. The server's rule
/// for message text, from step 06 on, is the same.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
// ANCHOR_END: visible

// ANCHOR: ending
/// How a session ended. Each way has its message and exit code; errors are the other way out.
#[derive(Debug)]
enum Ending {
    /// The server closed the connection while we were still chatting (it shut down).
    ServerClosed,
    /// Input ended; we sent everything and the server then closed the connection.
    InputEnded,
    /// Input ended and we sent everything, but the server kept the connection open.
    ServerKeptOpen,
    /// The user pressed Ctrl-C.
    Interrupted,
}

impl Ending {
    fn message(&self) -> &'static str {
        match self {
            Ending::ServerClosed => "the server closed the connection",
            Ending::InputEnded => "end of input: everything typed was sent; disconnected",
            Ending::ServerKeptOpen => {
                "end of input: everything typed was sent, but the server did not close the \
                 connection; leaving anyway"
            }
            Ending::Interrupted => "interrupted; disconnected",
        }
    }

    /// 0 for the endings a user expects; 130 for Ctrl-C, the code shells use for a program
    /// stopped by SIGINT, so a script can tell "interrupted" from "done".
    fn exit_code(&self) -> ExitCode {
        match self {
            Ending::Interrupted => ExitCode::from(130),
            _ => ExitCode::SUCCESS,
        }
    }
}
// ANCHOR_END: ending

/// The error for a connection that failed under us (reset, broken pipe, invalid UTF-8).
fn lost(e: impl std::fmt::Display) -> Error {
    format!("lost the connection to the server: {e}").into()
}
