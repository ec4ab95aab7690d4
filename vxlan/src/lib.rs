//! The VXLAN overlay's kernel objects (flannel's vxlan backend): one VXLAN device per node,
//! and for every remote node a permanent FDB entry (its VTEP MAC → its underlay address). The
//! neighbour entries (VTEP IP → VTEP MAC) and onlink routes go through `reef-netlink`.

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use reef_netlink::{format_mac, Error, Netlink, Result};
use rtnetlink::LinkVxlan;
use std::net::{IpAddr, Ipv4Addr};

/// The device's name on every node.
pub const DEVICE: &str = "reef.vxlan";

/// The MTU a pod gets when its network sets none: on a node whose agent runs a VXLAN mode,
/// the overlay device's (underlay − 50), so nothing fragments or depends on PMTU discovery
/// on the way to another node; otherwise the kernel's default (None).
pub async fn pod_mtu(host: &Netlink, configured: Option<u32>) -> Result<Option<u32>> {
    if configured.is_some() {
        return Ok(configured);
    }
    Ok(host.link_by_name(DEVICE).await?.and_then(|l| l.mtu))
}
/// IANA's VXLAN port (flannel defaults to Linux's historical 8472).
pub const PORT: u16 = 4789;
/// Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8: what the overlay costs each packet's MTU.
pub const OVERHEAD: u32 = 50;

/// What the device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub mtu: u32,
}

/// The device as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub mac: String,
    pub mtu: Option<u32>,
}

fn vxlan_params(m: &LinkMessage) -> (Option<u32>, Option<u16>, Option<Ipv4Addr>, Option<bool>) {
    let (mut vni, mut port, mut local, mut learning) = (None, None, None, None);
    for a in &m.attributes {
        let LinkAttribute::LinkInfo(infos) = a else {
            continue;
        };
        for i in infos {
            let LinkInfo::Data(InfoData::Vxlan(vs)) = i else {
                continue;
            };
            for v in vs {
                match v {
                    InfoVxlan::Id(x) => vni = Some(*x),
                    InfoVxlan::Port(p) => port = Some(*p),
                    InfoVxlan::Local(l) => local = Some(*l),
                    InfoVxlan::Learning(l) => learning = Some(*l),
                    _ => {}
                }
            }
        }
    }
    (vni, port, local, learning)
}

async fn link_message(nl: &Netlink, name: &str) -> Result<Option<LinkMessage>> {
    let mut s = nl
        .handle()
        .link()
        .get()
        .match_name(name.to_string())
        .execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| -c.get()) == Some(19 /* ENODEV */) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::Invalid(format!("get link {name}: {e}"))),
    }
}

/// Makes `reef.vxlan` match `spec` (creating it, or re-creating it when its VNI, port or
/// local address differ, which only a cluster re-init can cause), up, with the spec's MTU.
pub async fn ensure_device(nl: &Netlink, spec: &DeviceSpec) -> Result<Device> {
    if let Some(m) = link_message(nl, DEVICE).await? {
        let (vni, port, local, learning) = vxlan_params(&m);
        let matches = vni == Some(spec.vni)
            && port == Some(PORT)
            && local == Some(spec.local)
            && learning == Some(false);
        if matches {
            let li = reef_netlink::LinkInfo::from_message(&m);
            if li.mtu != Some(spec.mtu) {
                nl.set_mtu(li.index, spec.mtu).await?;
            }
            if !li.up {
                nl.set_up(li.index).await?;
            }
            return find(nl).await;
        }
        nl.delete_link(DEVICE).await?;
    }
    let msg = LinkVxlan::new(DEVICE, spec.vni)
        .dev(spec.underlay_index)
        .port(PORT)
        .local(spec.local)
        .learning(false)
        .mtu(spec.mtu)
        .up()
        .build();
    if let Err(e) = nl.handle().link().add(msg).execute().await {
        return Err(Error::Invalid(format!("create {DEVICE}: {e}")));
    }
    find(nl).await
}

async fn find(nl: &Netlink) -> Result<Device> {
    let l = nl
        .link_by_name(DEVICE)
        .await?
        .ok_or_else(|| Error::Invalid(format!("{DEVICE} vanished")))?;
    Ok(Device {
        index: l.index,
        mac: l.mac.unwrap_or_default(),
        mtu: l.mtu,
    })
}

/// Removes the device (mode switched away from VXLAN); its FDB, neighbours and routes go with it.
pub async fn delete_device(nl: &Netlink) -> Result<bool> {
    nl.delete_link(DEVICE).await
}

/// Sets the permanent FDB entry `mac → dst` on the device (`bridge fdb replace … self`).
pub async fn set_fdb(nl: &Netlink, index: u32, mac: &[u8], dst: IpAddr) -> Result<()> {
    let mut req = nl.handle().neighbours().add_bridge(index, mac).replace();
    let m = req.message_mut();
    m.header.flags = NeighbourFlags::Own;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(neigh_addr(dst)));
    req.execute()
        .await
        .map_err(|e| Error::Invalid(format!("fdb {} dst {dst}: {e}", format_mac(mac))))
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// Deletes the FDB entry for `mac` (and `dst`) on the device; Ok(false) when absent.
pub async fn delete_fdb(nl: &Netlink, index: u32, mac: &[u8], dst: IpAddr) -> Result<bool> {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(neigh_addr(dst)));
    match nl.handle().neighbours().del(m).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| -c.get()) == Some(2 /* ENOENT */) =>
        {
            Ok(false)
        }
        Err(e) => Err(Error::Invalid(format!(
            "delete fdb {} dst {dst}: {e}",
            format_mac(mac)
        ))),
    }
}

/// The device's FDB entries with a remote destination: (MAC, underlay address).
pub async fn fdb_entries(nl: &Netlink, index: u32) -> Result<Vec<(String, IpAddr)>> {
    let msgs: Vec<NeighbourMessage> = nl
        .handle()
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::Invalid(format!("list fdb: {e}")))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.ifindex == index)
        .filter_map(|m| {
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        mac = Some(format_mac(l))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        dst = Some(IpAddr::V6(*v6))
                    }
                    // Bridge-family messages carry the destination as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = match b.len() {
                            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            Some((mac?, dst?))
        })
        .collect())
}
