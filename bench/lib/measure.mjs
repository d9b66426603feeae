// One measurement each: the peer tools' own clients (iperf3, sockperf, wrk) against a port, and
// Node-only stand-ins for the smoke run when those tools are not installed. Every function
// returns numbers or `{ error }`; none throws for a failed measurement.
import { execFile, spawnSync } from 'node:child_process';
import net from 'node:net';
import { onCpu, which } from './proc.mjs';

/** Runs a load generator (on the entry side's CPU when the layout is pinned). */
function run(cmd, args, timeoutMs) {
  const [file, argv] = onCpu('entry', cmd, args);
  return new Promise((done) => {
    execFile(file, argv, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      done({ ok: error === null, stdout: String(stdout), stderr: String(stderr), error });
    });
  });
}

function failure(what, r) {
  const detail = (r.stderr || r.stdout || r.error?.message || '').trim().split('\n').slice(-3).join(' | ');
  return { error: `${what}: ${detail || 'no output'}` };
}

/** The inode of the socket listening on TCP `port` in this network namespace, or null. */
function listenerInode(ss, port) {
  const r = spawnSync(ss, ['-ltnHe', `sport = :${port}`], { encoding: 'utf8' });
  return /ino:(\d+)/.exec(r.stdout ?? '')?.[1] ?? null;
}

/** The iperf3 server's listening socket each server port's previous test used. */
const listenerUsed = new Map();
/** Whether the missing `ss` has been reported (once per run). */
let warnedNoSs = false;

/** How long to wait for the iperf3 server to listen anew: it does so within milliseconds of a
 * test's end; 3 s covers a loaded machine, and a server that never does costs only this. */
const IPERF3_RELISTEN_MS = 3000;
/** How often to look meanwhile: a few looks per restart, each an `ss` run of ~2 ms. */
const IPERF3_RELISTEN_POLL_MS = 10;

/**
 * Waits until the iperf3 server on `server` listens on a socket other than the one the previous
 * test used; call it before each iperf3 run, outside whatever that run's measurement times.
 * iperf3 (3.12 here) closes its listening socket after every test and opens a new one; a client
 * that connects in between — the next measurement, started the moment the last client exits —
 * lands in the old socket's backlog and is reset when the server closes it (through a tunnel:
 * "unable to receive control message: Connection reset by peer"). The server also re-creates
 * its listener during a test whose client passes -w, -N or -M; the TCP runs here pass none.
 * After a run whose client never reached the server (a path that failed) the server has not
 * relistened: the next run then waits the whole time and says so, harmlessly.
 */
export async function iperf3ServerReady(server) {
  const ss = which('ss');
  if (ss === null) {
    if (!warnedNoSs) process.stderr.write('bench: ss (iproute2) is missing: iperf3 runs may race the server\'s restart\n');
    warnedNoSs = true;
    return;
  }
  const deadline = Date.now() + IPERF3_RELISTEN_MS;
  let ino = listenerInode(ss, server);
  while ((ino === null || ino === listenerUsed.get(server)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, IPERF3_RELISTEN_POLL_MS));
    ino = listenerInode(ss, server);
  }
  if (ino === null || ino === listenerUsed.get(server)) process.stderr.write(`bench: iperf3's server on port ${server} did not listen anew within ${IPERF3_RELISTEN_MS} ms\n`);
  listenerUsed.set(server, ino);
}

/** iperf3 TCP throughput: Gbit/s and bytes received by the server, `streams` parallel streams (after `iperf3ServerReady`). */
export async function iperf3Tcp(port, streams, seconds) {
  const r = await run('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-P', String(streams), '-J'], (seconds + 15) * 1000);
  try {
    const d = JSON.parse(r.stdout);
    if (d.error) return { error: `iperf3: ${d.error}` };
    const s = d.end.sum_received;
    return { gbps: s.bits_per_second / 1e9, bytes: s.bytes };
  } catch {
    return failure('iperf3', r);
  }
}

/**
 * iperf3 UDP at a fixed offered rate: datagrams of `length` bytes at `rate` (e.g. '500M').
 * Returns received Mbit/s and the loss the server saw.
 */
/** Socket buffer for iperf3's UDP sockets (see iperf3Udp). */
const UDP_SOCKET_BUFFER = '4M';

export async function iperf3Udp(port, rate, length, seconds, reverse = false) {
  // -w: iperf3's own sockets get 4 MiB buffers. With Linux's default 208 KiB (~4 ms of this
  // rate) the load generator itself drops datagrams whenever it is descheduled — the direct
  // path lost up to 0.16 % that way — and the loss measured would be iperf3's, not the path's.
  const r = await run('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-u', '-b', rate, '-l', String(length), '-w', UDP_SOCKET_BUFFER, '-t', String(seconds), '-J', ...(reverse ? ['-R'] : [])], (seconds + 6) * 1000);
  if (r.error?.killed) return { error: `iperf3 -u: no result within ${seconds + 6} s (datagrams not getting through?)` };
  try {
    const d = JSON.parse(r.stdout);
    if (d.error) return { error: `iperf3: ${d.error}` };
    const recv = d.end.sum_received ?? d.end.sum;
    return { mbps: recv.bits_per_second / 1e6, lossPercent: d.end.sum.lost_percent, packets: d.end.sum.packets };
  } catch {
    return failure('iperf3 -u', r);
  }
}

/** sockperf TCP ping-pong: full round-trip p50/p99 in microseconds. */
export async function sockperfPingPong(port, seconds) {
  const r = await run('sockperf', ['pp', '--tcp', '-i', '127.0.0.1', '-p', String(port), '-t', String(seconds), '--full-rtt'], (seconds + 15) * 1000);
  const text = r.stdout + r.stderr;
  const p50 = /percentile 50\.000 =\s*([\d.]+)/.exec(text);
  const p99 = /percentile 99\.000 =\s*([\d.]+)/.exec(text);
  if (p50 === null || p99 === null) return failure('sockperf', r);
  return { p50: Number(p50[1]), p99: Number(p99[1]) };
}

/** wrk new connections per second: one HTTP request per connection (`Connection: close`). */
export async function wrkConnRate(port, seconds, { threads = 2, connections = 16 } = {}) {
  const r = await run('wrk', [`-t${threads}`, `-c${connections}`, `-d${seconds}s`, '-H', 'Connection: close', `http://127.0.0.1:${port}/x`], (seconds + 15) * 1000);
  const rate = /Requests\/sec:\s*([\d.]+)/.exec(r.stdout);
  if (rate === null) return failure('wrk', r);
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(r.stdout);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(r.stdout);
  const requests = /(\d+) requests in/.exec(r.stdout);
  return {
    perSec: Number(rate[1]),
    requests: requests === null ? null : Number(requests[1]),
    socketErrors: errors === null ? 0 : errors.slice(1).reduce((a, b) => a + Number(b), 0),
    non2xx: non2xx === null ? 0 : Number(non2xx[1]),
  };
}

// ---------------------------------------------------------------------------------------------
// Node-only stand-ins (smoke run without the peers installed)

/** A TCP sink on an ephemeral port that counts bytes; `close()` stops it. */
export async function startSink() {
  let received = 0;
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('data', (chunk) => (received += chunk.length));
    socket.on('end', () => socket.end());
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  return {
    port: server.address().port,
    received: () => received,
    close: () =>
      new Promise((done) => {
        for (const s of sockets) s.destroy();
        server.close(() => done());
      }),
  };
}

/** Writes as fast as the path takes for `seconds`, then half-closes: Gbit/s seen by the sink. */
export async function nodeTransfer(port, seconds, sink) {
  const before = sink.received();
  const chunk = Buffer.alloc(256 * 1024, 0x61);
  const started = process.hrtime.bigint();
  await new Promise((done, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const deadline = Date.now() + seconds * 1000;
    const pump = () => {
      while (Date.now() < deadline) {
        if (!socket.write(chunk)) return void socket.once('drain', pump);
      }
      socket.end();
    };
    socket.once('connect', pump);
    socket.resume();
    socket.once('close', () => done());
    socket.once('error', reject);
  });
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  const bytes = sink.received() - before;
  return { gbps: (bytes * 8) / elapsed / 1e9, bytes };
}

/** A TCP server that answers every connection with a short HTTP response and closes. */
export async function startHttpClose() {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n'));
  });
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  return { port: server.address().port, close: () => new Promise((done) => server.close(() => done())) };
}

/** New connections per second: `concurrency` loops of connect, request, read to close. */
export async function nodeConnBurst(port, seconds, concurrency = 16) {
  let completed = 0;
  let failed = 0;
  const deadline = Date.now() + seconds * 1000;
  const one = () =>
    new Promise((done) => {
      const socket = net.connect(port, '127.0.0.1');
      let got = '';
      socket.setEncoding('utf8');
      socket.once('connect', () => socket.write('GET /x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n'));
      socket.on('data', (d) => (got += d));
      socket.once('close', () => {
        if (got.startsWith('HTTP/1.1 200')) completed += 1;
        else failed += 1;
        done();
      });
      socket.once('error', () => {});
    });
  const started = Date.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < deadline) await one();
    }),
  );
  return { perSec: completed / ((Date.now() - started) / 1000), requests: completed, socketErrors: failed, non2xx: 0 };
}
