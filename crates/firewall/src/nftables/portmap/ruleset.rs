//! The port-mapping table as one `nft -f` transaction (created once per host; see
//! `portmap` for its layout).

use super::{LOCALNET_REPLY_MARK, MASQ_MARK, TABLE};

/// The nft script that creates the table in one transaction. Every statement is idempotent
/// (`add` of an existing object is a no-op, chains are flushed before their rules are
/// added), so concurrent first ADDs need no lock and existing map elements survive.
pub fn table_script() -> String {
    let t = format!("inet {TABLE}");
    let mark = format!("0x{MASQ_MARK:08x}");
    let mut s = format!("add table {t}\n");
    for (name, key, data) in [
        (
            "hostip4",
            "ipv4_addr . inet_proto . inet_service",
            "ipv4_addr . inet_service",
        ),
        (
            "any4",
            "inet_proto . inet_service",
            "ipv4_addr . inet_service",
        ),
        (
            "hostip6",
            "ipv6_addr . inet_proto . inet_service",
            "ipv6_addr . inet_service",
        ),
        (
            "any6",
            "inet_proto . inet_service",
            "ipv6_addr . inet_service",
        ),
    ] {
        s += &format!("add map {t} {name} {{ type {key} : {data}; }}\n");
    }
    let chains = [
        (
            "prerouting",
            "{ type nat hook prerouting priority dstnat; policy accept; }",
        ),
        // nft 1.0.6 accepts the name dstnat only on prerouting; -100 is its value.
        (
            "output",
            "{ type nat hook output priority -100; policy accept; }",
        ),
        ("mapped", ""),
        (
            "forward",
            "{ type filter hook forward priority filter; policy accept; }",
        ),
        (
            "postrouting",
            "{ type nat hook postrouting priority srcnat; policy accept; }",
        ),
        (
            "input",
            "{ type filter hook input priority filter; policy accept; }",
        ),
        (
            "localnet",
            "{ type filter hook prerouting priority mangle; policy accept; }",
        ),
    ];
    for (name, spec) in chains {
        s += &format!("add chain {t} {name} {spec}\n");
    }
    for (name, _) in chains {
        s += &format!("flush chain {t} {name}\n");
    }
    let rules = [
        ("prerouting", "jump mapped".to_string()),
        // ::1 cannot be DNATed to another host: the kernel never routes a ::1 source out.
        ("output", "ip6 daddr ::1 return".to_string()),
        ("output", "jump mapped".to_string()),
        (
            "mapped",
            "meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @hostip4".into(),
        ),
        (
            "mapped",
            "meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @any4"
                .into(),
        ),
        (
            "mapped",
            "meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip6".into(),
        ),
        (
            "mapped",
            "meta nfproto ipv6 fib daddr type local dnat ip6 to meta l4proto . th dport map @any6"
                .into(),
        ),
        // A DNATed flow that goes back out of the interface it came in on (a pod reaching
        // itself or a neighbour on its bridge through a mapped port): the reply would skip
        // the host and its conntrack, so it must be masqueraded. Flows from other hosts
        // keep their source address.
        (
            "forward",
            format!("ct state new ct status dnat fib daddr . iif oif exists meta mark set meta mark | {mark}"),
        ),
        (
            "postrouting",
            format!("ct status dnat meta mark & {mark} == {mark} meta mark set meta mark & 0x{:08x} masquerade", !MASQ_MARK),
        ),
        // 127.0.0.1:hostPort from the host itself: the pod cannot answer a loopback source.
        (
            "postrouting",
            "ip saddr 127.0.0.0/8 ct status dnat oif != lo masquerade".into(),
        ),
        // route_localnet=1 (set for the above) must not open the host's loopback services
        // to its pods: only DNATed flows may carry a 127.0.0.0/8 destination off `lo`.
        (
            "input",
            "iif != lo ip daddr 127.0.0.0/8 ct state invalid drop".into(),
        ),
        (
            "input",
            "iif != lo ip daddr 127.0.0.0/8 ct status ! dnat drop".into(),
        ),
        // The replies of the host's own 127.0.0.1:hostPort flows, for the loopback guard on
        // a bridge: with br_netfilter they reach the bridge already de-NATed to 127.0.0.1.
        (
            "localnet",
            format!("ct direction reply ct status dnat ct original ip saddr 127.0.0.0/8 meta mark set meta mark | 0x{LOCALNET_REPLY_MARK:08x}"),
        ),
    ];
    for (chain, rule) in rules {
        s += &format!("add rule {t} {chain} {rule}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_one_idempotent_transaction() {
        let s = table_script();
        assert!(s.starts_with("add table inet reef-portmap\n"));
        for chain in [
            "prerouting",
            "output",
            "mapped",
            "forward",
            "postrouting",
            "input",
            "localnet",
        ] {
            let flush = s
                .find(&format!("flush chain inet reef-portmap {chain}\n"))
                .unwrap();
            let first_rule = s
                .find(&format!("add rule inet reef-portmap {chain} "))
                .unwrap();
            assert!(flush < first_rule, "{chain}");
        }
        assert!(!s.contains("delete"));
    }
}
