//! The chat-load binary against real in-process servers: each scenario run small must report
//! zero loss and the counts it promised, and a proxy that drops, duplicates, swaps or misroutes
//! lines between the server and its clients must make the run fail.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use chat_load::{Stopper, Summary, Target, scenario};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

/// How long one run of the tool may take in these tests; the runs are small.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs the chat-load binary with `args` and returns its output, failing the test if it runs
/// longer than [`RUN_LIMIT`].
async fn tool(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-load"));
    command.args(args).arg("--quiet").kill_on_drop(true);
    match tokio::time::timeout(RUN_LIMIT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("could not run chat-load: {e}"),
        Err(_) => panic!("chat-load {args:?} ran longer than {RUN_LIMIT:?}"),
    }
}

/// Runs the tool and parses the one-line JSON summary it prints on stdout.
async fn summary(args: &[&str]) -> (Summary, Output) {
    let output = tool(args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "chat-load should print exactly one line (the JSON summary) on stdout, got {stdout:?}; \
         stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Summary = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("the summary is not valid JSON ({e}): {}", lines[0]));
    (summary, output)
}

fn assert_clean(s: &Summary, output: &Output) {
    assert!(
        s.ok && output.status.success(),
        "the run should pass: {s:?}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        (s.lost, s.duplicated, s.reordered, s.misdelivered),
        (0, 0, 0, 0),
        "{s:?}"
    );
}

/// Fan-out against step 03 delivers every message to each of its recipients, and the summary
/// counts them all and measures the server (this test process) through /proc. Step 03 removes a
/// client whose reader sees EOF, so this also proves the tool keeps every connection open until
/// its last message has arrived.
#[tokio::test]
async fn fan_out_delivers_everything() {
    let server = testkit::start(step_03::run).await;
    let addr = server.addr().to_string();
    let pid = std::process::id().to_string();
    let (s, output) = summary(&[
        "fan-out",
        "--clients",
        "6",
        "--messages",
        "300",
        "--recipients",
        "3",
        "--addr",
        &addr,
        "--server-pid",
        &pid,
    ])
    .await;
    assert_clean(&s, &output);
    assert_eq!(s.scenario, "fan-out");
    assert_eq!(s.sent, Some(6 * 300));
    assert_eq!(s.deliveries, 6 * 300 * 3);
    assert!(s.deliveries_per_s.is_some_and(|r| r > 0.0), "{s:?}");
    assert_eq!(s.latency_us.map(|l| l.count), Some(s.deliveries));
    assert!(s.server_cpu_s.is_some() && s.server_peak_rss_kib.is_some_and(|k| k > 0));
    server.shutdown().await;
}

/// The latency scenario sends the paced number of messages, delivers them all, and reports
/// ordered percentiles over every delivery and the share of CPU time the host stole.
#[tokio::test]
async fn latency_reports_percentiles() {
    let server = testkit::start(step_03::run).await;
    let addr = server.addr().to_string();
    // 2 000 deliveries/s over 4 clients × 2 recipients for 1 s: 250 messages per client.
    let (s, output) = summary(&[
        "latency",
        "--clients",
        "4",
        "--recipients",
        "2",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--addr",
        &addr,
    ])
    .await;
    assert_clean(&s, &output);
    assert_eq!(s.messages_per_client, Some(250));
    assert_eq!(s.deliveries, 4 * 250 * 2);
    let l = s.latency_us.expect("a latency section");
    assert_eq!(l.count, s.deliveries);
    assert!(0.0 < l.p50 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
    // Paced, so the run takes about the asked duration rather than a burst's few milliseconds.
    assert!(s.elapsed_s > 0.8, "{s:?}");
    // How crowded the host was: a share, measured over the run (Linux has /proc/stat).
    assert!(
        s.steal_percent.is_some_and(|p| (0.0..=100.0).contains(&p)),
        "{s:?}"
    );
    server.shutdown().await;
}

/// The connections scenario keeps every client connected and registered, passes one message
/// around the sampled ring, and measures the server's memory.
#[tokio::test]
async fn connections_round_trip() {
    let server = testkit::start(step_02::run).await;
    let addr = server.addr().to_string();
    let pid = std::process::id().to_string();
    let (s, output) = summary(&[
        "connections",
        "--clients",
        "200",
        "--sample",
        "10",
        "--addr",
        &addr,
        "--server-pid",
        &pid,
    ])
    .await;
    assert_clean(&s, &output);
    assert_eq!((s.clients, s.sample, s.deliveries), (200, Some(10), 10));
    assert_eq!(s.round_trip_us.map(|l| l.count), Some(10));
    assert_eq!(s.connect_ms.map(|l| l.count), Some(200));
    assert!(s.connects_per_s.is_some_and(|r| r > 0.0));
    assert!(s.server_rss_per_connection_bytes.is_some());
    server.shutdown().await;
}

/// With no server listening the tool says it cannot connect and exits with status 2, without
/// a panic and without a summary.
#[tokio::test]
async fn unreachable_server_is_reported() {
    // A port that was just free: bind, read the port, close.
    let (listener, addr) = testkit::loopback_listener().await;
    drop(listener);
    let addr = addr.to_string();
    let output = tool(&["fan-out", "--addr", &addr]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cannot connect"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert!(output.stdout.is_empty());
}

/// The tool refuses to send traffic anywhere but loopback.
#[tokio::test]
async fn refuses_non_loopback_addresses() {
    // 192.0.2.0/24 is reserved for documentation: nothing is there, and nothing is sent.
    let output = tool(&["fan-out", "--addr", "192.0.2.1:8080"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("not a loopback address"),
        "stderr: {stderr}"
    );
}

/// What the faulty proxy does to the lines going from the server to a client, after the client's
/// registration line.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Drops the 50th line.
    Drop,
    /// Sends the 50th line twice.
    Duplicate,
    /// Sends the 51st line before the 50th.
    Swap,
    /// Relabels the 50th line as coming from the client itself.
    Misroute,
}

/// Starts a proxy in front of `server` that breaks the server-to-client stream of the first
/// client with `fault`, and returns its address.
async fn faulty_proxy(server: SocketAddr, fault: Fault) -> SocketAddr {
    let (listener, addr) = testkit::loopback_listener().await;
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let broken = std::mem::take(&mut first);
            tokio::spawn(relay(client, server, broken.then_some(fault)));
        }
    });
    addr
}

async fn relay(client: TcpStream, server: SocketAddr, fault: Option<Fault>) {
    let Ok(upstream) = TcpStream::connect(server).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = upstream.into_split();
    // Client to server: copied line by line, untouched. Remember the login name for Misroute.
    let (name_tx, name_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut from = FramedRead::new(client_read, LinesCodec::new());
        let mut to = FramedWrite::new(server_write, LinesCodec::new());
        let mut name_tx = Some(name_tx);
        while let Some(Ok(line)) = from.next().await {
            if let Some(tx) = name_tx.take() {
                let _ = tx.send(line.clone());
            }
            if to.send(line).await.is_err() {
                break;
            }
        }
    });
    let mut from = FramedRead::new(server_read, LinesCodec::new());
    let mut to = FramedWrite::new(client_write, LinesCodec::new());
    let name = name_rx.await.unwrap_or_default();
    let mut n = 0;
    let mut held = None;
    while let Some(Ok(line)) = from.next().await {
        n += 1;
        let out = match (fault, n) {
            (Some(Fault::Drop), 51) => vec![],
            (Some(Fault::Duplicate), 51) => vec![line.clone(), line],
            (Some(Fault::Swap), 51) => {
                held = Some(line);
                vec![]
            }
            (Some(Fault::Swap), 52) => vec![line, held.take().unwrap_or_default()],
            (Some(Fault::Misroute), 51) => {
                let text = line.split_once(": ").map(|(_, t)| t).unwrap_or_default();
                vec![format!("from {name}: {text}")]
            }
            _ => vec![line],
        };
        for line in out {
            if to.send(line).await.is_err() {
                return;
            }
        }
    }
}

/// Each kind of fault on the wire (a lost, duplicated, reordered or misdelivered line) makes the
/// run fail with status 1 and is counted under its own name.
#[tokio::test]
async fn detects_faults_on_the_wire() {
    let server = testkit::start(step_02::run).await;
    for fault in [Fault::Drop, Fault::Duplicate, Fault::Swap, Fault::Misroute] {
        let proxy = faulty_proxy(server.addr(), fault).await.to_string();
        let (s, output) = summary(&[
            "fan-out",
            "--clients",
            "3",
            "--messages",
            "100",
            "--recipients",
            "2",
            "--stall-timeout",
            "1",
            "--addr",
            &proxy,
        ])
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{fault:?}: {s:?}\nstderr: {stderr}"
        );
        assert!(!s.ok && s.failure.is_some(), "{fault:?}: {s:?}");
        assert!(stderr.contains("FAILED"), "{fault:?}: {stderr}");
        let counts = (s.lost, s.duplicated, s.reordered, s.misdelivered);
        let expected = match fault {
            Fault::Drop => (1, 0, 0, 0),
            Fault::Duplicate => (0, 1, 0, 0),
            Fault::Swap => (0, 0, 1, 0),
            // The relabelled message is misdelivered, and so missing from its real sender.
            Fault::Misroute => (1, 0, 0, 1),
        };
        assert_eq!(counts, expected, "{fault:?}: {s:?}");
    }
    server.shutdown().await;
}

/// Runs the shutdown scenario against an in-process server: the tool's trigger asks the server
/// to shut down (as SIGINT does to the binary) and the server's `run` returning counts as its
/// exit. Returns the summary and whether `run` returned `Ok` within 10 s.
///
/// In-process rather than the real binary because a test can only find the binaries of its own
/// package; the signal path (`Stopper::signal`, /proc polling) is the same code the `bench`
/// command runs against real binaries.
async fn shutdown_in_process<F, Fut, E>(run: F, exit_limit: Duration) -> (Summary, bool)
where
    F: FnOnce(TcpListener, testkit::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let mut server = testkit::start(run).await;
    let addr = server.addr();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(async move {
        // A dropped trigger means the scenario gave up before shutting down; stop anyway.
        let _ = go_rx.await;
        server.trigger_shutdown();
        // Fails (panics this task) unless `run` returns Ok within testkit's 10 s.
        server.finished().await;
        let _ = done.send(());
    });
    let stopper = Stopper::new(
        move || {
            go.send(())
                .map_err(|()| "the task holding the server is gone".into())
        },
        async move {
            let _ = done_rx.await;
        },
    );
    let mut target = Target::new(addr);
    target.stall = Duration::from_secs(5);
    let summary = scenario::shutdown(
        &target,
        6,
        3,
        Some(6_000.0),
        Duration::from_millis(300),
        stopper,
        exit_limit,
    )
    .await
    .expect("the shutdown scenario ran");
    let finished = matches!(
        tokio::time::timeout(Duration::from_secs(15), keeper).await,
        Ok(Ok(()))
    );
    (summary, finished)
}

fn assert_shutdown_clean(step: &str, s: &Summary, finished: bool) {
    assert!(
        finished,
        "{step}'s run did not return Ok after the shutdown"
    );
    assert!(s.ok, "{step}: {s:?}");
    assert_eq!(
        (s.lost, s.duplicated, s.reordered, s.misdelivered),
        (0, 0, 0, 0),
        "{step}"
    );
    let accepted = s.accepted.expect("an accepted count");
    assert!(
        accepted > 0,
        "{step}: nothing was accepted, so nothing was proved: {s:?}"
    );
    // Nothing lost: each recipient got exactly the accepted prefix of each of its 3 senders.
    assert_eq!(s.deliveries, accepted * 3, "{step}: {s:?}");
    assert!(s.exit_s.is_some() && s.closed_s.is_some(), "{step}: {s:?}");
    // The tool's clients answer the server's end with their own, so a server that closes in
    // order does not wait out its 2-second linger for them.
    let exit_s = s.exit_s.expect("checked above");
    assert!(
        exit_s < 1.5,
        "{step}: the server exited {exit_s} s after the signal: it waited for the tool's clients \
         to close their side"
    );
    assert!(
        s.read_before_signal.is_some() && s.read_but_undelivered.is_some(),
        "{step}: the TCP queues were not read: {s:?}"
    );
    let back: Summary = serde_json::from_str(&s.to_json()).expect("the summary's JSON");
    assert_eq!(back.accepted, s.accepted);
}

/// With clients writing when step 05 shuts down, every message the server accepted is
/// delivered before the connections close, the server finishes, and the summary says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_step_05_delivers_every_accepted_message() {
    let (s, finished) = shutdown_in_process(step_05::run, Duration::from_secs(10)).await;
    assert_shutdown_clean("step 05", &s, finished);
}

/// The same for step 04, the first step with a graceful shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_step_04_delivers_every_accepted_message() {
    let (s, finished) = shutdown_in_process(step_04::run, Duration::from_secs(10)).await;
    assert_shutdown_clean("step 04", &s, finished);
}

/// A server whose shutdown only stops accepting (step 02) leaves connections open: the shutdown
/// scenario fails and says so instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_when_connections_stay_open() {
    let (s, _) = shutdown_in_process(step_02::run, Duration::from_secs(2)).await;
    assert!(!s.ok, "{s:?}");
    let failure = s.failure.unwrap_or_default();
    assert!(failure.contains("still open"), "{failure}");
}

/// The benchmark starts the real step-05 binary once per scenario, measures it through its
/// PID (SIGINT for the shutdown scenario), and writes the table and chart. A test can only
/// find its own package's binaries, so this one builds step 05's with the same cargo first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_real_binary() {
    // target/<profile>/chat-load -> target/<profile>/step-05, built with this test's profile.
    let tool = std::path::Path::new(env!("CARGO_BIN_EXE_chat-load"));
    let profile_dir = tool.parent().expect("the binary is in a directory");
    let target_dir = profile_dir
        .parent()
        .expect("the profile is in the target directory");
    let mut build = tokio::process::Command::new(env!("CARGO"));
    build.args(["build", "-p", "step-05", "--target-dir"]);
    build.arg(target_dir).kill_on_drop(true);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let built = tokio::time::timeout(Duration::from_secs(300), build.status())
        .await
        .expect("building step-05 took over 5 minutes")
        .expect("running cargo");
    assert!(built.success(), "cargo build -p step-05 failed");
    let binary = profile_dir.join("step-05");

    let out = std::env::temp_dir().join(format!("chat-load-bench-{}", std::process::id()));
    let config = chat_load::bench::Config::quick(vec![chat_load::bench::Server {
        label: "step-05".into(),
        binary,
    }]);
    let report = tokio::time::timeout(RUN_LIMIT, chat_load::bench::run(&config))
        .await
        .expect("the quick benchmark finished in time");
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    report.write(&out).expect("writing the report");
    let md = std::fs::read_to_string(out.join("measurements.md")).expect("the table");
    let svg = std::fs::read_to_string(out.join("measurements.svg")).expect("the chart");
    let _ = std::fs::remove_dir_all(&out);
    let row = md
        .lines()
        .find(|l| l.starts_with("| step-05 |"))
        .unwrap_or_else(|| panic!("no row for step-05 in\n{md}"));
    // Every column has a value: nothing was skipped, nothing failed.
    assert!(!row.contains('–') && !row.contains("did not run"), "{row}");
    assert!(svg.contains("step-05") && svg.contains("<rect"), "{svg}");
}
