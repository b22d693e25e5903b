//! Step 07: the hardened server of step 06, made fast. Same protocol, same limits, same
//! graceful shutdown; what changes is the cost of each message. Accepted sockets send at once
//! (`TCP_NODELAY`); a reader hands the broker every complete line of one read in one event;
//! the broker appends each line as bytes straight into its recipients' queues; a writer sends
//! everything queued for its client in one write; and an idle connection holds small buffers
//! only. (The binary also listens with a deeper backlog: see `main.rs`.)
//!
//! The code, in the order a reader meets it: the limits and error lines (`config`), what a line
//! means (`protocol`) and how bytes become lines (`lines`); then the path of a message, from
//! the `reader` of its sender through the `broker` into each recipient's `outbox`, and out
//! through that recipient's `writer`; last the `server`, which accepts connections, starts those
//! tasks and shuts them down.

// Every limit, the error lines, `Result`.
mod config;
// The login name, message lines and their rules.
mod protocol;
// `take_lines`: a read's bytes into lines.
mod lines;
// One client's reader task, and the events it sends the broker.
mod reader;
// The broker task: names to peers, routing.
mod broker;
// A peer's queue of bytes, shared by the broker and the peer's writer.
mod outbox;
// One client's writer task.
mod writer;
// `run`, the accept loop, the connection limit, the shutdown.
mod server;

pub use config::{Config, Error, GracePeriodExpired, MAX_DESTINATIONS, MAX_NAME_LEN, Result};
pub use outbox::{append_message, batch_cost, queue_cost};
pub use protocol::{Message, is_unsafe, parse_login, parse_message};
pub use server::{Server, run, run_with};
