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

/**
 * The larger of net.core.rmem_max and wmem_max (beyond it a size needs CAP_NET_ADMIN), or null
 * where this network namespace does not show them (older kernels outside the initial one).
 */
function memMax(): number | null {
  try {
    return Math.max(...['rmem_max', 'wmem_max'].map((name) => Number(readFileSync(`/proc/sys/net/core/${name}`, 'utf8').trim())));
  } catch {
    return null;
  }
}
/** The largest size the validation accepts (config.rs MAX_SOCKET_BUFFER). */
const MAX_SOCKET_BUFFER = 512 * 1024 * 1024;
/** Linux's capability number of CAP_NET_ADMIN. */
const CAP_NET_ADMIN = 12n;

/** Whether this process has CAP_NET_ADMIN in effect (/proc/self/status CapEff). */
function hasNetAdmin(): boolean {
  const eff = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return eff !== null && ((BigInt(`0x${eff[1]}`) >> CAP_NET_ADMIN) & 1n) === 1n;
}

describe('performance.socketBuffer beyond net.core.[rw]mem_max without CAP_NET_ADMIN', () => {
  const max = memMax();
  // The kernel would silently give less than asked; the daemon refuses instead. A test process
  // that has the capability runs the hub without it: dropped from the inheritable set (and so
  // the ambient one) and from the bounding set, which together keep it from the exec'd process.
  it.skipIf(max === null || max + 64 * 1024 > MAX_SOCKET_BUFFER)('the hub CLI exits 2 and says what the size needs', async () => {
    const bytes = (max as number) + 64 * 1024;
    const dir = await tempDir(cleanups, 'ri-e2e-sockbuf-');
    const edgesFile = join(dir, 'edges.json');
    // The hub never binds an edge's port: any number does.
    await writeFile(edgesFile, JSON.stringify([{ id: 'e1', secret: randomSecret(), listenPorts: [{ port: 40999, targetPort: 9, proxyProtocol: 'none' }] }]));
    const hub = [join(ROOT, 'packages/hub/dist/bin.js'), '--tunnel-port', '0', '--bind-host', '127.0.0.1', '--allowed-edges', edgesFile, '--state-dir', join(dir, 'state'), '--performance', JSON.stringify({ socketBuffer: bytes })];
    const [file, args] = hasNetAdmin() ? ['setpriv', ['--inh-caps', '-net_admin', '--bounding-set', '-net_admin', process.execPath, ...hub]] : [process.execPath, hub];
    // A hub that started after all is killed at the timeout, and what it printed is shown.
    const result = await new Promise<{ code: number | null; stderr: string; detail: string }>((done) => {
      execFile(file, args, { env: cleanEnv(), timeout: 20_000, killSignal: 'SIGKILL' }, (error, stdout, stderr) =>
        done({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stderr, detail: `${file} exited ${error?.code ?? 0}${error ? ` (${error.message})` : ''}; stdout: ${stdout}` }),
      );
    });
    expect(result.stderr, result.detail).toMatch(new RegExp(`performance\\.socketBuffer: ${bytes} bytes needs CAP_NET_ADMIN`));
    expect(result.code).toBe(2);
  });
});
