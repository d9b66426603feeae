import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeConnectionToken } from 'remoteingress-hub';
import {
  Cleanups,
  connectFrom,
  delay,
  echoOnce,
  edgeEntry,
  forkApiDaemon,
  freePort,
  randomSecret,
  startEchoServer,
  startEdge,
  tempDir,
  until,
} from './helpers.js';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

const SILENT = 500;
/** "Within a few seconds": the edge connects, binds and carries a request in this long. */
const SERVE_BOUND_MS = 4_000;

/**
 * `opening`: what each client sends after connecting before going quiet for good: nothing (the
 * issue's "never speak"), or the first bytes of a TLS ClientHello (a slow client: the issue's
 * bound says "a slow or silent client cannot hold the hub").
 */
async function crowdThenEdge(opening: Buffer | undefined): Promise<void> {
  {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    const secret = randomSecret();
    const stateDir = await tempDir(cleanups, 'ri-faults-silent-');
    // Default limits on purpose: the shipped configuration must withstand this.
    const hub = forkApiDaemon(cleanups, 'hub', {
      tunnelPort: 0,
      bindHost: '127.0.0.1',
      targetHost: '127.0.0.1',
      stateDir,
      allowedEdges: [edgeEntry('edge-real', secret, [edgePort], target.port)],
    });
    const { tunnelPort, fingerprint } = await hub.started;

    // The silent clients come from other loopback addresses than the edge (127.0.1.1-50, ten
    // each), as an attacker's would, so a per-source limit on the hub is allowed to hit them.
    const silent: net.Socket[] = [];
    let closedByHub = 0;
    cleanups.add('destroy silent clients', () => silent.forEach((socket) => socket.destroy()));
    for (let i = 0; i < SILENT; i++) {
      const socket = await connectFrom(tunnelPort as number, `127.0.1.${1 + (i % 50)}`);
      socket.on('error', () => undefined);
      socket.on('close', () => (closedByHub += 1));
      if (opening !== undefined) socket.write(opening);
      silent.push(socket);
    }
    // Let the hub accept all of them (they sit in its accept queue until then).
    await delay(500);

    const startedAt = Date.now();
    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: tunnelPort as number, edgeId: 'edge-real', secret, hubFingerprint: fingerprint as string });
    const { log } = await startEdge(cleanups, { token, transportMode: 'tcpTls', reconnect: { baseMs: 100, capMs: 500 } });
    const describe = (): string => `the edge to connect and serve with ${SILENT} silent clients (${closedByHub} closed by the hub so far); edge events:\n${log.describe()}\nhub events:\n${hub.log.describe()}`;
    let served = false;
    try {
      await until(
        async () => log.of('portsAssigned', (event) => (event.tcp as number[]).includes(edgePort)).length > 0 && (await echoOnce(edgePort, 64, 1_000)),
        SERVE_BOUND_MS,
        describe,
      );
      served = true;
    } finally {
      const elapsed = Date.now() - startedAt;
      const failures = log.of('tunnelDisconnected').map((event) => `${String(event.code)}: ${String(event.reason)}`);
      console.log(
        `${opening === undefined ? 'silent' : 'stalled'} clients: edge ${served ? 'served' : 'did NOT serve'} after ${elapsed} ms; ${failures.length} failed dials first (${[...new Set(failures)].join(' | ')}); ${closedByHub}/${SILENT} silent clients closed by the hub`,
      );
    }
    expect(served).toBe(true);
    // The silent ones are still silent and the hub is still fine: another request works.
    expect(await echoOnce(edgePort)).toBe(true);
  }
}

describe('500 idle clients on the hub tunnel port', () => {
  it('500 clients that never speak do not stop a real edge from connecting and serving (default limits)', async () => {
    await crowdThenEdge(undefined);
  });

  it('500 clients that send the first bytes of a ClientHello and stall do not stop a real edge either (default limits)', async () => {
    // A TLS record header announcing a 512-byte handshake record, and one byte of it: the hub
    // cannot tell this from a slow network until its handshake timeout.
    await crowdThenEdge(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
  });
});
