#!/usr/bin/env node
// docs/BENCHMARKS.md from a results file: `node bench/report.mjs [results.json]` regenerates it
// from bench/results/latest.json without measuring again. The "what each change bought" section
// comes verbatim from bench/changes.md, so regenerating never loses it: extend that file.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(import.meta.dirname, '..');

const PEERS = ['socat relay', 'stunnel TLS pair', 'ssh -R aes128-gcm', 'kcptun'];
const KiB = 1024;

const num = (x, digits) => (x == null || !Number.isFinite(x) ? '–' : x.toFixed(digits));
const mib = (kib) => (kib == null ? '–' : (kib / KiB).toFixed(1));

const gb = (a, b) => `${num(a, 2)} vs ${num(b, 2)} Gbit/s`;
const us = (a, b) => `${num(a, 1)} vs ${num(b, 1)} µs`;

/** `results.paths`' row for `name` if it measured, else undefined. */
const measured = (results, name) => results.paths.find((r) => r.path === name && r.status === 'ok');

/** Issue 5's ratios for tcpTls against ssh -R (evaluateTargets; the bound lines quote them too). */
const SSH_TARGETS = { tput1: 1.3, tput8: 1.5, p50: 0.8, p99: 1.0 };

/**
 * A list of targets and the function that adds a ratio target to it: { target, need, measured,
 * ratio, pass, ...extra }, pass 'n/a' when either number is missing.
 */
function targetList() {
  const out = [];
  const ratio = (target, need, ours, theirs, cmp, label, extra = {}) => {
    if (ours == null || theirs == null) return out.push({ target, need, measured: '–', ratio: null, pass: 'n/a', ...extra });
    const r = ours / theirs;
    out.push({ target, need, measured: label(ours, theirs), ratio: r, pass: cmp(r), ...extra });
  };
  return { out, ratio };
}

/**
 * Issue 5's targets, each as { target, need, measured, ratio, pass } with pass true/false, or
 * 'not yet' when the feature it measures does not exist, or 'n/a' when a number is missing.
 */
export function evaluateTargets(results) {
  const row = (name) => measured(results, name);
  const tls = row('tcpTls');
  const quic = results.paths.find((r) => r.path === 'quic');
  const ssh = row('ssh -R aes128-gcm');
  const kcp = row('kcptun');
  const { out, ratio } = targetList();
  ratio('tcpTls 1 stream vs ssh -R', `≥ ${SSH_TARGETS.tput1}×`, tls?.tput1Gbps, ssh?.tput1Gbps, (r) => r >= SSH_TARGETS.tput1, gb);
  ratio('tcpTls 8 streams vs ssh -R', `≥ ${SSH_TARGETS.tput8}×`, tls?.tput8Gbps, ssh?.tput8Gbps, (r) => r >= SSH_TARGETS.tput8, gb);
  ratio('ping-pong p50 vs ssh -R', `≤ ${SSH_TARGETS.p50}×`, tls?.p50Us, ssh?.p50Us, (r) => r <= SSH_TARGETS.p50, us);
  ratio('ping-pong p99 vs ssh -R', `≤ ${SSH_TARGETS.p99.toFixed(1)}×`, tls?.p99Us, ssh?.p99Us, (r) => r <= SSH_TARGETS.p99, us);
  const peers = PEERS.map(row).filter((r) => r?.connPerSec != null);
  const best = peers.sort((a, b) => b.connPerSec - a.connPerSec)[0];
  ratio(`new connections/s vs best peer (${best?.path ?? '–'})`, '≥ 1.5×', tls?.connPerSec, best?.connPerSec, (r) => r >= 1.5, (a, b) => `${num(a, 0)} vs ${num(b, 0)} /s`);
  if (quic?.status === 'ok') ratio('quic 1 stream vs kcptun', '≥ 4×', quic.tput1Gbps, kcp?.tput1Gbps, (r) => r >= 4, gb);
  else out.push({ target: 'quic 1 stream vs kcptun', need: '≥ 4×', measured: quic?.note ?? 'quic not measured', ratio: null, pass: 'not yet' });
  const udpQuic = results.udp?.find((u) => u.path === 'quic');
  const udpTarget = `UDP over QUIC datagrams, ${results.settings.udpOffered ?? '?'} offered`;
  if (udpQuic?.status === 'ok') {
    // "Offered" is what iperf3 was asked to send. When the relays take the CPU it needs, it
    // sends less and loses nothing, which is not the target: what arrives must be the offered
    // rate (99 %, iperf3's rate control is not exact) with under 0.1 % lost.
    const offeredMbps = results.settings.udpOfferedMbps;
    const carried = udpQuic.mbps >= 0.99 * offeredMbps;
    const short = carried ? '' : ` (under the ${num(offeredMbps, 0)} Mbit/s offered)`;
    out.push({ target: udpTarget, need: '< 0.1 % lost, offered rate carried', measured: `${num(udpQuic.mbps, 0)} Mbit/s, ${num(udpQuic.lossPercent, 3)} % lost${short}`, ratio: null, pass: udpQuic.lossPercent != null && udpQuic.lossPercent < 0.1 && carried });
  } else if (udpQuic?.status === 'failed') {
    out.push({ target: udpTarget, need: '< 0.1 % lost, offered rate carried', measured: udpQuic.samples?.[0]?.error ?? 'failed', ratio: null, pass: false });
  } else {
    out.push({ target: udpTarget, need: '< 0.1 % lost, offered rate carried', measured: udpQuic?.note ?? 'UDP not measured', ratio: null, pass: 'not yet' });
  }
  const m = results.memory;
  const ic = m?.idleConnections;
  if (ic && ic.perConnKiB != null) {
    out.push({ target: `per idle connection (${ic.atTarget.toLocaleString('en-US')} open), hub + edge RSS`, need: '≤ 10 KiB', measured: `${num(ic.perConnKiB, 2)} KiB`, ratio: null, pass: ic.perConnKiB <= 10 && ic.atTarget >= ic.count });
  } else {
    out.push({ target: 'idle connections, hub + edge RSS each', need: '≤ 10 KiB', measured: ic?.error ?? '–', ratio: null, pass: 'n/a' });
  }
  for (const who of ['hub', 'edge']) {
    // The hub after traffic also holds the quic edge's session; judge it with one edge, just connected.
    const hubOnlyFresh = who === 'hub' && (m?.hubEdges ?? 1) > 1;
    const worst = m ? (hubOnlyFresh ? m.freshIdleKiB?.hub : Math.max(m.freshIdleKiB?.[who] ?? 0, m.idleAfterTrafficKiB?.[who] ?? 0)) : null;
    const what = hubOnlyFresh ? 'idle hub RSS (one tcpTls edge, just connected)' : `idle ${who} RSS (worst of just connected / after traffic)`;
    out.push({ target: what, need: '≤ 60 MiB', measured: worst ? `${mib(worst)} MiB` : '–', ratio: null, pass: worst ? worst <= 60 * KiB : 'n/a' });
  }
  return out;
}

const passText = (p) => (p === true ? '**pass**' : p === false ? '**FAIL**' : p);

/** The last `node bench/lossy.mjs` run, if there is one. */
export function readLossy() {
  const file = join(ROOT, 'bench/results/lossy-latest.json');
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : null;
}

/** The last `node bench/soak.mjs` run, if there is one. */
export function readSoak() {
  const file = join(ROOT, 'bench/results/soak-latest.json');
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : null;
}

/** Issue 24's soak: what was carried, what was lost, the hub's memory per live UDP flow and the drift. */
export function renderSoak(soak) {
  const o = soak.options;
  const mib = (kib) => (kib / 1024).toFixed(1);
  const L = [];
  L.push('## Soak (bench/soak.mjs)');
  L.push('');
  L.push(`${o.minutes} minutes through the default transport (${soak.transport}) of ${o.tcpPerSec} new TCP connections/s (a few bytes echoed each) and ${o.udpPerSec} new UDP flows/s (3 datagrams each, 200 ms apart, from 64 loopback addresses), ${soak.at.slice(0, 10)}, commit ${soak.commit ?? '?'}.`);
  L.push('');
  L.push('| | result | bound | |');
  L.push('| --- | --- | --- | --- |');
  L.push(`| TCP connections | ${soak.counts.tcpOk} of ${soak.counts.tcp} echoed | nothing lost | ${passText(soak.lost.tcp === 0)} |`);
  L.push(`| UDP datagrams | ${soak.counts.datagramsOk} of ${soak.counts.datagrams} answered | nothing lost | ${passText(soak.lost.datagrams === 0)} |`);
  const fc = soak.flowCost ?? {};
  L.push(`| hub memory per live UDP flow | ${soak.hubBytesPerLiveFlow ?? '?'} B (${fc.withFlows?.flows ?? '?'} flows: ${mib(fc.withFlows?.hubKiB ?? 0)} MiB live, ${mib(fc.expired?.hubKiB ?? 0)} MiB once expired) | ≤ 8,192 B | ${passText(soak.pass.hubPerFlow)} |`);
  L.push(`| RSS drift, ${soak.drift.fromSec} s → ${soak.drift.toSec} s | hub ${soak.drift.hubKiB >= 0 ? '+' : ''}${mib(soak.drift.hubKiB)} MiB, edge ${soak.drift.edgeKiB >= 0 ? '+' : ''}${mib(soak.drift.edgeKiB)} MiB | within 8 MiB | ${passText(soak.pass.plateau)} |`);
  L.push('');
  const every = soak.samples.filter((_, i) => i % 6 === 0 || i === soak.samples.length - 1);
  L.push(`RSS every minute (MiB), hub / edge: ${every.map((x) => `${Math.round(x.atSec / 60)}′ ${mib(x.hubKiB)} / ${mib(x.edgeKiB)}`).join(', ')}.`);
  return L;
}

/** Issue 15's loss target: quic's ping-pong p99 at 1 % loss ≤ 0.3× tcpTls' and ≤ 0.3× ssh -R's. */
const LOSS_P99_RATIO = 0.3;

function renderLossy(lossy) {
  const o = lossy.options;
  const L = [];
  L.push('## Under packet loss (bench/lossy.mjs)');
  L.push('');
  L.push(`One iperf3 bulk stream and, at the same time over the same tunnel, a sockperf TCP ping-pong on another connection;`);
  L.push(`nftables drops that fraction of the tunnel leg's packets at random (\`numgen random\`, the tunnel's port only, both`);
  const perPacket = lossy.dropHook === 'prerouting' && lossy.offloadsOff;
  L.push(`directions; this kernel has no netem, so loss comes without added delay). Loopback at MTU ${lossy.mtu}${lossy.offloadsOff ? ` with segmentation offloads off${lossy.dropHook === 'prerouting' ? ' (UDP\'s too)' : ''}` : ''}; packets are`);
  L.push(perPacket
    ? 'dropped as loopback receives them, so a dropped packet is one Ethernet-sized packet, never a whole GSO batch.'
    : lossy.dropHook === 'prerouting'
      ? 'dropped as loopback receives them, but with offloads on: a drop can be a whole GSO batch.'
      : 'dropped on output (runs before session 11): up to 10 QUIC datagrams per drop, and TCP resent what was dropped, so TCP paths lost only ACKs.');
  L.push(`Medians of ${o.rounds} interleaved rounds of ${o.seconds} s (${lossy.date ?? ''}, commit ${lossy.gitCommit ?? '?'}).`);
  if (lossy.summary.some((r) => r.path === 'direct')) {
    L.push('`direct` is the same two workloads straight to their servers, no relay (0 % only: there is no tunnel leg to drop from).');
  }
  L.push('');
  L.push('| loss | path | bulk Gbit/s | ping-pong p50 µs | p99 µs | p99.9 µs |');
  L.push('| --- | --- | ---: | ---: | ---: | ---: |');
  const f = (v, d = 0) => (v == null ? '-' : v.toFixed(d));
  for (const r of lossy.summary) L.push(`| ${r.loss} % | ${r.path} | ${f(r.gbps, 2)} | ${f(r.p50, 1)} | ${f(r.p99)} | ${f(r.p999)} |`);
  const at = (path) => lossy.summary.find((r) => r.loss === 1 && r.path === path)?.p99 ?? null;
  const quic = at('quic');
  L.push('');
  for (const other of ['tcpTls', 'ssh -R']) {
    const theirs = at(other);
    if (quic == null || theirs == null) continue;
    const ratio = quic / theirs;
    L.push(`- 1 % loss, ping-pong p99: quic ${f(quic)} µs vs ${other} ${f(theirs)} µs = ${ratio.toFixed(2)}× (target ≤ ${LOSS_P99_RATIO}×): ${ratio <= LOSS_P99_RATIO ? 'met' : 'NOT met'}`);
  }
  if (quic != null) {
    L.push(`- in session 11's trace, quic's slowest round trips at 1 % loss waited for quinn's probe timeout (≥ smoothed RTT + 2 ms: its 1 ms timer granularity plus the 1 ms minimum ACK delay) after a lost ping-pong packet or ACK; bench/changes.md, session 11`);
  }
  const floor = (path) => lossy.summary.find((r) => r.loss === 0 && r.path === path)?.p99 ?? null;
  const direct = floor('direct');
  const relayed = ['tcpTls', 'quic', 'ssh -R'].map((p) => [p, floor(p)]).filter(([, v]) => v != null);
  if (direct != null && relayed.length > 0) {
    L.push(`- 0 % loss, ping-pong p99 with the bulk stream running: direct ${f(direct)} µs; ${relayed.map(([p, v]) => `${p} ${f(v)} µs`).join(', ')} (for quic, measured: the bulk stream's window queued ahead of the ping-pong; bench/changes.md, session 9)`);
  }
  return L;
}

/**
 * Issue 15's targets for QUIC against tcpTls from the same run, each with where bench/changes.md
 * measures what bounds it. The loss targets come from bench/lossy.mjs (its own section).
 */
export function evaluateQuicTargets(results) {
  const tls = measured(results, 'tcpTls');
  const quic = measured(results, 'quic');
  const { out, ratio } = targetList();
  const kernelUdp = { bound: "session 8: in its profile the kernel's UDP work alone (2.04 s/GB) cost more than the whole tcpTls path (1.87)" };
  ratio('quic 1 stream vs tcpTls', '≥ 0.8×', quic?.tput1Gbps, tls?.tput1Gbps, (r) => r >= 0.8, gb, kernelUdp);
  ratio('quic 8 streams vs tcpTls', '≥ 0.8×', quic?.tput8Gbps, tls?.tput8Gbps, (r) => r >= 0.8, gb, kernelUdp);
  ratio('quic CPU per GB vs tcpTls (hub + edge)', '≤ 1.3×', quic?.cpuSecPerGB, tls?.cpuSecPerGB, (r) => r <= 1.3, (a, b) => `${num(a, 2)} vs ${num(b, 2)} s/GB`, kernelUdp);
  ratio('quic ping-pong p50 vs tcpTls', '≤ 1.1×', quic?.p50Us, tls?.p50Us, (r) => r <= 1.1, us, { bound: "session 12: quinn alone, with the tunnel's configuration, takes 1.5–1.9× TLS's round trip (crates/tunnel-core/examples/transport_rtt.rs)" });
  return out;
}

/** Placement ceilings of one path, or null when the run has none (older results, no tput). */
const placementOf = (results, name) => measured(results, name)?.placement ?? null;

/**
 * "Where throughput is bounded": per path and stream count, each busy thread's CPU per GB, the
 * best placement of them on this machine's cores, the throughput at which its busiest core is
 * full, and how much of that the path reached.
 */
function renderPlacement(results) {
  const rows = results.paths.filter((r) => r.status === 'ok' && r.placement && Object.keys(r.placement).length > 0);
  if (rows.length === 0) return [];
  const cores = results.machine.nproc;
  const L = [];
  L.push(`## Where throughput is bounded (${cores} cores)`);
  L.push('');
  L.push("Each busy thread of a path (our hub's and edge's workers, sshd, ssh, iperf3's client and server) moves the");
  L.push("bytes on its own, so it costs a CPU time per GB, measured over this run's iperf3 runs. With more busy threads");
  L.push('than cores, the fastest the kernel can place them is the split whose busiest core costs least: the **ceiling**');
  L.push('below. A path whose threads split evenly has a higher ceiling than one with the same total cost that does not;');
  L.push('the share of its ceiling a path reached shows how well the kernel placed it. "a core each" is the ceiling with a');
  L.push('core for every busy thread (the costliest one bounds it). The costs are the ones measured under this run\'s');
  L.push("placements (on loopback a sender also does its receiver's TCP work), so the ceiling models the run rather than");
  L.push("bounding it: a share over 100 % means the path's costs fell lower in the median round than over all rounds.");
  L.push('socat, stunnel and kcptun are not modelled: their work moves between processes or threads per connection.');
  if (results.settings?.cpuLayout === 'pinned') L.push('This run pinned every path to one fixed layout (`--cpu-layout pinned`), which need not be the best one below.');
  L.push('');
  L.push('| path | streams | CPU s per GB, by thread | best placement | ceiling Gbit/s | measured | share | a core each Gbit/s |');
  L.push('| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    for (const streams of ['1', '8']) {
      const pl = r.placement[streams];
      if (!pl) continue;
      const got = streams === '1' ? r.tput1Gbps : r.tput8Gbps;
      const costs = Object.entries(pl.costs).map(([k, v]) => `${k} ${num(v, 2)}`).join(', ');
      const split = pl.cores.map((c) => `{${c.join(' + ')}}`).join(' ') + (pl.exact === false ? ' (greedy)' : '');
      const label = r.kind === 'tunnel' ? `**remoteingress ${r.path}**` : r.path;
      L.push(`| ${label} | ${streams} | ${costs} | ${split} | ${num(pl.gbps, 2)} | ${num(got, 2)} | ${got == null ? '–' : `${Math.round((100 * got) / pl.gbps)} %`} | ${num(pl.perCoreGbps, 2)} |`);
    }
  }
  return L;
}

/** tcpTls against ssh -R at each path's ceiling: the ratio the throughput targets can reach on this machine when both are placed at their best. */
function throughputTargetBounds(results) {
  const tls = placementOf(results, 'tcpTls');
  const ssh = placementOf(results, 'ssh -R aes128-gcm');
  if (!tls || !ssh) return [];
  const cores = results.machine.nproc;
  const L = [];
  for (const [streams, need] of [['1', SSH_TARGETS.tput1], ['8', SSH_TARGETS.tput8]]) {
    const a = tls[streams];
    const b = ssh[streams];
    if (!a || !b) continue;
    L.push(`- tcpTls ${streams === '1' ? '1 stream' : '8 streams'} vs ssh -R, modelled (not measured) at each one's ceiling ("Where throughput is bounded"), for the target of ${need}×: ${num(a.gbps, 2)} vs ${num(b.gbps, 2)} Gbit/s = ${num(a.gbps / b.gbps, 2)}× on these ${cores} cores; ${num(a.perCoreGbps / b.perCoreGbps, 2)}× with a core per busy thread.`);
  }
  return L;
}

/** Relay processes a request crosses on each path (client → relays → server). */
const RELAYS = { 'socat relay': 1, 'stunnel TLS pair': 2, 'ssh -R aes128-gcm': 2, kcptun: 2, tcpTls: 2, quic: 2 };

/**
 * What each relay adds per message to a ping-pong round trip: (p50 − direct's p50) / (2 ×
 * relays). socat, a relay that only reads and writes, shows what a relay hop costs on this
 * machine before any encryption; the line says what p50 ≤ 0.8× ssh -R asks of our relays.
 */
function latencyPerRelay(results) {
  const direct = measured(results, 'direct')?.p50Us;
  const ssh = measured(results, 'ssh -R aes128-gcm')?.p50Us;
  if (direct == null || ssh == null) return [];
  const per = Object.entries(RELAYS)
    .map(([name, relays]) => [name, measured(results, name)?.p50Us, relays])
    .filter(([, p50]) => p50 != null)
    .map(([name, p50, relays]) => `${name} ${num((p50 - direct) / (2 * relays), 1)}`);
  const needed = (SSH_TARGETS.p50 * ssh - direct) / (2 * RELAYS.tcpTls);
  return [`- ping-pong p50 per relay and message, (p50 − direct's ${num(direct, 1)} µs) / (2 × relays), µs: ${per.join(', ')}. p50 ≤ ${SSH_TARGETS.p50}× ssh -R asks ≤ ${num(needed, 1)} µs of each of our two relays.`];
}

export function renderMarkdown(results, changes, lossy = readLossy(), soak = readSoak()) {
  const L = [];
  const m = results.machine;
  L.push('# Benchmarks');
  L.push('');
  L.push('<!-- Generated by `npm run bench` (bench/run.mjs) from bench/results/latest.json; `node bench/report.mjs` regenerates it.');
  L.push('     Edit bench/changes.md for the "What each change bought" section, not this file. -->');
  L.push('');
  L.push(`Our tunnel against the tools a user could pick instead, all on one machine in one run (${results.date.slice(0, 10)}, ${m.nproc} × ${m.cpuModel}).`);
  L.push('Every path carries the same workloads to the same servers on loopback; each number is the median of');
  L.push(`${results.settings.rounds} interleaved rounds of ${results.settings.seconds} s measurements. Ratios below compare numbers from this one run only.`);
  L.push('');
  L.push('## TCP paths');
  L.push('');
  L.push('| path | iperf3 1 stream Gbit/s | iperf3 8 streams Gbit/s | ping-pong p50 µs | p99 µs | new conn/s (wrk, `Connection: close`) | CPU s per GB moved |');
  L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of results.paths) {
    const label = r.kind === 'tunnel' ? `**remoteingress ${r.path}**` : r.path;
    if (r.status !== 'ok') {
      L.push(`| ${label} | ${r.status} | ${r.status} | ${r.status} | ${r.status} | ${r.status} | ${r.status} |`);
      continue;
    }
    let cpu = r.kind === 'tunnel' || r.cpuSecPerGB != null ? num(r.cpuSecPerGB, 2) : 'kernel only';
    if (r.cpuSecPerGBBy) cpu += ` (hub ${num(r.cpuSecPerGBBy.hub, 2)} + edge ${num(r.cpuSecPerGBBy.edge, 2)})`;
    const conn = num(r.connPerSec, 0) + (r.connErrors > 0 ? ` (${r.connErrors} errors)` : '');
    L.push(`| ${label} | ${num(r.tput1Gbps, 2)} | ${num(r.tput8Gbps, 2)} | ${num(r.p50Us, 1)} | ${num(r.p99Us, 1)} | ${conn} | ${cpu} |`);
  }
  const notes = results.paths.filter((r) => r.note);
  if (notes.length > 0) {
    L.push('');
    for (const r of notes) L.push(`- ${r.path}: ${r.status} — ${r.note}.`);
  }
  L.push('');
  L.push('CPU s per GB: user + system CPU time of the path\'s own processes (for ours: hub + edge; for peers: their');
  L.push('processes and children), summed over every iperf3 run, divided by the bytes iperf3 received.');
  L.push('');
  const placement = renderPlacement(results);
  if (placement.length > 0) L.push(...placement, '');
  L.push('## UDP');
  L.push('');
  L.push(`iperf3 UDP, ${results.settings.udpOffered} offered; iperf3's own sockets get 4 MiB buffers (\`-w 4M\`, capped by net.core.rmem_max) so that the loss measured is the path's, not the load generator's.`);
  L.push('');
  L.push('| path | received Mbit/s | lost % |');
  L.push('| --- | ---: | ---: |');
  for (const u of results.udp ?? []) {
    const label = u.path === 'direct' ? 'direct' : `**remoteingress ${u.path}**`;
    if (u.status === 'failed') L.push(`| ${label} | failed: ${u.samples?.[0]?.error ?? '?'} | – |`);
    else if (u.status !== 'ok') L.push(`| ${label} | ${u.status} | ${u.status} |`);
    else L.push(`| ${label} | ${num(u.mbps, 0)} | ${num(u.lossPercent, 3)} |`);
  }
  const notYetUdp = (results.udp ?? []).filter((u) => u.note);
  if (notYetUdp.length > 0) {
    L.push('');
    for (const u of notYetUdp) L.push(`- ${u.path}: ${u.note}.`);
  }
  L.push('');
  L.push('## Memory (remoteingress tcpTls, hub and edge as separate processes)');
  L.push('');
  const mem = results.memory;
  if (mem) {
    const ic = mem.idleConnections;
    L.push('| | hub RSS MiB | edge RSS MiB |');
    L.push('| --- | ---: | ---: |');
    L.push(`| idle, just connected (hub with this one edge) | ${mib(mem.freshIdleKiB.hub)} | ${mib(mem.freshIdleKiB.edge)} |`);
    if (mem.hubEdges > 1) L.push(`| hub with all ${mem.hubEdges} bench edges (tcpTls + quic) connected, idle | ${mib(mem.freshIdleKiB.hubAllEdges)} | |`);
    L.push(`| idle, after the traffic above${mem.hubEdges > 1 ? ' (hub: all edges)' : ''} | ${mib(mem.idleAfterTrafficKiB.hub)} | ${mib(mem.idleAfterTrafficKiB.edge)} |`);
    if (ic && !ic.error) {
      const where = ic.freshTunnel ? ' (fresh hub and edge)' : '';
      if (ic.freshTunnel) L.push(`| fresh hub and edge, idle, before the connections | ${mib(ic.rssKiB.idle.hub)} | ${mib(ic.rssKiB.idle.edge)} |`);
      L.push(`| with ${ic.atTarget.toLocaleString('en-US')} idle connections open${where} | ${mib(ic.rssKiB.withConns.hub)} | ${mib(ic.rssKiB.withConns.edge)} |`);
      L.push(`| after those closed${where} | ${mib(ic.rssKiB.afterClose.hub)} | ${mib(ic.rssKiB.afterClose.edge)} |`);
      L.push('');
      L.push(`Per connection, hub + edge together: **${num(ic.perConnKiB, 2)} KiB** ((RSS with − RSS just before) / connections).`);
      if (ic.freshTunnel) L.push('The idle connections go through a hub and edge started for them alone, before any traffic: on the daemons that carried the traffic above, part of their memory lands in heap the traffic grew and freed, which hid up to half of it.');
      L.push(`${ic.opened.toLocaleString('en-US')} connections opened in ${(ic.openMs / 1000).toFixed(1)} s (${ic.failed} failed), each held open end to end at the target.`);
    } else if (ic?.error) {
      L.push('');
      L.push(`Idle connections: ${ic.error}`);
    }
  } else {
    L.push('Not measured (tcpTls path not run).');
  }
  L.push('');
  if (lossy != null) L.push(...renderLossy(lossy), '');
  if (soak != null) L.push(...renderSoak(soak), '');
  L.push('## Targets (issue 5)');
  L.push('');
  L.push('| target | needed | measured (ours vs theirs) | ratio | result |');
  L.push('| --- | --- | --- | ---: | --- |');
  for (const t of evaluateTargets(results)) L.push(`| ${t.target} | ${t.need} | ${t.measured} | ${t.ratio == null ? '' : `${t.ratio.toFixed(2)}×`} | ${passText(t.pass)} |`);
  const bounds = [...throughputTargetBounds(results), ...latencyPerRelay(results)];
  if (bounds.length > 0) L.push('', ...bounds);
  L.push('');
  L.push(`## Targets (issue 15: quic against tcpTls, this run${lossy?.summary ? '; under loss: see above' : ''})`);
  L.push('');
  L.push('| target | needed | measured (quic vs tcpTls) | ratio | result | what bounds it (bench/changes.md) |');
  L.push('| --- | --- | --- | ---: | --- | --- |');
  for (const t of evaluateQuicTargets(results)) L.push(`| ${t.target} | ${t.need} | ${t.measured} | ${t.ratio == null ? '' : `${t.ratio.toFixed(2)}×`} | ${passText(t.pass)} | ${t.pass === true ? '' : t.bound} |`);
  L.push('');
  L.push('## Machine');
  L.push('');
  L.push(`- ${m.nproc} CPUs, ${m.cpuModel}, ${m.memTotalMiB} MiB, kernel ${m.kernel}, Node ${m.node}${m.rmemMaxKiB == null ? '' : `, net.core.rmem_max ${m.rmemMaxKiB} KiB`}`);
  L.push(`- date ${results.date}, run took ${results.durationSec} s; load average before ${m.loadavgBefore.join(' ')}, after ${m.loadavgAfter.join(' ')}`);
  L.push(`- commit ${m.gitCommit ?? '?'}${m.gitDirty ? ' with uncommitted changes in crates/ or packages/' : ''}; performance settings ${results.settings.performance ?? 'defaults'}`);
  L.push(`- GLIBC_TUNABLES for every process of the run (peers too): ${results.settings.glibcTunables ?? 'none (glibc defaults)'}${results.settings.glibcTunables ? ' — what the systemd units and the container image set (examples/*.service)' : ''}`);
  L.push(`- ${Object.entries(m.tools).map(([k, v]) => `${k} ${v ?? 'missing'}`).join(', ')}`);
  L.push(`- ${results.settings.netns ? 'run inside its own network namespace (unshare -n, tcp_tw_reuse=1 there only)' : 'NOT run in a private network namespace'}`);
  L.push(
    results.settings.cpuLayout === 'pinned'
      ? '- CPU layout pinned, the same for every path: load generators and each path\'s entry process (our edge, sshd, the client-side stunnel/kcptun, socat) on CPU 0; its exit process (our hub, ssh, the server-side stunnel/kcptun) and the servers on CPU 1. Left to the kernel, the placement of these four busy processes flips between layouts that differ by ~1.5× for every relay, run to run (`--cpu-layout free` measures that way).'
      : '- CPU layout left to the kernel (the default): a path\'s throughput varies by up to ~1.5× between rounds and runs with where the kernel puts its four busy processes (load generator, two relays, server); `--cpu-layout pinned` fixes one layout for every path.',
  );
  L.push('');
  L.push('This machine is shared and small: other work running at the same time moves the absolute numbers by tens of');
  L.push('percent between runs. The rounds are interleaved across paths so the ratios suffer less; raw per-round samples');
  L.push('are in bench/results/latest.json.');
  L.push('');
  L.push('## Reproduce');
  L.push('');
  L.push('```sh');
  L.push('bash scripts/setup.sh        # build the addon and the packages');
  L.push('npm run bench                # as root: installs missing peers (iperf3 sockperf wrk nginx-light stunnel4');
  L.push('                             # openssh-server kcptun socat) with apt-get, then runs everything in unshare -n');
  L.push('node bench/run.mjs --profile # the same, plus perf profiles of hub and edge in bench/results/profile-*.txt');
  L.push('node bench/run.mjs --quick --paths direct,tcpTls   # a quick look; writes bench/results/partial.json only');
  L.push("BENCH_PERFORMANCE_JSON='{\"workerThreads\":2}' npm run bench   # try a tuning");
  L.push('node bench/smoke.mjs         # the 10-second smoke CI runs');
  L.push('node bench/soak.mjs          # 10 minutes of new TCP connections and UDP flows: loss, memory per flow, drift');
  L.push('```');
  L.push('');
  L.push('## What each change bought');
  L.push('');
  L.push(changes.trim() === '' ? '(nothing recorded yet: add entries to bench/changes.md)' : changes.trim());
  L.push('');
  return L.join('\n');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const file = process.argv[2] ?? join(ROOT, 'bench/results/latest.json');
  const results = JSON.parse(readFileSync(file, 'utf8'));
  const changesFile = join(ROOT, 'bench/changes.md');
  writeFileSync(join(ROOT, 'docs/BENCHMARKS.md'), renderMarkdown(results, existsSync(changesFile) ? readFileSync(changesFile, 'utf8') : ''));
  process.stdout.write(`wrote docs/BENCHMARKS.md from ${file}\n`);
}
