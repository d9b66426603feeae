//! The dialing side of a tunnel, whichever engine dials: an edge dialing its hub, or a hub
//! dialing an edge that listens for it. TCP + TLS 1.3 or QUIC, the listener's certificate
//! pinned by fingerprint, and the channel binding the authentication exchange signs.

use rand::RngExt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

use crate::auth::EXPORTER_LABEL;
use crate::config::Performance;
use crate::error::{Error, Result};
use crate::transport::quic;
use crate::transport::tls::{self, Trust};

/// The TCP connect gives up after this (10 s: longer than any sane RTT plus SYN retries for
/// one lost packet, short enough that a redial loop keeps moving).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// SNI sent to the listener. The listener is authenticated by its pinned fingerprint, not by
/// name, so the name carries no meaning; a fixed one avoids leaking the configured host name.
pub const SNI: &str = "hub.remoteingress.invalid";

/// A session that stayed up this long was healthy: the next failure starts the backoff over.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Full-jitter-ish exponential backoff: a random delay in [½·d, d] where d doubles from `base`
/// up to `cap`, so a fleet of dialers does not reconnect in lock-step after a restart.
pub fn backoff(base_ms: u64, cap_ms: u64, attempt: u32) -> Duration {
    let d = base_ms.saturating_mul(1u64 << attempt.min(20)).min(cap_ms);
    let ms = rand::rng().random_range(d / 2..=d);
    Duration::from_millis(ms)
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// What a failed handshake means, in the words an operator needs: a pin mismatch names both
/// fingerprints.
fn pin_error(msg: &str) -> Option<Error> {
    let i = msg.find(tls::PIN_MISMATCH)?;
    let detail = &msg[i + tls::PIN_MISMATCH.len()..];
    Some(Error::FingerprintMismatch {
        pinned: field(detail, "pinned "),
        actual: field(detail, "got "),
    })
}

fn field(detail: &str, key: &str) -> String {
    detail
        .split([',', '"', ':'])
        .find_map(|part| part.trim().strip_prefix(key))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// TCP connect and the TLS handshake with the pinned certificate. Returns the stream and its
/// channel binding. `what` names the listener in errors ("the hub", "edge e1"); `perf` sizes
/// the socket's buffers.
pub async fn tls(
    host: &str,
    port: u16,
    trust: Trust,
    what: &str,
    perf: &Performance,
) -> Result<(ClientTls, [u8; 32])> {
    let addr = format!("{host}:{port}");
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&addr, perf.tcp_socket_buffer())).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(Error::Connect { addr, source }),
        Err(_) => return Err(Error::Timeout(format!("connecting to {what} at {addr}"))),
    };
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(trust)));
    let name = rustls::pki_types::ServerName::try_from(SNI).map_err(|e| Error::Tls(e.to_string()))?;
    let tls = connector.connect(name, tcp).await.map_err(|e| {
        let msg = e.to_string();
        pin_error(&msg)
            .unwrap_or_else(|| Error::Tls(format!("handshake with {what} at {addr} failed: {msg}")))
    })?;
    let binding = tls
        .get_ref()
        .1
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| Error::Tls(format!("exporter: {e}")))?;
    Ok((tls, binding))
}

/// TCP connect to each address `addr` resolves to in turn, as `TcpStream::connect` does, with
/// the socket's buffers set to `buffer` first: the window scale is chosen from the receive
/// buffer when the SYN goes out, so a buffer set after connecting could never be announced
/// past the scale autotuning's maximum implied.
async fn connect(addr: &str, buffer: Option<usize>) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        // As TcpStream::connect: an address whose socket cannot be made (IPv6 disabled in the
        // kernel, say) is skipped for the next one.
        let made = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let socket = match made {
            Ok(s) => s,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        if let Some(bytes) = buffer {
            crate::engine::tune_buffers(&socket, bytes);
        }
        match socket.connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// A connected QUIC tunnel before authentication: its own endpoint (one per dial, so a
/// redial never inherits a dead path), the connection, and the opened control stream.
pub struct QuicDialed {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub control: quic::Duplex,
    pub binding: [u8; 32],
}

/// QUIC connect with the pinned certificate, then the control stream and its preamble.
/// `transport` carries the dialer's windows, keep-alive and how many streams it accepts;
/// `endpoint_config` the largest UDP payload it accepts (`quic::dial_endpoint_config`).
pub async fn quic(
    host: &str,
    port: u16,
    trust: Trust,
    transport: quinn::TransportConfig,
    endpoint_config: quinn::EndpointConfig,
    what: &str,
    perf: &Performance,
) -> Result<QuicDialed> {
    let addr = quic::resolve(host, port).await?;
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = crate::engine::udp::bound_std_socket(local, perf.udp_socket_buffer())
        .and_then(|sock| quinn::Endpoint::new(endpoint_config, None, sock, quic::runtime()))
        .map_err(|source| Error::Bind {
            addr: format!("udp {local}"),
            source,
        })?;
    let mut cfg = quic::client_crypto(tls::client_config(trust))?;
    cfg.transport_config(Arc::new(transport));
    let conn = endpoint
        .connect_with(cfg, addr, SNI)
        .map_err(|e| Error::Tls(format!("QUIC connect to {what} at {addr}: {e}")))?
        .await
        .map_err(|e| {
            let msg = e.to_string();
            pin_error(&msg).unwrap_or_else(|| match e {
                quinn::ConnectionError::TimedOut => {
                    Error::Timeout(format!("QUIC to {what} at {addr} timed out"))
                }
                _ => Error::Tls(format!("QUIC handshake with {what} at {addr} failed: {msg}")),
            })
        })?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::PeerClosed(format!("QUIC control stream: {e}")))?;
    send.write_all(quic::PREAMBLE)
        .await
        .map_err(|e| Error::PeerClosed(format!("QUIC control stream: {e}")))?;
    let binding = quic::binding(&conn)?;
    Ok(QuicDialed {
        endpoint,
        conn,
        control: quic::Duplex { send, recv },
        binding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{announced_wscale, socket_buffers, MIN_DISTINCT_WSCALE};

    /// A dialed TLS tunnel's socket is sized by `performance.socketBuffer` (128 KiB: exact
    /// without CAP_NET_ADMIN under a stock `net.core.wmem_max`), before it connects: the window
    /// scale it announced in its SYN follows the set size, not autotuning's maximum (which a
    /// plain connection to the same listener announces).
    #[tokio::test]
    async fn a_dialed_tls_tunnel_is_sized_by_socket_buffer() {
        const SET: u32 = 128 * 1024;
        let id = tls::Identity::from_pem(
            include_str!("../testdata/cert.pem"),
            include_str!("../testdata/key.pem"),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(id.server_config().unwrap()));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // The listener comes back with the hub's side: the plain connection below needs it open.
        let hub = tokio::spawn(async move {
            let tcp = l.accept().await.unwrap().0;
            (acceptor.accept(tcp).await.unwrap(), l)
        });
        let perf = Performance {
            socket_buffer: SET,
            ..Performance::default()
        };
        let (stream, _) = tls(
            "127.0.0.1",
            port,
            Trust::DangerouslyAnyCertificate,
            "the test hub",
            &perf,
        )
        .await
        .unwrap();
        let (_hub_side, _listener) = hub.await.unwrap();
        assert_eq!(
            socket_buffers(stream.get_ref().0),
            (2 * SET as usize, 2 * SET as usize)
        );
        let plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (set, autotuned) = (announced_wscale(stream.get_ref().0), announced_wscale(&plain));
        // Only where autotuning's maximum needs a larger scale than 128 KiB does (any stock
        // tcp_rmem; not with window scaling off or a tcp_rmem max of 256 KiB or less).
        if autotuned > MIN_DISTINCT_WSCALE {
            assert!(
                set < autotuned,
                "window scale {set} with the set size, {autotuned} autotuned"
            );
        }
    }
}
