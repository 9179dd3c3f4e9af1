//! The NATS wire protocol, as much as the client speaks: server URLs, control lines, the
//! frames a server sends, and the lines the client writes.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

use super::{Inbound, Publication};

/// The largest message taken from a server: NATS's own ceiling for `max_payload` (64 MiB). A
/// larger size in a MSG line is a broken server, not an allocation.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// The longest control line taken from the server (its `INFO` can be long in a big cluster).
pub(super) const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One server of `cluster.nats_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServer {
    /// Host name or address.
    pub host: String,
    /// Port (default 4222).
    pub port: u16,
    /// User and password from the URL (`nats://user:password@host`).
    pub user: Option<(String, String)>,
    /// Token from the URL (`nats://token@host`).
    pub token: Option<String>,
}

impl std::fmt::Display for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nats://{}:{}", self.host, self.port)
    }
}

/// Parses `nats://[user:password@|token@]host[:port]`, several separated by commas.
pub fn parse_urls(urls: &str) -> Result<Vec<NatsServer>, String> {
    let mut servers = Vec::new();
    for url in urls.split(',').map(str::trim) {
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| format!("`{url}` does not start with nats://"))?;
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, rest),
        };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse()
                    .map_err(|_| format!("`{url}`: the port is not a number"))?;
                (host, port)
            }
            None => (address, 4222),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        let (user, token) = match credentials.map(|c| c.split_once(':')) {
            Some(Some((user, password))) => (Some((user.into(), password.into())), None),
            Some(None) => (None, credentials.map(String::from)),
            None => (None, None),
        };
        servers.push(NatsServer {
            host: host.to_string(),
            port,
            user,
            token,
        });
    }
    Ok(servers)
}

/// Why the connection ended.
#[derive(Debug, Error)]
pub(super) enum NatsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server said: {0}")]
    Server(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `SUB <subject> [queue] <sid>`, written in place: a node that gets back onto NATS writes one
/// per filter it holds (100,001 for a fleet of 100,000 devices), with no line allocated for each.
pub(super) fn put_sub(out: &mut BytesMut, sid: u64, subject: &str, queue: Option<&str>) {
    out.put_slice(b"SUB ");
    out.put_slice(subject.as_bytes());
    if let Some(queue) = queue {
        out.put_u8(b' ');
        out.put_slice(queue.as_bytes());
    }
    out.put_u8(b' ');
    put_decimal(out, sid);
    out.put_slice(b"\r\n");
}

/// `n` in decimal ASCII.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

/// `PUB <subject> <size>` and the payload.
pub(super) fn put_pub(out: &mut BytesMut, publication: Publication) {
    use std::fmt::Write;
    // Written in place: no line allocated per message. Writing to a BytesMut cannot fail.
    let _ = write!(
        out,
        "PUB {} {}\r\n",
        publication.subject,
        publication.payload.len()
    );
    out.put_slice(&publication.payload);
    out.put_slice(b"\r\n");
}

/// Reads one control line (during the handshake).
pub(super) async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
) -> Result<String, NatsError> {
    loop {
        if let Some(end) = find_crlf(buffer) {
            let line = buffer.split_to(end + 2);
            return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        if buffer.len() > MAX_CONTROL_LINE {
            return Err(NatsError::Protocol("control line too long".into()));
        }
        if stream.read_buf(buffer).await? == 0 {
            return Err(NatsError::Protocol(
                "the server closed the connection".into(),
            ));
        }
    }
}

fn find_crlf(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\r\n")
}

pub(super) enum Frame {
    Message(Inbound),
    Ping,
    Pong,
    Error(String),
    Other,
}

/// Takes one whole frame off the front of `buffer`, if there is one.
pub(super) fn parse_frame(buffer: &mut BytesMut) -> Result<Option<Frame>, NatsError> {
    let Some(end) = find_crlf(buffer) else {
        if buffer.len() > MAX_CONTROL_LINE {
            return Err(NatsError::Protocol("control line too long".into()));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buffer[..end])
        .map_err(|_| NatsError::Protocol("a control line is not UTF-8".into()))?;
    let mut words = line.split_ascii_whitespace();
    let frame = match words.next().unwrap_or("") {
        "MSG" => {
            let words: Vec<&str> = words.collect();
            // MSG <subject> <sid> [reply-to] <#bytes>
            let (subject, sid, size) = match words.as_slice() {
                [subject, sid, size] | [subject, sid, _, size] => (*subject, *sid, *size),
                _ => return Err(NatsError::Protocol(format!("bad MSG line `{line}`"))),
            };
            let sid = sid
                .parse()
                .map_err(|_| NatsError::Protocol(format!("bad sid in `{line}`")))?;
            let size: usize = size
                .parse()
                .ok()
                .filter(|&size| size <= MAX_PAYLOAD)
                .ok_or_else(|| NatsError::Protocol(format!("bad size in `{line}`")))?;
            let subject = subject.to_string();
            let total = end + 2 + size + 2;
            if buffer.len() < total {
                buffer.reserve(total - buffer.len());
                return Ok(None);
            }
            buffer.advance(end + 2);
            let payload = buffer.split_to(size).freeze();
            buffer.advance(2);
            return Ok(Some(Frame::Message(Inbound {
                sid,
                subject,
                payload,
            })));
        }
        "PING" => Frame::Ping,
        "PONG" => Frame::Pong,
        "-ERR" => {
            let text = line.trim_start().trim_start_matches("-ERR");
            Frame::Error(text.trim().trim_matches('\'').to_string())
        }
        "+OK" | "INFO" => Frame::Other,
        other => {
            debug!(frame = other, "an unexpected NATS frame, ignored");
            Frame::Other
        }
    };
    buffer.advance(end + 2);
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_tokens_and_lists() {
        let servers = parse_urls("nats://a:b@h1:4333, nats://tok@h2,nats://[::1]:5").unwrap();
        assert_eq!(servers[0].user, Some(("a".into(), "b".into())));
        assert_eq!((servers[0].host.as_str(), servers[0].port), ("h1", 4333));
        assert_eq!(servers[1].token.as_deref(), Some("tok"));
        assert_eq!(servers[1].port, 4222);
        assert_eq!((servers[2].host.as_str(), servers[2].port), ("::1", 5));
        assert!(parse_urls("tcp://h").is_err());
        assert!(parse_urls("nats://h:x").is_err());
        assert!(parse_urls("nats://").is_err());
    }

    #[test]
    fn frames_are_taken_whole_and_in_order() {
        let mut buffer = BytesMut::from(
            &b"PING\r\nMSG a.b 7 5\r\nhello\r\nMSG c 8 r.x 2\r\nhi\r\nMSG d 1 10\r\npart"[..],
        );
        assert!(matches!(parse_frame(&mut buffer), Ok(Some(Frame::Ping))));
        let Ok(Some(Frame::Message(m))) = parse_frame(&mut buffer) else {
            panic!("a message")
        };
        assert_eq!(
            (m.subject.as_str(), m.sid, &m.payload[..]),
            ("a.b", 7, &b"hello"[..])
        );
        let Ok(Some(Frame::Message(m))) = parse_frame(&mut buffer) else {
            panic!("a message with a reply subject")
        };
        assert_eq!((m.sid, &m.payload[..]), (8, &b"hi"[..]));
        assert!(matches!(parse_frame(&mut buffer), Ok(None)));
        buffer.put_slice(b"-more!\r\n-ERR 'Stale Connection'\r\n");
        assert!(matches!(
            parse_frame(&mut buffer),
            Ok(Some(Frame::Message(_)))
        ));
        let Ok(Some(Frame::Error(e))) = parse_frame(&mut buffer) else {
            panic!("an error")
        };
        assert_eq!(e, "Stale Connection");
    }

    #[test]
    fn sub_lines_name_the_subject_the_queue_and_the_sid() {
        let mut out = BytesMut::new();
        put_sub(&mut out, 0, "switchboard.f.a", None);
        put_sub(&mut out, 42, "s.g", Some("q"));
        put_sub(&mut out, u64::MAX, "x", None);
        assert_eq!(
            &out[..],
            &b"SUB switchboard.f.a 0\r\nSUB s.g q 42\r\nSUB x 18446744073709551615\r\n"[..]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"MSG a\r\n"[..],
            b"MSG a x 1\r\n",
            b"MSG a 1 -1\r\n",
            b"MSG a 1 18446744073709551615\r\n",
            b"MSG a 1 67108865\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert!(parse_frame(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let long = vec![b'a'; MAX_CONTROL_LINE + 1];
        assert!(parse_frame(&mut BytesMut::from(&long[..])).is_err());
    }
}
