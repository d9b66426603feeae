#!/usr/bin/env node
// Builds the native addon (crates/tunnel-core, feature `napi`, release) and installs it as
// packages/core/native/remoteingress.node.
//
//   node scripts/build-addon.mjs           build if any Rust input is newer than the .node
//   node scripts/build-addon.mjs --force   always run cargo
//
// It is the root package's postinstall, so it runs inside `npm ci`: it says exactly what is missing
// and exits 1 rather than leave a half-installed tree without explanation.
//
// Cargo goes through scripts/cargo.sh, which holds the one offline rule (crates.io when reachable,
// Debian's packaged crates otherwise). Other scripts can use the same wrapper from JS with
// `runCargo(args)` exported below, or from a shell with `bash scripts/cargo.sh <args>`.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CARGO_SH = path.join(ROOT, 'scripts', 'cargo.sh');
export const ADDON_PATH = path.join(ROOT, 'packages', 'core', 'native', 'remoteingress.node');

/** What cargo writes for the `cdylib` crate type on each platform. */
const LIB_NAME = {
  linux: 'libtunnel_core.so',
  darwin: 'libtunnel_core.dylib',
  win32: 'tunnel_core.dll',
}[process.platform] ?? 'libtunnel_core.so';

/** Inputs of the addon build: a newer one means the .node is stale. */
const INPUTS = ['crates', 'Cargo.toml', 'Cargo.lock'];

function log(msg) {
  process.stderr.write(`build-addon: ${msg}\n`);
}

/** Runs cargo through scripts/cargo.sh (offline-aware). Returns the exit status. */
export function runCargo(args, options = {}) {
  const r = spawnSync('bash', [CARGO_SH, ...args], { cwd: ROOT, stdio: 'inherit', ...options });
  if (r.error) throw r.error;
  return r.status ?? 1;
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

function cargoAvailable() {
  return spawnSync('bash', [CARGO_SH, '--which'], { cwd: ROOT, stdio: 'ignore' }).status === 0;
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
  if (!cargoAvailable()) {
    log('cargo (Rust) is needed to build the native addon and was not found on PATH or in ~/.cargo/bin.');
    log('  Debian/Ubuntu: run `bash scripts/setup.sh` as root (it installs cargo-web and the librust-*-dev crates)');
    log('  elsewhere:     install Rust from https://rustup.rs, then run `npm run build:addon`');
    return 1;
  }
  const started = Date.now();
  log('cargo build --release -p tunnel-core --features napi');
  const status = runCargo(['build', '--release', '-p', 'tunnel-core', '--features', 'napi']);
  if (status !== 0) {
    log(`cargo build failed (exit ${status}); the addon was not installed. See the cargo output above.`);
    return status || 1;
  }
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR)
    : path.join(ROOT, 'target');
  const lib = path.join(targetDir, 'release', LIB_NAME);
  if (!fs.existsSync(lib)) {
    log(`cargo succeeded but ${lib} is missing (is crate-type "cdylib" set in crates/tunnel-core?)`);
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
