import { portFlag, requireFlag, usageError, type ICommand, type TEnv, type TFlagValues } from 'remoteingress-core/cli';
import { EDGE_ID_PATTERN, MIN_SECRET_LENGTH, isValidHost } from 'remoteingress-core';

export interface IEdgeTokenCommandOptions {
  stateDir: string;
  edgeId: string;
  secret: string;
  edgeHost: string;
  edgePort: number;
}

const HELP = `Usage: remoteingress-edge token --state-dir DIR --edge-id ID --secret SECRET --edge-host HOST --edge-port N

Prints an edge token, and nothing else: what a hub needs to dial this edge when it runs with
--listen-for-hub — where the edge listens, its id and secret, and its certificate's fingerprint,
which the hub pins. Put it in the hub's allowed edge as "edgeToken". If the state directory has no
edge identity yet, it is created (the edge then uses the same one). Treat the token like the
secret it contains.

Options (each can also come from the environment variable in brackets):
  --state-dir DIR    the edge's state directory (same as the edge's)   [REMOTEINGRESS_STATE_DIR]
  --edge-id ID       this edge's id                                     [REMOTEINGRESS_EDGE_ID]
  --secret SECRET    this edge's secret                                 [REMOTEINGRESS_SECRET]
  --edge-host HOST   name or address the hub dials to reach this edge   [REMOTEINGRESS_EDGE_HOST]
  --edge-port N      the edge's --listen-for-hub port                   [REMOTEINGRESS_LISTEN_FOR_HUB]
  -h, --help         show this help

Example:
  REMOTEINGRESS_SECRET=… remoteingress-edge token --state-dir /var/lib/remoteingress-edge \\
      --edge-id edge-1 --edge-host edge1.example.com --edge-port 9000
  # hub's allowed edges: [{ "edgeToken": "<token>", "listenPorts": [], "services": [ … ] }]
`;

export function resolveEdgeTokenCommandOptions(values: TFlagValues, env: TEnv): IEdgeTokenCommandOptions {
  const stateDir = requireFlag(values, 'state-dir', env, 'REMOTEINGRESS_STATE_DIR', "the edge's state directory");
  const edgeId = requireFlag(values, 'edge-id', env, 'REMOTEINGRESS_EDGE_ID', "this edge's id");
  if (!EDGE_ID_PATTERN.test(edgeId)) throw usageError(`--edge-id = ${JSON.stringify(edgeId)}: must be 1-64 characters of A-Z a-z 0-9 . _ -`, 'edge-id');
  const secret = requireFlag(values, 'secret', env, 'REMOTEINGRESS_SECRET', "this edge's secret");
  if (secret.length < MIN_SECRET_LENGTH) throw usageError(`--secret: must be at least ${MIN_SECRET_LENGTH} characters`, 'secret');
  const edgeHost = requireFlag(values, 'edge-host', env, 'REMOTEINGRESS_EDGE_HOST', 'the name or address the hub dials to reach this edge');
  if (!isValidHost(edgeHost)) throw usageError(`--edge-host = ${JSON.stringify(edgeHost)}: must be a host name or IP address`, 'edge-host');
  const edgePort = portFlag(values, 'edge-port', env, 'REMOTEINGRESS_LISTEN_FOR_HUB');
  if (edgePort === undefined) throw usageError('missing --edge-port (or set REMOTEINGRESS_LISTEN_FOR_HUB): the port the edge listens on for its hub', 'edge-port');
  return { stateDir, edgeId, secret, edgeHost, edgePort };
}

export const edgeTokenCommand: ICommand = {
  help: HELP,
  options: {
    'state-dir': { type: 'string' },
    'edge-id': { type: 'string' },
    secret: { type: 'string' },
    'edge-host': { type: 'string' },
    'edge-port': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
  async run(values, env) {
    const o = resolveEdgeTokenCommandOptions(values, env);
    const { encodeEdgeToken, loadOrCreateEdgeIdentity } = await import('remoteingress-core');
    const identity = await loadOrCreateEdgeIdentity(o.stateDir);
    const token = encodeEdgeToken({ edgeHost: o.edgeHost, edgePort: o.edgePort, edgeId: o.edgeId, secret: o.secret, edgeFingerprint: identity.fingerprint });
    process.stdout.write(`${token}\n`);
  },
};
