import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { decodeConnectionToken, encodeConnectionToken, type IConnectionToken, type IEdgeConfig } from 'remoteingress-edge';
import { Cleanups, echoRoundTrip, freePort, randomSecret, startEchoServer, startEdge, startPair, type IPair } from './helpers.js';

/**
 * Every way an edge can fail to prove itself is refused with a clear reason on both sides,
 * while a good edge on the same hub stays connected and keeps serving. Wrong secret and
 * unknown id must look identical from outside (no edge-id oracle).
 */
const AUTH_REASON = /unknown edge id or wrong secret/;
/** Failing edges are given this first retry delay so each case is exactly one attempt. */
const NO_RETRY = { baseMs: 600_000, capMs: 600_000 };
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

const suite = new Cleanups();
const cleanups = new Cleanups();
let good: IPair;
let goodPort: number;
let otherId: string;
let otherPort: number;
let otherSecret: string;
let otherToken: string;

beforeAll(async () => {
  const target = await startEchoServer(suite);
  goodPort = await freePort();
  otherPort = await freePort();
  otherId = 'edge-other';
  otherSecret = randomSecret();
  good = await startPair(suite, {
    edgeId: 'edge-good',
    listenPorts: [{ port: goodPort, targetPort: target.port, proxyProtocol: 'none' }],
    otherEdges: [{ id: otherId, secret: otherSecret, bindAddress: '127.0.0.1', listenPorts: [{ port: otherPort, targetPort: target.port, proxyProtocol: 'none' }] }],
  });
  otherToken = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: good.tunnelPort, edgeId: otherId, secret: otherSecret, hubFingerprint: good.fingerprint });
  const first = await echoRoundTrip(goodPort);
  expect(first.received).toBe(first.sent);
});
afterEach(async () => {
  await cleanups.run();
  // The good edge never noticed: still the one tunnel, still carrying requests.
  expect(good.edgeLog.of('tunnelDisconnected')).toEqual([]);
  expect(good.edgeLog.of('tunnelConnected')).toHaveLength(1);
  expect(good.log.of('edgeDisconnected')).toEqual([]);
  expect(good.hub.getStatus().edges.map((edge) => edge.edgeId)).toEqual(['edge-good']);
  const trip = await echoRoundTrip(goodPort);
  expect(trip.received).toBe(trip.sent);
});
afterAll(() => suite.run());

interface IRefusal {
  edge: Record<string, unknown>;
  hub: Record<string, unknown>;
  lastError: unknown;
}

/** Starts an edge that must be refused; resolves with the edge's and the hub's account of it. */
async function refused(config: IEdgeConfig): Promise<IRefusal> {
  const since = good.log.events.length;
  const { edge, log } = await startEdge(cleanups, { ...config, transportMode: 'tcpTls', reconnect: NO_RETRY });
  const edgeEvent = await log.waitFor('tunnelDisconnected');
  const hubEvent = await good.log.waitFor('authFailed', () => true, undefined, since);
  const lastError = edge.getStatus().lastError;
  await edge.stop({ graceMs: 0 });
  expect(log.of('tunnelConnected')).toEqual([]);
  expect(log.of('portsAssigned')).toEqual([]);
  return { edge: edgeEvent, hub: hubEvent, lastError };
}

function explicit(overrides: Partial<IConnectionToken>): IEdgeConfig {
  return { hubHost: '127.0.0.1', hubPort: good.tunnelPort, edgeId: good.edgeId, secret: good.secret, hubFingerprint: good.fingerprint, ...overrides };
}

type TTamperKind = 'secret' | 'fingerprint' | 'rejected:token' | 'rejected:hubFingerprint';

/**
 * Flips single characters of the base64url token and sorts the results by what the decoder
 * makes of them, so each case below uses a real one-character corruption of a real token.
 */
function tamperings(token: string): Map<TTamperKind, string> {
  const original = decodeConnectionToken(token);
  const found = new Map<TTamperKind, string>();
  for (let index = 0; index < token.length; index++) {
    for (const replacement of BASE64URL) {
      if (replacement === token[index]) continue;
      const tampered = token.slice(0, index) + replacement + token.slice(index + 1);
      let kind: TTamperKind | undefined;
      try {
        const decoded = decodeConnectionToken(tampered);
        const same = (key: keyof IConnectionToken): boolean => decoded[key] === original[key];
        if (!same('secret') && same('hubFingerprint') && same('edgeId') && same('hubHost') && same('hubPort')) kind = 'secret';
        if (same('secret') && !same('hubFingerprint') && same('edgeId') && same('hubHost') && same('hubPort')) kind = 'fingerprint';
      } catch (error) {
        const { code, field } = error as { code?: string; field?: string };
        if (code === 'ERR_INVALID_TOKEN' && (field === 'token' || field === 'hubFingerprint')) kind = `rejected:${field}`;
      }
      if (kind !== undefined && !found.has(kind)) found.set(kind, tampered);
    }
  }
  return found;
}

describe('edge authentication', () => {
  it('refuses a wrong secret, and the edge and hub both say so', async () => {
    const result = await refused(explicit({ secret: randomSecret() }));
    expect(result.edge).toMatchObject({ code: 'ERR_AUTH_FAILED', reason: expect.stringMatching(AUTH_REASON) });
    expect(result.lastError).toMatchObject({ code: 'ERR_AUTH_FAILED' });
    expect(result.hub).toMatchObject({ code: 'ERR_AUTH_FAILED', remoteAddress: '127.0.0.1', reason: expect.stringMatching(/wrong secret/) });
  });

  it('refuses an unknown edge id exactly like a wrong secret to the edge, and names it on the hub', async () => {
    const wrongSecret = await refused(explicit({ secret: randomSecret() }));
    const unknownId = await refused(explicit({ edgeId: 'edge-nobody-knows' }));
    expect(unknownId.edge).toMatchObject({ code: 'ERR_AUTH_FAILED', reason: expect.stringMatching(AUTH_REASON) });
    // Indistinguishable from outside: same code and the very same message.
    expect({ code: unknownId.edge.code, reason: unknownId.edge.reason }).toEqual({ code: wrongSecret.edge.code, reason: wrongSecret.edge.reason });
    expect(unknownId.hub).toMatchObject({ code: 'ERR_AUTH_FAILED', remoteAddress: '127.0.0.1', reason: expect.stringMatching(/unknown edge id/) });
    expect(wrongSecret.hub.reason).not.toBe(unknownId.hub.reason);
  });

  it('refuses a token whose secret was tampered with (one base64url character changed)', async () => {
    const tampered = tamperings(otherToken).get('secret');
    expect(tampered, 'a one-character change of the token that still decodes, with another secret').toBeDefined();
    const result = await refused({ token: tampered as string });
    expect(result.edge).toMatchObject({ code: 'ERR_AUTH_FAILED', reason: expect.stringMatching(AUTH_REASON) });
    expect(result.hub).toMatchObject({ code: 'ERR_AUTH_FAILED', reason: expect.stringMatching(/wrong secret/) });
  });

  it('refuses a token whose fingerprint was tampered with: the edge will not trust the hub', async () => {
    const tampered = tamperings(otherToken).get('fingerprint');
    expect(tampered, 'a one-character change of the token that still decodes, with another fingerprint').toBeDefined();
    const pinned = decodeConnectionToken(tampered as string).hubFingerprint;
    const result = await refused({ token: tampered as string });
    expect(result.edge).toMatchObject({ code: 'ERR_FINGERPRINT_MISMATCH', reason: expect.stringMatching(/fingerprint/i) });
    // The reason shows both sides of the mismatch, so an operator can tell a stale token from an impostor.
    expect(result.edge.reason).toContain(`pinned ${pinned}`);
    expect(result.edge.reason).toContain(`got ${good.fingerprint}`);
    expect(result.hub).toMatchObject({ code: 'ERR_TLS', remoteAddress: '127.0.0.1', reason: expect.stringMatching(/certificate|fingerprint/i) });
  });

  it.each(['token', 'hubFingerprint'] as const)(
    'rejects a tampered token the decoder catches (field %s) before dialing, naming the field',
    async (field) => {
      const tampered = tamperings(otherToken).get(`rejected:${field}`);
      expect(tampered, `a one-character change of the token the decoder rejects in ${field}`).toBeDefined();
      const since = good.log.events.length;
      const { RemoteIngressEdge } = await import('remoteingress-edge');
      const edge = new RemoteIngressEdge();
      cleanups.add('edge.stop', () => edge.stop({ graceMs: 0 }));
      await expect(edge.start({ token: tampered as string, transportMode: 'tcpTls' })).rejects.toMatchObject({
        code: 'ERR_INVALID_TOKEN',
        field,
        message: expect.stringContaining(field),
      });
      // Nothing reached the hub.
      expect(good.log.events.slice(since).filter((recorded) => recorded.name === 'authFailed')).toEqual([]);
    },
  );

  it('refuses to talk to a hub whose certificate does not match the pinned fingerprint', async () => {
    const pinned = randomBytes(32).toString('hex');
    const result = await refused(explicit({ hubFingerprint: pinned }));
    expect(result.edge).toMatchObject({ code: 'ERR_FINGERPRINT_MISMATCH', reason: expect.stringMatching(/fingerprint/i) });
    expect(result.edge.reason).toContain(`pinned ${pinned}`);
    expect(result.edge.reason).toContain(`got ${good.fingerprint}`);
    expect(result.lastError).toMatchObject({ code: 'ERR_FINGERPRINT_MISMATCH' });
    expect(result.hub).toMatchObject({ code: 'ERR_TLS', remoteAddress: '127.0.0.1', reason: expect.stringMatching(/certificate|fingerprint/i) });
  });
});
