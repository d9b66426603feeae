#!/usr/bin/env bash
# Runs cargo with the project's one offline rule, so the addon build, `cargo test`, clippy and fmt
# all resolve crates the same way:
#
#   crates.io reachable            -> plain cargo (users elsewhere build normally)
#   crates.io out of reach, and
#   Debian's /usr/share/cargo/registry exists
#                                  -> cargo <cmd> --offline, with crates-io replaced by a directory
#                                     source built from Debian's packaged crates (see below)
#
# Nothing is written to ~/.cargo: the switch is passed on the command line (`--config`) only.
#
# Usage:
#   bash scripts/cargo.sh <cargo subcommand> [args...]   e.g. scripts/cargo.sh test -p tunnel-core
#   bash scripts/cargo.sh --detect     prints 1 (offline: Debian crates) or 0 (online), exits 0
#   bash scripts/cargo.sh --which      prints the cargo binary that would run, exits 1 if none
#
# Environment:
#   REMOTEINGRESS_CARGO_OFFLINE=1|0   skip the probe: 1 forces the Debian source, 0 forces crates.io.
#                                     .ci/run and setup.sh export the probe's answer once.
#   CARGO_TARGET_DIR                  honoured (the Debian source view lives under it).
#
# Why a directory of our own instead of pointing cargo at /usr/share/cargo/registry directly:
# cargo checks every package's checksum against Cargo.lock. Many Debian crates carry no real
# checksum (".cargo-checksum.json" says "Could not get crate checksum", or a wrong one), so a lock
# written against Debian's directory is rejected by crates.io builds ("checksum changed between lock
# files") and a crates.io lock is rejected by Debian's directory. Cargo.lock keeps the real crates.io
# checksums; offline builds use <target>/debian-registry, a view of Debian's registry (symlinks)
# whose .cargo-checksum.json repeats the checksum Cargo.lock expects. Debian's orig tarballs are the
# crates.io .crate files, so the sources are the ones the checksums name.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEBIAN_REGISTRY=/usr/share/cargo/registry
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VIEW=$TARGET_DIR/debian-registry

say() { printf 'cargo.sh: %s\n' "$*" >&2; }

find_cargo() {
  if command -v cargo >/dev/null 2>&1; then command -v cargo; return 0; fi
  local c
  for c in "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" "$HOME/.cargo/bin/cargo"; do
    if [ -x "$c" ]; then printf '%s\n' "$c"; return 0; fi
  done
  return 1
}

# 1 when the Debian source must be used, 0 otherwise. The probe is one HTTPS request (through any
# configured proxy, as cargo would) or, without curl, one TCP connect.
detect_offline() {
  case "${REMOTEINGRESS_CARGO_OFFLINE:-}" in
    1 | true | yes) echo 1; return ;;
    0 | false | no) echo 0; return ;;
  esac
  if [ "${CARGO_NET_OFFLINE:-}" = true ]; then echo 1; return; fi
  # 3 s: a reachable index answers in well under a second; where the network is closed the
  # attempt fails at once (DNS refused), and a silently dropping firewall must not cost more than
  # a few seconds per build.
  if command -v curl >/dev/null 2>&1; then
    if curl -sS --max-time 3 -o /dev/null https://index.crates.io/config.json 2>/dev/null; then
      echo 0; return
    fi
  elif timeout 3 bash -c 'exec 3<>/dev/tcp/index.crates.io/443' 2>/dev/null; then
    echo 0; return
  fi
  echo 1
}

# (Re)builds the checksum-matching view of Debian's registry when Cargo.lock or the registry
# changed since the last time.
prepare_view() {
  local lock=$ROOT/Cargo.lock stamp=$VIEW/.stamp
  if [ -f "$stamp" ] && [ "$stamp" -nt "$DEBIAN_REGISTRY" ] && { [ ! -f "$lock" ] || [ "$stamp" -nt "$lock" ]; }; then
    return 0
  fi
  local tmp=$VIEW.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # "name version checksum" for every registry package in Cargo.lock.
  declare -A want=()
  if [ -f "$lock" ]; then
    local n v c
    while read -r n v c; do want["$n $v"]=$c; done < <(
      awk '/^\[\[package\]\]/{n=v=c=""}
           /^name = /{n=$3} /^version = /{v=$3}
           /^checksum = /{c=substr($0, index($0, "\"")); print n, v, c}' "$lock" | tr -d '"'
    )
  fi
  local dir base name version sum have
  for dir in "$DEBIAN_REGISTRY"/*/; do
    dir=${dir%/}
    base=${dir##*/}
    [ -f "$dir/Cargo.toml" ] || continue
    if [[ $base =~ ^(.+)-([0-9]+\.[0-9]+\.[0-9]+([-+].*)?)$ ]]; then
      name=${BASH_REMATCH[1]} version=${BASH_REMATCH[2]}
    else
      continue
    fi
    sum=${want["$name $version"]:-}
    have=$(sed -n 's/.*"package":"\([^"]*\)".*/\1/p' "$dir/.cargo-checksum.json" 2>/dev/null || true)
    if [ -z "$sum" ] || [ "$sum" = "$have" ]; then
      ln -s "$dir" "$tmp/$base"
    else
      mkdir "$tmp/$base"
      local entry
      for entry in "$dir"/* "$dir"/.[!.]*; do
        [ -e "$entry" ] || continue
        [ "${entry##*/}" = .cargo-checksum.json ] && continue
        ln -s "$entry" "$tmp/$base/${entry##*/}"
      done
      printf '{"package":"%s","files":{}}\n' "$sum" >"$tmp/$base/.cargo-checksum.json"
    fi
  done
  touch "$tmp/.stamp"
  rm -rf "$VIEW"
  mv "$tmp" "$VIEW"
}

if [ "${1:-}" = --detect ]; then detect_offline; exit 0; fi
if [ "${1:-}" = --which ]; then find_cargo; exit $?; fi

if ! CARGO=$(find_cargo); then
  say "cargo not found (looked on PATH and in ~/.cargo/bin)."
  say "install Rust: 'bash scripts/setup.sh' (Debian bookworm: apt-get install cargo-web), or https://rustup.rs"
  exit 127
fi
if [ $# -eq 0 ]; then exec "$CARGO"; fi

# Subcommands that never resolve dependencies get no extra flags (cargo-fmt would reject them).
extra=()
case "$1" in
  fmt | version | --version | -V | help | --help | -h | --list) ;;
  *)
    if [ "$(detect_offline)" = 1 ]; then
      if [ -d "$DEBIAN_REGISTRY" ]; then
        prepare_view
        extra=(--offline
          --config 'source.crates-io.replace-with="debian"'
          --config "source.debian.directory=\"$VIEW\"")
      else
        say "crates.io is out of reach and $DEBIAN_REGISTRY is missing;"
        say "on Debian run 'bash scripts/setup.sh' (it installs the librust-*-dev crates). Trying plain cargo."
      fi
    fi
    ;;
esac

sub=$1
shift
exec "$CARGO" "$sub" "${extra[@]}" "$@"
