import { envValue, flagOrEnv, portFlag, requireFlag, usageError, type ICommand, type TEnv, type TFlagValues } from 'remoteingress-core/cli';
import { EDGE_ID_PATTERN, defaultStateDir, isValidHost } from 'remoteingress-core';
import { DEFAULT_TUNNEL_PORT } from './hub.js';

export interface ITokenCommandOptions {
  stateDir: string;
  allowedEdgesFile: string | undefined;
  allowedEdgesJson: string | undefined;
  edgeId: string;
  hubHost: string;
  hubPort: number;
}

const HELP = `Usage: remoteingress-hub token --allowed-edges FILE --state-dir DIR --edge-id ID --hub-host HOST [--hub-port N]

Prints a connection token for one allowed edge, and nothing else. The token holds the hub's
address, the edge's id and secret, and the hub certificate's fingerprint, which the edge pins.
If the state directory has no hub identity yet, it is created (the hub then uses the same one).
Treat the token like the secret it contains.

Options (each can also come from the environment variable in brackets):
  --allowed-edges FILE   the hub's allowed-edges file                 [REMOTEINGRESS_ALLOWED_EDGES_JSON holds the JSON itself]
  --state-dir DIR        the hub's state directory (same as the hub's) [REMOTEINGRESS_STATE_DIR] (same default as the hub)
  --edge-id ID           which allowed edge the token is for          [REMOTEINGRESS_EDGE_ID]
  --hub-host HOST        name or address the edge dials to reach the hub [REMOTEINGRESS_HUB_HOST]
  --hub-port N           the hub's tunnel port                        [REMOTEINGRESS_HUB_PORT] (default ${DEFAULT_TUNNEL_PORT})
  -h, --help             show this help

Example:
  TOKEN=$(remoteingress-hub token --allowed-edges edges.json --state-dir /var/lib/remoteingress \\
          --edge-id edge-1 --hub-host hub.example.com --hub-port 8443)
  remoteingress-edge --token "$TOKEN"     # on the edge machine
`;

export function resolveTokenCommandOptions(values: TFlagValues, env: TEnv): ITokenCommandOptions {
  const allowedEdgesFile = flagOrEnv(values, 'allowed-edges', env);
  const allowedEdgesJson = allowedEdgesFile === undefined ? envValue(env, 'REMOTEINGRESS_ALLOWED_EDGES_JSON') : undefined;
  if (allowedEdgesFile === undefined && allowedEdgesJson === undefined) {
    throw usageError('missing --allowed-edges FILE (or set REMOTEINGRESS_ALLOWED_EDGES_JSON)', 'allowed-edges');
  }
  const stateDir = flagOrEnv(values, 'state-dir', env, 'REMOTEINGRESS_STATE_DIR') ?? defaultStateDir(env);
  const edgeId = requireFlag(values, 'edge-id', env, 'REMOTEINGRESS_EDGE_ID', 'the id of an edge in the allowed-edges file');
  if (!EDGE_ID_PATTERN.test(edgeId)) throw usageError(`--edge-id = ${JSON.stringify(edgeId)}: must be 1-64 characters of A-Z a-z 0-9 . _ -`, 'edge-id');
  const hubHost = requireFlag(values, 'hub-host', env, 'REMOTEINGRESS_HUB_HOST', 'the name or address edges use to reach this hub');
  if (!isValidHost(hubHost)) throw usageError(`--hub-host = ${JSON.stringify(hubHost)}: must be a host name or IP address`, 'hub-host');
  const hubPort = portFlag(values, 'hub-port', env, 'REMOTEINGRESS_HUB_PORT') ?? DEFAULT_TUNNEL_PORT;
  return { stateDir, allowedEdgesFile, allowedEdgesJson, edgeId, hubHost, hubPort };
}

export const tokenCommand: ICommand = {
  help: HELP,
  options: {
    'allowed-edges': { type: 'string' },
    'state-dir': { type: 'string' },
    'edge-id': { type: 'string' },
    'hub-host': { type: 'string' },
    'hub-port': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
  async run(values, env) {
    const options = resolveTokenCommandOptions(values, env);
    const { mintToken } = await import('../mint-token.js');
    process.stdout.write(`${await mintToken(options)}\n`);
  },
};
