import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups, delay, tempDir } from '../e2e/helpers.js';
import { freeUdpPort, startTransportPair } from './helpers.js';

/**
 * A real consumer of PROXY v2 over UDP: Debian's dnsdist, which reads the header prepended to
 * each datagram (`setProxyProtocolACL` naming the hub) and answers and logs the query under the
 * client's address. With the default mode, `dig` from 127.0.0.5 through the edge is answered and
 * dnsdist's query log names 127.0.0.5 and dig's port; with the old separate-datagram mode dnsdist
 * drops the query. scripts/setup.sh installs dnsdist and dig; as root the test must run.
 */
const isRoot = process.getuid?.() === 0;
const have = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
const runnable = isRoot || (have('dnsdist') && have('dig'));

/** The client address dig sends from: not 127.0.0.1, so the log shows it was carried. */
const CLIENT_IP = '127.0.0.5';
/** What dnsdist answers for every query (TEST-NET-1). */
const ANSWER = '192.0.2.1';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/**
 * A port for dnsdist, free for UDP *and* TCP: dnsdist always binds both (in 1.7 `doTCP=false`
 * does not stop the TCP bind). `freeUdpPort` probes both, below the kernel's ephemeral range.
 */
const freeDnsPort = freeUdpPort;

async function startDnsdist(dir: string): Promise<{ port: number; log: string }> {
  const port = await freeDnsPort();
  const log = join(dir, 'queries.log');
  const conf = join(dir, 'dnsdist.conf');
  writeFileSync(
    conf,
    [
      `setLocal("127.0.0.1:${port}")`,
      // The hub connects from loopback: a PROXY v2 header is required from there.
      'setProxyProtocolACL({"127.0.0.0/8"})',
      `addAction(AllRule(), LogAction("${log}", false, true, false))`,
      `addAction(AllRule(), SpoofAction("${ANSWER}"))`,
      '',
    ].join('\n'),
  );
  // dnsdist reports a fatal start-up error on stdout, not stderr: keep both.
  const proc = spawn('dnsdist', ['-C', conf, '--supervised', '--disable-syslog'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise((done) => proc.once('close', done));
  cleanups.add('stop dnsdist', async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
  });
  // dnsdist binds within a few hundred ms; wait until its UDP socket is listening.
  for (let i = 0; i < 50; i++) {
    const ss = spawnSync('ss', ['-Hlun', `sport = :${port}`], { encoding: 'utf8' });
    if (ss.stdout.includes(`:${port}`)) return { port, log };
    if (proc.exitCode !== null) break;
    await delay(100);
  }
  await Promise.race([exited, delay(1000)]);
  throw new Error(`dnsdist did not start on port ${port} (exit ${proc.exitCode}): ${output}`);
}

function dig(edgePort: number, clientPort: number): string {
  try {
    return execFileSync('dig', [`@127.0.0.1`, '-p', String(edgePort), '-b', `${CLIENT_IP}#${clientPort}`, 'example.com', 'A', '+short', '+tries=1', '+time=2'], { encoding: 'utf8' }).trim();
  } catch (error) {
    return `dig failed: ${(error as { stdout?: string }).stdout ?? (error as Error).message}`.trim();
  }
}

describe.runIf(runnable)('dnsdist behind a UDP service with PROXY v2', () => {
  it.each(['tcpTls', 'quic'] as const)('answers dig through the edge and logs the client, over %s (default mode)', async (transportMode) => {
    const dir = await tempDir(cleanups, 'ri-dnsdist-');
    const dnsdist = await startDnsdist(dir);
    const edgePort = await freeUdpPort();
    await startTransportPair(cleanups, { transportMode, udp: [{ port: edgePort, targetPort: dnsdist.port, proxyProtocol: 'v2' }] });
    const clientPort = await freeUdpPort();
    expect(dig(edgePort, clientPort)).toBe(ANSWER);
    await delay(200);
    expect(readFileSync(dnsdist.log, 'utf8')).toContain(`Packet from ${CLIENT_IP}:${clientPort} for example.com. A`);
  });

  it('gets no answer with the header as a separate datagram (why that is no longer the default)', async () => {
    const dir = await tempDir(cleanups, 'ri-dnsdist-');
    const dnsdist = await startDnsdist(dir);
    const edgePort = await freeUdpPort();
    await startTransportPair(cleanups, {
      transportMode: 'tcpTls',
      udp: [{ port: edgePort, targetPort: dnsdist.port, proxyProtocol: 'v2', proxyProtocolUdp: 'separateDatagram' }],
    });
    expect(dig(edgePort, await freeUdpPort())).not.toBe(ANSWER);
  });
});
