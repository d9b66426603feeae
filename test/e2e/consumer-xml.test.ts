import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RemoteIngressHub, decodeEdgeToken } from 'remoteingress-hub';
import { runOnce, spawnDaemon } from './daemons.js';
import { Cleanups, ROOT, delay, freePort, randomSecret, tempDir, withTimeout } from './helpers.js';

/**
 * edgerq's consumer.xml through the real command line: an edge started with `--consumer-xml`
 * listens where its <listener> says, the hub dials it (with the edge token the edge's CLI
 * prints), and each <service> the hub names is served on the file's port with the file's
 * limits; broken files exit 2 naming the line or element.
 */
const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');
const UUID_A = '3f1c2a4e-8b7d-4c1e-9a55-0f2d3c4b5a61';
const UUID_B = '9e8d7c6b-5a49-4382-b1c0-d9e8f7a6b5c4';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** A TCP target that answers every connection with `tag` and then echoes. */
async function taggedEcho(tag: string): Promise<number> {
  const server = net.createServer((socket) => {
    socket.write(tag);
    socket.pipe(socket);
    socket.on('error', () => undefined);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  cleanups.add(`close ${tag} target`, () => new Promise<void>((done) => server.close(() => done())));
  return (server.address() as net.AddressInfo).port;
}

/** Sends `text` to 127.0.0.1:`port` and resolves what came back once `expected` bytes arrived. */
function exchange(port: number, text: string, expected: number): Promise<string> {
  return withTimeout(
    new Promise<string>((done, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => socket.write(text));
      let got = '';
      socket.on('data', (d) => {
        got += d.toString();
        if (got.length >= expected) {
          socket.destroy();
          done(got);
        }
      });
      socket.on('error', reject);
      socket.on('close', () => reject(new Error(`closed after ${JSON.stringify(got)}`)));
    }),
    5000,
    `exchange through port ${port}`,
  );
}

/** Opens a connection and resolves whether it stays open for `ms` (a refused client is closed at once). */
function staysOpen(port: number, ms: number, held: net.Socket[]): Promise<boolean> {
  return new Promise((done) => {
    const socket = net.connect(port, '127.0.0.1');
    held.push(socket);
    const timer = setTimeout(() => done(true), ms);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      done(false);
    });
  });
}

function consumerXml(listenPort: number, portA: number, portB: number): string {
  return `<?xml version="1.0"?>
<service_consumer>
  <max_connections>10</max_connections>
  <request_ttl>30</request_ttl>
  <listener>
    <inaddr_any>no</inaddr_any>
    <port>${listenPort}</port>
  </listener>
  <services>
    <service>
      <uuid>${UUID_A}</uuid>
      <name>alpha</name>
      <port>${portA}</port>
      <max_connections>2</max_connections>
    </service>
    <service>
      <uuid>${UUID_B}</uuid>
      <name>beta</name>
      <inaddr_any>no</inaddr_any>
      <port>${portB}</port>
      <request_ttl>5</request_ttl>
    </service>
  </services>
</service_consumer>
`;
}

describe('consumer.xml', () => {
  it('starts an edge that the hub dials; both services carry traffic on the ports and with the limits the file gives', async () => {
    const dir = await tempDir(cleanups, 'ri-e2e-xml-');
    const stateDir = join(dir, 'edge-state');
    const [listenPort, portA, portB, hubPortA, hubPortB] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
    const file = join(dir, 'consumer.xml');
    await writeFile(file, consumerXml(listenPort, portA, portB));
    const secret = randomSecret();
    const env = { REMOTEINGRESS_SECRET: secret };

    const minted = await runOnce(EDGE_BIN, ['token', '--state-dir', stateDir, '--edge-id', 'xml-edge', '--edge-host', '127.0.0.1', '--edge-port', String(listenPort)], env);
    expect(minted.code, minted.stderr).toBe(0);
    const token = minted.stdout.trim();
    const decoded = decodeEdgeToken(token);
    expect(decoded).toMatchObject({ edgeHost: '127.0.0.1', edgePort: listenPort, edgeId: 'xml-edge', secret });

    const edge = spawnDaemon(cleanups, EDGE_BIN, ['--consumer-xml', file, '--state-dir', stateDir, '--edge-id', 'xml-edge', '--grace-ms', '200'], env);
    const line = await edge.waitForLine(/listening for its hub on 127\.0\.0\.1:(\d+) .*fingerprint ([0-9a-f]{64})/, 'edge start-up line');
    expect(Number(line[1])).toBe(listenPort);
    expect(line[2]).toBe(decoded.edgeFingerprint);

    const [targetA, targetB] = [await taggedEcho('A:'), await taggedEcho('B:')];
    const hub = new RemoteIngressHub();
    cleanups.add('stop hub', () => hub.stop({ graceMs: 0 }));
    await hub.start({
      tunnelPort: 0,
      bindHost: '127.0.0.1',
      targetHost: '127.0.0.1',
      stateDir: join(dir, 'hub-state'),
      allowedEdges: [
        {
          edgeToken: token,
          listenPorts: [],
          proxyProtocol: 'none',
          // The hub names the targets; the edge's consumer.xml moves the services to its own ports.
          services: [
            { id: UUID_A, protocol: 'tcp', edgePort: hubPortA, target: { host: '127.0.0.1', port: targetA }, maxConnections: 50 },
            { id: UUID_B, protocol: 'tcp', edgePort: hubPortB, target: { host: '127.0.0.1', port: targetB } },
          ],
        } as never,
      ],
    });
    await edge.waitForLine(/tunnelConnected/, 'the hub dialed the edge');
    await edge.waitForLine(new RegExp(`portsAssigned .*tcp=${Math.min(portA, portB)},${Math.max(portA, portB)}\\b`), 'the consumer.xml ports are bound');

    expect(await exchange(portA, 'hello', 7)).toBe('A:hello');
    expect(await exchange(portB, 'world', 7)).toBe('B:world');

    // alpha: max_connections 2 from its <service> (not the file's 10, not the hub's 50).
    const held: net.Socket[] = [];
    cleanups.add('close held clients', () => held.forEach((s) => s.destroy()));
    const first = await Promise.all([staysOpen(portA, 500, held), staysOpen(portA, 500, held)]);
    expect(first).toEqual([true, true]);
    expect(await staysOpen(portA, 500, held)).toBe(false);
    // beta: the file's default 10 applies; three at once are fine.
    expect(await Promise.all([0, 1, 2].map(() => staysOpen(portB, 300, held)))).toEqual([true, true, true]);
    await delay(50);
  });

  const broken: Array<[string, (listen: number) => string, RegExp]> = [
    ['bad XML', (l) => `<service_consumer><listener><port>${l}</port></listener><services><service><uuid>a</uuid><port>81</port></service></services>`, /consumer\.xml:\d+:\d+: not well-formed XML/],
    ['an unknown element', (l) => consumerXml(l, 81, 82).replace('<max_connections>2</max_connections>', '<max_conections>2</max_conections>'), /consumer\.xml:\d+: .*unknown element <max_conections>/],
    ['a bad port', (l) => consumerXml(l, 70000, 82), /consumer\.xml:\d+: <port> .*"70000" is not a port/],
    ['a duplicate uuid', (l) => consumerXml(l, 81, 82).replace(UUID_B, UUID_A), new RegExp(`consumer\\.xml:\\d+: .*${UUID_A}`)],
    ['a bad yes/no', (l) => consumerXml(l, 81, 82).replace('<inaddr_any>no</inaddr_any>\n    <port>', '<inaddr_any>maybe</inaddr_any>\n    <port>'), /consumer\.xml:\d+: <inaddr_any> in <listener> must be yes or no, got "maybe"/],
  ];

  it.each(broken)('%s: exits 2 naming the line or element, and starts nothing', async (_what, make, message) => {
    const dir = await tempDir(cleanups, 'ri-e2e-xml-bad-');
    const listenPort = await freePort();
    const file = join(dir, 'consumer.xml');
    await writeFile(file, make(listenPort));
    const result = await runOnce(EDGE_BIN, ['--consumer-xml', file, '--state-dir', join(dir, 'state'), '--edge-id', 'xml-edge'], { REMOTEINGRESS_SECRET: randomSecret() });
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(2);
    expect(result.stderr).toMatch(message);
    // Nothing half-started: the listener port was never bound.
    const free = await new Promise<boolean>((done) => {
      const probe = net.createServer().once('error', () => done(false));
      probe.listen(listenPort, '127.0.0.1', () => probe.close(() => done(true)));
    });
    expect(free).toBe(true);
  });
});
