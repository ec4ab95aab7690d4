//! Conntrack cleanup over ctnetlink (messages typed by `netlink-packet-netfilter`, on the
//! same nfnetlink socket as nf_tables).
//!
//! Only a rare path uses it: when a UDP port mapping is removed, conntrack entries that were
//! DNATed through it would keep steering the flow's later datagrams to the old pod (UDP
//! entries live as long as traffic keeps flowing). TCP entries die with their connection.
//!
//! The table of the family is dumped and filtered here (not with the kernel's `CTA_FILTER`),
//! then every match is deleted by its original tuple; an entry that disappeared meanwhile
//! (ENOENT) is fine.

use crate::nfnetlink::{NfNetlink, Request};
use netlink_packet_core::{DefaultNla, Nla, NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple as CtTuple,
};
use netlink_packet_netfilter::NetfilterMessageInner;
use std::io;
use std::net::IpAddr;

/// `CTA_ZONE`: the crate has no variant for it; it is kept as a raw attribute.
const CTA_ZONE: u16 = 18;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

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
    fn parse(attrs: &[CtTuple]) -> Option<Tuple> {
        let (mut src, mut dst, mut proto) = (None, None, None);
        let (mut sport, mut dport) = (0, 0);
        for a in attrs {
            match a {
                CtTuple::Ip(ips) => {
                    for i in ips {
                        match i {
                            IPTuple::SourceAddress(a) => src = Some(*a),
                            IPTuple::DestinationAddress(a) => dst = Some(*a),
                            _ => {}
                        }
                    }
                }
                CtTuple::Proto(ps) => {
                    for p in ps {
                        match p {
                            ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                            ProtoTuple::SourcePort(n) => sport = *n,
                            ProtoTuple::DestinationPort(n) => dport = *n,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Tuple {
            src: src?,
            dst: dst?,
            proto: proto?,
            sport,
            dport,
        })
    }

    fn attrs(&self) -> Vec<CtTuple> {
        vec![
            CtTuple::Ip(vec![
                IPTuple::SourceAddress(self.src),
                IPTuple::DestinationAddress(self.dst),
            ]),
            CtTuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::from(self.proto)),
                ProtoTuple::SourcePort(self.sport),
                ProtoTuple::DestinationPort(self.dport),
            ]),
        ]
    }
}

/// A conntrack entry: both tuples and its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    pub zone: Option<u16>,
}

impl Entry {
    fn parse(attrs: &[ConntrackAttribute]) -> Option<Entry> {
        let (mut orig, mut reply, mut zone) = (None, None, None);
        for a in attrs {
            match a {
                ConntrackAttribute::CtaTupleOrig(t) => orig = Tuple::parse(t),
                ConntrackAttribute::CtaTupleReply(t) => reply = Tuple::parse(t),
                ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => {
                    let mut v = vec![0u8; nla.value_len()];
                    nla.emit_value(&mut v);
                    zone = v.get(..2).map(|z| u16::from_be_bytes([z[0], z[1]]));
                }
                _ => {}
            }
        }
        Some(Entry {
            orig: orig?,
            reply: reply?,
            zone,
        })
    }
}

fn family(v6: bool) -> u8 {
    if v6 {
        AF_INET6
    } else {
        AF_INET
    }
}

/// Every entry of the IPv4 (`v6 == false`) or IPv6 conntrack table.
pub fn dump(nl: &mut NfNetlink, v6: bool) -> io::Result<Vec<Entry>> {
    let req = Request::new(
        NetfilterMessageInner::Conntrack(ConntrackMessage::Get(Vec::new())),
        family(v6),
        NLM_F_DUMP,
    );
    let mut out = Vec::new();
    let errs = nl.exchange(vec![req], |_, m| {
        if let Some(NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs))) =
            m.msg().map(|m| m.inner)
        {
            out.extend(Entry::parse(&attrs));
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
    let reqs: Vec<Request> = entries
        .iter()
        .map(|e| {
            let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(e.orig.attrs())];
            if let Some(z) = e.zone {
                attrs.push(ConntrackAttribute::Other(DefaultNla::new(
                    CTA_ZONE,
                    z.to_be_bytes().to_vec(),
                )));
            }
            Request::new(
                NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attrs)),
                family(e.orig.src.is_ipv6()),
                NLM_F_ACK,
            )
        })
        .collect();
    let errs = nl.exchange(reqs, |_, _| {})?;
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
    /// Traffic DNATed to a service endpoint `ip:port` that left the service.
    ToEndpoint { proto: u8, ip: IpAddr, port: u16 },
}

impl Flow {
    fn v6(&self) -> bool {
        match self {
            Flow::Dnat { pod_ip, .. } => pod_ip.is_ipv6(),
            Flow::Untranslated { v6, .. } => *v6,
            Flow::ToEndpoint { ip, .. } => ip.is_ipv6(),
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
            Flow::ToEndpoint { proto, ip, port } => {
                e.orig.proto == proto
                    && e.reply.src == ip
                    && e.reply.sport == port
                    && (e.orig.dst != ip || e.orig.dport != port)
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
        assert_eq!(Tuple::parse(&t.attrs()), Some(t));
        let t6 = Tuple {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            ..t
        };
        assert_eq!(Tuple::parse(&t6.attrs()), Some(t6));
    }
}
