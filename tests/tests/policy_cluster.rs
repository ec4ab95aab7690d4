//! Kubernetes NetworkPolicy end to end: a routed cluster of two simulated hosts with real
//! etcd and one reef-agent each; namespaces x, y, z × pods a, b, c (reef_tests::policy),
//! each pod answering TCP 80, TCP 81 and UDP 80. Policies and namespaces go in through
//! `reefctl apply -f -`; after each change every ordered pair is probed on every port at
//! once and compared with the harness's own oracle (computed from the manifests, not from
//! reef-policy). Also: a new pod is never reachable against policy, spoofed sources are
//! dropped, reef-bridge networks on one host are isolated, and `reefctl trace` agrees with
//! the oracle.
//!
//! Several cases share one world (its setup is the expensive part); every case is run, its
//! failure kept, and the test fails at the end with every failed case's matrices.

use reef_tests::policy::*;
use reef_tests::routed::Plugin;
use reef_tests::*;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The updates the contract promises within a second.
const ONE_SECOND: Duration = Duration::from_secs(1);

/// A named set of manifests applied together.
struct Case {
    name: &'static str,
    docs: Vec<Value>,
}

fn case(name: &'static str, docs: Vec<Value>) -> Case {
    Case { name, docs }
}

fn labels(l: &[(&str, &str)]) -> Value {
    Value::Object(l.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect())
}

/// `{"matchLabels": {...}}`.
fn sel(l: &[(&str, &str)]) -> Value {
    json!({ "matchLabels": labels(l) })
}

fn host32(ip: Ipv4Addr) -> String {
    format!("{ip}/32")
}

/// Collected failures of a grouped test.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check<T>(&mut self, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    fn fail(&mut self, e: String) {
        self.0.push(e);
    }

    fn finish(self, what: &str) {
        if !self.0.is_empty() {
            panic!(
                "{what}: {} check(s) failed\n\n{}",
                self.0.len(),
                self.0.join("\n\n==========\n\n")
            );
        }
    }
}

/// Applies each case, expects the oracle's matrix within [`CONVERGE`] and `reefctl trace`
/// to agree with it on every cell, deletes it and expects everything reachable again (a
/// removed policy restores traffic).
fn run_cases(w: &mut PolicyWorld, cases: Vec<Case>, f: &mut Failures) {
    for c in cases {
        let since = w.apply(&c.docs);
        if let Some(t) = f.check(w.converge(c.name, since, CONVERGE)) {
            eprintln!("{}: converged {t:?} after the apply", c.name);
        }
        f.check(w.trace_all(8));
        let since = w.delete(&c.docs);
        let what = format!("{} deleted: everything reachable again", c.name);
        if let Some(t) = f.check(w.converge(&what, since, CONVERGE)) {
            eprintln!("{what}: {t:?}");
        }
    }
}

/// Ingress: deny all, same namespace, namespace by label and by expressions, one peer with
/// both selectors versus two peers, ipBlock with except, two policies whose union allows
/// more than either.
fn ingress_cases(m: &Model) -> Vec<Case> {
    let xa = m.pod("x/a").ip;
    let zb = m.pod("z/b").ip;
    let yb = m.pod("y/b").ip;
    // Host 0's block (x/a lives there): the pods of one node by address.
    let host0_block = network_of(xa, reef_tests::routed::BLOCK_PREFIX);
    vec![
        case(
            "deny all ingress in x",
            vec![policy(
                "x",
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
        ),
        case(
            "x allows ingress from its own namespace",
            vec![policy(
                "x",
                "same-ns",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
        ),
        case(
            "x allows ingress from the namespace labelled ns=y",
            vec![policy(
                "x",
                "from-y",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": sel(&[("ns", "y")])}]}]}),
            )],
        ),
        case(
            "expressions: y's pods NotIn [c] admit pods with a pod label, without role, NotIn [b], of namespaces In [x, z]",
            vec![policy(
                "y",
                "expressions",
                json!({
                    "podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]},
                    "ingress": [{"from": [{
                        "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["x", "z"]}]},
                        "podSelector": {"matchExpressions": [
                            {"key": "pod", "operator": "Exists"},
                            {"key": "role", "operator": "DoesNotExist"},
                            {"key": "pod", "operator": "NotIn", "values": ["b"]}
                        ]}
                    }]}]
                }),
            )],
        ),
        case(
            "one peer with a namespace and a pod selector (AND): x/a admits only y/b",
            vec![policy(
                "x",
                "and",
                json!({"podSelector": sel(&[("pod", "a")]), "ingress": [{"from": [
                    {"namespaceSelector": sel(&[("ns", "y")]), "podSelector": sel(&[("pod", "b")])}
                ]}]}),
            )],
        ),
        case(
            "two peers (OR): x/a admits all of y and x/b",
            vec![policy(
                "x",
                "or",
                json!({"podSelector": sel(&[("pod", "a")]), "ingress": [{"from": [
                    {"namespaceSelector": sel(&[("ns", "y")])},
                    {"podSelector": sel(&[("pod", "b")])}
                ]}]}),
            )],
        ),
        case(
            "ipBlock with except on pod addresses: y admits the pool except x/a and z/b; z/a admits host 0's block except y/b",
            vec![
                policy(
                    "y",
                    "pool-but-two",
                    json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {
                        "cidr": reef_tests::routed::POOL, "except": [host32(xa), host32(zb)]
                    }}]}]}),
                ),
                policy(
                    "z",
                    "host0-block",
                    json!({"podSelector": sel(&[("pod", "a")]), "ingress": [{"from": [{"ipBlock": {
                        "cidr": host0_block, "except": [host32(yb)]
                    }}]}]}),
                ),
            ],
        ),
        union_case(),
    ]
}

/// Two policies in z: z/a admits x on TCP 80; every z pod admits z/b, and y/c on UDP 80.
/// z/a's allowed set is the union of both.
fn union_case() -> Case {
    case(
        "two policies in z whose union admits more than either",
        vec![
            policy(
                "z",
                "x-web",
                json!({"podSelector": sel(&[("pod", "a")]), "ingress": [{
                    "from": [{"namespaceSelector": sel(&[("ns", "x")])}],
                    "ports": [{"port": 80}]
                }]}),
            ),
            policy(
                "z",
                "peers",
                json!({"podSelector": {}, "ingress": [
                    {"from": [{"podSelector": sel(&[("pod", "b")])}]},
                    {"from": [{"namespaceSelector": sel(&[("ns", "y")]), "podSelector": sel(&[("pod", "c")])}],
                     "ports": [{"protocol": "UDP", "port": 80}]}
                ]}),
            ),
        ],
    )
}

/// Egress and ports: deny all egress but one port, egress to a namespace and to an ipBlock,
/// egress rules without policyTypes, endPort ranges, protocols without ports, SCTP.
fn egress_and_port_cases(m: &Model) -> Vec<Case> {
    let yb = m.pod("y/b").ip;
    vec![
        case(
            "x denies all egress but TCP 81",
            vec![policy(
                "x",
                "egress-81",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                       "egress": [{"ports": [{"protocol": "TCP", "port": 81}]}]}),
            )],
        ),
        case(
            "x/a egresses to namespace z, and to y/b's address on UDP 80",
            vec![policy(
                "x",
                "egress-a",
                json!({"podSelector": sel(&[("pod", "a")]), "policyTypes": ["Egress"], "egress": [
                    {"to": [{"namespaceSelector": sel(&[("ns", "z")])}]},
                    {"to": [{"ipBlock": {"cidr": host32(yb)}}], "ports": [{"protocol": "UDP", "port": 80}]}
                ]}),
            )],
        ),
        case(
            "egress rules without policyTypes: y/c is isolated both ways, egress to y only",
            vec![policy(
                "y",
                "both-ways",
                json!({"podSelector": sel(&[("pod", "c")]), "egress": [{"to": [{"podSelector": {}}]}]}),
            )],
        ),
        case(
            "ports: y/a TCP 80-81; y/b UDP 79-80 and TCP 81-90; z/c any TCP; x/c SCTP 80 only",
            vec![
                policy(
                    "y",
                    "range",
                    json!({"podSelector": sel(&[("pod", "a")]), "ingress": [
                        {"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}
                    ]}),
                ),
                policy(
                    "y",
                    "ranges",
                    json!({"podSelector": sel(&[("pod", "b")]), "ingress": [{"ports": [
                        {"protocol": "UDP", "port": 79, "endPort": 80},
                        {"protocol": "TCP", "port": 81, "endPort": 90}
                    ]}]}),
                ),
                policy(
                    "z",
                    "tcp-only",
                    json!({"podSelector": sel(&[("pod", "c")]), "ingress": [{"ports": [{"protocol": "TCP"}]}]}),
                ),
                policy(
                    "x",
                    "sctp-only",
                    json!({"podSelector": sel(&[("pod", "c")]), "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}),
                ),
            ],
        ),
        case(
            "egress ranges: z/a may send TCP 81-81 and UDP 1-79 only",
            vec![policy(
                "z",
                "egress-range",
                json!({"podSelector": sel(&[("pod", "a")]), "policyTypes": ["Egress"], "egress": [{"ports": [
                    {"port": 81, "endPort": 81},
                    {"protocol": "UDP", "port": 1, "endPort": 79}
                ]}]}),
            )],
        ),
    ]
}

/// No cluster: under the oracle, every case blocks some cells and allows others, and no two
/// cases expect the same matrix, so none can pass on a data plane that ignores it (or that
/// still enforces the case before).
#[test]
fn every_case_changes_the_matrix() {
    let base = Model::sample();
    let mut cases = ingress_cases(&base);
    cases.extend(egress_and_port_cases(&base));
    let mut seen: Vec<(&str, _)> = Vec::new();
    for c in &cases {
        let mut m = base.clone();
        for d in &c.docs {
            m.record(d);
        }
        let expected = m.expected();
        let blocked = expected.values().filter(|a| !**a).count();
        assert!(
            blocked > 0 && blocked < expected.len(),
            "{}: {blocked} of {} cells blocked",
            c.name,
            expected.len()
        );
        for (other, e) in &seen {
            assert!(
                *e != expected,
                "{} and {other} expect the same matrix",
                c.name
            );
        }
        seen.push((c.name, expected));
    }
    // The union admits strictly more than either of its policies alone.
    let union = union_case().docs;
    for half in [&union[..1], &union[1..]] {
        let mut m = base.clone();
        for d in half {
            m.record(d);
        }
        let z_a = m.index("z/a");
        let alone = m
            .expected()
            .iter()
            .filter(|((_, d, _), a)| *d == z_a && **a)
            .count();
        let mut mu = base.clone();
        for d in &union {
            mu.record(d);
        }
        let together = mu
            .expected()
            .iter()
            .filter(|((_, d, _), a)| *d == z_a && **a)
            .count();
        assert!(
            together > alone,
            "z/a: union {together} cells, one policy {alone}"
        );
    }
}

/// The ingress cases on reef-routed pods; under deny-all, each pod's own host still reaches
/// it.
#[test]
fn ingress_policies_match_the_oracle() {
    let mut w = PolicyWorld::routed();
    let mut f = Failures::default();
    own_host_is_not_judged(&mut w, &mut f);
    let cases = ingress_cases(&w.model);
    run_cases(&mut w, cases, &mut f);
    f.finish("ingress cases");
}

/// Under deny-all ingress in x, every x pod's own host still reaches it.
fn own_host_is_not_judged(w: &mut PolicyWorld, f: &mut Failures) {
    let deny = [policy("x", "deny-all", json!({"podSelector": {}}))];
    let since = w.apply(&deny);
    if f.check(w.converge("deny all ingress in x (own hosts)", since, CONVERGE))
        .is_some()
    {
        for p in POD_NAMES {
            let id = format!("x/{p}");
            for port in PORTS {
                let seen = w.from_own_host(&id, port);
                if !matches!(seen, Outcome::Answer(_)) {
                    f.fail(format!(
                        "{id}'s own host must reach it on {port} under deny-all, got {seen:?}"
                    ));
                }
            }
        }
    }
    let since = w.delete(&deny);
    f.check(w.converge("deny-all deleted", since, CONVERGE));
}

/// The egress and port cases on reef-routed pods.
#[test]
fn egress_and_port_policies_match_the_oracle() {
    let mut w = PolicyWorld::routed();
    let mut f = Failures::default();
    let cases = egress_and_port_cases(&w.model);
    run_cases(&mut w, cases, &mut f);
    f.finish("egress and port cases");
}

/// Removing one of two policies leaves the other's rules; a namespace relabelled with
/// `reefctl namespace label` (and by re-applying its manifest) and a pod relabelled (DEL,
/// ADD with new labels) change verdicts within a second.
#[test]
fn policy_updates_converge_within_a_second() {
    let mut w = PolicyWorld::routed();
    let mut f = Failures::default();

    // A union, then each half removed.
    let union = union_case();
    let since = w.apply(&union.docs);
    f.check(w.converge(union.name, since, CONVERGE));
    let since = w.delete(&union.docs[..1]);
    f.check(w.converge("z/x-web deleted, z/peers stays", since, CONVERGE));
    let since = w.delete(&union.docs[1..]);
    f.check(w.converge("z/peers deleted too", since, CONVERGE));

    // x admits namespaces with team=blue.
    let team = [policy(
        "x",
        "team-blue",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": sel(&[("team", "blue")])}]}]}),
    )];
    let since = w.apply(&team);
    f.check(w.converge("x admits team=blue (nobody yet)", since, CONVERGE));
    let since = w.label_namespace("y", &["team=blue"]);
    timed(
        &mut f,
        w.converge("namespace label y team=blue", since, ONE_SECOND),
    );
    let since = w.apply(&[namespace_manifest("z", &[("ns", "z"), ("team", "blue")])]);
    timed(
        &mut f,
        w.converge("Namespace z re-applied with team=blue", since, ONE_SECOND),
    );
    let since = w.label_namespace("y", &["team-"]);
    timed(
        &mut f,
        w.converge("namespace label y team-", since, ONE_SECOND),
    );
    let since = w.apply(&[namespace_manifest("z", &[("ns", "z")])]);
    timed(
        &mut f,
        w.converge("Namespace z re-applied without team", since, ONE_SECOND),
    );
    let since = w.delete(&team);
    f.check(w.converge("team-blue deleted", since, CONVERGE));

    // y admits pods labelled role=client from any namespace; z/c becomes one, then not.
    let clients = [policy(
        "y",
        "clients",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {}, "podSelector": sel(&[("role", "client")])}
        ]}]}),
    )];
    let since = w.apply(&clients);
    f.check(w.converge("y admits role=client (nobody yet)", since, CONVERGE));
    let since = w.relabel_pod("z/c", json!({"pod": "c", "role": "client"}));
    timed(
        &mut f,
        w.converge("z/c re-added with role=client", since, ONE_SECOND),
    );
    let since = w.relabel_pod("z/c", json!({"pod": "c"}));
    timed(
        &mut f,
        w.converge("z/c re-added without role", since, ONE_SECOND),
    );
    let since = w.delete(&clients);
    f.check(w.converge("clients deleted", since, CONVERGE));
    f.finish("policy updates");
}

fn timed(f: &mut Failures, r: Result<Duration, String>) {
    if let Some(t) = f.check(r) {
        eprintln!("converged {t:?} after the change");
    }
}

/// A pod created in a namespace whose policy isolates it is never reachable from the pods
/// the policy does not admit, from the moment its ADD returns (fail closed), on either host;
/// afterwards the pods it admits reach it.
#[test]
fn a_new_pod_is_never_reachable_against_policy() {
    let mut w = PolicyWorld::routed();
    let mut f = Failures::default();
    new_pods_fail_closed(&mut w, &mut f);
    f.finish("new pods");
}

/// x admits only its own namespace; x/d on host 1 (watched from y/a on host 1 and z/a on
/// host 0) and x/e on host 0 (watched from y/b on host 0 and y/c on host 1).
fn new_pods_fail_closed(w: &mut PolicyWorld, f: &mut Failures) {
    let same_ns = [policy(
        "x",
        "same-ns",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )];
    let since = w.apply(&same_ns);
    f.check(w.converge("x admits only x", since, CONVERGE));
    for (host, name, watchers) in [(1, "d", ["y/a", "z/a"]), (0, "e", ["y/b", "y/c"])] {
        let seen = w.add_pod_watched(
            host,
            "x",
            name,
            json!({"pod": name}),
            &watchers,
            Duration::from_millis(1500),
        );
        let (id, probes) = (seen.id.clone(), seen.probes);
        eprintln!(
            "{id}: {probes} probes from {watchers:?}, {} reached it",
            seen.hits.len()
        );
        if !seen.hits.is_empty() {
            let list: Vec<String> = seen
                .hits
                .iter()
                .take(20)
                .map(|h| {
                    format!(
                        "  {} -> {id} {} at {:?}: {:?}",
                        h.from, h.port, h.at, h.outcome
                    )
                })
                .collect();
            f.fail(format!(
                "new pod {id} on host {host} was reached against policy {} times (of {probes} \
                 probes) in the 1.5 s after its ADD returned; the first:\n{}\n{}",
                seen.hits.len(),
                list.join("\n"),
                w.log_tails(40)
            ));
        }
        if probes < 20 {
            f.fail(format!(
                "{id}: only {probes} probes ran; the check proves nothing"
            ));
        }
        let since = Instant::now();
        f.check(w.converge(
            &format!("{id} added: x reaches it, nobody else"),
            since,
            CONVERGE,
        ));
    }
    let since = w.delete(&same_ns);
    f.check(w.converge("same-ns deleted", since, CONVERGE));
}

/// Datagrams from a pod with a source address that is not its own (an unallocated address of
/// its block, another pod's address, an address outside the pool) do not arrive, on its own
/// host or the other; from its real address they do. No policy is applied.
#[test]
fn spoofed_sources_are_dropped() {
    let w = PolicyWorld::routed();
    let mut f = Failures::default();
    spoofing(&w, &mut f);
    f.finish("spoofing");
}

fn spoofing(w: &PolicyWorld, f: &mut Failures) {
    // x/a on host 0 sends to x/c (host 0) and x/b (host 1), pretending to be y/a too;
    // x/b on host 1 sends to y/a (host 1) and x/a (host 0), pretending to be z/a too.
    for (src, dsts, other) in [
        ("x/a", ["x/c", "x/b"], "y/a"),
        ("x/b", ["y/a", "x/a"], "z/a"),
    ] {
        let real = w.model.pod(src).ip;
        let block = network_of(real, reef_tests::routed::BLOCK_PREFIX);
        let base: Ipv4Addr = block
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("block address");
        let unallocated = Ipv4Addr::from(u32::from(base) + 50);
        assert!(
            w.model.pods.iter().all(|p| p.ip != unallocated),
            "{unallocated} is a pod's"
        );
        let spoofed = [
            unallocated,
            w.model.pod(other).ip,
            Ipv4Addr::new(192, 0, 2, 77),
        ];
        let got = w.spoof_check(src, &dsts, &spoofed);
        for d in dsts {
            let seen = &got[d];
            if !seen.contains(&real) {
                f.fail(format!(
                    "{src} -> {d}: nothing arrived from the real address {real}: {seen:?}"
                ));
            }
            let leaked: Vec<&Ipv4Addr> = spoofed.iter().filter(|a| seen.contains(a)).collect();
            if !leaked.is_empty() {
                f.fail(format!(
                    "{src} (host {}) -> {d} (host {}): spoofed sources arrived: {leaked:?} (all seen: {seen:?})",
                    w.model.pod(src).host,
                    w.model.pod(d).host
                ));
            }
        }
    }
}

/// `reefctl trace` against the oracle for every pair and port: with no policy, and with
/// ingress, egress, ipBlock and port rules at once; by address too; usage errors exit 2.
#[test]
fn reefctl_trace_agrees_with_every_verdict() {
    let mut w = PolicyWorld::routed();
    let mut f = Failures::default();
    let t = Instant::now();
    f.check(w.trace_all(8));
    eprintln!("no policy: {} traces in {:?}", 9 * 8 * 3, t.elapsed());

    let m = &w.model;
    let (xa, yb) = (m.pod("x/a").ip, m.pod("y/b").ip);
    let mut docs = union_case().docs;
    docs.extend([
        policy(
            "x",
            "egress-81",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"ports": [{"protocol": "TCP", "port": 81}]},
                              {"to": [{"ipBlock": {"cidr": host32(yb)}}]}]}),
        ),
        policy(
            "y",
            "pool-but-x-a",
            json!({"podSelector": sel(&[("pod", "a")]), "ingress": [{
                "from": [{"ipBlock": {"cidr": reef_tests::routed::POOL, "except": [host32(xa)]}}],
                "ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]
            }]}),
        ),
    ]);
    let since = w.apply(&docs);
    f.check(w.converge(
        "mixed policies (the matrix the traces must agree with)",
        since,
        CONVERGE,
    ));
    let t = Instant::now();
    f.check(w.trace_all(8));
    eprintln!("mixed policies: traces in {:?}", t.elapsed());

    // Addresses instead of names.
    let m = &w.model;
    let pairs = [
        ("x/a", "y/a"),
        ("y/b", "z/a"),
        ("z/c", "x/b"),
        ("y/a", "y/b"),
    ];
    let cases: Vec<(String, String, Port)> = pairs
        .iter()
        .flat_map(|(s, d)| PORTS.map(|p| (m.pod(s).ip.to_string(), m.pod(d).ip.to_string(), p)))
        .collect();
    let results = w.traces(&cases, 8);
    for ((s, d, port), r) in cases.iter().zip(results) {
        let (src, dst) = (
            m.pods.iter().find(|p| p.ip.to_string() == *s),
            m.pods.iter().find(|p| p.ip.to_string() == *d),
        );
        let want = m.allowed(src.expect("src"), dst.expect("dst"), *port);
        let ok = r
            == TraceResult::Verdict {
                code: if want { 0 } else { 1 },
                allowed: want,
            };
        if !ok {
            f.fail(format!(
                "trace {s} {d} {}: expected allowed={want}, got {r:?}",
                port.trace_arg()
            ));
        }
    }

    // Usage errors.
    for args in [
        vec!["trace", "x/a"],
        vec!["trace", "x/a", "y/b", "80/icmp"],
        vec!["trace", "x/a", "y/b", "eighty/tcp"],
        vec!["trace", "x/a", "y/b", "70000/tcp"],
    ] {
        let out = w.rc.reefctl(0, &args);
        if out.status.code() != Some(2) {
            f.fail(format!(
                "reefctl {args:?}: expected exit 2 (usage), got {:?}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    f.finish("reefctl trace");
}

/// An agent killed and restarted: its host keeps enforcing while it is down and while the
/// new one replaces the table (every matrix observed meanwhile is the oracle's), and the
/// agents' per-policy counters reach `reefctl policy show`.
#[test]
fn an_agent_restart_keeps_enforcing_and_counters_reach_policy_show() {
    let mut w = PolicyWorld::routed();
    let mut f = Failures::default();
    let docs = [policy(
        "x",
        "same",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )];
    let since = w.apply(&docs);
    f.check(w.converge("x admits only x", since, CONVERGE));

    let mut agent = w.rc.take_agent(0);
    agent.sigkill();
    drop(agent);
    let seen = w.observe();
    for m in mismatches(&w.model, &seen) {
        f.fail(format!("agent of host 0 down: {m}"));
    }
    w.rc.spawn_agent(0, &[]);
    let until = Instant::now() + Duration::from_secs(3);
    let mut rounds = 0;
    while Instant::now() < until {
        let seen = w.observe();
        rounds += 1;
        for m in mismatches(&w.model, &seen) {
            f.fail(format!(
                "while host 0's agent restarts (round {rounds}): {m}"
            ));
        }
    }
    eprintln!("{rounds} matrices observed while the agent restarted");

    // Every probe above crossed the policy: both counters move, summed over the agents.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = w.rc.reefctl_json(0, &["policy", "show", "same", "-n", "x"]);
        let (allowed, dropped) = (
            v["counters"]["allowed"].as_u64().unwrap_or(0),
            v["counters"]["dropped"].as_u64().unwrap_or(0),
        );
        if allowed > 0 && dropped > 0 {
            break;
        }
        if Instant::now() > deadline {
            f.fail(format!(
                "policy show x/same: counters did not move within 10 s: {}",
                v["counters"]
            ));
            break;
        }
        let _ = w.observe();
        std::thread::sleep(Duration::from_millis(500));
    }
    f.finish("agent restart");
}

/// The same world with reef-bridge pods: a share of the cases, new pods, spoofing.
#[test]
fn bridge_pods_policies_new_pods_and_spoofing() {
    let mut w = PolicyWorld::with_plugin(Plugin::Bridge("rbr-pol".into()));
    let mut f = Failures::default();
    spoofing(&w, &mut f);
    // deny all, same namespace, namespace label, ipBlock; deny all egress but one port.
    let keep = [0, 1, 2, 6];
    let mut cases: Vec<Case> = ingress_cases(&w.model)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, c)| c)
        .collect();
    cases.extend(egress_and_port_cases(&w.model).into_iter().take(1));
    run_cases(&mut w, cases, &mut f);
    new_pods_fail_closed(&mut w, &mut f);
    f.finish("reef-bridge pods");
}

/// Two reef-bridge networks on one host (own names, bridges and subnets): their pods cannot
/// reach each other, each reaches its own network's pods, its gateway and the outside; with
/// `"isolation": false` on both networks they reach each other.
#[test]
fn bridge_networks_on_one_host_are_isolated() {
    let mut f = Failures::default();
    for isolation in [None, Some(false)] {
        bridge_networks(isolation, &mut f);
    }
    f.finish("reef-bridge network isolation");
}

fn bridge_networks(isolation: Option<bool>, f: &mut Failures) {
    let env = HostWithPods::new(3);
    let outside = Netns::new("polout").expect("outside netns");
    let script = write_server_script(env.dir.path());
    // The outside: a veth from the host, 198.51.100.0/24.
    env.host.sh_ok(&format!(
        "ip link add vout type veth peer name eth0 netns {} && ip addr add 198.51.100.1/24 dev vout && ip link set vout up",
        outside.name()
    ));
    outside.sh_ok("ip addr add 198.51.100.2/24 dev eth0 && ip link set eth0 up");
    let _outside_server = start_server(&outside, "outside", &script);

    let nets = [
        ("pol-neta", "rpola0", "10.93.1"),
        ("pol-netb", "rpolb0", "10.93.2"),
    ];
    let files: Vec<_> = nets
        .iter()
        .map(|(name, bridge, subnet)| {
            let mut plugin = json!({
                "type": "reef-bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "reef-ipam",
                    "ranges": [[{"subnet": format!("{subnet}.0/24")}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": env.data_dir(),
                },
            });
            if let Some(i) = isolation {
                plugin["isolation"] = json!(i);
            }
            env.write_conflist(&conflist(name, vec![plugin]))
        })
        .collect();
    // a1, a2 on network A, b1 on network B.
    let layout = [(0, "a1"), (0, "a2"), (1, "b1")];
    let mut ips = Vec::new();
    let mut servers = Vec::new();
    for (i, (net, name)) in layout.iter().enumerate() {
        let out = env.cnitool().add(
            &files[*net],
            env.pods[i].path(),
            &format!("pol-{name}"),
            "eth0",
        );
        let stdout = assert_success(&out, &format!("cnitool add {name}"));
        let result: Value = serde_json::from_str(stdout.trim()).expect("ADD result");
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {result}"));
        ips.push(ip);
        servers.push(start_server(&env.pods[i], name, &script));
    }
    let mode = match isolation {
        None => "isolated (default)",
        Some(_) => "isolation: false",
    };
    let outside_ip = Ipv4Addr::new(198, 51, 100, 2);
    let mut expect = |what: String, from: usize, to: Ipv4Addr, port: Port, want: bool| {
        // An allowed path gets a few tries (a fresh bridge port may need a moment).
        let mut seen = probe(&env.pods[from], to, port, PROBE_TIMEOUT);
        for _ in 0..3 {
            if !want || matches!(seen, Outcome::Answer(_)) {
                break;
            }
            seen = probe(&env.pods[from], to, port, PROBE_TIMEOUT);
        }
        if matches!(seen, Outcome::Answer(_)) != want {
            let w = if want { "an answer" } else { "no answer" };
            f.fail(format!("{mode}: {what}: expected {w}, got {seen:?}"));
        }
    };
    let cross = isolation == Some(false);
    for port in PORTS {
        expect(
            format!("a1 -> a2 {port} (same network)"),
            0,
            ips[1],
            port,
            true,
        );
        expect(
            format!("a2 -> a1 {port} (same network)"),
            1,
            ips[0],
            port,
            true,
        );
        expect(
            format!("a1 -> b1 {port} (other network)"),
            0,
            ips[2],
            port,
            cross,
        );
        expect(
            format!("b1 -> a2 {port} (other network)"),
            2,
            ips[1],
            port,
            cross,
        );
        for (i, name) in [(0, "a1"), (2, "b1")] {
            expect(
                format!("{name} -> outside {port}"),
                i,
                outside_ip,
                port,
                true,
            );
        }
    }
    for (i, gw) in [(0, "10.93.1.1"), (1, "10.93.1.1"), (2, "10.93.2.1")] {
        if !ping(&env.pods[i], gw, 2) {
            f.fail(format!(
                "{mode}: pod {} cannot ping its gateway {gw}",
                layout[i].1
            ));
        }
    }
    drop(servers);
    for (i, (net, name)) in layout.iter().enumerate() {
        let out = env.cnitool().del(
            &files[*net],
            env.pods[i].path(),
            &format!("pol-{name}"),
            "eth0",
        );
        assert_success(&out, &format!("cnitool del {name}"));
    }
}
