//! The `services_cluster` suite again, on the iptables firewall driver: the same tests, not a copy
//! (the binary's name selects the driver, see `netns_fixtures::firewall`).

#[path = "services_cluster.rs"]
mod suite;
