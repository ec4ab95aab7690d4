#!/usr/bin/env bash
# Reef libcni demo: build, then attach a pod to the embedded default network through libcni
# (the library containerd and CRI-O use), ping its gateway, CHECK, DEL, and clean up.
# The "host" is a throwaway network namespace, so nothing on this machine's own network
# changes. Needs root, iproute2, nftables, golang-go and golang-github-appc-cni-dev.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release -q -p reef-bridge -p reef-ipam
bash tests/libcni-driver/build.sh target/reef-libcni

tag=$$
host=reef-qs-host-$tag pod=reef-qs-pod-$tag
work=$(mktemp -d)
cleanup() { ip netns del "$pod" 2>/dev/null || true; ip netns del "$host" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip netns add "$host" && ip -n "$host" link set lo up
ip netns add "$pod"

cat >"$work/reef.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "reef",
  "plugins": [{
    "type": "reef-bridge", "bridge": "reef0", "isGateway": true, "ipMasq": true,
    "ipam": {"type": "reef-ipam", "dataDir": "$work/ipam", "ranges": [[{"subnet": "10.88.0.0/16"}]]}
  }]
}
JSON
cni() { ip netns exec "$host" env CNI_PATH="$PWD/target/release" CNI_CACHE="$work/cache" target/reef-libcni "$@"; }

echo "== ADD (through libcni)"
cni add "$work/reef.conflist" "/run/netns/$pod" quickstart eth0 | tee "$work/result.json"
gw=$(sed -n 's/.*"gateway": "\([0-9.]*\)".*/\1/p' "$work/result.json" | head -1)
echo "== pod interface"
ip -n "$pod" -br addr show eth0
echo "== ping the gateway $gw from the pod"
ip netns exec "$pod" ping -c 3 -i 0.2 -W 1 "$gw"
echo "== CHECK"
cni check "$work/reef.conflist" "/run/netns/$pod" quickstart eth0 && echo "CHECK passed"
echo "== DEL"
cni del "$work/reef.conflist" "/run/netns/$pod" quickstart eth0 && echo "DEL done; address released:"
ls "$work/ipam/reef"
