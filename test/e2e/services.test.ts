import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { IEdgeServiceStatus } from 'remoteingress-edge';
import { Cleanups, connectFrom, delay, echoRoundTrip, exchange, freePort, listen, startEchoServer, startPair } from './helpers.js';

/**
 * Named services: an edge serves services by id (not just ports), each routed by the hub to its
 * own target, with limits the edge enforces — maxConnections (the next client is refused at
 * once, the others keep working) and idleTimeoutSecs (an idle client is closed, a busy one not).
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** Sends `text` and waits for exactly that many bytes back, without ending the connection. */
function roundTrip(socket: net.Socket, text: string, timeoutMs = 5000): Promise<string> {
  return new Promise((done, reject) => {
    let got = '';
    const timer = setTimeout(() => reject(new Error(`no echo of ${JSON.stringify(text)} within ${timeoutMs} ms (got ${JSON.stringify(got)})`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      got += chunk.toString();
      if (got.length >= text.length) {
        clearTimeout(timer);
        socket.off('data', onData);
        done(got);
      }
    };
    socket.on('data', onData);
    socket.write(text);
  });
}

/** Resolves with how long until the far end closed the socket (end of stream or reset). */
function closedAfter(socket: net.Socket): Promise<number> {
  const t0 = Date.now();
  return new Promise((done) => {
    const finish = () => done(Date.now() - t0);
    // Keep reading, so an end of stream or a reset is seen at once (a paused socket would not).
    socket.on('data', () => undefined);
    socket.once('end', finish);
    socket.once('error', finish);
  });
}

function serviceStatus(edge: { getStatus(): { services?: IEdgeServiceStatus[] } }, id: string): IEdgeServiceStatus | undefined {
  return edge.getStatus().services?.find((s) => s.id === id);
}

describe('named services', () => {
  it('routes two services of one edge by id to their own targets, and reports the id', async () => {
    const echo = await startEchoServer(cleanups);
    const upper = await listen(cleanups, (socket) => socket.on('data', (d: Buffer) => socket.write(d.toString().toUpperCase())));
    const [portA, portB] = [await freePort(), await freePort()];
    const pair = await startPair(cleanups, {
      listenPorts: [],
      services: [
        { id: '0b7c9a52-7f0e-4f57-9d43-4a1b2c3d4e5f', name: 'echo', protocol: 'tcp', edgePort: portA, target: { host: '127.0.0.1', port: echo.port }, proxyProtocol: 'none' },
        { id: 'shout', protocol: 'tcp', edgePort: portB, target: { host: '127.0.0.1', port: upper.port }, proxyProtocol: 'none' },
      ],
    });
    const a = await connectFrom(portA);
    expect(await roundTrip(a, 'hello')).toBe('hello');
    const b = await connectFrom(portB);
    expect(await roundTrip(b, 'hello')).toBe('HELLO');
    const opened = pair.log.of('streamOpened');
    expect(opened.map((e) => [e.serviceId, e.serviceName, e.port])).toEqual([
      ['0b7c9a52-7f0e-4f57-9d43-4a1b2c3d4e5f', 'echo', portA],
      ['shout', null, portB],
    ]);
    a.destroy();
    b.destroy();
    expect(serviceStatus(pair.edge, 'shout')).toMatchObject({ protocol: 'tcp', port: portB, total: 1 });
  });

  it('refuses the 6th concurrent client of a service with maxConnections 5; the 5 stay byte-exact', async () => {
    const echo = await startEchoServer(cleanups);
    const port = await freePort();
    const pair = await startPair(cleanups, {
      listenPorts: [],
      services: [{ id: 'five', protocol: 'tcp', edgePort: port, target: { host: '127.0.0.1', port: echo.port }, proxyProtocol: 'none', maxConnections: 5 }],
    });
    const five: net.Socket[] = [];
    for (let i = 0; i < 5; i++) {
      const s = await connectFrom(port);
      expect(await roundTrip(s, `client ${i} says hi`)).toBe(`client ${i} says hi`);
      five.push(s);
    }
    // The 6th: refused at once (reset, no byte through).
    const sixth = await connectFrom(port).catch(() => undefined);
    if (sixth !== undefined) {
      const r = await exchange(sixth, 'let me in');
      expect(r.reply.length).toBe(0);
    }
    await expect.poll(() => serviceStatus(pair.edge, 'five')?.refused, { timeout: 5000 }).toBe(1);
    const limit = await pair.edgeLog.waitFor('serviceLimitReached');
    expect(limit).toMatchObject({ serviceId: 'five', port, maxConnections: 5 });
    // The five keep working, byte for byte.
    for (const [i, s] of five.entries()) expect(await roundTrip(s, `still here ${i}`)).toBe(`still here ${i}`);
    expect(serviceStatus(pair.edge, 'five')).toMatchObject({ active: 5, refused: 1, maxConnections: 5 });
    // One leaves: the place is free again.
    five.pop()?.destroy();
    await expect.poll(() => serviceStatus(pair.edge, 'five')?.active, { timeout: 5000 }).toBe(4);
    const again = await echoRoundTrip(port);
    expect(again.received).toBe(again.sent);
    for (const s of five) s.destroy();
  });

  it('closes a client idle for idleTimeoutSecs (2 s) within 2–3 s, and not a busy one', async () => {
    const echo = await startEchoServer(cleanups);
    const port = await freePort();
    const pair = await startPair(cleanups, {
      listenPorts: [],
      services: [{ id: 'idle-2s', protocol: 'tcp', edgePort: port, target: { host: '127.0.0.1', port: echo.port }, proxyProtocol: 'none', idleTimeoutSecs: 2 }],
    });
    const idle = await connectFrom(port);
    expect(await roundTrip(idle, 'then silence')).toBe('then silence');
    const idleClosed = closedAfter(idle);
    const busy = await connectFrom(port);
    let busyClosed = false;
    busy.once('end', () => (busyClosed = true));
    busy.once('error', () => (busyClosed = true));
    // The busy client sends every 500 ms for 4 s; each echo must come back.
    for (let i = 0; i < 8; i++) {
      expect(await roundTrip(busy, `tick ${i}`)).toBe(`tick ${i}`);
      await delay(500);
    }
    const after = await idleClosed;
    // `after` counts from the last byte; the idle clock started at that echo.
    expect(after).toBeGreaterThanOrEqual(1900);
    expect(after).toBeLessThanOrEqual(3000);
    expect(busyClosed).toBe(false);
    expect(serviceStatus(pair.edge, 'idle-2s')).toMatchObject({ idleClosed: 1, idleTimeoutSecs: 2 });
    // The idle client's place is free again: only the busy one counts.
    await expect.poll(() => serviceStatus(pair.edge, 'idle-2s')?.active, { timeout: 2000 }).toBe(1);
    busy.destroy();
  });

  it('applies a changed service to a running edge: new limits at once, a new bind address without losing the port', async () => {
    const echo = await startEchoServer(cleanups);
    const port = await freePort();
    const service = { id: 'changing', protocol: 'tcp' as const, edgePort: port, target: { host: '127.0.0.1', port: echo.port }, proxyProtocol: 'none' as const, maxConnections: 1 };
    const pair = await startPair(cleanups, { listenPorts: [], services: [service] });
    const held = await connectFrom(port);
    expect(await roundTrip(held, 'first')).toBe('first');
    // maxConnections 1 → 3: the held client keeps its place in the same count, two more fit.
    await pair.hub.updateAllowedEdges([{ id: pair.edgeId, secret: pair.secret, bindAddress: '127.0.0.1', listenPorts: [], services: [{ ...service, maxConnections: 3 }] }]);
    await expect.poll(() => serviceStatus(pair.edge, 'changing')?.maxConnections, { timeout: 5000 }).toBe(3);
    expect(serviceStatus(pair.edge, 'changing')?.active).toBe(1);
    const more = [await connectFrom(port), await connectFrom(port)];
    for (const [i, s] of more.entries()) expect(await roundTrip(s, `more ${i}`)).toBe(`more ${i}`);
    expect(await roundTrip(held, 'still')).toBe('still');
    // A new bind address: the listener moves, the port keeps serving.
    await pair.hub.updateAllowedEdges([{ id: pair.edgeId, secret: pair.secret, bindAddress: '127.0.0.1', listenPorts: [], services: [{ ...service, maxConnections: 3, bindAddress: '0.0.0.0' }] }]);
    await expect.poll(() => serviceStatus(pair.edge, 'changing')?.bindAddress, { timeout: 5000 }).toBe('0.0.0.0');
    for (const s of [held, ...more]) s.destroy();
    await expect.poll(async () => (await echoRoundTrip(port).catch(() => ({ sent: 'x', received: 'y' }))).received.startsWith('ping'), { timeout: 5000 }).toBe(true);
    expect(pair.edgeLog.of('portBindFailed')).toHaveLength(0);
  });

  it('rejects services it cannot honour, naming the field', async () => {
    const port = await freePort();
    const { validateAllowedEdges } = await import('remoteingress-hub');
    const base = { id: 'e', secret: 'x'.repeat(24), listenPorts: [port] };
    const svc = { id: 's', protocol: 'tcp' as const, edgePort: port + 1, target: { host: '127.0.0.1', port: 80 } };
    expect(() => validateAllowedEdges([{ ...base, services: [svc, { ...svc, edgePort: port + 2 }] }], { targetHost: '127.0.0.1' })).toThrow(/services\[1\]\.id.*duplicate service id/);
    expect(() => validateAllowedEdges([{ ...base, services: [{ ...svc, edgePort: port }] }], { targetHost: '127.0.0.1' })).toThrow(/services\[0\]\.edgePort.*already served/);
    expect(() => validateAllowedEdges([{ ...base, services: [{ ...svc, maxConnections: 0 }] }], { targetHost: '127.0.0.1' })).toThrow(/services\[0\]\.maxConnections.*positive integer/);
    expect(() => validateAllowedEdges([{ ...base, services: [{ ...svc, id: 'no spaces' }] }], { targetHost: '127.0.0.1' })).toThrow(/services\[0\]\.id/);
    expect(() => validateAllowedEdges([{ ...base, services: [{ ...svc, trustProxyFrom: ['10.0.0.0/33'] }] }], { targetHost: '127.0.0.1' })).toThrow(
      /services\[0\]\.trustProxyFrom\[0\].*address or CIDR/,
    );
    const [edge] = validateAllowedEdges([{ ...base, services: [{ ...svc, trustProxyFrom: ['10.0.0.5', 'fd00::/8'] }] }], { targetHost: '127.0.0.1' });
    expect(edge?.tcp.find((p) => p.service === 's')?.trustProxyFrom).toEqual(['10.0.0.5/32', 'fd00::/8']);
    // bufferBytes: TCP only, at least what an OPEN record may carry.
    expect(() => validateAllowedEdges([{ ...base, services: [{ ...svc, bufferBytes: 1023 }] }], { targetHost: '127.0.0.1' })).toThrow(
      /services\[0\]\.bufferBytes = 1023: must be an integer from 1024/,
    );
    expect(() => validateAllowedEdges([{ ...base, services: [{ ...svc, protocol: 'udp', bufferBytes: 4096 }] }], { targetHost: '127.0.0.1' })).toThrow(
      /services\[0\]\.bufferBytes = 4096: applies to 'tcp' services only/,
    );
    const [buffered] = validateAllowedEdges([{ ...base, services: [{ ...svc, bufferBytes: 4096 }] }], { targetHost: '127.0.0.1' });
    expect(buffered?.tcp.find((p) => p.service === 's')?.bufferBytes).toBe(4096);
    // An edge with services only needs no listenPorts.
    const { listenPorts: _unused, ...withoutPorts } = base;
    expect(validateAllowedEdges([{ ...withoutPorts, services: [svc] }], { targetHost: '127.0.0.1' })[0]?.tcp).toHaveLength(1);
  });
});
