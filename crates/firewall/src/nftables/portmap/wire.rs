//! Port mappings as nf_tables map elements: which map a mapping lives in, and its key and
//! data as register images (what `nft --debug=netlink` prints), encoded and decoded.

use super::super::objects::{comment_udata, Elem};
use crate::rules::{Owner, PortMapping, Proto};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Map {
    HostIp4,
    Any4,
    HostIp6,
    Any6,
}

impl Map {
    pub(crate) const ALL: [Map; 4] = [Map::HostIp4, Map::Any4, Map::HostIp6, Map::Any6];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Map::HostIp4 => "hostip4",
            Map::Any4 => "any4",
            Map::HostIp6 => "hostip6",
            Map::Any6 => "any6",
        }
    }

    pub(crate) fn v6(self) -> bool {
        matches!(self, Map::HostIp6 | Map::Any6)
    }
}

/// The nf_tables encoding of a `PortMapping`.
pub(crate) trait Wire: Sized {
    fn map(&self) -> Map;
    fn key(&self) -> Vec<u8>;
    fn data(&self) -> Vec<u8>;
    fn elem(&self, owner: &Owner) -> Elem;
    fn decode(map: Map, e: &Elem) -> Option<Self>;
}

impl Wire for PortMapping {
    fn map(&self) -> Map {
        match (self.pod_ip.is_ipv6(), self.host_ip.is_some()) {
            (false, true) => Map::HostIp4,
            (false, false) => Map::Any4,
            (true, true) => Map::HostIp6,
            (true, false) => Map::Any6,
        }
    }

    fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        match self.host_ip {
            Some(IpAddr::V4(a)) => k.extend_from_slice(&a.octets()),
            Some(IpAddr::V6(a)) => k.extend_from_slice(&a.octets()),
            None => {}
        }
        // Concatenated fields each take whole 4-byte registers: inet_proto (1 byte) and
        // inet_service (2 bytes, network order) are zero-padded.
        k.extend_from_slice(&[self.proto.number(), 0, 0, 0]);
        k.extend_from_slice(&self.host_port.to_be_bytes());
        k.extend_from_slice(&[0, 0]);
        k
    }

    fn data(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(20);
        match self.pod_ip {
            IpAddr::V4(a) => d.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => d.extend_from_slice(&a.octets()),
        }
        d.extend_from_slice(&self.container_port.to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d
    }

    fn elem(&self, owner: &Owner) -> Elem {
        Elem {
            key: self.key(),
            data: Some(self.data()),
            udata: Some(comment_udata(&owner.tag())),
            jump: None,
        }
    }

    /// Decodes an element of `map`; `None` for malformed ones.
    fn decode(map: Map, e: &Elem) -> Option<PortMapping> {
        let (host_ip, rest): (Option<IpAddr>, &[u8]) = match map {
            Map::HostIp4 => {
                let o: [u8; 4] = e.key.get(..4)?.try_into().ok()?;
                (Some(Ipv4Addr::from(o).into()), e.key.get(4..)?)
            }
            Map::HostIp6 => {
                let o: [u8; 16] = e.key.get(..16)?.try_into().ok()?;
                (Some(Ipv6Addr::from(o).into()), e.key.get(16..)?)
            }
            Map::Any4 | Map::Any6 => (None, &e.key[..]),
        };
        if rest.len() != 8 {
            return None;
        }
        let proto = Proto::from_number(rest[0])?;
        let host_port = u16::from_be_bytes([rest[4], rest[5]]);
        let d = e.data.as_deref()?;
        let alen = if map.v6() { 16 } else { 4 };
        if d.len() != alen + 4 {
            return None;
        }
        let pod_ip: IpAddr = if map.v6() {
            let o: [u8; 16] = d[..16].try_into().ok()?;
            Ipv6Addr::from(o).into()
        } else {
            let o: [u8; 4] = d[..4].try_into().ok()?;
            Ipv4Addr::from(o).into()
        };
        let container_port = u16::from_be_bytes([d[alen], d[alen + 1]]);
        Some(PortMapping {
            host_ip,
            host_port,
            proto,
            pod_ip,
            container_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host_ip: Option<&str>, port: u16, proto: Proto, pod: &str, cport: u16) -> PortMapping {
        PortMapping {
            host_ip: host_ip.map(|h| h.parse().unwrap()),
            host_port: port,
            proto,
            pod_ip: pod.parse().unwrap(),
            container_port: cport,
        }
    }

    #[test]
    fn register_layout_matches_nft() {
        // `nft --debug=netlink` for `198.18.0.1 . tcp . 8080 : 10.1.0.2 . 80` prints the
        // words 010012c6 00000006 0000901f : 0200010a 00005000 (little-endian u32s).
        let m = pm(Some("198.18.0.1"), 8080, Proto::Tcp, "10.1.0.2", 80);
        assert_eq!(m.key(), vec![198, 18, 0, 1, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(m.data(), vec![10, 1, 0, 2, 0, 80, 0, 0]);
        let any6 = pm(None, 8080, Proto::Udp, "fd00::2", 80);
        assert_eq!(any6.key(), vec![17, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(any6.data().len(), 20);
        assert_eq!(any6.map(), Map::Any6);
    }

    #[test]
    fn decode_inverts_encode() {
        let owner = Owner {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        for m in [
            pm(Some("198.18.0.1"), 8080, Proto::Tcp, "10.1.0.2", 80),
            pm(None, 53, Proto::Udp, "10.1.0.2", 5353),
            pm(Some("fd00::1"), 443, Proto::Sctp, "fd00::2", 8443),
            pm(None, 1, Proto::Tcp, "fd00::9", 65535),
        ] {
            assert_eq!(PortMapping::decode(m.map(), &m.elem(&owner)), Some(m));
        }
    }

    #[test]
    fn unspecified_host_ip_means_every_address() {
        let m = pm(Some("0.0.0.0"), 80, Proto::Tcp, "10.0.0.2", 80).normalized();
        assert_eq!(m.host_ip, None);
        assert_eq!(m.map(), Map::Any4);
        let m = pm(Some("::"), 80, Proto::Tcp, "fd00::2", 80).normalized();
        assert_eq!(m.map(), Map::Any6);
    }
}
