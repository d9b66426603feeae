import { spawn, fork, type ChildProcess } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import type { IEdgeConfig } from 'remoteingress-edge';
import type { IHubConfig, IHubStatus, TAllowedEdge } from 'remoteingress-hub';
import { CONNECT_TIMEOUT_MS, Cleanups, EDGE_EVENTS, EventLog, HUB_EVENTS, ROOT, delay, withTimeout } from '../e2e/helpers.js';

export * from '../e2e/helpers.js';

/**
 * Plumbing for the fault tests: hubs and edges as processes of their own (the real CLIs, or
 * the public API in a forked child with an IPC channel for status), so a test can SIGKILL or
 * SIGSTOP one side and read /proc/<pid>/fd and VmRSS of exactly that process. Every process is
 * started here and killed by its own pid in cleanup; nothing is ever killed by name.
 */

export const HUB_BIN = join(ROOT, 'packages/hub/dist/bin.js');
export const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');
const API_DAEMON = join(ROOT, 'test/faults/fixtures/api-daemon.mjs');

/** The test's own environment without any REMOTEINGRESS_* variable that could change what the CLIs do. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('REMOTEINGRESS_') && !key.startsWith('FAULT_'))), ...extra };
}

export type TExit = { code: number | null; signal: NodeJS.Signals | null };

function watchExit(child: ChildProcess): Promise<TExit> {
  return new Promise((done) => {
    if (child.exitCode !== null || child.signalCode !== null) done({ code: child.exitCode, signal: child.signalCode });
    else child.once('exit', (code, signal) => done({ code, signal }));
  });
}

/** SIGKILLs `child` (by its pid, through the handle we spawned) unless it already exited; SIGCONT first in case a test froze it. */
async function killChild(child: ChildProcess, exited: Promise<TExit>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGCONT');
  child.kill('SIGKILL');
  await withTimeout(exited, 10_000, `pid ${child.pid} to exit after SIGKILL`);
}

// ---------------------------------------------------------------------------------------------
// CLI daemons

export interface ICliDaemon {
  child: ChildProcess;
  pid: number;
  exited: Promise<TExit>;
  stdout(): string;
  stderr(): string;
  output(): string;
  /** Current length of stdout+stderr as seen so far: pass as `since` to wait only for later lines. */
  mark(): number;
  /** Waits for `pattern` in the combined output (stdout and stderr interleaved as they arrived) after offset `since`. */
  waitForLine(pattern: RegExp, what: string, options?: { since?: number; timeoutMs?: number }): Promise<RegExpExecArray>;
  /** SIGKILL, then wait for the exit. */
  kill(): Promise<void>;
}

/** Spawns `node <bin> <args>` with a clean environment; SIGKILLed (by pid) in cleanup if still running. */
export function spawnCli(cleanups: Cleanups, bin: string, args: string[], env: Record<string, string> = {}): ICliDaemon {
  const child = spawn(process.execPath, [bin, ...args], { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error(`could not spawn ${bin}`);
  let stdout = '';
  let stderr = '';
  let combined = '';
  const waiters: Array<{ pattern: RegExp; since: number; done: (match: RegExpExecArray) => void }> = [];
  const check = (): void => {
    for (const waiter of [...waiters]) {
      const match = waiter.pattern.exec(combined.slice(waiter.since));
      if (match !== null) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.done(match);
      }
    }
  };
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    combined += chunk.toString();
    check();
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    combined += chunk.toString();
    check();
  });
  const exited = watchExit(child);
  cleanups.add(`kill pid ${child.pid} (${bin})`, () => killChild(child, exited));
  const output = (): string => `--- pid ${child.pid} ${bin} output (last 6000 chars)\n${combined.slice(-6000)}`;
  return {
    child,
    pid: child.pid,
    exited,
    stdout: () => stdout,
    stderr: () => stderr,
    output,
    mark: () => combined.length,
    waitForLine(pattern, what, { since = 0, timeoutMs = CONNECT_TIMEOUT_MS } = {}) {
      const waiting = new Promise<RegExpExecArray>((done, reject) => {
        waiters.push({ pattern, since, done });
        check();
        void exited.then(({ code, signal }) => reject(new Error(`${what}: pid ${child.pid} exited (${code ?? signal}) first\n${output()}`)));
      });
      return withTimeout(waiting, timeoutMs, () => `${what}\n${output()}`);
    },
    kill: () => killChild(child, exited),
  };
}

export interface IHubCliOptions {
  edgesFile: string;
  stateDir: string;
  tunnelPort?: number;
  limits?: Record<string, number>;
  graceMs?: number;
  extraArgs?: string[];
}

/** The hub CLI on 127.0.0.1; resolves once it printed its listening line. */
export async function startHubCli(cleanups: Cleanups, options: IHubCliOptions): Promise<ICliDaemon & { tunnelPort: number; fingerprint: string }> {
  const args = [
    '--tunnel-port', String(options.tunnelPort ?? 0),
    '--bind-host', '127.0.0.1',
    '--target-host', '127.0.0.1',
    '--allowed-edges', options.edgesFile,
    '--state-dir', options.stateDir,
    '--grace-ms', String(options.graceMs ?? 500),
    ...(options.limits === undefined ? [] : ['--limits', JSON.stringify(options.limits)]),
    ...(options.extraArgs ?? []),
  ];
  const daemon = spawnCli(cleanups, HUB_BIN, args);
  const listening = await daemon.waitForLine(/hub listening on \S+:(\d+) fingerprint ([0-9a-f]{64})/, 'hub CLI start-up line');
  return Object.assign(daemon, { tunnelPort: Number(listening[1]), fingerprint: listening[2] as string });
}

export interface IEdgeCliOptions {
  token: string;
  reconnectBaseMs?: number;
  reconnectCapMs?: number;
  graceMs?: number;
}

/** The edge CLI over TLS; does not wait for anything (use waitForLine). */
export function startEdgeCli(cleanups: Cleanups, options: IEdgeCliOptions): ICliDaemon {
  return spawnCli(cleanups, EDGE_BIN, [
    '--token', options.token,
    '--transport-mode', 'tcpTls',
    '--reconnect-base-ms', String(options.reconnectBaseMs ?? 100),
    '--reconnect-cap-ms', String(options.reconnectCapMs ?? 1000),
    '--grace-ms', String(options.graceMs ?? 500),
  ]);
}

/** A regexp for the edge CLI's portsAssigned line that lists `port`. */
export function portsAssignedLine(port: number): RegExp {
  return new RegExp(`^portsAssigned .*\\btcp=(?:\\S*,)?${port}\\b`, 'm');
}

// ---------------------------------------------------------------------------------------------
// The public API in a child process

export interface IApiDaemon {
  child: ChildProcess;
  pid: number;
  log: EventLog;
  exited: Promise<TExit>;
  started: Promise<{ tunnelPort?: number; fingerprint?: string }>;
  request<T = unknown>(op: string, extra?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  kill(): Promise<void>;
}

export type TApiStatus = Record<string, unknown> & { counts: { streamOpened: number; streamClosed: number } };

/** Forks test/faults/fixtures/api-daemon.mjs running a hub or an edge; SIGKILLed by pid in cleanup. */
export function forkApiDaemon(
  cleanups: Cleanups,
  role: 'hub' | 'edge',
  config: IHubConfig | IEdgeConfig,
  options: { forwardStreams?: boolean; exposeGc?: boolean } = {},
): IApiDaemon {
  const child = fork(API_DAEMON, [], {
    env: cleanEnv({ FAULT_ROLE: role, FAULT_CONFIG: JSON.stringify(config), FAULT_FORWARD_STREAMS: options.forwardStreams === true ? '1' : '0' }),
    execArgv: options.exposeGc === true ? ['--expose-gc'] : [],
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  if (child.pid === undefined) throw new Error('could not fork the api daemon');
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-6000)));
  child.stderr?.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-6000)));
  const emitter = new EventEmitter();
  const log = new EventLog(emitter, [...(role === 'hub' ? HUB_EVENTS : EDGE_EVENTS), 'error']);
  const pending = new Map<number, { done: (value: unknown) => void; reject: (error: Error) => void }>();
  let nextId = 1;
  const exited = watchExit(child);
  let onStarted: (value: { tunnelPort?: number; fingerprint?: string }) => void = () => undefined;
  let onStartFailed: (error: Error) => void = () => undefined;
  const started = new Promise<{ tunnelPort?: number; fingerprint?: string }>((done, reject) => {
    onStarted = done;
    onStartFailed = reject;
  });
  void exited.then(({ code, signal }) => {
    const error = new Error(`${role} daemon pid ${child.pid} exited (${code ?? signal})\n${output}`);
    onStartFailed(error);
    for (const { reject } of pending.values()) reject(error);
    pending.clear();
  });
  child.on('message', (message: Record<string, unknown>) => {
    if (message.type === 'event') emitter.emit(message.name as string, message.event);
    else if (message.type === 'started') onStarted(message as { tunnelPort?: number; fingerprint?: string });
    else if (message.type === 'startFailed') onStartFailed(new Error(`${role} start failed: ${JSON.stringify(message.error)}`));
    else if (message.type === 'reply') {
      const waiter = pending.get(message.id as number);
      pending.delete(message.id as number);
      if (message.ok === true) waiter?.done(message.value);
      else waiter?.reject(new Error(`${role} request failed: ${JSON.stringify(message.error)}`));
    }
  });
  cleanups.add(`kill pid ${child.pid} (${role} api daemon)`, () => killChild(child, exited));
  return {
    child,
    pid: child.pid,
    log,
    exited,
    started: withTimeout(started, CONNECT_TIMEOUT_MS, `${role} api daemon start`),
    request<T>(op: string, extra: Record<string, unknown> = {}, timeoutMs = CONNECT_TIMEOUT_MS): Promise<T> {
      const id = nextId++;
      const reply = new Promise<T>((done, reject) => {
        pending.set(id, { done: done as (value: unknown) => void, reject });
        child.send({ id, op, ...extra });
      });
      return withTimeout(reply, timeoutMs, `${role} ${op} reply`);
    },
    kill: () => killChild(child, exited),
  };
}

export async function hubStatusOf(daemon: IApiDaemon): Promise<IHubStatus & TApiStatus> {
  return daemon.request<IHubStatus & TApiStatus>('status');
}

// ---------------------------------------------------------------------------------------------
// /proc measurements

/** Open file descriptors of `pid` (entries in /proc/<pid>/fd). */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** What the fds of `pid` point at, grouped and counted, for failure messages ("socket: 12, anon_inode:[eventfd]: 3, …"). */
export function describeFds(pid: number): string {
  const kinds = new Map<string, number>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`).replace(/\[\d+\]$/, '');
    } catch {
      continue;
    }
    kinds.set(target, (kinds.get(target) ?? 0) + 1);
  }
  return [...kinds.entries()].map(([kind, count]) => `${kind}: ${count}`).join(', ');
}

/** Resident set size of `pid` in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (match === null) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]) * 1024;
}

/** TCP sockets of `pid` by state (from /proc/<pid>/net/tcp{,6} restricted to the process's socket inodes). */
export function tcpStatesOf(pid: number): Record<string, number> {
  const names: Record<string, string> = { '01': 'ESTABLISHED', '02': 'SYN_SENT', '03': 'SYN_RECV', '04': 'FIN_WAIT1', '05': 'FIN_WAIT2', '06': 'TIME_WAIT', '07': 'CLOSE', '08': 'CLOSE_WAIT', '09': 'LAST_ACK', '0A': 'LISTEN', '0B': 'CLOSING' };
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match !== null) inodes.add(match[1] as string);
    } catch {
      // closed meanwhile
    }
  }
  const states: Record<string, number> = {};
  for (const file of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || !inodes.has(fields[9] as string)) continue;
      const state = names[fields[3] as string] ?? (fields[3] as string);
      states[state] = (states[state] ?? 0) + 1;
    }
  }
  return states;
}

/** Polls an async `condition` every 50 ms until it holds; throws with `describe()` after `timeoutMs`. */
export async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number, describe: () => string | Promise<string>): Promise<number> {
  const began = Date.now();
  for (;;) {
    if (await condition()) return Date.now() - began;
    if (Date.now() - began > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${await describe()}`);
    await delay(50);
  }
}

// ---------------------------------------------------------------------------------------------
// Traffic

/** How a connection attempt to 127.0.0.1:`port` ended: accepted, or refused (ECONNREFUSED), or another error code. */
export function probe(port: number, timeoutMs = 2_000): Promise<'connected' | 'refused' | string> {
  return new Promise((done) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => {
      socket.destroy();
      done('timeout');
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      done('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      done(error.code === 'ECONNREFUSED' ? 'refused' : (error.code ?? error.message));
    });
  });
}

/**
 * One request/response through `port` to an echo target: connect, write `size` random bytes,
 * half-close, read the echo until the server ends. Resolves true only for a byte-exact echo.
 */
export function echoOnce(port: number, size = 64, timeoutMs = 5_000): Promise<boolean> {
  const payload = randomBytes(size);
  return new Promise((done) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      done(ok);
    };
    const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.on('connect', () => socket.end(payload));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => finish(Buffer.concat(chunks).equals(payload)));
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(Buffer.concat(chunks).equals(payload)));
  });
}

export interface ILoad {
  ok: number;
  failed: number;
  /** When the last successful round trip finished (ms since the epoch; 0 = none yet). */
  lastOkAt: number;
  stop(): Promise<{ ok: number; failed: number }>;
}

/** `clients` loops of echoOnce through `port` until stop(); failures are counted and retried after 20 ms. */
export function startLoad(port: number, clients: number, size = 1024): ILoad {
  let running = true;
  const load: ILoad = {
    ok: 0,
    failed: 0,
    lastOkAt: 0,
    async stop() {
      running = false;
      await Promise.all(loops);
      return { ok: load.ok, failed: load.failed };
    },
  };
  const loop = async (): Promise<void> => {
    while (running) {
      if (await echoOnce(port, size, 3_000)) {
        load.ok += 1;
        load.lastOkAt = Date.now();
      } else {
        load.failed += 1;
        await delay(20);
      }
    }
  };
  const loops = Array.from({ length: clients }, () => loop());
  return load;
}

/**
 * A long echo transfer in two halves with a pause in between, so a test can act (update the
 * edges, stop the hub) while the stream is certainly open and mid-transfer. `pause()` resolves
 * once the first half has been written and at least `echoedBefore` bytes came back;
 * `finish()` writes the rest, half-closes and resolves with the whole reply's hash and length.
 */
export interface ITransfer {
  sent: { length: number; sha256: string };
  pause: Promise<void>;
  finish(): Promise<{ length: number; sha256: string; endedBy: 'end' | 'error'; error?: string; at: number }>;
  socket: net.Socket;
}

export async function startTransfer(port: number, totalBytes: number): Promise<ITransfer> {
  const payload = randomBytes(totalBytes);
  const half = Math.floor(totalBytes / 2);
  const socket = await new Promise<net.Socket>((done, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      done(s);
    });
    s.once('error', reject);
  });
  const hash = createHash('sha256');
  let received = 0;
  let error: string | undefined;
  let pauseDone: () => void = () => undefined;
  const pause = new Promise<void>((done) => (pauseDone = done));
  const wantBefore = Math.min(half, 256 * 1024);
  const closed = new Promise<{ length: number; sha256: string; endedBy: 'end' | 'error'; error?: string; at: number }>((done) => {
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      received += chunk.length;
      if (received >= wantBefore) pauseDone();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
    socket.on('end', () => socket.end());
    socket.on('close', () => {
      const sha256 = hash.digest('hex');
      done({ length: received, sha256, endedBy: error === undefined ? 'end' : 'error', ...(error === undefined ? {} : { error }), at: Date.now() });
    });
  });
  socket.write(payload.subarray(0, half));
  return {
    sent: { length: payload.length, sha256: createHash('sha256').update(payload).digest('hex') },
    pause: withTimeout(pause, CONNECT_TIMEOUT_MS, () => `the first ${wantBefore} bytes of the echo (got ${received})`),
    finish() {
      socket.end(payload.subarray(half));
      return withTimeout(closed, 30_000, () => `transfer to end (received ${received} of ${payload.length})`);
    },
    socket,
  };
}

/** An allowed edge on 127.0.0.1 whose ports forward to an echo target without a PROXY header. */
export function edgeEntry(id: string, secret: string, ports: number[], targetPort: number): TAllowedEdge {
  return { id, secret, bindAddress: '127.0.0.1', listenPorts: ports.map((port) => ({ port, targetPort, proxyProtocol: 'none' as const })) };
}

export function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}
