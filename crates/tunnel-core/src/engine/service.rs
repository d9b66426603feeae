//! Named services at the edge: what the hub's CONFIG says a port serves (its service id and
//! number, bind address, limits), and the limits enforced per client connection — at most
//! `maxConnections` at once (beyond it a new client is refused at once, the others keep
//! working) and no connection idle for longer than `idleTimeoutSecs`.

use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use crate::event;
use crate::events::EventSink;
use crate::wire::open::MIN_BUFFER;
use crate::wire::proxy_protocol::Received;

/// A listener moved to a new bind address: how often and how far apart the new bind is tried
/// while the old socket closes (its task is dropped a moment after the abort; 50 × 20 ms = 1 s
/// is far more than that takes, and bounds a port that some other process took meanwhile).
pub const REBIND_ATTEMPTS: usize = 50;
pub const REBIND_PAUSE: Duration = Duration::from_millis(20);

/// How often an idle-limited connection's idleness is looked at. A quarter second keeps the
/// close within a quarter second of the limit (the 2-s limit must close within 2–3 s)
/// for one `getsockopt` per connection per tick.
const IDLE_CHECK_EVERY: Duration = Duration::from_millis(250);

/// At most one `serviceLimitReached` event per service this often: a flood of refused clients
/// must not become a flood of events.
const LIMIT_EVENT_EVERY: Duration = Duration::from_secs(5);

/// One service an edge serves, from the hub's CONFIG.
#[derive(Debug)]
pub struct Service {
    /// The number OPEN records carry (see `config::service_number`).
    pub sid: u32,
    pub id: String,
    pub name: Option<String>,
    pub port: u16,
    pub bind: Option<IpAddr>,
    pub max_connections: Option<u32>,
    pub idle_timeout: Option<Duration>,
    /// `bufferBytes`: the cap each of this service's connections carries in its OPEN record.
    pub buffer: Option<u32>,
    /// The hub enforces `buffer` on QUIC streams with WINDOW credit (its CONFIG lists the
    /// `quicStreamCredit` feature), so this edge marks capped QUIC streams for it.
    pub quic_credit: bool,
    /// Sources whose connections must begin with a PROXY header (the previous hop of a chain).
    pub trust_proxy_from: Vec<ipnet::IpNet>,
    /// Shared with the service's next settings when a CONFIG changes them, so connections
    /// admitted before give their places back to the same count.
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    active: AtomicU32,
    total: AtomicU64,
    refused: AtomicU64,
    idle_closed: AtomicU64,
    proxy_refused: AtomicU64,
    /// Bytes of closed connections: from the clients (to the hub) and to them.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    last_limit_event: Mutex<Option<Instant>>,
}

impl Service {
    /// One entry of CONFIG's `services`; `None` if it is not a usable TCP/UDP service record.
    pub fn from_config(v: &Value, default_bind: Option<IpAddr>) -> Option<Service> {
        let port = u16::try_from(v["port"].as_u64()?).ok()?;
        Some(Service {
            sid: u32::try_from(v["sid"].as_u64()?).ok()?,
            id: v["id"].as_str()?.to_string(),
            name: v["name"].as_str().map(str::to_string),
            port,
            bind: v["bindAddress"]
                .as_str()
                .and_then(|b| b.parse().ok())
                .or(default_bind),
            max_connections: v["maxConnections"].as_u64().and_then(|n| u32::try_from(n).ok()),
            idle_timeout: v["idleTimeoutSecs"].as_u64().map(Duration::from_secs),
            // Never below what an OPEN record may carry (the hub validates it; this keeps a
            // record this edge writes well-formed whatever it was sent).
            buffer: v["bufferBytes"]
                .as_u64()
                .map(|b| u32::try_from(b).unwrap_or(u32::MAX).max(MIN_BUFFER)),
            quic_credit: false,
            trust_proxy_from: v["trustProxyFrom"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str()?.parse().ok())
                        .map(unmapped_net)
                        .collect()
                })
                .unwrap_or_default(),
            counters: Arc::new(Counters::default()),
        })
    }

    /// Takes over `old`'s counters (the same service with new settings).
    pub fn share_counters(&mut self, old: &Service) {
        self.counters = old.counters.clone();
    }

    /// Whether `other` is the same service with the same settings (then a live listener and
    /// its counters stay as they are across a CONFIG).
    pub fn same_as(&self, other: &Service) -> bool {
        (
            self.sid,
            &self.id,
            &self.name,
            self.port,
            self.bind,
            self.max_connections,
            self.idle_timeout,
            self.buffer,
            self.quic_credit,
            &self.trust_proxy_from,
        ) == (
            other.sid,
            &other.id,
            &other.name,
            other.port,
            other.bind,
            other.max_connections,
            other.idle_timeout,
            other.buffer,
            other.quic_credit,
            &other.trust_proxy_from,
        )
    }

    /// A place for one more client connection, or `None` at `maxConnections` (counted, and
    /// reported now and then).
    pub fn admit(self: &Arc<Self>, events: &EventSink) -> Option<Admitted> {
        let admitted = self
            .counters
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                match self.max_connections {
                    Some(max) if n >= max => None,
                    _ => Some(n + 1),
                }
            });
        if admitted.is_err() {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let mut last = self
                .counters
                .last_limit_event
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() >= LIMIT_EVENT_EVERY) {
                *last = Some(Instant::now());
                events.as_ref()(event!("serviceLimitReached", {
                    "serviceId": self.id, "serviceName": self.name, "port": self.port,
                    "maxConnections": self.max_connections,
                    "refused": self.counters.refused.load(Ordering::Relaxed)
                }));
            }
            return None;
        }
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        Some(Admitted(self.clone()))
    }

    /// A closed connection's bytes: `to_client` came from the hub, `from_client` went to it.
    pub fn count_bytes(&self, to_client: u64, from_client: u64) {
        self.counters.bytes_out.fetch_add(to_client, Ordering::Relaxed);
        self.counters.bytes_in.fetch_add(from_client, Ordering::Relaxed);
    }

    /// A client (a UDP flow) was closed for idleness.
    pub fn idle_closed(&self) {
        self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether connections from `ip` must begin with a PROXY header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = crate::wire::proxy_protocol::unmap(std::net::SocketAddr::new(ip, 0)).ip();
        self.trust_proxy_from.iter().any(|net| net.contains(&ip))
    }

    /// A trusted source's connection without a valid PROXY header was refused.
    pub fn proxy_header_refused(&self) {
        self.counters.proxy_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Status: the settings and the counters.
    pub fn status(&self, protocol: &str) -> Value {
        json!({
            "id": self.id, "name": self.name, "protocol": protocol, "port": self.port,
            "bindAddress": self.bind.map(|b| b.to_string()),
            "maxConnections": self.max_connections,
            "idleTimeoutSecs": self.idle_timeout.map(|d| d.as_secs()),
            "bufferBytes": self.buffer,
            "active": self.counters.active.load(Ordering::Relaxed),
            "total": self.counters.total.load(Ordering::Relaxed),
            "refused": self.counters.refused.load(Ordering::Relaxed),
            "idleClosed": self.counters.idle_closed.load(Ordering::Relaxed),
            "trustProxyFrom": self.trust_proxy_from.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "proxyHeaderRefused": self.counters.proxy_refused.load(Ordering::Relaxed),
            "bytesFromClients": self.counters.bytes_in.load(Ordering::Relaxed),
            "bytesToClients": self.counters.bytes_out.load(Ordering::Relaxed),
        })
    }
}

/// One admitted client connection of a service; dropping it gives the place back.
#[derive(Debug)]
pub struct Admitted(Arc<Service>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admitted {
    /// This client (a UDP flow) was closed for idleness: counted for its service.
    pub fn idle_closed(&self) {
        self.0.idle_closed();
    }

    /// A second descriptor of the client's socket for the idle check, when the service has an
    /// idle timeout (take it before the socket moves into the tunnel's pumps).
    pub fn idle_watch(&self, sock: &TcpStream) -> Option<socket2::Socket> {
        self.0.idle_timeout?;
        socket2::SockRef::from(sock).try_clone().ok()
    }
}

/// How long a trusted previous hop has to deliver its PROXY header. It writes the header in one
/// piece before anything else (our hubs do), so it is there with the connection; 5 s covers a
/// slow path and bounds what a stalled trusted peer holds.
const PROXY_HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// How often a partly received header is looked at again (peeking leaves the socket readable,
/// so this is a poll; a header normally arrives whole on the first look).
const PROXY_HEADER_POLL: Duration = Duration::from_millis(10);

/// Reads the PROXY header a trusted previous hop sends first: peeked until complete (bounded by
/// `MAX_RECEIVED_HEADER` and the deadline), then exactly its bytes consumed, so the payload that
/// follows stays in the socket for the tunnel.
pub async fn read_proxy_header(sock: &TcpStream) -> Result<Received, String> {
    use crate::wire::proxy_protocol::{parse_received, MAX_RECEIVED_HEADER};
    let read = async {
        let mut buf = vec![0u8; MAX_RECEIVED_HEADER];
        loop {
            sock.readable().await.map_err(|e| e.to_string())?;
            let n = sock.peek(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before a PROXY header".to_string());
            }
            if let Some(received) = parse_received(&buf[..n])? {
                let mut taken = 0;
                while taken < received.len {
                    sock.readable().await.map_err(|e| e.to_string())?;
                    match sock.try_read(&mut buf[..received.len - taken]) {
                        Ok(0) => return Err("closed inside the PROXY header".to_string()),
                        Ok(k) => taken += k,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                return Ok(received);
            }
            tokio::time::sleep(PROXY_HEADER_POLL).await;
        }
    };
    tokio::time::timeout(PROXY_HEADER_DEADLINE, read)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no complete PROXY header within {PROXY_HEADER_DEADLINE:?}"
            ))
        })
}

/// Spawns `carry` (the connection's whole life through the tunnel), holding the connection's
/// place in its service until it ends. With an idle watch, the client's socket is closed once
/// no byte has moved either way for the service's idle timeout. Idleness is the kernel's own
/// record (TCP_INFO's time since data was last sent and received), so the data path needs no
/// bookkeeping. Closing resets the client (linger 0 on the watch's descriptor of the same
/// socket) and drops the connection's carrying future, which resets its tunnel stream.
///
/// The task is sized for what it runs: a connection without an idle limit is a task of
/// `carry` and the place alone, and with one `carry` is boxed, because an async function
/// that takes a future and pins it holds it twice in its own state (~0.7 KiB per idle
/// connection, measured).
pub fn spawn_carry<F>(admitted: Admitted, watch: Option<socket2::Socket>, carry: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match (admitted.0.idle_timeout, watch) {
        (Some(limit), Some(dup)) => {
            tokio::spawn(carry_watching_idle(admitted, limit, dup, Box::pin(carry)));
        }
        _ => {
            tokio::spawn(async move {
                carry.await;
                drop(admitted);
            });
        }
    }
}

async fn carry_watching_idle(
    admitted: Admitted,
    limit: Duration,
    dup: socket2::Socket,
    mut carry: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let mut tick = tokio::time::interval(IDLE_CHECK_EVERY);
    loop {
        tokio::select! {
            () = &mut carry => break,
            _ = tick.tick() => {
                if idle_for(&dup).is_some_and(|idle| idle >= limit) {
                    admitted.0.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    // The client is reset (linger 0 when the last descriptor closes, just
                    // below), and dropping `carry` ends the tunnel stream too (the stream's
                    // guard resets it): the place is free at once, whatever the far side does.
                    let _ = dup.set_linger(Some(Duration::ZERO));
                    let _ = dup.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
        }
    }
    // Leaving drops, in order: the carrying future (its stream and socket), the watch
    // descriptor (the last one: linger 0 turns the close into a reset), then the place.
    drop(carry);
    drop(dup);
    drop(admitted);
}

/// How long ago data last moved on this TCP socket, either way (TCP_INFO).
fn idle_for(sock: &socket2::Socket) -> Option<Duration> {
    // SAFETY: tcp_info is plain data, valid zeroed or as the kernel fills it (a shorter one
    // from an older kernel leaves the rest zero).
    let info: libc::tcp_info = unsafe { super::sockopt(sock, libc::IPPROTO_TCP, libc::TCP_INFO) }?;
    let ms = info.tcpi_last_data_recv.min(info.tcpi_last_data_sent);
    Some(Duration::from_millis(u64::from(ms)))
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it means
/// (`10.0.0.0/8`): peers are compared unmapped (`trusts`), so a mapped entry would never match.
fn unmapped_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(ipnet::IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn trusts_ipv4_mapped_entries_as_the_ipv4_networks_they_mean() {
        let service = Service::from_config(
            &json!({ "sid": 1, "id": "s", "port": 80, "trustProxyFrom": ["::ffff:10.0.0.0/104", "::ffff:192.0.2.7/128", "fd00::/8"] }),
            None,
        )
        .unwrap();
        assert_eq!(
            service
                .trust_proxy_from
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]
        );
        assert!(service.trusts("10.1.2.3".parse().unwrap()));
        assert!(service.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(service.trusts("192.0.2.7".parse().unwrap()));
        assert!(!service.trusts("192.0.2.8".parse().unwrap()));
        assert!(service.trusts("fd00::1".parse().unwrap()));
    }

    /// The kernel's idle clock: grows while nothing moves, starts again when a byte does.
    #[tokio::test]
    async fn idle_time_is_the_kernels_time_since_data_moved() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let dup = socket2::SockRef::from(&server).try_clone().unwrap();
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let idle = idle_for(&dup).unwrap();
        assert!(idle >= Duration::from_millis(500), "{idle:?}");
        server.write_all(b"y").await.unwrap();
        client.read_exact(&mut b).await.unwrap();
        assert!(idle_for(&dup).unwrap() < Duration::from_millis(300));
    }
}
