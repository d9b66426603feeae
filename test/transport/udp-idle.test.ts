import { readdirSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, delay, eventually } from '../e2e/helpers.js';
import { type IUdpClient, edgeStatus, freeUdpPort, hubEdgeStatus, payload, startTransportPair, startUdpTarget, udpClient } from './helpers.js';

/**
 * Idle expiry of UDP flows (hub `limits.udpFlowIdleMs`, pushed to the edge): idle flows are
 * forgotten at the edge and at the hub, the hub's upstream sockets close (this process's fd
 * count — hub and edge run in-process — returns to its baseline), an active flow is kept, and
 * a new datagram from a client whose flow expired opens a new flow: the target gets a second
 * PROXY header for the same client, from a new upstream socket.
 */
const IDLE_MS = 600;
const CLIENTS = 40;
/** Expiry happens within IDLE_MS plus a sweep (IDLE_MS / 4); the rest is room for a loaded box. */
const EXPIRY_TIMEOUT_MS = 8000;
const FD_SLACK = 3;

/**
 * Sends a fresh payload every 150 ms (well inside the idle time, so a flow is never expired
 * between tries) until its echo comes back; returns how many sends that took (0 = never).
 * Tolerates a lost first datagram of a new flow: that is udp-echo.test.ts's subject, this
 * file's is expiry.
 */
async function talk(client: IUdpClient): Promise<number> {
  const sent: Buffer[] = [];
  for (let attempt = 1; attempt <= 20; attempt++) {
    const request = payload(64);
    sent.push(request);
    client.send(request);
    const deadline = Date.now() + 150;
    for (let left = 150; left > 0; left = deadline - Date.now()) {
      const reply = await client.next(left);
      if (reply === undefined) break;
      if (!sent.some((one) => one.equals(reply))) throw new Error(`client :${client.port} got a reply it never sent (${reply.length} B)`);
      return attempt;
    }
  }
  return 0;
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe.each(['tcpTls', 'quic'] as const)('UDP flow idle expiry over %s', (transportMode) => {
  it('expires idle flows at both ends, closes the upstream sockets, keeps active flows, and starts a new flow for a returning client', async () => {
    const target = await startUdpTarget(cleanups, true);
    const edgePort = await freeUdpPort();
    const pair = await startTransportPair(cleanups, {
      transportMode,
      // A separate header datagram marks each new flow at the target (with the header in front
      // of every datagram, a returning client's new flow could not be told from its old one).
      udp: [{ port: edgePort, targetPort: target.port, proxyProtocolUdp: 'separateDatagram' }],
      hub: { limits: { udpFlowIdleMs: IDLE_MS } },
    });
    expect((edgeStatus(pair) as unknown as { config: { udpIdleMs: number } }).config.udpIdleMs).toBe(IDLE_MS);
    const clients = await Promise.all(Array.from({ length: CLIENTS }, () => udpClient(cleanups, edgePort)));
    const active = await udpClient(cleanups, edgePort);
    let extraSends = 0;
    const exchange = async (client: IUdpClient): Promise<boolean> => {
      const sends = await talk(client);
      if (sends > 1) extraSends += sends - 1;
      return sends > 0;
    };
    await delay(200);
    const baseline = openFds();

    // Phase 1: one echo per client; the hub holds one upstream socket per flow.
    const first = await Promise.all(clients.map(exchange));
    expect(first.filter((ok) => !ok).length, `new flows never answered (edge ${JSON.stringify(edgeStatus(pair).udp)}, hub ${JSON.stringify(hubEdgeStatus(pair)?.udp)}, target flows ${target.flows.size})`).toBe(0);
    await eventually(() => edgeStatus(pair).udp.flows === CLIENTS && hubEdgeStatus(pair)?.udp.flows === CLIENTS, 5000, () => `${CLIENTS} flows at both ends: edge ${JSON.stringify(edgeStatus(pair).udp)}, hub ${JSON.stringify(hubEdgeStatus(pair)?.udp)}`);
    const withFlows = openFds();
    // The fd check can see sockets at all: one upstream socket per flow.
    expect(withFlows).toBeGreaterThanOrEqual(baseline + CLIENTS - FD_SLACK);

    // Phase 2: the idle flows expire while `active` keeps talking (every 100 ms, well inside the idle time).
    let maxGap = 0;
    let activeRunning = true;
    const activeLoop = (async () => {
      let last = Date.now();
      while (activeRunning) {
        expect(await exchange(active)).toBe(true);
        await delay(100);
        const now = Date.now();
        maxGap = Math.max(maxGap, now - last);
        last = now;
      }
    })();
    const expiryStarted = Date.now();
    await eventually(
      () => edgeStatus(pair).udp.flows === 1 && hubEdgeStatus(pair)?.udp.flows === 1,
      EXPIRY_TIMEOUT_MS,
      () => `the ${CLIENTS} idle flows to expire (the active one stays): edge ${JSON.stringify(edgeStatus(pair).udp)}, hub ${JSON.stringify(hubEdgeStatus(pair)?.udp)}`,
    );
    const expiredAfter = Date.now() - expiryStarted;
    await delay(3 * IDLE_MS - Math.min(expiredAfter, 3 * IDLE_MS));
    activeRunning = false;
    await activeLoop;
    await eventually(() => edgeStatus(pair).udp.flows === 0 && hubEdgeStatus(pair)?.udp.flows === 0, EXPIRY_TIMEOUT_MS, () => `every flow to expire: edge ${JSON.stringify(edgeStatus(pair).udp)}, hub ${JSON.stringify(hubEdgeStatus(pair)?.udp)}`);
    await eventually(() => openFds() <= baseline + FD_SLACK, 5000, () => `fds back to the baseline ${baseline} (+${FD_SLACK}): now ${openFds()}, with flows ${withFlows}`);
    const afterExpiry = openFds();
    const expiredEvents = pair.edgeLog.of('udpFlowsExpired').reduce((sum, event) => sum + (event.count as number), 0);
    expect(expiredEvents).toBe(CLIENTS + 1);
    const activeFlows = [...target.flows.values()].filter((flow) => flow.header?.source.port === active.port);
    console.log(
      `udp-idle ${transportMode}: idle flows expired ${expiredAfter} ms after the last datagram (idle ${IDLE_MS} ms); fds baseline ${baseline}, with ${CLIENTS} flows ${withFlows}, after expiry ${afterExpiry}; ` +
        `active client: ${activeFlows.length} flow(s), longest gap ${maxGap} ms; resends so far ${extraSends}`,
    );
    if (maxGap < IDLE_MS * 0.8) expect(activeFlows, 'the active flow was expired although it never idled').toHaveLength(1);
    else console.log(`udp-idle ${transportMode}: the event loop stalled ${maxGap} ms between active datagrams; the keep-alive check is inconclusive this run`);

    // Phase 3: the same clients again: each one opens a new flow with a fresh PROXY header.
    const resendsBefore = extraSends;
    const again = await Promise.all(clients.map(exchange));
    console.log(`udp-idle ${transportMode}: returning clients needed ${extraSends - resendsBefore} resends; edge ${JSON.stringify(edgeStatus(pair).udp)}, hub ${JSON.stringify(hubEdgeStatus(pair)?.udp)}`);
    expect(again.filter((ok) => !ok).length, 'returning clients never answered').toBe(0);
    await eventually(() => edgeStatus(pair).udp.flows === CLIENTS && hubEdgeStatus(pair)?.udp.flows === CLIENTS, 5000, () => `${CLIENTS} new flows`);
    expect(target.errors).toEqual([]);
    const problems: string[] = [];
    for (const client of clients) {
      const flows = [...target.flows.values()].filter((flow) => flow.header?.source.port === client.port);
      // Two flows, each announced by exactly one header (the second flow's upstream socket may
      // reuse the first one's port, so remote addresses need not differ).
      if (flows.length !== 2 || flows.some((flow) => flow.headers !== 1)) {
        problems.push(`client :${client.port}: ${flows.length} flows at the target, headers ${flows.map((flow) => flow.headers).join(',')}`);
      }
    }
    expect(problems).toEqual([]);
    expect(pair.edgeLog.of('tunnelDisconnected')).toEqual([]);
  });
});
