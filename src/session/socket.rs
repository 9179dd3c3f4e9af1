//! A Session's byte stream, shared by its packet reader and its writer: a plain TCP socket held
//! inline, or any other stream (TLS, WebSocket, a bridge's in-process pipe) behind a box.
//!
//! One allocation holds the socket itself. With tokio's split halves, a read went through the
//! reader's shared cell and then the halves' shared socket: two pointers to follow, and at
//! fleet rates (a device writes a few times a second) each one a cache miss, on every read
//! and on every write. Both sides of the stream live on the Session's thread and each borrow
//! lasts one poll, so one cell serves both.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use bytes::{Buf, Bytes};

/// What a stream other than plain TCP must be.
pub(super) trait Duplex: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Duplex for T {}

/// A connection's byte stream.
pub(super) enum Stream {
    /// A plain TCP socket.
    Tcp(TcpStream),
    /// Any other stream, boxed twice: the outer box (which also holds what was read ahead
    /// while the Session waited) is a thin pointer, so that this is no wider than TCP's own.
    Other(Box<OtherStream>),
}

/// A stream other than plain TCP.
pub(super) struct OtherStream {
    duplex: Box<dyn Duplex>,
    /// What [`SharedStream::peer_gone`] read while its Session waited, which the packet reader
    /// is handed before anything else.
    ahead: ReadAhead,
}

/// What a waiting Session's stream brought before its packet reader asked: bytes, then maybe
/// its end.
#[derive(Default)]
struct ReadAhead {
    bytes: Bytes,
    /// How the stream ended (end of stream, or an error), if it did.
    end: Option<io::Result<()>>,
}

/// The most [`SharedStream::peer_gone`] reads ahead of the packet reader: one read. Any byte
/// read means the client is still there (it sent a packet behind its CONNECT), so it reads no
/// more after that.
const READ_AHEAD: usize = 2048;

impl OtherStream {
    /// Reads once, into the read-ahead, unless something was read ahead already: `Ready` once
    /// the stream has ended (closed, reset, or failed) with nothing read ahead of the end.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ahead.bytes.is_empty() {
            return Poll::Pending;
        }
        if self.ahead.end.is_some() {
            return Poll::Ready(());
        }
        let mut chunk = [0u8; READ_AHEAD];
        let mut read = ReadBuf::new(&mut chunk);
        match Pin::new(&mut *self.duplex).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                self.ahead.bytes = Bytes::copy_from_slice(read.filled());
                Poll::Pending
            }
            Poll::Ready(end) => {
                self.ahead.end = Some(end);
                Poll::Ready(())
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.ahead.bytes.is_empty() {
            let n = self.ahead.bytes.len().min(buf.remaining());
            buf.put_slice(&self.ahead.bytes[..n]);
            self.ahead.bytes.advance(n);
            return Poll::Ready(Ok(()));
        }
        match self.ahead.end.take() {
            // An error is returned once; then the stream reads as ended.
            Some(end) => {
                self.ahead.end = Some(Ok(()));
                Poll::Ready(end)
            }
            None => Pin::new(&mut *self.duplex).poll_read(cx, buf),
        }
    }
}

impl Stream {
    /// Any other stream than plain TCP.
    pub(super) fn other<S: AsyncRead + AsyncWrite + Unpin + 'static>(stream: S) -> Self {
        Stream::Other(Box::new(OtherStream {
            duplex: Box::new(stream),
            ahead: ReadAhead::default(),
        }))
    }
}

/// The stream, shared by the Session's packet reader and its writer. Once taken back for a
/// lingering close ([`SharedStream::take_back`]), reads see end of stream and writes fail.
#[derive(Clone)]
pub(super) struct SharedStream(Rc<Shared>);

/// What a [`SharedStream`] shares: the stream, and what its packet reader left unread.
struct Shared {
    stream: RefCell<Option<Stream>>,
    /// Whether the packet reader held more bytes when it returned the connection's first
    /// packet (the CONNECT): packets sent right behind it, which a Session waiting before its
    /// CONNACK has not read yet ([`SharedStream::peer_gone`]).
    more_behind_first: Cell<bool>,
    /// The Session has work for the end of its turn (routing a read burst, writing its output):
    /// its packet reader returns [`ReadEvent::TurnEnd`](super::reader::ReadEvent) once it has
    /// nothing more to read now.
    turn_end_wanted: Cell<bool>,
    /// The packet reader has returned packets in a row without the socket running dry, and
    /// actix may hand the Session's task back before it does: see
    /// [`Session::schedule_turn_end`](super::Session).
    reader_busy: Cell<bool>,
}

impl SharedStream {
    /// Shares `stream`.
    pub(super) fn new(stream: Stream) -> Self {
        SharedStream(Rc::new(Shared {
            stream: RefCell::new(Some(stream)),
            more_behind_first: Cell::new(false),
            turn_end_wanted: Cell::new(false),
            reader_busy: Cell::new(false),
        }))
    }

    /// Asks the packet reader for a [`ReadEvent::TurnEnd`](super::reader::ReadEvent) once it
    /// has read what there is to read now.
    pub(super) fn want_turn_end(&self) {
        self.0.turn_end_wanted.set(true);
    }

    /// Whether a turn end was asked for since the last call (the packet reader's).
    pub(super) fn take_turn_end(&self) -> bool {
        self.0.turn_end_wanted.replace(false)
    }

    /// Set by the packet reader: whether it has returned packets in a row without the socket
    /// running dry.
    pub(super) fn set_reader_busy(&self, busy: bool) {
        self.0.reader_busy.set(busy);
    }

    /// Whether the packet reader is busy (see [`SharedStream::set_reader_busy`]).
    pub(super) fn reader_busy(&self) -> bool {
        self.0.reader_busy.get()
    }

    /// Called by the packet reader as it returns the first packet: whether it holds more.
    pub(super) fn note_more_behind_first(&self, more: bool) {
        self.0.more_behind_first.set(more);
    }

    /// Resolves once the client has closed or reset its connection with nothing of it left
    /// unread: neither in the stream nor in the packet reader behind the CONNECT. A Session
    /// that waits for a password check or a connect interceptor reads no packets meanwhile
    /// (`ctx.wait`), so this is how it learns that nobody waits for the answer. Never resolves
    /// while unread bytes wait (a client may send packets behind its CONNECT and then close
    /// its side; those are still served).
    ///
    /// Both ways poll with the Session's own task waker, the one the packet reader registers,
    /// which is not polled while the Session waits. A plain TCP socket is peeked at. Any other
    /// stream (TLS, WebSocket, both) is read, once: what a peek would see there is a TLS
    /// record or a WebSocket frame, and a client's clean close is one (a close_notify alert, a
    /// Close frame) that only its stream's own reader can tell from a packet. What that read
    /// brings is kept for the packet reader ([`OtherStream::poll_read`]).
    pub(super) fn peer_gone(&self) -> impl Future<Output = ()> + 'static {
        let shared = self.0.clone();
        std::future::poll_fn(move |cx| {
            if shared.more_behind_first.get() {
                return Poll::Pending;
            }
            match &mut *shared.stream.borrow_mut() {
                None => Poll::Ready(()),
                Some(Stream::Tcp(tcp)) => {
                    let mut byte = [0u8; 1];
                    let mut peeked = ReadBuf::new(&mut byte);
                    match tcp.poll_peek(cx, &mut peeked) {
                        // End of stream, or reset.
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(()),
                        // Bytes wait: the client is still there (nothing wakes this again,
                        // and nothing needs to: the check's answer ends the wait).
                        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
                    }
                }
                Some(Stream::Other(other)) => other.poll_ended(cx),
            }
        })
    }

    /// Takes the stream out; the reader sees end of stream and writes fail from now on.
    pub(super) fn take_back(&self) -> Option<Stream> {
        self.0.stream.borrow_mut().take()
    }

    /// Writes what of `buf` the stream takes now, without waiting: `Some((n, flushed))` for
    /// `n > 0` bytes taken (maybe fewer than `buf` holds); `None` where nothing was (the
    /// stream is full, failed or taken). A plain TCP socket needs no flush. Any other stream
    /// (TLS, WebSocket, a bridge's pipe) is flushed if it can be, polled with a waker that
    /// wakes nothing. Unless all of `buf` was taken and flushed, the caller writes and flushes
    /// the rest as a task, whose polls register the Session's own waker and meet (and report)
    /// a failure again.
    pub(super) fn try_write_at_once(&self, buf: &[u8]) -> Option<(usize, bool)> {
        match self.0.stream.borrow_mut().as_mut()? {
            Stream::Tcp(tcp) => tcp
                .try_write(buf)
                .ok()
                .filter(|&n| n > 0)
                .map(|n| (n, true)),
            Stream::Other(other) => {
                let mut cx = Context::from_waker(Waker::noop());
                let taken = match Pin::new(&mut *other.duplex).poll_write(&mut cx, buf) {
                    Poll::Ready(Ok(n)) if n > 0 => n,
                    _ => return None,
                };
                let flushed = matches!(
                    Pin::new(&mut *other.duplex).poll_flush(&mut cx),
                    Poll::Ready(Ok(()))
                );
                Some((taken, flushed))
            }
        }
    }
}

/// The error of a write after the stream was taken back.
fn taken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is closing")
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.0.stream.borrow_mut().as_mut() {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl SharedStream {
    /// Polls the stream with `poll` (for writing); an error once the stream was taken back.
    fn poll_taken_fails<T>(
        &self,
        poll: impl FnOnce(Pin<&mut Stream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.0.stream.borrow_mut().as_mut() {
            Some(stream) => poll(Pin::new(stream)),
            None => Poll::Ready(Err(taken())),
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_taken_fails(|stream| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_taken_fails(|stream| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.0
            .stream
            .borrow()
            .as_ref()
            .is_some_and(Stream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_taken_fails(|stream| stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_taken_fails(|stream| stream.poll_shutdown(cx))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Other(other) => other.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Other(other) => Pin::new(&mut *other.duplex).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Other(other) => Pin::new(&mut *other.duplex).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(tcp) => tcp.is_write_vectored(),
            Stream::Other(other) => other.duplex.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Other(other) => Pin::new(&mut *other.duplex).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Other(other) => Pin::new(&mut *other.duplex).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_no_wider_than_tcp_s_own_and_its_handle_is_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Option<Stream>>(),
            std::mem::size_of::<TcpStream>()
        );
        assert_eq!(std::mem::size_of::<Option<SharedStream>>(), 8);
    }

    /// Polls `future` once.
    fn poll_once(future: &mut Pin<Box<impl Future<Output = ()>>>) -> Poll<()> {
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_stream_closed_with_nothing_unread_is_gone_and_reads_as_ended() {
        use tokio::io::AsyncReadExt;
        let (near, far) = tokio::io::duplex(64);
        let mut shared = SharedStream::new(Stream::other(near));
        let mut gone = Box::pin(shared.peer_gone());
        assert!(poll_once(&mut gone).is_pending(), "the client is there");
        drop(far);
        assert!(poll_once(&mut gone).is_ready(), "the client closed");
        let mut rest = Vec::new();
        assert_eq!(shared.read_to_end(&mut rest).await.expect("end"), 0);
    }

    #[tokio::test]
    async fn bytes_read_while_waiting_keep_the_client_and_are_read_first() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let mut shared = SharedStream::new(Stream::other(near));
        far.write_all(b"packet").await.expect("write to the pipe");
        drop(far);
        let mut gone = Box::pin(shared.peer_gone());
        for _ in 0..3 {
            assert!(
                poll_once(&mut gone).is_pending(),
                "a packet waits: the client is still served"
            );
        }
        let mut rest = Vec::new();
        shared
            .read_to_end(&mut rest)
            .await
            .expect("the packet, then end");
        assert_eq!(rest, b"packet");
    }

    #[tokio::test]
    async fn a_taken_stream_reads_end_of_stream_and_refuses_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let mut shared = SharedStream::new(Stream::other(near));
        far.write_all(b"ab").await.expect("write to the pipe");
        let mut two = [0u8; 2];
        shared
            .read_exact(&mut two)
            .await
            .expect("read from the pipe");
        assert_eq!(&two, b"ab");
        shared.write_all(b"cd").await.expect("write to the pipe");
        let mut back = [0u8; 2];
        far.read_exact(&mut back).await.expect("read back");
        assert_eq!(&back, b"cd");
        assert!(shared.take_back().is_some());
        assert_eq!(shared.read(&mut two).await.expect("end of stream"), 0);
        let refused = shared
            .write_all(b"ef")
            .await
            .expect_err("written after take");
        assert_eq!(refused.kind(), io::ErrorKind::NotConnected);
        assert!(shared.try_write_at_once(b"ef").is_none());
    }
}
