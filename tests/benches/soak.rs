//! Chaos soak: a 4-host routed cluster (real etcd, one reef-agent per host, reef-routed pods
//! through libcni with the cluster reef-ipam) under continuous pod churn, with faults
//! injected in turn: an agent SIGKILLed and restarted, etcd stopped and started again, a
//! node drained, removed (`reefctl node rm`) and added back. Invariants are checked all along
//! and the figures printed at the end; the exit status is non-zero on any violation.
//!
//! - **No duplicate address, ever**: every ADD's address is checked against every live pod.
//! - **Reachability after each fault**: once a fault has ended (the agent ready again, etcd
//!   back, the node's new pods added), every live pod reaches every other within 2 s.
//! - **No leaks**: at the end, after `reefctl ipam gc`, etcd's handles and workloads are
//!   exactly the live pods; after every pod's DEL, there are none, and no host veth is left.
//! - **Agent RSS flat**: host 0's agent, never killed, ends within 25 % of its RSS a quarter
//!   into the run.
//!
//! `cargo build --release --workspace && cargo bench -p reef-tests --bench soak`
//! Environment: `REEF_SOAK_SECS` (chaos time, default 480, at most 540: the whole bench stays
//! within 10 minutes), `REEF_SOAK_SEED` (default: the clock).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use reef_tests::benchkit::{ms, percentile};
use reef_tests::routed::RoutedCluster;
use reef_tests::traffic::ping1;
use reef_tests::{cnitool_bin, Netns};

const HOSTS: usize = 4;
const PODS_PER_HOST: usize = 3;
/// The host whose agent is never killed: its RSS is the flatness probe.
const PROBE: usize = 0;
/// The host that is drained, removed and added back.
const REPLACED: usize = HOSTS - 1;
const REACH_BOUND: Duration = Duration::from_secs(2);
/// How long a reachability check keeps trying, to report how late it was.
const REACH_GIVE_UP: Duration = Duration::from_secs(15);
/// Pod churn between faults.
const CHURN_BETWEEN_FAULTS: Duration = Duration::from_secs(15);

/// xorshift64*: reproducible with the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    AgentKill,
    EtcdRestart,
    NodeReplace,
}

const SCHEDULE: [Fault; 5] = [
    Fault::AgentKill,
    Fault::EtcdRestart,
    Fault::AgentKill,
    Fault::NodeReplace,
    Fault::AgentKill,
];

#[derive(Default)]
struct Tally {
    adds: usize,
    dels: usize,
    /// ADDs refused while etcd was down: expected then (and only then), leaving nothing.
    add_refused: usize,
    /// DELs that failed and were retried later (etcd down).
    del_retried: usize,
    duplicates: Vec<String>,
    /// Per fault kind, the time from the fault's end to full reachability.
    reach: BTreeMap<Fault, Vec<Duration>>,
    unreachable: Vec<String>,
    leaks: Vec<String>,
    /// (seconds since start, pid, VmRSS kB) of the probe agent.
    rss: Vec<(f64, u32, u64)>,
}

struct Soak {
    rc: RoutedCluster,
    rng: Rng,
    tally: Tally,
    /// Pods whose DEL failed: retried until it succeeds, excluded from reachability.
    undead: Vec<usize>,
    started: Instant,
    /// Off while etcd is stopped: ADD and DEL may then fail (CNI code 11), and only then.
    etcd_up: bool,
}

fn main() {
    let secs: u64 = std::env::var("REEF_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(480)
        .min(540);
    let seed = std::env::var("REEF_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    println!("chaos soak: {HOSTS} hosts, {secs} s of churn and faults, seed {seed}");
    cnitool_bin();
    let mut rc = RoutedCluster::new(HOSTS);
    let all: Vec<usize> = (0..HOSTS).collect();
    rc.start_agents(&all, &[]);
    let mut soak = Soak {
        rc,
        rng: Rng(seed),
        tally: Tally::default(),
        undead: Vec::new(),
        started: Instant::now(),
        etcd_up: true,
    };
    for h in 0..HOSTS {
        for _ in 0..PODS_PER_HOST {
            soak.add(h);
        }
    }
    soak.check_reach(None, Instant::now());

    let deadline = soak.started + Duration::from_secs(secs);
    let mut faults = SCHEDULE.iter().cycle();
    let mut last_rss = Instant::now() - Duration::from_secs(60);
    while Instant::now() < deadline {
        let churn_until = (Instant::now() + CHURN_BETWEEN_FAULTS).min(deadline);
        while Instant::now() < churn_until {
            soak.churn_step();
            if last_rss.elapsed() >= Duration::from_secs(5) {
                soak.sample_rss();
                last_rss = Instant::now();
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        let fault = *faults.next().unwrap_or(&Fault::AgentKill);
        let ended = soak.inject(fault);
        soak.check_reach(Some(fault), ended);
    }
    soak.sample_rss();
    soak.finish();
    let violations = soak.report(secs);
    if violations > 0 {
        std::process::exit(1);
    }
}

impl Soak {
    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// One pod on host `h`; an ADD refused (etcd down) is counted, and must leave nothing.
    fn add(&mut self, h: usize) -> Option<usize> {
        match self.rc.try_add_pod(h) {
            Ok(p) => {
                self.tally.adds += 1;
                let ip = self.rc.pods[p].ip;
                let cid = self.rc.pods[p].cid.clone();
                for (q, other) in self.rc.pods.iter().enumerate() {
                    if q != p && other.ip == ip {
                        self.tally.duplicates.push(format!(
                            "{ip} given to {cid} while {} holds it (t={:.1}s)",
                            other.cid,
                            self.elapsed()
                        ));
                    }
                }
                Some(p)
            }
            Err(out) => {
                self.tally.add_refused += 1;
                if self.etcd_up {
                    self.tally.unreachable.push(format!(
                        "ADD on host {h} failed with etcd up (t={:.1}s): {}",
                        self.elapsed(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                None
            }
        }
    }

    /// DEL of pod `p`; on failure it is kept for a retry and out of reachability checks.
    fn del(&mut self, p: usize) {
        match self.rc.try_del_pod(p) {
            Ok(()) => {
                self.tally.dels += 1;
                self.forget(p);
            }
            Err(out) => {
                self.tally.del_retried += 1;
                if self.etcd_up {
                    self.tally.leaks.push(format!(
                        "DEL of {} failed with etcd up (t={:.1}s): {}",
                        self.rc.pods[p].cid,
                        self.elapsed(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                if !self.undead.contains(&p) {
                    self.undead.push(p);
                }
            }
        }
    }

    /// Drops pod `p` (its netns goes with it), keeping `undead` indices right.
    fn forget(&mut self, p: usize) {
        let last = self.rc.pods.len() - 1;
        self.rc.pods.swap_remove(p);
        self.undead.retain(|&u| u != p);
        for u in &mut self.undead {
            if *u == last {
                *u = p;
            }
        }
    }

    /// One churn step: retry a failed DEL, then delete a random pod or add one, keeping
    /// every host near its share of pods.
    fn churn_step(&mut self) {
        if let Some(&p) = self.undead.first() {
            self.del(p);
        }
        let live = self.rc.pods.len() - self.undead.len();
        if live > HOSTS * PODS_PER_HOST || (live > HOSTS && self.rng.below(2) == 0) {
            let candidates: Vec<usize> = (0..self.rc.pods.len())
                .filter(|p| !self.undead.contains(p))
                .collect();
            if !candidates.is_empty() {
                let p = candidates[self.rng.below(candidates.len())];
                self.del(p);
            }
        } else {
            let h = self.rng.below(HOSTS);
            self.add(h);
        }
    }

    /// Injects `fault`, with churn going on where it makes sense; returns when it ended.
    fn inject(&mut self, fault: Fault) -> Instant {
        match fault {
            Fault::AgentKill => {
                let h = 1 + self.rng.below(HOSTS - 1);
                self.rc.agent(h).sigkill();
                self.rc.take_agent(h);
                let down = self.rng.millis(500, 3000);
                let until = Instant::now() + down;
                while Instant::now() < until {
                    self.churn_step();
                }
                self.rc.start_agent(h, &[]);
                Instant::now()
            }
            Fault::EtcdRestart => {
                let etcd = self.rc.cluster.etcd.as_mut().expect("etcd");
                etcd.stop().expect("stop etcd");
                self.etcd_up = false;
                let until = Instant::now() + self.rng.millis(1000, 4000);
                while Instant::now() < until {
                    self.churn_step();
                }
                let etcd = self.rc.cluster.etcd.as_mut().expect("etcd");
                etcd.start_again().expect("start etcd again");
                self.etcd_up = true;
                // Failed DELs are retried now that etcd answers.
                while let Some(&p) = self.undead.first() {
                    self.del(p);
                }
                Instant::now()
            }
            Fault::NodeReplace => {
                let h = REPLACED;
                // Drain: the node's pods go first, as an operator (or the kubelet) would.
                let on_host: Vec<usize> = (0..self.rc.pods.len())
                    .filter(|&p| self.rc.pods[p].host == h)
                    .collect();
                for p in on_host.into_iter().rev() {
                    self.del(p);
                }
                self.rc.agent(h).sigterm(Duration::from_secs(5));
                self.rc.take_agent(h);
                let node = self.rc.node(h);
                self.rc.reefctl_ok(0, &["node", "rm", &node]);
                let gone = reef_tests::wait_until(Duration::from_secs(10), || {
                    (0..HOSTS)
                        .filter(|&o| o != h)
                        .all(|o| !self.rc.routes(o).iter().any(|r| r.contains(&self.via(h))))
                });
                if !gone {
                    self.tally.leaks.push(format!(
                        "routes to removed node {node} still present after 10 s"
                    ));
                }
                self.rc.start_agent(h, &[]);
                for _ in 0..PODS_PER_HOST {
                    self.add(h);
                }
                Instant::now()
            }
        }
    }

    /// The underlay address other hosts route host `h`'s pods through (as in `ip route`).
    fn via(&self, h: usize) -> String {
        format!("via {}", self.rc.host(h).addr())
    }

    /// Every live pod pings every other; records how long after `ended` the last pair got
    /// through (a violation beyond 2 s).
    fn check_reach(&mut self, fault: Option<Fault>, ended: Instant) {
        let live: Vec<(&Netns, Ipv4Addr, String)> = self
            .rc
            .pods
            .iter()
            .enumerate()
            .filter(|(p, _)| !self.undead.contains(p))
            .map(|(_, pod)| (&pod.ns, pod.ip, pod.cid.clone()))
            .collect();
        let give_up = ended + REACH_GIVE_UP;
        let results: Vec<(Option<Instant>, Vec<String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = live
                .iter()
                .map(|(ns, ip, cid)| {
                    let live = &live;
                    s.spawn(move || {
                        let mut last = None;
                        let mut failed = Vec::new();
                        for (_, dst, dcid) in live.iter().filter(|(_, d, _)| d != ip) {
                            loop {
                                if ping1(ns, *dst, "0.2") {
                                    last = last.max(Some(Instant::now()));
                                    break;
                                }
                                if Instant::now() >= give_up {
                                    failed.push(format!("{cid} -> {dcid} ({dst})"));
                                    break;
                                }
                            }
                        }
                        (last, failed)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or((None, vec!["a ping thread panicked".into()]))
                })
                .collect()
        });
        let last = results
            .iter()
            .filter_map(|(l, _)| *l)
            .max()
            .unwrap_or(ended);
        let took = last.saturating_duration_since(ended);
        let failed: Vec<String> = results.into_iter().flat_map(|(_, f)| f).collect();
        let what = fault.map_or("start".to_string(), |f| format!("{f:?}"));
        if !failed.is_empty() {
            self.tally.unreachable.push(format!(
                "after {what} (t={:.1}s): {} pairs never answered: {}",
                self.elapsed(),
                failed.len(),
                failed.join(", ")
            ));
        } else if took > REACH_BOUND && fault.is_some() {
            self.tally.unreachable.push(format!(
                "after {what} (t={:.1}s): full reachability took {:.0} ms",
                self.elapsed(),
                ms(took)
            ));
        }
        if let Some(f) = fault {
            self.tally.reach.entry(f).or_default().push(took);
        }
    }

    fn sample_rss(&mut self) {
        let Some(agent) = self.rc.agents[PROBE].as_ref() else {
            return;
        };
        let pid = agent.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
        {
            let t = self.elapsed();
            self.tally.rss.push((t, pid, kb));
        }
    }

    /// Retries failed DELs, garbage-collects, checks etcd against the live pods, then
    /// deletes every pod and checks that nothing is left.
    fn finish(&mut self) {
        for _ in 0..50 {
            let Some(&p) = self.undead.first() else { break };
            self.del(p);
            std::thread::sleep(Duration::from_millis(100));
        }
        self.rc.reefctl_ok(0, &["ipam", "gc"]);
        let live: BTreeSet<String> = self
            .rc
            .pods
            .iter()
            .map(|p| format!("{}/{}/eth0", self.rc.node(p.host), p.cid))
            .collect();
        self.compare_etcd("live pods after GC", &live);
        while !self.rc.pods.is_empty() {
            self.del(self.rc.pods.len() - 1);
            if !self.undead.is_empty() {
                self.tally
                    .leaks
                    .push("a DEL failed with etcd up at the end".to_string());
                break;
            }
        }
        self.rc.reefctl_ok(0, &["ipam", "gc"]);
        self.compare_etcd("no pods", &BTreeSet::new());
        for h in 0..HOSTS {
            let links = self.rc.host(h).ns().sh_ok("ip -o link show");
            let veths: Vec<&str> = links
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
                .filter(|n| reef_cni::attachment::is_host_veth_name(n))
                .collect();
            if !veths.is_empty() {
                self.tally
                    .leaks
                    .push(format!("host {h} keeps veths {veths:?} with no pod"));
            }
        }
    }

    /// etcd's handles and workloads, as `node/cid/ifname`, must be exactly `want`.
    fn compare_etcd(&mut self, when: &str, want: &BTreeSet<String>) {
        for prefix in ["/reef/handles/", "/reef/workloads/"] {
            let keys = self
                .rc
                .etcdctl(0, &["get", prefix, "--prefix", "--keys-only"]);
            let have: BTreeSet<String> = keys
                .lines()
                .filter_map(|k| k.strip_prefix(prefix))
                .map(str::to_string)
                .collect();
            if &have != want {
                let extra: Vec<_> = have.difference(want).collect();
                let missing: Vec<_> = want.difference(&have).collect();
                self.tally.leaks.push(format!(
                    "{when}: {prefix} has {} extra {extra:?} and lacks {missing:?}",
                    extra.len()
                ));
            }
        }
    }

    /// Prints the figures; returns the number of violations.
    fn report(&self, secs: u64) -> usize {
        let t = &self.tally;
        println!(
            "pods: {} ADDs, {} DELs; {} ADDs refused and {} DELs retried while etcd was down",
            t.adds, t.dels, t.add_refused, t.del_retried
        );
        for (fault, times) in &t.reach {
            let v: Vec<f64> = times.iter().map(|d| ms(*d)).collect();
            println!(
                "{fault:?}: {} times; fault end -> every pod reaches every pod: p50 {:.0} ms, max {:.0} ms (bound {} ms)",
                v.len(),
                percentile(&v, 50.0),
                v.iter().cloned().fold(0.0, f64::max),
                REACH_BOUND.as_millis()
            );
        }
        let rss_violation = self.rss_report(secs);
        let violations =
            t.duplicates.len() + t.unreachable.len() + t.leaks.len() + usize::from(rss_violation);
        for (what, list) in [
            ("duplicate address", &t.duplicates),
            ("reachability", &t.unreachable),
            ("leak", &t.leaks),
        ] {
            println!("invariant violations, {what}: {}", list.len());
            for v in list {
                println!("  {v}");
            }
        }
        println!("invariant violations in all: {violations}");
        violations
    }

    /// The probe agent's RSS a quarter into the run against its last sample; `true` if it
    /// grew by more than 25 %.
    fn rss_report(&self, secs: u64) -> bool {
        let samples = &self.tally.rss;
        let quarter = secs as f64 / 4.0;
        let Some(&(t0, _, base)) = samples.iter().find(|(t, _, _)| *t >= quarter) else {
            println!("agent RSS: too few samples");
            return false;
        };
        let Some(&(t1, _, last)) = samples.last() else {
            return false;
        };
        let max = samples.iter().map(|s| s.2).max().unwrap_or(last);
        let grew = last as f64 / base.max(1) as f64;
        println!(
            "agent RSS (host {PROBE}, never killed): {:.1} MB at {t0:.0} s, {:.1} MB at {t1:.0} s (x{grew:.2}), max {:.1} MB; {} samples",
            base as f64 / 1024.0,
            last as f64 / 1024.0,
            max as f64 / 1024.0,
            samples.len()
        );
        let violation = grew > 1.25;
        println!(
            "invariant violations, agent RSS growth: {}",
            usize::from(violation)
        );
        violation
    }
}
