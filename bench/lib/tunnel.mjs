// Our tunnel for the benchmark, the way a user runs it: the hub CLI from an allowed-edges file, a
// token minted by `remoteingress-hub token`, and the edge CLI started with nothing but that token.
// Hub and edge are separate processes, so their CPU time and memory are read separately.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { rssKiB, sleep, startProcess } from './proc.mjs';

export const ROOT = resolve(import.meta.dirname, '../..');
export const HUB_BIN = join(ROOT, 'packages/hub/dist/bin.js');
export const EDGE_BIN = join(ROOT, 'packages/edge/dist/bin.js');

/** Daemons are stopped with nothing left to drain; waiting longer would only slow the run down. */
const GRACE_MS = 200;

/** Null when the CLIs are built, else what to run first. */
export function tunnelMissing() {
  for (const bin of [HUB_BIN, EDGE_BIN]) {
    if (!existsSync(bin)) return `${bin} is missing: run "npm run build" (or "bash scripts/setup.sh") first`;
  }
  if (!existsSync(join(ROOT, 'packages/core/native/remoteingress.node'))) return 'the native addon is missing: run "node scripts/build-addon.mjs" first';
  return null;
}

/** The environment without REMOTEINGRESS_* variables (but the addon path), which would change what the CLIs do. */
function cleanEnv({ keepAddon }) {
  // REMOTEINGRESS_ADDON is kept for this checkout's daemons: it is how an A/B run gives them
  // another build of the addon (it was stripped with the rest until session 9, so such runs
  // compared one build with itself; bench/changes.md says which). A `--compare` checkout runs
  // its own build: the addon path would override that and make the comparison JavaScript-only.
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('REMOTEINGRESS_') || (keepAddon && key === 'REMOTEINGRESS_ADDON')));
}

/**
 * Starts one hub with one allowed edge per entry of `edges` and one edge process for each.
 *
 * @param {object} o
 * @param {string} o.dir            work directory (state, allowed-edges file, logs)
 * @param {Array<{id: string, transportMode: string, tcp: Array<{port: number, targetPort: number}>, udp?: Array<{port: number, targetPort: number}>}>} o.edges
 * @param {string} [o.performance]  JSON passed as --performance to hub and edges
 * @param {string} [o.root]         checkout whose built CLIs to run (default: this one)
 * @param {boolean} [o.admin]       give the hub and each edge an admin endpoint on an ephemeral
 *                                  port (`adminUrl` on each: /status, /metrics)
 * @returns hub and edges, each edge with the transport it actually uses and whether its UDP
 *          ports were bound (how the harness tells "did not run as asked" from "measured").
 */
export async function startTunnel({ dir, edges, performance, root = ROOT, admin = false }) {
  mkdirSync(dir, { recursive: true });
  // Another checkout's built CLIs (bench --compare): the same harness, that tree's code.
  const hubBin = root === ROOT ? HUB_BIN : join(root, 'packages/hub/dist/bin.js');
  const edgeBin = root === ROOT ? EDGE_BIN : join(root, 'packages/edge/dist/bin.js');
  const stateDir = join(dir, 'hub-state');
  const edgesFile = join(dir, 'allowed-edges.json');
  const allowed = edges.map((e) => ({
    id: e.id,
    secret: randomBytes(24).toString('hex'),
    bindAddress: '127.0.0.1',
    listenPorts: e.tcp.map((p) => ({ port: p.port, targetPort: p.targetPort, proxyProtocol: 'none' })),
    ...(e.udp && e.udp.length > 0 ? { listenPortsUdp: e.udp.map((p) => ({ port: p.port, targetPort: p.targetPort, proxyProtocol: 'none' })) } : {}),
  }));
  writeFileSync(edgesFile, JSON.stringify(allowed, null, 2));
  const perf = performance ? ['--performance', performance] : [];
  const adminArgs = admin ? ['--admin-listen', '127.0.0.1:0'] : [];
  const adminOf = async (proc) => (admin ? (await proc.waitFor(/admin endpoint on (http:\/\/\S+)/))[1] : null);
  const env = cleanEnv({ keepAddon: root === ROOT });

  const hub = startProcess('hub', process.execPath, [hubBin, '--tunnel-port', '0', '--bind-host', '127.0.0.1', '--target-host', '127.0.0.1', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--grace-ms', String(GRACE_MS), '--no-watch', ...perf, ...adminArgs], {
    logFile: join(dir, 'hub.log'),
    env,
    cpu: 'exit',
  });
  // A start that fails partway (a port taken, an edge that never connects) stops what it
  // started, so no daemon outlives the run that could not use it.
  const launched = [hub];
  let hubPort;
  let hubAdmin = null;
  const started = [];
  try {
    const listening = await hub.waitFor(/hub listening on .*:(\d+) fingerprint ([0-9a-f]{64})/);
    hubPort = Number(listening[1]);
    hubAdmin = await adminOf(hub);

    for (const e of edges) {
      const token = execFileSync(process.execPath, [hubBin, 'token', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--edge-id', e.id, '--hub-host', '127.0.0.1', '--hub-port', String(hubPort)], {
        encoding: 'utf8',
        env,
      }).trim();
      const proc = startProcess(`edge ${e.id}`, process.execPath, [edgeBin, '--token', token, '--transport-mode', e.transportMode, '--grace-ms', String(GRACE_MS), ...perf, ...adminArgs], {
        logFile: join(dir, `edge-${e.id}.log`),
        env,
        cpu: 'entry',
      });
      launched.push(proc);
      const connected = await proc.waitFor(/^tunnelConnected .*\btransport=(\S+)/m);
      const assigned = await proc.waitFor(/^portsAssigned .*\btcp=(\S*).*\budp=(\S*)/m);
      const tcpBound = assigned[1].split(',').filter(Boolean).map(Number);
      const udpBound = assigned[2].split(',').filter(Boolean).map(Number);
      const missing = e.tcp.filter((p) => !tcpBound.includes(p.port));
      if (missing.length > 0) throw new Error(`edge ${e.id} did not bind TCP ports ${missing.map((p) => p.port).join(',')}:\n${proc.log()}`);
      // Settle, then the hub's memory with the edges up so far (idle RSS per edge count).
      await sleep(500);
      started.push({
        hubRssKiB: rssKiB(hub.pid),
        id: e.id,
        proc,
        pid: proc.pid,
        adminUrl: await adminOf(proc),
        requestedTransport: e.transportMode,
        transport: connected[1],
        udpBound: (e.udp ?? []).every((p) => udpBound.includes(p.port)) && (e.udp ?? []).length > 0,
      });
    }
  } catch (error) {
    for (const p of launched.reverse()) await p.stop().catch(() => {});
    throw error;
  }
  return {
    hub,
    hubPid: hub.pid,
    hubPort,
    hubAdminUrl: hubAdmin,
    edges: started,
    async stop() {
      for (const e of started) await e.proc.stop();
      await hub.stop();
    },
  };
}
