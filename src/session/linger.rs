//! How a connection ends when the broker closes it: a lingering close.
//!
//! Closing a socket with unread input makes the kernel send a reset, and a reset can destroy what
//! the broker wrote last (a DISCONNECT with its reason code, a refusing CONNACK) before the client
//! reads it: a client that is still writing gets a broken pipe instead. So the broker, once its
//! output is written, shuts down its write side (the client reads everything, then end of
//! stream), then reads and discards what the client still sends, until the client closes, for at
//! most [`LINGER_TIME`] and [`LINGER_BYTES`], and only then closes the socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::socket::Stream;

use crate::metrics::Metrics;

/// Longest a closed connection is drained: its write side shutdown included.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Most bytes read and discarded from a closed connection.
pub const LINGER_BYTES: usize = 1024 * 1024;

/// One open connection in `Metrics::connections_current`, from accept until the socket is
/// closed, lingering included (so a graceful shutdown waits for the lingering closes too).
pub struct ConnectionSlot(Arc<Metrics>);

impl ConnectionSlot {
    /// Counts a connection as open; returns the slot and the number now open.
    pub fn open(metrics: &Arc<Metrics>) -> (Self, u64) {
        let open = metrics.connection_opened();
        (ConnectionSlot(Arc::clone(metrics)), open)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// Shuts down the write side (TLS: close_notify first), then reads and discards until the client
/// closes, [`LINGER_BYTES`] were read, or [`LINGER_TIME`] passed; then everything is dropped and
/// the socket closed. Called only once the output is written.
pub(super) async fn linger(mut stream: Stream, slot: ConnectionSlot) {
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    if !matches!(
        tokio::time::timeout_at(deadline, stream.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // Most clients close at once, so the first read needs only a few bytes; a client still
    // writing gets a larger buffer, allocated then. The task of each lingering connection stays
    // small: a mass disconnect lingers thousands at once.
    let mut first = [0u8; 64];
    let mut discarded = match tokio::time::timeout_at(deadline, stream.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return,
    };
    let mut discard = vec![0u8; 4096];
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut discard)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
    drop((stream, slot));
}
