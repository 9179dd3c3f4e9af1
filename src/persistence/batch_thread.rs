//! The writer thread's scheduling class: on Linux it runs as `SCHED_BATCH`.
//!
//! The writer sleeps in the kernel through every `fdatasync` (twice: for the data, then for the
//! device's cache flush) and is woken by the disk's completion. Under the normal policy each of
//! those wake-ups may preempt the worker thread that runs the Sessions, on a machine with as
//! many busy threads as cores. A batch thread keeps its fair share of CPU and runs at once on
//! an idle core, but does not preempt a running thread when it wakes: the worker finishes its
//! turn, and the writer's next drain takes more records in one commit. On this project's
//! 2-core machines that doubled QoS 1 window-1 traffic to persistent subscribers with
//! `fsync = "always"` (`docs/benchmarks.md`, "The writer as a batch thread").

use tracing::debug;

/// Makes the calling thread a batch thread (`SCHED_BATCH`, nice unchanged). Elsewhere than on
/// Linux, or if the kernel refuses, the thread keeps its policy and this says so at debug
/// level: it changes only how the writer shares the CPU, never what it does.
pub(super) fn run_as_batch_thread() {
    if let Err(e) = set_batch_policy() {
        debug!(error = %e, "persistence writer keeps the normal scheduling policy");
    }
}

#[cfg(target_os = "linux")]
fn set_batch_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param we own; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_batch_policy() -> std::io::Result<()> {
    Err(std::io::Error::other("SCHED_BATCH is Linux's"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_calling_thread_and_only_it_becomes_a_batch_thread() {
        let policy = std::thread::spawn(|| {
            run_as_batch_thread();
            // SAFETY: no arguments to validate; pid 0 is the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .expect("no panic");
        assert_eq!(policy, libc::SCHED_BATCH);
        // SAFETY: as above.
        let here = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(
            here,
            libc::SCHED_OTHER,
            "the test's own thread is untouched"
        );
    }
}
