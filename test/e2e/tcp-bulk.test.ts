import { createHash, randomBytes, randomInt } from 'node:crypto';
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, connectFrom, eventually, freePort, sha256, startEchoServer, startPair, withTimeout } from './helpers.js';

/**
 * 200 clients at once, each pushing its own random bytes through edge → tunnel → hub → echo
 * target and back, over each transport (TLS muxer streams, QUIC streams). Every reply must hash
 * like what was sent: streams were kept apart, nothing was lost, duplicated or reordered, and the
 * half-close was carried through.
 */
const CLIENTS = 200;
const MIN_SIZE = 64 * 1024;
const MAX_SIZE = 4 * 1024 * 1024;
/** The transfer itself takes a few seconds here; 50 s bounds a stall, under vitest's 60 s. */
const TRANSFER_TIMEOUT_MS = 50_000;

/**
 * Skewed log-scale sizes between 64 KiB and 4 MiB (64 KiB × 64^(u^0.7) for uniform u): many small
 * streams and some elephants, which is what fair scheduling has to cope with, ≈ 240 MiB in all
 * so the run stays short on a 2-core machine. The extremes are always included.
 */
function sizes(): number[] {
  const out = [MIN_SIZE, MAX_SIZE];
  const ratio = Math.log(MAX_SIZE / MIN_SIZE);
  while (out.length < CLIENTS) {
    out.push(Math.round(MIN_SIZE * Math.exp(Math.random() ** 0.7 * ratio)) + randomInt(0, 7));
  }
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

/** One client: connect, send `size` random bytes in a few writes, half-close, hash the echo until EOF. */
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
    // Written in pieces of up to 1 MiB so the random data is never all in memory at once per client.
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

/**
 * On this 2-core machine the default is one tokio worker; machines with more cores run one per
 * core. This file (its own process: vitest's `forks` pool) starts the runtime with two workers
 * so the multi-threaded data path — streams' tasks and the mux on different threads — stays
 * under test.
 */
const MULTI_WORKER = { performance: { workerThreads: 2 } };

describe.each(['tcpTls', 'quic'] as const)('TCP bulk through the tunnel (%s)', (transportMode) => {
  it(`carries ${CLIENTS} concurrent connections of 64 KiB..4 MiB each, byte-exact`, async () => {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    const pair = await startPair(cleanups, { transportMode, hub: MULTI_WORKER, listenPorts: [{ port: edgePort, targetPort: target.port, proxyProtocol: 'none' }] });
    expect(pair.edge.getStatus().transport).toBe(transportMode);

    const plan = sizes();
    const total = plan.reduce((sum, size) => sum + size, 0);
    const started = Date.now();
    const results = await withTimeout(
      Promise.all(plan.map((size, index) => runClient(edgePort, index, size))),
      TRANSFER_TIMEOUT_MS,
      `${CLIENTS} echo transfers`,
    );
    const seconds = (Date.now() - started) / 1000;
    console.log(`tcp-bulk ${transportMode}: ${CLIENTS} streams, ${(total / 2 ** 20).toFixed(1)} MiB each way in ${seconds.toFixed(1)} s`);

    const bad = results.filter((result) => result.error !== undefined || result.receivedBytes !== result.size || result.receivedHash !== result.sentHash);
    expect(
      bad.map((result) => `#${result.index}: sent ${result.size} B, got ${result.receivedBytes} B, ${result.receivedHash === result.sentHash ? 'hash ok' : 'HASH MISMATCH'}${result.error ? `, error ${result.error}` : ''}`),
    ).toEqual([]);
    // The hashes are of different random data, so equal sent hashes would mean the test itself is broken.
    expect(new Set(results.map((result) => result.sentHash)).size).toBe(CLIENTS);
    expect(results.every((result) => result.sentHash !== sha256(Buffer.alloc(0)))).toBe(true);

    // The hub saw one stream per client, all of them open then closed cleanly.
    await eventually(() => pair.log.of('streamClosed').length >= CLIENTS, 10_000, () => `hub streamClosed events (${pair.log.of('streamClosed').length} of ${CLIENTS})`);
    expect(pair.log.of('streamOpened')).toHaveLength(CLIENTS);
    const closed = pair.log.of('streamClosed');
    expect(closed.filter((event) => event.code !== null)).toEqual([]);
    expect(closed.reduce((sum, event) => sum + (event.bytesIn as number), 0)).toBe(total);
    expect(closed.reduce((sum, event) => sum + (event.bytesOut as number), 0)).toBe(total);

    // Status counters: the edge is listed with every byte counted, and no stream is left open
    // (polled briefly: a status read may race the last stream's teardown by a few microseconds).
    await eventually(
      () => pair.hub.getStatus().edges[0]?.openStreams === 0 && pair.edge.getStatus().openStreams === 0,
      5_000,
      () => `openStreams back to 0: hub ${JSON.stringify(pair.hub.getStatus().edges)}, edge ${JSON.stringify(pair.edge.getStatus())}`,
    );
    const status = pair.hub.getStatus();
    expect(status.running).toBe(true);
    expect(status.edges).toHaveLength(1);
    const edgeStatus = status.edges[0];
    expect(edgeStatus).toMatchObject({ edgeId: pair.edgeId, remoteAddress: '127.0.0.1', transport: transportMode, openStreams: 0 });
    expect(edgeStatus?.bytesIn).toBeGreaterThanOrEqual(total);
    expect(edgeStatus?.bytesOut).toBeGreaterThanOrEqual(total);
    expect(pair.edge.getStatus()).toMatchObject({ state: 'connected', openStreams: 0 });
    expect(pair.edgeLog.of('tunnelDisconnected')).toEqual([]);
    expect(pair.log.of('edgeDisconnected')).toEqual([]);
  });
});
