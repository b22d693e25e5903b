//! The step-00 binary: runs the same 1-second jobs in different ways and prints how long each
//! way took, in tenths of a second.

use std::time::Duration;

use step_00::{blocking_job, in_tasks, job, off_the_runtime, race, with_deadline};
use tokio::time::Instant;

/// The length of one job, in milliseconds.
const JOB_MS: u64 = 1000;

// ANCHOR: main
#[tokio::main]
async fn main() -> Result<(), tokio::task::JoinError> {
    let start = Instant::now();
    step_00::one_after_the_other(JOB_MS).await;
    report("three 1 s jobs, one after the other", start);

    let start = Instant::now();
    step_00::concurrently(JOB_MS).await;
    report("three 1 s jobs with join!", start);

    let start = Instant::now();
    in_tasks(JOB_MS).await?;
    report("three 1 s jobs in three tasks", start);

    let start = Instant::now();
    let winner = race(JOB_MS).await;
    report(
        &format!("select! of a 1 s and a 2 s job ({winner} won)"),
        start,
    );

    let start = Instant::now();
    let finished = with_deadline(job("slow", 2 * JOB_MS), Duration::from_millis(500)).await;
    let outcome = if finished.is_some() {
        "finished"
    } else {
        "gave up"
    };
    report(
        &format!("a 2 s job with a 0.5 s timeout ({outcome})"),
        start,
    );

    let start = Instant::now();
    tokio::join!(async { blocking_job("blocking", JOB_MS) }, job("a", JOB_MS));
    report("join! of a blocking 1 s job and a 1 s job", start);

    let start = Instant::now();
    let (blocking, _) = tokio::join!(off_the_runtime("blocking", JOB_MS), job("a", JOB_MS));
    blocking?;
    report("the same, the blocking job in spawn_blocking", start);
    Ok(())
}
// ANCHOR_END: main

/// Prints what was done and the seconds since `start`, cut (not rounded) to tenths: a timer
/// never fires early, only late, so a busy machine's few milliseconds do not change the line.
fn report(what: &str, start: Instant) {
    let tenths = start.elapsed().as_millis() / 100;
    println!("{what:<50} {:>2}.{} s", tenths / 10, tenths % 10);
}
