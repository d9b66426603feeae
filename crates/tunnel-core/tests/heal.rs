//! A hub killed and started again 2 s later: every edge carries traffic again within 2 s of the
//! restart (issue 15). Over QUIC that needs the restarted hub to answer the old connection with a
//! stateless reset the edge accepts — its reset and connection-id keys come from the persisted
//! identity — or the edge would wait out its idle timeout (15 s by default).

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn child_entry() {
    child_entry_body();
}

/// How long the hub stays down, and the bound on healing after it is back.
const DOWN_FOR: Duration = Duration::from_secs(2);
const HEAL_WITHIN: Duration = Duration::from_secs(2);

async fn heals_after_a_hub_restart(mode: &str) {
    let (hub_port, edge_port) = (free_port(), free_port());
    let arg = json!({ "tunnelPort": hub_port, "edgePort": edge_port });
    let (mut hub, info) = Daemon::spawn("hub", arg.clone());
    let mut opts = edge_options(&info, mode);
    opts["reconnect"] = json!({ "baseMs": 100, "capMs": 1000 });
    let edge = start_edge(opts);
    wait_for_echo(edge_port, Duration::from_secs(10)).await;
    let transport = edge.status()["transport"].clone();
    hub.kill();
    tokio::time::sleep(DOWN_FOR).await;
    let (hub, _) = Daemon::spawn("hub", arg);
    let restarted = Instant::now();
    // Clients keep trying, as they would: the first tries may fail while the edge notices.
    let healed = loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), echo_once(edge_port, b"are you back?")).await
        {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "{mode}: no echo 20 s after the hub restarted: {}",
            edge.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("{mode} (tunnel was {transport}): carried traffic again {healed:?} after the hub restarted");
    assert!(healed <= HEAL_WITHIN, "{mode}: healed only after {healed:?}");
    drop(hub);
    edge.stop(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_edge_heals_within_2s_of_a_hub_restart() {
    heals_after_a_hub_restart("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_with_fallback_edge_heals_within_2s_of_a_hub_restart() {
    heals_after_a_hub_restart("quicWithFallback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_edge_heals_within_2s_of_a_hub_restart() {
    heals_after_a_hub_restart("tcpTls").await;
}
