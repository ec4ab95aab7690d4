//! natOutgoing: pod traffic leaving the pools is masqueraded to the node's address; traffic
//! between pods (any pool) never is. One nftables table, replaced atomically whenever the
//! pools change (once per config change, not per pod), programmed by the firewall driver
//! (reef_firewall, over netlink: no `nft` process).

use reef_schema::Pool;

pub const TABLE: &str = "reef-nat";

/// The same table as an `nft -f` script (what the driver's netlink transaction amounts to;
/// for people and tests): one transaction: create-if-absent, delete, define. Applying it
/// twice is harmless and nobody ever sees a half-built table.
pub fn script(pools: &[Pool]) -> String {
    let list = |v4: bool, nat_only: bool| -> Vec<String> {
        pools
            .iter()
            .filter(|p| p.cidr.is_ipv4() == v4 && (!nat_only || p.nat_outgoing))
            .map(|p| p.cidr.to_string())
            .collect()
    };
    let set = |name: &str, ty: &str, elems: &[String]| -> String {
        let elements = if elems.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", elems.join(", "))
        };
        format!("  set {name} {{ type {ty}; flags interval;{elements} }}\n")
    };
    let mut s =
        format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    s += &set("pools4", "ipv4_addr", &list(true, false));
    s += &set("nat4", "ipv4_addr", &list(true, true));
    s += &set("pools6", "ipv6_addr", &list(false, false));
    s += &set("nat6", "ipv6_addr", &list(false, true));
    s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
    s += "    ip saddr @nat4 ip daddr != @pools4 masquerade\n";
    s += "    ip6 saddr @nat6 ip6 daddr != @pools6 masquerade\n  }\n}\n";
    s
}

pub fn apply(pools: &[Pool]) -> Result<(), reef_firewall::Error> {
    let pools: Vec<reef_firewall::NatPool> = pools
        .iter()
        .map(|p| reef_firewall::NatPool {
            cidr: p.cidr,
            nat_outgoing: p.nat_outgoing,
        })
        .collect();
    reef_firewall::driver_from_env()?.sync_nat_outgoing(&pools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_lists_nat_pools_only_in_nat_sets() {
        let pools = vec![
            Pool {
                cidr: "10.1.0.0/16".parse().unwrap(),
                block_prefix: 26,
                nat_outgoing: true,
            },
            Pool {
                cidr: "10.2.0.0/16".parse().unwrap(),
                block_prefix: 26,
                nat_outgoing: false,
            },
        ];
        let s = script(&pools);
        assert!(s.contains("set pools4 { type ipv4_addr; flags interval; elements = { 10.1.0.0/16, 10.2.0.0/16 }; }"));
        assert!(
            s.contains("set nat4 { type ipv4_addr; flags interval; elements = { 10.1.0.0/16 }; }")
        );
        assert!(s.contains("set nat6 { type ipv6_addr; flags interval; }"));
    }
}
