import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, startPair } from '../e2e/helpers.js';
import { freeUdpPort, startUdpTarget, udpClient } from './helpers.js';

/**
 * UDP chains: client (127.0.0.5) → edge1 → hub1 → edge2 → hub2 → target. hub1 puts a PROXY v2
 * header on its datagrams to edge2; edge2's service trusts hub1 (127.0.0.1), strips the header
 * and carries the client it names, so the target's header names the first client. A datagram
 * from an untrusted client that starts with a PROXY header is payload.
 */
const CLIENT_IP = '127.0.0.5';
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe('UDP chains keep the first client address', () => {
  it.each(['everyDatagram', 'firstDatagram', 'separateDatagram'] as const)('2 hops, hub1 → edge2 header mode %s', async (mode) => {
    const target = await startUdpTarget(cleanups, true);
    const [edge1Port, edge2Port] = [await freeUdpPort(), await freeUdpPort()];
    await startPair(cleanups, {
      edgeId: 'edge-2',
      listenPorts: [],
      services: [{ id: 'dns-2', protocol: 'udp', edgePort: edge2Port, target: { host: '127.0.0.1', port: target.port }, proxyProtocol: 'v2', trustProxyFrom: ['127.0.0.1/32'] }],
    });
    await startPair(cleanups, {
      edgeId: 'edge-1',
      listenPorts: [],
      services: [{ id: 'dns-1', protocol: 'udp', edgePort: edge1Port, target: { host: '127.0.0.1', port: edge2Port }, proxyProtocol: 'v2', proxyProtocolUdp: mode }],
    });
    const client = await udpClient(cleanups, edge1Port, CLIENT_IP);
    for (let i = 0; i < 3; i++) {
      const request = Buffer.from(`query ${i} through two hops`);
      // Both edges have bound their ports (startPair waits for portsAssigned).
      client.send(request);
      const reply = await client.next(3000);
      expect(reply?.toString()).toBe(request.toString());
    }
    expect(target.errors).toEqual([]);
    const flows = [...target.flows.values()];
    expect(flows).toHaveLength(1);
    expect(flows[0]?.header?.source).toEqual({ address: CLIENT_IP, port: client.port });
  });

  it('a PROXY v2 header from an untrusted client is payload', async () => {
    const target = await startUdpTarget(cleanups, true);
    const edgePort = await freeUdpPort();
    await startPair(cleanups, {
      listenPorts: [],
      services: [{ id: 'dns', protocol: 'udp', edgePort, target: { host: '127.0.0.1', port: target.port }, proxyProtocol: 'v2', trustProxyFrom: ['127.0.0.1/32'] }],
    });
    const client = await udpClient(cleanups, edgePort, CLIENT_IP);
    // "\r\n\r\n\0\r\nQUIT\n", PROXY, UDP4, 12 bytes: 6.6.6.6:6666 → 127.0.0.1:53
    const forged = Buffer.concat([
      Buffer.from('0d0a0d0a000d0a515549540a2112000c', 'hex'),
      Buffer.from([6, 6, 6, 6, 127, 0, 0, 1, 0x1a, 0x0a, 0, 53]),
      Buffer.from('and a query'),
    ]);
    client.send(forged);
    expect((await client.next(3000))?.equals(forged)).toBe(true);
    const [flow] = [...target.flows.values()];
    expect(flow?.header?.source).toEqual({ address: CLIENT_IP, port: client.port });
  });
});
