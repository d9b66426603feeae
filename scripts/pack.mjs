#!/usr/bin/env node
// Packs the npm packages as they are published: remoteingress-core-linux-x64-gnu (the stripped
// addon), remoteingress-core, remoteingress-hub, remoteingress-edge and remoteingress, each with
// the README and LICENSE, into one directory.
//
//   node scripts/pack.mjs [--out DIR]        (default: dist-pack/)
//
// The addon and the TypeScript are built first if stale (build-addon.mjs, tsc -b). Each package
// is staged in a copy (so README/LICENSE never land in the source tree) and packed with `npm
// pack`; the file lists come from each package.json's "files".
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADDON_PATH, addonUpToDate } from './build-addon.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const outIndex = args.indexOf('--out');
const OUT = path.resolve(outIndex >= 0 ? args[outIndex + 1] : path.join(ROOT, 'dist-pack'));

/** The platform package this machine can build, and the packages that depend on it, in order. */
const PLATFORM_PACKAGE = 'core-linux-x64-gnu';
const PLATFORM_ADDON = 'remoteingress.linux-x64-gnu.node';
const PACKAGES = [PLATFORM_PACKAGE, 'core', 'hub', 'edge', 'remoteingress'];

function run(cmd, argv, cwd = ROOT) {
  const result = spawnSync(cmd, argv, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  if (result.status !== 0) {
    process.stderr.write(`pack: ${cmd} ${argv.join(' ')} failed (${result.status ?? result.signal})\n${result.stdout ?? ''}`);
    process.exit(1);
  }
  return result.stdout;
}

if (`${process.platform}-${process.arch}` !== 'linux-x64') {
  process.stderr.write(`pack: this script builds the ${PLATFORM_PACKAGE} package and must run on Linux x86-64 (this is ${process.platform}-${process.arch})\n`);
  process.exit(1);
}
if (!addonUpToDate()) run(process.execPath, [path.join(ROOT, 'scripts', 'build-addon.mjs')]);
run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-b']);

const stage = path.join(OUT, 'stage');
fs.rmSync(stage, { recursive: true, force: true });
fs.mkdirSync(stage, { recursive: true });
const tarballs = [];
for (const name of PACKAGES) {
  const source = path.join(ROOT, 'packages', name);
  const dir = path.join(stage, name);
  fs.cpSync(source, dir, { recursive: true, filter: (p) => !p.includes(`${path.sep}node_modules`) });
  if (name === PLATFORM_PACKAGE) {
    // Symbols are 70 % of the release build; users get them from a source build if they need them.
    fs.copyFileSync(ADDON_PATH, path.join(dir, PLATFORM_ADDON));
    run('strip', ['--strip-unneeded', path.join(dir, PLATFORM_ADDON)]);
  }
  fs.copyFileSync(path.join(ROOT, 'LICENSE'), path.join(dir, 'LICENSE'));
  if (!fs.existsSync(path.join(source, 'README.md'))) fs.copyFileSync(path.join(ROOT, 'README.md'), path.join(dir, 'README.md'));
  const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', OUT], dir));
  tarballs.push(path.join(OUT, packed[0].filename));
  process.stderr.write(`pack: ${packed[0].filename} (${packed[0].entryCount} files, ${(packed[0].size / 1048576).toFixed(1)} MiB)\n`);
}
fs.rmSync(stage, { recursive: true, force: true });
process.stdout.write(`${tarballs.join('\n')}\n`);
