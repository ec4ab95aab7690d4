//! nf_tables objects as netlink messages (typed by `netlink-packet-netfilter`): "does this
//! table exist", set and map element changes (always inside one transaction), element
//! lookups and dumps, rule dumps. Keys and map data are raw register images (see
//! `portmap::wire` for the concatenation layout); element userdata holds nft's comment.

use crate::nfnetlink::{Data, NfNetlink, Request};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, RuleAttribute, RuleMessage, SetElementAttribute,
    SetElementList, SetElementMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::NetfilterMessageInner;
use std::io;
use std::net::IpAddr;

pub const NFPROTO_INET: u8 = 1;

/// One set or map element as the kernel stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Elem {
    /// The key's register image (concatenations padded to 4 bytes per field).
    pub key: Vec<u8>,
    /// The map data's register image (maps only).
    pub data: Option<Vec<u8>>,
    /// Userdata: nft keeps the element's comment here.
    pub udata: Option<Vec<u8>>,
    /// Verdict maps: the chain this element jumps to.
    pub jump: Option<String>,
}

/// Key-only elements of addresses (an `ipv4_addr` or `ipv6_addr` set).
pub(crate) fn ip_elems<'a>(ips: impl IntoIterator<Item = &'a IpAddr>) -> Vec<Elem> {
    ips.into_iter()
        .map(|ip| Elem {
            key: match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            },
            ..Elem::default()
        })
        .collect()
}

/// Elements per NEWSETELEM/DELSETELEM message: well under the 64 KiB a netlink attribute
/// can hold, with a key, data and a 127-byte comment each.
const ELEMS_PER_MSG: usize = 128;

/// An element's parts, borrowed: what a message is encoded from.
#[derive(Debug, Clone, Copy, Default)]
pub struct ElemRef<'a> {
    pub key: &'a [u8],
    pub data: Option<&'a [u8]>,
    pub udata: Option<&'a [u8]>,
    pub jump: Option<&'a str>,
}

/// Anything a set-element message can be encoded from.
pub trait AsElem {
    fn elem(&self) -> ElemRef<'_>;
}

impl AsElem for Elem {
    fn elem(&self) -> ElemRef<'_> {
        ElemRef {
            key: &self.key,
            data: self.data.as_deref(),
            udata: self.udata.as_deref(),
            jump: self.jump.as_deref(),
        }
    }
}

impl AsElem for ElemRef<'_> {
    fn elem(&self) -> ElemRef<'_> {
        *self
    }
}

/// One message of an element transaction.
pub enum ElemChange<'a, E: AsElem = Elem> {
    /// Create `elems` in `set`. With `exclusive`, an existing key fails the whole batch with
    /// EEXIST (NLM_F_EXCL); without it, re-adding an identical element is a no-op.
    Add {
        set: &'a str,
        elems: &'a [E],
        exclusive: bool,
    },
    /// Delete `elems` (by key) from `set`; a missing key fails the batch with ENOENT.
    Del { set: &'a str, elems: &'a [E] },
    /// Delete `elems` where present (NFT_MSG_DESTROYSETELEM, Linux 6.3+): a missing key is
    /// not an error, so one batch can clean up what may or may not be there.
    Destroy { set: &'a str, elems: &'a [E] },
}

fn nft(msg: NfTablesMessage) -> NetfilterMessageInner {
    NetfilterMessageInner::NfTables(msg)
}

fn table_msg(name: &str) -> TableMessage {
    TableMessage {
        attributes: vec![TableAttribute::Name(name.to_string())],
    }
}

/// A set-element message body: table, set and, per element, key (and data, userdata).
fn elem_list(table: &str, set: &str, elems: &[Elem], with_values: bool) -> SetElementMessage {
    let list = elems
        .iter()
        .map(|e| {
            let mut a = vec![SetElementAttribute::Key(DataAttribute::Value(
                e.key.clone(),
            ))];
            if with_values {
                if let Some(d) = &e.data {
                    a.push(SetElementAttribute::Data(DataAttribute::Value(d.clone())));
                }
                if let Some(chain) = &e.jump {
                    a.push(SetElementAttribute::Data(DataAttribute::Verdict(vec![
                        VerdictAttribute::Code(Verdict::Jump),
                        VerdictAttribute::Chain(chain.clone()),
                    ])));
                }
                if let Some(u) = &e.udata {
                    a.push(SetElementAttribute::UserData(u.clone()));
                }
            }
            ListAttribute::Element(a)
        })
        .collect();
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_string()),
            SetElementList::Set(set.to_string()),
            SetElementList::Elements(list),
        ],
    }
}

/// The attributes of a netlink attribute stream: (type without flag bits, payload).
fn nlas(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, payload))
    })
}

// linux/netfilter/nf_tables.h
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFT_JUMP: i32 = -3;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_DELSETELEM: u8 = 14;
const NFT_MSG_DESTROYSETELEM: u8 = 30;

fn value(nested: &[u8]) -> Option<Vec<u8>> {
    nlas(nested)
        .find(|(k, _)| *k == NFTA_DATA_VALUE)
        .map(|(_, v)| v.to_vec())
}

/// The elements of a NEWSETELEM reply (its attributes, raw: see `nfnetlink::Data`).
fn parse_elements(msg: Data) -> Vec<Elem> {
    let Data::SetElements(raw) = msg else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (kind, list) in nlas(&raw) {
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (kind, attrs) in nlas(list) {
            if kind != NFTA_LIST_ELEM {
                continue;
            }
            let mut e = Elem::default();
            let mut has_key = false;
            for (kind, v) in nlas(attrs) {
                match kind {
                    NFTA_SET_ELEM_KEY => {
                        if let Some(k) = value(v) {
                            e.key = k;
                            has_key = true;
                        }
                    }
                    NFTA_SET_ELEM_DATA => {
                        e.data = value(v);
                        e.jump = nlas(v)
                            .find(|(k, _)| *k == NFTA_DATA_VERDICT)
                            .and_then(|(_, verdict)| {
                                nlas(verdict).find(|(k, _)| *k == NFTA_VERDICT_CHAIN)
                            })
                            .map(|(_, c)| {
                                String::from_utf8_lossy(c.split(|b| *b == 0).next().unwrap_or(c))
                                    .into_owned()
                            });
                    }
                    NFTA_SET_ELEM_USERDATA => e.udata = Some(v.to_vec()),
                    _ => {}
                }
            }
            if has_key {
                out.push(e);
            }
        }
    }
    out
}

/// The messages of an element change, to send alone ([`NfNetlink::change_elements`]) or
/// inside a larger transaction.
pub(crate) fn elem_requests<E: AsElem>(
    family: u8,
    table: &str,
    changes: &[ElemChange<E>],
) -> Vec<Request> {
    // The element list is one netlink attribute, whose length is 16 bits: a long list
    // goes as several messages of one transaction (still all or nothing).
    let mut msgs: Vec<Request> = Vec::new();
    for c in changes {
        match c {
            ElemChange::Add {
                set,
                elems,
                exclusive,
            } => {
                let excl = if *exclusive { NLM_F_EXCL } else { 0 };
                msgs.extend(elems.chunks(ELEMS_PER_MSG).map(|chunk| {
                    Request::nft(
                        NFT_MSG_NEWSETELEM,
                        elem_attrs(table, set, chunk, true),
                        family,
                        NLM_F_CREATE | excl,
                    )
                }));
            }
            ElemChange::Del { set, elems } | ElemChange::Destroy { set, elems } => {
                let kind = if matches!(c, ElemChange::Del { .. }) {
                    NFT_MSG_DELSETELEM
                } else {
                    NFT_MSG_DESTROYSETELEM
                };
                msgs.extend(elems.chunks(ELEMS_PER_MSG).map(|chunk| {
                    Request::nft(kind, elem_attrs(table, set, chunk, false), family, 0)
                }));
            }
        }
    }
    msgs
}

/// The attributes of a set-element message, encoded straight from `elems`: the same bytes
/// as [`elem_list`] through the typed attributes, without their copies of every key, value
/// and chain name (a full sync sends 70,000 elements).
fn elem_attrs<E: AsElem>(table: &str, set: &str, elems: &[E], with_values: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + elems.len() * 48);
    put_str(&mut b, NFTA_SET_ELEM_LIST_TABLE, table);
    put_str(&mut b, NFTA_SET_ELEM_LIST_SET, set);
    let list = nest_start(&mut b, NFTA_SET_ELEM_LIST_ELEMENTS);
    for e in elems {
        let e = e.elem();
        let elem = nest_start(&mut b, NFTA_LIST_ELEM);
        let key = nest_start(&mut b, NFTA_SET_ELEM_KEY);
        put(&mut b, NFTA_DATA_VALUE, e.key);
        nest_end(&mut b, key);
        if with_values {
            if let Some(d) = e.data {
                let data = nest_start(&mut b, NFTA_SET_ELEM_DATA);
                put(&mut b, NFTA_DATA_VALUE, d);
                nest_end(&mut b, data);
            }
            if let Some(chain) = e.jump {
                let data = nest_start(&mut b, NFTA_SET_ELEM_DATA);
                let verdict = nest_start(&mut b, NFTA_DATA_VERDICT);
                put(&mut b, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                put_str(&mut b, NFTA_VERDICT_CHAIN, chain);
                nest_end(&mut b, verdict);
                nest_end(&mut b, data);
            }
            if let Some(u) = e.udata {
                put(&mut b, NFTA_SET_ELEM_USERDATA, u);
            }
        }
        nest_end(&mut b, elem);
    }
    nest_end(&mut b, list);
    b
}

/// One attribute: length, type, payload, padding to 4 bytes.
fn put(b: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(payload);
    b.resize(b.len().next_multiple_of(4), 0);
}

/// A NUL-terminated string attribute.
fn put_str(b: &mut Vec<u8>, kind: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put(b, kind, &v);
}

/// Opens a nested attribute; [`nest_end`] writes its length.
fn nest_start(b: &mut Vec<u8>, kind: u16) -> usize {
    let at = b.len();
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

fn nest_end(b: &mut [u8], at: usize) {
    // Nested payloads are whole attributes, so already padded. An element list longer than
    // 64 KiB cannot be said in netlink: ELEMS_PER_MSG keeps lists far below that.
    let len = u16::try_from(b.len() - at).unwrap_or(u16::MAX);
    b[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl NfNetlink {
    /// Whether table `name` of `family` exists.
    pub fn table_exists(&mut self, family: u8, name: &str) -> io::Result<bool> {
        let req = Request::new(
            nft(NfTablesMessage::GetTable(table_msg(name))),
            family,
            NLM_F_ACK,
        );
        let mut saw = false;
        let errs = self.exchange(vec![req], |_, m| {
            saw |= matches!(
                m.msg().map(|m| m.inner),
                Some(NetfilterMessageInner::NfTables(NfTablesMessage::NewTable(
                    _
                )))
            )
        })?;
        match errs.first().copied().unwrap_or(0) {
            0 => Ok(saw),
            libc::ENOENT => Ok(false),
            e => Err(errno(e)),
        }
    }

    /// Adds (`add`) or deletes the elements `ips` of `set` in one transaction. Adding an
    /// existing element and deleting a missing one both succeed (idempotent verbs).
    pub fn set_elements(
        &mut self,
        family: u8,
        table: &str,
        set: &str,
        ips: &[IpAddr],
        add: bool,
    ) -> io::Result<()> {
        if ips.is_empty() {
            return Ok(());
        }
        let elems = ip_elems(ips);
        let change = if add {
            ElemChange::Add {
                set,
                elems: &elems,
                exclusive: false,
            }
        } else {
            ElemChange::Del { set, elems: &elems }
        };
        match self.change_elements(family, table, &[change]) {
            Ok(()) => Ok(()),
            Err(e) if !add && e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies `changes` as ONE nf_tables transaction: all or nothing. The first error the
    /// kernel reports is returned (EEXIST for an exclusive add of an existing key, ENOENT for
    /// a missing table, set or deleted key).
    pub fn change_elements<E: AsElem>(
        &mut self,
        family: u8,
        table: &str,
        changes: &[ElemChange<E>],
    ) -> io::Result<()> {
        self.transaction(elem_requests(family, table, changes))
    }

    /// Looks up `keys` in `set`, all requests in one send: `None` where the key is absent.
    /// A missing table or set reads as every key absent.
    pub fn get_elements(
        &mut self,
        family: u8,
        table: &str,
        set: &str,
        keys: &[Vec<u8>],
    ) -> io::Result<Vec<Option<Elem>>> {
        let reqs: Vec<Request> = keys
            .iter()
            .map(|k| {
                let e = Elem {
                    key: k.clone(),
                    ..Elem::default()
                };
                Request::new(
                    nft(NfTablesMessage::GetSetElement(elem_list(
                        table,
                        set,
                        &[e],
                        false,
                    ))),
                    family,
                    NLM_F_ACK,
                )
            })
            .collect();
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut found: Vec<Option<Elem>> = vec![None; keys.len()];
        let errs = self.exchange(reqs, |i, m| {
            found[i] = parse_elements(m).into_iter().next();
        })?;
        for (i, e) in errs.iter().enumerate() {
            match *e {
                0 => {}
                libc::ENOENT => found[i] = None,
                e => return Err(errno(e)),
            }
        }
        Ok(found)
    }

    /// Every element of `set` (empty if the table or set does not exist).
    pub fn dump_elements(&mut self, family: u8, table: &str, set: &str) -> io::Result<Vec<Elem>> {
        let req = Request::new(
            nft(NfTablesMessage::GetSetElement(elem_list(
                table,
                set,
                &[],
                false,
            ))),
            family,
            NLM_F_DUMP,
        );
        let mut out = Vec::new();
        let errs = self.exchange(vec![req], |_, m| out.extend(parse_elements(m)))?;
        match errs.first().copied().unwrap_or(0) {
            0 => Ok(out),
            libc::ENOENT => Ok(Vec::new()),
            e => Err(errno(e)),
        }
    }

    /// The rules of `chain`, as the kernel holds them (empty if the table or chain is missing).
    pub fn dump_rules(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
    ) -> io::Result<Vec<RuleMessage>> {
        let req = Request::new(
            nft(NfTablesMessage::GetRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.to_string()),
                    RuleAttribute::Chain(chain.to_string()),
                ],
            })),
            family,
            NLM_F_DUMP,
        );
        let mut out = Vec::new();
        let errs = self.exchange(vec![req], |_, m| {
            if let Some(NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(r))) =
                m.msg().map(|m| m.inner)
            {
                // Keep only this chain's rules, whatever the kernel's dump filter did.
                let ours = |a: &RuleAttribute| match a {
                    RuleAttribute::Table(t) => t == table,
                    RuleAttribute::Chain(c) => c == chain,
                    _ => false,
                };
                if r.attributes.iter().filter(|a| ours(a)).count() == 2 {
                    out.push(r);
                }
            }
        })?;
        match errs.first().copied().unwrap_or(0) {
            0 => Ok(out),
            libc::ENOENT => Ok(Vec::new()),
            e => Err(errno(e)),
        }
    }
}

/// The names of a rule's expressions, in order (`"payload"`, `"lookup"`, `"masq"`, ...).
pub fn expression_names(rule: &RuleMessage) -> Vec<String> {
    use netlink_packet_netfilter::nftables::ExpressionAttribute;
    let mut out = Vec::new();
    for a in &rule.attributes {
        if let RuleAttribute::Expressions(list) = a {
            for el in list {
                if let ListAttribute::Element(attrs) = el {
                    for x in attrs {
                        if let ExpressionAttribute::Name(n) = x {
                            out.push(n.clone());
                        }
                    }
                }
            }
        }
    }
    out
}

/// nft's element comment as userdata: one TLV (type 0 = comment, length, NUL-terminated).
pub fn comment_udata(comment: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(comment.len() + 3);
    v.push(0);
    v.push((comment.len() + 1).min(255) as u8);
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

/// The comment in element userdata written by nft or `comment_udata`.
pub fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 2 <= udata.len() {
        let (ty, len) = (udata[off], udata[off + 1] as usize);
        let val = udata.get(off + 2..off + 2 + len)?;
        if ty == 0 {
            let s = val.strip_suffix(&[0]).unwrap_or(val);
            return String::from_utf8(s.to_vec()).ok();
        }
        off += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn comment_roundtrip_matches_nft_layout() {
        // `nft --debug=netlink` shows: userdata = { \x00\x0dnet/cid/eth0\x00 }
        let u = comment_udata("net/cid/eth0");
        assert_eq!(&u[..2], &[0x00, 0x0d]);
        assert_eq!(u.last(), Some(&0));
        assert_eq!(udata_comment(&u).as_deref(), Some("net/cid/eth0"));
        assert_eq!(
            udata_comment(&[1, 2, 9, 9, 0, 2, b'a', 0]).as_deref(),
            Some("a")
        );
        assert_eq!(udata_comment(&[0, 9, b'a']), None);
    }

    #[test]
    fn element_messages_parse_back() {
        let e = Elem {
            key: vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0],
            data: Some(vec![10, 1, 0, 2, 0, 80, 0, 0]),
            udata: Some(comment_udata("x")),
            jump: None,
        };
        let v = Elem {
            key: vec![10, 96, 0, 1],
            jump: Some("lb-3".into()),
            ..Elem::default()
        };
        // What the kernel sends back is what we send: the same attributes.
        let m = elem_list("t", "s", &[e.clone(), v.clone()], true);
        let mut buf = vec![0u8; m.attributes.as_slice().buffer_len()];
        m.attributes.as_slice().emit(&mut buf);
        let elems = parse_elements(Data::SetElements(buf));
        assert_eq!(elems, vec![e.clone(), v.clone()]);
        assert_eq!(
            udata_comment(elems[0].udata.as_deref().unwrap_or(&[])).as_deref(),
            Some("x")
        );
        assert!(parse_elements(Data::SetElements(vec![1, 2, 3])).is_empty());
        // The hand-encoded change carries exactly the typed attributes' bytes.
        for with_values in [true, false] {
            let m = elem_list("t", "s", &[e.clone(), v.clone()], with_values);
            let mut typed = vec![0u8; m.attributes.as_slice().buffer_len()];
            m.attributes.as_slice().emit(&mut typed);
            let raw = elem_attrs("t", "s", &[e.clone(), v.clone()], with_values);
            assert_eq!(raw, typed, "with_values {with_values}");
        }
    }
}
