//! Hand-written nf_tables (and ctnetlink) netlink: the messages the hot paths need, so no
//! `nft` process runs per pod.
//!
//! - "does this table exist";
//! - set/map element changes, always inside one batch (atomic, as nf_tables requires):
//!   keys and map data are raw register images (see `portmap` for the concatenation
//!   layout), with optional userdata (nft's element comment);
//! - element lookups by key (pipelined in one send) and element dumps.
//!
//! Written against include/uapi/linux/netfilter/nf_tables.h and nfnetlink.h.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::io;
use std::net::IpAddr;

pub(crate) const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
pub const NFPROTO_INET: u8 = 1;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one netlink message: header, nfgenmsg, attributes.
pub(crate) struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    pub(crate) fn new(msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: kernel fills in
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg { buf }
    }

    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn str_attr(&mut self, ty: u16, s: &str) {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(ty, &b);
    }

    /// Opens a nested attribute; returns the offset to close it at.
    pub(crate) fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub(crate) fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// Iterates over the attributes in `buf`: (type without flags, payload).
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let payload = &buf[off + 4..off + len];
        off += align4(len);
        Some((ty, payload))
    })
}

pub(crate) fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

/// One message of a netlink reply buffer.
pub(crate) struct RawMsg<'a> {
    pub ty: u16,
    pub seq: u32,
    /// The whole message, header included.
    pub bytes: &'a [u8],
}

impl RawMsg<'_> {
    /// The errno carried by an NLMSG_ERROR (0 = ack), if this is one.
    pub fn error_code(&self) -> Option<i32> {
        (self.ty == NLMSG_ERROR && self.bytes.len() >= 20).then(|| {
            -i32::from_ne_bytes([
                self.bytes[16],
                self.bytes[17],
                self.bytes[18],
                self.bytes[19],
            ])
        })
    }
}

/// Splits a received buffer into messages, rejecting truncated ones.
pub(crate) fn messages(buf: &[u8]) -> io::Result<Vec<RawMsg<'_>>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink reply",
            ));
        }
        out.push(RawMsg {
            ty: u16::from_ne_bytes([buf[off + 4], buf[off + 5]]),
            seq: u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]),
            bytes: &buf[off..off + len],
        });
        off += align4(len);
    }
    Ok(out)
}

fn nft_type(t: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | t
}

/// One set or map element as the kernel stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Elem {
    /// The key's register image (concatenations padded to 4 bytes per field).
    pub key: Vec<u8>,
    /// The map data's register image (maps only).
    pub data: Option<Vec<u8>>,
    /// Userdata: nft keeps the element's comment here.
    pub udata: Option<Vec<u8>>,
}

/// One message of an element batch.
pub enum ElemChange<'a> {
    /// Create `elems` in `set`. With `exclusive`, an existing key fails the whole batch with
    /// EEXIST (NLM_F_EXCL); without it, re-adding an identical element is a no-op.
    Add {
        set: &'a str,
        elems: &'a [Elem],
        exclusive: bool,
    },
    /// Delete `elems` (by key) from `set`; a missing key fails the batch with ENOENT.
    Del { set: &'a str, elems: &'a [Elem] },
}

/// A reply message: type and the bytes after the nfgenmsg header.
pub(crate) struct Reply {
    pub ty: u16,
    pub seq: u32,
    pub body: Vec<u8>,
}

pub struct NfNetlink {
    sock: Socket,
    seq: u32,
}

impl NfNetlink {
    pub fn open() -> io::Result<NfNetlink> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(NfNetlink { sock, seq: 1 })
    }

    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `buf` (one or more requests) and reads replies until each sequence number in
    /// `seqs` got its final answer: an ack or error (NLMSG_ERROR) or, for a dump, NLMSG_DONE.
    /// Data messages are passed to `on_msg`. Returns the errno (0 = success) per request,
    /// in the order of `seqs`.
    pub(crate) fn exchange(
        &mut self,
        buf: &[u8],
        seqs: &[u32],
        mut on_msg: impl FnMut(Reply),
    ) -> io::Result<Vec<i32>> {
        self.sock.send(buf, 0)?;
        let mut answers: Vec<Option<i32>> = vec![None; seqs.len()];
        let mut rbuf = vec![0u8; 65536];
        while answers.iter().any(Option::is_none) {
            let n = self.sock.recv(&mut &mut rbuf[..], 0)?;
            for m in messages(&rbuf[..n])? {
                let slot = seqs.iter().position(|s| *s == m.seq);
                match (m.ty, slot, m.error_code()) {
                    (_, Some(i), Some(code)) => answers[i] = Some(code),
                    (NLMSG_DONE, Some(i), _) => {
                        answers[i].get_or_insert(0);
                    }
                    (ty, Some(_), None) if m.bytes.len() >= 20 && ty > NLMSG_DONE => {
                        on_msg(Reply {
                            ty,
                            seq: m.seq,
                            body: m.bytes[20..].to_vec(),
                        })
                    }
                    _ => {} // a stale reply to an earlier request
                }
            }
        }
        Ok(answers.into_iter().map(|a| a.unwrap_or(0)).collect())
    }

    /// Whether `inet` table `name` exists.
    pub fn table_exists(&mut self, family: u8, name: &str) -> io::Result<bool> {
        let seq = self.next_seq();
        let mut m = Msg::new(
            nft_type(NFT_MSG_GETTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
        );
        m.str_attr(NFTA_TABLE_NAME, name);
        let mut saw = false;
        let errs = self.exchange(&m.finish(), &[seq], |r| {
            saw |= r.ty == nft_type(NFT_MSG_NEWTABLE)
        })?;
        match errs.first().copied().unwrap_or(0) {
            0 => Ok(saw),
            libc::ENOENT => Ok(false),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Adds (`add`) or deletes the elements `ips` of `set` in one atomic batch. Adding an
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
        let elems: Vec<Elem> = ips
            .iter()
            .map(|ip| Elem {
                key: match ip {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                },
                ..Elem::default()
            })
            .collect();
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

    /// Applies `changes` as ONE nf_tables batch: all or nothing. The first error the kernel
    /// reports is returned (EEXIST for an exclusive add of an existing key, ENOENT for a
    /// missing table, set or deleted key).
    pub fn change_elements(
        &mut self,
        family: u8,
        table: &str,
        changes: &[ElemChange],
    ) -> io::Result<()> {
        let changes: Vec<&ElemChange> = changes
            .iter()
            .filter(|c| match c {
                ElemChange::Add { elems, .. } | ElemChange::Del { elems, .. } => !elems.is_empty(),
            })
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        let res = NFNL_SUBSYS_NFTABLES;
        let begin_seq = self.next_seq();
        let mut seqs = vec![begin_seq];
        let mut batch = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq, 0, res).finish();
        for c in changes {
            let seq = self.next_seq();
            seqs.push(seq);
            let (ty, flags, set, elems) = match c {
                ElemChange::Add {
                    set,
                    elems,
                    exclusive,
                } => {
                    let excl = if *exclusive { NLM_F_EXCL } else { 0 };
                    (
                        NFT_MSG_NEWSETELEM,
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | excl,
                        set,
                        elems,
                    )
                }
                ElemChange::Del { set, elems } => {
                    (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK, set, elems)
                }
            };
            let mut m = Msg::new(nft_type(ty), flags, seq, family, 0);
            m.str_attr(NFTA_SET_ELEM_LIST_TABLE, table);
            m.str_attr(NFTA_SET_ELEM_LIST_SET, set);
            let list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for e in elems.iter() {
                let el = m.nest(NFTA_LIST_ELEM);
                let key = m.nest(NFTA_SET_ELEM_KEY);
                m.attr(NFTA_DATA_VALUE, &e.key);
                m.end_nest(key);
                if let (ElemChange::Add { .. }, Some(data)) = (c, &e.data) {
                    let d = m.nest(NFTA_SET_ELEM_DATA);
                    m.attr(NFTA_DATA_VALUE, data);
                    m.end_nest(d);
                }
                if let (ElemChange::Add { .. }, Some(u)) = (c, &e.udata) {
                    m.attr(NFTA_SET_ELEM_USERDATA, u);
                }
                m.end_nest(el);
            }
            m.end_nest(list);
            batch.extend_from_slice(&m.finish());
        }
        let end_seq = self.next_seq();
        batch.extend_from_slice(
            &Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, 0, res).finish(),
        );
        // Acks come for the element messages; an error may name any message of the batch
        // (BATCH_BEGIN included). Nothing is acked once one failed, so stop at the first.
        let data_seqs = &seqs[1..];
        let mut first_err = 0;
        self.sock.send(&batch, 0)?;
        let mut acked = 0usize;
        let mut rbuf = vec![0u8; 16384];
        while first_err == 0 && acked < data_seqs.len() {
            let n = self.sock.recv(&mut &mut rbuf[..], 0)?;
            for m in messages(&rbuf[..n])? {
                let ours = seqs.contains(&m.seq) || m.seq == end_seq;
                match m.error_code() {
                    Some(0) if data_seqs.contains(&m.seq) => acked += 1,
                    Some(code) if code != 0 && ours && first_err == 0 => first_err = code,
                    _ => {}
                }
            }
        }
        if first_err != 0 {
            return Err(io::Error::from_raw_os_error(first_err));
        }
        Ok(())
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
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut buf = Vec::new();
        let mut seqs = Vec::new();
        for k in keys {
            let seq = self.next_seq();
            seqs.push(seq);
            let mut m = Msg::new(
                nft_type(NFT_MSG_GETSETELEM),
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                family,
                0,
            );
            m.str_attr(NFTA_SET_ELEM_LIST_TABLE, table);
            m.str_attr(NFTA_SET_ELEM_LIST_SET, set);
            let list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            let el = m.nest(NFTA_LIST_ELEM);
            let key = m.nest(NFTA_SET_ELEM_KEY);
            m.attr(NFTA_DATA_VALUE, k);
            m.end_nest(key);
            m.end_nest(el);
            m.end_nest(list);
            buf.extend_from_slice(&m.finish());
        }
        let mut found: Vec<Option<Elem>> = vec![None; keys.len()];
        let errs = self.exchange(&buf, &seqs, |r| {
            if r.ty != nft_type(NFT_MSG_NEWSETELEM) {
                return;
            }
            if let Some(i) = seqs.iter().position(|s| *s == r.seq) {
                found[i] = parse_elements(&r.body).into_iter().next();
            }
        })?;
        for (i, e) in errs.iter().enumerate() {
            match *e {
                0 => {}
                libc::ENOENT => found[i] = None,
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
        Ok(found)
    }

    /// Every element of `set` (empty if the table or set does not exist).
    pub fn dump_elements(&mut self, family: u8, table: &str, set: &str) -> io::Result<Vec<Elem>> {
        let seq = self.next_seq();
        let mut m = Msg::new(
            nft_type(NFT_MSG_GETSETELEM),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
        );
        m.str_attr(NFTA_SET_ELEM_LIST_TABLE, table);
        m.str_attr(NFTA_SET_ELEM_LIST_SET, set);
        let mut out = Vec::new();
        let errs = self.exchange(&m.finish(), &[seq], |r| {
            if r.ty == nft_type(NFT_MSG_NEWSETELEM) {
                out.extend(parse_elements(&r.body));
            }
        })?;
        match errs.first().copied().unwrap_or(0) {
            0 => Ok(out),
            libc::ENOENT => Ok(Vec::new()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The elements of a NEWSETELEM message body (after nfgenmsg).
fn parse_elements(body: &[u8]) -> Vec<Elem> {
    let Some(list) = attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    attrs(list)
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .filter_map(|(_, el)| {
            let key = attr(el, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE))?;
            Some(Elem {
                key: key.to_vec(),
                data: attr(el, NFTA_SET_ELEM_DATA)
                    .and_then(|d| attr(d, NFTA_DATA_VALUE))
                    .map(<[u8]>::to_vec),
                udata: attr(el, NFTA_SET_ELEM_USERDATA).map(<[u8]>::to_vec),
            })
        })
        .collect()
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
    fn element_message_parses_back() {
        let mut m = Msg::new(nft_type(NFT_MSG_NEWSETELEM), 0, 1, NFPROTO_INET, 0);
        m.str_attr(NFTA_SET_ELEM_LIST_TABLE, "t");
        let list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        let el = m.nest(NFTA_LIST_ELEM);
        let k = m.nest(NFTA_SET_ELEM_KEY);
        m.attr(NFTA_DATA_VALUE, &[6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        m.end_nest(k);
        let d = m.nest(NFTA_SET_ELEM_DATA);
        m.attr(NFTA_DATA_VALUE, &[10, 1, 0, 2, 0, 80, 0, 0]);
        m.end_nest(d);
        m.attr(NFTA_SET_ELEM_USERDATA, &comment_udata("x"));
        m.end_nest(el);
        m.end_nest(list);
        let buf = m.finish();
        let elems = parse_elements(&buf[20..]);
        assert_eq!(elems.len(), 1);
        assert_eq!(elems[0].key, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(elems[0].data, Some(vec![10, 1, 0, 2, 0, 80, 0, 0]));
        assert_eq!(
            udata_comment(elems[0].udata.as_deref().unwrap_or(&[])).as_deref(),
            Some("x")
        );
    }
}
