import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { CONNECT_TIMEOUT_MS, Cleanups, connectFrom, exchange, freePort, listen, sha256, startPair, withTimeout } from './helpers.js';

/**
 * Half-close carried end to end: the client's FIN reaches the target as EOF while the reverse
 * direction stays open, and the target's whole reply (written only after that EOF) reaches
 * the client before its FIN.
 */
const REPLY_SIZE = 1024 * 1024;

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe.each(['tcpTls', 'quic'] as const)('half-close (%s)', (transportMode) => {
  it.each([
    ['a short request', 200],
    ['a request larger than the stream window', 3 * 1024 * 1024],
  ])('a client that shuts its write side after %s still gets the whole 1 MiB reply', async (_label, requestSize) => {
    const reply = randomBytes(REPLY_SIZE);
    const received: Array<{ bytes: number; hash: string }> = [];
    // Reads until EOF, and only then answers: proves the client's FIN arrived as EOF, not as a close.
    const target = await listen(cleanups, (socket) => {
      const chunks: Buffer[] = [];
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      socket.on('end', () => {
        const request = Buffer.concat(chunks);
        received.push({ bytes: request.length, hash: sha256(request) });
        socket.end(reply);
      });
    });
    const edgePort = await freePort();
    const pair = await startPair(cleanups, { transportMode, listenPorts: [{ port: edgePort, targetPort: target.port, proxyProtocol: 'none' }] });

    const request = randomBytes(requestSize);
    const client = await connectFrom(edgePort);
    const result = await withTimeout(exchange(client, request), CONNECT_TIMEOUT_MS, 'reply after half-close');

    expect(result.ended).toBe('end');
    expect(received).toEqual([{ bytes: requestSize, hash: sha256(request) }]);
    expect(result.reply.length).toBe(REPLY_SIZE);
    expect(sha256(result.reply)).toBe(sha256(reply));
    const closed = await pair.log.waitFor('streamClosed');
    expect(closed).toMatchObject({ code: null, bytesIn: requestSize, bytesOut: REPLY_SIZE });
  });
});
