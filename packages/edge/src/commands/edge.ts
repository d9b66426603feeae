import {
  booleanFlag,
  flagOrEnv,
  integerFlag,
  portFlag,
  requireFlag,
  resolveOperationFlags,
  OPERATION_HELP,
  OPERATION_OPTIONS,
  type IOperationFlags,
  usageError,
  type ICommand,
  type TEnv,
  type TFlagValues,
} from 'remoteingress-core/cli';
import { DEFAULT_GRACE_MS, parseLimitsJson, parsePerformanceJson, type IEdgeConfig, type TTransportMode } from 'remoteingress-core';
import { DEFAULT_RECONNECT_BASE_MS, DEFAULT_RECONNECT_CAP_MS, DEFAULT_TRANSPORT_MODE, TRANSPORT_MODES } from '../config.js';

export interface IEdgeCommandOptions {
  config: IEdgeConfig;
  /** `--consumer-xml FILE`: the listener and services come from this file (read at start). */
  consumerXml?: string;
  graceMs: number;
  /** Print streamOpened/streamClosed lines. */
  logStreams: boolean;
  /** Log format and level (the admin address is in `config`). */
  operations?: IOperationFlags;
}

const HELP = `Usage: remoteingress-edge --token TOKEN [options]
       remoteingress-edge --hub-host HOST --hub-port N --edge-id ID --secret SECRET --hub-fingerprint HEX [options]
       remoteingress-edge --listen-for-hub PORT --state-dir DIR --edge-id ID --secret SECRET [--bind-host HOST]
       remoteingress-edge --consumer-xml FILE --state-dir DIR --edge-id ID --secret SECRET
       remoteingress-edge token --state-dir DIR --edge-id ID --secret SECRET --edge-host HOST --edge-port N
       remoteingress-edge status [--admin-listen HOST:PORT] [--json]   (ask a running edge)

Runs an edge on a public machine. It dials the hub, binds the ports the hub assigns to this edge,
and carries every connection it accepts through the tunnel to the hub. It reconnects on its own.

With --listen-for-hub the edge does not dial: it waits for its hub to dial it (the hub's allowed
edge has "dialEdge" or "edgeToken"), so the hub's side needs no reachable port at all. The edge
creates its own certificate in --state-dir on first start and prints its fingerprint, which the
hub pins; "remoteingress-edge token" prints everything the hub needs as one edgeToken.

Listening for the hub:
  --listen-for-hub PORT  TCP (TLS) and UDP (QUIC) port the hub dials   [REMOTEINGRESS_LISTEN_FOR_HUB]
  --state-dir DIR        where this edge keeps its certificate and key  [REMOTEINGRESS_STATE_DIR]
  --bind-host HOST       address to listen on (default 0.0.0.0)         [REMOTEINGRESS_BIND_HOST]
  --edge-id, --secret    as below
  --consumer-xml FILE    edgerq's consumer.xml instead of --listen-for-hub: its <listener> says
                         where to listen for the hub, its <services> where each service the hub
                         names is served and with which limits (see README)  [REMOTEINGRESS_CONSUMER_XML]

Connection (each can also come from the environment variable in brackets):
  --token TOKEN          everything below in one string, printed by
                         "remoteingress-hub token …" on the hub            [REMOTEINGRESS_TOKEN]
  --hub-host HOST        the hub's name or address                        [REMOTEINGRESS_HUB_HOST]
  --hub-port N           the hub's tunnel port                            [REMOTEINGRESS_HUB_PORT]
  --edge-id ID           this edge's id in the hub's allowed edges        [REMOTEINGRESS_EDGE_ID]
  --secret SECRET        this edge's secret (prefer the environment:
                         flags are visible to other users in "ps")       [REMOTEINGRESS_SECRET]
  --hub-fingerprint HEX  SHA-256 of the hub certificate, printed by the
                         hub at start; the edge refuses any other hub     [REMOTEINGRESS_HUB_FINGERPRINT]

Options:
  --transport-mode MODE  ${TRANSPORT_MODES.join(' | ')}            [REMOTEINGRESS_TRANSPORT_MODE] (default ${DEFAULT_TRANSPORT_MODE})
  --reconnect-base-ms N  first retry delay after a failure, doubled per attempt [REMOTEINGRESS_RECONNECT_BASE_MS] (default ${DEFAULT_RECONNECT_BASE_MS})
  --reconnect-cap-ms N   longest retry delay                             [REMOTEINGRESS_RECONNECT_CAP_MS] (default ${DEFAULT_RECONNECT_CAP_MS})
  --grace-ms N           on SIGINT/SIGTERM, how long open streams may
                         finish before they are closed                    [REMOTEINGRESS_GRACE_MS] (default ${DEFAULT_GRACE_MS})
  --performance JSON     tuning, e.g. '{"workerThreads":2}'              [REMOTEINGRESS_PERFORMANCE_JSON]
  --limits JSON          resource bounds and timeouts, e.g.
                         '{"heartbeatTimeoutMs":15000}'                   [REMOTEINGRESS_LIMITS_JSON]
  --dangerously-disable-fingerprint-pinning
                         connect without checking the hub's certificate.
                         Anyone on the path can then pose as the hub. For
                         throwaway tests only.  [REMOTEINGRESS_DANGEROUSLY_DISABLE_FINGERPRINT_PINNING=1]
  --log-streams          print a line per tunneled connection opened and
                         closed; without it only failed ones are printed
                         (lines cost CPU at thousands of connections/s)  [REMOTEINGRESS_LOG_STREAMS=1]
  -h, --help             show this help

${OPERATION_HELP}

Example:
  # on the hub:  remoteingress-hub token --allowed-edges edges.json --state-dir /var/lib/remoteingress \\
  #                  --edge-id edge-1 --hub-host hub.example.com
  REMOTEINGRESS_TOKEN=<token> remoteingress-edge

Output: "edge <id> connecting to <host>:<port> transport <mode>" once started, then one line per event
("tunnelConnected hubAddress=… transport=…", "portsAssigned tcp=80,443 udp= failed=[]", …).
SIGINT/SIGTERM drain open streams; a second signal exits at once.
Exit codes: 0 stopped, 1 runtime failure, 2 bad flags, config or token.
`;

const EXPLICIT_FLAGS = ['hub-host', 'hub-port', 'edge-id', 'secret', 'hub-fingerprint'] as const;

const DIAL_ONLY_FLAGS = ['token', 'hub-host', 'hub-port', 'hub-fingerprint', 'transport-mode', 'reconnect-base-ms', 'reconnect-cap-ms', 'dangerously-disable-fingerprint-pinning'] as const;

/** `--listen-for-hub PORT --state-dir DIR --edge-id ID --secret S [--bind-host HOST]`. */
function resolveListening(values: TFlagValues, env: TEnv, port: number): IEdgeCommandOptions {
  const extra = DIAL_ONLY_FLAGS.find((flag) => values[flag] !== undefined);
  if (extra !== undefined) {
    throw usageError(`--${extra} applies to an edge that dials its hub; with --listen-for-hub the hub dials this edge`, extra);
  }
  const hint = 'an edge that listens for its hub needs --state-dir, --edge-id and --secret';
  const stateDir = requireFlag(values, 'state-dir', env, 'REMOTEINGRESS_STATE_DIR', hint);
  const edgeId = requireFlag(values, 'edge-id', env, 'REMOTEINGRESS_EDGE_ID', hint);
  const secret = requireFlag(values, 'secret', env, 'REMOTEINGRESS_SECRET', hint);
  const bindHost = flagOrEnv(values, 'bind-host', env, 'REMOTEINGRESS_BIND_HOST');
  return {
    config: { edgeId, secret, listenForHub: { port, stateDir, ...(bindHost === undefined ? {} : { bindHost }) }, ...jsonSettings(values, env) },
    graceMs: integerFlag(values, 'grace-ms', env, 'REMOTEINGRESS_GRACE_MS') ?? DEFAULT_GRACE_MS,
    logStreams: booleanFlag(values, 'log-streams', env, 'REMOTEINGRESS_LOG_STREAMS'),
  };
}

export function resolveEdgeCommandOptions(values: TFlagValues, env: TEnv): IEdgeCommandOptions {
  const operations = resolveOperationFlags(values, env);
  const options = resolveConnection(values, env);
  if (operations.adminListen !== undefined) options.config = { ...options.config, adminListen: operations.adminListen };
  return { ...options, operations };
}

function resolveConnection(values: TFlagValues, env: TEnv): IEdgeCommandOptions {
  const consumerXml = flagOrEnv(values, 'consumer-xml', env, 'REMOTEINGRESS_CONSUMER_XML');
  if (consumerXml !== undefined) {
    for (const flag of ['listen-for-hub', 'bind-host'] as const) {
      if (values[flag] !== undefined) throw usageError(`--${flag} cannot be combined with --consumer-xml: its <listener> says where the edge listens`, flag);
    }
    // The port is a placeholder until the file is read at start (resolveConsumerXml).
    return { ...resolveListening(values, env, 0), consumerXml };
  }
  const listenPort = portFlag(values, 'listen-for-hub', env, 'REMOTEINGRESS_LISTEN_FOR_HUB');
  if (listenPort !== undefined) return resolveListening(values, env, listenPort);
  const token = flagOrEnv(values, 'token', env, 'REMOTEINGRESS_TOKEN');
  const common = {
    transportMode: transportMode(values, env),
    dangerouslyDisableFingerprintPinning: booleanFlag(
      values,
      'dangerously-disable-fingerprint-pinning',
      env,
      'REMOTEINGRESS_DANGEROUSLY_DISABLE_FINGERPRINT_PINNING',
    ),
    ...jsonSettings(values, env),
    reconnect: {
      baseMs: positive(values, 'reconnect-base-ms', env, 'REMOTEINGRESS_RECONNECT_BASE_MS') ?? DEFAULT_RECONNECT_BASE_MS,
      capMs: positive(values, 'reconnect-cap-ms', env, 'REMOTEINGRESS_RECONNECT_CAP_MS') ?? DEFAULT_RECONNECT_CAP_MS,
    },
  };
  if (common.reconnect.capMs < common.reconnect.baseMs) {
    throw usageError(`--reconnect-cap-ms = ${common.reconnect.capMs}: must not be below --reconnect-base-ms (${common.reconnect.baseMs})`, 'reconnect-cap-ms');
  }
  const graceMs = integerFlag(values, 'grace-ms', env, 'REMOTEINGRESS_GRACE_MS') ?? DEFAULT_GRACE_MS;
  const logStreams = booleanFlag(values, 'log-streams', env, 'REMOTEINGRESS_LOG_STREAMS');

  if (token !== undefined) {
    const extra = EXPLICIT_FLAGS.find((flag) => typeof values[flag] === 'string');
    if (extra !== undefined) {
      throw usageError(`--${extra} cannot be combined with a token: the token already carries the hub address, edge id, secret and fingerprint`, extra);
    }
    return { config: { token, ...common }, graceMs, logStreams };
  }

  const hint = 'give --token, or all of --hub-host, --hub-port, --edge-id, --secret and --hub-fingerprint';
  const hubHost = requireFlag(values, 'hub-host', env, 'REMOTEINGRESS_HUB_HOST', hint);
  const hubPort = portFlag(values, 'hub-port', env, 'REMOTEINGRESS_HUB_PORT');
  if (hubPort === undefined) throw usageError(`missing --hub-port (or set REMOTEINGRESS_HUB_PORT): ${hint}`, 'hub-port');
  const edgeId = requireFlag(values, 'edge-id', env, 'REMOTEINGRESS_EDGE_ID', hint);
  const secret = requireFlag(values, 'secret', env, 'REMOTEINGRESS_SECRET', hint);
  const hubFingerprint = flagOrEnv(values, 'hub-fingerprint', env, 'REMOTEINGRESS_HUB_FINGERPRINT');
  if (hubFingerprint === undefined && !common.dangerouslyDisableFingerprintPinning) {
    throw usageError(
      "missing --hub-fingerprint (or set REMOTEINGRESS_HUB_FINGERPRINT): the edge pins the hub's certificate; the hub prints " +
        'its fingerprint at start. Easier: use --token from "remoteingress-hub token"',
      'hub-fingerprint',
    );
  }
  return {
    config: { hubHost, hubPort, edgeId, secret, ...(hubFingerprint === undefined ? {} : { hubFingerprint }), ...common },
    graceMs,
    logStreams,
  };
}

/** `--performance` / `--limits` JSON, or their environment variables; the flag wins. */
export function jsonSettings(values: TFlagValues, env: TEnv): Pick<IEdgeConfig, 'performance' | 'limits'> {
  const settings: Pick<IEdgeConfig, 'performance' | 'limits'> = {};
  const performance = flagOrEnv(values, 'performance', env, 'REMOTEINGRESS_PERFORMANCE_JSON');
  if (performance !== undefined) {
    settings.performance = parsePerformanceJson(performance, typeof values.performance === 'string' ? '--performance' : 'REMOTEINGRESS_PERFORMANCE_JSON');
  }
  const limits = flagOrEnv(values, 'limits', env, 'REMOTEINGRESS_LIMITS_JSON');
  if (limits !== undefined) {
    settings.limits = parseLimitsJson(limits, typeof values.limits === 'string' ? '--limits' : 'REMOTEINGRESS_LIMITS_JSON');
  }
  return settings;
}

function transportMode(values: TFlagValues, env: TEnv): TTransportMode {
  const mode = flagOrEnv(values, 'transport-mode', env, 'REMOTEINGRESS_TRANSPORT_MODE') ?? DEFAULT_TRANSPORT_MODE;
  if (!TRANSPORT_MODES.includes(mode as TTransportMode)) {
    const where = typeof values['transport-mode'] === 'string' ? '--transport-mode' : 'REMOTEINGRESS_TRANSPORT_MODE';
    throw usageError(`${where} = ${JSON.stringify(mode)}: must be one of ${TRANSPORT_MODES.join(', ')}`, 'transport-mode');
  }
  return mode as TTransportMode;
}

function positive(values: TFlagValues, flag: string, env: TEnv, envName: string): number | undefined {
  const value = integerFlag(values, flag, env, envName);
  if (value === 0) {
    throw usageError(`${typeof values[flag] === 'string' ? `--${flag}` : envName} = 0: must be at least 1`, flag);
  }
  return value;
}

export const edgeCommand: ICommand = {
  help: HELP,
  options: {
    token: { type: 'string' },
    'hub-host': { type: 'string' },
    'hub-port': { type: 'string' },
    'edge-id': { type: 'string' },
    secret: { type: 'string' },
    'hub-fingerprint': { type: 'string' },
    'transport-mode': { type: 'string' },
    'reconnect-base-ms': { type: 'string' },
    'reconnect-cap-ms': { type: 'string' },
    'grace-ms': { type: 'string' },
    performance: { type: 'string' },
    limits: { type: 'string' },
    'dangerously-disable-fingerprint-pinning': { type: 'boolean' },
    'log-streams': { type: 'boolean' },
    'listen-for-hub': { type: 'string' },
    'state-dir': { type: 'string' },
    'bind-host': { type: 'string' },
    'consumer-xml': { type: 'string' },
    ...OPERATION_OPTIONS,
    help: { type: 'boolean', short: 'h' },
  },
  async run(values, env) {
    const options = resolveEdgeCommandOptions(values, env);
    const { runEdgeDaemon } = await import('../daemon.js');
    return runEdgeDaemon(options);
  },
};

/**
 * The edge config with what `consumer.xml` says: the listener becomes `listenForHub`, each
 * service a local service (port, bind address, limits) for the hub's service of that id.
 */
export async function resolveConsumerXml(options: IEdgeCommandOptions): Promise<IEdgeConfig> {
  const file = options.consumerXml;
  if (file === undefined || !('listenForHub' in options.config)) return options.config;
  const { readConsumerXml } = await import('../consumer-xml.js');
  const xml = await readConsumerXml(file);
  const config: IEdgeConfig = {
    ...options.config,
    listenForHub: { ...options.config.listenForHub, port: xml.listener.port, bindHost: xml.listener.bindHost },
    localServices: xml.services.map((s) => ({
      id: s.id,
      edgePort: s.edgePort,
      bindAddress: s.bindAddress,
      ...(s.name === undefined ? {} : { name: s.name }),
      ...(s.maxConnections === undefined ? {} : { maxConnections: s.maxConnections }),
      ...(s.idleTimeoutSecs === undefined ? {} : { idleTimeoutSecs: s.idleTimeoutSecs }),
      ...(s.bufferBytes === undefined ? {} : { bufferBytes: s.bufferBytes }),
    })),
  };
  return config;
}
