//! CPU time and resident memory of a process, from /proc (Linux).

/// User + system CPU seconds of `pid` (`None`: this process); 0 where unreadable.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    stat_cpu_seconds(&std::fs::read_to_string(path).unwrap_or_default())
}

/// User + system CPU seconds in the text of a `stat` file (a process's or a thread's).
fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// Each thread of `pid`: its id, its name and its CPU seconds (threads unreadable are left
/// out).
fn thread_cpu_seconds(pid: u32) -> Vec<(u32, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let name = stat.split_once('(')?.1.rsplit_once(')')?.0.to_string();
            Some((tid, name, stat_cpu_seconds(&stat)))
        })
        .collect()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Resident set size of `pid` in bytes; 0 where unreadable.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A second broker whose CPU counts as the broker's (`--peer-pid`: the other end of a bridge).
static PEER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Counts `pid`'s CPU with the broker's from now on.
pub fn count_peer(pid: u32) {
    let _ = PEER.set(pid);
}

/// CPU of the broker and its peer, if any.
fn broker_cpu_seconds(pid: u32) -> f64 {
    cpu_seconds(Some(pid)) + PEER.get().map_or(0.0, |&peer| cpu_seconds(Some(peer)))
}

/// CPU time of the broker (when its pid is known; with its peer's) and of the harness since
/// `start`.
pub struct CpuClock {
    broker: Option<(u32, f64)>,
    /// The broker's threads at start: id and CPU seconds.
    broker_threads: Vec<(u32, f64)>,
    harness: f64,
}

impl CpuClock {
    /// Reads both clocks now.
    pub fn start(broker_pid: Option<u32>) -> Self {
        CpuClock {
            broker: broker_pid.map(|pid| (pid, broker_cpu_seconds(pid))),
            broker_threads: broker_pid
                .map(thread_cpu_seconds)
                .unwrap_or_default()
                .into_iter()
                .map(|(tid, _, seconds)| (tid, seconds))
                .collect(),
            harness: cpu_seconds(None),
        }
    }

    /// Broker CPU seconds since start, if its pid is known.
    pub fn broker_seconds(&self) -> Option<f64> {
        self.broker.map(|(pid, at)| broker_cpu_seconds(pid) - at)
    }

    /// The broker's busy threads since start (not its peer's): name and CPU seconds, the
    /// busiest first; threads under 10 ms are left out. What a run is bound by shows here
    /// (one thread at a whole core, or all of them together at the machine's cores).
    pub fn broker_threads(&self) -> Vec<(String, f64)> {
        let Some((pid, _)) = self.broker else {
            return Vec::new();
        };
        let mut threads: Vec<(String, f64)> = thread_cpu_seconds(pid)
            .into_iter()
            .map(|(tid, name, now)| {
                let at = self
                    .broker_threads
                    .iter()
                    .find(|(t, _)| *t == tid)
                    .map_or(0.0, |(_, at)| *at);
                (name, now - at)
            })
            .filter(|(_, seconds)| *seconds >= 0.01)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        threads
    }

    /// Harness CPU seconds since start.
    pub fn harness_seconds(&self) -> f64 {
        cpu_seconds(None) - self.harness
    }
}
