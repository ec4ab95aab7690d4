//! Watching a namespace change: every route and neighbour notification its kernel sends
//! ([`RouteMonitor`], [`NeighMonitor`]: an rtnetlink socket opened inside it, read on a
//! thread of its own, each event timestamped as it arrives, so a test sees every route added
//! or removed, not just samples), nftables set element notifications ([`NftMonitor`], the
//! same on nfnetlink), periodic samples of the agent's routes ([`RouteSampler`]), and
//! interface counters ([`LinkStats`]).

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use serde_json::Value;

use crate::agent::PROTO;
use crate::inspect::json_of;
use crate::Netns;

/// `ip -j route show proto 201` inside `ns`, normalised (see [`crate::routed::RoutedCluster::routes`]).
pub fn proto_routes(ns: &Netns) -> BTreeSet<String> {
    let out = ns.sh_ok(&format!("ip -j -4 route show proto {PROTO}"));
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("ip -j route: not JSON ({e}): {out}"));
    normalise_routes(&v)
}

/// `ip -j route` output as `blackhole CIDR` or `CIDR via GW` (anything else verbatim as JSON).
fn normalise_routes(routes: &Value) -> BTreeSet<String> {
    routes
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let dst = r["dst"].as_str().unwrap_or_default();
            if r["type"] == "blackhole" {
                format!("blackhole {dst}")
            } else if let Some(gw) = r["gateway"].as_str() {
                format!("{dst} via {gw}")
            } else {
                r.to_string()
            }
        })
        .collect()
}

/// A route notification seen by a [`RouteMonitor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEvent {
    pub at: Instant,
    /// RTM_NEWROUTE (true) or RTM_DELROUTE (false).
    pub new: bool,
    /// `CIDR` of the destination.
    pub dst: String,
    pub protocol: u8,
    /// RTN_* type (1 unicast, 6 blackhole).
    pub kind: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl std::fmt::Display for RouteEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}{}{} proto {}",
            if self.new { "NEW" } else { "DEL" },
            if self.kind == libc::RTN_BLACKHOLE {
                "blackhole "
            } else {
                ""
            },
            self.dst,
            self.gateway
                .map(|g| format!(" via {g}"))
                .unwrap_or_default(),
            self.protocol
        )
    }
}

/// Parses the route messages of one netlink datagram.
fn parse_routes(buf: &[u8], at: Instant, out: &mut Vec<RouteEvent>) {
    for (ty, msg) in messages(buf) {
        if (ty != libc::RTM_NEWROUTE && ty != libc::RTM_DELROUTE)
            || msg.len() < 12
            || msg[0] != libc::AF_INET as u8
        {
            continue;
        }
        let (dst_len, protocol, kind) = (msg[1], msg[5], msg[7]);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gateway = None;
        for (aty, data) in attributes(msg, 12) {
            if let Ok(b) = <[u8; 4]>::try_from(data) {
                if aty == libc::RTA_DST {
                    dst = Ipv4Addr::from(b);
                } else if aty == libc::RTA_GATEWAY {
                    gateway = Some(Ipv4Addr::from(b));
                }
            }
        }
        out.push(RouteEvent {
            at,
            new: ty == libc::RTM_NEWROUTE,
            dst: format!("{dst}/{dst_len}"),
            protocol,
            kind,
            gateway,
        });
    }
}

/// Listens to the IPv4 route notifications of one namespace (group RTMGRP_IPV4_ROUTE),
/// recording every event with the time it was received. Stops on drop.
pub struct RouteMonitor(Listener<RouteEvent>);

impl RouteMonitor {
    /// Subscribed when this returns: every later route change in `ns` is recorded.
    pub fn start(ns: &Netns) -> RouteMonitor {
        RouteMonitor(Listener::start(
            ns,
            libc::RTMGRP_IPV4_ROUTE as u32,
            "route",
            parse_routes,
        ))
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<RouteEvent> {
        self.0.events()
    }

    /// Events of protocol 201.
    pub fn proto_events(&self) -> Vec<RouteEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.protocol == PROTO)
            .collect()
    }

    /// True if the kernel dropped notifications (ENOBUFS): the record is incomplete.
    pub fn overflowed(&self) -> bool {
        self.0.overflowed()
    }

    /// Waits until an RTM_NEWROUTE of protocol 201 for `dst` arrives (or was recorded
    /// already); returns when it was received.
    pub fn wait_new(&self, dst: &str, deadline: Instant) -> Option<Instant> {
        let (lock, cv) = &*self.0.notify;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e.new && e.protocol == PROTO && e.dst == dst)
            {
                return Some(e.at);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            guard = cv
                .wait_timeout(guard, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A neighbour or fdb notification seen by a [`NeighMonitor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighEvent {
    pub at: Instant,
    /// RTM_NEWNEIGH (true) or RTM_DELNEIGH (false).
    pub new: bool,
    /// AF_INET (neighbour), AF_BRIDGE (fdb entry), ...
    pub family: u8,
    pub ifindex: u32,
    pub state: u16,
    /// NDA_DST: the neighbour's address, or an fdb entry's remote.
    pub dst: Option<IpAddr>,
    /// NDA_LLADDR, `aa:bb:..`.
    pub lladdr: Option<String>,
}

impl std::fmt::Display for NeighEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} if{} {}{} state {:#x}",
            if self.new { "NEW" } else { "DEL" },
            match self.family as i32 {
                libc::AF_INET => "inet",
                libc::AF_INET6 => "inet6",
                libc::AF_BRIDGE => "fdb",
                _ => "?",
            },
            self.ifindex,
            self.dst.map(|d| format!("{d} ")).unwrap_or_default(),
            self.lladdr.as_deref().unwrap_or("-"),
            self.state
        )
    }
}

fn parse_neighs(buf: &[u8], at: Instant, out: &mut Vec<NeighEvent>) {
    for (ty, msg) in messages(buf) {
        if (ty != libc::RTM_NEWNEIGH && ty != libc::RTM_DELNEIGH) || msg.len() < 12 {
            continue;
        }
        let family = msg[0];
        let ifindex = u32::from_ne_bytes(msg[4..8].try_into().unwrap_or_default());
        let state = u16::from_ne_bytes([msg[8], msg[9]]);
        let (mut dst, mut lladdr) = (None, None);
        for (aty, data) in attributes(msg, 12) {
            match (aty, data.len()) {
                (1, 4) => dst = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]).into()),
                (1, 16) => {
                    let b: [u8; 16] = data.try_into().unwrap_or_default();
                    dst = Some(Ipv6Addr::from(b).into());
                }
                (2, 6) => {
                    lladdr = Some(
                        data.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    )
                }
                _ => {}
            }
        }
        out.push(NeighEvent {
            at,
            new: ty == libc::RTM_NEWNEIGH,
            family,
            ifindex,
            state,
            dst,
            lladdr,
        });
    }
}

/// Listens to one namespace's neighbour notifications (RTMGRP_NEIGH: ARP/ND entries and the
/// fdb entries of bridges and VXLAN devices) on its own thread and records every event.
/// Stops on drop.
pub struct NeighMonitor(Listener<NeighEvent>);

impl NeighMonitor {
    /// Subscribed when this returns.
    pub fn start(ns: &Netns) -> NeighMonitor {
        NeighMonitor(Listener::start(
            ns,
            libc::RTMGRP_NEIGH as u32,
            "neighbour",
            parse_neighs,
        ))
    }

    pub fn events(&self) -> Vec<NeighEvent> {
        self.0.events()
    }

    pub fn overflowed(&self) -> bool {
        self.0.overflowed()
    }
}

/// Samples that missed a required route: (time since the sampler started, missing routes).
pub type Misses = Vec<(Duration, Vec<String>)>;

/// An nftables set or map element notification seen by an [`NftMonitor`] (one per element of
/// an NFT_MSG_NEWSETELEM / NFT_MSG_DELSETELEM message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftElemEvent {
    pub at: Instant,
    /// NEWSETELEM (true) or DELSETELEM (false).
    pub new: bool,
    pub table: String,
    pub set: String,
    /// The element's key as the kernel holds it (concatenations padded to 4 bytes a field).
    pub key: Vec<u8>,
    /// A verdict map element's jump or goto target.
    pub chain: Option<String>,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
/// NFNLGRP_NFTABLES, as a bind(2) group mask.
const NFNLGRP_NFTABLES_MASK: u32 = 1 << (7 - 1);

/// The attribute type without the NLA_F_NESTED / NLA_F_NET_BYTEORDER flags.
fn nla_type(t: u16) -> u16 {
    t & 0x3fff
}

/// A NUL-terminated netlink string attribute.
fn nla_string(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// Parses the set element messages of one nfnetlink datagram.
fn parse_nft_elems(buf: &[u8], at: Instant, out: &mut Vec<NftElemEvent>) {
    for (ty, msg) in messages(buf) {
        let (subsys, op) = (ty >> 8, ty & 0xff);
        if subsys != NFNL_SUBSYS_NFTABLES || (op != NFT_MSG_NEWSETELEM && op != NFT_MSG_DELSETELEM)
        {
            continue;
        }
        let (mut table, mut set) = (String::new(), String::new());
        let mut elems = Vec::new();
        // struct nfgenmsg: 4 bytes.
        for (aty, data) in attributes(msg, 4) {
            match nla_type(aty) {
                1 => table = nla_string(data),
                2 => set = nla_string(data),
                3 => elems.extend(attributes(data, 0).into_iter().map(|(_, e)| e)),
                _ => {}
            }
        }
        for e in elems {
            let mut key = Vec::new();
            let mut chain = None;
            for (aty, data) in attributes(e, 0) {
                match nla_type(aty) {
                    // NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }
                    1 => {
                        for (t, v) in attributes(data, 0) {
                            if nla_type(t) == 1 {
                                key = v.to_vec();
                            }
                        }
                    }
                    // NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { CODE, CHAIN } }
                    2 => {
                        for (t, v) in attributes(data, 0) {
                            if nla_type(t) == 2 {
                                for (vt, vv) in attributes(v, 0) {
                                    if nla_type(vt) == 2 {
                                        chain = Some(nla_string(vv));
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(NftElemEvent {
                at,
                new: op == NFT_MSG_NEWSETELEM,
                table: table.clone(),
                set: set.clone(),
                key,
                chain,
            });
        }
    }
}

/// Listens to the nftables notifications of one namespace (nfnetlink group
/// NFNLGRP_NFTABLES) and records every set element added or removed, with the time it was
/// received: the kernel sends them once the transaction that made the change has
/// committed, so nothing is polled. Stops on drop.
pub struct NftMonitor(Listener<NftElemEvent>);

impl NftMonitor {
    /// Subscribed when this returns: every later element change in `ns` is recorded.
    pub fn start(ns: &Netns) -> NftMonitor {
        NftMonitor(Listener::start_on(
            ns,
            libc::NETLINK_NETFILTER,
            NFNLGRP_NFTABLES_MASK,
            "nftables",
            parse_nft_elems,
        ))
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<NftElemEvent> {
        self.0.events()
    }

    /// How many events were recorded so far (to wait for later ones only).
    pub fn count(&self) -> usize {
        self.0
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// True if the kernel dropped notifications (ENOBUFS): the record is incomplete.
    pub fn overflowed(&self) -> bool {
        self.0.overflowed()
    }

    /// Waits for the first event after the first `skip` ones that satisfies `pred`.
    pub fn wait_for(
        &self,
        skip: usize,
        deadline: Instant,
        pred: impl Fn(&NftElemEvent) -> bool,
    ) -> Option<NftElemEvent> {
        let (lock, cv) = &*self.0.notify;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let found = self
                .0
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .skip(skip)
                .find(|e| pred(e))
                .cloned();
            if found.is_some() {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            guard = cv
                .wait_timeout(guard, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Samples `proto_routes(ns)` every `every` on a thread until stopped; for each sample,
/// records which of `must_have` were missing.
pub struct RouteSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(usize, Misses)>>,
}

impl RouteSampler {
    pub fn start(ns: &Netns, must_have: BTreeSet<String>, every: Duration) -> RouteSampler {
        let name = ns.name().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = 0usize;
            let mut misses = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let out = Command::new("ip")
                    .args(["-n", &name, "-j", "-4", "route", "show", "proto"])
                    .arg(PROTO.to_string())
                    .stdin(Stdio::null())
                    .output();
                if let Ok(out) = out {
                    if out.status.success() {
                        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                        let have = normalise_routes(&v);
                        samples += 1;
                        let missing: Vec<String> = must_have.difference(&have).cloned().collect();
                        if !missing.is_empty() {
                            misses.push((start.elapsed(), missing));
                        }
                    }
                }
                std::thread::sleep(every);
            }
            (samples, misses)
        });
        RouteSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops; returns (number of samples, samples that missed a route: (time, missing)).
    pub fn finish(mut self) -> (usize, Misses) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RouteSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Interface counters (`ip -s -j link show DEV`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl LinkStats {
    /// `self - earlier`, field by field (saturating).
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        LinkStats {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == LinkStats::default()
    }
}

/// Counters of `dev` inside `ns`.
pub fn link_stats(ns: &Netns, dev: &str) -> LinkStats {
    let v = json_of(ns, &format!("ip -s -j link show dev {dev}"));
    let s = &v[0]["stats64"];
    let n = |dir: &str, k: &str| {
        s[dir][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no stats64.{dir}.{k} for {dev} in {}: {v}", ns.name()))
    };
    LinkStats {
        rx_bytes: n("rx", "bytes"),
        rx_packets: n("rx", "packets"),
        tx_bytes: n("tx", "bytes"),
        tx_packets: n("tx", "packets"),
    }
}

/// Records the notifications of some rtnetlink multicast groups in one namespace, parsed by
/// a [`Parser`], on a thread of its own; stops on drop.
struct Listener<E> {
    events: Arc<Mutex<Vec<E>>>,
    overflow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    notify: Arc<(Mutex<()>, Condvar)>,
}

/// Appends the events of one netlink datagram, received at the given instant.
type Parser<E> = fn(&[u8], Instant, &mut Vec<E>);

impl<E: Clone + Send + 'static> Listener<E> {
    /// Subscribed when this returns: every later notification in `ns` is recorded.
    fn start(ns: &Netns, groups: u32, what: &str, parse: Parser<E>) -> Listener<E> {
        Listener::start_on(ns, libc::NETLINK_ROUTE, groups, what, parse)
    }

    /// [`Listener::start`] on a netlink `protocol` other than NETLINK_ROUTE.
    fn start_on(
        ns: &Netns,
        protocol: libc::c_int,
        groups: u32,
        what: &str,
        parse: Parser<E>,
    ) -> Listener<E> {
        let file = ns
            .open()
            .unwrap_or_else(|e| panic!("open netns {}: {e}", ns.name()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let overflow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let notify = Arc::new((Mutex::new(()), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let (ev, ov, st, nt) = (
            Arc::clone(&events),
            Arc::clone(&overflow),
            Arc::clone(&stop),
            Arc::clone(&notify),
        );
        let thread = std::thread::spawn(move || {
            let fd = match setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|_| netlink_socket(protocol, groups))
            {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 1 << 16];
            let mut batch = Vec::new();
            while !st.load(Ordering::Relaxed) {
                // SAFETY: reads into a buffer we own, on a descriptor we own.
                let r = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                let at = Instant::now();
                if r < 0 {
                    if io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                        ov.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                batch.clear();
                parse(&buf[..r as usize], at, &mut batch);
                if !batch.is_empty() {
                    ev.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(batch.drain(..));
                    nt.1.notify_all();
                }
            }
        });
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{what} monitor in {}: {e}", ns.name()),
            Err(_) => panic!("{what} monitor thread in {} died", ns.name()),
        }
        Listener {
            events,
            overflow,
            stop,
            thread: Some(thread),
            notify,
        }
    }

    fn events(&self) -> Vec<E> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Relaxed)
    }
}

impl<E> Drop for Listener<E> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A netlink socket of `protocol` bound to the multicast `groups`, in the caller's namespace,
/// with a large receive buffer and a 100 ms receive timeout (so the reader sees its stop
/// flag).
fn netlink_socket(protocol: libc::c_int, groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let size: libc::c_int = 8 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = groups;
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// The (type, payload) of each netlink message in one datagram.
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
        if len < 16 || off + len > buf.len() {
            break;
        }
        out.push((ty, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// The (type, data) of each attribute of a message whose fixed header is `header` bytes.
fn attributes(msg: &[u8], header: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut a = header;
    while a + 4 <= msg.len() {
        let alen = u16::from_ne_bytes([msg[a], msg[a + 1]]) as usize;
        let aty = u16::from_ne_bytes([msg[a + 2], msg[a + 3]]);
        if alen < 4 || a + alen > msg.len() {
            break;
        }
        out.push((aty, &msg[a + 4..a + alen]));
        a += (alen + 3) & !3;
    }
    out
}
