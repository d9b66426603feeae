import type { TDisconnectCode } from './errors.js';

// ---------------------------------------------------------------------------------------------
// Allowed edges: what users write (in code, in the hub's allowed-edges file, or in
// REMOTEINGRESS_ALLOWED_EDGES_JSON).
// ---------------------------------------------------------------------------------------------

/** PROXY protocol header the hub writes to the target before the client's bytes. */
export type TProxyProtocol = 'v1' | 'v2' | 'none';
export type TIpProtocol = 'tcp' | 'udp';

/**
 * Where a UDP port's PROXY v2 header goes: prepended to every datagram (the default, what
 * dnsdist, Unbound, NSD, PowerDNS Recursor and Knot Resolver read), prepended to the flow's first
 * datagram only, or sent alone as the flow's first datagram (remoteingress before 0.2).
 */
export type TUdpProxyMode = 'everyDatagram' | 'firstDatagram' | 'separateDatagram';

/** A listen port: a bare number forwards to the hub's `targetHost` on the same port. */
export type TListenPort =
  | number
  | {
      port: number;
      /** Default: the hub's `targetHost`. */
      targetHost?: string;
      /** Default: `port`. */
      targetPort?: number;
      /** Default: the edge's `proxyProtocol` (TCP) — see `TAllowedEdge.proxyProtocol`. */
      proxyProtocol?: TProxyProtocol;
      /** UDP ports only: where the PROXY v2 header goes. Default `'everyDatagram'`. */
      proxyProtocolUdp?: TUdpProxyMode;
    };

export interface IFirewallRateLimit {
  id: string;
  port: number;
  protocol: TIpProtocol;
  /** `<count>/<second|minute|hour>`, e.g. `200/second`. */
  rate: string;
  burst?: number;
  perSourceIP?: boolean;
}

export interface IFirewallRule {
  id: string;
  direction: 'input' | 'output';
  action: 'accept' | 'drop' | 'reject';
  /** An IPv4/IPv6 address or CIDR. */
  sourceIP?: string;
  destPort?: number;
  protocol?: TIpProtocol;
}

export interface IFirewallConfig {
  /** IPv4/IPv6 addresses or CIDRs dropped before anything else. Default `[]`. */
  blockedIps?: string[];
  rateLimits?: IFirewallRateLimit[];
  rules?: IFirewallRule[];
}

/** A named service an edge serves: routed by its id, with its own limits. */
export interface IServiceConfig {
  /** A UUID or a name (1–64 of `A-Z a-z 0-9 . _ -`), unique per edge. */
  id: string;
  name?: string;
  protocol: TIpProtocol;
  /** The public port the edge binds for it. */
  edgePort: number;
  /** Where the edge binds it (default: the edge's `bindAddress`). */
  bindAddress?: string;
  /** Where the hub forwards its connections and flows. */
  target: { host: string; port: number };
  proxyProtocol?: TProxyProtocol;
  proxyProtocolUdp?: TUdpProxyMode;
  /** Connections (UDP: flows, one per client address) at once; beyond it new clients are refused at once (UDP: their datagrams dropped). */
  maxConnections?: number;
  /** A connection (UDP: a flow) with no byte either way for this long is closed. */
  idleTimeoutSecs?: number;
  /**
   * TCP services: the most one connection may hold in flight per direction, in bytes (at least
   * 1024). Over a tcpTls tunnel both ends hold at most this for each of the service's
   * connections; over QUIC a stream holds at most the tunnel's `streamWindow` (see README).
   */
  bufferBytes?: number;
  /**
   * Previous hops (CIDRs, or bare addresses). A TCP connection from one of them must begin with
   * a PROXY v1/v2 header, and a UDP flow's first datagram must carry a PROXY v2 header (in front
   * of the payload or alone); the client it names is carried on as the client (chains). A header
   * from any other source is just payload.
   */
  trustProxyFrom?: string[];
}

/** Where the hub dials an edge that listens for it (`remoteingress-edge --listen-for-hub`). */
export interface IDialEdgeConfig {
  host: string;
  port: number;
  /** SHA-256 of the edge's certificate (the edge prints it at start): the hub pins it. */
  fingerprint: string;
  /** Default `quicWithFallback`. */
  transportMode?: TTransportMode;
  /** Redial backoff; default 500 ms doubling to 30 s. */
  reconnect?: IReconnectConfig;
}

export interface TAllowedEdge {
  /** 1–64 characters of `A-Z a-z 0-9 . _ -`; unique among allowed edges. May be left out with `edgeToken`. */
  id: string;
  /** Shared secret, at least 16 characters. Never sent over the wire. May be left out with `edgeToken`. */
  secret: string;
  /** The hub dials this edge instead of waiting for it. */
  dialEdge?: IDialEdgeConfig;
  /** `dialEdge`, id and secret in one string, printed by `remoteingress-edge token`. */
  edgeToken?: string;
  listenPorts: TListenPort[];
  listenPortsUdp?: TListenPort[];
  /** Named services (each also binds its `edgePort`); `listenPorts` entries are shorthand for these. */
  services?: IServiceConfig[];
  /** Address the edge binds its public ports on. Default: all addresses. */
  bindAddress?: string;
  /**
   * Default header for this edge's ports, `'v1'` unless given. PROXY v1 cannot describe UDP,
   * so UDP ports use `'v2'` unless this is `'none'` or the port says otherwise.
   */
  proxyProtocol?: TProxyProtocol;
  firewallConfig?: IFirewallConfig;
  /** The edge asks STUN servers for its public address this often (off unless given). */
  stunIntervalSecs?: number;
  /**
   * `host`, `host:port` or `[IPv6]:port` (port 3478 unless given), asked in order until one
   * answers. Default: stun.l.google.com:19302, stun1.l.google.com:19302, stun.cloudflare.com:3478.
   */
  stunServers?: string[];
}

// ---------------------------------------------------------------------------------------------
// Normalised allowed edges: the addon's `edgesJson` shape (docs/native-api.md), defaults filled in.
// ---------------------------------------------------------------------------------------------

export interface INormalisedPort {
  port: number;
  targetHost: string;
  targetPort: number;
  proxyProtocol: TProxyProtocol;
  /** UDP ports only. */
  proxyProtocolUdp?: TUdpProxyMode;
  /** Named services: the service id (absent for plain listen ports: `tcp/<port>`, `udp/<port>`). */
  service?: string;
  name?: string;
  bindAddress?: string;
  maxConnections?: number;
  idleTimeoutSecs?: number;
  bufferBytes?: number;
  trustProxyFrom?: string[];
}

export interface INormalisedFirewall {
  blockedIps: string[];
  rateLimits: Array<{
    id: string;
    port: number;
    protocol: TIpProtocol;
    rate: string;
    burst: number | null;
    perSourceIP: boolean;
  }>;
  rules: Array<{
    id: string;
    direction: 'input' | 'output';
    action: 'accept' | 'drop' | 'reject';
    sourceIP: string | null;
    destPort: number | null;
    protocol: TIpProtocol | null;
  }>;
}

export interface INormalisedEdge {
  id: string;
  secret: string;
  bindAddress: string | null;
  tcp: INormalisedPort[];
  udp: INormalisedPort[];
  firewall: INormalisedFirewall | null;
  stunIntervalSecs: number | null;
  /** Empty: the edge's default list. */
  stunServers: string[];
  /** Present when the hub dials this edge. */
  dial?: INormalisedDial;
}

export interface INormalisedDial {
  host: string;
  port: number;
  fingerprint: string;
  transportMode: TTransportMode;
  reconnect: { baseMs: number; capMs: number };
}

// ---------------------------------------------------------------------------------------------
// Hub
// ---------------------------------------------------------------------------------------------

/** Tuning passed to the addon as is; every field optional, the addon has defaults. */
export interface IPerformanceConfig {
  /** Tokio worker threads; 0 = one per core (one on machines with ≤ 2 cores). Only the first hub/edge in a process sets it. */
  workerThreads?: number;
  /** DATA payload per frame, bytes. */
  maxFramePayload?: number;
  /** Per-stream receive window, bytes. */
  streamWindow?: number;
  /** All streams' in-flight bytes together, bytes. */
  connectionWindow?: number;
  /** Send/receive buffer of each tunnel socket this end opens or accepts (TLS's TCP; QUIC's UDP, which asks for at least 4 MiB), 65536..536870912 bytes; 0 = TCP autotuning. Beyond net.core.[rw]mem_max it needs CAP_NET_ADMIN. */
  socketBuffer?: number;
  /** Largest UDP payload QUIC sends (default 1452 = a 1500-byte MTU path); 1200..65527. */
  quicMaxUdpPayload?: number;
  /** Upper bound of QUIC's path MTU discovery (RFC 8899), UDP payload bytes, quicMaxUdpPayload..65527; default: no discovery beyond quicMaxUdpPayload. */
  quicMtuDiscoveryMax?: number;
}

/** Resource bounds passed to the addon; every field optional, the addon's defaults suit production. */
export interface ILimitsConfig {
  maxStreamsPerEdge?: number;
  /** Unauthenticated tunnel connections (TLS and QUIC) at once (default 256 handshakes). */
  maxPendingHandshakes?: number;
  /** Unauthenticated tunnel connections one IPv4 address or IPv6 /64 may hold at once (default 8). */
  maxPendingHandshakesPerSource?: number;
  /** A peer must finish TLS and authentication within this. */
  handshakeTimeoutMs?: number;
  targetConnectTimeoutMs?: number;
  /** PING interval. */
  heartbeatIntervalMs?: number;
  /** Nothing received for this long = dead peer; must exceed heartbeatIntervalMs. */
  heartbeatTimeoutMs?: number;
  authFailureBurst?: number;
  authFailuresPerMinute?: number;
  /** A UDP flow idle this long is forgotten at both ends (default 60 000). */
  udpFlowIdleMs?: number;
  /** UDP flows at once per edge, all its tunnels together (default 16 384). */
  maxUdpFlowsPerEdge?: number;
  /** UDP flows at once per service of an edge (default 8 192; a service's `maxConnections` may lower it). */
  maxUdpFlowsPerService?: number;
  /** UDP flows at once per client source, an IPv4 address or IPv6 /64; an IPv6 /48 gets 4× (default 1 024). */
  maxUdpFlowsPerSource?: number;
  /** A UDP flow its target never answered is forgotten after this much silence (default 10 000). */
  udpUnansweredIdleMs?: number;
  /** A tunnel replaced by a newer one of the same edge drains (finishes its streams, takes no new ones) and is closed after this (default 60 000). */
  drainTimeoutMs?: number;
}

export interface IHubConfig {
  /** Port the hub accepts edge tunnels on; `0` binds an ephemeral port (see `hub.tunnelPort`). */
  tunnelPort: number;
  /** Where tunneled connections go unless a port says otherwise. Default `127.0.0.1`. */
  targetHost?: string;
  /**
   * Holds the hub's TLS identity (`hub-cert.pem`, `hub-key.pem`); created 0700 if absent.
   * Default: `REMOTEINGRESS_STATE_DIR`, else `/var/lib/remoteingress` as root, else
   * `$XDG_STATE_HOME/remoteingress` (`~/.local/state/remoteingress`).
   */
  stateDir?: string;
  /** Address the tunnel port binds on. Default `0.0.0.0`. */
  bindHost?: string;
  allowedEdges?: TAllowedEdge[];
  performance?: IPerformanceConfig;
  limits?: ILimitsConfig;
  /**
   * `HOST:PORT` of the admin endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`,
   * `/status`. Off unless given; bind it to loopback (it has no authentication).
   */
  adminListen?: string;
}

export interface IHubStopOptions {
  /** How long open streams may finish after GOAWAY before they are closed. Default 10 000 ms. */
  graceMs?: number;
}

export interface IHubEdgeStatus {
  edgeId: string;
  remoteAddress: string;
  remotePort: number;
  transport: string;
  connectedSince: number;
  openStreams: number;
  /** Streams opened on this tunnel. */
  streamsTotal: number;
  bytesIn: number;
  bytesOut: number;
  rttMs: number | null;
  /** QUIC tunnels: the UDP payload size the connection sends now (its discovered path MTU); null on tcpTls. */
  quicPathMtu: number | null;
  udp: IUdpCounters;
  /** Datagrams dropped because the tunnel was backed up. */
  datagramsDropped: number;
  /** The edge's public address as its STUN server saw it (`stunIntervalSecs`), if it reported one. */
  publicAddress?: string | null;
  /** Tunnels of this edge that drain (replaced by a newer one: they finish their streams, take no new ones, and close at `limits.drainTimeoutMs`). */
  drainingTunnels?: number;
  /** Every live tunnel of this edge, the one in use last. */
  tunnels?: IHubTunnelStatus[];
  /** What the per-edge limits (`maxStreamsPerEdge`, `maxUdpFlowsPerEdge`) count: all tunnels of the edge together. */
  allTunnels?: { openStreams: number; udpFlows: number } | null;
}

/** One tunnel of an edge at the hub. */
export interface IHubTunnelStatus {
  state: 'active' | 'draining';
  /** When it began to drain (ms since the epoch), or null. */
  drainingSince: number | null;
  transport: string;
  remoteAddress: string;
  remotePort: number;
  connectedSince: number;
  openStreams: number;
  udpFlows: number;
}

export interface IUdpCounters {
  flows: number;
  datagramsIn: number;
  datagramsOut: number;
  /** Malformed, unknown-flow, over-cap and queue-full datagrams. */
  dropped: number;
  /** Edge: new flows refused at a cap (`maxUdpFlowsPerEdge`, `…PerService`, `…PerSource`). */
  flowsRefused?: number;
}

export interface IHubStatus {
  running: boolean;
  tunnelPort: number | null;
  fingerprint: string | null;
  allowedEdges: number;
  edges: IHubEdgeStatus[];
  /** The reference API's summary of `edges`: id, connected since (ms since the epoch), streams open. */
  connectedEdges: Array<{ edgeId: string; connectedAt: number; activeStreams: number }>;
  /** Tunnel connections that have not authenticated yet, by transport (absent once stopped). */
  pendingHandshakes?: { tls: number; quic: number };
  /** Tunnel connections that authenticated (by transport) and attempts that failed (by reason), since start. */
  handshakes?: IHandshakeOutcomes;
  [extra: string]: unknown;
}

export interface IHandshakeOutcomes {
  authenticated: { tls: number; quic: number };
  /** By error code, `abandoned` (silent or stalled client) or `overLimit` (refused at the pending-handshake limits). */
  failed: Record<string, number>;
}

export interface IHubEdgeConnectedEvent {
  kind: 'edgeConnected';
  edgeId: string;
  remoteAddress: string;
  remotePort: number;
  transport: string;
}
export interface IHubEdgeDisconnectedEvent {
  kind: 'edgeDisconnected';
  edgeId: string;
  code: TDisconnectCode | null;
  reason: string;
}
export interface IHubAuthFailedEvent {
  kind: 'authFailed';
  remoteAddress: string;
  code: TDisconnectCode;
  reason: string;
}
/** A dial of an edge that listens for the hub failed; the next try is in `retryInMs`. */
export interface IHubEdgeDialFailedEvent {
  kind: 'edgeDialFailed';
  edgeId: string;
  /** `host:port` dialed. */
  address: string;
  code: TDisconnectCode;
  reason: string;
  /** 1 for the first failure in a row. */
  attempt: number;
  retryInMs: number;
}
export interface IHubStreamOpenedEvent {
  kind: 'streamOpened';
  edgeId: string;
  streamId: number;
  port: number;
  clientAddress: string;
  clientPort: number;
  targetHost: string;
  targetPort: number;
  /** The service the stream was routed by (`tcp/<port>` for a plain listen port). */
  serviceId: string;
  serviceName: string | null;
}
export interface IHubStreamClosedEvent {
  kind: 'streamClosed';
  edgeId: string;
  streamId: number;
  port: number;
  bytesIn: number;
  bytesOut: number;
  /** `null` when closed cleanly. */
  code: TDisconnectCode | null;
  reason: string | null;
}

// ---------------------------------------------------------------------------------------------
// Shared events
// ---------------------------------------------------------------------------------------------

export type TLogLevel = 'info' | 'warn' | 'error';
export interface ILogEvent {
  kind: 'log';
  level: TLogLevel;
  message: string;
}
/** The addon dropped `count` events because JavaScript could not keep up. */
export interface IEventsDroppedEvent {
  kind: 'eventsDropped';
  count: number;
}
/** The addon caught a panic and restarted what it names. */
export interface ICrashRecoveredEvent {
  kind: 'crashRecovered';
  [detail: string]: unknown;
}

export interface IHubConfigAppliedEvent {
  kind: 'configApplied';
  edgeId: string;
  result: { generation: number; tcp: number[]; udp: number[]; failed: IPortFailure[] };
}
export interface IHubUdpFlowFailedEvent {
  kind: 'udpFlowFailed';
  edgeId: string;
  flow: number;
  port: number;
  code: string;
  reason: string;
}

export interface IHubEvents {
  configApplied: [IHubConfigAppliedEvent];
  udpFlowFailed: [IHubUdpFlowFailedEvent];
  edgeConnected: [IHubEdgeConnectedEvent];
  edgeDisconnected: [IHubEdgeDisconnectedEvent];
  authFailed: [IHubAuthFailedEvent];
  edgeDialFailed: [IHubEdgeDialFailedEvent];
  streamOpened: [IHubStreamOpenedEvent];
  streamClosed: [IHubStreamClosedEvent];
  /** The `streamClosed` records of streams that failed (`code` set). Listening to this alone costs only for failures. */
  streamFailed: [IHubStreamClosedEvent];
  eventsDropped: [IEventsDroppedEvent];
  crashRecovered: [ICrashRecoveredEvent];
  log: [ILogEvent];
  /** Emitted only while a listener is attached; otherwise the failure arrives as a `log` event. */
  error: [Error];
}

// ---------------------------------------------------------------------------------------------
// Edge
// ---------------------------------------------------------------------------------------------

export type TTransportMode = 'tcpTls' | 'quic' | 'quicWithFallback';

export interface IReconnectConfig {
  /** First retry delay; doubled per failed attempt, with jitter. */
  baseMs?: number;
  /** Longest retry delay. */
  capMs?: number;
}

export interface IEdgeExplicitConfig {
  hubHost: string;
  hubPort: number;
  edgeId: string;
  secret: string;
  /** SHA-256 of the hub certificate, 64 hex digits (colons allowed). */
  hubFingerprint?: string;
}

export interface IEdgeCommonConfig {
  /** Default `quicWithFallback`. */
  transportMode?: TTransportMode;
  /** Connect without checking the hub's certificate: anyone on the path can impersonate the hub. */
  dangerouslyDisableFingerprintPinning?: boolean;
  reconnect?: IReconnectConfig;
  performance?: IPerformanceConfig;
  limits?: ILimitsConfig;
  /** quicWithFallback: how long QUIC may take before TLS is used instead (default 3000 ms). */
  quicConnectTimeoutMs?: number;
  /** quicWithFallback: while on TLS, how often QUIC is tried again (default 30 000 ms). */
  quicProbeIntervalMs?: number;
  /** Leave the edge's nftables table in place when the edge stops (default: remove it). */
  keepFirewallOnStop?: boolean;
  /**
   * `HOST:PORT` of the admin endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz` (200
   * while the tunnel is up), `/status`. Off unless given; bind it to loopback.
   */
  adminListen?: string;
  /**
   * The edge operator's own settings for TCP services the hub names (what edgerq's consumer.xml
   * says): where each is served and its limits, which win over the hub's. A service the hub
   * does not name has no target and is not served (logged).
   */
  localServices?: IEdgeLocalService[];
}

export interface IEdgeLocalService {
  /** The service id the hub's allowed edge uses (a UUID or a name). */
  id: string;
  name?: string;
  /** The public TCP port this edge serves it on. */
  edgePort: number;
  /** The address this edge binds it on. */
  bindAddress: string;
  maxConnections?: number;
  idleTimeoutSecs?: number;
  /** `request_buffer`: overrides the hub's `bufferBytes` for this service. */
  bufferBytes?: number;
}

/**
 * An edge that does not dial its hub but waits for the hub to dial it (the hub's allowed edge
 * has `dialEdge` or `edgeToken`): the private side then needs no reachable port at all.
 */
export interface IEdgeListenConfig {
  edgeId: string;
  secret: string;
  listenForHub: {
    /** The TCP (TLS) and UDP (QUIC) port the hub dials. */
    port: number;
    /** Default all addresses (`0.0.0.0`). */
    bindHost?: string;
    /** Where the edge keeps its TLS identity (`edge-cert.pem`, `edge-key.pem`), created on first start. */
    stateDir: string;
  };
}

export type IEdgeConfig = IEdgeCommonConfig & (IEdgeExplicitConfig | { token: string } | IEdgeListenConfig);

export interface IEdgeStopOptions {
  /** How long open streams may finish after GOAWAY before they are closed. Default 10 000 ms. */
  graceMs?: number;
}

export type TEdgeState = 'connecting' | 'listening' | 'connected' | 'backoff' | 'stopped';

export interface IEdgeStatus {
  state: TEdgeState;
  hubAddress: string | null;
  transport: string | null;
  connectedSince: number | null;
  attempts: number;
  lastError: { code: string; message: string } | null;
  rttMs: number | null;
  /** QUIC tunnels: the UDP payload size the connection sends now (its discovered path MTU); null on tcpTls or when not connected. */
  quicPathMtu: number | null;
  ports: { tcp: number[]; udp: number[] };
  openStreams: number;
  bytesIn: number;
  bytesOut: number;
  /** The fields below are absent once the edge has stopped. */
  /** Streams opened on the current tunnel. */
  streamsTotal?: number;
  /** Tunnels that came up since the edge started (the first and every reconnect). */
  tunnels?: number;
  /** The public address STUN found (`ip:port`), if any. */
  publicAddress?: string | null;
  stun?: IEdgeStunStatus;
  transportMode?: TTransportMode;
  /** Why the current transport (e.g. the QUIC failure behind a TLS fallback). */
  transportReason?: string | null;
  /** The last failed QUIC attempt while on the TLS fallback. */
  quicProbe?: { at: number; code: string; message: string } | null;
  udp?: IUdpCounters;
  firewall?: IEdgeFirewallStatus;
  /** The TCP services and their counters. */
  services?: IEdgeServiceStatus[];
  [extra: string]: unknown;
}

export interface IEdgeFirewallStatus {
  /** False without libnftables or without permission; `reason` says which. */
  available: boolean;
  reason: string | null;
  table: string;
  generation: number | null;
  hash: string | null;
  /** Per-rule counters by comment: `blocked`, `rule:<id>`, `ratelimit:<id>`. */
  counters: Record<string, { packets: number; bytes: number }> | null;
  lastError: { code: string; message: string } | null;
}

export interface IEdgeTunnelConnectedEvent {
  kind: 'tunnelConnected';
  hubAddress: string;
  transport: string;
  /** Why this transport was chosen. */
  reason: string;
}
export interface IEdgeTransportChangedEvent {
  kind: 'transportChanged';
  from: string;
  to: string;
  reason: string;
}
/** The hub gave this edge's tunnel to a newer one that another process with the same edge id opened: this edge stops taking new clients on it and reconnects after `retryInMs`. */
export interface IEdgeTunnelReplacedEvent {
  kind: 'tunnelReplaced';
  reason: string;
  hint: string;
  retryInMs: number;
}
export interface IEdgeTunnelDisconnectedEvent {
  kind: 'tunnelDisconnected';
  code: TDisconnectCode;
  reason: string;
}
export interface IPortFailure {
  port: number;
  protocol: TIpProtocol;
  code: string;
  reason: string;
}
export interface IEdgePortsAssignedEvent {
  kind: 'portsAssigned';
  tcp: number[];
  udp: number[];
  failed: IPortFailure[];
  /** The same lists under the reference API's names. */
  listenPorts: number[];
  listenPortsUdp: number[];
}
export interface IEdgePortBindFailedEvent extends IPortFailure {
  kind: 'portBindFailed';
}
export interface IEdgeFirewallConfigUpdatedEvent {
  kind: 'firewallConfigUpdated';
  generation: number;
  /** Short hash of the applied snapshot (null when the snapshot was removed). */
  hash: string | null;
  applied: boolean;
  table?: string;
  snapshot: INormalisedFirewall | null;
}
export interface IEdgeFirewallConfigRejectedEvent {
  kind: 'firewallConfigRejected';
  generation: number;
  code: string;
  reason: string;
}
export interface IEdgeFirewallUnavailableEvent {
  kind: 'firewallUnavailable';
  reason: string;
}
export interface IEdgeUdpFlowsExpiredEvent {
  kind: 'udpFlowsExpired';
  count: number;
}
/** A service at its `maxConnections`: new clients are being refused (at most one event per 5 s per service). */
export interface IEdgeServiceLimitReachedEvent {
  kind: 'serviceLimitReached';
  serviceId: string;
  serviceName: string | null;
  port: number;
  maxConnections: number;
  /** Clients refused so far. */
  refused: number;
}
/** One service in the edge's status. */
export interface IEdgeServiceStatus {
  id: string;
  name: string | null;
  protocol: TIpProtocol;
  port: number;
  bindAddress: string | null;
  maxConnections: number | null;
  idleTimeoutSecs: number | null;
  /** The cap carried in each connection's OPEN record (TCP services with `bufferBytes`). */
  bufferBytes: number | null;
  /** Connections now, ever, refused at maxConnections, closed for idleness. */
  active: number;
  total: number;
  refused: number;
  idleClosed: number;
  /** Previous hops whose PROXY headers are read, and their connections refused for a missing or bad header. */
  trustProxyFrom: string[];
  proxyHeaderRefused: number;
  /** TCP: bytes from and to clients, counted when each connection closes. */
  bytesFromClients: number;
  bytesToClients: number;
}
export interface IEdgeStreamOpenedEvent {
  kind: 'streamOpened';
  streamId: number;
  port: number;
  clientAddress: string;
  clientPort: number;
}
export interface IEdgeStreamClosedEvent {
  kind: 'streamClosed';
  streamId: number;
  bytesIn: number;
  bytesOut: number;
  code: TDisconnectCode | null;
  reason: string | null;
}

export interface IEdgePublicAddressChangedEvent {
  kind: 'publicAddressChanged';
  /** `ip:port` as the STUN server saw this edge. */
  address: string;
  previous: string | null;
  /** The server that answered. */
  server: string;
}

/** The edge's STUN task (`stunIntervalSecs`): what it asks and what it found. */
export interface IEdgeStunStatus {
  enabled: boolean;
  intervalSecs: number | null;
  servers: string[];
  publicAddress: string | null;
  /** The local side of the socket the answer was for. */
  localAddress: string | null;
  server: string | null;
  /** When the last answer came (ms since the epoch). */
  at: number | null;
  /** Binding requests sent (retransmissions included), answers, rounds a server did not answer, datagrams that were not an answer to us, other failures (resolve, send). */
  requests: number;
  responses: number;
  timeouts: number;
  badResponses: number;
  errors: number;
  lastError: string | null;
}

export interface IEdgeEvents {
  tunnelConnected: [IEdgeTunnelConnectedEvent];
  tunnelDisconnected: [IEdgeTunnelDisconnectedEvent];
  portsAssigned: [IEdgePortsAssignedEvent];
  portBindFailed: [IEdgePortBindFailedEvent];
  firewallConfigUpdated: [IEdgeFirewallConfigUpdatedEvent];
  firewallConfigRejected: [IEdgeFirewallConfigRejectedEvent];
  firewallUnavailable: [IEdgeFirewallUnavailableEvent];
  transportChanged: [IEdgeTransportChangedEvent];
  tunnelReplaced: [IEdgeTunnelReplacedEvent];
  udpFlowsExpired: [IEdgeUdpFlowsExpiredEvent];
  serviceLimitReached: [IEdgeServiceLimitReachedEvent];
  /** STUN found a public address other than the last one (or the first). */
  publicAddressChanged: [IEdgePublicAddressChangedEvent];
  /** An edge that listens for its hub refused a caller (wrong or no proof of the secret, a failed handshake). */
  authFailed: [IHubAuthFailedEvent];
  streamOpened: [IEdgeStreamOpenedEvent];
  streamClosed: [IEdgeStreamClosedEvent];
  /** The `streamClosed` records of streams that failed (`code` set). Listening to this alone costs only for failures. */
  streamFailed: [IEdgeStreamClosedEvent];
  eventsDropped: [IEventsDroppedEvent];
  crashRecovered: [ICrashRecoveredEvent];
  log: [ILogEvent];
  /** Emitted only while a listener is attached; otherwise the failure arrives as a `log` event. */
  error: [Error];
}
