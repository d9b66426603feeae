//! The listening side of a tunnel, whichever engine listens: a hub waiting for its edges, or an
//! edge waiting for the hub that dials it (`listenForHub`). Both face the internet the same way,
//! so both get the same pre-authentication bounds:
//!
//! - a per-source failure budget ([`FailureLimiter`]): a source that spent it is refused before
//!   TLS, so guessing secrets or burning CPU with handshakes is slow;
//! - caps on unauthenticated connections, in total and per source ([`Admission`]);
//! - TLS: no handshake slot until the whole ClientHello has arrived; QUIC: a stateless Retry for
//!   unvalidated addresses, only the control stream and a small window before authentication,
//!   datagrams discarded;
//! - one deadline for handshake and authentication; a timeout or an abandoned attempt counts
//!   against the source like a wrong secret.
//!
//! What differs (who proves what, what starts after) is the [`Authenticator`]'s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::auth::admission::{Admission, Refusal, Via};
use crate::auth::{FailureLimiter, EXPORTER_LABEL};
use crate::config::{Limits, Performance};
use crate::error::{Error, Result};
use crate::event;
use crate::events::{log, EventSink};
use crate::supervise::{self, FaultPoint};
use crate::transport::quic;
use crate::transport::tls::Identity;
use crate::wire::proxy_protocol;

pub type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// Unauthenticated connections allowed per handshake slot. Silent or slow clients may wait for
/// their first bytes in numbers (they cost a socket and a small task); only clients that
/// actually started TLS compete for the few handshake slots. 16× keeps a real peer's chance
/// high under a crowd of idle connections while still bounding them.
const WAITING_PER_HANDSHAKE: u32 = 16;

/// At most one "refusing unauthenticated connections" warning this often: a flood must not
/// become a flood of log lines.
const BUSY_LOG_EVERY: Duration = Duration::from_secs(10);

/// The kernel's queue of connections not yet accepted: tokio's own default, so a burst of
/// connections (a flood, or a fleet of edges after a restart) waits for the accept loop rather
/// than being reset (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;

/// Ephemeral-port attempts when the port is 0 and the TCP port's number is taken for UDP.
const EPHEMERAL_ATTEMPTS: usize = 16;

/// The pre-authentication state of one listener (TLS and QUIC together).
pub struct Gate {
    events: EventSink,
    limits: Limits,
    /// "hub" or "edge", for log lines.
    role: &'static str,
    limiter: Mutex<FailureLimiter>,
    admission: Arc<Admission>,
    handshakes: Arc<Semaphore>,
    last_busy_log: Mutex<Option<Instant>>,
    /// What became of connection attempts, for status and metrics.
    outcomes: Mutex<Outcomes>,
}

/// Tunnel connections that authenticated, by transport, and attempts that did not, by reason
/// (an error code, `abandoned` for a silent or stalled client, `overLimit` for one refused at
/// the pending-handshake limits). Counted since the listener started.
#[derive(Default)]
struct Outcomes {
    authenticated_tls: u64,
    authenticated_quic: u64,
    failed: std::collections::BTreeMap<&'static str, u64>,
}

impl Gate {
    pub fn new(events: EventSink, limits: &Limits, role: &'static str) -> Gate {
        Gate {
            events,
            role,
            limiter: Mutex::new(FailureLimiter::new(
                limits.auth_failure_burst,
                limits.auth_failures_per_minute,
            )),
            admission: Admission::new(
                limits
                    .max_pending_handshakes
                    .saturating_mul(WAITING_PER_HANDSHAKE),
                limits.max_pending_handshakes,
                limits.max_pending_handshakes_per_source,
            ),
            handshakes: Arc::new(Semaphore::new(limits.max_pending_handshakes as usize)),
            last_busy_log: Mutex::new(None),
            outcomes: Mutex::new(Outcomes::default()),
            limits: limits.clone(),
        }
    }

    /// Unauthenticated connections now: (TLS, QUIC).
    pub fn pending(&self) -> (usize, usize) {
        self.admission.pending()
    }

    /// Status: connections that authenticated (by transport) and attempts that failed (by
    /// reason).
    pub fn outcomes(&self) -> serde_json::Value {
        let o = lock(&self.outcomes);
        serde_json::json!({
            "authenticated": { "tls": o.authenticated_tls, "quic": o.authenticated_quic },
            "failed": o.failed,
        })
    }

    fn count_failure(&self, reason: &'static str) {
        *lock(&self.outcomes).failed.entry(reason).or_default() += 1;
    }

    fn count_authenticated(&self, quic: bool) {
        let mut o = lock(&self.outcomes);
        if quic {
            o.authenticated_quic += 1;
        } else {
            o.authenticated_tls += 1;
        }
    }

    /// Logs (throttled) that an unauthenticated connection was refused, and why.
    fn note_refused(&self, via: &str, why: Refusal, ip: std::net::IpAddr) {
        self.count_failure("overLimit");
        let mut last = lock(&self.last_busy_log);
        if last.is_some_and(|t| t.elapsed() < BUSY_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let (tls, quic) = self.admission.pending();
        let what = match why {
            Refusal::Full => format!(
                "the {}'s limit of unauthenticated connections is reached",
                self.role
            ),
            Refusal::SourceFull => format!(
                "{ip} already holds {} unauthenticated connections (limits.maxPendingHandshakesPerSource)",
                self.limits.max_pending_handshakes_per_source
            ),
        };
        log(
            &self.events,
            "warn",
            format!("refusing new {via} tunnel connections: {what} ({tls} TLS and {quic} QUIC pending)"),
        );
    }

    /// One failed or abandoned attempt from `ip` counts against its budget; `reason` is an
    /// error code, or `abandoned`.
    pub fn failed_attempt(&self, ip: std::net::IpAddr, reason: &'static str) {
        self.count_failure(reason);
        lock(&self.limiter).record_failure(ip);
    }

    /// A handshake or authentication that ended in an error: counted, and reported.
    fn attempt_failed(&self, peer: SocketAddr, e: &Error) {
        let ip = proxy_protocol::unmap(peer).ip();
        self.failed_attempt(ip, e.code());
        self.events.as_ref()(event!("authFailed", {
            "remoteAddress": ip.to_string(), "remotePort": peer.port(),
            "edgeId": serde_json::Value::Null, "code": e.code(), "reason": e.to_string()
        }));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a listener does with a connection once it is encrypted, and after it authenticated.
pub trait Authenticator: Send + Sync + 'static {
    /// What a successful authentication yields (the hub: which edge; the edge: the session's
    /// parameters).
    type Peer: Send + 'static;

    fn gate(&self) -> &Gate;

    /// Ends the accept loops when it turns true.
    fn shutdown(&self) -> watch::Receiver<bool>;

    /// The authentication exchange on an encrypted channel. `Ok(None)`: refused, and already
    /// counted and reported; `Err`: failed (the listener counts and reports it).
    fn authenticate<S: AsyncRead + AsyncWrite + Unpin + Send>(
        self: &Arc<Self>,
        io: &mut S,
        binding: &[u8; 32],
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Option<Self::Peer>>> + Send;

    /// Runs an authenticated TLS tunnel (until it ends, or hands it on).
    fn serve_tls(
        self: Arc<Self>,
        tls: ServerTls,
        who: Self::Peer,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send;

    /// Runs an authenticated QUIC tunnel (until it ends, or hands it on).
    fn serve_quic(
        self: Arc<Self>,
        conn: quinn::Connection,
        control: quic::Duplex,
        who: Self::Peer,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send;

    /// The test hook checked for every accepted connection (the hub's listener has one).
    const FAULT: Option<FaultPoint> = None;
}

/// Binds the tunnel port for TCP (TLS) and the same number for UDP (QUIC). With port 0 the OS
/// picks the TCP port, whose number may be taken for UDP: then another is tried. The socket
/// buffers are `perf`'s (TCP connections take the listener's before their handshake, so the
/// window they announce already fits). Must run inside the runtime.
pub fn bind_tunnel_port(
    host: &str,
    port: u16,
    perf: &Performance,
) -> Result<(TcpListener, std::net::UdpSocket)> {
    let mut last = None;
    for _ in 0..if port == 0 { EPHEMERAL_ATTEMPTS } else { 1 } {
        let addr = format!("{host}:{port}");
        let bind_error = |source| Error::Bind {
            addr: addr.clone(),
            source,
        };
        let sockaddr = std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .map_err(bind_error)?
            .next()
            .ok_or_else(|| Error::InvalidConfig(format!("{host:?} does not resolve to an address")))?;
        let socket = if sockaddr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(bind_error)?;
        // As tokio's own bind: a restart does not wait out TIME_WAIT.
        socket.set_reuseaddr(true).map_err(bind_error)?;
        if let Some(bytes) = perf.tcp_socket_buffer() {
            crate::engine::tune_buffers(&socket, bytes);
        }
        socket.bind(sockaddr).map_err(bind_error)?;
        let listener = socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
        let bound = listener.local_addr()?;
        match crate::engine::udp::bound_std_socket(bound, perf.udp_socket_buffer()) {
            Ok(udp) => return Ok((listener, udp)),
            Err(source) => {
                last = Some(Error::Bind {
                    addr: format!("udp {bound} (QUIC shares the tunnel port's number)"),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::InvalidConfig(format!("cannot bind tunnel port {port}"))))
}

/// The QUIC endpoint of a listener: stateless-reset and connection-id keys from its identity
/// (so a restarted listener resets its old connections and the dialer redials at once), the
/// control stream only and [`quic::PREAUTH_RECEIVE_WINDOW`] until the peer authenticated.
pub fn quic_endpoint(
    identity: &Identity,
    tls: Arc<rustls::ServerConfig>,
    perf: &Performance,
    limits: &Limits,
    socket: std::net::UdpSocket,
) -> Result<quinn::Endpoint> {
    let addr = socket.local_addr()?;
    let mut c = quic::server_crypto(tls)?;
    let heartbeat = Duration::from_millis(limits.heartbeat_interval_ms);
    // Only the control stream until the peer has authenticated; raised after (by the hub).
    let mut transport = quic::transport_config(perf, heartbeat, quic::PREAUTH_STREAMS);
    // What an unauthenticated peer can make us buffer: the auth exchange needs well under a
    // kilobyte. Raised to the configured window after authentication.
    transport.receive_window(quinn::VarInt::from_u32(quic::PREAUTH_RECEIVE_WINDOW));
    c.transport_config(Arc::new(transport));
    // quinn's own queue of Initials not yet taken by the accept loop; past it quinn refuses by
    // itself. Twice our cap: the accept loop decides faster than that fills.
    c.max_incoming(limits.max_pending_handshakes as usize * 2);
    quinn::Endpoint::new(
        quic::hub_endpoint_config(identity.key.secret_der(), perf),
        Some(c),
        socket,
        quic::runtime(),
    )
    .map_err(|source| Error::Bind {
        addr: format!("udp {addr}"),
        source,
    })
}

/// Accepts TLS tunnels until shutdown.
pub async fn tls_accept_loop<A: Authenticator>(
    a: Arc<A>,
    listener: Arc<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
) {
    let mut shutdown = a.shutdown();
    if *shutdown.borrow() {
        return;
    }
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    log(&a.gate().events, "warn", format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if let Some(point) = A::FAULT {
            supervise::check(point);
        }
        let gate = a.gate();
        let ip = proxy_protocol::unmap(peer).ip();
        if !lock(&gate.limiter).allowed(&ip) {
            // Refused before TLS so a guessing client cannot even make us do crypto.
            drop(tcp);
            continue;
        }
        let admitted = match gate.admission.try_admit(ip, Via::Tls) {
            Ok(p) => p,
            Err(why) => {
                drop(tcp);
                gate.note_refused("TLS", why, ip);
                continue;
            }
        };
        let a = a.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let result = tls_connection(&a, &tls, tcp, peer, ip).await;
            match result {
                Some(Ok(Some((tls, who)))) => {
                    drop(admitted);
                    a.gate().count_authenticated(false);
                    a.serve_tls(tls, who, peer).await
                }
                // Refused by authenticate() (which counted it), or abandoned (counted).
                Some(Ok(None)) | None => {}
                Some(Err(e)) => a.gate().attempt_failed(peer, &e),
            }
        });
    }
}

/// A peer that finished the TLS or QUIC handshake must prove itself within this: the exchange
/// is one round trip and an HMAC, so 2 s covers a slow link's round trip and a lost packet's
/// retransmission, while a peer that stalls after the handshake (the part that costs CPU)
/// holds its place for 2 s, not the whole handshake deadline.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(2);

/// One TLS connection until it authenticated (or failed): its ClientHello, read as it arrives
/// into the TLS library's own buffer, with nothing but the socket and that buffer spent on it;
/// then, holding one of the few handshake slots, the TLS handshake; then, with the slot given
/// back, authentication within [`AUTH_DEADLINE`]. `None`: abandoned (silent, gone, or stalled
/// before its ClientHello was whole), already counted.
async fn tls_connection<A: Authenticator>(
    a: &Arc<A>,
    tls: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
    ip: std::net::IpAddr,
) -> Option<Result<Option<(ServerTls, A::Peer)>>> {
    let gate = a.gate();
    let deadline = tokio::time::Instant::now() + gate.limits.handshake_timeout();
    let hello = tokio::time::timeout_at(
        deadline,
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp),
    )
    .await;
    let start = match hello {
        Ok(Ok(start)) => start,
        // Something that is not a TLS ClientHello: refused with an alert, and said why.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Some(Err(Error::Tls(format!("not a TLS client: {e}"))));
        }
        // Silent, gone, or dribbling until the deadline: an abandoned attempt. Not worth an
        // event per connection, but it counts against the source.
        _ => {
            gate.failed_attempt(ip, "abandoned");
            return None;
        }
    };
    let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, gate.handshakes.clone().acquire_owned()).await
    else {
        gate.failed_attempt(ip, "abandoned");
        return None;
    };
    let handshake = tokio::time::timeout_at(deadline, start.into_stream(tls.clone())).await;
    drop(slot);
    let mut tls = match handshake {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let msg = e.to_string();
            let reason = if msg.contains("BadCertificate") || msg.contains("alert") {
                format!("the peer rejected our certificate or TLS parameters ({msg}); a wrong pinned fingerprint looks like this")
            } else {
                format!("TLS handshake failed: {msg}")
            };
            return Some(Err(Error::Tls(reason)));
        }
        Err(_) => {
            return Some(Err(Error::Timeout(
                "peer did not finish the handshake in time".into(),
            )))
        }
    };
    let auth_deadline = deadline.min(tokio::time::Instant::now() + AUTH_DEADLINE);
    let authenticated = tokio::time::timeout_at(auth_deadline, authenticate_tls(a, &mut tls, peer)).await;
    Some(match authenticated {
        Ok(Ok(Some(who))) => Ok(Some((tls, who))),
        Ok(Ok(None)) => {
            let _ = tls.shutdown().await;
            Ok(None)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Timeout(
            "peer did not authenticate in time after the TLS handshake".into(),
        )),
    })
}

/// The authentication exchange on an established TLS session, with its channel binding.
async fn authenticate_tls<A: Authenticator>(
    a: &Arc<A>,
    tls: &mut ServerTls,
    peer: SocketAddr,
) -> Result<Option<A::Peer>> {
    let binding = tls
        .get_ref()
        .1
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| Error::Tls(format!("exporter: {e}")))?;
    a.authenticate(tls, &binding, peer).await
}

/// quinn runs its endpoint state machine (the first Initial's frames included) under the
/// endpoint lock inside these calls, in our task: a panic there is fatal, not a loop restart.
fn quinn_call<T>(what: &str, f: impl FnOnce() -> T) -> T {
    supervise::dependency_call("quinn", what, f)
}

/// Accepts QUIC tunnels: handshake and authentication on the dialer's control stream, then
/// [`Authenticator::serve_quic`].
///
/// Before authentication a QUIC peer costs almost nothing (RFC 9000 §8.1, §21): an Initial from
/// an address that has not proven it receives our packets gets a stateless Retry; a source over
/// its failure budget is ignored; past the caps on unauthenticated connections (global and per
/// source) the listener refuses with one packet; an admitted connection may open only the
/// control stream and make us buffer at most [`quic::PREAUTH_RECEIVE_WINDOW`] bytes, its
/// datagrams are discarded as they arrive, and it must authenticate within the deadline.
pub async fn quic_accept_loop<A: Authenticator>(a: Arc<A>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        if let Some(point) = A::FAULT {
            supervise::check(point);
        }
        let gate = a.gate();
        let peer = incoming.remote_address();
        let ip = proxy_protocol::unmap(peer).ip();
        if !lock(&gate.limiter).allowed(&ip) {
            quinn_call("Incoming::ignore", || incoming.ignore());
            continue;
        }
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                // Stateless: quinn keeps nothing, the token comes back with the next Initial.
                let _ = quinn_call("Incoming::retry", || incoming.retry());
            } else {
                quinn_call("Incoming::refuse", || incoming.refuse());
            }
            continue;
        }
        let admitted = match gate.admission.try_admit(ip, Via::Quic) {
            Ok(p) => p,
            Err(why) => {
                quinn_call("Incoming::refuse", || incoming.refuse());
                gate.note_refused("QUIC", why, ip);
                continue;
            }
        };
        let Ok(connecting) = quinn_call("Incoming::accept", || incoming.accept()) else {
            continue;
        };
        let a = a.clone();
        tokio::spawn(async move {
            let hs = tokio::time::timeout(
                a.gate().limits.handshake_timeout(),
                quic_handshake(&a, connecting, peer),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout(
                    "peer did not finish the QUIC handshake and authentication in time".into(),
                ))
            });
            match hs {
                Ok(Some((conn, control, who))) => {
                    drop(admitted);
                    a.gate().count_authenticated(true);
                    a.serve_quic(conn, control, who, peer).await
                }
                // Refused by authenticate(), which counted it.
                Ok(None) => {}
                Err(e) => a.gate().attempt_failed(peer, &e),
            }
        });
    }
}

type QuicAuthenticated<P> = (quinn::Connection, quic::Duplex, P);

/// The QUIC handshake, the control stream and authentication. Datagrams that arrive before
/// authentication are read and dropped, so an unauthenticated peer cannot fill our datagram
/// buffer. Dropping this future (the deadline) drops the connection, which closes it.
async fn quic_handshake<A: Authenticator>(
    a: &Arc<A>,
    connecting: quinn::Connecting,
    peer: SocketAddr,
) -> Result<Option<QuicAuthenticated<A::Peer>>> {
    let conn = connecting
        .await
        .map_err(|e| Error::Tls(format!("QUIC handshake failed: {e}")))?;
    // From here the peer has [`AUTH_DEADLINE`] to open the control stream and prove itself.
    let auth_deadline = tokio::time::Instant::now() + AUTH_DEADLINE;
    let discard_datagrams = async {
        while conn.read_datagram().await.is_ok() {}
        std::future::pending::<()>().await
    };
    let exchange = async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| Error::PeerClosed(format!("no control stream: {e}")))?;
        let mut pre = [0u8; 4];
        recv.read_exact(&mut pre)
            .await
            .map_err(|e| Error::Protocol(format!("control stream preamble: {e}")))?;
        if &pre != quic::PREAMBLE {
            return Err(Error::Protocol("bad QUIC control stream preamble".into()));
        }
        let binding = quic::binding(&conn)?;
        let mut control = quic::Duplex { send, recv };
        let verdict = a.authenticate(&mut control, &binding, peer).await;
        match verdict {
            Ok(Some(who)) => Ok(Some((control, who))),
            refused => {
                // Let AUTH_FAIL reach the peer before the connection goes: finish() only queues
                // the FIN; stopped() waits for the peer's acknowledgement (bounded by the
                // deadline around us).
                let _ = control.send.finish();
                let _ = control.send.stopped().await;
                conn.close(
                    quinn::VarInt::from_u32(quic::CLOSE_ERROR),
                    b"authentication failed",
                );
                refused.map(|_| None)
            }
        }
    };
    let authenticated = tokio::select! {
        r = tokio::time::timeout_at(auth_deadline, exchange) => r.map_err(|_| {
            Error::Timeout("peer did not authenticate in time after the QUIC handshake".into())
        })??,
        () = discard_datagrams => unreachable!("discard_datagrams never completes"),
    };
    Ok(authenticated.map(|(control, who)| (conn, control, who)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{announced_wscale, socket_buffers, MIN_DISTINCT_WSCALE};

    /// `performance.socketBuffer` sizes the tunnel port's sockets: TCP connections accepted on
    /// it (from the listener, before their handshake) and the QUIC socket. 0 leaves TCP at the
    /// kernel's own sizes (those of a plain listener's fresh connection). 128 KiB: under a stock
    /// `net.core.rmem_max`, so the TCP sizes are exact without CAP_NET_ADMIN too; the QUIC
    /// socket is compared with a fresh one tuned to `udp_socket_buffer`, which depends on both.
    #[tokio::test]
    async fn the_tunnel_port_sizes_its_sockets_by_socket_buffer() {
        const SET: u32 = 128 * 1024;
        let (kernel_default, autotuned_wscale) = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let accepted = l.accept().await.unwrap().0;
            (socket_buffers(&accepted), announced_wscale(&accepted))
        };
        let set = Performance {
            socket_buffer: SET,
            ..Performance::default()
        };
        for (perf, tcp) in [
            (set, (2 * SET as usize, 2 * SET as usize)),
            (Performance::default(), kernel_default),
        ] {
            let (listener, udp_socket) = bind_tunnel_port("127.0.0.1", 0, &perf).unwrap();
            let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert_eq!(
                socket_buffers(&accepted),
                tcp,
                "socket_buffer {}",
                perf.socket_buffer
            );
            // Set before the handshake: the SYN-ACK's window scale already follows it (where
            // the scales can differ at all, as in the dial test).
            let wscale = announced_wscale(&accepted);
            if autotuned_wscale > MIN_DISTINCT_WSCALE {
                assert_eq!(
                    wscale < autotuned_wscale,
                    perf.socket_buffer > 0,
                    "window scale {wscale}"
                );
            }
            let reference = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            crate::engine::tune_buffers(&reference, perf.udp_socket_buffer());
            assert_eq!(socket_buffers(&udp_socket), socket_buffers(&reference));
        }
    }
}
