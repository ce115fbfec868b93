//! CPU seconds and memory of a process, from /proc (Linux).

/// Clock ticks per second of /proc/PID/stat (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

/// User + system CPU seconds of `pid` (`None`: this process).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name and state.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / TICKS)
}

/// A `Vm*` line of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: Option<u32>, key: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Number of CPUs.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
