//! Step 04 over real loopback TCP, in-process: the chat of step 03, plus a graceful shutdown.
//! When shutdown is triggered, every message already read is delivered, every connection is
//! closed and `run` returns `Ok`. (`binary.rs` checks the same with Ctrl-C on the real binary.)

use testkit::{Binary, scenarios};

/// Each named, connected destination receives `from NAME: text`; nobody else does.
#[tokio::test]
async fn delivers_to_named_destination() {
    let server = testkit::start(step_04::run).await;
    scenarios::delivers_to_named_destination(server.addr()).await;
}

/// A message to several destinations reaches each of them once.
#[tokio::test]
async fn delivers_to_several_destinations() {
    let server = testkit::start(step_04::run).await;
    scenarios::delivers_to_several_destinations(server.addr()).await;
}

/// Whitespace around names and text is trimmed, and CRLF line endings work.
#[tokio::test]
async fn trims_whitespace() {
    let server = testkit::start(step_04::run).await;
    scenarios::trims_whitespace(server.addr()).await;
}

/// Only the first `:` separates destinations from the text.
#[tokio::test]
async fn keeps_colon_in_text() {
    let server = testkit::start(step_04::run).await;
    scenarios::keeps_colon_in_text(server.addr()).await;
}

/// A line without `:` is ignored and the sender stays connected.
#[tokio::test]
async fn ignores_lines_without_colon() {
    let server = testkit::start(step_04::run).await;
    scenarios::ignores_lines_without_colon(server.addr()).await;
}

/// Unknown destinations are skipped; known ones still receive the message.
#[tokio::test]
async fn skips_unknown_destinations() {
    let server = testkit::start(step_04::run).await;
    scenarios::skips_unknown_destinations(server.addr()).await;
}

/// Two senders' messages, 3 000 each, arrive in the order each sender wrote them.
#[tokio::test]
async fn keeps_per_sender_order() {
    let server = testkit::start(step_04::run).await;
    scenarios::keeps_per_sender_order(server.addr(), 3_000).await;
}

/// Fifty clients connected at once all chat.
#[tokio::test]
async fn serves_many_clients_at_once() {
    let server = testkit::start(step_04::run).await;
    scenarios::serves_many_clients_at_once(server.addr(), 50).await;
}

/// The real binary announces its address and delivers messages.
#[tokio::test]
async fn binary_serves_a_chat() {
    let server = Binary::start(env!("CARGO_BIN_EXE_step-04"), &[]).await;
    scenarios::delivers_to_named_destination(server.addr()).await;
}

/// A client that disconnects is removed and its name can be used again by a new connection,
/// which receives what is sent to it after it logged in.
#[tokio::test]
async fn name_reusable_after_disconnect() {
    let server = testkit::start(step_04::run).await;
    scenarios::name_reusable_after_disconnect(server.addr()).await;
}

/// A client that only closes its writing half is removed, and the server closes its socket.
#[tokio::test]
async fn half_closed_client_is_removed() {
    let server = testkit::start(step_04::run).await;
    scenarios::half_closed_client_is_removed(server.addr()).await;
}

/// A connection reset is handled like a disconnect: others keep chatting, the name is free.
#[tokio::test]
async fn survives_connection_reset() {
    let server = testkit::start(step_04::run).await;
    scenarios::survives_connection_reset(server.addr()).await;
}

/// On shutdown, idle logged-in clients see their connections closed, and `run` returns `Ok`.
#[tokio::test]
async fn shutdown_closes_idle_clients() {
    let mut server = testkit::start(step_04::run).await;
    scenarios::shutdown_closes_idle_clients(server.addr(), || server.trigger_shutdown()).await;
    server.finished().await;
}

/// A burst of 2 000 messages read before shutdown is delivered complete and in order before
/// the recipient's connection closes.
#[tokio::test]
async fn shutdown_delivers_accepted_burst() {
    let mut server = testkit::start(step_04::run).await;
    scenarios::shutdown_delivers_accepted_burst(server.addr(), || server.trigger_shutdown(), 2_000)
        .await;
    server.finished().await;
}

/// A recipient that keeps sending through the shutdown still gets the 2 000 messages read
/// for it before, complete and in order, then an end-of-file, not a reset.
#[tokio::test]
async fn shutdown_delivers_to_a_client_that_keeps_typing() {
    let mut server = testkit::start(step_04::run).await;
    scenarios::shutdown_delivers_to_a_client_that_keeps_typing(
        server.addr(),
        || server.trigger_shutdown(),
        2_000,
    )
    .await;
    server.finished().await;
}

/// With clients still writing when shutdown begins, readers stop reading, each recipient gets
/// a gap-free, in-order prefix from each sender, and every socket closes.
#[tokio::test]
async fn shutdown_while_clients_write() {
    let mut server = testkit::start(step_04::run).await;
    scenarios::shutdown_while_clients_write(server.addr(), || server.trigger_shutdown()).await;
    server.finished().await;
}

/// Clients that never sent their name, or sent half a line, do not hold up shutdown.
#[tokio::test]
async fn shutdown_not_held_by_silent_clients() {
    let mut server = testkit::start(step_04::run).await;
    scenarios::shutdown_not_held_by_silent_clients(server.addr(), || server.trigger_shutdown())
        .await;
    server.finished().await;
}

/// Messages read but not yet routed when shutdown begins reach every recipient, including one
/// whose queue was empty when its reader stopped.
#[tokio::test]
async fn shutdown_delivers_backlog_to_every_recipient() {
    let mut server = testkit::start(step_04::run).await;
    scenarios::shutdown_delivers_backlog_to_every_recipient(server.addr(), || {
        server.trigger_shutdown()
    })
    .await;
    server.finished().await;
}

/// Limitation named in the chapter (fixed in step 06): a login refused because the name is
/// taken still has its lines routed under that name.
#[tokio::test]
async fn refused_login_still_sends_as_taken_name() {
    let server = testkit::start(step_04::run).await;
    scenarios::refused_login_still_sends_as_taken_name(server.addr()).await;
}
