//! Step 07: the hardened server of step 06, made fast. Same protocol, same limits, same
//! graceful shutdown; what changes is the cost of each message. Accepted sockets send at once
//! (`TCP_NODELAY`); a reader hands the broker every complete line of one read in one event;
//! the broker appends each line as bytes straight into its recipients' queues; a writer sends
//! everything queued for its client in one write; and an idle connection holds small buffers
//! only. (The binary also listens with a deeper backlog: see `main.rs`.)
//!
//! Read the modules in the order they are declared below: each uses only what the ones before
//! it define. First the limits and error lines (`config`), what a line means (`protocol`), how
//! bytes become lines (`lines`) and a peer's queue of bytes (`outbox`); then what the tasks
//! send each other (`event`) and how they run (`tasks`); then the tasks themselves, the
//! `reader`, the `writer` and the `broker`; last the `server`, which accepts connections,
//! starts those tasks and shuts them down.

// Every limit, the error lines, `Result`.
mod config;
// The login name, message lines and their rules.
mod protocol;
// `take_lines`: a read's bytes into lines.
mod lines;
// A peer's queue of bytes, shared by the broker and the peer's writer.
mod outbox;
// What the tasks send each other: events for the broker, a reader's handover.
mod event;
// How each task runs: tracked, its error logged, stopped by its connection's `close` token.
mod tasks;
// One client's reader task.
mod reader;
// One client's writer task.
mod writer;
// The broker task: names to peers, routing.
mod broker;
// `run`, the accept loop, the connection limit, the shutdown.
mod server;

pub use config::{Config, Error, GracePeriodExpired, MAX_DESTINATIONS, MAX_NAME_LEN, Result};
pub use outbox::{append_message, batch_cost, queue_cost};
pub use protocol::{Message, is_unsafe, parse_login, parse_message};
pub use server::{Server, run, run_with};
