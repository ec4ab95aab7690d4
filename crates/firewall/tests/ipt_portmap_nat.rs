//! Port mappings, masquerade and natOutgoing through the iptables driver, on both iptables
//! backends, inside a private network namespace (root needed): what the rules read back
//! as, ownership and conflicts, idempotence, and that removal leaves nothing behind.

use reef_firewall::iptables::{Backend, Family, Iptables};
use reef_firewall::{Error, FirewallDriver, Masquerade, NatPool, Owner, PortMapping, Proto};

mod common;
use common::in_private_netns;

const BACKENDS: [Backend; 2] = [Backend::Nft, Backend::Legacy];

fn owner(cid: &str) -> Owner {
    Owner {
        network: "pmnet".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
    }
}

fn pm(host_ip: Option<&str>, port: u16, proto: Proto, pod: &str, cport: u16) -> PortMapping {
    PortMapping {
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        host_port: port,
        proto,
        pod_ip: pod.parse().unwrap(),
        container_port: cport,
    }
}

fn save(b: Backend, family: Family, table: &str) -> String {
    b.save(family, table).unwrap()
}

/// Every REEF chain and jump of the namespace, both families and all tables.
fn reef_rules(b: Backend) -> String {
    let mut out = String::new();
    for f in [Family::V4, Family::V6] {
        for t in ["nat", "filter", "mangle", "raw"] {
            out += &save(b, f, t)
                .lines()
                .filter(|l| l.contains("REEF-") || l.contains("reef"))
                .map(|l| format!("{l}\n"))
                .collect::<String>();
        }
    }
    out
}

#[test]
fn port_mappings_are_owned_rules_on_both_backends() {
    for b in BACKENDS {
        in_private_netns(|| {
            let mut fw = Iptables::with_backend(b);
            let (a, o) = (owner("ctr-a"), owner("ctr-b"));
            let maps_a = vec![
                pm(None, 8080, Proto::Tcp, "10.1.0.2", 80),
                pm(Some("198.18.0.1"), 5353, Proto::Udp, "10.1.0.2", 53),
                pm(None, 8080, Proto::Tcp, "fd00::2", 80),
                pm(Some("fd00:198:18::1"), 443, Proto::Sctp, "fd00::2", 8443),
            ];
            fw.add_port_mappings(&a, &maps_a).unwrap();
            fw.add_port_mappings(&a, &maps_a).unwrap(); // a retried ADD
            let mut listed = fw.port_mappings().unwrap();
            listed.sort_by_key(|m| (m.pod_ip, m.host_port));
            assert_eq!(listed.len(), 4, "{b:?}: {listed:?}\n{}", reef_rules(b));
            fw.check_port_mappings(&a, &maps_a).unwrap();
            assert!(fw.check_port_mappings(&o, &maps_a).is_err());
            // Another owner: the same wildcard port, and an address on a wildcard port.
            for clash in [
                pm(None, 8080, Proto::Tcp, "10.1.0.3", 80),
                pm(Some("198.18.0.9"), 8080, Proto::Tcp, "10.1.0.3", 80),
                pm(None, 5353, Proto::Udp, "10.1.0.3", 53),
            ] {
                let before = reef_rules(b);
                match fw.add_port_mappings(&o, &[clash]) {
                    Err(Error::Conflict(msg)) => assert!(msg.contains("pmnet/ctr-a/eth0"), "{msg}"),
                    other => panic!("{b:?} {clash}: {other:?}"),
                }
                assert_eq!(before, reef_rules(b), "a refused ADD changed nothing");
            }
            // Other protocol, other port: fine.
            let maps_b = vec![pm(None, 8080, Proto::Udp, "10.1.0.3", 80)];
            fw.add_port_mappings(&o, &maps_b).unwrap();
            // DEL of known mappings removes only those; GC removes the stale owner.
            let removed = fw.del_port_mappings(&a, Some(&maps_a[..1])).unwrap();
            assert_eq!(removed, maps_a[..1].to_vec());
            assert_eq!(fw.port_mappings().unwrap().len(), 4);
            let removed = fw
                .gc_port_mappings("pmnet", &[("ctr-b".into(), "eth0".into())])
                .unwrap();
            assert_eq!(removed.len(), 3, "{removed:?}");
            assert_eq!(fw.port_mappings().unwrap(), maps_b);
            fw.del_port_mappings(&o, None).unwrap();
            fw.del_port_mappings(&o, None).unwrap(); // idempotent
            assert!(fw.port_mappings().unwrap().is_empty());
        });
    }
}

#[test]
fn masquerade_and_nat_outgoing_are_sets_behind_fixed_rules() {
    for b in BACKENDS {
        in_private_netns(|| {
            let mut fw = Iptables::with_backend(b);
            let m = Masquerade {
                network: "a-network-name-longer-than-an-ipset-name-allows".into(),
                subnets: vec![
                    "10.22.0.9/24".parse().unwrap(),
                    "fd22::/64".parse().unwrap(),
                ],
            };
            let ips = ["10.22.0.5".parse().unwrap(), "fd22::5".parse().unwrap()];
            fw.add_masquerade(&m, &ips).unwrap();
            fw.add_masquerade(&m, &ips[..1]).unwrap();
            fw.check_masquerade(&m, &ips).unwrap();
            let nat4 = save(b, Family::V4, "nat");
            assert!(nat4.contains("-d 10.22.0.0/24 -j RETURN"), "{nat4}");
            assert!(
                nat4.contains("-A POSTROUTING -j REEF-POSTROUTING"),
                "{nat4}"
            );
            fw.del_masquerade(&m.network, &ips).unwrap();
            fw.del_masquerade(&m.network, &ips).unwrap();
            assert!(fw.check_masquerade(&m, &ips).is_err());

            let pools = [
                NatPool {
                    cidr: "10.50.0.0/16".parse().unwrap(),
                    nat_outgoing: true,
                },
                NatPool {
                    cidr: "10.60.0.0/16".parse().unwrap(),
                    nat_outgoing: false,
                },
            ];
            fw.sync_nat_outgoing(&pools).unwrap();
            fw.sync_nat_outgoing(&pools).unwrap();
            let nat4 = save(b, Family::V4, "nat");
            assert_eq!(nat4.matches("reef natOutgoing").count(), 1, "{nat4}");
            fw.remove_nat_outgoing().unwrap();
            assert!(!save(b, Family::V4, "nat").contains("natOutgoing"));
        });
    }
}
