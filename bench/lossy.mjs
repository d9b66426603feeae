#!/usr/bin/env node
// `node bench/lossy.mjs`: head-of-line blocking under packet loss (issue 15).
//
// Per path, one iperf3 bulk stream and, at the same time over the same tunnel, a sockperf TCP
// ping-pong on another connection. The tunnel leg's packets are dropped at random by nftables
// (`numgen random mod 100000 < N drop`, matching only the tunnel's port, both directions) at
// 0 %, 0.1 % and 1 %. Reported per path and loss: ping-pong p50/p99/p99.9 (µs, full round trip)
// and bulk Gbit/s. Paths: tcpTls and quic (ours, one hub, one edge each) and `ssh -R`
// (aes128-gcm), whose tunnel is one TCP connection like tcpTls; and `direct`, the same two
// workloads straight to their servers with no relay, at 0 % only (there is no tunnel leg to
// drop from): the floor this machine puts under every path's ping-pong while a bulk stream
// runs. Rounds are interleaved (round 1: every loss level and path, round 2: …) and numbers are
// medians over rounds.
//
// The run re-executes itself in a private network namespace (`unshare -n`) whose loopback is set
// to a 1500-byte MTU with segmentation offloads off (where ethtool exists: TCP's and UDP's,
// since quinn sends datagrams in GSO batches), and packets are dropped as loopback receives
// them, so a dropped packet is one Ethernet-sized packet, lost as on a real link. (Before
// session 11 the rule sat on the output hook, which sees packets before the kernel segments
// them: a drop took out up to 10 QUIC datagrams at once, and a dropped TCP segment was not lost
// at all: the kernel reports the drop to TCP, which keeps the segment and sends it again.)
// This kernel has
// no netem (no sch_netem module): nftables' numgen is how loss is made, and it adds no delay.
//
// Options: --seconds N (per measurement, default 5), --rounds N (default 3),
//          --loss a,b,c (percent, default 0,0.1,1), --paths direct,tcpTls,quic,ssh, --keep,
//          --no-report (implied by --loss and --paths)
// Results: bench/results/lossy-<time>.json and a Markdown table on stdout; a full run also
// writes bench/results/lossy-latest.json and regenerates docs/BENCHMARKS.md with it.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { killAllSync, sleep, stopAll, which } from './lib/proc.mjs';
import { iperf3ServerReady, iperf3Tcp } from './lib/measure.mjs';
import { TARGET, startPeer, startTargets } from './lib/peers.mjs';
import { ROOT, startTunnel, tunnelMissing } from './lib/tunnel.mjs';

const say = (line) => process.stdout.write(`${line}\n`);
/** Entry ports of our tunnel per mode: +0 iperf3, +1 sockperf. */
const TUNNEL_BASE = { tcpTls: 7201, quic: 7301 };
/** sshd's port in bench/lib/peers.mjs: the ssh path's tunnel leg. */
const SSH_PORT = 2222;
/** Loss is drawn per packet from 100,000 buckets: 0.001 % resolution. */
const LOSS_BUCKETS = 100_000;
/** The ping-pong starts this long after the bulk stream, so it runs against a full pipe. */
const BULK_HEAD_START_MS = 1000;
/** An Ethernet-sized packet: what a real link drops. */
const LINK_MTU = 1500;

function parseArgs(argv) {
  const o = { seconds: 5, rounds: 3, loss: [0, 0.1, 1], paths: ['direct', 'tcpTls', 'quic', 'ssh'], keep: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => argv[++i] ?? usage(`${a} needs a value`);
    if (a === '--seconds') o.seconds = Number(value());
    else if (a === '--rounds') o.rounds = Number(value());
    else if (a === '--loss') {
      o.loss = value().split(',').map(Number);
      o.noReport = true;
    } else if (a === '--paths') {
      o.paths = value().split(',');
      o.noReport = true;
    }
    else if (a === '--keep') o.keep = true;
    else if (a === '--no-report') o.noReport = true;
    else usage(`unknown option ${a}`);
  }
  if (!(o.seconds > 0) || !(o.rounds >= 1) || o.loss.some((l) => !(l >= 0 && l < 100))) usage('bad --seconds, --rounds or --loss');
  return o;
}

function usage(message) {
  process.stderr.write(`bench/lossy.mjs: ${message}\nsee the comment at the top of bench/lossy.mjs\n`);
  process.exit(2);
}

function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Drops `percent` % of the packets to or from `port` (TCP and UDP) as loopback receives them, one wire packet at a time. */
function setLoss(port, percent) {
  spawnSync('nft', ['delete', 'table', 'inet', 'ri_bench_loss'], { stdio: 'ignore' });
  if (percent === 0) return;
  const n = Math.round((percent / 100) * LOSS_BUCKETS);
  const rules = [
    'table inet ri_bench_loss {',
    '  chain in {',
    // prerouting, not output: the output hook sees a GSO packet (quinn's up to 10 datagrams per
    // sendmsg) before the kernel segments it, and a TCP segment dropped there is reported to TCP,
    // which sends it again (not a loss). Received packets are the segmented ones (offloads off,
    // see main), and a drop there is a loss for every protocol.
    '    type filter hook prerouting priority 0; policy accept;',
    `    meta l4proto { tcp, udp } th dport ${port} numgen random mod ${LOSS_BUCKETS} < ${n} counter drop`,
    `    meta l4proto { tcp, udp } th sport ${port} numgen random mod ${LOSS_BUCKETS} < ${n} counter drop`,
    '  }',
    '}',
  ].join('\n');
  const r = spawnSync('nft', ['-f', '-'], { input: rules, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nft: ${r.stderr}`);
}

/** Packets the loss rules dropped so far (both directions). */
function dropped() {
  const r = spawnSync('nft', ['list', 'table', 'inet', 'ri_bench_loss'], { encoding: 'utf8' });
  return [...(r.stdout ?? '').matchAll(/counter packets (\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
}

/** sockperf ping-pong with p99.9 too. */
async function pingPong(port, seconds) {
  const { execFile } = await import('node:child_process');
  return new Promise((done) => {
    execFile('sockperf', ['pp', '--tcp', '-i', '127.0.0.1', '-p', String(port), '-t', String(seconds), '--full-rtt'], { timeout: (seconds + 30) * 1000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const text = `${stdout}${stderr}`;
      const pick = (p) => Number(new RegExp(`percentile ${p} =\\s*([\\d.]+)`).exec(text)?.[1] ?? NaN);
      const r = { p50: pick('50.000'), p99: pick('99.000'), p999: pick('99.900') };
      done(Number.isFinite(r.p50) ? r : { error: `sockperf: ${(error?.message ?? text).split('\n').slice(-3).join(' | ')}` });
    });
  });
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (process.env.BENCH_NETNS === undefined) {
    // ethtool turns loopback's segmentation offloads off, so a drop is one packet, not a batch.
    if (which('ethtool') === null && process.getuid?.() === 0 && which('apt-get') !== null) {
      spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'ethtool'], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    }
    const missing = tunnelMissing() ?? ['iperf3', 'sockperf', 'nft', 'sshd'].filter((t) => which(t) === null).map((t) => `missing ${t}`)[0] ?? null;
    if (missing !== null) {
      process.stderr.write(`bench/lossy: ${missing} (npm run bench installs the tools)\n`);
      process.exit(1);
    }
    const r = spawnSync('unshare', ['-n', process.execPath, ...process.argv.slice(1)], { stdio: 'inherit', env: { ...process.env, BENCH_NETNS: '1' } });
    process.exit(r.status ?? 1);
  }
  execFileSync('ip', ['link', 'set', 'lo', 'up', 'mtu', String(LINK_MTU)]);
  // Two calls: a kernel that cannot change tx-udp-segmentation must not keep TCP's offloads on.
  const offloads = which('ethtool') !== null
    && spawnSync('ethtool', ['-K', 'lo', 'tso', 'off', 'gso', 'off', 'gro', 'off']).status === 0
    && spawnSync('ethtool', ['-K', 'lo', 'tx-udp-segmentation', 'off']).status === 0;
  spawnSync('sysctl', ['-q', '-w', 'net.ipv4.ip_local_port_range=10000 65535']);

  const work = mkdtempSync(join(os.tmpdir(), 'ri-lossy-'));
  process.on('exit', killAllSync);
  const cleanup = async () => {
    spawnSync('nft', ['delete', 'table', 'inet', 'ri_bench_loss'], { stdio: 'ignore' });
    await stopAll();
    if (!o.keep) rmSync(work, { recursive: true, force: true });
  };
  say(`bench/lossy: loopback MTU ${LINK_MTU}, offloads ${offloads ? 'off' : 'on (no ethtool)'}, loss ${o.loss.join(' / ')} %, ${o.rounds} rounds × ${o.seconds} s, paths ${o.paths.join(', ')}`);
  await startTargets(work);

  /** path → { tunnelPort, tput, lat }; `direct` has no tunnel port. */
  const paths = new Map();
  if (o.paths.includes('direct')) paths.set('direct', { tunnelPort: null, tput: TARGET.iperf3, lat: TARGET.sockperf });
  const modes = ['tcpTls', 'quic'].filter((m) => o.paths.includes(m));
  if (modes.length > 0) {
    const edges = modes.map((mode) => ({
      id: `lossy-${mode.toLowerCase()}`,
      transportMode: mode,
      tcp: [
        { port: TUNNEL_BASE[mode], targetPort: TARGET.iperf3 },
        { port: TUNNEL_BASE[mode] + 1, targetPort: TARGET.sockperf },
      ],
    }));
    const tunnel = await startTunnel({ dir: join(work, 'tunnel'), edges, performance: process.env.BENCH_PERFORMANCE_JSON || undefined });
    for (const e of tunnel.edges) {
      if (e.transport !== e.requestedTransport) throw new Error(`edge asked for ${e.requestedTransport} but runs ${e.transport}`);
      paths.set(e.requestedTransport, { tunnelPort: tunnel.hubPort, tput: TUNNEL_BASE[e.requestedTransport], lat: TUNNEL_BASE[e.requestedTransport] + 1 });
    }
  }
  if (o.paths.includes('ssh')) {
    const p = await startPeer('ssh -R aes128-gcm', work);
    paths.set('ssh -R', { tunnelPort: SSH_PORT, tput: p.ports.tput, lat: p.ports.lat });
  }

  const samples = []; // { round, loss, path, gbps, p50, p99, p999, dropped }
  for (let round = 1; round <= o.rounds; round++) {
    for (const loss of o.loss) {
      for (const [name, p] of paths) {
        if (p.tunnelPort === null && loss > 0) continue;
        if (p.tunnelPort !== null) setLoss(p.tunnelPort, loss);
        await iperf3ServerReady(TARGET.iperf3);
        const bulk = iperf3Tcp(p.tput, 1, o.seconds + 2);
        await sleep(BULK_HEAD_START_MS);
        const pp = await pingPong(p.lat, o.seconds);
        const tput = await bulk;
        const sample = { round, loss, path: name, gbps: tput.gbps ?? null, ...pp, dropped: loss > 0 ? dropped() : 0, error: tput.error ?? pp.error };
        samples.push(sample);
        say(`round ${round} loss ${loss} % ${name}: bulk ${tput.gbps?.toFixed(2) ?? tput.error} Gbit/s, ping-pong p50 ${pp.p50 ?? '-'} p99 ${pp.p99 ?? '-'} p99.9 ${pp.p999 ?? '-'} µs, ${sample.dropped} packets dropped`);
        if (p.tunnelPort !== null) setLoss(p.tunnelPort, 0);
        await sleep(500);
      }
    }
  }

  const table = ['| loss | path | bulk Gbit/s | ping-pong p50 µs | p99 µs | p99.9 µs |', '| --- | --- | --- | --- | --- | --- |'];
  const summary = [];
  for (const loss of o.loss) {
    for (const name of paths.keys()) {
      const s = samples.filter((x) => x.loss === loss && x.path === name);
      if (s.length === 0) continue;
      const row = { loss, path: name, gbps: median(s.map((x) => x.gbps)), p50: median(s.map((x) => x.p50)), p99: median(s.map((x) => x.p99)), p999: median(s.map((x) => x.p999)) };
      summary.push(row);
      const f = (v, d = 0) => (v === null ? '-' : v.toFixed(d));
      table.push(`| ${loss} % | ${name} | ${f(row.gbps, 2)} | ${f(row.p50, 1)} | ${f(row.p99)} | ${f(row.p999)} |`);
    }
  }
  say(`\n${table.join('\n')}`);
  const results = join(ROOT, 'bench/results');
  mkdirSync(results, { recursive: true });
  const file = join(results, `lossy-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const gitCommit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout?.trim() || null;
  const record = { date: new Date().toISOString().slice(0, 10), gitCommit, options: o, mtu: LINK_MTU, offloadsOff: offloads, dropHook: 'prerouting', kernel: os.release(), summary, samples };
  writeFileSync(file, JSON.stringify(record, null, 2));
  say(`\nbench/lossy: results in ${file}`);
  if (!o.noReport) {
    // The full run (every loss level and path) becomes docs/BENCHMARKS.md's loss section.
    writeFileSync(join(results, 'lossy-latest.json'), JSON.stringify(record, null, 2));
    const r = spawnSync(process.execPath, [join(ROOT, 'bench/report.mjs')], { encoding: 'utf8' });
    say(r.status === 0 ? 'bench/lossy: docs/BENCHMARKS.md updated' : `bench/lossy: report failed: ${r.stderr}`);
  }
  await cleanup();
}

main().catch(async (error) => {
  process.stderr.write(`bench/lossy: ${error.stack ?? error}\n`);
  await stopAll();
  process.exit(1);
});
