//! Traffic control: the loopback guard that reef-portmap puts on every host-side interface
//! where it turns route_localnet on.
//!
//! route_localnet=1 lets an interface carry 127.0.0.0/8, which the replies of a DNATed
//! `127.0.0.1:hostPort` flow need. It also lets a pod on that interface reach the host's
//! loopback services by sending to 127.0.0.1 (CVE-2020-8558). The guard drops IPv4 packets
//! to 127.0.0.0/8 at the interface's tc ingress, outside netfilter, so a firewall reload
//! (`nft flush ruleset`) does not remove it. A legitimate reply is normally still addressed
//! to the masqueraded source there (conntrack de-NATs it later); on a bridge with
//! br_netfilter it is already de-NATed, and passes by a mark netfilter gave it. Without the
//! firewall's rules nothing sets that mark, and the guard fails closed.
//! It is a direct-action cls_bpf filter (`bpf::load_loopback_guard`): kernels built without
//! the gact action (this one) cannot drop from a u32 or flower filter.
//!
//! The guard is also the record of what it changed: its name holds the route_localnet value
//! found before, and whether the guard created the clsact qdisc, so whoever removes the
//! guard can put the interface back as it was.

use crate::ops::Netlink;
use crate::{Error, Result};
use futures::StreamExt;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;
use std::os::fd::AsRawFd;

/// The guard's filter priority: first, so no other ingress filter can accept the packet
/// before it is dropped.
const GUARD_PRIORITY: u16 = 1;
const ETH_P_IP: u16 = 0x0800;
/// The filter's name: this prefix, then the record (see `LoopbackGuard::name`).
const NAME_PREFIX: &str = "reef-loopback-guard:";

/// What an installed guard recorded when it was put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopbackGuard {
    /// route_localnet before reef-portmap turned it on.
    pub previous_route_localnet: bool,
    /// The clsact qdisc was created for the guard (and goes with it).
    pub created_qdisc: bool,
    /// The filter's handle, to delete exactly this filter.
    handle: u32,
}

impl LoopbackGuard {
    /// `reef-loopback-guard:route_localnet=0,qdisc=created` (as `tc filter show` prints it).
    fn name(previous_route_localnet: bool, created_qdisc: bool) -> String {
        format!(
            "{NAME_PREFIX}route_localnet={},qdisc={}",
            u8::from(previous_route_localnet),
            if created_qdisc { "created" } else { "found" }
        )
    }

    fn from_name(name: &str, handle: u32) -> Option<LoopbackGuard> {
        let rest = name.strip_prefix(NAME_PREFIX)?;
        let (prev, qdisc) = rest.split_once(',')?;
        Some(LoopbackGuard {
            previous_route_localnet: match prev.strip_prefix("route_localnet=")? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
            created_qdisc: match qdisc.strip_prefix("qdisc=")? {
                "created" => true,
                "found" => false,
                _ => return None,
            },
            handle,
        })
    }
}

fn ingress() -> TcHandle {
    TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_INGRESS,
    }
}

/// `tcm_info` of a filter: priority in the upper half, protocol (network order) below.
fn filter_info() -> u32 {
    (u32::from(GUARD_PRIORITY) << 16) | u32::from(ETH_P_IP.to_be())
}

/// The clsact qdisc of interface `index` (for adding or deleting it).
fn clsact(index: u32) -> TcMessage {
    let mut q = TcMessage::with_index(index as i32);
    q.header.parent = TcHandle::CLSACT;
    q.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    q.attributes.push(TcAttribute::Kind("clsact".into()));
    q
}

fn guard_in(m: &TcMessage) -> Option<LoopbackGuard> {
    if m.header.info >> 16 != u32::from(GUARD_PRIORITY) {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => {
                LoopbackGuard::from_name(n, m.header.handle.into())
            }
            _ => None,
        }),
        _ => None,
    })
}

impl Netlink {
    /// Sends one tc request and waits for its acknowledgement (or collects a dump).
    async fn tc_request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        context: impl Fn() -> String,
    ) -> Result<Vec<TcMessage>> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        let mut responses = self
            .handle()
            .clone()
            .request(req)
            .map_err(|e| Error::nl(context(), e))?;
        let mut out = Vec::new();
        while let Some(m) = responses.next().await {
            match m.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(Error::nl(context(), rtnetlink::Error::NetlinkError(e)))
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewTrafficFilter(t)
                    | RouteNetlinkMessage::NewQueueDiscipline(t),
                ) => out.push(t),
                _ => {}
            }
        }
        Ok(out)
    }

    async fn ingress_filters(&self, index: u32) -> Result<Vec<TcMessage>> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = ingress();
        match self
            .tc_request(RouteNetlinkMessage::GetTrafficFilter(m), NLM_F_DUMP, || {
                format!("list ingress filters of interface {index}")
            })
            .await
        {
            Ok(v) => Ok(v),
            // No ingress qdisc: no filters.
            Err(e) if e.errno() == Some(libc::EINVAL) || e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The loopback guard on interface `index`, if one is installed.
    pub async fn loopback_guard(&self, index: u32) -> Result<Option<LoopbackGuard>> {
        Ok(self.ingress_filters(index).await?.iter().find_map(guard_in))
    }

    /// Installs the loopback guard on interface `index` (creating the clsact qdisc if the
    /// interface has no ingress qdisc yet), recording `previous_route_localnet`. Packets
    /// whose mark has `exempt_mark` pass (see `bpf::load_loopback_guard`).
    pub async fn add_loopback_guard(
        &self,
        index: u32,
        previous_route_localnet: bool,
        exempt_mark: u32,
    ) -> Result<LoopbackGuard> {
        let q = clsact(index);
        let created_qdisc = match self
            .tc_request(
                RouteNetlinkMessage::NewQueueDiscipline(q),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                || format!("add a clsact qdisc to interface {index}"),
            )
            .await
        {
            Ok(_) => true,
            // An ingress or clsact qdisc is there already: the filter goes into it.
            Err(e) if e.is_exists() => false,
            Err(e) => return Err(e),
        };
        let added = self
            .add_guard_filter(index, previous_route_localnet, created_qdisc, exempt_mark)
            .await;
        if let Err(e) = added {
            if created_qdisc {
                let _ = self.delete_clsact(index).await;
            }
            return Err(e);
        }
        self.loopback_guard(index).await?.ok_or_else(|| {
            Error::Invalid(format!(
                "the loopback guard added to interface {index} is not listed"
            ))
        })
    }

    async fn add_guard_filter(
        &self,
        index: u32,
        previous_route_localnet: bool,
        created_qdisc: bool,
        exempt_mark: u32,
    ) -> Result<()> {
        let prog = crate::bpf::load_loopback_guard(exempt_mark)?;
        let mut f = TcMessage::with_index(index as i32);
        f.header.parent = ingress();
        f.header.info = filter_info();
        f.attributes.push(TcAttribute::Kind("bpf".into()));
        f.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(LoopbackGuard::name(
                previous_route_localnet,
                created_qdisc,
            ))),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.tc_request(
            RouteNetlinkMessage::NewTrafficFilter(f),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            || format!("add the loopback guard filter to interface {index}"),
        )
        .await
        .map(|_| ())
    }

    /// Removes `guard` from interface `index` (and the clsact qdisc it created, unless
    /// someone else's filters now live there). A missing interface or filter is not an error.
    pub async fn remove_loopback_guard(&self, index: u32, guard: LoopbackGuard) -> Result<()> {
        let mut f = TcMessage::with_index(index as i32);
        f.header.parent = ingress();
        f.header.info = filter_info();
        f.header.handle = guard.handle.into();
        f.attributes.push(TcAttribute::Kind("bpf".into()));
        match self
            .tc_request(RouteNetlinkMessage::DelTrafficFilter(f), NLM_F_ACK, || {
                format!("delete the loopback guard filter of interface {index}")
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.errno() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
        let others = self
            .ingress_filters(index)
            .await?
            .iter()
            .any(is_a_filter_node);
        if guard.created_qdisc && !others {
            match self.delete_clsact(index).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() || e.errno() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn delete_clsact(&self, index: u32) -> Result<()> {
        let q = clsact(index);
        self.tc_request(
            RouteNetlinkMessage::DelQueueDiscipline(q),
            NLM_F_ACK,
            || format!("delete the clsact qdisc of interface {index}"),
        )
        .await
        .map(|_| ())
    }
}

/// Whether a dumped filter is a real filter, not the hash table a u32 classifier lists
/// before its nodes.
fn is_a_filter_node(m: &TcMessage) -> bool {
    let kind = m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    });
    let has_u32_selector = m.attributes.iter().any(|a| {
        matches!(a, TcAttribute::Options(o)
            if o.iter().any(|o| matches!(o, TcOption::U32(netlink_packet_route::tc::TcFilterU32Option::Selector(_)))))
    });
    kind.is_some() && (kind != Some("u32") || has_u32_selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_in_the_filter_name_round_trips() {
        for (prev, q) in [(false, false), (true, false), (false, true), (true, true)] {
            let n = LoopbackGuard::name(prev, q);
            let g = LoopbackGuard::from_name(&n, 7).expect("parses");
            assert_eq!((g.previous_route_localnet, g.created_qdisc), (prev, q));
        }
        assert_eq!(LoopbackGuard::from_name("someone-else", 1), None);
        assert_eq!(
            LoopbackGuard::from_name("reef-loopback-guard:route_localnet=2,qdisc=found", 1),
            None
        );
    }
}
