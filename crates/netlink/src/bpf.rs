//! eBPF: loading the one small tc program Reef uses, the loopback guard (see `tc`).
//!
//! It is eleven instructions, so it is assembled here rather than built from an object file
//! with a BPF toolchain. It uses no helper (only `LD_ABS`), so it needs no GPL licence.

use crate::{Error, Result};
use std::os::fd::{FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst register in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `SKF_NET_OFF`: an `LD_ABS` offset relative to the network header, whatever the link
/// layer in front of it.
const SKF_NET_OFF: i32 = -0x100000;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

/// A direct-action classifier: an IPv4 packet to 127.0.0.0/8 is dropped unless its mark has
/// `exempt_mark` (set by netfilter on the replies of the host's own DNATed 127.0.0.1 flows,
/// which br_netfilter has already de-NATed when a bridge's ingress sees them); anything else
/// goes on to the next filter. A packet too short to read ends the program with 0, "accept",
/// and the IP layer drops it anyway. Attached with protocol ETH_P_IP: it sees IPv4 only.
fn loopback_guard(exempt_mark: u32) -> [Insn; 11] {
    // Jump offsets count from the next instruction; both jumps land on `pass` (index 9).
    [
        insn(0xbf, 6, 1, 0, 0), // 0: r6 = r1 (LD_ABS reads the skb in r6)
        insn(0x61, 2, 1, 8, 0), // 1: r2 = skb->mark
        insn(0x57, 2, 0, 0, exempt_mark as i32), // 2: r2 &= exempt_mark
        insn(0x55, 2, 0, 5, 0), // 3: if r2 != 0 goto pass
        insn(0x20, 0, 0, 0, SKF_NET_OFF + 16), // 4: r0 = ntohl(ip->daddr)
        insn(0x77, 0, 0, 0, 24), // 5: r0 >>= 24
        insn(0x55, 0, 0, 2, 127), // 6: if r0 != 127 goto pass
        insn(0xb7, 0, 0, 0, TC_ACT_SHOT), // 7: r0 = TC_ACT_SHOT
        insn(0x95, 0, 0, 0, 0), // 8: exit
        insn(0xb7, 0, 0, 0, TC_ACT_UNSPEC), // 9: pass: r0 = TC_ACT_UNSPEC
        insn(0x95, 0, 0, 0, 0), // 10: exit
    ]
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, zero-padded past the fields used.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    rest: [u8; 64],
}

/// Loads the loopback guard as a `sched_cls` program; the returned descriptor is only
/// needed until a filter holds the program.
pub fn load_loopback_guard(exempt_mark: u32) -> Result<OwnedFd> {
    load(&loopback_guard(exempt_mark), b"reef_lo_guard")
}

fn load(prog: &[Insn], name: &[u8]) -> Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name[..n]);
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        rest: [0; 64],
    };
    // SAFETY: attr and everything it points to outlive the call; the kernel reads
    // size_of::<ProgLoadAttr>() bytes of it and writes at most log_size bytes of log.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let verifier = String::from_utf8_lossy(&log[..end]).trim().to_string();
        let context = if verifier.is_empty() {
            "load the loopback guard eBPF program".to_string()
        } else {
            format!("load the loopback guard eBPF program (verifier: {verifier})")
        };
        return Err(Error::io(context, err));
    }
    // SAFETY: the kernel just returned this new descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
