import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeConnectionToken } from 'remoteingress-hub';
import {
  Cleanups,
  connectFrom,
  delay,
  describeFds,
  echoOnce,
  edgeEntry,
  fdCount,
  forkApiDaemon,
  freePort,
  listen,
  mib,
  randomSecret,
  rssBytes,
  tcpStatesOf,
  tempDir,
  until,
  type IApiDaemon,
  type TApiStatus,
} from './helpers.js';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

const CONNECTIONS = 10_000;
const CONCURRENCY = 50;
const CYCLES = 20;
/** Streams held open through each forced reconnect, so every cycle also tears down live streams. */
const HELD_PER_CYCLE = 5;
/** fds may differ by a lazily created runtime fd or two; a leak per connection or per cycle is ≥ 20. */
const FD_MARGIN = 5;
/**
 * RSS after the run may exceed the warmed-up baseline by at most this. The baseline is taken
 * after a warm-up (1,000 connections, 2 reconnect cycles) so the allocator's arenas, tokio's
 * worker pools and V8's heap have already grown to their working size; what glibc keeps cached
 * after that is a few MiB. 20 MiB over 10,000 connections + 20 cycles still catches a leak of
 * ~2 KiB per connection (a socket buffer or a stream record), or ~1 MiB per reconnect cycle.
 */
const RSS_MARGIN = 20 * 1024 * 1024;
/**
 * A second identical round once caches are warm: measured here, RSS moves by ≤ 0.3 MiB per
 * further 10,000 connections, so 4 MiB (≈ 400 B per connection) separates noise from a leak.
 */
const SECOND_ROUND_RSS_MARGIN = 4 * 1024 * 1024;

/** `count` echo round trips through `port`, `concurrency` at a time; returns how many failed. */
async function churn(port: number, count: number, concurrency: number): Promise<number> {
  let next = 0;
  let failed = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      next += 1;
      if (!(await echoOnce(port, 256, 5_000))) failed += 1;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, () => worker()));
  return failed;
}

interface ISnapshot {
  hubFds: number;
  edgeFds: number;
  hubRss: number;
  edgeRss: number;
}

async function settle(hub: IApiDaemon, edge: IApiDaemon, live: Set<net.Socket>): Promise<void> {
  const describe = async (): Promise<string> =>
    `quiet state: hub ${JSON.stringify(await hub.request('status'))}, edge ${JSON.stringify(await edge.request('status'))}, target connections ${live.size}`;
  await until(
    async () => {
      const h = await hub.request<TApiStatus & { edges: Array<{ openStreams: number }> }>('status');
      const e = await edge.request<TApiStatus & { openStreams: number; state: string }>('status');
      return (
        live.size === 0 &&
        h.edges.length === 1 &&
        h.edges.every((x) => x.openStreams === 0) &&
        h.counts.streamOpened === h.counts.streamClosed &&
        e.state === 'connected' &&
        e.openStreams === 0
      );
    },
    10_000,
    describe,
  );
  await hub.request('gc');
  await edge.request('gc');
  await delay(300);
}

function snapshot(hub: IApiDaemon, edge: IApiDaemon): ISnapshot {
  return { hubFds: fdCount(hub.pid), edgeFds: fdCount(edge.pid), hubRss: rssBytes(hub.pid), edgeRss: rssBytes(edge.pid) };
}

describe('resource baseline', () => {
  it(`2 × (${CONNECTIONS} connections and ${CYCLES} reconnect cycles): fds, stream counts and RSS of hub and edge return to baseline`, async () => {
    const live = new Set<net.Socket>();
    const target = await listen(cleanups, (socket) => {
      live.add(socket);
      socket.on('close', () => live.delete(socket));
      socket.pipe(socket);
    });
    const port = await freePort();
    const secret = randomSecret();
    const stateDir = await tempDir(cleanups, 'ri-faults-baseline-');
    const allowed = [edgeEntry('edge-r', secret, [port], target.port)];
    const hub = forkApiDaemon(
      cleanups,
      'hub',
      {
        tunnelPort: 0,
        bindHost: '127.0.0.1',
        targetHost: '127.0.0.1',
        stateDir,
        allowedEdges: allowed,
        // While the edge is removed, its redials fail authentication; that is expected here,
        // so the per-source failure budget must not lock it out for the rest of the test.
        limits: { authFailureBurst: 100_000, authFailuresPerMinute: 100_000 },
      },
      { exposeGc: true },
    );
    const { tunnelPort, fingerprint } = await hub.started;
    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: tunnelPort as number, edgeId: 'edge-r', secret, hubFingerprint: fingerprint as string });
    const edge = forkApiDaemon(cleanups, 'edge', { token, transportMode: 'tcpTls', reconnect: { baseMs: 50, capMs: 200 } }, { exposeGc: true });
    await edge.started;
    await edge.log.waitFor('portsAssigned', (event) => (event.tcp as number[]).includes(port));

    const reconnectCycle = async (): Promise<void> => {
      const held: net.Socket[] = [];
      for (let i = 0; i < HELD_PER_CYCLE; i++) {
        const socket = await connectFrom(port);
        socket.on('error', () => undefined);
        socket.write('held');
        held.push(socket);
      }
      await until(() => live.size >= HELD_PER_CYCLE, 5_000, () => `held streams reach the target (${live.size})`);
      const since = edge.log.events.length;
      await hub.request('update', { edges: [] });
      await edge.log.waitFor('tunnelDisconnected', () => true, 5_000, since);
      await until(async () => (await hub.request<{ edges: unknown[] }>('status')).edges.length === 0, 5_000, () => 'hub to drop the removed edge');
      await hub.request('update', { edges: allowed });
      await edge.log.waitFor('portsAssigned', (event) => (event.tcp as number[]).includes(port), 5_000, since);
      held.forEach((socket) => socket.destroy());
      await until(() => echoOnce(port, 64, 1_000), 5_000, () => 'a request after the reconnect');
    };

    // Warm-up: let every pool and arena grow to its working size before the baseline.
    expect(await churn(port, 1_000, CONCURRENCY)).toBe(0);
    for (let i = 0; i < 2; i++) await reconnectCycle();
    await settle(hub, edge, live);
    const base = snapshot(hub, edge);
    const baseKinds = { hub: describeFds(hub.pid), edge: describeFds(edge.pid) };

    // Two identical rounds: the first may still grow caches a little (bounded by RSS_MARGIN); the
    // second must add almost nothing, or something grows per connection or per cycle (a leak).
    const rounds: Array<{ churnMs: number; cyclesMs: number; snap: ISnapshot }> = [];
    for (let round = 0; round < 2; round++) {
      const churnStart = Date.now();
      expect(await churn(port, CONNECTIONS, CONCURRENCY)).toBe(0);
      const churnMs = Date.now() - churnStart;
      const cyclesStart = Date.now();
      for (let i = 0; i < CYCLES; i++) await reconnectCycle();
      const cyclesMs = Date.now() - cyclesStart;
      await settle(hub, edge, live);
      rounds.push({ churnMs, cyclesMs, snap: snapshot(hub, edge) });
    }
    const hubStatus = await hub.request<TApiStatus & { edges: Array<{ openStreams: number }> }>('status');
    const edgeStatus = await edge.request<TApiStatus & { openStreams: number }>('status');
    let after = snapshot(hub, edge);
    // fds: poll briefly (a closing socket may be a few ms behind the stream-closed event).
    await until(
      () => {
        after = snapshot(hub, edge);
        return Math.abs(after.hubFds - base.hubFds) <= FD_MARGIN && Math.abs(after.edgeFds - base.edgeFds) <= FD_MARGIN;
      },
      5_000,
      () =>
        `fds back to baseline: hub ${base.hubFds} → ${after.hubFds} (${describeFds(hub.pid)}; was ${baseKinds.hub}; tcp ${JSON.stringify(tcpStatesOf(hub.pid))}), ` +
        `edge ${base.edgeFds} → ${after.edgeFds} (${describeFds(edge.pid)}; was ${baseKinds.edge}; tcp ${JSON.stringify(tcpStatesOf(edge.pid))})`,
    );
    const mid = (rounds[0] as (typeof rounds)[0]).snap;
    console.log(
      `resource baseline: per round ${CONNECTIONS} connections (${CONCURRENCY} concurrent) + ${CYCLES} reconnect cycles: ` +
        rounds.map((r) => `${r.churnMs} ms (${Math.round(CONNECTIONS / (r.churnMs / 1000))}/s) + ${r.cyclesMs} ms`).join(', ') +
        `\n  hub  fds ${base.hubFds} → ${mid.hubFds} → ${after.hubFds}; RSS ${mib(base.hubRss)} → ${mib(mid.hubRss)} → ${mib(after.hubRss)}; streams opened ${hubStatus.counts.streamOpened} closed ${hubStatus.counts.streamClosed}` +
        `\n  edge fds ${base.edgeFds} → ${mid.edgeFds} → ${after.edgeFds}; RSS ${mib(base.edgeRss)} → ${mib(mid.edgeRss)} → ${mib(after.edgeRss)}; openStreams ${edgeStatus.openStreams}`,
    );
    expect(tcpStatesOf(hub.pid).CLOSE_WAIT ?? 0).toBe(0);
    expect(tcpStatesOf(edge.pid).CLOSE_WAIT ?? 0).toBe(0);
    expect(after.hubRss - base.hubRss, `hub RSS ${mib(base.hubRss)} → ${mib(after.hubRss)}`).toBeLessThan(RSS_MARGIN);
    expect(after.edgeRss - base.edgeRss, `edge RSS ${mib(base.edgeRss)} → ${mib(after.edgeRss)}`).toBeLessThan(RSS_MARGIN);
    expect(after.hubRss - mid.hubRss, `hub RSS over the second round ${mib(mid.hubRss)} → ${mib(after.hubRss)}`).toBeLessThan(SECOND_ROUND_RSS_MARGIN);
    expect(after.edgeRss - mid.edgeRss, `edge RSS over the second round ${mib(mid.edgeRss)} → ${mib(after.edgeRss)}`).toBeLessThan(SECOND_ROUND_RSS_MARGIN);
  });
});
