import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type IDaemonProcess, runOnce, spawnDaemon } from './daemons.js';
import { Cleanups, ROOT, delay, eventually, freePort, randomSecret, tempDir } from './helpers.js';

/**
 * `bufferBytes` measured: a hub and an edge as the user runs them (child processes, tcpTls and quic),
 * one service capped and one not, the same target behind both. N clients that never read
 * against a target that floods each connection: the edge's RSS grows by at most N × cap plus a
 * bounded per-connection overhead. Then N clients that flood against a target that never reads:
 * the hub's RSS holds the same bound. The uncapped service under the same load is printed beside
 * it (and must grow well past the capped bound, or this measurement could not see a buffer).
 */
const HUB_BIN = join(ROOT, 'packages/hub/dist/bin.js');
const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');
/** Connections per phase: enough that N × the default stream window (512 KiB) dwarfs the noise. */
const CLIENTS = 32;
/** The capped service's bufferBytes. */
const CAP = 16 * 1024;
/**
 * What one carried connection costs besides its buffer: the socket, its tasks and their state,
 * the stream's entry in the muxer, allocator rounding. Measured at 2–4 KiB per connection on
 * this machine; 16 KiB leaves room for another allocator layout without letting a second
 * buffer per connection through (before capped streams copied what waits for a socket out of
 * the shared read buffer, each pinned a 64 KiB chunk of it: +4.2 MiB here instead of +0.6).
 */
const PER_CONNECTION_OVERHEAD = 16 * 1024;
/** RSS noise of a daemon between two samples (allocator arenas, the JS heap): measured within ±1.5 MiB. */
const NOISE = 3 * 1024 * 1024;
/** Traffic has stopped moving when no byte moved for this long (loopback moves MBs per ms). */
const STALL_MS = 800;
/** Connections of the warm-up phases (see there). */
const WARM_UP_CLIENTS = 4;
const CHUNK = Buffer.alloc(64 * 1024, 0x5a);

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (match === null) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

/** Writes `CHUNK` on `socket` for as long as it stays writable; `moved` counts what was flushed. */
function flood(socket: net.Socket, moved: { bytes: number }): void {
  const pump = (): void => {
    while (!socket.destroyed && socket.write(CHUNK, () => (moved.bytes += CHUNK.length)));
  };
  socket.on('drain', pump);
  pump();
}

type TMode = 'flood' | 'sink';

describe('bufferBytes', () => {
  // tcpTls: the muxer's own stream windows. quic: WINDOW credit on the control stream (quinn
  // has one receive window for all streams of a connection, so the cap is enforced above it).
  it.each(['tcpTls', 'quic'] as const)('holds each side of a stalled connection to the cap (measured RSS, %s), the uncapped service shown beside it', async (transport) => {
    const target = { mode: 'flood' as TMode, moved: { bytes: 0 }, sockets: new Set<net.Socket>() };
    const server = net.createServer((socket) => {
      target.sockets.add(socket);
      socket.on('close', () => target.sockets.delete(socket));
      socket.on('error', () => undefined);
      if (target.mode === 'flood') flood(socket, target.moved);
      else socket.pause(); // never reads: the hub's writes back up into its buffers
    });
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    cleanups.add('close target', () => {
      for (const s of target.sockets) s.destroy();
      return new Promise<void>((done) => server.close(() => done()));
    });
    const targetPort = (server.address() as net.AddressInfo).port;

    const dir = await tempDir(cleanups, 'ri-e2e-buffer-');
    const edgesFile = join(dir, 'edges.json');
    const [cappedPort, uncappedPort] = [await freePort(), await freePort()];
    const service = (id: string, edgePort: number, extra: object): object => ({
      id,
      protocol: 'tcp',
      edgePort,
      target: { host: '127.0.0.1', port: targetPort },
      proxyProtocol: 'none',
      ...extra,
    });
    await writeFile(
      edgesFile,
      JSON.stringify([
        {
          id: 'buffered',
          secret: randomSecret(),
          bindAddress: '127.0.0.1',
          services: [service('capped', cappedPort, { bufferBytes: CAP }), service('uncapped', uncappedPort, {})],
        },
      ]),
    );
    const stateDir = join(dir, 'state');
    const hub = spawnDaemon(cleanups, HUB_BIN, ['--tunnel-port', '0', '--bind-host', '127.0.0.1', '--allowed-edges', edgesFile, '--state-dir', stateDir]);
    const hubPort = Number((await hub.waitForLine(/hub listening on .*:(\d+) fingerprint/, 'hub start-up line'))[1]);
    const minted = await runOnce(HUB_BIN, ['token', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--edge-id', 'buffered', '--hub-host', '127.0.0.1', '--hub-port', String(hubPort)]);
    expect(minted.code, minted.stderr).toBe(0);
    const edge = spawnDaemon(cleanups, EDGE_BIN, ['--token', minted.stdout.trim(), '--transport-mode', transport]);
    await edge.waitForLine(new RegExp(`^portsAssigned .*\\btcp=\\S*\\b${uncappedPort}\\b`, 'm'), 'edge portsAssigned line');

    /**
     * Opens `clientCount` connections to `port`, lets the traffic run until it stalls, and
     * returns `measured`'s RSS then (before they are closed). `direction` 'down': the target floods, clients never read (the
     * edge holds what it received for them). 'up': clients flood, the target never reads (the
     * hub holds what it received for the target).
     */
    const phase = async (port: number, direction: 'down' | 'up', measured: IDaemonProcess, clientCount: number): Promise<{ rss: number; moved: number }> => {
      const pid = measured.child.pid ?? 0;
      target.mode = direction === 'down' ? 'flood' : 'sink';
      const moved = direction === 'down' ? target.moved : { bytes: 0 };
      moved.bytes = 0;
      await delay(300);
      const clients: net.Socket[] = [];
      for (let i = 0; i < clientCount; i++) {
        const socket = net.connect(port, '127.0.0.1');
        socket.on('error', () => undefined);
        clients.push(socket);
        if (direction === 'down') socket.pause();
        else socket.on('connect', () => flood(socket, moved));
      }
      await eventually(() => target.sockets.size === clientCount, 10_000, () => `${target.sockets.size} of ${clientCount} connections reached the target`);
      // Run until nothing moves any more: every connection is then stalled with full buffers.
      let last = -1;
      while (moved.bytes !== last) {
        last = moved.bytes;
        await delay(STALL_MS);
      }
      let after = 0;
      for (let i = 0; i < 3; i++) after = Math.max(after, await delay(100).then(() => rssBytes(pid)));
      for (const c of clients) c.destroy();
      for (const s of target.sockets) s.destroy();
      await eventually(() => target.sockets.size === 0, 10_000, () => `${target.sockets.size} target connections still open`);
      return { rss: after, moved: moved.bytes };
    };

    const bound = CLIENTS * (CAP + PER_CONNECTION_OVERHEAD) + NOISE;
    const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;
    // Traffic flowing sets up what every carried connection shares (TLS or QUIC buffers of the
    // tunnel, receive batches, the runtime's worker state, allocator arenas): a few MiB that an
    // idle daemon partly gives back and takes again as soon as bytes move (the QUIC edge's RSS
    // swung by up to ~3.5 MiB between phases). So each measured phase is compared with a few
    // capped connections stalled the same way through the same daemon just before: the same
    // state with fewer connections, so the difference is what the extra connections hold.
    const measure = async (port: number, direction: 'down' | 'up', measured: IDaemonProcess): Promise<{ growth: number; moved: number }> => {
      const baseline = await phase(cappedPort, direction, measured, WARM_UP_CLIENTS);
      const loaded = await phase(port, direction, measured, CLIENTS);
      return { growth: loaded.rss - baseline.rss, moved: loaded.moved };
    };
    // Capped first: the uncapped phases leave the allocator holding more, never less.
    const results = {
      cappedDown: await measure(cappedPort, 'down', edge),
      cappedUp: await measure(cappedPort, 'up', hub),
      uncappedDown: await measure(uncappedPort, 'down', edge),
      uncappedUp: await measure(uncappedPort, 'up', hub),
    };
    console.log(
      `${transport}: bufferBytes ${CAP} × ${CLIENTS} stalled connections, bound ${mib(bound)}: ` +
        Object.entries(results)
          .map(([name, r]) => `${name} +${mib(r.growth)} (${mib(r.moved)} moved)`)
          .join(', '),
    );
    // Traffic really flowed in every phase (the kernel's socket buffers filled first).
    for (const r of Object.values(results)) expect(r.moved).toBeGreaterThan(CLIENTS * CAP);
    expect(results.cappedDown.growth).toBeLessThanOrEqual(bound);
    expect(results.cappedUp.growth).toBeLessThanOrEqual(bound);
    // The same load without a cap holds a full stream window per connection: the measurement sees buffers.
    expect(Math.max(results.uncappedDown.growth, results.uncappedUp.growth)).toBeGreaterThan(2 * bound);
    // Both services still work after all that.
    await eventually(() => edge.child.exitCode === null && hub.child.exitCode === null, 1000, () => `a daemon exited\n${hub.output()}\n${edge.output()}`);
  }, 120_000);
});
