import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { CONNECT_TIMEOUT_MS, Cleanups, connectFrom, exchange, freePort, sha256, startEchoServer, startHub, startPair, withTimeout } from './helpers.js';

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
