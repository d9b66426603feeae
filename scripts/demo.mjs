#!/usr/bin/env node
// remoteingress in one process: a small TCP target, a hub and an edge on loopback. A client
// connects to the edge's public port from 127.0.0.2; the target reads the PROXY v1 header the
// hub wrote and replies with the client address it saw. Exits 0 when that address is the
// client's real one; `--keep` then keeps everything running until Ctrl-C.
//
//   node scripts/demo.mjs [--keep] [--transport tcpTls|quic|quicWithFallback]
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

/** Start-up plus one request takes well under a second here; 20 s means something is stuck. */
const OVERALL_TIMEOUT_MS = 20_000;
/** The demo's streams are done once the reply arrived, so stopping needs no real drain. */
const STOP_GRACE_MS = 1_000;
/** Any loopback address other than 127.0.0.1 proves the target sees the client, not the hub. */
const CLIENT_ADDRESS = '127.0.0.2';
const EDGE_ID = 'demo-edge';

const { values: flags } = parseArgs({
  options: { keep: { type: 'boolean' }, transport: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  strict: true,
});
if (flags.help) {
  process.stdout.write('Usage: node scripts/demo.mjs [--keep] [--transport tcpTls|quic|quicWithFallback]\n');
  process.exit(0);
}
// The edge's default transport: QUIC where UDP gets through, TLS over TCP where it does not.
const transportMode = flags.transport ?? 'quicWithFallback';

const cleanups = [];
let finished = false;

function say(line) {
  process.stdout.write(`${line}\n`);
}

/** Event lines stop once the demo is shutting down: disconnects then are expected, not news. */
function sayEvent(line) {
  if (!finished) say(line);
}

async function cleanup() {
  for (const step of cleanups.reverse()) await step().catch(() => undefined);
}

async function fail(message) {
  if (finished) return;
  finished = true;
  process.stderr.write(`demo failed: ${message}\n`);
  await cleanup();
  process.exit(1);
}

const timer = setTimeout(() => fail(`no result within ${OVERALL_TIMEOUT_MS / 1000} s (see the events above)`), OVERALL_TIMEOUT_MS);

async function importBuilt(path) {
  try {
    return await import(path);
  } catch (error) {
    if (error?.code === 'ERR_MODULE_NOT_FOUND') {
      await fail(`${path} is not built; run "npm install" (or "npm run build") first`);
    }
    throw error;
  }
}

/** Binds port 0, reads the port the kernel chose, and releases it for the edge to bind. */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '0.0.0.0', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/**
 * The private service: reads a PROXY v1 header ("PROXY TCP4 <src> <dst> <sport> <dport>\r\n"),
 * then answers with the client address from it and echoes the request line.
 */
function startTarget(onSeen) {
  const server = net.createServer((socket) => {
    let buffered = Buffer.alloc(0);
    let header;
    socket.on('data', (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (header === undefined) {
        const end = buffered.indexOf('\r\n');
        if (end === -1) {
          // PROXY v1 headers are at most 107 bytes (spec); more without CRLF is not a header.
          if (buffered.length > 107) socket.end('target: expected a PROXY v1 header\n');
          return;
        }
        const match = /^PROXY (TCP4|TCP6) (\S+) (\S+) (\d+) (\d+)$/.exec(buffered.subarray(0, end).toString('latin1'));
        if (match === null) {
          socket.end(`target: not a PROXY v1 header: ${JSON.stringify(buffered.subarray(0, end).toString('latin1'))}\n`);
          return;
        }
        header = { address: match[2], port: Number(match[4]) };
        buffered = buffered.subarray(end + 2);
        onSeen(header);
      }
      const newline = buffered.indexOf('\n');
      if (newline !== -1) {
        const request = buffered.subarray(0, newline).toString('utf8');
        socket.end(`hello ${header.address}:${header.port}, the target got your "${request}"\n`);
      }
    });
    socket.on('error', () => undefined);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

function connectClient(port) {
  const attempt = (localAddress) =>
    new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
      socket.once('connect', () => resolve(socket));
      socket.once('error', reject);
    });
  return attempt(CLIENT_ADDRESS).catch((error) => {
    if (error.code !== 'EADDRNOTAVAIL' && error.code !== 'EINVAL') throw error;
    say(`(this system has no ${CLIENT_ADDRESS} on loopback; the client connects from 127.0.0.1 instead)`);
    return attempt(undefined);
  });
}

function request(socket, line) {
  return new Promise((resolve, reject) => {
    let reply = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => {
      reply += chunk;
    });
    socket.once('end', () => resolve(reply));
    socket.once('error', reject);
    socket.end(`${line}\n`);
  });
}

async function main() {
  const { RemoteIngressHub, encodeConnectionToken } = await importBuilt('../packages/hub/dist/index.js');
  const { RemoteIngressEdge } = await importBuilt('../packages/edge/dist/index.js');

  let seen;
  const target = await startTarget((header) => {
    seen = header;
  });
  cleanups.push(() => new Promise((resolve) => target.close(resolve)));
  const targetPort = target.address().port;
  say(`target     listening on 127.0.0.1:${targetPort} (expects PROXY v1)`);

  const stateDir = await mkdtemp(join(tmpdir(), 'remoteingress-demo-'));
  cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
  const edgePort = await freePort();
  const secret = randomBytes(16).toString('hex');

  const hub = new RemoteIngressHub();
  hub.on('edgeConnected', (event) => sayEvent(`hub        edge ${event.edgeId} connected from ${event.remoteAddress}:${event.remotePort} (${event.transport})`));
  hub.on('edgeDisconnected', (event) => sayEvent(`hub        edge ${event.edgeId} disconnected: ${event.code ?? 'clean'} ${event.reason ?? ''}`));
  hub.on('authFailed', (event) => sayEvent(`hub        authentication failed from ${event.remoteAddress}: ${event.reason}`));
  hub.on('log', (event) => event.level !== 'info' && sayEvent(`hub        ${event.level}: ${event.message}`));
  cleanups.push(() => hub.stop({ graceMs: STOP_GRACE_MS }));
  const started = await hub.start({
    tunnelPort: 0,
    bindHost: '127.0.0.1',
    targetHost: '127.0.0.1',
    stateDir,
    allowedEdges: [{ id: EDGE_ID, secret, listenPorts: [{ port: edgePort, targetPort, proxyProtocol: 'v1' }] }],
  });
  say(`hub        listening on 127.0.0.1:${started.tunnelPort} fingerprint ${started.fingerprint}`);

  const token = encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: started.tunnelPort, edgeId: EDGE_ID, secret, hubFingerprint: started.fingerprint });
  const edge = new RemoteIngressEdge();
  edge.on('tunnelConnected', (event) => sayEvent(`edge       tunnel up to ${event.hubAddress} (${event.transport})`));
  edge.on('tunnelDisconnected', (event) => sayEvent(`edge       tunnel down: ${event.code} ${event.reason}`));
  edge.on('portBindFailed', (event) => sayEvent(`edge       cannot bind ${event.protocol} port ${event.port}: ${event.reason}`));
  edge.on('log', (event) => event.level !== 'info' && sayEvent(`edge       ${event.level}: ${event.message}`));
  const assigned = new Promise((resolve) => {
    edge.on('portsAssigned', (event) => {
      sayEvent(`edge       ports assigned: tcp ${event.tcp.join(', ') || 'none'}`);
      if (event.tcp.includes(edgePort)) resolve();
      else if (event.failed.length > 0) fail(`the edge could not bind port ${edgePort}: ${JSON.stringify(event.failed)}`);
    });
  });
  cleanups.push(() => edge.stop({ graceMs: STOP_GRACE_MS }));
  await edge.start({ token, transportMode });
  await assigned;

  const client = await connectClient(edgePort);
  // Read now: a closed socket no longer reports its local address.
  const { localAddress, localPort } = client;
  const from = `${localAddress}:${localPort}`;
  say(`client     ${from} -> edge port 127.0.0.1:${edgePort}`);
  const reply = await request(client, 'GET / please');
  say(`client     got: ${reply.trim()}`);

  if (seen === undefined) return fail(`the target got no PROXY header (reply: ${JSON.stringify(reply)})`);
  say(`target saw client ${seen.address}:${seen.port} via PROXY v1`);
  if (seen.address !== localAddress || seen.port !== localPort) {
    return fail(`the target saw ${seen.address}:${seen.port}, but the client was ${from}`);
  }
  clearTimeout(timer);

  if (flags.keep) {
    say(`\nRunning until Ctrl-C. Try:  printf 'hi\\n' | nc -s ${CLIENT_ADDRESS} 127.0.0.1 ${edgePort}`);
    let stopping = false;
    const stop = async () => {
      if (stopping) process.exit(130);
      stopping = true;
      say('stopping…');
      finished = true;
      await cleanup();
      process.exit(0);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    return;
  }
  finished = true;
  await cleanup();
  say('demo ok');
  process.exit(0);
}

main().catch((error) => fail(`${error?.code ? `[${error.code}] ` : ''}${error?.message ?? error}`));
