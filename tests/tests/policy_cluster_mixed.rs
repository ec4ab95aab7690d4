//! The `policy_cluster` suite on a mixed cluster: hosts h1, h3, ... run the iptables driver, the
//! others nftables (the binary's name selects it, see `netns_fixtures::firewall`).

#[path = "policy_cluster.rs"]
mod suite;
