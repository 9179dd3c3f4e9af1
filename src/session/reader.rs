//! The Session's packet stream: reads the socket and decodes MQTT packets, holding no read
//! buffer while the connection is idle.
//!
//! tokio-util's `FramedRead` keeps its buffer between packets, and on a fleet of quiet devices
//! that buffer was a large part of what a connection cost. This one reads into a scratch array on
//! the stack whenever nothing is left over from the last read, and allocates a buffer only for
//! what was read (and keeps it only while a packet is partly read). A connection the codec finds
//! busy (several packets per read) gets the codec's large buffer and reads straight into it.

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::Decoder;

use super::deadlines::CompactInstant;
use super::socket::SharedStream;
use crate::codec::{CodecError, MqttCodec, Packet, BURST_READ_BUFFER};
use crate::metrics::Metrics;

/// Bytes read at a time while no buffer is held: most device packets fit in one read.
const SCRATCH: usize = 2048;

thread_local! {
    /// When the bytes of the packet a [`PacketReader`] on this thread returned last were read:
    /// set just before the packet is returned, and read by the Session's stream handler, which
    /// actix calls with that packet before anything else runs on the thread.
    static PACKET_READ_AT: Cell<CompactInstant> = Cell::new(CompactInstant::now());
}

/// When the packet the Session's stream handler is handling was read from the socket: one
/// clock reading per read, shared by the packets of a burst.
pub(super) fn packet_read_at() -> CompactInstant {
    PACKET_READ_AT.with(Cell::get)
}

/// The stream of packets a Session reads (see the module documentation).
pub(super) struct PacketReader {
    stream: SharedStream,
    codec: MqttCodec,
    buf: BytesMut,
    /// Where the bytes read are counted.
    metrics: Arc<Metrics>,
    /// End of stream, or an error returned: the stream is over.
    done: bool,
    /// When the last read that brought bytes returned.
    read_at: CompactInstant,
    /// Whether the first packet (the CONNECT) was returned.
    first_returned: bool,
}

impl PacketReader {
    pub(super) fn new(stream: SharedStream, codec: MqttCodec, metrics: Arc<Metrics>) -> Self {
        PacketReader {
            stream,
            codec,
            buf: BytesMut::new(),
            metrics,
            done: false,
            read_at: CompactInstant::now(),
            first_returned: false,
        }
    }

    /// Reads into the stack and copies what came into a buffer of its size: `Ok(0)` at end
    /// of stream.
    fn read_scratch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH];
        let mut read = ReadBuf::uninit(&mut scratch);
        match Pin::new(&mut self.stream).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let filled = read.filled();
                if !filled.is_empty() {
                    // A fresh allocation: nothing of the last one is kept alive by this buffer.
                    self.buf = BytesMut::with_capacity(filled.len().max(256));
                    self.buf.extend_from_slice(filled);
                }
                Poll::Ready(Ok(filled.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Stream for PacketReader {
    type Item = Result<Packet, CodecError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if !this.buf.is_empty() {
                match this.codec.decode(&mut this.buf) {
                    Ok(Some(packet)) => {
                        if !this.first_returned {
                            this.first_returned = true;
                            // Bytes behind it here (those in the stream are seen there).
                            this.stream.note_more_behind_first(!this.buf.is_empty());
                        }
                        let read_at = this.read_at;
                        PACKET_READ_AT.with(|at| at.set(read_at));
                        return Poll::Ready(Some(Ok(packet)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            let read = if this.buf.is_empty() && this.buf.capacity() < BURST_READ_BUFFER {
                // Nothing partial and not busy: give back what the buffer holds while waiting.
                this.buf = BytesMut::new();
                this.read_scratch(cx)
            } else {
                if this.buf.capacity() == this.buf.len() {
                    this.buf.reserve(256);
                }
                tokio_util::io::poll_read_buf(Pin::new(&mut this.stream), cx, &mut this.buf)
            };
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(CodecError::Io(e))));
                }
                Poll::Ready(Ok(0)) => {
                    this.done = true;
                    if !this.buf.is_empty() {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "bytes remaining on stream",
                        );
                        return Poll::Ready(Some(Err(CodecError::Io(e))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(n)) => {
                    this.read_at = CompactInstant::now();
                    this.metrics.traffic.bytes_received(n);
                }
            }
        }
    }
}
