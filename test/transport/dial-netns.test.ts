import { spawn, spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, ROOT } from '../e2e/helpers.js';

/**
 * The hub dials an edge that listens for it, from a network namespace whose firewall drops every
 * inbound connection attempt, over each transport mode. Everything runs in throwaway namespaces
 * (the root namespace is never touched): `fixtures/dial-netns.mjs` runs under `unshare -n` (the
 * edge and the clients), and starts `fixtures/dial-netns-hub.mjs` under a second `unshare -n` (the
 * hub, its targets, and nftables `ct state new drop` on input), joined by a veth pair
 * (10.77.0.1 edge side, 10.77.0.2 hub side).
 *
 * Shows, per mode: the hub dials out and the tunnel comes up on the asked transport; 1 MiB of TCP
 * through the edge comes back byte-exact and the target's PROXY v1 line names the client
 * (127.0.0.5 and its port); UDP datagrams come back byte-exact with the PROXY v2 header in front
 * of each naming the client; a TCP connect from outside to the hub's tunnel port times out (the
 * SYN is dropped, counted by the rule) while the port is open on loopback; the edge restarted
 * with the same state directory keeps its fingerprint, and the hub redials it within its backoff
 * cap (1 s) plus slack, after which TCP and UDP flow again.
 */

const SCENARIO = resolve(import.meta.dirname, 'fixtures/dial-netns.mjs');
const CLIENT = '127.0.0.5';
const TCP_BYTES = 1024 * 1024;

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

function namespaceProblem(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root';
  const probe = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up && nft add table inet probe && nft delete table inet probe && nsenter --version'], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  if (probe.error !== undefined) return `unshare: ${probe.error.message}`;
  if (probe.status !== 0) return `unshare -n / ip / nft / nsenter not usable here: ${probe.stderr.trim()}`;
  return undefined;
}
const problem = namespaceProblem();
if (problem !== undefined) console.warn(`dial-netns.test.ts skipped: ${problem}`);

type TResult = Record<string, any>;

async function scenario(mode: string): Promise<TResult> {
  const child = spawn('unshare', ['-n', process.execPath, SCENARIO, mode], { cwd: ROOT, env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  cleanups.add(`kill dial-netns ${mode}`, () => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
  const code = await new Promise<number | null>((done) => child.on('exit', done));
  const line = out.split('\n').find((l) => l.startsWith('RESULT '));
  expect(line, `scenario ${mode} exited ${code}\nstdout: ${out}\nstderr: ${err}`).toBeDefined();
  const result = JSON.parse(line!.slice('RESULT '.length)) as TResult;
  expect(result.error, `${result.error}\nscenario progress:\n${err}`).toBeUndefined();
  return result;
}

function expectTcpEcho(echo: TResult, edgePort: number): void {
  expect(echo.bytes).toBe(TCP_BYTES);
  expect(echo.received).toBe(TCP_BYTES);
  expect(echo.firstMismatch).toBe(-1);
  expect(echo.exact).toBe(true);
  // The target answered with the client its PROXY v1 line named: this client, not the hub or 127.0.0.1.
  expect(echo.header).toBe(`${CLIENT}:${echo.clientPort}`);
  expect(echo.proxyLine).toBe(`PROXY TCP4 ${CLIENT} 127.0.0.1 ${echo.clientPort} ${edgePort}`);
}

function expectUdpEcho(echo: TResult, edgePort: number, datagrams: number): void {
  expect(echo.replies).toHaveLength(datagrams);
  for (const reply of echo.replies) {
    expect(reply, JSON.stringify(reply)).toMatchObject({ prefix: `${CLIENT}:${echo.clientPort}`, exact: true, sends: 1 });
  }
  // A PROXY v2 header in front of every datagram (everyDatagram), PROXY command, UDP over IPv4.
  expect(echo.headers).toHaveLength(datagrams);
  for (const header of echo.headers) {
    expect(header).toMatchObject({ verCmd: 0x21, family: 0x12, length: 12, src: CLIENT, srcPort: echo.clientPort, dst: '127.0.0.1', dstPort: edgePort });
  }
  expect(echo.headers.map((h: TResult) => h.payloadBytes)).toEqual(echo.replies.map((r: TResult) => r.size));
}

const MODES = [
  // A TLS dial against a stopped edge is refused at once: only the backoff (cap 1 s) counts.
  { mode: 'tcpTls', transport: 'tcpTls', restartLimitMs: 3000 },
  // A QUIC attempt against a stopped edge hears nothing back and may take up to 3 s to give up.
  { mode: 'quic', transport: 'quic', restartLimitMs: 6000 },
  { mode: 'quicWithFallback', transport: 'quic', restartLimitMs: 6000 },
] as const;

describe.runIf(problem === undefined)('the hub dials a listening edge from behind a firewall that drops all inbound connections', () => {
  it.each(MODES)(
    '$mode: the hub dials out, TCP and UDP carry the client address, the hub port is unreachable, a restarted edge is redialed',
    async ({ mode, transport, restartLimitMs }) => {
      const r = await scenario(mode);
      const { tcp: tcpPort, udp: udpPort } = r.ports as { tcp: number; udp: number };

      console.log(
        `dial-netns ${mode}: first connect ${r.firstConnect.msAfterLinkUp} ms after the link came up; ` +
          `1 MiB TCP echo ${r.tcp.ms} ms; firewall probe ${r.firewall.probe.outcome} after ${r.firewall.probe.ms} ms ` +
          `(drop counter ${r.firewall.dropPacketsBefore} -> ${r.firewall.dropPacketsAfter}); ` +
          `restart: tunnel up ${r.restart.tunnelConnectedMs} ms, first echo ${r.restart.firstEchoMs} ms after the new edge started ` +
          `(${r.restart.sinceStopMs} ms after the old one stopped, ${r.restart.probes} probes, limit ${restartLimitMs} ms); ` +
          `transport ${r.edgeBefore.transport} -> ${r.edgeAfter.transport}; hub dial attempts ${r.hubStatusAfter.dialing[0]?.attempts}; scenario ${r.totalMs} ms`,
      );

      // The edge listened before the hub could reach it, then the hub dialed in over `transport`.
      expect(r.edgeStateBeforeHub).toBe('listening');
      expect(r.listening).toMatchObject({ bindHost: '10.77.0.1', port: r.ports.listen });
      expect(r.listening.fingerprint).toMatch(/^[0-9a-f]{64}$/);
      expect(r.firstConnect.tunnelConnected.transport).toBe(transport);
      expect(r.firstConnect.tunnelConnected.reason).toContain('10.77.0.2');
      expect(r.firstConnect.portsAssigned).toMatchObject({ tcp: [tcpPort], udp: [udpPort], failed: [] });
      expect(r.edgeBefore).toMatchObject({ state: 'connected', transport });
      expect(r.hubStatusBefore.edges).toEqual([{ edgeId: 'edge-dial', transport, remoteAddress: '10.77.0.1', remotePort: r.ports.listen }]);
      expect(r.hubStatusBefore.dialing).toEqual([
        expect.objectContaining({ edgeId: 'edge-dial', address: `10.77.0.1:${r.ports.listen}`, transportMode: mode, state: 'connected', lastError: null }),
      ]);

      // Traffic through the edge, the client's address carried to the targets.
      expectTcpEcho(r.tcp, tcpPort);
      expectUdpEcho(r.udp, udpPort, 3);

      // The firewall: the hub's tunnel port is open (a loopback connect succeeds in its namespace)
      // but a SYN from outside is dropped by the rule: no answer at all, not even a refusal.
      expect(r.ready.localControl).toBe('connect');
      expect(r.firewall.probe.outcome).toBe('timeout');
      expect(r.firewall.dropPacketsAfter).toBeGreaterThan(r.firewall.dropPacketsBefore);

      // Restart with the same state directory: same identity, redialed within the backoff cap plus slack.
      expect(r.restart.fingerprintAfter).toBe(r.restart.fingerprintBefore);
      expect(r.restart.tunnelConnected.transport).toBe(transport);
      expect(r.restart.firstEchoMs).toBeLessThanOrEqual(restartLimitMs);
      const hubRestartEvents = (r.restart.hubEvents as TResult[]).map((e) => e.name);
      expect(hubRestartEvents[0]).toBe('edgeDisconnected');
      expect(hubRestartEvents).toContain('edgeConnected');
      // Only connect failures while the edge was down: never a pinning or authentication failure.
      for (const e of r.restart.hubEvents as TResult[]) {
        if (e.name === 'edgeDialFailed') expect(e.event.code, JSON.stringify(e.event)).not.toMatch(/AUTH|FINGERPRINT/);
      }
      expectTcpEcho(r.tcpAfter, tcpPort);
      expectUdpEcho(r.udpAfter, udpPort, 3);

      // Where it ended.
      expect(r.edgeAfter).toMatchObject({ state: 'connected', transport });
      expect(r.hubStatusAfter.edges).toEqual([{ edgeId: 'edge-dial', transport, remoteAddress: '10.77.0.1', remotePort: r.ports.listen }]);
      expect(r.hubStatusAfter.dialing).toEqual([expect.objectContaining({ state: 'connected', transportMode: mode, lastError: null })]);
      expect(r.hubStatusAfter.dialing[0].attempts).toBeGreaterThanOrEqual(2);

      // Nothing went wrong on either side along the way.
      const edgeProblems = (r.edgeEvents as TResult[]).filter((e) => ['authFailed', 'crashRecovered', 'eventsDropped', 'portBindFailed', 'error'].includes(e.name));
      expect(edgeProblems).toEqual([]);
      const hubProblems = (r.hubSide as TResult[]).filter(
        (e) => e.type === 'tcpHeaderError' || e.type === 'udpHeaderError' || (e.type === 'event' && ['authFailed', 'crashRecovered', 'eventsDropped', 'error'].includes(e.name)),
      );
      expect(hubProblems).toEqual([]);
      expect(r.cleanupTimedOut).toBeUndefined();
      expect(r.childKilled).toBeUndefined();
    },
    60_000,
  );
});
