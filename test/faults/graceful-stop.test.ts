import { afterEach, describe, expect, it } from 'vitest';
import {
  Cleanups,
  connectFrom,
  delay,
  echoOnce,
  freePort,
  startEchoServer,
  startPair,
  startTransfer,
  type IPair,
} from './helpers.js';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

const TRANSFER_BYTES = 4 * 1024 * 1024;
const TRANSFERS = 3;
const ROUNDS = 5;
const GRACE_MS = 5_000;

async function pair(): Promise<{ pair: IPair; port: number }> {
  const target = await startEchoServer(cleanups);
  const port = await freePort();
  return { pair: await startPair(cleanups, { edgeId: 'edge-s', listenPorts: [{ port, targetPort: target.port, proxyProtocol: 'none' }] }), port };
}

describe('stop() during a transfer', () => {
  for (const side of ['hub', 'edge'] as const) {
    it(`${side}.stop({graceMs}) lets transfers that fit in the grace period complete byte-exact, and resolves after them`, async () => {
      // Several rounds of several streams: the failure this guards against (the tunnel closed
      // under the last bytes of a drained stream) depends on timing; repetition makes it show.
      for (let round = 0; round < ROUNDS; round++) {
        const { pair: p, port } = await pair();
        const transfers = await Promise.all(Array.from({ length: TRANSFERS }, () => startTransfer(port, TRANSFER_BYTES)));
        await Promise.all(transfers.map((transfer) => transfer.pause));

        const stopCalledAt = Date.now();
        let stopResolvedAt = 0;
        const stopping = (side === 'hub' ? p.hub : p.edge).stop({ graceMs: GRACE_MS }).then(() => {
          stopResolvedAt = Date.now();
        });
        // The streams are mid-transfer while the drain runs; the clients keep writing a while later.
        await delay(300);
        expect(stopResolvedAt).toBe(0);
        const results = await Promise.all(transfers.map((transfer) => transfer.finish()));
        await stopping;

        const outcomes = results.map((r) => `${r.length} B ${r.endedBy}${r.error === undefined ? '' : ` ${r.error}`}`);
        console.log(
          `${side}.stop round ${round}: transfers done ${Math.max(...results.map((r) => r.at)) - stopCalledAt} ms after stop(), stop resolved ${stopResolvedAt - stopCalledAt} ms after stop(); outcomes ${outcomes.join('; ')}`,
        );
        results.forEach((result, i) => {
          expect(`${result.length} B ${result.endedBy} ${result.error ?? ''}`, `round ${round} transfer ${i}`).toBe(`${TRANSFER_BYTES} B end `);
          expect(result.sha256).toBe(transfers[i]?.sent.sha256);
          // stop() resolves once the streams are released; the client's 'close' may be processed a few ms later.
          expect(stopResolvedAt).toBeGreaterThanOrEqual(result.at - 50);
        });
        // It does not wait out the whole grace period once the streams are done.
        expect(stopResolvedAt - stopCalledAt).toBeLessThan(GRACE_MS);
        // Nothing new is accepted once stopped.
        expect(await echoOnce(port, 64, 2_000)).toBe(false);
        await cleanups.run();
      }
    });
  }

  it('hub.stop({graceMs}) closes a stream that outlives the grace period and resolves shortly after it', async () => {
    const { pair: p, port } = await pair();
    const socket = await connectFrom(port);
    socket.on('error', () => undefined);
    cleanups.add('destroy client', () => socket.destroy());
    const closed = new Promise<number>((done) => socket.once('close', () => done(Date.now())));
    socket.write('still here');
    await new Promise((done) => socket.once('data', done));

    const graceMs = 800;
    const stopCalledAt = Date.now();
    await p.hub.stop({ graceMs });
    const stopMs = Date.now() - stopCalledAt;
    const closedAt = await closed;
    console.log(`hub.stop with an idle stream: resolved after ${stopMs} ms (grace ${graceMs}); client closed after ${closedAt - stopCalledAt} ms`);
    expect(stopMs).toBeGreaterThanOrEqual(graceMs - 50);
    expect(stopMs).toBeLessThan(graceMs + 2_000);
  });
});
