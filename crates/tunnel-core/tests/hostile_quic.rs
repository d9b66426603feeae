//! Hostile QUIC Initials, validly protected (quic-forge, on rustls' Initial keys), thrown at a
//! hub in a child process while an edge is connected to it, and at an edge in a child process
//! from a fake hub. Both processes must stay alive; afterwards the tunnel carries a byte-exact
//! echo (issue 12). quinn-proto 0.9.2 aborted on the first two cases of the corpus.

mod support;

use quic_forge::{corpus, parse_long_header, server_corpus, LongBody};
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn child_entry() {
    child_entry_body();
}

/// Seeds: fixed, so a failure names the case that caused it and reproduces.
const CLIENT_SEED: u64 = 0x0051_c0de;
const SERVER_SEED: u64 = 0x5e2f_e2ed;
/// Hostile Initials sent at the hub.
const CLIENT_CASES: usize = 6000;
/// Hostile answers the fake hub sends the edge: the whole corpus, as for the hub. It answers
/// each Initial the edge sends with the next few cases (the first one the edge takes as fatal
/// ends that attempt; the silently dropped kinds — bad tags, foreign connection ids, forged
/// Retries — let the next ones through). The edge redials after each failed attempt; a short
/// handshake deadline bounds the attempts whose answers were all dropped, so the corpus goes out
/// in CI time. `FAKE_HUB_FOR` is only the bound on a slow machine: the test requires every case
/// sent.
const SERVER_CASES: usize = 5000;
const ANSWERS_PER_INITIAL: usize = 12;
const EDGE_HANDSHAKE_DEADLINE_MS: u64 = 250;
const FAKE_HUB_FOR: Duration = Duration::from_secs(60);
/// Attempts the edge must have made for the test to mean something (every attempt is a fresh
/// connection, so the cases meet connections in every early state).
const MIN_ATTEMPTS: usize = 200;
/// The hub's Retry tokens live 15 s (quinn's default); a fresh one well before that.
const TOKEN_REFRESH: Duration = Duration::from_secs(5);
/// Datagrams sent before the sender pauses to read replies: keeps the hub's socket buffer from
/// dropping what the test means to deliver.
const BURST: usize = 16;

/// A hub configured to let every Initial reach the parser: no failure budget, no per-source
/// cap. The parser, not the admission policy, is what this test exercises.
fn permissive_hub(edge_port: u16) -> serde_json::Value {
    json!({ "edgePort": edge_port, "limits": {
        "authFailureBurst": 1_000_000, "authFailuresPerMinute": 1_000_000,
        "maxPendingHandshakesPerSource": 256, "handshakeTimeoutMs": 3000 } })
}

/// A Retry token for `sock`'s address: the hub validates addresses before it spends anything.
fn retry_token(sock: &UdpSocket, hub: SocketAddr, n: u32) -> Vec<u8> {
    let dcid = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, (n >> 8) as u8, n as u8];
    let ping = [0x01];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        sock.send_to(&quic_forge::client_initial(&dcid, &[0xbb; 8], &[], 0, &ping), hub)
            .unwrap();
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            let Ok((len, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Some(h) = parse_long_header(&buf[..len]) {
                if let LongBody::Retry { token, .. } = h.body {
                    return token.to_vec();
                }
            }
        }
    }
    panic!("the hub sent no Retry to a fresh address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_initials_leave_the_hub_serving_its_edge() {
    let edge_port = free_port();
    let (mut hub, info) = Daemon::spawn("hub", permissive_hub(edge_port));
    let edge = start_edge(edge_options(&info, "quic"));
    wait_for_echo(edge_port, Duration::from_secs(10)).await;
    let hub_addr: SocketAddr = format!("127.0.0.1:{}", info["tunnelPort"]).parse().unwrap();

    let cases = corpus(CLIENT_SEED, CLIENT_CASES);
    let sock = UdpSocket::bind("127.0.0.2:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut token = retry_token(&sock, hub_addr, 0);
    let mut token_at = Instant::now();
    let (mut replies, mut retries, mut reaching) = (0usize, 0usize, 0usize);
    let mut buf = [0u8; 2048];
    let started = Instant::now();
    for (i, case) in cases.iter().enumerate() {
        if token_at.elapsed() > TOKEN_REFRESH {
            token = retry_token(&sock, hub_addr, i as u32);
            token_at = Instant::now();
        }
        if case.wrap.reaches_frames() {
            reaching += 1;
        }
        sock.send_to(&case.client_datagram_with_token(&token), hub_addr)
            .unwrap();
        if i % BURST == BURST - 1 {
            while let Ok((len, _)) = sock.recv_from(&mut buf) {
                replies += 1;
                if matches!(
                    parse_long_header(&buf[..len]).map(|h| h.body),
                    Some(LongBody::Retry { .. })
                ) {
                    retries += 1;
                }
            }
            assert!(
                hub.alive(),
                "the hub died after case {} ({}): {:?}",
                i,
                case.name,
                hub.exit_status()
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    while sock.recv_from(&mut buf).is_ok() {
        replies += 1;
    }
    eprintln!(
        "{} hostile Initials ({reaching} reaching the frame parser) in {:?}: {replies} replies ({retries} Retries)",
        cases.len(),
        started.elapsed()
    );
    assert!(cases.len() >= 5000);
    assert!(hub.alive(), "the hub died: {:?}", hub.exit_status());
    // The corpus reached the parser: the hub answered most of it, and with something other
    // than "validate your address first".
    assert!(
        replies - retries > reaching / 2,
        "too few answers: the Initials did not reach the parser"
    );
    // The edge's tunnel carried on.
    let t = echo_once(edge_port, b"after the storm, byte for byte")
        .await
        .expect("echo through the edge");
    eprintln!("echo through the edge afterwards: {t:?}");
    assert!(hub.alive());
    edge.stop(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_server_initials_leave_the_edge_alive_and_it_reaches_the_real_hub() {
    let (hub_port, edge_port) = (free_port(), free_port());
    let fingerprint = tunnel_core::transport::tls::Identity::from_pem(CERT, KEY)
        .unwrap()
        .fingerprint;
    let fake = UdpSocket::bind(("127.0.0.1", hub_port)).unwrap();
    fake.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let (mut edge, _) = Daemon::spawn(
        "edge",
        json!({
            "hubHost": "127.0.0.1", "hubPort": hub_port, "edgeId": EDGE_ID, "secret": SECRET,
            "hubFingerprint": fingerprint, "transportMode": "quic",
            // Redial at once: every hostile answer ends an attempt, and the test wants many.
            "reconnect": { "baseMs": 1, "capMs": 20 },
            "limits": { "handshakeTimeoutMs": EDGE_HANDSHAKE_DEADLINE_MS },
        }),
    );
    let cases = server_corpus(SERVER_SEED, SERVER_CASES);
    let (mut sent, mut initials, mut attempts) = (0usize, 0usize, 0usize);
    let mut last_dcid = Vec::new();
    let mut buf = [0u8; 2048];
    let until = Instant::now() + FAKE_HUB_FOR;
    while sent < cases.len() && Instant::now() < until {
        let Ok((len, from)) = fake.recv_from(&mut buf) else {
            continue;
        };
        let Some(h) = parse_long_header(&buf[..len]) else {
            continue;
        };
        if !matches!(h.body, LongBody::Initial { .. }) {
            continue;
        }
        initials += 1;
        if h.dcid != last_dcid.as_slice() {
            attempts += 1;
            last_dcid = h.dcid.to_vec();
        }
        for _ in 0..ANSWERS_PER_INITIAL.min(cases.len() - sent) {
            let case = &cases[sent];
            fake.send_to(&case.server_datagram(h.dcid, h.scid, sent as u32), from)
                .unwrap();
            sent += 1;
        }
        if initials % 20 == 0 {
            assert!(
                edge.alive(),
                "the edge died after server case {}: {:?}",
                cases[sent - 1].name,
                edge.exit_status()
            );
        }
    }
    let parsed = cases[..sent].iter().filter(|c| c.wrap.reaches_frames()).count();
    eprintln!(
        "fake hub: {initials} client Initials over {attempts} connection attempts, answered with {sent} hostile server Initials ({parsed} with valid protection)"
    );
    assert_eq!(
        sent, SERVER_CASES,
        "the edge stopped dialing before the corpus was sent"
    );
    assert!(attempts >= MIN_ATTEMPTS, "the edge dialed only {attempts} times");
    assert!(edge.alive(), "the edge died: {:?}", edge.exit_status());
    // The real hub takes the fake's place; the edge must find it.
    drop(fake);
    let (mut hub, _) = Daemon::spawn("hub", json!({ "tunnelPort": hub_port, "edgePort": edge_port }));
    wait_for_echo(edge_port, Duration::from_secs(15)).await;
    echo_once(edge_port, b"the real hub, byte for byte")
        .await
        .expect("echo through the edge");
    assert!(edge.alive() && hub.alive());
}
