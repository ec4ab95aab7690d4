//! nftables driver. One table per network, `inet` family, holding two sets of pod addresses
//! and one postrouting chain:
//!
//! ```text
//! table inet reef-masq-<net> {
//!   set pods4 { type ipv4_addr; }   set pods6 { type ipv6_addr; }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr @pods4 ip daddr != { <subnets>, 224.0.0.0/4 } masquerade
//!     ip6 saddr @pods6 ip6 daddr != { <subnets>, ff00::/8 } masquerade } }
//! ```
//! The table is created once by `nft -f` (one atomic, idempotent transaction); after that
//! a pod's ADD/DEL is one netlink batch adding or removing its address.

use crate::nfnetlink::{NfNetlink, NFPROTO_INET};
use crate::{Error, Firewall, Masquerade, Result};
use ipnetwork::IpNetwork;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The nftables driver; holds its nfnetlink socket until dropped (see `Firewall`).
#[derive(Default)]
pub struct Nftables {
    nl: Option<NfNetlink>,
}

/// Table name for a network. CNI network names are `[a-zA-Z0-9_.-]+`, all valid in nft
/// identifiers, so the mapping is one-to-one.
pub fn table_name(network: &str) -> String {
    format!("reef-masq-{network}")
}

fn set_for(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "pods4"
    } else {
        "pods6"
    }
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

/// The nft script that creates the network's table in one transaction.
pub fn table_script(m: &Masquerade) -> String {
    let table = table_name(&m.network);
    let nets = |v4: bool, extra: &str| -> String {
        let mut v: Vec<String> = m
            .subnets
            .iter()
            .filter(|n| n.is_ipv4() == v4)
            .map(|n| match n {
                // nft wants the network address, not a host address with a prefix.
                IpNetwork::V4(n) => format!("{}/{}", n.network(), n.prefix()),
                IpNetwork::V6(n) => format!("{}/{}", n.network(), n.prefix()),
            })
            .collect();
        v.push(extra.to_string());
        v.join(", ")
    };
    format!(
        "add table inet {table}\n\
         add set inet {table} pods4 {{ type ipv4_addr; }}\n\
         add set inet {table} pods6 {{ type ipv6_addr; }}\n\
         add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {table} postrouting\n\
         add rule inet {table} postrouting ip saddr @pods4 ip daddr != {{ {} }} masquerade\n\
         add rule inet {table} postrouting ip6 saddr @pods6 ip6 daddr != {{ {} }} masquerade\n",
        nets(true, "224.0.0.0/4"),
        nets(false, "ff00::/8"),
    )
}

pub fn run_nft(script: &str, context: &str) -> Result<String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("run nft (is the nftables package installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(io("write nft script"))?;
    }
    let out = child.wait_with_output().map_err(io("wait for nft"))?;
    if !out.status.success() {
        return Err(Error::Nft {
            context: context.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Nftables {
    pub fn new() -> Nftables {
        Nftables::default()
    }

    pub(crate) fn socket(&mut self) -> Result<&mut NfNetlink> {
        if self.nl.is_none() {
            self.nl = Some(NfNetlink::open().map_err(io("open nfnetlink socket"))?);
        }
        self.nl
            .as_mut()
            .ok_or_else(|| Error::Check("nfnetlink socket unavailable".into()))
    }

    /// Closes the kernel connection without waiting for it. Closing an nf_tables socket
    /// right after a commit blocks for an RCU grace period (~10 ms, see `Firewall`); a
    /// process with nothing else to overlap it with hands its socket to a forked child that
    /// outlives it: the child, detached from stdio, holds the last reference until this
    /// process has exited (EOF on a pipe) and 40 ms more, so the wait (if any) happens
    /// there. Falls back to a plain
    /// close when the process has other threads (fork would be unsound) or fork fails.
    pub fn close_in_background(self) {
        self.finish_in_background(|_| {})
    }

    /// Like `close_in_background`, and the child first runs `work` on the socket (work that
    /// the caller does not need to wait for). Without a child, `work` runs here first.
    pub(crate) fn finish_in_background(mut self, work: impl FnOnce(&mut NfNetlink)) {
        let Some(mut nl) = self.nl.take() else { return };
        if !single_threaded() {
            work(&mut nl);
            return;
        }
        let mut fds = [0i32; 2];
        // SAFETY: plain syscalls on fds this function owns. The process is single-threaded,
        // so the child cannot inherit a lock held by another thread.
        unsafe {
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                work(&mut nl);
                return;
            }
            match libc::fork() {
                0 => {
                    libc::close(fds[1]);
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                    if null >= 0 {
                        libc::dup2(null, 0);
                        libc::dup2(null, 1);
                        libc::dup2(null, 2);
                    }
                    work(&mut nl);
                    let mut b = 0u8;
                    // Returns 0 (EOF) once the parent, the last writer, has exited.
                    while libc::read(fds[0], (&mut b as *mut u8).cast(), 1) < 0
                        && *libc::__errno_location() == libc::EINTR
                    {}
                    // The release takes nf_tables' commit mutex and, while the commit's
                    // destroy work is pending, holds it for a grace period, stalling every
                    // other commit on the host (the next pod's ADD). Pending work finishes
                    // by itself within a grace period or two: release after that.
                    let pause = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 40_000_000,
                    };
                    libc::nanosleep(&pause, std::ptr::null_mut());
                    libc::_exit(0)
                }
                pid if pid > 0 => {
                    libc::close(fds[0]);
                    // The write end stays open until this process exits.
                }
                _ => {
                    libc::close(fds[0]);
                    libc::close(fds[1]);
                    work(&mut nl);
                }
            }
        }
    }

    fn ensure_table(nl: &mut NfNetlink, m: &Masquerade) -> Result<()> {
        let table = table_name(&m.network);
        if nl
            .table_exists(NFPROTO_INET, &table)
            .map_err(io("query nftables"))?
        {
            return Ok(());
        }
        // Every statement is idempotent (`add` of an existing table/set/chain is a no-op and
        // the chain is flushed before its rules are added) and the script is one
        // transaction, so concurrent ADDs racing here need no lock and keep set elements.
        run_nft(&table_script(m), &format!("create table {table}"))?;
        Ok(())
    }
}

/// fork() is only sound while the process has a single thread.
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim() == "1"))
        })
        .unwrap_or(false)
}

impl Firewall for Nftables {
    fn add_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
        let nl = self.socket()?;
        Self::ensure_table(nl, m)?;
        let table = table_name(&m.network);
        for v4 in [true, false] {
            let ips: Vec<IpAddr> = pod_ips
                .iter()
                .copied()
                .filter(|i| i.is_ipv4() == v4)
                .collect();
            if let Some(first) = ips.first() {
                nl.set_elements(NFPROTO_INET, &table, set_for(first), &ips, true)
                    .map_err(io(&format!("add pod address to {table}")))?;
            }
        }
        Ok(())
    }

    fn del_masquerade(&mut self, network: &str, pod_ips: &[IpAddr]) -> Result<()> {
        let nl = self.socket()?;
        let table = table_name(network);
        if !nl
            .table_exists(NFPROTO_INET, &table)
            .map_err(io("query nftables"))?
        {
            return Ok(());
        }
        // One element per batch: a missing element (ENOENT) must not abort the others.
        for ip in pod_ips {
            nl.set_elements(NFPROTO_INET, &table, set_for(ip), &[*ip], false)
                .map_err(io(&format!("remove pod address {ip} from {table}")))?;
        }
        Ok(())
    }

    fn check_masquerade(&mut self, m: &Masquerade, pod_ips: &[IpAddr]) -> Result<()> {
        let table = table_name(&m.network);
        let out = Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .map_err(io("run nft"))?;
        if !out.status.success() {
            return Err(Error::Check(format!("masquerade table {table} is missing")));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("masquerade") {
            return Err(Error::Check(format!(
                "masquerade rule missing from {table}"
            )));
        }
        for ip in pod_ips {
            let needle = ip.to_string();
            let in_set = text
                .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
                .any(|w| w == needle);
            if !in_set {
                return Err(Error::Check(format!(
                    "pod address {ip} is not masqueraded in {table}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_excludes_own_subnets_and_multicast() {
        let m = Masquerade {
            network: "my.net".into(),
            subnets: vec![
                "10.1.0.5/24".parse().unwrap(),
                "fd00::5/64".parse().unwrap(),
            ],
        };
        let s = table_script(&m);
        assert!(s.contains("add table inet reef-masq-my.net"));
        assert!(s.contains("flush chain inet reef-masq-my.net postrouting"));
        assert!(s.contains("ip daddr != { 10.1.0.0/24, 224.0.0.0/4 } masquerade"));
        assert!(s.contains("ip6 daddr != { fd00::/64, ff00::/8 } masquerade"));
    }
}
