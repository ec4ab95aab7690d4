//! Underlays, simulated hosts and routers on the real kernel. Everything lives in namespaces
//! created here (198.18.0.0/15 only) and is removed on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use netns_fixtures::{ping, Cluster, Router, Underlay};

fn read_forwarding(ns: &netns_fixtures::Netns) -> String {
    ns.sh_ok("cat /proc/sys/net/ipv4/ip_forward")
        .trim()
        .to_owned()
}

#[test]
fn two_hosts_on_one_underlay_ping_each_other() {
    let mut ul = Underlay::new("198.18.1.0/24").expect("underlay");
    assert_eq!(ul.subnet(), "198.18.1.0/24");
    assert_eq!(ul.prefix(), 24);
    let h1 = ul.add_host("fx-h1").expect("host 1");
    let h2 = ul.add_host("fx-h2").expect("host 2");
    assert_eq!(h1.name(), "fx-h1");
    assert!(h1.ns().name().starts_with("fx-h1-"));
    assert_eq!(h1.addr(), Ipv4Addr::new(198, 18, 1, 1));
    assert_eq!(h2.addr(), Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(h1.iface(), "eth0");

    let addrs = h1.ns().sh_ok("ip -o -4 addr show dev eth0");
    assert!(addrs.contains("198.18.1.1/24"), "{addrs}");
    assert!(h1.ns().sh_ok("ip -o link show lo").contains("UP"));
    assert_eq!(read_forwarding(h1.ns()), "1");
    // The host's eth0 is the only non-lo link; its peer is a port of the underlay bridge.
    assert_eq!(h1.ns().sh_ok("ip -o link show").lines().count(), 2);
    let ports = ul.ns().sh_ok("ip -o link show master br0");
    assert!(
        ports.contains(h1.switch_port()) && ports.contains(h2.switch_port()),
        "{ports}"
    );

    assert!(ping(h1.ns(), "198.18.1.2", 2), "h1 cannot reach h2");
    assert!(ping(h2.ns(), "198.18.1.1", 1), "h2 cannot reach h1");
    assert!(!ping(h1.ns(), "198.18.1.3", 1), "nobody has .3");
    // The underlay switch itself has no address and no routes.
    assert_eq!(ul.ns().sh_ok("ip -4 route show").trim(), "");
    // cmd() runs in the host's namespace.
    let out = h2
        .cmd("ip")
        .args(["-o", "-4", "addr", "show", "dev", "eth0"])
        .output();
    assert!(String::from_utf8_lossy(&out.expect("ip").stdout).contains("198.18.1.2/24"));
}

#[test]
fn hosts_on_two_underlays_reach_each_other_through_the_router() {
    let mut a = Underlay::new("198.18.1.0/24").expect("underlay a");
    let mut b = Underlay::new("198.18.2.0/24").expect("underlay b");
    // One host on each side before the router exists, one after: both get routes.
    let a1 = a.add_host("fx-a1").expect("a1");
    let b1 = b.add_host("fx-b1").expect("b1");
    assert!(
        !ping(a1.ns(), "198.18.2.1", 1),
        "no route before the router"
    );
    let router = Router::join(&mut a, &mut b).expect("router");
    let a2 = a.add_host("fx-a2").expect("a2");

    assert_eq!(
        router.addrs(),
        (
            Ipv4Addr::new(198, 18, 1, 254),
            Ipv4Addr::new(198, 18, 2, 254)
        )
    );
    assert_eq!(router.addr_on(&a), Some(Ipv4Addr::new(198, 18, 1, 254)));
    assert_eq!(router.addr_on(&b), Some(Ipv4Addr::new(198, 18, 2, 254)));
    assert_eq!(a2.addr(), Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(read_forwarding(router.ns()), "1");

    for (host, dst, via) in [
        (&a1, "198.18.2.1", "198.18.1.254"),
        (&a2, "198.18.2.1", "198.18.1.254"),
        (&b1, "198.18.1.2", "198.18.2.254"),
    ] {
        let route = host.ns().sh_ok(&format!("ip route get {dst}"));
        assert!(
            route.contains(&format!("via {via}")),
            "{}: {route}",
            host.name()
        );
    }
    assert!(ping(a1.ns(), "198.18.2.1", 2), "a1 -> b1");
    assert!(ping(b1.ns(), "198.18.1.1", 1), "b1 -> a1");
    assert!(
        ping(b1.ns(), "198.18.1.2", 1),
        "b1 -> a2 (added after the join)"
    );
    assert!(ping(a2.ns(), "198.18.2.1", 1), "a2 -> b1");
    // TTL shows the extra hop.
    let out = a1.ns().sh_ok("ping -c 1 -W 1 198.18.2.1");
    assert!(out.contains("ttl=63"), "{out}");

    // The router knows only its two connected subnets: nothing about 10.0.0.0/8 (pods).
    let routes = router.ns().sh_ok("ip -4 route show");
    assert_eq!(routes.lines().count(), 2, "{routes}");
    let no_route = router.ns().sh("ip route get 10.1.2.3");
    assert!(!no_route.status.success(), "router routes 10.1.2.3");
    assert!(
        String::from_utf8_lossy(&no_route.stderr).contains("unreachable"),
        "{no_route:?}"
    );
    // Hosts have no default route either.
    assert!(!a1.ns().sh("ip route get 10.1.2.3").status.success());
    assert!(!ping(a1.ns(), "10.1.2.3", 1));
}

#[test]
fn router_rejects_overlapping_or_duplicate_joins() {
    let mut a = Underlay::new("198.18.4.0/24").expect("a");
    let mut b = Underlay::new("198.18.4.0/25").expect("b");
    assert!(Router::join(&mut a, &mut b).is_err(), "overlapping subnets");
    let mut c = Underlay::new("198.18.5.0/24").expect("c");
    let r = Router::join(&mut a, &mut c).expect("first router");
    assert!(
        Router::join(&mut a, &mut c).is_err(),
        "second path to the same subnet"
    );
    drop(r);
    // Once the first router is gone, a new one may take its place (it gets the next address).
    let r2 = Router::join(&mut a, &mut c).expect("replacement router");
    assert_eq!(r2.addr_on(&a), Some(Ipv4Addr::new(198, 18, 4, 253)));
}

#[test]
fn underlay_subnets_are_validated() {
    for bad in [
        "10.0.0.0/24",
        "198.20.0.0/24",
        "198.16.0.0/14",
        "198.18.1.0/31",
        "198.18.1.1/24",
        "x",
    ] {
        let err = Underlay::new(bad).expect_err(bad);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad}: {err}");
    }
}

#[test]
fn small_underlay_runs_out_of_addresses() {
    // /29: .1-.6 usable; the router takes .6, hosts .1-.5.
    let mut a = Underlay::new("198.18.9.0/29").expect("a");
    let mut b = Underlay::new("198.18.9.8/29").expect("b");
    let r = Router::join(&mut a, &mut b).expect("router");
    assert_eq!(r.addrs().0, Ipv4Addr::new(198, 18, 9, 6));
    let hosts: Vec<_> = (0..5)
        .map(|_| a.add_host("fx-small").expect("host"))
        .collect();
    assert_eq!(hosts[4].addr(), Ipv4Addr::new(198, 18, 9, 5));
    let err = a.add_host("fx-small").expect_err("subnet is full");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable);
}

#[test]
fn two_subnet_cluster() {
    let cluster = Cluster::two_subnets(2).expect("cluster");
    assert_eq!(cluster.hosts.len(), 4);
    let names: Vec<&str> = cluster.hosts.iter().map(|h| h.name()).collect();
    assert_eq!(names, ["h1", "h2", "h3", "h4"]);
    assert_eq!(cluster.host(1).addr(), Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(cluster.host(2).addr(), Ipv4Addr::new(198, 18, 2, 1));
    assert!(ping(cluster.host(0).ns(), "198.18.2.2", 2));
    assert!(ping(cluster.host(3).ns(), "198.18.1.1", 1));
}

fn assert_all_gone(paths: &[PathBuf]) {
    for p in paths {
        assert!(!p.exists(), "{} survived", p.display());
    }
    let listed = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for p in paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!listed.contains(&name), "{name} still in /run/netns");
    }
}

#[test]
fn drop_removes_every_namespace() {
    let cluster = Cluster::two_subnets(1).expect("cluster");
    let paths = cluster.netns_paths();
    assert_eq!(paths.len(), 5, "2 underlays, 1 router, 2 hosts");
    for p in &paths {
        assert!(p.exists(), "{}", p.display());
    }
    drop(cluster);
    assert_all_gone(&paths);
}

#[test]
fn drop_removes_every_namespace_when_a_test_panics() {
    let seen: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let mut a = Underlay::new("198.18.1.0/24").expect("a");
        let mut b = Underlay::new("198.18.2.0/24").expect("b");
        let r = Router::join(&mut a, &mut b).expect("router");
        let h = a.add_host("fx-panic").expect("host");
        *seen.lock().unwrap() = vec![
            a.ns().path().into(),
            b.ns().path().into(),
            r.ns().path().into(),
            h.ns().path().into(),
        ];
        panic!("deliberate");
    });
    assert!(result.is_err());
    let paths = seen.into_inner().unwrap();
    assert_eq!(paths.len(), 4);
    assert_all_gone(&paths);
}
