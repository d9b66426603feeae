import { afterEach, describe, expect, it } from 'vitest';
import { loadNativeAddon } from 'remoteingress-core';
import { Cleanups, connectFrom, echoRoundTrip, exchange, freePort, startEchoServer, startPair } from '../e2e/helpers.js';

/**
 * A panic inside the addon must cost at most the tunnel, listener or stream it happened in:
 * it is caught, reported as `crashRecovered` (or as a stream reset), the affected part comes
 * back, and Node never aborts. Each test arms one panic through the addon's test hook.
 */

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** True when a fresh connection echoes exactly what it sent. */
function echoWorks(port: number): Promise<boolean> {
  return echoRoundTrip(port).then(
    ({ sent, received }) => sent === received,
    () => false,
  );
}

async function pair() {
  const echo = await startEchoServer(cleanups);
  const port = await freePort();
  const p = await startPair(cleanups, {
    listenPorts: [{ port, targetPort: echo.port, proxyProtocol: 'none' }],
    hub: { limits: { heartbeatIntervalMs: 500, heartbeatTimeoutMs: 1500 } },
  });
  // Prove the pair works before breaking it.
  await echoRoundTrip(port);
  return { ...p, port };
}

describe('panic containment', () => {
  it('a panic in the edge listener restarts that listener only', async () => {
    const p = await pair();
    loadNativeAddon().injectPanicForTest('edgeListener');
    // The connection that trips the panic is lost with it; the listener comes back.
    const first = await connectFrom(p.port).catch(() => undefined);
    first?.destroy();
    const crash = await p.edgeLog.waitFor('crashRecovered');
    expect(String(crash.component)).toBe(`edge listener on port ${p.port}`);
    expect(String(crash.error)).toContain('injected panic');
    await expect.poll(() => echoWorks(p.port), { timeout: 5000 }).toBe(true);
    expect(p.edgeLog.of('tunnelDisconnected')).toHaveLength(0);
  });

  it('a panic in a tunnel is reported and the tunnel is re-established', async () => {
    const p = await pair();
    loadNativeAddon().injectPanicForTest('tunnel');
    // Any frame trips it (heartbeats flow every 500 ms); whichever side handles it reports.
    await expect
      .poll(() => p.log.of('crashRecovered').length + p.edgeLog.of('crashRecovered').length, { timeout: 5000 })
      .toBeGreaterThan(0);
    const crash = [...p.log.of('crashRecovered'), ...p.edgeLog.of('crashRecovered')][0]!;
    expect(['tunnel', 'edge tunnel']).toContain(String(crash.component));
    await expect.poll(() => echoWorks(p.port), { timeout: 10_000 }).toBe(true);
    expect(p.hub.getStatus().edges.map((e) => e.edgeId)).toEqual([p.edgeId]);
  });

  it('a panic in the hub listener restarts it and edges still connect', async () => {
    const p = await pair();
    loadNativeAddon().injectPanicForTest('hubListener');
    // Force a reconnect: the next accept on the tunnel port panics, the edge retries.
    const since = p.log.events.length;
    await p.hub.updateAllowedEdges([]);
    await p.hub.updateAllowedEdges([{ id: p.edgeId, secret: p.secret, bindAddress: '127.0.0.1', listenPorts: [{ port: p.port, targetPort: (await startEchoServer(cleanups)).port, proxyProtocol: 'none' }] }]);
    const crash = await p.log.waitFor('crashRecovered', () => true, 10_000, since);
    expect(crash.component).toBe('hub listener');
    await p.log.waitFor('edgeConnected', () => true, 15_000, since);
    await expect.poll(() => echoWorks(p.port), { timeout: 10_000 }).toBe(true);
  });

  it('a panic in one stream task resets that stream only', async () => {
    const p = await pair();
    const other = await connectFrom(p.port);
    // The hub's task for `other` must be past its fault point before the panic is armed, or
    // the armed panic can hit `other` instead of the victim. One echoed byte proves it: the
    // task connected to the target, which it does only after the fault point.
    const firstEcho = new Promise<Buffer>((resolve) => other.once('data', resolve));
    other.write('.');
    expect((await firstEcho).toString()).toBe('.');
    loadNativeAddon().injectPanicForTest('hubStream');
    // The reset can come before Node even reports the connect (ECONNRESET on connect); either
    // way the victim gets no data.
    const victim = await connectFrom(p.port).catch(() => undefined);
    if (victim !== undefined) {
      const result = await exchange(victim, 'hello');
      expect(result.reply.length).toBe(0);
    }
    const closed = await p.log.waitFor('streamClosed', (e) => e.reason !== null);
    expect(String(closed.reason)).toContain('ended abnormally');
    // The connection opened before, and new ones, are unaffected.
    const ok = await exchange(other, 'still here');
    expect(ok.reply.toString()).toBe('still here');
    await echoRoundTrip(p.port);
  });
});
