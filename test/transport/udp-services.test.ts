import { afterEach, describe, expect, it } from 'vitest';
import type { IEdgeServiceStatus } from 'remoteingress-edge';
import { Cleanups, eventually } from '../e2e/helpers.js';
import { type IUdpClient, type ITransportPair, freeUdpPort, payload, startTransportPair, startUdpTarget, udpClient } from './helpers.js';

/**
 * UDP services with their own limits at the edge: `maxConnections` counts flows (one per client
 * address) — a client beyond it gets no flow, its datagrams are dropped and counted, the others
 * keep working; `idleTimeoutSecs` closes a service's idle flows (and gives their places back);
 * `bindAddress` binds the service's port on that address only.
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** Sends a fresh payload until its echo comes back within 200 ms (a flow's first datagram may race its open); true if it did within 10 tries. */
async function echoes(client: IUdpClient): Promise<boolean> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const request = payload(100);
    client.send(request);
    const reply = await client.next(200);
    if (reply !== undefined) {
      expect(reply.equals(request)).toBe(true);
      return true;
    }
  }
  return false;
}

function service(pair: ITransportPair, id: string): IEdgeServiceStatus {
  const found = pair.edge.getStatus().services?.find((s) => s.id === id && s.protocol === 'udp');
  if (found === undefined) throw new Error(`no UDP service ${id} in ${JSON.stringify(pair.edge.getStatus().services)}`);
  return found;
}

describe.each(['tcpTls', 'quic'] as const)('UDP services over %s', (transportMode) => {
  it('maxConnections counts flows, idleTimeoutSecs closes idle ones and frees their places, bindAddress binds only there', async () => {
    const target = await startUdpTarget(cleanups, false);
    const [limited, bound] = [await freeUdpPort(), await freeUdpPort()];
    const pair = await startTransportPair(cleanups, {
      transportMode,
      services: [
        { id: 'limited', protocol: 'udp', edgePort: limited, target: { host: '127.0.0.1', port: target.port }, proxyProtocol: 'none', maxConnections: 2, idleTimeoutSecs: 1 },
        { id: 'bound', protocol: 'udp', edgePort: bound, bindAddress: '127.0.0.2', target: { host: '127.0.0.1', port: target.port }, proxyProtocol: 'none' },
      ],
      // The edge-wide idle time is long: only the service's own 1 s can expire its flows.
      hub: { limits: { udpFlowIdleMs: 60_000 } },
    });

    const [a, b, c] = [await udpClient(cleanups, limited), await udpClient(cleanups, limited), await udpClient(cleanups, limited)];
    expect(await echoes(a)).toBe(true);
    expect(await echoes(b)).toBe(true);
    // The third client is over the limit: no flow, no echo, while the two others keep working
    // (each try keeps them busy, so the service's 1 s idle timeout cannot free a place).
    for (let attempt = 0; attempt < 5; attempt++) {
      expect(await echoes(a)).toBe(true);
      expect(await echoes(b)).toBe(true);
      c.send(payload(100));
      expect(await c.next(200)).toBeUndefined();
    }
    expect(service(pair, 'limited')).toMatchObject({ active: 2, maxConnections: 2, idleTimeoutSecs: 1 });
    expect(service(pair, 'limited').refused).toBeGreaterThan(0);

    // Idle for the service's 1 s: both flows close (within a sweep of it) and give their places back.
    const idleFrom = Date.now();
    await eventually(() => service(pair, 'limited').active === 0, 5000, () => JSON.stringify(service(pair, 'limited')));
    const closedAfter = Date.now() - idleFrom;
    console.log(`${transportMode}: idle UDP flows closed ${closedAfter} ms after their last datagram (idleTimeoutSecs 1)`);
    expect(closedAfter).toBeGreaterThanOrEqual(800);
    expect(service(pair, 'limited').idleClosed).toBe(2);
    expect(await echoes(c)).toBe(true);

    // bindAddress: served on 127.0.0.2 only (nothing answers on 127.0.0.1).
    const elsewhere = await udpClient(cleanups, bound);
    expect(await echoes(elsewhere)).toBe(false);
    const there = await udpClient(cleanups, bound, '127.0.0.1', '127.0.0.2');
    expect(await echoes(there)).toBe(true);
    expect(service(pair, 'bound').bindAddress).toBe('127.0.0.2');
  });
});
