import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeConnectionToken } from 'remoteingress-hub';
import {
  Cleanups,
  delay,
  echoOnce,
  edgeEntry,
  freePort,
  portsAssignedLine,
  randomSecret,
  startEchoServer,
  startEdgeCli,
  startHubCli,
  startLoad,
  tempDir,
  until,
} from './helpers.js';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** The edge's backoff cap in this test: small so the test is quick, large enough to be a real cap. */
const CAP_MS = 2_000;

describe('kill -9 the hub under load', () => {
  it('the edge process reconnects to the restarted hub within its backoff cap, re-binds, and new connections succeed', async () => {
    const target = await startEchoServer(cleanups);
    const dir = await tempDir(cleanups, 'ri-faults-killhub-');
    const stateDir = join(dir, 'state');
    const edgesFile = join(dir, 'edges.json');
    const edgePort = await freePort();
    const secret = randomSecret();
    await writeFile(edgesFile, JSON.stringify([edgeEntry('edge-k', secret, [edgePort], target.port)]));

    const hub1 = await startHubCli(cleanups, { edgesFile, stateDir });
    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: hub1.tunnelPort, edgeId: 'edge-k', secret, hubFingerprint: hub1.fingerprint });
    const edge = startEdgeCli(cleanups, { token, reconnectBaseMs: 200, reconnectCapMs: CAP_MS });
    await edge.waitForLine(portsAssignedLine(edgePort), 'edge portsAssigned');

    const load = startLoad(edgePort, 4, 4096);
    cleanups.add('stop load', () => load.stop());
    await until(() => load.ok >= 50, 10_000, () => `50 requests through the tunnel before the kill (ok ${load.ok}, failed ${load.failed})`);

    // Kill -9: no GOAWAY, no close_notify; the kernel closes the hub's sockets.
    const edgeMark = edge.mark();
    await hub1.kill();
    await edge.waitForLine(/^tunnelDisconnected /m, 'edge notices the hub is gone', { since: edgeMark, timeoutMs: 5_000 });
    // Leave the hub down long enough that the edge is in backoff and has failed a few dials.
    await delay(1_500);
    const okBeforeRestart = load.ok;

    const hub2 = await startHubCli(cleanups, { edgesFile, stateDir, tunnelPort: hub1.tunnelPort });
    const restartedAt = Date.now();
    // Same state dir, so the same certificate: the pinned fingerprint still matches.
    expect(hub2.fingerprint).toBe(hub1.fingerprint);
    await edge.waitForLine(/^tunnelConnected /m, 'edge reconnects to the restarted hub', { since: edgeMark, timeoutMs: CAP_MS + 8_000 });
    const reconnectMs = Date.now() - restartedAt;
    await edge.waitForLine(portsAssignedLine(edgePort), 'edge re-binds its port', { since: edgeMark, timeoutMs: 5_000 });
    await hub2.waitForLine(/^edgeConnected .*\bedgeId=edge-k\b/m, 'restarted hub sees the edge', { timeoutMs: 5_000 });

    // The load (which never stopped) gets through again, and so does a fresh connection.
    await until(() => load.ok >= okBeforeRestart + 50, 10_000, () => `50 more requests after the restart (ok ${load.ok - okBeforeRestart}, failed ${load.failed})`);
    const { ok, failed } = await load.stop();
    expect(await echoOnce(edgePort, 100_000)).toBe(true);

    // Neither process was restarted by hand: the edge is the same pid and still running.
    expect(edge.child.exitCode).toBeNull();
    expect(edge.child.signalCode).toBeNull();
    console.log(
      `kill-hub: edge reconnected ${reconnectMs} ms after the hub restarted (cap ${CAP_MS} ms); load ok=${ok} failed-during-outage=${failed}`,
    );
    // Within the cap (one backoff sleep at most) plus the dial and the handshake on a busy 2-core box.
    expect(reconnectMs).toBeLessThan(CAP_MS + 1_500);
  });
});
