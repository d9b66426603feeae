import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeConnectionToken } from 'remoteingress-hub';
import { Cleanups, echoRoundTrip, eventually, freePort, randomSecret, startEchoServer, startEdge, startHub, tempDir } from './helpers.js';

/**
 * STUN against Debian's coturn on loopback, behind two servers that misbehave: one never
 * answers, one answers every request with garbage (random bytes, then a well-formed STUN
 * success for another transaction). The edge asks them in order every second: the two bad ones
 * are counted (timeouts, bad responses) and never touch the tunnel; coturn's answer becomes the
 * edge's public address — on loopback, with no NAT, exactly the source address coturn saw (the
 * edge's STUN socket: 127.0.0.1 and its port; coturn logs no peer addresses to compare with) —
 * reported in the edge's status, a publicAddressChanged event, and the hub's status.
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** A UDP socket on 127.0.0.1 that does `onMessage` with each datagram. */
async function udpServer(onMessage: (socket: dgram.Socket, msg: Buffer, from: dgram.RemoteInfo) => void): Promise<number> {
  const socket = dgram.createSocket('udp4');
  socket.on('message', (msg, from) => onMessage(socket, msg, from));
  await new Promise<void>((done) => socket.bind(0, '127.0.0.1', done));
  cleanups.add('close udp server', () => new Promise<void>((done) => socket.close(() => done())));
  return socket.address().port;
}

/** A Binding success response for a transaction that is not the request's. */
function strangersAnswer(): Buffer {
  const header = Buffer.alloc(20);
  header.writeUInt16BE(0x0101, 0); // Binding success
  header.writeUInt16BE(12, 2);
  header.writeUInt32BE(0x2112a442, 4);
  randomBytes(12).copy(header, 8);
  const attr = Buffer.from([0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0x00, 0x00, 0, 0, 0, 0]); // XOR-MAPPED-ADDRESS
  return Buffer.concat([header, attr]);
}

describe('STUN', () => {
  it('reports the address coturn saw; a silent server and a garbage server are counted and leave the tunnel alone', async () => {
    const dir = await tempDir(cleanups, 'ri-e2e-stun-');
    const coturnPort = await freePort();
    const coturn = spawn(
      'turnserver',
      ['-n', '--listening-ip=127.0.0.1', `--listening-port=${coturnPort}`, '--stun-only', '--no-cli', '--no-tls', '--no-dtls', '--log-file=stdout', '--simple-log', `--pidfile=${join(dir, 'turn.pid')}`, `--db=${join(dir, 'turndb')}`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let coturnLog = '';
    coturn.stdout.on('data', (d: Buffer) => (coturnLog += d.toString()));
    coturn.stderr.on('data', (d: Buffer) => (coturnLog += d.toString()));
    const coturnExited = new Promise<void>((done) => coturn.once('exit', () => done()));
    cleanups.add('stop coturn', async () => {
      coturn.kill('SIGTERM');
      await coturnExited;
    });
    // Ready once it answers a Binding request (coturn block-buffers its log when not on a terminal).
    const probe = dgram.createSocket('udp4');
    cleanups.add('close probe', () => new Promise<void>((done) => probe.close(() => done())));
    let answered = false;
    probe.on('message', () => (answered = true));
    await new Promise<void>((done) => probe.bind(0, '127.0.0.1', done));
    const request = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), randomBytes(12)]);
    const poke = setInterval(() => probe.send(request, coturnPort, '127.0.0.1'), 100);
    try {
      await eventually(() => answered, 10_000, () => `coturn did not answer a Binding request:\n${coturnLog}`);
    } finally {
      clearInterval(poke);
    }

    const silent = await udpServer(() => undefined);
    let garbageSent = 0;
    const garbage = await udpServer((socket, _msg, from) => {
      socket.send(randomBytes(40), from.port, from.address);
      socket.send(strangersAnswer(), from.port, from.address);
      garbageSent += 2;
    });

    const echo = await startEchoServer(cleanups);
    const edgePort = await freePort();
    const secret = randomSecret();
    const hub = await startHub(cleanups, {
      allowedEdges: [
        {
          id: 'stun-edge',
          secret,
          bindAddress: '127.0.0.1',
          listenPorts: [{ port: edgePort, targetPort: echo.port, proxyProtocol: 'none' }],
          stunIntervalSecs: 1,
          stunServers: [`127.0.0.1:${silent}`, `127.0.0.1:${garbage}`, `127.0.0.1:${coturnPort}`],
        },
      ],
    });
    const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: hub.tunnelPort, edgeId: 'stun-edge', secret, hubFingerprint: hub.fingerprint });
    const { edge, log } = await startEdge(cleanups, { token, transportMode: 'tcpTls' }, [edgePort]);
    const changed: Array<Record<string, unknown>> = [];
    edge.on('publicAddressChanged', (event) => changed.push({ ...event }));

    // The first round: 3.5 s for the silent server, 3.5 s for the garbage one, then coturn.
    await eventually(() => edge.getStatus().publicAddress != null, 15_000, () => `no public address: ${JSON.stringify(edge.getStatus().stun)}`);
    const stun = edge.getStatus().stun;
    expect(stun).toBeDefined();
    const local = stun?.localAddress ?? '';
    const localPort = Number(local.slice(local.lastIndexOf(':') + 1));
    expect(edge.getStatus().publicAddress).toBe(`127.0.0.1:${localPort}`);
    expect(stun).toMatchObject({ enabled: true, server: `127.0.0.1:${coturnPort}`, errors: 0 });
    expect(stun?.timeouts).toBeGreaterThanOrEqual(2);
    expect(stun?.badResponses).toBeGreaterThanOrEqual(2);
    expect(garbageSent).toBeGreaterThanOrEqual(2);
    expect(changed[0]).toMatchObject({ kind: 'publicAddressChanged', address: `127.0.0.1:${localPort}`, previous: null, server: `127.0.0.1:${coturnPort}` });

    // The hub learns it through the tunnel.
    await eventually(
      () => hub.hub.getStatus().edges.some((e) => e.edgeId === 'stun-edge' && e.publicAddress === `127.0.0.1:${localPort}`),
      5000,
      () => JSON.stringify(hub.hub.getStatus().edges),
    );
    // The tunnel never noticed.
    expect(log.of('tunnelDisconnected')).toHaveLength(0);
    expect((await echoRoundTrip(edgePort)).received).toMatch(/^ping /);
    expect(edge.getStatus().state).toBe('connected');
  }, 40_000);
});
