import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runOnce, spawnDaemon } from './daemons.js';
import { Cleanups, ROOT, eventually, randomSecret, tempDir, withTimeout } from './helpers.js';

/**
 * systemd's notify protocol as a Type=notify unit sees it, with systemd's side emulated: socat
 * receives the datagrams on the unix socket NOTIFY_SOCKET names. The hub says READY=1 once it
 * listens, the edge once its tunnel is up, both STOPPING=1 on SIGTERM (after READY=1), and with
 * WATCHDOG_USEC set both ping WATCHDOG=1 at half the interval.
 */
const HUB_BIN = join(ROOT, 'packages/hub/dist/bin.js');
const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');
/** 400 ms: pings every 200 ms, so a second is several of them. */
const WATCHDOG_USEC = '400000';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** A unix datagram socket at `path` whose messages are collected (socat, as systemd would read them). */
async function notifyListener(path: string): Promise<{ messages: () => string[] }> {
  const socat = spawn('socat', ['-u', `UNIX-RECV:${path}`, 'STDOUT'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let received = '';
  let errors = '';
  socat.stdout.on('data', (d: Buffer) => (received += d.toString()));
  socat.stderr.on('data', (d: Buffer) => (errors += d.toString()));
  const exited = new Promise<void>((done) => socat.once('exit', () => done()));
  cleanups.add('stop socat', async () => {
    socat.kill('SIGTERM');
    await exited;
  });
  const { access } = await import('node:fs/promises');
  await withTimeout(
    (async () => {
      for (;;) {
        if (await access(path).then(() => true, () => false)) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    })(),
    5000,
    () => `socat did not create ${path}: ${errors}`,
  );
  return { messages: () => received.split('\n').filter((l) => l !== '') };
}

describe('systemd notify', () => {
  it('hub and edge: READY=1 when listening / when the tunnel is up, WATCHDOG=1 pings, STOPPING=1 on SIGTERM', async () => {
    const dir = await tempDir(cleanups, 'ri-e2e-notify-');
    const hubSocket = await notifyListener(join(dir, 'hub-notify.sock'));
    const edgeSocket = await notifyListener(join(dir, 'edge-notify.sock'));
    const edgesFile = join(dir, 'edges.json');
    const stateDir = join(dir, 'state');
    await writeFile(edgesFile, JSON.stringify([{ id: 'edge-n', secret: randomSecret(), listenPorts: [] }]));

    const hub = spawnDaemon(cleanups, HUB_BIN, ['--tunnel-port', '0', '--bind-host', '127.0.0.1', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--grace-ms', '100'], {
      NOTIFY_SOCKET: join(dir, 'hub-notify.sock'),
      WATCHDOG_USEC,
    });
    const hubPort = Number((await hub.waitForLine(/hub listening on .*:(\d+) fingerprint/, 'hub start-up line'))[1]);
    await eventually(() => hubSocket.messages().includes('READY=1'), 5000, () => `hub sent ${JSON.stringify(hubSocket.messages())}`);
    expect(hubSocket.messages()[0]).toMatch(/^STATUS=listening on 127\.0\.0\.1:\d+$/);

    const minted = await runOnce(HUB_BIN, ['token', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--edge-id', 'edge-n', '--hub-host', '127.0.0.1', '--hub-port', String(hubPort)]);
    const edge = spawnDaemon(cleanups, EDGE_BIN, ['--token', minted.stdout.trim(), '--transport-mode', 'tcpTls', '--grace-ms', '100'], {
      NOTIFY_SOCKET: join(dir, 'edge-notify.sock'),
      WATCHDOG_USEC,
    });
    await edge.waitForLine(/tunnelConnected/, 'edge tunnelConnected');
    await eventually(() => edgeSocket.messages().includes('READY=1'), 5000, () => `edge sent ${JSON.stringify(edgeSocket.messages())}`);
    // Watchdog pings from both, at half the interval.
    await eventually(
      () => [hubSocket, edgeSocket].every((s) => s.messages().filter((m) => m === 'WATCHDOG=1').length >= 3),
      5000,
      () => `watchdog pings: hub ${JSON.stringify(hubSocket.messages())}, edge ${JSON.stringify(edgeSocket.messages())}`,
    );

    for (const [daemon, socket] of [[edge, edgeSocket], [hub, hubSocket]] as const) {
      daemon.child.kill('SIGTERM');
      expect(await withTimeout(daemon.exited, 10_000, () => daemon.output())).toEqual({ code: 0, signal: null });
      const messages = socket.messages();
      expect(messages.indexOf('STOPPING=1'), JSON.stringify(messages)).toBeGreaterThan(messages.indexOf('READY=1'));
      expect(messages.indexOf('READY=1')).toBeGreaterThanOrEqual(0);
      // Nothing after STOPPING=1 claims readiness again.
      expect(messages.slice(messages.indexOf('STOPPING=1'))).not.toContain('READY=1');
    }
  }, 60_000);

  it('the example units pass systemd-analyze verify with the packages\' bins at the paths they name', async () => {
    // The units name /usr/local/bin (where `npm install -g` puts the bins). A private mount
    // namespace puts this checkout's bins there for the check and leaves the machine untouched.
    const units = ['remoteingress-hub.service', 'remoteingress-edge.service'].map((u) => join(ROOT, 'examples', u));
    const script = [
      'set -e',
      'mount -t tmpfs tmpfs /usr/local/bin',
      `ln -s ${join(ROOT, 'packages/hub/dist/bin.js')} /usr/local/bin/remoteingress-hub`,
      `ln -s ${join(ROOT, 'packages/edge/dist/bin.js')} /usr/local/bin/remoteingress-edge`,
      `systemd-analyze verify ${units.join(' ')} 2>&1`,
    ].join('\n');
    const result = await new Promise<{ code: number | null; output: string }>((done) => {
      const child = spawn('unshare', ['-m', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr.on('data', (d: Buffer) => (output += d.toString()));
      child.on('close', (code) => done({ code, output }));
    });
    expect(result, result.output).toEqual({ code: 0, output: '' });
    for (const unit of units) {
      const text = await readFile(unit, 'utf8');
      expect(text).toMatch(/^Type=notify$/m);
      expect(text).toMatch(/^WatchdogSec=\d+$/m);
    }
  });
});
