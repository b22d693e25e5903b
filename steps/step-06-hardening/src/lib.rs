//! Step 06: the server of step 05, hardened. Every resource a client can make the server
//! spend has a limit: line length, name length, time to log in, the bytes of a client's lines
//! queued for others and not yet written (its credit), the time a client may stop reading,
//! open connections, and the time a graceful shutdown may take. Input that breaks the rules gets an
//! `error: ...` line and the connection is closed; nothing a client sends can take the server
//! down, slow down other clients, or keep the process alive.
//!
//! Read the modules in the order they are declared below: each uses only what the ones before
//! it define.

// The limits, with a default for every flag, and the `error: ...` line of each refusal.
mod config;

// What a line may hold: login names, message lines and their rules.
mod protocol;

// What the tasks send each other: events for the broker, queued lines, a reader's handover.
mod event;

// How each task runs: tracked, its error logged, stopped by its connection's `close` token.
mod tasks;

// A connection's reader: login, message lines paid for with credit, refusals.
mod reader;

// A connection's writer: batches within the stall timeout, then the farewell.
mod writer;

// The broker: logins, routing, slow peers, departures.
mod broker;

// The server: the accept loop, the connection limit, the shutdown and its grace period.
mod server;

pub use config::{
    Config, Error, GracePeriodExpired, MAX_DESTINATIONS, MAX_NAME_LEN, Result, line_cost,
};
pub use protocol::{Message, is_unsafe, parse_login, parse_message};
pub use server::{Server, run, run_with};
