//! CPU time, resident memory and open files of this process, read from `/proc/self` at scrape time.
//!
//! Reading three small files costs microseconds and needs no dependency; on a system without `/proc`
//! the figures are simply absent.

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`. The kernel reports them in
/// `USER_HZ`, which is 100 on every architecture Linux exposes to user space this way.
const USER_HZ: f64 = 100.0;

/// The process figures at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: Option<f64>,
    /// Resident set size.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors (sockets included).
    pub open_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads this process's figures; whatever cannot be read is `None`.
    pub fn read() -> ProcessStats {
        ProcessStats {
            cpu_seconds: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|text| cpu_seconds(&text)),
            resident_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|text| resident_bytes(&text)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
        }
    }
}

/// `utime + stime` from `/proc/self/stat`, in seconds.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// `VmRSS` from `/proc/self/status` (reported in kB, independent of the page size), in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_times_even_with_spaces_in_the_name() {
        let stat =
            "26611 (my (odd) cmd) R 26609 26609 17265 0 -1 4194304 99 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[test]
    fn parses_resident_memory() {
        let status = "Name:\tcat\nVmPeak:\t 9000 kB\nVmRSS:\t    2180 kB\nThreads:\t1\n";
        assert_eq!(resident_bytes(status), Some(2180 * 1024));
        assert_eq!(resident_bytes("Name:\tcat\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let stats = ProcessStats::read();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(stats.cpu_seconds.is_some());
            assert!(stats.resident_bytes.is_some_and(|bytes| bytes > 0));
            assert!(stats.open_fds.is_some_and(|fds| fds > 0));
        }
    }
}
