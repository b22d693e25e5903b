//! Step 07 over real loopback TCP, in-process: step 06's tests, unchanged but for the peer
//! queue's limit (now in bytes), because the fast server keeps every guarantee of the hardened
//! one. Every claim of step 05 still holds (the
//! chat, disconnections, the graceful shutdown), and every limit answers a client that breaks
//! it with its error line, closes it, and leaves the others alone. (`binary.rs` checks
//! signals, flags, exit codes and the listen backlog on the real binary; `timing.rs` the rules
//! that depend on time, with a paused clock.)

use std::time::Duration;

use step_07::Config;
use testkit::{Binary, Server, scenarios};

/// Starts `run_with(.., config)` on a loopback port.
async fn start(config: Config) -> Server {
    testkit::start(move |listener, shutdown| step_07::run_with(listener, shutdown, config)).await
}

/// Credit and patience enough for the shutdown scenarios, whose recipients read nothing until the
/// signal while thousands of lines are sent to them: those scenarios are about delivering
/// what was read, not about slow consumers (which `drops_slow_consumer` covers).
fn roomy() -> Config {
    Config {
        sender_budget: u32::MAX as usize,
        stall_timeout: Duration::from_secs(3600),
        ..Config::default()
    }
}

/// Each named, connected destination receives `from NAME: text`; nobody else does.
#[tokio::test]
async fn delivers_to_named_destination() {
    let server = testkit::start(step_07::run).await;
    scenarios::delivers_to_named_destination(server.addr()).await;
}

/// A message to several destinations reaches each of them once.
#[tokio::test]
async fn delivers_to_several_destinations() {
    let server = testkit::start(step_07::run).await;
    scenarios::delivers_to_several_destinations(server.addr()).await;
}

/// Whitespace around names and text is trimmed, and CRLF line endings work.
#[tokio::test]
async fn trims_whitespace() {
    let server = testkit::start(step_07::run).await;
    scenarios::trims_whitespace(server.addr()).await;
}

/// Only the first `:` separates destinations from the text.
#[tokio::test]
async fn keeps_colon_in_text() {
    let server = testkit::start(step_07::run).await;
    scenarios::keeps_colon_in_text(server.addr()).await;
}

/// A line without `:` is ignored and the sender stays connected.
#[tokio::test]
async fn ignores_lines_without_colon() {
    let server = testkit::start(step_07::run).await;
    scenarios::ignores_lines_without_colon(server.addr()).await;
}

/// Unknown destinations are skipped; known ones still receive the message.
#[tokio::test]
async fn skips_unknown_destinations() {
    let server = testkit::start(step_07::run).await;
    scenarios::skips_unknown_destinations(server.addr()).await;
}

/// Two senders' messages, 3 000 each, arrive in the order each sender wrote them.
#[tokio::test]
async fn keeps_per_sender_order() {
    let server = testkit::start(step_07::run).await;
    scenarios::keeps_per_sender_order(server.addr(), 3_000).await;
}

/// Fifty clients connected at once all chat.
#[tokio::test]
async fn serves_many_clients_at_once() {
    let server = testkit::start(step_07::run).await;
    scenarios::serves_many_clients_at_once(server.addr(), 50).await;
}

/// The real binary announces its address and delivers messages.
#[tokio::test]
async fn binary_serves_a_chat() {
    let server = Binary::start(env!("CARGO_BIN_EXE_step-07"), &[]).await;
    scenarios::delivers_to_named_destination(server.addr()).await;
}

/// A client that disconnects is removed and its name can be used again by a new connection,
/// which receives what is sent to it after it logged in.
#[tokio::test]
async fn name_reusable_after_disconnect() {
    let server = testkit::start(step_07::run).await;
    scenarios::name_reusable_after_disconnect(server.addr()).await;
}

/// A client that only closes its writing half is removed, and the server closes its socket.
#[tokio::test]
async fn half_closed_client_is_removed() {
    let server = testkit::start(step_07::run).await;
    scenarios::half_closed_client_is_removed(server.addr()).await;
}

/// A connection reset is handled like a disconnect: others keep chatting, the name is free.
#[tokio::test]
async fn survives_connection_reset() {
    let server = testkit::start(step_07::run).await;
    scenarios::survives_connection_reset(server.addr()).await;
}

/// On shutdown, idle logged-in clients see their connections closed, and `run` returns `Ok`.
#[tokio::test]
async fn shutdown_closes_idle_clients() {
    let mut server = testkit::start(step_07::run).await;
    scenarios::shutdown_closes_idle_clients(server.addr(), || server.trigger_shutdown()).await;
    server.finished().await;
}

/// A burst of 2 000 messages read before shutdown is delivered complete and in order before
/// the recipient's connection closes.
#[tokio::test]
async fn shutdown_delivers_accepted_burst() {
    let mut server = start(roomy()).await;
    scenarios::shutdown_delivers_accepted_burst(server.addr(), || server.trigger_shutdown(), 2_000)
        .await;
    server.finished().await;
}

/// A recipient that keeps sending through the shutdown still gets the 2 000 messages read
/// for it before, complete and in order, then an end-of-file, not a reset.
#[tokio::test]
async fn shutdown_delivers_to_a_client_that_keeps_typing() {
    let mut server = start(roomy()).await;
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
    let mut server = start(roomy()).await;
    scenarios::shutdown_while_clients_write(server.addr(), || server.trigger_shutdown()).await;
    server.finished().await;
}

/// Clients that never sent their name, or sent half a line, do not hold up shutdown.
#[tokio::test]
async fn shutdown_not_held_by_silent_clients() {
    let mut server = testkit::start(step_07::run).await;
    scenarios::shutdown_not_held_by_silent_clients(server.addr(), || server.trigger_shutdown())
        .await;
    server.finished().await;
}

/// Messages read but not yet routed when shutdown begins reach every recipient, including one
/// whose queue was empty when its reader stopped.
#[tokio::test]
async fn shutdown_delivers_backlog_to_every_recipient() {
    let mut server = start(roomy()).await;
    scenarios::shutdown_delivers_backlog_to_every_recipient(server.addr(), || {
        server.trigger_shutdown()
    })
    .await;
    server.finished().await;
}

/// A login line longer than 4 KiB gets `error: line too long` and the connection is closed.
#[tokio::test]
async fn refuses_long_login_line() {
    let server = testkit::start(step_07::run).await;
    scenarios::refuses_long_login_line(server.addr(), Config::default().max_line_len).await;
}

/// A 4 KiB message line is delivered; one byte more gets `error: line too long`, after what
/// was already queued for the sender, and the connection is closed.
#[tokio::test]
async fn refuses_long_message_line() {
    let server = testkit::start(step_07::run).await;
    scenarios::refuses_long_message_line(server.addr(), Config::default().max_line_len).await;
}

/// `--max-line-len` is the limit that applies: 100 bytes pass, 101 do not.
#[tokio::test]
async fn line_limit_is_configurable() {
    let server = start(Config {
        max_line_len: 100,
        ..Config::default()
    })
    .await;
    scenarios::refuses_long_message_line(server.addr(), 100).await;
}

/// A client that goes on sending after a bad line gets every line read before it, its own
/// copies included, then the `error:` line, then an end-of-file, not a reset. On two worker
/// threads, so that the writer can run while the broker is still routing those lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_comes_after_accepted_lines() {
    let server = testkit::start(step_07::run).await;
    scenarios::refusal_comes_after_accepted_lines(server.addr(), Config::default().max_line_len)
        .await;
}

/// Invalid UTF-8 gets `error: invalid UTF-8` and a close; other clients keep chatting.
#[tokio::test]
async fn refuses_invalid_utf8() {
    let server = testkit::start(step_07::run).await;
    scenarios::refuses_invalid_utf8(server.addr()).await;
}

/// Empty, blank, too long names and names with `,` `:` or control characters are refused.
#[tokio::test]
async fn refuses_invalid_names() {
    let server = testkit::start(step_07::run).await;
    scenarios::refuses_invalid_names(server.addr()).await;
}

/// A second `bob` gets `error: name taken`, is closed, and never sends a line as `bob`.
#[tokio::test]
async fn refuses_taken_name() {
    let server = testkit::start(step_07::run).await;
    scenarios::refuses_taken_name(server.addr()).await;
}

/// A client that sends no name within the login timeout is told so and closed.
#[tokio::test]
async fn closes_silent_login() {
    let server = start(Config {
        login_timeout: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    scenarios::closes_silent_login(server.addr()).await;
}

/// A client that never reads is dropped once writes to it have made no progress for the stall
/// timeout, while two others keep chatting and the flooder waits; its name is free again
/// afterwards.
#[tokio::test]
async fn drops_slow_consumer() {
    let stall_timeout = Duration::from_secs(1);
    let server = start(Config {
        stall_timeout,
        ..Config::default()
    })
    .await;
    scenarios::drops_slow_consumer(server.addr(), 5_000, 4_000, stall_timeout).await;
}

/// Beyond the connection limit a client gets `error: server full`; a slot frees when a
/// client leaves.
#[tokio::test]
async fn refuses_beyond_connection_limit() {
    let server = start(Config {
        max_connections: 5,
        ..Config::default()
    })
    .await;
    scenarios::refuses_beyond_connection_limit(server.addr(), 5).await;
}

/// At the connection limit, with clients logged in, silent, and refused, shutdown still
/// completes (within testkit's shutdown deadline) and `run` returns `Ok`.
#[tokio::test]
async fn shutdown_at_connection_limit() {
    let mut server = start(Config {
        max_connections: 4,
        ..Config::default()
    })
    .await;
    let mut alice = testkit::Client::login(server.addr(), "alice").await;
    let mut bob = testkit::Client::login(server.addr(), "bob").await;
    let mut silent = testkit::Client::connect(server.addr(), "silent").await;
    let mut half = testkit::Client::connect(server.addr(), "half a name").await;
    half.send_bytes(b"car").await;
    let mut refused = testkit::Client::connect(server.addr(), "refused").await;
    refused.expect("error: server full").await;
    server.trigger_shutdown();
    for client in [&mut alice, &mut bob, &mut silent, &mut half, &mut refused] {
        client.lines_until_eof().await;
    }
    server.finished().await;
}

/// A message line with a control character (tab excepted) or a bidirectional override never
/// reaches a recipient: the sender gets `error: control character` and is closed.
#[tokio::test]
async fn refuses_control_characters() {
    let server = testkit::start(step_07::run).await;
    scenarios::refuses_control_characters(server.addr()).await;
}

/// Ordinary Unicode (accents, CJK, emoji, right-to-left scripts) and tabs arrive byte for byte.
#[tokio::test]
async fn delivers_unicode_unchanged() {
    let server = testkit::start(step_07::run).await;
    scenarios::delivers_unicode_unchanged(server.addr()).await;
}

/// A destination named several times in one line receives the line once.
#[tokio::test]
async fn delivers_once_per_named_destination() {
    let server = testkit::start(step_07::run).await;
    scenarios::delivers_once_per_named_destination(server.addr()).await;
}

/// A line may list 32 names; one more gets `error: too many destinations` and a close.
#[tokio::test]
async fn refuses_too_many_destinations() {
    let server = testkit::start(step_07::run).await;
    scenarios::refuses_too_many_destinations(server.addr(), step_07::MAX_DESTINATIONS).await;
}

/// bob, reading at full speed, stays connected through alice's amplified flood (200 lines of
/// 4 KiB naming him a thousand times each) and still gets carol's next line.
#[tokio::test]
async fn amplified_flood_spares_the_reader() {
    let server = testkit::start(step_07::run).await;
    scenarios::amplified_flood_spares_the_reader(server.addr(), step_07::MAX_DESTINATIONS).await;
}

/// The one who floods pays: bob, reading as fast as he can, stays connected through the flood
/// of four senders with 32-byte names, 100 000 short lines each (about 1 MB from each, 4 MB to
/// him, far over any queue budget), receives them all in each sender's order, and carol's
/// line; the senders stay too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_spares_the_reader() {
    let server = testkit::start(step_07::run).await;
    scenarios::flood_spares_the_reader(server.addr(), 4, 100_000, 0).await;
}

/// The same, one to one: alice alone floods bob with 300 000 short lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_flood_spares_the_reader() {
    let server = testkit::start(step_07::run).await;
    scenarios::flood_spares_the_reader(server.addr(), 1, 300_000, 0).await;
}
