//! Services through the iptables driver, on both iptables backends, each test in network
//! namespaces of its own (root needed; every iptables and ipset command runs inside them):
//! what a full sync programs (as iptables-save prints it), that a resync and a restarted
//! driver change nothing, that an update touches only its service, that stale chains go and
//! removal leaves nothing; then real traffic: a VIP reaches its endpoint, an endpoint-less VIP
//! and an undefined port are refused at once, affinity sticks, node ports masquerade (Cluster)
//! or keep the client's address (Local), hairpin and host connections work.
//!
//! `scale_figures` (ignored) prints sync and update times at 1,000 and 10,000 services:
//! `cargo test --release -p reef-firewall --test ipt_services -- --ignored --nocapture`.

use reef_firewall::iptables::{Backend, Iptables};
use reef_firewall::{FirewallDriver, LbEndpoint, Proto, ServiceLb};
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BACKENDS: [Backend; 2] = [Backend::Nft, Backend::Legacy];

/// A named network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "reefsvc-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }

    /// Runs `f` on a thread inside the namespace (its child processes inherit it).
    fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path);
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    fn ip(&self, args: &str) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend(args.split_whitespace());
        sh(&v);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn enter(path: &str) {
    let f = std::fs::File::open(path).expect("open netns");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn save(b: Backend, table: &str) -> String {
    let bin = match b {
        Backend::Nft => "iptables-nft-save",
        Backend::Legacy => "iptables-legacy-save",
    };
    sh(&[bin, "-t", table])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The lines of `chain` in a dump.
fn chain_lines(dump: &str, chain: &str) -> Vec<String> {
    let p = format!("-A {chain} ");
    dump.lines()
        .filter(|l| l.starts_with(&p))
        .map(str::to_string)
        .collect()
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
fn a_full_sync_programs_the_rules_and_updates_touch_only_their_service() {
    for b in BACKENDS {
        let host = Ns::new("rules");
        host.run(|| rules_on(b));
    }
}

fn rules_on(b: Backend) {
    let mut web = lb(
        "10.96.0.10",
        Proto::Tcp,
        80,
        Some(30080),
        &["10.1.0.2", "10.2.0.2", "10.3.0.2"],
    );
    web.affinity_timeout = Some(60);
    let dns = lb("10.96.0.10", Proto::Udp, 53, None, &["10.1.0.3"]);
    let empty = lb("10.96.0.11", Proto::Tcp, 80, Some(30081), &[]);
    let v6 = lb("fd00::10", Proto::Tcp, 80, None, &["fd00::1:2"]);
    let all = vec![web.clone(), dns.clone(), empty.clone(), v6];
    let mut fw = Iptables::with_backend(b);
    // A bridge network's masquerade first: it shares REEF-POSTROUTING, which services must
    // neither flush nor leave without the network's rule.
    let masq = reef_firewall::Masquerade {
        network: "svcnet".into(),
        subnets: vec!["10.1.0.0/24".parse().expect("subnet")],
    };
    let pod: std::net::IpAddr = "10.1.0.2".parse().expect("ip");
    fw.add_masquerade(&masq, &[pod]).expect("masquerade");
    let first = fw.sync_services(&all).expect("sync");
    assert_eq!(first.services, 4, "{b:?}");
    assert!(first.changes > 0);
    let nat = save(b, "nat");
    for want in [
        "-A PREROUTING -j REEF-SERVICES",
        "-A OUTPUT -j REEF-SERVICES",
        "-A REEF-SERVICES -m addrtype --dst-type LOCAL -j REEF-NODEPORTS",
        "-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REEF-SVC-",
        "-d 10.96.0.10/32 -p udp -m udp --dport 53 -j REEF-SVC-",
        "-A REEF-NODEPORTS -p tcp -m tcp --dport 30080 -j REEF-EXT-",
        "-m recent --rcheck --seconds 60 --reap --name REEF-SEP-",
        "-m statistic --mode random --probability 0.33333333349 -j REEF-SEP-",
        "-p tcp -j DNAT --to-destination 10.3.0.2:8080",
        "-p udp -j DNAT --to-destination 10.1.0.3:8080",
        "-m set ! --match-set reef-svc-vips dst -j MARK --set-xmark 0x4000/0x4000",
        "-A REEF-POSTROUTING -m mark --mark 0x4000/0x4000 -j REEF-SVCMASQ",
        "--match-set reef-svc-hairpin src,dst,dst -j MASQUERADE",
    ] {
        assert!(nat.contains(want), "{b:?}: missing {want:?} in:\n{nat}");
    }
    assert!(
        !nat.contains("10.96.0.11"),
        "no rule for the endpoint-less VIP"
    );
    assert!(!nat.contains("fd00"), "IPv6 programs nothing");
    let filter = save(b, "filter");
    assert!(
        filter.contains("-A INPUT -m conntrack --ctstate NEW -j REEF-SVC-FILTER")
            && filter.contains("--match-set reef-svc-vips dst -j REJECT --reject-with tcp-reset"),
        "{filter}"
    );
    let sets = sh(&["ipset", "save"]);
    for m in [
        "add reef-svc-vips 10.96.0.11",
        "add reef-svc-np-tcp 30081",
        "add reef-svc-hairpin 10.1.0.2,tcp:8080,10.1.0.2",
    ] {
        assert!(sets.contains(m), "{m:?} in {sets}");
    }
    assert!(
        !sets.contains("10.2.0.2,"),
        "a remote endpoint is no hairpin"
    );

    assert_eq!(fw.sync_services(&all).expect("resync").changes, 0, "{b:?}");
    // A restarted agent (a new driver) reads the kernel and changes nothing either.
    let mut again = Iptables::with_backend(b);
    assert_eq!(again.sync_services(&all).expect("restart").changes, 0);
    assert_eq!(save(b, "nat"), nat);

    // One endpoint leaves: the service's chains change, its endpoint's chain goes, the
    // other port's chain is untouched.
    let dns_chain = |d: &str| {
        let rule = chain_lines(d, "REEF-SERVICES")
            .into_iter()
            .find(|l| l.contains("--dport 53"))
            .expect("dns dispatch");
        let c = rule.rsplit(' ').next().unwrap_or_default().to_string();
        chain_lines(d, &c)
    };
    let mut less = web.clone();
    less.endpoints.remove(0);
    let applied = again
        .update_services(&[(web.key(), Some(less.clone()))])
        .expect("update");
    // SVC and EXT chains rewritten, one SEP chain deleted, the hairpin member gone.
    assert_eq!(applied.changes, 4, "{b:?} {applied:?}");
    let after = save(b, "nat");
    assert!(!after.contains("10.1.0.2:8080"), "{after}");
    assert_eq!(dns_chain(&after), dns_chain(&nat));
    assert!(!sh(&["ipset", "save"]).contains("10.1.0.2,tcp:8080"));
    let rest = vec![less.clone(), dns.clone(), empty.clone()];
    let mut third = Iptables::with_backend(b);
    assert_eq!(third.sync_services(&rest).expect("restart").changes, 0);

    // Services gone while the agent was down: a new agent's sync deletes their chains.
    let mut fourth = Iptables::with_backend(b);
    fourth
        .sync_services(std::slice::from_ref(&dns))
        .expect("stale sync");
    let nat = save(b, "nat");
    assert!(
        !nat.contains("--dport 80") && !nat.contains("REEF-SEP-") && !nat.contains("REEF-EXT-"),
        "{nat}"
    );
    assert_eq!(chain_lines(&nat, "REEF-SERVICES").len(), 2, "{nat}");
    assert!(!sh(&["ipset", "save"]).contains("add reef-svc-vips 10.96.0.11"));
    assert_eq!(
        fourth
            .sync_services(std::slice::from_ref(&dns))
            .expect("again")
            .changes,
        0
    );

    // The last port goes (update): its dispatch rule, its chain and its VIP go.
    fourth
        .update_services(&[(dns.key(), None)])
        .expect("remove dns");
    let nat = save(b, "nat");
    assert_eq!(chain_lines(&nat, "REEF-SERVICES").len(), 1, "{nat}");
    assert!(!sh(&["ipset", "save"]).contains("add reef-svc-vips"));

    fourth.remove_services().expect("remove");
    fw.check_masquerade(&masq, &[pod])
        .expect("the network's masquerade outlives services");
    let nat = save(b, "nat");
    let filter = save(b, "filter");
    assert!(
        !nat.contains("REEF-SERVICES") && !nat.contains("REEF-SVC"),
        "{nat}"
    );
    assert!(!nat.contains("reef-svc"), "{nat}");
    assert!(!filter.contains("REEF-SVC"), "{filter}");
    assert!(!sh(&["ipset", "list", "-n"]).contains("reef-svc"));
    fourth.remove_services().expect("remove is idempotent");
}

/// An accept loop in a namespace answering "NAME PEER".
struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Ns, name: &'static str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", ns.0);
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            enter(&path);
            let l = TcpListener::bind("0.0.0.0:8080").expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        use std::io::Write;
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "{name} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().expect("server ready");
        Server {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from the calling thread's namespace: `Ok("NAME PEER")` or the error kind.
fn connect(ip: &str, port: u16) -> Result<String, ErrorKind> {
    let addr = SocketAddr::new(ip.parse::<Ipv4Addr>().expect("ip").into(), port);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.kind())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.kind())?;
    Ok(out.trim().to_string())
}

/// Refused, and at once (a reset, not a timeout).
fn refused(ip: &str, port: u16) {
    let t = Instant::now();
    assert_eq!(
        connect(ip, port),
        Err(ErrorKind::ConnectionRefused),
        "{ip}:{port}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "{ip}:{port} refused late"
    );
}

/// Packets counted by the saved filter rule containing `needle`.
fn counter(b: Backend, needle: &str) -> u64 {
    let bin = match b {
        Backend::Nft => "iptables-nft-save",
        Backend::Legacy => "iptables-legacy-save",
    };
    sh(&[bin, "-c", "-t", "filter"])
        .lines()
        .filter(|l| l.contains("-A REEF-SVC-FILTER") && l.contains(needle))
        .filter_map(|l| l.strip_prefix('[')?.split(':').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn traffic_reaches_endpoints_and_is_refused_without_them() {
    for b in BACKENDS {
        traffic_on(b);
    }
}

fn traffic_on(b: Backend) {
    // client C (10.0.1.2) — host H — endpoints E1 (10.1.1.2, local) and E2 (10.1.2.2,
    // flagged remote). H routes the service CIDR locally, as reef-agent does.
    let h = Ns::new("h");
    let c = Ns::new("c");
    let e1 = Ns::new("e1");
    let e2 = Ns::new("e2");
    for (peer, dev, net) in [
        (&c, "c0", "10.0.1"),
        (&e1, "e1", "10.1.1"),
        (&e2, "e2", "10.1.2"),
    ] {
        sh(&[
            "ip", "link", "add", dev, "netns", &h.0, "type", "veth", "peer", "name", "eth0",
            "netns", &peer.0,
        ]);
        h.ip(&format!("addr add {net}.1/24 dev {dev}"));
        h.ip(&format!("link set {dev} up"));
        peer.ip(&format!("addr add {net}.2/24 dev eth0"));
        peer.ip("link set eth0 up");
        peer.ip(&format!("route add default via {net}.1"));
    }
    h.ip("route add local 10.96.0.0/16 dev lo");
    sh(&[
        "ip",
        "netns",
        "exec",
        &h.0,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let _s1 = Server::start(&e1, "e1");
    let _s2 = Server::start(&e2, "e2");

    let ep = |ip: &str, local: bool| LbEndpoint {
        ip: ip.parse().expect("ip"),
        port: 8080,
        local,
    };
    let svc = |vip: &str, np: Option<u16>, eps: Vec<LbEndpoint>| ServiceLb {
        vip: vip.parse().expect("vip"),
        proto: Proto::Tcp,
        port: 80,
        node_port: np,
        endpoints: eps,
        affinity_timeout: None,
        node_port_local: false,
    };
    let a = svc("10.96.0.10", Some(30080), vec![ep("10.1.1.2", true)]);
    let none = svc("10.96.0.11", Some(30081), vec![]);
    let mut sticky = svc(
        "10.96.0.12",
        None,
        vec![ep("10.1.1.2", true), ep("10.1.2.2", false)],
    );
    sticky.affinity_timeout = Some(60);
    let spread = svc(
        "10.96.0.15",
        None,
        vec![ep("10.1.1.2", true), ep("10.1.2.2", false)],
    );
    let mut local = svc(
        "10.96.0.13",
        Some(30083),
        vec![ep("10.1.1.2", true), ep("10.1.2.2", false)],
    );
    local.node_port_local = true;
    let mut remote_only = svc("10.96.0.14", Some(30084), vec![ep("10.1.2.2", false)]);
    remote_only.node_port_local = true;
    let mut dns = svc("10.96.0.20", None, vec![ep("10.1.1.2", true)]);
    dns.proto = Proto::Udp;
    dns.port = 53;
    let all = vec![
        a.clone(),
        none,
        sticky,
        spread,
        local,
        remote_only,
        dns.clone(),
    ];

    let mut fw = Iptables::with_backend(b);
    h.run(|| fw.sync_services(&all).expect("sync"));

    c.run(|| {
        assert_eq!(connect("10.96.0.10", 80), Ok("e1 10.0.1.2".into()), "{b:?}");
        refused("10.96.0.11", 80);
        refused("10.96.0.10", 81);
        refused("10.0.1.1", 30081);
        // Cluster policy: masqueraded (the endpoint may be on another node).
        assert_eq!(connect("10.0.1.1", 30080), Ok("e1 10.1.1.1".into()));
        // Local policy: local endpoints only, the client's address kept.
        for _ in 0..4 {
            assert_eq!(connect("10.0.1.1", 30083), Ok("e1 10.0.1.2".into()));
        }
        refused("10.0.1.1", 30084);
        // Affinity: every connection of this client goes to the first one's endpoint.
        let first = connect("10.96.0.12", 80).expect("sticky");
        for _ in 0..8 {
            assert_eq!(connect("10.96.0.12", 80).as_ref(), Ok(&first));
        }
        // Without it both endpoints serve (1 chance in 2^23 of a false failure).
        let seen: std::collections::BTreeSet<String> = (0..24)
            .filter_map(|_| connect("10.96.0.15", 80).ok())
            .map(|s| s.split(' ').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
    });
    h.run(|| {
        // Refused by the VIP rule itself, not by the host's empty port.
        assert!(
            counter(
                b,
                "--match-set reef-svc-vips dst -j REJECT --reject-with tcp-reset"
            ) >= 2
        );
        assert!(counter(b, "reef-svc-np-tcp") >= 2);
        // A host process: its source (the VIP) is masqueraded.
        assert_eq!(connect("10.96.0.10", 80), Ok("e1 10.1.1.1".into()));
    });
    // Hairpin: the endpoint reaches itself through its service, masqueraded.
    e1.run(|| assert_eq!(connect("10.96.0.10", 80), Ok("e1 10.1.1.1".into())));

    // A UDP flow to an endpoint that leaves: its conntrack entry goes with it (it would
    // keep reaching the old pod for as long as the client sends).
    c.run(|| {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        u.send_to(b"q", "10.96.0.20:53").expect("send");
    });
    let tracked = || {
        h.run(|| {
            sh(&["conntrack", "-L", "-p", "udp"])
                .lines()
                .filter(|l| l.contains("dst=10.96.0.20") && l.contains("src=10.1.1.2"))
                .count()
        })
    };
    assert_eq!(tracked(), 1, "{b:?}");
    let mut moved = dns.clone();
    moved.endpoints = vec![ep("10.1.2.2", false)];
    h.run(|| {
        fw.update_services(&[(dns.key(), Some(moved))])
            .expect("move dns")
    });
    assert_eq!(
        tracked(),
        0,
        "{b:?}: the old endpoint's UDP entry is deleted"
    );

    // The endpoint leaves: refused at once.
    let mut gone = a.clone();
    gone.endpoints.clear();
    h.run(|| {
        fw.update_services(&[(a.key(), Some(gone))])
            .expect("update")
    });
    c.run(|| {
        refused("10.96.0.10", 80);
        refused("10.0.1.1", 30080);
    });
    h.run(|| fw.remove_services().expect("remove"));
}

fn many(n: usize, eps: usize) -> Vec<ServiceLb> {
    (0..n)
        .map(|i| ServiceLb {
            vip: Ipv4Addr::new(10, 96 + (i >> 16) as u8, (i >> 8) as u8, i as u8).into(),
            proto: Proto::Tcp,
            port: 80,
            node_port: None,
            endpoints: (0..eps)
                .map(|e| LbEndpoint {
                    ip: Ipv4Addr::new(10, 66, e as u8, (i % 250 + 1) as u8).into(),
                    port: 8080,
                    local: false,
                })
                .collect(),
            affinity_timeout: None,
            node_port_local: false,
        })
        .collect()
}

#[test]
#[ignore = "timings, not a check: run with --ignored --nocapture"]
fn scale_figures() {
    for b in BACKENDS {
        for n in [1_000, 10_000] {
            let ns = Ns::new("scale");
            ns.run(|| {
                let all = many(n, 5);
                let mut fw = Iptables::with_backend(b);
                let t = Instant::now();
                fw.sync_services(&all).expect("sync");
                let full = t.elapsed();
                let t = Instant::now();
                let r = fw.sync_services(&all).expect("resync");
                let resync = t.elapsed();
                assert_eq!(r.changes, 0);
                let mut one = all[n / 2].clone();
                one.endpoints.pop();
                let t = Instant::now();
                fw.update_services(&[(one.key(), Some(one.clone()))])
                    .expect("update");
                let update = t.elapsed();
                let mut added = all[0].clone();
                added.vip = Ipv4Addr::new(10, 127, 0, 1).into();
                let t = Instant::now();
                fw.update_services(&[(added.key(), Some(added.clone()))])
                    .expect("add");
                let add = t.elapsed();
                let t = Instant::now();
                fw.update_services(&[(added.key(), None)]).expect("del");
                let del = t.elapsed();
                println!(
                    "{b:?} {n} services x5: full sync {full:.2?}, no-op resync {resync:.2?}, \
                     one endpoint change {update:.2?}, add one {add:.2?}, delete one {del:.2?}"
                );
                let t = Instant::now();
                fw.remove_services().expect("remove");
                println!("{b:?} {n}: remove {:.2?}", t.elapsed());
            });
        }
    }
}
