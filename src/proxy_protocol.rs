//! The PROXY protocol (HAProxy's, versions 1 and 2): behind a TCP load balancer or proxy
//! (HAProxy, nginx's stream module, AWS NLB, ...), the header it sends first on each connection
//! names the client's own address, which then stands in the log, the lifecycle hooks, the admin
//! API and `limits.max_connection_rate` instead of the proxy's.
//!
//! A listener with `proxy_protocol = true` requires the header on every connection, before TLS
//! or WebSocket: as the protocol's specification asks, the receiver does not guess, so a
//! connection without one is refused. Only what the header takes is read from the socket; the
//! bytes after it (the MQTT CONNECT, a TLS ClientHello) stay for the Session.
//!
//! A proxy that terminated TLS may add, in a v2 header, the Common Name of the client
//! certificate it verified (HAProxy's `send-proxy-v2-ssl-cn`): with
//! `listener.use_identity_as_username` that name is the client's user name.

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

/// A v2 TLV: the TLS connection the proxy terminated (`PP2_TYPE_SSL`).
const TLV_SSL: u8 = 0x20;
/// Within it: the client certificate's Common Name (`PP2_SUBTYPE_SSL_CN`).
const TLV_SSL_CN: u8 = 0x22;
/// Its client flags: the client connected over TLS (`PP2_CLIENT_SSL`), and presented a
/// certificate on this connection or in the TLS session it resumed (`PP2_CLIENT_CERT_CONN`,
/// `PP2_CLIENT_CERT_SESS`).
const CLIENT_SSL: u8 = 0x01;
const CLIENT_CERT: u8 = 0x02 | 0x04;

/// What a PROXY protocol header says of its connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client's address; `None`: the connection's own stands (v1 `UNKNOWN`, a v2 `LOCAL`
    /// command such as a proxy's health check, an address family other than IPv4 and IPv6).
    pub client: Option<SocketAddr>,
    /// The Common Name of the client certificate the proxy verified where it terminated TLS
    /// (v2's SSL TLV with its CN: HAProxy's `send-proxy-v2-ssl-cn`). `None` without one, or
    /// when the proxy says the certificate was not presented or did not verify.
    pub verified_common_name: Option<String>,
}

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

/// Reads the PROXY protocol header at the start of `stream`, and nothing after it.
pub async fn read_header(stream: &mut TcpStream) -> Result<ProxyHeader, ProxyHeaderError> {
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
            let client = parse_v1(&line)?;
            return Ok(ProxyHeader {
                client,
                verified_common_name: None,
            });
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

/// Parses a version 2 header's version and command byte, family byte, and the rest: the
/// address block, then TLVs.
fn parse_v2(version_command: u8, family: u8, body: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    use ProxyHeaderError::MalformedV2;
    if version_command >> 4 != 2 {
        return Err(MalformedV2("version is not 2"));
    }
    match version_command & 0x0F {
        // LOCAL: the proxy's own connection (a health check); its endpoints are the real ones.
        0 => return Ok(ProxyHeader::default()),
        1 => {}
        _ => return Err(MalformedV2("command is neither LOCAL nor PROXY")),
    }
    let address = |len: usize| {
        body.get(..len)
            .ok_or(MalformedV2("address block shorter than its family needs"))
    };
    let (client, block) = match family >> 4 {
        1 => {
            let a = address(12)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            (Some(SocketAddr::new(ip.into(), port)), 12)
        }
        2 => {
            let a = address(36)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            (
                Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)),
                36,
            )
        }
        // A Unix socket: no IP address to stand for the client.
        3 => (None, address(216)?.len()),
        // Unspecified: whatever follows is to be ignored.
        0 => return Ok(ProxyHeader::default()),
        _ => return Err(MalformedV2("unknown address family")),
    };
    let verified_common_name = verified_common_name(&body[block..])?;
    Ok(ProxyHeader {
        client,
        verified_common_name,
    })
}

/// The Common Name in the SSL TLV among `tlvs`, if the proxy says the client presented a
/// certificate over TLS and it verified (its verify field 0).
fn verified_common_name(tlvs: &[u8]) -> Result<Option<String>, ProxyHeaderError> {
    let Some(ssl) = entries(tlvs)?
        .into_iter()
        .find(|(kind, _)| *kind == TLV_SSL)
    else {
        return Ok(None);
    };
    let [client, v0, v1, v2, v3, ref subs @ ..] = *ssl.1 else {
        return Err(ProxyHeaderError::MalformedV2(
            "SSL TLV shorter than its fixed part",
        ));
    };
    let verified = client & CLIENT_SSL != 0
        && client & CLIENT_CERT != 0
        && u32::from_be_bytes([v0, v1, v2, v3]) == 0;
    let common_name = entries(subs)?
        .into_iter()
        .find(|(kind, _)| *kind == TLV_SSL_CN)
        .and_then(|(_, name)| std::str::from_utf8(name).ok())
        .filter(|name| !name.is_empty());
    Ok(common_name.filter(|_| verified).map(str::to_owned))
}

/// The (type, value) entries of a TLV area, each a type byte and a big-endian 16-bit length.
fn entries(mut area: &[u8]) -> Result<Vec<(u8, &[u8])>, ProxyHeaderError> {
    let mut found = Vec::new();
    while let [kind, high, low, ref rest @ ..] = *area {
        let len = usize::from(u16::from_be_bytes([high, low]));
        let value = rest
            .get(..len)
            .ok_or(ProxyHeaderError::MalformedV2("TLV longer than the header"))?;
        found.push((kind, value));
        area = &rest[len..];
    }
    if !area.is_empty() {
        return Err(ProxyHeaderError::MalformedV2("TLV cut short"));
    }
    Ok(found)
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

    #[tokio::test]
    async fn a_v1_header_split_at_its_crlf_is_read_whole_and_no_further() {
        // Over real TCP: the CR arrives, the reader takes what came and waits (it is not
        // finished), then the LF and a CONNECT's first bytes arrive; it returns the header and
        // leaves the CONNECT in the socket.
        use std::future::Future;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client
            .write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 1883\r")
            .await
            .unwrap();
        server.readable().await.unwrap();
        let mut reading = Box::pin(read_header(&mut server));
        // One poll: whatever it can do with the bytes there, then it must wait.
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(reading.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the CR alone ends nothing");
        client.write_all(b"\n\x10\x0c").await.unwrap();
        let header = tokio::time::timeout(std::time::Duration::from_secs(5), reading)
            .await
            .expect("the header, once its LF came")
            .unwrap();
        assert_eq!(header.client, Some("192.0.2.1:1000".parse().unwrap()));
        let mut rest = [0u8; 2];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, [0x10, 0x0c]);
    }

    #[test]
    fn v1_line_end_may_straddle_reads() {
        assert_eq!(line_end(Some(b'\r'), b"\n\x10\x0c"), Some(1));
        assert_eq!(line_end(Some(b'4'), b" 1883\r\n\x10"), Some(7));
        assert_eq!(line_end(Some(b'4'), b" 18"), None);
        assert_eq!(line_end(None, b"\r"), None);
    }

    /// The client address a v2 header's rest names.
    fn v2_client(version_command: u8, family: u8, body: &[u8]) -> Option<SocketAddr> {
        parse_v2(version_command, family, body).unwrap().client
    }

    /// An IPv4 address block followed by an SSL TLV with these client flags, verify result and
    /// (if any) Common Name sub-TLV.
    fn with_ssl(client: u8, verify: u32, common_name: Option<&str>) -> Vec<u8> {
        let mut ssl = vec![client];
        ssl.extend_from_slice(&verify.to_be_bytes());
        ssl.extend_from_slice(&[0x21, 0x00, 0x07]);
        ssl.extend_from_slice(b"TLSv1.3");
        if let Some(name) = common_name {
            ssl.push(TLV_SSL_CN);
            ssl.extend_from_slice(&(name.len() as u16).to_be_bytes());
            ssl.extend_from_slice(name.as_bytes());
        }
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1, 0xC8, 0x22, 0x07, 0x5B];
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        body.push(TLV_SSL);
        body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
        body.extend_from_slice(&ssl);
        body
    }

    #[test]
    fn v2_names_the_source() {
        let v4 = [203, 0, 113, 7, 10, 0, 0, 1, 0xC8, 0x22, 0x07, 0x5B];
        let named = Some("203.0.113.7:51234".parse().unwrap());
        assert_eq!(v2_client(0x21, 0x11, &v4), named);
        // TLVs after the addresses are skipped.
        let mut with_tlv = v4.to_vec();
        with_tlv.extend_from_slice(&[0x05, 0x00, 0x02, b'i', b'd']);
        assert_eq!(v2_client(0x21, 0x11, &with_tlv), named);
        let mut v6 = vec![0u8; 36];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 7;
        v6[32..34].copy_from_slice(&40000u16.to_be_bytes());
        assert_eq!(
            v2_client(0x21, 0x21, &v6),
            Some("[2001::7]:40000".parse().unwrap())
        );
    }

    #[test]
    fn v2_local_and_unspecified_keep_the_connection_s_own_address() {
        let own = ProxyHeader::default();
        assert_eq!(parse_v2(0x20, 0x00, &[]).unwrap(), own);
        assert_eq!(
            parse_v2(0x20, 0x11, &with_ssl(0x07, 0, Some("x"))).unwrap(),
            own
        );
        assert_eq!(parse_v2(0x21, 0x00, &[]).unwrap(), own);
        assert_eq!(parse_v2(0x21, 0x31, &[0; 216]).unwrap(), own);
    }

    #[test]
    fn v2_names_a_verified_client_certificate() {
        let name = |body: &[u8]| parse_v2(0x21, 0x11, body).unwrap().verified_common_name;
        // TLS, a certificate on this connection (or the resumed session's), verified: 0.
        let gate = Some("1AB.ENTER.GATE".to_string());
        assert_eq!(name(&with_ssl(0x03, 0, Some("1AB.ENTER.GATE"))), gate);
        assert_eq!(name(&with_ssl(0x05, 0, Some("1AB.ENTER.GATE"))), gate);
        // Not verified, no certificate, not TLS, no name, an empty one: none.
        assert_eq!(name(&with_ssl(0x03, 1, Some("1AB.ENTER.GATE"))), None);
        assert_eq!(name(&with_ssl(0x01, 0, Some("1AB.ENTER.GATE"))), None);
        assert_eq!(name(&with_ssl(0x02, 0, Some("1AB.ENTER.GATE"))), None);
        assert_eq!(name(&with_ssl(0x03, 0, None)), None);
        assert_eq!(name(&with_ssl(0x03, 0, Some(""))), None);
        let plain = [203, 0, 113, 7, 10, 0, 0, 1, 0xC8, 0x22, 0x07, 0x5B];
        assert_eq!(name(&plain), None);
    }

    #[test]
    fn v2_refuses_what_does_not_parse() {
        let mut cut = with_ssl(0x03, 0, Some("gate"));
        cut.pop();
        let mut short_ssl = vec![0u8; 12];
        short_ssl.extend_from_slice(&[TLV_SSL, 0x00, 0x02, 0x03, 0x00]);
        for (version_command, family, body) in [
            (0x11, 0x11, vec![0; 12]),
            (0x22, 0x11, vec![0; 12]),
            (0x21, 0x11, vec![0; 11]),
            (0x21, 0x21, vec![0; 35]),
            (0x21, 0x41, vec![0; 12]),
            (0x21, 0x31, vec![0; 215]),
            (0x21, 0x11, cut),
            (0x21, 0x11, [vec![0; 12], vec![0x04, 0x00]].concat()),
            (0x21, 0x11, short_ssl),
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
