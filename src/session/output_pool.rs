//! Output buffers kept for reuse by the Sessions of one worker thread.
//!
//! A Session hands its output buffer to the socket write and goes on filling another; when the
//! write completes, the written buffer comes back here, cleared, for the next Session that needs
//! one. A busy connection then cycles between buffers without calling the allocator (a window of
//! 32 PUBLISHes is a few KiB, past the allocator's per-thread cache, and each fresh one was a
//! `malloc`, a `free` and now and then a consolidation of the heap), while an idle one holds none.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers smaller than this are freed, not kept: acknowledgements fit in the output's first
/// allocation (`MIN_OUTPUT_ALLOCATION`, 1 KiB), which the allocator's own cache serves, and a
/// spare that small would only be grown again by the deliveries that take it.
const MIN_KEPT_CAPACITY: usize = 2 * 1024;

/// Buffers larger than this are freed, not kept (a burst of retained messages can grow one to
/// megabytes; most windows fit in a few KiB).
const MAX_KEPT_CAPACITY: usize = 16 * 1024;

/// How many buffers one thread keeps at most (so at most 2 MiB).
const MAX_KEPT_BUFFERS: usize = 128;

thread_local! {
    /// This thread's spare buffers, empty, each with capacity.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer: a spare one of this thread's if there is one, else one that allocates on
/// its first write.
pub(super) fn take() -> BytesMut {
    SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_default()
}

/// Keeps `buf` (cleared) for [`take`], unless it is too small or too large, or this thread
/// keeps enough already.
pub(super) fn give_back(mut buf: BytesMut) {
    if !(MIN_KEPT_CAPACITY..=MAX_KEPT_CAPACITY).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < MAX_KEPT_BUFFERS {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_with_its_capacity() {
        std::thread::spawn(|| {
            assert_eq!(take().capacity(), 0, "nothing kept yet: no allocation");
            let mut buf = BytesMut::with_capacity(4096);
            buf.extend_from_slice(b"written");
            let at = buf.as_ptr();
            give_back(buf);
            let again = take();
            assert!(again.is_empty());
            assert_eq!(again.as_ptr(), at, "the same allocation");
            assert!(again.capacity() >= 4096);
            assert_eq!(take().capacity(), 0, "taken once");
        })
        .join()
        .expect("no panic");
    }

    #[test]
    fn small_and_large_buffers_are_freed_and_the_count_is_bounded() {
        std::thread::spawn(|| {
            give_back(BytesMut::with_capacity(MAX_KEPT_CAPACITY + 1));
            assert_eq!(take().capacity(), 0, "too large to keep");
            give_back(BytesMut::with_capacity(1024));
            assert_eq!(take().capacity(), 0, "too small to keep");
            for _ in 0..MAX_KEPT_BUFFERS + 10 {
                give_back(BytesMut::with_capacity(MIN_KEPT_CAPACITY));
            }
            let kept = SPARE.with(|spare| spare.borrow().len());
            assert_eq!(kept, MAX_KEPT_BUFFERS);
        })
        .join()
        .expect("no panic");
    }
}
