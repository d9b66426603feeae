#!/usr/bin/env node
// Soak (issue 24): the hub and edge CLIs through the default transport (quicWithFallback) carry a
// steady stream of short TCP connections and new UDP flows for minutes, and neither daemon's
// memory may keep growing: nothing lost, the hub's memory per live UDP flow small, and RSS at the
// end within a few MiB of what it was once the flow table had filled (a plateau, not a slope).
//
//   node bench/soak.mjs [--minutes 10] [--tcp-per-sec 100] [--udp-per-sec 20]
//
// Each TCP connection writes a few bytes, reads them back from an echo target and closes; each
// UDP flow is a new client socket (from one of 64 loopback addresses) that sends 3 datagrams
// 200 ms apart and reads 3 replies from a UDP echo target. UDP flows stay live at both ends until udpFlowIdleMs (60 s) after their last
// datagram, so ~udp-per-sec × 60 flows are live once the table has filled (minute 1 onwards).
// Every 10 s: hub and edge RSS (from /proc) and the live flows both report (their /status).
// Results go to bench/results/soak-latest.json; docs/BENCHMARKS.md records a run.
import { execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { freePort, killAllSync, rssKiB, sleep, stopAll } from './lib/proc.mjs';
import { ROOT, startTunnel, tunnelMissing } from './lib/tunnel.mjs';

/** Issue 24's bounds: the hub's memory per live UDP flow, and the drift from minute 2 to the end. */
const MAX_HUB_BYTES_PER_FLOW = 8 * 1024;
const MAX_DRIFT_KIB = 8 * 1024;
/** A connection or flow that has not finished in this long is counted lost. */
const TIMEOUT_MS = 5_000;
const SAMPLE_EVERY_MS = 10_000;

const say = (line) => process.stdout.write(`soak: ${line}\n`);

function parse(argv) {
  const o = { minutes: 10, tcpPerSec: 100, udpPerSec: 20 };
  for (let i = 0; i < argv.length; i += 1) {
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v <= 0) throw new Error(`${argv[i - 1]}: expected a positive number, got ${argv[i]}`);
      return v;
    };
    if (argv[i] === '--minutes') o.minutes = value();
    else if (argv[i] === '--tcp-per-sec') o.tcpPerSec = value();
    else if (argv[i] === '--udp-per-sec') o.udpPerSec = value();
    else throw new Error(`unknown argument ${argv[i]} (usage: soak.mjs [--minutes N] [--tcp-per-sec N] [--udp-per-sec N])`);
  }
  return o;
}

async function listenTcpEcho() {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  return server;
}

async function listenUdpEcho() {
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address));
  await new Promise((done) => sock.bind(0, '127.0.0.1', done));
  return sock;
}

/** One short TCP connection through the tunnel: true when the echo came back whole. */
function tcpOnce(port, n) {
  return new Promise((done) => {
    const payload = Buffer.from(`soak ${n}\n`);
    let got = Buffer.alloc(0);
    const s = net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => finish(false), TIMEOUT_MS);
    function finish(ok) {
      clearTimeout(timer);
      s.destroy();
      done(ok);
    }
    s.on('connect', () => s.write(payload));
    s.on('data', (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= payload.length) finish(got.equals(payload));
    });
    s.on('error', () => finish(false));
  });
}

/**
 * Client addresses the UDP flows come from (127.0.0.1–127.0.0.64), in turn: public clients are
 * many hosts, and one host holds at most `maxUdpFlowsPerSource` (1,024) flows — fewer than the
 * ~1,200 this soak keeps live.
 */
const UDP_SOURCES = 64;

/** One UDP flow through the tunnel: 3 datagrams 200 ms apart, each reply awaited. */
async function udpFlow(port, n) {
  const sock = dgram.createSocket('udp4');
  await new Promise((done) => sock.bind(0, `127.0.0.${1 + (n % UDP_SOURCES)}`, done));
  const replies = [];
  let wake = null;
  sock.on('message', (m) => {
    replies.push(m.toString());
    wake?.();
  });
  let ok = 0;
  try {
    for (let i = 0; i < 3; i += 1) {
      const text = `flow ${n} datagram ${i}`;
      sock.send(text, port, '127.0.0.1');
      const deadline = Date.now() + TIMEOUT_MS;
      while (!replies.includes(text) && Date.now() < deadline) {
        await new Promise((done) => {
          wake = done;
          setTimeout(done, 50);
        });
      }
      if (replies.includes(text)) ok += 1;
      if (i < 2) await sleep(200);
    }
  } finally {
    sock.close();
  }
  return ok;
}

async function status(url) {
  try {
    const r = await fetch(`${url}/status`);
    return await r.json();
  } catch {
    return null;
  }
}

async function main() {
  const o = parse(process.argv.slice(2));
  const missing = tunnelMissing();
  if (missing !== null) throw new Error(missing);
  const work = mkdtempSync(join(os.tmpdir(), 'ri-soak-'));
  const tcpEcho = await listenTcpEcho();
  const udpEcho = await listenUdpEcho();
  const [tcpPort, udpPort] = [await freePort(), await freePort()];
  const tunnel = await startTunnel({
    dir: join(work, 'tunnel'),
    admin: true,
    edges: [{ id: 'soak', transportMode: 'quicWithFallback', tcp: [{ port: tcpPort, targetPort: tcpEcho.address().port }], udp: [{ port: udpPort, targetPort: udpEcho.address().port }] }],
  });
  const edge = tunnel.edges[0];
  say(`tunnel up over ${edge.transport}; ${o.minutes} min of ${o.tcpPerSec} TCP connections/s and ${o.udpPerSec} new UDP flows/s`);
  const base = { hubKiB: rssKiB(tunnel.hubPid), edgeKiB: rssKiB(edge.pid) };
  const counts = { tcp: 0, tcpOk: 0, flows: 0, datagrams: 0, datagramsOk: 0 };
  const inflight = new Set();
  const track = (p) => {
    inflight.add(p);
    p.finally(() => inflight.delete(p));
  };
  const samples = [];
  const started = Date.now();
  const end = started + o.minutes * 60_000;
  let nextSample = started;
  let tcpDue = 0;
  let udpDue = 0;
  while (Date.now() < end) {
    const elapsed = (Date.now() - started) / 1000;
    // Open what is due by now, so the rates hold however the event loop is scheduled.
    for (; tcpDue < Math.floor(elapsed * o.tcpPerSec); tcpDue += 1) {
      counts.tcp += 1;
      track(tcpOnce(tcpPort, counts.tcp).then((ok) => (counts.tcpOk += ok ? 1 : 0)));
    }
    for (; udpDue < Math.floor(elapsed * o.udpPerSec); udpDue += 1) {
      counts.flows += 1;
      counts.datagrams += 3;
      track(udpFlow(udpPort, counts.flows).then((ok) => (counts.datagramsOk += ok)));
    }
    if (Date.now() >= nextSample) {
      nextSample += SAMPLE_EVERY_MS;
      const [hubStatus, edgeStatus] = await Promise.all([status(tunnel.hubAdminUrl), status(edge.adminUrl)]);
      const sample = {
        atSec: Math.round((Date.now() - started) / 1000),
        hubKiB: rssKiB(tunnel.hubPid),
        edgeKiB: rssKiB(edge.pid),
        hubFlows: hubStatus?.edges?.[0]?.udp?.flows ?? null,
        edgeFlows: edgeStatus?.udp?.flows ?? null,
        transport: edgeStatus?.transport ?? null,
      };
      samples.push(sample);
      say(`${sample.atSec}s hub ${sample.hubKiB} KiB edge ${sample.edgeKiB} KiB, live flows hub ${sample.hubFlows} edge ${sample.edgeFlows}, ${counts.tcpOk}/${counts.tcp} TCP ok, ${counts.datagramsOk}/${counts.datagrams} datagrams answered`);
    }
    await sleep(5);
  }
  await Promise.all([...inflight]);
  const last = samples.at(-1);
  // Minute 2: the first sample at or after 120 s (the flow table has been full for a minute).
  const minute2 = samples.find((s) => s.atSec >= 120) ?? samples[0];
  // What a live flow costs the hub: its memory with the flows live, and again once they have
  // all expired (udpFlowIdleMs after their last datagram, and the 10 s trim that gives freed
  // memory back), over how many there were. Noise in a Node process's RSS is a few MiB either
  // way; over ~1,200 flows that is a few KB per flow, which is why the soak needs its full rate.
  const withFlows = { hubKiB: rssKiB(tunnel.hubPid), flows: (await status(tunnel.hubAdminUrl))?.edges?.[0]?.udp?.flows ?? 0 };
  say(`load stopped with ${withFlows.flows} live flows at the hub (${withFlows.hubKiB} KiB); waiting for them to expire`);
  const expiryDeadline = Date.now() + 120_000;
  let expired = null;
  while (Date.now() < expiryDeadline) {
    await sleep(5_000);
    const flowsNow = (await status(tunnel.hubAdminUrl))?.edges?.[0]?.udp?.flows;
    if (flowsNow === 0) {
      // One more trim period so what the flows freed is given back.
      await sleep(12_000);
      expired = { hubKiB: rssKiB(tunnel.hubPid), flows: 0 };
      break;
    }
  }
  const flows = withFlows.flows;
  const perFlow = flows > 0 && expired !== null ? ((withFlows.hubKiB - expired.hubKiB) * 1024) / flows : null;
  const result = {
    at: new Date().toISOString(),
    commit: (() => {
      try {
        return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
      } catch {
        return null;
      }
    })(),
    options: o,
    machine: `${os.cpus().length} CPUs, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.release()}`,
    transport: edge.transport,
    base,
    counts,
    lost: { tcp: counts.tcp - counts.tcpOk, datagrams: counts.datagrams - counts.datagramsOk },
    hubBytesPerLiveFlow: perFlow === null ? null : Math.round(perFlow),
    flowCost: { withFlows, expired },
    drift: { hubKiB: last.hubKiB - minute2.hubKiB, edgeKiB: last.edgeKiB - minute2.edgeKiB, fromSec: minute2.atSec, toSec: last.atSec },
    samples,
  };
  result.pass = {
    nothingLost: result.lost.tcp === 0 && result.lost.datagrams === 0,
    hubPerFlow: perFlow !== null && perFlow <= MAX_HUB_BYTES_PER_FLOW && flows >= o.udpPerSec * 30,
    plateau: Math.abs(result.drift.hubKiB) <= MAX_DRIFT_KIB && Math.abs(result.drift.edgeKiB) <= MAX_DRIFT_KIB,
  };
  writeFileSync(join(ROOT, 'bench/results/soak-latest.json'), `${JSON.stringify(result, null, 2)}\n`);
  say(`lost: ${result.lost.tcp} TCP connections, ${result.lost.datagrams} datagrams; hub ${result.hubBytesPerLiveFlow} B per live flow (${flows} flows, bound ${MAX_HUB_BYTES_PER_FLOW}); drift minute ${Math.round(minute2.atSec / 60)} → end: hub ${result.drift.hubKiB} KiB, edge ${result.drift.edgeKiB} KiB (bound ±${MAX_DRIFT_KIB})`);
  say(`pass: ${JSON.stringify(result.pass)} — written to bench/results/soak-latest.json`);
  await tunnel.stop();
  tcpEcho.close();
  udpEcho.close();
  rmSync(work, { recursive: true, force: true });
  return Object.values(result.pass).every(Boolean) ? 0 : 1;
}

process.on('SIGINT', () => {
  killAllSync();
  process.exit(130);
});
main().then(
  (code) => process.exit(code),
  async (error) => {
    process.stderr.write(`soak: ${error.stack ?? error}\n`);
    await stopAll();
    process.exit(1);
  },
);
