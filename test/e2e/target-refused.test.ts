import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, attempt, echoRoundTrip, freePort, startEchoServer, startPair, withTimeout } from './helpers.js';

/**
 * A port whose target has nothing listening: the client must learn promptly (a reset, or a
 * close with no data), the hub must say why, and the tunnel must carry on for other ports.
 */
const PROMPT_MS = 2_000;

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe('target refuses the connection', () => {
  it('resets the client promptly and reports ERR_TARGET_UNREACHABLE with a reason', async () => {
    // A port that was free a moment ago and is not listened on by anyone.
    const deadTargetPort = await freePort();
    const echo = await startEchoServer(cleanups);
    const deadEdgePort = await freePort();
    const liveEdgePort = await freePort();
    const pair = await startPair(cleanups, {
      listenPorts: [
        { port: deadEdgePort, targetPort: deadTargetPort, proxyProtocol: 'v1' },
        { port: liveEdgePort, targetPort: echo.port, proxyProtocol: 'none' },
      ],
    });

    for (const request of [undefined, 'hello?']) {
      const since = pair.log.events.length;
      const started = Date.now();
      // Without a request the client just waits; with one it also half-closes. Either way it must hear back.
      const result = await withTimeout(attempt(deadEdgePort, request), PROMPT_MS + 3_000, 'client notified of the unreachable target');
      const elapsed = Date.now() - started;
      expect(result.reply.length, 'no byte may reach a client whose target never answered').toBe(0);
      // A reset shows as ECONNRESET, or as EPIPE when it lands while the client is still connecting or writing.
      if (result.error !== undefined) expect(['ECONNRESET', 'EPIPE']).toContain(result.error);
      expect(elapsed).toBeLessThan(PROMPT_MS);

      const closed = await pair.log.waitFor('streamClosed', () => true, 5_000, since);
      expect(closed).toMatchObject({ edgeId: pair.edgeId, port: deadEdgePort, code: 'ERR_TARGET_UNREACHABLE', reason: expect.any(String) });
      expect(String(closed.reason)).toMatch(new RegExp(`${deadTargetPort}|refused`, 'i'));
    }

    // The tunnel itself is unharmed.
    const trip = await echoRoundTrip(liveEdgePort);
    expect(trip.received).toBe(trip.sent);
    expect(pair.edgeLog.of('tunnelDisconnected')).toEqual([]);
    expect(pair.hub.getStatus().edges[0]?.openStreams).toBe(0);
  });
});
