//! The services table through the nftables driver: what a full sync programs (as `nft list`
//! prints it, so the netlink-built count chains are exactly nft's rules), that a second sync
//! and a restarted driver change nothing, and that one endpoint change touches only its
//! elements. Runs inside private network namespaces (root needed).

use reef_firewall::{driver, DriverKind, LbEndpoint, Proto, ServiceLb};

mod common;
use common::in_private_netns;

fn nft_list() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "ip", "reef-services"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn lb(vip: &str, proto: Proto, port: u16, node_port: Option<u16>, eps: &[&str]) -> ServiceLb {
    ServiceLb {
        vip: vip.parse().expect("vip"),
        proto,
        port,
        node_port,
        endpoints: eps
            .iter()
            .map(|ip| LbEndpoint {
                ip: ip.parse().expect("ip"),
                port: 8080,
                local: ip.starts_with("10.1."),
            })
            .collect(),
        affinity_timeout: None,
        node_port_local: false,
    }
}

#[test]
fn a_full_sync_programs_the_table_and_a_resync_changes_nothing() {
    in_private_netns(|| {
        let mut web = lb(
            "10.96.0.10",
            Proto::Tcp,
            80,
            Some(30080),
            &["10.1.0.2", "10.2.0.2", "10.3.0.2"],
        );
        web.affinity_timeout = Some(60);
        let dns = lb("10.96.0.10", Proto::Udp, 53, None, &["10.1.0.3"]);
        let empty = lb("10.96.0.11", Proto::Tcp, 80, None, &[]);
        let all = vec![web.clone(), dns.clone(), empty];
        let mut fw = driver(DriverKind::Nftables);
        let first = fw.sync_services(&all).expect("sync");
        assert_eq!(first.services, 3);
        assert!(first.changes > 0);
        let text = nft_list();
        for want in [
            "10.96.0.10 . tcp . 80 : jump lb-3",
            "10.96.0.10 . udp . 53 : jump lb-1",
            "10.96.0.10 . tcp . 80 . 2 : 10.3.0.2 . 8080",
            "tcp . 30080 : jump np-lb-3",
            "10.96.0.10 . tcp . 80 : jump aff-60",
            // The count chains, built over netlink, read back as nft's own rules.
            "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints",
            "dnat ip to meta l4proto . th dport . numgen random mod 3 map @np-endpoints",
            "timeout 1m : ip daddr . th dport",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(
            text.contains("10.96.0.11"),
            "the endpoint-less VIP is in @vips:\n{text}"
        );
        assert_eq!(fw.sync_services(&all).expect("resync").changes, 0);
        // A restarted agent (a new driver) reads the kernel and changes nothing either.
        let mut again = driver(DriverKind::Nftables);
        assert_eq!(again.sync_services(&all).expect("restart sync").changes, 0);
        assert_eq!(nft_list(), text);

        // One endpoint leaves: the last slot moves into its slot, the count chains change,
        // its hairpin pair goes; nothing else is touched (7 elements: 2 jumps, 2 moved
        // slots, 2 freed slots, 1 hairpin pair).
        let mut less = web.clone();
        less.endpoints.remove(0);
        let applied = again
            .update_services(&[(web.key(), Some(less.clone()))])
            .expect("update");
        assert_eq!(applied.changes, 7, "{applied:?}");
        let text = nft_list();
        assert!(text.contains("10.96.0.10 . tcp . 80 : jump lb-2"), "{text}");
        assert!(!text.contains("10.96.0.10 . tcp . 80 . 2 :"), "{text}");
        assert!(text.contains("10.96.0.10 . udp . 53 : jump lb-1"), "{text}");
        // A restarted agent reads the moved slots back: its full sync changes nothing.
        let rest = vec![less.clone(), dns.clone(), all[2].clone()];
        let mut third = driver(DriverKind::Nftables);
        assert_eq!(
            third
                .sync_services(&rest)
                .expect("restart after churn")
                .changes,
            0
        );
        assert_eq!(
            again
                .sync_services(&rest)
                .expect("resync after churn")
                .changes,
            0
        );
        // The service goes: its VIP stays while the UDP port still needs it.
        again
            .update_services(&[(web.key(), None)])
            .expect("remove web");
        let text = nft_list();
        assert!(!text.contains("tcp . 80"), "{text}");
        assert!(text.contains("10.96.0.10 . udp . 53 : jump lb-1"), "{text}");
        assert!(!text.contains("30080"), "{text}");
        again.remove_services().expect("remove table");
        assert!(nft_list().contains("No such file"), "table removed");
    });
}
