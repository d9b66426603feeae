//! The QUIC transport (quinn): one connection per edge, no head-of-line blocking between TCP
//! clients, and UDP as real unreliable datagrams.
//!
//! - **Control stream**: the first bidirectional stream, opened by the edge, which writes the
//!   preamble `RIQ1` so the hub sees it at once. On it run the same CHALLENGE/AUTH handshake as
//!   over TLS (channel binding = the QUIC connection's TLS exporter) and then control frames in
//!   the TLS framing: CONFIG, CONFIG_ACK, FLOW_OPEN, FLOW_CLOSE, GOAWAY, and DATAGRAM frames for
//!   UDP payloads too large for a QUIC datagram (the reliable path).
//! - **TCP clients**: one bidirectional stream each, opened by the edge, starting with
//!   `record length u8 ‖ OPEN record`, then the client's bytes. QUIC does the flow control,
//!   except for a stream with a buffer cap (`bufferBytes`) whose record asks for credit: quinn
//!   has one receive window for every stream of a connection, so there each end writes at most
//!   the cap ahead of what the other end has written to its socket, and says how much it wrote
//!   in WINDOW frames on the control stream ([`Credit`]).
//! - **UDP**: QUIC datagrams (RFC 9221) of `flow id u32 ‖ payload`.
//!
//! Liveness is QUIC's own: keep-alives every heartbeat interval, idle timeout at three.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::config::Performance;
use crate::error::{Error, Result};
use crate::mux::{reset, ClosedStream, Handler, MuxStats, RemoteStream, SendBudget, StreamIo};
use crate::supervise::DependencyTask;
use crate::wire::frame::{self, Decoded, Frame, FrameType};
use crate::wire::open::OpenRecord;

/// Written first on the control stream (QUIC streams are invisible to the peer until data
/// flows on them) and doubles as a version check.
pub const PREAMBLE: &[u8; 4] = b"RIQ1";

/// The QUIC datagram header: flow id.
pub const DATAGRAM_HEADER: usize = 4;

/// Concurrent streams an authenticated QUIC tunnel accepts from its peer. quinn creates an entry
/// for every allowed stream when the limit is raised, so this is memory paid up front per QUIC
/// edge (much less than the TLS muxer's 65,536 would cost). Beyond it, new clients wait for a
/// stream to end (QUIC flow control) rather than being refused. Edges accept none: hub-opened
/// streams are not used yet.
pub const HUB_MAX_QUIC_STREAMS: u32 = 16_384;

/// Streams an unauthenticated edge may open: the control stream, nothing else. Raised to
/// [`HUB_MAX_QUIC_STREAMS`] (or `limits.maxStreamsPerEdge`) once it has authenticated.
pub const PREAUTH_STREAMS: u32 = 1;

/// Connection receive window before authentication: the CHALLENGE/AUTH exchange is under a
/// kilobyte, so 64 KiB is ample for it and bounds what an unauthenticated peer can make the hub
/// buffer (256 pending connections × 64 KiB = 16 MiB at worst).
pub const PREAUTH_RECEIVE_WINDOW: u32 = 64 * 1024;

/// Transport settings. `accept_streams` is how many concurrent streams the peer may open.
pub fn transport_config(
    perf: &Performance,
    heartbeat: Duration,
    accept_streams: u32,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(accept_streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(perf.stream_window));
    t.receive_window(quinn::VarInt::from_u32(perf.connection_window));
    t.send_window(u64::from(perf.connection_window));
    t.keep_alive_interval(Some(heartbeat));
    // Three missed keep-alives = dead peer, as on the TLS transport. The conversion only fails
    // beyond 2^62 ms.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(heartbeat * 3).ok());
    // Room for a burst of ~6,000 full-size datagrams each way before QUIC drops any: a
    // 500 Mbit/s UDP flow is ~50k datagrams/s, so this absorbs ~100 ms of scheduling jitter.
    t.datagram_receive_buffer_size(Some(8 * 1024 * 1024));
    t.datagram_send_buffer_size(8 * 1024 * 1024);
    t.initial_mtu(perf.quic_max_udp_payload);
    // RFC 9002 §7.2's initial window, min(10 × size, max(14,720, 2 × size)), for the packet size
    // we start with: quinn's default is fixed at 14,720 bytes, which is less than two packets
    // once the initial size passes ~7 KB, and the handshake stalled (no room for the next
    // flight while the first was unacknowledged).
    let size = u64::from(perf.quic_max_udp_payload);
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window((10 * size).min(14_720.max(2 * size)));
    t.congestion_controller_factory(Arc::new(cubic));
    // Path MTU discovery up to `quic_mtu_discovery_max`; without it, up to the initial size
    // (nothing to discover).
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(perf.quic_udp_payload_ceiling());
    t.mtu_discovery_config(Some(mtu));
    // Loss recovery in milliseconds, not tens of them: QUIC's probe timeout includes the peer's
    // max_ack_delay, 25 ms by default (RFC 9000 §18.2), so one lost ping-pong packet with no
    // packets behind it waited ≥ 25 ms. Both ends are quinn and speak the ACK frequency
    // extension (draft-ietf-quic-ack-frequency), so each asks the other to ACK within 1 ms.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(MAX_ACK_DELAY));
    t.ack_frequency_config(Some(ack));
    t
}

/// The ACK delay each end asks of the other (see `transport_config`): 1 ms, the extension's
/// lower bound in practice (quinn's timer granularity) and ≥ 25× below the default.
const MAX_ACK_DELAY: Duration = Duration::from_millis(1);

/// The runtime quinn's endpoints run on: tokio's, except that the tasks quinn spawns for itself
/// (endpoint and connection drivers) run as [`DependencyTask`]s, so a panic inside quinn ends
/// the process with its cause (see [`crate::supervise`]) instead of silently stopping QUIC.
#[derive(Debug)]
pub struct Runtime(quinn::TokioRuntime);

/// [`Runtime`], as quinn takes it.
pub fn runtime() -> Arc<dyn quinn::Runtime> {
    Arc::new(Runtime(quinn::TokioRuntime))
}

impl quinn::Runtime for Runtime {
    fn new_timer(&self, at: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        self.0.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        tokio::spawn(DependencyTask::new("quinn", future));
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        self.0.wrap_udp_socket(sock)
    }

    fn now(&self) -> std::time::Instant {
        self.0.now()
    }
}

/// The hub's QUIC endpoint settings, with the stateless-reset key and the connection-id key
/// derived from its persisted identity (the private key), so that after a restart the hub still
/// recognises the connection ids it issued before and answers packets of those connections with
/// a stateless reset the edge accepts (RFC 9000 §10.3): the edge redials at once instead of
/// waiting out its idle timeout. Derived with HMAC-SHA256 under the key's own hash, one label
/// per use, so neither key reveals anything about the private key or the other.
pub fn hub_endpoint_config(identity_key_der: &[u8], perf: &Performance) -> quinn::EndpointConfig {
    let root = ring::digest::digest(&ring::digest::SHA256, identity_key_der);
    let derive = |label: &[u8]| {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, root.as_ref());
        ring::hmac::sign(&k, label)
    };
    let reset = derive(b"remoteingress quic stateless reset v1");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let cid = derive(b"remoteingress quic connection ids v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_be_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    accept_payload(&mut config, perf);
    config
}

/// A dialer's QUIC endpoint settings: quinn's, accepting the payloads `perf` allows.
pub fn dial_endpoint_config(perf: &Performance) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    accept_payload(&mut config, perf);
    config
}

/// The largest UDP payload an endpoint accepts, announced to the peer (max_udp_payload_size):
/// the path's ceiling from `perf`. Left at quinn's default (1472), it capped every peer's
/// packets at 1472 bytes whatever the initial size or discovery bound said: discovery never
/// grew past it.
/// quinn sizes its receive buffers by it, but the kernel fills at most 64 KiB per GRO batch,
/// so the memory actually touched does not grow with it.
fn accept_payload(config: &mut quinn::EndpointConfig, perf: &Performance) {
    // Never below quinn's default; validated to 1200..=65527 (config.rs), the range quinn accepts.
    let floor = u16::try_from(config.get_max_udp_payload_size()).unwrap_or(u16::MAX);
    let _ = config.max_udp_payload_size(perf.quic_udp_payload_ceiling().max(floor));
}

/// quinn's view of the hub's TLS configuration (TLS 1.3 with AES-128-GCM, which QUIC's Initial
/// packets need, is always among our suites).
pub fn server_crypto(tls: Arc<rustls::ServerConfig>) -> Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Tls(format!("QUIC server configuration: {e}")))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// quinn's view of the edge's TLS configuration (see [`server_crypto`]).
pub fn client_crypto(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| Error::Tls(format!("QUIC client configuration: {e}")))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// The control stream as one AsyncRead + AsyncWrite (for the shared handshake code).
pub struct Duplex {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// Channel binding for the handshake: the QUIC connection's TLS exporter (an empty context is
/// the same as none in TLS 1.3, RFC 8446 §7.5).
pub fn binding(conn: &quinn::Connection) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, crate::auth::EXPORTER_LABEL, b"")
        .map_err(|_| Error::Tls("QUIC exporter unavailable".into()))?;
    Ok(out)
}

/// Maps how a QUIC connection ended to our error codes.
pub fn connection_error(e: &quinn::ConnectionError) -> Error {
    use quinn::ConnectionError as C;
    match e {
        C::TimedOut => Error::Timeout("no packet from the peer within the QUIC idle timeout".into()),
        C::LocallyClosed => Error::LocalClosed("the QUIC connection was closed by this side".into()),
        C::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            if c.error_code == quinn::VarInt::from_u32(CLOSE_DRAINED) {
                Error::GoAway(reason)
            } else {
                Error::PeerClosed(reason)
            }
        }
        C::Reset => Error::PeerClosed("peer reset the QUIC connection (it restarted?)".into()),
        other => Error::PeerClosed(other.to_string()),
    }
}

/// Application close codes.
pub const CLOSE_DRAINED: u32 = 0;
pub const CLOSE_ERROR: u32 = 1;

/// A live QUIC tunnel, as the hub/edge hold it.
#[derive(Clone)]
pub struct QuicTunnel {
    pub conn: quinn::Connection,
    ctrl: Arc<ControlQueue>,
    pub stats: Arc<MuxStats>,
    going_away: Arc<AtomicBool>,
    /// Where streams this side opened report their end (to the driver's handler).
    closed: mpsc::UnboundedSender<ClosedStream>,
    /// Send credit of this tunnel's capped streams, for the peer's WINDOW frames.
    credits: Credits,
    /// What this tunnel's stream readers may hold before quinn takes it ([`SendBudget`]).
    budget: Arc<SendBudget>,
    /// The edge's client endpoint, kept as long as its connection.
    _endpoint: Option<quinn::Endpoint>,
}

impl QuicTunnel {
    pub fn control(&self, kind: FrameType, stream: u32, payload: &[u8]) {
        self.ctrl.send(kind, stream, payload);
    }

    /// A UDP datagram for `flow`, in a buffer with [`DATAGRAM_HEADER`] bytes of headroom
    /// before the payload (the UDP layer receives after it): the flow id goes into the headroom and the
    /// buffer is the QUIC datagram, with no copy of the payload. One too large for a QUIC
    /// datagram takes the reliable path.
    pub fn datagram(&self, flow: u32, mut framed: BytesMut) {
        let fits = self
            .conn
            .max_datagram_size()
            .is_some_and(|max| framed.len() <= max);
        if !fits {
            self.control(FrameType::Datagram, flow, &framed[DATAGRAM_HEADER..]);
            return;
        }
        framed[..DATAGRAM_HEADER].copy_from_slice(&flow.to_be_bytes());
        // TooLarge here means the path's datagram size shrank since the check above (a lost
        // MTU probe): dropped like any datagram the path cannot carry, and counted.
        if self.conn.send_datagram(framed.freeze()).is_err() {
            self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn go_away(&self, code: u16, reason: &str) {
        self.going_away.store(true, Ordering::Release);
        self.control(FrameType::GoAway, 0, &frame::goaway_payload(0, code, reason));
    }

    pub fn is_going_away(&self) -> bool {
        self.going_away.load(Ordering::Acquire)
    }

    pub fn close(&self, reason: &str) {
        self.conn.close(
            quinn::VarInt::from_u32(CLOSE_ERROR),
            frame::clip_reason(reason).as_bytes(),
        );
    }

    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Edge: opens a stream for an accepted client and pumps it. Runs until the stream ends.
    /// `opened` is told the stream id once the stream exists.
    pub async fn carry(&self, record: OpenRecord, sock: TcpStream, opened: impl FnOnce(u64)) {
        let (mut send, recv) = match self.conn.open_bi().await {
            Ok(s) => s,
            Err(_) => {
                crate::mux::abortive_close(&sock);
                return;
            }
        };
        let mut head = BytesMut::with_capacity(1 + frame::OPEN_RECORD_MAX);
        head.put_u8(0);
        record.encode(&mut head);
        head[0] = (head.len() - 1) as u8;
        if send.write_all(&head).await.is_err() {
            crate::mux::abortive_close(&sock);
            return;
        }
        let id = send.id().index();
        opened(id);
        let io = StreamIo::Quic {
            id,
            send,
            recv,
            stats: self.stats.clone(),
            closed: self.closed.clone(),
            port: record.listen_port,
            credit: self.credits.for_record(&record, id),
            budget: self.budget.clone(),
        };
        io.run_tcp(sock).await;
    }
}

/// Frames waiting for the control stream's writer, which hands them to quinn as the peer's
/// flow control allows. Bounded both ways a peer could abuse it (see docs/internals.md, "Queues"):
///
/// - DATAGRAM frames (UDP payloads too large for a QUIC datagram) are dropped and counted past
///   [`MAX_PENDING_DATAGRAMS`] bytes, as the TLS muxer drops them: public clients choose their
///   size and rate, and a slow or stopped peer must not make this end hold them;
/// - any other frame past [`MAX_PENDING_CONTROL`] bytes means the peer has stopped reading its
///   control stream: the connection is closed, since a tunnel whose CONFIG, FLOW_OPEN or
///   WINDOW frames cannot reach the peer does not work anyway.
pub(crate) struct ControlQueue {
    state: Mutex<ControlState>,
    ready: Notify,
    conn: quinn::Connection,
    stats: Arc<MuxStats>,
}

#[derive(Default)]
struct ControlState {
    /// Encoded frames, and whether each is a droppable DATAGRAM frame.
    frames: VecDeque<(Bytes, bool)>,
    /// Bytes of queued (or being written) frames, other frames and DATAGRAM frames apart.
    control: usize,
    datagrams: usize,
    /// The writer is gone (the stream or the connection ended): nothing is queued any more.
    closed: bool,
}

/// Control bytes (CONFIG, FLOW_OPEN, WINDOW, GOAWAY…) that may wait for a peer that is not
/// reading its control stream before the tunnel is closed: as the TLS muxer's limit.
const MAX_PENDING_CONTROL: usize = crate::mux::MAX_PENDING_CONTROL;
/// DATAGRAM frame bytes that may wait for the control stream before new ones are dropped: as
/// the TLS muxer's limit.
const MAX_PENDING_DATAGRAMS: usize = crate::mux::MAX_PENDING_DATAGRAMS;

impl ControlQueue {
    fn new(conn: quinn::Connection, stats: Arc<MuxStats>) -> Arc<ControlQueue> {
        Arc::new(ControlQueue {
            state: Mutex::new(ControlState::default()),
            ready: Notify::new(),
            conn,
            stats,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ControlState> {
        // Every critical section is a few field updates that cannot panic half-way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one frame (see the type's documentation for what happens at the bounds).
    fn send(&self, kind: FrameType, stream: u32, payload: &[u8]) {
        let mut b = BytesMut::with_capacity(frame::HEADER_LEN + payload.len());
        frame::encode(&mut b, kind, 0, stream, payload);
        let len = b.len();
        let datagram = kind == FrameType::Datagram;
        {
            let mut st = self.state();
            if st.closed {
                return;
            }
            if datagram && st.datagrams + len > MAX_PENDING_DATAGRAMS {
                drop(st);
                self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if !datagram && st.control + len > MAX_PENDING_CONTROL {
                st.closed = true;
                st.frames.clear();
                drop(st);
                self.conn.close(
                    quinn::VarInt::from_u32(CLOSE_ERROR),
                    b"the peer is not reading its control stream",
                );
                return;
            }
            if datagram {
                st.datagrams += len;
            } else {
                st.control += len;
            }
            st.frames.push_back((b.freeze(), datagram));
        }
        self.ready.notify_one();
    }

    /// The writer: hands frames to quinn in order; their bytes stop counting once quinn took
    /// them (quinn holds at most the peer's stream credit, within the connection's send window).
    async fn write(self: Arc<Self>, mut send: quinn::SendStream) {
        loop {
            let next = self.state().frames.pop_front();
            let Some((frame, datagram)) = next else {
                self.ready.notified().await;
                continue;
            };
            let ok = send.write_all(&frame).await.is_ok();
            let mut st = self.state();
            if datagram {
                st.datagrams -= frame.len();
            } else {
                st.control -= frame.len();
            }
            if !ok {
                st.closed = true;
                st.frames.clear();
                return;
            }
        }
    }

    /// Bytes waiting: (control, datagrams).
    #[cfg(test)]
    fn pending(&self) -> (usize, usize) {
        let st = self.state();
        (st.control, st.datagrams)
    }
}

/// Sets up the control stream writer and returns the tunnel handle plus the future that drives
/// the connection (control frames, incoming streams, datagrams) until it ends.
pub fn start<H: Handler>(
    conn: quinn::Connection,
    endpoint: Option<quinn::Endpoint>,
    control: Duplex,
    handler: H,
    is_hub: bool,
) -> (QuicTunnel, impl std::future::Future<Output = Error>) {
    let (closed_tx, closed_rx) = mpsc::unbounded_channel::<ClosedStream>();
    let Duplex { send, recv } = control;
    let stats = Arc::new(MuxStats::default());
    let ctrl = ControlQueue::new(conn.clone(), stats.clone());
    let writer = tokio::spawn(ctrl.clone().write(send));
    let tunnel = QuicTunnel {
        conn: conn.clone(),
        ctrl: ctrl.clone(),
        stats,
        going_away: Arc::new(AtomicBool::new(false)),
        closed: closed_tx,
        credits: Credits {
            streams: Arc::default(),
            ctrl,
        },
        budget: Arc::new(SendBudget::default()),
        _endpoint: endpoint,
    };
    let t2 = tunnel.clone();
    let fut = async move {
        let why = drive(t2.clone(), recv, closed_rx, handler, is_hub).await;
        writer.abort();
        why
    };
    (tunnel, fut)
}

/// A stream's OPEN record must arrive within this (10 s, as for the tunnel handshake).
const OPEN_RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Drain checks while going away: how often to look whether the last stream finished.
const DRAIN_POLL: Duration = Duration::from_millis(20);

async fn drive<H: Handler>(
    t: QuicTunnel,
    mut ctrl: quinn::RecvStream,
    mut closed_rx: mpsc::UnboundedReceiver<ClosedStream>,
    mut handler: H,
    is_hub: bool,
) -> Error {
    let closed_tx = t.closed.clone();
    let (open_tx, mut open_rx) = mpsc::unbounded_channel::<RemoteStream>();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut remote_going_away: Option<String> = None;
    let mut drain_tick = tokio::time::interval(DRAIN_POLL);
    loop {
        if (t.is_going_away() || remote_going_away.is_some())
            && t.stats.open_streams.load(Ordering::Relaxed) == 0
        {
            // Let the GOAWAY and any last control frames reach the peer first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let reason = remote_going_away.clone().unwrap_or_else(|| "drained".into());
            t.conn
                .close(quinn::VarInt::from_u32(CLOSE_DRAINED), reason.as_bytes());
            return Error::GoAway(reason);
        }
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(64 * 1024);
        }
        tokio::select! {
            e = t.conn.closed() => return remote_going_away.map(Error::GoAway).unwrap_or_else(|| connection_error(&e)),
            r = tokio::io::AsyncReadExt::read_buf(&mut ctrl, &mut rbuf) => {
                match r {
                    Ok(0) | Err(_) => {
                        // The control stream ends only when the connection does; wait for why.
                        let e = t.conn.closed().await;
                        return remote_going_away.map(Error::GoAway).unwrap_or_else(|| connection_error(&e));
                    }
                    Ok(_) => loop {
                        match frame::decode(&mut rbuf) {
                            Ok(Some(Decoded::Frame(f))) => {
                                if let Err(e) = on_control(&t, &mut handler, f, &mut remote_going_away) {
                                    t.conn.close(quinn::VarInt::from_u32(CLOSE_ERROR), e.to_string().as_bytes());
                                    return e;
                                }
                            }
                            Ok(Some(Decoded::Skipped)) => {}
                            Ok(None) => break,
                            Err(e) => {
                                let e = Error::Protocol(e.to_string());
                                t.conn.close(quinn::VarInt::from_u32(CLOSE_ERROR), e.to_string().as_bytes());
                                return e;
                            }
                        }
                    },
                }
            }
            s = t.conn.accept_bi() => {
                let Ok((send, recv)) = s else { continue };
                if !is_hub || t.is_going_away() {
                    // Hub-initiated streams are refused by edges; a draining hub refuses all.
                    let (mut send, mut recv) = (send, recv);
                    let _ = send.reset(quinn::VarInt::from_u32(u32::from(reset::REFUSED)));
                    let _ = recv.stop(quinn::VarInt::from_u32(u32::from(reset::REFUSED)));
                    continue;
                }
                let stats = t.stats.clone();
                let closed = closed_tx.clone();
                let opened = open_tx.clone();
                let credits = t.credits.clone();
                let budget = t.budget.clone();
                // The OPEN record arrives on the stream itself: read it in a side task (bounded
                // by the handshake-scale timeout) so a slow opener never stalls this loop.
                tokio::spawn(async move {
                    let read = tokio::time::timeout(OPEN_RECORD_TIMEOUT, read_open(send, recv, stats, closed, credits, budget)).await;
                    if let Ok(Some(r)) = read {
                        let _ = opened.send(r);
                    }
                });
            }
            Some(stream) = open_rx.recv() => handler.on_open(stream),
            d = t.conn.read_datagram() => {
                match d {
                    Ok(b) if b.len() >= DATAGRAM_HEADER => {
                        let flow = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        let f = Frame { kind: FrameType::Datagram, flags: 0, stream: flow, payload: b.slice(DATAGRAM_HEADER..) };
                        if flow == 0 || handler.on_control(f).is_err() {
                            t.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => { t.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed); }
                    Err(e) => return connection_error(&e),
                }
            }
            Some(c) = closed_rx.recv() => handler.on_closed(c),
            _ = drain_tick.tick() => {
                t.stats.rtt_us.store(t.conn.rtt().as_micros().max(1) as u64, Ordering::Relaxed);
            }
        }
    }
}

fn on_control<H: Handler>(
    t: &QuicTunnel,
    h: &mut H,
    f: Frame,
    remote_going_away: &mut Option<String>,
) -> Result<()> {
    match f.kind {
        FrameType::GoAway => {
            let (_, code, reason) =
                frame::parse_goaway(f.kind, &f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
            *remote_going_away = Some(reason.clone());
            t.going_away.store(true, Ordering::Release);
            h.on_goaway(code, &reason);
            Ok(())
        }
        FrameType::Config
        | FrameType::ConfigAck
        | FrameType::Datagram
        | FrameType::FlowOpen
        | FrameType::FlowClose
        | FrameType::Info => h.on_control(f),
        FrameType::Window if f.stream != 0 => {
            // Credit for a capped stream (the frame's length is checked by the decoder). One
            // whose stream has ended meanwhile is nothing to act on.
            t.credits.grant(f.stream, frame::read_u32(&f.payload));
            Ok(())
        }
        other => Err(Error::Protocol(format!(
            "{other:?} frame on the QUIC control stream"
        ))),
    }
}

async fn read_open(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    stats: Arc<MuxStats>,
    closed: mpsc::UnboundedSender<ClosedStream>,
    credits: Credits,
    budget: Arc<SendBudget>,
) -> Option<RemoteStream> {
    let mut len = [0u8; 1];
    recv.read_exact(&mut len).await.ok()?;
    let len = usize::from(len[0]);
    if len > frame::OPEN_RECORD_MAX {
        return None;
    }
    let mut rec = vec![0u8; len];
    recv.read_exact(&mut rec).await.ok()?;
    let record = OpenRecord::decode(&rec).ok()?;
    let id = send.id().index();
    Some(RemoteStream {
        io: StreamIo::Quic {
            id,
            send,
            recv,
            stats,
            closed,
            port: record.listen_port,
            credit: credits.for_record(&record, id),
            budget,
        },
        record,
    })
}

/// Largest socket read handed to quinn as one chunk: 64 KiB is what a busy TCP socket returns
/// per read here, so bulk data goes socket → quinn in few calls (each takes the connection lock
/// and wakes its driver).
const READ_CHUNK: usize = 64 * 1024;

/// Chunks taken from quinn per socket write: a vectored write of up to this many (quinn's chunks
/// are one STREAM frame each, ~1.4 KB at the default packet size).
const WRITE_CHUNKS: usize = 32;

/// Socket → QUIC stream, uncapped: each read lands in a buffer quinn then owns (`write_chunks`),
/// instead of being copied once more into quinn's send buffer. A read that filled less than
/// half the buffer is copied into one of its own size, so a trickle of small reads does not
/// keep a 64 KiB allocation per read alive in quinn until it is acknowledged. No buffer is held
/// while the socket is idle.
///
/// The socket is *peeked*, and only what quinn took is then taken from it: a stream whose peer
/// has no room for more (a slow client or target at the far end) leaves the rest in its own
/// socket, so it holds none of the tunnel's send budget while it waits. (Read, and the part
/// quinn could not take would wait here instead, counted in the budget: 64 such streams held all
/// of it and stalled every other stream of the tunnel.) Taking the peeked bytes costs one more
/// `recv` per read, with `MSG_TRUNC`, which the kernel discards without copying.
async fn copy_to_quic(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    send: &mut quinn::SendStream,
    budget: &SendBudget,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    // The stream had no room for all of the last chunk: wait for room before peeking again.
    let mut at_limit = false;
    loop {
        r.readable().await?;
        if at_limit {
            // An empty write waits until the stream and the connection have flow-control room,
            // without holding a share of the budget meanwhile. (Only here: it also wakes
            // quinn's connection driver, which per chunk cost the bulk path ~5 % more CPU.)
            send.write(&[]).await?;
        }
        budget.reserve(READ_CHUNK).await;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let peeked = peek_into(r.as_ref(), &mut buf, READ_CHUNK);
        let n = match peeked {
            Ok(n) => n,
            Err(e) => {
                budget.release(READ_CHUNK);
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
        };
        budget.release(READ_CHUNK - n);
        if n == 0 {
            return Ok(total);
        }
        let mut chunk = if n < READ_CHUNK / 2 {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        // Quinn takes what fits now. If nothing fits (the stream just ran out of room), the write
        // is dropped unfinished — nothing was written (`write_chunks` is cancel-safe), and
        // nothing was taken from the socket — and the loop waits for room without a reservation.
        let taken = tokio::select! {
            biased;
            w = send.write_chunks(std::slice::from_mut(&mut chunk)) => Some(w),
            () = std::future::ready(()) => None,
        };
        budget.release(n);
        let Some(taken) = taken else {
            at_limit = true;
            continue;
        };
        let k = taken?.bytes;
        at_limit = k < n;
        drop(chunk);
        // A peek short of the buffer, all of it taken, emptied the socket: its readiness is
        // cleared with the take (see `read_marking_drained`).
        consume(r.as_ref(), k, k == n && n < READ_CHUNK).await?;
        total += k as u64;
    }
}

/// Peeks up to `want` bytes into `buf`'s spare capacity; nothing leaves the socket.
fn peek_into(sock: &TcpStream, buf: &mut BytesMut, want: usize) -> std::io::Result<usize> {
    sock.try_io(tokio::io::Interest::READABLE, || {
        let chunk = buf.chunk_mut();
        let len = want.min(chunk.len());
        // SAFETY: `chunk` is `len` writable bytes of spare capacity; recv only writes to them.
        let spare = unsafe {
            std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(), len)
        };
        let n = socket2::SockRef::from(sock).peek(spare)?;
        // SAFETY: recv initialised the first `n` bytes of the spare capacity.
        unsafe { buf.advance_mut(n) };
        Ok(n)
    })
}

thread_local! {
    /// Where `consume` points the kernel when it discards peeked bytes: `MSG_TRUNC` makes TCP
    /// drop them without copying, but the call still names a buffer of the length.
    static DISCARD: std::cell::RefCell<Vec<std::mem::MaybeUninit<u8>>> =
        std::cell::RefCell::new(vec![std::mem::MaybeUninit::uninit(); READ_CHUNK]);
}

/// Takes `k` bytes already peeked from the socket, discarding them. `drained`: they were all it
/// held, so tokio's readiness is cleared (the next wait is for a fresh event).
async fn consume(sock: &TcpStream, mut k: usize, drained: bool) -> std::io::Result<()> {
    while k > 0 {
        let mut took = 0;
        let res = sock.try_io(tokio::io::Interest::READABLE, || {
            let n = DISCARD.with_borrow_mut(|scratch| {
                let len = k.min(scratch.len());
                socket2::SockRef::from(sock).recv_with_flags(&mut scratch[..len], libc::MSG_TRUNC)
            })?;
            took = n;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            if drained && n == k {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match res {
            Ok(_) => {}
            Err(_) if took > 0 => {} // taken, and the readiness cleared as asked
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sock.readable().await?;
                continue;
            }
            Err(e) => return Err(e),
        }
        k -= took;
    }
    Ok(())
}

/// QUIC stream → socket, uncapped: quinn's chunks go to the socket as they are, up to
/// [`WRITE_CHUNKS`] per vectored write, instead of being copied into an intermediate buffer.
async fn copy_from_quic(
    recv: &mut quinn::RecvStream,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<u64> {
    let mut chunks: [Bytes; WRITE_CHUNKS] = Default::default();
    let mut total = 0u64;
    while let Some(n) = recv.read_chunks(&mut chunks).await? {
        let mut pending = &mut chunks[..n];
        while !pending.is_empty() {
            let slices: [std::io::IoSlice<'_>; WRITE_CHUNKS] =
                std::array::from_fn(|i| std::io::IoSlice::new(pending.get(i).map_or(&[][..], |c| &c[..])));
            let mut written = w.write_vectored(&slices[..pending.len()]).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            total += written as u64;
            while written > 0 {
                let first = &mut pending[0];
                if written >= first.len() {
                    written -= first.len();
                    pending = &mut pending[1..];
                } else {
                    first.advance(written);
                    written = 0;
                }
            }
        }
        // Let go of the written chunks (and quinn's receive buffers they are slices of) before
        // waiting for the next ones.
        chunks.iter_mut().take(n).for_each(|c| *c = Bytes::new());
    }
    Ok(total)
}

/// Pumps a TCP socket and a QUIC stream until both directions end or either side fails.
/// Returns (bytes QUIC→socket, bytes socket→QUIC, reset reason if it did not end cleanly).
/// A capped stream (`credit`) writes only within the credit its peer granted, and grants
/// credit for what it wrote to the socket.
pub async fn pump(
    sock: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    credit: Option<StreamCredit>,
    budget: Arc<SendBudget>,
) -> (u64, u64, Option<(u16, String)>) {
    let _ = sock.set_nodelay(true);
    let (mut r, mut w) = sock.into_split();
    let up = async {
        let res = match &credit {
            None => copy_to_quic(&mut r, &mut send, &budget).await,
            Some(c) => c.copy_within_credit(&mut r, &mut send, &budget).await,
        };
        match res {
            Ok(n) => {
                let _ = send.finish();
                Ok(n)
            }
            Err(e) => {
                let _ = send.reset(quinn::VarInt::from_u32(u32::from(reset::IO)));
                Err(e)
            }
        }
    };
    let down = async {
        let res = match &credit {
            None => copy_from_quic(&mut recv, &mut w).await,
            Some(c) => c.copy_granting(&mut recv, &mut w).await,
        };
        match res {
            Ok(n) => {
                let _ = w.shutdown().await;
                Ok(n)
            }
            Err(e) => Err(e),
        }
    };
    let (up_n, down_n, failure) = {
        tokio::pin!(up);
        tokio::pin!(down);
        let (mut up_n, mut down_n) = (None, None);
        let mut failure = None;
        while (up_n.is_none() || down_n.is_none()) && failure.is_none() {
            tokio::select! {
                r = &mut up, if up_n.is_none() => match r {
                    Ok(n) => up_n = Some(n),
                    Err(e) => failure = Some((reset::IO, format!("client side failed: {e}"))),
                },
                r = &mut down, if down_n.is_none() => match r {
                    Ok(n) => down_n = Some(n),
                    Err(e) => failure = Some((reset::IO, format!("stream reset by the peer: {e}"))),
                },
            }
        }
        (up_n, down_n, failure)
    };
    if failure.is_some() {
        // Abort: the client must see RST, not a clean end of a truncated reply.
        crate::mux::abortive_close(w.as_ref());
    }
    (down_n.unwrap_or(0), up_n.unwrap_or(0), failure)
}

/// A capped stream's send credit: how many more bytes this end may write into the stream
/// before the peer reports (WINDOW) that it wrote earlier ones to its socket. Starts at the cap;
/// never above it, whatever a peer grants.
#[derive(Debug)]
pub struct Credit {
    cap: u32,
    available: AtomicU32,
    /// Wakes the stream's one writer when credit arrives (a permit is kept if it is not waiting).
    granted: Notify,
}

impl Credit {
    fn grant(&self, n: u32) {
        let cap = self.cap;
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                Some(a.saturating_add(n).min(cap))
            });
        self.granted.notify_one();
    }

    /// Waits until some credit is available and returns it.
    async fn wait(&self) -> u32 {
        loop {
            let a = self.available.load(Ordering::Acquire);
            if a > 0 {
                return a;
            }
            self.granted.notified().await;
        }
    }
}

/// The send credit of a tunnel's capped streams, by stream (the QUIC stream index's low 32 bits,
/// the WINDOW frame's stream field: unique among open streams, as a tunnel has far fewer than
/// 2^32 open at once), and the control stream their grants to the peer go out on. Only capped
/// streams are in it, so the uncapped path never touches it.
#[derive(Clone)]
struct Credits {
    streams: Arc<Mutex<HashMap<u32, Arc<Credit>>>>,
    ctrl: Arc<ControlQueue>,
}

impl Credits {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Credit>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grant(&self, key: u32, n: u32) {
        let credit = self.streams().get(&key).cloned();
        if let Some(c) = credit {
            c.grant(n);
        }
    }

    /// Credit for the stream `id` if its record asks for it (a cap, and the credit flag).
    fn for_record(&self, record: &OpenRecord, id: u64) -> Option<StreamCredit> {
        let cap = record.buffer.filter(|_| record.credit)?;
        let key = id as u32;
        let credit = Arc::new(Credit {
            cap,
            available: AtomicU32::new(cap),
            granted: Notify::new(),
        });
        self.streams().insert(key, credit.clone());
        Some(StreamCredit {
            key,
            credit,
            credits: self.clone(),
        })
    }
}

/// Largest read from a capped stream's socket: at most the cap, and at most 16 KiB, so a large
/// cap does not make every capped stream hold a large buffer.
const CAPPED_CHUNK: usize = 16 * 1024;

/// One capped stream's end of the credit exchange; leaves the tunnel's registry when dropped.
pub struct StreamCredit {
    key: u32,
    credit: Arc<Credit>,
    credits: Credits,
}

impl StreamCredit {
    /// Socket → stream, never more than the credit ahead of the peer's socket.
    async fn copy_within_credit(
        &self,
        from: &mut tokio::net::tcp::OwnedReadHalf,
        to: &mut quinn::SendStream,
        budget: &SendBudget,
    ) -> std::io::Result<u64> {
        // Reserved, not zeroed: a connection that never sends touches none of it.
        let chunk = (self.credit.cap as usize).min(CAPPED_CHUNK);
        let mut buf = Vec::with_capacity(chunk);
        let mut total = 0u64;
        loop {
            let allowed = (self.credit.wait().await as usize).min(chunk);
            from.readable().await?;
            // As for an uncapped stream: no budget held while QUIC would not take the bytes.
            to.write(&[]).await?;
            // Held until quinn takes the bytes, as for an uncapped stream.
            budget.reserve(allowed).await;
            buf.clear();
            let read = from.try_read_buf(&mut (&mut buf).limit(allowed));
            budget.release(allowed - buf.len());
            let n = match read {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            // Spent before the write, so a grant for these bytes can never find the credit
            // still counting them (and be clipped at the cap).
            self.credit.available.fetch_sub(n as u32, Ordering::AcqRel);
            let written = to.write_all(&buf).await;
            budget.release(n);
            written?;
            total += n as u64;
        }
    }

    /// Stream → socket, granting the peer credit for what reached the socket: a WINDOW frame
    /// once a quarter of the cap has, so the peer's credit never runs dry while bytes move.
    ///
    /// The stream is read while the socket is being written, and what is read is copied: a
    /// chunk quinn hands out is a slice of the whole receive batch it arrived in (up to 64 KiB
    /// with GRO, shared with other streams' packets), so bytes left in quinn, or held as its
    /// chunks, behind a stalled socket would pin a batch each (measured: ~100 KiB per stalled
    /// connection). Copied, a stalled stream holds at most the cap, in its own memory — and
    /// only what it actually holds: a copy per chunk rather than one reused buffer of the cap,
    /// which measured ~16 KiB more per stalled 16 KiB-capped connection (a stall usually
    /// leaves less than the cap in hand, but a reused buffer's pages all get touched). Capped
    /// streams are not bulk streams, so the allocation per chunk is the cheaper side.
    async fn copy_granting(
        &self,
        from: &mut quinn::RecvStream,
        to: &mut (impl AsyncWrite + Unpin),
    ) -> std::io::Result<u64> {
        let cap = self.credit.cap as usize;
        let threshold = self.credit.cap / 4;
        let mut queue: VecDeque<Bytes> = VecDeque::new();
        let (mut queued, mut total, mut unreported, mut eof) = (0usize, 0u64, 0u32, false);
        while !(eof && queue.is_empty()) {
            let front = queue.front().cloned().unwrap_or_default();
            tokio::select! {
                // Never more than the cap in hand: a peer that writes past its credit finds
                // the excess left in quinn, within quinn's own stream window.
                r = from.read_chunk(cap - queued, true), if !eof && queued < cap => {
                    match r.map_err(std::io::Error::from)? {
                        Some(c) => {
                            queued += c.bytes.len();
                            queue.push_back(Bytes::copy_from_slice(&c.bytes));
                        }
                        None => eof = true,
                    }
                }
                w = to.write(&front), if !front.is_empty() => {
                    let n = w?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::WriteZero.into());
                    }
                    if let Some(f) = queue.front_mut() {
                        f.advance(n);
                        if f.is_empty() {
                            queue.pop_front();
                        }
                    }
                    queued -= n;
                    total += n as u64;
                    unreported += n as u32;
                    if unreported >= threshold {
                        self.credits.ctrl.send(FrameType::Window, self.key, &unreported.to_be_bytes());
                        unreported = 0;
                    }
                }
            }
        }
        Ok(total)
    }
}

impl Drop for StreamCredit {
    fn drop(&mut self) {
        let mut map = self.credits.streams();
        if map.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.credit)) {
            map.remove(&self.key);
        }
    }
}

/// Resolves `host:port` for the QUIC client, preferring the first address.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| Error::Connect {
            addr: format!("{host}:{port}"),
            source,
        })?
        .next()
        .ok_or_else(|| Error::InvalidConfig(format!("hubHost {host:?} resolves to nothing")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::{Identity, Trust};
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;

    /// Throwaway self-signed identity for tests only (not used by anything else).
    const CERT: &str = include_str!("../testdata/cert.pem");
    const KEY: &str = include_str!("../testdata/key.pem");

    #[derive(Clone, Default)]
    struct Seen {
        datagrams: Arc<Mutex<Vec<(u32, Bytes)>>>,
    }

    impl Handler for Seen {
        fn on_open(&mut self, s: RemoteStream) {
            s.io.reset(reset::REFUSED, "test");
        }
        fn on_control(&mut self, f: Frame) -> Result<()> {
            match f.kind {
                FrameType::Datagram if f.stream == 7 => {
                    self.datagrams.lock().unwrap().push((f.stream, f.payload));
                    Ok(())
                }
                // Any other flow id is unknown to this handler.
                FrameType::Datagram => Err(Error::Protocol("unknown flow".into())),
                _ => Ok(()),
            }
        }
        fn on_closed(&mut self, _c: ClosedStream) {}
    }

    /// A hub-side QUIC tunnel and the raw client connection talking to it.
    async fn pair() -> (QuicTunnel, quinn::Connection, Seen, quinn::RecvStream) {
        let seen = Seen::default();
        let (t, client, control_send, control_recv) = pair_with(seen.clone()).await;
        std::mem::forget(control_send);
        (t, client, seen, control_recv)
    }

    /// A hub-side QUIC tunnel driven by `handler`, the raw client connection talking to it and
    /// the client's side of the control stream.
    async fn pair_with<H: Handler>(
        handler: H,
    ) -> (
        QuicTunnel,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    ) {
        pair_with_perf(handler, Performance::default()).await
    }

    /// [`pair_with`], both ends configured with `perf`.
    async fn pair_with_perf<H: Handler>(
        handler: H,
        perf: Performance,
    ) -> (
        QuicTunnel,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    ) {
        let id = Identity::from_pem(CERT, KEY).unwrap();
        let mut server_cfg = server_crypto(Arc::new(id.server_config().unwrap())).unwrap();
        server_cfg.transport_config(Arc::new(transport_config(&perf, Duration::from_secs(5), 100)));
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut cc = client_crypto(crate::transport::tls::client_config(Trust::Pinned(
            id.fingerprint.clone(),
        )))
        .unwrap();
        cc.transport_config(Arc::new(transport_config(&perf, Duration::from_secs(5), 100)));
        let (client_conn, server_conn) = tokio::join!(
            async { client.connect_with(cc, addr, "x").unwrap().await.unwrap() },
            async { server.accept().await.unwrap().await.unwrap() }
        );
        let (mut cs, cr) = client_conn.open_bi().await.unwrap();
        cs.write_all(PREAMBLE).await.unwrap();
        let (ss, mut sr) = server_conn.accept_bi().await.unwrap();
        let mut pre = [0u8; 4];
        sr.read_exact(&mut pre).await.unwrap();
        let (t, fut) = start(
            server_conn,
            Some(server),
            Duplex { send: ss, recv: sr },
            handler,
            true,
        );
        tokio::spawn(fut);
        // Keep the client's endpoint for the test's lifetime.
        std::mem::forget(client);
        (t, client_conn, cs, cr)
    }

    /// Two endpoints built as the hub's listener and a dialer build theirs, with `perf`; returns
    /// the client and server connections after the handshake.
    async fn endpoints_with(perf: &Performance) -> (quinn::Connection, quinn::Connection) {
        let id = Identity::from_pem(CERT, KEY).unwrap();
        let mut server_cfg = server_crypto(Arc::new(id.server_config().unwrap())).unwrap();
        server_cfg.transport_config(Arc::new(transport_config(perf, Duration::from_secs(5), 100)));
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = quinn::Endpoint::new(
            hub_endpoint_config(b"key", perf),
            Some(server_cfg),
            sock,
            runtime(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = quinn::Endpoint::new(dial_endpoint_config(perf), None, sock, runtime()).unwrap();
        let mut cc = client_crypto(crate::transport::tls::client_config(Trust::Pinned(
            id.fingerprint.clone(),
        )))
        .unwrap();
        cc.transport_config(Arc::new(transport_config(perf, Duration::from_secs(5), 100)));
        let (c, s) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                async { client.connect_with(cc, addr, "x").unwrap().await.unwrap() },
                async { server.accept().await.unwrap().await.unwrap() }
            )
        })
        .await
        .expect("the QUIC handshake finished");
        std::mem::forget((client, server));
        (c, s)
    }

    #[tokio::test]
    async fn packets_grow_to_the_configured_payload_size_on_loopback() {
        // A larger initial size: both ends accept it, so the handshake finishes and data moves
        // in packets of that size (quinn's default endpoint accepted 1472 and dropped them).
        let perf = Performance {
            quic_max_udp_payload: 16_384,
            ..Performance::default()
        };
        let (c, s) = endpoints_with(&perf).await;
        assert_eq!(c.stats().path.current_mtu, 16_384);
        assert_eq!(s.stats().path.current_mtu, 16_384);
        // Path MTU discovery from the default initial size up to 65527 grows on loopback.
        let perf = Performance {
            quic_mtu_discovery_max: Some(65_527),
            ..Performance::default()
        };
        let (c, s) = endpoints_with(&perf).await;
        let (mut send, _recv) = c.open_bi().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while c.stats().path.current_mtu < 60_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "discovery stayed at {} bytes",
                c.stats().path.current_mtu
            );
            send.write_all(&[0u8; 64 * 1024]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(s);
    }

    #[tokio::test]
    async fn malformed_and_unknown_datagrams_are_counted_and_dropped() {
        let (tunnel, client, seen, _control) = pair().await;
        // Too short for a flow header, flow id 0, and a flow nobody opened.
        client.send_datagram(Bytes::from_static(b"\x01\x02")).unwrap();
        client
            .send_datagram(Bytes::from_static(b"\0\0\0\0payload"))
            .unwrap();
        client
            .send_datagram(Bytes::from_static(b"\0\0\0\x09payload"))
            .unwrap();
        // And one good datagram for the known flow 7.
        client
            .send_datagram(Bytes::from_static(b"\0\0\0\x07hello"))
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while seen.datagrams.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            seen.datagrams.lock().unwrap().clone(),
            vec![(7, Bytes::from_static(b"hello"))]
        );
        assert_eq!(tunnel.stats.datagrams_dropped.load(Ordering::Relaxed), 3);
        assert!(!tunnel.is_closed(), "bad datagrams must not close the tunnel");
        assert!(client.close_reason().is_none());
    }

    #[tokio::test]
    async fn oversized_datagram_takes_the_reliable_path() {
        let with_headroom = |payload: &[u8]| {
            let mut b = BytesMut::zeroed(DATAGRAM_HEADER);
            b.extend_from_slice(payload);
            b
        };
        let (tunnel, client, _seen, mut control) = pair().await;
        let max = tunnel.conn.max_datagram_size().unwrap();
        tunnel.datagram(3, with_headroom(&vec![9u8; max + 100]));
        tunnel.datagram(4, with_headroom(&[8u8; 10]));
        // The small one arrives as a real QUIC datagram.
        let d = tokio::time::timeout(Duration::from_secs(3), client.read_datagram())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&d[..4], &[0, 0, 0, 4]);
        assert_eq!(d.len(), 14);
        // The large one arrives whole as a DATAGRAM frame on the control stream.
        let mut buf = BytesMut::new();
        let frame = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if let Ok(Some(Decoded::Frame(f))) = frame::decode(&mut buf) {
                    return f;
                }
                let mut chunk = [0u8; 4096];
                let n = control.read(&mut chunk).await.unwrap().unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .unwrap();
        assert_eq!(frame.kind, FrameType::Datagram);
        assert_eq!(frame.stream, 3);
        assert_eq!(frame.payload.len(), max + 100);
        assert_eq!(tunnel.stats.datagrams_dropped.load(Ordering::Relaxed), 0);
    }

    /// A peer that stops reading its control stream: large datagrams (which take it) are
    /// dropped past their bound and counted, and control frames past theirs close the tunnel,
    /// instead of either queueing without end.
    #[tokio::test]
    async fn a_peer_not_reading_its_control_stream_costs_bounded_memory() {
        let (tunnel, client, _seen, _control) = pair().await;
        let mut big = BytesMut::zeroed(DATAGRAM_HEADER);
        big.extend_from_slice(&[5u8; 60_000]);
        // 24 MB offered; the client's stream window (512 KiB) takes a little of it.
        for _ in 0..400 {
            tunnel.datagram(9, big.clone());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, datagrams) = tunnel.ctrl.pending();
        assert!(
            datagrams <= MAX_PENDING_DATAGRAMS,
            "{datagrams} bytes of datagrams queued"
        );
        let dropped = tunnel.stats.datagrams_dropped.load(Ordering::Relaxed);
        assert!(dropped >= 300, "{dropped} dropped");
        assert!(!tunnel.is_closed(), "dropping datagrams does not end the tunnel");
        // Other control frames past their bound: the tunnel closes and says why.
        for _ in 0..100 {
            tunnel.control(FrameType::Config, 0, &[b' '; 60_000]);
        }
        let why = tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .expect("the tunnel closes");
        assert!(
            why.to_string().contains("not reading its control stream"),
            "{why}"
        );
        assert!(tunnel.ctrl.pending().0 <= MAX_PENDING_CONTROL);
    }

    /// Carries every stream the client opens to `target`, as the hub does.
    struct Carry {
        target: SocketAddr,
    }

    impl Handler for Carry {
        fn on_open(&mut self, s: RemoteStream) {
            let target = self.target;
            tokio::spawn(async move { s.io.run_tcp(TcpStream::connect(target).await.unwrap()).await });
        }
        fn on_control(&mut self, _f: Frame) -> Result<()> {
            Ok(())
        }
        fn on_closed(&mut self, _c: ClosedStream) {}
    }

    /// Streams whose peer does not read (a slow client or target at the far end) do not hold
    /// the tunnel's send budget while QUIC's flow control holds them back: a new stream on the
    /// same tunnel still carries its bytes.
    #[tokio::test]
    async fn streams_the_peer_does_not_read_leave_the_budget_to_the_others() {
        // A target that floods the connection when its first byte is `F`, and says hello
        // otherwise.
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = target.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = target.accept().await {
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    if s.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    if first[0] == b'F' {
                        let chunk = vec![0u8; 64 * 1024];
                        while s.write_all(&chunk).await.is_ok() {}
                    } else {
                        let _ = s.write_all(b"hello").await;
                    }
                });
            }
        });
        // A connection window larger than the stalled streams' windows together (80 × 512 KiB):
        // then QUIC's flow control still lets the new stream through, and only the budget could
        // hold it back.
        let perf = Performance {
            connection_window: 64 << 20,
            ..Performance::default()
        };
        let (_tunnel, client, _ctrl_send, _ctrl_recv) = pair_with_perf(Carry { target: addr }, perf).await;
        let open = |first: u8| {
            let client = client.clone();
            async move {
                let (mut send, recv) = open_stream(&client, None, false).await;
                send.write_all(&[first]).await.unwrap();
                (send, recv)
            }
        };
        // More flooding streams, never read, than the budget has 64 KiB reads for.
        let mut stalled = Vec::new();
        for _ in 0..(crate::mux::TUNNEL_SEND_BUDGET / READ_CHUNK + 16) {
            stalled.push(open(b'F').await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_send, mut recv) = open(b'H').await;
        let mut hello = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut hello))
            .await
            .expect("a new stream is carried while the others are held back")
            .unwrap();
        assert_eq!(&hello, b"hello");
        drop(stalled);
    }

    /// Reads `stream` until `want` bytes arrived; then checks that nothing more comes for a while.
    async fn read_exactly_and_no_more(stream: &mut quinn::RecvStream, want: usize) {
        let mut got = 0;
        while got < want {
            let chunk = tokio::time::timeout(Duration::from_secs(3), stream.read_chunk(want - got, true))
                .await
                .expect("the credit's bytes arrive")
                .unwrap()
                .unwrap();
            got += chunk.bytes.len();
        }
        let more = tokio::time::timeout(Duration::from_millis(300), stream.read_chunk(1 << 20, true)).await;
        if let Ok(Ok(Some(c))) = more {
            panic!("{} bytes beyond the credit arrived", c.bytes.len());
        }
    }

    /// Opens a stream as the edge does, with a capped record (`credit`: the flag asking for it).
    async fn open_capped(
        client: &quinn::Connection,
        cap: u32,
        credit: bool,
    ) -> (quinn::SendStream, quinn::RecvStream) {
        open_stream(client, Some(cap), credit).await
    }

    /// Opens a stream as the edge does: its OPEN record, with `buffer` as its cap.
    async fn open_stream(
        client: &quinn::Connection,
        buffer: Option<u32>,
        credit: bool,
    ) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, recv) = client.open_bi().await.unwrap();
        let record = OpenRecord {
            kind: crate::wire::open::KIND_TCP,
            service: 1,
            listen_port: 80,
            client: "192.0.2.1:4000".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            buffer,
            credit,
        };
        let mut head = BytesMut::new();
        head.put_u8(0);
        record.encode(&mut head);
        head[0] = (head.len() - 1) as u8;
        send.write_all(&head).await.unwrap();
        (send, recv)
    }

    /// A capped stream that asks for credit: the hub writes no more than the cap ahead of the
    /// peer's grants, however much its target sends, and grants the peer exactly what it wrote
    /// to the target.
    #[tokio::test]
    async fn a_capped_stream_sends_only_within_credit_and_grants_what_its_socket_took() {
        const CAP: u32 = 4096;
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tunnel, client, mut ctrl_send, mut ctrl_recv) = pair_with(Carry {
            target: target.local_addr().unwrap(),
        })
        .await;
        // The "edge": opens a capped stream with the credit flag.
        let (mut send, mut recv) = open_capped(&client, CAP, true).await;
        let key = send.id().index() as u32;
        // The target floods the stream (1 MiB, far beyond the cap) and reads what comes.
        let (mut sock, _) = target.accept().await.unwrap();
        let flood = vec![7u8; 1 << 20];
        let (mut sock_r, mut sock_w) = sock.split();
        let writer = async { sock_w.write_all(&flood).await };
        let checks = async {
            // Without grants, exactly the cap arrives.
            read_exactly_and_no_more(&mut recv, CAP as usize).await;
            // A grant of 1,000 lets exactly 1,000 more through.
            let mut w = BytesMut::new();
            frame::encode(&mut w, FrameType::Window, 0, key, &1000u32.to_be_bytes());
            ctrl_send.write_all(&w).await.unwrap();
            read_exactly_and_no_more(&mut recv, 1000).await;
            // A grant past the cap is clipped to it.
            let mut w = BytesMut::new();
            frame::encode(&mut w, FrameType::Window, 0, key, &u32::MAX.to_be_bytes());
            ctrl_send.write_all(&w).await.unwrap();
            read_exactly_and_no_more(&mut recv, CAP as usize).await;
            // The other way: what the target reads is granted back in WINDOW frames for this
            // stream, in steps of at least a quarter of the cap, adding up to what it read.
            let sent = 10 * CAP as usize + 123;
            send.write_all(&vec![1u8; sent]).await.unwrap();
            let mut received = vec![0u8; sent];
            sock_r.read_exact(&mut received).await.unwrap();
            let (mut granted, mut buf) = (0usize, BytesMut::new());
            while granted + (CAP as usize / 4) <= sent {
                let mut chunk = [0u8; 1024];
                let n = tokio::time::timeout(Duration::from_secs(3), ctrl_recv.read(&mut chunk))
                    .await
                    .expect("grants for what the target read")
                    .unwrap()
                    .unwrap();
                buf.extend_from_slice(&chunk[..n]);
                while let Ok(Some(Decoded::Frame(f))) = frame::decode(&mut buf) {
                    if f.kind == FrameType::Window {
                        assert_eq!(f.stream, key);
                        let n = frame::read_u32(&f.payload) as usize;
                        assert!(n >= CAP as usize / 4, "a grant of {n}");
                        granted += n;
                    }
                }
            }
            assert!(
                granted <= sent && sent - granted < CAP as usize / 4,
                "granted {granted} of {sent}"
            );
        };
        // (The flood may fit in the kernel's socket buffers; what matters is what crossed.)
        let (flooded, ()) = tokio::join!(writer, checks);
        flooded.unwrap();
        assert!(!tunnel.is_closed());
    }

    /// Without the credit flag (an edge whose hub did not announce `quicStreamCredit`, or one
    /// from before it) a capped stream is left to QUIC's flow control: nothing waits for WINDOW
    /// frames the peer would never send.
    #[tokio::test]
    async fn a_capped_stream_without_the_credit_flag_is_left_to_quic() {
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_tunnel, client, _ctrl_send, _ctrl_recv) = pair_with(Carry {
            target: target.local_addr().unwrap(),
        })
        .await;
        let (_send, mut recv) = open_capped(&client, 4096, false).await;
        let (mut sock, _) = target.accept().await.unwrap();
        sock.write_all(&[7u8; 65536]).await.unwrap();
        let mut got = vec![0u8; 65536];
        tokio::time::timeout(Duration::from_secs(3), recv.read_exact(&mut got))
            .await
            .expect("16 times the cap arrives without any credit")
            .unwrap();
    }
}
