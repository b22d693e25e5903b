//! What the tool reads from and does to the operating system: the server's CPU time and memory
//! from `/proc`, SIGINT, the open-file limit, the kernel's listen-queue counters.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::Error;

/// A server process watched through `/proc/PID`.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pid: u32,
}

/// One reading of the server's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident memory now (VmRSS), in KiB.
    pub rss_kib: u64,
    /// Peak resident memory (VmHWM), in KiB.
    pub hwm_kib: u64,
}

impl Probe {
    /// Watches `pid`; fails if there is no such process.
    pub fn new(pid: u32) -> Result<Probe, Error> {
        let probe = Probe { pid };
        probe
            .sample()
            .map_err(|e| format!("cannot read the server process {pid} in /proc: {e}"))?;
        Ok(probe)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads CPU time and memory.
    pub fn sample(&self) -> Result<Sample, Error> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The command name (field 2) is in parentheses and may contain spaces: skip past it.
        let after = stat
            .rfind(')')
            .map(|i| &stat[i + 1..])
            .ok_or("unexpected /proc/PID/stat format")?;
        // After the name: state is field 3, utime field 14, stime field 15.
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64, Error> {
            Ok(fields
                .get(i - 3)
                .ok_or("/proc/PID/stat is too short")?
                .parse()?)
        };
        let cpu_ticks = ticks(14)? + ticks(15)?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Sample {
            cpu: Duration::from_nanos(cpu_ticks * 1_000_000_000 / clock_ticks_per_second()),
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
        })
    }

    /// Whether the process has exited (a zombie that nobody reaped yet counts as exited).
    pub fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(_) => true,
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&self) -> Result<(), Error> {
        let pid = libc::pid_t::try_from(self.pid)?;
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        if rc != 0 {
            return Err(format!(
                "could not send SIGINT to {pid}: {}",
                std::io::Error::last_os_error()
            )
            .into());
        }
        Ok(())
    }

    /// Waits until the process has exited, checking every 2 ms.
    pub async fn wait_exit(self) {
        while !self.exited() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

/// Makes `command`'s child start with SIGINT's default action, so that Ctrl-C (or our own
/// SIGINT) acts on it as in a terminal. A process started in the background by a shell without
/// job control, or by a CI runner, may inherit an ignored SIGINT, and exec keeps "ignored": a
/// program without its own handler would then never stop.
pub fn default_sigint_in_child(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; signal(2) is one,
    // and the closure touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
}

/// The open-file limit after raising the soft limit to the hard one: `(soft, hard)`.
pub fn raise_open_file_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return (1024, 1024);
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising soft to hard needs no privilege.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
        if rc == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// The machine's CPU time so far, in clock ticks: `(all, stolen)`, where `stolen` is the time
/// the hypervisor ran something else while this virtual machine had work (`steal` in the
/// first line of `/proc/stat`; 0 on bare metal).
pub fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal: all eight make up the machine's time.
    Some((fields.iter().sum(), *fields.get(7)?))
}

/// The share of the machine's CPU time, in per cent, that was stolen between two readings of
/// [`cpu_ticks`].
pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let all = after.0.checked_sub(before.0)?;
    let stolen = after.1.checked_sub(before.1)?;
    (all > 0).then(|| stolen as f64 * 100.0 / all as f64)
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`; machine-wide).
pub fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let header = lines.next()?;
    let values = lines.next()?;
    let column = header
        .split_whitespace()
        .position(|k| k == "ListenOverflows")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// Every TCP socket's queues by `(local, remote)` address: `(tx, rx)`, where `tx` is what was
/// written and not yet acknowledged by the peer and `rx` what arrived and was not yet read by
/// the process (`/proc/net/tcp` and `/proc/net/tcp6`).
pub fn tcp_queues() -> HashMap<(SocketAddr, SocketAddr), (u64, u64)> {
    let mut queues = HashMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(q)) = (
                fields.get(1).and_then(|a| proc_addr(a)),
                fields.get(2).and_then(|a| proc_addr(a)),
                fields.get(4).and_then(|q| q.split_once(':')),
            ) else {
                continue;
            };
            let (Ok(tx), Ok(rx)) = (u64::from_str_radix(q.0, 16), u64::from_str_radix(q.1, 16))
            else {
                continue;
            };
            queues.insert((local, remote), (tx, rx));
        }
    }
    queues
}

/// Parses `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address words are
/// printed as native-endian 32-bit numbers, the port as a plain number.
fn proc_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The open-file limit of another process, from `/proc/PID/limits`.
pub fn open_file_limit_of(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe reads real numbers for a live process (this one) and sees it as running.
    #[test]
    fn probe_reads_this_process() {
        let probe = Probe::new(std::process::id()).expect("reading our own /proc entry");
        // Burn a little CPU so the counters have something to show.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = probe.sample().expect("sampling our own process");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        assert!(!probe.exited());
        assert!(open_file_limit_of(std::process::id()).is_some());
    }

    /// The machine's CPU time moves forward, the stolen part is a share of it, and the share
    /// is computed from the differences between two readings.
    #[test]
    fn steal_is_a_share_of_cpu_time() {
        let before = cpu_ticks().expect("/proc/stat has a cpu line");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = cpu_ticks().expect("/proc/stat has a cpu line");
        assert!(
            after.0 > before.0 && after.1 >= before.1,
            "{before:?} {after:?}"
        );
        let share = steal_percent(before, after).expect("time went by");
        assert!((0.0..=100.0).contains(&share), "{share}");
        assert_eq!(steal_percent((100, 10), (300, 60)), Some(25.0));
        assert_eq!(steal_percent((100, 10), (100, 10)), None);
    }

    /// The TCP table shows a loopback connection of ours, both ends, with the bytes that the
    /// other end has not read yet in its receive queue.
    #[test]
    fn tcp_queues_see_unread_bytes() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.write_all(&[b'x'; 1000]).expect("writing");
        let (c, s) = (
            client.local_addr().expect("a"),
            server.local_addr().expect("b"),
        );
        // Loopback delivers at once, but give the kernel a moment.
        let mut seen = None;
        for _ in 0..100 {
            let q = tcp_queues();
            if let Some(&(_, rx)) = q.get(&(s, c))
                && rx == 1000
            {
                seen = q.get(&(c, s)).copied();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            seen.map(|(tx, _)| tx),
            Some(0),
            "client side acknowledged, nothing queued"
        );
    }

    /// `/proc/net/tcp` addresses parse as the kernel prints them.
    #[test]
    fn parses_proc_addresses() {
        let v4 = proc_addr("0100007F:1F90").expect("IPv4");
        if cfg!(target_endian = "little") {
            assert_eq!(v4, "127.0.0.1:8080".parse().expect("address"));
            let v6 = proc_addr("00000000000000000000000001000000:0050").expect("IPv6");
            assert_eq!(v6, "[::1]:80".parse().expect("address"));
        }
        assert!(proc_addr("zz:1").is_none());
    }

    /// A process id that does not exist is reported, not probed.
    #[test]
    fn probe_rejects_missing_process() {
        assert!(Probe::new(u32::MAX / 2).is_err());
    }
}
