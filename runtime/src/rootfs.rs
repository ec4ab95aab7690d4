//! The container's filesystem view.
//!
//! Without `--rootfs` the container sees the host's filesystem through its own (private)
//! mount namespace, with a fresh /proc for its PID namespace, a fresh sysfs for its network
//! namespace and its own /dev/shm for its IPC namespace.
//!
//! With `--rootfs DIR`, DIR becomes `/` by `pivot_root` (so the host's tree is unreachable,
//! unlike with chroot), with /proc, a small /dev (tmpfs with the usual character devices
//! bind-mounted from the host, devpts, shm), a read-only /sys when DIR has one, and
//! /etc/hosts and /etc/resolv.conf bind-mounted from files reef-run wrote from the CNI result
//! (the image's own files are not modified; empty ones are created where missing).
//!
//! The child-side functions (`host_mounts`, `prepare`, `enter`) run in the cloned child and
//! return plain strings; the child reports them to reef-run.

use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use serde_json::Value;

use crate::error::{Error, Result};

type ChildResult = std::result::Result<(), String>;

const NONE: Option<&str> = None;

/// PATH inside a rootfs.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Character devices a container gets (docker's default set, minus the console).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Checks `--rootfs` before anything is created; returns its canonical path.
pub fn check(path: &Path) -> Result<PathBuf> {
    let bad = |msg: String| Error::Rootfs {
        path: path.to_path_buf(),
        msg,
    };
    let canon = fs::canonicalize(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => bad("does not exist".into()),
        _ => bad(e.to_string()),
    })?;
    if !canon.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    if canon == Path::new("/") {
        return Err(bad("is the host's root; leave out --rootfs instead".into()));
    }
    Ok(canon)
}

/// Child, no rootfs: private /proc, /sys and /dev/shm over the host's tree.
pub fn host_mounts() -> ChildResult {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", Path::new("/proc"), "proc", nosuid, NONE)?;
    mount_fs("sysfs", Path::new("/sys"), "sysfs", nosuid, NONE)?;
    if Path::new("/dev/shm").is_dir() {
        mount_fs(
            "shm",
            Path::new("/dev/shm"),
            "tmpfs",
            nosuid,
            Some("mode=1777,size=65536k"),
        )?;
    }
    Ok(())
}

/// Child, with rootfs, before the network is ready: every mount under `root`.
pub fn prepare(root: &Path) -> ChildResult {
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(root),
        root,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(|e| format!("bind-mount rootfs {}: {e}", root.display()))?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    let proc_dir = ensure_dir(root, "proc")?;
    mount_fs("proc", &proc_dir, "proc", nosuid, NONE)?;

    let dev = ensure_dir(root, "dev")?;
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
        mount(Some(&host), &target, NONE, MsFlags::MS_BIND, NONE)
            .map_err(|e| format!("bind-mount {}: {e}", host.display()))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    let pts = ensure_dir(&dev, "pts")?;
    mount_fs(
        "devpts",
        &pts,
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = ensure_dir(&dev, "shm")?;
    mount_fs("shm", &shm, "tmpfs", nosuid, Some("mode=1777,size=65536k"))?;

    // /sys only where the image has the directory: it is optional in small images.
    let sys = root.join("sys");
    if fs::symlink_metadata(&sys).is_ok_and(|m| m.is_dir()) {
        mount_fs("sysfs", &sys, "sysfs", nosuid | MsFlags::MS_RDONLY, NONE)?;
    }
    Ok(())
}

/// Child, with rootfs, once the network is ready: the /etc files, then switch root.
///
/// The targets are resolved by openat2(RESOLVE_IN_ROOT) relative to the rootfs, so a symlink
/// in the image (`/etc/resolv.conf -> ../run/...`) resolves inside the image and can never
/// point a mount at the host's files; the mount goes onto the resolved file through
/// /proc/self/fd. This happens before pivot_root, while the sources are still reachable.
pub fn enter(root: &Path, hosts: &Path, resolv: &Path) -> ChildResult {
    let rootfd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {}: {e}", root.display()))?;
    match nix::sys::stat::mkdirat(&rootfd, "etc", Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(format!("create /etc in the rootfs: {e}")),
    }
    for (source, target) in [(hosts, "etc/hosts"), (resolv, "etc/resolv.conf")] {
        let fd = open_in_root(&rootfd, target)
            .map_err(|e| format!("open /{target} in the rootfs: {e}"))?;
        let proc_target = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(
            Some(source),
            proc_target.as_str(),
            NONE,
            MsFlags::MS_BIND,
            NONE,
        )
        .map_err(|e| format!("bind-mount {} on /{target}: {e}", source.display()))?;
    }

    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one and is detached at
    // once, so no directory for it is needed in the image.
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// `path` under `root` as an O_PATH fd, resolved as if `root` were `/`; created (empty, 0644)
/// if missing.
fn open_in_root(root: &OwnedFd, path: &str) -> std::result::Result<OwnedFd, nix::errno::Errno> {
    /// `struct open_how` (libc's is non-exhaustive, so it cannot be built here).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let open2 = |flags: OFlag, mode: u64| {
        let c = std::ffi::CString::new(path).map_err(|_| nix::errno::Errno::EINVAL)?;
        let how = OpenHow {
            flags: (flags | OFlag::O_CLOEXEC).bits() as u64,
            mode,
            resolve: libc::RESOLVE_IN_ROOT,
        };
        // SAFETY: valid dirfd, NUL-terminated path and open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            return Err(nix::errno::Errno::last());
        }
        // SAFETY: a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    match open2(OFlag::O_PATH, 0) {
        Err(nix::errno::Errno::ENOENT) => {
            drop(open2(OFlag::O_CREAT | OFlag::O_WRONLY, 0o644)?);
            open2(OFlag::O_PATH, 0)
        }
        other => other,
    }
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> ChildResult {
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {}: {e}", target.display()))
}

/// `parent/name` as a real directory, created if missing. A symlink is refused: mounting on
/// it would follow it out of the rootfs.
fn ensure_dir(parent: &Path, name: &str) -> std::result::Result<PathBuf, String> {
    let p = parent.join(name);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(format!(
            "{} is not a directory (symlinks are refused)",
            p.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o755)
            .create(&p)
            .map(|()| p.clone())
            .map_err(|e| format!("create {}: {e}", p.display())),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// /etc/hosts: localhost, then the container's addresses under its hostname.
pub fn hosts_content(hostname: &str, ips: &[IpAddr]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// /etc/resolv.conf from the result's `dns`. A result without nameservers (the default
/// network's) gets the host's resolvers, minus loopback ones, which cannot be reached from
/// the container's network namespace.
pub fn resolv_content(dns: Option<&Value>, host_resolv: &str) -> String {
    let strs = |k: &str| -> Vec<String> {
        dns.and_then(|d| d.get(k))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let nameservers = strs("nameservers");
    if nameservers.is_empty() {
        return host_resolv
            .lines()
            .filter(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next().and_then(|a| a.parse::<IpAddr>().ok())) {
                    (Some("nameserver"), Some(ip)) => !ip.is_loopback(),
                    _ => true,
                }
            })
            .map(|l| format!("{l}\n"))
            .collect();
    }
    let mut s = String::new();
    for ns in nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if let Some(domain) = dns.and_then(|d| d.get("domain")).and_then(Value::as_str) {
        s.push_str(&format!("domain {domain}\n"));
    }
    let search = strs("search");
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    let options = strs("options");
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts_lists_localhost_and_our_addresses() {
        let h = hosts_content("web", &["10.88.0.5".parse().unwrap()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.5\tweb\n"));
    }

    #[test]
    fn resolv_from_result_or_host() {
        let dns =
            json!({"nameservers": ["10.0.0.53"], "search": ["a", "b"], "options": ["ndots:2"]});
        assert_eq!(
            resolv_content(Some(&dns), ""),
            "nameserver 10.0.0.53\nsearch a b\noptions ndots:2\n"
        );
        let host = "nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch lan\n";
        assert_eq!(
            resolv_content(Some(&json!({})), host),
            "nameserver 192.0.2.1\nsearch lan\n"
        );
        assert_eq!(
            resolv_content(None, host),
            "nameserver 192.0.2.1\nsearch lan\n"
        );
    }

    #[test]
    fn rootfs_checks() {
        assert!(check(Path::new("/nonexistent-reef"))
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(check(Path::new("/etc/hostname")).is_err());
        assert!(check(Path::new("/")).is_err());
        assert!(check(Path::new("/tmp")).is_ok());
    }
}
