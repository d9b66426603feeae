import { createHmac } from 'node:crypto';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CONNECT_TIMEOUT_MS, Cleanups, echoRoundTrip, freePort, randomSecret, startEchoServer, startPair, withTimeout, type IPair } from './helpers.js';

/**
 * Malformed frames after a successful handshake close only the offending tunnel, with a
 * logged reason, while another edge on the same hub carries on. The public API cannot send
 * garbage, so a hand-rolled edge speaks the real handshake over Node's TLS (docs/protocol.md;
 * crates/tunnel-core/src/handshake.rs and auth.rs) and then misbehaves.
 */
const ALPN = 'remoteingress/1';
const HEADER_LEN = 9;
const FRAME = { DATA: 0x00, PING: 0x04, CHALLENGE: 0x10, AUTH: 0x11, AUTH_OK: 0x12, AUTH_FAIL: 0x13 } as const;
const PROTOCOL_VERSION = 1;
const MAC_CONTEXT = Buffer.from('remoteingress-auth-v1\0', 'latin1');
const EXPORTER_LABEL = 'EXPORTER-remoteingress-auth-v1';

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(HEADER_LEN);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/** Reads whole frames off a socket, one at a time. */
class FrameReader {
  #buffer = Buffer.alloc(0);
  #wake: (() => void) | undefined;
  #ended = false;

  constructor(socket: tls.TLSSocket) {
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#ended = true;
      this.#wake?.();
    });
  }

  async next(): Promise<{ type: number; flags: number; stream: number; payload: Buffer }> {
    for (;;) {
      if (this.#buffer.length >= HEADER_LEN) {
        const length = this.#buffer.readUIntBE(0, 3);
        if (this.#buffer.length >= HEADER_LEN + length) {
          const result = {
            type: this.#buffer[3] as number,
            flags: this.#buffer[4] as number,
            stream: this.#buffer.readUInt32BE(5),
            payload: this.#buffer.subarray(HEADER_LEN, HEADER_LEN + length),
          };
          this.#buffer = this.#buffer.subarray(HEADER_LEN + length);
          return result;
        }
      }
      if (this.#ended) throw new Error('connection closed before a whole frame arrived');
      await new Promise<void>((wake) => (this.#wake = wake));
      this.#wake = undefined;
    }
  }
}

interface IRawEdge {
  socket: tls.TLSSocket;
  reader: FrameReader;
  closed: Promise<void>;
}

/** TLS to the hub, CHALLENGE → AUTH (HMAC over nonce and exporter) → AUTH_OK, like a real edge. */
async function rawEdge(cleanups: Cleanups, port: number, edgeId: string, secret: string): Promise<IRawEdge> {
  const socket = tls.connect({ host: '127.0.0.1', port, servername: 'remoteingress-hub', rejectUnauthorized: false, ALPNProtocols: [ALPN], minVersion: 'TLSv1.3' });
  cleanups.add('destroy raw edge', () => socket.destroy());
  const closed = new Promise<void>((done) => socket.once('close', () => done()));
  socket.on('error', () => undefined);
  const reader = new FrameReader(socket);
  await withTimeout(
    new Promise<void>((done, reject) => {
      socket.once('secureConnect', () => done());
      socket.once('error', reject);
    }),
    CONNECT_TIMEOUT_MS,
    'raw TLS connect',
  );
  expect(socket.alpnProtocol).toBe(ALPN);

  const challenge = await withTimeout(reader.next(), CONNECT_TIMEOUT_MS, 'CHALLENGE');
  expect(challenge.type).toBe(FRAME.CHALLENGE);
  const [minVersion, maxVersion] = [challenge.payload.readUInt16BE(0), challenge.payload.readUInt16BE(2)];
  expect(minVersion <= PROTOCOL_VERSION && PROTOCOL_VERSION <= maxVersion).toBe(true);
  const nonce = challenge.payload.subarray(4, 36);
  // No context: Node passes none when the argument is undefined (its typings insist on a Buffer),
  // matching rustls' `export_keying_material(.., None)`; in TLS 1.3 that equals an empty context.
  const binding = socket.exportKeyingMaterial(32, EXPORTER_LABEL, undefined as unknown as Buffer);
  const version = Buffer.alloc(2);
  version.writeUInt16BE(PROTOCOL_VERSION);
  const id = Buffer.from(edgeId, 'utf8');
  const mac = createHmac('sha256', secret).update(MAC_CONTEXT).update(version).update(nonce).update(binding).update(id).digest();
  socket.write(frame(FRAME.AUTH, 0, 0, Buffer.concat([version, Buffer.from([id.length]), id, mac])));
  const verdict = await withTimeout(reader.next(), CONNECT_TIMEOUT_MS, 'AUTH_OK');
  expect(verdict.type, `hub answered ${verdict.payload.toString('latin1')}`).toBe(FRAME.AUTH_OK);
  return { socket, reader, closed };
}

/** Each offence, and what its reason must mention so an operator can tell what the edge did. */
const GARBAGE: Array<[string, Buffer, RegExp]> = [
  ['a frame of undefined type 0x1e', frame(0x1e, 0, 0, Buffer.from('garbage')), /0x1e/i],
  ['a DATA frame on stream 0', frame(FRAME.DATA, 0, 0, Buffer.from('data for nobody')), /stream/i],
  [
    'a DATA frame longer than the protocol cap (length 0xffffff)',
    Buffer.concat([Buffer.from([0xff, 0xff, 0xff, FRAME.DATA, 0, 0, 0, 0, 1]), Buffer.alloc(64)]),
    /16777215|cap|too long/i,
  ],
  ['a PING with a payload of the wrong size', frame(FRAME.PING, 0, 0, Buffer.from([1, 2, 3])), /ping/i],
  ['a handshake frame (AUTH) after the handshake', frame(FRAME.AUTH, 0, 0, Buffer.alloc(40)), /auth|handshake/i],
];

const suite = new Cleanups();
const cleanups = new Cleanups();
let real: IPair;
let realPort: number;
const rawId = 'edge-raw';
const rawSecret = randomSecret();

beforeAll(async () => {
  const target = await startEchoServer(suite);
  realPort = await freePort();
  const rawPort = await freePort();
  real = await startPair(suite, {
    edgeId: 'edge-real',
    listenPorts: [{ port: realPort, targetPort: target.port, proxyProtocol: 'none' }],
    otherEdges: [{ id: rawId, secret: rawSecret, bindAddress: '127.0.0.1', listenPorts: [{ port: rawPort, targetPort: target.port, proxyProtocol: 'none' }] }],
  });
});
afterEach(() => cleanups.run());
afterAll(() => suite.run());

describe('malformed frames after the handshake', () => {
  it('the hand-rolled edge is a faithful edge: it authenticates and is listed as connected', async () => {
    const since = real.log.events.length;
    const raw = await rawEdge(cleanups, real.tunnelPort, rawId, rawSecret);
    await real.log.waitFor('edgeConnected', (event) => event.edgeId === rawId, undefined, since);
    expect(real.hub.getStatus().edges.map((edge) => edge.edgeId).sort()).toEqual(['edge-raw', 'edge-real']);
    raw.socket.destroy();
    await real.log.waitFor('edgeDisconnected', (event) => event.edgeId === rawId, undefined, since);
  });

  it.each(GARBAGE)('%s closes only that tunnel, with ERR_PROTOCOL and a reason', async (_label, garbage, mentions) => {
    const since = real.log.events.length;
    const raw = await rawEdge(cleanups, real.tunnelPort, rawId, rawSecret);
    await real.log.waitFor('edgeConnected', (event) => event.edgeId === rawId, undefined, since);

    raw.socket.write(garbage);
    const disconnected = await real.log.waitFor('edgeDisconnected', (event) => event.edgeId === rawId, undefined, since);
    expect(disconnected).toMatchObject({ edgeId: rawId, code: 'ERR_PROTOCOL', reason: expect.stringMatching(mentions) });
    // The hub hangs up on the offender (possibly after a GOAWAY saying why).
    await withTimeout(raw.closed, CONNECT_TIMEOUT_MS, 'hub closing the offending tunnel');

    // Only that tunnel: the real edge is still up and serving.
    expect(real.log.of('edgeDisconnected', (event) => event.edgeId === 'edge-real')).toEqual([]);
    expect(real.edgeLog.of('tunnelDisconnected')).toEqual([]);
    expect(real.hub.getStatus().edges.map((edge) => edge.edgeId)).toEqual(['edge-real']);
    const trip = await echoRoundTrip(realPort);
    expect(trip.received).toBe(trip.sent);
  });
});
