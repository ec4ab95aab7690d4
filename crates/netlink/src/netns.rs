//! Network namespace handles and thread-correct entry.

use crate::{Error, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};

/// An open network namespace (a `/run/netns/NAME` or `/proc/PID/ns/net` path).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: String,
}

impl NetNs {
    pub fn open(path: &str) -> Result<NetNs> {
        let file = File::open(path).map_err(|e| Error::io(format!("open netns {path}"), e))?;
        Ok(NetNs {
            file,
            path: path.to_string(),
        })
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
