import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, connectFrom, exchange, freePort, startPair, startProxyTarget, type IPair } from './helpers.js';

/**
 * Chains: client → edge1 → hub1 → edge2 → hub2 (→ edge3 → hub3) → target. Each hub writes a PROXY
 * header to its target; the next edge's service trusts PROXY headers from the previous hub
 * (`trustProxyFrom`), reads it, and carries the client it names on, so the last hub's header
 * names the first client. A header sent by anyone else is just payload.
 *
 * Hubs connect to their targets from 127.0.0.1; the client connects from 127.0.0.5, so trusting
 * 127.0.0.1/32 trusts exactly the previous hop.
 */
const CLIENT_IP = '127.0.0.5';
const HUB_SOURCE = '127.0.0.1/32';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** A chain of `hops` hub/edge pairs ending at a PROXY v2 target; returns the first edge's port. */
async function chain(hops: number, headers: Array<'v1' | 'v2'>) {
  const target = await startProxyTarget(cleanups, 'v2');
  let next = { port: target.port, proxy: 'v2' as 'v1' | 'v2' };
  const pairs: IPair[] = [];
  // Built from the target backwards: each pair forwards to the previous one's edge port.
  for (let hop = hops - 1; hop >= 0; hop--) {
    const edgePort = await freePort();
    const pair = await startPair(cleanups, {
      edgeId: `edge-hop-${hop}`,
      listenPorts: [],
      services: [
        {
          id: `hop-${hop}`,
          protocol: 'tcp',
          edgePort,
          target: { host: '127.0.0.1', port: next.port },
          proxyProtocol: next.proxy,
          // The first hop faces clients; the others trust their previous hub.
          ...(hop > 0 ? { trustProxyFrom: [HUB_SOURCE] } : {}),
        },
      ],
    });
    pairs.unshift(pair);
    next = { port: edgePort, proxy: headers[(hop + headers.length - 1) % headers.length] ?? 'v2' };
  }
  return { target, entry: next.port, pairs };
}

describe('chains keep the first client address', () => {
  it.each([
    [2, ['v2'] as Array<'v1' | 'v2'>],
    [2, ['v1'] as Array<'v1' | 'v2'>],
    [3, ['v1', 'v2'] as Array<'v1' | 'v2'>],
  ])('%i hops (headers between hops: %j): the target sees the client, byte-exact payload', async (hops, headers) => {
    const { target, entry } = await chain(hops, headers);
    const socket = await connectFrom(entry, CLIENT_IP);
    const clientPort = socket.localPort;
    const payload = `through ${hops} hops`;
    const result = await exchange(socket, payload);
    expect(result.reply.toString()).toBe(payload);
    const seen = await target.connection(0);
    expect(seen.source).toEqual({ address: CLIENT_IP, port: clientPort });
    expect(seen.payload.toString()).toBe(payload);
    expect(target.errors).toEqual([]);
  });

  it('a forged PROXY header from an untrusted client is payload, and the target still sees the client', async () => {
    const { target, entry } = await chain(2, ['v2']);
    const forged = 'PROXY TCP4 6.6.6.6 127.0.0.1 6666 80\r\nhello';
    const socket = await connectFrom(entry, CLIENT_IP);
    const clientPort = socket.localPort;
    const result = await exchange(socket, forged);
    expect(result.reply.toString()).toBe(forged);
    const seen = await target.connection(0);
    expect(seen.source).toEqual({ address: CLIENT_IP, port: clientPort });
    expect(seen.payload.toString()).toBe(forged);
  });

  it('a trusted source without a valid header is refused, and counted', async () => {
    const { pairs } = await chain(2, ['v2']);
    const second = pairs[1]!;
    const port = second.edge.getStatus().services?.[0]?.port as number;
    // From 127.0.0.1 (trusted), no header: refused, nothing reaches the hub.
    const socket = await connectFrom(port, '127.0.0.1').catch(() => undefined);
    if (socket !== undefined) {
      const result = await exchange(socket, 'GET / HTTP/1.0\r\n\r\n');
      expect(result.reply.length).toBe(0);
    }
    await expect.poll(() => second.edge.getStatus().services?.[0]?.proxyHeaderRefused, { timeout: 5000 }).toBe(1);
    expect(second.log.of('streamOpened')).toHaveLength(0);
  });
});
