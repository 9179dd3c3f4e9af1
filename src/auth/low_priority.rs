//! The Authenticator's threads run behind the traffic: on Linux at a nice value 10 above the
//! broker's (0 -> 10 for a broker started normally; at most 19).
//!
//! Each CONNECT with a password not verified before costs the password file's PBKDF2 (31 ms of
//! a core at 100,000 rounds), and wrong passwords and unknown user names always do. A peer
//! that sends such CONNECTs in a loop would otherwise take every core from the Sessions with
//! a few connections (measured: 20 at a time cut the delivered rate of 8 window-1 pairs
//! beside them to a third: `docs/benchmarks.md`, "A flood of wrong passwords"). At nice 10 a thread weighs about a tenth of a
//! normal one in the scheduler: PBKDF2 still runs at full speed on an idle core, and gives way
//! to routing on a busy one.

use tracing::debug;

/// How much nicer than the broker's other threads an Authenticator thread is.
const NICER_BY: libc::c_int = 10;

/// Lowers the calling thread's priority by [`NICER_BY`]. Elsewhere than on Linux, or if the kernel
/// refuses, the thread keeps its priority and this says so at debug level: it changes only how
/// password checks share the CPU, never what they answer.
pub(super) fn yield_to_traffic() {
    if let Err(e) = set_nice() {
        debug!(error = %e, "authenticator thread keeps the normal priority");
    }
}

#[cfg(target_os = "linux")]
fn set_nice() -> std::io::Result<()> {
    // SAFETY: errno is this thread's; cleared so that a -1 from nice() can be told apart from
    // a new nice value of -1.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: a plain integer. On Linux the nice value is the calling thread's own.
    if unsafe { libc::nice(NICER_BY) } == -1 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(0) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_nice() -> std::io::Result<()> {
    Err(std::io::Error::other("per-thread nice values are Linux's"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn own_nice() -> libc::c_int {
        // SAFETY: no arguments; returns the calling thread's id.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let tid = libc::id_t::try_from(tid).expect("a thread id");
        // SAFETY: plain integers; on Linux PRIO_PROCESS with a thread id reads that thread's.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) }
    }

    #[test]
    fn the_calling_thread_and_only_it_yields() {
        let before = own_nice();
        let nice = std::thread::spawn(|| {
            yield_to_traffic();
            own_nice()
        })
        .join()
        .expect("no panic");
        assert_eq!(nice, (before + NICER_BY).min(19));
        assert_eq!(own_nice(), before, "the test's own thread is untouched");
    }
}
