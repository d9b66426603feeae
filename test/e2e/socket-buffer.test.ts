import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanEnv } from './daemons.js';
import { CONNECT_TIMEOUT_MS, Cleanups, ROOT, connectFrom, exchange, freePort, randomSecret, sha256, startEchoServer, startHub, startPair, tempDir, withTimeout } from './helpers.js';

/**
 * `performance.socketBuffer` sizes the tunnel sockets (the Rust tests read the sizes back from
 * the kernel); here: a hub with it set carries a stream byte-exact over each transport, and a
 * size the tunnel cannot work with is refused at start with the field and value named.
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** 128 KiB: a set size (autotuning off) smaller than the 1 MiB sent, so the socket fills and drains, and under a stock net.core.rmem_max, so it needs no CAP_NET_ADMIN (a smoke test: the sizes themselves are read back in the Rust tests). */
const SOCKET_BUFFER = 128 * 1024;
const SIZE = 1024 * 1024;

describe.each(['tcpTls', 'quic'] as const)('performance.socketBuffer (%s)', (transportMode) => {
  it('a hub with set tunnel socket buffers carries a stream byte-exact', async () => {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    await startPair(cleanups, { transportMode, hub: { performance: { socketBuffer: SOCKET_BUFFER } }, listenPorts: [{ port: edgePort, targetPort: target.port, proxyProtocol: 'none' }] });
    const request = randomBytes(SIZE);
    const result = await withTimeout(exchange(await connectFrom(edgePort), request), CONNECT_TIMEOUT_MS, 'echo through the tunnel');
    expect(result.ended).toBe('end');
    expect(result.reply.length).toBe(SIZE);
    expect(sha256(result.reply)).toBe(sha256(request));
  });
});

describe('performance.socketBuffer, refused', () => {
  it.each([1000, 64 * 1024 - 1, 512 * 1024 * 1024 + 1])('%i bytes: the hub does not start and says why', async (bytes) => {
    await expect(startHub(cleanups, { performance: { socketBuffer: bytes } })).rejects.toMatchObject({
      code: 'ERR_INVALID_CONFIG',
      message: expect.stringMatching(new RegExp(`performance\\.socketBuffer: ${bytes} is outside 65536\\.\\.=536870912`)),
    });
  });
});

/** The larger of net.core.rmem_max and wmem_max: beyond it a size needs CAP_NET_ADMIN. */
const memMax = Math.max(...['rmem_max', 'wmem_max'].map((name) => Number(readFileSync(`/proc/sys/net/core/${name}`, 'utf8').trim())));
/** The largest size the validation accepts (config.rs MAX_SOCKET_BUFFER). */
const MAX_SOCKET_BUFFER = 512 * 1024 * 1024;

describe('performance.socketBuffer beyond net.core.[rw]mem_max without CAP_NET_ADMIN', () => {
  // The kernel would silently give less than asked; the daemon refuses instead. As root the
  // capability is dropped from the hub's bounding set (setpriv); others never have it.
  it.skipIf(memMax + 64 * 1024 > MAX_SOCKET_BUFFER)('the hub CLI exits 2 and says what the size needs', async () => {
    const bytes = memMax + 64 * 1024;
    const dir = await tempDir(cleanups, 'ri-e2e-sockbuf-');
    const edgesFile = join(dir, 'edges.json');
    await writeFile(edgesFile, JSON.stringify([{ id: 'e1', secret: randomSecret(), listenPorts: [{ port: await freePort(), targetPort: 9, proxyProtocol: 'none' }] }]));
    const hub = [join(ROOT, 'packages/hub/dist/bin.js'), '--tunnel-port', '0', '--bind-host', '127.0.0.1', '--allowed-edges', edgesFile, '--state-dir', join(dir, 'state'), '--performance', JSON.stringify({ socketBuffer: bytes })];
    const [file, args] = process.getuid?.() === 0 ? ['setpriv', ['--bounding-set', '-net_admin', process.execPath, ...hub]] : [process.execPath, hub];
    const result = await new Promise<{ code: number | null; stderr: string }>((done) => {
      execFile(file, args, { env: cleanEnv(), timeout: 20_000 }, (error, _stdout, stderr) => done({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stderr }));
    });
    expect(result.stderr).toMatch(new RegExp(`performance\\.socketBuffer: ${bytes} bytes needs CAP_NET_ADMIN`));
    expect(result.code).toBe(2);
  });
});
