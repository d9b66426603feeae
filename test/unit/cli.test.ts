import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeConnectionToken, loadOrCreateHubIdentity } from '../../packages/core/src/index.js';

/** CLI contract that needs no addon: help, exit codes, flags named in errors, the token command. */
const ROOT = resolve(import.meta.dirname, '../..');
const HUB_BIN = join(ROOT, 'packages/hub/dist/bin.js');
const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');
const MAIN_BIN = join(ROOT, 'bin/remoteingress.js');
const SECRET = 'cli-test-secret-0123456789';

interface IRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(bin: string, args: string[], env: Record<string, string> = {}): Promise<IRun> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('REMOTEINGRESS_')));
  return new Promise((done) => {
    execFile(process.execPath, [bin, ...args], { env: { ...clean, ...env }, timeout: 20_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
      done({ code, stdout, stderr });
    });
  });
}

let dir: string;
let edgesFile: string;

// The bins run from dist, which test/unit/global-setup.ts compiles before any test file runs.
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ri-cli-'));
  edgesFile = join(dir, 'edges.json');
  await writeFile(edgesFile, JSON.stringify([{ id: 'edge-1', secret: SECRET, listenPorts: [8080] }]));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('--help', () => {
  it.each([
    [HUB_BIN, [], /Usage: remoteingress-hub/],
    [HUB_BIN, ['token'], /Usage: remoteingress-hub token/],
    [EDGE_BIN, [], /Usage: remoteingress-edge/],
    [MAIN_BIN, ['hub'], /Usage: remoteingress-hub/],
    [MAIN_BIN, ['edge'], /Usage: remoteingress-edge/],
    [MAIN_BIN, [], /REMOTEINGRESS_MODE/],
  ])('%s %o --help exits 0 with usage and an example', async (bin, prefix, pattern) => {
    const result = await run(bin, [...prefix, '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(pattern);
    if (bin !== MAIN_BIN || prefix.length > 0) expect(result.stdout).toMatch(/Example/);
  });
});

describe('bad flags exit 2 naming the flag', () => {
  it.each([
    ['hub unknown flag', HUB_BIN, ['--bogus'], {}, /unknown flag --bogus/],
    ['hub missing value', HUB_BIN, ['--state-dir'], {}, /--state-dir/],
    ['hub bad port', HUB_BIN, ['--tunnel-port', 'abc', '--state-dir', 'x', '--allowed-edges', 'f'], {}, /--tunnel-port = "abc"/],
    ['hub bad port from env', HUB_BIN, ['--state-dir', 'x', '--allowed-edges', 'f'], { REMOTEINGRESS_HUB_PORT: '70000' }, /REMOTEINGRESS_HUB_PORT = "70000"/],
    ['hub unreadable allowed edges', HUB_BIN, ['--state-dir', 'x', '--allowed-edges', '/nonexistent/edges.json'], {}, /cannot read --allowed-edges \/nonexistent\/edges\.json/],
    ['hub bad bind host', HUB_BIN, ['--bind-host', 'everywhere', '--state-dir', 'x', '--allowed-edges', 'f'], {}, /--bind-host = "everywhere"/],
    ['hub bad performance', HUB_BIN, ['--performance', '{"threads":1}', '--state-dir', 'x', '--allowed-edges', 'f'], {}, /--performance\.threads/],
    ['hub stray word', HUB_BIN, ['start'], {}, /unexpected argument "start"/],
    ['token missing edge id', HUB_BIN, ['token', '--allowed-edges', 'f', '--state-dir', 'x', '--hub-host', 'h'], {}, /missing --edge-id/],
    ['token bad hub host', HUB_BIN, ['token', '--allowed-edges', 'f', '--state-dir', 'x', '--edge-id', 'e', '--hub-host', 'a b'], {}, /--hub-host = "a b"/],
    ['edge unknown flag', EDGE_BIN, ['--tokn', 'x'], {}, /unknown flag --tokn/],
    ['edge bad token', EDGE_BIN, ['--token', 'bm90IGEgdG9rZW4'], {}, /invalid connection token: token/],
    ['edge token from env', EDGE_BIN, [], { REMOTEINGRESS_TOKEN: 'e30' }, /invalid connection token: version/],
    ['edge token plus flags', EDGE_BIN, ['--token', 'x', '--hub-host', 'h'], {}, /--hub-host cannot be combined with a token/],
    ['edge missing port', EDGE_BIN, ['--hub-host', 'h'], {}, /missing --hub-port/],
    ['edge no pinning', EDGE_BIN, ['--hub-host', 'h', '--hub-port', '1', '--edge-id', 'e', '--secret', SECRET], {}, /missing --hub-fingerprint/],
    ['edge bad mode', EDGE_BIN, ['--transport-mode', 'carrier-pigeon'], {}, /--transport-mode = "carrier-pigeon"/],
    [
      'edge bad fingerprint',
      EDGE_BIN,
      ['--hub-host', 'h', '--hub-port', '1', '--edge-id', 'e', '--secret', SECRET, '--hub-fingerprint', 'abc'],
      {},
      /hubFingerprint = "abc"/,
    ],
    ['main unknown mode', MAIN_BIN, ['proxy'], {}, /unknown mode "proxy"/],
    ['main missing mode', MAIN_BIN, [], {}, /missing mode/],
    ['main bad env mode', MAIN_BIN, [], { REMOTEINGRESS_MODE: 'both' }, /REMOTEINGRESS_MODE = "both"/],
    ['main delegates', MAIN_BIN, ['--bogus'], { REMOTEINGRESS_MODE: 'edge' }, /remoteingress-edge: error: unknown flag --bogus/],
  ])('%s', async (_name, bin, args, env, pattern) => {
    const result = await run(bin, args, env);
    expect(result.stderr).toMatch(pattern);
    expect(result.code).toBe(2);
  });
});

describe('config errors from files exit 2 before anything starts', () => {
  it('names the edge, field and value of a bad allowed-edges file', async () => {
    const bad = join(dir, 'bad-edges.json');
    await writeFile(bad, JSON.stringify([{ id: 'edge-9', secret: SECRET, listenPorts: [99999] }]));
    const result = await run(HUB_BIN, ['--tunnel-port', '0', '--state-dir', join(dir, 'state-bad'), '--allowed-edges', bad]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/edge "edge-9" listenPorts\[0\] = 99999/);
  });

  it('names a file that is not JSON, and one that does not exist', async () => {
    const broken = join(dir, 'broken.json');
    await writeFile(broken, '[{');
    const notJson = await run(HUB_BIN, ['--state-dir', join(dir, 's'), '--allowed-edges', broken]);
    expect(notJson.code).toBe(2);
    expect(notJson.stderr).toContain(`--allowed-edges ${broken} is not valid JSON`);
    const missing = await run(HUB_BIN, ['--state-dir', join(dir, 's'), '--allowed-edges', join(dir, 'nope.json')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/cannot read --allowed-edges/);
  });

  it('names a bad REMOTEINGRESS_ALLOWED_EDGES_JSON', async () => {
    const result = await run(HUB_BIN, ['--state-dir', join(dir, 's')], { REMOTEINGRESS_ALLOWED_EDGES_JSON: '{"id":1}' });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/allowedEdges = \{"id":1\}: must be an array/);
  });
});

describe('remoteingress-hub token', () => {
  it('prints only the token, matching the identity it created', async () => {
    const stateDir = join(dir, 'state-token');
    const result = await run(HUB_BIN, ['token', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--edge-id', 'edge-1', '--hub-host', 'hub.example.com', '--hub-port', '9443']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^[A-Za-z0-9_-]+\n$/);
    const identity = await loadOrCreateHubIdentity(stateDir);
    expect(identity.created).toBe(false);
    expect(decodeConnectionToken(result.stdout.trim())).toEqual({
      hubHost: 'hub.example.com',
      hubPort: 9443,
      edgeId: 'edge-1',
      secret: SECRET,
      hubFingerprint: identity.fingerprint,
    });
  });

  it('takes its inputs from the environment and defaults the port', async () => {
    const result = await run(HUB_BIN, ['token'], {
      REMOTEINGRESS_ALLOWED_EDGES_JSON: JSON.stringify([{ id: 'edge-1', secret: SECRET, listenPorts: [] }]),
      REMOTEINGRESS_STATE_DIR: join(dir, 'state-env'),
      REMOTEINGRESS_EDGE_ID: 'edge-1',
      REMOTEINGRESS_HUB_HOST: '192.0.2.1',
    });
    expect(result.code).toBe(0);
    expect(decodeConnectionToken(result.stdout.trim())).toMatchObject({ hubHost: '192.0.2.1', hubPort: 8443 });
  });

  it('exits 2 naming --edge-id for an edge not in the file', async () => {
    const result = await run(HUB_BIN, ['token', '--allowed-edges', edgesFile, '--state-dir', join(dir, 'state-token'), '--edge-id', 'edge-7', '--hub-host', 'h']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/--edge-id = "edge-7": no such edge .* \(known: edge-1\)/);
    expect(result.stdout).toBe('');
  });
});
