//! The agent's errors: what ends the whole process ([`AgentError`]) and what ends one etcd
//! session ([`SessionError`]; the loop reconnects and resyncs, the kernel keeps its state).

use crate::managers::ManagerError;
use crate::underlay::UnderlayError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Underlay(#[from] UnderlayError),
    #[error(transparent)]
    Netlink(#[from] reef_netlink::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// etcd failed or went away (connect, list, watch, node record).
    #[error(transparent)]
    Etcd(#[from] reef_etcd::Error),
    /// The thread that decodes the listed records could not start.
    #[error("start the view thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The thread that decodes the listed records ended without a view (a panic in a debug
    /// build; release builds abort on panic).
    #[error("the view thread ended without a view")]
    ViewPanicked,
    /// A manager could not reach the kernel at all (not a per-node problem).
    #[error("{manager}: {source}")]
    Manager {
        manager: &'static str,
        #[source]
        source: ManagerError,
    },
}
