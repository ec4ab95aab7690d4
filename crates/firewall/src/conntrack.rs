//! Conntrack cleanup over ctnetlink (hand-written like `nfnetlink`, same socket type).
//!
//! Only a rare path uses it: when a UDP port mapping is removed, conntrack entries that were
//! DNATed through it would keep steering the flow's later datagrams to the old pod (UDP
//! entries live as long as traffic keeps flowing). TCP entries die with their connection.
//!
//! The table of the family is dumped and filtered here (not with the kernel's `CTA_FILTER`),
//! then every match is deleted by its original tuple; an entry that disappeared meanwhile
//! (ENOENT) is fine.

use crate::nfnetlink::{
    attr, Msg, NfNetlink, NFNL_SUBSYS_CTNETLINK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn ct_type(t: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | t
}

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    fn parse(buf: &[u8]) -> Option<Tuple> {
        let ip = attr(buf, CTA_TUPLE_IP)?;
        let addr = |v4: u16, v6: u16| -> Option<IpAddr> {
            if let Some(a) = attr(ip, v4) {
                let o: [u8; 4] = a.get(..4)?.try_into().ok()?;
                return Some(Ipv4Addr::from(o).into());
            }
            let a = attr(ip, v6)?;
            let o: [u8; 16] = a.get(..16)?.try_into().ok()?;
            Some(Ipv6Addr::from(o).into())
        };
        let proto = attr(buf, CTA_TUPLE_PROTO)?;
        let port = |t: u16| {
            attr(proto, t)
                .and_then(|p| p.get(..2))
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .unwrap_or(0)
        };
        Some(Tuple {
            src: addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
            dst: addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
            proto: *attr(proto, CTA_PROTO_NUM)?.first()?,
            sport: port(CTA_PROTO_SRC_PORT),
            dport: port(CTA_PROTO_DST_PORT),
        })
    }

    fn write(&self, m: &mut Msg, ty: u16) {
        let t = m.nest(ty);
        let ip = m.nest(CTA_TUPLE_IP);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                m.attr(CTA_IP_V4_SRC, &s.octets());
                m.attr(CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                m.attr(CTA_IP_V6_SRC, &v6(s).octets());
                m.attr(CTA_IP_V6_DST, &v6(d).octets());
            }
        }
        m.end_nest(ip);
        let p = m.nest(CTA_TUPLE_PROTO);
        m.attr(CTA_PROTO_NUM, &[self.proto]);
        m.attr(CTA_PROTO_SRC_PORT, &self.sport.to_be_bytes());
        m.attr(CTA_PROTO_DST_PORT, &self.dport.to_be_bytes());
        m.end_nest(p);
        m.end_nest(t);
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// A conntrack entry: both tuples and its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    pub zone: Option<u16>,
}

/// Every entry of the IPv4 (`v6 == false`) or IPv6 conntrack table.
pub fn dump(nl: &mut NfNetlink, v6: bool) -> io::Result<Vec<Entry>> {
    let seq = nl.next_seq();
    let family = if v6 { AF_INET6 } else { AF_INET };
    let m = Msg::new(
        ct_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        0,
    );
    let mut out = Vec::new();
    let errs = nl.exchange(&m.finish(), &[seq], |r| {
        if r.ty != ct_type(IPCTNL_MSG_CT_NEW) {
            return;
        }
        let orig = attr(&r.body, CTA_TUPLE_ORIG).and_then(Tuple::parse);
        let reply = attr(&r.body, CTA_TUPLE_REPLY).and_then(Tuple::parse);
        let zone = attr(&r.body, CTA_ZONE)
            .and_then(|z| z.get(..2))
            .map(|z| u16::from_be_bytes([z[0], z[1]]));
        if let (Some(orig), Some(reply)) = (orig, reply) {
            out.push(Entry { orig, reply, zone });
        }
    })?;
    match errs.first().copied().unwrap_or(0) {
        0 => Ok(out),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Deletes `entries` (pipelined, one request each); entries already gone are not an error.
pub fn delete(nl: &mut NfNetlink, entries: &[Entry]) -> io::Result<usize> {
    if entries.is_empty() {
        return Ok(0);
    }
    let mut buf = Vec::new();
    let mut seqs = Vec::new();
    for e in entries {
        let seq = nl.next_seq();
        seqs.push(seq);
        let family = if e.orig.src.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        };
        let mut m = Msg::new(
            ct_type(IPCTNL_MSG_CT_DELETE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
        );
        e.orig.write(&mut m, CTA_TUPLE_ORIG);
        if let Some(z) = e.zone {
            m.attr(CTA_ZONE, &z.to_be_bytes());
        }
        buf.extend_from_slice(&m.finish());
    }
    let errs = nl.exchange(&buf, &seqs, |_| {})?;
    let mut deleted = 0;
    for e in errs {
        match e {
            0 => deleted += 1,
            libc::ENOENT => {}
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
    Ok(deleted)
}

/// Conntrack entries to delete around a port mapping's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Traffic to `host_port` that conntrack DNATed to `pod_ip:container_port`: after the
    /// mapping is removed, an ongoing flow would keep going to the old pod.
    Dnat {
        proto: u8,
        host_port: u16,
        pod_ip: IpAddr,
        container_port: u16,
    },
    /// Traffic to `host_port` (on `host_ip` if given) tracked without any address
    /// translation: it began before the mapping existed and would keep bypassing it. Such
    /// an entry is recreated by its flow's next packet, so deleting one that the mapping
    /// does not concern (a routed flow that happens to use the port) changes nothing.
    Untranslated {
        proto: u8,
        host_port: u16,
        host_ip: Option<IpAddr>,
        v6: bool,
    },
}

impl Flow {
    fn v6(&self) -> bool {
        match self {
            Flow::Dnat { pod_ip, .. } => pod_ip.is_ipv6(),
            Flow::Untranslated { v6, .. } => *v6,
        }
    }

    pub fn matches(&self, e: &Entry) -> bool {
        match *self {
            Flow::Dnat {
                proto,
                host_port,
                pod_ip,
                container_port,
            } => {
                e.orig.proto == proto
                    && e.orig.dport == host_port
                    && e.reply.src == pod_ip
                    && e.reply.sport == container_port
            }
            Flow::Untranslated {
                proto,
                host_port,
                host_ip,
                ..
            } => {
                e.orig.proto == proto
                    && e.orig.dport == host_port
                    && host_ip.is_none_or(|h| e.orig.dst == h)
                    && e.reply.src == e.orig.dst
                    && e.reply.dst == e.orig.src
                    && e.reply.sport == e.orig.dport
                    && e.reply.dport == e.orig.sport
            }
        }
    }
}

/// Deletes the conntrack entries of `flows`: one dump per family involved, then the matches.
/// Returns how many entries were deleted.
pub fn flush_flows(nl: &mut NfNetlink, flows: &[Flow]) -> io::Result<usize> {
    let mut deleted = 0;
    for v6 in [false, true] {
        let fam: Vec<&Flow> = flows.iter().filter(|f| f.v6() == v6).collect();
        if fam.is_empty() {
            continue;
        }
        let victims: Vec<Entry> = dump(nl, v6)?
            .into_iter()
            .filter(|e| fam.iter().any(|f| f.matches(e)))
            .collect();
        deleted += delete(nl, &victims)?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::attrs;

    #[test]
    fn flows_match_only_their_entries() {
        let t = |src: &str, sport, dst: &str, dport| Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 17,
            sport,
            dport,
        };
        let dnat = Entry {
            orig: t("198.18.0.2", 40000, "198.18.0.1", 5353),
            reply: t("10.1.0.2", 53, "198.18.0.2", 40000),
            zone: None,
        };
        let plain = Entry {
            orig: t("198.18.0.2", 40000, "198.18.0.1", 5353),
            reply: t("198.18.0.1", 5353, "198.18.0.2", 40000),
            zone: None,
        };
        let removed = Flow::Dnat {
            proto: 17,
            host_port: 5353,
            pod_ip: "10.1.0.2".parse().unwrap(),
            container_port: 53,
        };
        let added = Flow::Untranslated {
            proto: 17,
            host_port: 5353,
            host_ip: None,
            v6: false,
        };
        assert!(removed.matches(&dnat) && !removed.matches(&plain));
        assert!(added.matches(&plain) && !added.matches(&dnat));
        let elsewhere = Flow::Untranslated {
            proto: 17,
            host_port: 5353,
            host_ip: Some("198.18.0.9".parse().unwrap()),
            v6: false,
        };
        assert!(!elsewhere.matches(&plain));
    }

    #[test]
    fn tuple_roundtrip() {
        let t = Tuple {
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            proto: 17,
            sport: 40000,
            dport: 5353,
        };
        let mut m = Msg::new(0, 0, 0, 0, 0);
        t.write(&mut m, CTA_TUPLE_ORIG);
        let buf = m.finish();
        let body = &buf[20..];
        let inner = attr(body, CTA_TUPLE_ORIG).unwrap();
        assert_eq!(Tuple::parse(inner), Some(t));
        assert_eq!(attrs(body).count(), 1);
        let t6 = Tuple {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            ..t
        };
        let mut m = Msg::new(0, 0, 0, 0, 0);
        t6.write(&mut m, CTA_TUPLE_REPLY);
        let buf = m.finish();
        let inner = attr(&buf[20..], CTA_TUPLE_REPLY).unwrap();
        assert_eq!(Tuple::parse(inner), Some(t6));
    }
}
