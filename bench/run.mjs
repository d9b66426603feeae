#!/usr/bin/env node
// `npm run bench`: our tunnel against its peers, on this machine, in one run (issue 5).
//
// Every path carries the same three workloads to the same three servers on loopback:
//   throughput    iperf3, 1 and 8 streams                      → Gbit/s, and CPU s/GB for the path
//   latency       sockperf TCP ping-pong                        → full round trip p50/p99, µs
//   connections   wrk, one request per connection to nginx      → new connections per second
// plus UDP at a fixed offered rate (loss), and for our tunnel the hub's and edge's memory idle and
// with 10,000 idle connections open (through a hub and edge of their own, started fresh). Paths: direct, socat relay, stunnel TLS pair, ssh -R
// (aes128-gcm), kcptun, and ours in tcpTls and quic mode (quic/UDP are reported "not yet" when the
// edge says it is not using them; nothing is ever faked).
//
// The whole run re-executes itself in a private network namespace (`unshare -n`): TIME_WAIT
// sockets and servers from anything else on the machine cannot disturb it, fixed ports cannot
// collide, and `tcp_tw_reuse` is set for that namespace only. Paths are measured in interleaved
// rounds (round 1: every path, round 2: every path, …) and each number is the median over rounds,
// so a burst of load from someone else on the machine hits all paths alike.
//
// Options:
//   --seconds N     length of each measurement (default 3)
//   --rounds N      rounds; medians are taken over these (default 3)
//   --quick         --seconds 1 --rounds 1 --idle-count 1000 (a look, not a result)
//   --paths a,b     only these paths (names as in the table, e.g. "direct,tcpTls")
//   --idle-count N  idle connections for the memory measurement (default 10000; 0 skips it)
//   --profile       also `perf record` each tunnel path's hub and edge during an 8-stream iperf3 run
//   --profile-streams N  profile (as --profile) an iperf3 run of N streams instead of 8
//   --udp-rate R    UDP offered rate (iperf3 -b syntax; default 1G, issue 15's target)
//   --udp-reverse   the UDP workload sends from the target to the client (iperf3 -R): the
//                   direction of replies, through hub then edge (implies --no-report; the
//                   recorded target is the client-to-target direction)
//   --workloads w,… only these of tput,lat,conn,udp (for quick A/B runs while optimising;
//                   implies --no-report)
//   --no-report     do not rewrite docs/BENCHMARKS.md
//   --keep          keep the work directory (logs of every process)
//   --cpu-layout L  free (default): the kernel places every process, as on a user's machine;
//                   pinned: load generator and each path's entry process on CPU 0, its exit
//                   process and the servers on CPU 1, the same for every path (steadier
//                   throughput for A/B runs; see cpuLayout in lib/proc.mjs)
//   --glibc-defaults  run without the GLIBC_TUNABLES the units ship (see GLIBC_TUNABLES below)
//   --compare DIR   also run another checkout's built tunnel (e.g. a worktree of the commit
//                   before a change) as paths "tcpTls@base" and "quic@base", in the same rounds,
//                   for before/after numbers from one run (implies --no-report)
// Environment: BENCH_PERFORMANCE_JSON is passed to hub and edge as --performance.
import { execFileSync, fork, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { cpuLayout, cpuSeconds, killAllSync, processName, reapedChildrenCpuSeconds, rssKiB, sleep, startProcess, stopAll, threadCpuSeconds, which } from './lib/proc.mjs';
import { placementCeiling } from './lib/placement.mjs';
import { iperf3ServerReady, iperf3Tcp, iperf3Udp, sockperfPingPong, wrkConnRate } from './lib/measure.mjs';
import { PACKAGES, PEER_TOOLS, TARGET, startPeer, startTargets } from './lib/peers.mjs';
import { ROOT, startTunnel, tunnelMissing } from './lib/tunnel.mjs';
import { renderMarkdown } from './report.mjs';

const RESULTS = join(ROOT, 'bench/results');
const DOC = join(ROOT, 'docs/BENCHMARKS.md');

/** UDP workload of issue 15's target: 1,200-byte datagrams offered at 1 Gbit/s (issue 5's was
 * 500 Mbit/s). `--udp-rate` sets another rate (iperf3's -b syntax). */
const UDP_RATE = '1G';
const UDP_LENGTH = 1200;
/** Port of the idle-connection target (bench/idle-conns.mjs serve). */
const IDLE_TARGET_PORT = 7990;
/** Workloads measured per path each round (`--workloads` picks a subset). */
const WORKLOADS = ['tput', 'lat', 'conn', 'udp'];
/** Entry ports of our tunnel; +0 iperf3, +1 sockperf, +2 nginx, +3 idle target, +4 iperf3 (TCP control + UDP). */
const TUNNEL_BASE = { tcpTls: 7201, quic: 7301, 'tcpTls@base': 7401, 'quic@base': 7501 };
/**
 * Entry ports of the tunnel that only holds idle connections: a hub and a tcpTls edge of their
 * own, started fresh for that measurement. On daemons that carried the bench's traffic, the
 * connections' memory partly lands in heap the traffic grew and freed, and the RSS growth
 * understated the cost by up to half (bench/changes.md, session 9).
 */
const MEMORY_TUNNEL_BASE = 7601;

/**
 * Peers whose busy work stays on the same threads for a whole iperf3 run, so that each thread's
 * CPU per GB is a fixed cost the placement model can place (bench/lib/placement.mjs). Left out:
 * socat (a process per connection, gone with it), stunnel (a thread per connection) and kcptun
 * (Go moves its goroutines between threads).
 */
const PLACEMENT_PEERS = new Set(['direct', 'ssh -R aes128-gcm']);

/**
 * The processes whose threads are the placement model's units, named once when the path starts
 * (a process that dies later reads as idle, never as another name): our hub and edge, or each
 * peer process by its command. Null for paths the model does not fit (PLACEMENT_PEERS).
 */
function placementProcesses(name, kind, pids) {
  if (kind === 'tunnel') return { hub: pids.hub, edge: pids.edge };
  if (!PLACEMENT_PEERS.has(name)) return null;
  const out = {};
  for (const pid of pids) {
    // Gone already: named by pid, and its threads read as idle.
    const comm = processName(pid) ?? `pid ${pid}`;
    let label = comm;
    for (let i = 2; Object.hasOwn(out, label); i++) label = `${comm} #${i}`;
    out[label] = [pid];
  }
  return out;
}

/** CPU seconds of each thread of each named process tree: { name: Map(tid → seconds) }. */
function threadsByName(processes) {
  return Object.fromEntries(Object.entries(processes).map(([k, roots]) => [k, threadCpuSeconds(roots)]));
}

/** What each thread used between two `threadsByName` readings: { name: { tid: seconds } }. */
function threadDelta(before, after) {
  return Object.fromEntries(Object.entries(after).map(([k, threads]) => [k, Object.fromEntries([...threads].map(([tid, sec]) => [tid, sec - (before[k]?.get(tid) ?? 0)]))]));
}

/**
 * Per stream count: each busy thread's CPU s per GB over every iperf3 run of the path (named
 * after its process, numbered when the process tree has several busy threads), and the
 * throughput ceiling of the best placement of them on this machine's cores
 * (bench/lib/placement.mjs). Threads are matched across runs by rank (each run's busiest of a
 * name with the other runs' busiest, and so on), not by thread id: a program that starts new
 * threads per test (iperf3 from 3.16 does) still gives one unit per thread of a run. Threads
 * under 0.01 s/GB (timers, the Node main thread) are left out.
 */
function placementSummary(cpuSamples, cores) {
  const out = {};
  for (const streams of [1, 8]) {
    const runs = cpuSamples.filter((c) => c.streams === streams && c.threads);
    const gb = runs.reduce((a, c) => a + c.bytes, 0) / 1e9;
    if (gb <= 0) continue;
    const byRank = {};
    for (const run of runs) {
      for (const [name, threads] of Object.entries(run.threads)) {
        byRank[name] ??= [];
        Object.values(threads)
          .sort((a, b) => b - a)
          .forEach((sec, i) => (byRank[name][i] = (byRank[name][i] ?? 0) + sec));
      }
    }
    const costs = {};
    for (const [name, ranked] of Object.entries(byRank)) {
      const busy = ranked.map((sec) => sec / gb).filter((perGB) => perGB >= 0.01);
      busy.forEach((perGB, i) => (costs[busy.length === 1 ? name : `${name} thread ${i + 1}`] = perGB));
    }
    const ceiling = placementCeiling(costs, cores);
    if (ceiling !== null) out[streams] = { costs, ...ceiling };
  }
  return out;
}

/** Mbit/s of an iperf3 rate (`500M`, `1G`, `800K`, `1000000`), or null if it is not one. */
function rateMbps(rate) {
  const m = /^(\d+(?:\.\d+)?)([KMG]?)$/.exec(rate);
  return m === null ? null : Number(m[1]) * { '': 1e-6, K: 1e-3, M: 1, G: 1e3 }[m[2]];
}

/** One bench edge: its entry ports from `b` (+0 iperf3, +1 sockperf, +2 nginx, +3 idle target, +4 iperf3 TCP + UDP). */
function benchEdge(id, transportMode, b) {
  return {
    id,
    transportMode,
    tcp: [
      { port: b, targetPort: TARGET.iperf3 },
      { port: b + 1, targetPort: TARGET.sockperf },
      { port: b + 2, targetPort: TARGET.nginx },
      { port: b + 3, targetPort: IDLE_TARGET_PORT },
      { port: b + 4, targetPort: TARGET.iperf3 },
    ],
    udp: [{ port: b + 4, targetPort: TARGET.iperf3 }],
  };
}

// ---------------------------------------------------------------------------------------------
// Options

function parseArgs(argv) {
  const o = { seconds: 3, rounds: 3, paths: null, workloads: null, idleCount: 10_000, profile: false, profileStreams: 8, report: true, keep: false, cpuLayout: 'free', udpRate: UDP_RATE, udpReverse: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--seconds') o.seconds = positive(value(), a);
    else if (a === '--rounds') o.rounds = positive(value(), a);
    else if (a === '--quick') Object.assign(o, { seconds: 1, rounds: 1, idleCount: 1_000 });
    else if (a === '--paths') o.paths = value().split(',').map((s) => s.trim());
    else if (a === '--workloads') {
      o.workloads = value().split(',').map((s) => s.trim());
      const unknown = o.workloads.filter((w) => !WORKLOADS.includes(w));
      if (unknown.length > 0) usage(`--workloads: unknown ${unknown.join(', ')} (known: ${WORKLOADS.join(', ')})`);
      o.report = false;
    } else if (a === '--idle-count') o.idleCount = Math.floor(Number(value()));
    else if (a === '--profile') o.profile = true;
    else if (a === '--profile-streams') {
      o.profile = true;
      o.profileStreams = Number(value());
      // 128: iperf3's own limit for -P.
      if (!Number.isInteger(o.profileStreams) || o.profileStreams < 1 || o.profileStreams > 128) usage(`--profile-streams: expected a whole number from 1 to 128 (iperf3's -P range)`);
    }
    else if (a === '--udp-reverse') {
      o.udpReverse = true;
      o.report = false;
    } else if (a === '--udp-rate') {
      o.udpRate = value();
      if (rateMbps(o.udpRate) === null) usage(`--udp-rate: expected a rate like 500M or 1G, got ${o.udpRate}`);
    } else if (a === '--no-report') o.report = false;
    else if (a === '--keep') o.keep = true;
    else if (a === '--glibc-defaults') o.glibcDefaults = true;
    else if (a === '--compare') {
      o.compare = value();
      o.report = false;
    }
    else if (a === '--cpu-layout') {
      o.cpuLayout = value();
      if (!['pinned', 'free'].includes(o.cpuLayout)) usage(`--cpu-layout: expected pinned or free, got ${o.cpuLayout}`);
    }
    else usage(`unknown option ${a}`);
  }
  return o;
}

function positive(text, flag) {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) usage(`${flag} must be a positive number, got ${text}`);
  return n;
}

function usage(message) {
  process.stderr.write(`bench/run.mjs: ${message}\nsee the comment at the top of bench/run.mjs for the options\n`);
  process.exit(2);
}

const say = (line) => process.stdout.write(`${line}\n`);

// ---------------------------------------------------------------------------------------------
// Outside the namespace: install what is missing, then re-execute inside `unshare -n`

function ensurePackages(profile) {
  const tools = Object.keys(PACKAGES);
  if (profile) tools.push('perf');
  const missing = [...new Set(tools.filter((t) => which(t) === null).map((t) => (t === 'perf' ? 'linux-perf' : PACKAGES[t])))];
  if (missing.length === 0) return;
  if (process.getuid?.() === 0 && which('apt-get') !== null) {
    say(`bench: installing Debian packages: ${missing.join(' ')}`);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
    const r = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: ['ignore', 'ignore', 'inherit'], env });
    if (r.status !== 0) say('bench: WARNING: apt-get install failed; paths needing the missing tools are skipped');
  } else {
    say(`bench: WARNING: missing ${missing.join(' ')} (not root or no apt-get); paths needing them are skipped`);
  }
}

function reexecInNamespace() {
  const self = [process.execPath, ...process.execArgv, ...process.argv.slice(1)];
  const env = { ...process.env, BENCH_NETNS: '1' };
  const root = process.getuid?.() === 0;
  // Root may raise its own descriptor limit: 10,000 idle connections need ~10,000 per daemon.
  // Without CAP_SYS_RESOURCE the hard limit stays; the idle-connection client and target are
  // separate processes so that each side still fits.
  const raise = ['prlimit', '--nofile=65536:65536', '--'];
  const prlimit = root && which('prlimit') !== null && spawnSync(raise[0], [...raise.slice(1), 'true']).status === 0 ? raise : [];
  const attempts = root ? [['unshare', '-n']] : [['unshare', '-rn']];
  for (const ns of attempts) {
    const cmd = [...prlimit, ...ns, ...self];
    const probe = spawnSync(ns[0], [...ns.slice(1), 'true']);
    if (probe.status !== 0) continue;
    const r = spawnSync(cmd[0], cmd.slice(1), { stdio: 'inherit', env });
    process.exit(r.status ?? 1);
  }
  say('bench: WARNING: cannot create a network namespace (unshare -n); running in the current one. Fixed ports may collide and TIME_WAIT from earlier runs may lower connection rates.');
  env.BENCH_NETNS = 'none';
  const r = spawnSync(self[0], self.slice(1), { stdio: 'inherit', env });
  process.exit(r.status ?? 1);
}

function setUpNamespace() {
  const steps = [
    ['ip', ['link', 'set', 'lo', 'up']],
    // Reuse TIME_WAIT ports for new outgoing connections: the connection-rate runs open tens of
    // thousands. Only this namespace sees the setting.
    ['sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1']],
    // Ephemeral ports above every fixed port the harness listens on (2222…8088), so an outgoing
    // connection can never take a port a server is about to bind.
    ['sysctl', ['-q', '-w', 'net.ipv4.ip_local_port_range=10000 65535']],
    ['sysctl', ['-q', '-w', 'net.core.somaxconn=8192']],
  ];
  for (const [cmd, args] of steps) {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    if (r.status !== 0) say(`bench: WARNING: ${cmd} ${args.join(' ')} failed: ${(r.stderr || '').trim()}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Machine and build facts for the record

function machineInfo() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const version = (cmd, args, re = /.*/) => {
    try {
      const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
      return (re.exec(`${r.stdout}${r.stderr}`)?.[0] ?? '').trim() || null;
    } catch {
      return null;
    }
  };
  const git = (args) => {
    try {
      return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8' }).trim();
    } catch {
      return null;
    }
  };
  return {
    nproc: Number(execFileSync('nproc', { encoding: 'utf8' }).trim()),
    cpuModel: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? 'unknown',
    kernel: os.release(),
    memTotalMiB: Math.round(os.totalmem() / 1048576),
    // Caps iperf3's -w for UDP; below 4 MiB the load generator's own drops creep back in.
    rmemMaxKiB: Math.round(Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8').trim()) / 1024),
    node: process.version,
    gitCommit: git(['rev-parse', '--short', 'HEAD']),
    gitDirty: (git(['status', '--porcelain', '--', 'crates', 'packages']) ?? '') !== '',
    tools: {
      iperf3: version('iperf3', ['--version'], /iperf [\d.]+/),
      sockperf: version('sockperf', ['--version'], /version #?[\d.]+/),
      wrk: version('wrk', ['-v'], /wrk [\d.]+/),
      nginx: version(which('nginx') ?? 'nginx', ['-v'], /nginx\/[\d.]+/),
      stunnel: version('stunnel4', ['-version'], /stunnel [\d.]+/),
      ssh: version('ssh', ['-V'], /OpenSSH_[\w.]+/),
      kcptun: version('kcptun-client', ['-v'], /version [\w.]+/),
      socat: version('socat', ['-V'], /socat version [\d.]+/),
    },
  };
}

const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);

// ---------------------------------------------------------------------------------------------
// Measurement helpers

function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/**
 * Runs `measure()` while reading, before and after, the CPU time of `groups` ({name: [pids]})
 * and, when `threadsOf` ({name: [pids]}) is given, of each of their threads (`threads`: {name:
 * {tid: seconds}}) and of the children reaped meanwhile (`reaped`: the load generator
 * `measure` ran, once it has exited).
 */
async function withCpu(groups, measure, threadsOf = null) {
  const before = Object.fromEntries(Object.entries(groups).map(([k, pids]) => [k, cpuSeconds(pids)]));
  const threadsBefore = threadsOf && threadsByName(threadsOf);
  const reapedBefore = reapedChildrenCpuSeconds();
  const result = await measure();
  const reaped = reapedChildrenCpuSeconds() - reapedBefore;
  const cpu = Object.fromEntries(Object.entries(groups).map(([k, pids]) => [k, cpuSeconds(pids) - before[k]]));
  const threads = threadsOf && threadDelta(threadsBefore, threadsByName(threadsOf));
  return { result, cpu, threads, reaped };
}

/** Opens `count` idle connections through `port` to the idle target and reads hub/edge RSS. */
async function idleConnectionCost(dir, port, hubPid, edgePid, count) {
  const script = join(ROOT, 'bench/idle-conns.mjs');
  const request = (child, cmd, key, timeoutMs = 60_000) =>
    new Promise((done, reject) => {
      const timer = setTimeout(() => reject(new Error(`idle-conns: no ${key} reply`)), timeoutMs);
      const on = (m) => {
        if (key in m) {
          clearTimeout(timer);
          child.off('message', on);
          done(m);
        }
      };
      child.on('message', on);
      if (cmd !== null) child.send({ cmd });
    });
  const server = fork(script, ['serve', String(IDLE_TARGET_PORT)], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let serverErr = '';
  server.stderr.on('data', (d) => (serverErr += d));
  try {
    await request(server, null, 'listening', 10_000).catch((e) => {
      throw new Error(`${e.message} (idle target on port ${IDLE_TARGET_PORT}: ${serverErr.trim() || 'no error output'})`);
    });
    await sleep(500);
    const idle = { hub: rssKiB(hubPid), edge: rssKiB(edgePid) };
    const client = fork(script, ['open', String(port), String(count)], { stdio: 'ignore' });
    try {
      const opened = await request(client, null, 'opened', 120_000);
      // Every stream is open end to end once the target has accepted all of them.
      const deadline = Date.now() + 60_000;
      let atTarget = 0;
      while (Date.now() < deadline) {
        atTarget = (await request(server, 'count', 'count')).count;
        if (atTarget >= opened.opened) break;
        await sleep(200);
      }
      await sleep(1000);
      const withConns = { hub: rssKiB(hubPid), edge: rssKiB(edgePid) };
      await request(client, 'close', 'closed');
      // Give both daemons time to tear the streams down, then see what memory they keep.
      const closeDeadline = Date.now() + 30_000;
      while (Date.now() < closeDeadline && (await request(server, 'count', 'count')).count > 0) await sleep(200);
      await sleep(1500);
      const afterClose = { hub: rssKiB(hubPid), edge: rssKiB(edgePid) };
      const perConnBytes = ((withConns.hub - idle.hub + (withConns.edge - idle.edge)) * 1024) / Math.max(1, atTarget);
      return { count, opened: opened.opened, failed: opened.failed, failures: opened.failures, openMs: opened.ms, atTarget, rssKiB: { idle, withConns, afterClose }, perConnKiB: perConnBytes / 1024 };
    } finally {
      client.kill();
    }
  } finally {
    server.kill();
  }
}

/**
 * perf record (flat, by symbol) on one tunnel path's hub and edge during one iperf3 run (8 streams unless --profile-streams),
 * with the CPU seconds each process spent per GB received, so a symbol's share reads as s/GB.
 */
async function profile(dir, path, port, pids, seconds, streams) {
  if (which('perf') === null) return { error: 'perf is not installed (Debian: linux-perf)' };
  await iperf3ServerReady(TARGET.iperf3);
  const recs = Object.entries(pids).map(([name, pid]) => {
    const data = join(dir, `perf-${path}-${name}.data`);
    return { name, data, proc: startProcess(`perf ${path} ${name}`, 'perf', ['record', '-F', '499', '--call-graph', 'dwarf,16384', '-p', String(pid), '-o', data, '--', 'sleep', String(seconds + 1)], { logFile: join(dir, `perf-${path}-${name}.log`) }) };
  });
  await sleep(300);
  const { result: tput, cpu } = await withCpu(Object.fromEntries(Object.entries(pids).map(([n, pid]) => [n, [pid]])), () => iperf3Tcp(port, streams, seconds));
  await Promise.all(recs.map((r) => r.proc.exited));
  const gb = (tput.bytes ?? 0) / 1e9;
  const out = { streams, gbps: tput.gbps ?? null, cpuSecondsPerGB: Object.fromEntries(Object.entries(cpu).map(([n, s]) => [n, gb > 0 ? s / gb : null])) };
  mkdirSync(RESULTS, { recursive: true });
  for (const r of recs) {
    // Flat (self time by symbol), then who calls the biggest ones (dwarf unwinding: the addon is
    // built without frame pointers).
    const perfReport = (args) => spawnSync('perf', ['report', '-i', r.data, '--stdio', '--no-children', ...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }).stdout.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#')).join('\n');
    const text = perfReport(['--sort', 'dso,symbol', '--percent-limit', '0.7', '-g', 'none']);
    const chains = perfReport(['--sort', 'symbol', '--percent-limit', '2', '-g', 'caller,0.5,callee', '--max-stack', '10']);
    const perGB = out.cpuSecondsPerGB[r.name];
    const head = `# ${path} ${r.name}: ${tput.gbps?.toFixed(2) ?? '-'} Gbit/s (iperf3 -P ${streams}), ${perGB?.toFixed(2) ?? '-'} CPU s per GB (user + system)`;
    writeFileSync(join(RESULTS, `profile-${path}-${r.name}.txt`), `${head}\n${text}\n\n# call chains of symbols above 2 %\n${chains}\n`);
    out[r.name] = text.split('\n').slice(0, 25);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The run

/**
 * The glibc setting the systemd units and the container image ship (examples/*.service): every
 * process of the run inherits it, peers included, so the comparison stays like for like.
 * `--glibc-defaults` runs without it.
 */
/** How often the daemons return freed memory to the OS (TRIM_EVERY in crates/tunnel-core/src/runtime.rs). */
const TRIM_EVERY_MS = 10_000;
const GLIBC_TUNABLES = 'glibc.cpu.x86_rep_movsb_threshold=100000000';

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (!o.glibcDefaults && process.env.GLIBC_TUNABLES === undefined) process.env.GLIBC_TUNABLES = GLIBC_TUNABLES;
  if (process.env.BENCH_NETNS === undefined) {
    ensurePackages(o.profile);
    const missing = tunnelMissing();
    if (missing !== null) {
      process.stderr.write(`bench: ${missing}\n`);
      process.exit(1);
    }
    reexecInNamespace();
    return;
  }
  if (process.env.BENCH_NETNS === '1') setUpNamespace();

  const startedAt = new Date();
  const work = mkdtempSync(join(os.tmpdir(), 'ri-bench-'));
  const cleanup = async () => {
    await stopAll();
    if (!o.keep) rmSync(work, { recursive: true, force: true });
  };
  process.on('exit', killAllSync);
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => void cleanup().then(() => process.exit(130)));

  const machine = machineInfo();
  cpuLayout.pinned = o.cpuLayout === 'pinned' && machine.nproc >= 2 && which('taskset') !== null;
  say(`bench: ${machine.nproc} × ${machine.cpuModel}, kernel ${machine.kernel}, ${o.rounds} rounds × ${o.seconds} s per measurement, work dir ${work}`);
  if (process.env.REMOTEINGRESS_ADDON) say(`bench: the daemons load the addon ${process.env.REMOTEINGRESS_ADDON} (REMOTEINGRESS_ADDON)`);
  const loadBefore = loadavg();
  const want = (name) => o.paths === null || o.paths.includes(name);
  const measure = (w) => o.workloads === null || o.workloads.includes(w);

  for (const tool of ['iperf3', 'sockperf', 'nginx']) {
    if (which(tool) === null) throw new Error(`${tool} is required for the full run (Debian package ${PACKAGES[tool]})`);
  }
  const iperf3Server = (await startTargets(work))[0];

  /** name → { kind, ports, cpu: {group: [pids]}, status: 'ok' | 'not yet' | 'skipped', note } */
  const paths = new Map();
  for (const name of Object.keys(PEER_TOOLS)) {
    if (!want(name)) continue;
    const lacking = PEER_TOOLS[name].filter((t) => which(t) === null);
    if (lacking.length > 0) {
      paths.set(name, { kind: 'peer', status: 'skipped', note: `missing ${lacking.join(', ')}` });
      continue;
    }
    try {
      const p = await startPeer(name, work);
      paths.set(name, { kind: 'peer', status: 'ok', ports: p.ports, cpu: p.pids.length > 0 ? { path: p.pids } : {}, placement: placementProcesses(name, 'peer', p.pids) });
    } catch (error) {
      paths.set(name, { kind: 'peer', status: 'skipped', note: `did not start: ${error.message.split('\n')[0]}` });
    }
  }

  // Our tunnel: one hub, one edge per transport mode.
  const performance = process.env.BENCH_PERFORMANCE_JSON || undefined;
  const modes = ['tcpTls', 'quic'].filter(want);
  let tunnel = null;
  let freshIdle = null;
  if (modes.length > 0) {
    const edges = modes.map((mode) => benchEdge(`bench-${mode.toLowerCase()}`, mode, TUNNEL_BASE[mode]));
    tunnel = await startTunnel({ dir: join(work, 'tunnel'), edges, performance });
    await sleep(1000);
    // The hub's idle RSS with only the tcpTls edge connected (sampled before the next edge dialled).
    freshIdle = { hub: tunnel.edges[0].hubRssKiB, hubAllEdges: rssKiB(tunnel.hubPid), edge: Object.fromEntries(tunnel.edges.map((e) => [e.requestedTransport, rssKiB(e.pid)])) };
    for (const e of tunnel.edges) {
      const b = TUNNEL_BASE[e.requestedTransport];
      const name = e.requestedTransport;
      if (e.transport !== e.requestedTransport) {
        // Asked for QUIC, got TLS (QUIC blocked or failing here): report it, never measure TLS as QUIC.
        paths.set(name, { kind: 'tunnel', status: 'not yet', note: `edge asked for ${e.requestedTransport}, tunnel runs ${e.transport}` });
        await e.proc.stop();
        continue;
      }
      paths.set(name, { kind: 'tunnel', status: 'ok', edge: e, ports: { tput: b, lat: b + 1, conn: b + 2, idle: b + 3, udp: b + 4 }, cpu: { hub: [tunnel.hubPid], edge: [e.pid] }, placement: placementProcesses(name, 'tunnel', { hub: [tunnel.hubPid], edge: [e.pid] }), udpBound: e.udpBound });
    }
  }

  // The comparison tree's tunnel (--compare): its own hub and edges, the same workloads.
  let baseTunnel = null;
  if (o.compare) {
    const baseModes = ['tcpTls', 'quic'].filter((m) => want(`${m}@base`));
    const edges = baseModes.map((mode) => benchEdge(`base-${mode.toLowerCase()}`, mode, TUNNEL_BASE[`${mode}@base`]));
    if (edges.length > 0) {
      baseTunnel = await startTunnel({ dir: join(work, 'base-tunnel'), edges, performance, root: o.compare });
      for (const e of baseTunnel.edges) {
        const name = `${e.requestedTransport}@base`;
        const b = TUNNEL_BASE[name];
        if (e.transport !== e.requestedTransport) {
          paths.set(name, { kind: 'tunnel', status: 'not yet', note: `edge asked for ${e.requestedTransport}, tunnel runs ${e.transport}` });
          continue;
        }
        paths.set(name, { kind: 'tunnel', status: 'ok', edge: e, ports: { tput: b, lat: b + 1, conn: b + 2, idle: b + 3, udp: b + 4 }, cpu: { hub: [baseTunnel.hubPid], edge: [e.pid] }, placement: placementProcesses(name, 'tunnel', { hub: [baseTunnel.hubPid], edge: [e.pid] }), udpBound: e.udpBound });
      }
    }
  }

  // Interleaved rounds.
  const samples = new Map([...paths.keys()].map((k) => [k, { tput1: [], tput8: [], p50: [], p99: [], conn: [], connErrors: [], cpu: [], udp: [] }]));
  const udpPaths = [];
  if (want('direct')) udpPaths.push({ name: 'direct', port: TARGET.iperf3 });
  for (const [name, p] of paths) if (p.kind === 'tunnel' && p.status === 'ok' && p.udpBound) udpPaths.push({ name, port: p.ports.udp });

  for (let round = 1; round <= o.rounds; round++) {
    for (const [name, p] of paths) {
      if (p.status !== 'ok') continue;
      const s = samples.get(name);
      for (const streams of measure('tput') ? [1, 8] : []) {
        await iperf3ServerReady(TARGET.iperf3);
        // Besides the path's CPU, each thread's of its processes and of the iperf3 server, and
        // the client's once it has exited: what the placement ceiling is made of.
        const units = p.placement ? { ...p.placement, 'iperf3 -s': [iperf3Server.pid] } : null;
        const { result, cpu, threads, reaped } = await withCpu(p.cpu, () => iperf3Tcp(p.ports.tput, streams, o.seconds), units);
        s[`tput${streams}`].push(result.gbps ?? null);
        if (result.error) say(`  ${name} tput${streams}: ${result.error}`);
        else s.cpu.push({ streams, bytes: result.bytes, cpu, threads: threads && { ...threads, 'iperf3 -c': { client: reaped } } });
      }
      if (measure('lat')) {
        const lat = await sockperfPingPong(p.ports.lat, Math.max(2, o.seconds));
        if (lat.error) say(`  ${name} latency: ${lat.error}`);
        s.p50.push(lat.p50 ?? null);
        s.p99.push(lat.p99 ?? null);
      }
      if (measure('conn') && which('wrk') !== null) {
        const conn = await wrkConnRate(p.ports.conn, o.seconds);
        if (conn.error) say(`  ${name} conn/s: ${conn.error}`);
        s.conn.push(conn.perSec ?? null);
        s.connErrors.push((conn.socketErrors ?? 0) + (conn.non2xx ?? 0));
      }
      const f = (x, d = 2) => (x == null ? '-' : x.toFixed(d));
      say(`round ${round} ${name.padEnd(18)} tput1 ${f(s.tput1.at(-1))} tput8 ${f(s.tput8.at(-1))} Gbit/s  p50/p99 ${f(s.p50.at(-1), 1)}/${f(s.p99.at(-1), 1)} µs  conn/s ${f(s.conn.at(-1), 0)}`);
    }
    for (const u of measure('udp') ? udpPaths : []) {
      // Our tunnels' CPU per datagram (hub + edge), for work on the datagram path.
      const groups = paths.get(u.name)?.cpu ?? {};
      await iperf3ServerReady(TARGET.iperf3);
      const { result: r, cpu } = await withCpu(groups, () => iperf3Udp(u.port, o.udpRate, UDP_LENGTH, o.seconds, o.udpReverse));
      const cpuSeconds = Object.values(cpu).reduce((a, b) => a + b, 0);
      if (Object.keys(groups).length > 0 && r.packets > 0) {
        r.cpuUsPerDatagram = (cpuSeconds * 1e6) / r.packets;
        r.cpuUsPerDatagramBy = Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, (v * 1e6) / r.packets]));
      }
      if (r.error) say(`  ${u.name} udp: ${r.error}`);
      samples.get(u.name).udp.push(r);
      const by = Object.entries(r.cpuUsPerDatagramBy ?? {}).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(' + ');
      const perDatagram = r.cpuUsPerDatagram === undefined ? '' : `, ${r.cpuUsPerDatagram.toFixed(2)} CPU µs per datagram (${by})`;
      say(`round ${round} ${`${u.name} udp`.padEnd(18)} ${r.mbps?.toFixed(0) ?? '-'} Mbit/s received, ${r.lossPercent?.toFixed(3) ?? '-'} % lost${perDatagram}`);
    }
  }

  // Memory: idle after traffic, then with many idle connections.
  let memory = null;
  let prof = null;
  const tls = paths.get('tcpTls');
  if (tls?.status === 'ok') {
    // Idle means idle: the daemons hand freed heap back to the OS every 10 s (TRIM_EVERY in
    // crates/tunnel-core/src/runtime.rs), so an RSS read a moment after the traffic measured
    // whatever the last burst left, by luck of where the 10 s tick fell (58.8–66.4 MiB for
    // one build in session 10). Waiting one tick and a second makes it the idle RSS.
    await sleep(TRIM_EVERY_MS + 1000);
    memory = { hubEdges: tunnel.edges.length, freshIdleKiB: { hub: freshIdle.hub, edge: freshIdle.edge.tcpTls, hubAllEdges: freshIdle.hubAllEdges }, idleAfterTrafficKiB: { hub: rssKiB(tunnel.hubPid), edge: rssKiB(tls.edge.pid) } };
    if (o.idleCount > 0) {
      say(`memory: opening ${o.idleCount} idle connections through a fresh tcpTls tunnel (its own hub and edge)…`);
      let fresh = null;
      try {
        fresh = await startTunnel({ dir: join(work, 'memory-tunnel'), edges: [benchEdge('bench-memory', 'tcpTls', MEMORY_TUNNEL_BASE)], performance });
        await sleep(1000);
        memory.idleConnections = await idleConnectionCost(work, MEMORY_TUNNEL_BASE + 3, fresh.hubPid, fresh.edges[0].pid, o.idleCount);
        memory.idleConnections.freshTunnel = true;
        const m = memory.idleConnections;
        say(`memory: ${m.atTarget}/${m.count} open in ${m.openMs} ms${m.failed > 0 ? ` (${m.failed} failed: ${JSON.stringify(m.failures)})` : ''}; hub ${m.rssKiB.idle.hub}→${m.rssKiB.withConns.hub} KiB, edge ${m.rssKiB.idle.edge}→${m.rssKiB.withConns.edge} KiB; ${m.perConnKiB.toFixed(2)} KiB per connection`);
      } catch (error) {
        memory.idleConnections = { error: error.message };
        say(`memory: ${error.message}`);
      } finally {
        await fresh?.stop();
      }
    }
  }
  if (o.profile) {
    prof = {};
    for (const [name, p] of paths) {
      if (p.kind !== 'tunnel' || p.status !== 'ok') continue;
      say(`profile: perf record on ${name}'s hub and edge during iperf3 -P ${o.profileStreams}…`);
      prof[name] = await profile(work, name.replace('@', '-'), p.ports.tput, { hub: p.cpu.hub[0], edge: p.edge.pid }, Math.max(3, o.seconds), o.profileStreams);
      say(`profile: ${name} ${prof[name].gbps?.toFixed(2) ?? '-'} Gbit/s, CPU s/GB ${JSON.stringify(prof[name].cpuSecondsPerGB ?? {})}`);
    }
  }

  // Aggregate.
  const rows = [];
  for (const [name, p] of paths) {
    const s = samples.get(name);
    const row = { path: name, kind: p.kind, status: p.status, note: p.note ?? null };
    if (p.status === 'ok') {
      Object.assign(row, {
        tput1Gbps: median(s.tput1),
        tput8Gbps: median(s.tput8),
        p50Us: median(s.p50),
        p99Us: median(s.p99),
        connPerSec: median(s.conn),
        connErrors: s.connErrors.reduce((a, b) => a + b, 0),
        samples: { tput1: s.tput1, tput8: s.tput8, p50: s.p50, p99: s.p99, conn: s.conn },
      });
      const groups = Object.keys(p.cpu);
      if (groups.length > 0) {
        const gb = s.cpu.reduce((a, c) => a + c.bytes, 0) / 1e9;
        const cpuTotal = (group) => s.cpu.reduce((a, c) => a + c.cpu[group], 0);
        row.cpuSecPerGB = gb > 0 ? groups.reduce((a, g) => a + cpuTotal(g), 0) / gb : null;
        if (groups.length > 1) row.cpuSecPerGBBy = Object.fromEntries(groups.map((g) => [g, gb > 0 ? cpuTotal(g) / gb : null]));
        row.gbMoved = gb;
      }
      row.placement = placementSummary(s.cpu, machine.nproc);
    }
    rows.push(row);
  }
  const udp = [];
  udp.push({ path: 'direct', ...udpSummary(samples.get('direct')?.udp) });
  for (const mode of ['tcpTls', 'quic']) {
    const p = paths.get(mode);
    if (p === undefined) continue;
    if (p.status === 'ok' && p.udpBound) udp.push({ path: mode, ...udpSummary(samples.get(mode).udp) });
    else udp.push({ path: mode, status: 'not yet', note: p.status === 'ok' ? 'the edge did not bind its UDP port' : p.note });
  }

  const results = {
    schema: 1,
    date: startedAt.toISOString(),
    durationSec: Math.round((Date.now() - startedAt.getTime()) / 1000),
    machine: { ...machine, loadavgBefore: loadBefore, loadavgAfter: loadavg() },
    settings: { seconds: o.seconds, rounds: o.rounds, idleCount: o.idleCount, udpOffered: `${o.udpRate}bit/s × ${UDP_LENGTH} B`, udpOfferedMbps: rateMbps(o.udpRate), performance: performance ?? null, glibcTunables: process.env.GLIBC_TUNABLES ?? null, netns: process.env.BENCH_NETNS === '1', cpuLayout: cpuLayout.pinned ? 'pinned' : 'free' },
    paths: rows,
    udp,
    memory,
    profile: prof,
  };
  await cleanup();

  mkdirSync(RESULTS, { recursive: true });
  const partial = o.paths !== null || o.rounds < 2;
  const jsonFile = partial ? join(RESULTS, 'partial.json') : join(RESULTS, 'latest.json');
  writeFileSync(jsonFile, JSON.stringify(results, null, 2) + '\n');
  say(`bench: wrote ${jsonFile} (${results.durationSec} s)`);
  const changesFile = join(ROOT, 'bench/changes.md');
  const markdown = renderMarkdown(results, existsSync(changesFile) ? readFileSync(changesFile, 'utf8') : '');
  if (o.report && !partial) {
    writeFileSync(DOC, markdown);
    say(`bench: wrote ${DOC}`);
  } else {
    say('bench: partial run (--paths or --quick): docs/BENCHMARKS.md and latest.json left alone');
  }
  say('');
  say(markdown.split('\n## Machine')[0]);
}

function udpSummary(list) {
  if (list === undefined || list.length === 0) return { status: 'skipped' };
  const ok = list.filter((r) => r.error === undefined);
  return { status: ok.length > 0 ? 'ok' : 'failed', mbps: median(ok.map((r) => r.mbps)), lossPercent: median(ok.map((r) => r.lossPercent)), samples: list };
}

main().catch(async (error) => {
  process.stderr.write(`bench: ${error.stack ?? error}\n`);
  await stopAll();
  process.exit(1);
});
