//! Network namespace handles and thread-correct entry.

use crate::{Error, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace (a `/run/netns/NAME` or `/proc/PID/ns/net` path).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: String,
}

impl NetNs {
    /// Opens `path` and checks that it is a network namespace. Never blocks: the open is
    /// non-blocking (a FIFO or device named as a namespace would otherwise hang in open(2)),
    /// and anything but a namespace file is refused before it is used.
    pub fn open(path: &str) -> Result<NetNs> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("open netns {path}"), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("stat netns {path}"), e))?;
        // nsfs files are regular files; whatever else it is, it is not a namespace.
        if !meta.file_type().is_file() {
            return Err(Error::NotNetns {
                path: path.to_string(),
                found: file_kind(&meta.file_type()),
            });
        }
        // SAFETY: an ioctl without arguments on a descriptor we own.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            let found = if kind < 0 {
                "a regular file"
            } else {
                "another kind of namespace"
            };
            return Err(Error::NotNetns {
                path: path.to_string(),
                found,
            });
        }
        Ok(NetNs {
            file,
            path: path.to_string(),
        })
    }

    /// True when this is the network namespace the calling thread is in: a plugin's own
    /// (host) namespace, which must never be treated as a pod's.
    pub fn is_current(&self) -> Result<bool> {
        let here = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("stat /proc/thread-self/ns/net", e))?;
        let this = self
            .file
            .metadata()
            .map_err(|e| Error::io(format!("stat netns {}", self.path), e))?;
        Ok((here.dev(), here.ino()) == (this.dev(), this.ino()))
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs> {
        let path = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        NetNs::open(&path)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn try_clone_file(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(|e| Error::io(format!("dup netns fd {}", self.path), e))
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a dedicated thread that has entered this namespace. The thread ends with
    /// `f`, so no other code ever runs in the wrong namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.file.as_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::io(format!("setns {}", self.path), e.into()))?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Invalid(format!("thread in netns {} panicked", self.path)))?
        })
    }
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_current_and_non_namespaces_are_refused() {
        let own = NetNs::open("/proc/self/ns/net").expect("own netns");
        assert!(own.is_current().expect("compare"));
        for path in ["/dev/null", "/proc/self/status", "/"] {
            let e = NetNs::open(path).expect_err(path);
            assert!(matches!(e, Error::NotNetns { .. }), "{path}: {e}");
        }
        // Another kind of namespace is refused too.
        let e = NetNs::open("/proc/self/ns/uts").expect_err("uts");
        assert!(matches!(e, Error::NotNetns { .. }), "{e}");
    }
}
