//! The step-06 binary: reads its limits from the command line, binds the address, installs the
//! SIGINT and SIGTERM handlers, says it is ready, and serves until either signal arrives; then
//! it shuts down gracefully within the grace period. A second signal exits at once.

use std::process::ExitCode;
use std::time::Duration;

use step_06::{Config, GracePeriodExpired};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

// ANCHOR: exit_codes
/// The graceful shutdown finished within the grace period.
const EXIT_CLEAN: u8 = 0;
/// The server could not start (the address is in use, say) or failed.
const EXIT_FAILED: u8 = 1;
/// The command line is wrong.
const EXIT_USAGE: u8 = 2;
/// The grace period ran out: the connections still open were closed.
const EXIT_GRACE_EXPIRED: u8 = 3;
/// A second signal during the shutdown: 128 + the signal's number, as a shell reports a
/// process killed by it (130 for SIGINT, 143 for SIGTERM).
const EXIT_SIGNAL_BASE: i32 = 128;
// ANCHOR_END: exit_codes

// ANCHOR: main
#[tokio::main]
async fn main() -> ExitCode {
    let (addr, config) = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Serve { addr, config }) => (addr, config),
        Ok(Command::Help) => {
            print!("{}", help());
            return ExitCode::from(EXIT_CLEAN);
        }
        Err(e) => {
            eprintln!("step-06: {e}\nTry `step-06 --help`.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let listener = match TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("step-06: cannot listen on {addr}: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    // The handlers are installed here, before the readiness line: from that line on, a
    // signal means a graceful shutdown, and a second one an immediate exit.
    let shutdown = match watch_signals() {
        Ok(shutdown) => shutdown,
        Err(e) => {
            eprintln!("step-06: cannot install the signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    // Tests and scripts wait for this exact line before they connect. `local_addr` of a bound
    // listener fails only if the socket is gone, which it is not: we own it.
    match listener.local_addr() {
        Ok(local) => println!("listening on {local}"),
        Err(e) => {
            eprintln!("step-06: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    let first_signal = async {
        // An error means the watcher is gone, which happens only if it panicked: stop too.
        let _ = shutdown.await;
    };
    match step_06::run_with(listener, first_signal, config).await {
        Ok(()) => {
            eprintln!("shut down cleanly");
            ExitCode::from(EXIT_CLEAN)
        }
        Err(e) if e.is::<GracePeriodExpired>() => {
            eprintln!("{e}");
            ExitCode::from(EXIT_GRACE_EXPIRED)
        }
        Err(e) => {
            eprintln!("step-06: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
// ANCHOR_END: main

// ANCHOR: signals
/// Installs the handlers for SIGINT (Ctrl-C in a terminal) and SIGTERM (what `kill`, systemd
/// and container runtimes send), and starts a task that watches them. The returned receiver
/// completes on the first signal: the graceful shutdown begins. On a second one the task
/// exits the process at once, with 128 + the signal's number: whoever presses Ctrl-C twice
/// does not want to wait for the grace period.
///
/// `signal(..)` installs its handler when it is called, so both exist when this returns.
#[cfg(unix)]
fn watch_signals() -> std::io::Result<oneshot::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (first, first_received) = oneshot::channel();
    tokio::spawn(async move {
        let mut next_signal = async || {
            tokio::select! {
                _ = interrupt.recv() => ("SIGINT", signal_number::SIGINT),
                _ = terminate.recv() => ("SIGTERM", signal_number::SIGTERM),
            }
        };
        let (name, _) = next_signal().await;
        eprintln!("{name} received, shutting down (again to exit at once)");
        // Fails only if `main` stopped listening: it is shutting down already.
        let _ = first.send(());
        let (name, number) = next_signal().await;
        eprintln!("{name} received again, exiting at once");
        std::process::exit(EXIT_SIGNAL_BASE + number);
    });
    Ok(first_received)
}
// ANCHOR_END: signals

/// The two signal numbers we report, the same on every unix (POSIX fixes them).
#[cfg(unix)]
mod signal_number {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
}

/// Windows has no SIGTERM: Ctrl-C only, twice to exit at once (with 130, as on unix).
#[cfg(windows)]
fn watch_signals() -> std::io::Result<oneshot::Receiver<()>> {
    let mut ctrl_c = tokio::signal::windows::ctrl_c()?;
    let (first, first_received) = oneshot::channel();
    tokio::spawn(async move {
        ctrl_c.recv().await;
        eprintln!("Ctrl-C received, shutting down (again to exit at once)");
        let _ = first.send(());
        ctrl_c.recv().await;
        std::process::exit(EXIT_SIGNAL_BASE + 2);
    });
    Ok(first_received)
}

// ANCHOR: flags
/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Serve { addr: String, config: Config },
    Help,
}

/// The default address, when the command line names none.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Reads `[ADDR] [--flag VALUE | --flag=VALUE]...`. Every flag sets one field of [`Config`];
/// `--help` lists them with their defaults.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut config = Config::default();
    let mut addr = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let Some(flag) = arg.strip_prefix("--") else {
            if addr.replace(arg.clone()).is_some() {
                return Err(format!(
                    "unexpected argument `{arg}`: the address is given once"
                ));
            }
            continue;
        };
        let (flag, value) = match flag.split_once('=') {
            Some((flag, value)) => (flag, value.to_string()),
            None => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("`--{flag}` needs a value"))?;
                (flag, value)
            }
        };
        let bad = |e: String| format!("`--{flag} {value}`: {e}");
        match flag {
            "max-line-len" => config.max_line_len = parse_count(&value).map_err(bad)?,
            "login-timeout" => config.login_timeout = parse_duration(&value).map_err(bad)?,
            "sender-budget" => config.sender_budget = parse_count(&value).map_err(bad)?,
            "stall-timeout" => config.stall_timeout = parse_duration(&value).map_err(bad)?,
            "broker-queue-len" => config.broker_queue_len = parse_count(&value).map_err(bad)?,
            "max-connections" => config.max_connections = parse_count(&value).map_err(bad)?,
            "grace-period" => config.grace_period = parse_duration(&value).map_err(bad)?,
            "linger" => config.linger = parse_duration(&value).map_err(bad)?,
            _ => return Err(format!("unknown flag `--{flag}`")),
        }
    }
    config.validate()?;
    Ok(Command::Serve {
        addr: addr.unwrap_or_else(|| DEFAULT_ADDR.to_string()),
        config,
    })
}

fn parse_count(value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| "expected a whole number".to_string())
}

/// `10s`, `250ms`, `2m`: a whole number and a unit.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| "expected a duration such as `10s` or `250ms`".to_string())?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        _ => Err(format!("unknown unit `{unit}`: use `ms`, `s` or `m`")),
    }
}

/// The `--help` text, with the defaults read from `Config::default()` so they cannot drift.
fn help() -> String {
    let d = Config::default();
    format!(
        "a-chat step 06: a chat server that survives bad input, slow clients and stuck shutdowns

Usage: step-06 [ADDR] [OPTIONS]

Arguments:
  [ADDR]  address to listen on [default: {DEFAULT_ADDR}]

Options:
  --max-line-len BYTES       longest line a client may send [default: {}]
  --login-timeout DURATION   time a new client has to send its name [default: {}s]
  --sender-budget BYTES      bytes of a client's lines that may wait for others before its
                             reader waits [default: {}]
  --stall-timeout DURATION   time a write to a client may make no progress before it is
                             dropped as too slow [default: {}s]
  --broker-queue-len EVENTS  events readers may queue for the broker before they wait
                             [default: {}]
  --max-connections N        clients connected at once; one more gets `error: server full`
                             [default: {}]
  --grace-period DURATION    how long a graceful shutdown may take [default: {}s]
  --linger DURATION          how long a closing connection waits for the client to close
                             its side after ours [default: {}s]
  -h, --help                 print this help

DURATION is a whole number with a unit: 250ms, 10s, 2m.

SIGINT (Ctrl-C) or SIGTERM starts a graceful shutdown; a second one exits at once.
Exit codes: {EXIT_CLEAN} clean shutdown; {EXIT_FAILED} failed to start or failed;
{EXIT_USAGE} bad command line; {EXIT_GRACE_EXPIRED} grace period over, connections closed;
130/143 second SIGINT/SIGTERM.
",
        d.max_line_len,
        d.login_timeout.as_secs(),
        d.sender_budget,
        d.stall_timeout.as_secs(),
        d.broker_queue_len,
        d.max_connections,
        d.grace_period.as_secs(),
        d.linger.as_secs(),
    )
}
// ANCHOR_END: flags

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Command, String> {
        parse_args(line.split_whitespace().map(String::from))
    }

    /// No arguments: the default address and `Config::default()`.
    #[test]
    fn defaults() {
        assert_eq!(
            args(""),
            Ok(Command::Serve {
                addr: DEFAULT_ADDR.to_string(),
                config: Config::default()
            })
        );
    }

    /// Every flag sets its field, in both `--flag value` and `--flag=value` forms.
    #[test]
    fn every_flag() {
        let parsed = args(
            "0.0.0.0:9000 --max-line-len 100 --login-timeout=500ms --sender-budget 7000 \
             --stall-timeout=3s --broker-queue-len=8 --max-connections 9 --grace-period 2m \
             --linger=250ms",
        );
        assert_eq!(
            parsed,
            Ok(Command::Serve {
                addr: "0.0.0.0:9000".to_string(),
                config: Config {
                    max_line_len: 100,
                    login_timeout: Duration::from_millis(500),
                    sender_budget: 7000,
                    stall_timeout: Duration::from_secs(3),
                    broker_queue_len: 8,
                    max_connections: 9,
                    grace_period: Duration::from_secs(120),
                    linger: Duration::from_millis(250),
                }
            })
        );
    }

    /// Unknown flags, missing or malformed values and impossible limits are errors that name
    /// the flag.
    #[test]
    fn bad_flags() {
        for (line, needle) in [
            ("--nope 1", "unknown flag `--nope`"),
            ("--sender-budget", "`--sender-budget` needs a value"),
            ("--sender-budget ten", "--sender-budget ten"),
            ("--grace-period 10", "unknown unit"),
            ("--grace-period 10h", "unknown unit `h`"),
            ("--sender-budget 1000", "sender budget must pay for a line"),
            ("--stall-timeout 0s", "stall timeout"),
            ("--broker-queue-len 0", "broker queue length"),
            ("a b", "unexpected argument `b`"),
        ] {
            match args(line) {
                Err(e) => assert!(e.contains(needle), "`{line}`: `{e}` should say `{needle}`"),
                Ok(c) => panic!("`{line}` should be refused, got {c:?}"),
            }
        }
    }

    /// `--help` lists every flag with its default.
    #[test]
    fn help_lists_every_flag() {
        assert_eq!(args("--sender-budget 5 --help"), Ok(Command::Help));
        let help = help();
        for flag in [
            "--max-line-len BYTES       longest line a client may send [default: 4096]",
            "--login-timeout DURATION   time a new client has to send its name [default: 10s]",
            "[default: 262144]",
            "--stall-timeout DURATION",
            "--max-connections N",
            "[default: 10000]",
            "--grace-period DURATION    how long a graceful shutdown may take [default: 10s]",
            "--linger DURATION          how long a closing connection waits for the client",
        ] {
            assert!(
                help.contains(flag),
                "the help should contain `{flag}`:\n{help}"
            );
        }
    }
}
