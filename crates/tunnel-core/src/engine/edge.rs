//! The edge engine: dials the hub (QUIC, TLS, or QUIC with TLS fallback), proves its identity,
//! binds the TCP and UDP ports the hub assigns, and carries every accepted client connection as
//! one stream and every UDP client as one flow. Reconnects with backoff and jitter; while on the
//! TLS fallback it keeps probing QUIC and moves new streams over once QUIC works.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::handshake;
use crate::config::{EdgeOptions, ListenForHub};
use crate::engine::firewall::{self, Nft};
use crate::engine::listen::{self, Gate, ServerTls};
use crate::engine::service::{self, Service, REBIND_ATTEMPTS, REBIND_PAUSE};
use crate::engine::udp::{EdgeUdp, FlowTunnel};
use crate::error::{Error, Result};
use crate::event;
use crate::events::{log, EventSink};
use crate::mux::{self, ClosedStream, Handler, MuxConfig, RemoteStream, Side};
use crate::supervise::{self, supervise, FaultPoint};
use crate::transport::dial;
use crate::transport::quic;
use crate::transport::tls::{self, Identity, Trust};
use crate::transport::tunnel::Tunnel;
use crate::wire::control::{ConfigAck, PortFailure};
use crate::wire::frame::{goaway, Frame, FrameType};
use crate::wire::open::{OpenRecord, KIND_TCP};

#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

type Current = Arc<RwLock<Option<Tunnel>>>;
type Services = Arc<RwLock<BTreeMap<u16, Arc<Service>>>>;

struct Inner {
    opts: EdgeOptions,
    /// How the hub's certificate is checked when this edge dials it (`None`: it listens).
    trust: Option<Trust>,
    /// The listener a dialing hub reaches (`listenForHub`), and the tunnels it authenticated,
    /// taken by the run loop.
    hub_listener: Option<Arc<HubListener>>,
    arrivals: tokio::sync::Mutex<Option<mpsc::Receiver<Arrival>>>,
    events: EventSink,
    status: Mutex<Status>,
    stop: watch::Sender<bool>,
    stopped: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The tunnel new streams and datagrams use. Listeners read it per connection, so a move
    /// from TLS to QUIC needs no re-bind.
    current: Current,
    listeners: Mutex<BTreeMap<u16, JoinHandle<()>>>,
    /// The TCP service each listener serves, by port (read per accepted client).
    services: Services,
    udp: Arc<EdgeUdp>,
    firewall: Arc<Mutex<Firewall>>,
    /// The public address, from STUN (`stunIntervalSecs` in CONFIG).
    stun: super::stun::Stun,
}

/// The edge's nftables state. `nft` is opened on the first snapshot; the table is ours alone.
struct Firewall {
    table: String,
    /// An earlier version's table for this edge, removed with the first snapshot applied.
    legacy_table: Option<String>,
    nft: Option<Nft>,
    /// Why enforcement is impossible here (no library, no permission), once known.
    unavailable: Option<String>,
    /// (generation, hash) of the snapshot in force.
    applied: Option<(Value, String)>,
    last_error: Option<Value>,
}

impl Firewall {
    fn nft(&mut self) -> std::result::Result<&mut Nft, String> {
        if self.nft.is_none() {
            self.nft = Some(Nft::open()?);
        }
        Ok(self.nft.as_mut().expect("set just above"))
    }

    fn status(&mut self) -> Value {
        let counters = match (&self.applied, self.nft.as_mut()) {
            (Some(_), Some(nft)) => nft
                .run(&format!("list table inet {}", self.table), true)
                .map(|out| firewall::counters(&out))
                .unwrap_or(Value::Null),
            _ => Value::Null,
        };
        json!({
            "available": self.unavailable.is_none(),
            "reason": self.unavailable,
            "table": self.table,
            "generation": self.applied.as_ref().map(|a| a.0.clone()),
            "hash": self.applied.as_ref().map(|a| a.1.clone()),
            "counters": counters,
            "lastError": self.last_error,
        })
    }
}

struct Status {
    state: &'static str,
    connected_since: Option<SystemTime>,
    attempts: u64,
    last_error: Option<Value>,
    config: Option<Value>,
    failed: Vec<Value>,
    transport_reason: Option<String>,
    quic_probe: Option<Value>,
    /// An edge that listens: the address of the hub's current tunnel.
    hub_peer: Option<String>,
    /// Tunnels that came up since the edge started (the first, then every reconnect).
    tunnels: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn current(c: &Current) -> Option<Tunnel> {
    c.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set_current(inner: &Inner, t: Option<Tunnel>) {
    *inner.current.write().unwrap_or_else(|p| p.into_inner()) = t.clone();
    inner
        .udp
        .set_tunnel(t.map(|t| Arc::new(t) as Arc<dyn FlowTunnel>));
}

/// How a dialing edge checks its hub's certificate, from the options.
fn dial_trust(opts: &EdgeOptions) -> Result<Trust> {
    let trust = match (&opts.hub_fingerprint, opts.dangerously_disable_fingerprint_pinning) {
        (Some(f), false) => Trust::Pinned(tls::parse_fingerprint(f)?),
        (None, true) => Trust::DangerouslyAnyCertificate,
        (Some(_), true) => {
            return Err(Error::InvalidConfig(
                "hubFingerprint and dangerouslyDisableFingerprintPinning: give one, not both".into(),
            ))
        }
        (None, false) => {
            return Err(Error::InvalidConfig(
                "hubFingerprint: required (the edge pins the hub's certificate); pass a token, or set dangerouslyDisableFingerprintPinning to skip the check".into(),
            ))
        }
    };
    if opts.hub_host.is_empty() {
        return Err(Error::InvalidConfig("hubHost: empty".into()));
    }
    if opts.hub_port == 0 {
        return Err(Error::InvalidConfig("hubPort: 0 is not a port".into()));
    }
    Ok(trust)
}

/// A tunnel a dialing hub opened and authenticated, waiting for the run loop.
enum Arrival {
    // Boxed: a TLS stream is over a kilobyte, and arrivals wait in a queue.
    Tls(Box<ServerTls>, handshake::SessionParams, SocketAddr),
    Quic(
        quinn::Connection,
        quic::Duplex,
        handshake::SessionParams,
        SocketAddr,
    ),
}

/// Authenticated tunnels waiting for the run loop: one is taken at once; a second only waits
/// while the run loop swaps tunnels. More would mean many hubs with the secret dialing at once.
const ARRIVALS_QUEUE: usize = 4;

/// `listenForHub`: the TLS and QUIC listener a dialing hub reaches. It faces the internet like a
/// hub's tunnel port and has the same pre-authentication bounds ([`listen`]); a caller must
/// prove the shared secret before this edge shows anything derived from it.
struct HubListener {
    gate: Gate,
    edge_id: String,
    secret: String,
    connection_window: u32,
    shutdown: watch::Sender<bool>,
    arrivals: mpsc::Sender<Arrival>,
    port: u16,
    bind_host: String,
    fingerprint: String,
    endpoint: quinn::Endpoint,
}

impl HubListener {
    fn start(
        opts: &EdgeOptions,
        l: &ListenForHub,
        events: &EventSink,
    ) -> Result<(Arc<HubListener>, mpsc::Receiver<Arrival>)> {
        let identity = Identity::from_pem(&l.cert_pem, &l.key_pem)?;
        let tls = Arc::new(identity.server_config()?);
        let (tcp, udp) = listen::bind_tunnel_port(&l.bind_host, l.port, &opts.performance)?;
        let port = tcp.local_addr()?.port();
        let endpoint = listen::quic_endpoint(&identity, tls.clone(), &opts.performance, &opts.limits, udp)?;
        let (tx, rx) = mpsc::channel(ARRIVALS_QUEUE);
        let (shutdown, _) = watch::channel(false);
        let listener = Arc::new(HubListener {
            gate: Gate::new(events.clone(), &opts.limits, "edge"),
            edge_id: opts.edge_id.clone(),
            secret: opts.secret.clone(),
            connection_window: opts.performance.connection_window,
            shutdown,
            arrivals: tx,
            port,
            bind_host: l.bind_host.clone(),
            fingerprint: identity.fingerprint.clone(),
            endpoint: endpoint.clone(),
        });
        let tcp = Arc::new(tcp);
        tokio::spawn(supervise(events.clone(), "edge listener for the hub".into(), {
            let listener = listener.clone();
            move || listen::tls_accept_loop(listener.clone(), tcp.clone(), tls.clone())
        }));
        tokio::spawn(supervise(
            events.clone(),
            "edge QUIC listener for the hub".into(),
            {
                let listener = listener.clone();
                move || listen::quic_accept_loop(listener.clone(), endpoint.clone())
            },
        ));
        log(
            events,
            "info",
            format!(
                "edge listening for its hub on {}:{port} (TLS and QUIC), fingerprint {}",
                l.bind_host, identity.fingerprint
            ),
        );
        Ok((listener, rx))
    }

    fn close(&self) {
        let _ = self.shutdown.send(true);
        self.endpoint.close(quinn::VarInt::from_u32(0), b"edge stopped");
    }
}

impl listen::Authenticator for HubListener {
    type Peer = handshake::SessionParams;

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The hub proves the secret first; a caller that cannot is refused (the listener counts
    /// and reports it, as the hub does for edges).
    async fn authenticate<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send>(
        self: &Arc<Self>,
        io: &mut S,
        binding: &[u8; 32],
        _peer: SocketAddr,
    ) -> Result<Option<handshake::SessionParams>> {
        handshake::edge(io, binding, &self.edge_id, &self.secret, true)
            .await
            .map(Some)
    }

    async fn serve_tls(self: Arc<Self>, tls: ServerTls, params: handshake::SessionParams, peer: SocketAddr) {
        let _ = self
            .arrivals
            .send(Arrival::Tls(Box::new(tls), params, peer))
            .await;
    }

    async fn serve_quic(
        self: Arc<Self>,
        conn: quinn::Connection,
        control: quic::Duplex,
        params: handshake::SessionParams,
        peer: SocketAddr,
    ) {
        // Authenticated: the hub may fill the configured window (it opens no streams here).
        conn.set_receive_window(quinn::VarInt::from_u32(self.connection_window));
        let _ = self
            .arrivals
            .send(Arrival::Quic(conn, control, params, peer))
            .await;
    }
}

impl Edge {
    /// Validates the options and starts the connect loop. Must run inside the runtime.
    pub fn start(opts: EdgeOptions, events: EventSink) -> Result<Edge> {
        let trust = if opts.listen_for_hub.is_some() {
            None
        } else {
            Some(dial_trust(&opts)?)
        };
        if opts.edge_id.is_empty() || opts.edge_id.len() > 255 {
            return Err(Error::InvalidConfig(format!(
                "edgeId: {:?} must be 1-255 bytes",
                opts.edge_id
            )));
        }
        if opts.secret.is_empty() {
            return Err(Error::InvalidConfig("secret: empty".into()));
        }
        crate::config::validate_mode(&opts.transport_mode)?;
        opts.reconnect.validate()?;
        opts.performance.validate()?;
        opts.performance.check_socket_buffer()?;
        if opts.quic_connect_timeout_ms == 0 || opts.quic_probe_interval_ms == 0 {
            return Err(Error::InvalidConfig(format!(
                "quicConnectTimeoutMs {} and quicProbeIntervalMs {} must be positive",
                opts.quic_connect_timeout_ms, opts.quic_probe_interval_ms
            )));
        }
        if matches!(trust, Some(Trust::DangerouslyAnyCertificate)) {
            log(
                &events,
                "warn",
                "hub fingerprint pinning is DISABLED: anyone on the path can impersonate the hub",
            );
        }
        let (stop, _) = watch::channel(false);
        let udp = EdgeUdp::new(events.clone());
        let opts_edge_id = opts.edge_id.clone();
        let (hub_listener, arrivals) = match &opts.listen_for_hub {
            Some(l) => {
                let (listener, rx) = HubListener::start(&opts, l, &events)?;
                (Some(listener), Some(rx))
            }
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            opts,
            trust,
            hub_listener,
            arrivals: tokio::sync::Mutex::new(arrivals),
            events,
            status: Mutex::new(Status {
                state: "connecting",
                connected_since: None,
                attempts: 0,
                last_error: None,
                config: None,
                failed: Vec::new(),
                transport_reason: None,
                quic_probe: None,
                hub_peer: None,
                tunnels: 0,
            }),
            stop,
            stopped: AtomicBool::new(false),
            task: Mutex::new(None),
            current: Arc::new(RwLock::new(None)),
            listeners: Mutex::new(BTreeMap::new()),
            services: Arc::new(RwLock::new(BTreeMap::new())),
            udp,
            firewall: Arc::new(Mutex::new(Firewall {
                table: firewall::table_name(&opts_edge_id),
                legacy_table: firewall::legacy_table_name(&opts_edge_id),
                nft: None,
                unavailable: None,
                applied: None,
                last_error: None,
            })),
            stun: super::stun::Stun::default(),
        });
        let task = {
            let inner = inner.clone();
            tokio::spawn(supervise(inner.events.clone(), "edge tunnel".into(), move || {
                run(inner.clone())
            }))
        };
        *lock(&inner.task) = Some(task);
        Ok(Edge { inner })
    }

    pub fn status(&self) -> Value {
        let st = lock(&self.inner.status);
        let tunnel = current(&self.inner.current);
        let (open, total, bin, bout, rtt, dropped) = match &tunnel {
            Some(t) => {
                let s = t.stats();
                (
                    s.open_streams.load(Ordering::Relaxed),
                    s.streams_total.load(Ordering::Relaxed),
                    s.bytes_in.load(Ordering::Relaxed),
                    s.bytes_out.load(Ordering::Relaxed),
                    t.rtt_ms(),
                    s.datagrams_dropped.load(Ordering::Relaxed),
                )
            }
            None => (0, 0, 0, 0, 0.0, 0),
        };
        let tcp: Vec<u16> = lock(&self.inner.listeners).keys().copied().collect();
        let services: Vec<Value> = self
            .inner
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.status("tcp"))
            .chain(self.inner.udp.services_status())
            .collect();
        let u = &self.inner.udp.stats;
        let (hub_address, listen_for_hub, mode) = match &self.inner.hub_listener {
            None => (
                json!(format!(
                    "{}:{}",
                    self.inner.opts.hub_host, self.inner.opts.hub_port
                )),
                Value::Null,
                json!(self.inner.opts.transport_mode),
            ),
            Some(l) => {
                let (tls, quic) = l.gate.pending();
                (
                    // The hub's current tunnel, if any; the hub chooses the transport mode.
                    json!(st.hub_peer.as_ref().filter(|_| tunnel.is_some())),
                    json!({
                        "bindHost": l.bind_host, "port": l.port, "fingerprint": l.fingerprint,
                        "pendingHandshakes": { "tls": tls, "quic": quic },
                        "handshakes": l.gate.outcomes(),
                    }),
                    Value::Null,
                )
            }
        };
        json!({
            "state": st.state,
            "hubAddress": hub_address,
            "listenForHub": listen_for_hub,
            "transport": tunnel.as_ref().map(|t| t.transport()),
            "transportMode": mode,
            "transportReason": st.transport_reason,
            "quicProbe": st.quic_probe,
            "connectedSince": st.connected_since.map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)),
            "attempts": st.attempts,
            "services": services,
            "lastError": st.last_error,
            "rttMs": rtt,
            "quicPathMtu": tunnel.as_ref().and_then(|t| t.quic_path_mtu()),
            "ports": { "tcp": tcp, "udp": self.inner.udp.ports() },
            "failedPorts": st.failed,
            "config": st.config,
            "openStreams": open,
            "streamsTotal": total,
            "tunnels": st.tunnels,
            "bytesIn": bin,
            "bytesOut": bout,
            "firewall": lock(&self.inner.firewall).status(),
            "stun": self.inner.stun.status(),
            "publicAddress": self.inner.stun.public_address().map(|a| a.to_string()),
            "udp": {
                "flows": u.flows.load(Ordering::Relaxed),
                "datagramsIn": u.datagrams_in.load(Ordering::Relaxed),
                "datagramsOut": u.datagrams_out.load(Ordering::Relaxed),
                "dropped": u.dropped.load(Ordering::Relaxed) + dropped,
                "flowsRefused": u.flows_refused.load(Ordering::Relaxed),
            },
        })
    }

    /// Stops accepting clients, asks the hub to drain, waits up to `grace` for open streams,
    /// then closes everything. Idempotent.
    pub async fn stop(&self, grace: Duration) {
        if !self.inner.stopped.swap(true, Ordering::AcqRel) {
            if let Some(l) = &self.inner.hub_listener {
                // No new calls from the hub; the tunnel in use drains below.
                l.close();
            }
            close_listeners(&self.inner);
            self.inner.udp.close_all();
            self.inner.stun.stop();
            if let Some(t) = current(&self.inner.current) {
                t.go_away(goaway::DRAIN, "edge shutting down");
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && !t.is_closed() && t.open_streams() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            // The run loop closes the tunnel in order (or abandons a dial in progress).
            let _ = self.inner.stop.send(true);
        }
        let task = lock(&self.inner.task).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        if !self.inner.opts.keep_firewall_on_stop {
            let fw = self.inner.firewall.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut fw = lock(&fw);
                if fw.applied.take().is_some() {
                    let table = fw.table.clone();
                    if let Ok(nft) = fw.nft() {
                        let _ = nft.run(&format!("delete table inet {table}"), false);
                    }
                }
            })
            .await;
        }
        lock(&self.inner.status).state = "stopped";
    }
}

fn close_listeners(inner: &Inner) {
    let mut l = lock(&inner.listeners);
    for (_, t) in std::mem::take(&mut *l) {
        t.abort();
    }
}

async fn run(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    // Held for this incarnation of the loop (a restart after a panic takes it again).
    let mut arrivals_guard = inner.arrivals.lock().await;
    let mut arrivals = arrivals_guard.as_mut();
    let listening = arrivals.is_some();
    // After a crash restart, nothing of the previous incarnation may linger.
    close_listeners(&inner);
    inner.udp.close_all();
    set_current(&inner, None);
    let mut attempt: u32 = 0;
    loop {
        if inner.stopped.load(Ordering::Acquire) {
            break;
        }
        {
            let mut st = lock(&inner.status);
            st.state = if listening { "listening" } else { "connecting" };
            st.attempts += 1;
        }
        let began = Instant::now();
        let outcome = session(&inner, &mut stop, arrivals.as_deref_mut()).await;
        close_listeners(&inner);
        inner.udp.close_all();
        set_current(&inner, None);
        let (err, was_up, replaced) = match outcome {
            Ok(Ended { why, replaced }) => (why, true, replaced),
            Err(e) => (e, false, false),
        };
        {
            let mut st = lock(&inner.status);
            st.connected_since = None;
            st.state = "backoff";
            st.last_error = Some(json!({ "code": err.code(), "message": err.to_string() }));
        }
        if was_up || !inner.stopped.load(Ordering::Acquire) {
            inner.events.as_ref()(event!("tunnelDisconnected", {
                "code": err.code(), "reason": err.to_string(), "wasConnected": was_up
            }));
        }
        if inner.stopped.load(Ordering::Acquire) {
            break;
        }
        if was_up && began.elapsed() >= dial::HEALTHY_SESSION {
            attempt = 0;
        }
        // A drained tunnel (hub restarting or rebalancing) is redialled at once; an edge that
        // listens just waits for the hub's next call. A tunnel the hub gave to another process
        // with this edge's id is taken back only after the backoff's cap.
        let delay = if listening {
            Duration::ZERO
        } else if replaced {
            Duration::from_millis(inner.opts.reconnect.cap_ms)
        } else if matches!(err, Error::GoAway(_)) {
            Duration::from_millis(inner.opts.reconnect.base_ms / 4)
        } else {
            dial::backoff(inner.opts.reconnect.base_ms, inner.opts.reconnect.cap_ms, attempt)
        };
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    close_listeners(&inner);
    inner.udp.close_all();
}

type TunnelFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Error> + Send>>;

/// Dials per the transport mode. Returns the tunnel, its driver, and why this transport.
async fn connect(
    inner: &Arc<Inner>,
    to: &SessionChannels,
    arrivals: Option<&mut mpsc::Receiver<Arrival>>,
) -> Result<(Tunnel, TunnelFuture, String)> {
    if let Some(rx) = arrivals {
        let a = rx
            .recv()
            .await
            .ok_or_else(|| Error::LocalClosed("the listener for the hub stopped".into()))?;
        return Ok(arrived(inner, to, a));
    }
    match inner.opts.transport_mode.as_str() {
        "tcpTls" => dial_tls(inner, to)
            .await
            .map(|(t, f)| (t, f, "transportMode tcpTls".into())),
        "quic" => dial_quic(inner, to)
            .await
            .map(|(t, f)| (t, f, "transportMode quic".into())),
        _ => {
            let limit = Duration::from_millis(inner.opts.quic_connect_timeout_ms);
            let quic_err = match tokio::time::timeout(limit, dial_quic(inner, to)).await {
                Ok(Ok((t, f))) => return Ok((t, f, "QUIC connected".into())),
                Ok(Err(e)) => e,
                Err(_) => Error::Timeout(format!("QUIC did not come up within {} ms", limit.as_millis())),
            };
            // Authentication problems are not transport problems: TLS would fail the same way.
            if matches!(quic_err, Error::AuthFailed(_) | Error::FingerprintMismatch { .. }) {
                return Err(quic_err);
            }
            note_probe(inner, &quic_err);
            let (t, f) = dial_tls(inner, to).await?;
            Ok((t, f, format!("falling back to TLS: {quic_err}")))
        }
    }
}

/// Starts the edge's side of a tunnel the hub dialed.
fn arrived(inner: &Arc<Inner>, to: &SessionChannels, a: Arrival) -> (Tunnel, TunnelFuture, String) {
    let peer = match &a {
        Arrival::Tls(_, _, p) | Arrival::Quic(_, _, _, p) => *p,
    };
    lock(&inner.status).hub_peer = Some(peer.to_string());
    match a {
        Arrival::Tls(tls, params, peer) => {
            let (t, f) = start_tls(inner, to, *tls, params);
            (t, f, format!("the hub dialed in from {peer} over TLS"))
        }
        Arrival::Quic(conn, control, _params, peer) => {
            let (h, slot) = handler(inner, to);
            let (q, f) = quic::start(conn, None, control, h, false);
            let tunnel = Tunnel::Quic(q);
            let _ = slot.set(tunnel.clone());
            (
                tunnel,
                Box::pin(f),
                format!("the hub dialed in from {peer} over QUIC"),
            )
        }
    }
}

/// The next tunnel a dialing hub opened, or never (an edge that dials).
async fn next_arrival(arrivals: &mut Option<&mut mpsc::Receiver<Arrival>>) -> Option<Arrival> {
    match arrivals {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// New streams go to `new` from now on; the old tunnel drains its open streams and closes
/// (GOAWAY), driven by its own task.
fn replace_tunnel(
    inner: &Arc<Inner>,
    tunnel: &mut Tunnel,
    fut: &mut TunnelFuture,
    new: (Tunnel, TunnelFuture),
    goaway: &str,
    why: &str,
) {
    let old = std::mem::replace(tunnel, new.0);
    let old_fut = std::mem::replace(fut, new.1);
    set_current(inner, Some(tunnel.clone()));
    old.go_away(goaway::DRAIN, goaway);
    tokio::spawn(old_fut);
    lock(&inner.status).transport_reason = Some(why.into());
    inner.events.as_ref()(event!("transportChanged", {
        "from": old.transport(), "to": tunnel.transport(), "reason": why
    }));
}

fn note_probe(inner: &Inner, e: &Error) {
    lock(&inner.status).quic_probe = Some(json!({
        "at": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "code": e.code(), "message": e.to_string()
    }));
}

/// How a connected period ended: why its last tunnel ended, and whether the hub gave that
/// tunnel to another process with this edge's id (GOAWAY `REPLACED`), in which case this edge
/// steps back for a while instead of taking it back at once.
struct Ended {
    why: Error,
    replaced: bool,
}

/// A replacement tunnel being dialed (the current one got GOAWAY).
type Redial<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Tunnel, TunnelFuture, String)>> + Send + 'a>>;

/// One connected period: the first tunnel, possibly replaced by QUIC after a successful probe,
/// or by a new tunnel when the hub drains the current one (GOAWAY: the hub is restarting or
/// stopping). `Err` = it never came up; `Ok` = it came up and ended.
async fn session(
    inner: &Arc<Inner>,
    stop: &mut watch::Receiver<bool>,
    mut arrivals: Option<&mut mpsc::Receiver<Arrival>>,
) -> std::result::Result<Ended, Error> {
    let (cfg_tx, mut cfg_rx) = mpsc::unbounded_channel();
    let (goaway_tx, mut goaway_rx) = mpsc::unbounded_channel();
    let to = SessionChannels {
        configs: cfg_tx,
        goaways: goaway_tx,
    };
    let (mut tunnel, mut fut, reason) = tokio::select! {
        r = connect(inner, &to, arrivals.as_deref_mut()) => r?,
        _ = stop.changed() => return Err(Error::LocalClosed("edge stopped".into())),
    };
    set_current(inner, Some(tunnel.clone()));
    {
        let mut st = lock(&inner.status);
        st.state = "connected";
        st.tunnels += 1;
        st.connected_since = Some(SystemTime::now());
        st.last_error = None;
        st.transport_reason = Some(reason.clone());
    }
    let hub = match &inner.trust {
        Some(_) => format!("{}:{}", inner.opts.hub_host, inner.opts.hub_port),
        None => lock(&inner.status).hub_peer.clone().unwrap_or_default(),
    };
    inner.events.as_ref()(event!("tunnelConnected", {
        "hubAddress": hub, "transport": tunnel.transport(), "reason": reason
    }));
    tell_public_address(inner);
    let probe_every = Duration::from_millis(inner.opts.quic_probe_interval_ms);
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + probe_every, probe_every);
    // A new tunnel being dialed because the current one drains, and how many tries it took.
    let mut redial: Option<Redial<'_>> = None;
    let mut redials: u32 = 0;
    let mut replaced = false;
    loop {
        let probing = inner.trust.is_some()
            && inner.opts.transport_mode == "quicWithFallback"
            && matches!(tunnel, Tunnel::Tls(_))
            && redial.is_none();
        tokio::select! {
            why = &mut fut => {
                // A tunnel with no stream open drains the moment its GOAWAY arrives, so the
                // GOAWAY may still wait in the channel: whether it said "replaced" decides how
                // soon to dial again.
                while let Ok(g) = goaway_rx.try_recv() {
                    if g.tunnel.same(&tunnel) && g.code == goaway::REPLACED && !replaced && inner.trust.is_some() {
                        replaced = true;
                        step_back(inner, &g);
                    }
                }
                return Ok(Ended { why, replaced });
            }
            Some(cfg) = cfg_rx.recv() => apply_config(inner, cfg).await,
            Some(g) = goaway_rx.recv() => {
                if !g.tunnel.same(&tunnel) || redial.is_some() {
                    continue; // an older tunnel's, or already being replaced
                }
                // (An edge that listens has nothing to step back from: its hub dials.)
                if g.code == goaway::REPLACED && inner.trust.is_some() {
                    replaced = true;
                    step_back(inner, &g);
                } else if g.code != goaway::REPLACED && inner.trust.is_some() {
                    // The hub drains (restart, shutdown) or this tunnel's stream ids ran out:
                    // dial a new tunnel now and move new clients to it while this one finishes
                    // its streams. (An edge that listens waits for the hub to dial again.)
                    redial = Some(Box::pin(connect(inner, &to, None)));
                }
            }
            r = async { redial.as_mut().expect("polled only while set").await }, if redial.is_some() => {
                redial = None;
                match r {
                    Ok((t, f, why)) => {
                        redials = 0;
                        let why = format!("the hub drained the previous tunnel; {why}");
                        replace_tunnel(inner, &mut tunnel, &mut fut, (t, f), "edge moved to a new tunnel", &why);
                    }
                    Err(e) => {
                        // Keep serving the draining tunnel's streams and try again; the session
                        // ends (and run() redials) if the tunnel ends first.
                        let delay = dial::backoff(inner.opts.reconnect.base_ms, inner.opts.reconnect.cap_ms, redials);
                        redials = redials.saturating_add(1);
                        lock(&inner.status).last_error = Some(json!({ "code": e.code(), "message": e.to_string() }));
                        let to = &to;
                        redial = Some(Box::pin(async move {
                            tokio::time::sleep(delay).await;
                            connect(inner, to, None).await
                        }));
                    }
                }
            }
            Some(a) = next_arrival(&mut arrivals) => {
                // The hub dialed again (moved to QUIC, or redialed over a tunnel it gave up).
                let (t, f, why) = arrived(inner, &to, a);
                replace_tunnel(inner, &mut tunnel, &mut fut, (t, f), "the hub dialed a newer tunnel", &why);
            }
            _ = probe.tick(), if probing => {
                let limit = Duration::from_millis(inner.opts.quic_connect_timeout_ms);
                match tokio::time::timeout(limit, dial_quic(inner, &to)).await {
                    Ok(Ok(quic)) => {
                        let why = "QUIC probe succeeded; new streams use QUIC, open TLS streams finish";
                        replace_tunnel(inner, &mut tunnel, &mut fut, quic, "edge moved to QUIC", why);
                    }
                    Ok(Err(e)) => note_probe(inner, &e),
                    Err(_) => note_probe(inner, &Error::Timeout(format!("QUIC probe did not complete within {} ms", limit.as_millis()))),
                }
            }
            _ = stop.changed() => {
                // stop() already drained; close in order (GOAWAY, close_notify) and return.
                tunnel.close("edge stopped");
                return Ok(Ended { why: fut.await, replaced });
            }
        }
    }
}

/// The hub took a newer tunnel with this edge's id that is not ours: another process uses the
/// id. This tunnel takes no new clients and drains, and the edge steps back (run() waits the
/// backoff's cap) rather than take the tunnel back at once, which the other process would then
/// do in turn, without end.
fn step_back(inner: &Inner, g: &GoAway) {
    inner.events.as_ref()(event!("tunnelReplaced", {
        "reason": g.reason,
        "hint": "another edge process with this edge id connected to the hub; this one stops taking new clients and reconnects later",
        "retryInMs": inner.opts.reconnect.cap_ms
    }));
}

/// The hub's pin, for an edge that dials (never called on one that listens).
fn dialing(inner: &Inner) -> Result<Trust> {
    inner
        .trust
        .clone()
        .ok_or_else(|| Error::State("this edge listens for its hub and does not dial it".into()))
}

/// TCP connect, TLS with the pinned fingerprint, authentication, and the muxer.
async fn dial_tls(inner: &Arc<Inner>, to: &SessionChannels) -> Result<(Tunnel, TunnelFuture)> {
    let hs = async {
        let (mut tls, binding) = dial::tls(
            &inner.opts.hub_host,
            inner.opts.hub_port,
            dialing(inner)?,
            "the hub",
            &inner.opts.performance,
        )
        .await?;
        let params =
            handshake::edge(&mut tls, &binding, &inner.opts.edge_id, &inner.opts.secret, false).await?;
        Ok::<_, Error>((tls, params))
    };
    let timeout = Duration::from_millis(inner.opts.limits.handshake_timeout_ms);
    let (tls, params) = tokio::time::timeout(timeout, hs)
        .await
        .map_err(|_| Error::Timeout("hub did not finish the handshake in time".into()))??;
    Ok(start_tls(inner, to, tls, params))
}

/// The edge's muxer on an authenticated TLS stream, whichever side opened it.
fn start_tls<IO>(
    inner: &Arc<Inner>,
    to: &SessionChannels,
    io: IO,
    params: handshake::SessionParams,
) -> (Tunnel, TunnelFuture)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = MuxConfig {
        side: Side::Edge,
        max_frame: params.max_frame as usize,
        stream_window: params.stream_window,
        connection_window: params.connection_window,
        max_streams: params.max_streams,
        heartbeat_interval: Duration::from_millis(u64::from(params.heartbeat_ms)),
        // Three missed heartbeats: one lost PING is not a dead peer.
        heartbeat_timeout: Duration::from_millis(u64::from(params.heartbeat_ms) * 3),
    };
    let (h, slot) = handler(inner, to);
    let (mux, fut) = mux::start(io, cfg, h);
    let tunnel = Tunnel::Tls(mux);
    let _ = slot.set(tunnel.clone());
    (tunnel, Box::pin(fut))
}

/// The handler of one tunnel, and the slot its tunnel goes into once started (a GOAWAY names
/// the tunnel it came on).
fn handler(inner: &Arc<Inner>, to: &SessionChannels) -> (EdgeHandler, Arc<OnceLock<Tunnel>>) {
    let slot = Arc::new(OnceLock::new());
    let h = EdgeHandler {
        events: inner.events.clone(),
        configs: to.configs.clone(),
        goaways: to.goaways.clone(),
        tunnel: slot.clone(),
        udp: inner.udp.clone(),
        services: inner.services.clone(),
    };
    (h, slot)
}

/// What a tunnel's handler tells the session loop: CONFIGs to apply, and GOAWAYs (from the
/// peer, or the tunnel's own when its stream ids run out).
#[derive(Clone)]
struct SessionChannels {
    configs: mpsc::UnboundedSender<Value>,
    goaways: mpsc::UnboundedSender<GoAway>,
}

/// A GOAWAY on one of the session's tunnels.
struct GoAway {
    tunnel: Tunnel,
    code: u16,
    reason: String,
}

/// QUIC connect (same pinning), control stream, authentication.
async fn dial_quic(inner: &Arc<Inner>, to: &SessionChannels) -> Result<(Tunnel, TunnelFuture)> {
    let transport = quic::transport_config(
        &inner.opts.performance,
        Duration::from_millis(inner.opts.limits.heartbeat_interval_ms),
        // The edge accepts no hub-opened streams (see quic::HUB_MAX_QUIC_STREAMS).
        0,
    );
    let hs = async {
        let mut d = dial::quic(
            &inner.opts.hub_host,
            inner.opts.hub_port,
            dialing(inner)?,
            transport,
            quic::dial_endpoint_config(&inner.opts.performance),
            "the hub",
            &inner.opts.performance,
        )
        .await?;
        handshake::edge(
            &mut d.control,
            &d.binding,
            &inner.opts.edge_id,
            &inner.opts.secret,
            false,
        )
        .await?;
        Ok::<_, Error>(d)
    };
    let timeout = Duration::from_millis(inner.opts.limits.handshake_timeout_ms);
    let d = tokio::time::timeout(timeout, hs)
        .await
        .map_err(|_| Error::Timeout("hub did not finish the QUIC handshake in time".into()))??;
    let (h, slot) = handler(inner, to);
    let (q, fut) = quic::start(d.conn, Some(d.endpoint), d.control, h, false);
    let tunnel = Tunnel::Quic(q);
    let _ = slot.set(tunnel.clone());
    Ok((tunnel, Box::pin(fut)))
}

/// The edge's own settings (consumer.xml) for the TCP services the hub names: its port, bind
/// address and limits win. Its services the hub does not name have no target and are not
/// served; that is logged, once per CONFIG.
fn with_local_settings(inner: &Inner, mut records: Vec<Value>) -> Vec<Value> {
    let local = &inner.opts.local_services;
    if local.is_empty() {
        return records;
    }
    for r in records.iter_mut().filter(|r| r["protocol"] == "tcp") {
        let Some(l) = local.iter().find(|l| r["id"] == l.id.as_str()) else {
            continue;
        };
        r["port"] = json!(l.edge_port);
        r["bindAddress"] = json!(l.bind_address);
        if let Some(n) = l.max_connections {
            r["maxConnections"] = json!(n);
        }
        if let Some(t) = l.idle_timeout_secs {
            r["idleTimeoutSecs"] = json!(t);
        }
        if let Some(b) = l.buffer_bytes {
            r["bufferBytes"] = json!(b);
        }
        if r["name"].is_null() {
            r["name"] = json!(l.name);
        }
    }
    let unnamed: Vec<&str> = local
        .iter()
        .filter(|l| {
            !records
                .iter()
                .any(|r| r["protocol"] == "tcp" && r["id"] == l.id.as_str())
        })
        .map(|l| l.id.as_str())
        .collect();
    if !unnamed.is_empty() {
        log(
            &inner.events,
            "warn",
            format!(
                "services of this edge's own configuration that the hub does not name for it (no target, not served): {}",
                unnamed.join(", ")
            ),
        );
    }
    records
}

/// Applies a CONFIG: binds new ports, closes removed ones, leaves unchanged ones (and their
/// streams and flows) alone. A port that cannot be bound is reported; the others still work.
async fn apply_config(inner: &Arc<Inner>, cfg: Value) {
    let list = |key: &str| -> Vec<u16> {
        cfg[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .filter_map(|p| u16::try_from(p).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let bind_ip: Option<IpAddr> = cfg["bindAddress"].as_str().and_then(|s| s.parse().ok());
    let quic_credit = cfg["features"].as_array().is_some_and(|f| {
        f.iter()
            .any(|f| f == crate::engine::hub::FEATURE_QUIC_STREAM_CREDIT)
    });
    // The services, by protocol and port. A hub from before named services sends only port
    // lists: each port is then a service of its own, number 0 = "route by port".
    let records: Vec<Value> = match cfg["services"].as_array() {
        Some(list) => list.clone(),
        None => [("tcp", list("tcp")), ("udp", list("udp"))]
            .into_iter()
            .flat_map(|(protocol, ports)| {
                ports.into_iter().map(move |port| {
                    json!({ "sid": 0, "id": format!("{protocol}/{port}"), "protocol": protocol, "port": port })
                })
            })
            .collect(),
    };
    let records = with_local_settings(inner, records);
    let mut tcp_services: BTreeMap<u16, Service> = BTreeMap::new();
    let mut udp_services: BTreeMap<u16, Arc<Service>> = BTreeMap::new();
    let mut clashes = Vec::new();
    for v in &records {
        let Some(mut s) = Service::from_config(v, bind_ip) else {
            continue;
        };
        s.quic_credit = quic_credit;
        if v["protocol"] == "udp" {
            udp_services.insert(s.port, Arc::new(s));
        } else if let Some(first) = tcp_services.get(&s.port) {
            // Only the edge's own settings can move a service onto another's port.
            clashes.push((s.port, format!("services {:?} and {:?} both want this port (the edge's own configuration moved one onto it); {:?} is not served", first.id, s.id, s.id)));
        } else {
            tcp_services.insert(s.port, s);
        }
    }
    let wanted: std::collections::BTreeSet<u16> = tcp_services.keys().copied().collect();
    let mut failed = Vec::new();
    // Ports whose listener was just aborted to bind at a new address.
    let mut rebind = std::collections::BTreeSet::new();
    {
        // A listener goes when its port is no longer served, or is bound anew when its bind
        // address changed. Other changes (limits, trusted hops, name) take effect for new
        // clients at once through the shared service map, and the service's counters carry on.
        let mut services = inner.services.write().unwrap_or_else(|p| p.into_inner());
        let mut l = lock(&inner.listeners);
        // Listeners and services both: after a reconnect the listeners are closed but the
        // services (and their counters) are still known.
        let gone: Vec<u16> = l
            .keys()
            .chain(services.keys())
            .filter(|p| !tcp_services.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            if let Some(t) = l.remove(&p) {
                t.abort();
            }
            services.remove(&p);
        }
        for (port, mut s) in tcp_services {
            match services.get(&port) {
                Some(old) if old.same_as(&s) => {}
                Some(old) => {
                    if old.id == s.id {
                        s.share_counters(old);
                    }
                    if old.bind != s.bind {
                        if let Some(t) = l.remove(&port) {
                            t.abort();
                            rebind.insert(port);
                        }
                    }
                    services.insert(port, Arc::new(s));
                }
                None => {
                    services.insert(port, Arc::new(s));
                }
            }
        }
    }
    let mut report = |port: u16, protocol: &str, e: &Error| {
        inner.events.as_ref()(event!("portBindFailed", {
            "port": port, "protocol": protocol, "code": e.code(), "reason": e.to_string()
        }));
        failed.push(json!({ "port": port, "protocol": protocol, "code": e.code(), "reason": e.to_string() }));
    };
    for (port, why) in clashes {
        report(port, "tcp", &Error::InvalidConfig(why));
    }
    for port in &wanted {
        if lock(&inner.listeners).contains_key(port) {
            continue;
        }
        let service_bind = inner
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(port)
            .and_then(|s| s.bind);
        let mut bound = bind(service_bind, *port);
        if rebind.contains(port) {
            // The aborted listener's socket closes when its task is dropped, a moment after the
            // abort: retry briefly instead of failing the port.
            for _ in 0..REBIND_ATTEMPTS {
                if bound.is_ok() {
                    break;
                }
                tokio::time::sleep(REBIND_PAUSE).await;
                bound = bind(service_bind, *port);
            }
        }
        match bound {
            Ok(listener) => {
                let listener = Arc::new(listener);
                let (port, cur, events) = (*port, inner.current.clone(), inner.events.clone());
                let services = inner.services.clone();
                let task = tokio::spawn(supervise(
                    inner.events.clone(),
                    format!("edge listener on port {port}"),
                    move || {
                        accept_clients(
                            listener.clone(),
                            port,
                            cur.clone(),
                            services.clone(),
                            events.clone(),
                        )
                    },
                ));
                lock(&inner.listeners).insert(port, task);
            }
            Err(e) => report(*port, "tcp", &e),
        }
    }
    // What a hub from before a cap was sent leaves out keeps the default.
    let d = crate::engine::udp::FlowCaps::default();
    let count = |key: &str, default: usize| cfg[key].as_u64().map_or(default, |n| n.max(1) as usize);
    let ms = |key: &str, default: Duration| {
        cfg[key]
            .as_u64()
            .map_or(default, |n| Duration::from_millis(n.max(1)))
    };
    let caps = crate::engine::udp::FlowCaps {
        per_edge: count("maxUdpFlows", d.per_edge),
        per_service: count("maxUdpFlowsPerService", d.per_service),
        per_source: count("maxUdpFlowsPerSource", d.per_source),
        unanswered_idle: ms("udpUnansweredIdleMs", d.unanswered_idle),
        idle: ms("udpIdleMs", d.idle),
    };
    for (port, e) in inner.udp.apply(bind_ip, udp_services, caps).await {
        report(port, "udp", &e);
    }
    let bound: Vec<u16> = lock(&inner.listeners).keys().copied().collect();
    let bound_udp = inner.udp.ports();
    {
        let mut st = lock(&inner.status);
        st.config = Some(cfg.clone());
        st.failed = failed.clone();
    }
    inner.events.as_ref()(event!("portsAssigned", {
        "tcp": bound, "udp": bound_udp, "failed": failed, "generation": cfg["generation"],
        // The reference API's names for the same lists.
        "listenPorts": bound, "listenPortsUdp": bound_udp
    }));
    apply_firewall(inner, &cfg).await;
    apply_stun(inner, &cfg);
    let ack = ConfigAck {
        generation: cfg["generation"].as_u64().unwrap_or(0),
        tcp: bound,
        udp: bound_udp,
        failed: failed
            .iter()
            .map(|f| PortFailure {
                port: f["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
                protocol: f["protocol"].as_str().unwrap_or_default().to_string(),
                code: f["code"].as_str().unwrap_or_default().to_string(),
                reason: f["reason"].as_str().unwrap_or_default().to_string(),
            })
            .collect(),
        truncated: false,
    };
    if let Some(t) = current(&inner.current) {
        t.control(FrameType::ConfigAck, 0, bytes::Bytes::from(ack.encode()));
    }
}

/// Starts, changes or stops the STUN task as CONFIG says; each new public address is told to
/// the hub (INFO), and again on every new tunnel.
fn apply_stun(inner: &Arc<Inner>, cfg: &Value) {
    let mut servers: Vec<String> = cfg["stunServers"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if servers.is_empty() {
        servers = super::stun::DEFAULT_SERVERS
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    let weak = Arc::downgrade(inner);
    inner.stun.apply(
        cfg["stunIntervalSecs"].as_u64(),
        servers,
        inner.events.clone(),
        Arc::new(move |_| {
            if let Some(inner) = weak.upgrade() {
                tell_public_address(&inner);
            }
        }),
    );
}

/// Sends the hub this edge's public address (INFO), if STUN found one.
fn tell_public_address(inner: &Inner) {
    if let (Some(addr), Some(t)) = (inner.stun.public_address(), current(&inner.current)) {
        let info = json!({ "publicAddress": addr.to_string() });
        t.control(FrameType::Info, 0, handshake::json_payload(&info));
    }
}

/// Applies the CONFIG's firewall snapshot (or removes ours when it has none). Invalid
/// snapshots are refused and the previous one stays in force; without libnftables or
/// permission the tunnel carries on and status says why.
async fn apply_firewall(inner: &Arc<Inner>, cfg: &Value) {
    let generation = cfg["generation"].clone();
    let snapshot = cfg["firewall"].clone();
    let validated = if snapshot.is_null() {
        None
    } else {
        match firewall::validate(&snapshot) {
            Ok(s) => Some(s),
            Err(e) => {
                lock(&inner.firewall).last_error =
                    Some(json!({ "code": e.code(), "message": e.to_string() }));
                inner.events.as_ref()(event!("firewallConfigRejected", {
                    "generation": generation, "code": e.code(),
                    "reason": format!("{e}; the previous snapshot stays in force")
                }));
                return;
            }
        }
    };
    let fw = inner.firewall.clone();
    let events = inner.events.clone();
    let hash = firewall::hash(&snapshot);
    let _ = tokio::task::spawn_blocking(move || {
        let mut fw = lock(&fw);
        let table = fw.table.clone();
        let Some(snap) = validated else {
            // No snapshot any more: remove our table if we had one.
            if fw.applied.take().is_some() {
                if let Ok(nft) = fw.nft() {
                    let _ = nft.run(&format!("delete table inet {table}"), false);
                }
                events.as_ref()(event!("firewallConfigUpdated", {
                    "generation": generation, "hash": Value::Null, "applied": true, "snapshot": Value::Null
                }));
            }
            return;
        };
        if fw.unavailable.is_some() {
            return;
        }
        let mut script = firewall::render(&snap, &table);
        if let Some(legacy) = &fw.legacy_table {
            // In the same transaction: the old table goes as the new one comes.
            script = format!("add table inet {legacy}\ndelete table inet {legacy}\n{script}");
        }
        let result = fw.nft().and_then(|nft| nft.run(&script, false));
        match result {
            Ok(_) => {
                fw.legacy_table = None;
                fw.applied = Some((generation.clone(), hash.clone()));
                fw.last_error = None;
                events.as_ref()(event!("firewallConfigUpdated", {
                    "generation": generation, "hash": hash, "applied": true, "table": table, "snapshot": snapshot
                }));
            }
            Err(e) if fw.nft.is_none() || e.contains("Operation not permitted") || e.contains("Permission denied") => {
                let reason = if fw.nft.is_none() {
                    e
                } else {
                    format!("nftables refused the edge ({e}); run it with CAP_NET_ADMIN")
                };
                fw.unavailable = Some(reason.clone());
                events.as_ref()(event!("firewallUnavailable", {
                    "reason": format!("{reason}; the tunnel keeps running without the firewall")
                }));
            }
            Err(e) => {
                fw.last_error = Some(json!({ "code": "ERR_FIREWALL", "message": e.clone() }));
                events.as_ref()(event!("firewallConfigRejected", {
                    "generation": generation, "code": "ERR_FIREWALL",
                    "reason": format!("nftables rejected the snapshot: {e}; the previous snapshot stays in force")
                }));
            }
        }
    })
    .await;
}

/// Accept queue of a public TCP port. A burst of clients (a flash crowd, a reconnect storm,
/// hundreds of concurrent connects from one load balancer) waits here while the edge accepts;
/// with std's 128 the kernel drops the handshakes beyond it and clients retry after 1, 2, 4…
/// seconds — in the bench, 256 concurrent connects left some clients stalled for over a minute.
/// The kernel caps it at `net.core.somaxconn` (4096 on current kernels).
const PUBLIC_LISTEN_BACKLOG: i32 = 4096;

/// Binds a public TCP port (see `udp::bind_candidates`) with SO_REUSEADDR, so a restarted edge
/// re-binds despite TIME_WAIT connections.
fn bind(ip: Option<IpAddr>, port: u16) -> Result<TcpListener> {
    crate::engine::udp::bind_first(ip, port, |a| {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(a),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.bind(&a.into())?;
        s.listen(PUBLIC_LISTEN_BACKLOG)?;
        s.set_nonblocking(true)?;
        TcpListener::from_std(s.into())
    })
}

async fn accept_clients(
    listener: Arc<TcpListener>,
    port: u16,
    cur: Current,
    services: Services,
    events: EventSink,
) {
    loop {
        let (sock, client) = match listener.accept().await {
            Ok(x) => {
                supervise::check(FaultPoint::EdgeListener);
                x
            }
            Err(e) => {
                log(&events, "warn", format!("accept on port {port} failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&port)
            .cloned();
        let Some(service) = service else {
            refuse(sock);
            continue;
        };
        let Some(admitted) = service.admit(&events) else {
            // At maxConnections: refused at once; the service's other clients are untouched.
            refuse(sock);
            continue;
        };
        let local = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
        let record = OpenRecord {
            kind: KIND_TCP,
            service: service.sid,
            listen_port: port,
            client,
            local,
            buffer: service.buffer,
            // Set for the QUIC path only (`open_and_carry` clears it for the TLS muxer, whose
            // own WINDOW frames enforce the cap).
            credit: service.buffer.is_some() && service.quic_credit,
        };
        if service.trusts(client.ip()) {
            // A previous hop: its PROXY header names the first client. Read in a task of its
            // own, so a slow hop never holds up the listener.
            let (cur, events) = (cur.clone(), events.clone());
            tokio::spawn(async move {
                match service::read_proxy_header(&sock).await {
                    Ok(received) => {
                        let mut record = record;
                        if let Some((first_client, first_local)) = received.addresses {
                            record.client = first_client;
                            record.local = first_local;
                        }
                        open_and_carry(&cur, &events, port, record, sock, admitted);
                    }
                    Err(why) => {
                        service.proxy_header_refused();
                        log(
                            &events,
                            "warn",
                            format!("port {port}: refused {client} (a trusted source, so a PROXY header is required): {why}"),
                        );
                        refuse(sock);
                    }
                }
            });
            continue;
        }
        open_and_carry(&cur, &events, port, record, sock, admitted);
    }
}

/// Opens the client's stream on the current tunnel and carries it under its service's limits
/// (or refuses the client when there is no usable tunnel).
fn open_and_carry(
    cur: &Current,
    events: &EventSink,
    port: u16,
    record: OpenRecord,
    sock: TcpStream,
    admitted: service::Admitted,
) {
    let watch = admitted.idle_watch(&sock);
    let c = crate::wire::proxy_protocol::unmap(record.client);
    let opened = {
        let events = events.clone();
        move |id: u64| {
            events.as_ref()(event!("streamOpened", {
                "streamId": id, "port": port,
                "clientAddress": c.ip().to_string(), "clientPort": c.port()
            }))
        }
    };
    match current(cur) {
        Some(Tunnel::Tls(mux)) => match mux.open(OpenRecord {
            credit: false,
            ..record
        }) {
            Some(ctx) => {
                opened(u64::from(ctx.id));
                service::spawn_carry(admitted, watch, ctx.run_tcp(sock));
            }
            None => refuse(sock),
        },
        Some(Tunnel::Quic(q)) if !q.is_going_away() => {
            service::spawn_carry(
                admitted,
                watch,
                async move { q.carry(record, sock, opened).await },
            );
        }
        _ => refuse(sock),
    }
}

/// No usable tunnel (draining or down): refuse with RST so the client retries elsewhere.
fn refuse(sock: TcpStream) {
    crate::mux::abortive_close(&sock);
    drop(sock);
}

struct EdgeHandler {
    events: EventSink,
    configs: mpsc::UnboundedSender<Value>,
    goaways: mpsc::UnboundedSender<GoAway>,
    /// The tunnel this handler serves, set once it started.
    tunnel: Arc<OnceLock<Tunnel>>,
    udp: Arc<EdgeUdp>,
    /// To count each closed stream's bytes to its service.
    services: Services,
}

impl Handler for EdgeHandler {
    fn on_open(&mut self, stream: RemoteStream) {
        // Hub-initiated streams (the hub dialing services behind the edge) are a later
        // protocol feature; refuse them explicitly.
        stream.io.reset(
            mux::reset::REFUSED,
            "this edge does not accept hub-initiated streams",
        );
    }

    fn on_control(&mut self, frame: Frame) -> Result<()> {
        match frame.kind {
            FrameType::Config => {
                let v: Value = serde_json::from_slice(&frame.payload)
                    .map_err(|e| Error::Protocol(format!("CONFIG is not JSON: {e}")))?;
                if !v.is_object() || !v["tcp"].is_array() {
                    return Err(Error::Protocol("CONFIG lacks a tcp port list".into()));
                }
                let _ = self.configs.send(v);
                Ok(())
            }
            FrameType::Datagram => {
                self.udp.to_client(frame.stream, frame.payload);
                Ok(())
            }
            FrameType::FlowClose => {
                self.udp.closed_by_hub(frame.stream);
                Ok(())
            }
            other => Err(Error::Protocol(format!("hub sent a {other:?} frame"))),
        }
    }

    fn on_goaway(&mut self, code: u16, reason: &str) {
        // Once per tunnel: the session loop decides what to do (redial, or step back).
        if let Some(tunnel) = self.tunnel.get() {
            let _ = self.goaways.send(GoAway {
                tunnel: tunnel.clone(),
                code,
                reason: reason.to_string(),
            });
        }
        self.tunnel = Arc::new(OnceLock::new());
    }

    fn on_closed(&mut self, c: ClosedStream) {
        if let Some(s) = self
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.listen_port)
        {
            s.count_bytes(c.bytes_in, c.bytes_out);
        }
        let (code, reason) = match &c.reset {
            None => (Value::Null, Value::Null),
            Some((code, reason)) => (json!(crate::engine::hub::reset_code(*code)), json!(reason)),
        };
        self.events.as_ref()(event!("streamClosed", {
            "streamId": c.id, "port": c.listen_port, "bytesIn": c.bytes_in,
            "bytesOut": c.bytes_out, "code": code, "reason": reason
        }));
    }
}
