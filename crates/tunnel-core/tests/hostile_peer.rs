//! Authenticated peers that misbehave (issue 24): an edge that proves its secret and then opens
//! streams and UDP flows to the limits, grants absurd credit and stops reading, floods
//! CONFIG_ACKs and oversized datagrams, never answers a PING and holds a draining tunnel; and a
//! hub that does the same to an edge. Both dial directions. The attacked daemon runs in a child
//! process: its memory, descriptors and CPU are its own, and are asserted bounded; a
//! well-behaved edge's echo through the attacked hub answers within 500 ms throughout.

mod support;

use bytes::BytesMut;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::auth::handshake::{self, SessionParams};
use tunnel_core::config::{service_number, Performance};
use tunnel_core::transport::dial;
use tunnel_core::transport::tls::{Identity, Trust};
use tunnel_core::wire::frame::{self, FrameType};
use tunnel_core::wire::open::{OpenRecord, KIND_TCP, KIND_UDP};

#[test]
fn child_entry() {
    child_entry_body();
}

/// One attack at a time: they measure memory, descriptors and CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HOSTILE_ID: &str = "hostile";
const HOSTILE_SECRET: &str = "hostile-secret-of-enough-length";
const EDGE_CERT: &str = include_str!("../src/testdata/edge-cert.pem");
const EDGE_KEY: &str = include_str!("../src/testdata/edge-key.pem");

/// The attacked hub's per-edge limits: the hostile edge goes past both.
const STREAMS: u32 = 256;
const FLOWS: u32 = 256;
/// Issue 24's bounds: the hub grows by at most 64 MiB against a peer that grants 1 GiB of
/// credit to targets writing 300 MB and stops reading; the edge by at most 32 MiB.
const MAX_HUB_GROWTH_KIB: u64 = 64 * 1024;
const MAX_EDGE_GROWTH_KIB: u64 = 32 * 1024;
const MAX_ECHO: Duration = Duration::from_millis(500);
/// What the attacked daemon may burn once the attack's bytes have been sent: half a core. A
/// peer can always make it decrypt what it sends; what it must not do is make it spin after.
const MAX_CPU_SHARE: f64 = 0.5;
/// 1 GiB: the credit the hostile peer grants each stream and the tunnel.
const GRANT: u32 = 1 << 30;

/// A test client of public ports, for a service's OPEN records.
fn record(kind: u8, port: u16, service: &str) -> OpenRecord {
    OpenRecord {
        kind,
        service: service_number(service),
        listen_port: port,
        client: "203.0.113.9:40000".parse().unwrap(),
        local: SocketAddr::from(([127, 0, 0, 1], port)),
        buffer: None,
        credit: false,
    }
}

fn encode(out: &mut BytesMut, kind: FrameType, stream: u32, payload: &[u8]) {
    frame::encode(out, kind, 0, stream, payload);
}

/// The hostile edge's allowed-edge entry at the hub: a TCP service to the flood target and a
/// UDP service to the UDP echo; `dial`: the hub dials it.
fn hostile_edge_spec(tcp: u16, udp: u16, dial: Option<Value>) -> Value {
    json!({ "id": HOSTILE_ID, "secret": HOSTILE_SECRET, "bindAddress": "127.0.0.1",
        "tcp": [{ "port": tcp, "targetHost": "127.0.0.1", "targetPort": "flood", "proxyProtocol": "none" }],
        "udp": [{ "port": udp, "targetHost": "127.0.0.1", "targetPort": "udpEcho", "proxyProtocol": "none" }],
        "dial": dial })
}

/// After authenticating as an edge: streams to the flood target and UDP flows past the
/// limits, 1 GiB of credit for each stream and the tunnel, oversized datagrams, a flood of
/// CONFIG_ACKs (oversized ones and one per generation), and then never a byte read. Returns
/// the halves, held open by the caller.
///
/// Over QUIC (`quic`) the streams and their credit are QUIC's own (the caller opened them):
/// the frames here are the control stream's.
async fn misbehave_as_edge<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    tcp: u16,
    udp: u16,
    quic: bool,
) -> (tokio::io::ReadHalf<S>, tokio::io::WriteHalf<S>) {
    let (r, mut w) = tokio::io::split(io);
    let mut out = BytesMut::new();
    let (tcp_rec, udp_rec) = (
        record(KIND_TCP, tcp, &format!("tcp/{tcp}")),
        record(KIND_UDP, udp, &format!("udp/{udp}")),
    );
    for i in (0..STREAMS + 32).filter(|_| !quic) {
        let id = 2 * i + 1;
        let mut p = BytesMut::new();
        tcp_rec.encode(&mut p);
        encode(&mut out, FrameType::Open, id, &p);
        encode(&mut out, FrameType::Window, id, &GRANT.to_be_bytes());
    }
    if !quic {
        encode(&mut out, FrameType::Window, 0, &GRANT.to_be_bytes());
    }
    let big = vec![0x42u8; frame::MAX_DATA_PAYLOAD];
    for flow in 1..=FLOWS + 32 {
        let mut p = BytesMut::new();
        udp_rec.encode(&mut p);
        encode(&mut out, FrameType::FlowOpen, flow, &p);
        // Larger than any UDP datagram can be (65,507): the hub drops and counts them.
        encode(&mut out, FrameType::Datagram, flow, &big);
    }
    // Datagrams for flows that do not exist (yet): 32 MiB for the hub's orphan queue.
    for flow in FLOWS + 1_000..FLOWS + 1_512 {
        encode(&mut out, FrameType::Datagram, flow, &big);
    }
    paced_write(&mut w, &out).await;
    // CONFIG_ACKs: twenty too large to be parsed (10 MiB), ten thousand small ones.
    let huge = vec![b' '; 512 * 1024];
    for _ in 0..20 {
        out.clear();
        encode(&mut out, FrameType::ConfigAck, 0, &huge);
        paced_write(&mut w, &out).await;
    }
    out.clear();
    for g in 0..10_000u64 {
        let ack = json!({ "generation": g % 50, "tcp": [tcp], "udp": [], "failed": [] }).to_string();
        encode(&mut out, FrameType::ConfigAck, 0, ack.as_bytes());
    }
    paced_write(&mut w, &out).await;
    w.flush().await.expect("flushed");
    (r, w)
}

/// Writes `bytes` at ~50 MB/s: the attack is about what the peer makes the attacked side hold,
/// not about how fast a 2-core test machine encrypts and decrypts (which a peer can always spend
/// up to its link's speed, and which the well-behaved edge's echo would then measure).
async fn paced_write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) {
    for chunk in bytes.chunks(256 * 1024) {
        w.write_all(chunk)
            .await
            .expect("the attacked side reads what it is sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a daemon in a child process uses, sampled while an attack runs.
struct Watch {
    pid: u32,
    rss_base: u64,
    fds_base: usize,
    rss_peak: u64,
    fds_peak: usize,
}

impl Watch {
    fn new(pid: u32) -> Watch {
        let (rss_base, fds_base) = (rss_kib(pid), fd_count(pid));
        Watch {
            pid,
            rss_base,
            fds_base,
            rss_peak: rss_base,
            fds_peak: fds_base,
        }
    }

    fn sample(&mut self) {
        self.rss_peak = self.rss_peak.max(rss_kib(self.pid));
        self.fds_peak = self.fds_peak.max(fd_count(self.pid));
    }

    /// Samples for `span`, every 100 ms.
    async fn during(&mut self, span: Duration) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            self.sample();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process's CPU share over `span` (1.0 = one core), sampling meanwhile.
    async fn cpu_share(&mut self, span: Duration) -> f64 {
        let (t0, c0) = (Instant::now(), cpu_time(self.pid));
        self.during(span).await;
        (cpu_time(self.pid) - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
    }

    fn report(&self, who: &str, max_growth_kib: u64, max_fds: usize) -> String {
        let line = format!(
            "{who}: RSS {} -> peak {} KiB (+{} KiB), fds {} -> peak {}",
            self.rss_base,
            self.rss_peak,
            self.rss_peak.saturating_sub(self.rss_base),
            self.fds_base,
            self.fds_peak
        );
        eprintln!("{line}");
        assert!(
            self.rss_peak.saturating_sub(self.rss_base) <= max_growth_kib,
            "{line}: grew past {max_growth_kib} KiB"
        );
        assert!(
            self.fds_peak <= self.fds_base + max_fds,
            "{line}: more than {max_fds} descriptors more"
        );
        line
    }
}

/// Echoes through `port` every 100 ms until stopped; the slowest, and any failure.
struct Prober {
    stop: Arc<std::sync::atomic::AtomicBool>,
    worst: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<u32>,
}

impl Prober {
    fn start(port: u16) -> Prober {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worst = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, worst, failures) = (stop.clone(), worst.clone(), failures.clone());
            async move {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    match tokio::time::timeout(MAX_ECHO * 4, echo_once(port, b"still there?")).await {
                        Ok(Ok(t)) => {
                            worst.fetch_max(t.as_micros() as u64, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => failures.lock().unwrap().push(e),
                        Err(_) => failures.lock().unwrap().push("no echo within 2 s".into()),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                n
            }
        });
        Prober {
            stop,
            worst,
            failures,
            task,
        }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::Release);
        let n = self.task.await.unwrap();
        let worst = Duration::from_micros(self.worst.load(Ordering::Relaxed));
        let failures = self.failures.lock().unwrap().clone();
        eprintln!("well-behaved edge: {n} echoes, slowest {worst:?}, failures {failures:?}");
        assert!(failures.is_empty(), "echoes failed: {failures:?}");
        assert!(worst <= MAX_ECHO, "slowest echo {worst:?}");
    }
}

/// The attacked hub, with its well-behaved edge connected and settled.
async fn attacked_hub(extra: Value) -> (Daemon, Value, tunnel_core::engine::edge::Edge, u16) {
    let edge_port = free_port();
    let arg = json!({ "edgePort": edge_port, "extraEdges": [extra],
        "limits": { "maxStreamsPerEdge": STREAMS, "maxUdpFlowsPerEdge": FLOWS } });
    let (hub, info) = Daemon::spawn("hub", arg);
    let good = start_edge(edge_options(&info, "tcpTls"));
    wait_for_echo(edge_port, Duration::from_secs(10)).await;
    // Settled: the first tunnel, the first trim.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (hub, info, good, edge_port)
}

/// The attack from the edge's side on a hub, with the hub's numbers asserted; `connect` yields
/// one authenticated tunnel of the hostile edge each time it is called.
async fn edge_attack<F, Fut, S>(
    mut hub: Daemon,
    edge_port: u16,
    tcp: u16,
    udp: u16,
    tunnels: usize,
    quic: bool,
    mut connect: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut watch = Watch::new(hub.pid());
    let prober = Prober::start(edge_port);
    // Two tunnels with the hostile edge's id (where it dials): the first drains (holding its
    // streams), the second finds the edge's allowance used up.
    let mut held = vec![misbehave_as_edge(connect().await, tcp, udp, quic).await];
    watch.during(Duration::from_millis(1500)).await;
    if tunnels > 1 {
        held.push(misbehave_as_edge(connect().await, tcp, udp, quic).await);
    }
    watch.during(Duration::from_secs(3)).await;
    let status = hub.status();
    let hostile = status["edges"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["edgeId"] == HOSTILE_ID))
        .cloned()
        .unwrap_or(Value::Null);
    eprintln!(
        "hostile edge at the hub: {}",
        json!({
            "drainingTunnels": hostile["drainingTunnels"], "allTunnels": hostile["allTunnels"], "udp": hostile["udp"]
        })
    );
    let all = &hostile["allTunnels"];
    assert!(all["openStreams"].as_u64() <= Some(u64::from(STREAMS)), "{all}");
    assert!(all["udpFlows"].as_u64() <= Some(u64::from(FLOWS)), "{all}");
    let cpu = watch.cpu_share(Duration::from_secs(3)).await;
    eprintln!("hub CPU after the attack's bytes: {:.0} % of a core", cpu * 100.0);
    assert!(
        cpu <= MAX_CPU_SHARE,
        "the hub used {:.0} % of a core after the attack",
        cpu * 100.0
    );
    // Every hostile stream holds a socket to the target and the target's own (one process),
    // every flow a socket.
    watch.report(
        "hub",
        MAX_HUB_GROWTH_KIB,
        2 * STREAMS as usize + FLOWS as usize + 64,
    );
    prober.finish().await;
    // Let go: everything the hostile tunnels held goes back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fd_count(hub.pid()) > watch.fds_base + 16 {
        assert!(
            Instant::now() < deadline,
            "descriptors not given back: {} (base {})",
            fd_count(hub.pid()),
            watch.fds_base
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hub.alive());
}

/// An edge that dials the hub, authenticates and misbehaves (TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_edge_that_dials_cannot_exhaust_the_hub() {
    let _serial = SERIAL.lock().await;
    let (tcp, udp) = (free_port(), free_port());
    let (hub, info, good, edge_port) = attacked_hub(hostile_edge_spec(tcp, udp, None)).await;
    let fingerprint = info["fingerprint"].as_str().unwrap().to_string();
    let port = info["tunnelPort"].as_u64().unwrap() as u16;
    edge_attack(hub, edge_port, tcp, udp, 2, false, || {
        let fingerprint = fingerprint.clone();
        async move {
            let (mut tls, binding) = dial::tls(
                "127.0.0.1",
                port,
                Trust::Pinned(fingerprint),
                "the hub",
                &Performance::default(),
            )
            .await
            .expect("TLS to the hub");
            handshake::edge(&mut tls, &binding, HOSTILE_ID, HOSTILE_SECRET, false)
                .await
                .expect("the hostile edge authenticates");
            tls
        }
    })
    .await;
    good.stop(Duration::from_millis(100)).await;
}

/// A hub that dials an edge which turns out hostile once authenticated (TLS): the hub pins
/// the edge's certificate, both prove the secret, and then the edge misbehaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_edge_the_hub_dials_cannot_exhaust_the_hub() {
    let _serial = SERIAL.lock().await;
    let (tcp, udp, listen) = (free_port(), free_port(), free_port());
    let identity = Identity::from_pem(EDGE_CERT, EDGE_KEY).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", listen)).await.unwrap();
    let dial = json!({ "host": "127.0.0.1", "port": listen, "fingerprint": identity.fingerprint, "transportMode": "tcpTls",
        "reconnect": { "baseMs": 100, "capMs": 1000 } });
    let (hub, _info, good, edge_port) = attacked_hub(hostile_edge_spec(tcp, udp, Some(dial))).await;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config().unwrap()));
    let listener = Arc::new(listener);
    // The hub dials one tunnel at a time: no second one to hold.
    edge_attack(hub, edge_port, tcp, udp, 1, false, || {
        let (listener, acceptor) = (listener.clone(), acceptor.clone());
        async move {
            let (tcp, _) = listener.accept().await.expect("the hub dials");
            let mut tls = acceptor.accept(tcp).await.expect("TLS from the hub");
            let binding = tls
                .get_ref()
                .1
                .export_keying_material([0u8; 32], tunnel_core::auth::EXPORTER_LABEL, None)
                .unwrap();
            handshake::edge(&mut tls, &binding, HOSTILE_ID, HOSTILE_SECRET, true)
                .await
                .expect("the hub proves itself and the hostile edge answers");
            tls
        }
    })
    .await;
    good.stop(Duration::from_millis(100)).await;
}

/// The session parameters a hub announces.
const PARAMS: SessionParams = SessionParams {
    stream_window: 512 * 1024,
    connection_window: 16 * 1024 * 1024,
    heartbeat_ms: 5_000,
    max_streams: 65_536,
    max_frame: 16 * 1024,
};

/// After authenticating as a hub: a CONFIG that makes the edge serve `tcp` and `udp`; then, as
/// public clients push bytes into the edge's TCP port and datagrams into its UDP port, 1 GiB of
/// credit for the streams the edge opens and the tunnel, datagrams and FLOW_CLOSEs for flows
/// that do not exist, hub-opened streams, no PING answered, and nothing read.
async fn misbehave_as_hub<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    tcp: u16,
    udp: u16,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (_r, mut w) = tokio::io::split(io);
        let config = json!({ "generation": 1, "tcp": [tcp], "udp": [udp], "bindAddress": "127.0.0.1",
            "services": [
                { "sid": service_number(&format!("tcp/{tcp}")), "id": format!("tcp/{tcp}"), "protocol": "tcp", "port": tcp },
                { "sid": service_number(&format!("udp/{udp}")), "id": format!("udp/{udp}"), "protocol": "udp", "port": udp },
            ] });
        let mut out = BytesMut::new();
        encode(&mut out, FrameType::Config, 0, config.to_string().as_bytes());
        encode(&mut out, FrameType::Window, 0, &GRANT.to_be_bytes());
        // Credit for every stream the edge will open (odd ids), granted before they exist, and
        // streams the hub opens itself (even ids), which an edge refuses.
        for i in 0..2_000u32 {
            encode(&mut out, FrameType::Window, 2 * i + 1, &GRANT.to_be_bytes());
            let mut p = BytesMut::new();
            record(KIND_TCP, tcp, "tcp/x").encode(&mut p);
            encode(&mut out, FrameType::Open, 2 * i + 2, &p);
        }
        let big = vec![0x24u8; frame::MAX_DATA_PAYLOAD];
        for flow in 1..3_000u32 {
            encode(&mut out, FrameType::Datagram, flow, &big);
            encode(&mut out, FrameType::FlowClose, flow + 10_000, &[]);
        }
        if w.write_all(&out).await.is_err() {
            return;
        }
        // Hold the tunnel, reading nothing: the edge's PINGs go unanswered and its data waits.
        std::future::pending::<()>().await;
    })
}

/// Public clients pushing into the attacked edge: TCP clients writing as much as the edge
/// takes, and UDP clients sending datagrams; for as long as the returned task runs.
fn public_clients(tcp: u16, udp: u16) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..64 {
            tasks.push(tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", tcp)).await else {
                    return;
                };
                let chunk = vec![7u8; 64 * 1024];
                while s.write_all(&chunk).await.is_ok() {}
            }));
        }
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let d = vec![9u8; 60_000];
        loop {
            let _ = sock.send_to(&d, ("127.0.0.1", udp)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The attack from the hub's side on an edge in a child process, with the edge's numbers
/// asserted. `session` yields one authenticated hostile tunnel.
async fn hub_attack<Fut, S>(mut edge: Daemon, tcp: u16, udp: u16, session: Fut)
where
    Fut: std::future::Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tunnel = session.await;
    let mut watch = Watch::new(edge.pid());
    let held = misbehave_as_hub(tunnel, tcp, udp).await;
    // Wait for the ports the CONFIG asked for.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", tcp)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the edge never served the hostile hub's port"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let clients = public_clients(tcp, udp);
    watch.during(Duration::from_secs(4)).await;
    let cpu = watch.cpu_share(Duration::from_secs(3)).await;
    eprintln!("edge CPU while held: {:.0} % of a core", cpu * 100.0);
    // The public clients keep pushing; what the edge does for them must still be bounded.
    assert!(
        cpu <= MAX_CPU_SHARE,
        "the edge used {:.0} % of a core",
        cpu * 100.0
    );
    let status = edge.status();
    eprintln!(
        "edge under a hostile hub: {}",
        json!({ "openStreams": status["openStreams"], "udp": status["udp"] })
    );
    // Each public client is a socket; the edge accepted them all.
    watch.report("edge", MAX_EDGE_GROWTH_KIB, 64 + 64);
    clients.abort();
    held.abort();
    assert!(edge.alive());
}

fn edge_child_options(extra: Value) -> Value {
    let mut v = json!({ "edgeId": HOSTILE_ID, "secret": HOSTILE_SECRET,
        "reconnect": { "baseMs": 100, "capMs": 1000 } });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// The hostile hub's side of the exchange: it knows the secret, so both proofs verify (it
/// dialed: `dialed`).
async fn prove_as_hub<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    binding: &[u8; 32],
    dialed: Option<handshake::Dialed<'_>>,
) {
    let verdict = handshake::hub(
        io,
        binding,
        |_| Some(HOSTILE_SECRET.to_string()),
        b"dummy",
        PARAMS,
        dialed,
    )
    .await
    .expect("the exchange completes");
    assert!(matches!(verdict, handshake::HubVerdict::Accepted { .. }));
}

/// An edge that dials a hub which turns out hostile once authenticated (TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_hub_the_edge_dials_cannot_exhaust_the_edge() {
    let _serial = SERIAL.lock().await;
    let (tcp, udp) = (free_port(), free_port());
    let identity = Identity::from_pem(CERT, KEY).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (edge, _) = Daemon::spawn(
        "edge",
        edge_child_options(json!({
        "hubHost": "127.0.0.1", "hubPort": port, "hubFingerprint": identity.fingerprint, "transportMode": "tcpTls" })),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config().unwrap()));
    hub_attack(edge, tcp, udp, async move {
        let (tcp, _) = listener.accept().await.expect("the edge dials");
        let mut tls = acceptor.accept(tcp).await.expect("TLS from the edge");
        let binding = tls
            .get_ref()
            .1
            .export_keying_material([0u8; 32], tunnel_core::auth::EXPORTER_LABEL, None)
            .unwrap();
        prove_as_hub(&mut tls, &binding, None).await;
        tls
    })
    .await;
}

/// A hostile hub that dials an edge listening for it (TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_hub_that_dials_cannot_exhaust_the_edge() {
    let _serial = SERIAL.lock().await;
    let (tcp, udp, listen) = (free_port(), free_port(), free_port());
    let (edge, _) = Daemon::spawn(
        "edge",
        edge_child_options(json!({
        "listenForHub": { "port": listen, "bindHost": "127.0.0.1", "certPem": EDGE_CERT, "keyPem": EDGE_KEY } })),
    );
    let fingerprint = Identity::from_pem(EDGE_CERT, EDGE_KEY).unwrap().fingerprint;
    hub_attack(edge, tcp, udp, async move {
        let (mut tls, binding) = dial::tls(
            "127.0.0.1",
            listen,
            Trust::Pinned(fingerprint),
            "the edge",
            &Performance::default(),
        )
        .await
        .expect("TLS to the edge");
        prove_as_hub(
            &mut tls,
            &binding,
            Some(handshake::Dialed {
                edge_id: HOSTILE_ID,
                secret: HOSTILE_SECRET,
            }),
        )
        .await;
        tls
    })
    .await;
}

/// The QUIC edge's side of the same attack: it authenticates on the control stream and then
/// opens streams to the flood target past the limit and never reads them, with 1 GiB of stream
/// credit (64 MiB for the connection: quinn acknowledges what it buffers, so the hub sends
/// until the connection window is full and then waits, as it must), opens UDP flows past the
/// limit, sends oversized datagrams and floods CONFIG_ACKs on the control stream, and holds a
/// second (so the first drains).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_quic_edge_cannot_exhaust_the_hub() {
    use tunnel_core::transport::quic;
    let _serial = SERIAL.lock().await;
    let (tcp, udp) = (free_port(), free_port());
    let (hub, info, good, edge_port) = attacked_hub(hostile_edge_spec(tcp, udp, None)).await;
    let fingerprint = info["fingerprint"].as_str().unwrap().to_string();
    let port = info["tunnelPort"].as_u64().unwrap() as u16;
    let perf = Performance {
        stream_window: GRANT,
        connection_window: 64 << 20,
        ..Performance::default()
    };
    edge_attack(hub, edge_port, tcp, udp, 2, true, || {
        let (fingerprint, perf) = (fingerprint.clone(), perf.clone());
        async move {
            let transport = quic::transport_config(&perf, Duration::from_secs(5), 0);
            let mut d = dial::quic(
                "127.0.0.1",
                port,
                Trust::Pinned(fingerprint),
                transport,
                quic::dial_endpoint_config(&perf),
                "the hub",
                &perf,
            )
            .await
            .expect("QUIC to the hub");
            handshake::edge(&mut d.control, &d.binding, HOSTILE_ID, HOSTILE_SECRET, false)
                .await
                .expect("the hostile edge authenticates");
            // Streams to the flood target, opened and never read.
            let rec = record(KIND_TCP, tcp, &format!("tcp/{tcp}"));
            let mut streams = Vec::new();
            for _ in 0..STREAMS + 32 {
                let Ok(Ok((mut send, recv))) =
                    tokio::time::timeout(Duration::from_secs(2), d.conn.open_bi()).await
                else {
                    break;
                };
                let mut head = BytesMut::from(&[0u8][..]);
                rec.encode(&mut head);
                head[0] = (head.len() - 1) as u8;
                if send.write_all(&head).await.is_err() {
                    break;
                }
                streams.push((send, recv));
            }
            // The control stream gets what the TLS attack sends; QUIC holds it all.
            QuicHeld {
                _conn: d.conn,
                _endpoint: d.endpoint,
                _streams: streams,
                control: d.control,
            }
        }
    })
    .await;
    good.stop(Duration::from_millis(100)).await;
}

/// A hostile QUIC tunnel and everything it holds open; its control stream is what the attack
/// writes to and never reads.
struct QuicHeld {
    _conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    _streams: Vec<(quinn::SendStream, quinn::RecvStream)>,
    control: tunnel_core::transport::quic::Duplex,
}

impl AsyncRead for QuicHeld {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().control).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicHeld {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().control).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().control).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().control).poll_shutdown(cx)
    }
}
