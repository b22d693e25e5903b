//! Step 02 over real loopback TCP: a working chat. Messages reach their named destinations as
//! `from NAME: text`, in order, for many clients at once; and the step's known limitation,
//! that a departed peer's name stays taken, is shown rather than hidden.

use testkit::{Binary, Client, scenarios};

/// Each named, connected destination receives `from NAME: text`; nobody else does.
#[tokio::test]
async fn delivers_to_named_destination() {
    let server = testkit::start(step_02::run).await;
    scenarios::delivers_to_named_destination(server.addr()).await;
}

/// A message to several destinations reaches each of them once.
#[tokio::test]
async fn delivers_to_several_destinations() {
    let server = testkit::start(step_02::run).await;
    scenarios::delivers_to_several_destinations(server.addr()).await;
}

/// Whitespace around names and text is trimmed, and CRLF line endings work.
#[tokio::test]
async fn trims_whitespace() {
    let server = testkit::start(step_02::run).await;
    scenarios::trims_whitespace(server.addr()).await;
}

/// Only the first `:` separates destinations from the text.
#[tokio::test]
async fn keeps_colon_in_text() {
    let server = testkit::start(step_02::run).await;
    scenarios::keeps_colon_in_text(server.addr()).await;
}

/// A line without `:` is ignored and the sender stays connected.
#[tokio::test]
async fn ignores_lines_without_colon() {
    let server = testkit::start(step_02::run).await;
    scenarios::ignores_lines_without_colon(server.addr()).await;
}

/// Unknown destinations are skipped; known ones still receive the message.
#[tokio::test]
async fn skips_unknown_destinations() {
    let server = testkit::start(step_02::run).await;
    scenarios::skips_unknown_destinations(server.addr()).await;
}

/// Two senders' messages, 3 000 each, arrive in the order each sender wrote them.
#[tokio::test]
async fn keeps_per_sender_order() {
    let server = testkit::start(step_02::run).await;
    scenarios::keeps_per_sender_order(server.addr(), 3_000).await;
}

/// Fifty clients connected at once all chat.
#[tokio::test]
async fn serves_many_clients_at_once() {
    let server = testkit::start(step_02::run).await;
    scenarios::serves_many_clients_at_once(server.addr(), 50).await;
}

/// The real binary announces its address and delivers messages.
#[tokio::test]
async fn binary_serves_a_chat() {
    let server = Binary::start(env!("CARGO_BIN_EXE_step-02"), &[]).await;
    scenarios::delivers_to_named_destination(server.addr()).await;
}

/// Limitation of this step (fixed in step 03): peers are never removed, so after bob leaves
/// his name stays taken and a new client logging in as bob is refused.
#[tokio::test]
async fn departed_name_stays_taken() {
    let server = testkit::start(step_02::run).await;
    let mut alice = Client::login(server.addr(), "alice").await;
    let bob = Client::login(server.addr(), "bob").await;
    drop(bob);
    // Give the server every chance to notice bob left: it never will remove him.
    alice.send("bob: are you there?").await;
    alice.expect_nothing().await;

    let mut new_bob = Client::connect(server.addr(), "the second bob").await;
    new_bob.send("bob").await;
    new_bob.send("bob: am I registered?").await;
    // A registered bob would get its own message back; the refused one sees its connection
    // closed with nothing sent.
    new_bob.expect_eof().await;
    alice.send("bob: hello again").await;
    alice.expect_nothing().await;
}

/// Limitation named in the chapter (fixed in step 06): a login refused because the name is
/// taken still has its lines routed under that name.
#[tokio::test]
async fn refused_login_still_sends_as_taken_name() {
    let server = testkit::start(step_02::run).await;
    scenarios::refused_login_still_sends_as_taken_name(server.addr()).await;
}
