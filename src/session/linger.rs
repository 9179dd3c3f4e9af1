//! How a connection ends when the broker closes it: a lingering close.
//!
//! Closing a socket with unread input makes the kernel send a reset, and a reset can destroy what
//! the broker wrote last (a DISCONNECT with its reason code, a refusing CONNACK) before the client
//! reads it: a client that is still writing gets a broken pipe instead. So the broker, once its
//! output is written, shuts down its write side (the client reads everything, then end of
//! stream), then reads and discards what the client still sends, until the client closes, for at
//! most [`LINGER_TIME`] and [`LINGER_BYTES`], and only then closes the socket.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::socket::{ReadHalf, WriteHalf};

use crate::metrics::Metrics;

/// Longest a closed connection is drained: its write side shutdown included.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Most bytes read and discarded from a closed connection.
pub const LINGER_BYTES: usize = 1024 * 1024;

/// The socket's read half, shared by the Session's packet reader and the Session, so that a
/// closing Session can take it back for [`linger`]. Both live on the Session's thread; once
/// taken, the packet reader sees end of stream.
#[derive(Clone)]
pub(super) struct SharedReader(Rc<RefCell<Option<ReadHalf>>>);

impl SharedReader {
    pub(super) fn new(reader: ReadHalf) -> Self {
        SharedReader(Rc::new(RefCell::new(Some(reader))))
    }

    /// Takes the read half out; the packet reader reads end of stream from now on.
    pub(super) fn take(&self) -> Option<ReadHalf> {
        self.0.borrow_mut().take()
    }
}

impl AsyncRead for SharedReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.0.borrow_mut().as_mut() {
            Some(reader) => Pin::new(reader).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

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
/// the socket closed. `writer` is `None` when the output could not be written in time: the
/// close then happens at once.
pub(super) async fn linger(mut reader: ReadHalf, writer: Option<WriteHalf>, slot: ConnectionSlot) {
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let Some(mut writer) = writer else {
        return;
    };
    if !matches!(
        tokio::time::timeout_at(deadline, writer.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // Most clients close at once, so the first read needs only a few bytes; a client still
    // writing gets a larger buffer, allocated then. The task of each lingering connection stays
    // small: a mass disconnect lingers thousands at once.
    let mut first = [0u8; 64];
    let mut discarded = match tokio::time::timeout_at(deadline, reader.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return,
    };
    let mut discard = vec![0u8; 4096];
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, reader.read(&mut discard)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
    drop((reader, writer, slot));
}
