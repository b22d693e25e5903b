//! Several triggers, one decision: `Trigger::request` from anywhere in the program.
#![cfg(unix)]

use std::time::Duration;

use shutdown_patterns::when::{Reason, shutdown_requests};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::timeout;

fn requested(why: &str) -> Reason {
    Reason::Requested(why.to_string())
}

/// A request made by any task arrives where `main` waits, beside the signals.
#[tokio::test]
async fn any_task_can_request_a_shutdown() {
    let (trigger, mut requests) = shutdown_requests().expect("signal handlers install");
    let admin = trigger.clone();
    tokio::spawn(async move { admin.request(requested("admin command")) });
    let got = timeout(Duration::from_secs(5), requests.recv()).await;
    assert_eq!(got, Ok(Some(requested("admin command"))));
}

/// The first reason is the decision; a later request returns at once instead of waiting for
/// room in the channel.
#[tokio::test]
async fn first_reason_wins_and_later_requests_do_not_wait() {
    let (trigger, mut requests) = shutdown_requests().expect("signal handlers install");
    trigger.request(requested("first"));
    // The one slot is taken: this must return, not wait for `main` to make room.
    trigger.request(requested("second"));
    assert_eq!(requests.recv().await, Some(requested("first")));
    assert_eq!(requests.try_recv(), Err(TryRecvError::Empty));
}
