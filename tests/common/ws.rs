//! A client-side WebSocket connection made by hand (RFC 6455), for the frames no library would
//! send and for closing at a chosen moment.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client-side WebSocket connection made by hand, for the frames no library would send: over
/// plain TCP, or over TLS (`wss://`).
pub struct RawWs<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl RawWs {
    /// Sends the opening handshake for `path` offering `mqtt`; returns the connection and the
    /// response head.
    pub async fn open(addr: SocketAddr, path: &str) -> (RawWs, String) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawWs::open_on(stream, addr, path).await
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawWs<S> {
    /// [`RawWs::open`] on `stream`, connected to `addr`.
    pub async fn open_on(mut stream: S, addr: SocketAddr, path: &str) -> (RawWs<S>, String) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(super::WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake answer in time")
                .expect("read");
            assert!(
                n > 0,
                "closed during the handshake: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        (RawWs { stream, buf }, head)
    }

    /// Sends one masked frame (clients must mask, RFC 6455 section 5.3) of fewer than 126
    /// bytes.
    pub async fn frame(&mut self, first_byte: u8, payload: &[u8]) {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first_byte];
        assert!(payload.len() < 126);
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.expect("write");
    }

    /// Sends a Close frame (status 1000, normal closure), as a WebSocket library closes.
    pub async fn close(&mut self) {
        self.frame(0x88, &[0x03, 0xE8]).await;
    }

    /// Sends `payload` as one binary frame.
    pub async fn binary(&mut self, payload: &[u8]) {
        self.frame(0x82, payload).await;
    }

    /// The next frame from the server: (opcode, payload); `None` once the server closed.
    pub async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        self.next_within(super::WAIT).await
    }

    /// [`RawWs::next`], each read given `within`.
    pub async fn next_within(&mut self, within: std::time::Duration) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(self.buf[1] & 0x7f);
                let (len, at) = match len {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(within, self.stream.read(&mut chunk))
                .await
                .expect("a frame or EOF in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Asserts the server ends the connection: a Close frame or EOF, and no MQTT data.
    pub async fn expect_closed(&mut self) {
        while let Some((opcode, payload)) = self.next().await {
            assert_eq!(
                opcode, 0x8,
                "expected a Close frame, got {opcode:#x} {payload:?}"
            );
        }
    }
}
