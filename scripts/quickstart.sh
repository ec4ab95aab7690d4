#!/usr/bin/env bash
# Reef quick start: build, then run a container with reef-run on the embedded default network
# (reef-bridge reef0 + reef-ipam 10.88.0.0/16 + masquerade + reef-portmap). The container gets
# its own net/uts/pid/mount/ipc namespaces and pings its gateway; on exit everything is torn
# down. The "host" is a throwaway network namespace, so this machine's own network is not
# touched (a real host would just run `reef-run -- CMD`). Needs root, iproute2, nftables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release -q -p reef-bridge -p reef-ipam -p reef-portmap -p reef-run

host=reef-qs-host-$$
work=$(mktemp -d)
cleanup() { ip netns del "$host" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip netns add "$host" && ip -n "$host" link set lo up

echo "== reef-run --hostname demo -- sh -c '...'"
status=0
ip netns exec "$host" env REEF_STATE_DIR="$work/state" REEF_CNI_CACHE_DIR="$work/cache" \
  REEF_IPAM_DATA_DIR="$work/ipam" \
  target/release/reef-run --hostname demo -- sh -c '
    echo "hostname: $(hostname)"; echo "processes: $(ls /proc | grep -c "^[0-9]")"
    ip -4 -br addr show eth0
    ping -c 3 -i 0.2 -W 1 10.88.0.1' || status=$?
echo "== reef-run exit status: $status"
# What DEL must have removed (the bridge reef0 and the nftables tables stay for the next
# container): the pod's veth, its IPAM lease, its masquerade entry.
veths=$(ip -n "$host" -br link | grep -c '^reef[0-9a-f]\{11\}' || true)
leases=$(find "$work/ipam" -type f -name '10.88.*' 2>/dev/null | wc -l)
masq=$(ip netns exec "$host" nft list set inet reef-masq-reef pods4 2>/dev/null |
  grep -c '10\.88\.' || true)
echo "== left after exit: $veths pod veths, $leases address leases, $masq masquerade entries"
exit "$status"
