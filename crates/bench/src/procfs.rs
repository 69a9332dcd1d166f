//! What /proc says about a process (CPU time, resident memory) and about the machine.

use std::time::Instant;

use serde::Serialize;

/// A process's CPU time and memory at one moment.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// When it was taken.
    pub at: Instant,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size (VmRSS), KiB.
    pub rss_kb: u64,
}

/// Clock ticks per second, the unit of /proc/<pid>/stat's CPU times.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 { n as u64 } else { 100 }
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` (`self` for this process).
pub fn sample(pid: &str) -> std::io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let bad = |what: &str| std::io::Error::other(format!("/proc/{pid}: cannot read {what}"));
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = stat.rsplit_once(')').ok_or_else(|| bad("stat"))?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    let tick = |i: usize| -> std::io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| bad("stat"))
    };
    let cpu_ticks = tick(11)? + tick(12)?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("VmRSS"))?;
    Ok(ProcSample {
        at: Instant::now(),
        cpu_ticks,
        rss_kb,
    })
}

/// CPU used between two samples, as a percentage of one core.
pub fn cpu_percent(from: &ProcSample, to: &ProcSample) -> f64 {
    let secs = to.at.duration_since(from.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let cpu = to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / ticks_per_second() as f64;
    100.0 * cpu / secs
}

/// The machine the numbers were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub cores: usize,
    /// The CPU model, as /proc/cpuinfo names it.
    pub cpu_model: String,
    /// MemTotal, MiB.
    pub memory_mb: u64,
    /// The 1-minute load average when the run started (other work on the machine).
    pub load_average_1m: f64,
}

impl Machine {
    /// Reads /proc.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default(),
            memory_mb: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024),
            load_average_1m: loadavg
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
        }
    }

    /// `2 cores (AMD EPYC), 23 GiB`.
    pub fn text(&self) -> String {
        format!(
            "{} cores ({}), {} MiB memory, load average {:.2} at start",
            self.cores, self.cpu_model, self.memory_mb, self.load_average_1m
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let a = sample("self").unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample("self").unwrap();
        assert!(a.rss_kb > 0);
        assert!(b.cpu_ticks >= a.cpu_ticks);
        assert!(cpu_percent(&a, &b) >= 0.0);
        assert!(Machine::read().cores >= 1);
    }
}
