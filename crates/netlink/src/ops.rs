//! Link, address and route operations on one namespace's rtnetlink socket.

use crate::netns::NetNs;
use crate::{Error, Result};
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::IpAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};

/// What the plugins need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    pub alias: Option<String>,
    pub up: bool,
}

impl LinkInfo {
    /// The summary of a raw link message (for adapters that read more of it themselves).
    pub fn from_message(m: &LinkMessage) -> LinkInfo {
        Self::from_msg(m)
    }

    fn from_msg(m: &LinkMessage) -> LinkInfo {
        let mut li = LinkInfo {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            controller: None,
            kind: None,
            alias: None,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => li.name = n.clone(),
                LinkAttribute::Address(mac) if mac.len() == 6 => li.mac = Some(format_mac(mac)),
                LinkAttribute::Mtu(v) => li.mtu = Some(*v),
                LinkAttribute::Controller(c) => li.controller = Some(*c),
                LinkAttribute::IfAlias(a) => li.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(k) = i {
                            li.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        li
    }
}

pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub address: IpNetwork,
    pub index: u32,
}

/// A route to install or found installed (main table unless `table` says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
    /// The route's origin (`rtm_protocol`): daemons tag their routes with their own number so
    /// they can find and remove exactly those later. None = rtnetlink's default ("static").
    pub protocol: Option<u8>,
    pub kind: RouteKind,
    /// The gateway is reachable on `oif` even without a covering connected route (VXLAN).
    pub onlink: bool,
}

/// The route types Reef uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteKind {
    #[default]
    Unicast,
    /// Drops traffic silently: a node's own, partly unused blocks must not leak back out.
    Blackhole,
    /// Delivered to this host (table local): the service CIDR, so a VIP that nothing
    /// DNATed reaches the firewall's input hook and is refused there.
    Local,
}

impl RouteSpec {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> RouteSpec {
        RouteSpec {
            dst,
            gw,
            oif: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
            protocol: None,
            kind: RouteKind::Unicast,
            onlink: false,
        }
    }
}

/// A permanent neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourInfo {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<String>,
    pub permanent: bool,
}

/// "aa:bb:cc:dd:ee:ff" to bytes.
pub fn parse_mac(s: &str) -> Result<Vec<u8>> {
    let bytes: std::result::Result<Vec<u8>, _> =
        s.split(':').map(|b| u8::from_str_radix(b, 16)).collect();
    match bytes {
        Ok(b) if b.len() == 6 => Ok(b),
        _ => Err(Error::Invalid(format!("invalid MAC address \"{s}\""))),
    }
}

pub type RouteInfo = RouteSpec;

/// A socket being opened inside another namespace (see `Netlink::open_in_background`).
pub struct PendingNetlink {
    handle: Option<std::thread::JoinHandle<Result<RawFd>>>,
}

impl PendingNetlink {
    /// Waits for the socket and drives it from the caller's runtime.
    pub fn connect(mut self) -> Result<Netlink> {
        let fd = self.join()?;
        Ok(Netlink::from_fd(fd))
    }

    fn join(&mut self) -> Result<RawFd> {
        let h = self
            .handle
            .take()
            .ok_or_else(|| Error::Invalid("netns socket already taken".into()))?;
        h.join()
            .map_err(|_| Error::Invalid("netns thread panicked".into()))?
    }
}

impl Drop for PendingNetlink {
    fn drop(&mut self) {
        if self.handle.is_some() {
            if let Ok(fd) = self.join() {
                // SAFETY: the fd came from Socket::new and nobody else owns it.
                drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            }
        }
    }
}

/// An rtnetlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace. Must run inside a tokio runtime.
    pub fn current() -> Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("open rtnetlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside `ns`. `in_ns` runs on the namespace thread first (sysctls that must
    /// be written from inside the namespace). Must run inside a tokio runtime.
    pub fn open_in<F>(ns: &NetNs, in_ns: F) -> Result<Netlink>
    where
        F: FnOnce() -> Result<()> + Send,
    {
        let fd: RawFd = ns.run(|| -> Result<RawFd> {
            in_ns()?;
            let sock = Socket::new(NETLINK_ROUTE)
                .map_err(|e| Error::io("open rtnetlink socket in netns", e))?;
            Ok(sock.into_raw_fd())
        })??;
        Ok(Netlink::from_fd(fd))
    }

    /// Starts opening a socket inside `ns` on its own thread, so the namespace switch overlaps
    /// whatever the caller does next; `PendingNetlink::connect` picks it up.
    pub fn open_in_background(ns: &NetNs) -> Result<PendingNetlink> {
        let file = ns.try_clone_file()?;
        let path = ns.path().to_string();
        let handle = std::thread::spawn(move || -> Result<RawFd> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::io(format!("setns {path}"), e.into()))?;
            let sock = Socket::new(NETLINK_ROUTE)
                .map_err(|e| Error::io("open rtnetlink socket in netns", e))?;
            Ok(sock.into_raw_fd())
        });
        Ok(PendingNetlink {
            handle: Some(handle),
        })
    }

    fn from_fd(fd: RawFd) -> Netlink {
        // SAFETY: fd was just created by Socket::new and ownership is transferred here.
        let sock = unsafe { TokioSocket::from_raw_fd(fd) };
        let (conn, handle, _) = rtnetlink::from_socket(sock);
        tokio::spawn(conn);
        Netlink { handle }
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(LinkInfo::from_msg(&m))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = Error::nl(format!("get link {name}"), e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl("list links", e))?;
        Ok(msgs.iter().map(LinkInfo::from_msg).collect())
    }

    /// Returns the bridge `name`, creating it (up, with `mtu`) if absent. Safe when many
    /// processes race: whoever loses the create gets EEXIST and reads the winner's bridge.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<LinkInfo> {
        if let Some(l) = self.link_by_name(name).await? {
            return self.ensure_bridge_kind_up(l).await;
        }
        let mut b = LinkBridge::new(name).up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        match self.handle.link().add(b.build()).execute().await {
            Ok(()) => {}
            Err(e) => {
                let e = Error::nl(format!("create bridge {name}"), e);
                if !e.is_exists() {
                    return Err(e);
                }
            }
        }
        let l = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| Error::Invalid(format!("bridge {name} vanished after creation")))?;
        self.ensure_bridge_kind_up(l).await
    }

    async fn ensure_bridge_kind_up(&self, l: LinkInfo) -> Result<LinkInfo> {
        if l.kind.as_deref() != Some("bridge") {
            return Err(Error::Invalid(format!(
                "{} exists and is not a bridge (kind {})",
                l.name,
                l.kind.as_deref().unwrap_or("unknown")
            )));
        }
        if !l.up {
            self.set_up(l.index).await?;
        }
        Ok(l)
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set link {index} up"), e))
    }

    /// Creates a veth pair in one request: the host end `host` here (up, under `controller`),
    /// the peer `peer` directly inside `peer_ns`. The kernel ignores IFLA_IFALIAS when it
    /// creates a link, so `alias` takes a second request; if that fails the pair is deleted
    /// again. A process killed between the two leaves an unaliased host veth, which GC
    /// collects by its name (see reef-attach). Creating the pair in the peer's namespace and
    /// moving the host end out with its alias would close that window, but a namespace move
    /// waits for an RCU grace period: it made ADD five times slower here.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: &NetNs,
        mtu: Option<u32>,
        controller: Option<u32>,
        alias: Option<&str>,
    ) -> Result<()> {
        self.create_veth_with_mac(host, peer, peer_ns, mtu, controller, alias, None)
            .await
    }

    /// `create_veth`, with the host end's MAC fixed (routed mode: every host veth answers as
    /// the same gateway MAC, so a pod's neighbour entry never goes stale).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_veth_with_mac(
        &self,
        host: &str,
        peer: &str,
        peer_ns: &NetNs,
        mtu: Option<u32>,
        controller: Option<u32>,
        alias: Option<&str>,
        host_mac: Option<&[u8]>,
    ) -> Result<()> {
        let mut p = LinkUnspec::new_with_name(peer).setns_by_fd(peer_ns.fd());
        if let Some(m) = mtu {
            p = p.mtu(m);
        }
        let mut v = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
            .up();
        if let Some(m) = mtu {
            v = v.mtu(m);
        }
        if let Some(c) = controller {
            v = v.controller(c);
        }
        if let Some(mac) = host_mac {
            v = v.address(mac.to_vec());
        }
        self.handle
            .link()
            .add(v.build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("create veth {host} (peer {peer})"), e))?;
        if let Some(a) = alias {
            let labelled = self
                .handle
                .link()
                .set(LinkUnspec::new_with_name(host).alias(a).build())
                .execute()
                .await
                .map_err(|e| Error::nl(format!("set alias of {host}"), e));
            if labelled.is_err() {
                // An unlabelled pair must not outlive a failed ADD.
                let _ = self.delete_link(host).await;
            }
            labelled?;
        }
        Ok(())
    }

    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(on).build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set hairpin on link {index}"), e))
    }

    /// Deletes a link by name; Ok(false) when it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        applied(
            self.handle.link().del_with_message(msg).execute().await,
            format!("delete link {name}"),
            Error::is_not_found,
        )
    }

    /// Deletes a link and returns once it has left the namespace, leaving the kernel's
    /// reclamation wait to a detached child (see `detached`). Falls back to a plain delete
    /// when a child cannot be used or fails. Ok(false) when the link did not exist.
    pub async fn delete_link_fast(&self, name: &str) -> Result<bool> {
        let child = match crate::detached::start(name) {
            crate::detached::Started::Child(pid) => pid,
            crate::detached::Started::Unavailable => return self.delete_link(name).await,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if self.link_by_name(name).await?.is_none() {
                return Ok(true);
            }
            if let Some(verdict) = crate::detached::child_result(child) {
                // The child finished but the link is still listed: it failed, or raced with
                // someone else. Decide synchronously.
                if let Err(e) = verdict {
                    if e.is_not_found() {
                        return Ok(false);
                    }
                }
                return self.delete_link(name).await;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Invalid(format!(
                    "link {name} still present after 10 s"
                )));
            }
            // Unregistering takes ~1 ms; poll finely (this is a short-lived plugin process).
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Adds an address; Ok(false) if it was already there. IPv6 addresses skip duplicate
    /// address detection (IPAM already guarantees uniqueness), so they are usable at once
    /// instead of staying "tentative" for a second or more.
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<bool> {
        let mut req = self.handle.address().add(index, addr.ip(), addr.prefix());
        if addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        applied(
            req.execute().await,
            format!("add address {addr} to link {index}"),
            Error::is_exists,
        )
    }

    pub async fn addresses(&self, index: u32) -> Result<Vec<AddrInfo>> {
        Ok(self
            .all_addresses_filtered(Some(index))
            .await?
            .into_iter()
            .filter(|a| a.index == index)
            .collect())
    }

    pub async fn add_route(&self, r: &RouteSpec) -> Result<()> {
        self.send_route(r, false).await
    }

    /// Adds or replaces the route to `r.dst` (same table, priority and type) in one atomic
    /// request: traffic never sees a moment without a route.
    pub async fn replace_route(&self, r: &RouteSpec) -> Result<()> {
        self.send_route(r, true).await
    }

    /// Deletes a route; Ok(false) when it did not exist.
    pub async fn delete_route(&self, r: &RouteSpec) -> Result<bool> {
        let msg = route_message(r)?;
        applied(
            self.handle.route().del(msg).execute().await,
            format!("delete route {}", r.dst),
            Error::is_not_found,
        )
    }

    async fn send_route(&self, r: &RouteSpec, replace: bool) -> Result<()> {
        let msg = route_message(r)?;
        let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
        let req = self.handle.route().add(msg);
        let req = if replace { req.replace() } else { req };
        req.execute()
            .await
            .map_err(|e| Error::nl(format!("add route {}{via}", r.dst), e))
    }

    /// Routes of both tables' families tagged with `protocol` in the main table (unicast and
    /// blackhole): what a daemon owning that protocol number programmed.
    pub async fn routes_by_protocol(&self, v6: bool, protocol: u8) -> Result<Vec<RouteInfo>> {
        let msgs = self.route_messages(v6).await?;
        Ok(msgs
            .iter()
            .filter(|m| u8::from(m.header.protocol) == protocol)
            .filter(|m| matches!(m.header.kind, RouteType::Unicast | RouteType::BlackHole))
            .filter_map(|m| route_info(m, false))
            .collect())
    }

    /// Every route of the main table for one family, whatever its type or protocol: what a
    /// daemon must check before it adds a route it does not own.
    pub async fn main_table_routes(&self, v6: bool) -> Result<Vec<RouteInfo>> {
        let msgs = self.route_messages(v6).await?;
        Ok(msgs.iter().filter_map(|m| route_info(m, false)).collect())
    }

    async fn route_messages(&self, v6: bool) -> Result<Vec<RouteMessage>> {
        let query: RouteMessage = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        self.handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl("list routes", e))
    }

    /// Adds (or replaces) a permanent neighbour entry `ip -> mac` on link `index`.
    pub async fn set_permanent_neighbour(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::nl(format!("add neighbour {ip} on link {index}"), e))
    }

    /// Deletes the neighbour entry for `ip` on link `index`; Ok(false) when absent.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<bool> {
        let mut msg = NeighbourMessage::default();
        msg.header.ifindex = index;
        msg.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        applied(
            self.handle.neighbours().del(msg).execute().await,
            format!("delete neighbour {ip} on link {index}"),
            Error::is_not_found,
        )
    }

    /// Neighbour entries of link `index` (both families).
    pub async fn neighbours(&self, index: u32) -> Result<Vec<NeighbourInfo>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl("list neighbours", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            ip = Some(IpAddr::V4(*v4))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                            ip = Some(IpAddr::V6(*v6))
                        }
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            mac = Some(format_mac(l))
                        }
                        _ => {}
                    }
                }
                Some(NeighbourInfo {
                    index,
                    ip: ip?,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| Error::nl(format!("set mtu {mtu} on link {index}"), e))
    }

    /// Addresses of every link (for finding which link carries an address).
    pub async fn all_addresses(&self) -> Result<Vec<AddrInfo>> {
        self.all_addresses_filtered(None).await
    }

    async fn all_addresses_filtered(&self, index: Option<u32>) -> Result<Vec<AddrInfo>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl("list addresses", e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                IpNetwork::new(ip, m.header.prefix_len)
                    .ok()
                    .map(|address| AddrInfo {
                        address,
                        index: m.header.index,
                    })
            })
            .collect())
    }

    /// The raw rtnetlink handle, for adapters built on this one (VXLAN, FDB).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// Ok(true) when the request was applied, Ok(false) when the kernel said it was already so
/// (`benign`: the object was absent for a delete, present for an add).
fn applied(
    res: std::result::Result<(), rtnetlink::Error>,
    context: String,
    benign: fn(&Error) -> bool,
) -> Result<bool> {
    match res {
        Ok(()) => Ok(true),
        Err(e) => {
            let e = Error::nl(context, e);
            if benign(&e) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// The netlink message for a route spec (add, replace and delete share it).
fn route_message(r: &RouteSpec) -> Result<RouteMessage> {
    {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.ip(), r.dst.prefix())
            .map_err(|e| Error::Invalid(format!("route {}: {e}", r.dst)))?;
        if let Some(gw) = r.gw {
            b = b
                .gateway(gw)
                .map_err(|e| Error::Invalid(format!("route {} via {gw}: {e}", r.dst)))?;
        }
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        if let Some(p) = r.priority {
            b = b.priority(p);
        }
        if let Some(t) = r.table {
            b = b.table_id(t);
        }
        if let Some(s) = r.scope {
            b = b.scope(RouteScope::from(s));
        } else if r.gw.is_none() && r.kind == RouteKind::Unicast {
            b = b.scope(RouteScope::Link);
        }
        if let Some(p) = r.protocol {
            b = b.protocol(RouteProtocol::from(p));
        }
        match r.kind {
            RouteKind::Blackhole => b = b.kind(RouteType::BlackHole),
            RouteKind::Local => b = b.kind(RouteType::Local),
            RouteKind::Unicast => {}
        }
        if r.onlink {
            b = b.onlink();
        }
        let mut msg = b.build();
        let mut metrics = Vec::new();
        if let Some(m) = r.mtu {
            metrics.push(RouteMetric::Mtu(m));
        }
        if let Some(m) = r.advmss {
            metrics.push(RouteMetric::Advmss(m));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        Ok(msg)
    }
}

impl Netlink {
    /// Unicast routes of the main table (or every table with `all_tables`) for one family.
    pub async fn routes(&self, v6: bool, all_tables: bool) -> Result<Vec<RouteInfo>> {
        let msgs = self.route_messages(v6).await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.kind == RouteType::Unicast)
            .filter_map(|m| route_info(m, all_tables))
            .collect())
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_info(m: &RouteMessage, all_tables: bool) -> Option<RouteInfo> {
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let mut dst_ip: IpAddr = if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    let mut r = RouteSpec::new(IpNetwork::new(dst_ip, 0).ok()?, None);
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst_ip = route_addr(d)?,
            RouteAttribute::Gateway(g) => r.gw = route_addr(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.priority = Some(*p),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Metrics(ms) => {
                for metric in ms {
                    match metric {
                        RouteMetric::Mtu(v) => r.mtu = Some(*v),
                        RouteMetric::Advmss(v) => r.advmss = Some(*v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !all_tables && table != 254 {
        return None;
    }
    r.table = Some(table);
    r.scope = Some(u8::from(m.header.scope));
    r.protocol = Some(u8::from(m.header.protocol));
    r.onlink = m.header.flags.contains(RouteFlags::Onlink);
    if m.header.kind == RouteType::BlackHole {
        r.kind = RouteKind::Blackhole;
    }
    r.dst = IpNetwork::new(dst_ip, m.header.destination_prefix_length).ok()?;
    Some(r)
}
