// Runs one firewall scenario with a real hub, edge and target. MUST run inside a throwaway network
// namespace (`unshare -n`): it applies nftables rules. It refuses to run otherwise.
// Usage: unshare -n node test/firewall/netns-scenario.mjs <scenario>
// Prints progress lines and one final line: RESULT <json>.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RemoteIngressEdge } from 'remoteingress-edge';
import { RemoteIngressHub, encodeConnectionToken } from 'remoteingress-hub';

const scenario = process.argv[2];
// A namespace made by `unshare -n` has only a loopback interface; any other interface means this
// is a real (root or shared) namespace whose firewall must not be touched.
const interfaces = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
  .split('\n')
  .filter(Boolean)
  .map((line) => line.split(':')[1].trim().split('@')[0]);
if (interfaces.some((name) => name !== 'lo')) {
  console.error(`refusing to run: interfaces ${interfaces.join(', ')} — this scenario changes nftables and must run inside \`unshare -n\``);
  process.exit(3);
}
execFileSync('ip', ['link', 'set', 'lo', 'up']);

const result = {};
const stateDir = mkdtempSync(join(tmpdir(), 'ri-fw-'));
const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Connects from `from` to the edge port; resolves 'ok' (echo came back), 'timeout' or an error code. */
function tryEcho(port, from, timeoutMs = 800) {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress: from });
    let got = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve('timeout');
    }, timeoutMs);
    s.on('connect', () => s.end('ping'));
    s.on('data', (d) => (got += d));
    s.on('error', (e) => {
      clearTimeout(timer);
      resolve(e.code ?? 'error');
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got === 'ping' ? 'ok' : got === '' ? 'closed' : 'garbled');
    });
  });
}

/** Opens new connections from `from` as fast as `concurrency` allows for `ms`; counts accepted ones. */
async function hammer(port, from, ms, concurrency = 16) {
  let accepted = 0;
  const end = Date.now() + ms;
  async function worker() {
    while (Date.now() < end) {
      const ok = await new Promise((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1', localAddress: from });
        // A dropped SYN is retried by the kernel after 1 s; give up well before that so each
        // attempt measures one SYN against the limit.
        const timer = setTimeout(() => {
          s.destroy();
          resolve(false);
        }, 150);
        s.on('connect', () => {
          clearTimeout(timer);
          s.destroy();
          resolve(true);
        });
        s.on('error', () => {
          clearTimeout(timer);
          resolve(false);
        });
      });
      if (ok) accepted++;
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  return accepted;
}

function nftTable(table) {
  try {
    return JSON.parse(execFileSync('nft', ['-j', 'list', 'table', 'inet', table], { encoding: 'utf8' }));
  } catch (e) {
    return { error: String(e.stderr ?? e.message) };
  }
}

// Clients here give up mid-connection on purpose (rate limits, timeouts): the hub then resets
// the target side, which must not crash the scenario.
const echo = net
  .createServer((s) => {
    s.on('error', () => {});
    s.pipe(s);
  })
  .listen(0, '127.0.0.1');
await new Promise((r) => echo.once('listening', r));
const edgePort = await freePort();
const secret = 'f'.repeat(32);
const base = { id: 'fw1', secret, bindAddress: '127.0.0.1', listenPorts: [{ port: edgePort, targetPort: echo.address().port, proxyProtocol: 'none' }] };
const hub = new RemoteIngressHub();
const started = await hub.start({ tunnelPort: 0, bindHost: '127.0.0.1', stateDir, allowedEdges: [base] });
const edge = new RemoteIngressEdge();
const events = [];
for (const k of ['firewallConfigUpdated', 'firewallConfigRejected', 'firewallUnavailable', 'portsAssigned', 'tunnelDisconnected']) {
  edge.on(k, (e) => events.push(e));
}
const waitFor = async (pred, ms = 8000) => {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const hit = events.find(pred);
    if (hit) return hit;
    await sleep(20);
  }
  throw new Error(`timed out waiting; events: ${JSON.stringify(events).slice(0, 2000)}`);
};
const setFirewall = async (firewallConfig) => {
  const before = events.length;
  await hub.updateAllowedEdges([{ ...base, firewallConfig }]);
  return waitFor((e) => events.indexOf(e) >= before && (e.kind === 'firewallConfigUpdated' || e.kind === 'firewallConfigRejected' || e.kind === 'firewallUnavailable'));
};
await edge.start({
  token: encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: started.tunnelPort, edgeId: 'fw1', secret, hubFingerprint: started.fingerprint }),
  transportMode: 'tcpTls',
});
await waitFor((e) => e.kind === 'portsAssigned');
const table = 'remoteingress_fw1';

try {
  if (scenario === 'blocklist') {
    const applied = await setFirewall({ blockedIps: ['127.0.0.2'], rateLimits: [], rules: [] });
    result.applied = applied;
    result.from2 = await tryEcho(edgePort, '127.0.0.2');
    result.from3 = await tryEcho(edgePort, '127.0.0.3');
    // A CIDR holding the address works the same (127.0.0.2/31 = .2 and .3; the tunnel itself
    // runs on 127.0.0.1 and must stay outside it).
    await setFirewall({ blockedIps: ['127.0.0.2/31'], rateLimits: [], rules: [] });
    result.cidrFrom2 = await tryEcho(edgePort, '127.0.0.2');
    result.cidrFrom3 = await tryEcho(edgePort, '127.0.0.3');
    result.cidrFrom4 = await tryEcho(edgePort, '127.0.0.4');
    result.status = edge.getStatus().firewall;
  } else if (scenario === 'ratelimit') {
    await setFirewall({ blockedIps: [], rateLimits: [{ id: 'web', port: edgePort, protocol: 'tcp', rate: '20/second', burst: 5 }], rules: [] });
    const ms = 3000;
    const accepted = await hammer(edgePort, '127.0.0.3', ms);
    result.global = { accepted, ms };
    await sleep(1200); // let the global bucket refill before the per-source run
    await setFirewall({ blockedIps: [], rateLimits: [{ id: 'per', port: edgePort, protocol: 'tcp', rate: '20/second', burst: 5, perSourceIP: true }], rules: [] });
    const [a, b] = await Promise.all([hammer(edgePort, '127.0.0.4', ms, 8), hammer(edgePort, '127.0.0.5', ms, 8)]);
    result.perSource = { a, b, ms };
    result.counters = edge.getStatus().firewall.counters;
  } else if (scenario === 'replace') {
    // From the first snapshot on, a reader lists our table in a loop while snapshots are
    // replaced under client load: it must never see the table missing or half-built.
    await setFirewall({ blockedIps: ['10.0.0.1'], rateLimits: [], rules: [] });
    let listings = 0;
    const bad = [];
    let reading = true;
    const reader = (async () => {
      while (reading) {
        const t = nftTable(table);
        listings++;
        const items = t.nftables ?? [];
        const chains = items.filter((i) => i.chain).map((i) => i.chain.name);
        const rules = items.filter((i) => i.rule && i.rule.chain === 'input');
        if (t.error || !chains.includes('input') || !chains.includes('output') || rules.length < 2) {
          bad.push(t.error ?? `chains=${chains} inputRules=${rules.length}`);
        }
        await sleep(1);
      }
    })();
    const load = hammer(edgePort, '127.0.0.3', 2500, 4);
    let last;
    for (let i = 0; i < 20; i++) {
      last = {
        blockedIps: [`10.0.${i}.0/24`, `2001:db8:${i}::/48`],
        rateLimits: [{ id: 'rl', port: edgePort, protocol: 'tcp', rate: `${1000 + i}/second`, burst: 50 }],
        rules: [{ id: `r${i}`, direction: 'input', action: 'accept', sourceIP: '127.0.0.3', destPort: edgePort, protocol: 'tcp' }],
      };
      await setFirewall(last);
    }
    await load;
    reading = false;
    await reader;
    result.listings = listings;
    result.bad = bad.slice(0, 5);
    result.badCount = bad.length;
    const final = nftTable(table).nftables ?? [];
    const set4 = final.find((i) => i.set && i.set.name === 'blocked4')?.set;
    const set6 = final.find((i) => i.set && i.set.name === 'blocked6')?.set;
    result.final = {
      blocked4: set4?.elem ?? [],
      blocked6: set6?.elem ?? [],
      ruleComments: final.filter((i) => i.rule).map((i) => i.rule.comment),
    };
    result.expected = last;
    result.status = edge.getStatus().firewall;
  } else if (scenario === 'bad-snapshot') {
    const good = await setFirewall({ blockedIps: ['127.0.0.2'], rateLimits: [], rules: [] });
    result.good = good;
    try {
      await hub.updateAllowedEdges([{ ...base, firewallConfig: { blockedIps: ['127.0.0.999'], rateLimits: [], rules: [] } }]);
      result.hubRejected = false;
    } catch (e) {
      result.hubRejected = true;
      result.hubError = { code: e.code, message: e.message };
    }
    await sleep(300);
    result.from2 = await tryEcho(edgePort, '127.0.0.2');
    result.status = edge.getStatus().firewall;
  } else if (scenario === 'stop-removes') {
    await setFirewall({ blockedIps: ['127.0.0.2'], rateLimits: [], rules: [] });
    result.before = !nftTable(table).error;
    await edge.stop({ graceMs: 100 });
    result.after = !nftTable(table).error;
    result.otherTablesUntouched = true;
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
} catch (e) {
  result.error = String(e.stack ?? e);
} finally {
  await edge.stop({ graceMs: 100 }).catch(() => {});
  await hub.stop({ graceMs: 100 }).catch(() => {});
  echo.close();
  rmSync(stateDir, { recursive: true, force: true });
}
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(0);
