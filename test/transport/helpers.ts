import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { RemoteIngressEdge, type IEdgeCommonConfig, type IEdgeStatus, type TTransportMode } from 'remoteingress-edge';
import { RemoteIngressHub, encodeConnectionToken, type IHubConfig, type IHubEdgeStatus, type IServiceConfig, type TAllowedEdge, type TListenPort } from 'remoteingress-hub';
import { type Cleanups, EventLog, STOP_GRACE_MS, freePort, parseProxyV2, randomSecret, sha256, tempDir, withTimeout } from '../e2e/helpers.js';

/**
 * Plumbing for the transport tests (UDP flows, QUIC, fallback): a hub and edge pair with UDP
 * ports and a chosen transport, a UDP target that checks the PROXY v2 DGRAM header of every
 * flow with the independent `proxy-protocol-js` parser, and UDP clients.
 */

export const EDGE_TRANSPORT_EVENTS = [
  'tunnelConnected',
  'tunnelDisconnected',
  'transportChanged',
  'portsAssigned',
  'portBindFailed',
  'streamOpened',
  'streamClosed',
  'udpFlowsExpired',
  'eventsDropped',
  'crashRecovered',
  'log',
] as const;
export const HUB_TRANSPORT_EVENTS = ['edgeConnected', 'edgeDisconnected', 'authFailed', 'streamOpened', 'streamClosed', 'udpFlowFailed', 'eventsDropped', 'crashRecovered', 'log'] as const;

export type TPortSpec = Exclude<TListenPort, number>;

export interface ITransportPair {
  hub: RemoteIngressHub;
  /** Hub events, including the transport ones (`udpFlowFailed`). */
  log: EventLog;
  tunnelPort: number;
  fingerprint: string;
  edge: RemoteIngressEdge;
  /** Edge events, including `transportChanged` and `udpFlowsExpired`, recorded from before start. */
  edgeLog: EventLog;
  edgeId: string;
}

export interface ITransportPairOptions {
  transportMode: TTransportMode;
  tcp?: TPortSpec[];
  udp?: TPortSpec[];
  /** Named services of the edge (bound before the pair counts as started). */
  services?: IServiceConfig[];
  hub?: Partial<IHubConfig>;
  edge?: Partial<IEdgeCommonConfig>;
}

/** A hub with one allowed edge on 127.0.0.1, the edge connected over `transportMode` with every TCP and UDP port bound. */
export async function startTransportPair(cleanups: Cleanups, options: ITransportPairOptions): Promise<ITransportPair> {
  const edgeId = 'edge-t';
  const secret = randomSecret();
  const tcp = options.tcp ?? [];
  const udp = options.udp ?? [];
  const services = options.services ?? [];
  const allowed: TAllowedEdge = { id: edgeId, secret, bindAddress: '127.0.0.1', listenPorts: tcp, listenPortsUdp: udp, ...(services.length > 0 ? { services } : {}) };

  const stateDir = await tempDir(cleanups, 'ri-transport-hub-');
  const hub = new RemoteIngressHub();
  const log = new EventLog(hub, HUB_TRANSPORT_EVENTS);
  hub.on('error', (error) => log.events.push({ name: 'error', event: { message: error.message }, at: Date.now() }));
  cleanups.add('hub.stop', () => hub.stop({ graceMs: STOP_GRACE_MS }));
  const started = await hub.start({ tunnelPort: 0, bindHost: '127.0.0.1', targetHost: '127.0.0.1', ...options.hub, stateDir, allowedEdges: [allowed] });

  const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: started.tunnelPort, edgeId, secret, hubFingerprint: started.fingerprint });
  const edge = new RemoteIngressEdge();
  const edgeLog = new EventLog(edge, EDGE_TRANSPORT_EVENTS);
  edge.on('error', (error) => edgeLog.events.push({ name: 'error', event: { message: error.message }, at: Date.now() }));
  cleanups.add('edge.stop', () => edge.stop({ graceMs: STOP_GRACE_MS }));
  await edge.start({ ...options.edge, token, transportMode: options.transportMode });
  const assigned = await edgeLog.waitFor('portsAssigned', (event) => {
    const failed = event.failed as unknown[];
    const bound = (list: unknown, port: number) => (list as number[]).includes(port);
    return (
      failed.length > 0 ||
      (tcp.every((p) => bound(event.tcp, p.port)) &&
        udp.every((p) => bound(event.udp, p.port)) &&
        services.every((s) => bound(s.protocol === 'udp' ? event.udp : event.tcp, s.edgePort)))
    );
  });
  if ((assigned.failed as unknown[]).length > 0) throw new Error(`the edge could not bind its ports: ${JSON.stringify(assigned.failed)}`);
  return { hub, log, tunnelPort: started.tunnelPort, fingerprint: started.fingerprint, edge, edgeLog, edgeId };
}

/** The hub's status entry for the (single) edge. */
export function hubEdgeStatus(pair: ITransportPair): IHubEdgeStatusT | undefined {
  return pair.hub.getStatus().edges[0] as IHubEdgeStatusT | undefined;
}

export interface IUdpCounters {
  flows: number;
  datagramsIn: number;
  datagramsOut: number;
  dropped: number;
}
export type IHubEdgeStatusT = IHubEdgeStatus & { udp: IUdpCounters; datagramsDropped: number };
export type IEdgeStatusT = IEdgeStatus & { udp: IUdpCounters; transportReason: string | null; quicProbe: unknown };

export function edgeStatus(pair: ITransportPair): IEdgeStatusT {
  return pair.edge.getStatus() as IEdgeStatusT;
}

/** A port free for UDP (and TCP), below the ephemeral range: see freePort. */
export function freeUdpPort(): Promise<number> {
  // Free for UDP and TCP alike, below the ephemeral range: see freePort.
  return freePort();
}

// ---------------------------------------------------------------------------------------------
// UDP target

export interface IUdpFlowAtTarget {
  /** The hub's upstream socket for this flow, as the target sees it. */
  remote: string;
  /** Parsed PROXY v2 header of the flow's first datagram, if it had one. */
  header?: { command: number; transport: number; family: number; famByte: number; source: { address: string; port: number }; destination: { address: string; port: number }; length: number };
  /** How many datagrams from this remote were a PROXY v2 header alone (separateDatagram: exactly 1). */
  headers: number;
  /** How many payload datagrams came with a PROXY v2 header in front (everyDatagram: all of them). */
  prepended: number;
  /** sha256 of every payload datagram (after the header), in arrival order. */
  payloadHashes: string[];
  firstAt: number;
}

export interface IUdpTarget {
  port: number;
  flows: Map<string, IUdpFlowAtTarget>;
  /** Problems seen (header not first, parser rejections, …); a test fails on any. */
  errors: string[];
  close(): Promise<void>;
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/**
 * A UDP echo target on 127.0.0.1. With `proxy`, each new upstream address (one per flow at
 * the hub) must open with one datagram holding exactly a PROXY v2 header, which
 * `proxy-protocol-js` parses; the header is recorded, never echoed. Every other datagram is
 * echoed to where it came from and its hash recorded under its flow.
 */
export async function startUdpTarget(cleanups: Cleanups, proxy: boolean): Promise<IUdpTarget> {
  const socket = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 * 1024 * 1024, sendBufferSize: 4 * 1024 * 1024 });
  const flows = new Map<string, IUdpFlowAtTarget>();
  const errors: string[] = [];
  socket.on('message', (datagram, rinfo) => {
    const remote = `${rinfo.address}:${rinfo.port}`;
    let flow = flows.get(remote);
    // A PROXY v2 header alone (mode separateDatagram) or before the payload (everyDatagram,
    // firstDatagram): its declared length says where the payload starts.
    const signed = datagram.length >= 16 && datagram.subarray(0, 12).equals(V2_SIGNATURE);
    const declared = signed ? 16 + datagram.readUInt16BE(14) : 0;
    const prepended = signed && datagram.length > declared;
    const headerBytes = signed ? datagram.subarray(0, Math.min(declared, datagram.length)) : undefined;
    const message = prepended ? datagram.subarray(declared) : datagram;
    let parsedHeader: IUdpFlowAtTarget['header'] | undefined;
    if (proxy && headerBytes !== undefined) {
      try {
        const { parsed, source, destination } = parseProxyV2(Buffer.from(headerBytes));
        if (!prepended && declared !== datagram.length) errors.push(`${remote}: header datagram is ${datagram.length} B but declares ${declared} B`);
        parsedHeader = { command: parsed.command, transport: parsed.transportProtocol, family: parsed.addressFamilyType, famByte: headerBytes[13] ?? -1, source, destination, length: headerBytes.length };
      } catch (error) {
        errors.push(`${remote}: proxy-protocol-js rejected ${Buffer.from(headerBytes).toString('hex')}: ${(error as { message?: string }).message}`);
      }
    }
    const sameClient = (a: IUdpFlowAtTarget['header'], b: IUdpFlowAtTarget['header']) => a !== undefined && b !== undefined && a.source.address === b.source.address && a.source.port === b.source.port;
    // A new flow whose upstream socket got the port of an earlier, closed one (the kernel reuses
    // ephemeral ports): a separate header datagram, or a prepended one naming another client,
    // marks it; keep the old record under another key and start a new one.
    const newFlowOnReusedPort = flow !== undefined && proxy && signed && (prepended ? !sameClient(flow.header, parsedHeader) : flow.headers > 0);
    if (flow !== undefined && newFlowOnReusedPort) {
      flows.set(`${remote}#${flows.size}`, flow);
      flows.delete(remote);
      flow = undefined;
    }
    if (flow === undefined) {
      flow = { remote, headers: 0, prepended: 0, payloadHashes: [], firstAt: Date.now() };
      flows.set(remote, flow);
      if (proxy) {
        if (!signed) errors.push(`${remote}: first datagram (${datagram.length} B) carries no PROXY v2 header`);
        else flow.header = parsedHeader;
      }
    }
    if (signed && !proxy) errors.push(`${remote}: PROXY header on a port without PROXY protocol`);
    if (signed && !prepended) {
      flow.headers += 1;
      return;
    }
    if (prepended) flow.prepended += 1;
    flow.payloadHashes.push(sha256(message));
    socket.send(message, rinfo.port, rinfo.address);
  });
  await new Promise<void>((done, reject) => {
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => done());
  });
  const port = socket.address().port;
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => (closed ??= new Promise<void>((done) => socket.close(() => done())));
  cleanups.add(`close udp target :${port}`, close);
  return { port, flows, errors, close };
}

// ---------------------------------------------------------------------------------------------
// UDP clients

export interface IUdpClient {
  socket: dgram.Socket;
  port: number;
  send(payload: Buffer): void;
  /** The next datagram that arrives (or one already queued), or undefined after `ms`. */
  next(ms: number): Promise<Buffer | undefined>;
  close(): Promise<void>;
}

/** A UDP socket bound on `address` (default 127.0.0.1) talking to `to`:`port` (default 127.0.0.1); closed by `cleanups`. */
export async function udpClient(cleanups: Cleanups, port: number, address = '127.0.0.1', to = '127.0.0.1'): Promise<IUdpClient> {
  const socket = dgram.createSocket({ type: 'udp4', recvBufferSize: 1024 * 1024 });
  const queue: Buffer[] = [];
  let waiting: ((reply: Buffer) => void) | undefined;
  socket.on('message', (message) => {
    const take = waiting;
    waiting = undefined;
    if (take !== undefined) take(message);
    else queue.push(message);
  });
  socket.on('error', () => undefined);
  await new Promise<void>((done, reject) => {
    socket.once('error', reject);
    socket.bind(0, address, () => done());
  });
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => (closed ??= new Promise<void>((done) => socket.close(() => done())));
  cleanups.add('close udp client', close);
  return {
    socket,
    port: socket.address().port,
    close,
    send(payload) {
      socket.send(payload, port, to);
    },
    next(ms) {
      const queued = queue.shift();
      if (queued !== undefined) return Promise.resolve(queued);
      return new Promise((done) => {
        const timer = setTimeout(() => {
          waiting = undefined;
          done(undefined);
        }, ms);
        waiting = (reply) => {
          clearTimeout(timer);
          done(reply);
        };
      });
    },
  };
}

/** Random payload of `size` bytes. */
export function payload(size: number): Buffer {
  return randomBytes(size);
}

/** Runs `work` over `items` with at most `limit` in flight. */
export async function pool<T, R>(items: readonly T[], limit: number, work: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T, index);
    }
  });
  await Promise.all(runners);
  return results;
}

export { withTimeout };

/**
 * A UDP client doing request/reply echoes: each reply must equal its request byte for byte.
 * A request with no reply within `timeoutMs` is sent once more (UDP may lose a datagram under
 * load, even on loopback); the retry is counted. A reply equal to an earlier request that was
 * retried is a late duplicate (counted, not an error); any other reply is a mismatch.
 */
export class EchoClient {
  retries = 0;
  failures = 0;
  lateDuplicates = 0;
  readonly mismatches: string[] = [];
  /** sha256 of every datagram sent, retries included. */
  readonly sentHashes: string[] = [];
  readonly #retried = new Set<string>();

  constructor(
    readonly client: IUdpClient,
    readonly timeoutMs: number,
  ) {}

  get port(): number {
    return this.client.port;
  }

  async echo(request: Buffer): Promise<boolean> {
    const hash = sha256(request);
    for (let attempt = 0; attempt < 2; attempt++) {
      this.client.send(request);
      this.sentHashes.push(hash);
      const deadline = Date.now() + this.timeoutMs;
      for (;;) {
        const left = deadline - Date.now();
        const reply = left > 0 ? await this.client.next(left) : undefined;
        if (reply === undefined) break;
        if (reply.equals(request)) return true;
        const replyHash = sha256(reply);
        if (this.#retried.has(replyHash)) this.lateDuplicates += 1;
        else this.mismatches.push(`client :${this.port}: got ${reply.length} B (sha256 ${replyHash.slice(0, 12)}) while waiting for the echo of ${request.length} B (sha256 ${hash.slice(0, 12)})`);
      }
      this.#retried.add(hash);
      if (attempt === 0) {
        this.retries += 1;
        // Losses come in bursts (a socket queue overflowed because many clients sent at once);
        // a jittered pause keeps the retries of one burst from overflowing it again.
        await new Promise((done) => setTimeout(done, Math.floor(Math.random() * this.timeoutMs)));
      }
    }
    this.failures += 1;
    return false;
  }
}

/**
 * Datagrams the kernel dropped at UDP sockets bound to 127.0.0.1:`port` (full receive queue),
 * from /proc/net/udp (this network namespace). Attributes loss to a socket buffer rather than
 * to the code under test.
 */
export function kernelUdpDrops(ports: Iterable<number>): Map<number, number> {
  const wanted = new Set(ports);
  const out = new Map<number, number>();
  const lines: string[] = [];
  for (const file of ['/proc/net/udp', '/proc/net/udp6']) {
    try {
      lines.push(...readFileSync(file, 'utf8').split('\n').slice(1));
    } catch {
      // No IPv6, or no procfs: nothing to attribute.
    }
  }
  for (const line of lines) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 13) continue;
    const local = fields[1] ?? '';
    const port = Number.parseInt(local.split(':').pop() ?? '', 16);
    if (!wanted.has(port)) continue;
    out.set(port, (out.get(port) ?? 0) + Number(fields[fields.length - 1]));
  }
  return out;
}

/** Sum of kernel drops over `ports`. */
export function totalKernelDrops(ports: Iterable<number>): number {
  let sum = 0;
  for (const value of kernelUdpDrops(ports).values()) sum += value;
  return sum;
}
