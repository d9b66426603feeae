//! Round trips through each tunnel transport alone, with no tunnel around it: how much of quic's
//! ping-pong p50 against tcpTls (issue 15's "p50 ≤ 1.1× tcpTls") the transport library itself
//! costs on this machine.
//!
//! Two tokio runtimes of one worker each (as the daemons run on small machines), on two threads:
//! an echo server and a client that sends 14 bytes (sockperf's ping-pong message) and waits for
//! them to come back, over
//! - `tcp`: plain TCP, the floor every transport stands on;
//! - `tls`: TLS 1.3 over TCP, the edge's dialer (`dial::tls`) against the hub's TLS
//!   configuration (tcpTls);
//! - `quic`: the control stream of a quinn connection, the edge's dialer (`dial::quic`)
//!   against the hub's endpoint (`listen::quic_endpoint`) (quic).
//!
//! Transports take turns, round after round, so machine noise falls on all of them alike. Per
//! transport and round it prints the p50 and p99 round trip and the CPU time both ends spent per
//! round trip (user + system of this process).
//!
//! `cargo run --release --example transport_rtt -- [round trips per round] [rounds] [tcp|tls|quic]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tunnel_core::config::{Limits, Performance};
use tunnel_core::engine::listen;
use tunnel_core::engine::udp;
use tunnel_core::transport::tls::{self, Trust};
use tunnel_core::transport::{dial, quic};

/// sockperf's ping-pong message size.
const MESSAGE: usize = 14;
/// Round trips before measuring, so connection set-up, congestion-window growth and first-touch
/// page faults are not measured.
const WARM_UP: usize = 2_000;
/// How the dialers name the server in their errors.
const SERVER: &str = "the echo server";
/// The daemons' heartbeat (limits.heartbeatIntervalMs, 5 s) sets QUIC's keep-alive; any value
/// well beyond a round's length keeps keep-alives out of the measurement.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Default round trips per transport and round: ~1–3 s each here, enough for a stable p50.
const ROUND_TRIPS: usize = 20_000;
/// Default rounds: three, so a median is not one placement's luck.
const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Tls,
    Quic,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Quic => "quic",
        }
    }
}

fn identity() -> tls::Identity {
    tls::Identity::from_pem(
        include_str!("../src/testdata/cert.pem"),
        include_str!("../src/testdata/key.pem"),
    )
    .expect("test identity")
}

/// Runs `f` as a task of a runtime with one worker, as the daemons run everything (quinn's
/// endpoint and connection drivers included) on their worker; `block_on`'s own future would run
/// on the calling thread, and every hand-off to quinn's drivers would cross threads.
fn on_one_worker<F>(f: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move { tokio::spawn(f).await.expect("task") })
}

/// Echoes what it reads until the peer closes.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0u8; MESSAGE];
    while s.read_exact(&mut buf).await.is_ok() {
        if s.write_all(&buf).await.is_err() || s.flush().await.is_err() {
            return;
        }
    }
}

/// The client's side: `n` measured round trips, each one's duration, and this process's CPU
/// time (user + system, both ends) over them, warm-up excluded.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, n: usize) -> (Vec<Duration>, Duration) {
    let mut buf = [7u8; MESSAGE];
    let mut out = Vec::with_capacity(n);
    let mut cpu_before = Duration::ZERO;
    for i in 0..WARM_UP + n {
        if i == WARM_UP {
            cpu_before = cpu_time();
        }
        let start = Instant::now();
        s.write_all(&buf).await.expect("write");
        s.flush().await.expect("flush");
        s.read_exact(&mut buf).await.expect("read");
        if i >= WARM_UP {
            out.push(start.elapsed());
        }
    }
    (out, cpu_time().saturating_sub(cpu_before))
}

/// Serves one connection of `kind` on a runtime of its own; returns the address to dial.
fn serve(kind: Kind) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        on_one_worker(async move {
            match kind {
                Kind::Tcp | Kind::Tls => {
                    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(l.local_addr().unwrap()).unwrap();
                    let (tcp, _) = l.accept().await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    if let Kind::Tls = kind {
                        let acceptor =
                            tokio_rustls::TlsAcceptor::from(Arc::new(identity().server_config().unwrap()));
                        echo(acceptor.accept(tcp).await.unwrap()).await;
                    } else {
                        echo(tcp).await;
                    }
                }
                Kind::Quic => {
                    // The hub's own endpoint, as an edge meets it before authenticating (the
                    // control stream only, a 64 KiB window: room enough for 14-byte messages).
                    let perf = Performance::default();
                    let id = identity();
                    let sock =
                        udp::bound_std_socket(([127, 0, 0, 1], 0).into(), perf.udp_socket_buffer()).unwrap();
                    tx.send(sock.local_addr().unwrap()).unwrap();
                    let tls = Arc::new(id.server_config().unwrap());
                    let ep = listen::quic_endpoint(&id, tls, &perf, &Limits::default(), sock).unwrap();
                    let conn = ep.accept().await.unwrap().await.unwrap();
                    let (send, mut recv) = conn.accept_bi().await.unwrap();
                    // The dialer opens its control stream with the preamble.
                    let mut preamble = [0u8; quic::PREAMBLE.len()];
                    recv.read_exact(&mut preamble).await.unwrap();
                    echo(tokio::io::join(recv, send)).await;
                    ep.wait_idle().await;
                }
            }
        });
    });
    (rx.recv().unwrap(), handle)
}

/// One measured connection of `kind`: its round trips, and this process's CPU time meanwhile.
fn measure(kind: Kind, n: usize) -> (Vec<Duration>, Duration) {
    let (addr, server) = serve(kind);
    let (rtts, cpu) = on_one_worker(async move {
        let (perf, host) = (Performance::default(), addr.ip().to_string());
        match kind {
            Kind::Tcp => {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                ping(tcp, n).await
            }
            // The edge's own dialers.
            Kind::Tls => {
                let (s, _) = dial::tls(
                    &host,
                    addr.port(),
                    Trust::DangerouslyAnyCertificate,
                    SERVER,
                    &perf,
                )
                .await
                .unwrap();
                ping(s, n).await
            }
            Kind::Quic => {
                let transport = quic::transport_config(&perf, HEARTBEAT, 0);
                let endpoint_config = quic::dial_endpoint_config(&perf);
                let d = dial::quic(
                    &host,
                    addr.port(),
                    Trust::DangerouslyAnyCertificate,
                    transport,
                    endpoint_config,
                    SERVER,
                    &perf,
                )
                .await
                .unwrap();
                let out = ping(tokio::io::join(d.control.recv, d.control.send), n).await;
                d.conn.close(0u32.into(), b"done");
                d.endpoint.wait_idle().await;
                out
            }
        }
    });
    server.join().unwrap();
    (rtts, cpu)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    // The arguments after the program's own name (argv[0]).
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map_or(ROUND_TRIPS, |a| a.parse().expect("round trips per round"));
    let rounds: usize = args.next().map_or(ROUNDS, |a| a.parse().expect("rounds"));
    let only = args.next();
    let kinds: Vec<Kind> = [Kind::Tcp, Kind::Tls, Kind::Quic]
        .into_iter()
        .filter(|k| only.as_deref().is_none_or(|o| o == k.name()))
        .collect();
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    println!("{n} round trips of {MESSAGE} B per transport and round (after {WARM_UP} unmeasured)");
    for round in 1..=rounds {
        for (k, kind) in kinds.iter().enumerate() {
            let (mut rtts, cpu) = measure(*kind, n);
            rtts.sort();
            let p50 = percentile(&rtts, 0.5);
            p50s[k].push(p50);
            println!(
                "round {round} {:<4} p50 {:>6.1} µs  p99 {:>7.1} µs  CPU {:>5.1} µs per round trip (both ends)",
                kind.name(),
                p50,
                percentile(&rtts, 0.99),
                cpu.as_secs_f64() * 1e6 / n as f64,
            );
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = p50s.iter_mut().map(median).collect();
    let list: Vec<String> = kinds
        .iter()
        .zip(&medians)
        .map(|(k, m)| format!("{} {m:.1} µs", k.name()))
        .collect();
    println!("median p50: {}", list.join(", "));
    if let [_, tls, quic] = medians[..] {
        println!("quic / tls = {:.2}", quic / tls);
    }
}
