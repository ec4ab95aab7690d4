//! The nfnetlink socket: requests and replies, encoded and decoded by
//! `netlink-packet-netfilter` (typed batch, table, chain, rule, set, set-element and
//! conntrack messages). What is left here is the socket loop the crate does not have:
//! pipelined requests, per-request errno, dumps, and nf_tables' batch acknowledgement rules.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::io;
use std::os::fd::AsRawFd;

/// nfgenmsg `res_id` of a batch: the subsystem it is for.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// Socket buffer sizes asked for (SO_*BUFFORCE as root, else capped by the sysctls). The
/// kernel drops a reply that does not fit the receive queue (ENOBUFS on the next recv),
/// and refuses a send larger than the send buffer (EMSGSIZE): a batch of a thousand
/// elements and its acks must fit.
const SOCK_BUF: libc::c_int = 8 << 20;

/// At most this many pipelined requests are in flight: their replies are drained before
/// the next ones go, so the receive queue holds a bounded number of replies whatever the
/// caller asks for.
const PIPELINE: usize = 64;

/// One request: the message, its nfgenmsg family and its netlink flags.
pub(crate) struct Request {
    pub body: Body,
    pub family: u8,
    pub flags: u16,
}

/// A request's message.
pub(crate) enum Body {
    Typed(NetfilterMessageInner),
    /// An nf_tables message (`NFT_MSG_*`) whose attributes are already encoded: the element
    /// changes of a full sync (70,000 elements), which the typed attributes would copy twice.
    Nft {
        msg_type: u8,
        attrs: Vec<u8>,
    },
}

impl Request {
    pub(crate) fn new(inner: impl Into<NetfilterMessageInner>, family: u8, flags: u16) -> Request {
        Request {
            body: Body::Typed(inner.into()),
            family,
            flags,
        }
    }

    pub(crate) fn nft(msg_type: u8, attrs: Vec<u8>, family: u8, flags: u16) -> Request {
        Request {
            body: Body::Nft { msg_type, attrs },
            family,
            flags,
        }
    }
}

fn emit_body(buf: &mut Vec<u8>, body: Body, family: u8, flags: u16, seq: u32) {
    match body {
        Body::Typed(inner) => emit(buf, inner, family, 0, flags, seq),
        Body::Nft { msg_type, attrs } => {
            let len = u32::try_from(HEADERS + attrs.len()).unwrap_or(u32::MAX);
            let kind = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg_type);
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&flags.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            // Port id 0: the kernel's.
            buf.extend_from_slice(&0u32.to_ne_bytes());
            // nfgenmsg: family, NFNETLINK_V0, res_id 0 (big endian).
            buf.extend_from_slice(&[family, 0, 0, 0]);
            buf.extend_from_slice(&attrs);
        }
    }
}

fn emit(
    buf: &mut Vec<u8>,
    inner: NetfilterMessageInner,
    family: u8,
    res_id: u16,
    flags: u16,
    seq: u32,
) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let nf = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::from(family), 0, res_id),
        inner,
    );
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(nf));
    msg.finalize();
    let at = buf.len();
    buf.resize(at + msg.buffer_len(), 0);
    msg.serialize(&mut buf[at..]);
}

/// One reply read off the socket.
enum Reply {
    /// NLMSG_ERROR: 0 for an ack, else a positive errno.
    Ack {
        seq: u32,
        errno: i32,
    },
    Done {
        seq: u32,
    },
    Data {
        seq: u32,
        msg: Data,
    },
}

/// A data message of a reply.
pub(crate) enum Data {
    /// Decoded by netlink-packet-netfilter.
    Msg(NetfilterMessage),
    /// NFT_MSG_NEWSETELEM, left raw (its attributes after the nfgenmsg header): the
    /// crate's parser formats the whole datagram into an error context for every element,
    /// success or not, which made a dump of 100,000 elements take minutes
    /// (`objects::parse_elements` reads it instead).
    SetElements(Vec<u8>),
}

impl Data {
    /// The decoded message, if this is one.
    pub(crate) fn msg(self) -> Option<NetfilterMessage> {
        match self {
            Data::Msg(m) => Some(m),
            Data::SetElements(_) => None,
        }
    }
}

/// `(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM`.
const NEWSETELEM: u16 = (10 << 8) | 12;
/// Netlink header and nfgenmsg.
const HEADERS: usize = 16 + 4;

/// Splits a receive buffer into replies. A data message the crate cannot decode is skipped
/// (nothing Reef asks for), a truncated buffer is an error.
fn replies(buf: &[u8]) -> io::Result<Vec<Reply>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < buf.len() {
        let len = NetlinkBuffer::new_checked(&buf[off..])
            .map(|b| b.length() as usize)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if len < 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short netlink message",
            ));
        }
        let end = (off + len).min(buf.len());
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if kind == NEWSETELEM && end - off >= HEADERS {
            let seq =
                u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
            out.push(Reply::Data {
                seq,
                msg: Data::SetElements(buf[off + HEADERS..end].to_vec()),
            });
        } else if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..end]) {
            let seq = m.header.sequence_number;
            match m.payload {
                NetlinkPayload::Error(e) => out.push(Reply::Ack {
                    seq,
                    errno: e.raw_code().abs(),
                }),
                NetlinkPayload::Done(_) => out.push(Reply::Done { seq }),
                NetlinkPayload::InnerMessage(msg) => out.push(Reply::Data {
                    seq,
                    msg: Data::Msg(msg),
                }),
                _ => {}
            }
        }
        off += (len + 3) & !3;
    }
    Ok(out)
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
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt_int(&sock, force, SOCK_BUF).is_err() {
                // Without CAP_NET_ADMIN: as much as net.core.[rw]mem_max allows.
                setsockopt_int(&sock, plain, SOCK_BUF)?;
            }
        }
        // Errors carry only the failed request's header, not its (possibly huge) payload.
        sock.set_cap_ack(true)?;
        Ok(NfNetlink { sock, seq: 1 })
    }

    /// Receives one datagram whole: its size is peeked first (MSG_PEEK | MSG_TRUNC) and
    /// `rbuf` grown to fit, so no reply is ever cut short, whatever its size.
    fn recv_whole<'b>(&self, rbuf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
        let need = self
            .sock
            .recv(&mut &mut rbuf[..], libc::MSG_PEEK | libc::MSG_TRUNC)?;
        if need > rbuf.len() {
            rbuf.resize(need, 0);
        }
        let n = self.sock.recv(&mut &mut rbuf[..], 0)?;
        Ok(&rbuf[..n.min(rbuf.len())])
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `reqs` pipelined (not a transaction), at most `PIPELINE` at a time, and reads
    /// until each got its final answer: an ack or error, or NLMSG_DONE for a dump. Data
    /// messages go to `on_msg` with the index of their request. Returns the errno
    /// (0 = success) per request.
    pub(crate) fn exchange(
        &mut self,
        reqs: Vec<Request>,
        mut on_msg: impl FnMut(usize, Data),
    ) -> io::Result<Vec<i32>> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut reqs = reqs.into_iter().peekable();
        while reqs.peek().is_some() {
            let chunk: Vec<Request> = reqs.by_ref().take(PIPELINE).collect();
            let base = out.len();
            out.extend(self.exchange_chunk(chunk, |i, m| on_msg(base + i, m))?);
        }
        Ok(out)
    }

    fn exchange_chunk(
        &mut self,
        reqs: Vec<Request>,
        mut on_msg: impl FnMut(usize, Data),
    ) -> io::Result<Vec<i32>> {
        let mut buf = Vec::with_capacity(128 * reqs.len());
        let mut seqs = Vec::with_capacity(reqs.len());
        for r in reqs {
            let seq = self.next_seq();
            seqs.push(seq);
            emit_body(&mut buf, r.body, r.family, r.flags | NLM_F_REQUEST, seq);
        }
        self.sock.send(&buf, 0)?;
        let mut answers: Vec<Option<i32>> = vec![None; seqs.len()];
        let mut rbuf = vec![0u8; 65536];
        while answers.iter().any(Option::is_none) {
            for r in replies(self.recv_whole(&mut rbuf)?)? {
                match r {
                    Reply::Ack { seq, errno } => {
                        if let Some(i) = seqs.iter().position(|s| *s == seq) {
                            answers[i] = Some(errno);
                        }
                    }
                    Reply::Done { seq } => {
                        if let Some(i) = seqs.iter().position(|s| *s == seq) {
                            answers[i].get_or_insert(0);
                        }
                    }
                    Reply::Data { seq, msg } => {
                        if let Some(i) = seqs.iter().position(|s| *s == seq) {
                            on_msg(i, msg)
                        }
                    }
                }
            }
        }
        Ok(answers.into_iter().map(|a| a.unwrap_or(0)).collect())
    }

    /// Sends `msgs` as ONE nf_tables transaction (BATCH_BEGIN ... BATCH_END): all or
    /// nothing. Returns the first error the kernel reports. Every message asks for an ack;
    /// once one failed nothing more is acked, so reading stops at the first error.
    pub(crate) fn transaction(&mut self, msgs: Vec<Request>) -> io::Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(128 * (msgs.len() + 2));
        let begin = self.next_seq();
        emit(
            &mut buf,
            ControlMessage::BatchBegin.into(),
            0,
            NFNL_SUBSYS_NFTABLES,
            NLM_F_REQUEST,
            begin,
        );
        let mut data_seqs = Vec::with_capacity(msgs.len());
        for r in msgs {
            let seq = self.next_seq();
            data_seqs.push(seq);
            emit_body(
                &mut buf,
                r.body,
                r.family,
                r.flags | NLM_F_REQUEST | NLM_F_ACK,
                seq,
            );
        }
        let end = self.next_seq();
        emit(
            &mut buf,
            ControlMessage::BatchEnd.into(),
            0,
            NFNL_SUBSYS_NFTABLES,
            NLM_F_REQUEST,
            end,
        );
        // A batch goes in one datagram, which must fit the send buffer: a full sync of many
        // services can exceed the default one.
        if buf.len() + 65536 > SOCK_BUF as usize {
            let want = libc::c_int::try_from(buf.len() + 65536).unwrap_or(libc::c_int::MAX);
            setsockopt_int(&self.sock, libc::SO_SNDBUFFORCE, want)?;
        }
        self.sock.send(&buf, 0)?;
        // An error may name any message of the batch, BATCH_BEGIN and BATCH_END included.
        let ours = |s: u32| s == begin || s == end || data_seqs.contains(&s);
        let (mut acked, mut first_err) = (0usize, 0);
        let mut rbuf = vec![0u8; 16384];
        while first_err == 0 && acked < data_seqs.len() {
            for r in replies(self.recv_whole(&mut rbuf)?)? {
                match r {
                    Reply::Ack { seq, errno: 0 } if data_seqs.contains(&seq) => acked += 1,
                    Reply::Ack { seq, errno } if errno != 0 && ours(seq) && first_err == 0 => {
                        first_err = errno
                    }
                    _ => {}
                }
            }
        }
        if first_err != 0 {
            return Err(io::Error::from_raw_os_error(first_err));
        }
        Ok(())
    }
}

fn setsockopt_int(sock: &Socket, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd, and a pointer to an int that outlives the call with its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
