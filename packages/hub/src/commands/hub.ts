import {
  envValue,
  booleanFlag,
  flagOrEnv,
  integerFlag,
  portFlag,
  resolveOperationFlags,
  OPERATION_HELP,
  OPERATION_OPTIONS,
  type IOperationFlags,
  usageError,
  type ICommand,
  type TEnv,
  type TFlagValues,
} from 'remoteingress-core/cli';
import {
  DEFAULT_GRACE_MS,
  defaultStateDir,
  isValidHost,
  isValidIp,
  parseLimitsJson,
  parsePerformanceJson,
  type ILimitsConfig,
  type IPerformanceConfig,
} from 'remoteingress-core';

/**
 * The tunnel port when none is given: 8443 is unprivileged (no root needed) and recognisably
 * "TLS"; the token command uses the same default so a token minted without --hub-port matches.
 */
export const DEFAULT_TUNNEL_PORT = 8443;

export interface IHubCommandOptions {
  tunnelPort: number;
  targetHost: string;
  bindHost: string;
  stateDir: string;
  /** At most one is set: a file to read and watch, or JSON from the environment; neither: no edges until one is given (embedded: updateAllowedEdges). */
  allowedEdgesFile: string | undefined;
  allowedEdgesJson: string | undefined;
  performance: IPerformanceConfig | undefined;
  limits: ILimitsConfig | undefined;
  graceMs: number;
  watch: boolean;
  /** Print streamOpened/streamClosed lines. */
  logStreams: boolean;
  operations: IOperationFlags;
}

const HELP = `Usage: remoteingress-hub [options]
       remoteingress-hub token [options]   (mint a connection token; see "remoteingress-hub token --help")
       remoteingress-hub status [--admin-listen HOST:PORT] [--json]   (ask a running hub)

Runs the hub next to your private service. Edges on public machines connect to the hub's
tunnel port; every connection they accept is forwarded to its target here, preceded by a PROXY
protocol header carrying the real client address.

Options (each can also come from the environment variable in brackets):
  --tunnel-port N        port edges connect to; 0 picks a free one       [REMOTEINGRESS_HUB_PORT] (default ${DEFAULT_TUNNEL_PORT})
  --bind-host IP         address the tunnel port binds on                [REMOTEINGRESS_BIND_HOST] (default 0.0.0.0)
  --target-host HOST     where tunneled connections go unless a port
                         in the allowed-edges file says otherwise       [REMOTEINGRESS_TARGET_HOST] (default 127.0.0.1)
  --allowed-edges FILE   JSON array of the edges allowed to connect;
                         reloaded when it changes and on SIGHUP         [REMOTEINGRESS_ALLOWED_EDGES_JSON holds the JSON itself]
  --state-dir DIR        keeps the hub's TLS certificate and key
                         (created on first start, key mode 0600)        [REMOTEINGRESS_STATE_DIR]
                         (default /var/lib/remoteingress as root, else
                         $XDG_STATE_HOME/remoteingress or ~/.local/state/remoteingress)
  --performance JSON     tuning, e.g. '{"workerThreads":2}'             [REMOTEINGRESS_PERFORMANCE_JSON]
  --limits JSON          resource bounds and timeouts, e.g.
                         '{"heartbeatTimeoutMs":15000}'                  [REMOTEINGRESS_LIMITS_JSON]
  --grace-ms N           on SIGINT/SIGTERM, how long open streams may
                         finish before they are closed                   [REMOTEINGRESS_GRACE_MS] (default ${DEFAULT_GRACE_MS})
  --no-watch             do not reload --allowed-edges when the file changes (SIGHUP still reloads)
  --log-streams          print a line per tunneled connection opened and
                         closed; without it only failed ones are printed
                         (lines cost CPU at thousands of connections/s)  [REMOTEINGRESS_LOG_STREAMS=1]
  -h, --help             show this help

${OPERATION_HELP}

Allowed-edges file, e.g. edges.json:
  [ { "id": "edge-1", "secret": "at-least-16-characters",
      "listenPorts": [443, { "port": 8080, "targetPort": 80, "proxyProtocol": "v2" }] } ]
  A bare port forwards to --target-host on the same port; proxyProtocol is v1 (default), v2 or none.

Example:
  remoteingress-hub --tunnel-port 8443 --allowed-edges edges.json --state-dir /var/lib/remoteingress
  remoteingress-hub token --allowed-edges edges.json --state-dir /var/lib/remoteingress \\
      --edge-id edge-1 --hub-host hub.example.com        # then on the edge: remoteingress-edge --token <token>

Output: "hub listening on <bind-host>:<port> fingerprint <sha256>" once started, then one line per
event ("edgeConnected edgeId=edge-1 remoteAddress=… …"). SIGINT/SIGTERM drain open streams; a second
signal exits at once. Exit codes: 0 stopped, 1 runtime failure, 2 bad flags or config.
`;

export function resolveHubCommandOptions(values: TFlagValues, env: TEnv): IHubCommandOptions {
  const tunnelPort = portFlag(values, 'tunnel-port', env, 'REMOTEINGRESS_HUB_PORT', { allowZero: true }) ?? DEFAULT_TUNNEL_PORT;
  const targetHost = flagOrEnv(values, 'target-host', env, 'REMOTEINGRESS_TARGET_HOST') ?? '127.0.0.1';
  if (!isValidHost(targetHost)) throw usageError(`--target-host = ${JSON.stringify(targetHost)}: must be a host name or IP address`, 'target-host');
  const bindHost = flagOrEnv(values, 'bind-host', env, 'REMOTEINGRESS_BIND_HOST') ?? '0.0.0.0';
  if (!isValidIp(bindHost)) throw usageError(`--bind-host = ${JSON.stringify(bindHost)}: must be an IP address, e.g. 0.0.0.0 or ::`, 'bind-host');
  const stateDir = flagOrEnv(values, 'state-dir', env, 'REMOTEINGRESS_STATE_DIR') ?? defaultStateDir(env);
  const allowedEdgesFile = flagOrEnv(values, 'allowed-edges', env);
  const allowedEdgesJson = allowedEdgesFile === undefined ? envValue(env, 'REMOTEINGRESS_ALLOWED_EDGES_JSON') : undefined;
  const performanceText = flagOrEnv(values, 'performance', env, 'REMOTEINGRESS_PERFORMANCE_JSON');
  const performance =
    performanceText === undefined
      ? undefined
      : parsePerformanceJson(performanceText, typeof values.performance === 'string' ? '--performance' : 'REMOTEINGRESS_PERFORMANCE_JSON');
  const limitsText = flagOrEnv(values, 'limits', env, 'REMOTEINGRESS_LIMITS_JSON');
  const limits =
    limitsText === undefined ? undefined : parseLimitsJson(limitsText, typeof values.limits === 'string' ? '--limits' : 'REMOTEINGRESS_LIMITS_JSON');
  const graceMs = integerFlag(values, 'grace-ms', env, 'REMOTEINGRESS_GRACE_MS') ?? DEFAULT_GRACE_MS;
  return {
    tunnelPort,
    targetHost,
    bindHost,
    stateDir,
    allowedEdgesFile,
    allowedEdgesJson,
    performance,
    limits,
    graceMs,
    watch: values['no-watch'] !== true,
    logStreams: booleanFlag(values, 'log-streams', env, 'REMOTEINGRESS_LOG_STREAMS'),
    operations: resolveOperationFlags(values, env),
  };
}

export const hubCommand: ICommand = {
  help: HELP,
  options: {
    'tunnel-port': { type: 'string' },
    'bind-host': { type: 'string' },
    'target-host': { type: 'string' },
    'allowed-edges': { type: 'string' },
    'state-dir': { type: 'string' },
    performance: { type: 'string' },
    limits: { type: 'string' },
    'grace-ms': { type: 'string' },
    'no-watch': { type: 'boolean' },
    'log-streams': { type: 'boolean' },
    ...OPERATION_OPTIONS,
    help: { type: 'boolean', short: 'h' },
  },
  async run(values, env) {
    const options = resolveHubCommandOptions(values, env);
    const { runHubDaemon } = await import('../daemon.js');
    return runHubDaemon(options);
  },
};
