//! The container's network namespace pinned to a file (as `ip netns add` does): CNI_NETNS for
//! ADD and DEL, the target of `--join`, and what keeps the namespace (and the pod's interface
//! in it) alive until DEL has run, even after every process of the container is gone.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Context, Error, Result};

/// Bind-mounts `/proc/<pid>/ns/net` on `target` (created empty first).
pub fn pin(pid: i32, target: &Path) -> Result<()> {
    File::create(target).ctx(|| format!("create {}", target.display()))?;
    let source = format!("/proc/{pid}/ns/net");
    mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx(|| format!("bind-mount {source} on {}", target.display()))
}

/// Whether `path` is a pinned namespace (and not the empty file left under it).
pub fn is_pinned(path: &Path) -> bool {
    // /proc/PID/ns/* files live on nsfs; the empty file under an unmounted pin does not.
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unmounts and removes the pin; a missing or never-mounted file is fine.
pub fn unpin(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("unmount {}", path.display()), e)),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}
