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

/// What the packet reader gives its Session.
pub(super) enum ReadEvent {
    /// A packet read, or why none could be.
    Packet(Result<Packet, CodecError>),
    /// The end of the Session's turn, asked for by [`SharedStream::want_turn_end`]: the
    /// reader has read what there is to read now. The Session routes what it read and writes
    /// its output then, so the packets of a read burst and the deliveries its mailbox held go
    /// out together. actix polls the reader after the Session's wait futures and mailbox in
    /// every poll of its task, so a turn end asked for by a handler comes in the same poll,
    /// with no future spawned for it.
    TurnEnd,
}

/// Packets returned in a row, without the socket running dry, after which the reader counts as
/// busy ([`SharedStream::reader_busy`]): actix's stream handling takes 16 items per poll of the
/// Session's task before it lets the Session's other futures run.
const BUSY_AFTER: u8 = 15;

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
    /// Packets returned since the socket last ran dry.
    in_a_row: u8,
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
            in_a_row: 0,
        }
    }

    /// The socket has run dry (or the stream is over): a [`ReadEvent::TurnEnd`] if the
    /// Session asked for one.
    fn ran_dry(&mut self) -> Option<ReadEvent> {
        if self.in_a_row > 0 {
            self.in_a_row = 0;
            self.stream.set_reader_busy(false);
        }
        self.stream.take_turn_end().then_some(ReadEvent::TurnEnd)
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
    type Item = ReadEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.ran_dry());
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
                        this.in_a_row = this.in_a_row.saturating_add(1);
                        if this.in_a_row == BUSY_AFTER {
                            this.stream.set_reader_busy(true);
                        }
                        return Poll::Ready(Some(ReadEvent::Packet(Ok(packet))));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(ReadEvent::Packet(Err(e))));
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
                // Nothing more to read now: the Session's turn ends, if it asked.
                Poll::Pending => {
                    return this
                        .ran_dry()
                        .map_or(Poll::Pending, |end| Poll::Ready(Some(end)))
                }
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(ReadEvent::Packet(Err(CodecError::Io(e)))));
                }
                Poll::Ready(Ok(0)) => {
                    this.done = true;
                    if !this.buf.is_empty() {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "bytes remaining on stream",
                        );
                        return Poll::Ready(Some(ReadEvent::Packet(Err(CodecError::Io(e)))));
                    }
                    // A turn end asked for comes first; the end of the stream on the next poll.
                    continue;
                }
                Poll::Ready(Ok(n)) => {
                    this.read_at = CompactInstant::now();
                    this.metrics.traffic.bytes_received(n);
                }
            }
        }
    }
}
