//! Services at scale: reef-agent programming 10,000 ClusterIP services × 5 endpoints into
//! `ip reef-services`, and a kube-proxy-iptables-style linear chain for comparison.
//!
//! **Records.** One simulated host (`h1`) with a real etcd and, later, a real `reef-agent`.
//! The bench writes the services (`/reef/services/bulk/sNNNNN`, 1 TCP port each, VIPs from
//! 10.96.16.0 up, selector `app: sNNNNN`) and their workload records (5 per service, spread
//! over three nodes `n1`..`n3` that are only names, each with a unique address of the pool
//! 10.66.0.0/16 outside the real pods' block) straight into etcd, in transactions of 128 puts sent by the bench over
//! reef-etcd's client from a socket inside the host namespace. The three nodes get plain
//! agent keys (no lease), so their endpoints count as alive. VIP claims are not written (no
//! `reefctl` runs against these services).
//!
//! 1. **Full sync**: agent spawn → its record `/reef/agents/h1` shows every service port and
//!    endpoint (polled every 20 ms). At the very end of Reef's part (it may leave the agent
//!    busy for long), the same after a restart (SIGTERM, new agent) on the table the first
//!    one left: a full sync that changes nothing.
//! 2. **One endpoint change → kernel**: a workload record added to (then removed from) one
//!    service; from right before the etcd put to the nftables notification (nfnetlink group
//!    NFTABLES, read by the bench inside the host namespace) that the service's element in
//!    the `services` verdict map now jumps to `lb-6` (back to `lb-5`). Nothing is polled.
//!    The first round is also checked with `nft get element` (untimed; its run time is
//!    printed: that is what polling with nft would cost).
//! 3. **Agent RSS** (VmRSS, VmHWM) with everything programmed.
//! 4. **New connections/s** from a reef-routed client pod to a VIP whose endpoint is a
//!    reef-routed pod on the same host running an accept loop (the bench's threads inside
//!    the pods' namespaces; each connection closed with RST, SO_LINGER 0), with 10 services
//!    vs 10,001 defined, rounds interleaved (the bench deletes and re-puts 9,991 services
//!    between rounds, waits for the agent's record, then 2 s; the switch times are printed).
//! 5. **kube-proxy iptables style**, by the bench, in namespaces of its own: client — router
//!    — endpoint, the router holding `nat` rules as kube-proxy's iptables mode writes them
//!    (`KUBE-SERVICES` with one rule per service, `KUBE-SVC-*` with `statistic` rules,
//!    `KUBE-SEP-*` with DNAT), 10 and 10,000 services × 5 endpoints, the measured service in
//!    the middle of `KUBE-SERVICES` (the average position). Load time of `iptables-restore`,
//!    one added service (`--noflush`), and the same connection loop through it, for
//!    `iptables-legacy` and `iptables-nft` (Reef's cluster is gone by then, so its agent
//!    takes no CPU from this part).
//!
//! The agent runs with its defaults (`--resync 30 --lease-ttl 10`; `REEF_BENCH_RESYNC`,
//! `REEF_BENCH_LEASE_TTL` override them): a periodic full resync re-reads the whole table,
//! the same work as the restart figure, and may land inside a round of parts 2 and 4.
//!
//! Targets: full sync ≤ 1 s, one change ≤ 10 ms p99, RSS ≤ 150 MB, rate(10k)/rate(10) ≥ 0.95.
//! Printed, never asserted; the bench fails only when the setup fails (e.g. the agent does
//! not program everything within 60 s). The restart is a figure, not setup: past the bound it
//! prints "DNF".
//!
//! `cargo build --release --workspace && cargo bench -p reef-tests --bench services`
//! Environment: `REEF_BENCH_SERVICES` (10000), `REEF_BENCH_ENDPOINTS` (5),
//! `REEF_BENCH_SMALL` (services of the small side, 10), `REEF_BENCH_CHANGES` (rounds of
//! part 2, each an add and a remove, 50), `REEF_BENCH_ROUNDS` (rate rounds per side, 4),
//! `REEF_BENCH_CONNECTS` (connections per rate round, 2000), `REEF_BENCH_IPTABLES`
//! (`legacy,nft`; `none` skips part 5), `REEF_BENCH_RESYNC` (agent `--resync`, 30),
//! `REEF_BENCH_LEASE_TTL` (agent `--lease-ttl`, 10),
//! `REEF_BENCH_TIMEOUT` (seconds the agent gets to program a whole picture, 60).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reef_tests::bench::{env_or, fmt, loadavg, median};
use reef_tests::benchkit::{ms, percentile, rate, rate_or, reachable, AcceptLoop, Kv, TXN_OPS};
use reef_tests::monitor::NftMonitor;
use reef_tests::routed::RoutedCluster;
use reef_tests::{tempdir, Netns};
use serde_json::{json, Value};

/// The namespace of the bulk services and their workloads.
const BULK: &str = "bulk";
/// Nodes that exist only as names (agent keys without a lease) and hold the bulk endpoints.
const FAKE_NODES: [&str; 3] = ["n1", "n2", "n3"];
/// etcd's default `--max-txn-ops`.
/// The service with a real endpoint (part 4).
const REAL_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TARGET_PORT: u16 = 8080;
/// Pause after each switch of part 4, before its rate round.
const SETTLE: Duration = Duration::from_secs(2);
/// Rounds of part 2 whose result is also checked with `nft get element`.
const NFT_CHECKS: usize = 1;
/// Bound on one endpoint change reaching the kernel.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Knobs {
    services: usize,
    endpoints: usize,
    small: usize,
    changes: usize,
    rounds: usize,
    connects: usize,
    iptables: Vec<String>,
    /// `reef-agent --resync SECS`.
    resync: usize,
    /// `reef-agent --lease-ttl SECS`.
    lease_ttl: usize,
    /// Bound on the agent programming a whole picture.
    timeout: Duration,
}

impl Knobs {
    fn from_env() -> Knobs {
        let k = Knobs {
            services: env_or("REEF_BENCH_SERVICES", 10_000),
            endpoints: env_or("REEF_BENCH_ENDPOINTS", 5),
            small: env_or("REEF_BENCH_SMALL", 10),
            changes: env_or("REEF_BENCH_CHANGES", 50),
            rounds: env_or("REEF_BENCH_ROUNDS", 4),
            connects: env_or("REEF_BENCH_CONNECTS", 2000),
            resync: env_or("REEF_BENCH_RESYNC", 30),
            lease_ttl: env_or("REEF_BENCH_LEASE_TTL", 10),
            timeout: Duration::from_secs(env_or("REEF_BENCH_TIMEOUT", 60) as u64),
            iptables: std::env::var("REEF_BENCH_IPTABLES")
                .unwrap_or_else(|_| "legacy,nft".into())
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && s != "none")
                .collect(),
        };
        // VIPs 10.96.16.0 + i stay below 10.96.255.255; pod IPs 10.66.32.0 + k below
        // 10.66.240.0 (the part 2 extras); names sNNNNN sort by number.
        assert!(
            (2..=60_000).contains(&k.services)
                && (1..=9).contains(&k.endpoints)
                && k.services * k.endpoints <= 53_000
                && (2..k.services).contains(&k.small)
                && k.changes <= 4000
                && k.rounds >= 1
                && k.connects >= 1
                && k.resync >= 1
                && (1..=3600).contains(&k.lease_ttl),
            "REEF_BENCH_* out of range: {k:?} (services 2..=60000, endpoints 1..=9, \
             services × endpoints ≤ 53000, 2 ≤ small < services, changes ≤ 4000)"
        );
        for v in &k.iptables {
            assert!(
                v == "legacy" || v == "nft",
                "REEF_BENCH_IPTABLES: {v:?} is neither legacy nor nft"
            );
        }
        k
    }
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 16, 0)) + i as u32)
}

/// Endpoint `k` of the iptables side (its own namespaces: any address will do).
fn pod_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 66, 32, 0)) + k as u32)
}

/// `count` distinct addresses of the cluster's pool (10.66.0.0/16) outside every block
/// claimed in etcd (the real pods'), for the records of pods that exist only there.
fn free_ips(kv: &Kv, count: usize) -> Vec<Ipv4Addr> {
    let claimed: Vec<(u32, u32)> = kv
        .get_prefix_json("/reef/blocks/".into())
        .iter()
        .filter_map(|b| {
            let (net, len) = b["cidr"].as_str()?.split_once('/')?;
            let net = u32::from(net.parse::<Ipv4Addr>().ok()?);
            let mask = u32::MAX.checked_shl(32 - len.parse::<u32>().ok()?)?;
            Some((net & mask, mask))
        })
        .collect();
    let first = u32::from(Ipv4Addr::new(10, 66, 1, 0));
    let last = u32::from(Ipv4Addr::new(10, 66, 255, 254));
    let ips: Vec<Ipv4Addr> = (first..=last)
        .filter(|a| claimed.iter().all(|(net, mask)| a & mask != *net))
        .take(count)
        .map(Ipv4Addr::from)
        .collect();
    assert_eq!(ips.len(), count, "the pool has too few free addresses");
    ips
}

fn svc_name(i: usize) -> String {
    format!("s{i:05}")
}

fn service_key(ns: &str, name: &str) -> String {
    format!("/reef/services/{ns}/{name}")
}

fn service_json(ns: &str, name: &str, vip: Ipv4Addr, app: &str) -> String {
    json!({
        "namespace": ns, "name": name, "type": "ClusterIP", "clusterIp": vip.to_string(),
        "selector": {"app": app},
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": TARGET_PORT}],
    })
    .to_string()
}

fn workload(node: &str, cid: &str, ip: Ipv4Addr, app: &str) -> (String, String) {
    (
        format!("/reef/workloads/{node}/{cid}/eth0"),
        json!({
            "node": node, "network": "routednet", "containerId": cid, "ifname": "eth0",
            "ips": [ip.to_string()], "namespace": BULK, "name": cid, "labels": {"app": app},
        })
        .to_string(),
    )
}

fn bulk_service(i: usize) -> (String, String) {
    let name = svc_name(i);
    (
        service_key(BULK, &name),
        service_json(BULK, &name, vip(i), &name),
    )
}

// ---------------------------------------------------------------------------------------
// Reef.

struct Reef {
    // Field order is drop order: the client first (its thread), then the cluster.
    kv: Kv,
    rc: RoutedCluster,
    node: String,
    knobs: Knobs,
    /// Pod addresses of the records without pods: the bulk endpoints, then part 2's.
    ips: Vec<Ipv4Addr>,
    /// The real pods (part 4): an endpoint and a client.
    ep_pod: usize,
    client_pod: usize,
}

/// What the agent's record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Programmed {
    pid: u64,
    services: u64,
    endpoints: u64,
}

impl Reef {
    fn record(&self) -> Option<Programmed> {
        let v = self.kv.get_json(format!("/reef/agents/{}", self.node))?;
        Some(Programmed {
            pid: v["pid"].as_u64()?,
            services: v["services"].as_u64()?,
            endpoints: v["endpoints"].as_u64()?,
        })
    }

    /// Polls the agent's record every 20 ms until the running agent reports `services` and
    /// `endpoints`; returns when it did, or `None` after `timeout`.
    fn try_wait_programmed(
        &mut self,
        services: usize,
        endpoints: usize,
        timeout: Duration,
    ) -> Option<Instant> {
        let pid = u64::from(self.rc.agent(0).pid());
        let want = Programmed {
            pid,
            services: services as u64,
            endpoints: endpoints as u64,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if self.record() == Some(want) {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Reef::try_wait_programmed`] within the setup bound: panics with the record and the
    /// end of the agent's log if it does not get there.
    fn wait_programmed(&mut self, services: usize, endpoints: usize, what: &str) -> Instant {
        let timeout = self.knobs.timeout;
        if let Some(at) = self.try_wait_programmed(services, endpoints, timeout) {
            return at;
        }
        panic!(
            "{what}: the agent did not program {services} service ports and {endpoints} \
             endpoints within {timeout:?}\n{}",
            self.diagnosis()
        );
    }

    /// Starts the agent of host 0 with the bench's flags.
    fn spawn_agent(&mut self) {
        let resync = self.knobs.resync.to_string();
        let ttl = self.knobs.lease_ttl.to_string();
        self.rc
            .spawn_agent(0, &["--resync", &resync, "--lease-ttl", &ttl]);
    }

    /// The agent's record and the end of its log, for failure messages.
    fn diagnosis(&self) -> String {
        let log = self.rc.agent_logs();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!(
            "agent record: {:?}\nlast log lines (newest first):\n{}",
            self.record(),
            tail.join("\n")
        )
    }

    fn compact(&self, rev: i64) {
        self.rc.etcdctl(0, &["compact", &rev.to_string()]);
    }

    /// VmRSS and VmHWM of the agent, MB.
    fn rss(&mut self) -> (f64, f64) {
        let pid = self.rc.agent(0).pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .unwrap_or(f64::NAN)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Elements of a set or map of the services table (`nft -j`).
    fn kernel_elements(&self, set: &str, kind: &str) -> usize {
        let out = self
            .rc
            .host(0)
            .ns()
            .sh_ok(&format!("nft -j list {kind} ip reef-services {set}"));
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("nft -j list {kind} {set}: not JSON ({e})"));
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o[kind]["elem"].as_array())
            .map(Vec::len)
            .sum()
    }
}

#[derive(Debug, Default)]
struct SyncFigures {
    write_s: f64,
    keys: usize,
    first_ms: f64,
    first_ready_ms: f64,
    vips: usize,
    services_map: usize,
}

/// Part 1: records into etcd, agent start → programmed.
fn full_sync(knobs: &Knobs) -> (Reef, SyncFigures) {
    let (n, e) = (knobs.services, knobs.endpoints);
    let mut rc = RoutedCluster::new(1);
    let node = rc.node(0);
    // The real pods first, so that the records of the others avoid their block.
    let ep_pod = rc.add_labelled_pod(0, "real/web-0", &json!({"app": "web"}));
    let client_pod = rc.add_pod(0);
    let kv = Kv::start(rc.host(0).ns(), &rc.endpoint());
    let ips = free_ips(&kv, n * e + knobs.changes);
    let mut reef = Reef {
        kv,
        rc,
        node,
        knobs: knobs.clone(),
        ips,
        ep_pod,
        client_pod,
    };
    let mut kvs: Vec<(String, String)> = FAKE_NODES
        .iter()
        .map(|n| {
            (
                format!("/reef/agents/{n}"),
                json!({"node": n, "pid": 1, "mode": "routed", "started": 0, "updated": 0,
                       "routes": 0})
                .to_string(),
            )
        })
        .collect();
    for i in 0..n {
        kvs.push(bulk_service(i));
        let app = svc_name(i);
        for j in 0..e {
            let k = i * e + j;
            kvs.push(workload(
                FAKE_NODES[k % FAKE_NODES.len()],
                &format!("{app}-{j}"),
                reef.ips[k],
                &app,
            ));
        }
    }
    let mut f = SyncFigures {
        keys: kvs.len(),
        ..SyncFigures::default()
    };
    let t = Instant::now();
    let rev = reef.kv.put_all(kvs);
    f.write_s = t.elapsed().as_secs_f64();
    reef.compact(rev);
    println!(
        "records: {} keys written in {:.1} s ({} transactions of up to {TXN_OPS} puts)",
        f.keys,
        f.write_s,
        f.keys.div_ceil(TXN_OPS)
    );

    let t0 = Instant::now();
    reef.spawn_agent();
    let done = reef.wait_programmed(n, n * e, "first full sync");
    f.first_ms = ms(done - t0);
    f.first_ready_ms = ms(reef.rc.agent(0).wait_ready(knobs.timeout));
    f.vips = reef.kernel_elements("vips", "set");
    f.services_map = reef.kernel_elements("services", "map");
    assert!(
        f.vips == n && f.services_map == n,
        "the agent reports {n} services but the kernel has {} VIPs and {} services elements",
        f.vips,
        f.services_map
    );
    println!(
        "full sync: agent spawn -> record shows {n} services / {} endpoints: {:.0} ms \
         (msg=ready at {:.0} ms); kernel: {} VIPs, {} services elements",
        n * e,
        f.first_ms,
        f.first_ready_ms,
        f.vips,
        f.services_map
    );

    // The agent's own split of the sync: list+decode and programming.
    for l in reef
        .rc
        .agent_logs()
        .lines()
        .filter(|l| l.contains("msg=synced"))
    {
        println!("  agent: {l}");
    }
    (reef, f)
}

/// Part 1, second half (run last, as it may leave the agent busy): SIGTERM, a new agent on
/// the table it left, spawn → its record shows everything again (`None`: not within the
/// bound) and spawn → msg=ready.
fn restart(reef: &mut Reef, services: usize, endpoints: usize) -> (Option<f64>, Option<f64>) {
    let mut old = reef.rc.take_agent(0);
    assert!(
        old.sigterm(Duration::from_secs(10)).is_some(),
        "reef-agent did not stop on SIGTERM"
    );
    drop(old);
    let t0 = Instant::now();
    reef.spawn_agent();
    let timeout = reef.knobs.timeout;
    let done = reef.try_wait_programmed(services, endpoints, timeout);
    let again = done.map(|d| ms(d - t0));
    let ready = done.map(|_| ms(reef.rc.agent(0).wait_ready(timeout)));
    match again {
        Some(t) => println!(
            "restart on a matching table: agent spawn -> record: {t:.0} ms (msg=ready at {:.0} ms)",
            ready.unwrap_or(f64::NAN)
        ),
        None => println!(
            "restart on a matching table: NOT programmed within {timeout:?} (agent record: {:?})",
            reef.record()
        ),
    }
    (again, ready)
}

#[derive(Debug, Default)]
struct ChangeFigures {
    add: Vec<f64>,
    del: Vec<f64>,
    nft_get: Vec<f64>,
    overflowed: bool,
}

/// Part 2: one workload record more or less for one service, etcd put → kernel element.
fn one_change(reef: &Reef) -> ChangeFigures {
    let (n, e) = (reef.knobs.services, reef.knobs.endpoints);
    let ns = reef.rc.host(0).ns();
    let mon = NftMonitor::start(ns);
    let mut f = ChangeFigures::default();
    let (more, less) = (format!("lb-{}", e + 1), format!("lb-{e}"));
    for r in 0..reef.knobs.changes {
        let i = (r * 7919 + 13) % n;
        let v = vip(i);
        let app = svc_name(i);
        let (key, value) = workload(
            FAKE_NODES[r % FAKE_NODES.len()],
            &format!("x{r}"),
            reef.ips[n * e + r],
            &app,
        );
        for (adding, chain) in [(true, &more), (false, &less)] {
            let skip = mon.count();
            let (t0, _) = if adding {
                reef.kv.put(key.clone(), value.clone())
            } else {
                reef.kv.delete(key.clone())
            };
            let ev = mon
                .wait_for(skip, t0 + CHANGE_TIMEOUT, |ev| {
                    ev.new
                        && ev.table == "reef-services"
                        && ev.set == "services"
                        && ev.key.starts_with(&v.octets())
                        && ev.chain.as_deref() == Some(chain.as_str())
                })
                .unwrap_or_else(|| {
                    panic!(
                        "round {r}: {} of {key}: no services element {v} -> {chain} within \
                         {CHANGE_TIMEOUT:?}\n{}",
                        if adding { "put" } else { "delete" },
                        reef.rc.agent_logs()
                    )
                });
            let took = ms(ev.at.saturating_duration_since(t0));
            if adding {
                f.add.push(took);
            } else {
                f.del.push(took);
            }
            // Check the kernel the ordinary way on the first rounds (untimed for the figure;
            // its own run time is printed: at 10k it is seconds, as nft reads the table).
            if r < NFT_CHECKS {
                let t = Instant::now();
                let out = ns.sh_ok(&format!(
                    "nft get element ip reef-services services '{{ {v} . tcp . 80 }}'"
                ));
                f.nft_get.push(ms(t.elapsed()));
                assert!(
                    out.contains(&format!("jump {chain}")),
                    "round {r}: nft shows {out:?}, expected jump {chain}"
                );
            }
            // Let the agent's status write (heartbeat) pass before the next change.
            std::thread::sleep(Duration::from_millis(30 + (r as u64 * 7) % 40));
        }
    }
    f.overflowed = mon.overflowed();
    f
}

#[derive(Debug, Default)]
struct RateFigures {
    small: Vec<f64>,
    large: Vec<f64>,
    to_small_ms: Vec<f64>,
    to_large_ms: Vec<f64>,
}

/// Part 4: a real client and endpoint pod, connections through the VIP with `small` vs all
/// services defined.
fn reef_rates(reef: &mut Reef) -> RateFigures {
    let k = reef.knobs.clone();
    let (n, e) = (k.services, k.endpoints);
    let (ep, client) = (reef.ep_pod, reef.client_pod);
    let _server = AcceptLoop::start(&reef.rc.pods[ep].ns, TARGET_PORT);
    reef.kv.put(
        service_key("real", "web"),
        service_json("real", "web", REAL_VIP, "web"),
    );
    reef.wait_programmed(n + 1, n * e + 1, "the real service");
    let to = SocketAddr::from((REAL_VIP, 80));
    let client_ns = &reef.rc.pods[client].ns;
    reachable(client_ns, to, Duration::from_secs(10), "client pod -> VIP");
    // The small side keeps bulk s00000.. and the real service: `small` in all.
    let keep = k.small - 1;
    let mut f = RateFigures::default();
    for round in 0..k.rounds {
        let t = Instant::now();
        let rev = reef.kv.delete_range(
            service_key(BULK, &svc_name(keep)),
            format!("/reef/services/{BULK}0"),
        );
        let done = reef.wait_programmed(k.small, keep * e + 1, "switch to the small side");
        f.to_small_ms.push(ms(done - t));
        reef.compact(rev);
        // Let the switch's aftermath (the kernel freeing elements, etcd) pass.
        std::thread::sleep(SETTLE);
        let client_ns = &reef.rc.pods[client].ns;
        f.small.push(rate_or(
            client_ns,
            to,
            k.connects,
            "reef, small side",
            || reef.diagnosis(),
        ));

        let t = Instant::now();
        let rev = reef.kv.put_all((keep..n).map(bulk_service).collect());
        let done = reef.wait_programmed(n + 1, n * e + 1, "switch to the large side");
        f.to_large_ms.push(ms(done - t));
        reef.compact(rev);
        std::thread::sleep(SETTLE);
        let client_ns = &reef.rc.pods[client].ns;
        f.large.push(rate_or(
            client_ns,
            to,
            k.connects,
            "reef, large side",
            || reef.diagnosis(),
        ));
        println!(
            "rate round {}: {} services {:.0}/s, {} services {:.0}/s",
            round + 1,
            k.small,
            f.small[round],
            n + 1,
            f.large[round]
        );
    }
    f
}

// ---------------------------------------------------------------------------------------
// kube-proxy iptables style.

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);

/// client — router — endpoint, each its own namespace; the router forwards and holds the
/// rules; the endpoint runs the accept loop.
struct Triplet {
    // Drop order: the accept loop (its thread), then the namespaces.
    _server: AcceptLoop,
    client: Netns,
    router: Netns,
    _ep: Netns,
}

impl Triplet {
    fn new() -> Triplet {
        let client = Netns::new("svcc").expect("client netns");
        let router = Netns::new("svcr").expect("router netns");
        let ep = Netns::new("svce").expect("endpoint netns");
        router.sh_ok(&format!(
            "ip link set lo up && \
             ip link add c0 type veth peer name eth0 netns {c} && \
             ip link add e0 type veth peer name eth0 netns {e} && \
             ip addr add 10.201.0.1/24 dev c0 && ip addr add 10.201.1.1/24 dev e0 && \
             ip link set c0 up && ip link set e0 up && sysctl -qw net.ipv4.ip_forward=1",
            c = client.name(),
            e = ep.name()
        ));
        for (ns, ip, gw) in [
            (&client, CLIENT_IP, "10.201.0.1"),
            (&ep, SERVER_IP, "10.201.1.1"),
        ] {
            ns.sh_ok(&format!(
                "ip link set lo up && ip addr add {ip}/24 dev eth0 && ip link set eth0 up && \
                 ip route add default via {gw}"
            ));
        }
        let server = AcceptLoop::start(&ep, TARGET_PORT);
        Triplet {
            _server: server,
            client,
            router,
            _ep: ep,
        }
    }
}

/// The `nat` table kube-proxy's iptables mode would write for `n` services × `e` endpoints
/// (ClusterIP, one TCP port), service `real` having the real endpoint alone.
fn kube_rules(n: usize, e: usize, real: usize) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    let mut svc_rules = String::new();
    for i in 0..n {
        let name = svc_name(i);
        chains += &format!(":KUBE-SVC-{i} - [0:0]\n");
        rules += &format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{BULK}/{name}:http \
             cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{i}\n",
            vip(i)
        );
        let eps: Vec<Ipv4Addr> = if i == real {
            vec![SERVER_IP]
        } else {
            (0..e).map(|j| pod_ip(i * e + j)).collect()
        };
        for (j, ip) in eps.iter().enumerate() {
            chains += &format!(":KUBE-SEP-{i}-{j} - [0:0]\n");
            let left = eps.len() - j;
            if left > 1 {
                svc_rules += &format!(
                    "-A KUBE-SVC-{i} -m comment --comment \"{BULK}/{name}:http\" -m statistic \
                     --mode random --probability {:.11} -j KUBE-SEP-{i}-{j}\n",
                    1.0 / left as f64
                );
            } else {
                svc_rules += &format!(
                    "-A KUBE-SVC-{i} -m comment --comment \"{BULK}/{name}:http\" -j KUBE-SEP-{i}-{j}\n"
                );
            }
            svc_rules += &format!(
                "-A KUBE-SEP-{i}-{j} -p tcp -m comment --comment \"{BULK}/{name}:http\" -m tcp \
                 -j DNAT --to-destination {ip}:{TARGET_PORT}\n"
            );
        }
    }
    format!("{chains}{rules}{svc_rules}COMMIT\n")
}

/// One more service (chains and the `KUBE-SERVICES` rule), for `--noflush`.
fn kube_one_more(tag: usize) -> String {
    let ip = Ipv4Addr::new(10, 96, 250, tag as u8);
    format!(
        "*nat\n:KUBE-SVC-X{tag} - [0:0]\n:KUBE-SEP-X{tag} - [0:0]\n\
         -A KUBE-SEP-X{tag} -p tcp -m tcp -j DNAT --to-destination 10.66.250.{tag}:{TARGET_PORT}\n\
         -A KUBE-SVC-X{tag} -j KUBE-SEP-X{tag}\n\
         -A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"new/x{tag}:http cluster IP\" \
         -m tcp --dport 80 -j KUBE-SVC-X{tag}\nCOMMIT\n"
    )
}

/// `BIN [ARGS] < file` inside `ns`; its run time.
fn restore(ns: &Netns, bin: &str, args: &[&str], file: &Path) -> Duration {
    let input = File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let t = Instant::now();
    let out = ns
        .cmd(bin)
        .args(args)
        .stdin(Stdio::from(input))
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{bin} {args:?} < {} in {} failed: {}",
        file.display(),
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

#[derive(Debug, Default)]
struct IptFigures {
    variant: String,
    rules: [usize; 2],
    load_ms: [f64; 2],
    change_ms: [f64; 2],
    small: Vec<f64>,
    large: Vec<f64>,
}

/// Part 5 for one iptables variant: both sizes loaded in their own triplets, then rate
/// rounds interleaved.
fn iptables(knobs: &Knobs, variant: &str) -> IptFigures {
    let bin = format!("iptables-{variant}-restore");
    let dir = tempdir();
    let mut f = IptFigures {
        variant: variant.into(),
        ..IptFigures::default()
    };
    let mut sides = Vec::new();
    for (s, n) in [knobs.small, knobs.services].into_iter().enumerate() {
        let real = n / 2;
        let t = Triplet::new();
        let rules = kube_rules(n, knobs.endpoints, real);
        f.rules[s] = rules.lines().filter(|l| l.starts_with("-A ")).count();
        let file = dir.path().join(format!("rules-{n}"));
        std::fs::write(&file, rules).expect("write rules");
        f.load_ms[s] = ms(restore(&t.router, &bin, &[], &file));
        let mut changes = Vec::new();
        for tag in 1..=3 {
            let one = dir.path().join(format!("one-{n}-{tag}"));
            std::fs::write(&one, kube_one_more(tag)).expect("write rules");
            changes.push(ms(restore(&t.router, &bin, &["--noflush"], &one)));
        }
        f.change_ms[s] = median(&changes);
        let to = SocketAddr::from((vip(real), 80));
        reachable(
            &t.client,
            to,
            Duration::from_secs(10),
            &format!("{variant}: client -> VIP through the router"),
        );
        sides.push((t, to));
    }
    for r in 0..knobs.rounds {
        for s in [r % 2, 1 - r % 2] {
            let (t, to) = &sides[s];
            let v = rate(
                &t.client,
                *to,
                knobs.connects,
                &format!("iptables-{variant}"),
            );
            if s == 0 {
                f.small.push(v);
            } else {
                f.large.push(v);
            }
        }
    }
    println!(
        "iptables-{variant}: {} services load {:.0} ms, {} services load {:.0} ms; rate {:.0}/s vs {:.0}/s",
        knobs.small,
        f.load_ms[0],
        knobs.services,
        f.load_ms[1],
        median(&f.small),
        median(&f.large)
    );
    f
}

fn main() {
    let k = Knobs::from_env();
    let started = Instant::now();
    let load_before = loadavg();
    println!(
        "services bench: {} services × {} endpoints (small side {}), {} change rounds, {} rate \
         rounds × {} connections, iptables: {:?}; loadavg {load_before}",
        k.services, k.endpoints, k.small, k.changes, k.rounds, k.connects, k.iptables
    );

    let (mut reef, sync) = full_sync(&k);
    let (rss, hwm) = reef.rss();
    println!("agent RSS after the full sync: VmRSS {rss:.1} MB, VmHWM {hwm:.1} MB");
    let changes = one_change(&reef);
    println!(
        "one change: {} samples, p50 {:.2} ms",
        changes.add.len() + changes.del.len(),
        median(
            &changes
                .add
                .iter()
                .chain(&changes.del)
                .copied()
                .collect::<Vec<_>>()
        )
    );
    let (rss2, hwm2) = reef.rss();
    let rates = reef_rates(&mut reef);
    let (rss3, hwm3) = reef.rss();
    let (again, again_ready) = restart(&mut reef, k.services + 1, k.services * k.endpoints + 1);
    drop(reef);

    let ipt: Vec<IptFigures> = k.iptables.iter().map(|v| iptables(&k, v)).collect();

    let (n, e) = (k.services, k.endpoints);
    let all: Vec<f64> = changes.add.iter().chain(&changes.del).copied().collect();
    let reef_ratio = median(&rates.large) / median(&rates.small);
    println!();
    println!(
        "=== reef services, {n} services × {e} endpoints (1 simulated host, etcd, reef-agent \
         --resync {} --lease-ttl {}) ===",
        k.resync, k.lease_ttl
    );
    println!("{:<64} {:>20}  target", "figure", "value");
    let row = |what: &str, value: String, target: &str| {
        println!("{what:<64} {value:>20}  {target}");
    };
    row(
        &format!(
            "1. full sync, agent spawn -> {n} svc/{} ep programmed",
            n * e
        ),
        format!("{:.0} ms", sync.first_ms),
        "<= 1000 ms",
    );
    let or_dnf = |v: Option<f64>| match v {
        Some(t) => format!("{t:.0} ms"),
        None => format!("> {:.0} s DNF", k.timeout.as_secs_f64()),
    };
    row(
        &format!(
            "   restart, table already matching ({} svc, nothing to change)",
            n + 1
        ),
        or_dnf(again),
        "<= 1000 ms",
    );
    row(
        "   (spawn -> msg=ready: first / restart)",
        format!("{:.0} ms / {}", sync.first_ready_ms, or_dnf(again_ready)),
        "",
    );
    row(
        &format!("   (records written: {} keys)", sync.keys),
        format!("{:.1} s", sync.write_s),
        "",
    );
    row(
        &format!(
            "2. one endpoint change -> kernel, p50 / p99 ({} samples)",
            all.len()
        ),
        format!(
            "{:.2} / {:.2} ms",
            percentile(&all, 50.0),
            percentile(&all, 99.0)
        ),
        "p99 <= 10 ms",
    );
    row(
        "   add one endpoint (lb-5 -> lb-6), p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&changes.add, 50.0),
            percentile(&changes.add, 99.0)
        ),
        "",
    );
    row(
        "   remove one endpoint (lb-6 -> lb-5), p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&changes.del, 50.0),
            percentile(&changes.del, 99.0)
        ),
        "",
    );
    row(
        "   max",
        format!("{:.2} ms", percentile(&all, 100.0)),
        if changes.overflowed {
            "[WARNING: nft monitor overflowed]"
        } else {
            ""
        },
    );
    row(
        "   (one `nft get element` run, median, not in the figure)",
        format!("{:.2} ms", percentile(&changes.nft_get, 50.0)),
        "",
    );
    row(
        "3. agent VmRSS after full sync / after part 2 / after part 4",
        format!("{rss:.0}/{rss2:.0}/{rss3:.0} MB"),
        "<= 150 MB",
    );
    row(
        "   VmHWM (peak) after full sync / part 2 / part 4",
        format!("{hwm:.0}/{hwm2:.0}/{hwm3:.0} MB"),
        "",
    );
    row(
        &format!("4. new connections/s via VIP, {} services", k.small),
        format!("{:.0}/s", median(&rates.small)),
        "",
    );
    row(
        &format!("   {} services", n + 1),
        format!("{:.0}/s", median(&rates.large)),
        "",
    );
    row(
        &format!("   ratio rate({})/rate({})", n + 1, k.small),
        format!("{reef_ratio:.3}"),
        ">= 0.95",
    );
    println!(
        "   rounds ({} connections each): {}: {} | {}: {}",
        k.connects,
        k.small,
        fmt(&rates.small),
        n + 1,
        fmt(&rates.large)
    );
    println!(
        "   switch times (etcd writes + agent until its record shows it), ms: to {}: {} | to {}: {}",
        k.small,
        fmt(&rates.to_small_ms),
        n + 1,
        fmt(&rates.to_large_ms)
    );
    for f in &ipt {
        let ratio = median(&f.large) / median(&f.small);
        println!();
        println!(
            "=== kube-proxy iptables style (iptables-{}-restore), router netns, measured service \
             in the middle of KUBE-SERVICES ===",
            f.variant
        );
        let (small, large) = (format!("{} svc", k.small), format!("{n} svc"));
        println!("{:<64} {small:>20}  {large}", "figure");
        let row2 = |what: &str, a: String, b: String| println!("{what:<64} {a:>20}  {b}");
        row2(
            "rules (-A lines)",
            f.rules[0].to_string(),
            f.rules[1].to_string(),
        );
        row2(
            "5. iptables-restore load, ms",
            format!("{:.0}", f.load_ms[0]),
            format!("{:.0}", f.load_ms[1]),
        );
        row2(
            "   one more service (--noflush), median of 3, ms",
            format!("{:.1}", f.change_ms[0]),
            format!("{:.1}", f.change_ms[1]),
        );
        row2(
            "   new connections/s (median)",
            format!("{:.0}", median(&f.small)),
            format!("{:.0}", median(&f.large)),
        );
        row2(
            "   ratio rate(large)/rate(small)",
            String::new(),
            format!("{ratio:.3}"),
        );
        println!(
            "   rounds: {}: {} | {n}: {}",
            k.small,
            fmt(&f.small),
            fmt(&f.large)
        );
    }
    println!();
    println!(
        "reef for comparison: load {n} svc {:.0} ms (agent start -> programmed), one change \
         p50 {:.2} ms, rate ratio {reef_ratio:.3}",
        sync.first_ms,
        percentile(&all, 50.0)
    );
    println!(
        "total {:.0} s; loadavg before {load_before}, after {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
