//! The WebSocket client of connect-storm's `--ws-path` (RFC 6455, by hand): the HTTP upgrade
//! offering `mqtt`, and masked frames.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest answer head to the upgrade accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Asks for a WebSocket at `path` on `tcp` (connected to `addr`) and reads the answer's head:
/// an error unless it is `101 Switching Protocols`.
pub async fn upgrade(tcp: &mut TcpStream, addr: SocketAddr, path: &str) -> io::Result<()> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    // The server sends nothing after its head until the client has sent something.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the answer to the WebSocket upgrade has no end to its head",
            ));
        }
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let status =
            String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
        return Err(io::Error::other(format!(
            "WebSocket upgrade refused: {status}"
        )));
    }
    Ok(())
}

/// One masked frame (clients mask theirs, RFC 6455 section 5.3) of `opcode`: 0x2 binary, 0x8
/// Close.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => match u16::try_from(n) {
            Ok(n) => {
                out.push(0x80 | 126);
                out.extend(n.to_be_bytes());
            }
            Err(_) => {
                out.push(0x80 | 127);
                out.extend((n as u64).to_be_bytes());
            }
        },
    }
    out.extend(mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A Close frame of status 1000 (normal closure), as a WebSocket library closes.
pub fn close() -> Vec<u8> {
    frame(0x8, &1000u16.to_be_bytes())
}
