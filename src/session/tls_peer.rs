//! How a Session over TLS notices, while it waits before its CONNACK, that its client has gone.
//!
//! Over plain TCP a peek at the socket tells ([`SharedStream::peer_gone`]). Over TLS a client
//! that closes cleanly sends a close_notify alert first: data, encrypted, which a peek cannot
//! tell from a packet. So the TCP socket beneath is looked at instead ([`TlsBeneath`]): the
//! client has reset the connection, or it has shut its side (`POLLRDHUP`) and what waits unread
//! is nothing or one record exactly a close_notify long under the connection's cipher suite.
//! Anything else waiting (a packet sent behind the CONNECT, then the close) keeps the Session
//! waiting, so that it is still served, as over plain TCP.
//!
//! The socket gives no event for this without reading it (which the Session does not do while
//! it waits), so it is looked at on a timer: soon after the wait begins, then less often.
//!
//! [`SharedStream::peer_gone`]: super::socket::SharedStream::peer_gone

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{CipherSuite, ProtocolVersion, SupportedCipherSuite};
use tokio_rustls::server::TlsStream;

use super::{Session, SessionShared, Stream, Trust};

/// `poll`'s "the peer shut its side" (Linux); elsewhere only a reset is seen.
#[cfg(target_os = "linux")]
const PEER_SHUT: libc::c_short = libc::POLLRDHUP;
#[cfg(not(target_os = "linux"))]
const PEER_SHUT: libc::c_short = 0;

/// The first look at the socket, after the wait begins; each later one waits twice as long, up
/// to [`LAST_PAUSE`].
pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two looks: a flood of CONNECTs closed at once leaves no more
/// connections open than arrive in this time, whatever the password checks' queue.
pub(super) const LAST_PAUSE: Duration = Duration::from_millis(200);

/// The TCP socket beneath a TLS stream, and the length on the wire of its client's
/// close_notify alert.
#[derive(Debug, Clone, Copy)]
pub(super) struct TlsBeneath {
    /// Valid as long as the stream that owns it is held: [`TlsBeneath::client_gone`] is only
    /// called while it is.
    fd: RawFd,
    /// 0 where the cipher suite is not known: then only an empty socket counts as closed.
    close_notify: u32,
}

impl TlsBeneath {
    /// What a Session needs of `stream`, whose handshake is done.
    pub(super) fn of(stream: &TlsStream<TcpStream>) -> Self {
        let (tcp, connection) = stream.get_ref();
        TlsBeneath {
            fd: tcp.as_raw_fd(),
            close_notify: close_notify_len(
                connection.protocol_version(),
                connection.negotiated_cipher_suite(),
            ),
        }
    }

    /// Whether the client has reset the connection, or shut its side with nothing unread but
    /// its close_notify. Never blocks.
    pub(super) fn client_gone(&self) -> bool {
        let mut look = libc::pollfd {
            fd: self.fd,
            events: PEER_SHUT,
            revents: 0,
        };
        // SAFETY: one pollfd, alive for the call; a timeout of 0, so it does not block.
        if unsafe { libc::poll(&mut look, 1, 0) } != 1 {
            return false;
        }
        // An error (a reset) or a socket closed both ways. We have not shut our side, so it
        // was the client.
        if look.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return true;
        }
        if look.revents & PEER_SHUT == 0 {
            return false;
        }
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int into `unread`.
        if unsafe { libc::ioctl(self.fd, libc::FIONREAD, &mut unread) } != 0 {
            return false;
        }
        match u32::try_from(unread) {
            Ok(0) => true,
            Ok(bytes) => self.close_notify != 0 && bytes == self.close_notify,
            Err(_) => false,
        }
    }
}

/// The bytes of a close_notify alert's record: a 5-byte record header, then the 2-byte alert
/// sealed by the suite's AEAD (a 16-byte tag for every suite rustls offers). TLS 1.3 adds the
/// inner content type byte; TLS 1.2's AES-GCM an 8-byte explicit nonce, its ChaCha20 none.
fn close_notify_len(version: Option<ProtocolVersion>, suite: Option<SupportedCipherSuite>) -> u32 {
    const HEADER: u32 = 5;
    const ALERT: u32 = 2;
    const TAG: u32 = 16;
    match (version, suite) {
        (Some(ProtocolVersion::TLSv1_3), Some(SupportedCipherSuite::Tls13(_))) => {
            HEADER + ALERT + 1 + TAG
        }
        (Some(ProtocolVersion::TLSv1_2), Some(SupportedCipherSuite::Tls12(suite))) => {
            match suite.common.suite {
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => HEADER + ALERT + TAG,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => HEADER + 8 + ALERT + TAG,
                _ => 0,
            }
        }
        _ => 0,
    }
}

impl Session {
    /// Starts a Session for a TLS connection whose handshake is done, on the current arbiter.
    pub fn start_tls(
        stream: TlsStream<TcpStream>,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
    ) -> Addr<Session> {
        Session::start_as(Stream::tls(stream), peer, shared, Trust::Password, None)
    }

    /// [`Session::start_certified`] for a TLS connection (not a WebSocket over TLS): as it,
    /// and its client is noticed gone while its CONNECT waits, as with [`Session::start_tls`].
    pub fn start_tls_certified(
        stream: TlsStream<TcpStream>,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
        identity: Option<String>,
    ) -> Addr<Session> {
        let username = identity.map(Box::from);
        Session::start_as(
            Stream::tls(stream),
            peer,
            shared,
            Trust::Certificate,
            username,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_notify_lengths_follow_the_version_and_the_aead() {
        use tokio_rustls::rustls::crypto::ring::cipher_suite;
        let tls13 = cipher_suite::TLS13_AES_128_GCM_SHA256;
        let gcm12 = cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384;
        let chacha12 = cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
        let v13 = Some(ProtocolVersion::TLSv1_3);
        let v12 = Some(ProtocolVersion::TLSv1_2);
        assert_eq!(close_notify_len(v13, Some(tls13)), 24);
        assert_eq!(close_notify_len(v12, Some(gcm12)), 31);
        assert_eq!(close_notify_len(v12, Some(chacha12)), 23);
        assert_eq!(close_notify_len(None, None), 0);
    }
}
