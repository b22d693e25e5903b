//! chat-load: a load generator and checker for a-chat servers.
//!
//! Every message carries its sender, its number and its send time, so each receiver checks that
//! every (sender, receiver) pair arrives complete, once and in order ([`check`]). Four scenarios
//! ([`scenario`]) measure throughput, latency, idle connections and a graceful shutdown; each
//! ends with a one-line JSON [`Summary`]. [`bench`] runs them against several server binaries
//! and writes a Markdown table and an SVG chart.

pub mod bench;
pub mod check;
pub mod net;
pub mod scenario;
pub mod summary;
pub mod sys;
pub mod traffic;
pub mod wire;

pub use scenario::{Stopper, Target};
pub use summary::Summary;

/// Any error, boxed: the tool reports errors, it does not match on them.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
