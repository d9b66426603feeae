import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeConnectionToken } from 'remoteingress-hub';
import type { TAllowedEdge } from 'remoteingress-hub';
import {
  Cleanups,
  delay,
  echoOnce,
  edgeEntry,
  freePort,
  probe,
  randomSecret,
  startEchoServer,
  startEdge,
  startHubCli,
  tempDir,
  until,
  type ICliDaemon,
  type IStartedEdge,
} from './helpers.js';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** The bound for a removed edge: disconnected and its ports closed within a second of the update. */
const REMOVE_BOUND_MS = 1_000;

/** Writes the file the way an editor that saves atomically does: a temp file renamed over it. */
async function saveAtomically(file: string, text: string): Promise<void> {
  const temp = `${file}.tmp-${process.pid}`;
  await writeFile(temp, text);
  await rename(temp, file);
}

interface ISetup {
  hub: ICliDaemon & { tunnelPort: number; fingerprint: string };
  edgesFile: string;
  targetPort: number;
  a: { secret: string; ports: number[]; edge: IStartedEdge };
  b: { secret: string; ports: number[]; edge: IStartedEdge };
}

async function setUp(extraArgs: string[] = []): Promise<ISetup> {
  const target = await startEchoServer(cleanups);
  const dir = await tempDir(cleanups, 'ri-faults-file-');
  const edgesFile = join(dir, 'edges.json');
  const a = { secret: randomSecret(), ports: [await freePort()] };
  const b = { secret: randomSecret(), ports: [await freePort()] };
  const entries: TAllowedEdge[] = [edgeEntry('edge-a', a.secret, a.ports, target.port), edgeEntry('edge-b', b.secret, b.ports, target.port)];
  await writeFile(edgesFile, JSON.stringify(entries, null, 2));
  const hub = await startHubCli(cleanups, { edgesFile, stateDir: join(dir, 'state'), extraArgs });
  const token = (id: string, secret: string): string =>
    encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: hub.tunnelPort, edgeId: id, secret, hubFingerprint: hub.fingerprint });
  const reconnect = { baseMs: 100, capMs: 500 };
  const edgeA = await startEdge(cleanups, { token: token('edge-a', a.secret), transportMode: 'tcpTls', reconnect }, a.ports);
  const edgeB = await startEdge(cleanups, { token: token('edge-b', b.secret), transportMode: 'tcpTls', reconnect }, b.ports);
  expect(await echoOnce(a.ports[0] as number)).toBe(true);
  expect(await echoOnce(b.ports[0] as number)).toBe(true);
  return { hub, edgesFile, targetPort: target.port, a: { ...a, edge: edgeA }, b: { ...b, edge: edgeB } };
}

describe("hub CLI: editing the allowed-edges file takes effect without a restart", () => {
  it('a new port answers, a removed edge is disconnected and its port refuses within ~1 s, a broken file changes nothing', async () => {
    const { hub, edgesFile, targetPort, a, b } = await setUp();
    const aLog = a.edge.log;
    const bLog = b.edge.log;

    // 1. Add a port to edge-a (in-place write, as `echo … > edges.json` does).
    const newPort = await freePort();
    let mark = hub.mark();
    await writeFile(
      edgesFile,
      JSON.stringify([edgeEntry('edge-a', a.secret, [...a.ports, newPort], targetPort), edgeEntry('edge-b', b.secret, b.ports, targetPort)], null, 2),
    );
    await hub.waitForLine(/allowed edges reloaded from .*\(file changed\)/, 'reload after adding a port', { since: mark, timeoutMs: 5_000 });
    await aLog.waitFor('portsAssigned', (event) => (event.tcp as number[]).includes(newPort), 5_000);
    expect(await echoOnce(newPort)).toBe(true);
    expect(await echoOnce(a.ports[0] as number)).toBe(true);
    expect(aLog.of('tunnelDisconnected')).toEqual([]);

    // 2. Remove edge-b (atomic save: temp file renamed over the original).
    const bSince = bLog.events.length;
    mark = hub.mark();
    const writtenAt = Date.now();
    await saveAtomically(edgesFile, JSON.stringify([edgeEntry('edge-a', a.secret, [...a.ports, newPort], targetPort)], null, 2));
    await hub.waitForLine(/allowed edges reloaded from .*\(file changed\)/, 'reload after removing edge-b', { since: mark, timeoutMs: 5_000 });
    const reloadedAt = Date.now();
    await bLog.waitFor('tunnelDisconnected', () => true, REMOVE_BOUND_MS + 500, bSince);
    const refusedAfter = await until(
      async () => (await probe(b.ports[0] as number, 500)) === 'refused',
      REMOVE_BOUND_MS + 500,
      () => `edge-b's port ${b.ports[0]} to refuse connections`,
    );
    const removeMs = Date.now() - writtenAt;
    // It stays refused: the removed edge keeps failing to authenticate and never re-binds.
    await delay(1_000);
    expect(await probe(b.ports[0] as number)).toBe('refused');
    expect(bLog.of('tunnelConnected').length).toBe(1);
    expect(await echoOnce(a.ports[0] as number)).toBe(true);
    expect(await echoOnce(newPort)).toBe(true);
    console.log(`file edit: edge-b removed, its port refused ${removeMs} ms after the save (reload line after ${reloadedAt - writtenAt} ms; probe loop ${refusedAfter} ms)`);
    // The CLI waits 250 ms after the last change (editors save in steps), then the bound applies.
    expect(removeMs).toBeLessThan(250 + REMOVE_BOUND_MS + 300);

    // 3. A file that is not JSON, then one that is JSON but invalid: both rejected with a log line, nothing changes.
    for (const [what, text] of [
      ['syntax error', '[ { "id": "edge-a", '],
      ['invalid edge', JSON.stringify([{ id: 'edge-a', secret: 'short', listenPorts: [70000] }])],
    ] as const) {
      const aSince = aLog.events.length;
      mark = hub.mark();
      await writeFile(edgesFile, text);
      const rejected = await hub.waitForLine(/allowed edges reload rejected \(file changed\), keeping the previous set: (.*)/, `rejection of the ${what}`, {
        since: mark,
        timeoutMs: 5_000,
      });
      await delay(500);
      expect(aLog.events.slice(aSince).filter((e) => e.name === 'tunnelDisconnected' || e.name === 'portsAssigned')).toEqual([]);
      expect(await echoOnce(a.ports[0] as number)).toBe(true);
      expect(await echoOnce(newPort)).toBe(true);
      expect(await probe(b.ports[0] as number)).toBe('refused');
      console.log(`file edit: ${what} rejected: ${rejected[1]}`);
    }
    expect(hub.child.exitCode).toBeNull();
  });

  it('with --no-watch an edit waits for SIGHUP, which applies it', async () => {
    const { hub, edgesFile, targetPort, a, b } = await setUp(['--no-watch']);
    const newPort = await freePort();
    const mark = hub.mark();
    await writeFile(
      edgesFile,
      JSON.stringify([edgeEntry('edge-a', a.secret, [...a.ports, newPort], targetPort), edgeEntry('edge-b', b.secret, b.ports, targetPort)], null, 2),
    );
    await delay(1_000);
    expect(await probe(newPort)).toBe('refused');
    hub.child.kill('SIGHUP');
    await hub.waitForLine(/allowed edges reloaded from .*\(SIGHUP\)/, 'reload on SIGHUP', { since: mark, timeoutMs: 5_000 });
    await a.edge.log.waitFor('portsAssigned', (event) => (event.tcp as number[]).includes(newPort), 5_000);
    expect(await echoOnce(newPort)).toBe(true);
    expect(await echoOnce(b.ports[0] as number)).toBe(true);
  });
});
