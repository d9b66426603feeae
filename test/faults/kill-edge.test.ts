import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeConnectionToken } from 'remoteingress-hub';
import {
  Cleanups,
  connectFrom,
  delay,
  describeFds,
  edgeEntry,
  fdCount,
  forkApiDaemon,
  freePort,
  hubStatusOf,
  listen,
  portsAssignedLine,
  randomSecret,
  startEdgeCli,
  tcpStatesOf,
  tempDir,
  until,
} from './helpers.js';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** Held-open client connections through the edge when it dies. */
const STREAMS = 20;
/** Slack for fds the runtime may open lazily (an epoll, an eventfd, a timer): a leak per stream would be ≥ STREAMS. */
const FD_MARGIN = 3;

describe('kill -9 the edge', () => {
  it("the hub drops the session's streams, forgets the edge and returns to its baseline of open file descriptors", async () => {
    // A target that holds every connection open (never ends it), counting live ones.
    const live = new Set<net.Socket>();
    const target = await listen(cleanups, (socket) => {
      live.add(socket);
      socket.on('close', () => live.delete(socket));
      socket.on('data', (chunk) => socket.write(chunk));
    });
    const edgePort = await freePort();
    const secret = randomSecret();
    const stateDir = await tempDir(cleanups, 'ri-faults-killedge-');
    const hub = forkApiDaemon(cleanups, 'hub', {
      tunnelPort: 0,
      bindHost: '127.0.0.1',
      targetHost: '127.0.0.1',
      stateDir,
      allowedEdges: [edgeEntry('edge-x', secret, [edgePort], target.port)],
    });
    const { tunnelPort, fingerprint } = await hub.started;
    await delay(300);
    const baseline = fdCount(hub.pid);
    const baselineKinds = describeFds(hub.pid);

    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: tunnelPort as number, edgeId: 'edge-x', secret, hubFingerprint: fingerprint as string });
    const edge = startEdgeCli(cleanups, { token });
    await edge.waitForLine(portsAssignedLine(edgePort), 'edge portsAssigned');
    await hub.log.waitFor('edgeConnected');

    const clients: net.Socket[] = [];
    for (let i = 0; i < STREAMS; i++) {
      const socket = await connectFrom(edgePort);
      socket.on('error', () => undefined);
      cleanups.add('destroy client', () => socket.destroy());
      socket.write('hello');
      clients.push(socket);
    }
    await until(() => live.size === STREAMS, 10_000, () => `${STREAMS} target connections (have ${live.size})`);
    const loaded = await hubStatusOf(hub);
    expect(loaded.edges).toHaveLength(1);
    expect(loaded.edges[0]?.openStreams).toBe(STREAMS);
    const loadedFds = fdCount(hub.pid);
    // Each stream holds one target socket in the hub, plus the tunnel itself.
    expect(loadedFds).toBeGreaterThanOrEqual(baseline + STREAMS);

    const killedAt = Date.now();
    await edge.kill();

    const disconnected = await hub.log.waitFor('edgeDisconnected', () => true, 5_000);
    const detectMs = Date.now() - killedAt;
    await until(async () => (await hubStatusOf(hub)).edges.length === 0, 5_000, () => 'the edge to leave the hub status');
    await until(() => live.size === 0, 5_000, () => `the hub to close its ${STREAMS} target connections (${live.size} still open)`);
    const releaseMs = await until(
      () => fdCount(hub.pid) <= baseline + FD_MARGIN,
      5_000,
      () => `hub fds back to baseline ${baseline} (now ${fdCount(hub.pid)}: ${describeFds(hub.pid)}; baseline was ${baselineKinds}; tcp ${JSON.stringify(tcpStatesOf(hub.pid))})`,
    );
    const after = await hubStatusOf(hub);
    expect(after.edges).toEqual([]);
    expect(after.counts.streamClosed).toBe(after.counts.streamOpened);
    // No socket of the hub is left half-closed (the CLOSE_WAIT pile-up the issue warns about).
    expect(tcpStatesOf(hub.pid).CLOSE_WAIT ?? 0).toBe(0);
    console.log(
      `kill-edge: edgeDisconnected ${JSON.stringify(disconnected)} after ${detectMs} ms; fds baseline ${baseline}, loaded ${loadedFds}, after ${fdCount(hub.pid)} (+${releaseMs} ms)`,
    );

    // The hub is still healthy: a new edge process with the same token connects and serves.
    const edge2 = startEdgeCli(cleanups, { token });
    await edge2.waitForLine(portsAssignedLine(edgePort), 'second edge portsAssigned');
    clients.forEach((socket) => socket.destroy());
    // The target holds connections open, so check a fresh stream opens (the echo comes back) rather than ends.
    const socket = await connectFrom(edgePort);
    cleanups.add('destroy probe', () => socket.destroy());
    const echoed = await new Promise<string>((done) => {
      socket.once('data', (chunk: Buffer) => done(chunk.toString()));
      socket.write('again');
    });
    expect(echoed).toBe('again');
  });
});
