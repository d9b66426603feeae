import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  CONNECT_TIMEOUT_MS,
  Cleanups,
  connectFrom,
  delay,
  exchange,
  freePort,
  startPair,
  startProxyTarget,
  tempDir,
  withTimeout,
} from './helpers.js';

/**
 * The target must see the real client (address and port) in the PROXY header the hub writes,
 * whole and ahead of the payload: checked by an independent parser (proxy-protocol-js) and by
 * a real consumer (haproxy with accept-proxy) passing the address on to its backend.
 */
const HAPROXY = '/usr/sbin/haproxy';
const haproxyAvailable = existsSync(HAPROXY);

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe.each(['v1', 'v2'] as const)('PROXY %s header, read by proxy-protocol-js', (version) => {
  it('carries the client source address and port and the edge port, whole, before the payload', async () => {
    const target = await startProxyTarget(cleanups, version);
    const edgePort = await freePort();
    await startPair(cleanups, { listenPorts: [{ port: edgePort, targetPort: target.port, proxyProtocol: version }] });

    // 1) The client waits before sending anything: the header alone must be the first read.
    const quiet = await connectFrom(edgePort, '127.0.0.2');
    const quietPort = quiet.localPort;
    const first = await target.connection(0);
    expect(target.errors).toEqual([]);
    expect(first.source).toEqual({ address: '127.0.0.2', port: quietPort });
    expect(first.destination).toEqual({ address: '127.0.0.1', port: edgePort });
    expect(first.firstChunk.equals(first.header)).toBe(true);
    if (version === 'v1') {
      expect(first.header.toString('latin1')).toBe(`PROXY TCP4 127.0.0.2 127.0.0.1 ${quietPort} ${edgePort}\r\n`);
    } else {
      // Version 2, command PROXY (0x21); TCP over IPv4 (0x11).
      expect([first.header[12], first.header[13]]).toEqual([0x21, 0x11]);
    }
    const quietReply = await withTimeout(exchange(quiet, 'after the header'), CONNECT_TIMEOUT_MS, 'echo after the header');
    expect(quietReply.reply.toString()).toBe('after the header');
    expect(first.payload.toString()).toBe('after the header');

    // 2) The client sends at once: the header still comes first and whole, then exactly the payload.
    const eager = await connectFrom(edgePort, '127.0.0.2');
    const eagerPort = eager.localPort;
    const payload = Buffer.from('GET / HTTP/1.0\r\n\r\n'.repeat(50));
    const eagerReply = withTimeout(exchange(eager, payload), CONNECT_TIMEOUT_MS, 'eager echo');
    const second = await target.connection(1);
    expect(second.source).toEqual({ address: '127.0.0.2', port: eagerPort });
    expect(second.destination).toEqual({ address: '127.0.0.1', port: edgePort });
    expect(second.firstChunk.subarray(0, second.header.length).equals(second.header)).toBe(true);
    expect((await eagerReply).reply.equals(payload)).toBe(true);
    expect(second.payload.equals(payload)).toBe(true);
    expect(target.errors).toEqual([]);
  });
});

/** Starts haproxy in the foreground; resolves once its frontend accepts connections. */
async function startHaproxy(configPath: string, frontendPort: number): Promise<ChildProcess> {
  const child = spawn(HAPROXY, ['-f', configPath, '-db'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  cleanups.add('stop haproxy', async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await withTimeout(exited, 10_000, 'haproxy exit after SIGTERM').catch(() => child.kill('SIGKILL'));
    }
  });
  const deadline = Date.now() + CONNECT_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`haproxy exited with ${child.exitCode}:\n${output}`);
    const up = await connectFrom(frontendPort).then(
      (socket: net.Socket) => {
        socket.destroy();
        return true;
      },
      () => false,
    );
    if (up) return child;
    if (Date.now() > deadline) throw new Error(`haproxy did not listen on ${frontendPort}:\n${output}`);
    await delay(50);
  }
}

/** GET / through `port` from `localAddress`; resolves with status and body. */
function get(port: number, localAddress: string): Promise<{ status: number; body: string }> {
  return new Promise((done, reject) => {
    const request = http.get({ host: '127.0.0.1', port, path: '/', localAddress, agent: false, headers: { connection: 'close' } }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => done({ status: response.statusCode ?? 0, body }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.setTimeout(CONNECT_TIMEOUT_MS, () => request.destroy(new Error(`GET through port ${port} timed out`)));
  });
}

describe('haproxy (Debian) consuming our PROXY header', () => {
  it.skipIf(!haproxyAvailable)('accepts v1 and v2 with accept-proxy and passes the real client address to its backend', async () => {
    // The backend: a tiny HTTP server that reports the client address haproxy forwarded.
    const seen: string[] = [];
    const backendServer = http.createServer((request, response) => {
      const forwarded = String(request.headers['x-forwarded-for'] ?? '');
      seen.push(forwarded);
      response.setHeader('content-type', 'application/json');
      response.end(JSON.stringify({ forwardedFor: forwarded, peer: request.socket.remoteAddress }));
    });
    await new Promise<void>((done) => backendServer.listen(0, '127.0.0.1', done));
    cleanups.add('close backend', () => new Promise<void>((done) => backendServer.close(() => done())));
    backendServer.on('connection', (socket) => cleanups.add('destroy backend socket', () => socket.destroy()));
    const backendPort = (backendServer.address() as net.AddressInfo).port;

    const dir = await tempDir(cleanups, 'ri-e2e-haproxy-');
    const frontendPort = await freePort();
    const config = [
      'global',
      '  maxconn 256',
      'defaults',
      '  mode http',
      '  timeout connect 5s',
      '  timeout client 15s',
      '  timeout server 15s',
      'frontend tunnel_in',
      // accept-proxy takes v1 and v2 alike and refuses a connection whose header it cannot parse.
      `  bind 127.0.0.1:${frontendPort} accept-proxy`,
      '  option forwardfor',
      '  default_backend app',
      'backend app',
      `  server app1 127.0.0.1:${backendPort}`,
      '',
    ].join('\n');
    const configPath = join(dir, 'haproxy.cfg');
    await writeFile(configPath, config);
    await startHaproxy(configPath, frontendPort);
    // haproxy logged our readiness probe (no PROXY header) as a bad connection; that is not a request.
    expect(seen).toEqual([]);

    const v1Port = await freePort();
    const v2Port = await freePort();
    await startPair(cleanups, {
      listenPorts: [
        { port: v1Port, targetPort: frontendPort, proxyProtocol: 'v1' },
        { port: v2Port, targetPort: frontendPort, proxyProtocol: 'v2' },
      ],
    });

    const viaV1 = await get(v1Port, '127.0.0.2');
    expect(viaV1.status).toBe(200);
    expect(JSON.parse(viaV1.body)).toEqual({ forwardedFor: '127.0.0.2', peer: '127.0.0.1' });

    const viaV2 = await get(v2Port, '127.0.0.3');
    expect(viaV2.status).toBe(200);
    expect(JSON.parse(viaV2.body)).toEqual({ forwardedFor: '127.0.0.3', peer: '127.0.0.1' });
    expect(seen).toEqual(['127.0.0.2', '127.0.0.3']);
  });
});
