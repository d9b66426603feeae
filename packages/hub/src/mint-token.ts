import { encodeConnectionToken, loadOrCreateHubIdentity, validateAllowedEdges } from 'remoteingress-core';
import { usageError } from 'remoteingress-core/cli';
import { readAllowedEdges } from './allowed-edges-source.js';
import type { ITokenCommandOptions } from './commands/token.js';

/** The `remoteingress-hub token` command's work: find the edge, load or create the identity, encode. */
export async function mintToken(options: ITokenCommandOptions): Promise<string> {
  const { edges, origin } = await readAllowedEdges({ file: options.allowedEdgesFile, json: options.allowedEdgesJson });
  // The whole file is validated, as the hub would, so a token is never minted from a file the hub rejects.
  const normalised = validateAllowedEdges(edges, { targetHost: '127.0.0.1' });
  const edge = normalised.find((candidate) => candidate.id === options.edgeId);
  if (edge === undefined) {
    const known = normalised.map((candidate) => candidate.id).join(', ') || 'none';
    throw usageError(`--edge-id = ${JSON.stringify(options.edgeId)}: no such edge in ${origin} (known: ${known})`, 'edge-id');
  }
  const identity = await loadOrCreateHubIdentity(options.stateDir);
  return encodeConnectionToken({
    hubHost: options.hubHost,
    hubPort: options.hubPort,
    edgeId: edge.id,
    secret: edge.secret,
    hubFingerprint: identity.fingerprint,
  });
}
