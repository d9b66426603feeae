/**
 * remoteingress in one import, under the names the reference product's users know:
 *
 *   import { RemoteIngressHub, RemoteIngressEdge, encodeConnectionToken, decodeConnectionToken, runCli } from 'remoteingress';
 *
 * The classes are remoteingress-hub's and remoteingress-edge's. What differs from the reference
 * is what protects users: edges pin the hub's certificate, so a connection token carries its
 * fingerprint (see {@link encodeConnectionToken}), and secrets have at least 16 characters.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  HUB_CERT_FILE,
  TunnelError,
  certificateFingerprint,
  defaultStateDir,
  encodeConnectionToken as encodePinnedToken,
  type IConnectionToken,
} from 'remoteingress-core';
import { runProgram } from 'remoteingress-core/cli';

export { RemoteIngressHub } from 'remoteingress-hub';
export { RemoteIngressEdge } from 'remoteingress-edge';
export { decodeConnectionToken, TunnelError, isTunnelError } from 'remoteingress-core';
export type {
  IHubConfig,
  IEdgeConfig,
  TAllowedEdge,
  IConnectionToken,
  IHubStatus,
  IEdgeStatus,
  IHubEvents,
  IEdgeEvents,
  TTransportMode,
} from 'remoteingress-core';

/** A token's fields; `hubFingerprint` may be left out on the hub's machine (see below). */
export type TConnectionTokenInput = Omit<IConnectionToken, 'hubFingerprint'> & { hubFingerprint?: string };

/**
 * One string holding what an edge needs: hub address, edge id, secret and the hub's
 * certificate fingerprint, which the edge pins. Called on the hub's machine without
 * `hubFingerprint` (as the reference API is), the fingerprint is read from the hub's identity
 * in `stateDir` (default: the hub's default state directory); without one there, this throws
 * and says how to get it. The secret is in the token: treat it like one.
 */
export function encodeConnectionToken(token: TConnectionTokenInput, options: { stateDir?: string } = {}): string {
  if (token.hubFingerprint !== undefined) return encodePinnedToken(token as IConnectionToken);
  const stateDir = options.stateDir ?? defaultStateDir();
  const certPath = join(stateDir, HUB_CERT_FILE);
  let cert: string;
  try {
    cert = readFileSync(certPath, 'utf8');
  } catch (error) {
    throw new TunnelError(
      'ERR_INVALID_TOKEN',
      `encodeConnectionToken: no hubFingerprint given and no hub identity at ${certPath} (${(error as NodeJS.ErrnoException).code ?? 'unreadable'}); ` +
        'edges pin the hub certificate, so a token needs its fingerprint: call this on the hub machine after the hub started once, ' +
        'pass { stateDir } if the hub uses another directory, or give hubFingerprint (the hub prints it at start)',
      { field: 'hubFingerprint', cause: error },
    );
  }
  return encodePinnedToken({ ...token, hubFingerprint: certificateFingerprint(cert) });
}

const MODES = ['hub', 'edge'] as const;
const HELP = `Usage: remoteingress hub [hub options]      (same as remoteingress-hub)
       remoteingress edge [edge options]    (same as remoteingress-edge)
       REMOTEINGRESS_MODE=hub|edge remoteingress [options]

Run "remoteingress hub --help" or "remoteingress edge --help" for the options of each.
`;

/**
 * The command line of both daemons: the first word (`hub` or `edge`), or `REMOTEINGRESS_MODE`
 * when there is none, picks the program; the rest are its flags, and every flag has its
 * `REMOTEINGRESS_*` variable. Resolves once a one-shot command finished or a daemon started
 * (a daemon then runs until SIGINT/SIGTERM).
 */
export async function runCli(argv: string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env): Promise<void> {
  let mode: string | undefined;
  let rest: string[] = [];
  const [first] = argv;
  if (first !== undefined && (MODES as readonly string[]).includes(first)) {
    [mode, ...rest] = argv;
  } else if (first === undefined || first.startsWith('-')) {
    mode = env.REMOTEINGRESS_MODE || undefined;
    rest = argv;
  }
  if (mode === undefined && (first === '--help' || first === '-h')) {
    process.stdout.write(HELP);
    return;
  }
  if (mode === undefined || !(MODES as readonly string[]).includes(mode)) {
    const problem =
      mode !== undefined
        ? `REMOTEINGRESS_MODE = ${JSON.stringify(mode)}: must be hub or edge`
        : first !== undefined && !first.startsWith('-')
          ? `unknown mode ${JSON.stringify(first)}: the first word must be hub or edge`
          : 'missing mode: give hub or edge as the first word, or set REMOTEINGRESS_MODE';
    process.stderr.write(`remoteingress: error: ${problem}\n\n${HELP}`);
    process.exitCode = 2;
    return;
  }
  if (mode === 'hub') {
    const { hubProgram } = await import('remoteingress-hub/cli');
    await runProgram(hubProgram, rest, env);
  } else {
    const { edgeProgram } = await import('remoteingress-edge/cli');
    await runProgram(edgeProgram, rest, env);
  }
}
