import { describe, expect, it } from 'vitest';
import {
  TunnelError,
  decodeConnectionToken,
  decodeEdgeToken,
  encodeConnectionToken,
  encodeEdgeToken,
  validateAllowedEdges,
  type IEdgeToken,
} from '../../packages/core/src/index.js';
import { resolveEdgeConfig } from '../../packages/edge/src/config.js';

/** The hub dials an edge that listens for it: tokens, the hub's allowed edge, the edge's options. */
const FINGERPRINT = 'cd'.repeat(32);
const SECRET = 'a-secret-of-24-characters';
const edgeToken: IEdgeToken = { edgeHost: 'edge1.example.com', edgePort: 9000, edgeId: 'edge-1', secret: SECRET, edgeFingerprint: FINGERPRINT };
const opts = { targetHost: '127.0.0.1' };

function failure(fn: () => unknown): TunnelError {
  try {
    fn();
  } catch (error) {
    // The edge package's errors come from the built core: the same class, another copy.
    expect((error as Error).name).toBe('TunnelError');
    expect((error as TunnelError).code).toMatch(/^ERR_INVALID_(CONFIG|TOKEN)$/);
    return error as TunnelError;
  }
  throw new Error('expected a failure');
}

describe('edge tokens', () => {
  it('round-trip, and neither kind of token is taken for the other', () => {
    const token = encodeEdgeToken(edgeToken);
    expect(decodeEdgeToken(token)).toEqual(edgeToken);
    const asConnection = failure(() => decodeConnectionToken(token));
    expect(asConnection.code).toBe('ERR_INVALID_TOKEN');
    expect(asConnection.message).toMatch(/edge token .*edgeToken/);
    expect(asConnection.message).not.toContain(SECRET);
    const connection = encodeConnectionToken({ hubHost: 'h', hubPort: 1, edgeId: 'edge-1', secret: SECRET, hubFingerprint: FINGERPRINT });
    expect(failure(() => decodeEdgeToken(connection)).message).toMatch(/connection token for an edge/);
  });

  it('name the edge token field that is wrong', () => {
    expect(failure(() => encodeEdgeToken({ ...edgeToken, edgePort: 0 })).message).toMatch(/invalid edge token: edgePort = 0/);
    expect(failure(() => encodeEdgeToken({ ...edgeToken, edgeFingerprint: 'nope' })).message).toMatch(/edgeFingerprint .*the edge's certificate/);
  });
});

describe("the hub's allowed edge: dialEdge and edgeToken", () => {
  it('dialEdge becomes the addon dial spec with defaults', () => {
    const [edge] = validateAllowedEdges([{ id: 'edge-1', secret: SECRET, listenPorts: [], dialEdge: { host: '10.0.0.9', port: 9000, fingerprint: FINGERPRINT.toUpperCase() } }], opts);
    expect(edge?.dial).toEqual({ host: '10.0.0.9', port: 9000, fingerprint: FINGERPRINT, transportMode: 'quicWithFallback', reconnect: { baseMs: 500, capMs: 30_000 } });
  });

  it('an edge token supplies the id, secret, address and fingerprint', () => {
    const [edge] = validateAllowedEdges([{ edgeToken: encodeEdgeToken(edgeToken), listenPorts: [] }], opts);
    expect(edge).toMatchObject({ id: 'edge-1', secret: SECRET, dial: { host: 'edge1.example.com', port: 9000, fingerprint: FINGERPRINT } });
  });

  it('bad dial settings are refused naming the edge, field and value', () => {
    const error = failure(() =>
      validateAllowedEdges(
        [
          { id: 'edge-1', secret: SECRET, listenPorts: [], dialEdge: { host: 'bad host', port: 70000, fingerprint: 'xyz', transportMode: 'carrier-pigeon', extra: 1 } },
          { edgeToken: encodeEdgeToken(edgeToken), id: 'edge-2', listenPorts: [] },
          { id: 'edge-3', secret: SECRET, listenPorts: [], edgeToken: 'garbage!', dialEdge: { host: 'h', port: 1, fingerprint: FINGERPRINT } },
        ],
        opts,
      ),
    );
    const text = error.message;
    expect(text).toMatch(/edge "edge-1" dialEdge\.host = "bad host"/);
    expect(text).toMatch(/edge "edge-1" dialEdge\.port = 70000/);
    expect(text).toMatch(/edge "edge-1" dialEdge\.fingerprint = "xyz"/);
    expect(text).toMatch(/dialEdge\.transportMode = "carrier-pigeon"/);
    expect(text).toMatch(/dialEdge\.extra/);
    expect(text).toMatch(/id = "edge-2": differs from the edge token's edge id "edge-1"/);
    expect(text).toMatch(/edge "edge-3" dialEdge .*not both/);
    expect(text).toMatch(/edge "edge-3" edgeToken/);
  });
});

describe('an edge that listens for its hub', () => {
  const base = { edgeId: 'edge-1', secret: SECRET, listenForHub: { port: 9000, stateDir: '/var/lib/ri-edge' } };

  it('resolves with the default bind address and its local services', () => {
    const resolved = resolveEdgeConfig({ ...base, localServices: [{ id: 'svc', edgePort: 8080, bindAddress: '127.0.0.1', maxConnections: 5 }] });
    expect(resolved).toMatchObject({ listenForHub: { port: 9000, bindHost: '0.0.0.0' }, stateDir: '/var/lib/ri-edge', localServices: [{ id: 'svc', edgePort: 8080, maxConnections: 5 }] });
  });

  it('refuses what only a dialing edge uses, and bad listener or service settings, naming them', () => {
    expect(failure(() => resolveEdgeConfig({ ...base, hubHost: 'hub' } as never)).message).toMatch(/hubHost = "hub": applies to an edge that dials/);
    expect(failure(() => resolveEdgeConfig({ ...base, listenForHub: { port: 9000 } } as never)).message).toMatch(/listenForHub\.stateDir/);
    expect(failure(() => resolveEdgeConfig({ ...base, listenForHub: { ...base.listenForHub, port: 0 } })).message).toMatch(/listenForHub\.port = 0/);
    expect(
      failure(() => resolveEdgeConfig({ ...base, localServices: [{ id: 'a', edgePort: 1, bindAddress: 'localhost' }] })).message,
    ).toMatch(/localServices\[0\]\.bindAddress = "localhost"/);
    expect(
      failure(() =>
        resolveEdgeConfig({
          ...base,
          localServices: [
            { id: 'a', edgePort: 1, bindAddress: '127.0.0.1' },
            { id: 'b', edgePort: 1, bindAddress: '127.0.0.1' },
          ],
        }),
      ).message,
    ).toMatch(/localServices\[1\]\.edgePort = 1: is used by another local service/);
    expect(
      failure(() => resolveEdgeConfig({ ...base, localServices: [{ id: 'a', edgePort: 1, bindAddress: '127.0.0.1', bufferBytes: 512 }] })).message,
    ).toMatch(/localServices\[0\]\.bufferBytes = 512: must be an integer from 1024/);
    expect(resolveEdgeConfig({ ...base, localServices: [{ id: 'a', edgePort: 1, bindAddress: '127.0.0.1', bufferBytes: 2048 }] }).localServices).toMatchObject([{ bufferBytes: 2048 }]);
  });
});
