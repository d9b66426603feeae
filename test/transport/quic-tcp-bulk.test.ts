import { createHash, randomBytes, randomInt } from 'node:crypto';
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, connectFrom, eventually, freePort, sha256, startEchoServer, withTimeout } from '../e2e/helpers.js';
import { edgeStatus, hubEdgeStatus, startTransportPair } from './helpers.js';

/**
 * The 200-connection byte-exact TCP test of the TLS transport (test/e2e/tcp-bulk.test.ts), over
 * `quic`: 200 clients at once, each pushing its own random bytes (64 KiB..4 MiB, skewed) through
 * edge → one QUIC stream each → hub → echo target and back, half-closing when done. Every reply
 * must hash like what was sent, and the hub must have seen one clean stream per client.
 */
const CLIENTS = 200;
const MIN_SIZE = 64 * 1024;
const MAX_SIZE = 4 * 1024 * 1024;
const TRANSFER_TIMEOUT_MS = 50_000;

function sizes(): number[] {
  const out = [MIN_SIZE, MAX_SIZE];
  const ratio = Math.log(MAX_SIZE / MIN_SIZE);
  while (out.length < CLIENTS) out.push(Math.round(MIN_SIZE * Math.exp(Math.random() ** 0.7 * ratio)) + randomInt(0, 7));
  return out.map((size) => Math.min(MAX_SIZE, size));
}

interface IResult {
  index: number;
  size: number;
  sentHash: string;
  receivedHash: string;
  receivedBytes: number;
  error?: string;
}

async function runClient(port: number, index: number, size: number): Promise<IResult> {
  const socket: net.Socket = await connectFrom(port);
  const sent = createHash('sha256');
  const received = createHash('sha256');
  let receivedBytes = 0;
  return new Promise<IResult>((done) => {
    let error: string | undefined;
    socket.on('data', (chunk: Buffer) => {
      received.update(chunk);
      receivedBytes += chunk.length;
    });
    socket.on('error', (err) => {
      error = `${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`;
    });
    socket.on('close', () => done({ index, size, sentHash: sent.digest('hex'), receivedHash: received.digest('hex'), receivedBytes, error }));
    let left = size;
    const writeMore = (): void => {
      while (left > 0) {
        const piece = randomBytes(Math.min(left, 1024 * 1024));
        left -= piece.length;
        sent.update(piece);
        if (!socket.write(piece)) {
          socket.once('drain', writeMore);
          return;
        }
      }
      socket.end();
    };
    writeMore();
  });
}

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe('TCP bulk over QUIC', () => {
  it(`carries ${CLIENTS} concurrent connections of 64 KiB..4 MiB each over QUIC streams, byte-exact`, async () => {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    const pair = await startTransportPair(cleanups, { transportMode: 'quic', tcp: [{ port: edgePort, targetPort: target.port, proxyProtocol: 'none' }] });
    expect(edgeStatus(pair).transport).toBe('quic');
    expect(hubEdgeStatus(pair)?.transport).toBe('quic');

    const plan = sizes();
    const total = plan.reduce((sum, size) => sum + size, 0);
    const started = Date.now();
    const results = await withTimeout(Promise.all(plan.map((size, index) => runClient(edgePort, index, size))), TRANSFER_TIMEOUT_MS, `${CLIENTS} echo transfers over QUIC`);
    const seconds = (Date.now() - started) / 1000;
    console.log(`quic-tcp-bulk: ${CLIENTS} streams, ${(total / 2 ** 20).toFixed(1)} MiB each way in ${seconds.toFixed(1)} s`);

    const bad = results.filter((result) => result.error !== undefined || result.receivedBytes !== result.size || result.receivedHash !== result.sentHash);
    expect(
      bad.map((result) => `#${result.index}: sent ${result.size} B, got ${result.receivedBytes} B, ${result.receivedHash === result.sentHash ? 'hash ok' : 'HASH MISMATCH'}${result.error ? `, error ${result.error}` : ''}`),
    ).toEqual([]);
    expect(new Set(results.map((result) => result.sentHash)).size).toBe(CLIENTS);
    expect(results.every((result) => result.sentHash !== sha256(Buffer.alloc(0)))).toBe(true);

    await eventually(() => pair.log.of('streamClosed').length >= CLIENTS, 10_000, () => `hub streamClosed events (${pair.log.of('streamClosed').length} of ${CLIENTS})`);
    expect(pair.log.of('streamOpened')).toHaveLength(CLIENTS);
    const closed = pair.log.of('streamClosed');
    expect(closed.filter((event) => event.code !== null)).toEqual([]);
    expect(closed.reduce((sum, event) => sum + (event.bytesIn as number), 0)).toBe(total);
    expect(closed.reduce((sum, event) => sum + (event.bytesOut as number), 0)).toBe(total);

    await eventually(
      () => hubEdgeStatus(pair)?.openStreams === 0 && edgeStatus(pair).openStreams === 0,
      5_000,
      () => `openStreams back to 0: hub ${JSON.stringify(pair.hub.getStatus().edges)}, edge ${JSON.stringify(edgeStatus(pair))}`,
    );
    const status = hubEdgeStatus(pair);
    expect(status).toMatchObject({ edgeId: pair.edgeId, remoteAddress: '127.0.0.1', transport: 'quic', openStreams: 0 });
    expect(status?.bytesIn).toBeGreaterThanOrEqual(total);
    expect(status?.bytesOut).toBeGreaterThanOrEqual(total);
    expect(edgeStatus(pair)).toMatchObject({ state: 'connected', transport: 'quic', openStreams: 0 });
    expect(pair.edgeLog.of('tunnelDisconnected')).toEqual([]);
    expect(pair.log.of('edgeDisconnected')).toEqual([]);
  });
});
