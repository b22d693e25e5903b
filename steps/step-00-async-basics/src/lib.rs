//! Step 00: async Rust from zero. No server yet: small functions, each showing one idea that
//! step 01 relies on (futures, the runtime, tasks, `join!`, `select!`, timeouts, pinning,
//! blocking). `tests/claims.rs` proves what chapter 00 says about each, and `src/main.rs` runs
//! them so you can watch the clock.
//!
//! The snippets under `src/refused/` are programs the compiler refuses. They are not modules:
//! each is a `compile_fail` doctest below, marked with the error code rustc gives.
//!
//! An `async fn main` without a runtime:
//!
//! ```compile_fail,E0752
#![doc = include_str!("refused/async_main.rs")]
//! ```
//!
//! A borrowed local in a spawned task (the task may outlive the function):
//!
//! ```compile_fail,E0373
#![doc = include_str!("refused/borrowed_local.rs")]
//! ```
//!
//! A reference moved into a spawned task still borrows a local:
//!
//! ```compile_fail,E0597
#![doc = include_str!("refused/borrow_moved_in.rs")]
//! ```
//!
//! A task's output must be `Send` too, and an `Rc` is not:
//!
//! ```compile_fail,E0277
#![doc = include_str!("refused/rc_out_of_task.rs")]
//! ```
//!
//! A future that is not `Unpin` cannot be polled through `&mut` until it is pinned:
//!
//! ```compile_fail,E0277
#![doc = include_str!("refused/unpinned_by_reference.rs")]
//! ```
//!
//! Nor can a future made by an `async` block:
//!
//! ```compile_fail,E0277
#![doc = include_str!("refused/async_block_by_reference.rs")]
//! ```

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::task::JoinError;
use tokio::time::sleep;

// ANCHOR: job
/// One piece of work that takes `ms` milliseconds of waiting (think: a reply from the network)
/// and then returns its name. While it waits, it holds no thread.
pub async fn job(name: &'static str, ms: u64) -> &'static str {
    sleep(Duration::from_millis(ms)).await;
    name
}
// ANCHOR_END: job

// ANCHOR: lazy
/// Counts how many times its body has run. Calling it runs nothing: it returns a future, and
/// the body runs when that future is awaited (or polled).
pub async fn count_a_run(runs: &AtomicUsize) {
    runs.fetch_add(1, Ordering::SeqCst);
}
// ANCHOR_END: lazy

// ANCHOR: block_on
/// What `#[tokio::main]` writes for you: build a runtime, then block this thread on one future
/// until it completes, and return its output.
pub fn block_on_by_hand<F: Future>(future: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}
// ANCHOR_END: block_on

// ANCHOR: count_down
/// A future written by hand. It answers `Pending` `left` times, then `Ready`.
#[derive(Debug)]
pub struct CountDown {
    pub left: u32,
}

impl Future for CountDown {
    type Output = &'static str;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
        if self.left == 0 {
            return Poll::Ready("liftoff");
        }
        self.left -= 1;
        // "Poll me again." Without this call nothing would ever poll us again: a runtime polls
        // a pending future only after its waker is used.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
// ANCHOR_END: count_down

// ANCHOR: forgetful
/// WRONG: answers `Pending` forever and never uses the waker, so it is never polled again.
#[derive(Debug)]
pub struct Forgetful;

impl Future for Forgetful {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}
// ANCHOR_END: forgetful

// ANCHOR: one_after_the_other
/// Three jobs of `ms` each, each awaited before the next starts: `3 * ms` in all.
pub async fn one_after_the_other(ms: u64) -> Vec<&'static str> {
    let a = job("a", ms).await;
    let b = job("b", ms).await;
    let c = job("c", ms).await;
    vec![a, b, c]
}
// ANCHOR_END: one_after_the_other

/// Three jobs of `ms` each, all waiting at once inside this one future: `ms` in all.
pub async fn concurrently(ms: u64) -> Vec<&'static str> {
    // ANCHOR: exercise_concurrently
    // Run the three jobs at once with `tokio::join!` and return their names in order.
    // Each job is a future; `join!` polls all three until every one has finished.
    let (a, b, c) = tokio::join!(job("a", ms), job("b", ms), job("c", ms));
    vec![a, b, c]
    // ANCHOR_END: exercise_concurrently
}

/// Three jobs of `ms` each, as three tasks the runtime runs side by side; their
/// `JoinHandle`s bring the names back. An `Err` means a task panicked.
pub async fn in_tasks(ms: u64) -> Result<Vec<&'static str>, JoinError> {
    // ANCHOR: exercise_in_tasks
    // Spawn one task per job with `tokio::spawn`, then await each `JoinHandle` in order.
    // The tasks start running at once; awaiting a handle only waits for its result.
    let handles = [
        tokio::spawn(job("a", ms)),
        tokio::spawn(job("b", ms)),
        tokio::spawn(job("c", ms)),
    ];
    let mut names = Vec::new();
    for handle in handles {
        names.push(handle.await?);
    }
    Ok(names)
    // ANCHOR_END: exercise_in_tasks
}

// ANCHOR: move_into_task
/// Greets `name` from another task. `async move` moves `name` into the task, so the task owns
/// everything it uses and borrows nothing from this function.
pub async fn greet_in_task(name: String) -> Result<String, JoinError> {
    tokio::spawn(async move { format!("hello, {name}") }).await
}
// ANCHOR_END: move_into_task

// ANCHOR: share_with_arc
/// Counts from `tasks` tasks into one counter. `Arc` is the `Send` version of `Rc`: each task
/// gets its own handle (a clone), and the counter lives as long as the last one.
pub async fn count_from_tasks(tasks: usize) -> Result<usize, JoinError> {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let runs = Arc::clone(&runs);
        handles.push(tokio::spawn(async move {
            runs.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for handle in handles {
        handle.await?;
    }
    Ok(runs.load(Ordering::SeqCst))
}
// ANCHOR_END: share_with_arc

// ANCHOR: race
/// A 1-unit job against a 2-unit one: whichever finishes first wins, and `select!` drops the
/// other, unfinished.
pub async fn race(unit_ms: u64) -> &'static str {
    tokio::select! {
        name = job("fast", unit_ms) => name,
        name = job("slow", 2 * unit_ms) => name,
    }
}
// ANCHOR_END: race

/// Waits at most `limit` for `work`: `Some(output)` if it finished in time, `None` if not (and
/// then `work` has been dropped, unfinished).
pub async fn with_deadline<T>(work: impl Future<Output = T>, limit: Duration) -> Option<T> {
    // ANCHOR: exercise_with_deadline
    // Wrap `work` in `tokio::time::timeout(limit, work)`, and turn its `Err` into `None`.
    // Its `Err(Elapsed)` means time ran out and `work` was dropped.
    tokio::time::timeout(limit, work).await.ok()
    // ANCHOR_END: exercise_with_deadline
}

// ANCHOR: collect_until
/// Collects items from `items` until it ends or `limit` has passed since the call, whichever
/// comes first. One deadline for the whole call: it is created once, pinned, and polled through
/// `&mut` on every turn of the loop, so the time it has already waited is never lost.
pub async fn collect_until<T>(mut items: impl Stream<Item = T> + Unpin, limit: Duration) -> Vec<T> {
    let mut deadline = pin!(sleep(limit));
    let mut got = Vec::new();
    loop {
        tokio::select! {
            () = &mut deadline => return got,
            item = items.next() => match item {
                Some(item) => got.push(item),
                None => return got,
            },
        }
    }
}
// ANCHOR_END: collect_until

// ANCHOR: blocking_job
/// WRONG inside async code: `std::thread::sleep` (like a long computation, or blocking file
/// and network calls) holds the thread, and no other task can run on it meanwhile.
pub fn blocking_job(name: &'static str, ms: u64) -> &'static str {
    std::thread::sleep(Duration::from_millis(ms));
    name
}
// ANCHOR_END: blocking_job

/// Runs `blocking_job` where it does no harm: on a thread set aside for blocking work.
pub async fn off_the_runtime(name: &'static str, ms: u64) -> Result<&'static str, JoinError> {
    // ANCHOR: exercise_off_the_runtime
    // Move the blocking call to `tokio::task::spawn_blocking` and await its `JoinHandle`.
    // The closure runs on a thread of tokio's blocking pool, not on a runtime thread.
    tokio::task::spawn_blocking(move || blocking_job(name, ms)).await
    // ANCHOR_END: exercise_off_the_runtime
}
