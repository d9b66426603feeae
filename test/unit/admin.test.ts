import { execFile } from 'node:child_process';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAdminListen } from '../../packages/core/src/admin.js';
import { formatBytes, formatDuration, formatTable, renderEdgeStatus, renderHubStatus } from '../../packages/core/src/status-command.js';

/** The admin address, the operational flags and the status tables, without a running daemon. */
const ROOT = resolve(import.meta.dirname, '../..');
const HUB_BIN = join(ROOT, 'packages/hub/dist/bin.js');
const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');

function run(bin: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('REMOTEINGRESS_')));
  return new Promise((done) => {
    execFile(process.execPath, [bin, ...args], { env: clean, timeout: 20_000 }, (error, _stdout, stderr) =>
      done({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stderr }),
    );
  });
}

describe('adminListen', () => {
  it('takes HOST:PORT and [IPv6]:PORT', () => {
    expect(parseAdminListen('127.0.0.1:9464')).toEqual({ host: '127.0.0.1', port: 9464 });
    expect(parseAdminListen('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseAdminListen('localhost:9464')).toEqual({ host: 'localhost', port: 9464 });
  });

  it.each([
    ['9464', /must be "HOST:PORT"/],
    ['::1:9464', /must be "HOST:PORT"/],
    ['127.0.0.1:70000', /the port must be 0 to 65535/],
    ['bad_host!:80', /is not a host name or address/],
    [9464, /must be "HOST:PORT"/],
  ])('refuses %s, naming it', (value, message) => {
    expect(() => parseAdminListen(value)).toThrow(message);
  });

  it.each([
    [HUB_BIN, ['--state-dir', '/tmp/x', '--allowed-edges', '/nonexistent', '--admin-listen', 'nope'], /--admin-listen = "nope": must be "HOST:PORT"/],
    [HUB_BIN, ['--state-dir', '/tmp/x', '--allowed-edges', '/nonexistent', '--log-format', 'xml'], /--log-format = "xml": must be text or json/],
    [EDGE_BIN, ['--token', 'x', '--log-level', 'loud'], /--log-level = "loud": must be debug, info, warn or error/],
    [EDGE_BIN, ['status', '--admin-listen', '1.2.3.4'], /--admin-listen = "1.2.3.4"/],
    [HUB_BIN, ['status'], /missing --admin-listen/],
  ])('%s %s exits 2 naming the flag', async (bin, args, message) => {
    const result = await run(bin, args);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
  });
});

describe('status tables', () => {
  it('formats sizes, durations and aligned columns', () => {
    expect([formatBytes(0), formatBytes(1536), formatBytes(3 * 1024 ** 3)]).toEqual(['0 B', '1.5 KiB', '3.0 GiB']);
    expect([formatDuration(9_000), formatDuration(252_000), formatDuration(7_500_000), formatDuration(90_000_000)]).toEqual(['9s', '4m12s', '2h5m', '1d1h']);
    expect(formatTable(['NAME', 'N'], [['a', '5'], ['long-name', '12']])).toBe('NAME        N\na           5\nlong-name  12');
  });

  it('renders a hub with two edges and an edge with its services', () => {
    const now = 1_000_000;
    const hub = renderHubStatus(
      {
        running: true,
        tunnelPort: 8443,
        fingerprint: 'ab'.repeat(32),
        allowedEdges: 3,
        edges: [
          { edgeId: 'e1', transport: 'quic', remoteAddress: '10.0.0.1', remotePort: 5000, connectedSince: now - 65_000, openStreams: 2, streamsTotal: 9, bytesIn: 2048, bytesOut: 0, rttMs: 0.25, udp: { flows: 1 } },
        ],
        handshakes: { authenticated: { tls: 0, quic: 1 }, failed: { ERR_AUTH_FAILED: 4 } },
        pendingHandshakes: { tls: 0, quic: 0 },
        dialing: [{ edgeId: 'e2', address: 'edge2:9000', state: 'dialing', attempts: 3, lastError: { code: 'ERR_CONNECT', message: 'refused' } }],
      },
      now,
    );
    expect(hub).toContain('allowed edges 3  connected 1');
    expect(hub).toContain('failed ERR_AUTH_FAILED 4');
    expect(hub).toMatch(/^e1\s+quic\s+10\.0\.0\.1:5000\s+1m5s\s+2\s+9\s+2\.0 KiB\s+0 B\s+0\.25 ms\s+1$/m);
    expect(hub).toMatch(/^e2\s+edge2:9000\s+dialing\s+3\s+refused$/m);
    // An edge with a tunnel still draining gets a column for it.
    const draining = renderHubStatus({ running: true, allowedEdges: 1, edges: [{ edgeId: 'e3', transport: 'tcpTls', remoteAddress: '10.0.0.3', remotePort: 7, connectedSince: now, openStreams: 0, streamsTotal: 0, bytesIn: 0, bytesOut: 0, rttMs: 1, udp: { flows: 0 }, drainingTunnels: 1 }] }, now);
    expect(draining).toMatch(/UDP FLOWS\s+DRAINING$/m);
    expect(draining).toMatch(/^e3\s.*\s1$/m);
    expect(hub).not.toContain('DRAINING');
    const edge = renderEdgeStatus({ state: 'connecting', attempts: 2, lastError: { code: 'ERR_CONNECT', message: 'refused' }, services: [] });
    expect(edge).toContain('edge connecting (2 failed attempts, last: refused)');
    expect(edge).toContain('no services');
  });
});
