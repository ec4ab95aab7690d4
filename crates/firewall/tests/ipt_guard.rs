//! Pod guards through the iptables driver, on both iptables backends, with real traffic
//! between namespaces (root needed): anti-spoofing of routed and bridged pods, holds and
//! their release, bridge isolation, and DEL/GC leaving nothing behind. Each test's host is
//! its own named namespace; nothing runs in the root namespace's firewall.

use reef_firewall::iptables::{Backend, Iptables};
use reef_firewall::{BridgeIsolation, FirewallDriver, Masquerade, PodGuard, PolicyRuleset};
use std::net::IpAddr;
use std::time::Instant;

mod ipt_common;
use ipt_common::{bridge, bridged_pod, routed_pod, Ns};

const BACKENDS: [Backend; 2] = [Backend::Nft, Backend::Legacy];
const IF_A: &str = "reef0000000000a";
const IF_B: &str = "reef0000000000b";
const IF_C: &str = "reef0000000000c";
const IF_D: &str = "reef0000000000d";
const IF_E: &str = "reef0000000000e";

fn guard(iface: &str, ip: &str, bridge: Option<(&str, bool)>) -> PodGuard {
    PodGuard {
        iface: iface.into(),
        ips: vec![ip.parse().unwrap()],
        bridge: bridge.map(|(name, isolated)| BridgeIsolation {
            name: name.into(),
            isolated,
        }),
    }
}

fn ipset_save() -> String {
    let out = std::process::Command::new("ipset")
        .arg("save")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bridge layer: the nftables `bridge reef-guard` table the driver fills.
fn bridge_layer() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "bridge", "reef-guard"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn routed_pods_send_only_their_own_addresses() {
    for b in BACKENDS {
        let (host, a, bb) = (Ns::new("h"), Ns::new("a"), Ns::new("b"));
        routed_pod(&host, &a, IF_A, "10.40.1.2");
        routed_pod(&host, &bb, IF_B, "10.40.2.2");
        a.exec("ip addr add 10.40.1.99/24 dev eth0");
        for (ns, iface, net) in [(&a, IF_A, "1"), (&bb, IF_B, "2")] {
            host.exec(&format!(
                "ip -6 addr add fd40:{net}::1/64 dev {iface} nodad"
            ));
            ns.exec(&format!(
                "ip -6 addr add fd40:{net}::2/64 dev eth0 nodad && \
                 ip -6 route add default via fd40:{net}::1"
            ));
        }
        // Deprecated, so never chosen as a source unless asked for.
        a.exec("ip -6 addr add fd40:1::99/64 dev eth0 nodad preferred_lft 0");
        host.exec("sysctl -qw net.ipv6.conf.all.forwarding=1");
        host.run(|| {
            let mut fw = Iptables::with_backend(b);
            assert!(a.ping_from("10.40.1.99", "10.40.2.2"), "{b:?}: control");
            // Neighbour discovery through a fresh router takes a while: warm it up.
            assert!((0..3).any(|_| a.ping("fd40:2::2")), "{b:?}: control 6");
            assert!(a.ping_from("fd40:1::99", "fd40:2::2"), "{b:?}: control 6");
            let dual = |iface: &str, v4: &str, v6: &str| PodGuard {
                ips: vec![v4.parse().unwrap(), v6.parse().unwrap()],
                ..guard(iface, v4, None)
            };
            fw.add_pod_guard(&dual(IF_A, "10.40.1.2", "fd40:1::2"), None)
                .unwrap();
            fw.add_pod_guard(&dual(IF_B, "10.40.2.2", "fd40:2::2"), None)
                .unwrap();
            assert!(a.ping("10.40.2.2"), "{b:?}: own address");
            assert!(a.ping("fd40:2::2"), "{b:?}: own IPv6 address");
            assert!(!a.ping_from("10.40.1.99", "10.40.2.2"), "{b:?}: spoofed");
            assert!(
                !a.ping_from("fd40:1::99", "fd40:2::2"),
                "{b:?}: spoofed IPv6"
            );
            // Re-added with IPv4 only: its IPv6 address is now foreign.
            fw.del_pod_guard(IF_A, &[], None).unwrap();
            fw.add_pod_guard(&guard(IF_A, "10.40.1.2", None), None)
                .unwrap();
            assert!(a.ping("10.40.2.2"), "{b:?}: own address again");
            assert!(!a.ping("fd40:2::2"), "{b:?}: IPv6 of a pod without IPv6");
            fw.del_pod_guard(IF_A, &["10.40.1.2".parse().unwrap()], None)
                .unwrap();
            fw.del_pod_guard(IF_A, &["10.40.1.2".parse().unwrap()], None)
                .unwrap();
            assert!(a.ping_from("10.40.1.99", "10.40.2.2"), "{b:?}: after DEL");
            assert!(!ipset_save().contains(IF_A), "{}", ipset_save());
            fw.gc_pod_guards(&[IF_B.to_string()]).unwrap();
            assert!(!ipset_save().contains(IF_B), "{}", ipset_save());
        });
    }
}

#[test]
fn held_pods_pass_nothing_until_released() {
    for b in BACKENDS {
        let (host, a, bb) = (Ns::new("h"), Ns::new("a"), Ns::new("b"));
        let (c, d) = (Ns::new("c"), Ns::new("d"));
        routed_pod(&host, &a, IF_A, "10.40.1.2");
        routed_pod(&host, &bb, IF_B, "10.40.2.2");
        bridge(&host, "reefbr0", "10.41.0.1");
        bridged_pod(&host, &c, "reefbr0", IF_C, "10.41.0.2");
        bridged_pod(&host, &d, "reefbr0", IF_D, "10.41.0.3");
        host.run(|| {
            let mut fw = Iptables::with_backend(b);
            // No agent yet: nothing is held.
            assert!(!fw.hold_new_pod(IF_B, "prod").unwrap());
            let mut r = PolicyRuleset::default();
            r.namespaces.insert("prod".into());
            fw.sync_policy(&r, true).unwrap();
            assert!(!fw.hold_new_pod(IF_B, "other").unwrap());
            assert!(fw.hold_new_pod(IF_B, "prod").unwrap(), "{b:?}");
            assert!(fw.hold_new_pod(IF_D, "prod").unwrap(), "{b:?}");
            fw.add_pod_guard(&guard(IF_A, "10.40.1.2", None), None)
                .unwrap();
            fw.add_pod_guard(&guard(IF_B, "10.40.2.2", None), None)
                .unwrap();
            let br = Some(("reefbr0", false));
            fw.add_pod_guard(&guard(IF_C, "10.41.0.2", br), None)
                .unwrap();
            fw.add_pod_guard(&guard(IF_D, "10.41.0.3", br), None)
                .unwrap();
            assert!(!a.ping("10.40.2.2"), "{b:?}: to a held routed pod");
            assert!(!bb.ping("10.40.1.2"), "{b:?}: from a held routed pod");
            assert!(!c.ping("10.41.0.3"), "{b:?}: bridged, to a held pod");
            assert!(!host.ping("10.41.0.3"), "{b:?}: host to a held bridged pod");
            assert!(!a.ping("10.41.0.3"), "{b:?}: routed into the bridge, held");
            assert!(a.ping("10.41.0.2"), "{b:?}: a pod not held");
            fw.release_pods(&[IF_B.to_string(), IF_D.to_string()])
                .unwrap();
            fw.release_pods(&[IF_B.to_string()]).unwrap();
            assert!(a.ping("10.40.2.2"), "{b:?}: released");
            assert!(
                c.ping("10.41.0.3"),
                "{b:?}: released, bridged\n{}\n{}\n{}",
                ipset_save(),
                bridge_layer(),
                b.save(reef_firewall::iptables::Family::V4, "filter")
                    .unwrap()
            );
            assert!(host.ping("10.41.0.3"), "{b:?}: released, from the host");
            // The bridge pod's anti-spoofing stayed.
            assert!(bridge_layer().contains(&format!("\"{IF_D}\"")));
            // A hold undone by DEL without addresses (an ADD that failed before IPAM).
            assert!(fw.hold_new_pod(IF_E, "prod").unwrap());
            fw.del_pod_guard(IF_E, &[], None).unwrap();
            assert!(!ipset_save().contains(IF_E));
            assert!(!bridge_layer().contains(IF_E));
            fw.remove_policy().unwrap();
        });
    }
}

#[test]
fn bridged_pods_are_guarded_at_the_bridge_and_networks_isolated() {
    for b in BACKENDS {
        let host = Ns::new("h");
        let (c, d, e) = (Ns::new("c"), Ns::new("d"), Ns::new("e"));
        bridge(&host, "reefbr0", "10.41.0.1");
        bridge(&host, "reefbr1", "10.42.0.1");
        bridged_pod(&host, &c, "reefbr0", IF_C, "10.41.0.2");
        bridged_pod(&host, &d, "reefbr0", IF_D, "10.41.0.3");
        bridged_pod(&host, &e, "reefbr1", IF_E, "10.42.0.2");
        c.exec("ip addr add 10.41.0.99/24 dev eth0");
        host.run(|| {
            let mut fw = Iptables::with_backend(b);
            let m = Masquerade {
                network: "bridge-net".into(),
                subnets: vec!["10.41.0.0/24".parse().unwrap()],
            };
            let ips: Vec<IpAddr> = vec!["10.41.0.2".parse().unwrap()];
            assert!(c.ping_from("10.41.0.99", "10.41.0.3"), "{b:?}: control");
            let open = |br| Some((br, false));
            fw.add_pod_guard(&guard(IF_C, "10.41.0.2", open("reefbr0")), Some((&m, &ips)))
                .unwrap();
            fw.add_pod_guard(&guard(IF_D, "10.41.0.3", open("reefbr0")), None)
                .unwrap();
            fw.add_pod_guard(&guard(IF_E, "10.42.0.2", open("reefbr1")), None)
                .unwrap();
            fw.check_masquerade(&m, &ips).unwrap();
            assert!(c.ping("10.41.0.3"), "{b:?}: bridged, own address");
            assert!(
                !c.ping_from("10.41.0.99", "10.41.0.3"),
                "{b:?}: bridged, spoofed"
            );
            assert!(
                !c.ping_from("10.41.0.99", "10.41.0.1"),
                "{b:?}: spoofed to the host"
            );
            assert!(c.ping("10.42.0.2"), "{b:?}: open networks reach each other");
            // reefbr0 becomes isolated with its next ADD.
            let iso = Some(("reefbr0", true));
            fw.add_pod_guard(&guard(IF_D, "10.41.0.3", iso), None)
                .unwrap();
            assert!(!c.ping("10.42.0.2"), "{b:?}: from an isolated network");
            assert!(!e.ping("10.41.0.3"), "{b:?}: into an isolated network");
            assert!(c.ping("10.41.0.3"), "{b:?}: inside the isolated network");
            assert!(c.ping("10.41.0.1"), "{b:?}: to its own gateway");
            fw.add_pod_guard(&guard(IF_D, "10.41.0.3", open("reefbr0")), None)
                .unwrap();
            assert!(c.ping("10.42.0.2"), "{b:?}: isolation lifted");
            // DEL removes the port's bridge chain and the masquerade member.
            fw.del_pod_guard(IF_C, &ips, Some("bridge-net")).unwrap();
            assert!(fw.check_masquerade(&m, &ips).is_err());
            assert!(!bridge_layer().contains(IF_C), "{}", bridge_layer());
            assert!(c.ping_from("10.41.0.99", "10.41.0.3"), "{b:?}: after DEL");
            fw.gc_pod_guards(&[IF_D.to_string(), IF_E.to_string()])
                .unwrap();
            let (sets, eb) = (ipset_save(), bridge_layer());
            assert!(!sets.contains(IF_D) && !eb.contains(IF_D), "{sets}\n{eb}");
        });
    }
}

type MakeDriver = Box<dyn Fn() -> Box<dyn FirewallDriver> + Sync>;

/// The ADD hot path: `add_pod_guard` with the masquerade, per pod, once the rules exist;
/// printed (not asserted) for each backend and for the nftables driver.
#[test]
fn hot_path_cost() {
    const PODS: usize = 30;
    let m = Masquerade {
        network: "cost-net".into(),
        subnets: vec!["10.50.0.0/16".parse().unwrap()],
    };
    let mut drivers: Vec<(String, MakeDriver)> = Vec::new();
    for b in BACKENDS {
        drivers.push((
            format!("iptables-{}", b.name()),
            Box::new(move || Box::new(Iptables::with_backend(b))),
        ));
    }
    drivers.push((
        "nftables".into(),
        Box::new(|| reef_firewall::driver(reef_firewall::DriverKind::Nftables)),
    ));
    for (name, make) in &drivers {
        for bridged in [false, true] {
            let host = Ns::new("cost");
            host.run(|| {
                let br = bridged.then_some(("reefbr0", false));
                let first = guard("reef00000000fff", "10.50.255.1", br);
                let ips: Vec<IpAddr> = first.ips.clone();
                make().add_pod_guard(&first, Some((&m, &ips))).unwrap();
                let (mut hold, mut add) = (0.0, 0.0);
                for i in 0..PODS {
                    let iface = format!("reef{i:011x}");
                    let ip = format!("10.50.0.{}", i + 2);
                    let g = guard(&iface, &ip, br);
                    let ips: Vec<IpAddr> = g.ips.clone();
                    // A fresh driver per pod, as each plugin process has.
                    let mut fw = make();
                    let t = Instant::now();
                    assert!(!fw.hold_new_pod(&iface, "default").unwrap());
                    hold += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    fw.add_pod_guard(&g, Some((&m, &ips))).unwrap();
                    add += t.elapsed().as_secs_f64();
                    fw.close_in_background();
                }
                let per = |s: f64| s * 1000.0 / PODS as f64;
                println!(
                    "hot path {name:<16} {}: hold_new_pod {:.2} ms, add_pod_guard+masquerade {:.2} ms per pod",
                    if bridged { "bridged" } else { "routed " },
                    per(hold),
                    per(add)
                );
            });
        }
    }
}
