import { afterEach, describe, expect, it } from 'vitest';
import { encodeConnectionToken } from 'remoteingress-hub';
import {
  Cleanups,
  echoOnce,
  edgeEntry,
  forkApiDaemon,
  freePort,
  portsAssignedLine,
  randomSecret,
  startEchoServer,
  startEdge,
  startEdgeCli,
  startHub,
  tempDir,
  until,
} from './helpers.js';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

const INTERVAL_MS = 500;
const TIMEOUT_MS = 1_500;
const LIMITS = { heartbeatIntervalMs: INTERVAL_MS, heartbeatTimeoutMs: TIMEOUT_MS };
/**
 * The timeout is checked on each heartbeat tick, so detection lands between the timeout and the
 * timeout plus one interval after the last frame arrived; 700 ms more for a busy 2-core box.
 */
const DETECT_BOUND_MS = TIMEOUT_MS + INTERVAL_MS + 700;

describe('frozen peer (SIGSTOP)', () => {
  it('hub side: a frozen edge process is declared dead (ERR_TIMEOUT) within the heartbeat timeout; after SIGCONT it reconnects and serves', async () => {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    const secret = randomSecret();
    const { hub, log, tunnelPort, fingerprint } = await startHub(cleanups, {
      limits: LIMITS,
      allowedEdges: [edgeEntry('edge-f', secret, [edgePort], target.port)],
    });
    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: tunnelPort, edgeId: 'edge-f', secret, hubFingerprint: fingerprint });
    const edge = startEdgeCli(cleanups, { token, reconnectBaseMs: 100, reconnectCapMs: 1_000 });
    await edge.waitForLine(portsAssignedLine(edgePort), 'edge portsAssigned');
    await log.waitFor('edgeConnected');
    expect(await echoOnce(edgePort)).toBe(true);

    const frozenAt = Date.now();
    edge.child.kill('SIGSTOP');
    const gone = await log.waitFor('edgeDisconnected', () => true, 10_000);
    const detectMs = Date.now() - frozenAt;
    expect(gone).toMatchObject({ edgeId: 'edge-f', code: 'ERR_TIMEOUT' });
    expect(hub.getStatus().edges).toEqual([]);

    const resumeMark = edge.mark();
    edge.child.kill('SIGCONT');
    await edge.waitForLine(/^tunnelConnected /m, 'edge reconnects after SIGCONT', { since: resumeMark, timeoutMs: 10_000 });
    await edge.waitForLine(portsAssignedLine(edgePort), 'edge re-binds after SIGCONT', { since: resumeMark, timeoutMs: 5_000 });
    await until(async () => echoOnce(edgePort), 5_000, () => 'a request through the healed tunnel');
    expect(hub.getStatus().edges).toHaveLength(1);
    console.log(`frozen edge: hub declared it dead after ${detectMs} ms (interval ${INTERVAL_MS}, timeout ${TIMEOUT_MS}): ${JSON.stringify(gone)}`);
    expect(detectMs).toBeGreaterThanOrEqual(TIMEOUT_MS - 100);
    expect(detectMs).toBeLessThan(DETECT_BOUND_MS);
  });

  it('edge side: a frozen hub process is declared dead (ERR_TIMEOUT) within 3× the announced interval; after SIGCONT the edge reconnects and serves', async () => {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    const secret = randomSecret();
    const stateDir = await tempDir(cleanups, 'ri-faults-frozenhub-');
    const hub = forkApiDaemon(cleanups, 'hub', {
      tunnelPort: 0,
      bindHost: '127.0.0.1',
      targetHost: '127.0.0.1',
      stateDir,
      limits: LIMITS,
      allowedEdges: [edgeEntry('edge-g', secret, [edgePort], target.port)],
    });
    const { tunnelPort, fingerprint } = await hub.started;
    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: tunnelPort as number, edgeId: 'edge-g', secret, hubFingerprint: fingerprint as string });
    const { edge, log } = await startEdge(cleanups, { token, transportMode: 'tcpTls', reconnect: { baseMs: 100, capMs: 1_000 } }, [edgePort]);
    expect(await echoOnce(edgePort)).toBe(true);

    const frozenAt = Date.now();
    hub.child.kill('SIGSTOP');
    cleanups.add('SIGCONT hub', () => hub.child.kill('SIGCONT'));
    const gone = await log.waitFor('tunnelDisconnected', () => true, 10_000);
    const detectMs = Date.now() - frozenAt;
    expect(gone).toMatchObject({ code: 'ERR_TIMEOUT' });

    const since = log.events.length;
    hub.child.kill('SIGCONT');
    await log.waitFor('tunnelConnected', () => true, 15_000, since);
    await log.waitFor('portsAssigned', (event) => (event.tcp as number[]).includes(edgePort), 5_000, since);
    await until(async () => echoOnce(edgePort), 5_000, () => 'a request through the healed tunnel');
    expect(edge.getStatus().state).toBe('connected');
    console.log(`frozen hub: edge declared it dead after ${detectMs} ms (announced interval ${INTERVAL_MS}, edge timeout ${3 * INTERVAL_MS}): ${JSON.stringify(gone)}`);
    expect(detectMs).toBeGreaterThanOrEqual(3 * INTERVAL_MS - 100);
    expect(detectMs).toBeLessThan(3 * INTERVAL_MS + INTERVAL_MS + 700);
  });
});
