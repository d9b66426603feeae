/**
 * `remoteingress-hub status` and `remoteingress-edge status`: ask a running daemon's admin
 * endpoint for `/status` and print what a person scans first (`--json` prints the document).
 */
import { adminUrl, parseAdminListen } from './admin.js';
import { flagOrEnv, usageError, type ICommand } from './cli.js';
import { TunnelError } from './errors.js';

/** A daemon on loopback answers in milliseconds; 5 s means it is wedged or it is not ours. */
const STATUS_TIMEOUT_MS = 5000;

type TRecord = Record<string, unknown>;
const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const str = (v: unknown, fallback = '-'): string => (typeof v === 'string' && v !== '' ? v : typeof v === 'number' ? String(v) : fallback);
const list = (v: unknown): TRecord[] => (Array.isArray(v) ? (v as TRecord[]) : []);
const rec = (v: unknown): TRecord => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as TRecord) : {});

/** 1536 → "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Milliseconds → "3d4h", "2h5m", "4m12s", "9s". */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const [d, h, m] = [Math.floor(s / 86400), Math.floor((s % 86400) / 3600), Math.floor((s % 3600) / 60)];
  if (d > 0) return `${d}d${h}h`;
  if (h > 0) return `${h}h${m}m`;
  if (m > 0) return `${m}m${s % 60}s`;
  return `${s}s`;
}

/** Columns padded to their widest cell; numbers right-aligned. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const numeric = headers.map((_, i) => rows.length > 0 && rows.every((r) => /^[\d.]+( \w+)?$|^-$/.test(r[i] ?? '')));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (numeric[i] ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

function since(ms: unknown, now: number): string {
  return typeof ms === 'number' && ms > 0 ? formatDuration(now - ms) : '-';
}

function rtt(ms: unknown): string {
  return typeof ms === 'number' && ms > 0 ? `${ms.toFixed(2)} ms` : '-';
}

/** The hub's status as text: a summary line, the edges connected, the edges it dials. */
export function renderHubStatus(status: TRecord, now = Date.now()): string {
  const edges = list(status.edges);
  const out = [
    `hub ${status.running === true ? 'running' : 'stopped'}  tunnel port ${str(status.tunnelPort)}  fingerprint ${str(status.fingerprint)}`,
    `allowed edges ${num(status.allowedEdges)}  connected ${edges.length}`,
  ];
  const pending = rec(status.pendingHandshakes);
  const failed = Object.entries(rec(rec(status.handshakes).failed));
  if (failed.length > 0 || num(pending.tls) + num(pending.quic) > 0) {
    out.push(
      `handshakes pending ${num(pending.tls)} TLS / ${num(pending.quic)} QUIC; failed ${failed.length === 0 ? 'none' : failed.map(([k, v]) => `${k} ${num(v)}`).join(', ')}`,
    );
  }
  out.push('');
  // Older tunnels of an edge still finishing their streams (replaced by its newer one): a
  // column only while some edge has any.
  const draining = edges.some((e) => num(e.drainingTunnels) > 0);
  out.push(
    edges.length === 0
      ? 'no edge connected'
      : formatTable(
          ['EDGE', 'TRANSPORT', 'ADDRESS', 'UP', 'STREAMS', 'TOTAL', 'IN', 'OUT', 'RTT', 'UDP FLOWS', ...(draining ? ['DRAINING'] : [])],
          edges.map((e) => [
            str(e.edgeId),
            str(e.transport),
            `${str(e.remoteAddress)}:${str(e.remotePort)}`,
            since(e.connectedSince, now),
            String(num(e.openStreams)),
            String(num(e.streamsTotal)),
            formatBytes(num(e.bytesIn)),
            formatBytes(num(e.bytesOut)),
            rtt(e.rttMs),
            String(num(rec(e.udp).flows)),
            ...(draining ? [String(num(e.drainingTunnels))] : []),
          ]),
        ),
  );
  const dialing = list(status.dialing);
  if (dialing.length > 0) {
    out.push('');
    out.push(
      formatTable(
        ['DIALED EDGE', 'ADDRESS', 'STATE', 'FAILURES', 'LAST ERROR'],
        dialing.map((d) => [str(d.edgeId), str(d.address), str(d.state), String(num(d.attempts)), str(rec(d.lastError).message)]),
      ),
    );
  }
  return out.join('\n');
}

/** The edge's status as text: the tunnel, then its services. */
export function renderEdgeStatus(status: TRecord, now = Date.now()): string {
  const state = str(status.state);
  const out: string[] = [];
  const listen = rec(status.listenForHub);
  const hub = str(status.hubAddress, 'no hub yet');
  out.push(
    state === 'connected'
      ? `edge connected to ${hub} over ${str(status.transport)} for ${since(status.connectedSince, now)}  rtt ${rtt(status.rttMs)}`
      : `edge ${state}${num(status.attempts) > 0 ? ` (${num(status.attempts)} failed attempts` + (status.lastError ? `, last: ${str(rec(status.lastError).message)})` : ')') : ''}`,
  );
  if (Object.keys(listen).length > 0) out.push(`listening for its hub on ${str(listen.bindHost)}:${str(listen.port)}  fingerprint ${str(listen.fingerprint)}`);
  out.push(
    `streams ${num(status.openStreams)} open, ${num(status.streamsTotal)} on this tunnel  in ${formatBytes(num(status.bytesIn))}  out ${formatBytes(num(status.bytesOut))}  tunnels since start ${num(status.tunnels)}`,
  );
  const udp = rec(status.udp);
  if (Object.keys(udp).length > 0) out.push(`udp flows ${num(udp.flows)}  datagrams in ${num(udp.datagramsIn)} out ${num(udp.datagramsOut)} dropped ${num(udp.dropped)}`);
  const firewall = rec(status.firewall);
  if (Object.keys(firewall).length > 0) {
    out.push(firewall.available === true ? `firewall generation ${str(firewall.generation, 'none')}` : `firewall unavailable: ${str(firewall.reason)}`);
  }
  const services = list(status.services);
  out.push('');
  out.push(
    services.length === 0
      ? 'no services'
      : formatTable(
          ['SERVICE', 'NAME', 'PROTO', 'PORT', 'ACTIVE', 'MAX', 'TOTAL', 'REFUSED', 'IDLE CLOSED'],
          services.map((s) => [
            str(s.id),
            str(s.name),
            str(s.protocol),
            String(num(s.port)),
            String(num(s.active)),
            s.maxConnections === null || s.maxConnections === undefined ? '-' : String(num(s.maxConnections)),
            String(num(s.total)),
            String(num(s.refused)),
            String(num(s.idleClosed)),
          ]),
        ),
  );
  return out.join('\n');
}

/** Fetches `/status` from the admin endpoint at `listen`. */
export async function fetchStatus(listen: string): Promise<TRecord> {
  const url = adminUrl(parseAdminListen(listen, '--admin-listen'), '/status');
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(STATUS_TIMEOUT_MS) });
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).message;
    throw new TunnelError('ERR_ADMIN_UNREACHABLE', `cannot reach the admin endpoint at ${url} (${cause}): is the daemon running with --admin-listen ${listen}?`, { cause: error });
  }
  if (!response.ok) throw new TunnelError('ERR_ADMIN_UNREACHABLE', `${url} answered ${response.status} ${response.statusText}`);
  return (await response.json()) as TRecord;
}

/** The `status` subcommand of either daemon. */
export function statusCommand(role: 'hub' | 'edge'): ICommand {
  const name = `remoteingress-${role}`;
  return {
    help: `Usage: ${name} status [--admin-listen HOST:PORT] [--json]

Asks a running ${role} for its status through its admin endpoint (the daemon must run with
--admin-listen) and prints ${role === 'hub' ? 'the connected edges' : 'the tunnel and the services'} as a table.

  --admin-listen HOST:PORT  the daemon's admin endpoint                 [REMOTEINGRESS_ADMIN_LISTEN]
  --json                 print the status document as JSON
  -h, --help             show this help

Example:
  ${name} --admin-listen 127.0.0.1:${role === 'hub' ? 9464 : 9465} …        # the daemon
  ${name} status --admin-listen 127.0.0.1:${role === 'hub' ? 9464 : 9465}   # then, from a shell
`,
    options: {
      'admin-listen': { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    async run(values, env) {
      const listen = flagOrEnv(values, 'admin-listen', env, 'REMOTEINGRESS_ADMIN_LISTEN');
      if (listen === undefined) throw usageError('missing --admin-listen HOST:PORT (or set REMOTEINGRESS_ADMIN_LISTEN): where the daemon serves its admin endpoint', 'admin-listen');
      try {
        parseAdminListen(listen, '--admin-listen');
      } catch (error) {
        throw usageError((error as Error).message, 'admin-listen');
      }
      const status = await fetchStatus(listen);
      process.stdout.write(`${values.json === true ? JSON.stringify(status, null, 2) : role === 'hub' ? renderHubStatus(status) : renderEdgeStatus(status)}\n`);
    },
  };
}
