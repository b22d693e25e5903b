//! The one-line JSON summary every run ends with.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::check::Tally;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in nanoseconds; `None` if it is empty.
    pub fn from_nanos(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| round(ns as f64 / 1000.0);
        Some(Latency {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: round(h.mean() / 1000.0),
        })
    }
}

/// Rounds to three decimals, so the JSON stays readable.
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What a run measured and whether every delivery checked out. Fields a scenario does not
/// measure are left out of the JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// `fan-out`, `latency`, `connections` or `shutdown`.
    pub scenario: String,
    /// True when nothing was lost, duplicated, reordered or misdelivered and the scenario's own
    /// conditions held (every connection accepted, the server exited, ...).
    pub ok: bool,
    /// Why the run failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The server's address.
    pub addr: String,
    /// Clients connected and registered.
    pub clients: u32,
    /// Recipients of each message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<u32>,
    /// Messages each client was to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_client: Option<u64>,
    /// Messages written by all clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    /// Distinct messages delivered to the right client.
    pub deliveries: u64,
    /// Messages that should have arrived and did not.
    pub lost: u64,
    /// Extra copies received.
    pub duplicated: u64,
    /// Messages that arrived after a later one of the same sender.
    pub reordered: u64,
    /// Lines received by a client they were not meant for.
    pub misdelivered: u64,
    /// The first few problems, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Seconds from the first message sent to the last one delivered (the connections
    /// scenario: to the last client registered).
    pub elapsed_s: f64,
    /// Deliveries per second over `elapsed_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    /// The paced rate asked for (latency scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_deliveries_per_s: Option<f64>,
    /// Delivery latency: from just before the sender's write to the receiver parsing the line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    /// Server CPU time (user + system) used during the measured interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// Server CPU time per delivery, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// Server resident memory before the run, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_before_kib: Option<u64>,
    /// Server resident memory at the end of the measured interval, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_kib: Option<u64>,
    /// Server peak resident memory (VmHWM) at the end, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_kib: Option<u64>,
    /// The share of the machine's CPU time, in per cent, that the hypervisor gave to others
    /// during the run (`steal` in `/proc/stat`): a high value means the run measured a crowded
    /// host as much as the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steal_percent: Option<f64>,
    /// Connections scenario: connected and registered clients per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connects_per_s: Option<f64>,
    /// Connections scenario: time for one client to connect, log in and register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<Latency>,
    /// Connections scenario: (RSS after - RSS before) / clients, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_per_connection_bytes: Option<f64>,
    /// Connections scenario: how many clients the round trips went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u32>,
    /// Connections scenario: one message from a sampled client to the next, one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_us: Option<Latency>,
    /// Connections scenario: growth of the kernel's ListenOverflows counter (machine-wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_overflows: Option<u64>,
    /// Connections scenario: this tool's open-file limit after raising it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_file_limit: Option<u64>,
    /// Shutdown scenario: messages the server had certainly read when the signal was sent
    /// (from the TCP queues; see [`crate::scenario::shutdown`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_before_signal: Option<u64>,
    /// Shutdown scenario: messages the server certainly accepted, so must deliver: those
    /// followed by a delivered message of the same sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u64>,
    /// Shutdown scenario: deliveries missing for messages read before the signal that were
    /// not accepted (reported; does not fail the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_but_undelivered: Option<u64>,
    /// Shutdown scenario: seconds from SIGINT to the server process exiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_s: Option<f64>,
    /// Shutdown scenario: seconds from SIGINT to the last client connection closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_s: Option<f64>,
}

impl Summary {
    /// A summary for `scenario` against `addr`, not yet judged.
    pub fn new(scenario: &str, addr: impl ToString) -> Summary {
        Summary {
            scenario: scenario.to_string(),
            addr: addr.to_string(),
            ..Summary::default()
        }
    }

    /// Copies the checker's verdict in.
    pub fn set_tally(&mut self, t: &Tally) {
        self.deliveries = t.delivered;
        self.lost = t.lost;
        self.duplicated = t.duplicated;
        self.reordered = t.reordered;
        self.misdelivered = t.misdelivered;
        self.problems.extend(t.problems.iter().cloned());
    }

    /// Decides `ok`: no problem of delivery and no `failure` recorded. The first failure is
    /// kept; a delivery problem without one gets a sentence of its own.
    pub fn judge(&mut self) {
        if self.failure.is_none() {
            let mut wrong = Vec::new();
            for (n, what) in [
                (self.lost, "lost"),
                (self.duplicated, "duplicated"),
                (self.reordered, "reordered"),
                (self.misdelivered, "misdelivered"),
            ] {
                if n > 0 {
                    wrong.push(format!("{n} {what}"));
                }
            }
            if !wrong.is_empty() {
                self.failure = Some(format!("messages {}", wrong.join(", ")));
            }
        }
        self.ok = self.failure.is_none();
    }

    /// Records a failure unless one is already recorded.
    pub fn fail(&mut self, why: impl Into<String>) {
        if self.failure.is_none() {
            self.failure = Some(why.into());
        }
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and vectors always serializes.
        serde_json::to_string(self).expect("a summary serializes to JSON")
    }
}
