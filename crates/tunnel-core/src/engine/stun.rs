//! The edge's public address, asked of STUN servers (RFC 8489 Binding over UDP) every
//! `stunIntervalSecs`. Messages are built and parsed by `stun-types`; this module only sends,
//! waits and validates (the answer must come from the server asked, be a success response to
//! our transaction, and carry an XOR-MAPPED-ADDRESS or MAPPED-ADDRESS). Timeouts, garbage and
//! unreachable servers are counted, never fatal: the tunnel does not depend on STUN.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use stun_types::attribute::{AttributeType, MappedSocketAddr, XorMappedAddress};
use stun_types::message::{Message, MessageClass, MessageWriteVec, BINDING};
use stun_types::prelude::*;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::event;
use crate::events::EventSink;

/// RFC 8489 §6.2.1: retransmit after 500 ms, doubling, and give up after the last wait. Three
/// sends (0, 0.5, 1.5 s) and a final 2 s wait: 3.5 s per server — the RFC's full schedule
/// (39.5 s) is for connectivity checks, not a periodic address probe.
const RETRANSMIT_WAITS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];
/// The largest STUN message we read; a Binding response is well under 100 bytes, and RFC 8489
/// keeps messages within the path MTU (≤ 1500 bytes on Ethernet).
const MAX_MESSAGE: usize = 1500;
/// MAPPED-ADDRESS's attribute type (RFC 8489 §14.1).
const MAPPED_ADDRESS: u16 = 0x0001;
/// The standard STUN port (RFC 8489 §18.6), for servers given without one.
pub const DEFAULT_PORT: u16 = 3478;
/// Asked when `stunServers` is not given: public servers run by large operators for exactly
/// this (WebRTC clients use them), on two independent networks so one outage does not blind
/// the edge. Listed in the README.
pub const DEFAULT_SERVERS: [&str; 3] = [
    "stun.l.google.com:19302",
    "stun1.l.google.com:19302",
    "stun.cloudflare.com:3478",
];

/// What the STUN task has seen, for status.
#[derive(Default)]
struct State {
    public: Option<SocketAddr>,
    /// The socket the answer was for (the public address's local side).
    local: Option<SocketAddr>,
    server: Option<String>,
    at_ms: Option<u64>,
    requests: u64,
    responses: u64,
    timeouts: u64,
    bad_responses: u64,
    errors: u64,
    last_error: Option<String>,
}

/// The edge's STUN task and what it found.
pub struct Stun {
    state: Arc<Mutex<State>>,
    settings: Mutex<Option<(u64, Vec<String>)>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Default for Stun {
    fn default() -> Self {
        Stun {
            state: Arc::new(Mutex::new(State::default())),
            settings: Mutex::new(None),
            task: Mutex::new(None),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Stun {
    /// Starts, restarts or stops the task for `interval_secs` (0 or none: off) and `servers`.
    /// `found` is called with each newly learned public address.
    pub fn apply(
        &self,
        interval_secs: Option<u64>,
        servers: Vec<String>,
        events: EventSink,
        found: Arc<dyn Fn(SocketAddr) + Send + Sync>,
    ) {
        let wanted = interval_secs
            .filter(|s| *s > 0 && !servers.is_empty())
            .map(|s| (s, servers));
        let mut settings = lock(&self.settings);
        if *settings == wanted {
            return;
        }
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        *settings = wanted.clone();
        let Some((secs, servers)) = wanted else {
            return;
        };
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(secs));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                round(&servers, &state, &events, &found).await;
            }
        });
        *lock(&self.task) = Some(task);
    }

    /// Stops asking.
    pub fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        *lock(&self.settings) = None;
    }

    /// The public address last learned, if any.
    pub fn public_address(&self) -> Option<SocketAddr> {
        lock(&self.state).public
    }

    pub fn status(&self) -> Value {
        let s = lock(&self.state);
        let settings = lock(&self.settings);
        json!({
            "enabled": settings.is_some(),
            "intervalSecs": settings.as_ref().map(|s| s.0),
            "servers": settings.as_ref().map(|s| s.1.clone()).unwrap_or_default(),
            "publicAddress": s.public.map(|a| a.to_string()),
            "localAddress": s.local.map(|a| a.to_string()),
            "server": s.server,
            "at": s.at_ms,
            "requests": s.requests,
            "responses": s.responses,
            "timeouts": s.timeouts,
            "badResponses": s.bad_responses,
            "errors": s.errors,
            "lastError": s.last_error,
        })
    }
}

/// One round: the servers in order until one answers.
async fn round(
    servers: &[String],
    state: &Arc<Mutex<State>>,
    events: &EventSink,
    found: &Arc<dyn Fn(SocketAddr) + Send + Sync>,
) {
    for server in servers {
        match ask(server, state).await {
            Ok((public, local)) => {
                let previous = {
                    let mut s = lock(state);
                    s.responses += 1;
                    s.server = Some(server.clone());
                    s.at_ms = Some(now_ms());
                    s.local = Some(local);
                    s.public.replace(public)
                };
                if previous != Some(public) {
                    events.as_ref()(event!("publicAddressChanged", {
                        "address": public.to_string(),
                        "previous": previous.map(|p| p.to_string()),
                        "server": server,
                    }));
                    found(public);
                }
                return;
            }
            Err(Failure::Timeout) => lock(state).timeouts += 1,
            Err(Failure::Other(e)) => {
                let mut s = lock(state);
                s.errors += 1;
                s.last_error = Some(format!("{server}: {e}"));
            }
        }
    }
}

enum Failure {
    Timeout,
    Other(String),
}

/// `host:port` (or `host`, `[v6]:port`) → a socket address.
async fn resolve(server: &str) -> Result<SocketAddr, String> {
    let with_port = if server.parse::<SocketAddr>().is_ok()
        || server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(']') && !h.contains(':') && p.parse::<u16>().is_ok())
    {
        server.to_string()
    } else if server.starts_with('[') || !server.contains(':') {
        format!("{server}:{DEFAULT_PORT}")
    } else {
        // A bare IPv6 address.
        format!("[{server}]:{DEFAULT_PORT}")
    };
    let mut found = tokio::net::lookup_host(with_port.as_str())
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?;
    found.next().ok_or_else(|| "resolves to no address".to_string())
}

/// One Binding transaction with `server`: (public address, local address of the socket).
async fn ask(server: &str, state: &Arc<Mutex<State>>) -> Result<(SocketAddr, SocketAddr), Failure> {
    let addr = resolve(server).await.map_err(Failure::Other)?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind)
        .await
        .map_err(|e| Failure::Other(format!("bind: {e}")))?;
    sock.connect(addr)
        .await
        .map_err(|e| Failure::Other(format!("connect {addr}: {e}")))?;
    let local = sock
        .local_addr()
        .map_err(|e| Failure::Other(format!("local address: {e}")))?;
    let request = Message::builder_request(BINDING, MessageWriteVec::new());
    let transaction = request.transaction_id();
    let request = request.finish();
    let mut buf = vec![0u8; MAX_MESSAGE];
    for wait in RETRANSMIT_WAITS {
        lock(state).requests += 1;
        // A send error (e.g. ICMP unreachable from an earlier send) is the server's problem.
        if let Err(e) = sock.send(&request).await {
            return Err(Failure::Other(format!("send to {addr}: {e}")));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break, // retransmit
                Ok(Err(e)) => return Err(Failure::Other(format!("receive from {addr}: {e}"))),
                Ok(Ok(n)) => n,
            };
            match mapped_address(&buf[..n], transaction) {
                Some(public) => return Ok((public, local)),
                // Not an answer to our request: counted, and we keep waiting for one.
                None => lock(state).bad_responses += 1,
            }
        }
    }
    Err(Failure::Timeout)
}

/// The mapped address in a Binding success response to `transaction`; `None` for anything else.
fn mapped_address(data: &[u8], transaction: stun_types::message::TransactionId) -> Option<SocketAddr> {
    let msg = Message::from_bytes(data).ok()?;
    if msg.transaction_id() != transaction
        || !msg.has_class(MessageClass::Success)
        || !msg.has_method(BINDING)
    {
        return None;
    }
    if let Ok(x) = msg.attribute::<XorMappedAddress>() {
        return Some(x.addr(transaction));
    }
    // RFC 3489 servers answer with MAPPED-ADDRESS (0x0001) only.
    let raw = msg.raw_attribute(AttributeType::new(MAPPED_ADDRESS))?;
    MappedSocketAddr::from_raw(&raw).ok().map(|m| m.addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Binding success response (to a request of its own) naming `addr`.
    fn response(addr: SocketAddr) -> Vec<u8> {
        let request = Message::builder_request(BINDING, MessageWriteVec::new()).finish();
        let request = Message::from_bytes(&request).unwrap();
        let mut msg = Message::builder_success(&request, MessageWriteVec::new());
        msg.add_attribute(&XorMappedAddress::new(addr, request.transaction_id()))
            .unwrap();
        msg.finish()
    }

    #[test]
    fn reads_the_mapped_address_of_its_own_transaction_only() {
        let addr: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let reply = response(addr);
        let msg = Message::from_bytes(&reply).unwrap();
        let tid = msg.transaction_id();
        assert_eq!(mapped_address(&reply, tid), Some(addr));
        assert_eq!(mapped_address(&reply, 12345.into()), None);
        assert_eq!(mapped_address(b"garbage", tid), None);
        // Every truncation of a valid reply is refused, never a panic.
        for cut in 0..reply.len() {
            let _ = mapped_address(&reply[..cut], tid);
        }
    }

    #[test]
    fn seeded_mutations_of_a_reply_never_panic() {
        let addr: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let reply = response(addr);
        let tid = Message::from_bytes(&reply).unwrap().transaction_id();
        let mut seed: u64 = 0x5eed_57a1;
        for _ in 0..20_000 {
            let mut m = reply.clone();
            for _ in 0..1 + (seed % 4) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (seed >> 33) as usize % m.len();
                m[i] = (seed >> 17) as u8;
            }
            let _ = mapped_address(&m, tid);
        }
    }
}
