//! The hub engine: accepts edge tunnels, authenticates them, pushes each its configuration,
//! and forwards every stream to its port's target behind a PROXY protocol header.

use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::handshake::{self, HubVerdict, SessionParams};
use crate::config::{validate_edges, EdgeSpec, HubOptions, Limits, Performance, PortSpec};
use crate::engine::listen::{self, Gate, ServerTls};
use crate::engine::udp::{FlowTunnel, HubFlows};
use crate::engine::Slot;
use crate::error::{Error, Result};
use crate::event;
use crate::events::{log, EventSink};
use crate::mux::{self, ClosedStream, Handler, MuxConfig, RemoteStream, Side};
use crate::supervise::{self, supervise, AbortOnDrop, FaultPoint};
use crate::transport::tls::Identity;
use crate::transport::tunnel::Tunnel;
use crate::wire::control::ConfigAck;
use crate::wire::frame::{goaway, FrameType};
use crate::wire::open::{OpenRecord, KIND_UDP};
use crate::wire::proxy_protocol;

mod dialer;

/// A running hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    events: EventSink,
    fingerprint: String,
    port: u16,
    perf: Performance,
    limits: Limits,
    state: Mutex<State>,
    /// Pre-authentication bounds of the tunnel port (failure budget, admission, slots).
    gate: Gate,
    /// Random stand-in secret for unknown edge ids (equal-time failures).
    dummy_secret: [u8; 32],
    shutdown: watch::Sender<bool>,
    stopped: AtomicBool,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    quic: Mutex<Option<quinn::Endpoint>>,
    session_serial: AtomicU64,
    /// One task per allowed edge the hub dials (`dialEdge`).
    dialers: Mutex<HashMap<String, dialer::DialTask>>,
}

#[derive(Default)]
struct State {
    edges: HashMap<String, Arc<EdgeSpec>>,
    generation: u64,
    /// Every live tunnel of every edge, oldest first. The last one is the edge's; the others
    /// drain (GOAWAY sent: they finish their streams and take no new ones) until they are
    /// empty or `limits.drainTimeoutMs` has passed. Removing an edge, changing its secret or
    /// stopping the hub ends all of them.
    sessions: HashMap<String, Vec<Session>>,
    /// What each edge told about itself (INFO: its public address from STUN), kept across its
    /// reconnects: the edge repeats it on every new tunnel.
    public_addresses: HashMap<String, String>,
    /// What all tunnels of an edge hold together, against the per-edge limits.
    allowances: HashMap<String, Arc<Allowance>>,
}

struct Session {
    serial: u64,
    tunnel: Tunnel,
    flows: Arc<HubFlows>,
    remote: SocketAddr,
    since: SystemTime,
    /// The secret this session authenticated with: a changed secret ends the session.
    secret: String,
    /// Since when the session drains, and the timer that closes it at the drain limit.
    draining: Option<(SystemTime, AbortOnDrop<()>)>,
}

/// What all live tunnels of one edge hold together (streams open, UDP flows), counted against
/// `maxStreamsPerEdge` and `maxUdpFlowsPerEdge`: an edge that reconnects, or two processes with
/// one id, get one allowance between them, not a full one per tunnel.
#[derive(Default)]
pub struct Allowance {
    pub streams: Arc<AtomicUsize>,
    pub flows: Arc<AtomicUsize>,
}

/// Stream reset codes → the stable codes JavaScript sees on `streamClosed`.
pub fn reset_code(code: u16) -> &'static str {
    match code {
        mux::reset::IO => "ERR_STREAM_IO",
        mux::reset::TARGET_UNREACHABLE => "ERR_TARGET_UNREACHABLE",
        mux::reset::REFUSED => "ERR_REFUSED",
        mux::reset::NO_ROUTE => "ERR_NO_ROUTE",
        mux::reset::SHUTDOWN => "ERR_SHUTDOWN",
        _ => "ERR_RESET",
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Listed in CONFIG's `features`: this hub enforces a capped QUIC stream's `bufferBytes` with
/// WINDOW credit on the control stream when the stream's OPEN record asks for it (flag 0x02).
/// An edge sets that flag only for a hub that lists this, so neither side of a mixed-version
/// pair ever waits for credit the other does not send.
pub const FEATURE_QUIC_STREAM_CREDIT: &str = "quicStreamCredit";

/// The CONFIG record pushed to an edge. Targets stay on the hub: the edge learns only what it
/// must bind and enforce.
fn config_json(spec: &EdgeSpec, generation: u64, limits: &Limits) -> Value {
    let ports = |v: &[PortSpec]| v.iter().map(|p| p.port).collect::<Vec<_>>();
    let services: Vec<Value> = [(false, &spec.tcp), (true, &spec.udp)]
        .into_iter()
        .flat_map(|(udp, list)| {
            list.iter().map(move |p| {
                json!({
                    "sid": p.service_number(udp), "id": p.service_id(udp), "name": p.name,
                    "protocol": if udp { "udp" } else { "tcp" }, "port": p.port,
                    "bindAddress": p.bind_address, "maxConnections": p.max_connections,
                    "idleTimeoutSecs": p.idle_timeout_secs, "bufferBytes": p.buffer_bytes,
                    "trustProxyFrom": p.trust_proxy_from,
                })
            })
        })
        .collect();
    json!({
        "services": services,
        "generation": generation,
        "udpIdleMs": limits.udp_flow_idle_ms,
        "maxUdpFlows": limits.max_udp_flows_per_edge,
        "maxUdpFlowsPerService": limits.max_udp_flows_per_service,
        "maxUdpFlowsPerSource": limits.max_udp_flows_per_source,
        "udpUnansweredIdleMs": limits.udp_unanswered_idle_ms,
        "tcp": ports(&spec.tcp),
        "udp": ports(&spec.udp),
        "bindAddress": spec.bind_address,
        "firewall": spec.firewall,
        "stunIntervalSecs": spec.stun_interval_secs,
        "stunServers": spec.stun_servers,
        "features": [FEATURE_QUIC_STREAM_CREDIT],
    })
}

impl Hub {
    /// Binds the tunnel port and starts accepting edges. Must run inside the runtime.
    pub async fn start(opts: HubOptions, events: EventSink) -> Result<Hub> {
        opts.performance.validate()?;
        opts.performance.check_socket_buffer()?;
        opts.limits.validate()?;
        let identity = Identity::from_pem(&opts.cert_pem, &opts.key_pem)?;
        let tls = Arc::new(identity.server_config()?);
        let (listener, udp_socket) =
            listen::bind_tunnel_port(&opts.bind_host, opts.tunnel_port, &opts.performance)?;
        let port = listener.local_addr()?.port();
        let mut dummy_secret = [0u8; 32];
        rand::rng().fill_bytes(&mut dummy_secret);
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            events: events.clone(),
            fingerprint: identity.fingerprint.clone(),
            port,
            perf: opts.performance.clone(),
            limits: opts.limits.clone(),
            state: Mutex::new(State::default()),
            gate: Gate::new(events.clone(), &opts.limits, "hub"),
            dummy_secret,
            shutdown,
            stopped: AtomicBool::new(false),
            accept_task: Mutex::new(None),
            quic: Mutex::new(None),
            session_serial: AtomicU64::new(0),
            dialers: Mutex::new(HashMap::new()),
        });
        let listener = Arc::new(listener);
        let endpoint = listen::quic_endpoint(
            &identity,
            tls.clone(),
            &opts.performance,
            &opts.limits,
            udp_socket,
        )?;
        *lock(&inner.quic) = Some(endpoint.clone());
        tokio::spawn(supervise(inner.events.clone(), "hub QUIC listener".into(), {
            let inner = inner.clone();
            move || listen::quic_accept_loop(inner.clone(), endpoint.clone())
        }));
        let sup = {
            let inner = inner.clone();
            supervise(inner.events.clone(), "hub listener".into(), move || {
                listen::tls_accept_loop(inner.clone(), listener.clone(), tls.clone())
            })
        };
        let task = tokio::spawn(sup);
        *lock(&inner.accept_task) = Some(task);
        log(
            &inner.events,
            "info",
            format!("hub listening on {}:{port}", opts.bind_host),
        );
        Ok(Hub { inner })
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// Replaces the allowed edges with `edges` (the complete desired set). Invalid input is
    /// rejected whole and nothing changes. Removed edges and edges whose secret changed are
    /// disconnected; connected edges whose ports or firewall changed get a new CONFIG.
    pub fn set_edges(&self, edges: Vec<EdgeSpec>) -> Result<u64> {
        validate_edges(&edges)?;
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(Error::State("the hub is stopped".into()));
        }
        let mut st = lock(&self.inner.state);
        st.generation += 1;
        let generation = st.generation;
        let new: HashMap<String, Arc<EdgeSpec>> =
            edges.into_iter().map(|e| (e.id.clone(), Arc::new(e))).collect();
        let mut to_close = Vec::new();
        let mut to_push = Vec::new();
        // Every tunnel of an edge, draining ones included: a revoked credential ends them all.
        for (id, session) in st
            .sessions
            .iter()
            .flat_map(|(id, list)| list.iter().map(move |s| (id, s)))
        {
            match new.get(id) {
                None => to_close.push((session.tunnel.clone(), "edge removed from the allowed edges")),
                Some(spec) if spec.secret != session.secret => {
                    to_close.push((session.tunnel.clone(), "edge secret changed"))
                }
                Some(spec) => {
                    let old = st.edges.get(id);
                    let changed = old.is_none_or(|o| {
                        o.tcp != spec.tcp
                            || o.udp != spec.udp
                            || o.bind_address != spec.bind_address
                            || o.firewall != spec.firewall
                            || o.stun_interval_secs != spec.stun_interval_secs
                            || o.stun_servers != spec.stun_servers
                    });
                    if changed && session.draining.is_none() {
                        to_push.push((
                            session.tunnel.clone(),
                            config_json(spec, generation, &self.inner.limits),
                        ));
                    }
                }
            }
        }
        st.edges = new;
        // An allowance lives while its edge is allowed or a tunnel of it still holds it.
        let State {
            edges, allowances, ..
        } = &mut *st;
        allowances.retain(|id, a| edges.contains_key(id) || Arc::strong_count(a) > 1);
        drop(st);
        for (mux, why) in to_close {
            mux.close(why);
        }
        for (tunnel, cfg) in to_push {
            tunnel.control(FrameType::Config, 0, handshake::json_payload(&cfg));
        }
        dialer::reconcile(&self.inner);
        Ok(generation)
    }

    pub fn status(&self) -> Value {
        let pending = self.inner.gate.pending();
        let st = lock(&self.inner.state);
        // One entry per edge with a live tunnel: the newest tunnel's figures, and every tunnel
        // (draining ones too) in `tunnels`.
        let edges: Vec<Value> = st
            .sessions
            .iter()
            .filter_map(|(id, list)| Some((id, list, list.last()?)))
            .map(|(id, list, s)| {
                let stats = s.tunnel.stats();
                json!({
                    "edgeId": id,
                    "remoteAddress": proxy_protocol::unmap(s.remote).ip().to_string(),
                    "remotePort": s.remote.port(),
                    "transport": s.tunnel.transport(),
                    "udp": s.flows.status(),
                    "publicAddress": st.public_addresses.get(id),
                    "datagramsDropped": stats.datagrams_dropped.load(Ordering::Relaxed),
                    "connectedSince": millis(s.since),
                    "openStreams": stats.open_streams.load(Ordering::Relaxed),
                    "streamsTotal": stats.streams_total.load(Ordering::Relaxed),
                    "bytesIn": stats.bytes_in.load(Ordering::Relaxed),
                    "bytesOut": stats.bytes_out.load(Ordering::Relaxed),
                    "rttMs": stats.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
                    "quicPathMtu": s.tunnel.quic_path_mtu(),
                    "drainingTunnels": list.iter().filter(|s| s.draining.is_some()).count(),
                    // What the per-edge limits count: all tunnels of the edge together.
                    "allTunnels": st.allowances.get(id).map(|a| json!({
                        "openStreams": a.streams.load(Ordering::Relaxed),
                        "udpFlows": a.flows.load(Ordering::Relaxed),
                    })),
                    "tunnels": list.iter().map(Session::status).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "running": !self.inner.stopped.load(Ordering::Acquire),
            "tunnelPort": self.inner.port,
            "fingerprint": self.inner.fingerprint,
            "allowedEdges": st.edges.len(),
            "edges": edges,
            "pendingHandshakes": { "tls": pending.0, "quic": pending.1 },
            "handshakes": self.inner.gate.outcomes(),
            "dialing": dialer::status(&self.inner),
        })
    }

    /// Stops accepting, asks every edge to drain (GOAWAY), waits up to `grace` for open streams
    /// to finish, then closes the rest. Idempotent; returns when everything is released.
    pub async fn stop(&self, grace: Duration) {
        let first = !self.inner.stopped.swap(true, Ordering::AcqRel);
        if first {
            let _ = self.inner.shutdown.send(true);
        }
        dialer::stop_all(&self.inner);
        let accept = lock(&self.inner.accept_task).take();
        if let Some(t) = accept {
            let _ = t.await;
        }
        if let Some(ep) = lock(&self.inner.quic).take() {
            // No new QUIC connections; existing ones drain below.
            ep.set_server_config(None);
        }
        let muxes: Vec<Tunnel> = lock(&self.inner.state)
            .sessions
            .values()
            .flatten()
            .map(|s| s.tunnel.clone())
            .collect();
        for m in &muxes {
            m.go_away(goaway::DRAIN, "hub shutting down");
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && muxes.iter().any(|m| !m.is_closed() && m.open_streams() > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for m in &muxes {
            m.close("hub shutting down");
        }
        // Each session's task unregisters it once its tunnel has ended. A tunnel that arrived
        // while the others closed is refused by `register_session` (the hub is stopped).
        while !lock(&self.inner.state).sessions.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// `std::sync::Mutex::lock` that shrugs off poisoning: state stays consistent because every
/// critical section here is a few map operations that cannot panic half-way.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl listen::Authenticator for Inner {
    type Peer = (String, String);
    const FAULT: Option<FaultPoint> = Some(FaultPoint::HubListener);

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The CHALLENGE/AUTH exchange. `Ok(None)`: refused (reported, counted against the
    /// source's failure budget).
    async fn authenticate<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send>(
        self: &Arc<Self>,
        io: &mut S,
        binding: &[u8; 32],
        peer: SocketAddr,
    ) -> Result<Option<(String, String)>> {
        let params = session_params(&self.perf, &self.limits);
        let state = &self.state;
        let verdict = handshake::hub(
            io,
            binding,
            |id| lock(state).edges.get(id).map(|e| e.secret.clone()),
            &self.dummy_secret,
            params,
            None,
        )
        .await;
        match verdict {
            Ok(HubVerdict::Accepted { edge_id, secret }) => Ok(Some((edge_id, secret))),
            Ok(HubVerdict::Refused { edge_id, reason }) => {
                let ip = proxy_protocol::unmap(peer).ip();
                self.gate.failed_attempt(ip, "ERR_AUTH_FAILED");
                self.events.as_ref()(event!("authFailed", {
                    "remoteAddress": ip.to_string(), "remotePort": peer.port(),
                    "edgeId": edge_id, "code": "ERR_AUTH_FAILED",
                    "reason": format!("authentication failed: {reason}")
                }));
                Ok(None)
            }
            // The listener counts errors (with the TLS and QUIC failures around this exchange).
            Err(e) => Err(e),
        }
    }

    async fn serve_tls(self: Arc<Self>, tls: ServerTls, who: (String, String), peer: SocketAddr) {
        let (edge_id, secret) = who;
        run_tls_session(self, tls, peer, edge_id, secret).await
    }

    async fn serve_quic(
        self: Arc<Self>,
        conn: quinn::Connection,
        control: crate::transport::quic::Duplex,
        who: (String, String),
        peer: SocketAddr,
    ) {
        let (edge_id, secret) = who;
        run_quic_session(self, conn, None, control, peer, edge_id, secret).await
    }
}

/// Starts the QUIC tunnel of an authenticated edge, whichever side dialed, and runs its session.
async fn run_quic_session(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    endpoint: Option<quinn::Endpoint>,
    control: crate::transport::quic::Duplex,
    peer: SocketAddr,
    edge_id: String,
    secret: String,
) {
    // Authenticated: the edge may now open a stream per client and fill the configured windows.
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(
        inner
            .limits
            .max_streams_per_edge
            .min(crate::transport::quic::HUB_MAX_QUIC_STREAMS),
    ));
    conn.set_receive_window(quinn::VarInt::from_u32(inner.perf.connection_window));
    let (handler, slot) = HubHandler::new(&inner, &edge_id);
    let flows = handler.flows.clone();
    let (quic, fut) = crate::transport::quic::start(conn, endpoint, control, handler, true);
    let tunnel = Tunnel::Quic(quic);
    let _ = slot.set(tunnel.clone());
    run_session(inner, tunnel, flows, Box::pin(fut), peer, edge_id, secret).await;
}

fn session_params(perf: &Performance, limits: &Limits) -> SessionParams {
    SessionParams {
        stream_window: perf.stream_window,
        connection_window: perf.connection_window,
        heartbeat_ms: limits.heartbeat_interval_ms as u32,
        max_streams: limits.max_streams_per_edge,
        max_frame: perf.max_frame_payload,
    }
}

/// Starts the TLS muxer for an authenticated edge and runs its session.
async fn run_tls_session<IO>(inner: Arc<Inner>, tls: IO, peer: SocketAddr, edge_id: String, secret: String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = MuxConfig {
        side: Side::Hub,
        max_frame: inner.perf.max_frame_payload as usize,
        stream_window: inner.perf.stream_window,
        connection_window: inner.perf.connection_window,
        max_streams: inner.limits.max_streams_per_edge,
        heartbeat_interval: Duration::from_millis(inner.limits.heartbeat_interval_ms),
        heartbeat_timeout: Duration::from_millis(inner.limits.heartbeat_timeout_ms),
    };
    let (handler, slot) = HubHandler::new(&inner, &edge_id);
    let flows = handler.flows.clone();
    let (mux, fut) = mux::start(tls, cfg, handler);
    let tunnel = Tunnel::Tls(mux);
    let _ = slot.set(tunnel.clone());
    run_session(inner, tunnel, flows, Box::pin(fut), peer, edge_id, secret).await;
}

type TunnelFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Error> + Send>>;

/// One authenticated tunnel's life at the hub, whatever its transport.
async fn run_session(
    inner: Arc<Inner>,
    tunnel: Tunnel,
    flows: Arc<HubFlows>,
    fut: TunnelFuture,
    peer: SocketAddr,
    edge_id: String,
    secret: String,
) {
    let serial = inner.session_serial.fetch_add(1, Ordering::Relaxed) + 1;
    let task = tokio::spawn(fut);
    if !register_session(&inner, &edge_id, serial, &tunnel, &flows, peer, secret) {
        tunnel.close("edge no longer allowed");
        let _ = task.await;
        flows.close_all();
        return;
    }
    inner.events.as_ref()(event!("edgeConnected", {
        "edgeId": edge_id, "remoteAddress": proxy_protocol::unmap(peer).ip().to_string(),
        "remotePort": peer.port(), "transport": tunnel.transport()
    }));
    let why = match task.await {
        Ok(e) => e,
        Err(e) if e.is_panic() => {
            let what = supervise::panic_message(e.into_panic());
            inner.events.as_ref()(event!("crashRecovered", {
                "component": "tunnel", "edgeId": edge_id, "error": what, "restarted": true
            }));
            // The edge redials, which restarts the tunnel.
            Error::LocalClosed(format!("tunnel task panicked ({what}); the edge will reconnect"))
        }
        Err(e) => Error::LocalClosed(format!("tunnel task cancelled: {e}")),
    };
    // Every upstream UDP socket of this tunnel goes with it.
    flows.close_all();
    {
        let mut st = lock(&inner.state);
        if let Some(list) = st.sessions.get_mut(&edge_id) {
            list.retain(|s| s.serial != serial);
            if list.is_empty() {
                st.sessions.remove(&edge_id);
            }
        }
    }
    inner.events.as_ref()(event!("edgeDisconnected", {
        "edgeId": edge_id, "code": why.code(), "reason": why.to_string()
    }));
}

/// Registers a freshly authenticated session and pushes its first CONFIG. Returns false if
/// the edge was removed, its secret changed, or the hub stopped during the handshake.
fn register_session(
    inner: &Inner,
    edge_id: &str,
    serial: u64,
    tunnel: &Tunnel,
    flows: &Arc<HubFlows>,
    peer: SocketAddr,
    secret: String,
) -> bool {
    let mut st = lock(&inner.state);
    let spec = match st.edges.get(edge_id) {
        Some(s) if s.secret == secret && !inner.stopped.load(Ordering::Acquire) => s.clone(),
        _ => return false,
    };
    tunnel.control(
        FrameType::Config,
        0,
        handshake::json_payload(&config_json(&spec, st.generation, &inner.limits)),
    );
    let drain_limit = Duration::from_millis(inner.limits.drain_timeout_ms);
    let list = st.sessions.entry(edge_id.to_string()).or_default();
    for old in list.iter_mut().filter(|s| s.draining.is_none()) {
        // The same edge has a newer tunnel (it reconnected after a half-open tunnel, moved
        // from TLS to QUIC, or another process uses its id): the old one drains — its open
        // streams finish, it takes no new streams or flows, and it is closed at the drain
        // limit whatever it still carries.
        old.tunnel
            .go_away(goaway::REPLACED, "replaced by a newer tunnel from the same edge");
        let tunnel = old.tunnel.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(drain_limit).await;
            tunnel.close("the tunnel drained for longer than limits.drainTimeoutMs");
        });
        old.draining = Some((SystemTime::now(), AbortOnDrop(timer)));
    }
    list.push(Session {
        serial,
        tunnel: tunnel.clone(),
        flows: flows.clone(),
        remote: peer,
        since: SystemTime::now(),
        secret,
        draining: None,
    });
    true
}

impl Session {
    /// One tunnel of an edge, as status lists it.
    fn status(&self) -> Value {
        let stats = self.tunnel.stats();
        json!({
            "state": if self.draining.is_some() { "draining" } else { "active" },
            "drainingSince": self.draining.as_ref().map(|(t, _)| millis(*t)),
            "transport": self.tunnel.transport(),
            "remoteAddress": proxy_protocol::unmap(self.remote).ip().to_string(),
            "remotePort": self.remote.port(),
            "connectedSince": millis(self.since),
            "openStreams": stats.open_streams.load(Ordering::Relaxed),
            "udpFlows": self.flows.stats.flows.load(Ordering::Relaxed),
        })
    }
}

struct HubHandler {
    inner: Arc<Inner>,
    edge_id: String,
    connect_timeout: Duration,
    flows: Arc<HubFlows>,
    /// What all tunnels of this edge hold together.
    allowance: Arc<Allowance>,
    /// The generation of the last CONFIG_ACK reported.
    acked: Option<u64>,
    /// The tunnel this handler serves, set right after the transport starts (UDP replies go
    /// back through it).
    tunnel: Arc<OnceLock<Tunnel>>,
}

impl HubHandler {
    fn new(inner: &Arc<Inner>, edge_id: &str) -> (HubHandler, Arc<OnceLock<Tunnel>>) {
        let slot = Arc::new(OnceLock::new());
        let allowance = lock(&inner.state)
            .allowances
            .entry(edge_id.to_string())
            .or_default()
            .clone();
        let h = HubHandler {
            inner: inner.clone(),
            edge_id: edge_id.to_string(),
            connect_timeout: Duration::from_millis(inner.limits.target_connect_timeout_ms),
            flows: HubFlows::new(
                edge_id,
                allowance.flows.clone(),
                inner.limits.max_udp_flows_per_edge as usize,
                inner.events.clone(),
            ),
            allowance,
            acked: None,
            tunnel: slot.clone(),
        };
        (h, slot)
    }

    /// The route of a stream or flow (see [`find_route`]).
    fn route(&self, udp: bool, record: &OpenRecord) -> std::result::Result<PortSpec, String> {
        let st = lock(&self.inner.state);
        let Some(e) = st.edges.get(&self.edge_id) else {
            return Err("this edge is no longer allowed".into());
        };
        find_route(e, udp, record)
    }
}

/// The route of a stream or flow: by the service number the edge sent, or by its listen port
/// when the number is 0 (edges from before named services). A number the edge's services do
/// not have is refused with a reason that says so.
fn find_route(e: &EdgeSpec, udp: bool, record: &OpenRecord) -> std::result::Result<PortSpec, String> {
    let ports = if udp { &e.udp } else { &e.tcp };
    let found = if record.service == 0 {
        ports.iter().find(|p| p.port == record.listen_port)
    } else {
        ports.iter().find(|p| p.service_number(udp) == record.service)
    };
    found.cloned().ok_or_else(|| match record.service {
        0 => format!("port {} is not assigned to this edge", record.listen_port),
        n => format!(
            "unknown service {n:#010x} (edge port {}): not among this edge's services",
            record.listen_port
        ),
    })
}

/// Connects to a stream's target and writes its PROXY header: the socket, or the reset code and
/// reason the stream ends with.
async fn connect_target(
    route: PortSpec,
    record: OpenRecord,
    timeout: Duration,
) -> std::result::Result<TcpStream, (u16, String)> {
    let target = (route.target_host.as_str(), route.target_port);
    let mut sock = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err((
                mux::reset::TARGET_UNREACHABLE,
                format!("target {}:{} refused: {e}", route.target_host, route.target_port),
            ))
        }
        Err(_) => {
            return Err((
                mux::reset::TARGET_UNREACHABLE,
                format!(
                    "target {}:{} did not answer within {timeout:?}",
                    route.target_host, route.target_port
                ),
            ))
        }
    };
    let _ = sock.set_nodelay(true);
    if let Some(header) = proxy_protocol::stream_header(route.proxy_protocol, record.client, record.local) {
        // One write before any payload: the target must see the header whole and first.
        if let Err(e) = sock.write_all(&header).await {
            return Err((mux::reset::IO, format!("writing the PROXY header failed: {e}")));
        }
    }
    Ok(sock)
}

impl Handler for HubHandler {
    fn on_open(&mut self, stream: RemoteStream) {
        let RemoteStream { record, io } = stream;
        let route = match self.route(false, &record) {
            Ok(r) => r,
            Err(why) => {
                io.reset(mux::reset::NO_ROUTE, why);
                return;
            }
        };
        let max = self.inner.limits.max_streams_per_edge as usize;
        let Some(place) = Slot::take(&self.allowance.streams, max) else {
            io.reset(
                mux::reset::REFUSED,
                format!("the edge has {max} streams open over all its tunnels (limits.maxStreamsPerEdge)"),
            );
            return;
        };
        let client = proxy_protocol::unmap(record.client);
        self.inner.events.as_ref()(event!("streamOpened", {
            "edgeId": self.edge_id, "streamId": io.id(), "port": record.listen_port,
            "serviceId": route.service_id(false), "serviceName": route.name,
            "clientAddress": client.ip().to_string(), "clientPort": client.port(),
            "targetHost": route.target_host, "targetPort": route.target_port
        }));
        // The connect phase runs boxed: its future (name lookup, connect, timer, PROXY header,
        // the route) is freed once the target answers instead of sizing the task that carries
        // the stream for as long as it lives. Made before the task so that the task captures
        // only the box, not the route and record as well.
        let connect = Box::pin(connect_target(route, record, self.connect_timeout));
        tokio::spawn(async move {
            // The edge's place for this stream, held until it ends.
            let _place = place;
            supervise::check(FaultPoint::HubStream);
            match connect.await {
                Ok(sock) => io.run_tcp(sock).await,
                Err((code, why)) => io.reset(code, why),
            }
        });
    }

    fn on_control(&mut self, frame: crate::wire::frame::Frame) -> Result<()> {
        match frame.kind {
            FrameType::ConfigAck => {
                // Informational, from an untrusted edge: only a well-formed one of at most
                // CONFIG_ACK_MAX bytes, and only one per CONFIG (its generation must be newer
                // than the last one this tunnel acknowledged), becomes an event.
                if let Some(ack) = ConfigAck::decode(&frame.payload) {
                    if self.acked.is_none_or(|g| ack.generation > g) {
                        self.acked = Some(ack.generation);
                        self.inner.events.as_ref()(event!("configApplied", {
                            "edgeId": self.edge_id, "result": ack
                        }));
                    }
                }
                Ok(())
            }
            FrameType::Info => {
                // Informational: a malformed or unexpected payload is ignored, not fatal.
                if let Ok(v) = serde_json::from_slice::<Value>(&frame.payload) {
                    if let Some(a) = v["publicAddress"]
                        .as_str()
                        .filter(|a| a.parse::<SocketAddr>().is_ok())
                    {
                        lock(&self.inner.state)
                            .public_addresses
                            .insert(self.edge_id.clone(), a.to_string());
                    }
                }
                Ok(())
            }
            FrameType::FlowOpen => {
                let record =
                    OpenRecord::decode(&frame.payload).map_err(|e| Error::Protocol(e.to_string()))?;
                if record.kind != KIND_UDP {
                    return Err(Error::Protocol("FLOW_OPEN for a non-UDP record".into()));
                }
                let Some(tunnel) = self.tunnel.get().cloned() else {
                    return Ok(());
                };
                if tunnel.is_going_away() {
                    // A draining tunnel takes no new flows (as it takes no new streams): the
                    // edge opens them on its newer tunnel.
                    self.flows.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    tunnel.flow_close(frame.stream);
                    return Ok(());
                }
                let route = self.route(true, &record).ok();
                self.flows.open(frame.stream, record, route, Arc::new(tunnel));
                Ok(())
            }
            FrameType::Datagram => {
                self.flows.datagram(frame.stream, frame.payload);
                Ok(())
            }
            FrameType::FlowClose => {
                self.flows.close(frame.stream);
                Ok(())
            }
            other => Err(Error::Protocol(format!("edge sent a {other:?} frame"))),
        }
    }

    fn on_closed(&mut self, c: ClosedStream) {
        let (code, reason) = match &c.reset {
            None => (Value::Null, Value::Null),
            Some((code, reason)) => (json!(reset_code(*code)), json!(reason)),
        };
        self.inner.events.as_ref()(event!("streamClosed", {
            "edgeId": self.edge_id, "streamId": c.id, "port": c.listen_port,
            "bytesIn": c.bytes_in, "bytesOut": c.bytes_out, "code": code, "reason": reason
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::service_number;
    use crate::wire::open::KIND_TCP;

    fn record(service: u32, port: u16) -> OpenRecord {
        OpenRecord {
            kind: KIND_TCP,
            service,
            listen_port: port,
            client: "203.0.113.1:40000".parse().unwrap(),
            local: "198.51.100.1:443".parse().unwrap(),
            buffer: None,
            credit: false,
        }
    }

    #[test]
    fn streams_route_by_service_number_and_an_unknown_one_is_refused() {
        let edge: EdgeSpec = serde_json::from_value(json!({
            "id": "e", "secret": "s".repeat(16),
            "tcp": [
                { "port": 443, "targetHost": "10.0.0.1", "targetPort": 8443, "proxyProtocol": "v2", "service": "web" },
                { "port": 8080, "targetHost": "10.0.0.2", "targetPort": 80, "proxyProtocol": "none" }
            ]
        }))
        .unwrap();
        // By number: the named service, and the plain port's implicit `tcp/8080`.
        let web = find_route(&edge, false, &record(service_number("web"), 443)).unwrap();
        assert_eq!((web.target_host.as_str(), web.target_port), ("10.0.0.1", 8443));
        let plain = find_route(&edge, false, &record(service_number("tcp/8080"), 8080)).unwrap();
        assert_eq!(plain.target_port, 80);
        // The number decides, not the port the edge says it listened on.
        assert_eq!(
            find_route(&edge, false, &record(service_number("web"), 8080))
                .unwrap()
                .target_port,
            8443
        );
        // Number 0: an edge from before named services, routed by port.
        assert_eq!(
            find_route(&edge, false, &record(0, 443)).unwrap().target_port,
            8443
        );
        // A number no service of this edge has: refused, saying so.
        let why = find_route(&edge, false, &record(service_number("not-here"), 443)).unwrap_err();
        assert!(why.contains("unknown service"), "{why}");
        assert!(find_route(&edge, true, &record(service_number("web"), 443)).is_err());
    }
}
