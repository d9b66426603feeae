//! The hub dialing edges that listen for it (an allowed edge with `dialEdge`, or an edge
//! token). One task per such edge: connect (QUIC, TLS, or QUIC with TLS fallback) with the
//! edge's certificate pinned, prove the secret first (see [`handshake`]), check the edge's
//! proof, and from then on run the very session an edge that dialed in gets. When the tunnel
//! ends the task redials with backoff; while on the TLS fallback it keeps trying QUIC and moves
//! over (the newer tunnel replaces the older, which drains).

use super::*;
use crate::config::DialSpec;
use crate::transport::dial;
use crate::transport::quic;
use crate::transport::tls::Trust;

/// quicWithFallback: how long QUIC may take to come up before the hub uses TLS instead. 3 s, as
/// for an edge that dials (`quicConnectTimeoutMs`): a QUIC handshake on any working path takes
/// one or two RTTs; a blocked UDP port shows as silence.
const QUIC_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// quicWithFallback: while on TLS, how often QUIC is tried again (30 s, as for an edge).
const QUIC_PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// One dialed edge's task and what status shows of it.
pub(super) struct DialTask {
    spec: DialSpec,
    secret: String,
    task: JoinHandle<()>,
    state: Arc<Mutex<DialState>>,
}

#[derive(Default)]
struct DialState {
    state: &'static str,
    attempts: u64,
    last_error: Option<Value>,
}

/// A tunnel the hub dialed and authenticated, not yet serving.
enum Dialed {
    // Boxed: a TLS stream is over a kilobyte.
    Tls(Box<dial::ClientTls>, SocketAddr),
    Quic(dial::QuicDialed),
}

/// Starts, keeps or stops the dial task of every allowed edge so that exactly the edges with a
/// `dial` spec have one, with that spec and secret. Called after the allowed edges changed.
pub(super) fn reconcile(inner: &Arc<Inner>) {
    let edges: Vec<Arc<EdgeSpec>> = lock(&inner.state).edges.values().cloned().collect();
    let mut tasks = lock(&inner.dialers);
    let stopped = inner.stopped.load(Ordering::Acquire);
    tasks.retain(|id, t| {
        let keep = !stopped
            && edges
                .iter()
                .any(|e| &e.id == id && e.dial.as_ref() == Some(&t.spec) && e.secret == t.secret);
        if !keep {
            // The session (if any) runs in its own task: set_edges closes it if the edge went.
            t.task.abort();
        }
        keep
    });
    if stopped {
        return;
    }
    for e in edges {
        let Some(spec) = e.dial.clone() else { continue };
        if tasks.contains_key(&e.id) {
            continue;
        }
        let state = Arc::new(Mutex::new(DialState {
            state: "connecting",
            ..DialState::default()
        }));
        let task = tokio::spawn(dial_loop(
            inner.clone(),
            e.id.clone(),
            spec.clone(),
            e.secret.clone(),
            state.clone(),
        ));
        tasks.insert(
            e.id.clone(),
            DialTask {
                spec,
                secret: e.secret.clone(),
                task,
                state,
            },
        );
    }
}

/// Stops every dial task (the hub is stopping; its sessions are drained by `stop`).
pub(super) fn stop_all(inner: &Inner) {
    for (_, t) in lock(&inner.dialers).drain() {
        t.task.abort();
    }
}

/// What status shows of the dialed edges.
pub(super) fn status(inner: &Inner) -> Value {
    let tasks = lock(&inner.dialers);
    let mut list: Vec<Value> = tasks
        .iter()
        .map(|(id, t)| {
            let st = lock(&t.state);
            json!({
                "edgeId": id, "address": format!("{}:{}", t.spec.host, t.spec.port),
                "transportMode": t.spec.transport_mode, "state": st.state,
                "attempts": st.attempts, "lastError": st.last_error,
            })
        })
        .collect();
    list.sort_by(|a, b| a["edgeId"].as_str().cmp(&b["edgeId"].as_str()));
    Value::Array(list)
}

async fn dial_loop(
    inner: Arc<Inner>,
    edge_id: String,
    spec: DialSpec,
    secret: String,
    state: Arc<Mutex<DialState>>,
) {
    let mut shutdown = inner.shutdown.subscribe();
    let address = format!("{}:{}", spec.host, spec.port);
    // Validated with the allowed edges; parsed once here, not per dial.
    let trust = match crate::transport::tls::parse_fingerprint(&spec.fingerprint) {
        Ok(f) => Trust::Pinned(f),
        Err(e) => {
            lock(&state).last_error = Some(json!({ "code": e.code(), "message": e.to_string() }));
            return;
        }
    };
    let mut attempt: u32 = 0;
    // Failed dials since the last tunnel came up (what `edgeDialFailed` reports).
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        {
            let mut st = lock(&state);
            st.state = "connecting";
            st.attempts += 1;
        }
        let began = Instant::now();
        let target = Target {
            inner: &inner,
            edge_id: &edge_id,
            spec: &spec,
            trust: &trust,
            secret: &secret,
        };
        let outcome = tokio::select! {
            r = target.connect() => r,
            _ = shutdown.changed() => return,
        };
        let delay = dial::backoff(spec.reconnect.base_ms, spec.reconnect.cap_ms, attempt);
        attempt = attempt.saturating_add(1);
        match outcome {
            Ok(first) => {
                failures = 0;
                {
                    let mut st = lock(&state);
                    st.state = "connected";
                    st.last_error = None;
                }
                serve(&target, first, &mut shutdown).await;
                if *shutdown.borrow() {
                    return;
                }
                // A healthy tunnel ended: redial soon (the backoff grows only while dials fail).
                if began.elapsed() >= dial::HEALTHY_SESSION {
                    attempt = 0;
                }
            }
            Err(e) => {
                lock(&state).last_error = Some(json!({ "code": e.code(), "message": e.to_string() }));
                failures = failures.saturating_add(1);
                inner.events.as_ref()(event!("edgeDialFailed", {
                    "edgeId": edge_id, "address": address, "code": e.code(),
                    "reason": e.to_string(), "attempt": failures,
                    "retryInMs": delay.as_millis() as u64
                }));
            }
        }
        lock(&state).state = "backoff";
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Runs the dialed tunnel's session (and, on the TLS fallback, moves to QUIC when a probe
/// succeeds) until the tunnel in use ends.
async fn serve(target: &Target<'_>, first: Dialed, shutdown: &mut watch::Receiver<bool>) {
    let Target {
        inner,
        edge_id,
        spec,
        secret,
        ..
    } = *target;
    let mut on_tls = matches!(first, Dialed::Tls(..));
    let mut task = start_session(inner, edge_id, secret, first);
    let mut probe = tokio::time::interval_at(
        tokio::time::Instant::now() + QUIC_PROBE_INTERVAL,
        QUIC_PROBE_INTERVAL,
    );
    loop {
        let probing = on_tls && spec.transport_mode == "quicWithFallback";
        tokio::select! {
            _ = &mut task => return,
            _ = probe.tick(), if probing => {
                if let Ok(Ok(q)) = tokio::time::timeout(QUIC_CONNECT_TIMEOUT, target.connect_quic()).await {
                    // Registering the QUIC session replaces the TLS one, which drains on its own.
                    task = start_session(inner, edge_id, secret, q);
                    on_tls = false;
                }
            }
            _ = shutdown.changed() => {
                // Hub::stop drains and closes the session.
                let _ = (&mut task).await;
                return;
            }
        }
    }
}

/// The session of a dialed tunnel, in its own task: stopping or replacing the dial task never
/// cuts a session short without unregistering it.
fn start_session(inner: &Arc<Inner>, edge_id: &str, secret: &str, d: Dialed) -> JoinHandle<()> {
    let (inner, edge_id, secret) = (inner.clone(), edge_id.to_string(), secret.to_string());
    tokio::spawn(async move {
        match d {
            Dialed::Tls(tls, peer) => run_tls_session(inner, *tls, peer, edge_id, secret).await,
            Dialed::Quic(q) => {
                let peer = q.conn.remote_address();
                run_quic_session(inner, q.conn, Some(q.endpoint), q.control, peer, edge_id, secret).await
            }
        }
    })
}

/// One edge to dial: everything a dial needs, borrowed from the dial task.
#[derive(Clone, Copy)]
struct Target<'a> {
    inner: &'a Arc<Inner>,
    edge_id: &'a str,
    spec: &'a DialSpec,
    trust: &'a Trust,
    secret: &'a str,
}

impl Target<'_> {
    /// A tunnel in the edge's transport mode (quicWithFallback: QUIC, else TLS).
    async fn connect(&self) -> Result<Dialed> {
        match self.spec.transport_mode.as_str() {
            "tcpTls" => self.connect_tls().await,
            "quic" => self.connect_quic().await,
            _ => {
                let quic_err = match tokio::time::timeout(QUIC_CONNECT_TIMEOUT, self.connect_quic()).await {
                    Ok(Ok(d)) => return Ok(d),
                    Ok(Err(e)) => e,
                    Err(_) => Error::Timeout(format!(
                        "QUIC did not come up within {} ms",
                        QUIC_CONNECT_TIMEOUT.as_millis()
                    )),
                };
                // Authentication problems are not transport problems: TLS would fail the same way.
                if matches!(quic_err, Error::AuthFailed(_) | Error::FingerprintMismatch { .. }) {
                    return Err(quic_err);
                }
                self.connect_tls().await
            }
        }
    }

    async fn connect_tls(&self) -> Result<Dialed> {
        let what = format!("edge {:?}", self.edge_id);
        let hs = async {
            let (mut tls, binding) = dial::tls(
                &self.spec.host,
                self.spec.port,
                self.trust.clone(),
                &what,
                &self.inner.perf,
            )
            .await?;
            self.prove(&mut tls, &binding).await?;
            let peer = tls.get_ref().0.peer_addr()?;
            Ok::<_, Error>(Dialed::Tls(Box::new(tls), peer))
        };
        tokio::time::timeout(self.inner.limits.handshake_timeout(), hs)
            .await
            .map_err(|_| Error::Timeout(format!("{what} did not finish the handshake in time")))?
    }

    async fn connect_quic(&self) -> Result<Dialed> {
        let what = format!("edge {:?}", self.edge_id);
        let inner = self.inner;
        // The edge opens a stream per client towards us: accept as many as an edge that dialed in.
        let transport = quic::transport_config(
            &inner.perf,
            Duration::from_millis(inner.limits.heartbeat_interval_ms),
            inner.limits.max_streams_per_edge.min(quic::HUB_MAX_QUIC_STREAMS),
        );
        let hs = async {
            let mut d = dial::quic(
                &self.spec.host,
                self.spec.port,
                self.trust.clone(),
                transport,
                quic::dial_endpoint_config(&inner.perf),
                &what,
                &inner.perf,
            )
            .await?;
            self.prove(&mut d.control, &d.binding).await?;
            Ok::<_, Error>(Dialed::Quic(d))
        };
        tokio::time::timeout(inner.limits.handshake_timeout(), hs)
            .await
            .map_err(|_| Error::Timeout(format!("{what} did not finish the QUIC handshake in time")))?
    }

    /// The hub's side of the exchange on a tunnel it dialed: it proves first, then checks the edge.
    async fn prove<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        binding: &[u8; 32],
    ) -> Result<()> {
        let Target {
            inner,
            edge_id,
            secret,
            ..
        } = *self;
        let dialed = handshake::Dialed { edge_id, secret };
        let params = session_params(&inner.perf, &inner.limits);
        match handshake::hub(io, binding, |_| None, &inner.dummy_secret, params, Some(dialed)).await? {
            HubVerdict::Accepted { .. } => Ok(()),
            HubVerdict::Refused {
                edge_id: answered,
                reason,
            } => Err(Error::AuthFailed(format!(
                "edge {edge_id:?} answered as {answered:?} with a proof that does not verify ({reason})"
            ))),
        }
    }
}
