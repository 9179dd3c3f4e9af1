//! MQTT bytes for the harness: CONNECT/SUBSCRIBE via mqttbytes (MQTT 3.1.1) or byte by byte
//! (MQTT 5), PUBLISH from a pre-encoded template patched in place, and a minimal frame splitter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::BytesMut;
use switchboard::codec::properties::put_var_int;
use switchboard::codec::{write_publish, write_publish_v5, PublishExtras, PublishHeader};
use switchboard::QoS;

/// Whether the clients speak MQTT 5 (`--mqtt 5`); set once at start.
static MQTT5: AtomicBool = AtomicBool::new(false);

/// Makes every client of this run speak MQTT 5 (or 3.1.1).
pub fn set_mqtt5(on: bool) {
    MQTT5.store(on, Ordering::Relaxed);
}

fn mqtt5() -> bool {
    MQTT5.load(Ordering::Relaxed)
}

/// Whether subscribers keep a persistent session (`--persistent-subscribers`); set once at start.
static PERSISTENT_SUBSCRIBERS: AtomicBool = AtomicBool::new(false);

/// Makes the subscribers of this run connect with a persistent session (clean session 0; MQTT 5:
/// Clean Start 0 and a Session Expiry Interval of an hour), so a broker with persistence keeps
/// their QoS 1/2 messages on disk.
pub fn set_persistent_subscribers(on: bool) {
    PERSISTENT_SUBSCRIBERS.store(on, Ordering::Relaxed);
}

/// Whether subscribers keep a persistent session.
pub fn persistent_subscribers() -> bool {
    PERSISTENT_SUBSCRIBERS.load(Ordering::Relaxed)
}

/// The user name and password every client connects with (`--username`), and with `--users N`
/// how many numbered users take turns; set once at start.
static CREDENTIALS: OnceLock<(String, String, u64)> = OnceLock::new();

/// `--source-address`: the one loopback address every spread connection comes from; set once
/// at start.
static SOURCE_ADDRESS: OnceLock<std::net::Ipv4Addr> = OnceLock::new();

/// Makes every connection that would spread over [`SOURCE_ADDRESSES`] come from `source`
/// instead (one client address, as a single attacker or a NAT is to the broker).
pub fn set_source_address(source: std::net::Ipv4Addr) {
    let _ = SOURCE_ADDRESS.set(source);
}

/// CONNECTs written with `--users`: the next one's user number.
static NEXT_USER: AtomicU64 = AtomicU64::new(0);

/// Makes every client of this run connect with this user name and password (with `users` > 0,
/// as `user0` .. `user<users-1>` in turn).
pub fn set_credentials(user: &str, password: &str, users: u64) {
    let _ = CREDENTIALS.set((user.to_string(), password.to_string(), users));
}

/// The user name and password of the next CONNECT, if any.
fn next_credentials() -> Option<(String, &'static str)> {
    let (user, password, users) = CREDENTIALS.get()?;
    let user = match users {
        0 => user.clone(),
        n => format!("{user}{}", NEXT_USER.fetch_add(1, Ordering::Relaxed) % n),
    };
    Some((user, password.as_str()))
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s.as_bytes());
}

fn framed(byte1: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![byte1];
    put_var_int(&mut out, body.len());
    out.extend(body);
    out
}

/// Bytes at the start of every payload: publisher id (u32), sequence number (u64), send time
/// in nanoseconds since the run started (u64).
pub const STAMP: usize = 20;

/// Keep-alive the harness's clients ask for, in seconds: longer than any measured run, so they
/// never need to ping; not 0, which rumqttd refuses.
pub const KEEP_ALIVE: u16 = 300;

/// Connects, sends CONNECT (keep-alive [`KEEP_ALIVE`]) and checks that CONNACK accepts it.
pub async fn handshake(
    addr: std::net::SocketAddr,
    id: &str,
) -> std::io::Result<tokio::net::TcpStream> {
    handshake_with(addr, id, true).await
}

/// Loopback source addresses the connection scenarios spread over (127.0.0.2, 127.0.0.3, ...):
/// each has its own ephemeral ports and TIME_WAIT entries, so a storm or an idle count is not
/// capped by one address's ~28k ports.
const SOURCE_ADDRESSES: u32 = 64;

/// [`handshake`] from a loopback source address chosen by `n` (see [`SOURCE_ADDRESSES`]) when
/// the broker is on loopback; from the default address otherwise.
pub async fn handshake_spread(
    addr: std::net::SocketAddr,
    id: &str,
    n: u64,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = connect_spread(addr, n).await?;
    handshake_on(stream, id, true).await
}

/// A PROXY protocol v2 header (PROXY, TCP over IPv4) naming a client address chosen by `n` in
/// 10.0.0.0/16, connected to `destination`.
pub fn proxy_v2_header(n: u64, destination: std::net::SocketAddr) -> Vec<u8> {
    let host = (n % 65_536) as u16;
    let destination = match destination {
        std::net::SocketAddr::V4(v4) => v4.ip().octets(),
        std::net::SocketAddr::V6(_) => [0; 4],
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&[10, 0]);
    header.extend_from_slice(&host.to_be_bytes());
    header.extend_from_slice(&destination);
    header.extend_from_slice(&(1024 + (n % 60_000) as u16).to_be_bytes());
    header.extend_from_slice(&1883u16.to_be_bytes());
    header
}

/// A TCP connection to `addr` from the loopback source address chosen by `n` (see
/// [`handshake_spread`]), without MQTT.
pub async fn connect_spread(
    addr: std::net::SocketAddr,
    n: u64,
) -> std::io::Result<tokio::net::TcpStream> {
    let std::net::SocketAddr::V4(v4) = addr else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    if !v4.ip().is_loopback() {
        return tokio::net::TcpStream::connect(addr).await;
    }
    let host = 2 + (n % u64::from(SOURCE_ADDRESSES)) as u32;
    let source = SOURCE_ADDRESS.get().copied().unwrap_or_else(|| {
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 0, 0)) + host)
    });
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}

/// [`handshake`] with the clean session (MQTT 5: clean start) flag as given; without it, an
/// MQTT 5 client asks for a Session Expiry Interval of an hour.
pub async fn handshake_with(
    addr: std::net::SocketAddr,
    id: &str,
    clean: bool,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    handshake_on(stream, id, clean).await
}

/// CONNECT and CONNACK on a connected `stream`.
async fn handshake_on(
    stream: tokio::net::TcpStream,
    id: &str,
    clean: bool,
) -> std::io::Result<tokio::net::TcpStream> {
    stream.set_nodelay(true)?;
    mqtt_connect(stream, id, clean).await
}

/// CONNECT and CONNACK over any byte stream (TCP, TLS).
pub async fn mqtt_connect<S>(mut stream: S, id: &str, clean: bool) -> std::io::Result<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&connect(id, KEEP_ALIVE, clean)).await?;
    // CONNACK: fixed header, then (session present, code[, MQTT 5 properties]).
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let mut len = usize::from(head[1] & 0x7F);
    if head[1] & 0x80 != 0 {
        let mut more = [0u8; 1];
        stream.read_exact(&mut more).await?;
        len |= usize::from(more[0] & 0x7F) << 7;
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    match body.get(1) {
        Some(0) => Ok(stream),
        code => Err(std::io::Error::other(format!("CONNACK {code:?}"))),
    }
}

/// A CONNECT frame, with clean session / clean start as `clean` says.
pub fn connect(client_id: &str, keep_alive: u16, clean: bool) -> Vec<u8> {
    let credentials = next_credentials();
    if mqtt5() {
        let mut body = Vec::new();
        string(&mut body, "MQTT");
        // User Name and Password flags (0xC0) with credentials.
        let login = if credentials.is_some() { 0xC0 } else { 0 };
        body.extend([5, login | if clean { 0x02 } else { 0x00 }]);
        body.extend(keep_alive.to_be_bytes());
        if clean {
            body.push(0); // no properties
        } else {
            body.extend([5, 0x11]); // Session Expiry Interval: an hour
            body.extend(3600u32.to_be_bytes());
        }
        string(&mut body, client_id);
        if let Some((user, password)) = &credentials {
            string(&mut body, user);
            string(&mut body, password);
        }
        return framed(0x10, body);
    }
    let mut connect = mqttbytes::v4::Connect::new(client_id);
    connect.keep_alive = keep_alive;
    connect.clean_session = clean;
    if let Some((user, password)) = credentials {
        connect.set_login(user, password.to_string());
    }
    let mut buf = BytesMut::new();
    connect.write(&mut buf).expect("CONNECT encodes");
    buf.to_vec()
}

/// A SUBSCRIBE frame.
pub fn subscribe(pid: u16, filters: &[String], qos: u8) -> Vec<u8> {
    if mqtt5() {
        let mut body = pid.to_be_bytes().to_vec();
        body.push(0); // no properties
        for filter in filters {
            string(&mut body, filter);
            body.push(qos);
        }
        return framed(0x82, body);
    }
    let qos = match qos {
        0 => mqttbytes::QoS::AtMostOnce,
        1 => mqttbytes::QoS::AtLeastOnce,
        _ => mqttbytes::QoS::ExactlyOnce,
    };
    let mut subscribe = mqttbytes::v4::Subscribe::new_many(
        filters
            .iter()
            .map(|f| mqttbytes::v4::SubscribeFilter::new(f.clone(), qos)),
    );
    subscribe.pkid = pid;
    let mut buf = BytesMut::new();
    subscribe.write(&mut buf).expect("SUBSCRIBE encodes");
    buf.to_vec()
}

/// An UNSUBSCRIBE frame for one filter.
pub fn unsubscribe(pid: u16, filter: &str) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if mqtt5() {
        body.push(0); // no properties
    }
    string(&mut body, filter);
    framed(0xA2, body)
}

/// A PUBLISH encoded once; each message copies it and patches packet id and stamp.
pub struct PublishTemplate {
    frame: Vec<u8>,
    pid_at: Option<usize>,
    stamp_at: usize,
}

impl PublishTemplate {
    /// A template for `topic` with a payload of `payload` bytes (at least [`STAMP`]).
    pub fn new(topic: &str, payload: usize, qos: u8, retain: bool) -> Self {
        let payload = vec![0x5A; payload.max(STAMP)];
        let qos = QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce);
        let mut buf = BytesMut::new();
        let header = PublishHeader {
            qos,
            retain,
            dup: false,
            pid: 1,
        };
        // MQTT 5: an empty property block (one byte) sits between packet id and payload.
        let props = if mqtt5() {
            write_publish_v5(
                &mut buf,
                topic,
                &payload,
                header,
                &PublishExtras::default(),
                None,
            );
            1
        } else {
            write_publish(&mut buf, topic, &payload, header);
            0
        };
        let stamp_at = buf.len() - payload.len();
        PublishTemplate {
            frame: buf.to_vec(),
            pid_at: (qos != QoS::AtMostOnce).then_some(stamp_at - props - 2),
            stamp_at,
        }
    }

    /// Appends one message to `out`.
    pub fn write(&self, out: &mut Vec<u8>, pid: u16, publisher: u32, seq: u64, nanos: u64) {
        let base = out.len();
        out.extend_from_slice(&self.frame);
        if let Some(at) = self.pid_at {
            out[base + at..base + at + 2].copy_from_slice(&pid.to_be_bytes());
        }
        let s = base + self.stamp_at;
        out[s..s + 4].copy_from_slice(&publisher.to_be_bytes());
        out[s + 4..s + 12].copy_from_slice(&seq.to_be_bytes());
        out[s + 12..s + 20].copy_from_slice(&nanos.to_be_bytes());
    }
}

/// One frame found in a read buffer: first byte, and the body's range.
pub struct Frame {
    pub byte1: u8,
    pub body: std::ops::Range<usize>,
}

/// Splits the complete frames at the start of `buf`; returns them and the bytes they span.
pub fn frames(buf: &[u8]) -> (Vec<Frame>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        let complete = loop {
            let Some(&b) = buf.get(i) else { break false };
            len |= ((b & 0x7F) as usize) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break true;
            }
            shift += 7;
        };
        if !complete || buf.len() < i + len {
            break;
        }
        out.push(Frame {
            byte1: buf[at],
            body: i..i + len,
        });
        at = i + len;
    }
    (out, at)
}

/// The packet identifier bytes at the start of an acknowledgement's body; `None` if the broker
/// sent fewer than two bytes.
pub fn pid_bytes(body: &[u8]) -> Option<[u8; 2]> {
    body.get(..2)?.try_into().ok()
}

/// The packet id and stamped payload fields of a PUBLISH body.
pub struct Stamp {
    pub pid: u16,
    pub publisher: u32,
    pub seq: u64,
    pub nanos: u64,
}

/// Reads a PUBLISH body sent by this harness; `None` for anything else.
pub fn read_stamp(byte1: u8, body: &[u8]) -> Option<Stamp> {
    let qos = (byte1 >> 1) & 3;
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut at = 2 + topic_len;
    let pid = if qos > 0 {
        at += 2;
        u16::from_be_bytes([*body.get(at - 2)?, *body.get(at - 1)?])
    } else {
        0
    };
    if mqtt5() {
        // Skip the property block (a variable byte integer length, then the properties).
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = *body.get(at)?;
            at += 1;
            len |= usize::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        at += len;
    }
    let s = body.get(at..at + STAMP)?;
    Some(Stamp {
        pid,
        publisher: u32::from_be_bytes(s[0..4].try_into().ok()?),
        seq: u64::from_be_bytes(s[4..12].try_into().ok()?),
        nanos: u64::from_be_bytes(s[12..20].try_into().ok()?),
    })
}
