//! The claims of chapter 00, one test each. Where time matters the tests run on tokio's paused
//! clock (`start_paused = true`): when every task is waiting, the clock jumps to the next timer,
//! so a "3 s" test takes microseconds and measures exactly 3 s on any machine.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::{Stream, StreamExt, poll};
use step_00::{
    CountDown, Forgetful, block_on_by_hand, blocking_job, collect_until, concurrently, count_a_run,
    count_from_tasks, greet_in_task, in_tasks, job, off_the_runtime, one_after_the_other, race,
    with_deadline,
};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::time::{Instant, sleep};

/// One unit of work in the timing tests: one second of the paused clock.
const UNIT: u64 = 1000;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Sets its flag when dropped: tells a test that a future was dropped, and when.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ANCHOR: lazy_test
/// A future is a value: calling an `async fn` runs none of its body, and a future that is
/// dropped without being awaited never runs at all.
#[tokio::test]
async fn a_future_does_nothing_until_awaited() {
    let runs = AtomicUsize::new(0);
    let future = count_a_run(&runs);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "calling it ran the body");
    future.await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "awaiting it ran the body once"
    );

    drop(count_a_run(&runs));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a dropped future never runs"
    );
}
// ANCHOR_END: lazy_test

/// `#[tokio::main]` is a runtime plus `block_on`: built by hand, they run a future to its end
/// on an ordinary thread and hand back its output.
#[test]
fn block_on_runs_a_future_to_its_output() {
    let name = block_on_by_hand(job("by hand", 10)).expect("the runtime builds");
    assert_eq!(name, "by hand");
}

/// The runtime `block_on_by_hand` builds, like the one `#[tokio::main]` builds, is the
/// multi-thread runtime with one worker per CPU core.
#[test]
fn tokio_main_is_multi_thread() {
    #[tokio::main]
    async fn what_main_gets() -> (RuntimeFlavor, usize) {
        let runtime = Handle::current();
        (runtime.runtime_flavor(), runtime.metrics().num_workers())
    }
    let (flavor, workers) = what_main_gets();
    assert_eq!(flavor, RuntimeFlavor::MultiThread);
    // `TOKIO_WORKER_THREADS` in the environment sets another count; by default, one per core.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(workers, cores);
    }
    let by_hand = block_on_by_hand(async {
        let runtime = Handle::current();
        (runtime.runtime_flavor(), runtime.metrics().num_workers())
    });
    assert_eq!(by_hand.expect("the runtime builds"), what_main_gets());
}

/// `#[tokio::test]` builds a single-thread runtime: the tests below can tell what runs when.
#[tokio::test]
async fn tokio_test_is_single_threaded() {
    assert_eq!(
        Handle::current().runtime_flavor(),
        RuntimeFlavor::CurrentThread
    );
}

// ANCHOR: poll_test
/// `poll!` polls a future once and says what it answered: `CountDown { left: 2 }` is `Pending`
/// twice, then `Ready`.
#[tokio::test]
async fn polling_advances_a_future_one_step() {
    let mut count_down = CountDown { left: 2 };
    assert_eq!(poll!(&mut count_down), Poll::Pending);
    assert_eq!(poll!(&mut count_down), Poll::Pending);
    assert_eq!(poll!(&mut count_down), Poll::Ready("liftoff"));
}
// ANCHOR_END: poll_test

/// The runtime polls a pending future again only once its waker is used: `CountDown` wakes
/// itself and finishes at once; `Forgetful` never does and is still waiting when the timeout
/// gives up.
#[tokio::test(start_paused = true)]
async fn a_future_that_never_wakes_is_never_polled_again() {
    let start = Instant::now();
    let done = with_deadline(CountDown { left: 1000 }, secs(1.0)).await;
    assert_eq!(done, Some("liftoff"));
    assert_eq!(start.elapsed(), Duration::ZERO, "1000 polls took no time");
    assert_eq!(with_deadline(Forgetful, secs(1.0)).await, None);
}

/// Awaited one after the other, three 1-unit jobs take 3 units; under `join!` and as three
/// tasks they wait at the same time and take 1.
#[tokio::test(start_paused = true)]
async fn join_and_tasks_overlap_the_waiting() {
    let start = Instant::now();
    assert_eq!(one_after_the_other(UNIT).await, ["a", "b", "c"]);
    assert_eq!(start.elapsed(), secs(3.0));

    let start = Instant::now();
    assert_eq!(concurrently(UNIT).await, ["a", "b", "c"]);
    assert_eq!(start.elapsed(), secs(1.0));

    let start = Instant::now();
    assert_eq!(
        in_tasks(UNIT).await.expect("no task panics"),
        ["a", "b", "c"]
    );
    assert_eq!(start.elapsed(), secs(1.0));
}

// ANCHOR: spawn_test
/// A spawned task runs without anyone awaiting it; dropping its `JoinHandle` does not stop it.
#[tokio::test(start_paused = true)]
async fn a_task_runs_without_being_awaited() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = tokio::spawn({
        let runs = Arc::clone(&runs);
        async move {
            sleep(secs(1.0)).await;
            runs.fetch_add(1, Ordering::SeqCst);
        }
    });
    drop(handle);
    sleep(secs(2.0)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
// ANCHOR_END: spawn_test

// ANCHOR: panic_test
/// A panic in a task ends that task only: its `JoinHandle` returns an `Err` that says it
/// panicked, and the other tasks, and the program, go on.
#[tokio::test]
async fn a_panic_in_a_task_is_an_error_of_its_handle() {
    let doomed = tokio::spawn(async { panic!("this task fails") });
    let healthy = tokio::spawn(job("healthy", 10));
    let error = doomed.await.expect_err("the task panicked");
    assert!(error.is_panic());
    assert_eq!(healthy.await.expect("this task does not panic"), "healthy");
}
// ANCHOR_END: panic_test

/// `async move` hands the task what it uses, and `Arc` shares one value between tasks: both
/// compile and run (the refused versions are the `compile_fail` doctests of `src/lib.rs`).
#[tokio::test]
async fn tasks_own_what_they_use() {
    let greeting = greet_in_task("alice".to_string()).await;
    assert_eq!(greeting.expect("no panic"), "hello, alice");
    assert_eq!(count_from_tasks(10).await.expect("no panic"), 10);
}

// ANCHOR: select_test
/// `select!` finishes with the first branch to complete and drops the others mid-way: the
/// losing future is dropped at that moment, and the code after its `.await` never runs.
#[tokio::test(start_paused = true)]
async fn select_drops_the_losing_branch() {
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let slow = {
        let guard = DropFlag(Arc::clone(&dropped));
        let finished = Arc::clone(&finished);
        async move {
            let _guard = guard;
            sleep(secs(2.0)).await;
            finished.store(true, Ordering::SeqCst);
        }
    };
    let start = Instant::now();
    tokio::select! {
        _ = job("fast", UNIT) => {}
        () = slow => {}
    }
    assert_eq!(start.elapsed(), secs(1.0));
    assert!(dropped.load(Ordering::SeqCst), "the loser was dropped");
    sleep(secs(5.0)).await;
    assert!(!finished.load(Ordering::SeqCst), "the loser never finished");
    assert_eq!(race(UNIT).await, "fast");
}
// ANCHOR_END: select_test

/// When several branches are ready, `select!` picks one at random; with `biased;` it takes
/// the first that is ready, in the order written.
#[tokio::test]
async fn select_picks_at_random_unless_biased() {
    let mut first_won = 0;
    for _ in 0..100 {
        tokio::select! {
            () = std::future::ready(()) => first_won += 1,
            () = std::future::ready(()) => {}
        }
    }
    // The chance that a fair coin lands the same way 100 times is 2^-99.
    assert!(
        0 < first_won && first_won < 100,
        "the first branch won {first_won} of 100"
    );
    for _ in 0..100 {
        let winner = tokio::select! {
            biased;
            () = std::future::ready(()) => "first",
            () = std::future::ready(()) => "second",
        };
        assert_eq!(winner, "first");
    }
}

/// A timeout is a race against a timer: a 2 s job under a 0.5 s limit gives up at 0.5 s and is
/// dropped; a 1 s job under a 2 s limit finishes; `pending()` never does.
#[tokio::test(start_paused = true)]
async fn timeouts_give_up_and_drop_the_work() {
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = DropFlag(Arc::clone(&dropped));
    let work = async move {
        let _guard = guard;
        job("slow", 2 * UNIT).await
    };
    let start = Instant::now();
    assert_eq!(with_deadline(work, secs(0.5)).await, None);
    assert_eq!(start.elapsed(), secs(0.5));
    assert!(dropped.load(Ordering::SeqCst));

    assert_eq!(
        with_deadline(job("quick", UNIT), secs(2.0)).await,
        Some("quick")
    );
    let never = std::future::pending::<()>();
    assert_eq!(with_deadline(never, secs(60.0)).await, None);
}

/// Items every 0.3 s for 3 s: ten of them, as a stream (think: lines from a socket).
fn ten_items() -> impl Stream<Item = u32> {
    futures::stream::unfold(0, |n| async move {
        sleep(secs(0.3)).await;
        (n < 10).then_some((n, n + 1))
    })
}

// ANCHOR: deadline_per_turn
/// WRONG. A new deadline on every turn of the loop: each item that arrives in time throws the
/// waiting done so far away, so a steady trickle of items keeps it from ever firing.
async fn collect_with_deadline_per_turn<T>(
    mut items: impl Stream<Item = T> + Unpin,
    limit: Duration,
) -> Vec<T> {
    let mut got = Vec::new();
    loop {
        tokio::select! {
            () = sleep(limit) => return got,
            item = items.next() => match item {
                Some(item) => got.push(item),
                None => return got,
            },
        }
    }
}
// ANCHOR_END: deadline_per_turn

// ANCHOR: deadline_test
/// One pinned deadline, polled through `&mut` on every turn, fires 1 s after the start however
/// many items arrive; a deadline made afresh on each turn never fires while items keep coming.
#[tokio::test(start_paused = true)]
async fn a_pinned_deadline_survives_the_turns_of_a_loop() {
    let start = Instant::now();
    let got = collect_until(pin!(ten_items()), secs(1.0)).await;
    assert_eq!(start.elapsed(), secs(1.0));
    assert_eq!(got, [0, 1, 2]);

    let start = Instant::now();
    let got = collect_with_deadline_per_turn(pin!(ten_items()), secs(1.0)).await;
    assert_eq!(start.elapsed(), secs(3.3), "it ran until the stream ended");
    assert_eq!(got.len(), 10);
}
// ANCHOR_END: deadline_test

// ANCHOR: poll_pinned_test
/// A `Sleep` is not `Unpin`: pinned once, it can be polled again and again through
/// `.as_mut()`, and it remembers its deadline between polls.
#[tokio::test(start_paused = true)]
async fn a_pinned_future_can_be_polled_again_and_again() {
    let mut deadline = pin!(sleep(secs(1.0)));
    assert_eq!(poll!(deadline.as_mut()), Poll::Pending);
    tokio::time::advance(secs(0.5)).await;
    assert_eq!(poll!(deadline.as_mut()), Poll::Pending);
    tokio::time::advance(secs(0.5)).await;
    assert_eq!(poll!(deadline.as_mut()), Poll::Ready(()));
}
// ANCHOR_END: poll_pinned_test

/// A finite stream is read to its end with `next().await`, which gives `None` after the last
/// item.
#[tokio::test]
async fn a_stream_ends_with_none() {
    let items = futures::stream::iter([1, 2, 3]);
    assert_eq!(collect_until(items, secs(1.0)).await, [1, 2, 3]);
}

// ANCHOR: blocking_test
/// While a task blocks its thread, no other task runs on that thread, even one that is ready;
/// once the blocking call is moved to `spawn_blocking`, the other task runs meanwhile.
#[tokio::test]
async fn blocking_holds_up_other_tasks() {
    // `#[tokio::test]` runs everything on one thread, as a busy runtime would.
    let ran = Arc::new(AtomicBool::new(false));
    let ready = tokio::spawn({
        let ran = Arc::clone(&ran);
        async move { ran.store(true, Ordering::SeqCst) }
    });
    blocking_job("blocking", 100);
    assert!(!ran.load(Ordering::SeqCst), "no task ran while we blocked");
    ready.await.expect("no panic");

    let ran = Arc::new(AtomicBool::new(false));
    let ready = tokio::spawn({
        let ran = Arc::clone(&ran);
        async move { ran.store(true, Ordering::SeqCst) }
    });
    off_the_runtime("blocking", 100).await.expect("no panic");
    assert!(ran.load(Ordering::SeqCst), "the other task ran meanwhile");
    ready.await.expect("no panic");
}
// ANCHOR_END: blocking_test

/// Under `join!`, a blocking job and a waiting job do not overlap: each second of blocking is
/// added to the other job's wait. (Only a lower bound, which a slow machine cannot break.)
#[tokio::test]
async fn blocking_inside_join_adds_up() {
    let start = std::time::Instant::now();
    tokio::join!(async { blocking_job("blocking", 200) }, job("waiting", 200));
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
}
