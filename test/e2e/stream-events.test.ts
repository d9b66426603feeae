import type { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { CONNECT_TIMEOUT_MS, Cleanups, attempt, connectFrom, delay, eventually, exchange, freePort, startEchoServer, startPair, withTimeout } from './helpers.js';

/**
 * Per-stream events (`streamOpened`, `streamClosed`) leave the addon only while someone
 * listens for them: a daemon taking thousands of connections per second must not pay for
 * records nobody reads. Listeners coming and going switch them on and off.
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** Every event name `emitter` emits from now on, listened to or not. */
function recordEmits(emitter: EventEmitter): string[] {
  const names: string[] = [];
  const emit = emitter.emit.bind(emitter);
  emitter.emit = (name: string | symbol, ...args: unknown[]): boolean => {
    names.push(String(name));
    return emit(name, ...args);
  };
  return names;
}

describe('per-stream events follow their listeners', () => {
  it('none without a listener, only failures for a streamFailed listener, all for streamClosed, none again once removed', async () => {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    const refusedPort = await freePort();
    const pair = await startPair(cleanups, {
      listenPorts: [
        { port: edgePort, targetPort: target.port, proxyProtocol: 'none' },
        // Nothing listens on the target side of this one: the hub's connect is refused.
        { port: refusedPort, targetPort: await freePort(), proxyProtocol: 'none' },
      ],
    });
    const roundTrip = async (): Promise<void> => {
      const result = await withTimeout(exchange(await connectFrom(edgePort), 'ping\n'), CONNECT_TIMEOUT_MS, 'echo through the tunnel');
      expect(result.reply.toString()).toBe('ping\n');
    };
    const settle = async (): Promise<void> => {
      await eventually(() => pair.hub.getStatus().edges.every((edge) => edge.openStreams === 0), CONNECT_TIMEOUT_MS, () => 'hub streams to close');
      await delay(200); // let stray events arrive
    };
    const streamKinds = (names: string[]): string[] => names.filter((name) => name.startsWith('stream'));

    // The helpers listen to everything; take the stream listeners away.
    for (const emitter of [pair.hub, pair.edge] as EventEmitter[]) {
      emitter.removeAllListeners('streamOpened');
      emitter.removeAllListeners('streamClosed');
    }
    const hubEmits = recordEmits(pair.hub);
    const edgeEmits = recordEmits(pair.edge);
    await roundTrip();
    await settle();
    expect(streamKinds(hubEmits)).toEqual([]);
    expect(streamKinds(edgeEmits)).toEqual([]);

    // Only failures: a clean stream costs nothing, a refused one is reported.
    const failed: Array<{ code: unknown }> = [];
    pair.hub.on('streamFailed', (event) => void failed.push(event));
    await roundTrip();
    await settle();
    expect(streamKinds(hubEmits)).toEqual([]);
    const refused = await withTimeout(attempt(refusedPort, 'ping\n'), CONNECT_TIMEOUT_MS, 'connection to a refused target');
    expect(refused.reply.length).toBe(0);
    await eventually(() => failed.length === 1, CONNECT_TIMEOUT_MS, () => `one streamFailed event, got ${failed.length}`);
    expect(failed[0]?.code).toEqual(expect.any(String));
    expect(streamKinds(hubEmits)).toEqual(['streamClosed', 'streamFailed']);

    // Everything while someone listens to streamClosed.
    const closed: unknown[] = [];
    const onClosed = (event: unknown): void => void closed.push(event);
    pair.hub.on('streamClosed', onClosed);
    await roundTrip();
    await eventually(() => closed.length === 1, CONNECT_TIMEOUT_MS, () => `one hub streamClosed event, got ${closed.length}`);
    // Only the side with a listener pays for them.
    expect(streamKinds(edgeEmits)).toEqual([]);

    pair.hub.off('streamClosed', onClosed);
    pair.hub.removeAllListeners('streamFailed');
    await settle();
    hubEmits.length = 0;
    await roundTrip();
    await withTimeout(attempt(refusedPort, 'ping\n'), CONNECT_TIMEOUT_MS, 'connection to a refused target');
    await settle();
    expect(streamKinds(hubEmits)).toEqual([]);
    expect(closed).toHaveLength(1);
  });
});
