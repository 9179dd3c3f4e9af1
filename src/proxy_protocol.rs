//! The PROXY protocol (HAProxy's, versions 1 and 2): behind a TCP load balancer or proxy
//! (HAProxy, nginx's stream module, AWS NLB, ...), the header it sends first on each connection
//! names the client's own address, which then stands in the log, the lifecycle hooks, the admin
//! API and `limits.max_connection_rate` instead of the proxy's.
//!
//! A listener with `proxy_protocol = true` requires the header on every connection, before TLS
//! or WebSocket: as the protocol's specification asks, the receiver does not guess, so a
//! connection without one is refused. Only what the header takes is read from the socket; the
//! bytes after it (the MQTT CONNECT, a TLS ClientHello) stay for the Session.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The twelve bytes a version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 header, its CRLF included (the specification's bound).
const V1_MAX: usize = 107;

/// The most bytes of addresses and TLVs a version 2 header may announce here. The addresses
/// take at most 216; proxies add TLVs (HAProxy's TLS details, AWS's VPC endpoint), well below.
const V2_MAX_BODY: usize = 4096;

/// Why a connection's PROXY protocol header was refused.
#[derive(Debug, Error)]
pub enum ProxyHeaderError {
    /// The connection started with something else (a client that reached the listener without
    /// the proxy, or a proxy not set to send the header).
    #[error(
        "the connection did not start with a PROXY protocol header (expected on this listener)"
    )]
    Missing,
    /// A version 1 header that does not parse.
    #[error("malformed PROXY protocol v1 header: {0}")]
    MalformedV1(&'static str),
    /// A version 1 header with no CRLF within its 107 bytes.
    #[error("PROXY protocol v1 header longer than 107 bytes")]
    V1TooLong,
    /// A version 2 header that does not parse.
    #[error("malformed PROXY protocol v2 header: {0}")]
    MalformedV2(&'static str),
    /// A version 2 header announcing more than [`V2_MAX_BODY`] bytes.
    #[error("PROXY protocol v2 header announces {0} bytes (at most 4096 accepted)")]
    V2TooLong(usize),
    /// The socket failed or closed before the header was whole.
    #[error("connection lost while reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY protocol header at the start of `stream`, and nothing after it. Returns the
/// client's address it names, or `None` where the header says to use the connection's own
/// (v1 `UNKNOWN`, a v2 `LOCAL` command such as a proxy's health check, or an address family
/// other than IPv4 and IPv6).
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; 12];
    // The shortest header of either version is longer than 12 bytes: nothing after it is read.
    stream.read_exact(&mut start).await?;
    if start == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if len > V2_MAX_BODY {
            return Err(ProxyHeaderError::V2TooLong(len));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        return parse_v2(fixed[0], fixed[1], &body);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    let mut line = start.to_vec();
    let mut peeked = [0u8; V1_MAX];
    loop {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::V1TooLong);
        }
        // Looked at before it is taken, so that the bytes after the CRLF stay in the socket.
        // Whatever is taken was seen, so each wait is for bytes not yet seen.
        let room = V1_MAX - line.len();
        let seen = stream.peek(&mut peeked[..room]).await?;
        if seen == 0 {
            return Err(ProxyHeaderError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        let take = match line_end(line.last().copied(), &peeked[..seen]) {
            Some(end) => end,
            None => seen,
        };
        let from = line.len();
        line.resize(from + take, 0);
        stream.read_exact(&mut line[from..]).await?;
        if line.ends_with(b"\r\n") {
            line.truncate(line.len() - 2);
            return parse_v1(&line);
        }
    }
}

/// How many bytes of `more` end a v1 line whose last byte so far is `last`: up to and with its
/// CRLF, if it has one.
fn line_end(last: Option<u8>, more: &[u8]) -> Option<usize> {
    if last == Some(b'\r') && more.first() == Some(&b'\n') {
        return Some(1);
    }
    more.windows(2).position(|w| w == b"\r\n").map(|at| at + 2)
}

/// Parses a version 1 header without its CRLF: `PROXY TCP4|TCP6 src dst sport dport`, or
/// `PROXY UNKNOWN` with anything after it.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ProxyHeaderError::MalformedV1;
    let line = std::str::from_utf8(line).map_err(|_| MalformedV1("not ASCII"))?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(MalformedV1("no PROXY keyword"));
    }
    let family = fields.next().ok_or(MalformedV1("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = fields[..] else {
        return Err(MalformedV1("not four address fields"));
    };
    // Both addresses of the family named; the source is the client's.
    let ip: IpAddr = match family {
        "TCP4" => both::<Ipv4Addr>(source, destination, "bad IPv4 address")?.into(),
        "TCP6" => both::<Ipv6Addr>(source, destination, "bad IPv6 address")?.into(),
        _ => return Err(MalformedV1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let port = |field: &str| {
        if field.is_empty() || field.len() > 5 || !field.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MalformedV1("bad port"));
        }
        field.parse::<u16>().map_err(|_| MalformedV1("bad port"))
    };
    port(destination_port)?;
    Ok(Some(SocketAddr::new(ip, port(source_port)?)))
}

/// `source` parsed as an address of type `A`, once `destination` parses as one too.
fn both<A: std::str::FromStr>(
    source: &str,
    destination: &str,
    bad: &'static str,
) -> Result<A, ProxyHeaderError> {
    let parse = |field: &str| {
        field
            .parse::<A>()
            .map_err(|_| ProxyHeaderError::MalformedV1(bad))
    };
    parse(destination)?;
    parse(source)
}

/// Parses a version 2 header's version and command byte, family byte and address block.
fn parse_v2(
    version_command: u8,
    family: u8,
    body: &[u8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ProxyHeaderError::MalformedV2;
    if version_command >> 4 != 2 {
        return Err(MalformedV2("version is not 2"));
    }
    match version_command & 0x0F {
        // LOCAL: the proxy's own connection (a health check); its endpoints are the real ones.
        0 => return Ok(None),
        1 => {}
        _ => return Err(MalformedV2("command is neither LOCAL nor PROXY")),
    }
    let address = |len: usize| {
        body.get(..len)
            .ok_or(MalformedV2("address block shorter than its family needs"))
    };
    match family >> 4 {
        1 => {
            let a = address(12)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        2 => {
            let a = address(36)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Ok(Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)))
        }
        // Unspecified or a Unix socket: no IP address to stand for the client.
        0 | 3 => Ok(None),
        _ => Err(MalformedV2("unknown address family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a connection sends where its header should be: a header, a refusal, never
        /// a panic.
        #[test]
        fn any_bytes_parse_or_are_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            version_command in any::<u8>(),
            family in any::<u8>(),
        ) {
            let _ = parse_v1(&bytes);
            let _ = parse_v2(version_command, family, &bytes);
            let _ = line_end(bytes.first().copied(), &bytes);
        }
    }

    fn v1(line: &str) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        parse_v1(line.as_bytes())
    }

    #[test]
    fn v1_names_the_source() {
        assert_eq!(
            v1("PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883").unwrap(),
            Some("203.0.113.7:51234".parse().unwrap())
        );
        assert_eq!(
            v1("PROXY TCP6 2001:db8::7 2001:db8::1 40000 8883").unwrap(),
            Some("[2001:db8::7]:40000".parse().unwrap())
        );
        assert_eq!(v1("PROXY UNKNOWN").unwrap(), None);
        assert_eq!(v1("PROXY UNKNOWN ffff::1 ffff::2 1 2").unwrap(), None);
    }

    #[test]
    fn v1_refuses_what_does_not_parse() {
        for bad in [
            "PROXY TCP4 203.0.113.7 10.0.0.1 51234",
            "PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883 extra",
            "PROXY TCP4 2001:db8::7 10.0.0.1 51234 1883",
            "PROXY TCP4 203.0.113.7 2001:db8::1 51234 1883",
            "PROXY TCP6 2001:db8::7 10.0.0.1 51234 1883",
            "PROXY TCP6 203.0.113.7 10.0.0.1 51234 1883",
            "PROXY TCP4 203.0.113.7 10.0.0.1 65536 1883",
            "PROXY TCP4 203.0.113.7 10.0.0.1 +1 1883",
            "PROXY TCP4 203.0.113.7 10.0.0.1 1 x",
            "PROXY UDP4 203.0.113.7 10.0.0.1 1 2",
            "PROXY  TCP4 203.0.113.7 10.0.0.1 1 2",
            "PROXY",
        ] {
            assert!(
                matches!(v1(bad), Err(ProxyHeaderError::MalformedV1(_))),
                "{bad}"
            );
        }
        assert!(parse_v1(b"PROXY TCP4 \xff 1 2 3").is_err());
    }

    #[test]
    fn v1_line_end_may_straddle_reads() {
        assert_eq!(line_end(Some(b'\r'), b"\n\x10\x0c"), Some(1));
        assert_eq!(line_end(Some(b'4'), b" 1883\r\n\x10"), Some(7));
        assert_eq!(line_end(Some(b'4'), b" 18"), None);
        assert_eq!(line_end(None, b"\r"), None);
    }

    #[test]
    fn v2_names_the_source() {
        let v4 = [203, 0, 113, 7, 10, 0, 0, 1, 0xC8, 0x22, 0x07, 0x5B];
        assert_eq!(
            parse_v2(0x21, 0x11, &v4).unwrap(),
            Some("203.0.113.7:51234".parse().unwrap())
        );
        // TLVs after the addresses are skipped.
        let mut with_tlv = v4.to_vec();
        with_tlv.extend_from_slice(&[0x05, 0x00, 0x02, b'i', b'd']);
        assert_eq!(
            parse_v2(0x21, 0x11, &with_tlv).unwrap(),
            Some("203.0.113.7:51234".parse().unwrap())
        );
        let mut v6 = vec![0u8; 36];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 7;
        v6[32..34].copy_from_slice(&40000u16.to_be_bytes());
        assert_eq!(
            parse_v2(0x21, 0x21, &v6).unwrap(),
            Some("[2001::7]:40000".parse().unwrap())
        );
    }

    #[test]
    fn v2_local_and_unspecified_keep_the_connection_s_own_address() {
        assert_eq!(parse_v2(0x20, 0x00, &[]).unwrap(), None);
        assert_eq!(parse_v2(0x20, 0x11, &[1; 12]).unwrap(), None);
        assert_eq!(parse_v2(0x21, 0x00, &[]).unwrap(), None);
        assert_eq!(parse_v2(0x21, 0x31, &[0; 216]).unwrap(), None);
    }

    #[test]
    fn v2_refuses_what_does_not_parse() {
        for (version_command, family, body) in [
            (0x11, 0x11, vec![0; 12]),
            (0x22, 0x11, vec![0; 12]),
            (0x21, 0x11, vec![0; 11]),
            (0x21, 0x21, vec![0; 35]),
            (0x21, 0x41, vec![0; 12]),
        ] {
            assert!(
                matches!(
                    parse_v2(version_command, family, &body),
                    Err(ProxyHeaderError::MalformedV2(_))
                ),
                "{version_command:#x} {family:#x} {}",
                body.len()
            );
        }
    }
}
