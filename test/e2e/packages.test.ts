import { execFile, spawnSync } from 'node:child_process';
import { readdir, rename, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanEnv, spawnProcess } from './daemons.js';
import { Cleanups, ROOT, echoRoundTrip, freePort, randomSecret, tempDir } from './helpers.js';

/**
 * The packages as users get them: scripts/pack.mjs packs the five tarballs; each carries its
 * README and LICENSE and no build leftovers, the addon ships stripped in the platform package.
 * In an empty directory, with no cargo anywhere on PATH, npm installs the tarballs (their
 * registry dependencies come from npm), and a hub and an edge started with npx carry an echo.
 * Without the platform package the CLI says which platform it needs and how to build one.
 */
const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** PATH without any directory that holds cargo or rustc (rustup's ~/.cargo/bin above all). */
function pathWithoutRust(): string {
  return (process.env.PATH ?? '')
    .split(':')
    .filter((dir) => dir !== '' && !dir.includes('.cargo') && spawnSync('test', ['-x', join(dir, 'cargo')]).status !== 0 && spawnSync('test', ['-x', join(dir, 'rustc')]).status !== 0)
    .join(':');
}

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeout = 180_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(cmd, args, { cwd, env, timeout, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) =>
      done({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr }),
    );
  });
}

describe('npm packages', () => {
  it('pack, install in an empty directory without Rust, and carry an echo with npx remoteingress-hub / remoteingress-edge', async () => {
    const dir = await tempDir(cleanups, 'ri-e2e-packages-');
    const out = join(dir, 'tarballs');
    const packed = await run(process.execPath, [join(ROOT, 'scripts/pack.mjs'), '--out', out], ROOT, process.env);
    expect(packed.code, packed.stderr).toBe(0);
    const tarballs = packed.stdout.trim().split('\n');
    expect(tarballs.map((t) => t.slice(out.length + 1)).sort()).toEqual([
      'remoteingress-0.1.0.tgz',
      'remoteingress-core-0.1.0.tgz',
      'remoteingress-core-linux-x64-gnu-0.1.0.tgz',
      'remoteingress-edge-0.1.0.tgz',
      'remoteingress-hub-0.1.0.tgz',
    ]);
    for (const tarball of tarballs) {
      const listing = (await run('tar', ['tzf', tarball], dir, process.env)).stdout.split('\n').filter((l) => l !== '');
      expect(listing, tarball).toEqual(expect.arrayContaining(['package/README.md', 'package/LICENSE', 'package/package.json']));
      expect(listing.filter((f) => /\.tsbuildinfo$|\.map$|\/src\/|\.ts$/.test(f) && !f.endsWith('.d.ts')), tarball).toEqual([]);
    }

    const app = join(dir, 'app');
    await run('mkdir', ['-p', app], dir, process.env);
    await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
    const env = { ...cleanEnv(), PATH: pathWithoutRust(), CARGO_HOME: join(dir, 'no-cargo'), RUSTUP_HOME: join(dir, 'no-rustup') };
    expect((await run('sh', ['-c', 'command -v cargo rustc || true'], app, env)).stdout).toBe('');
    const installed = await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', ...tarballs], app, env);
    expect(installed.code, installed.stderr).toBe(0);
    // The addon is the platform package's, stripped.
    const addon = join(app, 'node_modules/remoteingress-core-linux-x64-gnu/remoteingress.linux-x64-gnu.node');
    const sections = await run('readelf', ['-S', addon], app, env);
    expect(sections.code, sections.stderr).toBe(0);
    expect(sections.stdout).not.toMatch(/\.symtab/);
    expect(await readdir(join(app, 'node_modules/remoteingress-core'))).not.toContain('native');

    // A hub and an edge from npx, an echo through them.
    const echo = net.createServer((s) => {
      s.on('error', () => undefined);
      s.pipe(s);
    });
    await new Promise<void>((done) => echo.listen(0, '127.0.0.1', done));
    cleanups.add('close echo', () => new Promise<void>((done) => echo.close(() => done())));
    const edgePort = await freePort();
    const edgesFile = join(app, 'edges.json');
    await writeFile(edgesFile, JSON.stringify([{ id: 'packed', secret: randomSecret(), bindAddress: '127.0.0.1', listenPorts: [{ port: edgePort, targetPort: (echo.address() as net.AddressInfo).port, proxyProtocol: 'none' }] }]));
    const npx = (args: string[]): string[] => ['--no-install', ...args];
    const start = (args: string[]) => spawnProcess(cleanups, 'npx', npx(args), { env, cwd: app, stopSignal: 'SIGTERM' });
    const stateDir = join(app, 'state');
    const hubProcess = start(['remoteingress-hub', '--tunnel-port', '0', '--bind-host', '127.0.0.1', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--grace-ms', '100']);
    const hubPort = Number((await hubProcess.waitForLine(/hub listening on 127\.0\.0\.1:(\d+)/, 'hub start-up line'))[1]);
    const token = await run('npx', npx(['remoteingress-hub', 'token', '--allowed-edges', edgesFile, '--state-dir', stateDir, '--edge-id', 'packed', '--hub-host', '127.0.0.1', '--hub-port', String(hubPort)]), app, env);
    expect(token.code, token.stderr).toBe(0);
    const edgeProcess = start(['remoteingress-edge', '--token', token.stdout.trim(), '--transport-mode', 'tcpTls', '--grace-ms', '100']);
    await edgeProcess.waitForLine(/portsAssigned/, 'edge portsAssigned line');
    expect((await echoRoundTrip(edgePort, 'packed and installed')).received).toBe('packed and installed');

    // Without the platform package: exit 1, naming the platform and the way out.
    await rename(join(app, 'node_modules/remoteingress-core-linux-x64-gnu'), join(app, 'platform-package-aside'));
    const missing = await run('npx', npx(['remoteingress-hub', '--tunnel-port', '0', '--bind-host', '127.0.0.1', '--state-dir', join(app, 'state2')]), app, env, 30_000);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/ERR_ADDON_MISSING.*linux-x64-gnu.*optional dependency remoteingress-core-linux-x64-gnu is missing.*npm run build:addon/);
  }, 300_000);
});
