//! natOutgoing (reef-agent): pod traffic leaving the pools is masqueraded to the node's
//! address; traffic between pods (any pool) never is. One table, replaced atomically in one
//! netlink transaction whenever the pools change (once per config change, not per pod):
//!
//! ```text
//! table inet reef-nat {
//!   set pools4 { type ipv4_addr; flags interval; }   # every pool
//!   set nat4   { type ipv4_addr; flags interval; }   # pools with natOutgoing
//!   set pools6 / nat6 { type ipv6_addr; ... }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr @nat4 ip daddr != @pools4 masquerade
//!     ip6 saddr @nat6 ip6 daddr != @pools6 masquerade } }
//! ```
//! The messages are the ones `nft -f` sends for that script (checked with `nft --debug=mnl`
//! on nft 1.0.6), so `nft list` shows the same table as before.

use super::io;
use super::objects::NFPROTO_INET;
use crate::nfnetlink::{NfNetlink, Request};
use crate::rules::NatPool;
use crate::Result;
use ipnetwork::IpNetwork;
use netlink_packet_core::NLM_F_CREATE;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook,
    HookNumber, InetHookNumber, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator,
    Payload, Register, RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute,
    SetElementFlags, SetElementList, SetElementMessage, SetFlags, SetMessage, TableAttribute,
    TableFlags, TableMessage,
};
use netlink_packet_netfilter::NetfilterMessageInner;

pub const TABLE: &str = "reef-nat";

/// nft's datatype ids (src/datatype.h) for the set key, so `nft list` prints addresses.
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
/// `NFT_PAYLOAD_NETWORK_HEADER`.
const NETWORK_HEADER: u32 = 1;
/// `NFT_LOOKUP_F_INV`: the `!=` of `daddr != @set`.
const LOOKUP_INVERT: u32 = 1;
const NF_ACCEPT: u32 = 1;
/// The named priority `srcnat`.
const SRCNAT: u32 = 100;
/// Set userdata as nft writes it: key byte order (TLV type 0, length 4) = big endian (2).
const SET_UDATA_KEY_BIG_ENDIAN: [u8; 6] = [0, 4, 2, 0, 0, 0];

fn msg(m: NfTablesMessage, flags: u16) -> Request {
    Request::new(NetfilterMessageInner::NfTables(m), NFPROTO_INET, flags)
}

fn table(flags: u16, delete: bool) -> Request {
    let mut attributes = vec![TableAttribute::Name(TABLE.to_string())];
    if delete {
        return msg(NfTablesMessage::DeleteTable(TableMessage { attributes }), 0);
    }
    attributes.push(TableAttribute::Flags(TableFlags::empty()));
    msg(
        NfTablesMessage::NewTable(TableMessage { attributes }),
        flags,
    )
}

/// One family's half of the table: its two sets and its rule.
struct Family {
    v6: bool,
    pools: &'static str,
    nat: &'static str,
}

const FAMILIES: [Family; 2] = [
    Family {
        v6: false,
        pools: "pools4",
        nat: "nat4",
    },
    Family {
        v6: true,
        pools: "pools6",
        nat: "nat6",
    },
];

fn new_set(name: &str, id: u32, v6: bool) -> Request {
    let (ty, len) = if v6 {
        (TYPE_IPV6_ADDR, 16)
    } else {
        (TYPE_IPV4_ADDR, 4)
    };
    msg(
        NfTablesMessage::NewSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(TABLE.to_string()),
                SetAttribute::Name(name.to_string()),
                SetAttribute::Flags(SetFlags::Interval),
                SetAttribute::KeyType(ty),
                SetAttribute::KeyLen(len),
                SetAttribute::Id(id),
                SetAttribute::UserData(SET_UDATA_KEY_BIG_ENDIAN.to_vec()),
            ],
        }),
        NLM_F_CREATE,
    )
}

fn key(n: u128, v6: bool) -> Vec<u8> {
    if v6 {
        n.to_be_bytes().to_vec()
    } else {
        (n as u32).to_be_bytes().to_vec()
    }
}

/// The interval-set elements of `nets` (one family), as nft sends them: an interval-end at
/// 0 unless a range starts there, then each range's start and (unless it reaches the top of
/// the address space) its end, flagged as such.
pub(crate) fn interval_elements(nets: &[IpNetwork], v6: bool) -> Vec<(Vec<u8>, bool)> {
    let bits = if v6 { 128 } else { 32 };
    let mut ranges: Vec<(u128, Option<u128>)> = nets
        .iter()
        .filter(|n| n.is_ipv6() == v6)
        .map(|n| {
            let (start, prefix) = match n {
                IpNetwork::V4(n) => (u128::from(u32::from(n.network())), n.prefix()),
                IpNetwork::V6(n) => (u128::from(n.network()), n.prefix()),
            };
            let size = 1u128.checked_shl(u32::from(bits - prefix));
            let end = size.and_then(|s| start.checked_add(s));
            let end = end.filter(|e| v6 || *e <= u128::from(u32::MAX));
            (start, end)
        })
        .collect();
    ranges.sort();
    ranges.dedup();
    let mut out = Vec::new();
    if ranges.first().is_some_and(|(s, _)| *s != 0) {
        out.push((key(0, v6), true));
    }
    for (start, end) in ranges {
        out.push((key(start, v6), false));
        if let Some(e) = end {
            out.push((key(e, v6), true));
        }
    }
    out
}

fn set_elements(set: &str, id: u32, elems: Vec<(Vec<u8>, bool)>) -> Option<Request> {
    if elems.is_empty() {
        return None;
    }
    let list = elems
        .into_iter()
        .map(|(k, end)| {
            let mut a = Vec::new();
            if end {
                a.push(SetElementAttribute::Flags(SetElementFlags::IntervalEnd));
            }
            a.push(SetElementAttribute::Key(DataAttribute::Value(k)));
            ListAttribute::Element(a)
        })
        .collect();
    Some(msg(
        NfTablesMessage::NewSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(TABLE.to_string()),
                SetElementList::Set(set.to_string()),
                SetElementList::SetId(id),
                SetElementList::Elements(list),
            ],
        }),
        NLM_F_CREATE,
    ))
}

fn expr(name: &str, data: Option<Expressions>) -> ListAttribute<ExpressionAttribute> {
    let mut a = vec![ExpressionAttribute::Name(name.to_string())];
    if let Some(d) = data {
        a.push(ExpressionAttribute::Data(d));
    }
    ListAttribute::Element(a)
}

fn payload(offset: u32, len: u32) -> ListAttribute<ExpressionAttribute> {
    expr(
        "payload",
        Some(Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(NETWORK_HEADER),
            Payload::Offset(offset),
            Payload::Len(len),
        ])),
    )
}

fn lookup(set: &str, id: u32, invert: bool) -> ListAttribute<ExpressionAttribute> {
    let mut l = vec![
        Lookup::Set(set.to_string()),
        Lookup::SourceRegister(Register::Reg1),
        Lookup::SetId(id),
    ];
    if invert {
        l.push(Lookup::Flags(LOOKUP_INVERT));
    }
    expr("lookup", Some(Expressions::Lookup(l)))
}

/// `ip saddr @nat4 ip daddr != @pools4 masquerade` (or the ip6 one): in an inet table the
/// `ip`/`ip6` selector first matches `meta nfproto`.
fn rule(f: &Family, pools_id: u32, nat_id: u32) -> Request {
    let (nfproto, saddr, daddr, len) = if f.v6 {
        (libc::NFPROTO_IPV6 as u8, 8, 24, 16)
    } else {
        (libc::NFPROTO_IPV4 as u8, 12, 16, 4)
    };
    let exprs = vec![
        expr(
            "meta",
            Some(Expressions::Meta(vec![
                Meta::DestinationRegister(Register::Reg1),
                Meta::Key(MetaKey::Nfproto),
            ])),
        ),
        expr(
            "cmp",
            Some(Expressions::Cmp(vec![
                Cmp::SourceRegister(Register::Reg1),
                Cmp::Op(Operator::Equal),
                Cmp::Data(DataAttribute::Value(vec![nfproto])),
            ])),
        ),
        payload(saddr, len),
        lookup(f.nat, nat_id, false),
        payload(daddr, len),
        lookup(f.pools, pools_id, true),
        // `masq` without attributes: no port range, no flags. The crate has no type for it,
        // and needs none: an expression is its name plus optional data.
        expr("masq", None),
    ];
    msg(
        NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.to_string()),
                RuleAttribute::Chain("postrouting".to_string()),
                RuleAttribute::Expressions(exprs),
            ],
        }),
        NLM_F_CREATE | netlink_packet_core::NLM_F_APPEND,
    )
}

/// The whole transaction for `pools`: create-if-absent, delete, define. Applying it twice
/// is harmless and nobody ever sees a half-built table.
pub(crate) fn transaction(pools: &[NatPool]) -> Vec<Request> {
    let mut t = vec![
        table(NLM_F_CREATE, false),
        table(0, true),
        table(NLM_F_CREATE, false),
    ];
    let all: Vec<IpNetwork> = pools.iter().map(|p| p.cidr).collect();
    let nat: Vec<IpNetwork> = pools
        .iter()
        .filter(|p| p.nat_outgoing)
        .map(|p| p.cidr)
        .collect();
    let mut elems = Vec::new();
    let mut ids = Vec::new();
    for (i, f) in FAMILIES.iter().enumerate() {
        let (pools_id, nat_id) = (2 * i as u32 + 1, 2 * i as u32 + 2);
        ids.push((pools_id, nat_id));
        t.push(new_set(f.pools, pools_id, f.v6));
        elems.extend(set_elements(
            f.pools,
            pools_id,
            interval_elements(&all, f.v6),
        ));
        t.push(new_set(f.nat, nat_id, f.v6));
        elems.extend(set_elements(f.nat, nat_id, interval_elements(&nat, f.v6)));
    }
    t.extend(elems);
    t.push(msg(
        NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(TABLE.to_string()),
                ChainAttribute::Name("postrouting".to_string()),
                ChainAttribute::Type("nat".to_string()),
                ChainAttribute::Policy(NF_ACCEPT),
                ChainAttribute::Hook(vec![
                    Hook::Number(HookNumber::Inet(InetHookNumber::PostRouting)),
                    Hook::Priority(SRCNAT),
                ]),
            ],
        }),
        NLM_F_CREATE,
    ));
    for (f, (pools_id, nat_id)) in FAMILIES.iter().zip(ids) {
        t.push(rule(f, pools_id, nat_id));
    }
    t
}

/// Makes table `inet reef-nat` exactly what `pools` ask for, in one transaction.
pub(crate) fn sync(nl: &mut NfNetlink, pools: &[NatPool]) -> Result<()> {
    nl.transaction(transaction(pools))
        .map_err(io(&format!("program natOutgoing (table inet {TABLE})")))
}

/// Removes the table (idempotent: create-if-absent, then delete, in one transaction).
pub(crate) fn remove(nl: &mut NfNetlink) -> Result<()> {
    nl.transaction(vec![table(NLM_F_CREATE, false), table(0, true)])
        .map_err(io(&format!("remove natOutgoing (table inet {TABLE})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn intervals_match_what_nft_sends() {
        // `nft --debug=netlink` for `elements = { 10.1.0.0/16, 10.2.0.0/16 }`:
        // 00000000 [end] 0000010a 0000020a [end] 0000020a 0000030a [end]
        let e = interval_elements(&nets(&["10.2.0.0/16", "10.1.0.5/16", "fd00::/64"]), false);
        let want: Vec<(Vec<u8>, bool)> = vec![
            (vec![0, 0, 0, 0], true),
            (vec![10, 1, 0, 0], false),
            (vec![10, 2, 0, 0], true),
            (vec![10, 2, 0, 0], false),
            (vec![10, 3, 0, 0], true),
        ];
        assert_eq!(e, want);
        let top = interval_elements(&nets(&["0.0.0.0/0"]), false);
        assert_eq!(top, vec![(vec![0, 0, 0, 0], false)]);
        let v6 = interval_elements(&nets(&["fd00::/64"]), true);
        assert_eq!(v6.len(), 3);
        assert!(interval_elements(&nets(&["10.0.0.0/8"]), true).is_empty());
    }

    #[test]
    fn transaction_replaces_the_table() {
        let t = transaction(&[NatPool {
            cidr: "10.1.0.0/16".parse().unwrap(),
            nat_outgoing: true,
        }]);
        // 3 table messages, 4 sets, 2 element lists (pools4, nat4), chain, 2 rules.
        assert_eq!(t.len(), 12);
    }
}
