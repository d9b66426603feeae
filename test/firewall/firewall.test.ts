import { spawn, spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, ROOT, echoRoundTrip, freePort, startEchoServer, startPair } from '../e2e/helpers.js';

/**
 * The edge firewall with real traffic. Everything that applies nftables runs in a throwaway
 * network namespace (`unshare -n`): `netns-scenario.mjs` starts hub, edge, target and clients
 * there and refuses to run anywhere else. Only the "unavailable" case runs here, in-process, with
 * libnftables pointed at a missing file (vitest.config.ts sets that for every test).
 */

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/**
 * Namespaces need root. As root (CI runs as root; `npm test` installs nftables) these tests must
 * run: a missing `unshare` or `nft` is a failure, not a skip. Only an unprivileged developer
 * machine skips them.
 */
const isRoot = process.getuid?.() === 0;
const unshareProbe = spawnSync('unshare', ['-n', 'nft', 'list', 'tables'], { encoding: 'utf8' });

it.runIf(isRoot)('as root, a throwaway network namespace with nftables is available', () => {
  expect(unshareProbe.status, `unshare -n nft list tables: ${unshareProbe.error?.message ?? unshareProbe.stderr}`).toBe(0);
});

type TResult = Record<string, any>;

async function scenario(name: string): Promise<TResult> {
  const env = { ...process.env };
  // Inside the namespace the real libnftables is used.
  delete env.REMOTEINGRESS_NFT_LIB;
  const child = spawn('unshare', ['-n', process.execPath, 'test/firewall/netns-scenario.mjs', name], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  cleanups.add(`kill ${name}`, () => child.exitCode === null && child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise<number | null>((done) => child.on('exit', done));
  const line = out.split('\n').find((l) => l.startsWith('RESULT '));
  expect(line, `scenario ${name} exited ${code}\nstdout: ${out}\nstderr: ${err}`).toBeDefined();
  const result = JSON.parse(line!.slice('RESULT '.length)) as TResult;
  expect(result.error, result.error).toBeUndefined();
  return result;
}

describe.runIf(isRoot)('edge firewall in a throwaway network namespace', () => {
  it('drops blocked sources (address and CIDR) before the served port, serves the others', async () => {
    const r = await scenario('blocklist');
    expect(r.applied).toMatchObject({ applied: true, table: 'remoteingress_fw1' });
    expect(r.applied.hash).toMatch(/^[0-9a-f]{16}$/);
    expect(r.from2).toBe('timeout');
    expect(r.from3).toBe('ok');
    expect(r.cidrFrom2).toBe('timeout');
    expect(r.cidrFrom3).toBe('timeout');
    expect(r.cidrFrom4).toBe('ok');
    expect(r.status).toMatchObject({ available: true, reason: null });
    expect(r.status.counters.blocked.packets).toBeGreaterThan(0);
  });

  it('rate-limits new TCP connections to the configured rate, per source when asked', async () => {
    const r = await scenario('ratelimit');
    // 20/second with a burst of 5 over the run: (accepted − burst) / seconds ≈ 20, ±25 %.
    const rate = (n: number, ms: number) => (n - 5) / (ms / 1000);
    expect(rate(r.global.accepted, r.global.ms)).toBeGreaterThanOrEqual(15);
    expect(rate(r.global.accepted, r.global.ms)).toBeLessThanOrEqual(25);
    // Two sources at once each get their own budget (a shared one would give each ~half).
    for (const n of [r.perSource.a, r.perSource.b]) {
      expect(rate(n, r.perSource.ms)).toBeGreaterThanOrEqual(15);
      expect(rate(n, r.perSource.ms)).toBeLessThanOrEqual(25);
    }
    expect(r.counters['ratelimit:per'].packets).toBeGreaterThan(0);
  });

  it('replaces snapshots atomically under load: never an empty or half-built table', async () => {
    const r = await scenario('replace');
    expect(r.listings).toBeGreaterThan(20);
    expect(r.bad, JSON.stringify(r.bad)).toEqual([]);
    // What nftables holds is what the last snapshot says.
    expect(r.final.blocked4).toEqual([{ prefix: { addr: '10.0.19.0', len: 24 } }]);
    expect(r.final.blocked6).toEqual([{ prefix: { addr: '2001:db8:19::', len: 48 } }]);
    expect(r.final.ruleComments).toEqual(['blocked', 'blocked', 'rule:r19', 'ratelimit:rl']);
    expect(r.status.generation).toBeGreaterThan(20);
    expect(r.status.counters['rule:r19'].packets).toBeGreaterThan(0);
  });

  it('rejects a bad snapshot naming the field and keeps the previous one applied', async () => {
    const r = await scenario('bad-snapshot');
    expect(r.hubRejected).toBe(true);
    expect(r.hubError.code).toBe('ERR_INVALID_CONFIG');
    expect(r.hubError.message).toContain('firewallConfig.blockedIps[0]');
    expect(r.hubError.message).toContain('127.0.0.999');
    expect(r.from2).toBe('timeout');
    expect(r.status.hash).toBe(r.good.hash);
  });

  it('removes its table on stop', async () => {
    const r = await scenario('stop-removes');
    expect(r.before).toBe(true);
    expect(r.after).toBe(false);
  });
});

describe('edge firewall without nftables', () => {
  it('keeps tunnelling, reports the firewall unavailable once, and says why', async () => {
    expect(process.env.REMOTEINGRESS_NFT_LIB).toMatch(/nonexistent/);
    const echo = await startEchoServer(cleanups);
    const port = await freePort();
    const p = await startPair(cleanups, {
      listenPorts: [{ port, targetPort: echo.port, proxyProtocol: 'none' }],
    });
    await p.hub.updateAllowedEdges([
      { id: p.edgeId, secret: p.secret, bindAddress: '127.0.0.1', listenPorts: [{ port, targetPort: echo.port, proxyProtocol: 'none' }], firewallConfig: { blockedIps: ['192.0.2.1'], rateLimits: [], rules: [] } },
    ]);
    const unavailable = await p.edgeLog.waitFor('firewallUnavailable');
    expect(String(unavailable.reason)).toContain('libnftables is not available');
    const { sent, received } = await echoRoundTrip(port);
    expect(received).toBe(sent);
    const fw = p.edge.getStatus() as unknown as { firewall: { available: boolean; reason: string } };
    expect(fw.firewall.available).toBe(false);
    expect(fw.firewall.reason).toContain('libnftables');
    // A second snapshot does not repeat the event.
    await p.hub.updateAllowedEdges([
      { id: p.edgeId, secret: p.secret, bindAddress: '127.0.0.1', listenPorts: [{ port, targetPort: echo.port, proxyProtocol: 'none' }], firewallConfig: { blockedIps: ['192.0.2.2'], rateLimits: [], rules: [] } },
    ]);
    await echoRoundTrip(port);
    expect(p.edgeLog.of('firewallUnavailable')).toHaveLength(1);
  });
});
