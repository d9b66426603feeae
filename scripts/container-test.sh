#!/usr/bin/env bash
# Builds docker/Dockerfile with podman and runs a hub, an edge and an echo target in containers
# on the host network; an echo must cross them. CI-optional: where podman cannot run (not
# installed and not installable, no root, no Debian mirror), it says why and exits 0.
#
#   bash scripts/container-test.sh [--base IMAGE]
#
# With no registry here, the base image is made locally: `debootstrap --variant=minbase
# bookworm` (~35 s, cached under target/container-base), this machine's Node and npm copied in,
# then `podman import`. --base names an image to use instead (e.g. the official node:20 one).
# podman 4.3 on this kind of machine needs runc (crun fails on hybrid cgroups), explicit ulimits
# (the defaults exceed the hard limits) and --network=host.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

skip() {
  echo "container-test: SKIPPED: $*"
  exit 0
}
step() { echo "container-test: $*"; }

BASE=""
if [ "${1:-}" = "--base" ]; then BASE=${2:?--base needs an image}; fi

[ "$(id -u)" = 0 ] || skip "needs root (podman with runc and host networking)"
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v newuidmap >/dev/null || need+=(uidmap)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || skip "podman is missing and apt-get is not available"
  step "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; } \
    || skip "cannot install ${need[*]}"
fi
PODMAN=(podman --runtime runc --storage-driver overlay)
"${PODMAN[@]}" info >/dev/null 2>&1 || skip "podman cannot run here: $("${PODMAN[@]}" info 2>&1 | tail -1)"
RUN_OPTS=(--network=host --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

# --- the base image --------------------------------------------------------------------------
if [ -z "$BASE" ]; then
  BASE=localhost/remoteingress-test-base:bookworm
  if ! "${PODMAN[@]}" image exists "$BASE"; then
    rootfs=$ROOT/target/container-base/rootfs
    if [ ! -x "$rootfs/usr/bin/apt-get" ]; then
      step "debootstrap --variant=minbase bookworm (once; cached in target/container-base)"
      rm -rf "$rootfs" && mkdir -p "$rootfs"
      debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null 2>&1 \
        || skip "debootstrap failed (no Debian mirror reachable?)"
    fi
    node_bin=$(readlink -f "$(command -v node)")
    npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
    step "base image: bookworm minbase + this machine's Node $(node --version)"
    install -D "$node_bin" "$rootfs/usr/bin/node"
    rm -rf "$rootfs/usr/lib/node_modules/npm" && mkdir -p "$rootfs/usr/lib/node_modules"
    cp -a "$npm_dir" "$rootfs/usr/lib/node_modules/npm"
    ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/bin/npm"
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$BASE" >/dev/null
  fi
fi

# --- the image -------------------------------------------------------------------------------
PACK=$ROOT/target/container-pack
step "packing the npm packages"
node scripts/pack.mjs --out "$PACK" >/dev/null
IMAGE=localhost/remoteingress:test
step "building $IMAGE from docker/Dockerfile (base $BASE)"
# npm in the build trusts what Node here trusts (NODE_EXTRA_CA_CERTS: a TLS-inspecting proxy).
CA_ARGS=()
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f "$NODE_EXTRA_CA_CERTS" ]; then
  CA_ARGS=(-v "$(dirname "$NODE_EXTRA_CA_CERTS"):$(dirname "$NODE_EXTRA_CA_CERTS"):ro" --build-arg "NODE_EXTRA_CA_CERTS=$NODE_EXTRA_CA_CERTS")
fi
"${PODMAN[@]}" build --network=host "${CA_ARGS[@]}" --build-arg "BASE_IMAGE=$BASE" -f docker/Dockerfile -t "$IMAGE" "$PACK" >"$ROOT/target/container-build.log" 2>&1 \
  || { tail -30 "$ROOT/target/container-build.log"; echo "container-test: FAILED: image build (log: target/container-build.log)"; exit 1; }

# --- hub + edge + echo target ------------------------------------------------------------------
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
TUNNEL=$(free_port); EDGE_PORT=$(free_port); TARGET=$(free_port)
SECRET=$(node -e "console.log(require('crypto').randomBytes(18).toString('base64url'))")
EDGES="[{\"id\":\"ct-edge\",\"secret\":\"$SECRET\",\"bindAddress\":\"127.0.0.1\",\"listenPorts\":[{\"port\":$EDGE_PORT,\"targetPort\":$TARGET,\"proxyProtocol\":\"none\"}]}]"
names=(ri-ct-echo ri-ct-hub ri-ct-edge)
cleanup() { for n in "${names[@]}"; do "${PODMAN[@]}" rm -f "$n" >/dev/null 2>&1 || true; done; "${PODMAN[@]}" volume rm -f ri-ct-state >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

step "echo target, hub and edge in containers (host network)"
"${PODMAN[@]}" run -d --name ri-ct-echo "${RUN_OPTS[@]}" --entrypoint node "$IMAGE" \
  -e "require('net').createServer(s=>{s.on('error',()=>{});s.pipe(s)}).listen($TARGET,'127.0.0.1')" >/dev/null
"${PODMAN[@]}" run -d --name ri-ct-hub "${RUN_OPTS[@]}" -v ri-ct-state:/var/lib/remoteingress \
  -e REMOTEINGRESS_HUB_PORT="$TUNNEL" -e REMOTEINGRESS_BIND_HOST=127.0.0.1 -e REMOTEINGRESS_ALLOWED_EDGES_JSON="$EDGES" \
  "$IMAGE" >/dev/null
for _ in $(seq 100); do "${PODMAN[@]}" logs ri-ct-hub 2>&1 | grep -q "hub listening" && break; sleep 0.1; done
"${PODMAN[@]}" logs ri-ct-hub 2>&1 | grep "hub listening" || { "${PODMAN[@]}" logs ri-ct-hub; echo "container-test: FAILED: hub did not start"; exit 1; }
TOKEN=$("${PODMAN[@]}" exec -e REMOTEINGRESS_ALLOWED_EDGES_JSON="$EDGES" ri-ct-hub remoteingress hub token --edge-id ct-edge --hub-host 127.0.0.1 --hub-port "$TUNNEL")
"${PODMAN[@]}" run -d --name ri-ct-edge "${RUN_OPTS[@]}" -e REMOTEINGRESS_MODE=edge -e REMOTEINGRESS_TOKEN="$TOKEN" \
  -e REMOTEINGRESS_TRANSPORT_MODE=tcpTls "$IMAGE" >/dev/null
for _ in $(seq 100); do "${PODMAN[@]}" logs ri-ct-edge 2>&1 | grep -q "portsAssigned" && break; sleep 0.1; done

REPLY=$(node -e "
const s=require('net').connect($EDGE_PORT,'127.0.0.1',()=>s.end('through the containers'));
let got='';s.on('data',d=>got+=d);s.on('close',()=>console.log(got));s.on('error',e=>{console.log('error '+e.message)});
setTimeout(()=>{console.log('timeout '+got);process.exit(1)},10000).unref();")
if [ "$REPLY" != "through the containers" ]; then
  "${PODMAN[@]}" logs ri-ct-hub 2>&1 | tail -20; "${PODMAN[@]}" logs ri-ct-edge 2>&1 | tail -20
  echo "container-test: FAILED: echo through hub and edge returned '$REPLY'"
  exit 1
fi
step "echo crossed the edge and hub containers: '$REPLY'"
echo "container-test: PASSED"
