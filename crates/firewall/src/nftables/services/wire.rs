//! The services table's elements as register images, and the count chains (`lb-N`,
//! `np-lb-N`) as netlink rules.
//!
//! Key layouts (every concatenated field takes whole 4-byte registers):
//! - `vips`: VIP (4)
//! - `services`, `aff-services`: VIP (4) . proto (1, padded to 4) . port (2, big endian,
//!   padded to 4)
//! - `endpoints`: the same . slot (u32, host byte order: numgen's output)
//! - `nodeports`, `np-all`, `np-masq`: proto . port
//! - `np-endpoints`: proto . port . slot
//! - `hairpin`: pod . pod
//!
//! Map data of `endpoints` and `np-endpoints`: pod address (4) . target port (2 + 2).

use super::TABLE;
use crate::nfnetlink::Request;
use crate::rules::Proto;
use netlink_packet_core::{DefaultNla, NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, ExpressionAttribute, Expressions, ListAttribute, Lookup, Meta,
    MetaKey, NfTablesMessage, Payload, Register, RuleAttribute, RuleMessage,
};
use netlink_packet_netfilter::NetfilterMessageInner;
use std::net::Ipv4Addr;

/// `NFPROTO_IPV4`: the table is `ip`.
pub const FAMILY: u8 = libc::NFPROTO_IPV4 as u8;
const NETWORK_HEADER: u32 = 1;
const TRANSPORT_HEADER: u32 = 2;
/// linux/netfilter/nf_tables.h: NFTA_NG_*, NFT_NG_RANDOM, NFTA_NAT_*, NFT_NAT_DNAT.
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFT_NG_RANDOM: u32 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;

pub fn vip_key(vip: Ipv4Addr) -> Vec<u8> {
    vip.octets().to_vec()
}

fn proto_port(proto: Proto, port: u16) -> [u8; 8] {
    let p = port.to_be_bytes();
    [proto.number(), 0, 0, 0, p[0], p[1], 0, 0]
}

pub fn service_key(vip: Ipv4Addr, proto: Proto, port: u16) -> Vec<u8> {
    let mut k = vip.octets().to_vec();
    k.extend_from_slice(&proto_port(proto, port));
    k
}

pub fn endpoint_key(vip: Ipv4Addr, proto: Proto, port: u16, slot: u32) -> Vec<u8> {
    let mut k = service_key(vip, proto, port);
    k.extend_from_slice(&slot.to_ne_bytes());
    k
}

pub fn node_port_key(proto: Proto, port: u16) -> Vec<u8> {
    proto_port(proto, port).to_vec()
}

pub fn node_port_endpoint_key(proto: Proto, port: u16, slot: u32) -> Vec<u8> {
    let mut k = node_port_key(proto, port);
    k.extend_from_slice(&slot.to_ne_bytes());
    k
}

pub fn hairpin_key(pod: Ipv4Addr) -> Vec<u8> {
    let mut k = pod.octets().to_vec();
    k.extend_from_slice(&pod.octets());
    k
}

pub fn endpoint_data(pod: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut d = pod.octets().to_vec();
    let p = port.to_be_bytes();
    d.extend_from_slice(&[p[0], p[1], 0, 0]);
    d
}

pub fn lb_chain(n: usize) -> String {
    format!("lb-{n}")
}

pub fn np_lb_chain(n: usize) -> String {
    format!("np-lb-{n}")
}

pub fn aff_chain(timeout: u32) -> String {
    format!("aff-{timeout}")
}

fn msg(m: NfTablesMessage, flags: u16) -> Request {
    Request::new(NetfilterMessageInner::NfTables(m), FAMILY, flags)
}

fn expr(name: &str, data: Expressions) -> ListAttribute<ExpressionAttribute> {
    ListAttribute::Element(vec![
        ExpressionAttribute::Name(name.to_string()),
        ExpressionAttribute::Data(data),
    ])
}

fn be32(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

fn payload(reg: Register, base: u32, offset: u32, len: u32) -> ListAttribute<ExpressionAttribute> {
    expr(
        "payload",
        Expressions::Payload(vec![
            Payload::DestinationRegister(reg),
            Payload::Base(base),
            Payload::Offset(offset),
            Payload::Len(len),
        ]),
    )
}

fn l4proto(reg: Register) -> ListAttribute<ExpressionAttribute> {
    expr(
        "meta",
        Expressions::Meta(vec![
            Meta::DestinationRegister(reg),
            Meta::Key(MetaKey::L4Proto),
        ]),
    )
}

fn numgen(reg: u32, modulus: u32) -> ListAttribute<ExpressionAttribute> {
    expr(
        "numgen",
        Expressions::Unknown(vec![
            be32(NFTA_NG_DREG, reg),
            be32(NFTA_NG_MODULUS, modulus),
            be32(NFTA_NG_TYPE, NFT_NG_RANDOM),
        ]),
    )
}

fn lookup(set: &str) -> ListAttribute<ExpressionAttribute> {
    expr(
        "lookup",
        Expressions::Lookup(vec![
            Lookup::Set(set.to_string()),
            Lookup::SourceRegister(Register::Reg1),
            Lookup::DestinationRegister(Register::Reg1),
        ]),
    )
}

/// `dnat ip to` address in reg 1 (32-bit register 0), port in 32-bit register 1.
fn dnat() -> ListAttribute<ExpressionAttribute> {
    expr(
        "nat",
        Expressions::Unknown(vec![
            be32(NFTA_NAT_TYPE, NFT_NAT_DNAT),
            be32(NFTA_NAT_FAMILY, u32::from(FAMILY)),
            be32(NFTA_NAT_REG_ADDR_MIN, u32::from(Register::Reg1)),
            be32(NFTA_NAT_REG_PROTO_MIN, u32::from(Register::Reg32_01)),
        ]),
    )
}

fn chain_and_rule(name: &str, exprs: Vec<ListAttribute<ExpressionAttribute>>) -> Vec<Request> {
    vec![
        msg(
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(TABLE.to_string()),
                    ChainAttribute::Name(name.to_string()),
                ],
            }),
            NLM_F_CREATE,
        ),
        msg(
            NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(TABLE.to_string()),
                    RuleAttribute::Chain(name.to_string()),
                    RuleAttribute::Expressions(exprs),
                ],
            }),
            NLM_F_CREATE | NLM_F_APPEND,
        ),
    ]
}

/// Chain `lb-N` with its one rule, as nft would build
/// `dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N map @endpoints`.
pub(crate) fn lb_chain_requests(n: usize) -> Vec<Request> {
    chain_and_rule(
        &lb_chain(n),
        vec![
            payload(Register::Reg1, NETWORK_HEADER, 16, 4),
            l4proto(Register::Reg32_01),
            payload(Register::Reg32_02, TRANSPORT_HEADER, 2, 2),
            numgen(u32::from(Register::Reg32_03), n as u32),
            lookup("endpoints"),
            dnat(),
        ],
    )
}

/// Chain `np-lb-N`: `dnat ip to meta l4proto . th dport . numgen random mod N map
/// @np-endpoints`.
pub(crate) fn np_lb_chain_requests(n: usize) -> Vec<Request> {
    chain_and_rule(
        &np_lb_chain(n),
        vec![
            l4proto(Register::Reg1),
            payload(Register::Reg32_01, TRANSPORT_HEADER, 2, 2),
            numgen(u32::from(Register::Reg32_02), n as u32),
            lookup("np-endpoints"),
            dnat(),
        ],
    )
}

/// The `nft -f` script of chain `aff-T`: record the endpoint chosen for a ClientIP-affinity
/// service for `timeout` seconds (the data path refreshes it on every new connection).
pub fn aff_chain_script(timeout: u32) -> String {
    let t = format!("ip {TABLE}");
    let c = aff_chain(timeout);
    format!(
        "add chain {t} {c}\nflush chain {t} {c}\nadd rule {t} {c} meta l4proto {{ tcp, udp }} \
         update @aff {{ ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst \
         timeout {timeout}s : ip daddr . th dport }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_what_nft_sends() {
        // nft --debug=netlink for `10.96.0.1 . tcp . 80 . 2`: 0100600a 00000006 00005000 00000002
        // (words printed little-endian; the slot is a host-order u32).
        let k = endpoint_key(Ipv4Addr::new(10, 96, 0, 1), Proto::Tcp, 80, 2);
        let mut want = vec![10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0];
        want.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(k, want);
        assert_eq!(
            endpoint_data(Ipv4Addr::new(10, 20, 1, 2), 8080),
            [10, 20, 1, 2, 0x1f, 0x90, 0, 0]
        );
        assert_eq!(
            node_port_key(Proto::Udp, 30053),
            [17, 0, 0, 0, 0x75, 0x65, 0, 0]
        );
    }
}
