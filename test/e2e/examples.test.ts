import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { TAllowedEdge } from 'remoteingress-hub';
import { Cleanups, ROOT, startHub } from './helpers.js';

/**
 * The shipped examples are configs users copy: they must be accepted by a real hub as they
 * are, not merely parse as JSON.
 */
const ALLOWED_EDGES_EXAMPLE = join(ROOT, 'examples/allowed-edges.json');

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe('examples/', () => {
  it('allowed-edges.json is accepted whole by a running hub', async () => {
    const edges = JSON.parse(await readFile(ALLOWED_EDGES_EXAMPLE, 'utf8')) as TAllowedEdge[];
    expect(Array.isArray(edges)).toBe(true);
    expect(edges.length).toBeGreaterThan(0);

    const { hub } = await startHub(cleanups);
    expect(hub.getStatus().allowedEdges).toBe(0);
    await expect(hub.updateAllowedEdges(edges)).resolves.toBeUndefined();
    expect(hub.getStatus()).toMatchObject({ running: true, allowedEdges: edges.length });
  });
});
