//! The three nf_tables netlink messages the hot path needs: "does this table exist", and
//! add/delete one set element (inside a batch, as nf_tables requires for changes).
//!
//! Written against include/uapi/linux/netfilter/nf_tables.h and nfnetlink.h.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::io;
use std::net::IpAddr;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
pub const NFPROTO_INET: u8 = 1;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one netlink message: header, nfgenmsg, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
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

    fn attr(&mut self, ty: u16, payload: &[u8]) {
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
    fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn nft_type(t: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | t
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

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `buf` and waits for the NLMSG_ERROR (ack) for `ack_seq`. Returns whether a
    /// message of type `seen` arrived before the ack, or the kernel's errno.
    fn transact(&mut self, buf: &[u8], ack_seq: u32, seen: Option<u16>) -> io::Result<bool> {
        self.sock.send(buf, 0)?;
        let mut saw = false;
        let mut rbuf = vec![0u8; 16384];
        loop {
            let n = self.sock.recv(&mut &mut rbuf[..], 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(rbuf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([rbuf[off + 4], rbuf[off + 5]]);
                let seq =
                    u32::from_ne_bytes(rbuf[off + 8..off + 12].try_into().unwrap_or_default());
                if len < 16 || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink reply",
                    ));
                }
                if Some(ty) == seen {
                    saw = true;
                }
                if ty == NLMSG_ERROR && seq == ack_seq && len >= 20 {
                    let code =
                        i32::from_ne_bytes(rbuf[off + 16..off + 20].try_into().unwrap_or_default());
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(saw);
                }
                if ty == NLMSG_DONE && seq == ack_seq {
                    return Ok(saw);
                }
                off += align4(len);
            }
        }
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
        match self.transact(&m.finish(), seq, Some(nft_type(NFT_MSG_NEWTABLE))) {
            Ok(saw) => Ok(saw),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
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
        let begin_seq = self.next_seq();
        let seq = self.next_seq();
        let end_seq = self.next_seq();
        let res = NFNL_SUBSYS_NFTABLES;
        let mut batch = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq, 0, res).finish();
        let (ty, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        let mut m = Msg::new(nft_type(ty), flags, seq, family, 0);
        m.str_attr(NFTA_SET_ELEM_LIST_TABLE, table);
        m.str_attr(NFTA_SET_ELEM_LIST_SET, set);
        let list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        for ip in ips {
            let el = m.nest(NFTA_LIST_ELEM);
            let key = m.nest(NFTA_SET_ELEM_KEY);
            match ip {
                IpAddr::V4(a) => m.attr(NFTA_DATA_VALUE, &a.octets()),
                IpAddr::V6(a) => m.attr(NFTA_DATA_VALUE, &a.octets()),
            }
            m.end_nest(key);
            m.end_nest(el);
        }
        m.end_nest(list);
        batch.extend_from_slice(&m.finish());
        batch.extend_from_slice(
            &Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, 0, res).finish(),
        );
        match self.transact(&batch, seq, None) {
            Ok(_) => Ok(()),
            Err(e) if !add && e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
