//! MQTT over WebSocket (`[websocket]`, MQTT 5 chapter 6): the handshake (path, subprotocol
//! `mqtt`) and an adapter that makes the WebSocket a byte stream, so the same Session serves it
//! as it serves TCP and TLS. Binary messages carry MQTT bytes, which may split or join packets
//! [MQTT-6.0.0-2]; any other data message closes that one connection [MQTT-6.0.0-1], as does a
//! malformed frame.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

/// The subprotocols a client may offer; `mqtt` is the standard's [MQTT-6.0.0-3], `mqttv3.1`
/// what some MQTT 3.1 clients send.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Completes the WebSocket handshake on `stream`: the request must be for `path`; the
/// subprotocol `mqtt` is selected when offered [MQTT-6.0.0-4]. Messages are limited to twice
/// `max_packet` (at least 1 MiB), so that one message can hold a packet and the next one's
/// start.
pub async fn accept<S>(
    stream: S,
    path: &str,
    max_packet: usize,
    peer: SocketAddr,
) -> Result<WsStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = max_packet.saturating_mul(2).max(1 << 20);
    let config = WebSocketConfig::default()
        // A connection reads a little at a time: devices send small packets.
        .read_buffer_size(4096)
        // Every message goes out when written: the Session batches its own output.
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let wanted = path.to_string();
    // The signature is tungstenite's `Callback`: its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, mut response: Response| {
        if request.uri().path() != wanted {
            debug!(addr = %peer, path = request.uri().path(), "WebSocket request for another path");
            let mut refused =
                ErrorResponse::new(Some(format!("MQTT over WebSocket is served at {wanted}\n")));
            *refused.status_mut() = StatusCode::NOT_FOUND;
            return Err(refused);
        }
        let offered = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| SUBPROTOCOLS.contains(p))
            .map(str::to_string);
        match offered {
            Some(protocol) => {
                if let Ok(value) = HeaderValue::from_str(&protocol) {
                    response
                        .headers_mut()
                        .insert("Sec-WebSocket-Protocol", value);
                }
            }
            None => debug!(addr = %peer, "WebSocket client offered no mqtt subprotocol"),
        }
        Ok(response)
    };
    let inner =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok(WsStream {
        inner,
        pending: Bytes::new(),
        peer,
    })
}

/// A WebSocket connection as a byte stream: reads are the payloads of binary messages in order,
/// each write is one binary message.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last binary message read.
    pending: Bytes,
    peer: SocketAddr,
}

fn io_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                // End of stream: the Session sees the connection close.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    info!(addr = %this.peer, "closing a WebSocket connection: it sent a text message, and MQTT is carried in binary messages [MQTT-6.0.0-1]");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message",
                    )));
                }
                // Pings are answered by tungstenite; pongs need nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => {
                    info!(addr = %this.peer, error = %e, "closing a WebSocket connection: bad frame");
                    return Poll::Ready(Err(io_error(e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let inner = Pin::new(&mut self.inner);
        ready!(inner.poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(io_error)
    }
}
