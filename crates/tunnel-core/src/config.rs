//! Options the host passes in (JSON from JavaScript), re-validated here: the core never
//! trusts that the JS layer checked everything.

use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::wire::proxy_protocol::{ProxyVersion, UdpProxyMode};

/// Tunables. Defaults are what the benchmarks settled on; each says why.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Performance {
    /// Tokio worker threads (only honoured by the first hub/edge in a process, which creates
    /// the runtime). 0 = one per core, one on machines with up to 2 cores (see
    /// `runtime::worker_count`).
    pub worker_threads: usize,
    /// DATA payload per frame. 16 KiB, one TLS record's worth: large enough that the 9-byte
    /// header is noise, small enough that 8 interleaved streams each get a turn every ~128 KiB.
    /// (With its header a frame is 9 bytes over a record, so an 8-frame batch ends with a
    /// 72-byte record; record-aligned 16,375-byte frames measured no different.)
    pub max_frame_payload: u32,
    /// Per-stream receive window. 512 KiB keeps one stream at full speed across a loopback or
    /// LAN tunnel (bandwidth × RTT) while bounding what one slow target can make the hub buffer.
    pub stream_window: u32,
    /// Connection receive window: caps all streams' in-flight bytes together (16 MiB).
    pub connection_window: u32,
    /// Send and receive buffer of every tunnel socket this end opens or accepts, bytes: the TLS
    /// tunnel's TCP socket (0 = the kernel's autotuning, which grows it to
    /// `net.ipv4.tcp_[rw]mem`'s maximum) and the QUIC endpoint's UDP socket (asks for at least
    /// [`crate::engine::udp::BURST_BUFFER`]). Set it when a long fat link needs more than
    /// autotuning allows; a set size turns autotuning off for the socket. Beyond
    /// `net.core.[rw]mem_max` it needs CAP_NET_ADMIN ([`Performance::check_socket_buffer`]).
    pub socket_buffer: u32,
    /// Largest UDP payload QUIC sends before path MTU is known. 1452 fits a 1500-byte Ethernet
    /// MTU over IPv4 or IPv6 (1500 − 40 − 8), which is what tunnels between cloud hosts see,
    /// and lets a 1,200-byte client datagram plus headers travel as one QUIC datagram. Lower it
    /// (≥ 1200) on paths with smaller MTUs (PPPoE, nested VPNs); larger datagrams then take
    /// the reliable path rather than being dropped.
    pub quic_max_udp_payload: u16,
    /// Upper bound of QUIC's path MTU discovery (RFC 8899 PLPMTUD, quinn's): after the
    /// handshake QUIC probes for larger packets up to this UDP payload and keeps the largest
    /// that gets through (a lost probe is not congestion). `None` (the default): no discovery
    /// beyond `quic_max_udp_payload`. Larger packets mean less per-packet work per byte, but on
    /// loopback (where discovery does grow, to lo's 65508; `quicPathMtu` in status shows it)
    /// neither this nor a 16 KiB or 64 KiB `quic_max_udp_payload` moved throughput beyond the
    /// run-to-run noise (bench/changes.md): per-packet work is not what limits QUIC here, so
    /// it is not on by default.
    pub quic_mtu_discovery_max: Option<u16>,
}

impl Default for Performance {
    fn default() -> Self {
        Performance {
            worker_threads: 0,
            max_frame_payload: 16 * 1024,
            stream_window: 512 * 1024,
            connection_window: 16 * 1024 * 1024,
            socket_buffer: 0,
            quic_max_udp_payload: 1452,
            quic_mtu_discovery_max: None,
        }
    }
}

/// A set `socket_buffer` must hold four TLS records (64 KiB): less throttles every stream of
/// the tunnel to a few records per round trip.
const MIN_SOCKET_BUFFER: u32 = 64 * 1024;
/// 512 MiB: a 10 Gbit/s link's bandwidth-delay product at a 400 ms round trip (~477 MiB), well
/// inside the kernel's own ceiling (it clamps to INT_MAX / 2 before doubling).
const MAX_SOCKET_BUFFER: u32 = 512 * 1024 * 1024;

impl Performance {
    /// The buffer size for a TLS tunnel's TCP socket, or `None` for the kernel's autotuning.
    pub fn tcp_socket_buffer(&self) -> Option<usize> {
        (self.socket_buffer > 0).then_some(self.socket_buffer as usize)
    }

    /// The buffer size a QUIC endpoint's UDP socket asks for: a set size, but at least
    /// [`crate::engine::udp::BURST_BUFFER`] (at the hub one socket carries every QUIC edge).
    pub fn udp_socket_buffer(&self) -> usize {
        (self.socket_buffer as usize).max(crate::engine::udp::BURST_BUFFER)
    }

    /// Refuses a set `socket_buffer` this process would not get. Beyond `net.core.[rw]mem_max`
    /// the kernel grants a size only with CAP_NET_ADMIN and otherwise gives the sysctl's
    /// maximum, fixed. Checked once at start on a probe socket, so the daemon says so instead
    /// of running with buffers smaller than asked for.
    pub fn check_socket_buffer(&self) -> Result<()> {
        let Some(bytes) = self.tcp_socket_buffer() else {
            return Ok(());
        };
        let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .or_else(|_| socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None))
            .map_err(|e| {
                Error::InvalidConfig(format!(
                    "performance.socketBuffer: cannot make a socket to check it: {e}"
                ))
            })?;
        let granted = crate::engine::tune_buffers(&probe, bytes);
        if granted < bytes {
            return Err(Error::InvalidConfig(format!(
                "performance.socketBuffer: {bytes} bytes needs CAP_NET_ADMIN or net.core.rmem_max and \
                 net.core.wmem_max of at least {bytes}; this process would get {granted}"
            )));
        }
        Ok(())
    }

    /// The largest UDP payload QUIC may use on this path: the discovery bound if set, else the
    /// initial size. Each end also announces it as the largest payload it accepts
    /// (max_udp_payload_size, RFC 9000 §18.2), which caps the peer's packets.
    pub fn quic_udp_payload_ceiling(&self) -> u16 {
        self.quic_mtu_discovery_max.unwrap_or(self.quic_max_udp_payload)
    }

    pub fn validate(&self) -> Result<()> {
        let p = self.max_frame_payload as usize;
        if !(1024..=crate::wire::frame::MAX_DATA_PAYLOAD).contains(&p) {
            return Err(Error::InvalidConfig(format!(
                "performance.maxFramePayload: {p} is outside 1024..={}",
                crate::wire::frame::MAX_DATA_PAYLOAD
            )));
        }
        if self.stream_window < self.max_frame_payload {
            return Err(Error::InvalidConfig(format!(
                "performance.streamWindow: {} is smaller than maxFramePayload {}",
                self.stream_window, self.max_frame_payload
            )));
        }
        if self.connection_window < self.stream_window {
            return Err(Error::InvalidConfig(format!(
                "performance.connectionWindow: {} is smaller than streamWindow {}",
                self.connection_window, self.stream_window
            )));
        }
        if !(1200..=65_527).contains(&self.quic_max_udp_payload) {
            return Err(Error::InvalidConfig(format!(
                "performance.quicMaxUdpPayload: {} is outside 1200..=65527 (QUIC needs at least 1200)",
                self.quic_max_udp_payload
            )));
        }
        if let Some(max) = self.quic_mtu_discovery_max {
            if !(self.quic_max_udp_payload..=65_527).contains(&max) {
                return Err(Error::InvalidConfig(format!(
                    "performance.quicMtuDiscoveryMax: {max} is outside quicMaxUdpPayload ({})..=65527",
                    self.quic_max_udp_payload
                )));
            }
        }
        if self.socket_buffer != 0 && !(MIN_SOCKET_BUFFER..=MAX_SOCKET_BUFFER).contains(&self.socket_buffer) {
            return Err(Error::InvalidConfig(format!(
                "performance.socketBuffer: {} is outside {MIN_SOCKET_BUFFER}..={MAX_SOCKET_BUFFER} (0 = TCP autotuning)",
                self.socket_buffer
            )));
        }
        if self.worker_threads > 256 {
            return Err(Error::InvalidConfig(format!(
                "performance.workerThreads: {} is more than 256",
                self.worker_threads
            )));
        }
        Ok(())
    }
}

/// Resource limits. Each default is a bound a production hub should never hit in normal
/// operation but that stops one edge or one attacker from exhausting the process.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Limits {
    /// Streams open at once per tunnel: 65,536 covers a busy edge; beyond it new ones are reset.
    pub max_streams_per_edge: u32,
    /// TLS+auth handshakes in progress at once: 256 keeps a SYN-and-stall crowd from queueing
    /// unbounded work while a real edge still gets a slot. Also the cap on unauthenticated QUIC
    /// connections.
    pub max_pending_handshakes: u32,
    /// Unauthenticated connections (TLS and QUIC together) one source — an IPv4 address or an
    /// IPv6 /64 — may hold at once. 8: an edge needs one (two while quicWithFallback probes),
    /// a few edges behind one NAT fit, and one address cannot hold the handshake slots.
    pub max_pending_handshakes_per_source: u32,
    /// A client must finish TLS and authentication within this (10 s covers a slow link).
    pub handshake_timeout_ms: u64,
    /// The hub gives up connecting to a target after this (5 s: a target on the private
    /// network answers in milliseconds or not at all).
    pub target_connect_timeout_ms: u64,
    /// PING interval (5 s).
    pub heartbeat_interval_ms: u64,
    /// Nothing received for this long = dead peer (15 s = three missed heartbeats).
    pub heartbeat_timeout_ms: u64,
    /// Failed authentications allowed at once from one source address.
    pub auth_failure_burst: u32,
    /// ... refilled at this many per minute.
    pub auth_failures_per_minute: u32,
    /// A UDP flow with no datagram either way for this long is forgotten (60 s: longer than
    /// typical NAT/DNS/game keep-alive intervals, short enough that a scan's one-packet flows
    /// do not pile up). Sent to edges in CONFIG so both ends agree.
    pub udp_flow_idle_ms: u64,
    /// UDP flows at once per edge, all its tunnels together: each costs an upstream socket at
    /// the hub.
    pub max_udp_flows_per_edge: u32,
    /// UDP flows at once per service of an edge (or its `maxConnections`, if lower): half the
    /// edge's cap, so a flood at one service leaves room for the others.
    pub max_udp_flows_per_service: u32,
    /// UDP flows at once per client source — an IPv4 address or an IPv6 /64 (a /48 as a whole
    /// gets four times as many). 1,024: many times what even a busy NAT's DNS clients hold, yet
    /// one host spraying source ports holds 1/16 of the edge's cap at most.
    pub max_udp_flows_per_source: u32,
    /// A UDP flow whose target never answered is forgotten after this much silence instead of
    /// `udpFlowIdleMs`. 10 s: longer than any answer that still helps (DNS resolvers give up
    /// sooner), while a scan's or a flood's one-datagram flows hold their place for 10 s, not 60.
    pub udp_unanswered_idle_ms: u64,
    /// A tunnel replaced by a newer one of the same edge drains — finishes its streams, takes
    /// no new ones — and is closed after this whatever it still carries. 60 s lets ordinary
    /// requests and downloads finish, while a tunnel nobody uses any more (a second process
    /// with the edge's id, a half-open tunnel) does not hold the edge's allowance for long.
    pub drain_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams_per_edge: 65_536,
            max_pending_handshakes: 256,
            max_pending_handshakes_per_source: 8,
            handshake_timeout_ms: 10_000,
            target_connect_timeout_ms: 5_000,
            heartbeat_interval_ms: 5_000,
            heartbeat_timeout_ms: 15_000,
            auth_failure_burst: 30,
            auth_failures_per_minute: 30,
            udp_flow_idle_ms: 60_000,
            max_udp_flows_per_edge: 16_384,
            max_udp_flows_per_service: 8_192,
            max_udp_flows_per_source: 1_024,
            udp_unanswered_idle_ms: 10_000,
            drain_timeout_ms: 60_000,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: u64| {
            if v == 0 {
                Err(Error::InvalidConfig(format!("limits.{name}: must be positive")))
            } else {
                Ok(())
            }
        };
        pos("maxStreamsPerEdge", self.max_streams_per_edge.into())?;
        pos("maxPendingHandshakes", self.max_pending_handshakes.into())?;
        pos(
            "maxPendingHandshakesPerSource",
            self.max_pending_handshakes_per_source.into(),
        )?;
        pos("handshakeTimeoutMs", self.handshake_timeout_ms)?;
        pos("targetConnectTimeoutMs", self.target_connect_timeout_ms)?;
        pos("heartbeatIntervalMs", self.heartbeat_interval_ms)?;
        pos("udpFlowIdleMs", self.udp_flow_idle_ms)?;
        pos("maxUdpFlowsPerEdge", self.max_udp_flows_per_edge.into())?;
        pos("drainTimeoutMs", self.drain_timeout_ms)?;
        pos("maxUdpFlowsPerService", self.max_udp_flows_per_service.into())?;
        pos("maxUdpFlowsPerSource", self.max_udp_flows_per_source.into())?;
        pos("udpUnansweredIdleMs", self.udp_unanswered_idle_ms)?;
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(Error::InvalidConfig(format!(
                "limits.heartbeatTimeoutMs: {} must exceed heartbeatIntervalMs {}",
                self.heartbeat_timeout_ms, self.heartbeat_interval_ms
            )));
        }
        Ok(())
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubOptions {
    pub tunnel_port: u16,
    #[serde(default = "default_bind_host")]
    pub bind_host: String,
    pub cert_pem: String,
    pub key_pem: String,
    #[serde(default)]
    pub performance: Performance,
    #[serde(default)]
    pub limits: Limits,
}

fn default_bind_host() -> String {
    "0.0.0.0".into()
}

/// One forwarded port of an allowed edge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    pub target_host: String,
    pub target_port: u16,
    pub proxy_protocol: ProxyVersion,
    /// UDP ports with a PROXY v2 header: where the header goes (see [`UdpProxyMode`]).
    #[serde(default)]
    pub proxy_protocol_udp: UdpProxyMode,
    /// The named service this port serves (a UUID or a name, unique per edge); `None` for a
    /// plain `listenPorts` entry, whose id is `tcp/<port>` or `udp/<port>`.
    #[serde(default)]
    pub service: Option<String>,
    /// A human-readable name, reported in status and events.
    #[serde(default)]
    pub name: Option<String>,
    /// Where the edge binds this service (default: the edge's `bindAddress`).
    #[serde(default)]
    pub bind_address: Option<String>,
    /// Connections the edge carries for this service at once; beyond it new clients are
    /// refused at once (TCP services).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// A connection with no byte either way for this long is closed by the edge (TCP).
    #[serde(default)]
    pub idle_timeout_secs: Option<u32>,
    /// The most one connection may hold in flight per direction (TCP services; at least
    /// [`crate::wire::open::MIN_BUFFER`]). Sent to the edge, which puts it in each OPEN record,
    /// so both ends of the TLS muxer use it as the stream's window cap.
    #[serde(default)]
    pub buffer_bytes: Option<u32>,
    /// CIDRs of previous hops: their connections must begin with a PROXY header, whose client
    /// address is carried on as the client's (TCP).
    #[serde(default)]
    pub trust_proxy_from: Vec<String>,
}

impl PortSpec {
    /// The service id: the configured one, or `tcp/<port>` / `udp/<port>` for a plain port.
    pub fn service_id(&self, udp: bool) -> String {
        match &self.service {
            Some(id) => id.clone(),
            None => format!("{}/{}", if udp { "udp" } else { "tcp" }, self.port),
        }
    }

    /// The number the stream/flow OPEN record carries for this service: the first four bytes
    /// of SHA-256 of the service id, with the top bit set so it is never 0 ("route by port").
    /// Derived, not assigned, so it is the same on every hub and across restarts and updates;
    /// two ids of one edge that map to the same number are refused when the edges are set.
    pub fn service_number(&self, udp: bool) -> u32 {
        service_number(&self.service_id(udp))
    }
}

/// See [`PortSpec::service_number`].
pub fn service_number(id: &str) -> u32 {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) | 0x8000_0000
}

/// One allowed edge, normalised by the JS layer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeSpec {
    pub id: String,
    pub secret: String,
    #[serde(default)]
    pub bind_address: Option<String>,
    #[serde(default)]
    pub tcp: Vec<PortSpec>,
    #[serde(default)]
    pub udp: Vec<PortSpec>,
    #[serde(default)]
    pub firewall: Option<serde_json::Value>,
    #[serde(default)]
    pub stun_interval_secs: Option<u32>,
    /// STUN servers (`host`, `host:port`, `[v6]:port`) the edge asks for its public address
    /// every `stun_interval_secs`; empty: the documented default list.
    #[serde(default)]
    pub stun_servers: Vec<String>,
    /// The hub dials this edge (which listens for it) instead of waiting for it.
    #[serde(default)]
    pub dial: Option<DialSpec>,
}

/// Where a hub dials an edge that listens for it (`dialEdge`, or an edge token).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DialSpec {
    pub host: String,
    pub port: u16,
    /// SHA-256 of the edge's certificate: the hub pins it as edges pin the hub's.
    pub fingerprint: String,
    #[serde(default = "default_mode")]
    pub transport_mode: String,
    #[serde(default)]
    pub reconnect: ReconnectOptions,
}

impl DialSpec {
    fn validate(&self, edge: &str) -> Result<()> {
        if self.host.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "edge {edge:?}: dialEdge.host is empty"
            )));
        }
        if self.port == 0 {
            return Err(Error::InvalidConfig(format!(
                "edge {edge:?}: dialEdge.port 0 is not a port"
            )));
        }
        crate::transport::tls::parse_fingerprint(&self.fingerprint)
            .map_err(|e| Error::InvalidConfig(format!("edge {edge:?}: dialEdge.fingerprint: {e}")))?;
        validate_mode(&self.transport_mode)
            .map_err(|e| Error::InvalidConfig(format!("edge {edge:?}: dialEdge.{e}")))?;
        self.reconnect
            .validate()
            .map_err(|e| Error::InvalidConfig(format!("edge {edge:?}: dialEdge.{e}")))
    }
}

/// The transport modes a dialer may use.
pub fn validate_mode(mode: &str) -> Result<()> {
    if matches!(mode, "tcpTls" | "quic" | "quicWithFallback") {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "transportMode: {mode:?} is not one of tcpTls, quic, quicWithFallback"
        )))
    }
}

/// Minimum secret length: 16 characters is the floor below which an HMAC secret is guessable
/// by the rate-limited online attack the hub allows.
pub const MIN_SECRET_LEN: usize = 16;

pub fn validate_edges(edges: &[EdgeSpec]) -> Result<()> {
    let mut ids = std::collections::HashSet::new();
    for e in edges {
        let name = &e.id;
        if e.id.is_empty()
            || e.id.len() > 64
            || !e
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Error::InvalidConfig(format!(
                "edge {name:?}: id must be 1-64 characters of [A-Za-z0-9._-]"
            )));
        }
        if !ids.insert(e.id.as_str()) {
            return Err(Error::InvalidConfig(format!("edge {name:?}: duplicate id")));
        }
        if e.secret.len() < MIN_SECRET_LEN {
            return Err(Error::InvalidConfig(format!(
                "edge {name:?}: secret is shorter than {MIN_SECRET_LEN} characters"
            )));
        }
        if let Some(fw) = &e.firewall {
            if !fw.is_null() {
                crate::engine::firewall::validate(fw)
                    .map_err(|err| Error::InvalidConfig(format!("edge {name:?}: {err}")))?;
            }
        }
        if let Some(d) = &e.dial {
            d.validate(name)?;
        }
        if let Some(b) = &e.bind_address {
            b.parse::<IpAddr>().map_err(|_| {
                Error::InvalidConfig(format!("edge {name:?}: bindAddress {b:?} is not an IP address"))
            })?;
        }
        let mut services = std::collections::HashMap::new();
        for (proto, ports) in [("listenPorts", &e.tcp), ("listenPortsUdp", &e.udp)] {
            let mut seen = std::collections::HashSet::new();
            for p in ports {
                let id = p.service_id(proto == "listenPortsUdp");
                if id.is_empty()
                    || id.len() > 64
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
                {
                    return Err(Error::InvalidConfig(format!(
                        "edge {name:?}: service id {id:?} must be 1-64 characters of [A-Za-z0-9._-]"
                    )));
                }
                let number = service_number(&id);
                if let Some(other) = services.insert(number, id.clone()) {
                    let why = if other == id {
                        "is used twice"
                    } else {
                        "collides with another service id; rename one"
                    };
                    return Err(Error::InvalidConfig(format!(
                        "edge {name:?}: service id {id:?} {why} ({other:?})"
                    )));
                }
                if let Some(b) = &p.bind_address {
                    b.parse::<IpAddr>().map_err(|_| {
                        Error::InvalidConfig(format!(
                            "edge {name:?}: service {id:?}: bindAddress {b:?} is not an IP address"
                        ))
                    })?;
                }
                if let Some(bad) = p
                    .trust_proxy_from
                    .iter()
                    .find(|c| c.parse::<ipnet::IpNet>().is_err())
                {
                    return Err(Error::InvalidConfig(format!(
                        "edge {name:?}: service {id:?}: trustProxyFrom {bad:?} is not a CIDR (address/prefix)"
                    )));
                }
                if p.max_connections == Some(0) || p.idle_timeout_secs == Some(0) {
                    return Err(Error::InvalidConfig(format!(
                        "edge {name:?}: service {id:?}: maxConnections and idleTimeoutSecs must be positive"
                    )));
                }
                if let Some(b) = p.buffer_bytes {
                    if proto == "listenPortsUdp" {
                        return Err(Error::InvalidConfig(format!(
                            "edge {name:?}: service {id:?}: bufferBytes applies to TCP services only"
                        )));
                    }
                    if b < crate::wire::open::MIN_BUFFER {
                        return Err(Error::InvalidConfig(format!(
                            "edge {name:?}: service {id:?}: bufferBytes {b} is below {}",
                            crate::wire::open::MIN_BUFFER
                        )));
                    }
                }
                if p.port == 0 || p.target_port == 0 {
                    return Err(Error::InvalidConfig(format!(
                        "edge {name:?}: {proto} port {} / targetPort {} must be 1-65535",
                        p.port, p.target_port
                    )));
                }
                if !seen.insert(p.port) {
                    return Err(Error::InvalidConfig(format!(
                        "edge {name:?}: {proto} lists port {} twice",
                        p.port
                    )));
                }
                if p.target_host.is_empty() {
                    return Err(Error::InvalidConfig(format!(
                        "edge {name:?}: {proto} port {} has an empty targetHost",
                        p.port
                    )));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconnectOptions {
    #[serde(default = "default_base_ms")]
    pub base_ms: u64,
    #[serde(default = "default_cap_ms")]
    pub cap_ms: u64,
}

/// First retry after 500 ms: fast enough that a hub restart is barely noticed.
fn default_base_ms() -> u64 {
    500
}
/// Backoff stops growing at 30 s: a long outage is retried twice a minute, not hammered.
fn default_cap_ms() -> u64 {
    30_000
}

impl ReconnectOptions {
    pub fn validate(&self) -> Result<()> {
        if self.base_ms == 0 || self.cap_ms < self.base_ms {
            return Err(Error::InvalidConfig(format!(
                "reconnect: baseMs {} must be positive and capMs {} at least baseMs",
                self.base_ms, self.cap_ms
            )));
        }
        Ok(())
    }
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            base_ms: default_base_ms(),
            cap_ms: default_cap_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeOptions {
    #[serde(default)]
    pub hub_host: String,
    #[serde(default)]
    pub hub_port: u16,
    pub edge_id: String,
    pub secret: String,
    #[serde(default)]
    pub hub_fingerprint: Option<String>,
    #[serde(default)]
    pub dangerously_disable_fingerprint_pinning: bool,
    #[serde(default = "default_mode")]
    pub transport_mode: String,
    #[serde(default)]
    pub reconnect: ReconnectOptions,
    #[serde(default)]
    pub performance: Performance,
    #[serde(default)]
    pub limits: Limits,
    /// quicWithFallback: how long QUIC may take to come up before the edge uses TLS instead.
    /// 3 s: a QUIC handshake on any working path takes one or two RTTs; a blocked UDP port
    /// shows as silence, and waiting longer only delays service.
    #[serde(default = "default_quic_timeout")]
    pub quic_connect_timeout_ms: u64,
    /// quicWithFallback: while on TLS, how often QUIC is tried again (30 s).
    #[serde(default = "default_quic_probe")]
    pub quic_probe_interval_ms: u64,
    /// Leave the edge's nftables table in place on stop (default: remove it).
    #[serde(default)]
    pub keep_firewall_on_stop: bool,
    /// Listen for the hub (which dials this edge) instead of dialing it; `hubHost`, `hubPort`
    /// and `hubFingerprint` are then not used.
    #[serde(default)]
    pub listen_for_hub: Option<ListenForHub>,
    /// The edge operator's own settings for services the hub names (edgerq's consumer.xml):
    /// where each is served and its limits, which win over the hub's.
    #[serde(default)]
    pub local_services: Vec<LocalService>,
}

/// A service as the edge's own configuration (consumer.xml) describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalService {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub edge_port: u16,
    pub bind_address: String,
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// `request_buffer`: the service's per-connection buffer cap (overrides the hub's).
    #[serde(default)]
    pub buffer_bytes: Option<u32>,
}

/// An edge that waits for its hub: where it listens, and its own TLS identity (the hub pins its
/// fingerprint).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenForHub {
    pub port: u16,
    #[serde(default = "default_bind_host")]
    pub bind_host: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn default_quic_timeout() -> u64 {
    3_000
}
fn default_quic_probe() -> u64 {
    30_000
}

fn default_mode() -> String {
    "quicWithFallback".into()
}

pub fn parse<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::InvalidConfig(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_discovery_bound_lies_between_the_initial_payload_and_65527() {
        let with = |max: Option<u16>| Performance {
            quic_mtu_discovery_max: max,
            ..Performance::default()
        };
        assert!(with(None).validate().is_ok());
        assert!(with(Some(1452)).validate().is_ok());
        assert!(with(Some(65_527)).validate().is_ok());
        for bad in [1451, 65_528] {
            let e = with(Some(bad)).validate().unwrap_err().to_string();
            assert!(
                e.contains("quicMtuDiscoveryMax") && e.contains(&bad.to_string()),
                "{e}"
            );
        }
    }

    #[test]
    fn a_set_socket_buffer_lies_between_64_kib_and_512_mib() {
        let with = |bytes: u32| Performance {
            socket_buffer: bytes,
            ..Performance::default()
        };
        for ok in [0, MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER] {
            assert!(with(ok).validate().is_ok(), "{ok}");
        }
        for bad in [1, MIN_SOCKET_BUFFER - 1, MAX_SOCKET_BUFFER + 1] {
            let e = with(bad).validate().unwrap_err().to_string();
            assert!(e.contains("socketBuffer") && e.contains(&bad.to_string()), "{e}");
        }
        let burst = crate::engine::udp::BURST_BUFFER;
        assert_eq!(with(0).tcp_socket_buffer(), None);
        assert_eq!(with(0).udp_socket_buffer(), burst);
        assert_eq!(with(1 << 20).tcp_socket_buffer(), Some(1 << 20));
        assert_eq!(with(1 << 20).udp_socket_buffer(), burst);
        assert_eq!(with(16 << 20).udp_socket_buffer(), 16 << 20);
    }

    /// Drops CAP_NET_ADMIN from the calling thread (capabilities are per thread on Linux; the
    /// rest of the test process keeps its own).
    fn drop_cap_net_admin() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        const CAP_NET_ADMIN: u32 = 12;
        let mut header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget and capset read and write one header and two data structs (version 3).
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()), 0);
            data[0].effective &= !(1 << CAP_NET_ADMIN);
            data[0].permitted &= !(1 << CAP_NET_ADMIN);
            assert_eq!(libc::syscall(libc::SYS_capset, &header, data.as_ptr()), 0);
        }
    }

    /// A set size the kernel would clamp is refused at start, naming what it needs; one within
    /// `net.core.[rw]mem_max` is granted with or without the capability.
    #[test]
    fn a_socket_buffer_the_kernel_would_clamp_is_refused() {
        let with = |bytes: u32| Performance {
            socket_buffer: bytes,
            ..Performance::default()
        };
        let sysctl = |name: &str| -> u32 {
            let text = std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).unwrap();
            text.trim().parse().unwrap()
        };
        let beyond = sysctl("rmem_max").max(sysctl("wmem_max")) + MIN_SOCKET_BUFFER;
        assert!(with(0).check_socket_buffer().is_ok());
        std::thread::spawn(move || {
            drop_cap_net_admin();
            assert!(with(MIN_SOCKET_BUFFER).check_socket_buffer().is_ok());
            let e = with(beyond).check_socket_buffer().unwrap_err().to_string();
            assert!(
                e.contains("performance.socketBuffer")
                    && e.contains(&beyond.to_string())
                    && e.contains("CAP_NET_ADMIN"),
                "{e}"
            );
        })
        .join()
        .unwrap();
    }
}
