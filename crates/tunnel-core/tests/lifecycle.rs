//! A tunnel's life follows its credential (issue 24): the hub tracks every tunnel of an edge,
//! draining ones included, and removing the edge or changing its secret ends all of them; a
//! draining tunnel takes no new UDP flows; and an edge whose hub drains (GOAWAY) dials a new
//! tunnel at once and moves new clients to it while the old one finishes its streams.

mod support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tunnel_core::engine::edge::Edge;
use tunnel_core::engine::hub::Hub;

#[test]
fn child_entry() {
    child_entry_body();
}

/// A UDP echo target; counts the datagrams it received.
async fn udp_echo() -> (SocketAddr, Arc<AtomicU64>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    (addr, seen)
}

fn edges(secret: &str, tcp_port: u16, udp_port: u16, echo: SocketAddr, udp: SocketAddr) -> Value {
    json!([{ "id": EDGE_ID, "secret": secret, "bindAddress": "127.0.0.1",
        "tcp": [{ "port": tcp_port, "targetHost": "127.0.0.1", "targetPort": echo.port(), "proxyProtocol": "none" }],
        "udp": [{ "port": udp_port, "targetHost": "127.0.0.1", "targetPort": udp.port(), "proxyProtocol": "none" }] }])
}

async fn hub_at(port: u16, edges: &Value, limits: Value) -> Hub {
    let opts = json!({ "tunnelPort": port, "bindHost": "127.0.0.1", "certPem": CERT, "keyPem": KEY, "limits": limits });
    let hub = Hub::start(serde_json::from_value(opts).unwrap(), Arc::new(|_| {}))
        .await
        .unwrap();
    hub.set_edges(serde_json::from_value(edges.clone()).unwrap())
        .unwrap();
    hub
}

fn dialing_edge(port: u16, fingerprint: &str, mode: &str) -> Edge {
    start_edge(json!({
        "hubHost": "127.0.0.1", "hubPort": port, "edgeId": EDGE_ID, "secret": SECRET,
        "hubFingerprint": fingerprint, "transportMode": mode,
        "reconnect": { "baseMs": 100, "capMs": 1000 },
    }))
}

/// This edge's tunnels at the hub: (active, draining).
fn tunnels(hub: &Hub) -> (usize, usize) {
    let st = hub.status();
    let Some(e) = st["edges"].as_array().and_then(|a| a.first()).cloned() else {
        return (0, 0);
    };
    let list = e["tunnels"].as_array().cloned().unwrap_or_default();
    let draining = list.iter().filter(|t| t["state"] == "draining").count();
    (list.len() - draining, draining)
}

async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One echoed line on a connection kept open.
async fn echo_on(s: &mut TcpStream, payload: &[u8]) -> Result<(), String> {
    s.write_all(payload).await.map_err(|e| e.to_string())?;
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
        .await
        .map_err(|_| "no echo within 2 s".to_string())?
        .map_err(|e| e.to_string())?;
    (got == payload)
        .then_some(())
        .ok_or_else(|| "echo differs".into())
}

/// A UDP exchange through `port`: the reply, if one comes within `wait`.
async fn udp_exchange(port: u16, wait: Duration) -> Option<Vec<u8>> {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(b"flow?", ("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, c.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// An edge holds a stream on a tunnel that drains (a second process with its id took over);
/// then its credential is revoked (`secret`: rotated; else removed). Within 5 s the draining
/// tunnel's stream ends, every tunnel of the edge is gone, and no UDP flow opens.
async fn revocation_ends_a_draining_tunnel(mode: &str, rotate: bool) {
    let (hub_port, tcp_port, udp_port) = (free_port(), free_port(), free_port());
    let echo = echo_server().await;
    let (udp_target, udp_seen) = udp_echo().await;
    let spec = edges(SECRET, tcp_port, udp_port, echo, udp_target);
    let hub = hub_at(hub_port, &spec, json!({})).await;
    let fp = hub.fingerprint().to_string();
    let first = dialing_edge(hub_port, &fp, mode);
    wait_for_echo(tcp_port, Duration::from_secs(10)).await;
    let mut held = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    echo_on(&mut held, b"before").await.unwrap();
    assert!(
        udp_exchange(udp_port, Duration::from_secs(2)).await.is_some(),
        "{mode}: UDP works at first"
    );

    // A second process with the same id: its tunnel takes over (its ports are the first
    // edge's, so it binds none of them), and the first edge's tunnel drains.
    let second = dialing_edge(hub_port, &fp, mode);
    until(
        "a second tunnel, the first draining",
        Duration::from_secs(10),
        || tunnels(&hub) == (1, 1),
    )
    .await;
    echo_on(&mut held, b"draining")
        .await
        .expect("a draining tunnel carries its open streams");
    // The first edge's clients still reach its draining tunnel: a new UDP flow is refused there.
    let seen_before = udp_seen.load(Ordering::Relaxed);
    assert_eq!(
        udp_exchange(udp_port, Duration::from_millis(700)).await,
        None,
        "{mode}: a flow opened on a draining tunnel"
    );
    assert_eq!(udp_seen.load(Ordering::Relaxed), seen_before);

    let revoked = Instant::now();
    let update = if rotate {
        edges("a-rotated-secret-of-length", tcp_port, udp_port, echo, udp_target)
    } else {
        json!([])
    };
    hub.set_edges(serde_json::from_value(update).unwrap()).unwrap();
    // The held stream ends (reset or closed) within 5 s.
    let ended = loop {
        let mut b = [0u8; 16];
        match tokio::time::timeout(Duration::from_millis(200), held.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break revoked.elapsed(),
            _ => {}
        }
        let _ = held.write_all(b"x").await;
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "{mode}: the draining tunnel's stream outlived the revocation"
        );
    };
    until("every tunnel of the edge gone", Duration::from_secs(5), || {
        tunnels(&hub) == (0, 0)
    })
    .await;
    eprintln!(
        "{mode}, {}: the draining tunnel's stream ended {ended:?} after the revocation",
        if rotate { "rotated" } else { "removed" }
    );
    // No flow opens through the edge any more (its redials fail to authenticate).
    let seen_after = udp_seen.load(Ordering::Relaxed);
    for _ in 0..3 {
        assert_eq!(udp_exchange(udp_port, Duration::from_millis(300)).await, None);
    }
    assert_eq!(
        udp_seen.load(Ordering::Relaxed),
        seen_after,
        "{mode}: a datagram reached the target after the revocation"
    );
    assert_eq!(tunnels(&hub), (0, 0));
    first.stop(Duration::from_millis(100)).await;
    second.stop(Duration::from_millis(100)).await;
    hub.stop(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_ends_every_tunnel_of_the_edge_tls() {
    revocation_ends_a_draining_tunnel("tcpTls", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_edge_loses_every_tunnel_quic() {
    revocation_ends_a_draining_tunnel("quic", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_ends_every_tunnel_of_the_edge_quic() {
    revocation_ends_a_draining_tunnel("quic", true).await;
}

/// A draining tunnel is closed at `limits.drainTimeoutMs`, whatever it still carries, and
/// per-edge limits count every tunnel of the edge: a second tunnel gets no allowance of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_is_limited_in_time_and_limits_count_all_tunnels() {
    let (hub_port, tcp_port, udp_port, other_port) = (free_port(), free_port(), free_port(), free_port());
    let echo = echo_server().await;
    let (udp_target, _) = udp_echo().await;
    let spec = edges(SECRET, tcp_port, udp_port, echo, udp_target);
    let hub = hub_at(
        hub_port,
        &spec,
        json!({ "drainTimeoutMs": 1500, "maxStreamsPerEdge": 2 }),
    )
    .await;
    let fp = hub.fingerprint().to_string();
    let first = dialing_edge(hub_port, &fp, "tcpTls");
    wait_for_echo(tcp_port, Duration::from_secs(10)).await;
    // The probes' streams are gone (at the edge and the hub) before the allowance is used up.
    until("no stream open", Duration::from_secs(5), || {
        hub.status()["edges"][0]["allTunnels"]["openStreams"] == 0 && first.status()["openStreams"] == 0
    })
    .await;
    let mut a = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    echo_on(&mut a, b"a").await.unwrap();
    echo_on(&mut b, b"b").await.unwrap();
    // A second process with the edge's id, serving the TCP service on another port (its own
    // configuration moves it): its tunnel takes over, the first one drains.
    let second = start_edge(json!({
        "hubHost": "127.0.0.1", "hubPort": hub_port, "edgeId": EDGE_ID, "secret": SECRET,
        "hubFingerprint": fp, "transportMode": "tcpTls", "reconnect": { "baseMs": 100, "capMs": 1000 },
        "localServices": [{ "id": format!("tcp/{tcp_port}"), "edgePort": other_port, "bindAddress": "127.0.0.1" }],
    }));
    until("the first tunnel draining", Duration::from_secs(10), || {
        tunnels(&hub) == (1, 1)
    })
    .await;
    let draining_since = Instant::now();
    let a_ended = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(10), a.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "the stream outlived the drain limit: {r:?}"
        );
        draining_since.elapsed()
    });
    // The draining tunnel's two streams are the edge's whole allowance: the new tunnel's first
    // client is refused, and carried once one of them ended.
    until(
        "the second edge serving its port",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", other_port)).is_ok(),
    )
    .await;
    assert!(
        echo_once(other_port, b"over the limit").await.is_err(),
        "a stream beyond maxStreamsPerEdge, on the newer tunnel"
    );
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while echo_once(other_port, b"within the limit").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the allowance freed by a closed stream never reached the newer tunnel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The drain limit closed the old tunnel and its last stream.
    let after = a_ended.await.unwrap();
    assert!(
        after >= Duration::from_millis(1000) && after <= Duration::from_secs(5),
        "closed after {after:?}, limit 1.5 s"
    );
    until("the drained tunnel gone", Duration::from_secs(3), || {
        tunnels(&hub) == (1, 0)
    })
    .await;
    first.stop(Duration::from_millis(100)).await;
    second.stop(Duration::from_millis(100)).await;
    hub.stop(Duration::from_millis(100)).await;
}

/// A TCP forwarder whose upstream can be switched: the address an edge dials while hubs change
/// behind it (a rolling restart behind one name).
async fn forwarder(to: SocketAddr) -> (u16, Arc<Mutex<SocketAddr>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let target = Arc::new(Mutex::new(to));
    let t = target.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let up = *t.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut u) = TcpStream::connect(up).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut u).await;
                }
            });
        }
    });
    (port, target)
}

/// The hub the edge is on drains (stop with a grace period): the edge dials a new tunnel at
/// once (here to a second hub behind the same address) and new clients go through it, while
/// the stream open on the old tunnel goes on until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_whose_hub_drains_moves_new_clients_to_a_new_tunnel() {
    let (tcp_port, udp_port) = (free_port(), free_port());
    let echo = echo_server().await;
    let (udp_target, _) = udp_echo().await;
    let spec = edges(SECRET, tcp_port, udp_port, echo, udp_target);
    let (old_hub, new_hub) = (
        hub_at(0, &spec, json!({})).await,
        hub_at(0, &spec, json!({})).await,
    );
    let (front, upstream) = forwarder(SocketAddr::from(([127, 0, 0, 1], old_hub.port()))).await;
    let edge = dialing_edge(front, old_hub.fingerprint(), "tcpTls");
    wait_for_echo(tcp_port, Duration::from_secs(10)).await;
    let mut held = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    echo_on(&mut held, b"on the old tunnel").await.unwrap();
    // The old hub goes away with a long grace; the address now leads to the new hub.
    *upstream.lock().unwrap() = SocketAddr::from(([127, 0, 0, 1], new_hub.port()));
    let stopping = {
        let old = old_hub.clone();
        tokio::spawn(async move { old.stop(Duration::from_secs(30)).await })
    };
    let drained_at = Instant::now();
    // New clients are carried by the new hub long before the old stream ends (until the edge
    // hears the GOAWAY, the old hub may still carry one).
    let carried_by_new_hub = || new_hub.status()["edges"][0]["streamsTotal"].as_u64() >= Some(1);
    let moved = loop {
        let echoed =
            tokio::time::timeout(Duration::from_millis(500), echo_once(tcp_port, b"new client")).await;
        if matches!(echoed, Ok(Ok(_))) && carried_by_new_hub() {
            break drained_at.elapsed();
        }
        assert!(
            drained_at.elapsed() < Duration::from_secs(5),
            "new clients were refused while the old tunnel drained: {}",
            edge.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("new clients carried by the new hub {moved:?} after the old one drained");
    echo_on(&mut held, b"still on the old tunnel")
        .await
        .expect("the draining tunnel's stream goes on");
    assert!(!stopping.is_finished(), "the old hub waits for its open stream");
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the old hub stops once its last stream ended")
        .unwrap();
    edge.stop(Duration::from_millis(100)).await;
    new_hub.stop(Duration::from_millis(100)).await;
}

/// Two processes with one edge id: the newer tunnel takes over, and the edge whose tunnel was
/// replaced says so (`tunnelReplaced`) and steps back for the backoff's cap instead of dialing
/// again at once — they do not take the tunnel from each other back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_whose_tunnel_another_process_took_steps_back() {
    const CAP_MS: u64 = 3000;
    let (hub_port, tcp_port, udp_port) = (free_port(), free_port(), free_port());
    let echo = echo_server().await;
    let (udp_target, _) = udp_echo().await;
    let spec = edges(SECRET, tcp_port, udp_port, echo, udp_target);
    let connected = Arc::new(AtomicU64::new(0));
    let opts = json!({ "tunnelPort": hub_port, "bindHost": "127.0.0.1", "certPem": CERT, "keyPem": KEY });
    let hub = Hub::start(serde_json::from_value(opts).unwrap(), {
        let connected = connected.clone();
        Arc::new(move |v: Value| {
            if v["kind"] == "edgeConnected" {
                connected.fetch_add(1, Ordering::Relaxed);
            }
        })
    })
    .await
    .unwrap();
    hub.set_edges(serde_json::from_value(spec).unwrap()).unwrap();
    let edge_with_events = |events: Arc<Mutex<Vec<Value>>>| {
        Edge::start(
            serde_json::from_value(json!({
                "hubHost": "127.0.0.1", "hubPort": hub_port, "edgeId": EDGE_ID, "secret": SECRET,
                "hubFingerprint": hub.fingerprint(), "transportMode": "tcpTls",
                "reconnect": { "baseMs": 100, "capMs": CAP_MS },
            }))
            .unwrap(),
            Arc::new(move |v: Value| events.lock().unwrap().push(v)),
        )
        .unwrap()
    };
    let first_events = Arc::new(Mutex::new(Vec::new()));
    let first = edge_with_events(first_events.clone());
    until("the first edge connected", Duration::from_secs(10), || {
        connected.load(Ordering::Relaxed) == 1
    })
    .await;
    let second = edge_with_events(Arc::new(Mutex::new(Vec::new())));
    until("the second edge connected", Duration::from_secs(10), || {
        connected.load(Ordering::Relaxed) == 2
    })
    .await;
    let took_over = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !first_events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "tunnelReplaced")
    {
        let kinds: Vec<Value> = first_events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["kind"].clone())
            .collect();
        assert!(
            Instant::now() < deadline,
            "the first edge was not told it was replaced: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Well before the cap, nobody took the tunnel back.
    tokio::time::sleep(Duration::from_millis(CAP_MS / 2)).await;
    assert_eq!(
        connected.load(Ordering::Relaxed),
        2,
        "the first edge dialed again at once"
    );
    assert_eq!(tunnels(&hub).0, 1);
    // After the cap it may try again (and the two then alternate at that pace, not faster).
    until(
        "the first edge back after the cap",
        Duration::from_millis(CAP_MS * 3),
        || connected.load(Ordering::Relaxed) >= 3,
    )
    .await;
    assert!(
        took_over.elapsed() >= Duration::from_millis(CAP_MS / 2),
        "back after {:?}",
        took_over.elapsed()
    );
    first.stop(Duration::from_millis(100)).await;
    second.stop(Duration::from_millis(100)).await;
    hub.stop(Duration::from_millis(100)).await;
}
