#!/usr/bin/env bash
# Brings a fresh clone on a fresh Debian machine to "npm run demo / npm test work", and does
# nothing (in a few seconds) when that is already so. Safe to run again at any time.
#
#   1. Debian packages: the Rust crates the addon builds from offline, the test peers, and cargo
#      itself (cargo-web) when no cargo is installed. Only what is missing, as root, with apt.
#   2. npm ci, when node_modules is missing or older than package-lock.json / a package.json.
#   3. the native addon (scripts/build-addon.mjs; a no-op when up to date).
#   4. tsc -b (incremental; a no-op when up to date).
#
# Usage: bash scripts/setup.sh [--system-only [crates]]
#   --system-only          step 1 only (used by docker/Dockerfile)
#   --system-only crates   step 1, Rust crates and cargo only (no test peers)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

T0=$(date +%s%N)
step() { printf 'setup: %s\n' "$*"; }
elapsed() { echo "$((($(date +%s%N) - T0) / 1000000)) ms"; }

SYSTEM_ONLY=0 PEERS=1
if [ "${1:-}" = --system-only ]; then
  SYSTEM_ONLY=1
  [ "${2:-}" = crates ] && PEERS=0
fi

# Rust crates in the versions Cargo.toml pins (Debian bookworm's), for offline builds.
# serde's `derive` feature is served by librust-serde-derive-dev (no separate feature package).
CRATE_PKGS=(
  librust-tokio-dev librust-tokio-rustls-dev librust-tokio-rustls+dangerous-configuration-dev
  librust-rustls-dev librust-quinn-dev librust-ring-dev librust-socket2-dev
  librust-rustls-pemfile-dev librust-sha2-dev librust-hmac-dev librust-libc-dev librust-bytes-dev
  librust-serde-dev librust-serde-json-dev librust-serde-derive-dev librust-thiserror-dev
  librust-libloading-dev librust-rand-dev librust-subtle-dev
)
# Real peers the tests drive: haproxy consumes our PROXY headers; nft/libnftables for the
# firewall snapshot; socat and curl as clients; iproute2 for `ip netns` test hosts and `ss`.
PEER_PKGS=(haproxy nftables libnftables1 socat iproute2 curl)

have_cargo() {
  command -v cargo >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ] || [ -x "$HOME/.cargo/bin/cargo" ]
}

# --- 1. Debian packages ------------------------------------------------------------------------
want=("${CRATE_PKGS[@]}")
[ "$PEERS" = 1 ] && want+=("${PEER_PKGS[@]}")
# Without any cargo: Debian's current toolchain. bookworm's plain `cargo`/`rustc` are 1.63, older
# than the crate needs (let-else wants 1.65); `cargo-web`/`rustc-web` (1.85+, kept current for
# browser builds) provide /usr/bin/cargo and rustc. The vector AES-GCM code needs 1.89+ (bookworm-
# security ships 1.96); an older compiler builds without it (see crates/tunnel-core/build.rs).
have_cargo || want+=(cargo-web rustc-web)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  # One dpkg-query for all: "name install ok installed" per installed package.
  installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${want[@]}" 2>/dev/null | awk '$NF=="installed"{print $1}' || true)
  for p in "${want[@]}"; do
    grep -qxF -- "$p" <<<"$installed" || missing+=("$p")
  done
else
  missing=("${want[@]}")
fi

if [ ${#missing[@]} -eq 0 ]; then
  step "system packages present"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  step "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # -q twice: one line per package is enough in CI logs.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  step "system packages installed ($(elapsed))"
else
  why="not root"
  command -v apt-get >/dev/null 2>&1 || why="apt-get unavailable"
  step "WARNING: $why; skipping system packages. Missing: ${missing[*]}"
  step "  as root on Debian/Ubuntu: apt-get install ${missing[*]}"
  step "  (Rust may also come from https://rustup.rs instead of cargo-web; the librust-*-dev crates are only"
  step "   needed where crates.io is unreachable; the test peers only for the tests using them)"
fi

[ "$SYSTEM_ONLY" = 1 ] && exit 0

# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH; the children
# below (npm's postinstall, build-addon) then find cargo the same way.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# Probe crates.io once for this whole run instead of once per cargo call.
if [ -z "${REMOTEINGRESS_CARGO_OFFLINE:-}" ]; then
  REMOTEINGRESS_CARGO_OFFLINE=$(bash scripts/cargo.sh --detect)
  export REMOTEINGRESS_CARGO_OFFLINE
fi

# --- 2. npm dependencies ------------------------------------------------------------------------
STAMP=node_modules/.remoteingress-npm-ci.stamp
needs_ci=0
if [ ! -f "$STAMP" ]; then
  needs_ci=1
else
  for f in package-lock.json package.json packages/*/package.json; do
    if [ -f "$f" ] && [ "$f" -nt "$STAMP" ]; then needs_ci=1; break; fi
  done
fi
if [ "$needs_ci" = 1 ]; then
  if [ -f package-lock.json ]; then
    step "npm ci"
    # The root postinstall builds the addon; it is quick to repeat in step 3 when up to date.
    npm ci --no-audit --no-fund
  else
    step "npm install (no package-lock.json yet; commit the one it writes)"
    npm install --no-audit --no-fund
  fi
  touch "$STAMP"
  step "npm dependencies installed ($(elapsed))"
else
  step "npm dependencies up to date"
fi

# --- 3. native addon ----------------------------------------------------------------------------
node scripts/build-addon.mjs

# --- 4. TypeScript ------------------------------------------------------------------------------
# node_modules/.bin/tsc rather than `npx tsc`: npx would fetch the unrelated npm package `tsc`
# if typescript were ever missing.
if [ -f tsconfig.json ]; then
  step "tsc -b"
  node_modules/.bin/tsc -b
fi
step "done ($(elapsed))"
