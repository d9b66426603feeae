import { createHash, randomBytes } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { V1ProxyProtocol, V2ProxyProtocol } from 'proxy-protocol-js';
import { RemoteIngressEdge, type IEdgeConfig } from 'remoteingress-edge';
import { RemoteIngressHub, encodeConnectionToken, type IHubConfig, type TAllowedEdge, type TListenPort } from 'remoteingress-hub';

/**
 * Shared plumbing for the end-to-end tests: real hubs and edges from the built packages (the
 * public API, loaded from dist, which test/unit/global-setup.ts compiles first), real sockets
 * on loopback, ephemeral ports only, and a cleanup stack every test drains in afterEach.
 */

export const ROOT = resolve(import.meta.dirname, '../..');

/** Streams in these tests are finished (or deliberately abandoned) by the time we stop: no drain is needed. */
export const STOP_GRACE_MS = 500;
/** A hub and edge on loopback connect in milliseconds; 15 s means something is stuck on a loaded 2-core box. */
export const CONNECT_TIMEOUT_MS = 15_000;

// ---------------------------------------------------------------------------------------------
// Cleanup

/** LIFO cleanup steps; `run()` never throws so one broken step does not leak the others. */
export class Cleanups {
  #steps: Array<{ label: string; step: () => unknown }> = [];

  add(label: string, step: () => unknown): void {
    this.#steps.push({ label, step });
  }

  async run(): Promise<void> {
    const steps = this.#steps.reverse();
    this.#steps = [];
    const failures: string[] = [];
    for (const { label, step } of steps) {
      try {
        await step();
      } catch (error) {
        failures.push(`${label}: ${(error as Error).message}`);
      }
    }
    if (failures.length > 0) throw new Error(`cleanup failed: ${failures.join('; ')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Small utilities

export function sha256(data: Buffer | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A secret long enough for the validator, different on every call. */
export function randomSecret(): string {
  return randomBytes(24).toString('hex');
}

/** Rejects with `message` (computed when the time is up, if a function) after `ms` unless `promise` settles first. */
export function withTimeout<T>(promise: Promise<T>, ms: number, message: string | (() => string)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${typeof message === 'function' ? message() : message}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function delay(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

/** Polls `condition` every 50 ms until it holds; throws `describe()` after `timeoutMs`. */
export async function eventually(condition: () => boolean, timeoutMs: number, describe: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${describe()}`);
    await delay(50);
  }
}

/**
 * A port the code under test can bind a moment later, for TCP and UDP, on any address.
 *
 * Taken below the kernel's ephemeral range (a port the kernel picked for us could be picked
 * again, between our probe and the daemon's bind, as the source port of some parallel test's
 * outgoing connection — that is how a CI run failed with EADDRINUSE). Below that range only an
 * explicit bind can take it, and tests bind port 0 or a port from here. Each vitest worker
 * draws from its own slice, and a port is handed out once per process, so two tests never get
 * the same one.
 */
export async function freePort(_host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
    const port = PORT_SLICE.start + Math.floor(Math.random() * PORT_SLICE.size);
    if (handedOut.has(port)) continue;
    if ((await bindable(port, 'tcp')) && (await bindable(port, 'udp'))) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`freePort: no free port in ${PORT_SLICE.start}-${PORT_SLICE.start + PORT_SLICE.size - 1} after ${PORT_ATTEMPTS} attempts`);
}

/** Ports below this are left to the system's services. */
const PORT_FLOOR = 20000;
/** Ports per vitest worker: more than any test file asks for, and 8 workers fit below 32768. */
const PORT_SLICE_SIZE = 1500;
/** Random draws before giving up (a slice is nearly all free on a test machine). */
const PORT_ATTEMPTS = 200;
const handedOut = new Set<number>();
const PORT_SLICE = (() => {
  let ephemeralLow = 32768;
  try {
    ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || ephemeralLow;
  } catch {
    // not Linux: the IANA ephemeral range starts at 49152, above ours anyway
  }
  const slices = Math.max(1, Math.floor((ephemeralLow - PORT_FLOOR) / PORT_SLICE_SIZE));
  const worker = Number(process.env.VITEST_POOL_ID ?? process.pid);
  return { start: PORT_FLOOR + (worker % slices) * PORT_SLICE_SIZE, size: PORT_SLICE_SIZE };
})();

/** Whether `port` can be bound for `protocol` on the wildcard address right now. */
function bindable(port: number, protocol: 'tcp' | 'udp'): Promise<boolean> {
  return new Promise((done) => {
    if (protocol === 'tcp') {
      const probe = net.createServer();
      probe.once('error', () => done(false));
      probe.listen(port, '0.0.0.0', () => probe.close(() => done(true)));
    } else {
      const probe = dgram.createSocket('udp4');
      probe.once('error', () => done(false));
      probe.bind(port, '0.0.0.0', () => probe.close(() => done(true)));
    }
  });
}

/** A fresh temp directory, removed by `cleanups`. */
export async function tempDir(cleanups: Cleanups, prefix = 'ri-e2e-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  cleanups.add(`rm ${dir}`, () => rm(dir, { recursive: true, force: true }));
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Event recording

export interface IRecordedEvent {
  name: string;
  event: Record<string, unknown>;
  at: number;
}

/**
 * Records the named events of an emitter from the moment it is created, so a test can wait
 * for an event that may already have fired (no race between acting and listening).
 */
export class EventLog {
  readonly events: IRecordedEvent[] = [];
  #waiters: Array<{ name: string; match: (event: Record<string, unknown>) => boolean; done: (event: Record<string, unknown>) => void }> = [];

  constructor(emitter: EventEmitter, names: readonly string[]) {
    for (const name of names) {
      emitter.on(name, (event: Record<string, unknown>) => {
        this.events.push({ name, event, at: Date.now() });
        this.#waiters = this.#waiters.filter((waiter) => {
          if (waiter.name !== name || !waiter.match(event)) return true;
          waiter.done(event);
          return false;
        });
      });
    }
  }

  of(name: string, match: (event: Record<string, unknown>) => boolean = () => true): Array<Record<string, unknown>> {
    return this.events.filter((recorded) => recorded.name === name && match(recorded.event)).map((recorded) => recorded.event);
  }

  /** Resolves with the first recorded (past or future) `name` event that `match`es, counting from index `since`. */
  waitFor(name: string, match: (event: Record<string, unknown>) => boolean = () => true, timeoutMs = CONNECT_TIMEOUT_MS, since = 0): Promise<Record<string, unknown>> {
    const past = this.events.slice(since).find((recorded) => recorded.name === name && match(recorded.event));
    if (past !== undefined) return Promise.resolve(past.event);
    const waiting = new Promise<Record<string, unknown>>((done) => {
      this.#waiters.push({ name, match, done });
    });
    return withTimeout(waiting, timeoutMs, () => `no ${name} event matching the test's condition; events so far:\n${this.describe()}`);
  }

  describe(): string {
    return this.events.map(({ name, event }) => `  ${name} ${JSON.stringify(event)}`).join('\n') || '  (none)';
  }
}

export const HUB_EVENTS = ['edgeConnected', 'edgeDisconnected', 'authFailed', 'streamOpened', 'streamClosed', 'eventsDropped', 'crashRecovered', 'log'] as const;
export const EDGE_EVENTS = ['tunnelConnected', 'tunnelDisconnected', 'portsAssigned', 'portBindFailed', 'streamOpened', 'streamClosed', 'eventsDropped', 'crashRecovered', 'log', 'transportChanged', 'firewallConfigUpdated', 'firewallConfigRejected', 'firewallUnavailable', 'serviceLimitReached'] as const;

// ---------------------------------------------------------------------------------------------
// Hub and edge

export interface IStartedHub {
  hub: RemoteIngressHub;
  log: EventLog;
  tunnelPort: number;
  fingerprint: string;
  stateDir: string;
}

/** Starts a hub on 127.0.0.1 with an ephemeral tunnel port; stopped by `cleanups`. */
export async function startHub(cleanups: Cleanups, config: Partial<IHubConfig> = {}): Promise<IStartedHub> {
  const stateDir = config.stateDir ?? (await tempDir(cleanups, 'ri-e2e-hub-'));
  const hub = new RemoteIngressHub();
  const log = new EventLog(hub, HUB_EVENTS);
  // An 'error' event without a listener would throw; record it instead and let assertions decide.
  hub.on('error', (error) => log.events.push({ name: 'error', event: { message: error.message }, at: Date.now() }));
  cleanups.add('hub.stop', () => hub.stop({ graceMs: STOP_GRACE_MS }));
  const started = await hub.start({ tunnelPort: 0, bindHost: '127.0.0.1', targetHost: '127.0.0.1', ...config, stateDir });
  return { hub, log, tunnelPort: started.tunnelPort, fingerprint: started.fingerprint, stateDir };
}

export interface IStartedEdge {
  edge: RemoteIngressEdge;
  log: EventLog;
}

/**
 * Starts an edge (stopped by `cleanups`). With `waitForTcpPorts`, resolves only once a
 * `portsAssigned` event lists every one of them (and fails fast, naming the failure, if the
 * edge reports it could not bind one).
 */
export async function startEdge(cleanups: Cleanups, config: IEdgeConfig, waitForTcpPorts: number[] | undefined = undefined): Promise<IStartedEdge> {
  const edge = new RemoteIngressEdge();
  const log = new EventLog(edge, EDGE_EVENTS);
  edge.on('error', (error) => log.events.push({ name: 'error', event: { message: error.message }, at: Date.now() }));
  cleanups.add('edge.stop', () => edge.stop({ graceMs: STOP_GRACE_MS }));
  await edge.start(config);
  if (waitForTcpPorts !== undefined) {
    const assigned = await log.waitFor('portsAssigned', (event) => {
      const tcp = event.tcp as number[];
      const failed = event.failed as unknown[];
      return failed.length > 0 || waitForTcpPorts.every((port) => tcp.includes(port));
    });
    if ((assigned.failed as unknown[]).length > 0) throw new Error(`the edge could not bind its ports: ${JSON.stringify(assigned.failed)}`);
  }
  return { edge, log };
}

export interface IPair extends IStartedHub {
  edge: RemoteIngressEdge;
  edgeLog: EventLog;
  edgeId: string;
  secret: string;
  token: string;
}

export interface IPairOptions {
  edgeId?: string;
  /** The edge's ports (each a free port from `freePort()`, as the caller must know them to connect). */
  listenPorts: Array<Exclude<TListenPort, number>>;
  /** Named services of the edge (their TCP edge ports are waited for like listen ports). */
  services?: TAllowedEdge['services'];
  /** More allowed edges on the same hub (not started). */
  otherEdges?: TAllowedEdge[];
  hub?: Partial<IHubConfig>;
  /** Default `tcpTls`. */
  transportMode?: 'tcpTls' | 'quic' | 'quicWithFallback';
}

/** A hub with one allowed edge, and that edge started from a token, connected, with its ports bound. */
export async function startPair(cleanups: Cleanups, options: IPairOptions): Promise<IPair> {
  const edgeId = options.edgeId ?? 'edge-1';
  const secret = randomSecret();
  const allowed: TAllowedEdge = { id: edgeId, secret, bindAddress: '127.0.0.1', listenPorts: options.listenPorts, ...(options.services ? { services: options.services } : {}) };
  const hub = await startHub(cleanups, { ...options.hub, allowedEdges: [allowed, ...(options.otherEdges ?? [])] });
  const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: hub.tunnelPort, edgeId, secret, hubFingerprint: hub.fingerprint });
  const { edge, log: edgeLog } = await startEdge(
    cleanups,
    { token, transportMode: options.transportMode ?? 'tcpTls' },
    [...options.listenPorts.map((entry) => entry.port), ...(options.services ?? []).filter((s) => s.protocol === 'tcp').map((s) => s.edgePort)],
  );
  return { ...hub, edge, edgeLog, edgeId, secret, token };
}

// ---------------------------------------------------------------------------------------------
// Targets

export interface IServer {
  server: net.Server;
  port: number;
  close(): Promise<void>;
}

/** Listens on 127.0.0.1:0; `close()` destroys live connections so it never waits on a client. */
export async function listen(cleanups: Cleanups, onConnection: (socket: net.Socket) => void, host = '127.0.0.1'): Promise<IServer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // A reset from the tunnel side must not become an uncaught exception in the test process.
    socket.on('error', () => undefined);
    onConnection(socket);
  });
  await new Promise<void>((done, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => done());
  });
  const port = (server.address() as net.AddressInfo).port;
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= new Promise<void>((done) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => done());
    });
    return closing;
  };
  cleanups.add(`close server :${port}`, close);
  return { server, port, close };
}

/** Echoes every byte back; half-close aware (the reply side ends after the request side ended and everything was written). */
export function startEchoServer(cleanups: Cleanups): Promise<IServer> {
  return listen(cleanups, (socket) => socket.pipe(socket));
}

export interface IProxyConnection {
  socket: net.Socket;
  version: 'v1' | 'v2';
  /** The first chunk the target read: the header must be whole in it. */
  firstChunk: Buffer;
  header: Buffer;
  source: { address: string; port: number };
  destination: { address: string; port: number };
  /** Bytes after the header (echoed back as they arrive). */
  payload: Buffer;
}

export interface IProxyTarget extends IServer {
  connections: IProxyConnection[];
  /** Resolves with the n-th (0-based) connection once its header has been parsed. */
  connection(index: number): Promise<IProxyConnection>;
  /** Errors from header parsing (a test fails on any). */
  errors: string[];
}

function ipv4(address: readonly number[]): string {
  return address.join('.');
}

/**
 * A target that reads a PROXY header (v1 or v2), has the independent `proxy-protocol-js`
 * parser decode exactly the header bytes, records what it saw, and then echoes the payload.
 */
export async function startProxyTarget(cleanups: Cleanups, version: 'v1' | 'v2'): Promise<IProxyTarget> {
  const connections: IProxyConnection[] = [];
  const errors: string[] = [];
  const waiters = new Map<number, (connection: IProxyConnection) => void>();
  let accepted = 0;
  const server = await listen(cleanups, (socket) => {
    const index = accepted++;
    let buffered = Buffer.alloc(0);
    let firstChunk: Buffer | undefined;
    let connection: IProxyConnection | undefined;
    const fail = (problem: string): void => {
      errors.push(`connection ${index}: ${problem}`);
      socket.destroy();
    };
    socket.on('data', (chunk: Buffer) => {
      if (connection !== undefined) {
        connection.payload = Buffer.concat([connection.payload, chunk]);
        socket.write(chunk);
        return;
      }
      firstChunk ??= chunk;
      buffered = Buffer.concat([buffered, chunk]);
      let headerLength: number;
      if (version === 'v1') {
        const end = buffered.indexOf('\r\n');
        if (end === -1) {
          if (buffered.length > 107) fail(`no CRLF within 107 bytes: ${JSON.stringify(buffered.toString('latin1'))}`);
          return;
        }
        headerLength = end + 2;
      } else {
        if (buffered.length < 16) return;
        headerLength = 16 + buffered.readUInt16BE(14);
        if (buffered.length < headerLength) return;
      }
      const header = buffered.subarray(0, headerLength);
      const rest = buffered.subarray(headerLength);
      try {
        let source: IProxyConnection['source'];
        let destination: IProxyConnection['destination'];
        if (version === 'v1') {
          const parsed = V1ProxyProtocol.parse(header.toString('latin1'));
          source = { address: parsed.source.ipAddress, port: parsed.source.port };
          destination = { address: parsed.destination.ipAddress, port: parsed.destination.port };
        } else {
          ({ source, destination } = parseProxyV2(header));
        }
        connection = { socket, version, firstChunk, header: Buffer.from(header), source, destination, payload: Buffer.from(rest) };
      } catch (error) {
        fail(`proxy-protocol-js rejected ${JSON.stringify(header.toString('latin1'))}: ${(error as { message?: string }).message}`);
        return;
      }
      connections[index] = connection;
      waiters.get(index)?.(connection);
      if (rest.length > 0) socket.write(rest);
    });
    socket.on('end', () => socket.end());
  });
  return {
    ...server,
    connections,
    errors,
    connection(index: number) {
      const existing = connections[index];
      if (existing !== undefined) return Promise.resolve(existing);
      return withTimeout(
        new Promise<IProxyConnection>((done) => waiters.set(index, done)),
        CONNECT_TIMEOUT_MS,
        () => `PROXY target connection ${index} (parse errors: ${errors.join('; ') || 'none'})`,
      );
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Clients

/** Connects to 127.0.0.1:`port`, optionally from `localAddress` (any 127/8 address works on Linux loopback). */
export function connectFrom(port: number, localAddress?: string, host = '127.0.0.1'): Promise<net.Socket> {
  return new Promise((done, reject) => {
    const socket = net.connect({ host, port, allowHalfOpen: true, ...(localAddress === undefined ? {} : { localAddress }) });
    socket.once('connect', () => {
      socket.off('error', reject);
      // An RST can arrive before the caller attaches its own listener; without one Node would
      // throw it as an uncaught exception. Callers still see the error through 'close'.
      socket.on('error', () => {});
      done(socket);
    });
    socket.once('error', reject);
  });
}

export interface IExchange {
  reply: Buffer;
  /** How the connection ended for the client. */
  ended: 'end' | 'error';
  error?: NodeJS.ErrnoException;
}

/**
 * Writes `request`, half-closes, and collects the reply until the server ends (or the
 * connection errors). Never rejects: the caller checks how it ended.
 */
export function exchange(socket: net.Socket, request: Buffer | string | undefined): Promise<IExchange> {
  return new Promise((done) => {
    const chunks: Buffer[] = [];
    let error: NodeJS.ErrnoException | undefined;
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('error', (err) => {
      error = err;
    });
    socket.once('close', () => {
      const reply = Buffer.concat(chunks);
      done(error === undefined ? { reply, ended: 'end' } : { reply, ended: 'error', error });
    });
    socket.once('end', () => {
      // Our write side may still be open if the caller did not end it; the reply is complete.
      socket.end();
    });
    if (request !== undefined) socket.end(request);
  });
}

/** Sends a line through the tunnel to an echo target and returns what came back. */
export async function echoRoundTrip(port: number, text = `ping ${randomBytes(4).toString('hex')}`): Promise<{ sent: string; received: string }> {
  const socket = await connectFrom(port);
  const result = await withTimeout(exchange(socket, text), CONNECT_TIMEOUT_MS, `echo round trip through port ${port}`);
  return { sent: text, received: result.reply.toString('utf8') };
}

/**
 * One client attempt that never throws: the reset may come before Node even reports the
 * connection as established, so connecting, writing and reading are one step here.
 */
export function attempt(port: number, request: string | undefined): Promise<{ reply: Buffer; error: string | undefined }> {
  return new Promise((done) => {
    const chunks: Buffer[] = [];
    let error: string | undefined;
    const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }, () => {
      if (request !== undefined) socket.end(request);
    });
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => socket.end());
    socket.on('error', (err: NodeJS.ErrnoException) => {
      error = err.code ?? err.message;
    });
    socket.on('close', () => done({ reply: Buffer.concat(chunks), error }));
  });
}

/** An IPv4 PROXY v2 header parsed by proxy-protocol-js (an independent parser), addresses dotted. */
export function parseProxyV2(header: Buffer): {
  parsed: ReturnType<typeof V2ProxyProtocol.parse>;
  source: { address: string; port: number };
  destination: { address: string; port: number };
} {
  const parsed = V2ProxyProtocol.parse(new Uint8Array(header));
  const address = parsed.proxyAddress as unknown as {
    sourceAddress: { address: number[] };
    sourcePort: number;
    destinationAddress: { address: number[] };
    destinationPort: number;
  };
  return {
    parsed,
    source: { address: ipv4(address.sourceAddress.address), port: address.sourcePort },
    destination: { address: ipv4(address.destinationAddress.address), port: address.destinationPort },
  };
}
