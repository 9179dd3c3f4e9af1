//! The two halves of a Session's byte stream: a plain TCP socket's own halves, held inline, or
//! any other stream's (TLS, WebSocket, a bridge's in-process pipe) behind a box.
//!
//! Most connections are plain TCP, and each one used to pay for two boxes around its halves
//! (a 32-byte heap chunk each) that only the other streams need.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Any stream but plain TCP, boxed twice: the outer box is a thin pointer, so that the halves
/// below are no wider than TCP's own (the Session's width decides the size of its task).
type Boxed<T> = Box<Box<T>>;

/// The read half of a Session's stream.
pub(super) enum ReadHalf {
    /// A plain TCP socket's.
    Tcp(OwnedReadHalf),
    /// Any other stream's.
    Other(Boxed<dyn AsyncRead + Unpin>),
}

/// The write half of a Session's stream.
pub(super) enum WriteHalf {
    /// A plain TCP socket's.
    Tcp(OwnedWriteHalf),
    /// Any other stream's.
    Other(Boxed<dyn AsyncWrite + Unpin>),
}

/// Splits a plain TCP socket: no allocation beyond tokio's one shared socket.
pub(super) fn split_tcp(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = stream.into_split();
    (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
}

/// Splits any other stream.
pub(super) fn split_other<S>(stream: S) -> (ReadHalf, WriteHalf)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    (
        ReadHalf::Other(Box::new(Box::new(read))),
        WriteHalf::Other(Box::new(Box::new(write))),
    )
}

impl WriteHalf {
    /// Writes what of `buf` a plain TCP socket takes now, without waiting: `Some(n)` for `n > 0`
    /// bytes written (maybe fewer than `buf` holds). `None` where nothing was written: the
    /// socket is full, failed, or is not plain TCP. The caller then writes asynchronously, which
    /// meets (and reports) a failure again.
    pub(super) fn try_write_now(&self, buf: &[u8]) -> Option<usize> {
        match self {
            WriteHalf::Tcp(write) => write.try_write(buf).ok().filter(|&n| n > 0),
            WriteHalf::Other(_) => None,
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            ReadHalf::Other(read) => Pin::new(&mut **read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(write) => Pin::new(write).poll_write(cx, buf),
            WriteHalf::Other(write) => Pin::new(&mut **write).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(write) => Pin::new(write).poll_write_vectored(cx, bufs),
            WriteHalf::Other(write) => Pin::new(&mut **write).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(write) => write.is_write_vectored(),
            WriteHalf::Other(write) => write.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(write) => Pin::new(write).poll_flush(cx),
            WriteHalf::Other(write) => Pin::new(&mut **write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(write) => Pin::new(write).poll_shutdown(cx),
            WriteHalf::Other(write) => Pin::new(&mut **write).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_halves_are_no_wider_than_tcp_s_own() {
        assert_eq!(std::mem::size_of::<Option<WriteHalf>>(), 16);
        assert_eq!(std::mem::size_of::<Option<ReadHalf>>(), 16);
    }
}
