import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, delay, echoRoundTrip, eventually, freePort, startEchoServer } from '../e2e/helpers.js';
import { edgeStatus, totalKernelDrops, freeUdpPort, hubEdgeStatus, payload, startTransportPair, startUdpTarget, udpClient } from './helpers.js';

/**
 * Datagrams the hub cannot place are counted and dropped, and the tunnel stays up.
 *
 * What the public API can make happen: datagrams for flow ids the hub does not know. A UDP
 * port whose target is 255.255.255.255 makes the hub's upstream connect() fail at once
 * (EACCES: broadcast without SO_BROADCAST), so the hub forgets the flow and tells the edge;
 * a client streaming datagrams keeps the edge sending more for that flow id until the edge
 * hears of it. Those arrive at the hub (as QUIC datagrams, or DATAGRAM frames over TLS) for an
 * unknown flow: they must be counted in the hub's `udp.dropped`, never break the tunnel, and
 * another UDP port and a TCP port on the same tunnel must keep working.
 *
 * What it cannot: malformed QUIC datagrams (shorter than the 4-byte flow header, or flow id 0)
 * and unknown flow ids arriving at the edge. Only a raw QUIC peer that passes the HMAC
 * handshake could send those; Node has no QUIC client and the addon exposes no injection
 * point, so they need a Rust-side test (see the todo below).
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe.each(['quic', 'tcpTls'] as const)('datagrams for unknown flows over %s', (transportMode) => {
  it('counts and drops datagrams for flows the hub has forgotten; the tunnel and its other ports keep working', async () => {
    const goodTarget = await startUdpTarget(cleanups, true);
    const tcpTarget = await startEchoServer(cleanups);
    const [badPort, goodPort, tcpPort] = [await freeUdpPort(), await freeUdpPort(), await freePort()];
    const pair = await startTransportPair(cleanups, {
      transportMode,
      tcp: [{ port: tcpPort, targetPort: tcpTarget.port, proxyProtocol: 'none' }],
      udp: [
        { port: badPort, targetHost: '255.255.255.255', targetPort: 9 },
        { port: goodPort, targetPort: goodTarget.port },
      ],
    });

    // A client streams 300 datagrams at the port whose flows always fail upstream.
    const bad = await udpClient(cleanups, badPort);
    for (let i = 0; i < 300; i++) {
      bad.send(payload(100));
      if (i % 10 === 9) await delay(5);
    }
    await eventually(() => pair.log.of('udpFlowFailed').length > 0, 10_000, () => `udpFlowFailed at the hub; events:\n${pair.log.describe()}`);
    const failed = pair.log.of('udpFlowFailed');
    const afterBad = { edge: edgeStatus(pair).udp, hub: hubEdgeStatus(pair)?.udp, hubQuicDatagramsDropped: hubEdgeStatus(pair)?.datagramsDropped };
    console.log(`quic-garbage ${transportMode}: ${failed.length} flows failed upstream (${JSON.stringify(failed[0])}); counters ${JSON.stringify(afterBad)}`);
    expect(failed[0]).toMatchObject({ edgeId: pair.edgeId, port: badPort });
    // Nothing the bad flows sent reached a target, and the edge forgot them (the hub said so).
    await eventually(() => hubEdgeStatus(pair)?.udp.flows === 0 && edgeStatus(pair).udp.flows === 0, 5000, () => `failed flows forgotten: edge ${JSON.stringify(edgeStatus(pair).udp)}, hub ${JSON.stringify(hubEdgeStatus(pair)?.udp)}`);
    expect(hubEdgeStatus(pair)?.udp.datagramsOut).toBe(0);
    await delay(300);
    const settled = { edge: edgeStatus(pair).udp, hub: hubEdgeStatus(pair)?.udp };

    // The tunnel stayed up and its other ports work.
    expect(pair.edgeLog.of('tunnelDisconnected')).toEqual([]);
    expect(pair.log.of('edgeDisconnected')).toEqual([]);
    expect(edgeStatus(pair)).toMatchObject({ state: 'connected', transport: transportMode });
    const good = await udpClient(cleanups, goodPort);
    let answered = false;
    for (let attempt = 0; attempt < 10 && !answered; attempt++) {
      const request = payload(500);
      good.send(request);
      const reply = await good.next(300);
      answered = reply !== undefined && reply.equals(request);
    }
    expect(answered, 'the healthy UDP port answers').toBe(true);
    expect(goodTarget.errors).toEqual([]);
    const tcp = await echoRoundTrip(tcpPort);
    expect(tcp.received).toBe(tcp.sent);

    // Accounting: every datagram the edge took in for the failing port reached the hub (over TLS
    // the tunnel is reliable) and was either forwarded (none could be) or counted as dropped —
    // including those that were waiting for the upstream socket when its connect failed.
    // Over QUIC a datagram can also be lost with a tunnel packet (a kernel drop at a tunnel
    // socket); only then may the count fall short.
    const tunnelDrops = transportMode === 'quic' ? totalKernelDrops([pair.tunnelPort, hubEdgeStatus(pair)?.remotePort ?? 0]) : 0;
    if (tunnelDrops > 0) expect(settled.hub?.dropped, 'datagrams for unknown flow ids counted at the hub').toBeGreaterThan(0);
    else {
      expect(settled.hub?.dropped, `datagrams for the failed flows counted at the hub (edge took in ${settled.edge.datagramsIn}, hub forwarded ${settled.hub?.datagramsOut}); the rest were discarded uncounted`).toBe(settled.edge.datagramsIn - (settled.hub?.datagramsOut ?? 0));
    }
  });
});

// Malformed QUIC datagrams (shorter than the 4-byte flow header, flow id 0) and unknown flow ids
// arriving over a real QUIC connection need a raw QUIC peer, which Node does not have: they are
// covered in Rust by `quic::tests::malformed_and_unknown_datagrams_are_counted_and_dropped`
// (crates/tunnel-core/src/quic.rs), over an in-process quinn pair.
