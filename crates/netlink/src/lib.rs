//! Kernel adapter for links, addresses, routes, tc filters and sysctls, over rtnetlink.
//!
//! A netlink socket acts in the network namespace it was opened in, so entering a namespace
//! means: a short-lived std thread does `setns(CLONE_NEWNET)`, opens the socket (and does any
//! `/proc/sys/net` writes, which also resolve against the calling thread's namespace), then
//! hands the fd back to be driven by the caller's tokio runtime. No tokio worker ever changes
//! namespace.

pub mod bpf;
pub mod detached;
pub mod linger;
pub mod netns;
pub mod ops;
pub mod sysctl;
pub mod tc;

pub use netns::NetNs;
pub use ops::{
    format_mac, parse_mac, AddrInfo, LinkInfo, NeighbourInfo, Netlink, PendingNetlink, RouteInfo,
    RouteKind, RouteSpec,
};
pub use tc::LoopbackGuard;

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{path} is not a network namespace: it is {found}")]
    NotNetns { path: String, found: &'static str },
}

impl Error {
    pub(crate) fn nl(context: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The kernel's errno for a rejected request (positive, e.g. `libc::EEXIST`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
        )
    }
}

pub type Result<T> = std::result::Result<T, Error>;
