import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
// The one line a user of the reference product changes: the package name.
import { RemoteIngressEdge, RemoteIngressHub, decodeConnectionToken, encodeConnectionToken, runCli } from 'remoteingress';
import { spawnDaemon } from './daemons.js';
import { Cleanups, ROOT, echoRoundTrip, eventually, freePort, tempDir } from './helpers.js';

/**
 * Code written the way the reference README shows it (hub start with tunnelPort and targetHost
 * only, updateAllowedEdges, getStatus().connectedEdges, the events and fields it reads, tokens,
 * runCli through cli.js and REMOTEINGRESS_MODE), run against this implementation. Only hosts and
 * ports are the test's: everything runs on loopback, so the target listens on 127.0.0.2 and
 * the edge binds 127.0.0.1.
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe('the reference API', () => {
  it('hub, allowed edges, token, edge, events, status and stop, as its README writes them', async () => {
    // The hub keeps its identity in the default state directory (REMOTEINGRESS_STATE_DIR here).
    const stateDir = await tempDir(cleanups, 'ri-e2e-reference-');
    const before = process.env.REMOTEINGRESS_STATE_DIR;
    process.env.REMOTEINGRESS_STATE_DIR = stateDir;
    cleanups.add('restore REMOTEINGRESS_STATE_DIR', () => {
      if (before === undefined) delete process.env.REMOTEINGRESS_STATE_DIR;
      else process.env.REMOTEINGRESS_STATE_DIR = before;
    });
    const [tunnelPort, publicPort] = [await freePort(), await freePort()];
    const target = net.createServer((socket) => {
      socket.on('error', () => undefined);
      socket.pipe(socket);
    });
    await new Promise<void>((done) => target.listen(publicPort, '127.0.0.2', done));
    cleanups.add('close target', () => new Promise<void>((done) => target.close(() => done())));

    // --- from the README: the hub ---
    const hub = new RemoteIngressHub();
    cleanups.add('hub.stop', () => hub.stop());
    const hubEvents: string[] = [];
    hub.on('edgeConnected', ({ edgeId }) => hubEvents.push(`edgeConnected ${edgeId}`));
    hub.on('edgeDisconnected', ({ edgeId }) => hubEvents.push(`edgeDisconnected ${edgeId}`));
    hub.on('streamOpened', ({ edgeId, streamId }) => hubEvents.push(`streamOpened ${edgeId} ${typeof streamId}`));
    hub.on('streamClosed', ({ edgeId, streamId }) => hubEvents.push(`streamClosed ${edgeId} ${typeof streamId}`));
    await hub.start({ tunnelPort, targetHost: '127.0.0.2' });
    await hub.updateAllowedEdges([{ id: 'edge-nyc-01', secret: 'supersecrettoken1', listenPorts: [publicPort], bindAddress: '127.0.0.1' }]);

    // --- tokens ---
    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: tunnelPort, edgeId: 'edge-nyc-01', secret: 'supersecrettoken1' });
    const decoded = decodeConnectionToken(token);
    expect(decoded).toMatchObject({ hubHost: '127.0.0.1', hubPort: tunnelPort, edgeId: 'edge-nyc-01', secret: 'supersecrettoken1' });
    // What this implementation adds: the hub's fingerprint, read from its identity.
    expect(decoded.hubFingerprint).toBe(hub.fingerprint);

    // --- the edge ---
    const edge = new RemoteIngressEdge();
    cleanups.add('edge.stop', () => edge.stop());
    let assigned: number[] = [];
    let connected = false;
    edge.on('tunnelConnected', () => (connected = true));
    edge.on('tunnelDisconnected', () => (connected = false));
    edge.on('portsAssigned', ({ listenPorts }) => (assigned = listenPorts));
    await edge.start({ token });
    await eventually(() => connected && assigned.includes(publicPort), 10_000, () => `connected ${connected}, ports ${JSON.stringify(assigned)}`);

    // Traffic through the public port reaches the target.
    const reply = (await echoRoundTrip(publicPort, 'hello through the edge')).received;
    // The target speaks no PROXY protocol here but echoes it back: the header comes first.
    expect(reply).toMatch(/^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+\r\nhello through the edge$/);

    // --- status ---
    const status = await hub.getStatus();
    expect(status.running).toBe(true);
    expect(status.tunnelPort).toBe(tunnelPort);
    expect(status.connectedEdges).toEqual([{ edgeId: 'edge-nyc-01', connectedAt: expect.any(Number), activeStreams: expect.any(Number) }]);
    const edgeStatus = await edge.getStatus();
    expect(edgeStatus.state).toBe('connected');

    await eventually(() => hubEvents.includes('streamClosed edge-nyc-01 number'), 5000, () => JSON.stringify(hubEvents));
    expect(hubEvents).toEqual(expect.arrayContaining(['edgeConnected edge-nyc-01', 'streamOpened edge-nyc-01 number', 'streamClosed edge-nyc-01 number']));

    await edge.stop();
    await eventually(() => hubEvents.includes('edgeDisconnected edge-nyc-01'), 5000, () => JSON.stringify(hubEvents));
    await hub.stop();
    expect((await hub.getStatus()).running).toBe(false);
    expect(typeof runCli).toBe('function');
  });

  it('runCli through cli.js: REMOTEINGRESS_MODE=hub with the environment, then an edge from REMOTEINGRESS_TOKEN', async () => {
    const stateDir = await tempDir(cleanups, 'ri-e2e-reference-cli-');
    const [tunnelPort, publicPort] = [await freePort(), await freePort()];
    const cli = join(ROOT, 'packages/remoteingress/cli.js');
    const hub = spawnDaemon(cleanups, cli, [], {
      REMOTEINGRESS_MODE: 'hub',
      REMOTEINGRESS_HUB_PORT: String(tunnelPort),
      REMOTEINGRESS_BIND_HOST: '127.0.0.1',
      REMOTEINGRESS_TARGET_HOST: '127.0.0.2',
      REMOTEINGRESS_STATE_DIR: stateDir,
      REMOTEINGRESS_ALLOWED_EDGES_JSON: JSON.stringify([{ id: 'edge-cli', secret: 'supersecrettoken1', listenPorts: [publicPort], bindAddress: '127.0.0.1' }]),
    });
    await hub.waitForLine(new RegExp(`hub listening on 127\\.0\\.0\\.1:${tunnelPort} `), 'hub start-up line');
    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: tunnelPort, edgeId: 'edge-cli', secret: 'supersecrettoken1' }, { stateDir });
    const edge = spawnDaemon(cleanups, cli, ['edge'], { REMOTEINGRESS_TOKEN: token, REMOTEINGRESS_TRANSPORT_MODE: 'tcpTls' });
    await edge.waitForLine(new RegExp(`^portsAssigned .*\\blistenPorts=${publicPort}\\b`, 'm'), 'edge portsAssigned line');
    await hub.waitForLine(/^edgeConnected .*\bedgeId=edge-cli\b/m, 'hub edgeConnected line');
  });

  it('a token without a fingerprint where no hub identity exists is refused, saying how to get one', () => {
    expect(() =>
      encodeConnectionToken({ hubHost: 'hub.example.com', hubPort: 8443, edgeId: 'e', secret: 'supersecrettoken1' }, { stateDir: '/nonexistent/remoteingress' }),
    ).toThrow(/no hub identity at \/nonexistent\/remoteingress\/hub-cert\.pem .*give hubFingerprint/);
  });
});
