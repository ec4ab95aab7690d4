//! natOutgoing over netlink programs the same table as the `nft -f` script the agent used
//! before (same `nft list` output), replaces it atomically and removes it idempotently.
//! Runs inside private network namespaces (root needed).

use reef_firewall::{driver, DriverKind, NatPool};

mod common;
use common::in_private_netns;

fn nft(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut c = std::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    if let (Some(s), Some(mut i)) = (stdin, c.stdin.take()) {
        i.write_all(s.as_bytes()).expect("write nft stdin");
    }
    let out = c.wait_with_output().expect("nft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The script routed-agent/agent/src/nat.rs fed to `nft -f` before natOutgoing went over
/// netlink, for pools 10.1.0.0/16 (nat), 10.2.0.0/16 (no nat), fd10::/48 (nat).
const SCRIPT: &str = "table inet reef-nat {}\ndelete table inet reef-nat\ntable inet reef-nat {
  set pools4 { type ipv4_addr; flags interval; elements = { 10.1.0.0/16, 10.2.0.0/16 }; }
  set nat4 { type ipv4_addr; flags interval; elements = { 10.1.0.0/16 }; }
  set pools6 { type ipv6_addr; flags interval; elements = { fd10::/48 }; }
  set nat6 { type ipv6_addr; flags interval; elements = { fd10::/48 }; }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @nat4 ip daddr != @pools4 masquerade
    ip6 saddr @nat6 ip6 daddr != @pools6 masquerade
  }
}
";

fn pools() -> Vec<NatPool> {
    [
        ("10.1.0.0/16", true),
        ("10.2.0.0/16", false),
        ("fd10::/48", true),
    ]
    .iter()
    .map(|(c, n)| NatPool {
        cidr: c.parse().unwrap(),
        nat_outgoing: *n,
    })
    .collect()
}

#[test]
fn nat_outgoing_table_matches_the_nft_script() {
    let want = in_private_netns(|| {
        let (ok, out) = nft(&["-f", "-"], Some(SCRIPT));
        assert!(ok, "{out}");
        nft(&["list", "table", "inet", "reef-nat"], None).1
    });
    in_private_netns(|| {
        let mut fw = driver(DriverKind::Nftables);
        fw.sync_nat_outgoing(&pools()).unwrap();
        fw.sync_nat_outgoing(&pools()).unwrap(); // idempotent
        let (ok, got) = nft(&["list", "table", "inet", "reef-nat"], None);
        assert!(ok, "{got}");
        assert_eq!(got, want);
        // A pool change replaces the table's contents.
        let fewer: Vec<NatPool> = pools().into_iter().take(1).collect();
        fw.sync_nat_outgoing(&fewer).unwrap();
        let got = nft(&["list", "table", "inet", "reef-nat"], None).1;
        assert!(
            !got.contains("10.2.0.0/16") && !got.contains("fd10::"),
            "{got}"
        );
        assert_eq!(got.matches("masquerade").count(), 2, "{got}");
        fw.remove_nat_outgoing().unwrap();
        fw.remove_nat_outgoing().unwrap(); // idempotent
        assert!(!nft(&["list", "table", "inet", "reef-nat"], None).0);
    });
}
