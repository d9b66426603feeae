//! The hub dials an edge that listens for it (issue 13, "either side dials"): traffic flows as
//! in the other direction over each transport mode; a killed and restarted edge is redialed
//! within the backoff cap; a wrong pinned fingerprint and a wrong secret are refused on both
//! sides with a clear reason. The edge runs in a child process where it is killed, in this
//! process where its events are read.

mod support;

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tunnel_core::engine::edge::Edge;
use tunnel_core::engine::hub::Hub;

#[test]
fn child_entry() {
    child_entry_body();
}

const EDGE_CERT: &str = include_str!("../src/testdata/edge-cert.pem");
const EDGE_KEY: &str = include_str!("../src/testdata/edge-key.pem");
/// The hub's redial backoff in these tests: the cap bounds how soon a restarted edge is back.
const RECONNECT_CAP_MS: u64 = 1000;

fn edge_fingerprint() -> String {
    tunnel_core::transport::tls::Identity::from_pem(EDGE_CERT, EDGE_KEY)
        .expect("the test identity")
        .fingerprint
}

fn listening_edge_options(listen_port: u16, secret: &str) -> Value {
    json!({
        "edgeId": EDGE_ID, "secret": secret,
        "listenForHub": { "port": listen_port, "bindHost": "127.0.0.1", "certPem": EDGE_CERT, "keyPem": EDGE_KEY },
    })
}

type Events = Arc<Mutex<Vec<Value>>>;

fn recorder() -> (Events, tunnel_core::events::EventSink) {
    let seen: Events = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let seen = seen.clone();
        Arc::new(move |v: Value| seen.lock().unwrap().push(v))
    };
    (seen, sink)
}

/// A hub in this process that dials the edge at `listen_port`, serving `edge_port` → an echo.
async fn dialing_hub(
    listen_port: u16,
    edge_port: u16,
    mode: &str,
    fingerprint: &str,
    secret: &str,
) -> (Hub, Events) {
    let echo = echo_server().await;
    let (events, sink) = recorder();
    let opts = json!({ "tunnelPort": 0, "bindHost": "127.0.0.1", "certPem": CERT, "keyPem": KEY });
    let hub = Hub::start(serde_json::from_value(opts).unwrap(), sink)
        .await
        .unwrap();
    let edges = json!([{ "id": EDGE_ID, "secret": secret, "bindAddress": "127.0.0.1",
        "tcp": [{ "port": edge_port, "targetHost": "127.0.0.1", "targetPort": echo.port(), "proxyProtocol": "none" }],
        "dial": { "host": "127.0.0.1", "port": listen_port, "fingerprint": fingerprint, "transportMode": mode,
                  "reconnect": { "baseMs": 100, "capMs": RECONNECT_CAP_MS } } }]);
    hub.set_edges(serde_json::from_value(edges).unwrap()).unwrap();
    (hub, events)
}

async fn dials_and_redials(mode: &str, expect_transport: &str) {
    let (listen_port, edge_port) = (free_port(), free_port());
    let (hub, _) = dialing_hub(listen_port, edge_port, mode, &edge_fingerprint(), SECRET).await;
    let opts = listening_edge_options(listen_port, SECRET);
    let (mut edge, _) = Daemon::spawn("edge", opts.clone());
    wait_for_echo(edge_port, Duration::from_secs(15)).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    echo_once(edge_port, &payload)
        .await
        .expect("byte-exact echo through the dialed edge");
    let st = hub.status();
    assert_eq!(st["edges"][0]["transport"], expect_transport, "{mode}: {st}");
    assert_eq!(st["dialing"][0]["state"], "connected", "{st}");
    assert_eq!(edge.status()["state"], "connected");

    // Kill the edge and start it again: the hub redials within its backoff cap.
    edge.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_edge, _) = Daemon::spawn("edge", opts);
    let restarted = Instant::now();
    wait_for_echo(edge_port, Duration::from_secs(20)).await;
    let back = restarted.elapsed();
    eprintln!("{mode}: a restarted edge carried traffic again after {back:?}");
    // The cap, plus one failed attempt's own time (a refused TLS connect or, with QUIC, the
    // 3 s QUIC try before the fallback), plus the edge's start.
    let bound =
        Duration::from_millis(RECONNECT_CAP_MS) + Duration::from_secs(if mode == "tcpTls" { 2 } else { 5 });
    assert!(back <= bound, "{mode}: back only after {back:?}");
    hub.stop(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_dials_edge_over_tls() {
    dials_and_redials("tcpTls", "tcpTls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_dials_edge_over_quic() {
    dials_and_redials("quic", "quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_dials_edge_with_quic_and_tls_fallback() {
    dials_and_redials("quicWithFallback", "quic").await;
}

fn wait_for_event(events: &Events, kind: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = events.lock().unwrap().iter().find(|e| e["kind"] == kind) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event within {limit:?}: {:?}",
            events.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn refused(fingerprint: &str, hub_secret: &str) -> (Value, Value) {
    let (listen_port, edge_port) = (free_port(), free_port());
    let (edge_events, sink) = recorder();
    let edge = Edge::start(
        serde_json::from_value(listening_edge_options(listen_port, SECRET)).unwrap(),
        sink,
    )
    .unwrap();
    let (hub, hub_events) = dialing_hub(listen_port, edge_port, "tcpTls", fingerprint, hub_secret).await;
    let at_hub = tokio::task::spawn_blocking(move || {
        wait_for_event(&hub_events, "edgeDialFailed", Duration::from_secs(10))
    });
    let at_edge = tokio::task::spawn_blocking(move || {
        wait_for_event(&edge_events, "authFailed", Duration::from_secs(10))
    });
    let (at_hub, at_edge) = (at_hub.await.unwrap(), at_edge.await.unwrap());
    assert_eq!(edge.status()["state"], "listening");
    assert!(hub.status()["edges"].as_array().unwrap().is_empty());
    hub.stop(Duration::from_millis(100)).await;
    edge.stop(Duration::from_millis(100)).await;
    (at_hub, at_edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pinned_fingerprint_is_refused_on_both_sides() {
    let wrong = "ab".repeat(32);
    let (at_hub, at_edge) = refused(&wrong, SECRET).await;
    eprintln!("hub: {at_hub}\nedge: {at_edge}");
    assert_eq!(at_hub["code"], "ERR_FINGERPRINT_MISMATCH");
    assert!(at_hub["reason"].as_str().unwrap().contains(&wrong), "{at_hub}");
    assert!(
        at_hub["reason"].as_str().unwrap().contains(&edge_fingerprint()),
        "{at_hub}"
    );
    assert_eq!(at_edge["code"], "ERR_TLS");
    assert!(
        at_edge["reason"]
            .as_str()
            .unwrap()
            .contains("wrong pinned fingerprint"),
        "{at_edge}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_on_both_sides() {
    let (at_hub, at_edge) = refused(&edge_fingerprint(), "not-the-secret-at-all").await;
    eprintln!("hub: {at_hub}\nedge: {at_edge}");
    assert_eq!(at_hub["code"], "ERR_AUTH_FAILED");
    assert!(
        at_hub["reason"]
            .as_str()
            .unwrap()
            .contains("unknown edge id or wrong secret"),
        "{at_hub}"
    );
    assert_eq!(at_edge["code"], "ERR_AUTH_FAILED");
    assert!(
        at_edge["reason"]
            .as_str()
            .unwrap()
            .contains("did not prove the shared secret"),
        "{at_edge}"
    );
}
