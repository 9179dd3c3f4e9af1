//! Giving memory back after a spike of connections. An allocator keeps the pages that
//! thousands of closed connections freed (with glibc's, 10k idle connections that come and go
//! left the broker at 42 MB RSS, from 4.5 MB). The broker binary allocates with jemalloc (the
//! `jemalloc` feature, on by default), whose arenas a purge empties of unused pages; glibc's
//! `malloc_trim` does the same for memory allocated through glibc (everything, where the library
//! runs with the system allocator). Without the feature only glibc's is called, and no jemalloc
//! is built. The broker does both when the connection count has fallen to half of its peak since the last
//! trim, checking every few seconds: no cost while connections stay, and none per connection;
//! and, with `[persistence]`, when a compaction gave back the room that a spike of queued
//! messages left in the writer's live state.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::metrics::Metrics;

/// How often the connection count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// A fall smaller than this is not worth a trim.
const MIN_FALL: u64 = 1000;

/// When to trim: after the connection count fell to half of its peak since the last trim (and
/// by at least `MIN_FALL` connections).
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: u64,
}

impl TrimPolicy {
    /// Notes the peak since the last look and the current connection count; tells whether to
    /// trim now.
    pub fn should_trim(&mut self, peak_since: u64, connections: u64) -> bool {
        self.peak = self.peak.max(peak_since).max(connections);
        if connections <= self.peak / 2 && self.peak - connections >= MIN_FALL {
            self.peak = connections;
            return true;
        }
        false
    }
}

/// Resident memory of this process in bytes (`/proc/self/statm`), if readable.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(pages * page_size)
}

/// jemalloc's name for "every arena" in a `mallctl` name (`MALLCTL_ARENAS_ALL`).
#[cfg(feature = "jemalloc")]
const PURGE_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";

/// Returns free heap pages to the OS: jemalloc's unused pages in every arena (with the
/// `jemalloc` feature), and glibc's free ones.
fn trim() {
    #[cfg(feature = "jemalloc")]
    // SAFETY: a purge takes no argument and returns nothing (null pointers, zero length); it
    // only gives the arenas' unused pages back. Its status is not needed: the RSS is logged.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns freed memory to the OS once the persistence writer has given back the room
/// (`room_bytes`) that a spike of queued messages left in its live state (a compaction after
/// they were delivered or dropped), and logs it. Called on a thread of the writer's, beside it.
pub(crate) fn trim_after_queued_messages_went(room_bytes: usize) {
    let (rss_before, rss_after) = trim_measured();
    info!(
        room_bytes,
        rss_before, rss_after, "returned freed memory to the OS after queued messages went"
    );
}

/// [`trim`], returning the resident bytes before and after it (0 where unreadable).
fn trim_measured() -> (u64, u64) {
    let before = resident_bytes().unwrap_or(0);
    trim();
    (before, resident_bytes().unwrap_or(0))
}

/// Checks the connection count every few seconds for the broker's life and trims after a fall.
pub async fn trim_after_spikes(metrics: Arc<Metrics>) {
    let mut policy = TrimPolicy::default();
    loop {
        actix_rt::time::sleep(CHECK_EVERY).await;
        // The peak counts the spikes that came and went between two looks.
        let (peak, connections) = metrics.take_connections_peak();
        if policy.should_trim(peak, connections) {
            let (rss_before, rss_after) = trim_measured();
            info!(
                connections,
                rss_before, rss_after, "returned freed memory to the OS after connections closed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_a_fall_to_half_the_peak() {
        let mut p = TrimPolicy::default();
        assert!(!p.should_trim(100, 100));
        assert!(!p.should_trim(10_000, 10_000));
        assert!(!p.should_trim(10_000, 6_000), "not yet half");
        assert!(p.should_trim(6_000, 4_000));
        assert!(!p.should_trim(4_000, 4_000), "once per fall");
        assert!(!p.should_trim(4_000, 3_000), "not half of the new peak");
        assert!(p.should_trim(3_000, 1_500));
        assert!(
            !p.should_trim(1_500, 600),
            "a fall of less than 1000 connections"
        );
        assert!(
            p.should_trim(5_000, 0),
            "a spike that came and went between two looks"
        );
    }
}
