//! The traffic engine shared by the fan-out, latency and shutdown scenarios: one sender task and
//! one receiver task per registered client, a progress line, and the collected results.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::check::{Inbox, Outcome, Plan};
use crate::net::{Conn, LineReader, ReadEnd};
use crate::wire::{self, Names};

/// How many messages an unpaced sender puts into one write.
const BATCH: u64 = 64;
/// After the run's deadline, how long a receiver waits for more lines before giving up: what
/// was in flight arrives, so the loss count stays exact even for a run that failed.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// How many deliveries a busy receiver counts before adding them to the shared counter.
const FLUSH_EVERY: u64 = 64;

/// How senders pace themselves.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the server takes the bytes, several messages per write.
    Flat,
    /// One message per write, this many per second per sender, evenly spread over the senders.
    PerSender(f64),
}

/// When receivers stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Once every message sent to them has arrived (known when the senders are done).
    AllDelivered,
    /// When the server closes the connection (a shutdown).
    Closed,
}

/// What one sender did.
#[derive(Debug)]
pub struct Sent {
    /// Messages fully written.
    pub count: u64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
    /// The connection's writing half, kept open until the run is over: dropping it would
    /// half-close the connection, and a server rightly removes a client whose reader saw EOF,
    /// together with the messages still queued for it.
    pub writer: Option<OwnedWriteHalf>,
    /// With [`Spec::record_offsets`]: the byte offset in the connection just past message `n`,
    /// for every message put into a write (written or not).
    pub offsets: Vec<u64>,
}

/// What one receiver got.
#[derive(Debug)]
pub struct Got {
    /// The checked messages.
    pub inbox: Inbox,
    /// Delivery latencies in nanoseconds.
    pub latency: Histogram<u64>,
    /// When the last message arrived.
    pub last: Option<Instant>,
    /// When the server closed the connection ([`Until::Closed`]).
    pub closed: Option<Instant>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// Traffic in flight.
pub struct Running {
    /// When the senders started: the clock of the run.
    pub started: Instant,
    /// Deliveries so far (for progress; updated in batches).
    pub delivered: Arc<AtomicU64>,
    senders: Vec<JoinHandle<Sent>>,
    receivers: Vec<JoinHandle<Got>>,
    expected: watch::Sender<Option<Arc<Vec<u64>>>>,
    /// Cancelled to stop every sender (and the progress line).
    pub stop: CancellationToken,
    /// Cancelled to stop every receiver too: the run is over, whatever is still arriving.
    abort: CancellationToken,
    plan: Arc<Plan>,
    written: Vec<Arc<AtomicU64>>,
    locals: Vec<SocketAddr>,
}

/// A fresh latency histogram: 1 ns to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the crate's rules (low >= 1, high >= 2 * low).
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// How traffic runs.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Messages per sender; `None`: until stopped.
    pub messages: Option<u64>,
    /// How senders pace themselves.
    pub pace: Pace,
    /// When receivers stop.
    pub until: Until,
    /// The longest any single read or write may wait.
    pub stall: Duration,
    /// Print progress once a second.
    pub progress: bool,
    /// Keep, per sender, where each message ends in the connection's byte stream (the
    /// shutdown scenario turns "bytes the server read" into "messages the server read").
    pub record_offsets: bool,
}

/// Starts traffic over registered connections: client `i` sends `spec.messages` (or until
/// stopped) to `plan.recipients(i)`.
pub fn start(conns: Vec<Conn>, plan: Plan, names: &Names, spec: Spec) -> Running {
    let Spec {
        messages,
        pace,
        until,
        stall,
        progress,
        record_offsets,
    } = spec;
    let plan = Arc::new(plan);
    let names = Arc::new(names.clone());
    let epoch = Instant::now();
    let (expected, expected_rx) = watch::channel(None);
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let clients = conns.len() as u32;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut writers = Vec::new();
    let mut written = Vec::new();
    let mut locals = Vec::new();
    for conn in conns {
        // Each client's sender stops when its receiver sees the connection close.
        let closed = stop.child_token();
        // Cancelled only when the server closed the connection (not at the run's deadline).
        let server_closed = CancellationToken::new();
        receivers.push(tokio::spawn(receive(
            conn.reader,
            conn.index,
            plan.clone(),
            names.clone(),
            expected_rx.clone(),
            until,
            stall,
            epoch,
            delivered.clone(),
            closed.clone(),
            server_closed.clone(),
            abort.clone(),
        )));
        let bytes = Arc::new(AtomicU64::new(conn.written));
        written.push(bytes.clone());
        locals.push(conn.local);
        writers.push((conn.index, conn.writer, closed, server_closed, bytes));
    }
    let started = Instant::now();
    for (index, writer, closed, server_closed, bytes) in writers {
        let destinations = names.destinations(plan.recipients(index));
        let pace = match pace {
            Pace::Flat => Pacing::Flat,
            Pace::PerSender(rate) => {
                let interval = Duration::from_secs_f64(1.0 / rate);
                // Spread the senders over one interval so the total rate is smooth.
                let offset = interval.mul_f64(f64::from(index) / f64::from(clients));
                Pacing::Every {
                    first: started + offset,
                    interval,
                }
            }
        };
        let job = SendJob {
            me: index,
            destinations,
            messages,
            pace,
            stop: closed,
            server_closed,
            epoch,
            stall,
            offsets: record_offsets.then(Vec::new),
            bytes,
        };
        senders.push(tokio::spawn(send(writer, job)));
    }
    if progress {
        tokio::spawn(show_progress(started, delivered.clone(), stop.clone()));
    }
    Running {
        started,
        delivered,
        senders,
        receivers,
        expected,
        stop,
        abort,
        plan,
        written,
        locals,
    }
}

impl Running {
    /// Bytes each client has fully written so far (login included).
    pub fn written(&self) -> Vec<u64> {
        self.written
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    /// Each client's local address.
    pub fn locals(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Waits for every sender, tells each receiver how many messages to expect, and waits for
    /// the receivers.
    pub async fn finish(self) -> (Vec<Sent>, Vec<Got>) {
        let mut sent = Vec::new();
        for task in self.senders {
            sent.push(task.await.unwrap_or_else(|e| Sent {
                count: 0,
                error: Some(format!("a sender task failed: {e}")),
                writer: None,
                offsets: Vec::new(),
            }));
        }
        let n = self.plan.clients();
        let expected: Vec<u64> = (0..n)
            .map(|r| {
                self.plan
                    .senders(r)
                    .iter()
                    .map(|&s| sent[s as usize].count)
                    .sum()
            })
            .collect();
        // Receivers may all have finished already (each holds a receiver of this channel
        // until then), in which case nobody needs the numbers.
        let _ = self.expected.send(Some(Arc::new(expected)));
        let got = join_receivers(self.receivers).await;
        self.stop.cancel();
        (sent, got)
    }

    /// For a shutdown: waits for every receiver to see its connection close, then stops the
    /// senders that are still writing and collects them. At `deadline` the senders stop and
    /// receivers still open read what is in flight until it goes quiet, then end with an error.
    pub async fn finish_when_closed(self, deadline: Instant) -> (Vec<Sent>, Vec<Got>) {
        let abort = self.abort.clone();
        let stop = self.stop.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            stop.cancel();
            abort.cancel();
        });
        let got = join_receivers(self.receivers).await;
        timer.abort();
        self.stop.cancel();
        let mut sent = Vec::new();
        for task in self.senders {
            sent.push(task.await.unwrap_or_else(|e| Sent {
                count: 0,
                error: Some(format!("a sender task failed: {e}")),
                writer: None,
                offsets: Vec::new(),
            }));
        }
        (sent, got)
    }
}

async fn join_receivers(receivers: Vec<JoinHandle<Got>>) -> Vec<Got> {
    let mut got = Vec::new();
    for (i, task) in receivers.into_iter().enumerate() {
        got.push(task.await.unwrap_or_else(|e| Got {
            inbox: Inbox::new(i as u32),
            latency: histogram(),
            last: None,
            closed: None,
            error: Some(format!("a receiver task failed: {e}")),
        }));
    }
    got
}

enum Pacing {
    Flat,
    Every { first: Instant, interval: Duration },
}

/// Everything one sender needs.
struct SendJob {
    me: u32,
    destinations: Vec<u8>,
    messages: Option<u64>,
    pace: Pacing,
    stop: CancellationToken,
    /// Cancelled when the server closed this client's connection.
    server_closed: CancellationToken,
    epoch: Instant,
    stall: Duration,
    offsets: Option<Vec<u64>>,
    /// Bytes fully written on this connection, shared with the shutdown scenario.
    bytes: Arc<AtomicU64>,
}

async fn send(mut writer: OwnedWriteHalf, mut job: SendJob) -> Sent {
    let (count, error) = send_all(&mut writer, &mut job).await;
    // The server closed the connection: answer with our own end (FIN), as a well-behaved
    // client does. A server that closes in order reads until it sees it, and would otherwise
    // wait out its linger. (Not at the run's deadline: a connection the server left open must
    // stay open, so that the scenario can say so.)
    if job.server_closed.is_cancelled() {
        let _ = tokio::time::timeout(job.stall, writer.shutdown()).await;
    }
    Sent {
        count,
        error,
        writer: Some(writer),
        offsets: job.offsets.unwrap_or_default(),
    }
}

/// Writes the messages; returns how many were fully written and why it stopped early.
async fn send_all(writer: &mut OwnedWriteHalf, job: &mut SendJob) -> (u64, Option<String>) {
    let SendJob {
        me,
        ref destinations,
        messages,
        ref pace,
        ref stop,
        epoch,
        stall,
        ref mut offsets,
        ref bytes,
        ..
    } = *job;
    let mut seq = 0;
    let mut total = bytes.load(Ordering::Relaxed);
    let mut buf = Vec::with_capacity(BATCH as usize * (destinations.len() + 40));
    let limit = messages.unwrap_or(u64::MAX);
    while seq < limit {
        let batch_end = match *pace {
            Pacing::Flat => (seq + BATCH).min(limit),
            Pacing::Every { first, interval } => {
                let due = first + interval.mul_f64(seq as f64);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(due.into()) => {}
                }
                seq + 1
            }
        };
        buf.clear();
        let now = epoch.elapsed().as_nanos() as u64;
        for n in seq..batch_end {
            wire::push_message(&mut buf, destinations, me, n, now);
            if let Some(offsets) = offsets.as_mut() {
                offsets.push(total + buf.len() as u64);
            }
        }
        // `write_all` is not cancel safe, but a cancelled sender never writes again.
        let written = tokio::select! {
            () = stop.cancelled() => break,
            r = tokio::time::timeout(stall, writer.write_all(&buf)) => r,
        };
        match written {
            Ok(Ok(())) => {
                seq = batch_end;
                total += buf.len() as u64;
                bytes.store(total, Ordering::Release);
                // An unpaced sender whose writes never wait would otherwise keep its thread
                // for as long as tokio's budget lets it (128 writes, about 8 000 messages)
                // while this tool's receivers wait: the server would see readers fall behind
                // and, rightly, drop them as too slow. One batch per turn keeps senders and
                // receivers taking turns.
                if matches!(pace, Pacing::Flat) {
                    tokio::task::yield_now().await;
                }
            }
            Ok(Err(e)) => {
                return (seq, Some(format!("client {me}: writing failed: {e}")));
            }
            Err(_) => {
                let why = format!(
                    "client {me}: the server took none of {} bytes for {stall:?}",
                    buf.len()
                );
                return (seq, Some(why));
            }
        }
    }
    (seq, None)
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    mut reader: LineReader,
    me: u32,
    plan: Arc<Plan>,
    names: Arc<Names>,
    mut expected: watch::Receiver<Option<Arc<Vec<u64>>>>,
    until: Until,
    stall: Duration,
    epoch: Instant,
    delivered: Arc<AtomicU64>,
    closed: CancellationToken,
    server_closed: CancellationToken,
    abort: CancellationToken,
) -> Got {
    let mut inbox = Inbox::new(me);
    let mut latency = histogram();
    let mut last = None;
    let mut unflushed = 0;
    let mut want: Option<u64> = None;
    let mut draining = false;
    let result = loop {
        if until == Until::AllDelivered && want.is_none() {
            want = expected.borrow().as_ref().map(|e| e[me as usize]);
        }
        if want.is_some_and(|w| inbox.distinct() >= w) {
            break Ok(());
        }
        // Lines already in the buffer first: the `select!` below, with its timer and its
        // waits on the token and the channel, costs more than checking one line, and is paid
        // only when the buffer runs dry.
        let read = if let Some(line) = reader.buffered_line() {
            Ok(line)
        } else {
            tokio::select! {
            changed = expected.changed(), if until == Until::AllDelivered && want.is_none() => {
                if changed.is_err() {
                    break Err("the run ended before the expected counts were known".to_string());
                }
                continue;
            }
            () = abort.cancelled(), if !draining => {
                draining = true;
                continue;
            }
            read = reader.next_line(if draining { DRAIN_QUIET.min(stall) } else { stall }) => read,
            }
        };
        match read {
            Ok(line) => {
                if let Outcome::Delivered { sent_at_ns } = inbox.receive(&plan, &names, line) {
                    let arrived = reader.read_at();
                    let now = arrived.duration_since(epoch).as_nanos() as u64;
                    latency.saturating_record(now.saturating_sub(sent_at_ns).max(1));
                    last = Some(arrived);
                    unflushed += 1;
                    // Flush in batches under load, and before waiting on an empty socket.
                    if unflushed == FLUSH_EVERY || !reader.has_buffered() {
                        delivered.fetch_add(unflushed, Ordering::Relaxed);
                        unflushed = 0;
                    }
                }
            }
            Err(ReadEnd::Eof | ReadEnd::Failed(_)) if until == Until::Closed => break Ok(()),
            Err(ReadEnd::TimedOut) if draining => {
                break Err(format!(
                    "{}: the connection was still open when the run's deadline passed",
                    names.name(me)
                ));
            }
            Err(end) => {
                break Err(format!(
                    "{}: {end} (had {} messages{})",
                    names.name(me),
                    inbox.distinct(),
                    want.map(|w| format!(" of {w}")).unwrap_or_default()
                ));
            }
        }
    };
    delivered.fetch_add(unflushed, Ordering::Relaxed);
    let closed_at = (until == Until::Closed && result.is_ok()).then(Instant::now);
    // Before `closed`: the sender, woken by it, looks at this one.
    if closed_at.is_some() {
        server_closed.cancel();
    }
    // Whatever ended this receiver, its sender has no reason to keep writing.
    closed.cancel();
    Got {
        inbox,
        latency,
        last,
        closed: closed_at,
        error: result.err(),
    }
}

async fn show_progress(started: Instant, delivered: Arc<AtomicU64>, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(
        (started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut before = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = delivered.load(Ordering::Relaxed);
        eprintln!(
            "[{:>6.1} s] {now} deliveries, {} in the last second",
            started.elapsed().as_secs_f64(),
            now - before
        );
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unpaced sender gives other tasks a turn after every batch it writes, rather than
    /// writing for as long as tokio's budget allows while this tool's receivers wait.
    #[tokio::test(flavor = "current_thread")]
    async fn an_unpaced_sender_takes_turns() {
        // The server end is kept open and unread: 20 batches of short lines (about 30 KB) fit
        // in the buffers.
        let (client, _server) = testkit::connected_pair().await;
        let (_reader, writer) = client.into_split();
        let batches = 20;
        let job = SendJob {
            me: 0,
            destinations: b"c1: ".to_vec(),
            messages: Some(batches * BATCH),
            pace: Pacing::Flat,
            stop: CancellationToken::new(),
            server_closed: CancellationToken::new(),
            epoch: Instant::now(),
            stall: Duration::from_secs(5),
            offsets: None,
            bytes: Arc::new(AtomicU64::new(0)),
        };
        // Stands in for a receiver: counts the turns it gets while the sender runs.
        let turns = Arc::new(AtomicU64::new(0));
        let done = CancellationToken::new();
        let other = tokio::spawn({
            let (turns, done) = (turns.clone(), done.clone());
            async move {
                while !done.is_cancelled() {
                    turns.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let sent = tokio::time::timeout(Duration::from_secs(5), tokio::spawn(send(writer, job)))
            .await
            .expect("the socket buffers take every batch")
            .expect("the sender does not panic");
        done.cancel();
        other.await.expect("the stand-in does not panic");
        assert_eq!((sent.count, sent.error), (batches * BATCH, None));
        let turns = turns.load(Ordering::Relaxed);
        assert!(
            turns >= batches - 1,
            "the other task ran {turns} times while the sender wrote {batches} batches"
        );
    }
}
