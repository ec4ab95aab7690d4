//! The node's own underlay attachment: the address other nodes send its pods' traffic to.

use reef_netlink::Netlink;

#[derive(Debug, Clone)]
pub struct Underlay {
    pub address: ipnetwork::IpNetwork,
    pub index: u32,
    pub mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error("underlay interface {iface}: {detail}")]
    Unusable { iface: String, detail: &'static str },
    #[error(transparent)]
    Netlink(#[from] reef_netlink::Error),
}

/// The underlay address (first global IPv4, else IPv6, with its prefix), index and MTU of
/// `iface`.
pub async fn detect(nl: &Netlink, iface: &str) -> Result<Underlay, UnderlayError> {
    let err = |detail| UnderlayError::Unusable {
        iface: iface.to_string(),
        detail,
    };
    let link = nl
        .link_by_name(iface)
        .await?
        .ok_or_else(|| err("no such interface"))?;
    let addrs = nl.addresses(link.index).await?;
    let global = |a: &&reef_netlink::AddrInfo| match a.address.ip() {
        std::net::IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_loopback(),
    };
    let addr = addrs
        .iter()
        .filter(global)
        .find(|a| a.address.is_ipv4())
        .or_else(|| addrs.iter().find(global))
        .ok_or_else(|| err("has no usable address"))?;
    Ok(Underlay {
        address: addr.address,
        index: link.index,
        mtu: link.mtu.unwrap_or(1500),
    })
}
