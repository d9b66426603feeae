import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { CONNECT_TIMEOUT_MS, Cleanups, attempt, freePort, startEchoServer, startPair, withTimeout } from './helpers.js';

/**
 * A public port must take a burst of clients without dropping their handshakes: with a short
 * accept queue the kernel drops what does not fit, and those clients retry only after 1, 2, 4…
 * seconds. The edge asks for 4,096 (the kernel caps it at net.core.somaxconn).
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** The accept-queue size of the listener on 127.0.0.1:`port`, from `ss` (Send-Q of a LISTEN socket). */
function listenBacklog(port: number): number {
  const out = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' });
  const fields = out.trim().split(/\s+/);
  // State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
  if (fields[0] !== 'LISTEN') throw new Error(`no listener on port ${port} in ss output: ${JSON.stringify(out)}`);
  return Number(fields[2]);
}

describe('public ports', () => {
  it('listen with an accept queue of 4096 (or the system cap) and take 1,000 concurrent connects at once', async () => {
    const target = await startEchoServer(cleanups);
    const edgePort = await freePort();
    await startPair(cleanups, { listenPorts: [{ port: edgePort, targetPort: target.port, proxyProtocol: 'none' }] });
    const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim());
    expect(listenBacklog(edgePort)).toBe(Math.min(4096, somaxconn));

    // All at once: each gets its echo back.
    const results = await withTimeout(
      Promise.all(Array.from({ length: 1000 }, (_, i) => attempt(edgePort, `client ${i}\n`))),
      CONNECT_TIMEOUT_MS,
      '1,000 concurrent clients',
    );
    const failed = results.filter((r, i) => r.error !== undefined || r.reply.toString() !== `client ${i}\n`);
    expect(failed).toEqual([]);
  });
});
