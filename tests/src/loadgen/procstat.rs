//! CPU time and memory of a process, read from `/proc/PID/stat` and
//! `/proc/PID/status` (Linux only).

use std::fs;
use std::io;

use serde::Serialize;

/// One reading of a process's counters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ProcSample {
    /// User plus system CPU time, seconds.
    pub cpu_secs: f64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size since start, KiB (`VmHWM`).
    pub hwm_kib: u64,
}

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read, usually because the process has exited.
    #[error("failed to read {path}: {source}: check that process {pid} is running")]
    Io {
        /// Process id.
        pid: u32,
        /// File read.
        path: String,
        /// Underlying error.
        source: io::Error,
    },
    /// The file content does not have the layout of Linux's `/proc`.
    #[error("unexpected content in {path}: {detail}")]
    Format {
        /// File read.
        path: String,
        /// What was missing.
        detail: &'static str,
    },
}

/// Parses `utime + stime`, in clock ticks, from the text of `/proc/PID/stat`.
/// The command name in field 2 may contain spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); utime and stime are
    // fields 14 and 15.
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Parses `VmRSS` and `VmHWM`, in KiB, from the text of `/proc/PID/status`.
pub fn parse_status_memory(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|line| line.starts_with(name))?;
        line[name.len()..]
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

impl ProcSample {
    /// Reads the counters of process `pid`.
    pub fn read(pid: u32) -> Result<Self, ProcError> {
        let read = |name: &str| {
            let path = format!("/proc/{pid}/{name}");
            fs::read_to_string(&path)
                .map(|text| (path.clone(), text))
                .map_err(|source| ProcError::Io { pid, path, source })
        };
        let (stat_path, stat) = read("stat")?;
        let ticks = parse_stat_ticks(&stat).ok_or(ProcError::Format {
            path: stat_path,
            detail: "no utime and stime fields",
        })?;
        let (status_path, status) = read("status")?;
        let (rss_kib, hwm_kib) = parse_status_memory(&status).ok_or(ProcError::Format {
            path: status_path,
            detail: "no VmRSS and VmHWM lines",
        })?;
        Ok(Self {
            cpu_secs: ticks as f64 / clock_ticks_per_second(),
            rss_kib,
            hwm_kib,
        })
    }

    /// Reads the counters of this process.
    pub fn read_self() -> Result<Self, ProcError> {
        Self::read(std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text = "4242 (krt relay) (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    250 75 0 0 20 0 3 0 12345 100000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(text), Some(325));
    }

    #[test]
    fn stat_too_short() {
        assert_eq!(parse_stat_ticks("1 (a) S 1 2 3"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn status_memory_lines() {
        let text =
            "Name:\tkrt-relay\nVmPeak:\t  900 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_memory(text), Some((10240, 20480)));
        assert_eq!(parse_status_memory("Name:\tx\n"), None);
    }

    #[test]
    fn read_self_works() {
        let sample = ProcSample::read_self().unwrap();
        assert!(sample.rss_kib > 0);
        assert!(sample.hwm_kib >= sample.rss_kib);
    }

    #[test]
    fn read_missing_process_names_pid() {
        // Linux caps pids at 2^22, so this one cannot exist.
        let err = ProcSample::read(u32::MAX).unwrap_err();
        assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");
    }
}
