//! The facts chapter 04 states about `Notify` and about waiting for tasks, each shown by a
//! wrong version that fails next to the right one that the step uses:
//! - `notify_waiters` wakes only `Notified` futures that already exist and stores no permit, so
//!   a `notified()` made anew on each loop turn misses a notification sent while the loop is
//!   busy, and a task that makes its own `notified()` misses one sent before it first runs;
//! - a writer that lets `select!` choose between "shutdown" and "next message" drops queued
//!   messages; a writer that drains its queue does not;
//! - the runtime does not wait for spawned tasks when `main` returns: it drops them.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use testkit::TIMEOUT;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a loop gets to react to a notification before we say it missed it. A loop that saw
/// it reacts in microseconds; one that missed it never does.
const MISSED: Duration = Duration::from_secs(1);

/// Work a loop does in a branch body: it says it has started, then waits until the test lets
/// it finish. While it waits, the loop is busy between two turns.
#[derive(Debug)]
struct Job {
    started: oneshot::Sender<()>,
    finish: oneshot::Receiver<()>,
}

impl Job {
    async fn run(self) {
        let _ = self.started.send(());
        let _ = self.finish.await;
    }
}

// ANCHOR: notified_per_turn
/// WRONG. A new `Notified` on every turn: while the loop is busy in a branch body, no
/// `Notified` exists, and a `notify_waiters` sent then is lost.
async fn loop_with_notified_per_turn(
    shutdown: Arc<Notify>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    loop {
        tokio::select! {
            () = shutdown.notified() => break,
            job = jobs.recv() => match job {
                Some(job) => job.run().await,
                None => break,
            },
        }
    }
}
// ANCHOR_END: notified_per_turn

// ANCHOR: notified_pinned
/// RIGHT. One `Notified`, made before the loop, pinned, and polled through `&mut` on every
/// turn: it exists while the loop is busy, so it records a notification sent then.
async fn loop_with_pinned_notified(shutdown: Arc<Notify>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut notified = pin!(shutdown.notified());
    loop {
        tokio::select! {
            () = &mut notified => break,
            job = jobs.recv() => match job {
                Some(job) => job.run().await,
                None => break,
            },
        }
    }
}
// ANCHOR_END: notified_pinned

/// Runs `shutdown_loop`, sends `notify_waiters` while the loop is busy in a branch body, lets
/// the body finish, and reports whether the loop then stopped.
async fn stops_after_notification_sent_while_busy<F, Fut>(shutdown_loop: F) -> bool
where
    F: FnOnce(Arc<Notify>, mpsc::UnboundedReceiver<Job>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shutdown = Arc::new(Notify::new());
    // `jobs` stays open until the end: the loop must not stop because its channel closed.
    let (jobs, job_receiver) = mpsc::unbounded_channel();
    let task = tokio::spawn(shutdown_loop(Arc::clone(&shutdown), job_receiver));

    let (started, started_receiver) = oneshot::channel();
    let (finish, finish_receiver) = oneshot::channel();
    jobs.send(Job {
        started,
        finish: finish_receiver,
    })
    .expect("the loop holds its receiver until it ends, and it has not ended");
    tokio::time::timeout(TIMEOUT, started_receiver)
        .await
        .expect("the loop should start the job")
        .expect("the job says it started before it waits");

    // The loop is inside `job.run().await` now.
    shutdown.notify_waiters();
    finish
        .send(())
        .expect("the job waits for this, so it is still there");

    let stopped = tokio::time::timeout(MISSED, task).await.is_ok();
    drop(jobs);
    stopped
}

/// A loop that calls `notified()` on each turn misses a notification sent while it is busy in
/// a branch body, and never stops.
#[tokio::test]
async fn notified_per_turn_misses_notification_sent_while_busy() {
    assert!(
        !stops_after_notification_sent_while_busy(loop_with_notified_per_turn).await,
        "expected the loop that makes a new `Notified` each turn to miss the notification"
    );
}

/// A loop whose `Notified` is made once and pinned sees a notification sent while it is busy.
#[tokio::test]
async fn pinned_notified_sees_notification_sent_while_busy() {
    assert!(
        stops_after_notification_sent_while_busy(loop_with_pinned_notified).await,
        "the loop with one pinned `Notified` should see the notification and stop"
    );
}

// ANCHOR: notified_in_spawned_task
/// WRONG. The task makes its `Notified` when it first runs, which can be after the
/// notification was sent.
fn spawn_waiter_that_makes_its_notified(shutdown: &Arc<Notify>) -> JoinHandle<()> {
    let shutdown = Arc::clone(shutdown);
    tokio::spawn(async move { shutdown.notified().await })
}
// ANCHOR_END: notified_in_spawned_task

// ANCHOR: notified_before_spawn
/// RIGHT. The `Notified` is made before spawning (`notified_owned` so that it can move into
/// the task): it counts from its creation, not from its first poll.
fn spawn_waiter_with_notified_made_before(shutdown: &Arc<Notify>) -> JoinHandle<()> {
    let notified: OwnedNotified = Arc::clone(shutdown).notified_owned();
    tokio::spawn(notified)
}
// ANCHOR_END: notified_before_spawn

/// On a current-thread runtime a spawned task first runs when the spawner yields, so the
/// notification below is sent before the task has run at all.
async fn sees_notification_sent_before_first_run(
    spawn: fn(&Arc<Notify>) -> JoinHandle<()>,
) -> bool {
    let shutdown = Arc::new(Notify::new());
    let task = spawn(&shutdown);
    shutdown.notify_waiters();
    tokio::time::timeout(MISSED, task).await.is_ok()
}

/// A just-spawned task that calls `notified()` itself misses a notification sent before it
/// first runs.
#[tokio::test(flavor = "current_thread")]
async fn spawned_task_misses_notification_sent_before_it_runs() {
    assert!(
        !sees_notification_sent_before_first_run(spawn_waiter_that_makes_its_notified).await,
        "expected the task that makes its own `Notified` to miss the notification"
    );
}

/// A `Notified` made with `notified_owned` before spawning sees a notification sent before the
/// task first runs.
#[tokio::test(flavor = "current_thread")]
async fn notified_owned_before_spawn_sees_notification() {
    assert!(
        sees_notification_sent_before_first_run(spawn_waiter_with_notified_made_before).await,
        "the `Notified` made before spawning should see the notification"
    );
}

// ANCHOR: writer_without_drain
/// WRONG. With a message queued and shutdown signalled, `select!` picks one of the two ready
/// branches at random, so it may stop with messages still in the queue.
async fn writer_without_drain(
    mut messages: mpsc::UnboundedReceiver<u32>,
    shutdown: OwnedNotified,
) -> Vec<u32> {
    let mut shutdown = pin!(shutdown);
    let mut written = Vec::new();
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(message) => written.push(message),
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    written
}
// ANCHOR_END: writer_without_drain

// ANCHOR: writer_with_drain
/// RIGHT. `biased` with the queue first, and after shutdown the writer goes on until its
/// channel closes: everything queued is written.
async fn writer_with_drain(
    mut messages: mpsc::UnboundedReceiver<u32>,
    shutdown: OwnedNotified,
) -> Vec<u32> {
    let mut shutdown = pin!(shutdown);
    let mut shutting_down = false;
    let mut written = Vec::new();
    loop {
        tokio::select! {
            biased;
            message = messages.recv() => match message {
                Some(message) => written.push(message),
                None => break,
            },
            () = &mut shutdown, if !shutting_down => shutting_down = true,
        }
    }
    written
}
// ANCHOR_END: writer_with_drain

/// Queues ten messages, signals shutdown and closes the queue, as the broker does at shutdown,
/// then runs the writer; repeated twenty times. Returns how many rounds wrote all ten.
async fn rounds_that_wrote_everything<Fut>(
    writer: fn(mpsc::UnboundedReceiver<u32>, OwnedNotified) -> Fut,
) -> usize
where
    Fut: Future<Output = Vec<u32>>,
{
    let mut complete = 0;
    for _ in 0..20 {
        let shutdown = Arc::new(Notify::new());
        let notified = Arc::clone(&shutdown).notified_owned();
        let (sender, receiver) = mpsc::unbounded_channel();
        for i in 0..10 {
            sender.send(i).expect("the receiver is right here");
        }
        shutdown.notify_waiters();
        drop(sender);
        if writer(receiver, notified).await == (0..10).collect::<Vec<_>>() {
            complete += 1;
        }
    }
    complete
}

/// A writer that lets `select!` choose between shutdown and the next message loses queued
/// messages (each round writes all ten with probability 1/1024; we run twenty).
#[tokio::test]
async fn writer_without_drain_loses_queued_messages() {
    assert!(
        rounds_that_wrote_everything(writer_without_drain).await < 20,
        "expected the writer without a drain to stop with messages still queued"
    );
}

/// A writer that drains its queue after shutdown writes every queued message, every time.
#[tokio::test]
async fn writer_with_drain_writes_every_queued_message() {
    assert_eq!(rounds_that_wrote_everything(writer_with_drain).await, 20);
}

/// What became of a spawned task: it ran to its end, or the runtime dropped it unfinished.
#[derive(Debug, PartialEq)]
enum Fate {
    Finished,
    Dropped,
}

/// Tells `fates` that the task holding it was dropped (it runs after `Finished` if the task
/// got that far).
struct OnDrop(std::sync::mpsc::Sender<Fate>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Fate::Dropped);
    }
}

/// Builds a runtime like `#[tokio::main]` does, runs `main` on it with a spawned task that
/// needs 50 ms, shuts the runtime down as the end of `main` does, and reports the task's fate.
fn fate_of_spawned_task(wait_for_it: bool) -> Vec<Fate> {
    let (fates, fate_receiver) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Runtime::new().expect("building a runtime");
    runtime.block_on(async move {
        let guard = OnDrop(fates.clone());
        let task = tokio::spawn(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = fates.send(Fate::Finished);
        });
        if wait_for_it {
            task.await.expect("the task does not panic");
        }
    });
    drop(runtime);
    // Every sender is gone once the task is finished or dropped; the timeout only guards
    // against a hang if neither happened.
    let mut seen = Vec::new();
    while let Ok(fate) = fate_receiver.recv_timeout(TIMEOUT) {
        seen.push(fate);
    }
    seen
}

/// When `main` returns without waiting, the runtime drops spawned tasks unfinished.
#[test]
fn runtime_drops_tasks_nobody_waits_for() {
    assert_eq!(fate_of_spawned_task(false), [Fate::Dropped]);
}

/// A task that `main` waits for runs to its end.
#[test]
fn task_waited_for_finishes() {
    assert_eq!(fate_of_spawned_task(true), [Fate::Finished, Fate::Dropped]);
}
