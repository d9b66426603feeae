import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, delay, eventually, sha256 } from '../e2e/helpers.js';
import { EchoClient, edgeStatus, totalKernelDrops, freeUdpPort, hubEdgeStatus, payload, pool, startTransportPair, startUdpTarget, udpClient, withTimeout } from './helpers.js';

/**
 * 1,000 UDP flows through edge → tunnel → hub → echo target and back, over each transport.
 * Every client socket is its own flow (all 1,000 stay open to the end, so the kernel cannot
 * hand a closed client's port to a new one and merge two flows). Each flow echoes three
 * payloads of 1 B .. 60 KiB; every reply must equal its request byte for byte. The target
 * checks that each flow (= each hub upstream socket) opened with exactly one datagram holding
 * a PROXY v2 header, parsed by `proxy-protocol-js`: PROXY, UDP over IPv4 (0x12), source = the
 * client's address and port, destination = 127.0.0.1:edge port — and that the payloads that
 * followed on that flow are exactly the ones that client sent.
 */
const FLOWS = 1000;
const CONCURRENCY = 100;
/** The sizes the brief names; every one is used ~FLOWS/6 times as a flow's first request. */
const SPECIAL_SIZES = [1, 1200, 1400, 1500, 8 * 1024, 60 * 1024];
const MAX_SIZE = 60 * 1024;
/** A reply normally takes well under 10 ms; 3 s means the datagram was lost (then: one retry). */
const REQUEST_TIMEOUT_MS = 3000;
const RUN_TIMEOUT_MS = 50_000;

/** Log-uniform in 1..60 KiB: most datagrams small, some near the maximum. */
function randomSize(): number {
  return Math.max(1, Math.min(MAX_SIZE, Math.round(Math.exp(Math.random() * Math.log(MAX_SIZE)))));
}

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe.each(['tcpTls', 'quic'] as const)('UDP echo over %s', (transportMode) => {
  it(`carries ${FLOWS} flows of 1 B..60 KiB datagrams, each reply matched, one PROXY v2 DGRAM header per flow`, async () => {
    const target = await startUdpTarget(cleanups, true);
    const edgePort = await freeUdpPort();
    const pair = await startTransportPair(cleanups, { transportMode, udp: [{ port: edgePort, targetPort: target.port, proxyProtocol: 'v2', proxyProtocolUdp: 'separateDatagram' }] });
    expect(edgeStatus(pair).transport).toBe(transportMode);
    expect(hubEdgeStatus(pair)?.transport).toBe(transportMode);

    const clients = await pool(Array.from({ length: FLOWS }), 200, async () => new EchoClient(await udpClient(cleanups, edgePort), REQUEST_TIMEOUT_MS));
    expect(new Set(clients.map((c) => c.port)).size).toBe(FLOWS);
    const plans = clients.map((_, index) => [SPECIAL_SIZES[index % SPECIAL_SIZES.length] as number, randomSize(), randomSize()]);
    const requestHashes = new Map<number, string[]>();
    /** Which requests needed a retry: the first of a flow, or a later one, and how big. */
    const retried: Array<{ request: number; size: number }> = [];

    const started = Date.now();
    await withTimeout(
      pool(clients, CONCURRENCY, async (client, index) => {
        const hashes: string[] = [];
        for (const size of plans[index] as number[]) {
          const request = payload(size);
          hashes.push(sha256(request));
          const before = client.retries + client.failures;
          await client.echo(request);
          if (client.retries + client.failures > before) retried.push({ request: hashes.length - 1, size });
        }
        requestHashes.set(client.port, hashes);
      }),
      RUN_TIMEOUT_MS,
      () => `${FLOWS} UDP echo flows (${requestHashes.size} finished)`,
    );
    const seconds = (Date.now() - started) / 1000;
    const requests = plans.reduce((sum, plan) => sum + plan.length, 0);
    const bytes = plans.flat().reduce((sum, size) => sum + size, 0);
    const retries = clients.reduce((sum, c) => sum + c.retries, 0);
    const late = clients.reduce((sum, c) => sum + c.lateDuplicates, 0);
    const sent = clients.reduce((sum, c) => sum + c.sentHashes.length, 0);
    const edgeUdp = edgeStatus(pair).udp;
    const kernel = {
      edgePort: totalKernelDrops([edgePort]),
      target: totalKernelDrops([target.port]),
      clients: totalKernelDrops(clients.map((c) => c.port)),
      hubUpstream: totalKernelDrops([...target.flows.keys()].map((remote) => Number(remote.split(':')[1]))),
    };
    const firstRetried = retried.filter((r) => r.request === 0).length;
    const smallRetried = retried.filter((r) => r.size <= 1200).length;
    const hubStatus = hubEdgeStatus(pair);
    console.log(
      `udp-echo ${transportMode}: ${FLOWS} flows, ${requests} requests, ${(bytes / 2 ** 20).toFixed(1)} MiB each way in ${seconds.toFixed(1)} s; ` +
        `retries ${retries} (${firstRetried} of them a flow's first request, ${smallRetried} of ≤ 1200 B), late duplicates ${late}; ` +
        `kernel drops ${JSON.stringify(kernel)}; edge udp ${JSON.stringify(edgeUdp)}; hub udp ${JSON.stringify(hubStatus?.udp)}, datagramsDropped ${hubStatus?.datagramsDropped}`,
    );

    // The datagram ledger: every datagram a client sent is accounted for, and every loss was a
    // kernel drop at a full socket queue (measured in /proc/net/udp), never the code under test.
    const tunnelSockets = transportMode === 'quic' ? [pair.tunnelPort, hubEdgeStatus(pair)?.remotePort ?? 0] : [];
    const ledger = () => {
      const edge = edgeStatus(pair).udp;
      const hub = hubEdgeStatus(pair);
      return {
        sent,
        kernelDropsAtEdgePort: totalKernelDrops([edgePort]),
        edgeIn: edge.datagramsIn,
        edgeDropped: edge.dropped,
        hubOut: hub?.udp.datagramsOut,
        hubDropped: hub?.udp.dropped,
        hubQuicDatagramsDropped: hub?.datagramsDropped,
        targetPayloads: [...target.flows.values()].reduce((sum, flow) => sum + flow.payloadHashes.length, 0),
        kernelDropsAtTarget: totalKernelDrops([target.port]),
        kernelDropsInTunnel: totalKernelDrops(tunnelSockets),
      };
    };
    const book = ledger();
    console.log(`udp-echo ${transportMode} ledger: ${JSON.stringify(book)}`);
    expect({ edgeIn: book.edgeIn, edgeDropped: book.edgeDropped, hubDropped: book.hubDropped, hubQuicDatagramsDropped: book.hubQuicDatagramsDropped, targetPayloads: book.targetPayloads }).toEqual({
      edgeIn: book.sent - book.kernelDropsAtEdgePort,
      edgeDropped: 0,
      hubDropped: 0,
      hubQuicDatagramsDropped: 0,
      targetPayloads: (book.hubOut ?? 0) - book.kernelDropsAtTarget,
    });
    // Over TLS the tunnel is reliable: what the edge took in, the hub sent on. (Over QUIC a
    // datagram lost with a tunnel packet is gone, as on any UDP path; it shows up as a kernel
    // drop at a tunnel socket.)
    if (transportMode === 'tcpTls' || book.kernelDropsInTunnel === 0) expect(book.hubOut).toBe(book.edgeIn);
    const kernelTotal = book.kernelDropsAtEdgePort + book.kernelDropsAtTarget + book.kernelDropsInTunnel + kernel.clients + kernel.hubUpstream;
    expect(retries, `retries not explained by kernel drops (${kernelTotal})`).toBeLessThanOrEqual(kernelTotal);

    // Every request was answered (at most after one retry) with its own bytes.
    expect(clients.flatMap((c) => c.mismatches)).toEqual([]);
    expect(clients.filter((c) => c.failures > 0).map((c) => `client :${c.port}: ${c.failures} request(s) unanswered after a retry`)).toEqual([]);

    // The target: one flow per client, each opened by exactly one correct PROXY v2 DGRAM header.
    expect(target.errors).toEqual([]);
    const flows = [...target.flows.values()];
    expect(flows).toHaveLength(FLOWS);
    const byClientPort = new Map<number, (typeof flows)[number]>();
    const badHeaders: string[] = [];
    for (const flow of flows) {
      const h = flow.header;
      if (h === undefined) {
        badHeaders.push(`${flow.remote}: no header`);
        continue;
      }
      if (flow.headers !== 1) badHeaders.push(`${flow.remote}: ${flow.headers} PROXY headers`);
      if (h.command !== 1 || h.transport !== 2 || h.family !== 0x10 || h.famByte !== 0x12 || h.length !== 28) badHeaders.push(`${flow.remote}: header ${JSON.stringify(h)}`);
      if (h.source.address !== '127.0.0.1' || h.destination.address !== '127.0.0.1' || h.destination.port !== edgePort) badHeaders.push(`${flow.remote}: addresses ${JSON.stringify(h)}`);
      if (byClientPort.has(h.source.port)) badHeaders.push(`${flow.remote}: client port ${h.source.port} already had a flow`);
      byClientPort.set(h.source.port, flow);
    }
    expect(badHeaders).toEqual([]);
    // The header's source is the client that sent that flow's payloads: the datagrams that
    // followed each header are exactly that client's (retries may repeat one).
    const misattributed: string[] = [];
    for (const client of clients) {
      const flow = byClientPort.get(client.port);
      const mine = new Set(client.sentHashes);
      if (flow === undefined) {
        misattributed.push(`client :${client.port}: no flow at the target names it`);
        continue;
      }
      const seen = new Set(flow.payloadHashes);
      for (const hash of requestHashes.get(client.port) ?? []) if (!seen.has(hash)) misattributed.push(`client :${client.port}: a request of its never reached its flow ${flow.remote}`);
      for (const hash of flow.payloadHashes) if (!mine.has(hash)) misattributed.push(`flow ${flow.remote} (header says client :${client.port}) carried a datagram that client never sent`);
    }
    expect(misattributed).toEqual([]);

    // Both ends still hold every flow (idle expiry is 60 s), and the tunnel never dropped.
    await eventually(() => edgeStatus(pair).udp.flows === FLOWS && hubEdgeStatus(pair)?.udp.flows === FLOWS, 5_000, () => `flows = ${FLOWS}: edge ${JSON.stringify(edgeStatus(pair).udp)}, hub ${JSON.stringify(hubEdgeStatus(pair)?.udp)}`);
    expect(pair.edgeLog.of('tunnelDisconnected')).toEqual([]);
    expect(pair.log.of('edgeDisconnected')).toEqual([]);
    expect(hubEdgeStatus(pair)?.transport).toBe(transportMode);

  });

  /**
   * The plainest case, with nothing concurrent that could overflow a socket: 30 new flows one
   * after another, each sending one 100-byte datagram. Every first datagram must arrive (over
   * QUIC the flow's announcement and its first datagram travel different paths; the hub must
   * not drop the datagram because it has not seen the announcement yet).
   */
  it('delivers the first datagram of each new flow (30 flows, one at a time)', async () => {
    const FIRSTS = 30;
    const target = await startUdpTarget(cleanups, true);
    const edgePort = await freeUdpPort();
    const pair = await startTransportPair(cleanups, { transportMode, udp: [{ port: edgePort, targetPort: target.port }] });
    const clients: Array<{ client: Awaited<ReturnType<typeof udpClient>>; request: Buffer; answered: boolean }> = [];
    for (let index = 0; index < FIRSTS; index++) {
      const client = await udpClient(cleanups, edgePort);
      const request = payload(100);
      client.send(request);
      // Usually answered in a millisecond; a reply later than this is still counted below.
      const reply = await client.next(500);
      clients.push({ client, request, answered: reply !== undefined && reply.equals(request) });
    }
    await delay(1000);
    for (const entry of clients) {
      if (entry.answered) continue;
      const late = await entry.client.next(0);
      entry.answered = late !== undefined && late.equals(entry.request);
    }
    const lost = clients.filter((entry) => !entry.answered).length;
    const kernel = totalKernelDrops([edgePort, target.port, ...clients.map((entry) => entry.client.port)]);
    console.log(`udp-echo ${transportMode} first datagrams: ${lost} of ${FIRSTS} lost (kernel drops ${kernel}); hub udp ${JSON.stringify(hubEdgeStatus(pair)?.udp)}`);
    expect({ lostFirstDatagrams: lost, hubDropped: hubEdgeStatus(pair)?.udp.dropped }).toEqual({ lostFirstDatagrams: kernel, hubDropped: 0 });
    // Every flow was announced to the target all the same.
    expect(target.errors).toEqual([]);
    expect(target.flows.size).toBe(FIRSTS);
  });

  /**
   * The header where real consumers read it: with the default mode every datagram of a flow
   * reaches the target as `PROXY v2 header ‖ payload` (dnsdist, Unbound, NSD, PowerDNS and Knot
   * read it so); with `firstDatagram` only the first one does.
   */
  it.each([
    ['everyDatagram (the default)', undefined, [true, true, true]],
    ['firstDatagram', 'firstDatagram' as const, [true, false, false]],
  ])('puts the PROXY v2 header in front of the payload: %s', async (_name, mode, expected) => {
    const target = await startUdpTarget(cleanups, true);
    const edgePort = await freeUdpPort();
    const spec = { port: edgePort, targetPort: target.port, proxyProtocol: 'v2' as const, ...(mode ? { proxyProtocolUdp: mode } : {}) };
    await startTransportPair(cleanups, { transportMode, udp: [spec] });
    const client = await udpClient(cleanups, edgePort);
    for (const [index] of expected.entries()) {
      const request = payload(100 + index);
      client.send(request);
      expect((await client.next(3000))?.equals(request), `reply ${index}`).toBe(true);
    }
    expect(target.errors).toEqual([]);
    const [flow] = [...target.flows.values()];
    expect(target.flows.size).toBe(1);
    expect({ separate: flow?.headers, prepended: flow?.prepended }).toEqual({ separate: 0, prepended: expected.filter(Boolean).length });
    expect(flow?.header?.source).toEqual({ address: '127.0.0.1', port: client.port });
    expect(flow?.header?.destination.port).toBe(edgePort);
  });
});
