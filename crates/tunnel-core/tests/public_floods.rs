//! What public UDP clients can make an edge and its hub hold (issue 24): large datagrams that
//! must take QUIC's reliable path while the hub is frozen, and a host spraying source ports at
//! one UDP service. Hub and edge run in child processes, so their memory is their own.

mod support;

use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::net::UdpSocket;

#[test]
fn child_entry() {
    child_entry_body();
}

/// One flood at a time: they measure memory.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Issue 24's bounds.
const MAX_EDGE_GROWTH_KIB: u64 = 32 * 1024;
const MAX_HUB_GROWTH_KIB: u64 = 32 * 1024;

/// One UDP exchange through `port` from a socket on `from`: the reply, if it came within
/// `wait`.
async fn exchange(sock: &UdpSocket, port: u16, payload: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.send_to(payload, ("127.0.0.1", port)).await.ok()?;
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) if &buf[..n] == payload => return Some(buf[..n].to_vec()),
            // A late reply to an earlier probe: keep waiting for this one.
            Ok(Ok(_)) => continue,
            _ => return None,
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// 60,000-byte datagrams at 150/s take QUIC's reliable path (they do not fit a QUIC datagram);
/// with the hub frozen for 8 s nothing drains that path, and the edge must drop rather than
/// queue them: it grows by at most 32 MiB, and the tunnel carries a new echo once the hub runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_datagrams_to_a_frozen_hub_leave_the_edge_bounded() {
    let _serial = SERIAL.lock().await;
    let (edge_port, udp_port) = (free_port(), free_port());
    let (hub, info) = Daemon::spawn("hub", json!({ "edgePort": edge_port, "udpPort": udp_port }));
    let (mut edge, _) = Daemon::spawn("edge", edge_options(&info, "quic"));
    wait_for_echo(edge_port, Duration::from_secs(10)).await;
    assert_eq!(edge.status()["transport"], "quic");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(
        exchange(&client, udp_port, &[1u8; 60_000], Duration::from_secs(3))
            .await
            .is_some(),
        "a large datagram crosses first"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = edge.rss_kib();
    let mut peak = base;

    signal(hub.pid(), libc::SIGSTOP);
    let frozen = Instant::now();
    // Ten clients, 15 datagrams a second each.
    let clients: Vec<UdpSocket> = futures_of(10).await;
    let datagram = vec![0x60u8; 60_000];
    let mut sent = 0u32;
    while frozen.elapsed() < Duration::from_secs(8) {
        for c in &clients {
            let _ = c.send_to(&datagram, ("127.0.0.1", udp_port)).await;
            sent += 1;
        }
        peak = peak.max(edge.rss_kib());
        tokio::time::sleep(Duration::from_micros(66_666)).await;
    }
    peak = peak.max(edge.rss_kib());
    let status = edge.status();
    signal(hub.pid(), libc::SIGCONT);
    let growth = peak.saturating_sub(base);
    eprintln!(
        "frozen hub: {sent} datagrams of 60,000 bytes in 8 s; edge RSS {base} -> peak {peak} KiB (+{growth} KiB); edge udp {}",
        status["udp"]
    );
    assert!(growth <= MAX_EDGE_GROWTH_KIB, "the edge grew by {growth} KiB");
    // The tunnel survived: a new connection echoes soon after the hub runs again.
    let thawed = Instant::now();
    wait_for_echo(edge_port, Duration::from_secs(10)).await;
    eprintln!("new echo {:?} after SIGCONT", thawed.elapsed());
    assert_eq!(edge.status()["tunnels"], 1, "the same tunnel carried it");
    drop(hub);
}

async fn futures_of(n: usize) -> Vec<UdpSocket> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    v
}

/// 20,000 one-datagram "clients" from one address (a source port each) at one UDP service: the
/// edge keeps that source to its share of flows, the hub grows by at most 32 MiB, and a client
/// from another address at another UDP service of the same edge gets every reply meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_spraying_source_ports_cannot_lock_out_the_other_clients() {
    let _serial = SERIAL.lock().await;
    let (edge_port, sprayed, other) = (free_port(), free_port(), free_port());
    let (mut hub, info) = Daemon::spawn(
        "hub",
        json!({ "edgePort": edge_port, "udpPorts": [sprayed, other] }),
    );
    let (mut edge, _) = Daemon::spawn("edge", edge_options(&info, "quicWithFallback"));
    wait_for_echo(edge_port, Duration::from_secs(10)).await;
    let probe = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    assert!(exchange(&probe, other, b"hello", Duration::from_secs(3))
        .await
        .is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = hub.rss_kib();
    let peak = Arc::new(AtomicU64::new(base));

    // The other client: one exchange every 50 ms for as long as the spray runs.
    let done = Arc::new(AtomicBool::new(false));
    let missed = Arc::new(Mutex::new(Vec::new()));
    let prober = tokio::spawn({
        let (done, missed) = (done.clone(), missed.clone());
        async move {
            let mut n = 0u32;
            while !done.load(Ordering::Acquire) {
                n += 1;
                let payload = format!("probe {n}");
                if exchange(&probe, other, payload.as_bytes(), Duration::from_millis(500))
                    .await
                    .is_none()
                {
                    missed.lock().unwrap().push(n);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        }
    });
    let hub_pid = hub.pid();
    let sampler = tokio::spawn({
        let (done, peak) = (done.clone(), peak.clone());
        async move {
            while !done.load(Ordering::Acquire) {
                peak.fetch_max(rss_kib(hub_pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // The spray: 20,000 sockets on 127.0.0.1, one datagram each, ~4,000 a second.
    let t0 = Instant::now();
    for i in 0..20_000u32 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let _ = s.send_to(&i.to_be_bytes(), ("127.0.0.1", sprayed)).await;
        drop(s);
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let spray = t0.elapsed();
    // A moment for the last ones to be handled, still probing.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    done.store(true, Ordering::Release);
    let probes = prober.await.unwrap();
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed).max(hub.rss_kib());
    let growth = peak.saturating_sub(base);
    let (edge_status, hub_status) = (edge.status(), hub.status());
    eprintln!(
        "spray of 20,000 clients in {spray:?}: hub RSS {base} -> peak {peak} KiB (+{growth} KiB); edge udp {}; hub udp {}; {probes} probes, missed {:?}",
        edge_status["udp"],
        hub_status["edges"][0]["udp"],
        missed.lock().unwrap()
    );
    assert!(
        edge_status["udp"]["flowsRefused"].as_u64() >= Some(18_000),
        "the source was held to its share"
    );
    assert!(growth <= MAX_HUB_GROWTH_KIB, "the hub grew by {growth} KiB");
    assert!(
        missed.lock().unwrap().is_empty(),
        "the other client missed replies"
    );
}
