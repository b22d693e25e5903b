//! The benchmark: each chosen server binary is started on `127.0.0.1:0`, once per scenario
//! (so every scenario meets a fresh process), measured with its PID, and stopped; the results
//! become a Markdown table and an SVG chart for the book.
//!
//! The xtask calls [`run_blocking`] with the paths of release builds of the steps, then
//! [`Report::write`] into the book's directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::scenario::{self, Stopper, Target};
use crate::summary::Summary;
use crate::sys::{self, Probe};
use crate::{Error, net};

/// How long a server may take to print `listening on ADDR`.
const READY_LIMIT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGINT before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// One server to measure.
#[derive(Debug, Clone)]
pub struct Server {
    /// Its name in the table, e.g. `step-05`.
    pub label: String,
    /// The binary; it takes the address as its first argument and prints `listening on ADDR`.
    pub binary: PathBuf,
}

/// What to run; a `None` scenario is skipped.
#[derive(Debug, Clone)]
pub struct Config {
    /// The servers, in table order.
    pub servers: Vec<Server>,
    /// Fan-out: clients, messages per client, recipients.
    pub fan_out: Option<(u32, u64, u32)>,
    /// Latency: clients, recipients, deliveries per second, seconds.
    pub latency: Option<(u32, u32, f64, Duration)>,
    /// Connections: clients, sample.
    pub connections: Option<(u32, u32)>,
    /// Shutdown: clients, recipients, deliveries per second, warm-up.
    pub shutdown: Option<(u32, u32, f64, Duration)>,
    /// Peak memory: a long fan-out (clients, messages per client, recipients).
    pub memory: Option<(u32, u64, u32)>,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Config {
    /// The numbers: fan-out 100 × 1000 × 5, latency at 10 000 deliveries/s for 10 s
    /// (100 clients, 5 recipients), 10 000 idle connections, shutdown of 20 clients writing
    /// 20 000 deliveries/s, peak memory over a fan-out of 100 × 10 000 × 5.
    pub fn standard(servers: Vec<Server>) -> Config {
        Config {
            servers,
            fan_out: Some((100, 1000, 5)),
            latency: Some((100, 5, 10_000.0, Duration::from_secs(10))),
            connections: Some((10_000, 100)),
            shutdown: Some((20, 3, 20_000.0, Duration::from_secs(1))),
            memory: Some((100, 10_000, 5)),
            progress: true,
        }
    }

    /// Small numbers, for checking that the benchmark itself works.
    pub fn quick(servers: Vec<Server>) -> Config {
        Config {
            servers,
            fan_out: Some((10, 200, 3)),
            latency: Some((10, 3, 2_000.0, Duration::from_secs(1))),
            connections: Some((200, 20)),
            shutdown: Some((5, 2, 5_000.0, Duration::from_millis(300))),
            memory: Some((10, 1000, 3)),
            progress: false,
        }
    }
}

/// The result of one scenario against one server.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The run took place (it may still have found problems: see `ok`).
    Ran(Box<Summary>),
    /// It could not run (the server did not start, could not be reached, ...).
    Failed(String),
}

impl Outcome {
    fn summary(&self) -> Option<&Summary> {
        match self {
            Outcome::Ran(s) => Some(s),
            Outcome::Failed(_) => None,
        }
    }
}

/// Every server's results.
#[derive(Debug, Clone)]
pub struct Report {
    /// The configuration that produced it.
    pub config: Config,
    /// Per server, in order: fan-out, latency, connections, shutdown, memory (`None` when
    /// skipped).
    pub rows: Vec<(String, [Option<Outcome>; 5])>,
}

/// A server binary running as a child process.
struct Running {
    child: Child,
    probe: Probe,
    target: Target,
}

async fn start(server: &Server, progress: bool) -> Result<Running, Error> {
    let mut command = Command::new(&server.binary);
    // Steps 02 and 03 have no SIGINT handler: the benchmark's SIGINT must still end them.
    sys::default_sigint_in_child(command.as_std_mut());
    let mut child = command
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Servers log a line per client; nobody reads it here, and a full pipe would block.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server.binary.display()))?;
    let pid = child.id().ok_or("the server exited at once")?;
    let stdout = child.stdout.take().ok_or("stdout was piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(READY_LIMIT, lines.next_line()).await;
    let addr = match first {
        Ok(Ok(Some(line))) => line
            .strip_prefix("listening on ")
            .map(str::to_string)
            .ok_or_else(|| format!("{}: first line was `{line}`", server.label))?,
        _ => return Err(format!("{} never printed `listening on ADDR`", server.label).into()),
    };
    // Keep draining stdout so the server never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut target = Target::new(net::resolve_loopback(&addr).await?);
    let probe = Probe::new(pid)?;
    target.probe = Some(probe);
    target.progress = progress;
    Ok(Running {
        child,
        probe,
        target,
    })
}

async fn stop(mut running: Running) {
    if running.probe.interrupt().is_ok()
        && tokio::time::timeout(STOP_LIMIT, running.child.wait())
            .await
            .is_ok()
    {
        return;
    }
    // Killing a process we own only fails if it is already gone.
    let _ = running.child.kill().await;
}

async fn one(server: &Server, config: &Config, which: usize) -> Option<Outcome> {
    let wanted = match which {
        0 => config.fan_out.is_some(),
        1 => config.latency.is_some(),
        2 => config.connections.is_some(),
        3 => config.shutdown.is_some(),
        _ => config.memory.is_some(),
    };
    if !wanted {
        return None;
    }
    let mut running = match start(server, config.progress).await {
        Ok(running) => running,
        Err(e) => return Some(Outcome::Failed(e.to_string())),
    };
    let t = running.target.clone();
    let result = match which {
        0 => {
            let (n, m, k) = config.fan_out?;
            scenario::fan_out(&t, n, m, k).await
        }
        1 => {
            let (n, k, rate, duration) = config.latency?;
            scenario::latency(&t, n, k, rate, duration).await
        }
        2 => {
            let (c, sample) = config.connections?;
            scenario::connections(&t, c, sample).await
        }
        4 => {
            let (n, m, k) = config.memory?;
            scenario::fan_out(&t, n, m, k).await
        }
        _ => {
            let (n, k, rate, warmup) = config.shutdown?;
            let stopper = Stopper::signal(running.probe);
            let r = scenario::shutdown(&t, n, k, Some(rate), warmup, stopper, STOP_LIMIT).await;
            // Reap the process the scenario stopped.
            let _ = tokio::time::timeout(STOP_LIMIT, running.child.wait()).await;
            r
        }
    };
    stop(running).await;
    Some(match result {
        Ok(summary) => Outcome::Ran(Box::new(summary)),
        Err(e) => Outcome::Failed(e.to_string()),
    })
}

/// Runs every scenario against every server, one fresh server process per scenario.
pub async fn run(config: &Config) -> Report {
    let mut rows = Vec::new();
    for server in &config.servers {
        let mut results: [Option<Outcome>; 5] = Default::default();
        for (which, slot) in results.iter_mut().enumerate() {
            if config.progress {
                eprintln!("bench: {} / {}", server.label, NAMES[which]);
            }
            *slot = one(server, config, which).await;
            if config.progress
                && let Some(Outcome::Ran(s)) = slot
            {
                eprintln!("{}", s.to_json());
            }
        }
        rows.push((server.label.clone(), results));
    }
    Report {
        config: config.clone(),
        rows,
    }
}

/// [`run`] on a runtime of its own, for callers (the xtask) that have none.
pub fn run_blocking(config: &Config) -> Result<Report, Error> {
    // 10 000 idle connections need more descriptors than the usual soft limit of 1024.
    crate::sys::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(run(config)))
}

const NAMES: [&str; 5] = ["fan-out", "latency", "connections", "shutdown", "memory"];

/// A number as the book writes it, with as many decimals as it deserves: `961 649`, `40.5`,
/// `0.25`. Thousands are set apart by a narrow no-break space, so a table cell never breaks
/// inside a number. `cargo xtask bench` uses it too, so that its tables match this one.
pub fn num(x: f64) -> String {
    if x >= 100.0 {
        let s = format!("{:.0}", x);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push('\u{202F}');
            }
            out.push(c);
        }
        out
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(outcome: &Option<Outcome>, f: impl Fn(&Summary) -> Option<String>) -> String {
    match outcome {
        None => "–".to_string(),
        Some(Outcome::Failed(_)) => "did not run".to_string(),
        Some(Outcome::Ran(s)) => {
            let value = f(s).unwrap_or_else(|| "–".to_string());
            if s.ok { value } else { format!("{value} ⚠") }
        }
    }
}

impl Report {
    /// One sentence per run that failed a check or did not run.
    pub fn failures(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for (label, r) in &self.rows {
            for (which, outcome) in r.iter().enumerate() {
                match outcome {
                    Some(Outcome::Failed(e)) => {
                        notes.push(format!("{label}, {}: did not run: {e}", NAMES[which]));
                    }
                    Some(Outcome::Ran(s)) if !s.ok => notes.push(format!(
                        "{label}, {}: {}",
                        NAMES[which],
                        s.failure.as_deref().unwrap_or("failed")
                    )),
                    _ => {}
                }
            }
        }
        notes
    }

    /// The table, one row per server, with the command-line equivalent and any failures below.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut md = String::new();
        md.push_str(
            "| server | fan-out deliveries/s | server CPU per delivery | p50 latency | \
             p99 latency | max latency | RSS per idle connection | connects/s | \
             lost at shutdown | exit after SIGINT | peak RSS, long fan-out |\n",
        );
        md.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for (label, r) in &self.rows {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&r[0], |s| s.deliveries_per_s.map(num)),
                cell(&r[0], |s| s
                    .server_cpu_ns_per_delivery
                    .map(|ns| format!("{} ns", num(ns)))),
                cell(&r[1], |s| s
                    .latency_us
                    .map(|l| format!("{} ms", num(l.p50 / 1000.0)))),
                cell(&r[1], |s| s
                    .latency_us
                    .map(|l| format!("{} ms", num(l.p99 / 1000.0)))),
                cell(&r[1], |s| s
                    .latency_us
                    .map(|l| format!("{} ms", num(l.max / 1000.0)))),
                cell(&r[2], |s| s
                    .server_rss_per_connection_bytes
                    .map(|b| format!("{} B", num(b)))),
                cell(&r[2], |s| s.connects_per_s.map(num)),
                cell(&r[3], |s| Some(match s.read_but_undelivered {
                    Some(n) if n > 0 => format!("{} (+{n})", s.lost),
                    _ => s.lost.to_string(),
                })),
                // Whole milliseconds: the exit is timed to 1 ms, polled every 2 ms.
                cell(&r[3], |s| s.exit_s.map(|x| format!("{:.0} ms", x * 1000.0))),
                cell(&r[4], |s| s
                    .server_peak_rss_kib
                    .map(|k| format!("{} MB", num(k as f64 / 1024.0)))),
            );
        }
        md.push('\n');
        let mut settings = Vec::new();
        let memory = c.memory.map(|(n, m, k)| {
            format!(
                "peak RSS: `chat-load fan-out --clients {n} --messages {m} --recipients {k}` \
                 (VmHWM at the end)"
            )
        });
        if let Some((n, m, k)) = c.fan_out {
            settings.push(format!(
                "fan-out: `chat-load fan-out --clients {n} --messages {m} --recipients {k}`"
            ));
        }
        if let Some((n, k, rate, d)) = c.latency {
            settings.push(format!(
                "latency: `chat-load latency --clients {n} --recipients {k} --rate {rate} \
                 --duration {}`",
                d.as_secs_f64()
            ));
        }
        if let Some((cl, sample)) = c.connections {
            settings.push(format!(
                "connections: `chat-load connections --clients {cl} --sample {sample}`"
            ));
        }
        if let Some((n, k, rate, w)) = c.shutdown {
            settings.push(format!(
                "shutdown: `chat-load shutdown --clients {n} --recipients {k} --rate {rate} \
                 --warmup {}`",
                w.as_secs_f64()
            ));
        }
        md.push_str(
            "\"Lost at shutdown\" counts deliveries missing for messages the server certainly \
             accepted (a later message of the same sender was delivered); \"(+N)\" adds those \
             missing for messages it had only read from the socket before the signal.\n\n",
        );
        md.push_str("Each scenario ran against a fresh server process (`--server-pid` given):\n\n");
        settings.extend(memory);
        for s in settings {
            let _ = writeln!(md, "- {s}");
        }
        let notes = self.failures();
        if !notes.is_empty() {
            md.push_str("\n⚠ marks a run that failed a check:\n\n");
            for n in notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    /// Two bar charts side by side: fan-out deliveries per second and p99 latency.
    pub fn svg(&self) -> String {
        // Column 0 is the fan-out, column 1 the latency scenario.
        fn summary(r: &[Option<Outcome>; 5], i: usize) -> Option<&Summary> {
            r[i].as_ref().and_then(Outcome::summary)
        }
        let rows: Vec<ChartRow> = self
            .rows
            .iter()
            .map(|(label, r)| ChartRow {
                label: label.clone(),
                deliveries_per_s: summary(r, 0).and_then(|s| s.deliveries_per_s),
                p99_ms: summary(r, 1)
                    .and_then(|s| s.latency_us)
                    .map(|l| l.p99 / 1000.0),
            })
            .collect();
        chart(&rows)
    }

    /// Writes `measurements.md` and `measurements.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("measurements.md"), self.markdown())?;
        std::fs::write(dir.join("measurements.svg"), self.svg())
    }
}

/// One server's bars in [`chart`]; `None` is drawn as "no result".
#[derive(Debug, Clone, PartialEq)]
pub struct ChartRow {
    /// The server's name.
    pub label: String,
    /// Fan-out deliveries per second.
    pub deliveries_per_s: Option<f64>,
    /// p99 delivery latency in milliseconds.
    pub p99_ms: Option<f64>,
}

/// Two bar charts side by side, one row per server: fan-out deliveries per second and p99
/// latency. `cargo xtask bench --runs N` draws its medians with it.
pub fn chart(rows: &[ChartRow]) -> String {
    type Value = fn(&ChartRow) -> Option<f64>;
    let panels: [(&str, Value, &str); 2] = [
        ("fan-out, deliveries per second", |r| r.deliveries_per_s, ""),
        ("p99 delivery latency, ms", |r| r.p99_ms, " ms"),
    ];
    let row_h = 28.0;
    let label_w = 90.0;
    let bar_w = 260.0;
    let panel_w = label_w + bar_w + 90.0;
    let height = 40.0 + row_h * rows.len() as f64 + 10.0;
    let width = panel_w * 2.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (p, (title, value, unit)) in panels.iter().enumerate() {
        let x0 = panel_w * p as f64;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"22\" font-weight=\"bold\">{title}</text>",
            x0 + 10.0
        );
        let values: Vec<Option<f64>> = rows.iter().map(value).collect();
        let max = values.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
        for (i, (row, v)) in rows.iter().zip(&values).enumerate() {
            let y = 40.0 + row_h * i as f64;
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\">{}</text>",
                x0 + 10.0,
                y + 17.0,
                escape(&row.label)
            );
            match v {
                Some(v) => {
                    let w = if max > 0.0 { bar_w * v / max } else { 0.0 };
                    let _ = writeln!(
                        svg,
                        "<rect x=\"{}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" \
                         fill=\"#4a7ab5\"/>\n<text x=\"{}\" y=\"{}\">{}{unit}</text>",
                        x0 + label_w,
                        y + 4.0,
                        row_h - 8.0,
                        x0 + label_w + w + 5.0,
                        y + 17.0,
                        num(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        "<text x=\"{}\" y=\"{}\" fill=\"#888\">no result</text>",
                        x0 + label_w,
                        y + 17.0
                    );
                }
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Latency;

    fn ran(f: impl FnOnce(&mut Summary)) -> Option<Outcome> {
        let mut s = Summary::new("x", "127.0.0.1:1");
        f(&mut s);
        s.judge();
        Some(Outcome::Ran(Box::new(s)))
    }

    fn report() -> Report {
        let latency = Latency {
            count: 10,
            p50: 150.0,
            p99: 40_000.0,
            p999: 41_000.0,
            max: 45_000.0,
            mean: 900.0,
        };
        Report {
            config: Config::quick(Vec::new()),
            rows: vec![
                (
                    "step-02".into(),
                    [
                        ran(|s| s.deliveries_per_s = Some(400_000.0)),
                        ran(|s| s.latency_us = Some(latency)),
                        ran(|s| s.server_rss_per_connection_bytes = Some(11_000.0)),
                        ran(|s| {
                            s.lost = 7;
                            s.read_but_undelivered = Some(3);
                        }),
                        ran(|s| s.server_peak_rss_kib = Some(51_200)),
                    ],
                ),
                (
                    "step-<7>".into(),
                    [
                        Some(Outcome::Failed("no such file".into())),
                        None,
                        None,
                        None,
                        None,
                    ],
                ),
            ],
        }
    }

    /// The table has a row per server with its numbers, and marks and explains every run that
    /// failed a check or did not run.
    #[test]
    fn markdown_shows_numbers_and_failures() {
        let md = report().markdown();
        let row = md
            .lines()
            .find(|l| l.starts_with("| step-02 |"))
            .expect("a row for step-02");
        for want in [
            "400\u{202F}000",
            "0.15 ms",
            "40.0 ms",
            "11\u{202F}000 B",
            "7 (+3) ⚠",
            "50.0 MB",
        ] {
            assert!(row.contains(want), "`{want}` missing from {row}");
        }
        assert!(md.contains("step-02, shutdown: messages 7 lost"), "{md}");
        assert!(
            md.contains("step-<7>, fan-out: did not run: no such file"),
            "{md}"
        );
        assert!(
            md.contains("chat-load fan-out --clients 10 --messages 200"),
            "{md}"
        );
        assert_eq!(report().failures().len(), 2);
    }

    /// The chart draws one bar per measured value, says "no result" where there is none, and
    /// escapes labels.
    #[test]
    fn svg_draws_bars() {
        let svg = report().svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#4a7ab5\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("no result").count(), 2, "{svg}");
        assert!(svg.contains("step-&lt;7&gt;") && !svg.contains("step-<7>"));
    }
}
