import { isDeepStrictEqual } from 'node:util';
import type { INormalisedEdge } from './types.js';

export interface IEdgeChange {
  id: string;
  /** Top-level fields of the normalised edge that differ, e.g. `['tcp', 'secret']`. */
  fields: Array<keyof INormalisedEdge>;
}

export interface IAllowedEdgesDiff {
  added: string[];
  removed: string[];
  changed: IEdgeChange[];
  unchanged: string[];
}

/**
 * Pure diff of two normalised allowed-edge lists by id. The addon applies the complete list
 * itself; this tells the JavaScript side (logs, callers) what an update is about to change.
 */
export function diffAllowedEdges(previous: readonly INormalisedEdge[], next: readonly INormalisedEdge[]): IAllowedEdgesDiff {
  const before = new Map(previous.map((edge) => [edge.id, edge]));
  const diff: IAllowedEdgesDiff = { added: [], removed: [], changed: [], unchanged: [] };
  const seen = new Set<string>();
  for (const edge of next) {
    seen.add(edge.id);
    const old = before.get(edge.id);
    if (old === undefined) {
      diff.added.push(edge.id);
      continue;
    }
    const fields = (Object.keys(edge) as Array<keyof INormalisedEdge>).filter((key) => !isDeepStrictEqual(edge[key], old[key]));
    if (fields.length === 0) diff.unchanged.push(edge.id);
    else diff.changed.push({ id: edge.id, fields });
  }
  for (const edge of previous) if (!seen.has(edge.id)) diff.removed.push(edge.id);
  return diff;
}

/** One line for logs: `added a; removed b; changed c (tcp, secret)`, or `no changes`. */
export function describeDiff(diff: IAllowedEdgesDiff): string {
  const parts: string[] = [];
  if (diff.added.length > 0) parts.push(`added ${diff.added.join(', ')}`);
  if (diff.removed.length > 0) parts.push(`removed ${diff.removed.join(', ')}`);
  for (const change of diff.changed) parts.push(`changed ${change.id} (${change.fields.join(', ')})`);
  return parts.length === 0 ? 'no changes' : parts.join('; ');
}
