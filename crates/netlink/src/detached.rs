//! Deleting a link without waiting for the kernel's reclamation.
//!
//! `RTM_DELLINK` of a veth returns only after the kernel has unregistered the device (the
//! name and addresses are gone within ~1 ms) *and* waited for every reference to it to be
//! dropped, which takes an RCU barrier: ~20 ms here, most of a DEL. The first part is what a
//! caller needs; the second is memory reclamation. So a forked child sends the request and
//! sits out the wait, while the parent returns as soon as the link has left the namespace.

use crate::{Error, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn dellink_request(name: &str) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(
        header,
        netlink_packet_core::NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// In the child: send the request, wait for the kernel's answer, return its errno.
fn child_delete(req: &[u8]) -> i32 {
    (|| -> std::io::Result<i32> {
        let sock = Socket::new(NETLINK_ROUTE)?;
        sock.send(req, 0)?;
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut &mut buf[..], 0)?;
        if n >= 20 {
            let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return Ok(-err);
        }
        Ok(0)
    })()
    .unwrap_or(libc::EIO)
}

pub enum Started {
    /// A child is deleting the link; poll until it is gone.
    Child(Pid),
    /// Not possible here (threads, fork failure): delete synchronously.
    Unavailable,
}

/// Starts deleting `name` in a forked child (see `linger`).
pub fn start(name: &str) -> Started {
    let req = dellink_request(name);
    match crate::linger::spawn(|| child_delete(&req)) {
        Some(child) => Started::Child(child),
        None => Started::Unavailable,
    }
}

/// The child's verdict if it has already exited: Ok(()) or the kernel's errno.
pub fn child_result(child: Pid) -> Option<Result<()>> {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, 0)) => Some(Ok(())),
        Ok(WaitStatus::Exited(_, code)) => Some(Err(Error::io(
            "delete link (detached)",
            std::io::Error::from_raw_os_error(code),
        ))),
        Ok(WaitStatus::StillAlive) => None,
        Ok(_) => Some(Err(Error::Invalid("link deleter ended abnormally".into()))),
        Err(e) => Some(Err(Error::io("wait for link deleter", e.into()))),
    }
}
