//! The edge engine: dials the hub, proves its identity, binds the ports the hub assigns and
//! carries every accepted client connection as one stream. Reconnects with backoff and jitter.

use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::EXPORTER_LABEL;
use crate::config::EdgeOptions;
use crate::error::{Error, Result};
use crate::event;
use crate::events::{log, EventSink};
use crate::frame::{Frame, FrameType};
use crate::handshake;
use crate::mux::{self, ClosedStream, Handler, MuxConfig, MuxHandle, RemoteStream, Side};
use crate::open::{OpenRecord, KIND_TCP};
use crate::supervise::{self, supervise, FaultPoint};
use crate::tls::{self, Trust};

/// The TCP connect to the hub gives up after this (10 s: longer than any sane RTT plus SYN
/// retries for one lost packet, short enough that the backoff loop keeps moving).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A session that stayed up this long was healthy: the next failure starts the backoff over.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// SNI sent to the hub. The hub is authenticated by its pinned fingerprint, not by name, so the
/// name carries no meaning; a fixed one avoids leaking the hub's configured host name.
const SNI: &str = "hub.remoteingress.invalid";

#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    opts: EdgeOptions,
    trust: Trust,
    events: EventSink,
    status: Mutex<Status>,
    stop: watch::Sender<bool>,
    stopped: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
    current: Mutex<Option<MuxHandle>>,
    listeners: Mutex<BTreeMap<u16, JoinHandle<()>>>,
}

struct Status {
    state: &'static str,
    connected_since: Option<SystemTime>,
    attempts: u64,
    last_error: Option<Value>,
    config: Option<Value>,
    failed: Vec<Value>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Edge {
    /// Validates the options and starts the connect loop. Must run inside the runtime.
    pub fn start(opts: EdgeOptions, events: EventSink) -> Result<Edge> {
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
        if opts.edge_id.is_empty() || opts.edge_id.len() > 255 {
            return Err(Error::InvalidConfig(format!(
                "edgeId: {:?} must be 1-255 bytes",
                opts.edge_id
            )));
        }
        if opts.secret.is_empty() {
            return Err(Error::InvalidConfig("secret: empty".into()));
        }
        if !matches!(
            opts.transport_mode.as_str(),
            "tcpTls" | "quic" | "quicWithFallback"
        ) {
            return Err(Error::InvalidConfig(format!(
                "transportMode: {:?} is not one of tcpTls, quic, quicWithFallback",
                opts.transport_mode
            )));
        }
        if opts.reconnect.base_ms == 0 || opts.reconnect.cap_ms < opts.reconnect.base_ms {
            return Err(Error::InvalidConfig(format!(
                "reconnect: baseMs {} must be positive and capMs {} at least baseMs",
                opts.reconnect.base_ms, opts.reconnect.cap_ms
            )));
        }
        opts.performance.validate()?;
        if matches!(trust, Trust::DangerouslyAnyCertificate) {
            log(
                &events,
                "warn",
                "hub fingerprint pinning is DISABLED: anyone on the path can impersonate the hub",
            );
        }
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            opts,
            trust,
            events,
            status: Mutex::new(Status {
                state: "connecting",
                connected_since: None,
                attempts: 0,
                last_error: None,
                config: None,
                failed: Vec::new(),
            }),
            stop,
            stopped: AtomicBool::new(false),
            task: Mutex::new(None),
            current: Mutex::new(None),
            listeners: Mutex::new(BTreeMap::new()),
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
        let mux = lock(&self.inner.current).clone();
        let (open, bin, bout, rtt) = match &mux {
            Some(m) => (
                m.stats.open_streams.load(Ordering::Relaxed),
                m.stats.bytes_in.load(Ordering::Relaxed),
                m.stats.bytes_out.load(Ordering::Relaxed),
                m.stats.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
            None => (0, 0, 0, 0.0),
        };
        let tcp: Vec<u16> = lock(&self.inner.listeners).keys().copied().collect();
        json!({
            "state": st.state,
            "hubAddress": format!("{}:{}", self.inner.opts.hub_host, self.inner.opts.hub_port),
            "transport": "tcpTls",
            "transportMode": self.inner.opts.transport_mode,
            "connectedSince": st.connected_since.map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)),
            "attempts": st.attempts,
            "lastError": st.last_error,
            "rttMs": rtt,
            "ports": { "tcp": tcp, "udp": [] },
            "failedPorts": st.failed,
            "config": st.config,
            "openStreams": open,
            "bytesIn": bin,
            "bytesOut": bout,
        })
    }

    /// Stops accepting clients, asks the hub to drain, waits up to `grace` for open streams,
    /// then closes everything. Idempotent.
    pub async fn stop(&self, grace: Duration) {
        if !self.inner.stopped.swap(true, Ordering::AcqRel) {
            close_listeners(&self.inner);
            let mux = lock(&self.inner.current).clone();
            if let Some(m) = &mux {
                m.go_away(0, "edge shutting down");
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && !m.is_closed() && m.open_streams() > 0 {
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
        lock(&self.inner.status).state = "stopped";
    }
}

fn close_listeners(inner: &Inner) {
    let mut l = lock(&inner.listeners);
    for (_, t) in std::mem::take(&mut *l) {
        t.abort();
    }
}

/// Full-jitter-ish exponential backoff: a random delay in [½·d, d] where d doubles from `base`
/// up to `cap`, so a fleet of edges does not reconnect in lock-step after a hub restart.
fn backoff(base_ms: u64, cap_ms: u64, attempt: u32) -> Duration {
    let d = base_ms.saturating_mul(1u64 << attempt.min(20)).min(cap_ms);
    let ms = rand::thread_rng().gen_range(d / 2..=d);
    Duration::from_millis(ms)
}

async fn run(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    // After a crash restart, nothing of the previous incarnation may linger.
    close_listeners(&inner);
    *lock(&inner.current) = None;
    let mut attempt: u32 = 0;
    loop {
        if inner.stopped.load(Ordering::Acquire) {
            break;
        }
        {
            let mut st = lock(&inner.status);
            st.state = "connecting";
            st.attempts += 1;
        }
        let began = Instant::now();
        let outcome = session(&inner, &mut stop).await;
        close_listeners(&inner);
        *lock(&inner.current) = None;
        let (err, was_up) = match outcome {
            Ok(e) => (e, true),
            Err(e) => (e, false),
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
        if was_up && began.elapsed() >= HEALTHY_SESSION {
            attempt = 0;
        }
        // A drained tunnel (hub restarting or rebalancing) is redialled at once.
        let delay = if matches!(err, Error::GoAway(_)) {
            Duration::from_millis(inner.opts.reconnect.base_ms / 4)
        } else {
            backoff(inner.opts.reconnect.base_ms, inner.opts.reconnect.cap_ms, attempt)
        };
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    close_listeners(&inner);
}

/// One tunnel's life. `Err` = it never came up; `Ok(why)` = it came up and ended because `why`.
async fn session(inner: &Arc<Inner>, stop: &mut watch::Receiver<bool>) -> std::result::Result<Error, Error> {
    let stopping = || Error::LocalClosed("edge stopped".into());
    // Until the tunnel is up, stopping simply abandons the attempt.
    let (tls, params, addr) = tokio::select! {
        r = dial(inner) => r?,
        _ = stop.changed() => return Err(stopping()),
    };
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
    let (cfg_tx, mut cfg_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = EdgeHandler {
        events: inner.events.clone(),
        configs: cfg_tx,
    };
    let (mux, fut) = mux::start(tls, cfg, handler);
    *lock(&inner.current) = Some(mux.clone());
    {
        let mut st = lock(&inner.status);
        st.state = "connected";
        st.connected_since = Some(SystemTime::now());
        st.last_error = None;
    }
    inner.events.as_ref()(event!("tunnelConnected", {
        "hubAddress": addr, "transport": "tcpTls"
    }));
    let mut fut = Box::pin(fut);
    loop {
        tokio::select! {
            why = &mut fut => return Ok(why),
            Some(cfg) = cfg_rx.recv() => apply_config(inner, &mux, cfg).await,
            _ = stop.changed() => {
                // stop() already drained; close in order (GOAWAY, close_notify) and return.
                mux.close("edge stopped");
                return Ok(fut.await);
            }
        }
    }
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// TCP connect, TLS with the pinned fingerprint, and authentication.
async fn dial(
    inner: &Arc<Inner>,
) -> std::result::Result<(ClientTls, handshake::SessionParams, String), Error> {
    let addr = format!("{}:{}", inner.opts.hub_host, inner.opts.hub_port);
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(Error::Connect { addr, source }),
        Err(_) => {
            return Err(Error::Timeout(format!("connecting to the hub at {addr}")));
        }
    };
    let _ = tcp.set_nodelay(true);
    let cfg = Arc::new(tls::client_config(inner.trust.clone()));
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = rustls::ServerName::try_from(SNI).map_err(|e| Error::Tls(e.to_string()))?;
    let hs = async {
        let mut tls = connector.connect(name, tcp).await.map_err(|e| {
            let msg = e.to_string();
            if let Some(i) = msg.find(tls::PIN_MISMATCH) {
                let detail = &msg[i + tls::PIN_MISMATCH.len()..];
                Error::FingerprintMismatch {
                    pinned: field(detail, "pinned "),
                    actual: field(detail, "got "),
                }
            } else {
                Error::Tls(format!("handshake with {addr} failed: {msg}"))
            }
        })?;
        let mut binding = [0u8; 32];
        tls.get_ref()
            .1
            .export_keying_material(&mut binding, EXPORTER_LABEL, None)
            .map_err(|e| Error::Tls(format!("exporter: {e}")))?;
        let params = handshake::edge(&mut tls, &binding, &inner.opts.edge_id, &inner.opts.secret).await?;
        Ok::<_, Error>((tls, params))
    };
    let timeout = Duration::from_millis(inner.opts.limits.handshake_timeout_ms);
    let (tls, params) = tokio::time::timeout(timeout, hs)
        .await
        .map_err(|_| Error::Timeout("hub did not finish the handshake in time".into()))??;
    Ok((tls, params, addr))
}

fn field(detail: &str, key: &str) -> String {
    detail
        .split([',', '"', ':'])
        .find_map(|part| part.trim().strip_prefix(key))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// Applies a CONFIG: binds new ports, closes removed ones, leaves unchanged ones (and their
/// streams) alone. A port that cannot be bound is reported and the others still work.
async fn apply_config(inner: &Arc<Inner>, mux: &MuxHandle, cfg: Value) {
    let ports: Vec<u16> = cfg["tcp"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    let bind_ip: Option<IpAddr> = cfg["bindAddress"].as_str().and_then(|s| s.parse().ok());
    let wanted: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    let mut failed = Vec::new();
    {
        let mut l = lock(&inner.listeners);
        let stale: Vec<u16> = l.keys().filter(|p| !wanted.contains(p)).copied().collect();
        for p in stale {
            if let Some(t) = l.remove(&p) {
                t.abort();
            }
        }
    }
    for port in &wanted {
        if lock(&inner.listeners).contains_key(port) {
            continue;
        }
        match bind(bind_ip, *port).await {
            Ok(listener) => {
                let listener = Arc::new(listener);
                let (port, mux, events) = (*port, mux.clone(), inner.events.clone());
                let task = tokio::spawn(supervise(
                    inner.events.clone(),
                    format!("edge listener on port {port}"),
                    move || accept_clients(listener.clone(), port, mux.clone(), events.clone()),
                ));
                lock(&inner.listeners).insert(port, task);
            }
            Err(e) => {
                let f = json!({ "port": port, "protocol": "tcp", "code": e.code(), "reason": e.to_string() });
                inner.events.as_ref()(event!("portBindFailed", {
                    "port": port, "protocol": "tcp", "code": e.code(), "reason": e.to_string()
                }));
                failed.push(f);
            }
        }
    }
    let bound: Vec<u16> = lock(&inner.listeners).keys().copied().collect();
    {
        let mut st = lock(&inner.status);
        st.config = Some(cfg.clone());
        st.failed = failed.clone();
    }
    inner.events.as_ref()(event!("portsAssigned", {
        "tcp": bound, "udp": Vec::<u16>::new(), "failed": failed, "generation": cfg["generation"]
    }));
    if !cfg["firewall"].is_null() {
        inner.events.as_ref()(event!("firewallConfigUpdated", {
            "snapshot": cfg["firewall"], "generation": cfg["generation"], "applied": false,
            "reason": "nftables enforcement is not available in this build"
        }));
    }
    let ack = json!({ "generation": cfg["generation"], "tcp": bound, "failed": failed });
    mux.control(FrameType::ConfigAck, handshake::json_payload(&ack));
}

/// Binds a listening port: on the configured address, or dual-stack `[::]` (falling back to
/// `0.0.0.0` where IPv6 is disabled).
async fn bind(ip: Option<IpAddr>, port: u16) -> Result<TcpListener> {
    let addrs: Vec<SocketAddr> = match ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        ],
    };
    let mut last = None;
    for a in addrs {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(source) => {
                last = Some(Error::Bind {
                    addr: a.to_string(),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::InvalidConfig(format!("no address to bind port {port}"))))
}

async fn accept_clients(listener: Arc<TcpListener>, port: u16, mux: MuxHandle, events: EventSink) {
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
        let local = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
        let record = OpenRecord {
            kind: KIND_TCP,
            service: 0,
            listen_port: port,
            client,
            local,
        };
        match mux.open(record) {
            Some(ctx) => {
                let c = crate::proxy_protocol::unmap(client);
                events.as_ref()(event!("streamOpened", {
                    "streamId": ctx.id, "port": port,
                    "clientAddress": c.ip().to_string(), "clientPort": c.port()
                }));
                tokio::spawn(ctx.run_tcp(sock));
            }
            None => {
                // The tunnel is draining: refuse with RST so the client retries elsewhere.
                let _ = sock.set_linger(Some(Duration::ZERO));
                drop(sock);
            }
        }
    }
}

struct EdgeHandler {
    events: EventSink,
    configs: tokio::sync::mpsc::UnboundedSender<Value>,
}

impl Handler for EdgeHandler {
    fn on_open(&mut self, stream: RemoteStream) {
        // Hub-initiated streams (the hub dialing services behind the edge) are a later
        // protocol feature; refuse them explicitly.
        stream.ctx.reset(
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
            FrameType::Datagram => Ok(()),
            other => Err(Error::Protocol(format!("hub sent a {other:?} frame"))),
        }
    }

    fn on_closed(&mut self, c: ClosedStream) {
        let (code, reason) = match &c.reset {
            None => (Value::Null, Value::Null),
            Some((code, reason)) => (json!(crate::hub::reset_code(*code)), json!(reason)),
        };
        self.events.as_ref()(event!("streamClosed", {
            "streamId": c.id, "port": c.listen_port, "bytesIn": c.bytes_in,
            "bytesOut": c.bytes_out, "code": code, "reason": reason
        }));
    }
}
