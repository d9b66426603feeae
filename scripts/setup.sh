#!/usr/bin/env bash
# Brings a fresh clone on a fresh Debian machine to "npm run demo / npm test work", and does
# nothing (in a few seconds) when that is already so. Safe to run again at any time.
#
#   1. Debian packages: the test peers, a C compiler for ring's assembly, and cargo itself
#      (Debian's cargo-web) only when no cargo is installed. Only what is missing, as root, with apt.
#   2. npm ci, when node_modules is missing or older than package-lock.json / a package.json.
#   3. the native addon (scripts/build-addon.mjs; a no-op when up to date).
#   4. tsc -b (incremental; a no-op when up to date).
#   5. the npx bins of the two daemons (npm links them only once dist/ exists).
#
# Crates come from crates.io (Cargo.lock pins them); rustup's Rust is the expected toolchain.
#
# Usage: bash scripts/setup.sh [--system-only [build]]
#   --system-only          step 1 only (used by docker/Dockerfile)
#   --system-only build    step 1, build tools only (no test peers)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

T0=$(date +%s%N)
step() { printf 'setup: %s\n' "$*"; }
elapsed() { echo "$((($(date +%s%N) - T0) / 1000000)) ms"; }

SYSTEM_ONLY=0 PEERS=1
if [ "${1:-}" = --system-only ]; then
  SYSTEM_ONLY=1
  [ "${2:-}" = build ] && PEERS=0
fi

# ring (rustls' and quinn's crypto provider) compiles C and assembly: a C compiler is needed.
BUILD_PKGS=(gcc libc6-dev)
# Real peers the tests drive: haproxy consumes our PROXY headers; nft/libnftables for the
# firewall snapshot; socat and curl as clients; iproute2 for `ip netns` test hosts and `ss`;
# dnsdist reads PROXY v2 over UDP, and dig (bind9-dnsutils) asks it through the tunnel;
# prometheus scrapes the admin ports (promtool checks the exposition), coturn answers STUN,
# systemd-analyze verifies the example units.
PEER_PKGS=(haproxy nftables libnftables1 socat iproute2 curl dnsdist bind9-dnsutils prometheus coturn systemd)

have_cargo() {
  command -v cargo >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ] || [ -x "$HOME/.cargo/bin/cargo" ]
}

# --- 1. Debian packages ------------------------------------------------------------------------
want=("${BUILD_PKGS[@]}")
[ "$PEERS" = 1 ] && want+=("${PEER_PKGS[@]}")
# Without any cargo: Debian's current toolchain. bookworm's plain `cargo`/`rustc` (1.63) are older
# than the crates need; `cargo-web`/`rustc-web` (kept current for browser builds) provide
# /usr/bin/cargo and rustc. rustup's toolchain, where present, is preferred.
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
  # The peers are run by the tests, never as system services: where nothing forbids it yet,
  # a policy-rc.d keeps their packages from starting (and enabling) daemons while installing.
  no_services=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && no_services=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$no_services" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  step "system packages installed ($(elapsed))"
else
  why="not root"
  command -v apt-get >/dev/null 2>&1 || why="apt-get unavailable"
  step "WARNING: $why; skipping system packages. Missing: ${missing[*]}"
  step "  as root on Debian/Ubuntu: apt-get install ${missing[*]}"
  step "  (Rust may also come from https://rustup.rs instead of cargo-web; the test peers are only"
  step "   needed for the tests using them)"
fi

[ "$SYSTEM_ONLY" = 1 ] && exit 0

# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH; the children
# below (npm's postinstall, build-addon) then find cargo the same way.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
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

# --- 5. npx remoteingress-hub / remoteingress-edge --------------------------------------------
# npm links a workspace package's bin only if its target exists at install time, and dist/ is
# built after: link them now (once; a no-op when present).
if [ ! -x node_modules/.bin/remoteingress-hub ] || [ ! -x node_modules/.bin/remoteingress-edge ]; then
  step "linking the remoteingress-hub and remoteingress-edge bins"
  npm rebuild --ignore-scripts --no-audit --no-fund remoteingress-hub remoteingress-edge >/dev/null
fi
step "done ($(elapsed))"
