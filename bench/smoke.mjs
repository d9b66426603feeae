#!/usr/bin/env node
// The benchmark harness in ~5 seconds, for CI (`.ci/run` calls it): hub and edge CLIs started from
// a token exactly as `npm run bench` starts them, one short transfer and one short burst of new
// connections through the tunnel, CPU time and RSS read from /proc. It checks that every number
// came out and is above zero; it does NOT judge the numbers against issue 5's targets (CI machines
// are too noisy for that). Exit 0 when the harness works, 1 when it is broken.
//
// Needs no peer tools: iperf3 and wrk are used when installed, Node stand-ins otherwise. Ephemeral
// ports only, so it can run next to anything else on the machine.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { cpuSeconds, freePort, killAllSync, rssKiB, startProcess, stopAll, which } from './lib/proc.mjs';
import { iperf3ServerReady, iperf3Tcp, nodeConnBurst, nodeTransfer, startHttpClose, startSink, wrkConnRate } from './lib/measure.mjs';
import { startTunnel, tunnelMissing } from './lib/tunnel.mjs';

/** Each measurement runs this long: enough for non-zero numbers, short enough for CI. */
const SECONDS = 1;
/** The whole smoke normally takes ~5 s; 40 s means something hangs, which is a broken harness. */
const WATCHDOG_MS = 40_000;

const say = (line) => process.stdout.write(`smoke: ${line}\n`);

async function main() {
  const started = Date.now();
  const missing = tunnelMissing();
  if (missing !== null) throw new Error(missing);
  const work = mkdtempSync(join(os.tmpdir(), 'ri-bench-smoke-'));
  const cleanups = [];
  try {
    const useIperf = which('iperf3') !== null;
    const useWrk = which('wrk') !== null;
    if (!useIperf) say('iperf3 not installed: transferring with a Node client instead');
    if (!useWrk) say('wrk not installed: opening connections with a Node client instead');

    // Targets: iperf3 (or a Node sink) for bytes, a Node HTTP responder that closes after one answer.
    const sink = await startSink();
    cleanups.push(() => sink.close());
    let bulkTarget = sink.port;
    if (useIperf) {
      bulkTarget = await freePort();
      const server = startProcess('iperf3 -s', 'iperf3', ['-s', '-p', String(bulkTarget), '-B', '127.0.0.1', '--forceflush'], { logFile: join(work, 'iperf3.log') });
      await server.waitFor(/Server listening/, 5_000);
    }
    const http = await startHttpClose();
    cleanups.push(() => http.close());

    const bulkPort = await freePort();
    const connPort = await freePort();
    const tunnel = await startTunnel({
      dir: join(work, 'tunnel'),
      edges: [{ id: 'smoke', transportMode: 'tcpTls', tcp: [{ port: bulkPort, targetPort: bulkTarget }, { port: connPort, targetPort: http.port }] }],
    });
    const edge = tunnel.edges[0];
    say(`hub pid ${tunnel.hubPid} and edge pid ${edge.pid} up (${edge.transport}) in ${Date.now() - started} ms`);
    const idle = { hub: rssKiB(tunnel.hubPid), edge: rssKiB(edge.pid) };

    if (useIperf) await iperf3ServerReady(bulkTarget);
    const cpuBefore = cpuSeconds([tunnel.hubPid, edge.pid]);
    const bulk = useIperf ? await iperf3Tcp(bulkPort, 1, SECONDS) : await nodeTransfer(bulkPort, SECONDS, sink);
    const cpu = cpuSeconds([tunnel.hubPid, edge.pid]) - cpuBefore;
    if (bulk.error) throw new Error(`transfer through the tunnel failed: ${bulk.error}`);
    const conn = useWrk ? await wrkConnRate(connPort, SECONDS) : await nodeConnBurst(connPort, SECONDS);
    if (conn.error) throw new Error(`connection burst through the tunnel failed: ${conn.error}`);
    const busy = { hub: rssKiB(tunnel.hubPid), edge: rssKiB(edge.pid) };
    await tunnel.stop();

    const numbers = {
      throughputGbps: bulk.gbps,
      bytes: bulk.bytes,
      cpuSecPerGB: bulk.bytes > 0 ? cpu / (bulk.bytes / 1e9) : 0,
      connPerSec: conn.perSec,
      connErrors: (conn.socketErrors ?? 0) + (conn.non2xx ?? 0),
      idleRssKiB: idle,
      busyRssKiB: busy,
    };
    say(`throughput ${numbers.throughputGbps.toFixed(2)} Gbit/s (${useIperf ? 'iperf3' : 'node'}, ${(numbers.bytes / 1e6).toFixed(0)} MB), CPU ${numbers.cpuSecPerGB.toFixed(2)} s/GB for hub + edge`);
    say(`new connections ${numbers.connPerSec.toFixed(0)}/s (${useWrk ? 'wrk' : 'node'}, ${numbers.connErrors} errors)`);
    say(`RSS idle hub ${(idle.hub / 1024).toFixed(1)} MiB, edge ${(idle.edge / 1024).toFixed(1)} MiB; after traffic hub ${(busy.hub / 1024).toFixed(1)} MiB, edge ${(busy.edge / 1024).toFixed(1)} MiB`);

    const insane = [];
    if (!(numbers.throughputGbps > 0 && numbers.bytes > 0)) insane.push('no bytes moved');
    if (!(numbers.cpuSecPerGB > 0)) insane.push('no CPU time read from /proc');
    if (!(numbers.connPerSec > 0)) insane.push('no connection completed');
    if (!(idle.hub > 0 && idle.edge > 0 && busy.hub > 0 && busy.edge > 0)) insane.push('no RSS read from /proc');
    if (insane.length > 0) throw new Error(`numbers are not sane: ${insane.join('; ')}`);
    say(`ok in ${((Date.now() - started) / 1000).toFixed(1)} s (sanity only; targets are judged by npm run bench)`);
  } finally {
    await stopAll();
    for (const c of cleanups.reverse()) await c();
    if (existsSync(work)) rmSync(work, { recursive: true, force: true });
  }
}

const watchdog = setTimeout(() => {
  process.stderr.write(`smoke: still running after ${WATCHDOG_MS} ms: the harness hangs\n`);
  killAllSync();
  process.exit(1);
}, WATCHDOG_MS);
watchdog.unref();
process.on('exit', killAllSync);

main().then(
  () => process.exit(0),
  async (error) => {
    process.stderr.write(`smoke: FAILED: ${error.stack ?? error}\n`);
    await stopAll();
    process.exit(1);
  },
);
