//! The four scenarios. Each registers all its clients first, then starts the clock, and ends
//! with a [`Summary`]. An `Err` means the run could not take place (the server is unreachable,
//! too few open files); a run that took place but lost messages is `Ok` with `ok: false`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::check::{self, Inbox, Outcome, Plan};
use crate::net::{self, Conn};
use crate::summary::{Latency, Summary, round};
use crate::sys::{self, Probe, Sample};
use crate::traffic::{self, Got, Pace, Sent, Spec, Until};
use crate::wire::{self, Names};
use crate::{Error, traffic::histogram};

/// What every scenario needs.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server (a loopback address).
    pub addr: SocketAddr,
    /// The server process, to read its CPU time and memory and to signal it.
    pub probe: Option<Probe>,
    /// How long any single wait may take (a read, a write, a connect) before the run fails.
    pub stall: Duration,
    /// How many clients connect and log in at the same time.
    pub login_concurrency: usize,
    /// Print progress to stderr once a second.
    pub progress: bool,
}

impl Target {
    /// A target with default settings: 10 s stall limit, 64 logins at once, no progress.
    pub fn new(addr: SocketAddr) -> Target {
        Target {
            addr,
            probe: None,
            stall: Duration::from_secs(10),
            login_concurrency: 64,
            progress: false,
        }
    }

    fn sample(&self) -> Option<Sample> {
        self.probe.and_then(|p| p.sample().ok())
    }
}

/// Connects, logs in and registers clients `0..n`, `login_concurrency` at a time.
async fn login_all(target: &Target, names: &Names, n: u32) -> Result<Vec<Conn>, Error> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let ticker = target.progress.then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "[{:>6.1} s] {} of {n} clients registered",
                    started.elapsed().as_secs_f64(),
                    done.load(Ordering::Relaxed)
                );
            }
        })
    });
    let result = futures::stream::iter(0..n)
        .map(|i| {
            let done = done.clone();
            async move {
                let conn = net::login(target.addr, names, i, target.stall).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Error>(conn)
            }
        })
        .buffered(target.login_concurrency.max(1))
        .try_collect()
        .await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    result
}

fn server_use(summary: &mut Summary, before: Option<Sample>, after: Option<Sample>) {
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = a.cpu.saturating_sub(b.cpu);
        summary.server_cpu_s = Some(round(cpu.as_secs_f64()));
        if summary.deliveries > 0 {
            summary.server_cpu_ns_per_delivery =
                Some(round(cpu.as_nanos() as f64 / summary.deliveries as f64));
        }
        summary.server_rss_before_kib = Some(b.rss_kib);
        summary.server_rss_kib = Some(a.rss_kib);
        summary.server_peak_rss_kib = Some(a.hwm_kib);
    }
}

/// Folds what senders and receivers reported into the summary: counts, latency, errors. In a
/// shutdown, writes are expected to fail once the server stops, so senders' errors don't count.
fn collect(summary: &mut Summary, sent: &[Sent], got: &[Got], shutdown: bool) -> Vec<Inbox> {
    summary.sent = Some(sent.iter().map(|s| s.count).sum());
    let mut latency = histogram();
    for g in got {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = latency.add(&g.latency);
    }
    summary.latency_us = Latency::from_nanos(&latency);
    for error in sent
        .iter()
        .filter(|_| !shutdown)
        .filter_map(|s| s.error.as_ref())
        .chain(got.iter().filter_map(|g| g.error.as_ref()))
    {
        summary.fail(error.clone());
    }
    got.iter().map(|g| g.inbox.clone()).collect()
}

fn check_ring(clients: u32, recipients: u32) -> Result<(), Error> {
    if clients == 0 || recipients == 0 || recipients > clients {
        return Err(format!(
            "need 1 <= recipients <= clients, got {recipients} recipients for {clients} clients"
        )
        .into());
    }
    Ok(())
}

/// Logs in `clients` clients, then runs `messages` messages from each to the `recipients`
/// clients after it in a ring, at `pace`, until every one is delivered; fills in `summary` with
/// the run's shape, the checks, the deliveries per second and the server's use of CPU and
/// memory, and judges it.
async fn run_ring(
    target: &Target,
    mut summary: Summary,
    clients: u32,
    recipients: u32,
    messages: u64,
    pace: Pace,
) -> Result<Summary, Error> {
    let names = Names::fresh();
    let conns = login_all(target, &names, clients).await?;
    summary.clients = clients;
    summary.recipients = Some(recipients);
    summary.messages_per_client = Some(messages);
    let plan = Plan::ring(clients, recipients);
    let ticks_before = sys::cpu_ticks();
    let before = target.sample();
    let run = traffic::start(
        conns,
        plan.clone(),
        &names,
        Spec {
            messages: Some(messages),
            pace,
            until: Until::AllDelivered,
            stall: target.stall,
            progress: target.progress,
            record_offsets: false,
        },
    );
    let started = run.started;
    let (sent, got) = run.finish().await;
    let end = got.iter().filter_map(|g| g.last).max().unwrap_or(started);
    let after = target.sample();
    if let (Some(b), Some(a)) = (ticks_before, sys::cpu_ticks()) {
        summary.steal_percent = sys::steal_percent(b, a).map(round);
    }
    let inboxes = collect(&mut summary, &sent, &got, false);
    let tally = check::tally(&plan, &names, &inboxes, |s| sent[s as usize].count);
    summary.set_tally(&tally);
    let elapsed = end.duration_since(started).as_secs_f64();
    summary.elapsed_s = round(elapsed);
    if elapsed > 0.0 {
        summary.deliveries_per_s = Some(round(summary.deliveries as f64 / elapsed));
    }
    server_use(&mut summary, before, after);
    summary.judge();
    Ok(summary)
}

/// Fan-out: `clients` clients each send `messages` messages to the `recipients` clients after
/// them in a ring, as fast as the server takes them. Measures deliveries per second and the
/// server's CPU time per delivery.
pub async fn fan_out(
    target: &Target,
    clients: u32,
    messages: u64,
    recipients: u32,
) -> Result<Summary, Error> {
    check_ring(clients, recipients)?;
    let summary = Summary::new("fan-out", target.addr);
    run_ring(target, summary, clients, recipients, messages, Pace::Flat).await
}

/// Latency: `clients` clients send to `recipients` clients each, paced so that the server
/// delivers `rate` messages per second in total, for `duration`. Measures delivery latency.
pub async fn latency(
    target: &Target,
    clients: u32,
    recipients: u32,
    rate: f64,
    duration: Duration,
) -> Result<Summary, Error> {
    check_ring(clients, recipients)?;
    if rate.is_nan() || rate <= 0.0 {
        return Err(format!("the rate must be positive, got {rate}").into());
    }
    let per_sender = rate / f64::from(recipients) / f64::from(clients);
    let messages = (per_sender * duration.as_secs_f64()).round().max(1.0) as u64;
    let mut summary = Summary::new("latency", target.addr);
    summary.target_deliveries_per_s = Some(rate);
    let pace = Pace::PerSender(per_sender);
    run_ring(target, summary, clients, recipients, messages, pace).await
}

/// Connections: `clients` idle clients connect and register; then one message goes around a
/// ring of `sample` of them, one hop at a time. Measures the connect rate, the server's memory
/// per connection and the round-trip time with that many connections open.
pub async fn connections(target: &Target, clients: u32, sample: u32) -> Result<Summary, Error> {
    if clients == 0 {
        return Err("need at least one client".into());
    }
    let (soft, hard) = sys::raise_open_file_limit();
    // Each client is one descriptor here; leave room for the runtime and stdio.
    let needed = u64::from(clients) + 64;
    if needed > soft {
        return Err(format!(
            "{clients} clients need about {needed} open files, but this process may open {soft} \
             (hard limit {hard}); raise it with `ulimit -n` (as root: `ulimit -Hn`)"
        )
        .into());
    }
    let mut summary = Summary::new("connections", target.addr);
    summary.open_file_limit = Some(soft);
    if let Some(limit) = target.probe.and_then(|p| sys::open_file_limit_of(p.pid()))
        && limit < needed
    {
        summary.problems.push(format!(
            "the server may open only {limit} files, fewer than the {clients} connections asked for"
        ));
    }
    let names = Names::fresh();
    let before = target.sample();
    let overflows_before = sys::listen_overflows();
    let started = Instant::now();
    let mut conns = login_all(target, &names, clients).await?;
    let elapsed = started.elapsed().as_secs_f64();
    // Give the server a moment to settle, so RSS reflects idle connections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = target.sample();
    summary.clients = clients;
    summary.elapsed_s = round(elapsed);
    summary.connects_per_s = Some(round(f64::from(clients) / elapsed.max(1e-9)));
    let mut setup = histogram();
    for c in &conns {
        setup.saturating_record(c.setup.as_nanos() as u64);
    }
    // Reported in milliseconds: the histogram is in nanoseconds, `from_nanos` makes µs.
    summary.connect_ms = Latency::from_nanos(&setup).map(|l| Latency {
        p50: round(l.p50 / 1000.0),
        p99: round(l.p99 / 1000.0),
        p999: round(l.p999 / 1000.0),
        max: round(l.max / 1000.0),
        mean: round(l.mean / 1000.0),
        ..l
    });
    if let (Some(b), Some(a)) = (before, after) {
        summary.server_rss_before_kib = Some(b.rss_kib);
        summary.server_rss_kib = Some(a.rss_kib);
        summary.server_peak_rss_kib = Some(a.hwm_kib);
        let grown = a.rss_kib.saturating_sub(b.rss_kib) * 1024;
        summary.server_rss_per_connection_bytes = Some(round(grown as f64 / f64::from(clients)));
    }

    // The round trips: sampled client j sends one message to sampled client j + 1.
    let sample = sample.clamp(1, clients);
    summary.sample = Some(sample);
    let chosen: Vec<u32> = (0..sample)
        .map(|j| (u64::from(j) * u64::from(clients) / u64::from(sample)) as u32)
        .collect();
    let pairs: Vec<(u32, u32)> = (0..chosen.len())
        .map(|j| (chosen[j], chosen[(j + 1) % chosen.len()]))
        .collect();
    let plan = Plan::from_pairs(clients, pairs.iter().copied());
    let epoch = Instant::now();
    let mut inboxes: Vec<Inbox> = chosen.iter().map(|&c| Inbox::new(c)).collect();
    let mut round_trip = histogram();
    for (j, &(s, r)) in pairs.iter().enumerate() {
        let mut line = Vec::new();
        let sent_at = epoch.elapsed().as_nanos() as u64;
        wire::push_message(&mut line, &names.destinations(&[r]), s, 0, sent_at);
        let sender = &mut conns[s as usize];
        match tokio::time::timeout(target.stall, sender.writer.write_all(&line)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                summary.fail(format!("{}: writing failed: {e}", names.name(s)));
                break;
            }
            Err(_) => {
                summary.fail(format!("{}: the server took no data", names.name(s)));
                break;
            }
        }
        let receiver = &mut conns[r as usize];
        let inbox = &mut inboxes[(j + 1) % chosen.len()];
        match receiver.reader.next_line(target.stall).await {
            Ok(line) => {
                if let Outcome::Delivered { sent_at_ns } = inbox.receive(&plan, &names, line) {
                    let now = epoch.elapsed().as_nanos() as u64;
                    round_trip.saturating_record(now.saturating_sub(sent_at_ns).max(1));
                }
            }
            Err(end) => {
                summary.fail(format!(
                    "{}: waiting for the round-trip message from {}: {end}",
                    names.name(r),
                    names.name(s)
                ));
                break;
            }
        }
    }
    summary.round_trip_us = Latency::from_nanos(&round_trip);
    let tally = check::tally(&plan, &names, &inboxes, |_| 1);
    summary.set_tally(&tally);
    if let (Some(b), Some(a)) = (overflows_before, sys::listen_overflows()) {
        summary.listen_overflows = Some(a.saturating_sub(b));
    }
    summary.judge();
    Ok(summary)
}

/// How the shutdown scenario stops the server and learns that it exited.
pub struct Stopper {
    trigger: Box<dyn FnOnce() -> Result<(), Error> + Send>,
    exited: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stopper")
    }
}

impl Stopper {
    /// Sends SIGINT to the server process and watches `/proc` for its exit.
    pub fn signal(probe: Probe) -> Stopper {
        Stopper::new(move || probe.interrupt(), probe.wait_exit())
    }

    /// Any other way: `trigger` starts the shutdown, `exited` completes when the server is gone
    /// (tests use an in-process server's shutdown trigger and its task).
    pub fn new(
        trigger: impl FnOnce() -> Result<(), Error> + Send + 'static,
        exited: impl Future<Output = ()> + Send + 'static,
    ) -> Stopper {
        Stopper {
            trigger: Box::new(trigger),
            exited: Box::pin(exited),
        }
    }
}

/// Shutdown: `clients` clients keep sending to `recipients` clients each (paced at `rate`
/// deliveries per second in total, or as fast as possible with `None`); after `warmup` the
/// server is told to stop. Measures messages lost, time until the process exits and time until
/// every connection is closed.
///
/// A message is *accepted* when a later message of the same sender reached anyone: a reader
/// reads its connection in order, so the server had taken every earlier message. A graceful
/// server must deliver every accepted message to all its recipients before closing their
/// connections; any that is missing counts as `lost` and fails the run.
///
/// That rule cannot see messages the server read and then delivered to nobody (a process
/// killed by the signal loses exactly those), so the tool also counts what the server had
/// *read before the signal*: just before signalling it takes the bytes each client had written,
/// minus those still in the client's send queue and in the server's receive queue (both from
/// `/proc/net/tcp`); every message that ends within the rest had left the kernel for the server
/// process (a lower bound: the counters are read one after the other and each only grows).
/// Messages read before the signal, not accepted, and missing somewhere are reported as
/// `read_but_undelivered` without failing the run: a server may legitimately drop lines its
/// reader had buffered but not yet parsed when it stopped taking messages.
pub async fn shutdown(
    target: &Target,
    clients: u32,
    recipients: u32,
    rate: Option<f64>,
    warmup: Duration,
    stopper: Stopper,
    exit_limit: Duration,
) -> Result<Summary, Error> {
    check_ring(clients, recipients)?;
    let pace = match rate {
        Some(rate) if rate > 0.0 => {
            Pace::PerSender(rate / f64::from(recipients) / f64::from(clients))
        }
        _ => Pace::Flat,
    };
    let names = Names::fresh();
    let conns = login_all(target, &names, clients).await?;
    let mut summary = Summary::new("shutdown", target.addr);
    summary.clients = clients;
    summary.recipients = Some(recipients);
    summary.target_deliveries_per_s = rate;
    let plan = Plan::ring(clients, recipients);
    let run = traffic::start(
        conns,
        plan.clone(),
        &names,
        Spec {
            messages: None,
            pace,
            until: Until::Closed,
            stall: target.stall,
            progress: target.progress,
            record_offsets: true,
        },
    );
    let started = run.started;
    tokio::time::sleep(warmup).await;
    if run.delivered.load(Ordering::Relaxed) == 0 {
        summary.problems.push(
            "nothing was delivered before the shutdown began (counted in batches of 64)".into(),
        );
    }
    // What the server had certainly read, in bytes per client, just before the signal.
    let written = run.written();
    let queues = sys::tcp_queues();
    let read_bytes: Vec<Option<u64>> = written
        .iter()
        .zip(run.locals())
        .map(|(&w, &local)| {
            let (client_tx, _) = *queues.get(&(local, target.addr))?;
            let (_, server_rx) = *queues.get(&(target.addr, local))?;
            Some(w.saturating_sub(client_tx + server_rx))
        })
        .collect();
    let signalled = Instant::now();
    (stopper.trigger)()?;
    if target.progress {
        eprintln!(
            "[{:>6.1} s] shutdown triggered",
            started.elapsed().as_secs_f64()
        );
    }
    let exited = tokio::time::timeout(exit_limit, stopper.exited).await;
    match exited {
        Ok(()) => summary.exit_s = Some(round(signalled.elapsed().as_secs_f64())),
        Err(_) => summary.fail(format!(
            "the server was still running {exit_limit:?} after the shutdown began"
        )),
    }
    let (sent, got) = run.finish_when_closed(signalled + exit_limit).await;
    if got.iter().all(|g| g.closed.is_some()) {
        let last = got
            .iter()
            .filter_map(|g| g.closed)
            .max()
            .unwrap_or(signalled);
        summary.closed_s = Some(round(last.duration_since(signalled).as_secs_f64()));
    }
    let inboxes = collect(&mut summary, &sent, &got, true);
    // Accepted: followed by a delivered message of the same sender. These must all arrive.
    let accepted = check::accepted(&plan, &inboxes);
    summary.accepted = Some(accepted.iter().sum());
    let tally = check::tally(&plan, &names, &inboxes, |s| accepted[s as usize]);
    summary.set_tally(&tally);
    // Read before the signal: taken from the socket by the server process. Those missing beyond
    // the accepted ones are reported, not failed (see the function's documentation).
    let mut read = Vec::new();
    for (sent, bytes) in sent.iter().zip(&read_bytes) {
        match bytes {
            // Messages whose last byte lies within what the server had read.
            Some(bytes) => read.push(sent.offsets.partition_point(|&end| end <= *bytes) as u64),
            None => {
                summary.problems.push(
                    "a client's connection was missing from /proc/net/tcp before the signal".into(),
                );
                read.push(0);
            }
        }
    }
    summary.read_before_signal = Some(read.iter().sum());
    let either = check::tally(&plan, &names, &inboxes, |s| {
        accepted[s as usize].max(read[s as usize])
    });
    summary.read_but_undelivered = Some(either.lost - tally.lost);
    summary.elapsed_s = round(signalled.duration_since(started).as_secs_f64());
    summary.judge();
    Ok(summary)
}
