//! The echo server's accept loop out of file descriptors. In a test binary of its own, because
//! it lowers the open-file limit of the whole process.

use std::time::Duration;

use shutdown_patterns::together;

/// Out of file descriptors, `accept` fails with EMFILE and leaves the connection in the listen
/// backlog; the accept loop waits before it tries again instead of spinning. Half a second of
/// that costs the process a few milliseconds of CPU, where a loop that retried at once would
/// burn most of the half second.
#[tokio::test]
async fn accept_loop_backs_off_when_out_of_file_descriptors() {
    let (listener, addr) = testkit::loopback_listener().await;
    // Connections the kernel completes and queues in the backlog, waiting for `accept`.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(std::net::TcpStream::connect(addr).expect("connecting to a listening socket"));
    }
    // Not one descriptor more for this process: every `accept` now fails with EMFILE.
    let open = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists the open descriptors")
        .count();
    let limit = format!("--nofile={open}:{open}");
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status()
        .expect("running prlimit (util-linux)");
    assert!(status.success(), "prlimit {limit} failed: {status}");

    let before = cpu_time();
    let stop = tokio::time::sleep(Duration::from_millis(500));
    together::serve(listener, stop, Duration::from_secs(1)).await;
    let used = cpu_time() - before;
    assert!(
        used < Duration::from_millis(150),
        "the process used {used:?} of CPU in half a second of EMFILE: the accept loop retries \
         without waiting"
    );
    drop(waiting);
}

/// The CPU time this process has used so far, user and system, from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    // The fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("the command name ends with ')'")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in clock
    // ticks of 1/100 s on Linux.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime is a number")
        + fields[12].parse::<u64>().expect("stime is a number");
    Duration::from_millis(ticks * 10)
}
