//! Network policy through the iptables driver, on both iptables backends, with real TCP and
//! ICMP between pod namespaces (root needed): ingress and egress chains dispatched by the
//! local pod's address, peer sets of ranges, ports, counters, an incremental change, and
//! removal. Each test's host is its own named namespace.

use reef_firewall::iptables::{Backend, Family, Iptables};
use reef_firewall::{
    FirewallDriver, PeerMatch, PeerSet, PeerSide, PolicyRuleSpec, PolicyRuleset, PolicyVerdict,
    Proto,
};

mod ipt_common;
use ipt_common::{routed_pod, Ns};

const BACKENDS: [Backend; 2] = [Backend::Nft, Backend::Legacy];
const A: &str = "10.40.1.2";
const B: &str = "10.40.2.2";
const C: &str = "10.40.3.2";

fn rule(
    peers: Option<(&str, PeerSide)>,
    port: Option<u16>,
    counter: Option<&str>,
    verdict: PolicyVerdict,
) -> PolicyRuleSpec {
    PolicyRuleSpec {
        peers: peers.map(|(set, side)| PeerMatch {
            side,
            set: set.into(),
            v6: false,
        }),
        proto: port.map(|_| Proto::Tcp),
        ports: port.map(|p| (p, p)),
        counter: counter.map(str::to_string),
        verdict,
    }
}

fn v4(a: &str, b: &str) -> PeerSet {
    PeerSet::V4(vec![(a.parse().unwrap(), b.parse().unwrap())])
}

/// B admits TCP `port` from A only; A may send TCP to 10.40.2.0-10.40.2.255 only.
fn ruleset(port: u16) -> PolicyRuleset {
    let mut r = PolicyRuleset::default();
    r.sets.insert("in.ns.p.0".into(), v4(A, A));
    r.sets
        .insert("eg.ns.q.0".into(), v4("10.40.2.0", "10.40.2.255"));
    r.counters.insert("allow.ns.p".into());
    r.counters.insert("drop-in.b".into());
    r.chains.insert(
        "pol-in.ns.p".into(),
        vec![rule(
            Some(("in.ns.p.0", PeerSide::Source)),
            Some(port),
            Some("allow.ns.p"),
            PolicyVerdict::Accept,
        )],
    );
    r.chains.insert(
        "to-pod.b".into(),
        vec![
            rule(None, None, None, PolicyVerdict::Jump("pol-in.ns.p".into())),
            rule(None, None, Some("drop-in.b"), PolicyVerdict::Drop),
        ],
    );
    let mut eg = rule(
        Some(("eg.ns.q.0", PeerSide::Destination)),
        None,
        None,
        PolicyVerdict::Accept,
    );
    eg.proto = Some(Proto::Tcp);
    r.chains.insert("pol-eg.ns.q".into(), vec![eg]);
    r.chains.insert(
        "from-pod.a".into(),
        vec![
            rule(None, None, None, PolicyVerdict::Jump("pol-eg.ns.q".into())),
            rule(None, None, None, PolicyVerdict::Drop),
        ],
    );
    r.ingress.insert(B.parse().unwrap(), "to-pod.b".into());
    r.egress.insert(A.parse().unwrap(), "from-pod.a".into());
    r.namespaces.insert("ns".into());
    r
}

#[test]
fn policy_judges_both_directions_and_changes_incrementally() {
    for b in BACKENDS {
        let (host, a, bb, c) = (Ns::new("h"), Ns::new("a"), Ns::new("b"), Ns::new("c"));
        routed_pod(&host, &a, "reef0000000000a", A);
        routed_pod(&host, &bb, "reef0000000000b", B);
        routed_pod(&host, &c, "reef0000000000c", C);
        let _lb = bb.listen(&[8080, 9090]);
        let _lc = c.listen(&[8080]);
        host.run(|| {
            let mut fw = Iptables::with_backend(b);
            assert!(a.connects(&format!("{C}:8080")), "{b:?}: control");
            assert!(fw.sync_policy(&ruleset(8080), true).unwrap());
            assert!(!fw.sync_policy(&ruleset(8080), false).unwrap(), "no change");
            assert!(a.connects(&format!("{B}:8080")), "{b:?}: allowed both ways");
            assert!(!a.connects(&format!("{B}:9090")), "{b:?}: ingress port");
            assert!(!c.connects(&format!("{B}:8080")), "{b:?}: ingress peer");
            assert!(!a.connects(&format!("{C}:8080")), "{b:?}: egress peer");
            assert!(!a.ping(B), "{b:?}: egress proto");
            assert!(bb.ping(A), "{b:?}: unjudged pods, and the replies");
            let counters = fw.policy_counters().unwrap();
            assert!(counters["allow.ns.p"] >= 1, "{b:?}: {counters:?}");
            assert!(counters["drop-in.b"] >= 2, "{b:?}: {counters:?}");

            // An incremental change: the port moves, one chain is rewritten.
            assert!(fw.sync_policy(&ruleset(9090), false).unwrap());
            assert!(a.connects(&format!("{B}:9090")), "{b:?}: new port");
            assert!(!a.connects(&format!("{B}:8080")), "{b:?}: old port");
            // A pod leaves the policy: its chain and sets go.
            let mut less = ruleset(9090);
            less.ingress.clear();
            less.chains.remove("to-pod.b");
            less.chains.remove("pol-in.ns.p");
            less.sets.remove("in.ns.p.0");
            assert!(fw.sync_policy(&less, false).unwrap());
            assert!(
                c.connects(&format!("{B}:8080")),
                "{b:?}: B no longer judged"
            );
            assert!(!a.connects(&format!("{C}:8080")), "{b:?}: A still judged");
            // A full sync from a fresh driver (an agent restart) replaces everything.
            let mut fresh = Iptables::with_backend(b);
            assert!(fresh.sync_policy(&ruleset(8080), true).unwrap());
            assert!(!c.connects(&format!("{B}:8080")), "{b:?}: after restart");
            assert!(a.connects(&format!("{B}:8080")), "{b:?}: after restart");
            fresh.remove_policy().unwrap();
            fresh.remove_policy().unwrap();
            assert!(a.connects(&format!("{C}:8080")), "{b:?}: removed");
            let left = b.save(Family::V4, "filter").unwrap();
            assert!(!left.contains("REEF-PC-"), "{left}");
            let sets = std::process::Command::new("ipset")
                .args(["list", "-n"])
                .output()
                .unwrap();
            assert!(!String::from_utf8_lossy(&sets.stdout).contains("reef-ps-"));
        });
    }
}
