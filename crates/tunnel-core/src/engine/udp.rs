//! UDP flows. The edge keeps one flow per (port, client address) with idle expiry and a cap;
//! the hub keeps one connected upstream socket per flow. A flow is announced reliably
//! (FLOW_OPEN, in order with the tunnel's control messages) and its datagrams then travel on
//! the transport's fastest path: QUIC datagrams, or DATAGRAM frames on the TLS tunnel.

use bytes::{BufMut, Bytes, BytesMut};

use crate::engine::tune_buffers;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

use crate::config::PortSpec;
use crate::engine::service::{Admitted, Service, REBIND_ATTEMPTS, REBIND_PAUSE};
use crate::engine::udp_io;
use crate::engine::Slot;
use crate::error::{Error, Result};
use crate::event;
use crate::events::EventSink;
use crate::supervise::AbortOnDrop;
use crate::transport::quic::DATAGRAM_HEADER;
use crate::wire::open::{OpenRecord, KIND_UDP};
use crate::wire::proxy_protocol::{self, ProxyVersion, Transport, UdpProxyMode};

/// Largest UDP payload (IPv4 limit 65,507; IPv6 jumbograms aside). Receive buffers are this big
/// so nothing is ever clipped.
pub const MAX_DATAGRAM: usize = 65_535;

/// Datagrams queued at the hub for one flow: while its upstream socket is being set up (DNS,
/// bind), and while the flow's task sends what it took (the tunnel's receive loop otherwise
/// sends a queue itself at [`FLUSH_AT`]). 256 holds a burst of the largest quinn receive batch
/// (64 packets) several times over; beyond it (or [`QUEUE_BYTES_PER_FLOW`]) a datagram is
/// dropped and counted, as a congested router would.
const QUEUE_PER_FLOW: usize = 256;
/// Bytes queued at the hub for one flow: the flow socket's own send buffer ([`FLOW_BUFFER`]),
/// so a flow of 64 KiB datagrams cannot hold 256 × 64 KiB while its upstream is set up.
const QUEUE_BYTES_PER_FLOW: usize = FLOW_BUFFER;
/// Queued datagrams at which the tunnel's receive loop sends them itself instead of leaving
/// them to the flow's (or port's) task: the most one GSO call carries (MAX_SEGMENTS; fewer
/// when larger than 1,015 bytes, where MAX_BYTES is reached first), so waiting for more would
/// not make the sends fewer, only the queue longer.
const FLUSH_AT: usize = udp_io::MAX_SEGMENTS;

/// Datagrams waiting to leave one socket (a hub flow's upstream, an edge's public port), and
/// the right to send them. They are sent by the owner's task when it runs (what gathered while
/// it waited goes out as GSO runs), or by the tunnel's receive loop itself once [`FLUSH_AT`]
/// have gathered, since it may deliver far more before it yields.
struct Outbox<T, S> {
    items: VecDeque<T>,
    bytes: usize,
    /// The sender's state (the hub's `Upstream`, an edge port's GSO state). Whoever sends takes
    /// it and puts it back once `items` is empty (None meanwhile, and before the socket is
    /// ready), so only one party sends at a time and datagrams keep their order.
    sender: Option<S>,
    /// Wakes the owner's task when `items` stops being empty.
    wake: Arc<tokio::sync::Notify>,
}

/// What [`Outbox::push`] did with a datagram.
#[derive(Debug, PartialEq)]
enum Pushed {
    Queued,
    /// Over the outbox's bounds: dropped (the caller counts it).
    Dropped,
    /// FLUSH_AT wait and nobody is sending: the caller should send them now, with [`Outbox::turn`].
    SendNow,
}

impl<T, S> Outbox<T, S> {
    fn new(items: VecDeque<T>, bytes: usize, sender: Option<S>, wake: Arc<tokio::sync::Notify>) -> Self {
        Outbox {
            items,
            bytes,
            sender,
            wake,
        }
    }

    /// Queues `item` (`len` bytes) unless that would pass `max_items` or `max_bytes`.
    fn push(&mut self, item: T, len: usize, max_items: usize, max_bytes: usize) -> Pushed {
        if self.items.len() >= max_items || self.bytes + len > max_bytes {
            return Pushed::Dropped;
        }
        self.bytes += len;
        self.items.push_back(item);
        if self.items.len() == 1 {
            self.wake.notify_one();
        } else if self.items.len() >= FLUSH_AT && self.sender.is_some() {
            return Pushed::SendNow;
        }
        Pushed::Queued
    }

    /// One step of a sender, under the owner's lock: takes the sender's state into `held` (if
    /// not held yet) and swaps the queue into `batch` (empty) for sending outside the lock.
    /// False when there is nothing for this caller to send: the state is in someone else's
    /// hands (or not ready), or the queue is empty and the state has been put back.
    fn turn(&mut self, held: &mut Option<S>, batch: &mut VecDeque<T>) -> bool {
        if held.is_none() {
            *held = self.sender.take();
            if held.is_none() {
                return false;
            }
        }
        if self.items.is_empty() {
            if batch.capacity() > self.items.capacity() {
                // Empty; keeps its allocation for the next burst.
                self.items = std::mem::take(batch);
            }
            self.sender = held.take();
            return false;
        }
        std::mem::swap(&mut self.items, batch);
        self.bytes = 0;
        true
    }
}

/// How often idle flows are looked for. A quarter of the idle timeout is precise enough and
/// cheap (one pass over the table).
fn sweep_every(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Receive/send buffers for sockets that carry bursts of datagrams: the edge's public UDP ports
/// and the QUIC endpoints. 4 MiB holds ~3,000 full-size datagrams, ~50 ms of a 500 Mbit/s flow
/// — enough to ride out a scheduling hiccup without the kernel dropping.
pub const BURST_BUFFER: usize = 4 * 1024 * 1024;
/// Per-flow upstream sockets at the hub see one client's traffic: 1 MiB is plenty.
const FLOW_BUFFER: usize = 1024 * 1024;

/// A UDP socket bound to `addr` with `buffer`-sized buffers (for quinn endpoints:
/// `Performance::udp_socket_buffer`).
pub fn bound_std_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    tune_buffers(&s, buffer);
    Ok(s)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the UDP layer hands things to the current tunnel (whichever transport it is).
pub trait FlowTunnel: Send + Sync {
    /// Announces a flow, reliably and in order.
    fn flow_open(&self, flow: u32, record: &OpenRecord);
    /// Sends a datagram for a flow (fast path; falls back to the reliable path when too large).
    /// `framed` holds [`DATAGRAM_HEADER`] bytes of headroom, then the payload (both ends
    /// receive after the headroom), so QUIC sends it without copying it again.
    fn datagram(&self, flow: u32, framed: BytesMut);
    /// Ends a flow, reliably.
    fn flow_close(&self, flow: u32);
}

/// Counters shared with status.
#[derive(Debug, Default)]
pub struct UdpStats {
    pub flows: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    /// Malformed datagrams, unknown flow ids, full queues, flow cap reached.
    pub dropped: AtomicU64,
    /// New flows refused at a cap (the edge's, a service's, a source's).
    pub flows_refused: AtomicU64,
    /// Runs of datagrams sent with one GSO call each (not in status; tests read it).
    pub gso_sends: AtomicU64,
}

// ---- edge ------------------------------------------------------------------------------------

struct EdgeFlow {
    port: u16,
    /// Where its datagrams come from and replies go: the client, or a trusted previous hop.
    client: SocketAddr,
    /// The first client a trusted hop's PROXY header named (part of the flow's key: a hop
    /// sends many clients' datagrams from one socket).
    named: Option<SocketAddr>,
    /// Whom the flow counts against (`maxUdpFlowsPerSource`): the named client, or the sender.
    source: IpAddr,
    last: Instant,
    /// A reply came back for it: until then it is forgotten after `udpUnansweredIdleMs`.
    answered: bool,
    /// The flow's place in its service's `maxConnections` (dropped with the flow).
    admitted: Option<Admitted>,
    /// The service's idle timeout, or the edge-wide one.
    idle: Duration,
}

/// A flow's key: the public port, the sender, and the first client a trusted hop named.
type FlowKey = (u16, SocketAddr, Option<SocketAddr>);

/// The edge's caps on UDP flows, from the hub's CONFIG (defaults for a hub that sends none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowCaps {
    /// All flows of the edge (`maxUdpFlowsPerEdge`).
    pub per_edge: usize,
    /// Flows of one service (`maxUdpFlowsPerService`): a flood at one service leaves room for
    /// the others.
    pub per_service: usize,
    /// Flows of one source (`maxUdpFlowsPerSource`): an IPv4 address or an IPv6 /64; an IPv6
    /// /48 as a whole gets [`PREFIX48_SHARE`] times as many.
    pub per_source: usize,
    /// A flow the target never answered is forgotten after this (`udpUnansweredIdleMs`).
    pub unanswered_idle: Duration,
    /// Any other flow after this (`udpFlowIdleMs`).
    pub idle: Duration,
}

impl Default for FlowCaps {
    fn default() -> Self {
        let l = crate::config::Limits::default();
        FlowCaps {
            per_edge: l.max_udp_flows_per_edge as usize,
            per_service: l.max_udp_flows_per_service as usize,
            per_source: l.max_udp_flows_per_source as usize,
            unanswered_idle: Duration::from_millis(l.udp_unanswered_idle_ms),
            idle: Duration::from_millis(l.udp_flow_idle_ms),
        }
    }
}

/// An IPv6 /48 may hold this many times one source's flows (see [`crate::auth::PREFIX48_SHARE`]).
const PREFIX48_SHARE: usize = crate::auth::PREFIX48_SHARE as usize;

/// A bound public port: socket, its task, the address asked for (a service whose bind address
/// changes is bound anew), and the replies waiting to leave it.
struct BoundPort {
    sock: Arc<UdpSocket>,
    _task: AbortOnDrop<()>,
    at: Option<IpAddr>,
    out: PortOut,
}

/// Replies from the hub waiting to leave one public port, for any of its clients, with the
/// port's GSO state as the right to send them (sent as GSO runs per client).
type PortOut = Outbox<(SocketAddr, Bytes), udp_io::Gso>;

/// Replies queued at one public port: a burst between the tunnel's receive loop and the port's
/// task, for every client of the port. Beyond this (or [`BURST_BUFFER`] bytes, the socket's own
/// buffer) a reply is dropped and counted.
const OUT_PER_PORT: usize = 1024;

/// Sends `items` (emptying it) from `sock`, per client in GSO runs where there are runs. Never
/// waits: a full socket buffer drops, counted, as a plain UDP socket's sender would see.
fn send_replies(
    items: &mut VecDeque<(SocketAddr, Bytes)>,
    sock: &UdpSocket,
    gso: &mut udp_io::Gso,
    stats: &UdpStats,
) {
    while let Some(&(client, _)) = items.front() {
        let mut next = [udp_io::Outgoing::default(); udp_io::MAX_SEGMENTS];
        let mut n = 0;
        for ((to, d), slot) in items.iter().zip(next.iter_mut()) {
            if *to != client {
                break;
            }
            *slot = udp_io::Outgoing {
                prefix: &[],
                payload: d,
            };
            n += 1;
        }
        let sent = udp_io::send_front(sock, Some(client), &next[..n], gso);
        items.drain(..sent.count);
        count_sent(stats, &sent);
    }
}

#[derive(Default)]
struct EdgeState {
    ports: BTreeMap<u16, BoundPort>,
    /// Per port, its service: the number FLOW_OPEN records carry (0 = route by port), and the
    /// previous hops whose datagrams carry a PROXY v2 header naming the first client (chains).
    services: BTreeMap<u16, Arc<Service>>,
    by_client: HashMap<FlowKey, u32>,
    flows: HashMap<u32, EdgeFlow>,
    /// Live flows per source (IPv4 address, IPv6 /64), per IPv6 /48 and per port (service).
    per_source: HashMap<IpAddr, usize>,
    per_prefix48: HashMap<IpAddr, usize>,
    per_port: HashMap<u16, usize>,
    /// A trusted hop's latest flow per port: where its datagrams without a PROXY header go.
    hop_flows: HashMap<(u16, SocketAddr), u32>,
    next_flow: u32,
    tunnel: Option<Arc<dyn FlowTunnel>>,
}

/// How many of `k`.
fn count<K: std::hash::Hash + Eq>(m: &HashMap<K, usize>, k: K) -> usize {
    m.get(&k).copied().unwrap_or(0)
}

/// One less of `k`; a count that reaches 0 leaves the map (so it holds live keys only).
fn decrement<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) {
    if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

impl EdgeState {
    /// Forgets every flow (and what counts them).
    fn clear_flows(&mut self) {
        self.flows.clear();
        self.by_client.clear();
        self.per_source.clear();
        self.per_prefix48.clear();
        self.per_port.clear();
        self.hop_flows.clear();
    }

    /// Removes one flow and its place in every count.
    fn remove_flow(&mut self, id: u32) -> Option<EdgeFlow> {
        let f = self.flows.remove(&id)?;
        self.by_client.remove(&(f.port, f.client, f.named));
        if self.hop_flows.get(&(f.port, f.client)) == Some(&id) {
            self.hop_flows.remove(&(f.port, f.client));
        }
        decrement(&mut self.per_source, crate::auth::source_key(f.source));
        if let Some(p) = crate::auth::prefix48(f.source) {
            decrement(&mut self.per_prefix48, p);
        }
        decrement(&mut self.per_port, f.port);
        Some(f)
    }

    /// Whether a new flow from `source` on `port` fits every cap.
    fn fits(&self, caps: &FlowCaps, port: u16, source: IpAddr) -> bool {
        self.flows.len() < caps.per_edge
            && count(&self.per_port, port) < caps.per_service
            && count(&self.per_source, crate::auth::source_key(source)) < caps.per_source
            && crate::auth::prefix48(source)
                .is_none_or(|p| count(&self.per_prefix48, p) < caps.per_source.saturating_mul(PREFIX48_SHARE))
    }

    /// Counts a new flow.
    fn count_flow(&mut self, port: u16, source: IpAddr) {
        *self
            .per_source
            .entry(crate::auth::source_key(source))
            .or_default() += 1;
        if let Some(p) = crate::auth::prefix48(source) {
            *self.per_prefix48.entry(p).or_default() += 1;
        }
        *self.per_port.entry(port).or_default() += 1;
    }
}

/// The edge's UDP side: bound ports and their client flows.
pub struct EdgeUdp {
    state: Mutex<EdgeState>,
    events: EventSink,
    pub stats: Arc<UdpStats>,
    idle: Mutex<Duration>,
    /// The shortest idle timeout of any flow (the edge-wide one, a service's, the unanswered
    /// one): what the sweeper's pace follows.
    sweep_idle: Mutex<Duration>,
    caps: Mutex<FlowCaps>,
    sweeper: Mutex<Option<AbortOnDrop<()>>>,
}

impl EdgeUdp {
    pub fn new(events: EventSink) -> Arc<EdgeUdp> {
        Arc::new(EdgeUdp {
            state: Mutex::new(EdgeState::default()),
            events,
            stats: Arc::new(UdpStats::default()),
            idle: Mutex::new(Duration::from_secs(60)),
            sweep_idle: Mutex::new(Duration::from_secs(60)),
            caps: Mutex::new(FlowCaps::default()),
            sweeper: Mutex::new(None),
        })
    }

    /// Which tunnel carries new datagrams (None while disconnected: datagrams are dropped).
    /// Flows belong to a tunnel (the hub keeps them per session), so they start afresh on the
    /// new one: the next datagram of each client opens a new flow there.
    pub fn set_tunnel(&self, t: Option<Arc<dyn FlowTunnel>>) {
        let mut st = lock(&self.state);
        st.clear_flows();
        self.stats.flows.store(0, Ordering::Relaxed);
        st.tunnel = t;
    }

    pub fn ports(&self) -> Vec<u16> {
        lock(&self.state).ports.keys().copied().collect()
    }

    /// The UDP services and their counters (a flow counts as a connection).
    pub fn services_status(&self) -> Vec<serde_json::Value> {
        lock(&self.state)
            .services
            .values()
            .map(|s| s.status("udp"))
            .collect()
    }

    /// Applies the hub's UDP settings and services (one per port). Returns the ports that
    /// failed to bind.
    pub async fn apply(
        self: &Arc<Self>,
        bind_ip: Option<IpAddr>,
        services: BTreeMap<u16, Arc<Service>>,
        caps: FlowCaps,
    ) -> Vec<(u16, Error)> {
        let wanted: BTreeMap<u16, Option<IpAddr>> =
            services.iter().map(|(p, s)| (*p, s.bind.or(bind_ip))).collect();
        // Sweep as often as the shortest idle timeout needs.
        let shortest = services
            .values()
            .filter_map(|s| s.idle_timeout)
            .fold(caps.idle.min(caps.unanswered_idle), Duration::min);
        *lock(&self.idle) = caps.idle;
        *lock(&self.sweep_idle) = shortest;
        lock(&self.state).services = services;
        *lock(&self.caps) = caps;
        {
            let mut sw = lock(&self.sweeper);
            if sw.is_none() {
                let me = Arc::downgrade(self);
                *sw = Some(AbortOnDrop(tokio::spawn(async move {
                    loop {
                        let every = match me.upgrade() {
                            Some(m) => sweep_every(*lock(&m.sweep_idle)),
                            None => return,
                        };
                        tokio::time::sleep(every).await;
                        match me.upgrade() {
                            Some(m) => m.sweep(),
                            None => return,
                        }
                    }
                })));
            }
        }
        let mut moved = std::collections::BTreeSet::new();
        {
            let mut st = lock(&self.state);
            // Ports no longer served, and ports whose service moved to another address.
            let stale: Vec<u16> = st
                .ports
                .iter()
                .filter(|(p, b)| wanted.get(p) != Some(&b.at))
                .map(|(p, _)| *p)
                .collect();
            for p in stale {
                if let Some(BoundPort { at, .. }) = st.ports.remove(&p) {
                    if wanted.contains_key(&p) && wanted.get(&p) != Some(&at) {
                        moved.insert(p);
                    }
                }
                let gone: Vec<u32> = st
                    .flows
                    .iter()
                    .filter(|(_, f)| f.port == p)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    if st.remove_flow(id).is_some() {
                        if let Some(t) = &st.tunnel {
                            t.flow_close(id);
                        }
                    }
                }
            }
            self.stats.flows.store(st.flows.len() as u64, Ordering::Relaxed);
        }
        let mut failed = Vec::new();
        for (port, at) in wanted {
            if lock(&self.state).ports.contains_key(&port) {
                continue;
            }
            // A socket just dropped for a new address is closed once its task is gone, a
            // moment after the abort: retry briefly instead of failing the port.
            let mut bound = bind_udp(at, port);
            for _ in 0..if moved.contains(&port) { REBIND_ATTEMPTS } else { 0 } {
                if bound.is_ok() {
                    break;
                }
                tokio::time::sleep(REBIND_PAUSE).await;
                bound = bind_udp(at, port);
            }
            match bound {
                Ok(sock) => {
                    let sock = Arc::new(sock);
                    let wake = Arc::new(tokio::sync::Notify::new());
                    let me = self.clone();
                    let (s2, w2) = (sock.clone(), wake.clone());
                    let task = AbortOnDrop(tokio::spawn(async move { me.serve_port(port, s2, w2).await }));
                    let out = PortOut::new(VecDeque::new(), 0, Some(udp_io::Gso::detect()), wake);
                    lock(&self.state).ports.insert(
                        port,
                        BoundPort {
                            sock,
                            _task: task,
                            at,
                            out,
                        },
                    );
                }
                Err(e) => failed.push((port, e)),
            }
        }
        failed
    }

    /// Closes every port and forgets every flow.
    pub fn close_all(&self) {
        let mut st = lock(&self.state);
        st.ports.clear();
        st.clear_flows();
        self.stats.flows.store(0, Ordering::Relaxed);
        *lock(&self.sweeper) = None;
    }

    /// A public port's task: client datagrams into the tunnel, and the replies queued for the
    /// port out to their clients.
    async fn serve_port(self: Arc<Self>, port: u16, sock: Arc<UdpSocket>, wake: Arc<tokio::sync::Notify>) {
        // Up to RECV_SLOTS datagrams per system call, from any clients.
        let mut batch = udp_io::RecvBatch::new(MAX_DATAGRAM);
        // Per datagram of the batch: its flow and where its payload starts (after a trusted
        // hop's PROXY header), or None for one that goes nowhere.
        let mut routed: Vec<Option<(u32, usize)>> = Vec::with_capacity(udp_io::RECV_SLOTS);
        loop {
            tokio::select! {
                r = recv_marking_drained(&sock, &mut batch) => {
                    // An error here is an ICMP error some kernels report; the socket is fine.
                    if let Ok(n) = r {
                        self.forward(port, &sock, &batch, n, &mut routed);
                        batch.shed_if_large();
                    }
                }
                _ = wake.notified() => self.send_port_replies(port, &sock),
            }
        }
    }

    /// Sends the replies queued at `port` (its task when woken, or the tunnel's receive loop
    /// once FLUSH_AT have gathered): takes the queue and the GSO state, sends without holding
    /// the state lock (the tunnel keeps delivering meanwhile), and again until nothing is left.
    /// Returns at once if someone else is sending. `sock` is the caller's socket for the port:
    /// a port bound anew meanwhile is not this one's to serve.
    fn send_port_replies(&self, port: u16, sock: &Arc<UdpSocket>) {
        let (mut batch, mut gso) = (VecDeque::new(), None);
        loop {
            {
                let mut st = lock(&self.state);
                let Some(p) = st.ports.get_mut(&port).filter(|p| Arc::ptr_eq(&p.sock, sock)) else {
                    return;
                };
                if !p.out.turn(&mut gso, &mut batch) {
                    return;
                }
            }
            if let Some(g) = &mut gso {
                send_replies(&mut batch, sock, g, &self.stats);
            }
        }
    }

    /// The `n` client datagrams `batch` received, into the tunnel.
    fn forward(
        &self,
        port: u16,
        sock: &Arc<UdpSocket>,
        batch: &udp_io::RecvBatch,
        n: usize,
        routed: &mut Vec<Option<(u32, usize)>>,
    ) {
        self.stats.datagrams_in.fetch_add(n as u64, Ordering::Relaxed);
        let Some(tunnel) = self.client_datagrams(port, sock, batch, routed) else {
            return;
        };
        // The batch's datagrams are copied, each behind the tunnel's headroom, into one buffer
        // that is split into one BytesMut per datagram: one allocation per batch.
        let total: usize = batch
            .datagrams()
            .zip(routed.iter())
            .map(|(d, r)| match (d, r) {
                (Some((_, bytes)), Some((_, start))) => DATAGRAM_HEADER + bytes.len() - start,
                _ => 0,
            })
            .sum();
        let mut block = BytesMut::with_capacity(total);
        for (d, r) in batch.datagrams().zip(routed.iter()) {
            if let (Some((_, bytes)), Some((flow, start))) = (d, r) {
                block.put_bytes(0, DATAGRAM_HEADER);
                block.extend_from_slice(&bytes[*start..]);
                tunnel.datagram(*flow, block.split());
            }
        }
    }

    /// A batch of client datagrams on `port`, routed under one lock: fills `routed` (one entry
    /// per datagram) and returns the tunnel to send them on (None: no tunnel, all dropped).
    fn client_datagrams(
        &self,
        port: u16,
        sock: &Arc<UdpSocket>,
        batch: &udp_io::RecvBatch,
        routed: &mut Vec<Option<(u32, usize)>>,
    ) -> Option<Arc<dyn FlowTunnel>> {
        routed.clear();
        let mut guard = lock(&self.state);
        let st: &mut EdgeState = &mut guard;
        let Some(tunnel) = st.tunnel.clone() else {
            self.stats
                .dropped
                .fetch_add(batch.datagrams().count() as u64, Ordering::Relaxed);
            return None;
        };
        let now = Instant::now();
        for d in batch.datagrams() {
            let r = match d {
                Some((client, payload)) => {
                    self.client_datagram(st, &tunnel, now, port, client, sock, payload)
                }
                None => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            routed.push(r);
        }
        Some(tunnel)
    }

    /// One client datagram: its flow (opened here if new) and where its payload starts, or
    /// None if it goes nowhere (dropped and counted, or a PROXY header that only opened a flow).
    #[allow(clippy::too_many_arguments)]
    fn client_datagram(
        &self,
        st: &mut EdgeState,
        tunnel: &Arc<dyn FlowTunnel>,
        now: Instant,
        port: u16,
        client: SocketAddr,
        sock: &Arc<UdpSocket>,
        payload: &[u8],
    ) -> Option<(u32, usize)> {
        // Where the payload starts in `payload` (after a trusted hop's PROXY header).
        let mut start = 0;
        // From a trusted previous hop: a PROXY v2 header (in front of the payload, or alone)
        // names the first client; it is stripped here. Without one, only a flow that already
        // has its client may go on (a hop that sends the header on the first datagram only).
        let mut named: Option<(SocketAddr, SocketAddr)> = None;
        let service = st.services.get(&port);
        let sid = service.map_or(0, |s| s.sid);
        let trusted = service.is_some_and(|s| s.trusts(client.ip()));
        if trusted {
            if let Ok(Some(h)) = proxy_protocol::parse_received(payload) {
                named = h.addresses;
                start = h.len;
            }
        }
        // A trusted hop's flows are its clients' (it may send many over one socket); its
        // datagrams without a header belong to its latest flow on the port.
        let key = (port, client, named.map(|(first, _)| first));
        let existing = match (trusted, named) {
            (true, None) => st.hop_flows.get(&(port, client)),
            _ => st.by_client.get(&key),
        };
        let flow = match existing {
            Some(&id) => {
                if let Some(f) = st.flows.get_mut(&id) {
                    f.last = now;
                }
                id
            }
            None => {
                if trusted && named.is_none() {
                    // A trusted hop's new flow without its header.
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                let source = named.map_or(client, |(first, _)| first).ip();
                if !st.fits(&lock(&self.caps), port, source) {
                    // Over a cap (the edge's, the service's, the source's): dropped, and
                    // counted apart so status shows why.
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    self.stats.flows_refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                // The service's maxConnections counts its flows (refused ones are counted and
                // reported by the service).
                let (admitted, idle) = match service {
                    Some(s) => match s.admit(&self.events) {
                        Some(a) => (Some(a), s.idle_timeout.unwrap_or(*lock(&self.idle))),
                        None => {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                    },
                    None => (None, *lock(&self.idle)),
                };
                st.next_flow = st.next_flow.wrapping_add(1).max(1);
                let id = st.next_flow;
                let local = sock
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
                let (first_client, first_local) = named.unwrap_or((client, local));
                let record = OpenRecord {
                    kind: KIND_UDP,
                    service: sid,
                    listen_port: port,
                    client: first_client,
                    local: first_local,
                    buffer: None,
                    credit: false,
                };
                tunnel.flow_open(id, &record);
                st.flows.insert(
                    id,
                    EdgeFlow {
                        port,
                        client,
                        named: key.2,
                        source,
                        last: now,
                        answered: false,
                        admitted,
                        idle,
                    },
                );
                st.by_client.insert(key, id);
                st.count_flow(port, source);
                self.stats.flows.store(st.flows.len() as u64, Ordering::Relaxed);
                id
            }
        };
        if trusted && named.is_some() {
            st.hop_flows.insert((port, client), flow);
        }
        // A header sent alone (a hop in separateDatagram mode) only opened the flow.
        (start < payload.len() || named.is_none()).then_some((flow, start))
    }

    /// A reply from the hub for `flow`: queued to go to the client from the port it wrote to
    /// (see [`PortOut`]).
    pub fn to_client(&self, flow: u32, payload: Bytes) {
        let mut guard = lock(&self.state);
        let st: &mut EdgeState = &mut guard;
        let Some(f) = st.flows.get_mut(&flow) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        f.last = Instant::now();
        f.answered = true;
        let client = f.client;
        let Some(p) = st.ports.get_mut(&f.port) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let len = payload.len();
        match p.out.push((client, payload), len, OUT_PER_PORT, BURST_BUFFER) {
            Pushed::Queued => {}
            Pushed::Dropped => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::SendNow => {
                let (port, sock) = (f.port, p.sock.clone());
                drop(guard);
                self.send_port_replies(port, &sock);
            }
        }
    }

    /// The hub ended a flow (its upstream failed or it expired there).
    pub fn closed_by_hub(&self, flow: u32) {
        let mut st = lock(&self.state);
        st.remove_flow(flow);
        self.stats.flows.store(st.flows.len() as u64, Ordering::Relaxed);
    }

    fn sweep(&self) {
        let unanswered = lock(&self.caps).unanswered_idle;
        let mut st = lock(&self.state);
        let now = Instant::now();
        let expired: Vec<u32> = st
            .flows
            .iter()
            .filter(|(_, f)| {
                let idle = if f.answered {
                    f.idle
                } else {
                    f.idle.min(unanswered)
                };
                now.duration_since(f.last) >= idle
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(f) = st.remove_flow(*id) {
                if let Some(a) = &f.admitted {
                    a.idle_closed();
                }
            }
            if let Some(t) = &st.tunnel {
                t.flow_close(*id);
            }
        }
        self.stats.flows.store(st.flows.len() as u64, Ordering::Relaxed);
        if !expired.is_empty() {
            self.events.as_ref()(event!("udpFlowsExpired", { "count": expired.len() }));
        }
    }
}

/// Waits for `sock` to be readable and receives a batch of datagrams. A batch short of
/// [`udp_io::RECV_SLOTS`] emptied the socket: tokio's readiness is cleared then (as the muxer's
/// `read_marking_drained` does for streams), so the next wait is for a fresh epoll event
/// instead of a `recvmmsg` that can only return EAGAIN.
async fn recv_marking_drained(sock: &UdpSocket, batch: &mut udp_io::RecvBatch) -> std::io::Result<usize> {
    loop {
        sock.readable().await?;
        let mut short = None;
        let res = sock.try_io(tokio::io::Interest::READABLE, || {
            let n = batch.recv(sock)?;
            if n < udp_io::RECV_SLOTS {
                short = Some(n);
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (short, res) {
            (Some(n), _) => return Ok(n),
            (None, Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Drained after a full batch: the moment to give back slots a large datagram
                // made resident.
                batch.shed_if_large();
                continue;
            }
            (None, r) => return r,
        }
    }
}

/// Where a public port binds: the configured address, or dual-stack `[::]` first and `0.0.0.0`
/// where IPv6 is disabled.
pub fn bind_candidates(ip: Option<IpAddr>, port: u16) -> Vec<SocketAddr> {
    match ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        ],
    }
}

/// Tries `bind` on each candidate address; the error of the last one if none works.
pub fn bind_first<T>(
    ip: Option<IpAddr>,
    port: u16,
    mut bind: impl FnMut(SocketAddr) -> std::io::Result<T>,
) -> Result<T> {
    let mut last = None;
    for a in bind_candidates(ip, port) {
        match bind(a) {
            Ok(s) => return Ok(s),
            Err(source) => {
                last = Some(Error::Bind {
                    addr: a.to_string(),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::InvalidConfig(format!("no address to bind port {port}"))))
}

/// Binds a public UDP port with burst-sized buffers.
fn bind_udp(ip: Option<IpAddr>, port: u16) -> Result<UdpSocket> {
    bind_first(ip, port, |a| {
        let s = std::net::UdpSocket::bind(a)?;
        s.set_nonblocking(true)?;
        tune_buffers(&s, BURST_BUFFER);
        UdpSocket::from_std(s)
    })
}

// ---- hub -------------------------------------------------------------------------------------

struct HubFlow {
    /// Datagrams from the client side not sent yet, held until the upstream is ready (its
    /// `Upstream` is the right to send them).
    out: Outbox<Bytes, Upstream>,
    _task: Option<AbortOnDrop<()>>,
    /// The flow's place in its edge's allowance (all its tunnels' flows together).
    _place: Slot,
}

/// A flow's upstream side: the socket, and the PROXY v2 header still to go with its
/// datagrams per the port's mode (kept for `EveryDatagram`, taken after the first for
/// `FirstDatagram`, `None` otherwise). Whoever holds it sends the flow's datagrams: it sits in
/// the flow while nobody does, so sends never overtake each other.
struct Upstream {
    sock: Arc<UdpSocket>,
    header: Option<Bytes>,
    keep_header: bool,
    /// Which runs this socket sends with GSO.
    gso: udp_io::Gso,
}

impl Upstream {
    /// Sends `batch` (emptying it), as runs of equal-size datagrams in one GSO call each where
    /// there are runs, else one by one. Never waits: a full socket buffer drops what did not
    /// fit, counted, as a plain UDP relay would.
    fn send_all(&mut self, batch: &mut VecDeque<Bytes>, stats: &UdpStats) {
        while !batch.is_empty() {
            let mut next = [udp_io::Outgoing::default(); udp_io::MAX_SEGMENTS];
            let n = batch.len().min(next.len());
            for (i, (slot, d)) in next.iter_mut().zip(batch.iter()).enumerate() {
                let prefix = match &self.header {
                    Some(h) if self.keep_header || i == 0 => &h[..],
                    _ => &[],
                };
                *slot = udp_io::Outgoing { prefix, payload: d };
            }
            let sent = udp_io::send_front(&self.sock, None, &next[..n], &mut self.gso);
            batch.drain(..sent.count);
            count_sent(stats, &sent);
            // A first-datagram header goes with the first datagram that went out only.
            if sent.out > 0 && !self.keep_header {
                self.header = None;
            }
        }
    }
}

/// Counts what a send did: datagrams out (and GSO runs), or dropped.
fn count_sent(stats: &UdpStats, sent: &udp_io::Sent) {
    stats.datagrams_out.fetch_add(sent.out as u64, Ordering::Relaxed);
    stats
        .dropped
        .fetch_add((sent.count - sent.out) as u64, Ordering::Relaxed);
    if sent.as_run && sent.out > 0 {
        stats.gso_sends.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// Where hub flows receive their upstream's replies: one buffer per worker thread (the
    /// largest datagram, headroom included), borrowed only between a readiness event and the
    /// copy into the tunnel's buffer, never across an await.
    static RECV_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; DATAGRAM_HEADER + MAX_DATAGRAM]);
}

/// Replies one flow's task takes from its socket before it lets the other tasks of its worker
/// run: a target answering a burst does not hold the thread.
const REPLIES_PER_TURN: usize = 64;

/// Datagram bytes one tunnel's flows may have waiting at the hub, all flows and orphans
/// together: each flow's own bounds ([`QUEUE_PER_FLOW`], [`QUEUE_BYTES_PER_FLOW`]) times the
/// flows an edge may open would be gigabytes, while datagrams wait only for an upstream being
/// set up or a task's turn. 8 MiB holds ~6,000 typical 1,200-byte datagrams; past it they are
/// dropped and counted.
const QUEUED_BYTES_PER_TUNNEL: usize = 8 * 1024 * 1024;

/// Datagrams that arrive for a flow whose FLOW_OPEN has not been processed yet: over QUIC a
/// datagram can overtake the reliable control stream, and dropping a flow's first datagram
/// (a DNS query, an iperf3 hello) would stall it. Bounded in count and age.
const ORPHANS_MAX: usize = 256;
/// An orphan older than this belonged to a flow that never opened: dropped and counted.
const ORPHAN_TTL: Duration = Duration::from_secs(2);

/// The hub's flows for one tunnel. Dropped with the session, which closes every upstream socket.
pub struct HubFlows {
    flows: Mutex<HashMap<u32, HubFlow>>,
    orphans: Mutex<VecDeque<(u32, Instant, Bytes)>>,
    /// Highest flow id opened so far. The edge allocates ids in increasing order, so a datagram
    /// for an unknown id at or below this belongs to a flow that already ended: dropped at once.
    highest_opened: std::sync::atomic::AtomicU32,
    /// Flows of every tunnel of this edge (shared with its other sessions), and their cap.
    edge_flows: Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes waiting in this tunnel's flow queues and orphans together (see
    /// [`QUEUED_BYTES_PER_TUNNEL`]).
    queued: std::sync::atomic::AtomicUsize,
    max_flows: usize,
    pub stats: Arc<UdpStats>,
    events: EventSink,
    edge_id: String,
    /// Which runs a new flow's socket sends with GSO (tests turn it off).
    gso: udp_io::Gso,
}

impl HubFlows {
    pub fn new(
        edge_id: &str,
        edge_flows: Arc<std::sync::atomic::AtomicUsize>,
        max_flows: usize,
        events: EventSink,
    ) -> Arc<HubFlows> {
        Arc::new(HubFlows {
            flows: Mutex::new(HashMap::new()),
            orphans: Mutex::new(VecDeque::new()),
            highest_opened: std::sync::atomic::AtomicU32::new(0),
            edge_flows,
            queued: std::sync::atomic::AtomicUsize::new(0),
            max_flows,
            stats: Arc::new(UdpStats::default()),
            events,
            edge_id: edge_id.to_string(),
            gso: udp_io::Gso::detect(),
        })
    }

    /// FLOW_OPEN from the edge, with the port's route (None: the port is not assigned).
    pub fn open(
        self: &Arc<Self>,
        flow: u32,
        record: OpenRecord,
        route: Option<PortSpec>,
        tunnel: Arc<dyn FlowTunnel>,
    ) {
        let Some(route) = route else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tunnel.flow_close(flow);
            return;
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        {
            let mut flows = lock(&self.flows);
            let place = match flows.contains_key(&flow) {
                false => Slot::take(&self.edge_flows, self.max_flows),
                true => None,
            };
            let Some(place) = place else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                drop(flows);
                tunnel.flow_close(flow);
                return;
            };
            self.highest_opened.fetch_max(flow, Ordering::Relaxed);
            // Datagrams of this flow that overtook its FLOW_OPEN go first, in order.
            let early: VecDeque<Bytes> = {
                let mut o = lock(&self.orphans);
                let (mine, rest): (VecDeque<_>, VecDeque<_>) = o.drain(..).partition(|(f, _, _)| *f == flow);
                *o = rest;
                mine.into_iter().map(|(_, _, d)| d).collect()
            };
            let bytes = early.iter().map(Bytes::len).sum();
            flows.insert(
                flow,
                HubFlow {
                    out: Outbox::new(early, bytes, None, wake.clone()),
                    _task: None,
                    _place: place,
                },
            );
            self.stats.flows.store(flows.len() as u64, Ordering::Relaxed);
        }
        let header = (route.proxy_protocol != ProxyVersion::None).then(|| {
            Bytes::from(proxy_protocol::v2(
                record.client,
                record.local,
                Transport::Datagram,
            ))
        });
        let (header, keep_header) = match route.proxy_protocol_udp {
            UdpProxyMode::EveryDatagram => (header, true),
            UdpProxyMode::FirstDatagram => (header, false),
            // Sent once, on its own, when the upstream socket is ready.
            UdpProxyMode::SeparateDatagram => (None, false),
        };
        let me = self.clone();
        let task = tokio::spawn(async move {
            let sock = match connect_upstream(&route).await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    me.events.as_ref()(event!("udpFlowFailed", {
                        "edgeId": me.edge_id, "flow": flow, "port": record.listen_port,
                        "code": e.code(), "reason": e.to_string()
                    }));
                    me.remove(flow);
                    tunnel.flow_close(flow);
                    return;
                }
            };
            if route.proxy_protocol != ProxyVersion::None
                && route.proxy_protocol_udp == UdpProxyMode::SeparateDatagram
            {
                // PROXY v2 DGRAM header as the flow's first datagram (v1 has no UDP form).
                let header = proxy_protocol::v2(record.client, record.local, Transport::Datagram);
                let _ = sock.send(&header).await;
            }
            // The reactor learns that a new socket is writable only from its first event; the
            // sends below never wait, so wait for that once here.
            let _ = sock.writable().await;
            {
                let mut flows = lock(&me.flows);
                let Some(f) = flows.get_mut(&flow) else { return }; // closed meanwhile
                f.out.sender = Some(Upstream {
                    sock: sock.clone(),
                    header,
                    keep_header,
                    gso: me.gso,
                });
            }
            // The datagrams that waited for the socket go first.
            let mut queued = true;
            loop {
                if queued && !me.flush(flow) {
                    return; // closed meanwhile
                }
                queued = tokio::select! {
                    _ = wake.notified() => true,
                    r = sock.readable() => {
                        if r.is_ok() {
                            me.replies(&sock, flow, &*tunnel);
                        }
                        false
                    }
                };
            }
        });
        if let Some(f) = lock(&self.flows).get_mut(&flow) {
            f._task = Some(AbortOnDrop(task));
        }
    }

    /// The replies waiting on a flow's upstream socket, into the tunnel (up to
    /// [`REPLIES_PER_TURN`], then the task yields). Received into this worker thread's buffer,
    /// not one of the flow's own: a flow holds no receive buffer while it waits, which is most
    /// of its life (a 64 KiB one each was ~2/3 of what a live flow cost the hub).
    fn replies(&self, sock: &UdpSocket, flow: u32, tunnel: &dyn FlowTunnel) {
        RECV_BUF.with_borrow_mut(|buf| {
            for _ in 0..REPLIES_PER_TURN {
                // Received after the tunnel's headroom, so the datagram is copied once, headroom
                // and all, into the buffer the tunnel sends.
                match sock.try_recv(&mut buf[DATAGRAM_HEADER..]) {
                    Ok(n) => {
                        self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
                        tunnel.datagram(flow, BytesMut::from(&buf[..DATAGRAM_HEADER + n]));
                    }
                    // Drained (readiness is cleared), or ICMP port unreachable from a target that
                    // is not (yet) listening: the flow stays; the client may retry, as with
                    // plain UDP. (Each ICMP error is reported once, so this cannot spin.)
                    Err(_) => return,
                }
            }
        });
    }

    /// A datagram from the client side for `flow`: queued for the flow's task, which sends
    /// what gathered while it waited for its turn in one go (GSO runs where it can); a queue
    /// that reaches [`FLUSH_AT`] is sent from here, unless the upstream is not ready yet or
    /// its task is sending (it then sends this too).
    pub fn datagram(&self, flow: u32, payload: Bytes) {
        let mut flows = lock(&self.flows);
        match flows.get_mut(&flow) {
            Some(f) => {
                let len = payload.len();
                if !self.hold(len) {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                match f.out.push(payload, len, QUEUE_PER_FLOW, QUEUE_BYTES_PER_FLOW) {
                    Pushed::Queued => {}
                    Pushed::Dropped => {
                        self.let_go(len);
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Pushed::SendNow => {
                        drop(flows);
                        self.flush(flow);
                    }
                }
            }
            None if flow <= self.highest_opened.load(Ordering::Relaxed) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                drop(flows);
                self.park(flow, payload);
            }
        }
    }

    /// Sends what is queued for `flow` (the flow's task when woken, or the tunnel's receive loop
    /// once FLUSH_AT have gathered): takes the upstream and the queue, sends without holding
    /// the flow table's lock (other flows' datagrams keep arriving meanwhile), and puts the
    /// upstream back once the queue is empty. Returns at once if the upstream is not ready or
    /// another caller holds it. False if the flow is gone.
    fn flush(&self, flow: u32) -> bool {
        let (mut batch, mut up) = (VecDeque::new(), None);
        loop {
            {
                let mut flows = lock(&self.flows);
                let Some(f) = flows.get_mut(&flow) else {
                    return false;
                };
                if !f.out.turn(&mut up, &mut batch) {
                    return true;
                }
            }
            // Out of the queue: no longer held for the tunnel.
            self.let_go(batch.iter().map(Bytes::len).sum());
            if let Some(up) = &mut up {
                up.send_all(&mut batch, &self.stats);
            }
        }
    }

    /// Counts `len` more bytes waiting in this tunnel's queues, if they fit
    /// [`QUEUED_BYTES_PER_TUNNEL`].
    fn hold(&self, len: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + len <= QUEUED_BYTES_PER_TUNNEL).then_some(q + len)
            })
            .is_ok()
    }

    /// `len` bytes left this tunnel's queues (sent, or dropped).
    fn let_go(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
    }

    /// Keeps a datagram for a flow not opened yet; expired or excess ones are dropped, counted.
    fn park(&self, flow: u32, payload: Bytes) {
        let mut o = lock(&self.orphans);
        self.expire(&mut o, ORPHANS_MAX - 1);
        if !self.hold(payload.len()) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        o.push_back((flow, Instant::now(), payload));
    }

    /// Drops (and counts) orphans past their age, and the oldest beyond `keep`.
    fn expire(&self, o: &mut VecDeque<(u32, Instant, Bytes)>, keep: usize) {
        let now = Instant::now();
        while let Some((_, at, _)) = o.front() {
            if now.duration_since(*at) < ORPHAN_TTL && o.len() <= keep {
                break;
            }
            if let Some((_, _, d)) = o.pop_front() {
                self.let_go(d.len());
            }
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn close(&self, flow: u32) {
        self.remove(flow);
    }

    /// Forgets every flow (the tunnel ended): their upstream sockets close.
    pub fn close_all(&self) {
        let gone: Vec<HubFlow> = lock(&self.flows).drain().map(|(_, f)| f).collect();
        for f in &gone {
            self.let_go(f.out.items.iter().map(Bytes::len).sum());
        }
        self.expire(&mut lock(&self.orphans), 0);
        self.stats.flows.store(0, Ordering::Relaxed);
    }

    fn remove(&self, flow: u32) {
        let mut flows = lock(&self.flows);
        if let Some(f) = flows.remove(&flow) {
            // Datagrams that waited for an upstream that never came (or for a turn that never
            // came) are lost: count them.
            self.let_go(f.out.items.iter().map(Bytes::len).sum());
            self.stats
                .dropped
                .fetch_add(f.out.items.len() as u64, Ordering::Relaxed);
        }
        self.stats.flows.store(flows.len() as u64, Ordering::Relaxed);
    }

    pub fn status(&self) -> serde_json::Value {
        self.expire(&mut lock(&self.orphans), ORPHANS_MAX);
        json!({
            "flows": self.stats.flows.load(Ordering::Relaxed),
            "datagramsIn": self.stats.datagrams_in.load(Ordering::Relaxed),
            "datagramsOut": self.stats.datagrams_out.load(Ordering::Relaxed),
            "dropped": self.stats.dropped.load(Ordering::Relaxed),
        })
    }
}

async fn connect_upstream(route: &PortSpec) -> Result<UdpSocket> {
    let target = tokio::net::lookup_host((route.target_host.as_str(), route.target_port))
        .await
        .map_err(|source| Error::Connect {
            addr: format!("{}:{}", route.target_host, route.target_port),
            source,
        })?
        .next()
        .ok_or_else(|| {
            Error::InvalidConfig(format!("targetHost {:?} resolves to nothing", route.target_host))
        })?;
    let any: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(any).await?;
    tune_buffers(&sock, FLOW_BUFFER);
    sock.connect(target).await.map_err(|source| Error::Connect {
        addr: target.to_string(),
        source,
    })?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Records what a hub flow sends back towards the edge (nothing, here).
    struct NoTunnel;

    impl FlowTunnel for NoTunnel {
        fn flow_open(&self, _flow: u32, _record: &OpenRecord) {}
        fn datagram(&self, _flow: u32, _framed: BytesMut) {}
        fn flow_close(&self, _flow: u32) {}
    }

    /// Records the flows an edge opens and what they carry (the tunnel side of the edge).
    #[derive(Default)]
    struct Opened {
        records: Mutex<Vec<(u32, OpenRecord)>>,
        datagrams: Mutex<Vec<(u32, Vec<u8>)>>,
    }

    impl FlowTunnel for Opened {
        fn flow_open(&self, flow: u32, record: &OpenRecord) {
            lock(&self.records).push((flow, record.clone()));
        }
        fn datagram(&self, flow: u32, framed: BytesMut) {
            lock(&self.datagrams).push((flow, framed[DATAGRAM_HEADER..].to_vec()));
        }
        fn flow_close(&self, _flow: u32) {}
    }

    /// An edge's UDP side serving `services` (port → service JSON) with `caps`, and the tunnel
    /// that records what it opens.
    async fn edge_udp(services: &[Value], caps: FlowCaps) -> (Arc<EdgeUdp>, Arc<Opened>, Vec<u16>) {
        let udp = EdgeUdp::new(crate::events::null_sink());
        let opened = Arc::new(Opened::default());
        udp.set_tunnel(Some(opened.clone()));
        let mut map = BTreeMap::new();
        let mut ports = Vec::new();
        for v in services {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut v = v.clone();
            v["port"] = json!(port);
            let s = Service::from_config(&v, Some("127.0.0.1".parse().unwrap())).unwrap();
            map.insert(port, Arc::new(s));
            ports.push(port);
        }
        assert!(udp.apply(None, map, caps).await.is_empty(), "ports bind");
        (udp, opened, ports)
    }

    fn caps(per_edge: usize, per_service: usize, per_source: usize) -> FlowCaps {
        FlowCaps {
            per_edge,
            per_service,
            per_source,
            ..FlowCaps::default()
        }
    }

    /// Sends one datagram from a new socket on `from` to `port` (a client with its own source
    /// port).
    async fn one_datagram(from: &str, port: u16, payload: &[u8]) -> UdpSocket {
        let c = UdpSocket::bind((from, 0)).await.unwrap();
        c.send_to(payload, ("127.0.0.1", port)).await.unwrap();
        c
    }

    async fn until_opened(opened: &Opened, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&opened.records).len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} flows opened",
                lock(&opened.records).len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One host spraying source ports gets its source's share of flows; another host, and
    /// another service, still get theirs; a service's cap leaves room for the others.
    #[tokio::test]
    async fn flows_are_capped_per_source_and_per_service() {
        let a = json!({ "sid": 1, "id": "udp/a" });
        let b = json!({ "sid": 2, "id": "udp/b" });
        let (udp, opened, ports) = edge_udp(&[a, b], caps(100, 12, 8)).await;
        let mut keep = Vec::new();
        for _ in 0..20 {
            keep.push(one_datagram("127.0.0.1", ports[0], b"spray").await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(lock(&opened.records).len(), 8, "one source's share");
        assert_eq!(udp.stats.flows_refused.load(Ordering::Relaxed), 12);
        // Other hosts fill service a up to its cap…
        for host in 2..=6 {
            keep.push(one_datagram(&format!("127.0.0.{host}"), ports[0], b"other host").await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(lock(&opened.records).len(), 12, "service a's cap");
        // …and service b still takes new clients.
        keep.push(one_datagram("127.0.0.7", ports[1], b"service b").await);
        until_opened(&opened, 13).await;
        assert_eq!(lock(&opened.records)[12].1.listen_port, ports[1]);
        // A flow that ends gives its place back.
        let first = lock(&opened.records)[0].0;
        udp.closed_by_hub(first);
        keep.push(one_datagram("127.0.0.1", ports[0], b"again").await);
        until_opened(&opened, 14).await;
    }

    /// Behind a trusted hop (dnsdist, haproxy, a previous hub) many clients share the hop's
    /// socket: each client its PROXY header names is a flow of its own, counted against that
    /// client, and the hop's datagrams without a header go to its latest flow.
    #[tokio::test]
    async fn a_trusted_hops_clients_are_flows_of_their_own() {
        let svc = json!({ "sid": 1, "id": "udp/dns", "trustProxyFrom": ["127.0.0.0/8"] });
        let (udp, opened, ports) = edge_udp(&[svc], caps(100, 100, 1)).await;
        let hop = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
        let client = |i: u8| SocketAddr::from(([198, 51, 100, i], 5300 + u16::from(i)));
        for i in 1..=3u8 {
            let mut d = proxy_protocol::v2(client(i), local, Transport::Datagram);
            d.extend_from_slice(&[i]);
            hop.send_to(&d, local).await.unwrap();
        }
        until_opened(&opened, 3).await;
        let named: Vec<SocketAddr> = lock(&opened.records).iter().map(|(_, r)| r.client).collect();
        assert_eq!(
            named,
            vec![client(1), client(2), client(3)],
            "one flow per named client"
        );
        // Client 2 again (with its header): its own flow, not a new one, and not the first.
        let mut d = proxy_protocol::v2(client(2), local, Transport::Datagram);
        d.extend_from_slice(b"two again");
        hop.send_to(&d, local).await.unwrap();
        // No header: the hop's latest flow (client 2's now).
        hop.send_to(b"no header", local).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&opened.datagrams).len() < 5 {
            assert!(
                Instant::now() < deadline,
                "datagrams: {:?}",
                lock(&opened.datagrams)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let flows: Vec<u32> = lock(&opened.records).iter().map(|(f, _)| *f).collect();
        let got = lock(&opened.datagrams).clone();
        assert_eq!(got[3], (flows[1], b"two again".to_vec()));
        assert_eq!(got[4], (flows[1], b"no header".to_vec()));
        assert_eq!(lock(&opened.records).len(), 3);
        // Per-source caps count the named clients (1 each here), not the hop.
        assert_eq!(udp.stats.flows_refused.load(Ordering::Relaxed), 0);
    }

    /// A flow whose target never answered goes after `unanswered_idle`; an answered one stays
    /// for the full idle time.
    #[tokio::test]
    async fn unanswered_flows_are_forgotten_sooner() {
        let svc = json!({ "sid": 1, "id": "udp/x" });
        let caps = FlowCaps {
            unanswered_idle: Duration::from_millis(200),
            idle: Duration::from_secs(30),
            ..FlowCaps::default()
        };
        let (udp, opened, ports) = edge_udp(&[svc], caps).await;
        let _quiet = one_datagram("127.0.0.1", ports[0], b"anyone?").await;
        let _answered = one_datagram("127.0.0.2", ports[0], b"hello").await;
        until_opened(&opened, 2).await;
        let answered = lock(&opened.records)[1].0;
        udp.to_client(answered, Bytes::from_static(b"hi"));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            udp.stats.flows.load(Ordering::Relaxed),
            1,
            "the unanswered flow is gone, the answered one stays"
        );
        assert!(lock(&udp.state).flows.contains_key(&answered));
    }

    /// The outbox's protocol: bounds, a wake when it stops being empty, "send now" only at
    /// FLUSH_AT and only when the right to send is there, and one holder of that right.
    #[test]
    fn an_outbox_has_one_sender_at_a_time() {
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut out: Outbox<u32, &str> = Outbox::new(VecDeque::new(), 0, None, wake);
        assert_eq!(out.push(0, 10, 100, 1000), Pushed::Queued);
        for i in 1..FLUSH_AT as u32 {
            // No sender yet (an upstream being set up): nothing to send now, however many.
            assert_eq!(out.push(i, 10, 100, 1000), Pushed::Queued);
        }
        assert_eq!(
            out.push(999, 1000, 100, 1000),
            Pushed::Dropped,
            "over the byte bound"
        );
        out.sender = Some("sock");
        assert_eq!(out.push(FLUSH_AT as u32, 10, 100, 1000), Pushed::SendNow);
        // The first caller takes the right and the queue; a second finds the right taken.
        let (mut held, mut batch) = (None, VecDeque::new());
        assert!(out.turn(&mut held, &mut batch));
        assert_eq!(
            (held, batch.len(), out.items.len(), out.bytes),
            (Some("sock"), FLUSH_AT + 1, 0, 0)
        );
        let (mut other, mut other_batch) = (None, VecDeque::new());
        assert_eq!(
            out.push(7, 10, 100, 1000),
            Pushed::Queued,
            "no SendNow while someone sends"
        );
        assert!(!out.turn(&mut other, &mut other_batch));
        assert!(other.is_none());
        // The holder sends, comes back for what arrived meanwhile, then puts the right back.
        batch.clear();
        assert!(out.turn(&mut held, &mut batch));
        assert_eq!(batch, [7]);
        batch.clear();
        assert!(!out.turn(&mut held, &mut batch));
        assert_eq!((held, out.sender), (None, Some("sock")));
    }

    /// A hub flow for a target socket of its own, with PROXY headers per `proxy`/`mode`.
    async fn flow_to_target(proxy: &str, mode: &str, gso: udp_io::Gso) -> (Arc<HubFlows>, UdpSocket) {
        let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tune_buffers(&target, BURST_BUFFER);
        let route: PortSpec = serde_json::from_value(serde_json::json!({
            "port": 53, "targetHost": "127.0.0.1", "targetPort": target.local_addr().unwrap().port(),
            "proxyProtocol": proxy, "proxyProtocolUdp": mode,
        }))
        .unwrap();
        let mut flows = HubFlows::new("e", Arc::default(), 16, crate::events::null_sink());
        Arc::get_mut(&mut flows).expect("not shared yet").gso = gso;
        let record = OpenRecord {
            kind: crate::wire::open::KIND_UDP,
            service: 0,
            listen_port: 53,
            client: "203.0.113.7:5353".parse().unwrap(),
            local: "198.51.100.1:53".parse().unwrap(),
            buffer: None,
            credit: false,
        };
        flows.open(1, record, Some(route), Arc::new(NoTunnel));
        (flows, target)
    }

    /// Receives `sent` at `target`, each with the header where `with_header(i)` says.
    async fn expect_at_target(
        target: &UdpSocket,
        sent: &[Vec<u8>],
        with_header: impl Fn(usize) -> bool,
        what: &str,
    ) {
        let header = proxy_protocol::v2(
            "203.0.113.7:5353".parse().unwrap(),
            "198.51.100.1:53".parse().unwrap(),
            Transport::Datagram,
        );
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for (i, want) in sent.iter().enumerate() {
            let n = tokio::time::timeout(Duration::from_secs(5), target.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what}: datagram {i} never came"))
                .unwrap();
            let got = if with_header(i) {
                assert_eq!(&buf[..header.len()], &header[..], "{what}: datagram {i}");
                &buf[header.len()..n]
            } else {
                &buf[..n]
            };
            assert_eq!(got, &want[..], "{what}: datagram {i}");
        }
    }

    /// A burst queued for a flow reaches the target as the same datagrams, in order, with the
    /// header the mode wants on each, and goes out in GSO runs (fewer sends than datagrams) —
    /// or one by one, the same datagrams, where GSO is off.
    #[tokio::test]
    async fn a_burst_goes_out_in_gso_runs_datagram_for_datagram() {
        if udp_io::Gso::detect().is_off() {
            eprintln!("skipped: this kernel has no UDP GSO");
            return;
        }
        use rand::{RngExt, SeedableRng};
        for (proxy, mode, gso) in [
            ("none", "everyDatagram", udp_io::Gso::detect()),
            ("v2", "everyDatagram", udp_io::Gso::detect()),
            ("v2", "firstDatagram", udp_io::Gso::detect()),
            ("v2", "everyDatagram", udp_io::Gso::off()),
        ] {
            let what = format!("{proxy} {mode} {gso:?}");
            let mut rng = rand::rngs::StdRng::seed_from_u64(15);
            // Runs of equal sizes, with a shorter one now and then and an empty one.
            let mut sent: Vec<Vec<u8>> = Vec::new();
            while sent.len() < 200 {
                let size = [0, 1, 100, 1200, 1200, 1472, 9000][rng.random_range(0..7)];
                for _ in 0..rng.random_range(1..20) {
                    let i = sent.len();
                    sent.push((0..size).map(|b| (b + i) as u8).collect());
                }
            }
            sent.truncate(200);
            let (flows, target) = flow_to_target(proxy, mode, gso).await;
            // All queued before the flow's task first runs (this runtime has one thread).
            for d in &sent {
                flows.datagram(1, Bytes::from(d.clone()));
            }
            let with_header = |i: usize| proxy == "v2" && (mode == "everyDatagram" || i == 0);
            expect_at_target(&target, &sent, with_header, &what).await;
            let st = &flows.stats;
            assert_eq!(st.datagrams_out.load(Ordering::Relaxed), 200, "{what}");
            assert_eq!(st.dropped.load(Ordering::Relaxed), 0, "{what}");
            let runs = st.gso_sends.load(Ordering::Relaxed);
            if gso.is_off() {
                assert_eq!(runs, 0, "{what}");
            } else {
                assert!(
                    runs > 0 && runs < 100,
                    "{what}: {runs} GSO runs for 200 datagrams"
                );
            }
        }
    }

    /// Once the upstream is ready, a burst the tunnel delivers without yielding is sent by the
    /// tunnel's receive loop every FLUSH_AT datagrams (the flow's task cannot run meanwhile),
    /// and the rest by the task; all arrive, in order.
    #[tokio::test]
    async fn a_long_burst_is_sent_by_the_receive_loop_as_it_comes() {
        if udp_io::Gso::detect().is_off() {
            eprintln!("skipped: this kernel has no UDP GSO");
            return;
        }
        let (flows, target) = flow_to_target("none", "everyDatagram", udp_io::Gso::detect()).await;
        flows.datagram(1, Bytes::from_static(b"first"));
        expect_at_target(&target, &[b"first".to_vec()], |_| false, "first").await;
        let sent: Vec<Vec<u8>> = (0..2 * FLUSH_AT + 22).map(|i| vec![i as u8; 1200]).collect();
        for d in &sent {
            flows.datagram(1, Bytes::from(d.clone()));
        }
        // No await yet: only the receive loop (this code) can have sent, twice FLUSH_AT, in
        // GSO runs (54 × 1,200 B fit one run's MAX_BYTES, so each flush is two runs).
        assert_eq!(
            flows.stats.datagrams_out.load(Ordering::Relaxed),
            1 + 2 * FLUSH_AT as u64
        );
        assert_eq!(flows.stats.gso_sends.load(Ordering::Relaxed), 4);
        expect_at_target(&target, &sent, |_| false, "burst").await;
        assert_eq!(
            flows.stats.datagrams_out.load(Ordering::Relaxed),
            1 + sent.len() as u64
        );
        assert_eq!(flows.stats.dropped.load(Ordering::Relaxed), 0);
    }

    /// Replies queued at a public port reach each client as the same datagrams, in order, in
    /// GSO runs per client where the queue has runs.
    #[tokio::test]
    async fn replies_leave_a_port_in_runs_per_client() {
        if udp_io::Gso::detect().is_off() {
            eprintln!("skipped: this kernel has no UDP GSO");
            return;
        }
        let port = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        port.writable().await.unwrap();
        let clients = [
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            UdpSocket::bind("127.0.0.2:0").await.unwrap(),
        ];
        for c in &clients {
            tune_buffers(c, BURST_BUFFER);
        }
        let mut items = VecDeque::new();
        // Runs of 1 to 40 replies to one client, then the other, in sizes that change.
        let mut sent: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for (i, (len, count)) in [
            (1200, 40),
            (1200, 3),
            (500, 1),
            (1472, 30),
            (0, 2),
            (9000, 5),
            (1200, 7),
        ]
        .into_iter()
        .enumerate()
        {
            let to = i % 2;
            for j in 0..count {
                let d: Vec<u8> = (0..len).map(|b| (b + j + i) as u8).collect();
                items.push_back((clients[to].local_addr().unwrap(), Bytes::from(d.clone())));
                sent[to].push(d);
            }
        }
        let stats = UdpStats::default();
        send_replies(&mut items, &port, &mut udp_io::Gso::detect(), &stats);
        assert!(items.is_empty());
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for (c, want) in clients.iter().zip(&sent) {
            for (k, d) in want.iter().enumerate() {
                let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("reply {k} never came"))
                    .unwrap();
                assert_eq!(&buf[..n], &d[..], "reply {k}");
            }
        }
        assert_eq!(stats.datagrams_out.load(Ordering::Relaxed), 88);
        let runs = stats.gso_sends.load(Ordering::Relaxed);
        assert!((4..=10).contains(&runs), "{runs} GSO runs");
    }

    /// The three places a UDP port's PROXY v2 header can go, as the target receives them.
    #[tokio::test]
    async fn the_udp_proxy_header_goes_where_the_port_says() {
        use crate::wire::proxy_protocol::V2_SIGNATURE;
        let client: SocketAddr = "203.0.113.7:5353".parse().unwrap();
        let local: SocketAddr = "198.51.100.1:53".parse().unwrap();
        let header = proxy_protocol::v2(client, local, Transport::Datagram);
        for (mode, name, expect) in [
            (
                UdpProxyMode::EveryDatagram,
                "everyDatagram",
                vec![true, true, true],
            ),
            (
                UdpProxyMode::FirstDatagram,
                "firstDatagram",
                vec![true, false, false],
            ),
            (
                UdpProxyMode::SeparateDatagram,
                "separateDatagram",
                vec![false, false, false],
            ),
        ] {
            let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let route: PortSpec = serde_json::from_value(serde_json::json!({
                "port": 53, "targetHost": "127.0.0.1", "targetPort": target.local_addr().unwrap().port(),
                "proxyProtocol": "v2", "proxyProtocolUdp": name,
            }))
            .unwrap();
            let flows = HubFlows::new("e", Arc::default(), 16, crate::events::null_sink());
            let record = OpenRecord {
                kind: crate::wire::open::KIND_UDP,
                service: 0,
                listen_port: 53,
                client,
                local,
                buffer: None,
                credit: false,
            };
            // The first datagram arrives before the upstream socket is ready, the others after.
            flows.open(1, record, Some(route), Arc::new(NoTunnel));
            flows.datagram(1, Bytes::from_static(b"query-0"));
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let mut sent = 1;
            while got.len() < 3 + usize::from(mode == UdpProxyMode::SeparateDatagram) {
                let n = tokio::time::timeout(Duration::from_secs(5), target.recv(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                got.push(buf[..n].to_vec());
                while sent < 3 {
                    flows.datagram(1, Bytes::from(format!("query-{sent}")));
                    sent += 1;
                }
            }
            if mode == UdpProxyMode::SeparateDatagram {
                assert_eq!(got.remove(0), header, "{mode:?}: the header alone first");
            }
            for (i, (d, with_header)) in got.iter().zip(&expect).enumerate() {
                let payload = format!("query-{i}");
                if *with_header {
                    assert!(d.starts_with(&V2_SIGNATURE), "{mode:?} datagram {i}");
                    assert_eq!(&d[..header.len()], &header[..], "{mode:?} datagram {i}");
                    assert_eq!(&d[header.len()..], payload.as_bytes(), "{mode:?} datagram {i}");
                } else {
                    assert_eq!(d, payload.as_bytes(), "{mode:?} datagram {i}");
                }
            }
        }
    }
}
