//! Underlay switches, simulated hosts and routers, all made of network namespaces.
//!
//! ```text
//!   SimHost h1 ─eth0══h1┐                      ┌h1══eth0─ SimHost h3
//!   SimHost h2 ─eth0══h2┤ Underlay A (br0)     │ Underlay B (br0)
//!                     r1┘ 198.18.1.0/24        └r1 198.18.2.0/24
//!                      ║                          ║
//!                     eth0 .254 ── Router ── eth1 .254
//! ```
//!
//! Every box is its own namespace; `══` is a veth pair created from inside one namespace with
//! its peer placed straight into the other, so the root namespace never sees a link.
//!
//! Routing: a router only knows its two connected subnets. Hosts get a route to the *other*
//! subnet of every router joined to their underlay, automatically and whatever the order:
//! [`Underlay::add_host`] adds routes for routers already joined, and [`Router::join`] adds
//! them to hosts that already exist. Hosts get no default route. Anything else (several hops,
//! pod routes) is the test's business: [`SimHost::add_route`].

use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::addr::{Ipv4Net, ALLOWED};
use crate::Netns;

/// Name of the bridge inside an underlay's namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// Name of a host's underlay interface inside its namespace.
pub const HOST_IFACE: &str = "eth0";

static UNDERLAY_IDS: AtomicU64 = AtomicU64::new(1);

/// Runs `bash -euo pipefail -c SCRIPT` in `ns`; an error carries the script and its stderr.
pub(crate) fn script(ns: &Netns, script: &str) -> io::Result<String> {
    let out = ns
        .cmd("bash")
        .args(["-euo", "pipefail", "-c", script])
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "in netns {}: script failed ({}):\n{script}\nstderr: {}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A route every host of an underlay should have: to `dst` via a router's address.
#[derive(Debug)]
struct Gateway {
    dst: Ipv4Net,
    via: Ipv4Addr,
    router: Weak<()>,
}

/// An underlay switch: a namespace holding one Linux bridge (`br0`, no address) that the
/// hosts' and routers' veths are attached to. Dropping it deletes the namespace, which also
/// removes the host-side ends of its veths.
///
/// Addresses: hosts get the subnet's first addresses in order (.1, .2, ...), routers the last
/// ones downwards (.254, then .253, ... in a /24).
///
/// Subnets need not be unique across fixtures: every fixture's namespaces are private to it
/// (nothing is attached to the root namespace or to another fixture), so two tests may both
/// use 198.18.1.0/24 at the same time. They must be inside 198.18.0.0/15.
#[derive(Debug)]
pub struct Underlay {
    ns: Netns,
    id: u64,
    net: Ipv4Net,
    subnet: String,
    next_host: u64,
    next_router: u64,
    next_port: u32,
    gateways: Vec<Gateway>,
    hosts: Vec<Weak<Netns>>,
}

impl Underlay {
    /// Creates the switch for `subnet` (e.g. `"198.18.1.0/24"`; inside 198.18.0.0/15, prefix
    /// length at most 30).
    pub fn new(subnet: &str) -> io::Result<Underlay> {
        let net = Ipv4Net::parse(subnet)?;
        if !net.within(&ALLOWED) || net.prefix() > 30 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("underlay subnet {net}: must be inside {ALLOWED} with a prefix of /30 or shorter"),
            ));
        }
        let ns = Netns::new("ul")?;
        script(
            &ns,
            &format!("ip link add {UNDERLAY_BRIDGE} type bridge; ip link set {UNDERLAY_BRIDGE} up"),
        )?;
        Ok(Underlay {
            ns,
            id: UNDERLAY_IDS.fetch_add(1, Ordering::Relaxed),
            net,
            subnet: net.to_string(),
            next_host: 1,
            next_router: net.size() - 2,
            next_port: 1,
            gateways: Vec::new(),
            hosts: Vec::new(),
        })
    }

    /// The subnet, e.g. `"198.18.1.0/24"`.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The prefix length, e.g. 24.
    pub fn prefix(&self) -> u8 {
        self.net.prefix()
    }

    /// The network address, e.g. 198.18.1.0.
    pub fn network(&self) -> Ipv4Addr {
        self.net.network()
    }

    /// True if `ip` is in this underlay's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.net.contains(ip)
    }

    /// The switch's own namespace (holds `br0` and one port per host/router).
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Adds a simulated host named `name` (also the prefix of its namespace name, so ASCII
    /// letters, digits, `-`, `_`, `.`) with the next host address. The host also gets a route
    /// to the far subnet of every router joined to this underlay so far.
    pub fn add_host(&mut self, name: &str) -> io::Result<SimHost> {
        let addr = self.alloc(false)?;
        let port = self.alloc_port('h');
        let ns = Arc::new(Netns::new(name)?);
        // Created from the switch's side, peer placed directly in the host's namespace.
        script(
            &self.ns,
            &format!(
                "ip link add {port} type veth peer name {HOST_IFACE} netns {host}\n\
                 ip link set {port} master {UNDERLAY_BRIDGE}\n\
                 ip link set {port} up",
                host = ns.name()
            ),
        )?;
        let mut setup = format!(
            "ip addr add {addr}/{prefix} dev {HOST_IFACE}\n\
             ip link set {HOST_IFACE} up\n\
             sysctl -qw net.ipv4.ip_forward=1\n",
            prefix = self.net.prefix()
        );
        for gw in self.live_gateways() {
            setup += &format!("ip route add {} via {}\n", gw.dst, gw.via);
        }
        script(&ns, &setup)?;
        self.hosts.retain(|h| h.strong_count() > 0);
        self.hosts.push(Arc::downgrade(&ns));
        Ok(SimHost {
            ns,
            name: name.to_owned(),
            addr,
            net: self.net,
            subnet: self.subnet.clone(),
            port,
        })
    }

    fn live_gateways(&self) -> impl Iterator<Item = &Gateway> {
        self.gateways.iter().filter(|g| g.router.strong_count() > 0)
    }

    fn alloc(&mut self, router: bool) -> io::Result<Ipv4Addr> {
        if self.next_host > self.next_router {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("underlay {}: no free address left", self.subnet),
            ));
        }
        let offset = if router {
            self.next_router -= 1;
            self.next_router + 1
        } else {
            self.next_host += 1;
            self.next_host - 1
        };
        Ok(self.net.at(offset))
    }

    fn alloc_port(&mut self, kind: char) -> String {
        let n = self.next_port;
        self.next_port += 1;
        format!("{kind}{n}")
    }
}

/// A simulated host: its own namespace with `lo` up, IPv4 forwarding on, and one underlay
/// interface `eth0` (a veth whose peer is a port of the underlay's bridge) with the host's
/// address. Dropping it deletes the namespace (and so the veth pair).
#[derive(Debug)]
pub struct SimHost {
    // Shared only with the underlay's weak list (so routers joined later can add routes).
    ns: Arc<Netns>,
    name: String,
    addr: Ipv4Addr,
    net: Ipv4Net,
    subnet: String,
    port: String,
}

impl SimHost {
    /// The host's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The name given to [`Underlay::add_host`] (the namespace name is [`Netns::name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlay interface inside the host: `"eth0"`.
    pub fn iface(&self) -> &str {
        HOST_IFACE
    }

    /// The host's underlay address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The underlay's prefix length.
    pub fn prefix(&self) -> u8 {
        self.net.prefix()
    }

    /// The host's underlay subnet, e.g. `"198.18.1.0/24"`.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The name of the host's port on the underlay bridge (in [`Underlay::ns`]), e.g. `"h1"`.
    pub fn switch_port(&self) -> &str {
        &self.port
    }

    /// A [`Command`] that runs `program` inside the host's namespace (see [`Netns::cmd`]).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        self.ns.cmd(program)
    }

    /// `ip route add DST via VIA` inside the host (e.g. for topologies of several hops).
    pub fn add_route(&self, dst: &str, via: Ipv4Addr) -> io::Result<()> {
        let dst = Ipv4Net::parse(dst)?;
        script(&self.ns, &format!("ip route add {dst} via {via}")).map(drop)
    }
}

/// One side of a router.
#[derive(Debug, Clone, Copy)]
struct Side {
    underlay: u64,
    net: Ipv4Net,
    addr: Ipv4Addr,
}

/// A router between two underlays: its own namespace with `eth0` on the first underlay and
/// `eth1` on the second, each with the underlay's top address (.254 in a /24), IPv4
/// forwarding on, and no routes beyond the two connected subnets (no default route, nothing
/// about pod addresses).
///
/// [`Router::join`] gives every present host of either underlay a route to the other subnet
/// through it, and the underlays remember it so hosts added later get the route too. After
/// the router is dropped, later hosts no longer get the route (routes already added stay and
/// lead nowhere).
#[derive(Debug)]
pub struct Router {
    ns: Netns,
    sides: [Side; 2],
    alive: Arc<()>,
}

impl Router {
    /// Connects `a` and `b` (whose subnets must not overlap, and which must not already be
    /// joined by another live router).
    pub fn join(a: &mut Underlay, b: &mut Underlay) -> io::Result<Router> {
        if a.net.overlaps(&b.net) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot route between overlapping subnets {} and {}",
                    a.net, b.net
                ),
            ));
        }
        for (x, y) in [(&*a, &*b), (&*b, &*a)] {
            if let Some(gw) = x.live_gateways().find(|g| g.dst.overlaps(&y.net)) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "underlay {} already reaches {} via {}",
                        x.net, gw.dst, gw.via
                    ),
                ));
            }
        }
        let addr_a = a.alloc(true)?;
        let addr_b = b.alloc(true)?;
        let ns = Netns::new("rt")?;
        for (ul, iface) in [(&mut *a, "eth0"), (&mut *b, "eth1")] {
            let port = ul.alloc_port('r');
            script(
                &ul.ns,
                &format!(
                    "ip link add {port} type veth peer name {iface} netns {rt}\n\
                     ip link set {port} master {UNDERLAY_BRIDGE}\n\
                     ip link set {port} up",
                    rt = ns.name()
                ),
            )?;
        }
        script(
            &ns,
            &format!(
                "ip addr add {addr_a}/{pa} dev eth0\n\
                 ip addr add {addr_b}/{pb} dev eth1\n\
                 ip link set eth0 up\n\
                 ip link set eth1 up\n\
                 sysctl -qw net.ipv4.ip_forward=1",
                pa = a.net.prefix(),
                pb = b.net.prefix()
            ),
        )?;
        let router = Router {
            ns,
            sides: [
                Side {
                    underlay: a.id,
                    net: a.net,
                    addr: addr_a,
                },
                Side {
                    underlay: b.id,
                    net: b.net,
                    addr: addr_b,
                },
            ],
            alive: Arc::new(()),
        };
        let (net_a, net_b) = (a.net, b.net);
        for (ul, dst, via) in [(a, net_b, addr_a), (b, net_a, addr_b)] {
            ul.hosts.retain(|h| h.strong_count() > 0);
            for host in ul.hosts.iter().filter_map(Weak::upgrade) {
                script(&host, &format!("ip route add {dst} via {via}"))?;
            }
            ul.gateways.retain(|g| g.router.strong_count() > 0);
            ul.gateways.push(Gateway {
                dst,
                via,
                router: Arc::downgrade(&router.alive),
            });
        }
        Ok(router)
    }

    /// The router's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// A [`Command`] that runs `program` inside the router's namespace.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        self.ns.cmd(program)
    }

    /// The router's addresses: on the first underlay (`eth0`) and on the second (`eth1`).
    pub fn addrs(&self) -> (Ipv4Addr, Ipv4Addr) {
        (self.sides[0].addr, self.sides[1].addr)
    }

    /// The router's address on `underlay`, if it is joined to it.
    pub fn addr_on(&self, underlay: &Underlay) -> Option<Ipv4Addr> {
        self.sides
            .iter()
            .find(|s| s.underlay == underlay.id)
            .map(|s| s.addr)
    }

    /// The two subnets it routes between, e.g. `("198.18.1.0/24", "198.18.2.0/24")`.
    pub fn subnets(&self) -> (String, String) {
        (self.sides[0].net.to_string(), self.sides[1].net.to_string())
    }
}
