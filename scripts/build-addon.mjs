#!/usr/bin/env node
// Builds the native addon (crates/tunnel-node, the napi-rs binding, release) with @napi-rs/cli and
// installs it as packages/core/native/remoteingress.node.
//
//   node scripts/build-addon.mjs           build if any Rust input is newer than the .node
//   node scripts/build-addon.mjs --force   always run the build
//
// It is the root package's postinstall, so it runs inside `npm ci`: it says exactly what is missing
// and exits 1 rather than leave a half-installed tree without explanation.
//
// `napi build` runs cargo (`cargo metadata`, then `cargo build`) by name, so the cargo found here
// (PATH, then ~/.cargo/bin, where rustup puts it) goes first on its PATH. It writes the addon as
// <target>/napi/remoteingress.node (the name is `napi.binaryName` in packages/core/package.json),
// next to the index.d.ts it generates; this script copies the addon into packages/core.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ADDON_PATH = path.join(ROOT, 'packages', 'core', 'native', 'remoteingress.node');

/** The binding crate, and the package whose `napi` config names the addon (it ships the .node). */
const MANIFEST = path.join('crates', 'tunnel-node', 'Cargo.toml');
const NAPI_PACKAGE_JSON = path.join('packages', 'core', 'package.json');

/** Inputs of the addon build: a newer one means the .node is stale. */
const INPUTS = ['crates', 'Cargo.toml', 'Cargo.lock'];

function log(msg) {
  process.stderr.write(`build-addon: ${msg}\n`);
}

function newestMtime(p) {
  let st;
  try {
    st = fs.statSync(p);
  } catch {
    return 0;
  }
  if (!st.isDirectory()) return st.mtimeMs;
  let newest = st.mtimeMs; // a deleted file shows as a newer directory
  for (const entry of fs.readdirSync(p)) {
    if (entry === 'target' || entry.startsWith('.')) continue;
    newest = Math.max(newest, newestMtime(path.join(p, entry)));
  }
  return newest;
}

/** True when the installed .node is newer than every Rust input. */
export function addonUpToDate() {
  let built;
  try {
    built = fs.statSync(ADDON_PATH).mtimeMs;
  } catch {
    return false;
  }
  return INPUTS.every((p) => newestMtime(path.join(ROOT, p)) <= built);
}

/** The cargo binary on PATH, else rustup's in ~/.cargo/bin, or undefined. */
function findCargo() {
  const r = spawnSync('sh', ['-c', 'command -v cargo'], { cwd: ROOT, encoding: 'utf8' });
  const onPath = r.status === 0 ? r.stdout.trim() : '';
  if (onPath !== '') return onPath;
  const home = process.env.CARGO_HOME ?? path.join(process.env.HOME ?? '', '.cargo');
  const rustup = path.join(home, 'bin', 'cargo');
  return fs.existsSync(rustup) ? rustup : undefined;
}

/** The @napi-rs/cli entry script (a root devDependency), or undefined when it is not installed. */
function findNapiCli() {
  try {
    const require = createRequire(path.join(ROOT, 'package.json'));
    const pkgPath = require.resolve('@napi-rs/cli/package.json');
    const { bin } = JSON.parse(fs.readFileSync(pkgPath, 'utf8'));
    const script = typeof bin === 'string' ? bin : bin?.napi;
    return script === undefined ? undefined : path.join(path.dirname(pkgPath), script);
  } catch {
    return undefined;
  }
}

/** Loads the fresh addon in a child process, so a broken build is reported here, not in a test. */
function verify(file) {
  const code = `const m = require(${JSON.stringify(file)}); process.stdout.write(typeof m.version === 'function' ? m.version() : '?');`;
  // 30 s: loading is milliseconds; the bound only keeps a wedged load from hanging `npm ci`.
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 30_000 });
  if (r.status === 0) return { ok: true, version: r.stdout.trim() };
  return { ok: false, reason: (r.stderr || r.error?.message || `exit ${r.status}`).trim().split('\n').slice(0, 6).join('\n') };
}

export function buildAddon({ force = false } = {}) {
  if (!force && addonUpToDate()) {
    log(`up to date (${path.relative(ROOT, ADDON_PATH)})`);
    return 0;
  }
  const cargo = findCargo();
  if (cargo === undefined) {
    log('cargo (Rust) is needed to build the native addon and was not found on PATH or in ~/.cargo/bin.');
    log('  install Rust from https://rustup.rs (or run `bash scripts/setup.sh` as root), then run `npm run build:addon`');
    return 1;
  }
  const napi = findNapiCli();
  if (napi === undefined) {
    log('@napi-rs/cli (a devDependency of the repository root) is needed to build the native addon and is not installed.');
    log('  run `npm install` (or `npm ci`) in the repository root, then `npm run build:addon`');
    return 1;
  }
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR)
    : path.join(ROOT, 'target');
  const outputDir = path.join(targetDir, 'napi');
  const args = ['build', '--release', '--manifest-path', MANIFEST, '--package-json-path', NAPI_PACKAGE_JSON, '--output-dir', outputDir];
  const started = Date.now();
  log(`napi ${args.join(' ')}  (cargo: ${cargo})`);
  const env = { ...process.env, PATH: [path.dirname(cargo), process.env.PATH].filter(Boolean).join(path.delimiter) };
  const r = spawnSync(process.execPath, [napi, ...args], { cwd: ROOT, stdio: 'inherit', env });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    log(`napi build failed (exit ${r.status ?? r.signal}); the addon was not installed. See the cargo output above.`);
    return r.status || 1;
  }
  const lib = path.join(outputDir, path.basename(ADDON_PATH));
  if (!fs.existsSync(lib)) {
    log(`napi build succeeded but ${lib} is missing (is crate-type "cdylib" set in crates/tunnel-node, and napi.binaryName "remoteingress" in ${NAPI_PACKAGE_JSON}?)`);
    return 1;
  }
  // Copy then rename: a running process that has the old .node loaded keeps its inode, and a
  // reader never sees a half-written file.
  fs.mkdirSync(path.dirname(ADDON_PATH), { recursive: true });
  const tmp = `${ADDON_PATH}.tmp-${process.pid}`;
  fs.copyFileSync(lib, tmp);
  // Stamp with the build's start time: a source edited while cargo ran stays newer than the .node.
  const t = new Date(started);
  fs.utimesSync(tmp, t, t);
  fs.renameSync(tmp, ADDON_PATH);
  const v = verify(ADDON_PATH);
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  if (v.ok) {
    log(`installed ${path.relative(ROOT, ADDON_PATH)} (tunnel-core ${v.version}) in ${secs}s`);
  } else {
    // Not fatal: the file is what cargo built; the tests that load it will fail loudly.
    log(`installed ${path.relative(ROOT, ADDON_PATH)} in ${secs}s, but it does not load in Node yet:\n${v.reason}`);
  }
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== '--force');
  if (unknown.length > 0) {
    log(`unknown argument ${unknown[0]}; usage: node scripts/build-addon.mjs [--force]`);
    process.exitCode = 2;
  } else {
    process.exitCode = buildAddon({ force: args.includes('--force') });
  }
}
