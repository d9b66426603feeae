import {
  EDGE_ID_PATTERN,
  MIN_BUFFER_BYTES,
  MIN_SECRET_LENGTH,
  TunnelError,
  decodeConnectionToken,
  describeValue,
  isValidHost,
  isValidPort,
  normaliseFingerprint,
  validateLimits,
  validatePerformance,
  isValidIp,
  type IEdgeConfig,
  type IEdgeLocalService,
  type ILimitsConfig,
  type IPerformanceConfig,
  type TTransportMode,
} from 'remoteingress-core';

/** The addon's edge `optionsJson` (docs/native-api.md), every default filled in. */
export interface INativeEdgeOptions {
  /** Empty / 0 for an edge that listens for its hub. */
  hubHost: string;
  hubPort: number;
  /** The edge listens for its hub (which dials it); the PEMs are filled in at start from `stateDir`. */
  listenForHub?: { port: number; bindHost: string; certPem?: string; keyPem?: string };
  edgeId: string;
  secret: string;
  /** Absent exactly when pinning is disabled. */
  hubFingerprint?: string;
  dangerouslyDisableFingerprintPinning: boolean;
  transportMode: TTransportMode;
  reconnect: { baseMs: number; capMs: number };
  performance?: IPerformanceConfig;
  limits?: ILimitsConfig;
  quicConnectTimeoutMs?: number;
  quicProbeIntervalMs?: number;
  keepFirewallOnStop?: boolean;
  localServices?: IEdgeLocalService[];
}

export const TRANSPORT_MODES: readonly TTransportMode[] = ['tcpTls', 'quic', 'quicWithFallback'];
/** QUIC where the network lets it through, TLS over TCP where it does not (DESIGN.md's edge default). */
export const DEFAULT_TRANSPORT_MODE: TTransportMode = 'quicWithFallback';
/** Half a second: a hub restart is usually back within that, so the first retry is not wasted. */
export const DEFAULT_RECONNECT_BASE_MS = 500;
/** 30 s (issue 3): a long outage costs a hub at most one attempt per edge every 30 s. */
export const DEFAULT_RECONNECT_CAP_MS = 30_000;

const CONFIG_KEYS = new Set([
  'token',
  'hubHost',
  'hubPort',
  'edgeId',
  'secret',
  'hubFingerprint',
  'transportMode',
  'dangerouslyDisableFingerprintPinning',
  'reconnect',
  'performance',
  'limits',
  'quicConnectTimeoutMs',
  'quicProbeIntervalMs',
  'keepFirewallOnStop',
  'listenForHub',
  'localServices',
  'adminListen',
]);
const LOCAL_SERVICE_KEYS = new Set(['id', 'name', 'edgePort', 'bindAddress', 'maxConnections', 'idleTimeoutSecs', 'bufferBytes']);
/** A service id: a UUID or a name, as the hub's services use. */
const SERVICE_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
const LISTEN_KEYS = new Set(['port', 'bindHost', 'stateDir']);
/** Where an edge that listens for its hub binds by default: every address, as a hub's tunnel port. */
export const DEFAULT_LISTEN_BIND_HOST = '0.0.0.0';
const TOKEN_FIELDS = ['hubHost', 'hubPort', 'edgeId', 'secret', 'hubFingerprint'] as const;

function invalid(field: string, value: unknown, problem: string, redact = false): TunnelError {
  const shown = redact ? '<hidden>' : describeValue(value);
  return new TunnelError('ERR_INVALID_CONFIG', `invalid edge config: ${field} = ${shown}: ${problem}`, {
    field,
    value: redact ? undefined : value,
  });
}

function positiveInteger(value: unknown, field: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value > 0) return value;
  throw invalid(field, value, 'must be a positive integer number of milliseconds');
}

/**
 * Validates an edge config (explicit fields or a token) and fills in the defaults. Throws
 * `ERR_INVALID_TOKEN` for a bad token and `ERR_INVALID_CONFIG` naming the field otherwise,
 * including when the hub's certificate would not be pinned.
 */
export function resolveEdgeConfig(config: IEdgeConfig): INativeEdgeOptions & { stateDir?: string } {
  if (typeof config !== 'object' || config === null) {
    throw invalid('config', config, 'must be an object: {token} or {hubHost, hubPort, edgeId, secret, hubFingerprint}');
  }
  const raw = config as unknown as Record<string, unknown>;
  for (const key of Object.keys(raw)) {
    if (!CONFIG_KEYS.has(key)) throw invalid(key, raw[key], `unknown option (expected one of ${[...CONFIG_KEYS].join(', ')})`);
  }
  if (raw.listenForHub !== undefined) return resolveListeningConfig(raw);

  let hubHost: unknown, hubPort: unknown, edgeId: unknown, secret: unknown, fingerprintInput: unknown;
  if (raw.token !== undefined) {
    const extra = TOKEN_FIELDS.find((key) => raw[key] !== undefined);
    if (extra !== undefined) {
      throw invalid(extra, extra === 'secret' ? undefined : raw[extra], 'the token already carries this; give either token or the explicit fields, not both', extra === 'secret');
    }
    if (typeof raw.token !== 'string') throw invalid('token', raw.token, 'must be a string');
    ({ hubHost, hubPort, edgeId, secret, hubFingerprint: fingerprintInput } = decodeConnectionToken(raw.token));
  } else {
    ({ hubHost, hubPort, edgeId, secret, hubFingerprint: fingerprintInput } = raw);
  }

  if (!isValidHost(hubHost)) throw invalid('hubHost', hubHost, 'must be a host name or IP address');
  if (!isValidPort(hubPort)) throw invalid('hubPort', hubPort, 'must be an integer from 1 to 65535');
  if (typeof edgeId !== 'string' || !EDGE_ID_PATTERN.test(edgeId)) {
    throw invalid('edgeId', edgeId, 'must be 1-64 characters of A-Z a-z 0-9 . _ -');
  }
  if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
    throw invalid('secret', secret, `must be a string of at least ${MIN_SECRET_LENGTH} characters`, true);
  }

  const dangerous = raw.dangerouslyDisableFingerprintPinning ?? false;
  if (typeof dangerous !== 'boolean') throw invalid('dangerouslyDisableFingerprintPinning', dangerous, 'must be true or false');
  let hubFingerprint: string | undefined;
  if (fingerprintInput !== undefined && fingerprintInput !== null) {
    const normalised = normaliseFingerprint(fingerprintInput);
    if (normalised === null) throw invalid('hubFingerprint', fingerprintInput, 'must be 64 hex digits (SHA-256 of the hub certificate; colons allowed)');
    hubFingerprint = normalised;
  }
  if (hubFingerprint === undefined && !dangerous) {
    throw invalid(
      'hubFingerprint',
      fingerprintInput,
      "required: the edge pins the hub's certificate so nobody on the path can pose as the hub. Use a connection token " +
        "(remoteingress-hub token …), or pass hubFingerprint (the hub prints it at start). Only for a throwaway test, " +
        'dangerouslyDisableFingerprintPinning: true skips the check',
    );
  }
  if (hubFingerprint !== undefined && dangerous) {
    throw invalid(
      'dangerouslyDisableFingerprintPinning',
      dangerous,
      'conflicts with the hub fingerprint given (from the token or hubFingerprint); drop one of them',
    );
  }

  const transportMode = raw.transportMode ?? DEFAULT_TRANSPORT_MODE;
  if (!TRANSPORT_MODES.includes(transportMode as TTransportMode)) {
    throw invalid('transportMode', transportMode, `must be one of ${TRANSPORT_MODES.join(', ')}`);
  }

  const reconnect = raw.reconnect ?? {};
  if (typeof reconnect !== 'object' || reconnect === null || Array.isArray(reconnect)) {
    throw invalid('reconnect', reconnect, 'must be an object {baseMs?, capMs?}');
  }
  const { baseMs: rawBase, capMs: rawCap, ...unknownReconnect } = reconnect as Record<string, unknown>;
  const [unknownKey] = Object.keys(unknownReconnect);
  if (unknownKey !== undefined) throw invalid(`reconnect.${unknownKey}`, unknownReconnect[unknownKey], 'unknown option (expected baseMs, capMs)');
  const baseMs = positiveInteger(rawBase, 'reconnect.baseMs', DEFAULT_RECONNECT_BASE_MS);
  const capMs = positiveInteger(rawCap, 'reconnect.capMs', Math.max(DEFAULT_RECONNECT_CAP_MS, baseMs));
  if (capMs < baseMs) throw invalid('reconnect.capMs', capMs, `must not be below reconnect.baseMs (${baseMs})`);

  const quicConnectTimeoutMs = raw.quicConnectTimeoutMs === undefined ? undefined : positiveInteger(raw.quicConnectTimeoutMs, 'quicConnectTimeoutMs', 0);
  const quicProbeIntervalMs = raw.quicProbeIntervalMs === undefined ? undefined : positiveInteger(raw.quicProbeIntervalMs, 'quicProbeIntervalMs', 0);

  return {
    hubHost,
    hubPort,
    edgeId,
    secret,
    ...(hubFingerprint === undefined ? {} : { hubFingerprint }),
    dangerouslyDisableFingerprintPinning: dangerous,
    transportMode: transportMode as TTransportMode,
    reconnect: { baseMs, capMs },
    ...(quicConnectTimeoutMs === undefined ? {} : { quicConnectTimeoutMs }),
    ...(quicProbeIntervalMs === undefined ? {} : { quicProbeIntervalMs }),
    ...sharedSettings(raw),
  };
}

/** An edge that waits for its hub to dial it: no hub address or fingerprint (the hub pins ours). */
function resolveListeningConfig(raw: Record<string, unknown>): INativeEdgeOptions & { stateDir: string } {
  const dialOnly = ['token', 'hubHost', 'hubPort', 'hubFingerprint', 'dangerouslyDisableFingerprintPinning', 'quicConnectTimeoutMs', 'quicProbeIntervalMs', 'reconnect', 'transportMode'];
  const extra = dialOnly.find((key) => raw[key] !== undefined);
  if (extra !== undefined) {
    throw invalid(extra, extra === 'token' ? undefined : raw[extra], 'applies to an edge that dials its hub; with listenForHub the hub dials this edge (its allowed edge says how)', extra === 'token');
  }
  const listen = raw.listenForHub;
  if (typeof listen !== 'object' || listen === null || Array.isArray(listen)) {
    throw invalid('listenForHub', listen, 'must be an object {port, bindHost?, stateDir}');
  }
  const l = listen as Record<string, unknown>;
  for (const key of Object.keys(l)) {
    if (!LISTEN_KEYS.has(key)) throw invalid(`listenForHub.${key}`, l[key], `unknown option (expected one of ${[...LISTEN_KEYS].join(', ')})`);
  }
  if (!isValidPort(l.port)) throw invalid('listenForHub.port', l.port, 'must be an integer from 1 to 65535');
  const bindHost = l.bindHost ?? DEFAULT_LISTEN_BIND_HOST;
  if (!isValidHost(bindHost)) throw invalid('listenForHub.bindHost', bindHost, 'must be a host name or IP address');
  if (typeof l.stateDir !== 'string' || l.stateDir === '') {
    throw invalid('listenForHub.stateDir', l.stateDir, "must be a directory path (the edge keeps its certificate and key there; the hub pins the certificate's fingerprint)");
  }
  const { edgeId, secret } = raw;
  if (typeof edgeId !== 'string' || !EDGE_ID_PATTERN.test(edgeId)) {
    throw invalid('edgeId', edgeId, 'must be 1-64 characters of A-Z a-z 0-9 . _ -');
  }
  if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
    throw invalid('secret', secret, `must be a string of at least ${MIN_SECRET_LENGTH} characters`, true);
  }
  return {
    hubHost: '',
    hubPort: 0,
    edgeId,
    secret,
    dangerouslyDisableFingerprintPinning: false,
    transportMode: DEFAULT_TRANSPORT_MODE,
    reconnect: { baseMs: DEFAULT_RECONNECT_BASE_MS, capMs: DEFAULT_RECONNECT_CAP_MS },
    listenForHub: { port: l.port, bindHost },
    stateDir: l.stateDir,
    ...sharedSettings(raw),
  };
}

/** What an edge takes whichever side dials: tuning, limits, firewall teardown, local services. */
function sharedSettings(raw: Record<string, unknown>): Pick<INativeEdgeOptions, 'performance' | 'limits' | 'keepFirewallOnStop' | 'localServices'> {
  if (raw.keepFirewallOnStop !== undefined && typeof raw.keepFirewallOnStop !== 'boolean') {
    throw invalid('keepFirewallOnStop', raw.keepFirewallOnStop, 'must be true or false');
  }
  return {
    ...(raw.performance === undefined ? {} : { performance: validatePerformance(raw.performance) }),
    ...(raw.limits === undefined ? {} : { limits: validateLimits(raw.limits) }),
    ...(raw.keepFirewallOnStop === undefined ? {} : { keepFirewallOnStop: raw.keepFirewallOnStop }),
    ...localServicesOf(raw),
  };
}

/** `localServices`, checked: unique ids and ports, real addresses, positive limits. */
function localServicesOf(raw: Record<string, unknown>): { localServices?: IEdgeLocalService[] } {
  const list = raw.localServices;
  if (list === undefined) return {};
  if (!Array.isArray(list)) throw invalid('localServices', list, 'must be an array of {id, edgePort, bindAddress, name?, maxConnections?, idleTimeoutSecs?, bufferBytes?}');
  const ids = new Set<string>();
  const ports = new Set<number>();
  const out = list.map((entry: unknown, i): IEdgeLocalService => {
    const at = `localServices[${i}]`;
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw invalid(at, entry, 'must be an object {id, edgePort, bindAddress, …}');
    const e = entry as Record<string, unknown>;
    for (const key of Object.keys(e)) {
      if (!LOCAL_SERVICE_KEYS.has(key)) throw invalid(`${at}.${key}`, e[key], `unknown option (expected one of ${[...LOCAL_SERVICE_KEYS].join(', ')})`);
    }
    if (typeof e.id !== 'string' || !SERVICE_ID_PATTERN.test(e.id)) throw invalid(`${at}.id`, e.id, 'must be a UUID or 1-64 characters of A-Z a-z 0-9 . _ -');
    if (ids.has(e.id)) throw invalid(`${at}.id`, e.id, 'is listed twice');
    ids.add(e.id);
    if (!isValidPort(e.edgePort)) throw invalid(`${at}.edgePort`, e.edgePort, 'must be an integer from 1 to 65535');
    if (ports.has(e.edgePort)) throw invalid(`${at}.edgePort`, e.edgePort, 'is used by another local service');
    ports.add(e.edgePort);
    if (!isValidIp(e.bindAddress) || e.bindAddress.includes('%')) throw invalid(`${at}.bindAddress`, e.bindAddress, 'must be an IPv4 or IPv6 address');
    if (e.name !== undefined && typeof e.name !== 'string') throw invalid(`${at}.name`, e.name, 'must be a string');
    for (const key of ['maxConnections', 'idleTimeoutSecs'] as const) {
      const v = e[key];
      if (v !== undefined && !(typeof v === 'number' && Number.isSafeInteger(v) && v > 0 && v <= 0xffff_ffff)) {
        throw invalid(`${at}.${key}`, v, 'must be a positive integer');
      }
    }
    const buffer = e.bufferBytes;
    if (buffer !== undefined && !(typeof buffer === 'number' && Number.isSafeInteger(buffer) && buffer >= MIN_BUFFER_BYTES && buffer <= 0xffff_ffff)) {
      throw invalid(`${at}.bufferBytes`, buffer, `must be an integer from ${MIN_BUFFER_BYTES} to 4294967295 (bytes)`);
    }
    return {
      id: e.id,
      edgePort: e.edgePort,
      bindAddress: e.bindAddress,
      ...(e.name === undefined ? {} : { name: e.name as string }),
      ...(e.maxConnections === undefined ? {} : { maxConnections: e.maxConnections as number }),
      ...(e.idleTimeoutSecs === undefined ? {} : { idleTimeoutSecs: e.idleTimeoutSecs as number }),
      ...(buffer === undefined ? {} : { bufferBytes: buffer as number }),
    };
  });
  return { localServices: out };
}
