#!/usr/bin/env bash
# cluster.sh: a throwaway Reef test cluster made of network namespaces, to try things by hand.
#
#   cluster.sh up [N]   underlay switch + N hosts (default 2) + an etcd host
#   cluster.sh status   what is up, and whether etcd is healthy
#   cluster.sh down     remove everything `up` created
#
# Layout (the same as netns_fixtures::Cluster::new(N, true)):
#   reefdemo-ul          the underlay switch: bridge br0, one port per host, no address
#   reefdemo-h1..hN      hosts: eth0 = 198.18.1.1 .. 198.18.1.N /24, forwarding on
#   reefdemo-etcd        198.18.1.(N+1): etcd on :2379 (client) and :2380 (peer)
#
# Nothing touches the root namespace's links, routes or firewall: each veth is created from
# inside the switch's namespace with its peer placed straight into the host's namespace, and
# only 198.18.0.0/15 addresses are used. Every namespace and the etcd PID are recorded in
# /run/reefdemo/state as they are created; `down` removes exactly those (and kills etcd only
# if that PID is still an etcd process inside reefdemo-etcd). Needs root, iproute2, etcd and
# etcdctl (Debian: etcd-server, etcd-client).
set -Eeuo pipefail

PREFIX=reefdemo
STATE_DIR=/run/reefdemo
STATE=$STATE_DIR/state
UL=$PREFIX-ul
ETCD_NS=$PREFIX-etcd
NET=198.18.1 # /24

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,7s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

record() { echo "$1 $2" >>"$STATE"; }

mkns() {
    ip netns add "$1"
    record netns "$1"
    ip -n "$1" link set lo up
}

# addhost NAME ADDR: namespace $PREFIX-NAME with eth0 = ADDR/24 on the switch (port NAME).
addhost() {
    local ns=$PREFIX-$1
    mkns "$ns"
    ip -n "$UL" link add "$1" type veth peer name eth0 netns "$ns"
    ip -n "$UL" link set "$1" master br0 up
    ip -n "$ns" addr add "$2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
}

# True if PID is an etcd process in the reefdemo-etcd namespace (guards against PID reuse).
is_our_etcd() {
    local pid=$1
    [[ -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == etcd ]] || return 1
    [[ -e /run/netns/$ETCD_NS ]] || return 1
    [[ $(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null) == $(stat -L -c %i "/run/netns/$ETCD_NS") ]]
}

etcd_endpoint() { echo "http://$(cat "$STATE_DIR/etcd-addr"):2379"; }

etcd_healthy() {
    ip netns exec "$ETCD_NS" env ETCDCTL_API=3 etcdctl --endpoints "$(etcd_endpoint)" \
        --dial-timeout 1s --command-timeout 2s endpoint health >/dev/null 2>&1
}

cmd_up() {
    local n=${1:-2}
    [[ $n =~ ^[0-9]{1,3}$ ]] && ((10#$n >= 1 && 10#$n <= 200)) || die "N must be 1..200, not '$n'"
    n=$((10#$n))
    ((EUID == 0)) || die "must run as root"
    for tool in ip etcd etcdctl; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
    [[ -e $STATE ]] && die "already up (state in $STATE); run '$0 down' first"
    if ip netns list | grep -q "^$PREFIX-"; then
        die "namespaces named $PREFIX-* exist but are not recorded in $STATE; remove them with:
$(ip netns list | awk -v p="^$PREFIX-" '$1 ~ p {print "  ip netns del " $1}')"
    fi
    mkdir -p "$STATE_DIR"
    : >"$STATE"
    # From here on, any failure (set -e or die) removes what was created so far.
    trap 'rc=$?; if ((rc != 0)); then
        echo "cluster.sh: up failed (exit $rc); removing what was created" >&2; cmd_down; fi' EXIT

    mkns "$UL"
    ip -n "$UL" link add br0 type bridge
    ip -n "$UL" link set br0 up
    local i
    for ((i = 1; i <= n; i++)); do
        addhost "h$i" "$NET.$i"
    done
    local etcd_addr=$NET.$((n + 1))
    addhost etcd "$etcd_addr"
    echo "$etcd_addr" >"$STATE_DIR/etcd-addr"

    # setsid, `ip netns exec` and env all exec in place (no fork), so $! is etcd's PID.
    # setsid: etcd does not get the terminal's signals. ETCD_* variables are dropped.
    local client=http://$etcd_addr:2379 peer=http://$etcd_addr:2380 var clean_env=()
    for var in $(compgen -e); do
        [[ $var == ETCD* ]] && clean_env+=(-u "$var")
    done
    setsid ip netns exec "$ETCD_NS" env "${clean_env[@]}" etcd \
        --name etcd --data-dir "$STATE_DIR/etcd-data" \
        --listen-client-urls "$client,http://127.0.0.1:2379" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "etcd=$peer" --initial-cluster-state new \
        --unsafe-no-fsync --heartbeat-interval 10 --election-timeout 100 \
        --quota-backend-bytes 67108864 --snapshot-count 10000 \
        --logger zap --log-outputs stderr --log-level warn \
        </dev/null >>"$STATE_DIR/etcd.log" 2>&1 &
    local pid=$!
    record pid "$pid"
    local tries=0
    until etcd_healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$STATE_DIR/etcd.log" >&2
            die "etcd exited during start-up (log above, $STATE_DIR/etcd.log)"
        fi
        ((++tries <= 150)) || {
            tail -n 20 "$STATE_DIR/etcd.log" >&2
            die "etcd not healthy after 15 s"
        }
        sleep 0.1
    done
    trap - EXIT

    echo "Reef demo cluster is up: underlay $NET.0/24 (namespace $UL, bridge br0)"
    for ((i = 1; i <= n; i++)); do
        printf '  %-5s %-14s ip netns exec %s bash\n' "h$i" "$NET.$i" "$PREFIX-h$i"
    done
    printf '  %-5s %-14s ip netns exec %s bash\n' etcd "$etcd_addr" "$ETCD_NS"
    echo
    echo "etcd endpoint: $client (pid $pid, log $STATE_DIR/etcd.log)"
    echo "Try:"
    echo "  ip netns exec $PREFIX-h1 ping -c 2 $etcd_addr"
    echo "  ip netns exec $PREFIX-h1 etcdctl --endpoints $client put /hello world"
    echo "  ip netns exec $PREFIX-h1 etcdctl --endpoints $client get --prefix /"
    echo "Tear down: $0 down"
}

cmd_down() {
    if [[ ! -e $STATE ]]; then
        echo "cluster.sh: nothing to remove (no $STATE)"
        return 0
    fi
    local kind what
    # Processes first: etcd by the PID recorded, and only if it still is our etcd.
    while read -r kind what; do
        [[ $kind == pid ]] || continue
        if is_our_etcd "$what"; then
            kill -TERM "$what" 2>/dev/null || true
            local i
            for ((i = 0; i < 50; i++)); do
                kill -0 "$what" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$what" 2>/dev/null; then
                kill -KILL "$what" 2>/dev/null || true
            fi
            echo "stopped etcd (pid $what)"
        elif [[ -e /proc/$what ]]; then
            echo "cluster.sh: pid $what is no longer our etcd; not touching it" >&2
        fi
    done <"$STATE"
    # Then the namespaces, newest first.
    local nss
    nss=$(awk '$1 == "netns" {print $2}' "$STATE" | tac)
    for what in $nss; do
        if ip netns del "$what" 2>/dev/null; then
            echo "deleted namespace $what"
        elif [[ -e /run/netns/$what ]]; then
            echo "cluster.sh: could not delete namespace $what" >&2
        fi
    done
    rm -rf "$STATE_DIR"
}

cmd_status() {
    if [[ ! -e $STATE ]]; then
        echo "down (no $STATE)"
        return 0
    fi
    local kind what
    while read -r kind what; do
        case $kind in
        netns)
            if [[ -e /run/netns/$what ]]; then
                echo "netns $what: $(ip -n "$what" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')"
            else
                echo "netns $what: MISSING"
            fi
            ;;
        pid)
            if is_our_etcd "$what"; then
                if etcd_healthy; then
                    echo "etcd pid $what: healthy at $(etcd_endpoint)"
                else
                    echo "etcd pid $what: running, NOT healthy"
                fi
            else
                echo "etcd pid $what: not running"
            fi
            ;;
        esac
    done <"$STATE"
}

case ${1:-} in
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
-h | --help | help) usage 0 ;;
*) usage 1 >&2 ;;
esac
