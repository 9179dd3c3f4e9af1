//! The process's file-descriptor limit: every connection is one descriptor, and a default soft
//! limit of 1,024 would cap a fleet at about a thousand devices. The broker binary raises the
//! soft `RLIMIT_NOFILE` to the hard limit at start and says how many connections that allows.

use tracing::{info, warn};

/// Descriptors kept for everything that is not a connection: listeners, the persistence log
/// and lock, the runtime's epoll and event descriptors, log files, a TLS key being read.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The file-descriptor limits, before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub soft_before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most the soft one can be raised to without privileges).
    pub hard: u64,
}

impl FdLimit {
    /// How many connections the soft limit leaves room for, after [`RESERVED_DESCRIPTORS`].
    pub fn connection_capacity(&self) -> u64 {
        self.soft.saturating_sub(RESERVED_DESCRIPTORS)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at what the kernel takes for one
/// process, `fs.nr_open`) and returns the limits. `None` if they cannot be read.
pub fn raise_fd_limit() -> Option<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limits into `limit`, a valid rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let soft_before = limit.rlim_cur;
    // An "unlimited" hard limit is refused by the kernel above fs.nr_open.
    let mut target = limit.rlim_max;
    if let Some(nr_open) = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
    {
        target = target.min(nr_open);
    }
    if target > soft_before {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads `raised`, a valid rlimit we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = target;
        }
    }
    Some(FdLimit {
        soft_before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// [`raise_fd_limit`], then logs the connection capacity, and warns when `max_connections`
/// (`limits.max_connections`) is more than the descriptors allow.
pub fn raise_and_report_fd_limit(max_connections: usize) {
    let Some(limit) = raise_fd_limit() else {
        warn!("cannot read the file-descriptor limit (RLIMIT_NOFILE)");
        return;
    };
    let capacity = limit.connection_capacity();
    info!(
        soft_before = limit.soft_before,
        soft = limit.soft,
        hard = limit.hard,
        connection_capacity = capacity,
        "file-descriptor limit"
    );
    if max_connections as u64 > capacity {
        warn!(
            max_connections,
            connection_capacity = capacity,
            hard_limit = limit.hard,
            "limits.max_connections is above what the file-descriptor limit allows; connections \
             beyond it wait in the listen backlog. Raise the hard limit (systemd LimitNOFILE=, \
             ulimit -Hn, /etc/security/limits.conf)"
        );
    }
}

/// Whether an accept error means the process or the system is out of file descriptors.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}
