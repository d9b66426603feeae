import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups } from '../e2e/helpers.js';
import { type IUdpClient, edgeStatus, freeUdpPort, payload, startTransportPair, startUdpTarget, udpClient } from './helpers.js';

/**
 * The hub's UDP caps reach its edges (issue 24): `maxUdpFlowsPerSource` holds one client address
 * to its share of flows, `maxUdpFlowsPerService` a service to its share, and a refused flow is
 * counted (`udp.flowsRefused`) while every admitted client keeps working.
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** Sends fresh payloads until one's echo comes back within 200 ms; true if one did within 5 tries. */
async function echoes(client: IUdpClient): Promise<boolean> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const request = payload(64);
    client.send(request);
    const reply = await client.next(200);
    if (reply !== undefined) return reply.equals(request);
  }
  return false;
}

describe.each(['tcpTls', 'quic'] as const)('UDP flow caps over %s', (transportMode) => {
  it('holds a source and a service to their shares and counts what it refuses', async () => {
    const target = await startUdpTarget(cleanups, false);
    const port = await freeUdpPort();
    const transport = await startTransportPair(cleanups, {
      transportMode,
      services: [{ id: 'dns', protocol: 'udp', edgePort: port, target: { host: '127.0.0.1', port: target.port }, proxyProtocol: 'none' }],
      hub: { limits: { maxUdpFlowsPerSource: 2, maxUdpFlowsPerService: 3 } },
    });
    const [a, b, c] = [await udpClient(cleanups, port), await udpClient(cleanups, port), await udpClient(cleanups, port)];
    expect(await echoes(a)).toBe(true);
    expect(await echoes(b)).toBe(true);
    // A third client from the same address: over its source's 2.
    expect(await echoes(c)).toBe(false);
    // Another address has its own share, up to the service's 3…
    expect(await echoes(await udpClient(cleanups, port, '127.0.0.2'))).toBe(true);
    // …and then the service is full for everyone new.
    expect(await echoes(await udpClient(cleanups, port, '127.0.0.3'))).toBe(false);
    // The admitted ones still work.
    expect(await echoes(a)).toBe(true);
    const udp = edgeStatus(transport).udp as { flows: number; flowsRefused?: number };
    expect(udp.flows).toBe(3);
    expect(udp.flowsRefused).toBeGreaterThanOrEqual(2);
  });
});
