import type { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { CONNECT_TIMEOUT_MS, Cleanups, connectFrom, delay, eventually, exchange, freePort, startEchoServer, startPair, withTimeout } from './helpers.js';

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
  it('are not emitted without a listener, are emitted once one is added, and stop again when it is removed', async () => {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    const pair = await startPair(cleanups, { listenPorts: [{ port: edgePort, targetPort: target.port, proxyProtocol: 'none' }] });
    const roundTrip = async (): Promise<void> => {
      const result = await withTimeout(exchange(await connectFrom(edgePort), 'ping\n'), CONNECT_TIMEOUT_MS, 'echo through the tunnel');
      expect(result.reply.toString()).toBe('ping\n');
    };

    // The helpers listen to everything; take the stream listeners away.
    for (const emitter of [pair.hub, pair.edge] as EventEmitter[]) {
      emitter.removeAllListeners('streamOpened');
      emitter.removeAllListeners('streamClosed');
    }
    const hubEmits = recordEmits(pair.hub);
    const edgeEmits = recordEmits(pair.edge);
    await roundTrip();
    // Both sides have reported the stream's end by now in status; give stray events time to arrive.
    await eventually(() => pair.hub.getStatus().edges.every((edge) => edge.openStreams === 0), CONNECT_TIMEOUT_MS, () => 'hub streams to close');
    await delay(200);
    expect(hubEmits.filter((name) => name.startsWith('stream'))).toEqual([]);
    expect(edgeEmits.filter((name) => name.startsWith('stream'))).toEqual([]);

    const closed: unknown[] = [];
    const onClosed = (event: unknown): void => void closed.push(event);
    pair.hub.on('streamClosed', onClosed);
    await roundTrip();
    await eventually(() => closed.length === 1, CONNECT_TIMEOUT_MS, () => `one hub streamClosed event, got ${closed.length}`);
    // Only the side with a listener pays for them.
    expect(edgeEmits.filter((name) => name.startsWith('stream'))).toEqual([]);

    pair.hub.off('streamClosed', onClosed);
    hubEmits.length = 0;
    await roundTrip();
    await eventually(() => pair.hub.getStatus().edges.every((edge) => edge.openStreams === 0), CONNECT_TIMEOUT_MS, () => 'hub streams to close');
    await delay(200);
    expect(hubEmits.filter((name) => name.startsWith('stream'))).toEqual([]);
    expect(closed).toHaveLength(1);
  });
});
