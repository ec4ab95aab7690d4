//! The services table's fixed part, created once by one `nft -f` transaction: its sets and
//! maps (the per-service state, all elements) and the chains that never change. The chains
//! that depend on counts and timeouts (`lb-N`, `np-lb-N`, `aff-T`) are added over netlink
//! when first needed (`wire::lb_chain`): nft 1.0.6 refuses a later rule that reads the
//! `typeof ... numgen` map of an existing table ("conflicting protocols specified").

use super::TABLE;

/// The script; `add` statements and chain flushes only, so running it on an existing table
/// keeps every element and re-states the fixed rules.
pub fn table_script() -> String {
    let t = format!("ip {TABLE}");
    let mut s = format!("add table {t}\n");
    for (name, spec) in [
        ("vips", "type ipv4_addr;"),
        ("services", "type ipv4_addr . inet_proto . inet_service : verdict;"),
        (
            "endpoints",
            "typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport;",
        ),
        ("aff-services", "type ipv4_addr . inet_proto . inet_service : verdict;"),
        (
            "aff",
            "type ipv4_addr . ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; size 262144; flags dynamic,timeout; timeout 3h;",
        ),
        ("nodeports", "type inet_proto . inet_service : verdict;"),
        (
            "np-endpoints",
            "typeof meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport;",
        ),
        ("np-all", "type inet_proto . inet_service;"),
        ("np-masq", "type inet_proto . inet_service;"),
        ("hairpin", "type ipv4_addr . ipv4_addr;"),
    ] {
        let kind = if spec.contains(':') { "map" } else { "set" };
        s += &format!("add {kind} {t} {name} {{ {spec} }}\n");
    }
    let chains = [
        ("svc-dnat", ""),
        (
            "nat-prerouting",
            "{ type nat hook prerouting priority dstnat; policy accept; }",
        ),
        (
            "nat-output",
            "{ type nat hook output priority -100; policy accept; }",
        ),
        (
            "nat-postrouting",
            "{ type nat hook postrouting priority srcnat; policy accept; }",
        ),
        ("svc-filter", ""),
        (
            "filter-input",
            "{ type filter hook input priority filter; policy accept; }",
        ),
        (
            "filter-forward",
            "{ type filter hook forward priority filter; policy accept; }",
        ),
        (
            "filter-output",
            "{ type filter hook output priority filter; policy accept; }",
        ),
    ];
    for (name, spec) in chains {
        s += &format!("add chain {t} {name} {spec}\n");
    }
    for (name, _) in chains {
        s += &format!("flush chain {t} {name}\n");
    }
    let rules = [
        // A remembered ClientIP choice first (a miss does not match), then the service's
        // endpoint count chain, then node ports (only for the node's own addresses).
        ("svc-dnat", "dnat ip to ip saddr . ip daddr . meta l4proto . th dport map @aff"),
        ("svc-dnat", "ip daddr . meta l4proto . th dport vmap @services"),
        ("svc-dnat", "fib daddr type local meta l4proto . th dport vmap @nodeports"),
        ("nat-prerouting", "jump svc-dnat"),
        ("nat-output", "jump svc-dnat"),
        // A pod that reached itself through a service; node-port traffic of Cluster policy
        // (it may leave for another node, whose reply must come back through here).
        ("nat-postrouting", "ct status dnat ip saddr . ip daddr @hairpin masquerade"),
        (
            "nat-postrouting",
            "ct status dnat meta l4proto { tcp, udp } ct original ip daddr != @vips meta l4proto . ct original proto-dst @np-masq masquerade",
        ),
        // A host process's connection to a VIP: the service CIDR is a local route, so the
        // kernel gives it the VIP itself as source, and an endpoint on another node would
        // answer to its own node's VIP route.
        ("nat-postrouting", "ct status dnat ct original ip saddr @vips masquerade"),
        // Still addressed to a VIP after the NAT hooks: no endpoint, or a port the service
        // does not define. Refused at once, never dropped in silence.
        ("svc-filter", "ip daddr @vips meta l4proto tcp reject with tcp reset"),
        ("svc-filter", "ip daddr @vips reject"),
        (
            "svc-filter",
            "ct status & dnat == 0 fib daddr type local meta l4proto . th dport @np-all meta l4proto tcp reject with tcp reset",
        ),
        (
            "svc-filter",
            "ct status & dnat == 0 fib daddr type local meta l4proto . th dport @np-all reject",
        ),
        // Remember the endpoint chosen for a ClientIP-affinity service.
        (
            "svc-filter",
            "ct status dnat meta l4proto { tcp, udp } ct original ip daddr . meta l4proto . ct original proto-dst vmap @aff-services",
        ),
        ("filter-input", "ct state new jump svc-filter"),
        ("filter-forward", "ct state new jump svc-filter"),
        ("filter-output", "ct state new jump svc-filter"),
    ];
    for (chain, rule) in rules {
        s += &format!("add rule {t} {chain} {rule}\n");
    }
    s
}
