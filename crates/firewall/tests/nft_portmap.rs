//! The portmap driver against the real kernel, inside a private network namespace (root
//! needed): the thread unshares its own netns, so nothing touches the host's firewall.
//! `nft list` must show exactly what the hand-encoded netlink elements mean.

use reef_firewall::nftables::Nftables;
use reef_firewall::portmap::{Owner, PortMapper, PortMapping, Proto, TABLE};
use reef_firewall::Error;

mod common;
use common::in_private_netns;

fn nft_list() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

#[test]
fn mappings_are_owned_elements() {
    in_private_netns(|| {
        let a = owner("ctr-a");
        let b = owner("ctr-b");
        let maps_a = vec![
            pm(None, 8080, Proto::Tcp, "10.1.0.2", 80),
            pm(Some("198.18.0.1"), 5353, Proto::Udp, "10.1.0.2", 53),
            pm(None, 8080, Proto::Tcp, "fd00::2", 80),
            pm(Some("fd00:198:18::1"), 443, Proto::Sctp, "fd00::2", 8443),
        ];
        let mut fw = Nftables::new();
        fw.add_port_mappings(&a, &maps_a).unwrap();
        fw.add_port_mappings(&a, &maps_a).unwrap(); // a retried ADD
        let t = nft_list();
        for want in [
            "tcp . 8080 comment \"pmnet/ctr-a/eth0\" : 10.1.0.2 . 80",
            "198.18.0.1 . udp . 5353 comment \"pmnet/ctr-a/eth0\" : 10.1.0.2 . 53",
            "tcp . 8080 comment \"pmnet/ctr-a/eth0\" : fd00::2 . 80",
            "fd00:198:18::1 . sctp . 443 comment \"pmnet/ctr-a/eth0\" : fd00::2 . 8443",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
        fw.check_port_mappings(&a, &maps_a).unwrap();
        assert!(fw.check_port_mappings(&b, &maps_a).is_err());

        // b: one new port plus one taken port: nothing of b's is installed.
        let maps_b = vec![
            pm(None, 9090, Proto::Tcp, "10.1.0.3", 80),
            pm(None, 8080, Proto::Tcp, "10.1.0.3", 80),
        ];
        match fw.add_port_mappings(&b, &maps_b) {
            Err(Error::Conflict(msg)) => {
                assert!(msg.contains("8080") && msg.contains("tcp"), "{msg}")
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(!nft_list().contains("9090"), "{}", nft_list());
        // A single address overlapping a wildcard of the same port, and the reverse.
        let overlap = vec![pm(Some("198.18.0.7"), 8080, Proto::Tcp, "10.1.0.3", 80)];
        assert!(matches!(
            fw.add_port_mappings(&b, &overlap),
            Err(Error::Conflict(_))
        ));
        let wild = vec![pm(None, 5353, Proto::Udp, "10.1.0.3", 53)];
        assert!(matches!(
            fw.add_port_mappings(&b, &wild),
            Err(Error::Conflict(_))
        ));
        assert!(!nft_list().contains("ctr-b"), "{}", nft_list());
        // Another protocol or family on the same port is free.
        let free = vec![pm(None, 8080, Proto::Udp, "10.1.0.3", 80)];
        fw.add_port_mappings(&b, &free).unwrap();

        // A stale DEL of a (old pod address) removes nothing.
        let stale = vec![pm(None, 8080, Proto::Tcp, "10.1.0.9", 80)];
        assert!(fw.del_port_mappings(&a, Some(&stale)).unwrap().is_empty());
        // b's DEL by owner alone (no prevResult) removes b's element only.
        assert_eq!(fw.del_port_mappings(&b, None).unwrap(), free);
        fw.check_port_mappings(&a, &maps_a).unwrap();
        // GC keeps valid owners and other networks' elements.
        let other_net = Owner {
            network: "othernet".into(),
            ..owner("ctr-c")
        };
        let maps_c = vec![pm(None, 7070, Proto::Tcp, "10.2.0.2", 80)];
        fw.add_port_mappings(&other_net, &maps_c).unwrap();
        let valid = vec![("ctr-a".to_string(), "eth0".to_string())];
        assert!(fw.gc_port_mappings("pmnet", &valid).unwrap().is_empty());
        let removed = fw.gc_port_mappings("pmnet", &[]).unwrap();
        assert_eq!(removed.len(), 4, "{removed:?}");
        let t = nft_list();
        assert!(
            !t.contains("ctr-a") && t.contains("othernet/ctr-c/eth0"),
            "{t}"
        );
        assert_eq!(
            fw.del_port_mappings(&other_net, Some(&maps_c)).unwrap(),
            maps_c
        );
        assert!(fw
            .del_port_mappings(&other_net, Some(&maps_c))
            .unwrap()
            .is_empty());
        fw.port_mapping_status().unwrap();
    });
}
