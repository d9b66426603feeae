import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeConnectionToken } from 'remoteingress-edge';
import { execFile } from 'node:child_process';
import { runOnce, spawnDaemon } from './daemons.js';
import { CONNECT_TIMEOUT_MS, Cleanups, ROOT, freePort, randomSecret, tempDir, withTimeout } from './helpers.js';

/**
 * The two-daemon set-up a user follows from the README, through the real command lines: hub
 * from an allowed-edges file, a token minted by the hub's CLI, an edge started with nothing
 * but that token, an HTTP request through the edge's port, and clean exits on SIGTERM.
 */
const HUB_BIN = join(ROOT, 'packages/hub/dist/bin.js');
const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');
const MAIN_BIN = join(ROOT, 'bin/remoteingress.js');
/** Daemons drain for at most this long on SIGTERM; nothing is open by then, so exit is immediate. */
const GRACE_MS = 1_000;
/** SIGTERM to exit: the grace period plus the CLI's own 2 s bound on stray handles, plus slack. */
const EXIT_TIMEOUT_MS = 10_000;

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe('command line, end to end', () => {
  it('hub from an allowed-edges file, token from the hub CLI, edge with only --token: an HTTP request gets through; SIGTERM exits 0', async () => {
    // The private service: a plain HTTP server (the port is configured with proxyProtocol 'none').
    const requests: Array<{ url: string | undefined; host: string | undefined }> = [];
    const target = http.createServer((request, response) => {
      requests.push({ url: request.url, host: request.headers.host });
      response.end(`hello from the target, you asked for ${request.url}\n`);
    });
    await new Promise<void>((done) => target.listen(0, '127.0.0.1', done));
    target.on('connection', (socket) => cleanups.add('destroy target socket', () => socket.destroy()));
    cleanups.add('close target', () => new Promise<void>((done) => target.close(() => done())));
    const targetPort = (target.address() as net.AddressInfo).port;

    const dir = await tempDir(cleanups, 'ri-e2e-cli-');
    const stateDir = join(dir, 'state');
    const edgesFile = join(dir, 'edges.json');
    const edgePort = await freePort();
    const edgeId = 'cli-edge';
    await writeFile(
      edgesFile,
      JSON.stringify([{ id: edgeId, secret: randomSecret(), bindAddress: '127.0.0.1', listenPorts: [{ port: edgePort, targetPort, proxyProtocol: 'none' }] }], null, 2),
    );

    const hub = spawnDaemon(cleanups, HUB_BIN, [
      '--tunnel-port', '0',
      '--bind-host', '127.0.0.1',
      '--target-host', '127.0.0.1',
      '--allowed-edges', edgesFile,
      '--state-dir', stateDir,
      '--grace-ms', String(GRACE_MS),
      '--log-streams',
    ]);
    const listening = await hub.waitForLine(/hub listening on .*:(\d+) fingerprint ([0-9a-f]{64})/, 'hub start-up line');
    const hubPort = Number(listening[1]);
    expect(hubPort).toBeGreaterThan(0);

    const minted = await runOnce(HUB_BIN, ['token', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--edge-id', edgeId, '--hub-host', '127.0.0.1', '--hub-port', String(hubPort)]);
    expect(minted.stderr).toBe('');
    expect(minted.code).toBe(0);
    const token = minted.stdout.trim();
    // The token is for this hub: its address and the fingerprint the running hub printed.
    expect(decodeConnectionToken(token)).toMatchObject({ hubHost: '127.0.0.1', hubPort, edgeId, hubFingerprint: listening[2] });

    const edge = spawnDaemon(cleanups, EDGE_BIN, ['--token', token, '--grace-ms', String(GRACE_MS)]);
    await edge.waitForLine(new RegExp(`^portsAssigned .*\\btcp=(?:\\S*,)?${edgePort}\\b`, 'm'), 'edge portsAssigned line');
    await hub.waitForLine(new RegExp(`^edgeConnected .*\\bedgeId=${edgeId}\\b`, 'm'), 'hub edgeConnected line');

    const body = await withTimeout(
      new Promise<{ status: number; text: string }>((done, reject) => {
        http
          .get({ host: '127.0.0.1', port: edgePort, path: '/through-the-tunnel', agent: false }, (response) => {
            let text = '';
            response.setEncoding('utf8');
            response.on('data', (chunk: string) => (text += chunk));
            response.on('end', () => done({ status: response.statusCode ?? 0, text }));
          })
          .on('error', reject);
      }),
      CONNECT_TIMEOUT_MS,
      'HTTP GET through the edge port',
    );
    expect(body).toEqual({ status: 200, text: 'hello from the target, you asked for /through-the-tunnel\n' });
    expect(requests).toEqual([{ url: '/through-the-tunnel', host: `127.0.0.1:${edgePort}` }]);
    await hub.waitForLine(/^streamClosed .*\bcode=null .*\bedgeId=cli-edge\b/m, 'hub streamClosed line');
    // Per-connection lines are opt-in: the hub asked for them, the edge did not.
    expect(hub.output()).toMatch(/^streamOpened /m);
    expect(edge.output()).not.toMatch(/^stream(Opened|Closed) /m);

    edge.child.kill('SIGTERM');
    expect(await withTimeout(edge.exited, EXIT_TIMEOUT_MS, () => `edge exit after SIGTERM\n${edge.output()}`)).toEqual({ code: 0, signal: null });
    hub.child.kill('SIGTERM');
    expect(await withTimeout(hub.exited, EXIT_TIMEOUT_MS, () => `hub exit after SIGTERM\n${hub.output()}`)).toEqual({ code: 0, signal: null });
  });

  it('bin/remoteingress.js hub --help prints the hub usage and exits 0', async () => {
    const result = await runOnce(MAIN_BIN, ['hub', '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/Usage: remoteingress-hub/);
    expect(result.stdout).toMatch(/--allowed-edges FILE/);
    expect(result.stdout).toMatch(/Example/);
  });

  it.each(['remoteingress-hub', 'remoteingress-edge'])('npx %s --help works in this checkout after set-up', async (bin) => {
    const result = await new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
      execFile('npx', ['--no-install', bin, '--help'], { cwd: ROOT, timeout: 30_000 }, (error, stdout, stderr) =>
        done({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
    expect(result.stderr).not.toMatch(/not found/);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(new RegExp(`Usage: ${bin}`));
  });
});
