import { readFile } from 'node:fs/promises';
import { TunnelError, parseJsonText } from 'remoteingress-core';

export interface IAllowedEdgesSource {
  /** A JSON file (`--allowed-edges`), read again on reload. */
  file: string | undefined;
  /** JSON text from `REMOTEINGRESS_ALLOWED_EDGES_JSON`, used when no file is given. */
  json: string | undefined;
}

/** Reads and parses the allowed edges; the caller validates them. `text` lets a reload skip unchanged content. */
export async function readAllowedEdges(source: IAllowedEdgesSource): Promise<{ edges: unknown; text: string; origin: string }> {
  if (source.file !== undefined) {
    let text: string;
    try {
      text = await readFile(source.file, 'utf8');
    } catch (error) {
      throw new TunnelError('ERR_INVALID_CONFIG', `cannot read --allowed-edges ${source.file}: ${(error as Error).message}`, {
        field: 'allowed-edges',
        value: source.file,
        cause: error,
      });
    }
    return { edges: parseJsonText(text, `--allowed-edges ${source.file}`), text, origin: source.file };
  }
  const text = source.json ?? '[]';
  return { edges: parseJsonText(text, 'REMOTEINGRESS_ALLOWED_EDGES_JSON'), text, origin: 'REMOTEINGRESS_ALLOWED_EDGES_JSON' };
}
