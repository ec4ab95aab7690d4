//! Runs against the real kernel inside a private network namespace (root needed): the thread
//! unshares its own netns, so nothing touches the host's firewall.

use ipnetwork::IpNetwork;
use reef_firewall::nftables::{table_name, Nftables};
use reef_firewall::{Firewall, Masquerade};
use std::net::IpAddr;

mod common;
use common::in_private_netns;

fn nft_list(table: &str) -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pod_addresses_enter_and_leave_the_network_table() {
    in_private_netns(|| {
        let mut fw = Nftables::new();
        let m = Masquerade {
            network: "testnet".into(),
            subnets: vec![
                "10.77.0.0/24".parse::<IpNetwork>().unwrap(),
                "fd77::/64".parse().unwrap(),
            ],
        };
        let a: Vec<IpAddr> = vec!["10.77.0.2".parse().unwrap(), "fd77::2".parse().unwrap()];
        let b: Vec<IpAddr> = vec!["10.77.0.3".parse().unwrap()];
        fw.add_masquerade(&m, &a).unwrap();
        fw.add_masquerade(&m, &b).unwrap();
        fw.add_masquerade(&m, &b).unwrap(); // idempotent
        let t = nft_list(&table_name("testnet"));
        assert!(
            t.contains("10.77.0.2") && t.contains("10.77.0.3") && t.contains("fd77::2"),
            "{t}"
        );
        assert_eq!(t.matches("masquerade").count(), 2, "{t}");
        fw.check_masquerade(&m, &a).unwrap();
        fw.del_masquerade("testnet", &a).unwrap();
        fw.del_masquerade("testnet", &a).unwrap(); // idempotent
        assert!(fw.check_masquerade(&m, &a).is_err());
        fw.check_masquerade(&m, &b).unwrap();
        let t = nft_list(&table_name("testnet"));
        assert!(!t.contains("10.77.0.2") && t.contains("10.77.0.3"), "{t}");
        // A network without a table: DEL is a no-op.
        fw.del_masquerade("othernet", &b).unwrap();
    });
}
