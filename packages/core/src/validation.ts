import { isIP } from 'node:net';
import { parse as parseJsonc, printParseErrorCode, type ParseError } from 'jsonc-parser';
import { TunnelError, type IConfigIssue } from './errors.js';
import { decodeEdgeToken, normaliseFingerprint, type IEdgeToken } from './token.js';
import type {
  INormalisedDial,
  INormalisedEdge,
  INormalisedFirewall,
  INormalisedPort,
  ILimitsConfig,
  IPerformanceConfig,
  TIpProtocol,
  TProxyProtocol,
  TUdpProxyMode,
} from './types.js';

/** Edge ids travel in tokens, logs and nftables comments, so they stay short and shell-safe. */
export const EDGE_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
/**
 * 16 characters: shorter secrets make an offline guess against an observed handshake cheap;
 * `openssl rand -hex 16` gives 32.
 */
export const MIN_SECRET_LENGTH = 16;
const RATE_PATTERN = /^(\d+)\/(second|minute|hour)$/;
/** Firewall ids become parts of nftables set names and comments on the edge: no dots, ≤ 32. */
const FIREWALL_ID_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;
const PROXY_PROTOCOLS: readonly TProxyProtocol[] = ['v1', 'v2', 'none'];
const IP_PROTOCOLS: readonly TIpProtocol[] = ['tcp', 'udp'];
/** RFC 1123 host names (labels of letters, digits, hyphens; `_` tolerated as in service names). */
const HOSTNAME_PATTERN =
  /^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;

const EDGE_KEYS = new Set([
  'id',
  'secret',
  'listenPorts',
  'listenPortsUdp',
  'services',
  'bindAddress',
  'proxyProtocol',
  'firewallConfig',
  'stunIntervalSecs',
  'stunServers',
  'dialEdge',
  'edgeToken',
]);
const DIAL_KEYS = new Set(['host', 'port', 'fingerprint', 'transportMode', 'reconnect']);
const DIAL_TRANSPORT_MODES = ['tcpTls', 'quic', 'quicWithFallback'];
/** A dialing hub's redial backoff, as an edge's: first retry after 500 ms, growing to 30 s. */
const DEFAULT_DIAL_RECONNECT = { baseMs: 500, capMs: 30_000 };
const PORT_KEYS = new Set(['port', 'targetHost', 'targetPort', 'proxyProtocol', 'proxyProtocolUdp']);
const SERVICE_KEYS = new Set([
  'id',
  'name',
  'protocol',
  'edgePort',
  'bindAddress',
  'target',
  'proxyProtocol',
  'proxyProtocolUdp',
  'maxConnections',
  'idleTimeoutSecs',
  'bufferBytes',
  'trustProxyFrom',
]);
/** A service id: a UUID or a name, in the characters edge ids use (they travel in logs and status). */
const SERVICE_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
/** A service's smallest `bufferBytes`: the smallest cap an OPEN record may carry (docs/protocol.md §5); below it every frame would be a partial one. */
export const MIN_BUFFER_BYTES = 1024;
const UDP_PROXY_MODES: readonly TUdpProxyMode[] = ['everyDatagram', 'firstDatagram', 'separateDatagram'];
const FIREWALL_KEYS = new Set(['blockedIps', 'rateLimits', 'rules']);
const RATE_LIMIT_KEYS = new Set(['id', 'port', 'protocol', 'rate', 'burst', 'perSourceIP']);
const RULE_KEYS = new Set(['id', 'direction', 'action', 'sourceIP', 'destPort', 'protocol']);
const PERFORMANCE_KEYS = ['workerThreads', 'maxFramePayload', 'streamWindow', 'connectionWindow', 'socketBuffer', 'quicMaxUdpPayload', 'quicMtuDiscoveryMax'] as const;
const LIMIT_KEYS = [
  'maxStreamsPerEdge',
  'maxPendingHandshakes',
  'maxPendingHandshakesPerSource',
  'handshakeTimeoutMs',
  'targetConnectTimeoutMs',
  'heartbeatIntervalMs',
  'heartbeatTimeoutMs',
  'authFailureBurst',
  'authFailuresPerMinute',
  'udpFlowIdleMs',
  'maxUdpFlowsPerEdge',
  'maxUdpFlowsPerService',
  'maxUdpFlowsPerSource',
  'udpUnansweredIdleMs',
  'drainTimeoutMs',
] as const;

export function isValidIp(value: unknown): value is string {
  return typeof value === 'string' && isIP(value) !== 0;
}

/** An IPv4/IPv6 address, or one with a `/prefix` no longer than the address family allows. */
export function isValidIpOrCidr(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  const slash = value.indexOf('/');
  if (slash === -1) return isIP(value) !== 0;
  const family = isIP(value.slice(0, slash));
  const prefix = value.slice(slash + 1);
  if (family === 0 || !/^\d{1,3}$/.test(prefix)) return false;
  return Number(prefix) <= (family === 4 ? 32 : 128);
}

export function isValidHost(value: unknown): value is string {
  return typeof value === 'string' && (isIP(value) !== 0 || HOSTNAME_PATTERN.test(value));
}

export function isValidPort(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 65535;
}

/** Renders a value for an error message; long values are cut so one message stays one line. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'undefined';
  let text: string;
  try {
    text = typeof value === 'string' ? JSON.stringify(value) : (JSON.stringify(value) ?? String(value));
  } catch {
    text = String(value);
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Collects every problem in one pass so a user fixes a file once, not once per error. */
class Issues {
  readonly list: IConfigIssue[] = [];

  constructor(private readonly label: (field: string) => string) {}

  add(field: string, value: unknown, problem: string, redact = false): void {
    const shown = redact ? `<${typeof value === 'string' ? `${value.length} characters` : typeof value}>` : describeValue(value);
    this.list.push({ field, value: redact ? undefined : value, message: `${this.label(field)} = ${shown}: ${problem}` });
  }

  unknownKeys(value: Record<string, unknown>, allowed: ReadonlySet<string>, path: string): void {
    for (const key of Object.keys(value)) {
      if (!allowed.has(key)) {
        this.add(join(path, key), value[key], `unknown field (expected one of ${[...allowed].join(', ')})`);
      }
    }
  }

  throwIfAny(subject: string): void {
    const [first] = this.list;
    if (first === undefined) return;
    const message =
      this.list.length === 1
        ? `invalid ${subject}: ${first.message}`
        : `invalid ${subject} (${this.list.length} problems):\n${this.list.map((issue) => `  - ${issue.message}`).join('\n')}`;
    throw new TunnelError('ERR_INVALID_CONFIG', message, { field: first.field, value: first.value, issues: this.list });
  }
}

function join(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return path === '' ? key : `${path}.${key}`;
}

export interface IValidateEdgesOptions {
  /** The hub's default target, filled into ports that name none. */
  targetHost: string;
}

/**
 * Validates a complete allowed-edge list and returns the addon's normalised `edgesJson` shape.
 * Throws one `ERR_INVALID_CONFIG` listing every problem (edge id, field, value); nothing partial
 * is ever returned, so a caller can apply the whole list or keep the old one.
 */
export function validateAllowedEdges(edges: unknown, options: IValidateEdgesOptions): INormalisedEdge[] {
  const ids: string[] = [];
  const issues = new Issues((field) => {
    const match = /^allowedEdges\[(\d+)\]\.?(.*)$/.exec(field);
    if (match === null) return field;
    const id = ids[Number(match[1])];
    const where = id === undefined ? `allowedEdges[${match[1]}]` : `edge "${id}"`;
    return match[2] === '' ? where : `${where} ${match[2]}`;
  });

  if (!Array.isArray(edges)) {
    issues.add('allowedEdges', edges, 'must be an array of allowed edges');
    issues.throwIfAny('allowed edges');
    return [];
  }
  // Ids first, so every later message can name the edge it is about.
  edges.forEach((edge, index) => {
    const id = isRecord(edge) ? (edge.id ?? edgeTokenOf(edge)?.edgeId) : undefined;
    if (typeof id === 'string' && EDGE_ID_PATTERN.test(id)) ids[index] = id;
  });

  const seen = new Map<string, number>();
  const normalised = edges.map((edge, index) => {
    const path = `allowedEdges[${index}]`;
    if (!isRecord(edge)) {
      issues.add(path, edge, 'must be an object like {"id": "edge-1", "secret": "…", "listenPorts": [443]}');
      return undefined;
    }
    const id = ids[index];
    if (id === undefined) {
      issues.add(join(path, 'id'), edge.id, 'must be 1-64 characters of A-Z a-z 0-9 . _ -');
    } else if (seen.has(id)) {
      issues.add(join(path, 'id'), edge.id, `duplicate id (also allowedEdges[${seen.get(id)}])`);
    } else {
      seen.set(id, index);
    }
    return normaliseEdge(edge, path, options, issues);
  });
  issues.throwIfAny('allowed edges');
  return normalised as INormalisedEdge[];
}

function normaliseEdge(
  edge: Record<string, unknown>,
  path: string,
  options: IValidateEdgesOptions,
  issues: Issues,
): INormalisedEdge {
  issues.unknownKeys(edge, EDGE_KEYS, path);

  const { dial, token } = normaliseDial(edge, path, issues);
  const secret = edge.secret ?? token?.secret;
  if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
    issues.add(join(path, 'secret'), secret, `must be a string of at least ${MIN_SECRET_LENGTH} characters`, true);
  }

  let edgeProxy: TProxyProtocol | undefined;
  if (edge.proxyProtocol !== undefined) {
    if (PROXY_PROTOCOLS.includes(edge.proxyProtocol as TProxyProtocol)) edgeProxy = edge.proxyProtocol as TProxyProtocol;
    else issues.add(join(path, 'proxyProtocol'), edge.proxyProtocol, "must be 'v1', 'v2' or 'none'");
  }

  let bindAddress: string | null = null;
  if (edge.bindAddress !== undefined && edge.bindAddress !== null) {
    if (isValidIp(edge.bindAddress)) bindAddress = edge.bindAddress;
    else issues.add(join(path, 'bindAddress'), edge.bindAddress, 'must be an IPv4 or IPv6 address');
  }

  // An edge names what it serves: plain ports, named services, or both (an empty list is a
  // deliberate "nothing yet"; a missing one is usually a typo in the key).
  if (edge.listenPorts === undefined && edge.services === undefined) {
    issues.add(join(path, 'listenPorts'), undefined, 'is required unless the edge has services (an array of ports, may be empty)');
  }
  const tcp = normalisePorts(edge.listenPorts ?? [], join(path, 'listenPorts'), 'tcp', edgeProxy ?? 'v1', options, issues);
  // PROXY v1 has no way to say "UDP", so UDP ports take v2 unless the edge turned headers off.
  const udpDefault: TProxyProtocol = edgeProxy === 'none' ? 'none' : 'v2';
  const udp = normalisePorts(edge.listenPortsUdp ?? [], join(path, 'listenPortsUdp'), 'udp', udpDefault, options, issues);
  if (edge.services !== undefined) {
    normaliseServices(edge.services, join(path, 'services'), { tcp: edgeProxy ?? 'v1', udp: udpDefault }, { tcp, udp }, issues);
  }

  let firewall: INormalisedFirewall | null = null;
  if (edge.firewallConfig !== undefined && edge.firewallConfig !== null) {
    firewall = normaliseFirewall(edge.firewallConfig, join(path, 'firewallConfig'), issues);
  }

  let stunIntervalSecs: number | null = null;
  if (edge.stunIntervalSecs !== undefined && edge.stunIntervalSecs !== null) {
    const value = edge.stunIntervalSecs;
    if (typeof value === 'number' && Number.isSafeInteger(value) && value > 0) stunIntervalSecs = value;
    else issues.add(join(path, 'stunIntervalSecs'), value, 'must be a positive integer number of seconds');
  }
  const stunServers: string[] = [];
  if (edge.stunServers !== undefined) {
    if (!Array.isArray(edge.stunServers) || edge.stunServers.length > MAX_STUN_SERVERS) {
      issues.add(join(path, 'stunServers'), edge.stunServers, `must be an array of at most ${MAX_STUN_SERVERS} "host:port" strings`);
    } else {
      edge.stunServers.forEach((server: unknown, i: number) => {
        if (isStunServer(server)) stunServers.push(server);
        else issues.add(join(join(path, 'stunServers'), i), server, 'must be "host", "host:port" or "[IPv6]:port"');
      });
    }
  }

  const id = edge.id ?? token?.edgeId;
  return {
    id: typeof id === 'string' ? id : '',
    secret: typeof secret === 'string' ? secret : '',
    bindAddress,
    tcp,
    udp,
    firewall,
    stunIntervalSecs,
    stunServers,
    ...(dial === null ? {} : { dial }),
  };
}

/** Servers are tried in order each round; more than a handful only delays the answer. */
const MAX_STUN_SERVERS = 8;

function isStunServer(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(value);
  if (bracketed !== null) return isValidIp(bracketed[1] ?? '') && (bracketed[2] === undefined || isValidPort(Number(bracketed[2])));
  if (isValidIp(value)) return true; // a bare address, IPv6 included
  const text: string = value;
  const [host, port, ...rest] = text.split(':');
  return rest.length === 0 && isValidHost(host ?? '') && (port === undefined || isValidPort(Number(port)));
}

/** The edge token of an allowed edge, if it has one that decodes (errors are reported later). */
function edgeTokenOf(edge: Record<string, unknown>): IEdgeToken | undefined {
  if (typeof edge.edgeToken !== 'string') return undefined;
  try {
    return decodeEdgeToken(edge.edgeToken);
  } catch {
    return undefined;
  }
}

/**
 * `dialEdge` or `edgeToken`: the hub dials this edge. A token carries the edge's address,
 * fingerprint, id and secret; `id` and `secret`, when also given, must agree with it.
 */
function normaliseDial(
  edge: Record<string, unknown>,
  path: string,
  issues: Issues,
): { dial: INormalisedEdge['dial'] | null; token: IEdgeToken | undefined } {
  let token: IEdgeToken | undefined;
  if (edge.edgeToken !== undefined) {
    if (edge.dialEdge !== undefined) {
      issues.add(join(path, 'dialEdge'), edge.dialEdge, 'give dialEdge or edgeToken, not both (the token carries the address and fingerprint)');
    }
    try {
      token = decodeEdgeToken(edge.edgeToken as string);
    } catch (error) {
      issues.add(join(path, 'edgeToken'), undefined, (error as Error).message, true);
      return { dial: null, token: undefined };
    }
    if (edge.id !== undefined && edge.id !== token.edgeId) {
      issues.add(join(path, 'id'), edge.id, `differs from the edge token's edge id ${JSON.stringify(token.edgeId)}`);
    }
    if (edge.secret !== undefined && edge.secret !== token.secret) {
      issues.add(join(path, 'secret'), edge.secret, "differs from the edge token's secret (leave secret out: the token carries it)", true);
    }
    return {
      dial: { host: token.edgeHost, port: token.edgePort, fingerprint: token.edgeFingerprint, transportMode: 'quicWithFallback', reconnect: { ...DEFAULT_DIAL_RECONNECT } },
      token,
    };
  }
  if (edge.dialEdge === undefined || edge.dialEdge === null) return { dial: null, token: undefined };
  const at = join(path, 'dialEdge');
  const d = edge.dialEdge;
  if (!isRecord(d)) {
    issues.add(at, d, 'must be an object {host, port, fingerprint, transportMode?, reconnect?}');
    return { dial: null, token: undefined };
  }
  issues.unknownKeys(d, DIAL_KEYS, at);
  if (!isValidHost(d.host)) issues.add(join(at, 'host'), d.host, 'must be a host name or IP address');
  if (!isValidPort(d.port)) issues.add(join(at, 'port'), d.port, 'must be an integer from 1 to 65535');
  const fingerprint = normaliseFingerprint(d.fingerprint);
  if (fingerprint === null) {
    issues.add(join(at, 'fingerprint'), d.fingerprint, "must be 64 hex digits (SHA-256 of the edge's certificate, printed by the edge at start; colons allowed)");
  }
  const transportMode = d.transportMode ?? 'quicWithFallback';
  if (typeof transportMode !== 'string' || !DIAL_TRANSPORT_MODES.includes(transportMode)) {
    issues.add(join(at, 'transportMode'), transportMode, `must be one of ${DIAL_TRANSPORT_MODES.join(', ')}`);
  }
  const reconnect = { ...DEFAULT_DIAL_RECONNECT };
  if (d.reconnect !== undefined) {
    if (!isRecord(d.reconnect)) {
      issues.add(join(at, 'reconnect'), d.reconnect, 'must be an object {baseMs?, capMs?}');
    } else {
      issues.unknownKeys(d.reconnect, new Set(['baseMs', 'capMs']), join(at, 'reconnect'));
      for (const key of ['baseMs', 'capMs'] as const) {
        const v = d.reconnect[key];
        if (v === undefined) continue;
        if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) reconnect[key] = v;
        else issues.add(join(at, `reconnect.${key}`), v, 'must be a positive integer number of milliseconds');
      }
      if (d.reconnect.capMs === undefined) reconnect.capMs = Math.max(reconnect.capMs, reconnect.baseMs);
      if (reconnect.capMs < reconnect.baseMs) issues.add(join(at, 'reconnect.capMs'), reconnect.capMs, `must not be below reconnect.baseMs (${reconnect.baseMs})`);
    }
  }
  return {
    dial: { host: d.host as string, port: d.port as number, fingerprint: fingerprint ?? '', transportMode: transportMode as INormalisedDial['transportMode'], reconnect },
    token: undefined,
  };
}

function normalisePorts(
  value: unknown,
  path: string,
  protocol: TIpProtocol,
  defaultProxy: TProxyProtocol,
  options: IValidateEdgesOptions,
  issues: Issues,
): INormalisedPort[] {
  if (!Array.isArray(value)) {
    issues.add(path, value, 'must be an array of ports (numbers or {port, targetHost?, targetPort?, proxyProtocol?})');
    return [];
  }
  const seen = new Map<number, number>();
  const ports: INormalisedPort[] = [];
  value.forEach((entry, index) => {
    const entryPath = join(path, index);
    const spec: Record<string, unknown> = typeof entry === 'number' ? { port: entry } : isRecord(entry) ? entry : {};
    if (typeof entry !== 'number' && !isRecord(entry)) {
      issues.add(entryPath, entry, 'must be a port number or {port, targetHost?, targetPort?, proxyProtocol?}');
      return;
    }
    issues.unknownKeys(spec, PORT_KEYS, entryPath);
    const portPath = typeof entry === 'number' ? entryPath : join(entryPath, 'port');
    const port = spec.port;
    if (!isValidPort(port)) {
      issues.add(portPath, port, 'must be an integer from 1 to 65535');
    } else if (seen.has(port)) {
      issues.add(portPath, port, `duplicate ${protocol.toUpperCase()} port (also ${join(path, seen.get(port) ?? 0)})`);
    } else {
      seen.set(port, index);
    }

    let targetHost = options.targetHost;
    if (spec.targetHost !== undefined) {
      if (isValidHost(spec.targetHost)) targetHost = spec.targetHost;
      else issues.add(join(entryPath, 'targetHost'), spec.targetHost, 'must be a non-empty host name or IP address');
    }
    let targetPort = isValidPort(port) ? port : 0;
    if (spec.targetPort !== undefined) {
      if (isValidPort(spec.targetPort)) targetPort = spec.targetPort;
      else issues.add(join(entryPath, 'targetPort'), spec.targetPort, 'must be an integer from 1 to 65535');
    }
    let proxyProtocol = defaultProxy;
    if (spec.proxyProtocol !== undefined) {
      if (!PROXY_PROTOCOLS.includes(spec.proxyProtocol as TProxyProtocol)) {
        issues.add(join(entryPath, 'proxyProtocol'), spec.proxyProtocol, "must be 'v1', 'v2' or 'none'");
      } else if (protocol === 'udp' && spec.proxyProtocol === 'v1') {
        issues.add(join(entryPath, 'proxyProtocol'), spec.proxyProtocol, "PROXY v1 cannot carry UDP; use 'v2' or 'none'");
      } else {
        proxyProtocol = spec.proxyProtocol as TProxyProtocol;
      }
    }
    let proxyProtocolUdp: TUdpProxyMode = 'everyDatagram';
    if (spec.proxyProtocolUdp !== undefined) {
      if (protocol === 'tcp') {
        issues.add(join(entryPath, 'proxyProtocolUdp'), spec.proxyProtocolUdp, 'applies to UDP ports only (listenPortsUdp)');
      } else if (!UDP_PROXY_MODES.includes(spec.proxyProtocolUdp as TUdpProxyMode)) {
        issues.add(join(entryPath, 'proxyProtocolUdp'), spec.proxyProtocolUdp, "must be 'everyDatagram', 'firstDatagram' or 'separateDatagram'");
      } else {
        proxyProtocolUdp = spec.proxyProtocolUdp as TUdpProxyMode;
      }
    }
    const normalised: INormalisedPort = { port: isValidPort(port) ? port : 0, targetHost, targetPort, proxyProtocol };
    if (protocol === 'udp') normalised.proxyProtocolUdp = proxyProtocolUdp;
    ports.push(normalised);
  });
  return ports;
}

/** `addr/prefix` or a bare address (as /32 or /128); undefined when it is neither. */
function normaliseCidr(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  // Zone ids (fe80::1%eth0) name an interface, not a network; the addon refuses them too.
  if (value.includes('%')) return undefined;
  const [addr, prefix, extra] = value.split('/');
  const family = isIP(addr ?? '');
  if (family === 0 || extra !== undefined) return undefined;
  const max = family === 4 ? 32 : 128;
  if (prefix === undefined) return `${addr}/${max}`;
  if (!/^\d{1,3}$/.test(prefix) || Number(prefix) > max) return undefined;
  return `${addr}/${Number(prefix)}`;
}

/**
 * Named services: each becomes one port entry of its protocol, carrying its id and limits.
 * `listenPorts` / `listenPortsUdp` entries are services too (ids `tcp/<port>`, `udp/<port>`), so
 * a port may appear once per protocol across both forms.
 */
function normaliseServices(
  value: unknown,
  path: string,
  defaults: Record<TIpProtocol, TProxyProtocol>,
  into: Record<TIpProtocol, INormalisedPort[]>,
  issues: Issues,
): void {
  if (!Array.isArray(value)) {
    issues.add(path, value, 'must be an array of services {id, protocol, edgePort, target: {host, port}, …}');
    return;
  }
  const ids = new Map<string, number>();
  value.forEach((entry, index) => {
    const at = join(path, index);
    if (!isRecord(entry)) {
      issues.add(at, entry, 'must be an object {id, protocol, edgePort, target: {host, port}, …}');
      return;
    }
    issues.unknownKeys(entry, SERVICE_KEYS, at);
    const id = entry.id;
    if (typeof id !== 'string' || !SERVICE_ID_PATTERN.test(id)) {
      issues.add(join(at, 'id'), id, 'must be a UUID or a name of 1–64 characters of A-Z a-z 0-9 . _ -');
    } else if (ids.has(id)) {
      issues.add(join(at, 'id'), id, `duplicate service id (also ${join(path, ids.get(id) ?? 0)})`);
    } else {
      ids.set(id, index);
    }
    const protocol = entry.protocol;
    if (!IP_PROTOCOLS.includes(protocol as TIpProtocol)) {
      issues.add(join(at, 'protocol'), protocol, "must be 'tcp' or 'udp'");
      return;
    }
    const proto = protocol as TIpProtocol;
    if (entry.name !== undefined && (typeof entry.name !== 'string' || entry.name.length === 0 || entry.name.length > 128)) {
      issues.add(join(at, 'name'), entry.name, 'must be a string of 1–128 characters');
    }
    if (!isValidPort(entry.edgePort)) issues.add(join(at, 'edgePort'), entry.edgePort, 'must be an integer from 1 to 65535');
    else if (into[proto].some((p) => p.port === entry.edgePort)) {
      issues.add(join(at, 'edgePort'), entry.edgePort, `${proto.toUpperCase()} port already served by another service or listen port of this edge`);
    }
    const target = entry.target;
    let targetHost = '';
    let targetPort = 0;
    if (!isRecord(target)) issues.add(join(at, 'target'), target, 'must be {host, port}');
    else {
      issues.unknownKeys(target, new Set(['host', 'port']), join(at, 'target'));
      if (isValidHost(target.host)) targetHost = target.host;
      else issues.add(join(join(at, 'target'), 'host'), target.host, 'must be a non-empty host name or IP address');
      if (isValidPort(target.port)) targetPort = target.port;
      else issues.add(join(join(at, 'target'), 'port'), target.port, 'must be an integer from 1 to 65535');
    }
    let proxyProtocol = defaults[proto];
    if (entry.proxyProtocol !== undefined) {
      if (!PROXY_PROTOCOLS.includes(entry.proxyProtocol as TProxyProtocol)) issues.add(join(at, 'proxyProtocol'), entry.proxyProtocol, "must be 'v1', 'v2' or 'none'");
      else if (proto === 'udp' && entry.proxyProtocol === 'v1') issues.add(join(at, 'proxyProtocol'), entry.proxyProtocol, "PROXY v1 cannot carry UDP; use 'v2' or 'none'");
      else proxyProtocol = entry.proxyProtocol as TProxyProtocol;
    }
    const service: INormalisedPort = { port: isValidPort(entry.edgePort) ? entry.edgePort : 0, targetHost, targetPort, proxyProtocol, service: typeof id === 'string' ? id : '' };
    if (proto === 'udp') {
      service.proxyProtocolUdp = 'everyDatagram';
      if (entry.proxyProtocolUdp !== undefined) {
        if (UDP_PROXY_MODES.includes(entry.proxyProtocolUdp as TUdpProxyMode)) service.proxyProtocolUdp = entry.proxyProtocolUdp as TUdpProxyMode;
        else issues.add(join(at, 'proxyProtocolUdp'), entry.proxyProtocolUdp, "must be 'everyDatagram', 'firstDatagram' or 'separateDatagram'");
      }
    } else if (entry.proxyProtocolUdp !== undefined) {
      issues.add(join(at, 'proxyProtocolUdp'), entry.proxyProtocolUdp, "applies to 'udp' services only");
    }
    if (typeof entry.name === 'string') service.name = entry.name;
    if (entry.bindAddress !== undefined) {
      if (!isValidIp(entry.bindAddress) || entry.bindAddress.includes('%')) issues.add(join(at, 'bindAddress'), entry.bindAddress, 'must be an IPv4 or IPv6 address');
      else service.bindAddress = entry.bindAddress;
    }
    for (const key of ['maxConnections', 'idleTimeoutSecs'] as const) {
      const v = entry[key];
      if (v === undefined) continue;
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0 || v > 0xffff_ffff) issues.add(join(at, key), v, 'must be a positive integer');
      else service[key] = v;
    }
    if (entry.trustProxyFrom !== undefined) {
      const list = entry.trustProxyFrom;
      if (!Array.isArray(list)) issues.add(join(at, 'trustProxyFrom'), list, 'must be an array of CIDRs (e.g. "10.0.0.5/32")');
      else {
        const cidrs: string[] = [];
        list.forEach((cidr, i) => {
          const normalised = normaliseCidr(cidr);
          if (normalised === undefined) issues.add(join(join(at, 'trustProxyFrom'), i), cidr, 'must be an IPv4/IPv6 address or CIDR');
          else cidrs.push(normalised);
        });
        service.trustProxyFrom = cidrs;
      }
    }
    if (entry.bufferBytes !== undefined) {
      const v = entry.bufferBytes;
      if (proto === 'udp') issues.add(join(at, 'bufferBytes'), v, "applies to 'tcp' services only (a UDP flow holds no stream)");
      else if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < MIN_BUFFER_BYTES || v > 0xffff_ffff) {
        issues.add(join(at, 'bufferBytes'), v, `must be an integer from ${MIN_BUFFER_BYTES} to 4294967295 (bytes)`);
      } else service.bufferBytes = v;
    }
    into[proto].push(service);
  });
}

function normaliseFirewall(value: unknown, path: string, issues: Issues): INormalisedFirewall {
  const firewall: INormalisedFirewall = { blockedIps: [], rateLimits: [], rules: [] };
  if (!isRecord(value)) {
    issues.add(path, value, 'must be an object {blockedIps, rateLimits, rules}');
    return firewall;
  }
  issues.unknownKeys(value, FIREWALL_KEYS, path);

  const blockedIps = value.blockedIps ?? [];
  if (!Array.isArray(blockedIps)) {
    issues.add(join(path, 'blockedIps'), blockedIps, 'must be an array of IP addresses or CIDRs');
  } else {
    blockedIps.forEach((ip, index) => {
      if (isValidIpOrCidr(ip)) firewall.blockedIps.push(ip);
      else issues.add(join(join(path, 'blockedIps'), index), ip, 'must be an IPv4/IPv6 address or CIDR (e.g. 203.0.113.0/24)');
    });
  }

  eachFirewallEntry(value.rateLimits, join(path, 'rateLimits'), RATE_LIMIT_KEYS, '{id, port, protocol, rate, burst?, perSourceIP?}', issues, (limit, at, id) => {
    if (!isValidPort(limit.port)) issues.add(join(at, 'port'), limit.port, 'must be an integer from 1 to 65535');
    if (!IP_PROTOCOLS.includes(limit.protocol as TIpProtocol)) {
      issues.add(join(at, 'protocol'), limit.protocol, "must be 'tcp' or 'udp'");
    }
    const rate = typeof limit.rate === 'string' ? RATE_PATTERN.exec(limit.rate) : null;
    if (rate === null || Number(rate[1]) === 0) {
      issues.add(join(at, 'rate'), limit.rate, "must look like '200/second' (a positive count per second, minute or hour)");
    }
    let burst: number | null = null;
    if (limit.burst !== undefined && limit.burst !== null) {
      if (typeof limit.burst === 'number' && Number.isSafeInteger(limit.burst) && limit.burst > 0) burst = limit.burst;
      else issues.add(join(at, 'burst'), limit.burst, 'must be a positive integer');
    }
    if (limit.perSourceIP !== undefined && typeof limit.perSourceIP !== 'boolean') {
      issues.add(join(at, 'perSourceIP'), limit.perSourceIP, 'must be true or false');
    }
    firewall.rateLimits.push({
      id,
      port: isValidPort(limit.port) ? limit.port : 0,
      protocol: limit.protocol === 'udp' ? 'udp' : 'tcp',
      rate: typeof limit.rate === 'string' ? limit.rate : '',
      burst,
      perSourceIP: limit.perSourceIP === true,
    });
  });

  eachFirewallEntry(value.rules, join(path, 'rules'), RULE_KEYS, '{id, direction, action, sourceIP?, destPort?, protocol?}', issues, (rule, at, id) => {
    if (rule.direction !== 'input' && rule.direction !== 'output') {
      issues.add(join(at, 'direction'), rule.direction, "must be 'input' or 'output'");
    }
    if (rule.action !== 'accept' && rule.action !== 'drop' && rule.action !== 'reject') {
      issues.add(join(at, 'action'), rule.action, "must be 'accept', 'drop' or 'reject'");
    }
    const sourceIP = rule.sourceIP ?? null;
    if (sourceIP !== null && !isValidIpOrCidr(sourceIP)) {
      issues.add(join(at, 'sourceIP'), sourceIP, 'must be an IPv4/IPv6 address or CIDR');
    }
    const destPort = rule.destPort ?? null;
    if (destPort !== null && !isValidPort(destPort)) {
      issues.add(join(at, 'destPort'), destPort, 'must be an integer from 1 to 65535');
    }
    const protocol = rule.protocol ?? null;
    if (protocol !== null && !IP_PROTOCOLS.includes(protocol as TIpProtocol)) {
      issues.add(join(at, 'protocol'), protocol, "must be 'tcp' or 'udp'");
    }
    firewall.rules.push({
      id,
      direction: rule.direction === 'output' ? 'output' : 'input',
      action: rule.action === 'accept' || rule.action === 'reject' ? rule.action : 'drop',
      sourceIP: typeof sourceIP === 'string' ? sourceIP : null,
      destPort: typeof destPort === 'number' ? destPort : null,
      protocol: protocol === 'tcp' || protocol === 'udp' ? protocol : null,
    });
  });
  return firewall;
}

/**
 * The shared skeleton of `rateLimits` and `rules`: an optional array of objects, each with only
 * the allowed keys and an id unique within the array. `check` validates the rest of one entry.
 */
function eachFirewallEntry(
  list: unknown,
  path: string,
  keys: ReadonlySet<string>,
  shape: string,
  issues: Issues,
  check: (entry: Record<string, unknown>, at: string, id: string) => void,
): void {
  const entries = list ?? [];
  if (!Array.isArray(entries)) {
    issues.add(path, entries, `must be an array of ${shape}`);
    return;
  }
  const ids = new Set<string>();
  entries.forEach((entry, index) => {
    const at = join(path, index);
    if (!isRecord(entry)) {
      issues.add(at, entry, `must be an object ${shape}`);
      return;
    }
    issues.unknownKeys(entry, keys, at);
    check(entry, at, firewallId(entry.id, join(at, 'id'), ids, issues));
  });
}

function firewallId(value: unknown, path: string, seen: Set<string>, issues: Issues): string {
  if (typeof value !== 'string' || !FIREWALL_ID_PATTERN.test(value)) {
    issues.add(path, value, 'must be 1-32 characters of A-Z a-z 0-9 _ -');
    return '';
  }
  if (seen.has(value)) issues.add(path, value, 'duplicate id');
  seen.add(value);
  return value;
}

/**
 * Parses JSON from a file, flag or environment variable (allowed edges, `--performance`,
 * `--limits`); `source` names where it came from in the error.
 */
export function parseJsonText(text: string, source: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // Not V8's message (nor the error as `cause`): it quotes the text around the error, and the
    // text may be a file of secrets.
    throw new TunnelError('ERR_INVALID_CONFIG', `${source} is not valid JSON: ${describeJsonError(text)}`, { field: source });
  }
}

/**
 * What and where the first syntax error of `text` is — jsonc-parser's name for it and the line
 * and column — without quoting any of the text.
 */
export function describeJsonError(text: string): string {
  if (text.trim() === '') return 'it is empty';
  const errors: ParseError[] = [];
  parseJsonc(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
  const first = errors[0];
  if (first === undefined) return 'a syntax error JSON.parse found and jsonc-parser did not';
  const before = text.slice(0, first.offset);
  const line = before.split('\n').length;
  const column = first.offset - (before.lastIndexOf('\n') + 1) + 1;
  return `${printParseErrorCode(first.error)} at line ${line}, column ${column}`;
}

function validateNumbers<T extends object>(
  value: unknown,
  field: string,
  keys: readonly string[],
  minimum: number,
  subject: string,
  example: string,
): T {
  const issues = new Issues((path) => path);
  const result: Record<string, number> = {};
  if (!isRecord(value)) {
    issues.add(field, value, `must be an object like ${example}`);
  } else {
    issues.unknownKeys(value, new Set(keys), field);
    for (const key of keys) {
      const entry = value[key];
      if (entry === undefined) continue;
      if (typeof entry === 'number' && Number.isSafeInteger(entry) && entry >= minimum) result[key] = entry;
      else issues.add(join(field, key), entry, minimum === 0 ? 'must be a non-negative integer' : 'must be a positive integer');
    }
  }
  issues.throwIfAny(subject);
  return result as T;
}

/**
 * Validates tuning values (0 means "the addon's default" for workerThreads and socketBuffer);
 * the addon checks how they relate to each other and names the field if they do not fit.
 */
export function validatePerformance(value: unknown, field = 'performance'): IPerformanceConfig {
  return validateNumbers<IPerformanceConfig>(value, field, PERFORMANCE_KEYS, 0, 'performance settings', '{"workerThreads": 2}');
}

/** Validates resource limits; every limit is a positive count or duration. */
export function validateLimits(value: unknown, field = 'limits'): ILimitsConfig {
  return validateNumbers<ILimitsConfig>(value, field, LIMIT_KEYS, 1, 'limits', '{"heartbeatTimeoutMs": 15000}');
}

export function parseLimitsJson(text: string, source: string): ILimitsConfig {
  return validateLimits(parseJsonText(text, source), source);
}

export function parsePerformanceJson(text: string, source: string): IPerformanceConfig {
  return validatePerformance(parseJsonText(text, source), source);
}
