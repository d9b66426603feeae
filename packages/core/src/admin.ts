/**
 * The admin endpoint both daemons (and embedders) can open with `adminListen`: Prometheus
 * metrics (prom-client), liveness and readiness probes, and the status document.
 *
 *   GET /metrics  Prometheus text format: the tunnel's counters plus process metrics
 *   GET /healthz  200 while the process runs
 *   GET /readyz   200 once the hub listens / the edge's tunnel is up, else 503 with the reason
 *   GET /status   `getStatus()` as JSON
 *
 * Every tunnel metric is read from one `getStatus()` snapshot per scrape, so a scrape is
 * consistent and costs the data path nothing; only a few counters that status does not keep
 * (reconnects, dial failures) are counted from events.
 */
import type { EventEmitter } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
// Types only here: prom-client is loaded when an admin endpoint starts (AdminServer.start).
// Loading it costs a daemon ~10 MiB of RSS, which a daemon without --admin-listen does not pay.
import type { Counter, Gauge, Registry } from 'prom-client';

type TPromClient = typeof import('prom-client');
import { TunnelError } from './errors.js';
import { isValidHost, isValidPort } from './validation.js';

/** What the admin endpoint serves. */
export interface IAdminSource {
  role: 'hub' | 'edge';
  /** The hub or edge object: its events feed the few counters status does not keep. */
  emitter: EventEmitter;
  status(): Record<string, unknown>;
  /** `undefined` when ready, else why not. */
  notReady(): string | undefined;
}

export interface IAdminAddress {
  host: string;
  port: number;
}

/** `HOST:PORT` or `[IPv6]:PORT`, as `--admin-listen` takes it. */
export function parseAdminListen(text: unknown, field = 'adminListen'): IAdminAddress {
  const bad = (problem: string): TunnelError =>
    new TunnelError('ERR_INVALID_CONFIG', `${field} = ${JSON.stringify(text)}: ${problem}`, { field, value: text });
  if (typeof text !== 'string') throw bad('must be "HOST:PORT" (e.g. "127.0.0.1:9464")');
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  if (match === null) throw bad('must be "HOST:PORT" or "[IPv6]:PORT" (e.g. "127.0.0.1:9464")');
  const host = match[1] ?? match[2] ?? '';
  const port = Number(match[3]);
  if (!isValidHost(host)) throw bad(`${JSON.stringify(host)} is not a host name or address`);
  if (port !== 0 && !isValidPort(port)) throw bad('the port must be 0 to 65535');
  return { host, port };
}

/** `http://HOST:PORT` (`[IPv6]` bracketed) of an admin endpoint, with `path` appended. */
export function adminUrl(address: IAdminAddress, path = ''): string {
  return `http://${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}${path}`;
}

type TLabels = Record<string, string | number>;
type TSnapshot = Record<string, unknown>;
type TSeries = Array<[TLabels, number]>;

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const arr = (v: unknown): Array<Record<string, unknown>> => (Array.isArray(v) ? (v as Array<Record<string, unknown>>) : []);
const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {});

/** Builds the role's metrics on `registry`; each reads the snapshot `take` stored for the scrape. */
class MetricSet {
  private snapshot: TSnapshot = {};

  constructor(
    private readonly prom: TPromClient,
    private readonly registry: Registry,
  ) {}

  /** Takes the status every metric of this scrape reads. */
  take(status: TSnapshot): void {
    this.snapshot = status;
  }

  gauge(name: string, help: string, labelNames: string[], series: (s: TSnapshot) => TSeries | number): void {
    const collect = this.collector<Gauge>(series, (metric, labels, value) => metric.set(labels, value));
    new this.prom.Gauge({ name, help, labelNames, registers: [this.registry], collect() { collect(this); } });
  }

  /** A counter whose value status keeps (it restarts with the tunnel that carries it, as counters restart with a process). */
  counter(name: string, help: string, labelNames: string[], series: (s: TSnapshot) => TSeries | number): void {
    const collect = this.collector<Counter>(series, (metric, labels, value) => metric.inc(labels, Math.max(0, value)));
    new this.prom.Counter({ name, help, labelNames, registers: [this.registry], collect() { collect(this); } });
  }

  /** A metric's `collect`: every scrape starts it empty and puts the values of the scrape's snapshot. */
  private collector<M extends { reset(): void }>(series: (s: TSnapshot) => TSeries | number, put: (metric: M, labels: TLabels, value: number) => void): (metric: M) => void {
    return (metric) => {
      metric.reset();
      const values = series(this.snapshot);
      for (const [labels, value] of typeof values === 'number' ? ([[{}, values]] as TSeries) : values) put(metric, labels, value);
    };
  }

  /** A counter of events: `labels` picks the labels from each event of `kind`. */
  eventCounter(emitter: EventEmitter, kind: string, name: string, help: string, labelNames: string[], labels: (event: Record<string, unknown>) => TLabels): void {
    const counter = new this.prom.Counter({ name, help, labelNames, registers: [this.registry] });
    emitter.on(kind, (event: Record<string, unknown>) => counter.inc(labels(event)));
  }
}

/** Handshake outcomes (`status.handshakes`, or `status.listenForHub.handshakes` on a listening edge). */
function handshakeMetrics(m: MetricSet, prefix: string, of: (s: TSnapshot) => Record<string, unknown> | undefined): void {
  m.counter(`${prefix}_handshakes_total`, 'Tunnel connections that authenticated, by transport.', ['transport'], (s) => {
    const authenticated = obj(of(s)?.authenticated);
    return [
      [{ transport: 'tls' }, num(authenticated.tls)],
      [{ transport: 'quic' }, num(authenticated.quic)],
    ];
  });
  m.counter(`${prefix}_handshake_failures_total`, 'Tunnel connection attempts that failed before or during authentication, by reason (an error code, abandoned, overLimit).', ['reason'], (s) =>
    Object.entries(obj(of(s)?.failed)).map(([reason, n]) => [{ reason }, num(n)]),
  );
  m.gauge(`${prefix}_pending_handshakes`, 'Tunnel connections that have not authenticated yet, by transport.', ['transport'], (s) => {
    const pending = obj(s.pendingHandshakes ?? obj(s.listenForHub).pendingHandshakes);
    return [
      [{ transport: 'tls' }, num(pending.tls)],
      [{ transport: 'quic' }, num(pending.quic)],
    ];
  });
}

function udpMetrics(m: MetricSet, prefix: string, rows: (s: TSnapshot) => Array<[TLabels, Record<string, unknown>]>, labelNames: string[]): void {
  m.gauge(`${prefix}_udp_flows`, 'UDP flows open.', labelNames, (s) => rows(s).map(([l, u]) => [l, num(u.flows)]));
  m.counter(`${prefix}_udp_datagrams_received_total`, 'UDP datagrams received from the other side of the tunnel.', labelNames, (s) => rows(s).map(([l, u]) => [l, num(u.datagramsIn)]));
  m.counter(`${prefix}_udp_datagrams_sent_total`, 'UDP datagrams sent to the other side of the tunnel.', labelNames, (s) => rows(s).map(([l, u]) => [l, num(u.datagramsOut)]));
  m.counter(`${prefix}_udp_datagrams_dropped_total`, 'UDP datagrams dropped: malformed, for an unknown flow, over a cap, or queue full.', labelNames, (s) => rows(s).map(([l, u]) => [l, num(u.dropped)]));
}

function hubMetrics(m: MetricSet, emitter: EventEmitter): void {
  const edges = (s: TSnapshot): Array<Record<string, unknown>> => arr(s.edges);
  const perEdge = (field: string, scale = 1) => (s: TSnapshot): TSeries => edges(s).map((e) => [{ edge: String(e.edgeId) }, num(e[field]) * scale]);
  m.gauge('remoteingress_hub_up', 'Whether the hub is running (1) or stopped (0).', [], (s) => (s.running === true ? 1 : 0));
  m.gauge('remoteingress_hub_allowed_edges', 'Edges the hub accepts.', [], (s) => num(s.allowedEdges));
  m.gauge('remoteingress_hub_edges_connected', 'Edges with a tunnel up.', [], (s) => edges(s).length);
  m.gauge('remoteingress_hub_tunnels', 'Tunnels up, by transport.', ['transport'], (s) => {
    const by = new Map<string, number>([['tcpTls', 0], ['quic', 0]]);
    for (const e of edges(s)) by.set(String(e.transport), (by.get(String(e.transport)) ?? 0) + 1);
    return [...by].map(([transport, n]) => [{ transport }, n]);
  });
  m.gauge('remoteingress_hub_streams_open', 'Streams open, per edge.', ['edge'], perEdge('openStreams'));
  m.counter('remoteingress_hub_streams_total', "Streams opened on the edge's current tunnel.", ['edge'], perEdge('streamsTotal'));
  m.counter('remoteingress_hub_received_bytes_total', "Payload bytes received from the edge on its current tunnel (clients to targets).", ['edge'], perEdge('bytesIn'));
  m.counter('remoteingress_hub_sent_bytes_total', "Payload bytes sent to the edge on its current tunnel (targets to clients).", ['edge'], perEdge('bytesOut'));
  m.gauge('remoteingress_hub_tunnel_rtt_seconds', 'Last heartbeat round trip, per edge.', ['edge'], perEdge('rttMs', 1 / 1000));
  m.gauge('remoteingress_hub_quic_path_mtu_bytes', 'UDP payload size the QUIC tunnel sends now (its discovered path MTU), per QUIC edge.', ['edge'], (s) =>
    edges(s).flatMap((e): TSeries => (typeof e.quicPathMtu === 'number' ? [[{ edge: String(e.edgeId) }, e.quicPathMtu]] : [])),
  );
  m.counter('remoteingress_hub_datagrams_backlog_dropped_total', 'Datagrams dropped because the tunnel was backed up, per edge.', ['edge'], perEdge('datagramsDropped'));
  m.gauge('remoteingress_hub_draining_tunnels', "Tunnels of an edge replaced by a newer one and still finishing their streams (closed at limits.drainTimeoutMs), per edge.", ['edge'], perEdge('drainingTunnels'));
  udpMetrics(m, 'remoteingress_hub', (s) => edges(s).map((e) => [{ edge: String(e.edgeId) }, obj(e.udp)]), ['edge']);
  handshakeMetrics(m, 'remoteingress_hub', (s) => obj(s.handshakes));
  m.eventCounter(emitter, 'edgeConnected', 'remoteingress_hub_edge_connects_total', 'Tunnels that came up, per edge (the first and every reconnect).', ['edge', 'transport'], (e) => ({
    edge: String(e.edgeId),
    transport: String(e.transport),
  }));
  m.eventCounter(emitter, 'edgeDialFailed', 'remoteingress_hub_dial_failures_total', 'Failed dials to edges that listen for the hub.', ['edge'], (e) => ({ edge: String(e.edgeId) }));
}

function edgeMetrics(m: MetricSet): void {
  const services = (s: TSnapshot): Array<Record<string, unknown>> => arr(s.services);
  const labels = (svc: Record<string, unknown>): TLabels => ({ service: String(svc.id), protocol: String(svc.protocol), port: num(svc.port) });
  const perService = (field: string, protocol?: string) => (s: TSnapshot): TSeries =>
    services(s)
      .filter((svc) => protocol === undefined || svc.protocol === protocol)
      .map((svc) => [labels(svc), num(svc[field])]);
  const svcLabels = ['service', 'protocol', 'port'];
  m.gauge('remoteingress_edge_tunnel_up', 'Whether the tunnel to the hub is up (1) or not (0).', [], (s) => (s.state === 'connected' ? 1 : 0));
  m.gauge('remoteingress_edge_tunnel_transport', 'The transport of the tunnel that is up (1 for it).', ['transport'], (s) =>
    typeof s.transport === 'string' && s.state === 'connected' ? [[{ transport: s.transport }, 1]] : [],
  );
  m.counter('remoteingress_edge_tunnels_total', 'Tunnels that came up since the edge started (the first and every reconnect).', [], (s) => num(s.tunnels));
  m.gauge('remoteingress_edge_connect_failures', 'Failed attempts since the last tunnel was up.', [], (s) => num(s.attempts));
  m.gauge('remoteingress_edge_streams_open', 'Streams open.', [], (s) => num(s.openStreams));
  m.counter('remoteingress_edge_streams_total', 'Streams opened on the current tunnel.', [], (s) => num(s.streamsTotal));
  m.counter('remoteingress_edge_received_bytes_total', 'Payload bytes received from the hub on the current tunnel (targets to clients).', [], (s) => num(s.bytesIn));
  m.counter('remoteingress_edge_sent_bytes_total', 'Payload bytes sent to the hub on the current tunnel (clients to targets).', [], (s) => num(s.bytesOut));
  m.gauge('remoteingress_edge_tunnel_rtt_seconds', 'Last heartbeat round trip.', [], (s) => num(s.rttMs) / 1000);
  m.gauge('remoteingress_edge_quic_path_mtu_bytes', 'UDP payload size the QUIC tunnel sends now (its discovered path MTU); absent on tcpTls.', [], (s) =>
    typeof s.quicPathMtu === 'number' ? [[{}, s.quicPathMtu]] : [],
  );
  m.gauge('remoteingress_edge_service_connections', 'Client connections (UDP: flows) open, per service.', svcLabels, perService('active'));
  m.counter('remoteingress_edge_service_connections_total', 'Client connections (UDP: flows) admitted, per service.', svcLabels, perService('total'));
  m.counter('remoteingress_edge_service_refused_total', 'Clients refused at maxConnections, per service.', svcLabels, perService('refused'));
  m.counter('remoteingress_edge_service_idle_closed_total', 'Clients closed for idleTimeoutSecs, per service.', svcLabels, perService('idleClosed'));
  m.counter('remoteingress_edge_service_proxy_header_refused_total', 'Connections from a trusted hop refused for a missing or bad PROXY header, per service.', svcLabels, perService('proxyHeaderRefused'));
  m.counter('remoteingress_edge_service_received_bytes_total', 'Bytes received from clients on closed TCP connections, per service.', svcLabels, perService('bytesFromClients', 'tcp'));
  m.counter('remoteingress_edge_service_sent_bytes_total', 'Bytes sent to clients on closed TCP connections, per service.', svcLabels, perService('bytesToClients', 'tcp'));
  udpMetrics(m, 'remoteingress_edge', (s) => [[{}, obj(s.udp)]], []);
  m.counter('remoteingress_edge_udp_flows_refused_total', 'New UDP flows refused at a cap (maxUdpFlowsPerEdge, …PerService, …PerSource).', [], (s) => num(obj(s.udp).flowsRefused));
  m.gauge('remoteingress_edge_firewall_available', 'Whether the edge can apply firewall snapshots (libnftables and permission).', [], (s) => (obj(s.firewall).available === true ? 1 : 0));
  m.gauge('remoteingress_edge_firewall_generation', 'Generation of the firewall snapshot applied (0: none).', [], (s) => num(obj(s.firewall).generation));
  const ruleCounters = (field: 'packets' | 'bytes') => (s: TSnapshot): TSeries =>
    Object.entries(obj(obj(s.firewall).counters)).map(([rule, c]) => [{ rule }, num(obj(c)[field])]);
  m.counter('remoteingress_edge_firewall_rule_packets_total', 'Packets matched per firewall rule (blocked, rule:<id>, ratelimit:<id>).', ['rule'], ruleCounters('packets'));
  m.counter('remoteingress_edge_firewall_rule_bytes_total', 'Bytes matched per firewall rule.', ['rule'], ruleCounters('bytes'));
  const stun = (s: TSnapshot): Record<string, unknown> => obj(s.stun);
  m.counter('remoteingress_edge_stun_requests_total', 'STUN Binding requests sent (retransmissions included).', [], (s) => num(stun(s).requests));
  m.counter('remoteingress_edge_stun_responses_total', 'STUN answers that named a public address.', [], (s) => num(stun(s).responses));
  m.counter('remoteingress_edge_stun_timeouts_total', 'STUN servers that did not answer in a round.', [], (s) => num(stun(s).timeouts));
  m.counter('remoteingress_edge_stun_bad_responses_total', 'Datagrams on a STUN socket that were not an answer to our request.', [], (s) => num(stun(s).badResponses));
  m.counter('remoteingress_edge_stun_errors_total', 'STUN servers that could not be resolved or sent to.', [], (s) => num(stun(s).errors));
  handshakeMetrics(m, 'remoteingress_edge', (s) => (s.listenForHub === null || s.listenForHub === undefined ? undefined : obj(obj(s.listenForHub).handshakes)));
}

/** The admin HTTP endpoint of one hub or edge. */
export class AdminServer {
  private constructor(
    private readonly server: Server,
    readonly address: IAdminAddress,
    private readonly registry: Registry,
    private readonly metricSet: MetricSet,
    private readonly source: IAdminSource,
  ) {}

  /** Binds `listen` and serves `source`. Fails (ERR_BIND) if the address cannot be bound. */
  static async start(listen: IAdminAddress, source: IAdminSource): Promise<AdminServer> {
    const prom = await import('prom-client');
    const registry = new prom.Registry();
    prom.collectDefaultMetrics({ register: registry });
    // prom-client names three gauges `…_total`, which Prometheus reserves for counters
    // (`promtool check metrics` fails on them); their per-type gauges without the suffix stay.
    for (const name of MISNAMED_DEFAULT_METRICS) registry.removeSingleMetric(name);
    const metricSet = new MetricSet(prom, registry);
    if (source.role === 'hub') hubMetrics(metricSet, source.emitter);
    else edgeMetrics(metricSet);
    let admin: AdminServer | undefined;
    const server = createServer((request, response) => {
      if (admin !== undefined) void admin.handle(request, response);
    });
    // Slow or idle scrapers must not hold sockets open for long.
    server.requestTimeout = ADMIN_REQUEST_TIMEOUT_MS;
    server.headersTimeout = ADMIN_REQUEST_TIMEOUT_MS;
    server.keepAliveTimeout = ADMIN_KEEP_ALIVE_MS;
    await new Promise<void>((done, fail) => {
      server.once('error', (error: NodeJS.ErrnoException) =>
        fail(new TunnelError('ERR_BIND', `admin endpoint: cannot listen on ${listen.host}:${listen.port}: ${error.message}`, { cause: error })),
      );
      server.listen(listen.port, listen.host, () => done());
    });
    const bound = server.address() as AddressInfo;
    admin = new AdminServer(server, { host: listen.host, port: bound.port }, registry, metricSet, source);
    return admin;
  }

  /** The `/metrics` document. */
  async metrics(): Promise<string> {
    this.metricSet.take(this.source.status());
    return this.registry.metrics();
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = (request.url ?? '/').split('?')[0];
    const send = (status: number, type: string, body: string, extra: Record<string, string> = {}): void => {
      response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...extra });
      response.end(request.method === 'HEAD' ? undefined : body);
    };
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      send(405, 'text/plain; charset=utf-8', 'only GET and HEAD\n', { allow: 'GET, HEAD' });
      return;
    }
    try {
      switch (path) {
        case '/metrics':
          send(200, this.registry.contentType, await this.metrics());
          return;
        case '/healthz':
          send(200, 'text/plain; charset=utf-8', 'ok\n');
          return;
        case '/readyz': {
          const why = this.source.notReady();
          if (why === undefined) send(200, 'text/plain; charset=utf-8', 'ready\n');
          else send(503, 'text/plain; charset=utf-8', `not ready: ${why}\n`);
          return;
        }
        case '/status':
          send(200, 'application/json', `${JSON.stringify(this.source.status(), null, 2)}\n`);
          return;
        default:
          send(404, 'text/plain; charset=utf-8', 'not found: try /metrics, /healthz, /readyz or /status\n');
      }
    } catch (error) {
      send(500, 'text/plain; charset=utf-8', `${(error as Error).message}\n`);
    }
  }

  /** Stops listening and closes open admin connections. */
  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((done) => this.server.close(() => done()));
    this.registry.clear();
  }
}

const MISNAMED_DEFAULT_METRICS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/** A scrape that has not sent its request within 10 s is a stuck client; Prometheus' default scrape timeout is 10 s too. */
const ADMIN_REQUEST_TIMEOUT_MS = 10_000;
/** Prometheus reuses connections between scrapes (default interval 15 s+); keep idle ones briefly. */
const ADMIN_KEEP_ALIVE_MS = 5_000;
