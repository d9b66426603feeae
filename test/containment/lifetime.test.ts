import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { Cleanups, ROOT, delay, tempDir } from '../e2e/helpers.js';

/**
 * Regression: a hub and edge whose JS objects became unreachable were collected while running,
 * freeing the native handle under queued events (heap corruption) and letting Node exit. Now a
 * running handle holds itself alive. The child starts both through the public API inside a
 * function scope, forces GC repeatedly, pushes connections through, and must stay alive.
 */

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

const SCRIPT = `
import net from 'node:net';
import { RemoteIngressHub, encodeConnectionToken } from 'remoteingress-hub';
import { RemoteIngressEdge } from 'remoteingress-edge';
const echo = net.createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(0, '127.0.0.1');
await new Promise((r) => echo.once('listening', r));
const free = await new Promise((r) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });
async function startAndForget() {
  const hub = new RemoteIngressHub();
  const secret = 'a'.repeat(32);
  const { tunnelPort, fingerprint } = await hub.start({ tunnelPort: 0, bindHost: '127.0.0.1', stateDir: process.argv[2],
    allowedEdges: [{ id: 'e1', secret, bindAddress: '127.0.0.1', listenPorts: [{ port: free, targetPort: echo.address().port, proxyProtocol: 'none' }] }] });
  const edge = new RemoteIngressEdge();
  const assigned = new Promise((r) => edge.once('portsAssigned', r));
  await edge.start({ token: encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: tunnelPort, edgeId: 'e1', secret, hubFingerprint: fingerprint }), transportMode: 'tcpTls' });
  await assigned;
}
await startAndForget();
echo.unref();
for (let round = 0; round < 20; round++) {
  globalThis.gc();
  await Promise.all(Array.from({ length: 50 }, () => new Promise((ok, bad) => {
    const c = net.connect(free, '127.0.0.1', () => c.end('x'));
    let got = '';
    c.on('data', (d) => { got += d; });
    c.on('close', () => (got === 'x' ? ok() : bad(new Error('bad echo: ' + got))));
    c.on('error', bad);
  })));
}
console.log('SERVED');
`;

it('a running hub and edge survive losing every JS reference, and keep Node alive', async () => {
  const dir = await tempDir(cleanups, 'ri-life-');
  const script = join(ROOT, 'test', 'containment', `.lifetime-${process.pid}.mjs`);
  await writeFile(script, SCRIPT);
  cleanups.add('remove script', () => import('node:fs/promises').then((fs) => fs.rm(script, { force: true })));
  const child = spawn(process.execPath, ['--expose-gc', script, dir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  let exit: { code: number | null; signal: string | null } | undefined;
  child.on('exit', (code, signal) => (exit = { code, signal }));
  cleanups.add('kill child', () => {
    if (exit === undefined) child.kill('SIGKILL');
  });
  await expect.poll(() => out.includes('SERVED') || exit !== undefined, { timeout: 30_000 }).toBe(true);
  expect(out, err).toContain('SERVED');
  // Nothing else keeps this process's event loop busy: only the running daemons do.
  await delay(1500);
  expect(exit, `child exited early: ${JSON.stringify(exit)} ${err}`).toBeUndefined();
});
