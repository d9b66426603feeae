import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type IDaemonProcess, runOnce, spawnDaemon } from './daemons.js';
import { Cleanups, ROOT, connectFrom, delay, exchange, freePort, randomSecret, tempDir, withTimeout } from './helpers.js';

/**
 * The admin endpoint as an operator uses it: a hub and two edges (one over tcpTls, one over
 * QUIC) as child processes with --admin-listen, traffic through both, then a real Prometheus
 * (Debian's) scrapes all three and its HTTP API must report the byte and stream counters the
 * test sent; promtool checks both expositions; the status commands print the tables.
 */
const HUB_BIN = join(ROOT, 'packages/hub/dist/bin.js');
const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');
/** Prometheus' own minimum useful interval; the test waits for a few scrapes. */
const SCRAPE_INTERVAL = '1s';
/** Prometheus needs a few seconds to start (TSDB, web); the query loop waits this long at most. */
const PROMETHEUS_TIMEOUT_MS = 30_000;

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

function hasBinary(name: string): Promise<boolean> {
  return new Promise((done) => execFile('sh', ['-c', `command -v ${name}`], (error) => done(error === null)));
}

/** Sends `payload` to 127.0.0.1:`port` and checks the echo came back in full. */
async function echoThrough(port: number, payload: Buffer): Promise<void> {
  const { reply } = await withTimeout(exchange(await connectFrom(port), payload), 15_000, `echo through port ${port}`);
  if (!reply.equals(payload)) throw new Error(`echo through ${port}: ${reply.length} of ${payload.length} bytes back`);
}

async function get(url: string): Promise<{ status: number; text: string }> {
  const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return { status: response.status, text: await response.text() };
}

interface IPromResult {
  metric: Record<string, string>;
  value: [number, string];
}

async function query(promPort: number, expr: string): Promise<IPromResult[]> {
  const { text } = await get(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = JSON.parse(text) as { status: string; data: { result: IPromResult[] } };
  if (body.status !== 'success') throw new Error(`query ${expr}: ${text}`);
  return body.data.result;
}

/** Runs `promtool check metrics` on `exposition`; resolves its output and exit code. */
function promtoolCheck(exposition: string): Promise<{ code: number; output: string }> {
  return new Promise((done) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('close', (code) => done({ code: code ?? -1, output }));
    child.stdin.end(exposition);
  });
}

describe('admin endpoint', () => {
  it('Prometheus scrapes a hub and two edges (tcpTls, quic): byte and stream counters match the traffic; promtool passes; status prints the tables', async () => {
    const [prometheusInstalled, promtoolInstalled] = [await hasBinary('prometheus'), await hasBinary('promtool')];
    expect(prometheusInstalled && promtoolInstalled, 'prometheus and promtool (Debian package prometheus; scripts/setup.sh installs it)').toBe(true);

    const target = net.createServer((socket) => {
      socket.pipe(socket);
      socket.on('error', () => undefined);
    });
    await new Promise<void>((done) => target.listen(0, '127.0.0.1', done));
    cleanups.add('close target', () => new Promise<void>((done) => target.close(() => done())));
    const targetPort = (target.address() as net.AddressInfo).port;

    const dir = await tempDir(cleanups, 'ri-e2e-admin-');
    const stateDir = join(dir, 'state');
    const edgesFile = join(dir, 'edges.json');
    const [portTls, portQuic, adminHub, adminTls, adminQuic, promPort] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
    const serviceTls = 'web-tls';
    await writeFile(
      edgesFile,
      JSON.stringify([
        {
          id: 'edge-tls',
          secret: randomSecret(),
          bindAddress: '127.0.0.1',
          services: [{ id: serviceTls, protocol: 'tcp', edgePort: portTls, target: { host: '127.0.0.1', port: targetPort }, proxyProtocol: 'none' }],
        },
        { id: 'edge-quic', secret: randomSecret(), bindAddress: '127.0.0.1', listenPorts: [{ port: portQuic, targetPort, proxyProtocol: 'none' }] },
      ]),
    );
    const hub = spawnDaemon(cleanups, HUB_BIN, [
      '--tunnel-port', '0', '--bind-host', '127.0.0.1', '--allowed-edges', edgesFile, '--state-dir', stateDir,
      '--admin-listen', `127.0.0.1:${adminHub}`,
    ]);
    const hubPort = Number((await hub.waitForLine(/hub listening on .*:(\d+) fingerprint/, 'hub start-up line'))[1]);
    await hub.waitForLine(new RegExp(`admin endpoint on http://127\\.0\\.0\\.1:${adminHub} `), 'hub admin line');
    const startEdge = async (id: string, mode: string, admin: number, port: number): Promise<IDaemonProcess> => {
      const minted = await runOnce(HUB_BIN, ['token', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--edge-id', id, '--hub-host', '127.0.0.1', '--hub-port', String(hubPort)]);
      expect(minted.code, minted.stderr).toBe(0);
      const edge = spawnDaemon(cleanups, EDGE_BIN, ['--token', minted.stdout.trim(), '--transport-mode', mode, '--admin-listen', `127.0.0.1:${admin}`, '--log-format', 'json']);
      await edge.waitForLine(new RegExp(`"kind":"portsAssigned".*${port}`), `${id} portsAssigned (JSON log)`);
      return edge;
    };
    const edgeTls = await startEdge('edge-tls', 'tcpTls', adminTls, portTls);
    await startEdge('edge-quic', 'quic', adminQuic, portQuic);

    // Before the traffic: health, readiness, and the refusal of anything but GET/HEAD.
    expect(await get(`http://127.0.0.1:${adminHub}/healthz`)).toEqual({ status: 200, text: 'ok\n' });
    expect(await get(`http://127.0.0.1:${adminTls}/readyz`)).toEqual({ status: 200, text: 'ready\n' });
    expect((await get(`http://127.0.0.1:${adminHub}/nope`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${adminHub}/metrics`, { method: 'POST' })).status).toBe(405);

    // The traffic: 3 connections of 100 KiB through the TLS edge, 2 of 64 KiB through the QUIC one.
    const sent = { tls: 0, quic: 0 };
    for (let i = 0; i < 3; i++) {
      const payload = randomBytes(100 * 1024);
      await echoThrough(portTls, payload);
      sent.tls += payload.length;
    }
    for (let i = 0; i < 2; i++) {
      const payload = randomBytes(64 * 1024);
      await echoThrough(portQuic, payload);
      sent.quic += payload.length;
    }
    const hubMetrics = (await get(`http://127.0.0.1:${adminHub}/metrics`)).text;
    const edgeMetrics = (await get(`http://127.0.0.1:${adminTls}/metrics`)).text;
    for (const [who, text] of [['hub', hubMetrics], ['edge', edgeMetrics]] as const) {
      const check = await promtoolCheck(text);
      expect(check.code, `promtool check metrics on the ${who}'s /metrics:\n${check.output}`).toBe(0);
      expect(text).toMatch(/^process_cpu_seconds_total /m);
    }

    // A real Prometheus scrapes all three.
    const promConfig = join(dir, 'prometheus.yml');
    await writeFile(
      promConfig,
      [
        'global:',
        `  scrape_interval: ${SCRAPE_INTERVAL}`,
        `  scrape_timeout: ${SCRAPE_INTERVAL}`,
        'scrape_configs:',
        '  - job_name: remoteingress',
        '    static_configs:',
        `      - targets: ['127.0.0.1:${adminHub}', '127.0.0.1:${adminTls}', '127.0.0.1:${adminQuic}']`,
        '',
      ].join('\n'),
    );
    const prometheus = spawn(
      'prometheus',
      [`--config.file=${promConfig}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let promLog = '';
    prometheus.stderr.on('data', (d: Buffer) => (promLog += d.toString()));
    const promExited = new Promise<void>((done) => prometheus.once('exit', () => done()));
    cleanups.add('stop prometheus', async () => {
      prometheus.kill('SIGTERM');
      await promExited;
    });

    const deadline = Date.now() + PROMETHEUS_TIMEOUT_MS;
    const value = async (expr: string): Promise<number | undefined> => {
      const result = await query(promPort, expr).catch(() => []);
      return result.length === 1 ? Number(result[0]?.value[1]) : undefined;
    };
    // All three targets up, and the counters scraped after the traffic.
    for (;;) {
      const up = await value('count(up{job="remoteingress"} == 1)');
      const streams = await value('remoteingress_hub_streams_total{edge="edge-tls"}');
      // The edge counts a service's bytes as each connection closes: wait for the last one.
      const closed = await value(`remoteingress_edge_service_sent_bytes_total{service="${serviceTls}"}`);
      if (up === 3 && streams === 3 && closed === sent.tls) break;
      if (Date.now() > deadline) throw new Error(`Prometheus did not scrape all three in time (up ${up}, streams ${streams})\n${promLog}`);
      await delay(250);
    }
    expect(await value('remoteingress_hub_received_bytes_total{edge="edge-tls"}')).toBe(sent.tls);
    expect(await value('remoteingress_hub_sent_bytes_total{edge="edge-tls"}')).toBe(sent.tls);
    expect(await value('remoteingress_hub_received_bytes_total{edge="edge-quic"}')).toBe(sent.quic);
    expect(await value('remoteingress_hub_sent_bytes_total{edge="edge-quic"}')).toBe(sent.quic);
    expect(await value('remoteingress_hub_streams_total{edge="edge-quic"}')).toBe(2);
    expect(await value('remoteingress_hub_edges_connected')).toBe(2);
    expect(await value('remoteingress_hub_tunnels{transport="quic"}')).toBe(1);
    expect(await value('remoteingress_hub_tunnels{transport="tcpTls"}')).toBe(1);
    expect(await value('remoteingress_hub_handshakes_total{transport="quic"}')).toBe(1);
    expect(await value(`remoteingress_edge_sent_bytes_total{instance="127.0.0.1:${adminTls}"}`)).toBe(sent.tls);
    expect(await value(`remoteingress_edge_service_received_bytes_total{service="${serviceTls}"}`)).toBe(sent.tls);
    expect(await value(`remoteingress_edge_service_sent_bytes_total{service="${serviceTls}"}`)).toBe(sent.tls);
    expect(await value(`remoteingress_edge_service_connections_total{service="${serviceTls}"}`)).toBe(3);
    expect(await value(`remoteingress_edge_tunnel_up{instance="127.0.0.1:${adminQuic}"}`)).toBe(1);
    expect(await value(`remoteingress_edge_tunnel_transport{instance="127.0.0.1:${adminQuic}",transport="quic"}`)).toBe(1);
    // QUIC's packet size in use: the default 1452 (no discovery configured); tcpTls has none.
    expect(await value(`remoteingress_edge_quic_path_mtu_bytes{instance="127.0.0.1:${adminQuic}"}`)).toBe(1452);
    expect(await value('remoteingress_hub_quic_path_mtu_bytes{edge="edge-quic"}')).toBe(1452);
    expect(await value('remoteingress_hub_quic_path_mtu_bytes{edge="edge-tls"}')).toBeUndefined();

    // The status commands, from a shell.
    const hubTable = await runOnce(HUB_BIN, ['status', '--admin-listen', `127.0.0.1:${adminHub}`]);
    expect(hubTable.code, hubTable.stderr).toBe(0);
    expect(hubTable.stdout).toMatch(/^EDGE\s+TRANSPORT\s+ADDRESS\s+UP\s+STREAMS/m);
    expect(hubTable.stdout).toMatch(/^edge-quic\s+quic\s+127\.0\.0\.1:\d+\s+\S+\s+0\s+2\s/m);
    expect(hubTable.stdout).toMatch(/^edge-tls\s+tcpTls\s+127\.0\.0\.1:\d+\s+\S+\s+0\s+3\s+300\.0 KiB\s+300\.0 KiB/m);
    const hubJson = await runOnce(HUB_BIN, ['status', '--admin-listen', `127.0.0.1:${adminHub}`, '--json']);
    expect((JSON.parse(hubJson.stdout) as { edges: unknown[] }).edges).toHaveLength(2);
    const edgeTable = await runOnce(EDGE_BIN, ['status'], { REMOTEINGRESS_ADMIN_LISTEN: `127.0.0.1:${adminTls}` });
    expect(edgeTable.code, edgeTable.stderr).toBe(0);
    expect(edgeTable.stdout).toMatch(/^edge connected to 127\.0\.0\.1:\d+ over tcpTls/m);
    expect(edgeTable.stdout).toMatch(new RegExp(`^${serviceTls}\\s+-\\s+tcp\\s+${portTls}\\s+0\\s+-\\s+3\\s+0\\s+0$`, 'm'));

    // JSON logs: one object per line with time, level and message.
    const firstJson = edgeTls.output().split('\n').find((l) => l.startsWith('{'));
    expect(JSON.parse(firstJson ?? 'null')).toMatchObject({ time: expect.stringMatching(/^\d{4}-/), level: 'info', message: expect.any(String) });
  }, 90_000);

  it('embedded: an edge whose hub is unreachable is alive but not ready, and says why; its admin port closes with it', async () => {
    const { RemoteIngressEdge } = await import('remoteingress-edge');
    const [admin, nowhere] = [await freePort(), await freePort()];
    const edge = new RemoteIngressEdge();
    cleanups.add('stop edge', () => edge.stop({ graceMs: 0 }));
    await edge.start({
      hubHost: '127.0.0.1',
      hubPort: nowhere,
      edgeId: 'lonely',
      secret: randomSecret(),
      hubFingerprint: 'ab'.repeat(32),
      transportMode: 'tcpTls',
      adminListen: `127.0.0.1:${admin}`,
    });
    expect(edge.adminAddress).toEqual({ host: '127.0.0.1', port: admin });
    expect(await get(`http://127.0.0.1:${admin}/healthz`)).toEqual({ status: 200, text: 'ok\n' });
    const ready = await get(`http://127.0.0.1:${admin}/readyz`);
    expect(ready.status).toBe(503);
    expect(ready.text).toMatch(/^not ready: no tunnel to the hub \((connecting|backoff|[a-z]+)\)/);
    expect((await get(`http://127.0.0.1:${admin}/metrics`)).text).toMatch(/^remoteingress_edge_tunnel_up 0$/m);
    await edge.stop({ graceMs: 0 });
    await expect(fetch(`http://127.0.0.1:${admin}/healthz`)).rejects.toThrow();
  });
});
