//! The chat-load command line: parses the scenario and its options, runs it, prints progress to
//! stderr and the one-line JSON summary to stdout. Exit status: 0 when every check passed, 1
//! when the run found lost, duplicated, reordered or misdelivered messages (or another failed
//! condition), 2 when it could not run at all.

use std::process::ExitCode;
use std::time::Duration;

use chat_load::{Error, Stopper, Summary, Target, bench, scenario, sys};
use clap::{Parser, Subcommand};

/// Load tool for a-chat servers: every delivery is checked, and the run fails on any lost,
/// duplicated, reordered or misdelivered message.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// The server's address; loopback only.
    #[arg(long, global = true, default_value = "127.0.0.1:8080")]
    addr: String,
    /// The server's process id: read its CPU time and memory from /proc, and (shutdown) send
    /// it SIGINT.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Seconds any single wait (connect, read, write) may take before the run fails.
    #[arg(long, global = true, default_value_t = 10.0)]
    stall_timeout: f64,
    /// How many clients connect and log in at the same time.
    #[arg(long, global = true, default_value_t = 64)]
    login_concurrency: usize,
    /// Worker threads of the tool's runtime (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N clients each send M messages to K recipients as fast as the server takes them:
    /// deliveries per second, server CPU time per delivery.
    FanOut {
        /// Clients, each a sender and a receiver.
        #[arg(long, short = 'n', default_value_t = 100)]
        clients: u32,
        /// Messages each client sends.
        #[arg(long, short = 'm', default_value_t = 1000)]
        messages: u64,
        /// Recipients of each message: the next K clients in a ring.
        #[arg(long, short = 'k', default_value_t = 5)]
        recipients: u32,
    },
    /// A paced total delivery rate: p50, p99, max delivery latency.
    Latency {
        /// Clients, each a sender and a receiver.
        #[arg(long, short = 'n', default_value_t = 100)]
        clients: u32,
        /// Recipients of each message: the next K clients in a ring.
        #[arg(long, short = 'k', default_value_t = 5)]
        recipients: u32,
        /// Deliveries per second, all clients together.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// C idle logged-in clients, then one message around a ring of a sample of them: connect
    /// rate, server RSS per connection, round-trip time.
    Connections {
        /// Idle clients to connect and register.
        #[arg(long, short = 'c', default_value_t = 1000)]
        clients: u32,
        /// How many of them (evenly spread) pass a message around, one hop at a time.
        #[arg(long, default_value_t = 100)]
        sample: u32,
    },
    /// Clients keep writing while the server gets SIGINT (needs --server-pid): messages lost,
    /// time to exit, time until every connection is closed.
    Shutdown {
        /// Clients, each a sender and a receiver.
        #[arg(long, short = 'n', default_value_t = 20)]
        clients: u32,
        /// Recipients of each message: the next K clients in a ring.
        #[arg(long, short = 'k', default_value_t = 3)]
        recipients: u32,
        /// Deliveries per second, all clients together; 0 means as fast as possible.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Seconds of traffic before the signal.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds the server may take to exit and close every connection.
        #[arg(long, default_value_t = 30.0)]
        exit_timeout: f64,
    },
    /// Starts each server binary on 127.0.0.1:0 once per scenario, runs the scenarios with
    /// the numbers (fan-out, latency, connections, shutdown, peak memory), and
    /// writes measurements.md and measurements.svg.
    Bench {
        /// A server to measure, as LABEL=PATH (e.g. step-05=target/release/step-05); repeat.
        #[arg(long = "server", required = true)]
        servers: Vec<String>,
        /// Where to write measurements.md and measurements.svg.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// Small numbers, to check that the benchmark works.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Many clients mean many descriptors; raising the soft limit to the hard one needs no
    // privilege. The connections scenario checks the result against what it needs.
    sys::raise_open_file_limit();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chat-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(summary) => {
            println!("{}", summary.to_json());
            if summary.ok {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "chat-load: FAILED: {}",
                    summary.failure.as_deref().unwrap_or("unknown")
                );
                for problem in &summary.problems {
                    eprintln!("  {problem}");
                }
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("chat-load: {e}");
            ExitCode::from(2)
        }
    }
}

fn seconds(s: f64, what: &str) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("{what}: `{s}` is not a duration").into())
}

async fn run(cli: Cli) -> Result<Summary, Error> {
    let progress = !cli.quiet;
    let target = || async {
        let addr = chat_load::net::resolve_loopback(&cli.addr).await?;
        let mut target = Target::new(addr);
        target.stall = seconds(cli.stall_timeout, "--stall-timeout")?;
        target.login_concurrency = cli.login_concurrency;
        target.progress = progress;
        if let Some(pid) = cli.server_pid {
            target.probe = Some(sys::Probe::new(pid)?);
        }
        Ok::<_, Error>(target)
    };
    match cli.scenario {
        Scenario::FanOut {
            clients,
            messages,
            recipients,
        } => scenario::fan_out(&target().await?, clients, messages, recipients).await,
        Scenario::Latency {
            clients,
            recipients,
            rate,
            duration,
        } => {
            let duration = seconds(duration, "--duration")?;
            scenario::latency(&target().await?, clients, recipients, rate, duration).await
        }
        Scenario::Connections { clients, sample } => {
            scenario::connections(&target().await?, clients, sample).await
        }
        Scenario::Shutdown {
            clients,
            recipients,
            rate,
            warmup,
            exit_timeout,
        } => {
            let target = target().await?;
            let probe = target
                .probe
                .ok_or("the shutdown scenario sends SIGINT to the server: give --server-pid")?;
            let rate = (rate > 0.0).then_some(rate);
            let warmup = seconds(warmup, "--warmup")?;
            let exit_limit = seconds(exit_timeout, "--exit-timeout")?;
            let stopper = Stopper::signal(probe);
            scenario::shutdown(
                &target, clients, recipients, rate, warmup, stopper, exit_limit,
            )
            .await
        }
        Scenario::Bench {
            ref servers,
            ref out,
            quick,
        } => bench(servers, out, quick, progress).await,
    }
}

/// Runs the benchmark; its summary says whether every run passed its checks.
async fn bench(
    servers: &[String],
    out: &std::path::Path,
    quick: bool,
    progress: bool,
) -> Result<Summary, Error> {
    let servers = servers
        .iter()
        .map(|s| {
            let (label, path) = s
                .split_once('=')
                .ok_or_else(|| format!("--server takes LABEL=PATH, got `{s}`"))?;
            Ok(bench::Server {
                label: label.to_string(),
                binary: path.into(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut config = if quick {
        bench::Config::quick(servers)
    } else {
        bench::Config::standard(servers)
    };
    config.progress = progress;
    let report = bench::run(&config).await;
    report
        .write(out)
        .map_err(|e| format!("cannot write into {}: {e}", out.display()))?;
    let mut summary = Summary::new("bench", "127.0.0.1:0");
    summary.problems = report.failures();
    if !summary.problems.is_empty() {
        summary.fail(format!(
            "{} runs failed a check or did not run",
            summary.problems.len()
        ));
    }
    summary.judge();
    eprintln!(
        "wrote {} and {}",
        out.join("measurements.md").display(),
        out.join("measurements.svg").display()
    );
    Ok(summary)
}
